//! The real `ctconf` binary against a daemon started by each test, over the Unix socket and
//! over loopback TCP, including every refusal.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tessera_testkit::{Daemon, Transport, TRANSPORTS};

struct Ctconf<'a> {
    daemon: &'a Daemon,
    transport: Transport,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

impl Ctconf<'_> {
    fn command(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin("ctconf")
            .unwrap()
            .args(args)
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                self.daemon.server_list(self.transport),
            )
            .env("ET_HSM_NETCLIENT_CONNECT_TIMEOUT", "2")
            .write_stdin("")
            .assert()
    }

    fn pin(&self, name: &str) -> String {
        self.daemon.dir().join(name).display().to_string()
    }

    /// Runs with the Administrator PIN file and requires success; returns stdout.
    fn admin(&self, args: &[&str]) -> String {
        let pin = self.pin("admin.pin");
        let mut all = args.to_vec();
        all.extend_from_slice(&["--pin-file", &pin]);
        let output = self.command(&all).get_output().clone();
        assert!(
            output.status.success(),
            "ctconf {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs with the Administrator PIN file and requires failure; returns stderr (one line).
    fn refused(&self, args: &[&str], code: i32) -> String {
        let pin = self.pin("admin.pin");
        let mut all = args.to_vec();
        all.extend_from_slice(&["--pin-file", &pin]);
        let output = self.command(&all).code(code).get_output().clone();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            stderr.lines().count(),
            1,
            "one clear line expected: {stderr}"
        );
        assert!(stderr.starts_with("ctconf: "), "{stderr}");
        stderr
    }

    fn status(&self, verbose: bool) -> String {
        let args: &[&str] = if verbose { &["-v"] } else { &[] };
        let output = self.command(args).success().get_output().clone();
        String::from_utf8(output.stdout).unwrap()
    }

    fn set_up(&self) {
        let dir = self.daemon.dir();
        let aso = write(dir, "aso.pin", "aso-pin-1234");
        let admin = write(dir, "admin.pin", "admin-pin-1234");
        write(dir, "wrong.pin", "not-the-pin");
        write(dir, "so.pin", "token-so-pin");
        let output = self
            .command(&[
                "--aso-pin-file",
                aso.to_str().unwrap(),
                "--admin-pin-file",
                admin.to_str().unwrap(),
            ])
            .success()
            .get_output()
            .clone();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.contains("Admin token set up"), "{stdout}");
        assert!(stdout.contains("Serial Number"), "{stdout}");
    }
}

fn value<'a>(status: &'a str, label: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(label) && l.contains(" : "))
        .and_then(|l| l.split_once(" : "))
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("no {label} in:\n{status}"))
}

#[test]
fn first_time_set_up_and_the_status_view() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let ctconf = Ctconf {
            daemon: &daemon,
            transport,
        };
        ctconf.set_up();
        let status = ctconf.status(false);
        for label in [
            "Model",
            "Serial Number",
            "Firmware Version",
            "Adapter Clock",
            "Security Mode",
            "Transport Mode",
            "Open Session Count",
            "Number of Slots",
        ] {
            value(&status, label);
        }
        assert_eq!(value(&status, "Model"), "Tessera HSM");
        assert_eq!(value(&status, "Security Mode"), "Default (No flags set)");
        assert_eq!(value(&status, "Number of Slots"), "3");
        assert_eq!(value(&status, "Transport Mode"), "None");
        assert_eq!(value(&status, "Serial Number").len(), 10);
        // Every line is `Label : value` with the labels padded to one column.
        let columns: Vec<usize> = status.lines().map(|l| l.find(": ").unwrap()).collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{status}");
        let verbose = ctconf.status(true);
        assert_eq!(value(&verbose, "Admin Token"), "set up");
        assert!(verbose.contains("Admin slot"));
        // Set-up cannot be repeated: the device is now set up, so ctconf just shows it.
        let again = ctconf.status(false);
        assert!(!again.contains("Admin token set up"));
    }
}

