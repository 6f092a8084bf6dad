//! Resource limits per connection and per device (issue 17, points 6, 7 and 9), each against a
//! daemon of its own with small limits set through its options, over loopback TCP (attackers
//! on 127.0.0.2, 127.0.0.3) and the Unix socket:
//!
//! - idle network connections cannot take the connections kept for local applications, and
//!   are closed after `--idle-timeout` unless they hold a session;
//! - sessions and session-object bytes are limited per connection (the others go on);
//! - frames that never finish cannot drive the daemon's memory past `--max-frame-memory`;
//! - public token objects created without a login are limited per token;
//! - a search with a huge template does not stall other clients.

mod raw;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raw::{call, connect_from, frame, receive};
use tessera_core::{ck, Attribute, Rv, Template};
use tessera_testkit::{quantile, wait_until, Daemon};
use tessera_wire::{Call, Reply};

fn works<S: Read + Write>(stream: &mut S) {
    match call(stream, Call::DeviceInfo) {
        Ok(Reply::Device(info)) => assert_eq!(info.serial.len(), 10),
        other => panic!("{other:?}"),
    }
}

/// Whether the daemon closed `stream` (or closes it within its read timeout).
fn closed<S: Read>(stream: &mut S) -> bool {
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn init_token<S: Read + Write>(stream: &mut S) {
    let mut label = b"limits".to_vec();
    label.resize(32, b' ');
    let reply = call(
        stream,
        Call::InitToken {
            slot: 0,
            so_pin: tessera_core::SecretBytes::new(b"so-pin-1234".to_vec()),
            label,
        },
    );
    assert!(matches!(reply, Ok(Reply::Done)), "{reply:?}");
}

fn open_session<S: Read + Write>(stream: &mut S) -> Result<u64, u64> {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    match call(stream, Call::OpenSession { slot: 0, flags }) {
        Ok(Reply::Handle(handle)) => Ok(handle),
        Ok(other) => panic!("{other:?}"),
        Err(code) => Err(code),
    }
}

/// A data object of `len` bytes, in the session or on the token, public.
fn data_object(len: usize, token: bool) -> Template {
    Template(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA as u64),
        Attribute::bool(ck::CKA_TOKEN, token),
        Attribute::bool(ck::CKA_PRIVATE, false),
        Attribute::bytes(ck::CKA_VALUE, &vec![7u8; len]),
    ])
}

fn create<S: Read + Write>(stream: &mut S, session: u64, template: Template) -> Result<u64, u64> {
    match call(stream, Call::CreateObject { session, template }) {
        Ok(Reply::Handle(handle)) => Ok(handle),
        Ok(other) => panic!("{other:?}"),
        Err(code) => Err(code),
    }
}

fn wait_for_log(daemon: &Daemon, text: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || daemon.log().contains(text)),
        "the log does not say {text:?}:\n{}",
        daemon.log()
    );
}

#[test]
fn idle_network_connections_leave_local_room_and_time_out_unless_they_hold_sessions() {
    // 8 connections, 2 of them kept for local applications: the network may hold 6, each
    // address 3.
    let daemon = Daemon::start_with(&[
        "--max-connections",
        "8",
        "--local-connections",
        "2",
        "--max-connections-per-peer",
        "3",
        "--idle-timeout",
        "2",
    ]);
    // One network client with a session.
    let mut holder = connect_from(&daemon, "127.0.0.1");
    init_token(&mut holder);
    let session = open_session(&mut holder).unwrap();
    // The flood: every other network connection, idle.
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| connect_from(&daemon, "127.0.0.1"))
        .chain((0..3).map(|_| connect_from(&daemon, "127.0.0.2")))
        .collect();
    // The network's share is taken: a further network client is refused...
    let mut late = connect_from(&daemon, "127.0.0.3");
    late.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = late.write_all(&frame(Call::DeviceInfo));
    assert!(
        closed(&mut late),
        "a network client got past the network's share"
    );
    // ...while local applications still connect and work (two of them).
    let mut locals: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(daemon.socket()).unwrap())
        .collect();
    for local in &mut locals {
        local
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        works(local);
    }
    // The idle network connections are closed after the timeout (2 s; within 6 s here)...
    let start = Instant::now();
    for stream in &mut idle {
        assert!(closed(stream), "an idle connection was kept");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "idle connections closed after {took:?}"
    );
    // ...the one with a session is kept and still works...
    assert!(matches!(
        call(&mut holder, Call::SessionInfo { session }),
        Ok(Reply::Session(_))
    ));
    // ...and the network may connect again.
    works(&mut connect_from(&daemon, "127.0.0.3"));
    wait_for_log(&daemon, "idle connections without sessions closed");
    wait_for_log(&daemon, "network connections refused");
}

#[test]
fn sessions_are_limited_per_connection_and_the_others_go_on() {
    let daemon = Daemon::start_with(&["--max-sessions-per-connection", "8"]);
    let mut greedy = UnixStream::connect(daemon.socket()).unwrap();
    init_token(&mut greedy);
    for _ in 0..8 {
        open_session(&mut greedy).unwrap();
    }
    assert_eq!(
        open_session(&mut greedy),
        Err(Rv::SessionCount.code()),
        "a ninth session"
    );
    // The greedy connection still works, and another one opens sessions.
    works(&mut greedy);
    let mut other = UnixStream::connect(daemon.socket()).unwrap();
    for _ in 0..8 {
        open_session(&mut other).unwrap();
    }
    wait_for_log(&daemon, "sessions per connection (CKR_SESSION_COUNT)");
}

