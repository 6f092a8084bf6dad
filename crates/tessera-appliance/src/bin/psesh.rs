//! `psesh`, the appliance shell.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tessera_admin::{eprintln, println};
use tessera_appliance::audit::AuditLog;
use tessera_appliance::cli::{Action, Args};
use tessera_appliance::shell::{Console, Outcome, Shell};
use tessera_appliance::users::{Role, Users, DEFAULT_ITERATIONS};
use tessera_core::SecretBytes;
use zeroize::Zeroizing;

/// Input from a terminal: line editing and history, secrets without echo.
struct Terminal {
    editor: rustyline::DefaultEditor,
    history: PathBuf,
}

impl Console for Terminal {
    fn line(&mut self, prompt: &str) -> Option<String> {
        loop {
            match self.editor.readline(prompt) {
                Ok(line) => return Some(line),
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => return None,
            }
        }
    }

    fn secret(&mut self, prompt: &str) -> Option<Zeroizing<String>> {
        rpassword::prompt_password(prompt).ok().map(Zeroizing::new)
    }
}

/// Input from a script: `-c` commands, then standard input; questions take the next line.
struct Script {
    lines: std::collections::VecDeque<String>,
    stdin: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Script {
    fn next(&mut self) -> Option<String> {
        if let Some(line) = self.lines.pop_front() {
            return Some(line);
        }
        self.stdin.as_mut()?.next()?.ok()
    }
}

impl Console for Script {
    fn line(&mut self, prompt: &str) -> Option<String> {
        let line = self.next()?;
        println!("{prompt}{line}");
        Some(line)
    }

    fn secret(&mut self, prompt: &str) -> Option<Zeroizing<String>> {
        match self.next() {
            Some(line) => {
                println!("{prompt}");
                Some(Zeroizing::new(line))
            }
            // `-c` typed at a terminal: ask there, without echo, rather than want the secret
            // on the command line.
            None if std::io::stdin().is_terminal() => {
                rpassword::prompt_password(prompt).ok().map(Zeroizing::new)
            }
            None => None,
        }
    }
}

/// The lines `NAME=PASSWORD` of a passwords file (blank lines skipped; the password is all
/// after the first `=`, without the spaces around it: `admin = secret` means `secret`). A
/// line that is not one, or names no user or one already named, is an error naming the line
/// but never showing it (it may hold a password).
fn passwords_from(path: &Path) -> Result<Vec<(Role, Zeroizing<String>)>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let mut given: Vec<(Role, Zeroizing<String>)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), index + 1);
        let (name, password) = line.split_once('=').ok_or_else(|| {
            format!(
                "{}: not NAME=PASSWORD (admin=..., pseoperator=..., audit=...); nothing was set",
                at()
            )
        })?;
        let role =
            Role::from_name(name.trim()).map_err(|e| format!("{}: {e}; nothing was set", at()))?;
        if given.iter().any(|(r, _)| *r == role) {
            return Err(format!(
                "{}: a second line for {role}; keep one; nothing was set",
                at()
            ));
        }
        given.push((role, Zeroizing::new(password.trim().to_string())));
    }
    Ok(given)
}