#[test]
fn bad_device_numbers_and_unreachable_servers_are_one_clear_line() {
    let daemon = Daemon::start();
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Unix,
    };
    let out = ctconf.command(&["-a7"]).code(2).get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("device 7 is not in the server list"),
        "{stderr}"
    );
    let missing = daemon.dir().join("nobody.sock");
    let out = Command::cargo_bin("ctconf")
        .unwrap()
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            format!("{} 127.0.0.1:1", missing.display()),
        )
        .args(["-a1"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1);
    assert!(
        stderr.contains("device 1 (tcp:127.0.0.1:1) is unreachable"),
        "{stderr}"
    );
    let out = Command::cargo_bin("ctconf")
        .unwrap()
        .env("ET_HSM_NETCLIENT_SERVERLIST", "host:notaport")
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("ET_HSM_NETCLIENT_SERVERLIST"));
    // The help teaches every option with examples.
    let help = Command::cargo_bin("ctconf")
        .unwrap()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .clone();
    let help = String::from_utf8(help.stdout).unwrap();
    for option in [
        "-a",
        "-f",
        "-v",
        "-n",
        "-c",
        "-d",
        "-e",
        "-p",
        "-t",
        "-m",
        "--tamper",
        "--pin-file",
        "--aso-pin-file",
        "--admin-pin-file",
        "Examples",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[test]
fn flags_are_set_replaced_cleared_refused_and_locked() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let ctconf = Ctconf {
            daemon: &daemon,
            transport,
        };
        ctconf.set_up();
        ctconf.admin(&["-fcw"]);
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "No Public Crypto, Weak PKCS#11 mechanisms"
        );
        // The new set replaces the old.
        ctconf.admin(&["-fa"]);
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "FIPS Algorithms Only"
        );
        let unknown = ctconf.refused(&["-fcz"], 2);
        assert!(
            unknown.contains("unknown flag letter 'z'") && unknown.contains("enucti"),
            "{unknown}"
        );
        for needs_identity in ["-fu", "-fn", "-fN", "-fU", "-fF", "-fq"] {
            // --yes: -fF sets Mode Locked, which is confirmed first.
            let refused = ctconf.refused(&[needs_identity, "--yes"], 1);
            assert!(
                refused.contains("identity") && refused.contains("ctident gen-selfsigned all"),
                "{refused}"
            );
        }
        ctconf.admin(&["-f0"]);
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "Default (No flags set)"
        );
        // A wrong PIN changes nothing.
        let wrong = ctconf.pin("wrong.pin");
        let out = ctconf
            .command(&["-fc", "--pin-file", &wrong])
            .code(1)
            .get_output()
            .clone();
        assert!(String::from_utf8(out.stderr)
            .unwrap()
            .contains("wrong Administrator PIN"));
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "Default (No flags set)"
        );
        // Mode Locked: every later -f is refused until a tamper.
        ctconf.admin(&["-fcl", "--yes"]);
        let locked = ctconf.refused(&["-f0"], 1);
        assert!(locked.contains("Mode Locked"), "{locked}");
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "No Public Crypto, Mode Locked"
        );
        ctconf.admin(&["--tamper", "--yes"]);
        // The device needs first-time set-up again: without a terminal, ctconf shows it and
        // says so.
        let out = ctconf.command(&["-v"]).success().get_output().clone();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            value(&stdout, "Admin Token") == "not set up"
                && stdout.contains("Device 0 needs set-up: run `ctconf -a0` on a terminal")
                && stdout.contains("--aso-pin-file FILE --admin-pin-file FILE"),
            "{stdout}"
        );
        ctconf.set_up();
        let after = ctconf.status(true);
        assert_eq!(value(&after, "Security Mode"), "Default (No flags set)");
        ctconf.admin(&["-fc"]);
        assert_eq!(
            value(&ctconf.status(false), "Security Mode"),
            "No Public Crypto"
        );
        let events = ctconf.admin(&["-e"]);
        for kind in [
            "flags-changed",
            "flags-change-refused",
            "login-failure",
            "tamper",
        ] {
            assert!(events.contains(kind), "{kind} missing from:\n{events}");
        }
    }
}