#[test]
fn session_object_bytes_are_limited_per_connection_and_the_others_go_on() {
    let daemon = Daemon::start_with(&[
        "--max-session-object-bytes-per-connection",
        "4194304",
        "--max-session-object-bytes",
        "16777216",
    ]);
    let mut greedy = UnixStream::connect(daemon.socket()).unwrap();
    init_token(&mut greedy);
    let session = open_session(&mut greedy).unwrap();
    let mib = 1 << 20;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(create(&mut greedy, session, data_object(mib, false)).unwrap());
    }
    assert_eq!(
        create(&mut greedy, session, data_object(mib, false)),
        Err(Rv::DeviceMemory.code()),
        "a fourth MiB in a 4 MiB budget"
    );
    // Another connection is not affected.
    let mut other = UnixStream::connect(daemon.socket()).unwrap();
    let theirs = open_session(&mut other).unwrap();
    for _ in 0..3 {
        create(&mut other, theirs, data_object(mib, false)).unwrap();
    }
    // Destroyed objects give their bytes back.
    let reply = call(
        &mut greedy,
        Call::DestroyObject {
            session,
            object: made[0],
        },
    );
    assert!(matches!(reply, Ok(Reply::Done)), "{reply:?}");
    create(&mut greedy, session, data_object(mib, false)).unwrap();
    // The device's cap (16 MiB) holds across connections: a third connection fills it.
    let mut third = UnixStream::connect(daemon.socket()).unwrap();
    let last = open_session(&mut third).unwrap();
    let mut refused = false;
    for _ in 0..12 {
        if create(&mut third, last, data_object(mib, false)) == Err(Rv::DeviceMemory.code()) {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the device's cap on session-object bytes did not hold"
    );
    wait_for_log(
        &daemon,
        "session-object bytes per connection (CKR_DEVICE_MEMORY)",
    );
}

#[test]
fn public_token_objects_created_without_a_login_are_limited_per_token() {
    let daemon = Daemon::start_with(&["--max-public-objects", "3"]);
    let mut client = UnixStream::connect(daemon.socket()).unwrap();
    init_token(&mut client);
    let session = open_session(&mut client).unwrap();
    for _ in 0..3 {
        create(&mut client, session, data_object(100, true)).unwrap();
    }
    assert_eq!(
        create(&mut client, session, data_object(100, true)),
        Err(Rv::DeviceMemory.code())
    );
    // Session objects are not token objects.
    create(&mut client, session, data_object(100, false)).unwrap();
    wait_for_log(&daemon, "public token objects created without a login");
}

/// The peak VmRSS of process `pid` (KiB), from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn frames_that_never_finish_keep_the_daemon_memory_bounded() {
    const CONNECTIONS: usize = 48;
    let daemon = Daemon::start_with(&["--max-frame-memory", "33554432", "--frame-timeout", "4"]);
    let pid = daemon.pid().unwrap();
    let mut honest = connect_from(&daemon, "127.0.0.1");
    works(&mut honest);
    let before = rss_kib(pid);
    // Each attacker announces a 16 MiB frame and sends all of it but the last byte.
    let len = tessera_wire::MAX_FRAME_LEN;
    let body = Arc::new(vec![0x5au8; len - 1]);
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let body = body.clone();
            let mut stream = connect_from(&daemon, "127.0.0.2");
            std::thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_secs(6)))
                    .unwrap();
                let _ = stream.write_all(&(len as u32).to_be_bytes());
                let _ = stream.write_all(&body);
                // Held until the daemon gives up on it.
                let _ = closed(&mut stream);
            })
        })
        .collect();
    let start = Instant::now();
    let mut peak = before;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        let call_start = Instant::now();
        works(&mut honest);
        slowest = slowest.max(call_start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for attacker in attackers {
        attacker.join().unwrap();
    }
    peak = peak.max(rss_kib(pid));
    works(&mut honest);
    eprintln!("RSS {before} KiB before, peak {peak} KiB; slowest honest call {slowest:?}");
    // 32 MiB of frames plus slack (before: 48 x 16 MiB, about 800 MB).
    assert!(
        peak < before + 96 * 1024,
        "the daemon grew from {before} KiB to {peak} KiB"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an honest call took {slowest:?}"
    );
    wait_for_log(&daemon, "memory for unfinished frames is taken");
}

#[test]
fn a_search_with_a_huge_template_does_not_stall_other_clients() {
    let daemon = Daemon::start();
    let mut attacker = UnixStream::connect(daemon.socket()).unwrap();
    init_token(&mut attacker);
    let session = open_session(&mut attacker).unwrap();
    // A few objects to match against.
    for _ in 0..4 {
        create(&mut attacker, session, data_object(16, false)).unwrap();
    }
    let template = Template(
        (0..500_000u64)
            .map(|i| Attribute::bytes(ck::CKA_VENDOR_DEFINED as u64 + i, &[1]))
            .collect(),
    );
    let init = frame(Call::FindObjectsInit { session, template });
    let finish = frame(Call::FindObjectsFinal { session });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 200 {
                attacker.write_all(&init).unwrap();
                let _ = receive(&mut attacker);
                attacker.write_all(&finish).unwrap();
                let _ = receive(&mut attacker);
                rounds += 1;
            }
            rounds
        })
    };
    let mut victim = UnixStream::connect(daemon.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 300 && start.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        works(&mut victim);
        samples.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = flood.join().unwrap();
    samples.sort();
    let p99 = quantile(&samples, 0.99).unwrap();
    eprintln!(
        "{} calls during {rounds} huge searches: p50 {:?}, p99 {p99:?}, max {:?}",
        samples.len(),
        quantile(&samples, 0.5).unwrap(),
        samples.last().unwrap()
    );
    assert!(
        rounds >= 2,
        "the attacker's searches did not run ({rounds})"
    );
    assert!(
        p99 < Duration::from_millis(50),
        "small calls stalled behind huge searches: p99 {p99:?}"
    );
}
