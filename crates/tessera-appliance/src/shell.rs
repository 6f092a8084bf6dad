//! The commands of `psesh`: their table, name resolution (case-insensitive, unique prefixes),
//! role rules, help, and what each does.

use std::path::PathBuf;

use tessera_admin::session::{AdminSession, Target};
use tessera_admin::{eprintln, print, println, status};
use tessera_client::ClientError;
use tessera_config::access::{AccessEntry, ClientAccess};
use tessera_config::listen;
use tessera_core::time::now;
use tessera_core::{ck, Rv, SecretBytes};
use tessera_identity::trust::{Level, TrustStore};
use tessera_wire::{AdminCommand, Call, DeviceStatus, Reply};
use zeroize::Zeroizing;

use crate::audit::AuditLog;
use crate::users::{Role, Users};

/// Where the shell reads command lines and answers to its questions.
pub trait Console {
    /// A line (a command, or the answer to `prompt`); `None` at the end of input.
    fn line(&mut self, prompt: &str) -> Option<String>;
    /// A secret (password or PIN), not echoed where there is a terminal.
    fn secret(&mut self, prompt: &str) -> Option<Zeroizing<String>>;
}

/// One command of the table.
struct Spec {
    name: &'static str,
    /// Its subcommands; the first is the default when none is given.
    subcommands: &'static [&'static str],
    roles: &'static [Role],
    /// Subcommands open to fewer roles than the command (the others are open to `roles`).
    narrower: &'static [(&'static str, &'static [Role])],
    summary: &'static str,
    help: &'static str,
    /// Whether the command needs the HSM and logs in to nothing (see `needs_channel`).
    hsm: bool,
}

const EVERYONE: &[Role] = &[Role::Admin, Role::Operator, Role::Audit];
const OPERATORS: &[Role] = &[Role::Admin, Role::Operator];

const COMMANDS: &[Spec] = &[
    Spec {
        name: "help",
        subcommands: &[],
        roles: EVERYONE,
        narrower: &[],
        summary: "list the commands you may run, or explain one",
        help: "help            the commands you may run\nhelp COMMAND    what COMMAND does (abbreviations work: help cl)",
        hsm: false,
    },
    Spec {
        name: "exit",
        subcommands: &[],
        roles: EVERYONE,
        narrower: &[],
        summary: "leave psesh (also: quit, or Ctrl-D)",
        help: "exit            leave psesh",
        hsm: false,
    },
    Spec {
        name: "quit",
        subcommands: &[],
        roles: EVERYONE,
        narrower: &[],
        summary: "leave psesh",
        help: "quit            leave psesh",
        hsm: false,
    },
    Spec {
        name: "whoami",
        subcommands: &[],
        roles: EVERYONE,
        narrower: &[],
        summary: "show your appliance user",
        help: "whoami          your appliance user and what it may do",
        hsm: false,
    },
    Spec {
        name: "passwd",
        subcommands: &[],
        roles: EVERYONE,
        narrower: &[],
        summary: "change your own password",
        help: "passwd          asks for your current password, then the new one twice",
        hsm: false,
    },
    Spec {
        name: "hsm",
        subcommands: &["show", "cert", "channels", "events"],
        roles: EVERYONE,
        // audit fetches the chain and reads the event log, as every user runs `hsm cert`;
        // the HSM's status and its channels (who is connected) are the operators'.
        narrower: &[("show", OPERATORS), ("channels", OPERATORS)],
        summary: "the housed HSM: status, identity chain, channels, event log",
        help: "hsm show        the HSM's status (what ctconf -v shows; admin and pseoperator)\n\
               hsm cert        fetch the HSM's identity certificate chain into YOUR appliance trust\n                store (shows subject, issuer, serial, validity and SHA-256 fingerprint,\n                and asks before adding);\n                with secure messaging required, hsm commands work only after this\n\
               hsm cert show   the certificates in your appliance trust store\n\
               hsm cert clear  empty your appliance trust store\n\
               hsm channels    the HSM's secure-messaging channels (asks the HSM Administrator PIN;\n                admin and pseoperator)\n\
               hsm events      the HSM's event log and its integrity (asks the HSM Administrator PIN)",
        hsm: true,
    },
    Spec {
        name: "clients",
        subcommands: &["show", "add", "remove", "clear"],
        roles: OPERATORS,
        narrower: &[],
        summary: "which client addresses may connect to the HSM (enforced by the daemon)",
        help: "clients show            the client access list\n\
               clients add ADDRESS     allow an address or network (192.0.2.7, 192.0.2.0/24, any)\n\
               clients remove ADDRESS  take one out\n\
               clients clear           no network client at all (the local socket stays open)\n\
               A fresh appliance has no list: every address may connect until one is added.\n\
               The daemon reads the list at every new connection.",
        hsm: false,
    },
    Spec {
        name: "date",
        subcommands: &["show", "sync"],
        roles: OPERATORS,
        narrower: &[],
        summary: "the appliance's and the HSM's clocks",
        help: "date show       the appliance's time and the HSM's clock\n\
               date sync       set the HSM's clock from the appliance's (asks the HSM Administrator PIN)",
        hsm: false,
    },
    Spec {
        name: "network",
        subcommands: &["show", "add", "remove"],
        roles: OPERATORS,
        narrower: &[],
        summary: "the addresses the HSM daemon serves",
        help: "network show            where the daemon listens now (or that it is not running),\n                        what it will listen on after a restart, and the address\n                        psesh uses\n\
               network add ADDRESS     also serve ADDRESS (tcp:HOST:PORT or unix:PATH)\n\
               network remove ADDRESS  stop serving ADDRESS\n\
               Changes take effect when the daemon restarts.",
        hsm: false,
    },
    Spec {
        name: "user",
        subcommands: &["list", "password"],
        roles: &[Role::Admin],
        narrower: &[],
        summary: "appliance users and their passwords",
        help: "user list            the appliance users and their roles\n\
               user password NAME   set a new password for pseoperator or audit",
        hsm: false,
    },
    Spec {
        name: "log",
        subcommands: &["show", "rotate"],
        roles: &[Role::Admin],
        narrower: &[],
        summary: "the HSM daemon's log on the appliance",
        help: "log show [N]    the daemon's log (its last N lines)\n\
               log rotate      move it aside (kept as tesserad.log.<time>); the daemon starts a new one",
        hsm: false,
    },
    Spec {
        name: "audit",
        subcommands: &["show", "rotate"],
        roles: &[Role::Audit],
        narrower: &[],
        summary: "the appliance audit log",
        help: "audit show [N]  the audit log (its last N lines)\n\
               audit rotate    move the log aside (kept as audit.log.<time>) and start a new one",
        hsm: false,
    },
];

