//! Long work shows progress: a spinner on a terminal (run under `script`, a real pty), a line
//! when it starts and one when it ends otherwise; short work shows nothing. The long work is
//! the first-time set-up of a device whose PIN records take seconds to stretch.

use std::process::Command;

use tessera_testkit::{binary, tool, Daemon, Transport};

#[test]
fn long_work_shows_a_spinner_on_a_terminal_and_lines_otherwise() {
    // Two PIN records at 3,000,000 PBKDF2 iterations: seconds, well past the delay.
    let daemon = Daemon::start_with(&["--kdf-iterations", "3000000"]);
    let dir = daemon.dir();
    std::fs::write(dir.join("aso"), "aso-pin-1234\n").unwrap();
    std::fs::write(dir.join("admin"), "admin-pin-1234\n").unwrap();
    let servers = daemon.server_list(Transport::Unix);
    let ctconf = |extra: &[&str]| {
        let mut command = Command::new(binary("ctconf"));
        command
            .arg("--aso-pin-file")
            .arg(dir.join("aso"))
            .arg("--admin-pin-file")
            .arg(dir.join("admin"))
            .args(extra)
            .env("ET_HSM_NETCLIENT_SERVERLIST", &servers);
        command
    };

    // Not a terminal: a line at the start and one at the end, on standard error.
    let output = ctconf(&[]).output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("device 0: setting up the Admin token …\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("device 0: setting up the Admin token: done in "),
        "{stderr}"
    );
    // Standard output keeps only the result.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("done in"), "{stdout}");

    // Short work shows nothing.
    let status = ctconf(&[]).output().unwrap();
    assert!(status.status.success());
    let quiet = String::from_utf8_lossy(&status.stderr);
    assert!(!quiet.contains("done in"), "{quiet}");

    // A terminal: the spinner (its template ends with the elapsed time) is drawn and cleared.
    let tamper = ctconf(&[
        "--pin-file",
        dir.join("admin").to_str().unwrap(),
        "--tamper",
        "--yes",
    ])
    .output()
    .unwrap();
    assert!(tamper.status.success());
    let line = format!(
        "{} --aso-pin-file {} --admin-pin-file {}",
        binary("ctconf").display(),
        dir.join("aso").display(),
        dir.join("admin").display()
    );
    let output = Command::new(tool("script"))
        .args(["-qec", &line, "/dev/null"])
        .env("ET_HSM_NETCLIENT_SERVERLIST", &servers)
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(
        screen.contains("device 0: setting up the Admin token (") && screen.contains("\x1b[2K"),
        "no spinner drawn:\n{screen:?}"
    );
    assert!(
        !screen.contains("setting up the Admin token …"),
        "a terminal gets the spinner, not the plain line:\n{screen:?}"
    );
    assert!(screen.contains("done in"), "{screen:?}");
}
