//! Load and faults over full secure messaging (`nuNU`), through the real library loaded in this
//! process as an application loads it.
//!
//! Many threads run mixed operations (token object creation, random, AES-GCM round trips,
//! ECDSA sign and verify, find): no wrong answer and no error under load, and the daemon's
//! memory stays flat. Then the daemon is killed with SIGKILL under that load and restarted:
//! every object whose creation returned `CKR_OK` is there and intact, and every thread recovers
//! with new sessions without reloading the library.
//!
//! `TESSERA_LOAD_THREADS` (default 16) and `TESSERA_LOAD_SECONDS` (default 4) size the run; the
//! issue's full run is `TESSERA_LOAD_THREADS=64 TESSERA_LOAD_SECONDS=60 cargo test --release -p
//! tessera-testkit --test load_and_faults` (after `cargo build --release --workspace`).

mod common;
mod sm_common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sm_common::{prepare, USER_PIN};
use tessera_testkit::{pkcs11_module, wait_until, Daemon, Transport};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const STEADY: u8 = 0;
const CHAOS: u8 = 1;
const STOP: u8 = 2;

/// What one worker needs that dies with its session.
struct Work {
    session: Session,
    aes: ObjectHandle,
    ec_private: ObjectHandle,
    ec_public: ObjectHandle,
}

fn login(session: &Session) -> Result<(), Error> {
    match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        other => other,
    }
}

fn start_work(pkcs11: &Pkcs11, slot: Slot) -> Result<Work, Error> {
    let session = pkcs11.open_rw_session(slot)?;
    login(&session)?;
    let aes = common::aes_key(&session)?;
    let (ec_public, ec_private) = session.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            // P-256.
            Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]),
            Attribute::Verify(true),
        ],
        &[Attribute::Sign(true)],
    )?;
    Ok(Work {
        session,
        aes,
        ec_private,
        ec_public,
    })
}

/// The value of object `i` of worker `w`: recognisable and different for each.
fn value_of(w: usize, i: u64) -> Vec<u8> {
    let mut value = format!("worker {w} object {i} ").into_bytes();
    value.resize(48, (w as u8) ^ (i as u8));
    value
}

/// One round of mixed operations; `Ok(false)` is a wrong answer.
fn round(
    work: &Work,
    w: usize,
    i: u64,
    created: &Mutex<Vec<(String, Vec<u8>)>>,
) -> Result<bool, Error> {
    let s = &work.session;
    let label = format!("load-{w}-{i}");
    let value = value_of(w, i);
    let object = s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.clone().into_bytes()),
        Attribute::Value(value.clone()),
    ])?;
    // One object in eight is kept (and checked after the faults); the others are destroyed at
    // the end of the round, so the token does not grow without bound.
    let kept = i.is_multiple_of(8);
    if kept {
        created.lock().unwrap().push((label.clone(), value));
    }
    if s.generate_random_vec(32)?.len() != 32 {
        return Ok(false);
    }
    let message = format!("message {w} {i}").into_bytes();
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&i.to_be_bytes());
    let mut iv_decrypt = iv;
    let sealing = Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).unwrap());
    let sealed = s.encrypt(&sealing, work.aes, &message)?;
    let opening = Mechanism::AesGcm(GcmParams::new(&mut iv_decrypt, b"aad", 128.into()).unwrap());
    if s.decrypt(&opening, work.aes, &sealed)? != message {
        return Ok(false);
    }
    let signature = s.sign(&Mechanism::EcdsaSha256, work.ec_private, &message)?;
    s.verify(
        &Mechanism::EcdsaSha256,
        work.ec_public,
        &message,
        &signature,
    )?;
    let found = s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(label.into_bytes()),
    ])?;
    if found != [object] {
        return Ok(false);
    }
    if !kept {
        s.destroy_object(object)?;
    }
    Ok(true)
}