fn role_summary(role: Role) -> &'static str {
    match role {
        Role::Admin => "everything pseoperator may, plus appliance users and the daemon log",
        Role::Operator => "the HSM, client access, date and time, network settings",
        Role::Audit => {
            "the appliance audit log, the HSM's event log, your HSM trust store (hsm cert)"
        }
    }
}

/// Resolves `word` among `names`: case-insensitive, an exact name or a unique prefix.
pub fn resolve(word: &str, names: &[&'static str], what: &str) -> Result<&'static str> {
    let word = word.to_ascii_lowercase();
    if let Some(exact) = names.iter().find(|n| **n == word) {
        return Ok(exact);
    }
    let matches: Vec<&'static str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with(&word))
        .collect();
    match matches[..] {
        [one] => Ok(one),
        [] => Err(format!(
            "unknown {what} \"{word}\"; the {what}s are: {}",
            names.join(", ")
        )),
        _ => Err(format!(
            "\"{word}\" is ambiguous: it could be {}; type more letters",
            matches.join(" or ")
        )),
    }
}

/// Return codes that mean no channel could be had.
const CHANNEL_FAILURES: [Rv; 5] = [
    Rv::CannotDeriveKeys,
    Rv::BadProtection,
    Rv::SmsError,
    Rv::NoSessionKeys,
    Rv::BadReply,
];

/// What the shell does after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command worked (or the line was empty).
    Done,
    /// The command failed; the message was shown.
    Failed,
    /// The user leaves.
    Exit,
}

/// A logged-in appliance user's shell.
pub struct Shell<'a> {
    /// The appliance state directory.
    pub state: PathBuf,
    /// Who is logged in.
    pub role: Role,
    /// Where input comes from.
    pub console: &'a mut dyn Console,
    /// PBKDF2 iterations for passwords set in this shell.
    pub iterations: u32,
}

