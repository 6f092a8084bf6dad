//! A `kill -9` during heavy object creation loses no object whose creation returned `CKR_OK`
//! and leaves no half-written object behind; a full disk fails writes cleanly; a SIGTERM lets
//! every connection finish its clean-up before the last event-log entries are written, for
//! five seconds at most.

mod common;
mod raw;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::{AuthPin, Ulong};
use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_core::SecretBytes;
use tessera_testkit::{sm, wait_until, Daemon, Transport};
use tessera_wire::{Call, Reply};

#[test]
fn kill_9_during_heavy_creation_loses_nothing_that_was_acknowledged() {
    let f = common::fixture(Transport::Unix);
    let acknowledged = Mutex::new(Vec::<String>::new());
    let killed = AtomicBool::new(false);
    let common::Fixture {
        mut daemon,
        pkcs11,
        slot,
        serial,
    } = f;
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let pkcs11 = pkcs11.clone();
            let acknowledged = &acknowledged;
            let killed = &killed;
            scope.spawn(move || {
                let session = pkcs11.open_rw_session(slot).unwrap();
                let _ = session.login(UserType::User, Some(&AuthPin::new(common::USER_PIN.into())));
                for n in 0.. {
                    let label = format!("t{thread}-n{n}");
                    // Alternate secret keys (sealed secrets) and data objects.
                    let result = if n % 2 == 0 {
                        session.generate_key(
                            &Mechanism::AesKeyGen,
                            &[
                                Attribute::ValueLen(Ulong::from(32)),
                                Attribute::Token(true),
                                Attribute::Label(label.clone().into_bytes()),
                            ],
                        )
                    } else {
                        session.create_object(&[
                            Attribute::Class(ObjectClass::DATA),
                            Attribute::Token(true),
                            Attribute::Label(label.clone().into_bytes()),
                            Attribute::Value(label.clone().into_bytes()),
                        ])
                    };
                    match result {
                        Ok(_) => acknowledged.lock().unwrap().push(label),
                        Err(_) => {
                            assert!(
                                killed.load(Ordering::SeqCst),
                                "a creation failed before the kill"
                            );
                            break;
                        }
                    }
                    if n > 100_000 {
                        break;
                    }
                }
            });
        }
        // Let creation run, then kill the daemon mid-stream.
        std::thread::sleep(Duration::from_millis(1500));
        killed.store(true, Ordering::SeqCst);
        daemon.kill9();
    });
    drop(pkcs11);
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() > 20,
        "too little was created before the kill: {}",
        acknowledged.len()
    );

    daemon.restart();
    let pkcs11 = common::load(&daemon.server_list(Transport::Unix));
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(common::USER_PIN.into())))
        .unwrap();
    let mut found = Vec::new();
    for handle in session.find_objects(&[Attribute::Token(true)]).unwrap() {
        let attributes = session
            .get_attributes(handle, &[AttributeType::Label, AttributeType::Class])
            .unwrap();
        let Attribute::Label(label) = &attributes[0] else {
            panic!("no label: {attributes:?}")
        };
        let label = String::from_utf8(label.clone()).unwrap();
        if attributes[1] == Attribute::Class(ObjectClass::HARDWARE_FEATURE) {
            continue; // the device object every token shows
        }
        if attributes[1] == Attribute::Class(ObjectClass::DATA) {
            // A whole object: its value is what was written with it.
            let value = session
                .get_attributes(handle, &[AttributeType::Value])
                .unwrap();
            assert_eq!(value, vec![Attribute::Value(label.clone().into_bytes())]);
        } else {
            // A whole key: its sealed secret opens and works.
            let mut iv = [0u8; 16];
            iv[0] = 1;
            session
                .encrypt(&Mechanism::AesCbcPad(iv), handle, b"still usable")
                .unwrap();
        }
        found.push(label);
    }
    for label in &acknowledged {
        assert!(
            found.contains(label),
            "{label} was acknowledged but is gone after kill -9"
        );
    }
    // At most one in-flight creation per thread may have landed without its acknowledgement.
    assert!(
        found.len() <= acknowledged.len() + 4,
        "found {} for {} acknowledged",
        found.len(),
        acknowledged.len()
    );
    drop(session);
    drop(pkcs11);
    drop(serial);
}