#[test]
fn wrong_pins_count_toward_the_lockout() {
    let daemon = Daemon::start();
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Tcp,
    };
    ctconf.set_up();
    let wrong = ctconf.pin("wrong.pin");
    for _ in 0..10 {
        ctconf.command(&["-t", "--pin-file", &wrong]).code(1);
    }
    let out = ctconf
        .command(&["-t", "--pin-file", &ctconf.pin("admin.pin")])
        .code(1)
        .get_output()
        .clone();
    assert!(
        String::from_utf8(out.stderr).unwrap().contains("locked"),
        "the right PIN no longer works"
    );
}

#[test]
fn slots_tokens_clock_and_transport_mode() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let ctconf = Ctconf {
            daemon: &daemon,
            transport,
        };
        ctconf.set_up();
        let so = ctconf.pin("so.pin");
        ctconf.admin(&["-n0", "--label", "payments", "--so-pin-file", &so]);
        let verbose = ctconf.status(true);
        assert!(
            value(&verbose, "Slot 0").starts_with("\"payments\", user PIN not set"),
            "{verbose}"
        );
        ctconf.admin(&["-c2"]);
        assert_eq!(value(&ctconf.status(false), "Number of Slots"), "5");
        let verbose = ctconf.status(true);
        assert_eq!(value(&verbose, "Slot 4"), "Admin slot");
        // Deleting asks for confirmation; without a terminal and without --yes it refuses.
        let refused = ctconf.refused(&["-d1"], 1);
        assert!(refused.contains("--yes"), "{refused}");
        assert_eq!(value(&ctconf.status(false), "Number of Slots"), "5");
        ctconf.admin(&["-d1", "--yes"]);
        assert_eq!(value(&ctconf.status(false), "Number of Slots"), "4");
        // The token that was in slot 0 is still there.
        assert!(value(&ctconf.status(true), "Slot 0").starts_with("\"payments\""));
        let admin_slot = ctconf.refused(&["-d3", "--yes"], 1);
        assert!(admin_slot.contains("CKR_SLOT_ID_INVALID"), "{admin_slot}");
        ctconf.admin(&["-m1"]);
        assert_eq!(
            value(&ctconf.status(false), "Transport Mode"),
            "Single Shot"
        );
        ctconf.refused(&["-m5"], 2);
        ctconf.admin(&["-t"]);
        assert!(value(&ctconf.status(false), "Adapter Clock").ends_with("UTC"));
        let events = ctconf.admin(&["-e"]);
        for kind in [
            "admin-setup",
            "token-initialised",
            "slots-added",
            "slot-deleted",
            "transport-mode-changed",
            "clock-changed",
        ] {
            assert!(events.contains(kind), "{kind} missing from:\n{events}");
        }
        assert!(events.contains("Event log integrity: OK"));
        ctconf.admin(&["-p"]);
        let purged = ctconf.admin(&["-e"]);
        assert!(
            purged.contains("log-purged") && !purged.contains("slots-added"),
            "{purged}"
        );
    }
}

