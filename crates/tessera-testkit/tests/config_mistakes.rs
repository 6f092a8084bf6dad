//! Mistyped configuration is reported, not silently ignored: an item name that no part of
//! Tessera reads (`ET_PTKC_<serial>_SMRP`), a name that is no item (`ET_PTKC_SMPR`), and an
//! SMPR for a serial that no device of the server list has go to the library's log once, and
//! `ctconf --check-config` prints them with every item's value and the level it came from.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use tessera_testkit::{binary, pkcs11_module, tool, Daemon, Transport};

/// A serial no test daemon has (theirs are random 10-digit numbers; this one starts with 0).
const WRONG_SERIAL: &str = "0000000001";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program` as a client of `daemon` with the test's trust stores and report file, its
/// own user and system configuration files, and `env`.
fn client(daemon: &Daemon, program: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(program)
        .envs(daemon.trust_env())
        .env("TESSERA_USER_CONFIG", daemon.dir().join("user.conf"))
        .env("TESSERA_SYSTEM_CONFIG", daemon.dir().join("system.conf"))
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn mistakes(serial: &str) -> Vec<(String, String)> {
    vec![
        (format!("ET_PTKC_{WRONG_SERIAL}_SMPR"), "SR".into()),
        (format!("ET_PTKC_{serial}_SMRP"), "SR".into()),
        ("ET_PTKC_SMPR".into(), "SR".into()),
        ("ET_HSM_NETCLIENT_SERVERLST".into(), "/nowhere".into()),
    ]
}

#[test]
fn the_library_reports_each_mistake_once_in_its_log() {
    let daemon = Daemon::start();
    let serial = daemon.serial(Transport::Unix);
    let mut env = mistakes(&serial);
    // The device's own SMPR, well written: not reported.
    env.push((format!("ET_PTKC_{serial}_SMPR"), "T".into()));
    let module = pkcs11_module();
    let module = module.to_str().unwrap();
    for _ in 0..2 {
        let out = client(
            &daemon,
            &tool("pkcs11-tool"),
            &["--module", module, "--list-slots"],
            &env,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let log = std::fs::read_to_string(daemon.client_log()).unwrap_or_default();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // Once per initialisation of the library (two runs here), whatever the calls.
    assert_eq!(
        lines(&format!("configuration item ET_PTKC_{serial}_SMRP (environment): no such item, ignored; did you mean ET_PTKC_{serial}_SMPR?")),
        2,
        "{log}"
    );
    assert_eq!(
        lines("configuration item ET_PTKC_SMPR (environment): not an item name, ignored: an SMPR item names the device's serial number"),
        2,
        "{log}"
    );
    assert_eq!(
        lines(&format!("configuration item ET_PTKC_{WRONG_SERIAL}_SMPR (environment): no device of the server list has serial {WRONG_SERIAL} (the devices that answered are serial {serial})")),
        2,
        "{log}"
    );
    assert_eq!(
        lines("configuration item ET_HSM_NETCLIENT_SERVERLST (environment): no such item, ignored; did you mean ET_HSM_NETCLIENT_SERVERLIST?"),
        2,
        "{log}"
    );
    assert_eq!(lines(&format!("ET_PTKC_{serial}_SMPR (")), 0, "{log}");
}

#[test]
fn check_config_shows_every_value_with_its_level_and_the_mistakes() {
    let daemon = Daemon::start();
    let serial = daemon.serial(Transport::Unix);
    let user = daemon.dir().join("user.conf");
    let system = daemon.dir().join("system.conf");
    std::fs::write(
        &user,
        format!("ET_PTKC_{serial}_SMPR=SR\nET_HSM_NETCLIENT_CONNECT_TIMEOUT=5\n"),
    )
    .unwrap();
    std::fs::write(
        &system,
        "ET_HSM_NETCLIENT_CONNECT_TIMEOUT=7\nET_HSM_NETCLIENT_REPLY_TIMEOUT=30\n",
    )
    .unwrap();
    let ctconf = binary("ctconf");
    // A clean configuration: exit 0.
    let out = client(&daemon, &ctconf, &["--check-config"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        format!(
            "  ET_HSM_NETCLIENT_SERVERLIST = {}  (environment)\n",
            daemon.socket().display()
        ),
        format!(
            "  ET_HSM_NETCLIENT_CONNECT_TIMEOUT = 5  (user file {})\n",
            user.display()
        ),
        format!(
            "  ET_HSM_NETCLIENT_REPLY_TIMEOUT = 30  (system file {})\n",
            system.display()
        ),
        "  ET_PTKC_SMS_MAX_SECONDS = 3600  (default)\n".to_string(),
        format!("Device 0: unix:{}", daemon.socket().display()),
        format!("  Serial Number = {serial}  (the device)\n"),
        format!(
            "  ET_PTKC_{serial}_SMPR = SR  (user file {})\n",
            user.display()
        ),
        "No problems found.\n".to_string(),
    ] {
        assert!(stdout.contains(&line), "{line:?} missing from:\n{stdout}");
    }
    // The four mistakes: exit 1, each named with where it is set.
    let out = client(&daemon, &ctconf, &["--check-config"], &mistakes(&serial));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("4 problems:\n"), "{stdout}");
    for needle in [
        format!("ET_PTKC_{serial}_SMRP (environment): no such item, ignored; did you mean ET_PTKC_{serial}_SMPR?"),
        "ET_PTKC_SMPR (environment): not an item name".to_string(),
        format!("ET_PTKC_{WRONG_SERIAL}_SMPR (environment): no device of the server list has serial {WRONG_SERIAL}"),
        "ET_HSM_NETCLIENT_SERVERLST (environment): no such item, ignored; did you mean ET_HSM_NETCLIENT_SERVERLIST?".to_string(),
    ] {
        assert!(stdout.contains(&needle), "{needle:?} missing from:\n{stdout}");
    }
    // A mistake in a file names the file.
    std::fs::write(&system, "ET_PTKC_SMS_MAX_SECOND=10\n").unwrap();
    let out = client(&daemon, &ctconf, &["--check-config"], &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "ET_PTKC_SMS_MAX_SECOND (system file {}): no such item, ignored; did you mean ET_PTKC_SMS_MAX_SECONDS?",
            system.display()
        )),
        "{stdout}"
    );
}