/// A full disk (the daemon's files may grow no more: `prlimit --fsize`) fails the write with
/// `CKR_DEVICE_MEMORY` and a log line that says why; the daemon stays up, the store stays
/// readable, and after a restart with room again every acknowledged object is intact.
#[test]
fn a_full_disk_fails_the_write_cleanly_and_the_store_stays_readable() {
    let f = common::fixture(Transport::Unix);
    let common::Fixture {
        mut daemon,
        pkcs11,
        slot,
        serial,
    } = f;
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(common::USER_PIN.into())))
        .unwrap();
    let store = std::fs::read_dir(daemon.data_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let size = store.metadata().unwrap().len();
    // Room for a little more than what is there.
    daemon.limit_file_size(size + 256 * 1024);
    let object = |i: usize| {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(format!("big-{i}").into_bytes()),
            Attribute::Value(vec![i as u8; 32 * 1024]),
        ]
    };
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        match session.create_object(&object(i)) {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the limit was reached within 200 objects of 32 KiB");
    assert_eq!(
        common::rv::<()>(Err(refused)),
        cryptoki::error::RvError::DeviceMemory
    );
    assert!(
        daemon.log().contains("the token store is full"),
        "{}",
        daemon.log()
    );
    // Still up and readable: what was acknowledged reads back, session objects still work.
    for i in &acknowledged {
        let found = session
            .find_objects(&[Attribute::Label(format!("big-{i}").into_bytes())])
            .unwrap();
        assert_eq!(found.len(), 1);
        let value = session
            .get_attributes(found[0], &[AttributeType::Value])
            .unwrap();
        assert_eq!(value, vec![Attribute::Value(vec![*i as u8; 32 * 1024])]);
    }
    session.generate_random_vec(16).unwrap();
    // Room again (the limit lifted) without a restart: writes work again.
    daemon.limit_file_size(u64::MAX);
    session.create_object(&object(500)).unwrap();
    acknowledged.push(500);
    drop(session);
    drop(pkcs11);
    // Room again: after a restart everything acknowledged is there and writes work.
    daemon.restart();
    let pkcs11 = common::load(&daemon.server_list(Transport::Unix));
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(common::USER_PIN.into())))
        .unwrap();
    let all = session
        .find_objects(&[Attribute::Class(ObjectClass::DATA)])
        .unwrap();
    assert_eq!(all.len(), acknowledged.len());
    session.create_object(&object(999)).unwrap();
    drop(serial);
}

/// A daemon started with `--exit-with-parent` by a process that is then killed (`kill -9`, so
/// nothing of the parent's runs) shuts down cleanly on its own: no daemon is left behind a
/// killed test harness.
#[test]
fn a_daemon_started_with_exit_with_parent_ends_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tesserad.sock");
    let log = dir.path().join("tesserad.log");
    // The parent: a shell that starts the daemon, says its pid, and waits.
    let mut parent = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#""$0" "$@" 2>"$TESSERA_TEST_LOG" & echo $!; exec sleep 60"#)
        .arg(tessera_testkit::binary("tesserad"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(["--kdf-iterations", "1000", "--exit-with-parent"])
        .env("TESSERA_TEST_LOG", &log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let daemon: u32 = line.trim().parse().expect("the daemon's pid");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(20), || {
        read_log().contains("tesserad ready")
    });
    assert!(ready, "the daemon did not start:\n{}", read_log());

    // The daemon outlives a second of its parent's life: it watches, it does not just exit.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        running(daemon),
        "the daemon ended while its parent ran:\n{}",
        read_log()
    );

    parent.kill().unwrap();
    parent.wait().unwrap();
    let ended = wait_until(Duration::from_secs(10), || !running(daemon));
    assert!(
        ended,
        "the daemon outlived its parent by 10 s:\n{}",
        read_log()
    );
    assert!(
        read_log().contains("the process that started tesserad has ended"),
        "{}",
        read_log()
    );
    assert!(!socket.exists(), "a clean shutdown removes the socket");
}

/// Whether process `pid` still runs (a zombie, ended but not yet reaped, does not).
fn running(pid: u32) -> bool {
    tessera_testkit::proc_stat_field(pid, 3).is_some_and(|state| state != "Z" && state != "X")
}

