//! `tesserad --metrics` serves Prometheus text that moves as the workload says: requests by
//! call and result, latency by family, connections, sessions, channels and handshakes under
//! secure messaging, a PIN lockout, a session limit's refusals, the store's commits; and
//! `--log-format json` writes one JSON object per line with the security events' fields.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use tessera_testkit::{free_port, pkcs11_module, tool, Daemon, Transport};

const SO_PIN: &str = "87654321";
const USER_PIN: &str = "12345678";

/// One scrape: the text of GET /metrics.
/// (Empty when the connection is refused or closed without an answer.)
fn scrape(port: u16, path: &str) -> String {
    let mut text = String::new();
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
        if write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").is_ok() {
            let _ = stream.read_to_string(&mut text);
        }
    }
    text
}

/// The value of one sample (`name{labels}` exactly as written), 0 when absent.
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[test]
fn metrics_move_as_the_workload_says_and_json_logs_are_json() {
    let port = free_port();
    let address = format!("tcp:127.0.0.1:{port}");
    let daemon = Daemon::start_with(&[
        "--metrics",
        &address,
        "--log-format",
        "json",
        "--max-sessions-per-connection",
        "3",
    ]);
    let transport = Transport::Unix;
    let pkcs11_tool = |args: &[&str]| {
        Command::new(tool("pkcs11-tool"))
            .arg("--module")
            .arg(pkcs11_module())
            .args(args)
            .envs(daemon.trust_env())
            .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
            .output()
            .unwrap()
    };
    for args in [
        &[
            "--slot-index",
            "0",
            "--init-token",
            "--label",
            "metrics",
            "--so-pin",
            SO_PIN,
        ][..],
        &[
            "--token-label",
            "metrics",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--init-pin",
            "--pin",
            USER_PIN,
        ],
    ] {
        let output = pkcs11_tool(args);
        assert!(
            output.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // From here on, every application's calls go through a channel.
    daemon.secure(transport, "nuNU");

    let before = scrape(port, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK\r\n"), "{before}");
    assert!(
        before.contains("Content-Type: text/plain; version=0.0.4"),
        "{before}"
    );

    // The workload: 2 random calls in one process, then 3 wrong PINs in three processes;
    // every process makes a channel (flags nuNU).
    let random = pkcs11_tool(&[
        "--token-label",
        "metrics",
        "--login",
        "--pin",
        USER_PIN,
        "--generate-random",
        "32",
    ]);
    assert!(random.status.success());
    let random = pkcs11_tool(&["--token-label", "metrics", "--generate-random", "16"]);
    assert!(random.status.success());
    for _ in 0..3 {
        let wrong = pkcs11_tool(&[
            "--token-label",
            "metrics",
            "--login",
            "--pin",
            "00000000",
            "-I",
        ]);
        assert!(!wrong.status.success());
    }
    let after = scrape(port, "/metrics");
    let delta = |sample: &str| value(&after, sample) - value(&before, sample);
    assert_eq!(
        delta("tessera_requests_total{call=\"GenerateRandom\",result=\"CKR_OK\"}"),
        2.0,
        "{after}"
    );
    assert_eq!(
        delta("tessera_requests_total{call=\"Login\",result=\"CKR_PIN_INCORRECT\"}"),
        3.0,
        "{after}"
    );
    assert_eq!(
        delta("tessera_requests_total{call=\"Login\",result=\"CKR_OK\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("tessera_request_duration_seconds_count{family=\"random\"}"),
        2.0
    );
    assert_eq!(
        delta("tessera_request_duration_seconds_count{family=\"login\"}"),
        4.0
    );
    assert!(delta("tessera_request_duration_seconds_sum{family=\"login\"}") > 0.0);
    // Five processes, each through its own channel.
    assert!(delta("tessera_handshakes_total") >= 5.0, "{after}");
    assert!(
        delta("tessera_connections_accepted_total") >= 5.0,
        "{after}"
    );
    // Each wrong PIN is counted on disk.
    assert!(
        delta("tessera_store_commit_duration_seconds_count") >= 3.0,
        "{after}"
    );
    assert!(value(&after, "tessera_store_bytes") > 0.0);
    assert_eq!(value(&after, "tessera_pin_lockouts_total"), 0.0);

    // In one process: sessions and a channel open while it runs, a fourth session refused by
    // the per-connection limit, and the user PIN locked by wrong guesses.
    for (name, value) in daemon.trust_env() {
        std::env::set_var(name, value);
    }
    std::env::set_var("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport));
    let pkcs11 = Pkcs11::new(pkcs11_module()).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let sessions: Vec<_> = (0..3)
        .map(|_| pkcs11.open_ro_session(slot).unwrap())
        .collect();
    assert!(pkcs11.open_ro_session(slot).is_err(), "the fourth session");
    let during = scrape(port, "/metrics");
    assert!(value(&during, "tessera_sessions_open") >= 3.0, "{during}");
    assert!(value(&during, "tessera_channels_open") >= 1.0, "{during}");
    assert!(
        value(&during, "tessera_connections_open") >= 1.0,
        "{during}"
    );
    assert_eq!(
        value(&during, "tessera_limit_refusals_total{kind=\"sessions\"}"),
        1.0,
        "{during}"
    );
    let wrong = AuthPin::new("99999999".into());
    for _ in 0..12 {
        let _ = sessions[0].login(UserType::User, Some(&wrong));
    }
    drop(sessions);
    let locked = scrape(port, "/metrics");
    assert_eq!(
        value(&locked, "tessera_pin_lockouts_total"),
        1.0,
        "{locked}"
    );
    assert!(
        value(
            &locked,
            "tessera_requests_total{call=\"Login\",result=\"CKR_PIN_LOCKED\"}"
        ) >= 1.0,
        "{locked}"
    );
    // No secret reaches the metrics.
    for secret in [USER_PIN, SO_PIN, "99999999", "metrics\""] {
        assert!(!locked.contains(secret), "{secret} in the metrics");
    }
    assert!(scrape(port, "/other").starts_with("HTTP/1.1 404"));

    // --log-format json: every line an object; the security events carry their fields.
    let log = daemon.log();
    let mut events = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["level"].is_string() && object["timestamp"].is_string(),
            "{line}"
        );
        if object["kind"] == "login-failure" {
            assert!(
                object["role"].is_string() && object["detail"].is_string(),
                "{line}"
            );
            events += 1;
        }
    }
    assert!(events >= 3, "{log}");
}

/// Where handshakes are signed, as `tessera_handshake_signatures_total` counts them: one
/// alone on the I/O thread (two thread hand-offs spared), a flood of them — eight client
/// threads making handshakes back to back — on the worker pool, so that the I/O thread stays
/// free for other connections' requests and the signatures use every core. (With only the
/// requests being handled counted, each handshake of a flood was the one request the lone I/O
/// thread was handling when it came, and all but a few were signed there.)
#[test]
fn a_lone_handshake_is_signed_on_the_io_thread_and_a_flood_on_the_pool() {
    use tessera_testkit::sm;
    let port = free_port();
    let address = format!("tcp:127.0.0.1:{port}");
    let daemon = Daemon::start_with(&["--metrics", &address]);
    daemon.secure(Transport::Unix, "nuNU");
    sm::init_token(&daemon, Transport::Unix);
    let server = daemon.server_list(Transport::Unix);
    let handshake = || {
        let device = sm::secured(&daemon, &server, &[]);
        sm::open(&device);
    };
    let signed = |text: &str| {
        (
            value(text, "tessera_handshake_signatures_total{thread=\"io\"}"),
            value(text, "tessera_handshake_signatures_total{thread=\"pool\"}"),
        )
    };

    let before = signed(&scrape(port, "/metrics"));
    for _ in 0..5 {
        handshake();
    }
    let alone = signed(&scrape(port, "/metrics"));
    assert_eq!(
        (alone.0 - before.0, alone.1 - before.1),
        (5.0, 0.0),
        "handshakes one after another (on the I/O thread, on the pool)"
    );

    const THREADS: usize = 8;
    const EACH: usize = 20;
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| (0..EACH).for_each(|_| handshake()));
        }
    });
    let flood = signed(&scrape(port, "/metrics"));
    let (io, pool) = (flood.0 - alone.0, flood.1 - alone.1);
    println!(
        "a flood of {} handshakes: {io} signed on the I/O thread, {pool} on the pool",
        THREADS * EACH
    );
    assert_eq!(io + pool, (THREADS * EACH) as f64);
    assert!(
        pool >= io,
        "a flood of handshakes was signed on the I/O thread: {io} there, {pool} on the pool"
    );
}