#[test]
fn load_then_kill_9_under_load_loses_nothing_acknowledged_and_clients_recover() {
    let threads = setting("TESSERA_LOAD_THREADS", 16) as usize;
    let seconds = setting("TESSERA_LOAD_SECONDS", 4);
    let mut daemon = Daemon::start();
    let transport = Transport::Tcp;
    prepare(&daemon, transport, "nuNU");
    let _serial = common::serialise();
    let pkcs11 = common::load_secured(&daemon, transport);
    let slot = pkcs11.get_slots_with_token().unwrap()[0];

    let phase = Arc::new(AtomicU8::new(STEADY));
    let restarted = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let steady_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let rounds = Arc::new(AtomicU64::new(0));
    let recovered = Arc::new(AtomicU64::new(0));
    let created = Arc::new(Mutex::new(Vec::new()));

    std::thread::scope(|scope| {
        for w in 0..threads {
            let (pkcs11, phase, restarted) = (&pkcs11, phase.clone(), restarted.clone());
            let (wrong, steady_errors, rounds) =
                (wrong.clone(), steady_errors.clone(), rounds.clone());
            let (recovered, created) = (recovered.clone(), created.clone());
            scope.spawn(move || {
                let mut work = Some(start_work(pkcs11, slot).expect("a worker starts"));
                let mut ok_after_restart = false;
                let mut i = 0u64;
                while phase.load(Ordering::Relaxed) != STOP {
                    i += 1;
                    let outcome = match &work {
                        Some(current) => round(current, w, i, &created),
                        None => start_work(pkcs11, slot).map(|fresh| {
                            work = Some(fresh);
                            true
                        }),
                    };
                    match outcome {
                        Ok(true) => {
                            rounds.fetch_add(1, Ordering::Relaxed);
                            if restarted.load(Ordering::Relaxed) && !ok_after_restart {
                                ok_after_restart = true;
                                recovered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(false) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if phase.load(Ordering::Relaxed) == STEADY => {
                            steady_errors
                                .lock()
                                .unwrap()
                                .push(format!("worker {w}: {e}"));
                            return;
                        }
                        // Under faults: a clean error, then new sessions.
                        Err(_) => {
                            work = None;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            });
        }

        // Steady load: memory measured after a warm-up third and at the end.
        let third = Duration::from_millis(seconds * 1000 / 3);
        std::thread::sleep(third);
        let warm = daemon.rss_kib().unwrap();
        let warm_rounds = rounds.load(Ordering::Relaxed);
        std::thread::sleep(third * 2);
        let end = daemon.rss_kib().unwrap();
        let steady_rounds = rounds.load(Ordering::Relaxed);
        eprintln!(
            "{threads} threads, {seconds} s: {steady_rounds} rounds ({} after warm-up), daemon RSS {warm} KiB -> {end} KiB",
            steady_rounds - warm_rounds
        );
        assert!(steady_rounds > warm_rounds, "no progress under load");
        assert!(
            end <= warm + warm / 4 + 16 * 1024,
            "daemon memory grew under steady load: {warm} KiB -> {end} KiB"
        );

        // Faults: SIGKILL under load, a moment down, then the same daemon again.
        phase.store(CHAOS, Ordering::Relaxed);
        daemon.kill9();
        std::thread::sleep(Duration::from_millis(300));
        daemon.restart();
        restarted.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while recovered.load(Ordering::Relaxed) < threads as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        phase.store(STOP, Ordering::Relaxed);
    });

    let errors = steady_errors.lock().unwrap();
    assert!(errors.is_empty(), "errors under steady load: {errors:?}");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong answers");
    assert_eq!(
        recovered.load(Ordering::Relaxed),
        threads as u64,
        "every thread works again after the restart, with the library still loaded"
    );

    // Every acknowledged object is there, with its value.
    let session = pkcs11.open_ro_session(slot).unwrap();
    let created = created.lock().unwrap();
    assert!(!created.is_empty());
    for (label, value) in created.iter() {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(label.clone().into_bytes()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label} lost after kill -9");
        let stored = session
            .get_attributes(found[0], &[AttributeType::Value])
            .unwrap();
        assert_eq!(stored, vec![Attribute::Value(value.clone())], "{label}");
    }
    eprintln!(
        "{} acknowledged objects intact after kill -9",
        created.len()
    );
}

/// A client killed (SIGKILL) in the middle of its calls leaves no session or channel behind on
/// the device.
#[test]
fn a_client_killed_mid_call_leaves_no_session_or_channel() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let daemon = Daemon::start();
    let transport = Transport::Tcp;
    prepare(&daemon, transport, "nuNU");
    let program = tessera_testkit::compile_c("busy", daemon.dir());
    let channels = || daemon.admin(transport, &["--channels"]);
    for _ in 0..3 {
        let mut child = Command::new(&program)
            .arg(pkcs11_module())
            .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
            .envs(daemon.trust_env())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        // Its channel is there while it works (ctconf's own is the other one).
        assert!(channels().contains("2 channels"), "{}", channels());
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || channels()
                .contains("1 channel\n")),
            "the killed client's channel is still there: {}",
            channels()
        );
    }
    // The device learns of a death from its connection's end, beside the other clients' calls
    // (the tool's own connections among them): the count is read until it is 0, within 5 s.
    let no_session = || {
        daemon
            .admin(transport, &[])
            .lines()
            .any(|l| l.starts_with("Open Session Count") && l.trim_end().ends_with(": 0"))
    };
    assert!(
        wait_until(Duration::from_secs(5), no_session),
        "a session is left: {}\n{}",
        daemon.admin(transport, &[]),
        channels()
    );
}
