//! `psesh` as each appliance user against a real `tesserad --appliance`: scripted and in a real
//! pseudo-terminal (util-linux `script`), the missing-chain failure and its cure per user, the
//! abbreviation rules, the role refusals, the audit log, and the client access list enforced by
//! the daemon on loopback TCP.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tessera_client::{ClientError, Device};
use tessera_config::ServerAddress;
use tessera_testkit::{binary, tool, Daemon, Transport, ADMIN_PIN};
use tessera_wire::{Call, Reply};

const PASSWORDS: [(&str, &str); 3] = [
    ("admin", "admin-password-1"),
    ("pseoperator", "operator-password-1"),
    ("audit", "audit-password-1"),
];

fn password(user: &str) -> &'static str {
    PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1
}

struct Appliance {
    daemon: Daemon,
}

impl Appliance {
    fn start() -> Appliance {
        let daemon = Daemon::start_with(&["--appliance"]);
        let file = daemon.dir().join("passwords");
        let text: String = PASSWORDS
            .iter()
            .map(|(u, p)| format!("{u}={p}\n"))
            .collect();
        std::fs::write(&file, text).unwrap();
        let setup = Command::new(binary("psesh"))
            .arg("--data-dir")
            .arg(daemon.data_dir())
            .args(["setup", "--kdf-iterations", "1000", "--passwords-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(setup.status.success(), "{setup:?}");
        Appliance { daemon }
    }

    fn command(&self, user: &str) -> Command {
        let mut command = Command::new(binary("psesh"));
        command
            .arg("--data-dir")
            .arg(self.daemon.data_dir())
            .args(["--user", user])
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                self.daemon.server_list(Transport::Unix),
            )
            .env_remove("ET_PTKC_GENERAL_LOG");
        command
    }

    /// Scripted mode: the password, then `input`, on standard input.
    fn script(&self, user: &str, password: &str, input: &str) -> Output {
        let mut child = self
            .command(user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{password}\n{input}").as_bytes())
            .unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Scripted mode with the right password; returns (exit ok, stdout, stderr).
    fn run(&self, user: &str, input: &str) -> (bool, String, String) {
        let output = self.script(user, password(user), input);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn audit_log(&self) -> String {
        std::fs::read_to_string(self.daemon.data_dir().join("appliance/audit.log")).unwrap()
    }
}

#[test]
fn each_user_needs_hsm_cert_before_hsm_commands_under_secure_messaging() {
    let appliance = Appliance::start();
    // The HSM gets an identity and requires secure messaging for everything.
    appliance.daemon.secure(Transport::Unix, "nuNU");
    for user in ["pseoperator", "admin", "audit"] {
        // audit's hsm commands are the chain and the event log.
        let commands: &[&str] = if user == "audit" {
            &["hsm events\n"]
        } else {
            &[
                "hsm show\n",
                "hsm channels\n",
                "hsm events\n",
                "date sync\n",
            ]
        };
        for command in commands {
            let (ok, _, err) = appliance.run(user, command);
            assert!(!ok, "{user}: {command}");
            assert!(
                err.contains(&format!(
                    "the trust store of appliance user {user} does not hold its certificate chain"
                )) && err.contains("run \"hsm cert\"")
                    && err.contains(&format!(
                        "(searched: {}",
                        appliance
                            .daemon
                            .data_dir()
                            .join("appliance")
                            .join("trust")
                            .join(user)
                            .display()
                    )),
                "{user} {command}: {err}"
            );
        }
        // Declining keeps the store empty.
        let (ok, _, err) = appliance.run(user, "hsm cert\nn\nhsm cert show\n");
        assert!(!ok);
        assert!(err.contains("the chain was not added"), "{err}");
        // The script stopped at the failure: the line after it did not run.
        assert!(
            err.contains("stopping the script at the failed command"),
            "{err}"
        );
        let (ok, out, _) = appliance.run(user, "hsm cert show\n");
        assert!(ok);
        assert!(out.contains("is empty"), "{out}");
        let input = if user == "audit" {
            format!("hsm cert\ny\nhsm cert show\nhsm events\n{ADMIN_PIN}\n")
        } else {
            format!("hsm cert\ny\nhsm show\nhsm channels\n{ADMIN_PIN}\nhsm events\n{ADMIN_PIN}\n")
        };
        let (ok, out, err) = appliance.run(user, &input);
        assert!(ok, "{user}: {out}\n{err}");
        assert!(out.contains("subject") && out.contains("SHA-256") && out.contains("serial"));
        assert!(
            out.contains(&format!(
                "2 certificates added to the trust store of {user}"
            )),
            "{out}"
        );
        assert!(out.contains("Event log integrity: OK"), "{out}");
        if user == "audit" {
            // hsm cert show lists what was just added.
            assert_eq!(out.matches("\n  subject").count(), 4, "{out}");
        } else {
            assert!(
                out.contains("Security Flags        : 0x00000186 (nuNU)"),
                "{out}"
            );
            assert!(
                (out.contains(" channel\n") || out.contains(" channels\n"))
                    && out.contains("SRPEDT"),
                "{out}"
            );
        }
    }
    // Each user's store is its own: clearing pseoperator's leaves admin's working.
    let (ok, out, _) = appliance.run("pseoperator", "hsm cert clear\ny\nhsm show\n");
    assert!(!ok);
    assert!(out.contains("Trust store of pseoperator cleared."), "{out}");
    let (ok, _, err) = appliance.run("admin", "hsm show\n");
    assert!(ok, "{err}");
    let log = appliance.audit_log();
    for needle in [
        "pseoperator  hsm cert: trusted",
        "admin        hsm cert: trusted",
        "audit        hsm cert: trusted",
        "pseoperator  hsm cert clear (2 certificates)",
        "admin        login (scripted)",
    ] {
        assert!(log.contains(needle), "{needle} missing from:\n{log}");
    }
}

#[test]
fn abbreviations_roles_passwords_and_the_audit_log() {
    let appliance = Appliance::start();
    // Abbreviations, case, and the ambiguous "h".
    let (ok, out, err) = appliance.run("pseoperator", "he\nHSM SH\nwho\nhelp cl\nh\nwhoami\n");
    assert!(!ok);
    assert!(out.contains("Commands for pseoperator"), "{out}");
    assert!(
        err.contains("\"h\" is ambiguous: it could be help or hsm; type more letters"),
        "{err}"
    );
    assert!(out.contains("Model                 : Tessera HSM"), "{out}");
    assert!(out.contains("pseoperator: the HSM, client access"), "{out}");
    assert!(out.contains("clients add ADDRESS"), "{out}");
    let (_, _, err) = appliance.run("pseoperator", "reboot\n");
    assert!(err.contains("unknown command \"reboot\""), "{err}");
    let (_, _, err) = appliance.run("pseoperator", "hsm c\n");
    assert!(
        err.contains("\"c\" is ambiguous: it could be cert or channels"),
        "{err}"
    );
    // Role refusals: audit has of hsm only the chain and the event log.
    for (user, command, refused, owner) in [
        ("pseoperator", "user list", "user", "admin"),
        ("audit", "hsm show", "hsm show", "admin and pseoperator"),
        ("audit", "hsm", "hsm show", "admin and pseoperator"),
        ("audit", "HSM SH", "hsm show", "admin and pseoperator"),
        (
            "audit",
            "hsm channels",
            "hsm channels",
            "admin and pseoperator",
        ),
        ("audit", "hsm ch", "hsm channels", "admin and pseoperator"),
        ("audit", "clients show", "clients", "admin and pseoperator"),
        ("audit", "date show", "date", "admin and pseoperator"),
        ("audit", "date sync", "date", "admin and pseoperator"),
        ("audit", "network show", "network", "admin and pseoperator"),
        ("audit", "user list", "user", "admin"),
        ("audit", "log show", "log", "admin"),
        ("admin", "audit show", "audit", "audit"),
        ("pseoperator", "audit rotate", "audit", "audit"),
        ("pseoperator", "log show", "log", "admin"),
    ] {
        let (ok, _, err) = appliance.run(user, &format!("{command}\n"));
        assert!(!ok, "{user} {command}");
        assert!(
            err.contains(&format!("\"{refused}\" is for {owner}; you are {user}")),
            "{user} {command}: {err}"
        );
        assert!(
            appliance
                .audit_log()
                .contains(&format!("{user:<11}  refused: {command}\n")),
            "{user} {command}"
        );
    }
    // audit's help says which hsm commands are not its own; its hsm commands are not refused.
    let (ok, out, err) = appliance.run("audit", "help\nhelp hsm\nwhoami\nhsm cert show\n");
    assert!(ok, "{err}");
    assert!(out.contains("  hsm       the housed HSM"), "{out}");
    assert!(
        out.contains("(hsm show: for admin and pseoperator; not for audit)")
            && out.contains("(hsm channels: for admin and pseoperator; not for audit)"),
        "{out}"
    );
    assert!(
        out.contains("audit: the appliance audit log, the HSM's event log"),
        "{out}"
    );
    assert!(out.contains("The trust store of audit is empty"), "{out}");
    // admin may do what pseoperator may, and manages users.
    let (ok, out, err) = appliance.run("admin", "clients show\nuser list\ndate show\n");
    assert!(ok, "{err}");
    assert!(
        out.contains("every address may connect") && out.contains("audit "),
        "{out}"
    );
    // admin reads and rotates the daemon's log.
    let (ok, out, err) = appliance.run("admin", "log show 50\nlog rotate\n");
    assert!(ok, "{err}");
    assert!(
        out.contains("tesserad ready") && out.contains("appliance=true"),
        "{out}"
    );
    assert!(
        out.contains("Daemon log rotated; the previous log is"),
        "{out}"
    );
    assert!(!appliance
        .daemon
        .data_dir()
        .join("appliance/tesserad.log")
        .exists());
    // admin resets audit's password; audit logs in with the new one, not the old one.
    let (ok, _, err) = appliance.run(
        "admin",
        "user password audit\nfresh-audit-pw-2\nfresh-audit-pw-2\n",
    );
    assert!(ok, "{err}");
    let refused = appliance.script("audit", password("audit"), "audit show\n");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("login incorrect"));
    let accepted = appliance.script(
        "audit",
        "fresh-audit-pw-2",
        "audit show\naudit rotate\naudit show\n",
    );
    let out = String::from_utf8_lossy(&accepted.stdout);
    assert!(accepted.status.success(), "{accepted:?}");
    for needle in [
        "audit        login failed",
        "admin        reset the password of audit",
        "pseoperator  refused: user list",
        "admin        log rotate: the daemon log is now",
        "Audit log rotated; the previous log is",
        "audit log rotated; the previous log is",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    // Under an SSH ForceCommand the command given to ssh runs like -c.
    let mut ssh = appliance
        .command("pseoperator")
        .env("SSH_ORIGINAL_COMMAND", "whoami; clients show")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ssh.stdin.take().unwrap();
    writeln!(stdin, "{}", password("pseoperator")).unwrap();
    drop(stdin);
    let output = ssh.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        out.contains("psesh:> whoami\npseoperator:") && out.contains("psesh:> clients show"),
        "{out}"
    );
    // Own password, wrong current password.
    let (ok, _, err) = appliance.run("pseoperator", "passwd\nnot-my-password\n");
    assert!(!ok);
    assert!(
        err.contains("wrong current password; nothing was changed"),
        "{err}"
    );
}

#[test]
fn the_client_access_list_is_enforced_by_the_daemon() {
    let appliance = Appliance::start();
    let address = ServerAddress::parse(&appliance.daemon.tcp_address()).unwrap();
    let reach = || {
        let device = Device::new(
            address.clone(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        device.call(None, Call::DeviceInfo)
    };
    assert!(matches!(reach(), Ok((Reply::Device(_), _))));
    let (ok, out, err) = appliance.run("pseoperator", "clients add 192.0.2.0/24\nclients show\n");
    assert!(ok, "{err}");
    assert!(out.contains("192.0.2.0/24"), "{out}");
    match reach() {
        Err(ClientError::Unreachable { .. } | ClientError::ConnectionLost { .. }) => {}
        other => panic!("a loopback client outside the list got {other:?}"),
    }
    assert!(appliance
        .daemon
        .log()
        .contains("connection refused: not in the client access list"));
    let (ok, _, err) = appliance.run("pseoperator", "clients add 127.0.0.1\n");
    assert!(ok, "{err}");
    assert!(matches!(reach(), Ok((Reply::Device(_), _))));
    let (ok, _, err) = appliance.run(
        "pseoperator",
        "clients remove 127.0.0.1\nclients add 10.0.0.1/8\n",
    );
    assert!(!ok);
    assert!(
        err.contains("host bits are set below the /8 prefix"),
        "{err}"
    );
    assert!(reach().is_err());
    // The local socket is never filtered: psesh itself still reaches the HSM.
    let (ok, _, err) = appliance.run("pseoperator", "clients clear\ny\nhsm show\n");
    assert!(ok, "{err}");
    assert!(reach().is_err());
    assert!(appliance
        .audit_log()
        .contains("pseoperator  clients add 127.0.0.1"));
}

#[test]
fn an_interactive_session_in_a_pseudo_terminal_has_history_and_no_echoed_password() {
    let appliance = Appliance::start();
    for user in ["admin", "pseoperator", "audit"] {
        let psesh = appliance.command(user);
        let line: Vec<String> = std::iter::once(psesh.get_program())
            .chain(psesh.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // util-linux `script` runs psesh on a new pseudo-terminal and relays our input to it.
        let mut child = Command::new(tool("script"))
            .args(["-qec", &line.join(" "), "/dev/null"])
            .envs(psesh.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let pause = || std::thread::sleep(Duration::from_millis(300));
        for input in [
            format!("{}\n", password(user)),
            "whoami\n".into(),
            // Up arrow: the previous line again.
            "\x1b[A\n".into(),
            "H\n".into(),
            "user list\n".into(),
            "exit\n".into(),
        ] {
            pause();
            stdin.write_all(input.as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        pause();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        let screen = String::from_utf8_lossy(&output.stdout);
        assert!(!screen.contains(password(user)), "{screen}");
        assert!(
            screen.contains(&format!("Password for {user}:")),
            "{screen}"
        );
        assert!(screen.contains("psesh:> "), "{screen}");
        assert_eq!(
            screen.matches(&format!("\n{user}: ")).count(),
            2,
            "the up arrow did not repeat whoami:\n{screen}"
        );
        assert!(screen.contains("\"h\" is ambiguous"), "{screen}");
        if user == "admin" {
            assert!(
                screen.contains("pseoperator  the HSM, client access"),
                "{screen}"
            );
        } else {
            assert!(
                screen.contains(&format!("\"user\" is for admin; you are {user}")),
                "{screen}"
            );
        }
        let log = appliance.audit_log();
        assert!(log.contains(&format!("{user:<11}  login\n")), "{log}");
        assert!(log.contains(&format!("{user:<11}  logout")), "{log}");
    }
}

#[test]
fn network_settings_apply_when_the_daemon_next_starts() {
    let mut appliance = Appliance::start();
    let runtime = appliance.daemon.dir().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = appliance.daemon.dir().join("second.sock");
    let default_socket = runtime.join("tessera/tesserad.sock");
    let input = format!(
        "network show\nnetwork add tcp:127.0.0.1:{port}\nnetwork add unix:{}\nnetwork remove unix:{}\nnetwork remove tcp:{}\nnetwork show\nnetwork add tcp:0.0.0.0:12396:7\n",
        socket.display(),
        appliance.daemon.socket().display(),
        appliance.daemon.tcp_address()
    );
    let mut command = appliance.command("pseoperator");
    let output = command
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{}", password("pseoperator"))?;
            stdin.write_all(input.as_bytes())?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        out.contains("After a restart without --listen it serves (its defaults):"),
        "{out}"
    );
    assert!(
        err.contains("\"tcp:0.0.0.0:12396:7\": an IPv6 host goes in brackets"),
        "{err}"
    );
    assert!(
        out.contains(&format!("After a restart without --listen it serves (set with network add/remove):\n  tcp:127.0.0.1:{port}\n  unix:{}\n", socket.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "The HSM daemon serves now:\n  unix:{}\n  tcp:{}\n",
            appliance.daemon.socket().display(),
            appliance.daemon.tcp_address()
        )),
        "{out}"
    );
    // Killed, the daemon leaves its socket file and its record of what it served; network
    // show says that it is not running instead of listing them as served.
    appliance.daemon.kill9();
    assert!(appliance.daemon.socket().exists());
    let (ok, out, err) = appliance.run("pseoperator", "network show\n");
    assert!(ok, "{err}");
    assert!(!out.contains("serves now"), "{out}");
    assert!(
        out.contains(&format!(
            "The HSM daemon is not running: nothing answers at the addresses it served when it last ran (unix:{}, tcp:{}). Start it",
            appliance.daemon.socket().display(),
            appliance.daemon.tcp_address()
        )),
        "{out}"
    );
    // What it will serve is still shown.
    assert!(
        out.contains(&format!(
            "  tcp:127.0.0.1:{port}\n  unix:{}\n",
            socket.display()
        )),
        "{out}"
    );
    // The daemon, restarted in appliance mode without --listen, serves what was set.
    let mut daemon = Command::new(binary("tesserad"))
        .args(["--appliance", "--kdf-iterations", "1000", "--data-dir"])
        .arg(appliance.daemon.data_dir())
        .env("XDG_RUNTIME_DIR", &runtime)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = ServerAddress::parse(&format!("127.0.0.1:{port}")).unwrap();
    let mut reached = false;
    for _ in 0..50 {
        let device = Device::new(
            address.clone(),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        if matches!(
            device.call(None, Call::DeviceInfo),
            Ok((Reply::Device(_), _))
        ) {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let listening =
        std::fs::read_to_string(appliance.daemon.data_dir().join("appliance/listening"))
            .unwrap_or_default();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(reached, "the restarted daemon does not serve port {port}");
    assert_eq!(
        listening,
        format!("tcp:127.0.0.1:{port}\nunix:{}\n", socket.display())
    );
    assert!(!default_socket.exists());
    assert!(appliance
        .audit_log()
        .contains(&format!("pseoperator  network add tcp:127.0.0.1:{port}")));
}

#[test]
fn setup_from_a_passwords_file_sets_all_three_or_nothing() {
    let daemon = Daemon::start_with(&["--appliance"]);
    let file = daemon.dir().join("passwords");
    let data_dir = daemon.data_dir();
    let setup = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let output = Command::new(binary("psesh"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["setup", "--kdf-iterations", "1000", "--passwords-file"])
            .arg(&file)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let users = data_dir.join("appliance/users");
    let shown = file.display().to_string();
    for (text, message) in [
        (
            "admin=admin-password-1\naudit=audit-password-1\n",
            format!("{shown} has no line for pseoperator (add pseoperator=PASSWORD); nothing was set"),
        ),
        (
            "admin=admin-password-1\npseoperator=operator-password-1\n\nauditor=audit-password-1\n",
            format!("{shown} line 4: \"auditor\" is not an appliance user (they are admin, pseoperator, audit); nothing was set"),
        ),
        (
            "admin=admin-password-1\npseoperator=operator-password-1\nadmin=other-password-1\naudit=audit-password-1\n",
            format!("{shown} line 3: a second line for admin; keep one; nothing was set"),
        ),
        (
            "admin=admin-password-1\npseoperator operator-password-1\naudit=audit-password-1\n",
            format!("{shown} line 2: not NAME=PASSWORD (admin=..., pseoperator=..., audit=...); nothing was set"),
        ),
        (
            "admin=admin-password-1\npseoperator=short\naudit=audit-password-1\n",
            "the password for pseoperator needs at least 8 characters; nothing was set".into(),
        ),
    ] {
        let (ok, _, err) = setup(text);
        assert!(!ok, "{text}");
        assert!(err.contains(&message), "{text}: {err}");
        // No password is ever shown.
        assert!(!err.contains("password-1"), "{err}");
        assert!(!users.exists(), "{text} set something");
    }
    // Spaces around the name and the password are not theirs, and all after the first "=" is
    // the password.
    let (ok, out, err) = setup(
        " admin = admin = password 1\npseoperator=operator-password-1\naudit=audit-password-1\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Appliance users set up: admin, pseoperator, audit."),
        "{out}"
    );
    let appliance = Appliance { daemon };
    let (ok, _, err) = appliance.run("pseoperator", "whoami\n");
    assert!(ok, "{err}");
    let login = appliance.script("admin", "admin = password 1", "whoami\n");
    assert!(login.status.success(), "{login:?}");
    // Once only.
    let (ok, _, err) =
        setup("admin=admin-password-1\npseoperator=operator-password-1\naudit=audit-password-1\n");
    assert!(!ok);
    assert!(
        err.contains("the appliance users are already set up"),
        "{err}"
    );
}

#[test]
fn known_devices_kept_by_an_earlier_version_move_into_the_users_directory() {
    use std::os::unix::fs::MetadataExt;
    let appliance = Appliance::start();
    // Earlier versions kept them in the file known/<user>.
    let known = appliance.daemon.data_dir().join("appliance/known");
    std::fs::create_dir_all(&known).unwrap();
    let record = "127.0.0.9:12396 5711537307 none clear\n";
    std::fs::write(known.join("admin"), record).unwrap();
    let (ok, _, err) = appliance.run("admin", "whoami\n");
    assert!(ok, "{err}");
    let moved = known.join("admin/known_devices");
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), record);
    assert_eq!(
        std::fs::metadata(known.join("admin")).unwrap().mode() & 0o7777,
        0o2700
    );
    // The next login finds it in place.
    let (ok, _, err) = appliance.run("admin", "whoami\n");
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), record);
}