/// A client whose channel has a call running when SIGTERM arrives: the daemon answers the
/// call, closes the channel (and the sessions and logins in it), and only then writes the
/// event log's last entries. The channel's closing is counted in the `channel-count` entry
/// written at shutdown, which the next start reads back.
#[test]
fn a_sigterm_waits_for_each_connection_to_close_its_channel_before_the_last_events() {
    // A slow PIN KDF: initialising a token takes about a second, long enough for the call to
    // be running when the signal arrives (and far less than the five seconds shutdown waits).
    let mut daemon = Daemon::start_with(&["--kdf-iterations", "1500000"]);
    daemon.identify(Transport::Unix, &[]);
    let device = Device::new(
        ServerAddress::Unix(daemon.socket()),
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .with_security(sm::settings(&daemon, &[]));
    device.open_channel().expect("a channel");
    let running = std::thread::spawn(move || {
        let answer = device.call(
            None,
            Call::InitToken {
                slot: 0,
                so_pin: SecretBytes::from_slice(b"so-pin-at-shutdown"),
                label: vec![b' '; 32],
            },
        );
        (answer, device)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.stop().success(), "{}", daemon.log());
    let (answer, _device) = running.join().unwrap();
    assert!(
        matches!(answer, Ok((Reply::Done, _))),
        "the call running at shutdown was answered: {answer:?}\n{}",
        daemon.log()
    );

    daemon.restart();
    let events = daemon.admin(Transport::Unix, &["-e"]);
    let counts: Vec<(u64, u64)> = events
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line
                .split_once("channel-count")?
                .1
                .split_whitespace()
                .collect();
            match words.as_slice() {
                [opened, "opened,", closed, "closed", ..] => {
                    Some((opened.parse().ok()?, closed.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect();
    // The last count is this start's, made as ctconf read the log: its own channel, open.
    let Some((last, before)) = counts.split_last() else {
        panic!("no channel-count entry:\n{events}\n{}", daemon.log());
    };
    assert_eq!(*last, (1, 0), "ctconf's own channel:\n{events}");
    // Before it, every channel the first run opened was closed by its client, the one that
    // had a call running at shutdown too.
    let opened: u64 = before.iter().map(|c| c.0).sum();
    let closed: u64 = before.iter().map(|c| c.1).sum();
    assert!(opened >= 1, "{events}");
    assert_eq!(
        opened,
        closed,
        "a channel open at shutdown was not counted as closed:\n{events}\n{}",
        daemon.log()
    );
}

/// Sends the daemon SIGTERM and waits for it to end (15 s at most, else it is killed and the
/// test fails); it must exit successfully. How long it took.
fn sigterm(daemon: &mut Daemon) -> Duration {
    let pid = daemon.pid().unwrap().to_string();
    let signalled = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = wait_until(Duration::from_secs(15), || !running(pid.parse().unwrap()));
    let took = signalled.elapsed();
    if !ended {
        daemon.kill9();
        panic!("shutdown hung on the connection:\n{}", daemon.log());
    }
    assert!(daemon.wait_exit().success(), "{}", daemon.log());
    took
}

/// A client that never reads its replies holds its connection's clean-up up forever (the
/// replies cannot be written): shutdown waits five seconds for it, says so, and ends anyway.
#[test]
fn a_connection_that_never_finishes_holds_a_sigterm_up_for_five_seconds_at_most() {
    use std::io::Write;
    let mut daemon = Daemon::start();
    let stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Requests, and never a reply read: the daemon's writes fill the socket and block.
    std::thread::spawn(move || {
        let request = raw::frame(Call::DeviceInfo);
        while writer.write_all(&request).is_ok() {}
    });
    std::thread::sleep(Duration::from_secs(1));
    let took = sigterm(&mut daemon);
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "shutdown took {took:?}, not the five seconds it waits:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("1 connection did not finish its clean-up within 5 s"),
        "{}",
        daemon.log()
    );
    drop(stream);
}

/// A client whose next request is always there already (it writes requests without waiting
/// for the replies, and reads the replies as they come) still has its connection stop with
/// the daemon: the daemon looks for its stop before every request, not only while it waits
/// for one, so a SIGTERM ends it well within the five seconds shutdown would wait.
#[test]
fn a_connection_whose_requests_never_pause_still_stops_with_the_daemon() {
    use std::io::{Read, Write};
    let mut daemon = Daemon::start();
    let stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let request = raw::frame(Call::DeviceInfo);
        let batch = request.repeat(16);
        while writer.write_all(&batch).is_ok() {}
    });
    std::thread::spawn(move || {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    std::thread::sleep(Duration::from_millis(500));
    let took = sigterm(&mut daemon);
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?}: the busy connection did not see the stop:\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("did not finish its clean-up"),
        "{}",
        daemon.log()
    );
    drop(stream);
}
