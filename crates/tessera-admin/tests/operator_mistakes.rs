//! The operator's small mistakes and the tools' small words: a PIN file that cannot hold a
//! PIN, Mode Locked set by accident, a look at a device not set up, a reader that goes away
//! (`| head -1`), counts, labels and the clock event.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tessera_testkit::{binary, Daemon, Transport};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

/// `ctconf` against `daemon` (device 0) without a terminal; `args` as given.
fn ctconf(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(binary("ctconf"))
        .envs(daemon.trust_env())
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Administrator PIN file that [`Daemon::admin`] wrote.
fn admin_pin(daemon: &Daemon) -> String {
    daemon.dir().join("admin.pin").display().to_string()
}

#[test]
fn a_pin_file_too_short_is_refused_as_malformed_and_not_counted_as_a_wrong_pin() {
    let daemon = Daemon::start();
    daemon.admin(Transport::Unix, &[]);
    let short = write(daemon.dir(), "short.pin", "12");
    let out = ctconf(&daemon, &["-fc", "--pin-file", short.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is malformed")
            && stderr.contains("short.pin")
            && stderr.contains("4 to 255")
            && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    // A wrong PIN of a PIN's length is then the first wrong guess: the short one was never
    // counted (it would make this one the second).
    let wrong = write(daemon.dir(), "wrong.pin", "not-the-pin");
    let out = ctconf(&daemon, &["-fc", "--pin-file", wrong.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("wrong Administrator PIN"),
        "{}",
        text(&out.stderr)
    );
    let events = daemon.admin(Transport::Unix, &["-e"]);
    let failures: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("login-failure"))
        .collect();
    assert_eq!(failures.len(), 1, "{events}");
    assert!(failures[0].contains("1 consecutive"), "{events}");
    assert!(!events.contains("flags-changed"), "{events}");
}

#[test]
fn mode_locked_is_set_only_when_confirmed_and_says_that_only_a_tamper_undoes_it() {
    let daemon = Daemon::start();
    daemon.admin(Transport::Unix, &[]);
    let pin = admin_pin(&daemon);
    for letters in ["-fcl", "-fF"] {
        let out = ctconf(&daemon, &[letters, "--pin-file", &pin]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{letters}: {stderr}");
        assert!(
            stderr.contains("Set Mode Locked on device 0")
                && stderr.contains("Only a tamper undoes it")
                && stderr.contains(&format!("run `ctconf {letters} --pin-file {pin} --yes`")),
            "{letters}: {stderr}"
        );
    }
    let status = daemon.admin(Transport::Unix, &[]);
    assert!(status.contains("Default (No flags set)"), "{status}");
    let out = ctconf(&daemon, &["-fcl", "--pin-file", &pin, "--yes"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("Security Mode set to: No Public Crypto, Mode Locked")
            && stdout.contains("only a tamper"),
        "{stdout}"
    );
    // Other flags are not asked about.
    let other = Daemon::start();
    other.admin(Transport::Unix, &[]);
    let out = ctconf(&other, &["-fcw", "--pin-file", &admin_pin(&other)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn showing_a_device_that_is_not_set_up_shows_it_and_says_it_needs_set_up() {
    let daemon = Daemon::start();
    // Device 1 of the list, as an operator with two devices would look at it.
    let out = Command::new(binary("ctconf"))
        .envs(daemon.trust_env())
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            format!(
                "{} {}",
                daemon.dir().join("other.sock").display(),
                daemon.socket().display()
            ),
        )
        .arg("-a1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Serial Number"), "{stdout}");
    assert!(
        stdout.contains("Admin Token           : not set up")
            && stdout.contains("Device 1 needs set-up: run `ctconf -a1` on a terminal"),
        "{stdout}"
    );
    // Nothing was set up by looking: set-up (with the PIN files) still comes first.
    let set_up = daemon.admin(Transport::Unix, &[]);
    assert!(set_up.contains("Admin token set up"), "{set_up}");
}

#[test]
fn no_tool_panics_when_its_reader_has_gone() {
    let daemon = Daemon::start();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("ctident", vec!["trust", "list"]),
        ("ctident", vec!["--help"]),
        ("ctconf", vec![]),
        ("ctconf", vec!["--help"]),
        ("psesh", vec!["--help"]),
        ("tesserad", vec!["--help"]),
    ];
    for (program, args) in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        // `| head -1` after its line: the reader is gone before the tool writes.
        drop(reader);
        let out = Command::new(binary(program))
            .envs(daemon.trust_env())
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                daemon.server_list(Transport::Unix),
            )
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{program} {args:?}: {stderr}");
        assert!(
            out.status.success(),
            "{program} {args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[test]
fn counts_labels_and_names_read_as_sentences() {
    let daemon = Daemon::start();
    for program in ["ctconf", "ctident", "psesh"] {
        let out = Command::new(binary(program))
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            text(&out.stdout).starts_with(&format!("{program} ")),
            "{}",
            text(&out.stdout)
        );
    }
    daemon.admin(Transport::Unix, &["-t"]);
    daemon.identify(Transport::Unix, &[]);
    let listed = daemon.ctident(Transport::Unix, &["trust", "list"]);
    assert!(listed.contains("(1 certificate)\n"), "{listed}");
    assert!(listed.contains("(0 certificates)\n"), "{listed}");
    daemon.admin(Transport::Unix, &["-fu"]);
    let channels = daemon.admin(Transport::Unix, &["--channels"]);
    assert!(channels.ends_with("\n1 channel\n"), "{channels}");
    let events = daemon.admin(Transport::Unix, &["-e"]);
    let clock = events
        .lines()
        .find(|l| l.contains("clock-changed"))
        .unwrap_or_else(|| panic!("{events}"));
    let (_, detail) = clock.split_once("clock-changed").unwrap();
    let detail = detail.trim();
    // from YYYY-MM-DD hh:mm:ss UTC to YYYY-MM-DD hh:mm:ss UTC
    let words: Vec<&str> = detail.split(' ').collect();
    assert_eq!(words.len(), 8, "{detail}");
    assert_eq!(
        (words[0], words[3], words[4], words[7]),
        ("from", "UTC", "to", "UTC"),
        "{detail}"
    );
    // A local peer is named by its process, in one word (pid=N(program)), never "((unnamed))".
    assert!(
        channels.contains("pid=") && channels.contains("(ctconf)"),
        "{channels}"
    );
    assert!(
        !channels.contains("unnamed") && !events.contains("unnamed"),
        "{events}"
    );
}