/// A result whose error is the line to show.
pub type Result<T> = std::result::Result<T, String>;

fn yes(answer: Option<String>) -> bool {
    answer.is_some_and(|a| matches!(a.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

impl Shell<'_> {
    fn audit(&self) -> AuditLog {
        AuditLog::new(&self.state)
    }

    fn users(&self) -> Users {
        Users::new(&self.state)
    }

    /// Records a state change in the audit log; a failure to record fails the command.
    fn record(&self, event: &str) -> Result<()> {
        self.audit().record(self.role.name(), event)
    }

    /// Runs one command line.
    pub fn run_line(&mut self, line: &str) -> Outcome {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            return Outcome::Done;
        }
        match self.run(&words) {
            Ok(exit) if exit => Outcome::Exit,
            Ok(_) => Outcome::Done,
            Err(message) => {
                eprintln!("psesh: {message}");
                Outcome::Failed
            }
        }
    }

    fn run(&mut self, words: &[&str]) -> Result<bool> {
        let names: Vec<&'static str> = COMMANDS.iter().map(|c| c.name).collect();
        let name = resolve(words[0], &names, "command")?;
        let spec = COMMANDS
            .iter()
            .find(|c| c.name == name)
            .ok_or("the command table is inconsistent")?;
        if !spec.roles.contains(&self.role) {
            return self.refuse(words, name, spec.roles);
        }
        let sub = match (spec.subcommands.first(), words.get(1)) {
            (None, _) => "",
            (Some(first), None) => first,
            (Some(_), Some(word)) => {
                resolve(word, spec.subcommands, &format!("{name} subcommand"))?
            }
        };
        if let Some((_, roles)) = spec.narrower.iter().find(|(s, _)| *s == sub) {
            if !roles.contains(&self.role) {
                return self.refuse(words, &format!("{name} {sub}"), roles);
            }
        }
        let rest = words.get(2..).unwrap_or_default();
        if spec.hsm {
            return self.hsm(sub, rest).map(|()| false);
        }
        match (name, sub) {
            ("help", _) => self.help(words.get(1).copied())?,
            ("exit" | "quit", _) => return Ok(true),
            ("whoami", _) => println!("{}: {}", self.role, role_summary(self.role)),
            ("passwd", _) => self.passwd()?,
            ("clients", sub) => self.clients(sub, rest)?,
            ("date", sub) => self.date(sub)?,
            ("network", sub) => self.network(sub, rest)?,
            ("user", sub) => self.user(sub, rest)?,
            ("audit", sub) => self.audit_command(sub, rest)?,
            ("log", sub) => self.daemon_log(sub, rest)?,
            _ => return Err(format!("\"{name} {sub}\" is not implemented")),
        }
        Ok(false)
    }

    /// Refuses `command` (what `words` resolved to) to this user, who is not in `roles`; the
    /// refusal is audited.
    fn refuse(&self, words: &[&str], command: &str, roles: &[Role]) -> Result<bool> {
        let allowed: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        self.record(&format!("refused: {}", words.join(" ")))?;
        Err(format!(
            "\"{command}\" is for {}; you are {} ({})",
            allowed.join(" and "),
            self.role,
            role_summary(self.role)
        ))
    }

    fn help(&self, topic: Option<&str>) -> Result<()> {
        let mine: Vec<&Spec> = COMMANDS
            .iter()
            .filter(|c| c.roles.contains(&self.role))
            .collect();
        match topic {
            None => {
                println!(
                    "Commands for {} (abbreviate to any unique prefix; case does not matter):",
                    self.role
                );
                for c in &mine {
                    println!("  {:<9} {}", c.name, c.summary);
                }
                println!("Type help COMMAND for its subcommands.");
            }
            Some(word) => {
                let names: Vec<&'static str> = COMMANDS.iter().map(|c| c.name).collect();
                let name = resolve(word, &names, "command")?;
                let spec = COMMANDS
                    .iter()
                    .find(|c| c.name == name)
                    .ok_or("no such command")?;
                println!("{}: {}", spec.name, spec.summary);
                for line in spec.help.lines() {
                    println!("  {}", line.trim_start_matches(' '));
                }
                let closed = std::iter::once((spec.name.to_string(), spec.roles)).chain(
                    spec.narrower
                        .iter()
                        .map(|(sub, roles)| (format!("{} {sub}", spec.name), *roles)),
                );
                for (command, roles) in closed {
                    if !roles.contains(&self.role) {
                        let allowed: Vec<&str> = roles.iter().map(|r| r.name()).collect();
                        println!(
                            "  ({command}: for {}; not for {})",
                            allowed.join(" and "),
                            self.role
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn new_password(&mut self, whose: &str) -> Result<Zeroizing<String>> {
        let first = self
            .console
            .secret(&format!("New password for {whose}: "))
            .ok_or("no password given")?;
        let again = self
            .console
            .secret(&format!("New password for {whose} again: "))
            .ok_or("no password given")?;
        if *first != *again {
            return Err("the two passwords differ; nothing was changed".into());
        }
        Ok(first)
    }

    fn passwd(&mut self) -> Result<()> {
        let current = self
            .console
            .secret("Current password: ")
            .ok_or("no password given")?;
        if !self.users().verify(self.role, current.as_bytes())? {
            self.record("passwd failed: wrong current password")?;
            return Err("wrong current password; nothing was changed".into());
        }
        let new = self.new_password(self.role.name())?;
        self.users()
            .set_password(self.role, new.as_bytes(), self.iterations)?;
        self.record("changed own password")?;
        println!("Password changed.");
        Ok(())
    }

    fn user(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        match sub {
            "list" => {
                for (role, iterations) in self.users().list()? {
                    println!(
                        "  {:<12} {}  (PBKDF2-HMAC-SHA256, {iterations} iterations)",
                        role.name(),
                        role_summary(role)
                    );
                }
                Ok(())
            }
            _ => {
                let name = rest.first().ok_or("usage: user password NAME")?;
                let role = Role::from_name(&name.to_ascii_lowercase())?;
                if role == self.role {
                    return Err("to change your own password use passwd".into());
                }
                let new = self.new_password(role.name())?;
                self.users()
                    .set_password(role, new.as_bytes(), self.iterations)?;
                self.record(&format!("reset the password of {role}"))?;
                println!("Password of {role} set.");
                Ok(())
            }
        }
    }

    fn audit_command(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        let log = self.audit();
        match sub {
            "show" => {
                print!("{}", last_lines(&log.read()?, rest.first().copied())?);
                Ok(())
            }
            _ => {
                let kept = log.rotate(self.role.name())?;
                println!("Audit log rotated; the previous log is {}.", kept.display());
                Ok(())
            }
        }
    }

    fn daemon_log(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        let path = self.state.join("tesserad.log");
        if sub == "show" {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            print!("{}", last_lines(&text, rest.first().copied())?);
            return Ok(());
        }
        let kept = crate::move_aside(&path)?;
        self.record(&format!(
            "log rotate: the daemon log is now {}",
            kept.display()
        ))?;
        println!(
            "Daemon log rotated; the previous log is {}.",
            kept.display()
        );
        Ok(())
    }

    fn access_path(&self) -> PathBuf {
        self.state.join("clients")
    }

    fn clients(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        let path = self.access_path();
        let exists = path.exists();
        let mut list = ClientAccess::read(&path).map_err(|e| e.to_string())?;
        match sub {
            "show" => {
                if !exists {
                    println!("No client access list: every address may connect (clients add ADDRESS restricts).");
                } else if list.entries.is_empty() {
                    println!("The list is empty: no network client may connect (the local socket is open).");
                } else {
                    println!("Clients that may connect:");
                    for entry in &list.entries {
                        println!("  {entry}");
                    }
                }
                Ok(())
            }
            "add" | "remove" => {
                let text = rest
                    .first()
                    .ok_or_else(|| format!("usage: clients {sub} ADDRESS (an address, a network like 192.0.2.0/24, or any)"))?;
                let entry = AccessEntry::parse(text).map_err(|e| e.to_string())?;
                if !exists {
                    list.entries.clear();
                }
                if sub == "add" {
                    if list.entries.contains(&entry) {
                        return Err(format!("{entry} is already in the list"));
                    }
                    list.entries.push(entry);
                } else {
                    let before = list.entries.len();
                    list.entries.retain(|e| *e != entry);
                    if list.entries.len() == before {
                        return Err(format!(
                            "{entry} is not in the list (clients show lists it)"
                        ));
                    }
                }
                list.write(&path).map_err(|e| e.to_string())?;
                self.record(&format!("clients {sub} {entry}"))?;
                println!(
                    "Client access list: {}",
                    if list.entries.is_empty() {
                        "empty (no network client may connect)".to_string()
                    } else {
                        list.entries
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                if sub == "add"
                    && entry != AccessEntry::Any
                    && list.entries.contains(&AccessEntry::Any)
                {
                    println!("Note: \"any\" is in the list, so every address still may connect (clients remove any).");
                }
                Ok(())
            }
            _ => {
                let answer = self
                    .console
                    .line("No network client will be able to connect. Clear the list? [y/N] ");
                if !yes(answer) {
                    return Err("not cleared".into());
                }
                ClientAccess {
                    entries: Vec::new(),
                }
                .write(&path)
                .map_err(|e| e.to_string())?;
                self.record("clients clear")?;
                println!("Client access list cleared: only the local socket is served.");
                Ok(())
            }
        }
    }

    fn network(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        let file = self.state.join("listen");
        let configured = listen::read_file(&file).map_err(|e| e.to_string())?;
        // Without a `listen` file the daemon serves its defaults; what it serves now (the
        // daemon's own default socket path, not this user's) is where changes start from.
        let serving = listen::read_file(&self.state.join("listening"))
            .ok()
            .flatten();
        let mut addresses = match (&configured, serving) {
            (Some(configured), _) => configured.clone(),
            (None, Some(serving)) => serving,
            (None, None) => {
                return Err(if sub == "show" {
                    "the HSM daemon has not recorded where it listens (is it running with --appliance?)".into()
                } else {
                    "start the daemon with --appliance once before changing its addresses".into()
                })
            }
        };
        if sub == "show" {
            // `listening` is what the daemon served when it last started: it stays when the
            // daemon stops, so each address is tried.
            match listen::read_file(&self.state.join("listening")).ok().flatten() {
                Some(recorded) => {
                    let answering: Vec<bool> = recorded.iter().map(answers).collect();
                    if answering.iter().any(|a| *a) {
                        println!("The HSM daemon serves now:");
                        for (address, answers) in recorded.iter().zip(&answering) {
                            let note = if *answers { "" } else { " (not answering)" };
                            println!("  {address}{note}");
                        }
                    } else {
                        println!(
                            "The HSM daemon is not running: nothing answers at the addresses it served when it last ran ({}). Start it (for example systemctl start tessera-appliance).",
                            recorded
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
                None => println!("The HSM daemon has not recorded where it listens (is it running with --appliance?)."),
            }
            println!(
                "After a restart without --listen it serves ({}):",
                if configured.is_some() {
                    "set with network add/remove"
                } else {
                    "its defaults"
                }
            );
            for address in &addresses {
                println!("  {address}");
            }
            let target = Target::open(0).map_err(|f| f.message)?;
            println!("psesh reaches the HSM at {}.", target.device.address());
            return Ok(());
        }
        let text = rest
            .first()
            .ok_or_else(|| format!("usage: network {sub} ADDRESS (tcp:HOST:PORT or unix:PATH)"))?;
        let address = listen::parse(text).map_err(|e| e.to_string())?;
        if sub == "add" {
            if addresses.contains(&address) {
                return Err(format!("{address} is already served"));
            }
            addresses.push(address.clone());
        } else {
            let before = addresses.len();
            addresses.retain(|a| *a != address);
            if addresses.len() == before {
                return Err(format!(
                    "{address} is not served (network show lists the addresses)"
                ));
            }
            if addresses.is_empty() {
                return Err("the daemon must serve at least one address".into());
            }
        }
        let mut text =
            String::from("# Addresses tesserad --appliance serves (set with psesh network).\n");
        for a in &addresses {
            text += &format!("{a}\n");
        }
        crate::write_atomically(&file, &text)?;
        self.record(&format!("network {sub} {address}"))?;
        println!(
            "The daemon will serve {} after its next restart (unless it is started with --listen).",
            addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(())
    }

    fn date(&mut self, sub: &str) -> Result<()> {
        let target = Target::open(0).map_err(|f| f.message)?;
        let status = target.status().map_err(|f| f.message)?;
        match sub {
            "show" => {
                println!("Appliance time: {}", status::clock(now()));
                println!("HSM clock:      {}", status::clock(status.clock));
                Ok(())
            }
            _ => {
                self.ready_channel(&target, &status)?;
                let session = self.admin_session(&target, &status)?;
                let time = now();
                session
                    .run(AdminCommand::SetClock(time))
                    .map_err(|f| f.message)?;
                self.record(&format!("set the HSM clock to {}", status::clock(time)))?;
                println!("HSM clock set to {}.", status::clock(time));
                Ok(())
            }
        }
    }

    fn trust_store(&self) -> TrustStore {
        TrustStore {
            level: Level::User,
            dir: self.state.join("trust").join(self.role.name()),
        }
    }

    /// The message every HSM command gives while this user lacks the HSM's chain.
    fn missing_chain(&self) -> String {
        format!(
            "the HSM requires secure messaging, and the trust store of appliance user {} does not hold its certificate chain (searched: {}), so no trusted channel can be made; run \"hsm cert\" to fetch the chain",
            self.role,
            self.trust_store().dir.display()
        )
    }

    /// Makes sure a trusted channel can be had when the HSM requires one: a session is opened
    /// and closed on the Admin slot (which needs the channel under secure messaging).
    fn ready_channel(&self, target: &Target, status: &DeviceStatus) -> Result<()> {
        let slot = status.info.slot_count.saturating_sub(1);
        let open = Call::OpenSession {
            slot,
            flags: ck::CKF_SERIAL_SESSION as u64,
        };
        match target.device.call(None, open) {
            Ok((Reply::Handle(session), generation)) => {
                let _ = target
                    .device
                    .call(Some(generation), Call::CloseSession { session });
                Ok(())
            }
            Ok(_) => Err("the HSM answered an open-session request wrongly".into()),
            Err(ClientError::Returned(code)) if code == Rv::CertNotValidated.code() => {
                Err(self.missing_chain())
            }
            // Any other answer of the device came through whatever protection it requires
            // (an Admin token not set up yet, for one); channel failures are shown.
            Err(ClientError::Returned(code))
                if !CHANNEL_FAILURES.iter().any(|rv| rv.code() == code) =>
            {
                Ok(())
            }
            Err(e) => Err(target.explain(e).message),
        }
    }

    fn admin_session<'t>(
        &mut self,
        target: &'t Target,
        status: &DeviceStatus,
    ) -> Result<AdminSession<'t>> {
        let pin = self
            .console
            .secret("HSM Administrator PIN: ")
            .ok_or("no PIN given")?;
        let pin = SecretBytes::from_slice(pin.trim_end_matches(['\r', '\n']).as_bytes());
        AdminSession::login(target, status, &pin).map_err(|f| f.message)
    }

    fn hsm(&mut self, sub: &str, rest: &[&str]) -> Result<()> {
        if sub == "cert" {
            let action = match rest.first() {
                None => "fetch",
                Some(word) => resolve(word, &["show", "clear"], "hsm cert subcommand")?,
            };
            return self.cert(action);
        }
        let target = Target::open(0).map_err(|f| f.message)?;
        let status = target.status().map_err(|f| f.message)?;
        self.ready_channel(&target, &status)?;
        match sub {
            "show" => print!("{}", status::render(&status, true)),
            "channels" => {
                let session = self.admin_session(&target, &status)?;
                match session.run(AdminCommand::Channels).map_err(|f| f.message)? {
                    Reply::Channels(channels) => print!("{}", status::render_channels(&channels)),
                    other => {
                        return Err(format!(
                            "the HSM answered {other:?} to a channel list request"
                        ))
                    }
                }
            }
            _ => {
                let session = self.admin_session(&target, &status)?;
                let Reply::Events(events, problem, checked) =
                    session.run(AdminCommand::Events).map_err(|f| f.message)?
                else {
                    return Err("the HSM answered an event log request wrongly".into());
                };
                print!("{}", status::render_events(&events));
                for line in &checked {
                    println!("Checked: {line}");
                }
                if let Some(problem) = problem {
                    return Err(format!("event log integrity check FAILED: {problem}"));
                }
                println!("Event log integrity: OK ({} entries)", events.len());
            }
        }
        Ok(())
    }

    fn cert(&mut self, action: &str) -> Result<()> {
        let store = self.trust_store();
        match action {
            "show" => {
                let certificates = store.list().map_err(|e| e.to_string())?;
                if certificates.is_empty() {
                    println!(
                        "The trust store of {} is empty (hsm cert fills it).",
                        self.role
                    );
                }
                for (_, der) in certificates {
                    println!("  {}", status::describe_certificate(&der));
                }
                Ok(())
            }
            "clear" => {
                let certificates = store.list().map_err(|e| e.to_string())?;
                let answer = self.console.line(&format!(
                    "Remove the {} {} from the trust store of {}? [y/N] ",
                    certificates.len(),
                    status::plural(certificates.len(), "certificate", "certificates"),
                    self.role
                ));
                if !yes(answer) {
                    return Err("nothing removed".into());
                }
                for (path, _) in &certificates {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                }
                self.record(&format!(
                    "hsm cert clear ({} {})",
                    certificates.len(),
                    status::plural(certificates.len(), "certificate", "certificates")
                ))?;
                println!("Trust store of {} cleared.", self.role);
                Ok(())
            }
            _ => {
                let target = Target::open(0).map_err(|f| f.message)?;
                let identity = match target.call(Call::Identity).map_err(|f| f.message)? {
                    Reply::Identity(identity) => identity,
                    other => {
                        return Err(format!("the HSM answered {other:?} to an identity request"))
                    }
                };
                let Some(pic) = identity.pic else {
                    return Err("the HSM has no identity certificate yet (an HSM administrator makes one with ctident gen-selfsigned)".into());
                };
                let chain: Vec<Vec<u8>> = std::iter::once(pic).chain(identity.chain).collect();
                println!(
                    "The HSM at {} presents this certificate chain:",
                    target.device.address()
                );
                for der in &chain {
                    println!("  {}", status::describe_certificate(der));
                }
                let answer = self.console.line(&format!(
                    "Do the fingerprints match what the HSM administrator gave you? Add the chain to the trust store of {}? [y/N] ",
                    self.role
                ));
                if !yes(answer) {
                    return Err("the chain was not added".into());
                }
                // The store is made here, group-shared like all the state (the trust store
                // would make it with the umask's modes).
                crate::create_dir(&store.dir)?;
                let mut fingerprints = Vec::new();
                for der in &chain {
                    let file = store.add(der).map_err(|e| e.to_string())?;
                    crate::share_file(&file)?;
                    fingerprints.push(tessera_identity::inspect::fingerprint(der));
                }
                self.record(&format!("hsm cert: trusted {}", fingerprints.join(", ")))?;
                println!(
                    "{} {} added to the trust store of {}.",
                    chain.len(),
                    status::plural(chain.len(), "certificate", "certificates"),
                    self.role
                );
                Ok(())
            }
        }
    }
}

/// Whether something accepts connections at `address` (a daemon that stopped leaves its
/// socket file behind, and nothing listens on its port). A TCP address on every interface is
/// tried on the loopback interface.
fn answers(address: &listen::Listen) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
    match address {
        listen::Listen::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
        listen::Listen::Tcp(text) => text
            .to_socket_addrs()
            .map(|found| {
                found.into_iter().any(|a| {
                    let ip = match a.ip() {
                        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                        ip => ip,
                    };
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::new(ip, a.port()),
                        std::time::Duration::from_secs(2),
                    )
                    .is_ok()
                })
            })
            .unwrap_or(false),
    }
}

/// The last `count` lines of `text` (all without a count), each ending in a newline.
fn last_lines(text: &str, count: Option<&str>) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let count = match count {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| format!("\"{n}\" is not a number of lines"))?,
        None => lines.len(),
    };
    Ok(lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_by_unique_prefix_in_any_case() {
        let names: Vec<&'static str> = COMMANDS.iter().map(|c| c.name).collect();
        assert_eq!(resolve("he", &names, "command"), Ok("help"));
        assert_eq!(resolve("HSM", &names, "command"), Ok("hsm"));
        assert_eq!(resolve("Cl", &names, "command"), Ok("clients"));
        assert_eq!(
            resolve("h", &names, "command").unwrap_err(),
            "\"h\" is ambiguous: it could be help or hsm; type more letters"
        );
        assert!(resolve("reboot", &names, "command")
            .unwrap_err()
            .starts_with("unknown command \"reboot\""));
        assert_eq!(
            resolve("ce", &["show", "cert", "channels", "events"], "x"),
            Ok("cert")
        );
    }
}