#[test]
fn the_event_log_detects_edits_and_removals_and_can_be_purged() {
    let mut daemon = Daemon::start_with(&["--event-log-size", "50"]);
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Unix,
    };
    ctconf.set_up();
    let wrong = ctconf.pin("wrong.pin");
    ctconf.command(&["-t", "--pin-file", &wrong]).code(1);
    for mode in ["-m1", "-m2", "-m0", "-m1", "-m2"] {
        ctconf.admin(&[mode]);
    }
    let events = ctconf.admin(&["-e"]);
    assert!(
        events.contains("login-failure") && events.contains("Administrator"),
        "{events}"
    );
    // Bounded: past the size, the oldest go.
    for _ in 0..60 {
        ctconf.admin(&["-m0"]);
    }
    let bounded = ctconf.admin(&["-e"]);
    assert!(
        bounded.contains("Event log integrity: OK (50 entries)"),
        "{bounded}"
    );
    // It survives a restart intact.
    daemon.restart();
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Unix,
    };
    let restarted = ctconf.admin(&["-e"]);
    assert!(
        restarted.contains("Event log integrity: OK (50 entries)"),
        "{restarted}"
    );

    // Edit an entry in the middle, with the daemon stopped.
    daemon.stop();
    let store_path = daemon.data_dir().join("tessera.redb");
    {
        let store = tessera_store::Store::open(&store_path).unwrap();
        let mut events = store.events().unwrap();
        events[20].detail = "nothing happened".into();
        store.replace_events(&events).unwrap();
    }
    daemon.restart();
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Unix,
    };
    let out = ctconf
        .command(&["-e", "--pin-file", &ctconf.pin("admin.pin")])
        .code(3)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("integrity check FAILED") && stderr.contains("was altered"),
        "{stderr}"
    );

    // Remove an entry in the middle instead.
    daemon.stop();
    {
        let store = tessera_store::Store::open(&store_path).unwrap();
        let mut events = store.events().unwrap();
        events[20].detail = store_events_detail_restored();
        events.remove(30);
        store.replace_events(&events).unwrap();
    }
    daemon.restart();
    let ctconf = Ctconf {
        daemon: &daemon,
        transport: Transport::Unix,
    };
    let out = ctconf
        .command(&["-e", "--pin-file", &ctconf.pin("admin.pin")])
        .code(3)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("integrity check FAILED"), "{stderr}");

    // The Administrator purges; the log restarts with one entry that says so, and is intact.
    ctconf.admin(&["-p"]);
    let purged = ctconf.admin(&["-e"]);
    assert!(
        purged.contains("log-purged") && purged.contains("Event log integrity: OK (1 entries)"),
        "{purged}"
    );
}

/// The value the edited entry had (transport mode changes all read "a -> b"); restoring it
/// exactly is not needed for the removal check, which must fail on its own.
fn store_events_detail_restored() -> String {
    "restored".into()
}

/// Runs ctconf on a real pseudo-terminal (`script` allocates one) and types the PINs.
fn on_terminal(daemon: &Daemon, args: &str, typed: &[&str]) -> String {
    use std::io::Write;
    let ctconf = assert_cmd::cargo::cargo_bin("ctconf");
    let mut child = std::process::Command::new(tessera_testkit::tool("script"))
        .args(["-qec", &format!("{} {args}", ctconf.display()), "/dev/null"])
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in typed {
        // Each answer after its prompt is up: the prompt reads from the terminal, not a pipe.
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn pins_are_asked_on_the_terminal_without_echo() {
    let daemon = Daemon::start();
    let screen = on_terminal(
        &daemon,
        "",
        &[
            "aso-secret-1",
            "aso-secret-1",
            "admin-secret-1",
            "admin-secret-1",
        ],
    );
    for prompt in [
        "New ASO PIN:",
        "Confirm ASO PIN:",
        "New Administrator PIN:",
        "Confirm Administrator PIN:",
    ] {
        assert!(screen.contains(prompt), "{prompt} missing:\n{screen}");
    }
    assert!(screen.contains("Admin token set up"), "{screen}");
    assert!(!screen.contains("secret"), "a PIN was echoed:\n{screen}");
    let screen = on_terminal(&daemon, "-fc", &["admin-secret-1"]);
    assert!(
        screen.contains("Administrator PIN:")
            && screen.contains("Security Mode set to: No Public Crypto"),
        "{screen}"
    );
    assert!(!screen.contains("secret"), "a PIN was echoed:\n{screen}");
    // Two different new PINs are refused.
    let fresh = Daemon::start();
    let screen = on_terminal(&fresh, "", &["aso-secret-1", "aso-secret-2"]);
    assert!(screen.contains("the two ASO PINs differ"), "{screen}");
}
