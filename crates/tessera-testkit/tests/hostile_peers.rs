//! Hostile network peers against a daemon on loopback TCP, each attacker on its own loopback
//! address (127.0.0.2, 127.0.0.3) and the honest client on 127.0.0.1: a slowloris client
//! (a byte now and then), a crowd of half-open handshakes, more connections than one address
//! may hold, and a flood of failed handshakes. None of them starves the honest client; the
//! daemon cuts the slow and the half-open off, caps the crowd, and rate-limits the failures,
//! logging the block once.

mod raw;

mod sm_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use raw::{connect_from, receive, send};
use sm_common::{prepare, secured};
use tessera_channel::{ClientFinished, ExpectServerHello, Policy};
use tessera_core::Rv;
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Call, Message, Reply, Response};

/// Waits until the daemon closes `stream`; returns how long that took.
fn closed_within(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("the daemon did not close the connection: {e}"),
        }
    }
}

fn serial(daemon: &Daemon) -> String {
    let mut stream = connect_from(daemon, "127.0.0.1");
    send(&mut stream, Call::DeviceInfo);
    match receive(&mut stream) {
        Ok(Response::Reply(Reply::Device(info))) => info.serial,
        other => panic!("{other:?}"),
    }
}

/// Sends a client hello; the daemon's answer.
fn hello(stream: &mut TcpStream, serial: &str) -> Result<Response, u64> {
    let (_state, hello) = ExpectServerHello::start(serial, Policy(0)).unwrap();
    send(stream, Message::Handshake(hello));
    receive(stream)
}

/// The honest client: a channel over TCP from 127.0.0.1 and `calls` small calls, each of which
/// must succeed.
fn honest_calls(daemon: &Daemon, calls: usize) {
    let device = secured(daemon, &daemon.server_list(Transport::Tcp), &[]);
    for _ in 0..calls {
        let started = Instant::now();
        match device.call(None, Call::DeviceInfo) {
            Ok((Reply::Device(_), _)) => {}
            other => panic!("the honest client failed: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a call of the honest client waited {:?}",
            started.elapsed()
        );
    }
    device.disconnect();
}

#[test]
fn slow_half_open_and_crowding_peers_do_not_starve_others() {
    let daemon = Daemon::start_with(&["--frame-timeout", "1", "--max-connections-per-peer", "30"]);
    prepare(&daemon, Transport::Tcp, "nuNU");
    let serial = serial(&daemon);

    // Ten slowloris connections: a frame begun and then trickled, a byte every 300 ms.
    let mut slow: Vec<TcpStream> = (0..10)
        .map(|_| connect_from(&daemon, "127.0.0.2"))
        .collect();
    for stream in &mut slow {
        stream.write_all(&[0]).unwrap();
    }
    // Ten half-open handshakes: answered, never finished.
    let mut half_open: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = connect_from(&daemon, "127.0.0.2");
            assert!(matches!(
                hello(&mut stream, &serial),
                Ok(Response::ServerHello(_))
            ));
            stream
        })
        .collect();
    let trickle = std::thread::spawn(move || {
        // The header completes (a body of 256 bytes announced), then the body never comes.
        for byte in [0u8, 1, 0] {
            std::thread::sleep(Duration::from_millis(300));
            for stream in &mut slow {
                let _ = stream.write_all(&[byte]);
            }
        }
        slow
    });
    honest_calls(&daemon, 50);
    let mut slow = trickle.join().unwrap();
    // The daemon cut both kinds off after the frame timeout (1 s here).
    for stream in slow.iter_mut().chain(half_open.iter_mut()) {
        assert!(closed_within(stream) < Duration::from_secs(5));
    }
    let log = daemon.log();
    assert!(log.contains("a frame took longer than 1 s"), "{log}");

    // One address holds at most 30 connections; the 31st is closed at once, and the honest
    // client, from another address, is served.
    let crowd: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut stream = connect_from(&daemon, "127.0.0.2");
            send(&mut stream, Call::DeviceInfo);
            assert!(matches!(
                receive(&mut stream),
                Ok(Response::Reply(Reply::Device(_)))
            ));
            stream
        })
        .collect();
    let mut one_more = connect_from(&daemon, "127.0.0.2");
    let _ = one_more.write_all(&[0, 0, 0, 1]);
    assert!(closed_within(&mut one_more) < Duration::from_secs(5));
    let mut again = connect_from(&daemon, "127.0.0.2");
    assert!(closed_within(&mut again) < Duration::from_secs(5));
    honest_calls(&daemon, 10);
    let log = daemon.log();
    assert_eq!(
        log.matches("holds as many connections as one may").count(),
        1,
        "refusals are logged once per episode: {log}"
    );
    drop(crowd);
}