fn setup(state: &Path, passwords_file: Option<&Path>, iterations: u32) -> Result<(), String> {
    let users = Users::new(state);
    if users.is_set_up()? {
        return Err("the appliance users are already set up; admin sets the others' passwords with \"user password NAME\", and each user changes their own with passwd".into());
    }
    let given = match passwords_file {
        Some(path) => passwords_from(path)?,
        None => Vec::new(),
    };
    let mut chosen = Vec::new();
    for role in Role::ALL {
        let password = match passwords_file {
            Some(path) => given
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    format!(
                        "{} has no line for {role} (add {role}=PASSWORD); nothing was set",
                        path.display()
                    )
                })?,
            None => {
                let first = Zeroizing::new(
                    rpassword::prompt_password(format!("Password for {role}: "))
                        .map_err(|e| format!("cannot read a password: {e}"))?,
                );
                let again = Zeroizing::new(
                    rpassword::prompt_password(format!("Password for {role} again: "))
                        .map_err(|e| format!("cannot read a password: {e}"))?,
                );
                if *first != *again {
                    return Err(format!(
                        "the two passwords for {role} differ; nothing was set"
                    ));
                }
                first
            }
        };
        if password.len() < tessera_appliance::users::MIN_PASSWORD {
            return Err(format!(
                "the password for {role} needs at least {} characters; nothing was set",
                tessera_appliance::users::MIN_PASSWORD
            ));
        }
        chosen.push((role, password));
    }
    // Each password record is stretched with PBKDF2: seconds at the default iterations.
    tessera_admin::progress::run(
        "setting the passwords of admin, pseoperator and audit",
        || -> Result<(), String> {
            for (role, password) in &chosen {
                users.set_password(*role, password.as_bytes(), iterations)?;
            }
            Ok(())
        },
    )?;
    AuditLog::new(state).record(
        "-",
        "first-time set-up: passwords set for admin, pseoperator, audit",
    )?;
    println!("Appliance users set up: admin, pseoperator, audit.");
    Ok(())
}

/// The known-devices file of `role`: `known/<user>/known_devices`, in a directory of its own
/// (the client library refuses a file in a directory that others own or can write, and
/// `known/` is shared by the accounts). A file `known/<user>`, where earlier versions kept
/// it, is moved there.
fn known_devices(state: &Path, role: Role) -> Result<PathBuf, String> {
    let known = state.join("known");
    tessera_appliance::create_dir(&known)?;
    let dir = known.join(role.name());
    let file = dir.join("known_devices");
    // Moved aside first (the directory takes its name), then in: a run stopped between the
    // two is finished by the next.
    let moving = known.join(format!(".{}.moving", role.name()));
    if dir.is_file() {
        std::fs::rename(&dir, &moving)
            .map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
    }
    tessera_appliance::create_private_dir(&dir)?;
    if moving.is_file() && !file.exists() {
        std::fs::rename(&moving, &file).map_err(|e| {
            format!(
                "cannot move {} to {}: {e}",
                moving.display(),
                file.display()
            )
        })?;
    }
    Ok(file)
}

