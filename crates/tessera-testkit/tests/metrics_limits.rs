//! The metrics endpoint under a flood of connections, and a bad `--metrics` address. Apart
//! from `metrics.rs`, whose test sets process-wide environment variables for the library.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_testkit::{free_port, pkcs11_module, tool, wait_until, Daemon, Transport};

/// One scrape: the text of GET /metrics (empty when the connection is refused or closed
/// without an answer).
fn scrape(port: u16) -> String {
    let mut text = String::new();
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        if write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").is_ok() {
            let _ = stream.read_to_string(&mut text);
        }
    }
    text
}

#[test]
fn a_flood_of_connections_to_the_metrics_port_is_bounded_and_takes_nothing_from_applications() {
    let port = free_port();
    let address = format!("tcp:127.0.0.1:{port}");
    let daemon = Daemon::start_with(&["--metrics", &address]);
    assert!(scrape(port).starts_with("HTTP/1.1 200 OK"));
    // 40 connections that send nothing: 16 hold the scrape slots (for 1 s at most), the rest
    // are answered 503 at once.
    let idle: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert_eq!(idle.len(), 40);
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    let busy = scrape(port);
    assert!(
        busy.starts_with("HTTP/1.1 503"),
        "a scrape beyond the slots is refused at once: {busy:?}"
    );
    assert!(asked.elapsed() < Duration::from_millis(900));
    // Applications are served meanwhile.
    let listed = Command::new(tool("pkcs11-tool"))
        .arg("--module")
        .arg(pkcs11_module())
        .arg("--list-slots")
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "applications are served during the flood"
    );
    // The idle ones are closed after the request deadline, even while their clients keep them
    // open: scrapes work again.
    assert!(wait_until(Duration::from_secs(5), || scrape(port)
        .starts_with("HTTP/1.1 200 OK")));
    drop(idle);
}

#[test]
fn a_bad_metrics_address_is_refused_with_the_form_to_use() {
    let output = Command::new(tessera_testkit::binary("tesserad"))
        .args(["--metrics", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("give tcp:HOST:PORT"), "{message}");
}