#[test]
fn failed_handshakes_are_rate_limited_per_address_and_logged_once() {
    let daemon =
        Daemon::start_with(&["--handshake-failure-limit", "5", "--handshake-window", "60"]);
    prepare(&daemon, Transport::Tcp, "nuNU");
    let serial = serial(&daemon);

    // Thirty attempts from 127.0.0.3, each a hello and a wrong key confirmation.
    let mut refused = 0;
    let mut failed = 0;
    for _ in 0..30 {
        let mut stream = connect_from(&daemon, "127.0.0.3");
        match hello(&mut stream, &serial) {
            Ok(Response::ServerHello(server)) => {
                send(
                    &mut stream,
                    Message::HandshakeFinish(ClientFinished {
                        channel: server.channel,
                        finished: vec![0; 48],
                    }),
                );
                assert_eq!(
                    receive(&mut stream).unwrap_err(),
                    Rv::CannotDeriveKeys.code()
                );
                failed += 1;
            }
            Err(code) => {
                assert_eq!(code, Rv::HandshakeRateLimited.code());
                refused += 1;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((failed, refused), (5, 25));
    let log = daemon.log();
    assert_eq!(
        log.matches("too many failed or abandoned handshakes")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("127.0.0.3"));
    // The honest client, from 127.0.0.1, still makes channels.
    honest_calls(&daemon, 5);
}

/// A library of another release, whose hello names another secure-messaging version (the
/// record layout changed in version 2), is told so with its own code — not `CKR_NO_SESSION_KEYS`,
/// which would send its operator to make an identity the device has — and the daemon's log
/// names both versions. No channel is made, and the refusals, which cost the device no
/// signature, do not count towards the handshake rate limit (which would hide the reason).
#[test]
fn a_hello_of_another_secure_messaging_version_is_refused_as_such() {
    let daemon =
        Daemon::start_with(&["--handshake-failure-limit", "3", "--handshake-window", "60"]);
    prepare(&daemon, Transport::Tcp, "nuNU");
    let serial = serial(&daemon);
    // More than the failure limit: each is told the reason, none is rate-limited.
    for version in [1, 1, 1, 1, 1, tessera_channel::PROTOCOL_VERSION + 1] {
        let mut stream = connect_from(&daemon, "127.0.0.1");
        let (_state, mut older) = ExpectServerHello::start(&serial, Policy(0)).unwrap();
        older.version = version;
        send(&mut stream, Message::Handshake(older));
        assert_eq!(
            receive(&mut stream).map(|_| ()),
            Err(Rv::ProtocolVersion.code()),
            "version {version}"
        );
    }
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "the peer speaks secure messaging version 1, this build speaks {}",
            tessera_channel::PROTOCOL_VERSION
        )),
        "{log}"
    );
    // The same release still makes channels.
    honest_calls(&daemon, 2);
}

/// PIN guessing through a channel hits the lockout like any other: after the allowed wrong
/// PINs the PIN is locked, and even the right PIN is refused.
#[test]
fn pin_guessing_through_the_channel_hits_the_lockout() {
    let daemon = Daemon::start();
    prepare(&daemon, Transport::Tcp, "nuNU");
    let device = secured(&daemon, &daemon.server_list(Transport::Tcp), &[]);
    let (session, generation) = sm_common::open(&device);
    let login = |pin: &str| {
        device
            .call(
                Some(generation),
                Call::Login {
                    session,
                    user_type: tessera_core::ck::CKU_USER as u64,
                    pin: sm_common::pin(pin),
                },
            )
            .map(|_| ())
            .map_err(|e| e.rv())
    };
    let mut answers = Vec::new();
    for guess in 0..12 {
        answers.push(login(&format!("guess-{guess:04}")));
    }
    let locked = answers
        .iter()
        .position(|a| *a == Err(Rv::PinLocked.code()))
        .expect("the lockout is reached");
    assert!(
        answers[..locked]
            .iter()
            .all(|a| *a == Err(Rv::PinIncorrect.code())),
        "{answers:?}"
    );
    assert_eq!(login(sm_common::USER_PIN), Err(Rv::PinLocked.code()));
}
