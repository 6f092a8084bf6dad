//! Why a device cannot be reached: every failure to reach or use a server-list entry goes to
//! the library's log (`ET_PTKC_GENERAL_LOG`) with the entry, the reason and what to do, once
//! while the reason stays; the device still shows as a slot without a token. Tried with the
//! real `pkcs11-tool`, as an operator would.

use std::process::Command;

use tessera_testkit::{pkcs11_module, tool, Daemon, Transport};
use tessera_wire::Call;

/// `pkcs11-tool --list-slots` through the library against `servers`, with `daemon`'s client
/// environment; returns what it printed.
fn list_slots(daemon: &Daemon, servers: &str) -> String {
    let output = Command::new(tool("pkcs11-tool"))
        .arg("--module")
        .arg(pkcs11_module())
        .arg("--list-slots")
        .envs(daemon.trust_env())
        .env("ET_HSM_NETCLIENT_SERVERLIST", servers)
        .env("ET_HSM_NETCLIENT_CONNECT_TIMEOUT", "2")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn client_log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.client_log()).unwrap_or_default()
}

/// The log lines about the device at position 0 (the log is the library's, shared by
/// every process of the test).
fn lines_with(log: &str, part: &str) -> usize {
    log.lines().filter(|l| l.contains(part)).count()
}

#[test]
fn a_stopped_daemon_is_a_slot_without_a_token_and_the_log_says_why() {
    let mut daemon = Daemon::start();
    let unix = daemon.server_list(Transport::Unix);
    let tcp_port = daemon.tcp_address();
    let tcp = daemon.server_list(Transport::Tcp);
    let up = list_slots(&daemon, &unix);
    assert!(up.contains("token state"), "reachable: {up}");
    assert_eq!(
        client_log(&daemon),
        "",
        "nothing to say while it is reachable"
    );
    daemon.stop();

    // The local socket is gone with the daemon.
    let down = list_slots(&daemon, &unix);
    assert!(
        down.contains("Slot 0") && down.contains("Tessera device 0 unreachable"),
        "still a slot: {down}"
    );
    assert!(!down.contains("token state"), "without a token: {down}");
    let log = client_log(&daemon);
    let socket = daemon.socket().display().to_string();
    assert!(
        log.lines()
            .any(|l| l.starts_with("tessera-pkcs11: device 0 (")
                && l.contains(&format!("no such socket {socket}"))
                && l.contains("start tesserad")),
        "{log}"
    );
    // A socket left behind, nobody listening: connection refused.
    let stale = std::os::unix::net::UnixListener::bind(daemon.socket()).unwrap();
    drop(stale);
    list_slots(&daemon, &unix);
    let log = client_log(&daemon);
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("connection refused on {socket}"))
                && l.contains("start tesserad")),
        "{log}"
    );
    std::fs::remove_file(daemon.socket()).unwrap();

    // Over TCP: nobody listens on the port.
    std::fs::remove_file(daemon.client_log()).unwrap();
    let down = list_slots(&daemon, &tcp);
    assert!(
        down.contains("Tessera device 0 unreachable") && !down.contains("token state"),
        "{down}"
    );
    let log = client_log(&daemon);
    assert!(
        log.lines().any(|l| l.contains("connection refused by")
            && l.contains(tcp_port.trim_start_matches("tcp:"))
            && l.contains("nothing listens on that port")),
        "{log}"
    );
    // pkcs11-tool asks for the slot list more than once: the reason is said once.
    assert_eq!(lines_with(&log, "connection refused by"), 1, "{log}");

    // One process that keeps trying: the reason once, then that the device is back.
    std::fs::remove_file(daemon.client_log()).unwrap();
    let device = tessera_testkit::sm::secured(&daemon, &tcp, &[]);
    for _ in 0..3 {
        assert!(device.call(None, Call::DeviceInfo).is_err());
    }
    daemon.restart();
    assert!(device.call(None, Call::DeviceInfo).is_ok());
    assert!(device.call(None, Call::DeviceInfo).is_ok());
    let log = client_log(&daemon);
    assert_eq!(lines_with(&log, "connection refused by"), 1, "{log}");
    assert_eq!(lines_with(&log, "reachable again"), 1, "{log}");
    let up = list_slots(&daemon, &tcp);
    assert!(up.contains("token state"), "{up}");
}

#[test]
fn a_client_the_access_list_refuses_is_told_so_in_the_log() {
    let daemon = Daemon::start_with(&["--appliance"]);
    let list = daemon.data_dir().join("appliance").join("clients");
    std::fs::write(&list, "192.0.2.0/24\n").unwrap();
    let tcp = daemon.server_list(Transport::Tcp);
    let refused = list_slots(&daemon, &tcp);
    assert!(
        refused.contains("Tessera device 0 unreachable") && !refused.contains("token state"),
        "{refused}"
    );
    let log = client_log(&daemon);
    assert!(
        log.lines()
            .any(|l| l.starts_with("tessera-pkcs11: device 0 (")
                && l.contains("refused by the access list")
                && l.contains("clients add")),
        "{log}"
    );
    // Admitted again: the token is there.
    std::fs::write(&list, "127.0.0.1\n").unwrap();
    assert!(list_slots(&daemon, &tcp).contains("token state"));
}

/// A device that goes away between two calls of a C application that keeps `SIGPIPE`'s
/// default action: the next call, written to the connection the device closed, fails with a
/// return value; the library never ends its host with the signal (its writes are `sendmsg`
/// with `MSG_NOSIGNAL`; std's vectored write is a plain `writev`).
#[test]
fn a_device_gone_between_calls_does_not_end_its_host_with_sigpipe() {
    use std::io::{BufRead, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut daemon = Daemon::start();
    tessera_testkit::sm::init_token(&daemon, Transport::Unix);
    let program = tessera_testkit::compile_c("after_close", daemon.dir());
    let mut child = Command::new(&program)
        .arg(pkcs11_module())
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .envs(daemon.trust_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.trim() != "ready" {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        panic!("the application did not start: {err}");
    }
    daemon.stop();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the application hangs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        status.signal(),
        None,
        "the application was ended by signal {:?} (13 is SIGPIPE)",
        status.signal()
    );
    assert_eq!(status.code(), Some(0));
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("random 0x") && line.trim() != "random 0x0",
        "the call on the closed connection: {line}"
    );
}