fn run(args: Args) -> Result<u8, String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(tessera_config::default_data_dir);
    let state = tessera_appliance::state_dir(&data_dir);
    tessera_appliance::create_dir(&state)?;
    if let Some(Action::Setup {
        passwords_file,
        kdf_iterations,
    }) = &args.action
    {
        setup(&state, passwords_file.as_deref(), *kdf_iterations)?;
        return Ok(0);
    }
    let users = Users::new(&state);
    if !users.is_set_up()? {
        return Err(format!(
            "the appliance users are not set up yet: run \"psesh setup\" (state {})",
            state.display()
        ));
    }
    let name = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .ok_or("no user: give --user NAME")?;
    let role = match Role::from_name(&name) {
        Ok(role) => role,
        Err(e) => {
            AuditLog::new(&state).record("-", &format!("login failed: unknown user {name:?}"))?;
            return Err(e);
        }
    };
    let audit = AuditLog::new(&state);
    // Under an SSH ForceCommand, `ssh user@appliance 'hsm show'` arrives here.
    let commands = args.commands.clone().or_else(|| {
        std::env::var("SSH_ORIGINAL_COMMAND")
            .ok()
            .filter(|c| !c.trim().is_empty())
    });
    let scripted = commands.is_some() || !std::io::stdin().is_terminal();
    let mut script = Script {
        lines: commands
            .iter()
            .flat_map(|c| c.split(';'))
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        stdin: (!std::io::stdin().is_terminal()).then(|| std::io::stdin().lock().lines()),
    };
    let password = match &args.password_file {
        Some(path) => tessera_admin::pin::from_file(path, "password").map_err(|f| f.message)?,
        None if std::io::stdin().is_terminal() => SecretBytes::new(
            rpassword::prompt_password(format!("Password for {role}: "))
                .map_err(|e| format!("cannot read the password: {e}"))?
                .into_bytes(),
        ),
        None => SecretBytes::new(
            script
                .stdin
                .as_mut()
                .and_then(|l| l.next())
                .and_then(|l| l.ok())
                .ok_or("no password on standard input")?
                .into_bytes(),
        ),
    };
    if !users.verify(role, password.expose())? {
        audit.record(role.name(), "login failed")?;
        // Slow down guessing.
        std::thread::sleep(std::time::Duration::from_millis(500));
        return Err("login incorrect".into());
    }
    drop(password);
    audit.record(
        role.name(),
        if scripted {
            "login (scripted)"
        } else {
            "login"
        },
    )?;
    // Every HSM call of this shell uses this user's appliance trust store and known devices,
    // and the library's reports go to a file rather than between the shell's lines.
    // (Single-threaded here.)
    let trust = state.join("trust");
    std::env::set_var("ET_PTKC_TRUSTSTORE_USER", trust.join(role.name()));
    std::env::set_var("ET_PTKC_TRUSTSTORE_SYSTEM", trust.join(".system"));
    // And its own known devices, beside its trust store: what one appliance user's channels
    // recorded must not decide for another's.
    std::env::set_var("ET_PTKC_KNOWN_DEVICES_USER", known_devices(&state, role)?);
    if std::env::var_os("ET_PTKC_GENERAL_LOG").is_none() {
        // Shared by the accounts: made here with the state's file mode, as the library
        // would make it with the umask's (and then only its first account could append).
        let log = state.join("client.log");
        if let Err(e) = tessera_appliance::open_shared(&log) {
            let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                tessera_appliance::sharing_fix(&log)
            } else {
                String::new()
            };
            eprintln!(
                "psesh: warning: the client library cannot report to {}: {e}{fix}",
                log.display()
            );
        }
        std::env::set_var("ET_PTKC_GENERAL_LOG", log);
    }
    let mut failed = false;
    if scripted {
        let mut shell = Shell {
            state: state.clone(),
            role,
            console: &mut script,
            iterations: DEFAULT_ITERATIONS,
        };
        while let Some(line) = shell.console.line("psesh:> ") {
            match shell.run_line(&line) {
                Outcome::Exit => break,
                // Stop at the first failure: the lines after it may be answers (PINs,
                // passwords) that the failed command never read, and must not run as commands.
                Outcome::Failed => {
                    failed = true;
                    eprintln!("psesh: stopping the script at the failed command");
                    break;
                }
                Outcome::Done => {}
            }
        }
    } else {
        let history = state.join("history").join(role.name());
        if let Err(e) = tessera_appliance::create_dir(&state.join("history")) {
            eprintln!("psesh: warning: no history will be kept: {e}");
        }
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| format!("cannot start line editing: {e}"))?;
        let _ = editor.load_history(&history);
        let mut terminal = Terminal { editor, history };
        println!(
            "Tessera appliance shell. You are {role}; type help for your commands, exit to leave."
        );
        while let Some(line) = terminal.line("psesh:> ") {
            if !line.trim().is_empty() {
                let _ = terminal.editor.add_history_entry(line.as_str());
            }
            let mut shell = Shell {
                state: state.clone(),
                role,
                console: &mut terminal,
                iterations: DEFAULT_ITERATIONS,
            };
            if shell.run_line(&line) == Outcome::Exit {
                break;
            }
        }
        let _ = terminal.editor.save_history(&terminal.history);
    }
    audit.record(role.name(), "logout")?;
    Ok(u8::from(failed))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("psesh: {message}");
            ExitCode::FAILURE
        }
    }
}
