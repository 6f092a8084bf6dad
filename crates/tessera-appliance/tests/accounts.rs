//! The appliance as it is deployed: the daemon and the three appliance users are real system
//! accounts (made here with `useradd`, acted as with `setpriv`) that share the state through one
//! group, each in its own primary group and with umask 022, as a login shell gives them. Each
//! does its role's steps on the state the others made, and every directory the appliance made
//! ends 2770 in the shared group, every file 0660.
//!
//! Making accounts needs root (CI runs as root); without it the test says so and passes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_testkit::{binary, tool, Daemon, Transport, ADMIN_PIN};

/// The system accounts and group of one test run; removed when dropped, also after a failure.
struct Accounts {
    group: String,
    users: Vec<String>,
}

/// Runs an account tool (`useradd`, `groupadd`, ...), retrying while another process holds
/// the lock of /etc/passwd or /etc/group.
fn account_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        let output = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program} does not run: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).into_owned();
        if !last.contains("lock") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{program} {args:?} failed: {last}"))
}

fn id(flag: &str, name: &str) -> u32 {
    let output = Command::new("id").args([flag, name]).output().unwrap();
    assert!(output.status.success(), "id {flag} {name}: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

impl Accounts {
    /// A group and, per `suffix`, an account `<prefix><suffix>` in it, with names no other
    /// run uses at the same time. The first account has the group as its primary group (the
    /// daemon's, as `Group=` in its unit); the others their own, with the group added.
    fn make(suffixes: &[&str]) -> Accounts {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("tsa{:x}{:x}", std::process::id(), nanos & 0xfffff);
        let mut accounts = Accounts {
            group: format!("{prefix}g"),
            users: Vec::new(),
        };
        account_tool("groupadd", &["--system", &accounts.group]).unwrap();
        for (index, suffix) in suffixes.iter().enumerate() {
            let name = format!("{prefix}{suffix}");
            accounts.users.push(name.clone());
            let mut args = vec![
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ];
            let group = accounts.group.clone();
            if index == 0 {
                args.extend(["--no-user-group", "--gid", &group]);
            } else {
                args.extend(["--user-group", "--groups", &group]);
            }
            args.push(&name);
            account_tool("useradd", &args).unwrap();
        }
        accounts
    }

    /// `setpriv` acting as `name` (its uid, its primary group and its groups): the words
    /// before the program to run.
    fn setpriv(name: &str) -> [String; 4] {
        [
            "setpriv".into(),
            format!("--reuid={}", id("-u", name)),
            format!("--regid={}", id("-g", name)),
            "--init-groups".into(),
        ]
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for name in &self.users {
            if let Err(e) = account_tool("userdel", &[name]) {
                eprintln!("cleaning up: {e}");
            }
            // A user group that userdel left (USERGROUPS_ENAB no).
            let _ = account_tool("groupdel", &[name]);
        }
        if let Err(e) = account_tool("groupdel", &[&self.group]) {
            eprintln!("cleaning up: {e}");
        }
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

struct Appliance<'a> {
    accounts: &'a Accounts,
    daemon: Daemon,
}

impl Appliance<'_> {
    fn account(&self, role: &str) -> &str {
        let index = match role {
            "admin" => 1,
            "pseoperator" => 2,
            _ => 3,
        };
        &self.accounts.users[index]
    }

    /// `program` run by `role`'s account with umask 022, in the environment of the
    /// documented set-up.
    fn command_as(&self, role: &str, program: &Path) -> Command {
        let [setpriv, setpriv_args @ ..] = Accounts::setpriv(self.account(role));
        let mut command = Command::new(setpriv);
        command
            .args(setpriv_args)
            .args(["sh", "-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/nonexistent")
            .env("TESSERA_USER_CONFIG", "/nonexistent/et_hsm")
            .env("TESSERA_SYSTEM_CONFIG", "/nonexistent/et_hsm")
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                self.daemon.server_list(Transport::Unix),
            )
            // The daemon's account serves the socket, as in the documented set-up.
            .env("ET_HSM_NETCLIENT_SERVER_USER", &self.accounts.users[0]);
        command
    }

    /// `psesh ARGS` run by `role`'s account, `input` on standard input; (exit ok, stdout,
    /// stderr).
    fn psesh_as(&self, role: &str, args: &[&str], input: &str) -> (bool, String, String) {
        let mut child = self
            .command_as(role, &binary("psesh"))
            .arg("--data-dir")
            .arg(self.daemon.data_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Scripted psesh as `role` (its password first); panics unless every command worked.
    fn steps(&self, role: &str, commands: &str) -> String {
        let (ok, out, err) = self.psesh_as(
            role,
            &["--user", role],
            &format!("{}\n{commands}", password(role)),
        );
        assert!(
            ok,
            "{role} (account {}) failed:\n{out}\n{err}",
            self.account(role)
        );
        out
    }

    /// An interactive login of `role` on a pseudo-terminal (util-linux `script`), typing
    /// `lines` after the password; what the terminal showed.
    fn interactive(&self, role: &str, lines: &[&str]) -> String {
        let psesh = format!(
            "{} --data-dir {} --user {role}",
            binary("psesh").display(),
            self.daemon.data_dir().display()
        );
        let mut child = self
            .command_as(role, &tool("script"))
            .args(["-qec", &psesh, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for line in std::iter::once(password(role).as_str()).chain(lines.iter().copied()) {
            std::thread::sleep(Duration::from_millis(300));
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn state(&self) -> PathBuf {
        self.daemon.data_dir().join("appliance")
    }

    fn owner(&self, path: &Path) -> u32 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .uid()
    }
}

fn password(role: &str) -> String {
    format!("{role}-password-1")
}

#[test]
fn three_accounts_share_the_state_whatever_their_umask() {
    if !is_root() {
        println!(
            "SKIPPED three_accounts_share_the_state_whatever_their_umask: it makes system \
             accounts with useradd and acts as them with setpriv, which needs root (CI runs as root)"
        );
        return;
    }
    // Dropped last: the daemon (running as one of them) stops first.
    let accounts = Accounts::make(&["d", "a", "o", "u"]);
    let daemon_uid = id("-u", &accounts.users[0]);
    let group = id("-g", &accounts.users[0]);
    let launcher = format!("exec {}", Accounts::setpriv(&accounts.users[0]).join(" "));
    // The daemon's account owns the test directory (where its data directory and socket go);
    // the group may enter it.
    let daemon = Daemon::start_prepared(
        Some(&launcher),
        |dir| {
            std::os::unix::fs::chown(dir, Some(daemon_uid), Some(group)).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        },
        &["--appliance"],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    // Given back to root once the daemon listens: the test kit's tools, run by root, refuse
    // a known-devices file (theirs is in this directory) in a directory another user owns.
    std::os::unix::fs::chown(daemon.dir(), Some(0), Some(group)).unwrap();
    let appliance = Appliance {
        accounts: &accounts,
        daemon,
    };
    // The HSM gets an identity and requires secure messaging (over TCP: this process is not
    // the socket's user).
    appliance.daemon.secure(Transport::Tcp, "nuNU");
    let passwords = appliance.daemon.dir().join("passwords");
    std::fs::write(
        &passwords,
        ["admin", "pseoperator", "audit"]
            .map(|r| format!("{r}={}\n", password(r)))
            .concat(),
    )
    .unwrap();
    std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o644)).unwrap();

    // admin sets the appliance up, then fetches the chain and changes shared settings.
    let (ok, out, err) = appliance.psesh_as(
        "admin",
        &[
            "setup",
            "--kdf-iterations",
            "1000",
            "--passwords-file",
            passwords.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out}\n{err}");
    let out = appliance.steps(
        "admin",
        "hsm cert\ny\nhsm show\nclients add 127.0.0.1\nnetwork add tcp:127.0.0.1:1\n",
    );
    assert!(
        out.contains("Security Flags        : 0x00000186 (nuNU)"),
        "{out}"
    );
    // pseoperator: its own chain, the event log, and changes to the lists admin made.
    let out = appliance.steps(
        "pseoperator",
        &format!(
            "hsm cert\ny\nhsm events\n{ADMIN_PIN}\nclients add 192.0.2.0/24\nclients remove 127.0.0.1\nnetwork remove tcp:127.0.0.1:1\npasswd\n{}\nnew-operator-pw-2\nnew-operator-pw-2\n",
            password("pseoperator")
        ),
    );
    assert!(out.contains("Event log integrity: OK"), "{out}");
    // audit: its own chain, the event log, and the audit log admin began, rotated.
    let out = appliance.steps(
        "audit",
        &format!("hsm cert\ny\nhsm events\n{ADMIN_PIN}\naudit show\naudit rotate\n"),
    );
    assert!(out.contains("pseoperator  changed own password"), "{out}");
    assert!(out.contains("Audit log rotated"), "{out}");
    // admin again: the password file pseoperator rewrote, the audit log audit began, and the
    // daemon's own log.
    let out = appliance.steps("admin", "log rotate\nuser list\nhsm show\n");
    assert!(out.contains("Daemon log rotated"), "{out}");
    let (ok, _, err) = appliance.psesh_as(
        "pseoperator",
        &["--user", "pseoperator"],
        "new-operator-pw-2\nwhoami\nclients show\n",
    );
    assert!(ok, "{err}");
    // At the prompt: admin's login makes the history directory, where audit's history goes
    // too.
    for role in ["admin", "audit"] {
        let screen = appliance.interactive(role, &["whoami", "exit"]);
        assert!(screen.contains(&format!("{role}: ")), "{screen}");
        assert!(!screen.contains("warning"), "{screen}");
        let history = appliance.state().join("history").join(role);
        assert!(
            std::fs::read_to_string(&history).is_ok_and(|h| h.contains("whoami")),
            "{} was not kept:\n{screen}",
            history.display()
        );
    }

    // Who made what: the steps above really ran as the different accounts.
    let state = appliance.state();
    let uid = |role: &str| id("-u", appliance.account(role));
    assert_eq!(appliance.owner(&state.join("users")), uid("pseoperator"));
    assert_eq!(appliance.owner(&state.join("audit.log")), uid("audit"));
    assert_eq!(appliance.owner(&state.join("clients")), uid("pseoperator"));
    assert_eq!(appliance.owner(&state.join("tesserad.log")), daemon_uid);
    for role in ["admin", "pseoperator", "audit"] {
        let store = state.join("trust").join(role);
        assert_eq!(appliance.owner(&store), uid(role));
        let known = state.join("known").join(role).join("known_devices");
        let text = std::fs::read_to_string(&known)
            .unwrap_or_else(|e| panic!("{role}'s known devices {}: {e}", known.display()));
        assert!(text.contains(" required"), "{text}");
    }
    // Every mode, whatever the umask: directories 2770 and files 0660 in the shared group;
    // each user's known devices are its own (the library refuses them anywhere else), and
    // so is its history (the line editor's 0600).
    let mut seen = 0;
    let mut pending = vec![state.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let parent = path.parent().and_then(Path::file_name);
            let private = parent == Some("known".as_ref())
                || (parent == Some("history".as_ref()) && meta.is_file())
                || path
                    .parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    == Some("known".as_ref());
            let wanted = match (meta.is_dir(), private) {
                (true, false) => 0o2770,
                (true, true) => 0o2700,
                (false, false) => 0o660,
                (false, true) => 0o600,
            };
            assert_eq!(
                (mode, meta.gid()),
                (wanted, group),
                "{} is {mode:04o} in group {}, not {wanted:04o} in the appliance group {group}",
                path.display(),
                meta.gid()
            );
            if meta.is_dir() {
                pending.push(path);
            }
            seen += 1;
        }
    }
    // users, audit.log and its predecessor, clients, listen, listening, tesserad.log and its
    // predecessor, client.log, trust/ with 3 stores of 2 certificates, known/ with 3 files
    // and their locks, history/ with 2 files.
    assert!(seen >= 32, "only {seen} entries in {}", state.display());
}
