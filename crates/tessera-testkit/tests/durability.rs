//! A `kill -9` during heavy object creation loses no object whose creation returned `CKR_OK`
//! and leaves no half-written object behind; a full disk fails writes cleanly.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::{AuthPin, Ulong};
use tessera_testkit::{wait_until, Transport};

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
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name's closing parenthesis.
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
