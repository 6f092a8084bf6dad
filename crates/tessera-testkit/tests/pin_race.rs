//! PIN guessing raced over the real daemon: many connections send a wrong PIN at once. Each
//! PIN check runs PBKDF2 outside the device's state lock; a retry counter that was checked
//! before the KDF and raised after it let every guess of such a burst through (60 wrong PINs
//! at once, no lockout). At most `MAX_PIN_FAILURES` guesses may be checked per lockout cycle,
//! whatever the concurrency, and the count survives a restart.
//!
//! The daemon runs with 100 000 PBKDF2 iterations (the default is 600 000): one check then
//! takes tens of milliseconds, so that the guesses of a burst are in flight together (the
//! race window the attack needs), while the test stays a few seconds long.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_core::{ck, Rv};
use tessera_testkit::sm::{self, SO_PIN, USER_PIN};
use tessera_testkit::{Daemon, Transport, ADMIN_PIN};
use tessera_wire::{Call, Reply};

/// `tessera_hsm::MAX_PIN_FAILURES`: consecutive wrong PINs that lock a PIN.
const MAX_PIN_FAILURES: usize = 10;
/// Connections in a burst.
const CONNECTIONS: usize = 64;
/// The Admin slot: after the daemon's two user slots.
const ADMIN_SLOT: u64 = 2;

/// A daemon with a slow enough PIN KDF, its Admin token set up by ctconf (the Administrator
/// PIN [`ADMIN_PIN`]) and slot 0 initialised with [`SO_PIN`] and [`USER_PIN`].
fn daemon() -> Daemon {
    let daemon = Daemon::start_with(&["--kdf-iterations", "100000"]);
    sm::prepare(&daemon, Transport::Unix, "");
    daemon
}

/// A client connection of its own (no secure messaging: the device requires none).
fn connection(daemon: &Daemon) -> Device {
    let address = ServerAddress::parse(&daemon.server_list(Transport::Unix)).unwrap();
    Device::new(address, Duration::from_secs(10), Duration::from_secs(60))
}

/// One C_Login on a new connection's R/W session on `slot`; `Ok` or the `CKR_*`.
fn login_on(device: &Device, slot: u64, user_type: ck::CK_USER_TYPE, pin: &str) -> Result<(), u64> {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let (session, generation) = match device.call(None, Call::OpenSession { slot, flags }) {
        Ok((Reply::Handle(h), g)) => (h, g),
        other => panic!("open session: {other:?}"),
    };
    login(device, generation, session, user_type, pin)
}

fn login(
    device: &Device,
    generation: u64,
    session: u64,
    user_type: ck::CK_USER_TYPE,
    pin: &str,
) -> Result<(), u64> {
    let request = Call::Login {
        session,
        user_type: user_type as u64,
        pin: sm::pin(pin),
    };
    device
        .call(Some(generation), request)
        .map(|_| ())
        .map_err(|e| e.rv())
}

/// Each PIN of `pins` is sent by a connection of its own, all at once: every connection opens
/// its session first, then all wait at a start line and send their C_Login together. The
/// answers, in the order of `pins`.
fn burst(
    daemon: &Daemon,
    slot: u64,
    user_type: ck::CK_USER_TYPE,
    pins: &[String],
) -> Vec<Result<(), u64>> {
    let arrived = Mutex::new(0);
    let all_here = Condvar::new();
    let (arrived, all_here) = (&arrived, &all_here);
    std::thread::scope(|scope| {
        let threads: Vec<_> = pins
            .iter()
            .map(|pin| {
                scope.spawn(move || {
                    let device = connection(daemon);
                    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
                    let (session, generation) =
                        match device.call(None, Call::OpenSession { slot, flags }) {
                            Ok((Reply::Handle(h), g)) => (h, g),
                            other => panic!("open session: {other:?}"),
                        };
                    // The start line (bounded: a connection that never gets there fails the
                    // test in a minute instead of hanging it).
                    let mut here = arrived.lock().unwrap();
                    *here += 1;
                    all_here.notify_all();
                    let (here, wait) = all_here
                        .wait_timeout_while(here, Duration::from_secs(60), |n| *n < pins.len())
                        .unwrap();
                    assert!(
                        !wait.timed_out(),
                        "{} of {} connections ready",
                        *here,
                        pins.len()
                    );
                    drop(here);
                    let answer = login(&device, generation, session, user_type, pin);
                    device.disconnect();
                    answer
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn count(answers: &[Result<(), u64>], wanted: Result<(), u64>) -> usize {
    answers.iter().filter(|a| **a == wanted).count()
}

const INCORRECT: Result<(), u64> = Err(Rv::PinIncorrect.code());
const LOCKED: Result<(), u64> = Err(Rv::PinLocked.code());

/// 64 connections send one wrong PIN each at once: exactly `MAX_PIN_FAILURES` are checked,
/// the others refused; then the right PIN is refused too, and still after a restart.
fn wrong_burst_locks(slot: u64, user_type: ck::CK_USER_TYPE, right: &str) -> Daemon {
    let mut daemon = daemon();
    let wrong: Vec<String> = (0..CONNECTIONS)
        .map(|i| format!("wrong-pin-{i:03}"))
        .collect();
    let answers = burst(&daemon, slot, user_type, &wrong);
    assert_eq!(
        (count(&answers, INCORRECT), count(&answers, LOCKED)),
        (MAX_PIN_FAILURES, CONNECTIONS - MAX_PIN_FAILURES),
        "{answers:x?}"
    );
    assert_eq!(
        login_on(&connection(&daemon), slot, user_type, right),
        LOCKED
    );
    // The count is on disk: a restart does not give the attacker new guesses.
    daemon.restart();
    assert_eq!(
        login_on(&connection(&daemon), slot, user_type, right),
        LOCKED
    );
    daemon
}

#[test]
fn a_burst_of_wrong_user_pins_locks_the_user_pin() {
    let daemon = wrong_burst_locks(0, ck::CKU_USER, USER_PIN);
    // Logged, and no user got in: the lockout is in the event log, read by the Administrator.
    let events = daemon.admin(Transport::Unix, &["-e"]);
    assert_eq!(events.matches("pin-locked").count(), 1, "{events}");
    assert_eq!(
        events.matches("login-failure").count(),
        MAX_PIN_FAILURES,
        "{events}"
    );
    assert!(events.contains("login-refused"), "{events}");
}

#[test]
fn a_burst_of_wrong_so_pins_locks_the_so_pin() {
    wrong_burst_locks(0, ck::CKU_SO, SO_PIN);
}

#[test]
fn a_burst_of_wrong_administrator_pins_locks_the_administrator_pin() {
    wrong_burst_locks(ADMIN_SLOT, ck::CKU_USER, ADMIN_PIN);
}

/// The bug's second shape: one guess short of the lockout, a burst of 40 guesses with the
/// right PIN among them. Only one more guess may be checked in this cycle: either it is wrong
/// (and then the PIN is locked and the right PIN refused), or it is the right PIN, which ends
/// the cycle (the guesses that waited behind it are checked in a new cycle, at most
/// `MAX_PIN_FAILURES` of them). Before the fix all 40 were checked: 39 wrong ones answered
/// CKR_PIN_INCORRECT and the right one logged in.
#[test]
fn a_burst_one_short_of_the_lockout_gets_one_guess() {
    let daemon = daemon();
    let device = connection(&daemon);
    for i in 0..MAX_PIN_FAILURES - 1 {
        let answer = login_on(&device, 0, ck::CKU_USER, &format!("wrong-pin-{i:03}"));
        assert_eq!(answer, INCORRECT);
    }
    device.disconnect();
    let mut pins: Vec<String> = (0..39).map(|i| format!("burst-pin-{i:03}")).collect();
    pins.insert(17, USER_PIN.to_string());
    let answers = burst(&daemon, 0, ck::CKU_USER, &pins);
    let (right, wrong) = (count(&answers, Ok(())), count(&answers, INCORRECT));
    assert_eq!(
        right + wrong + count(&answers, LOCKED),
        pins.len(),
        "{answers:x?}"
    );
    if right == 0 {
        // The one guess left was a wrong one: MAX_PIN_FAILURES wrong guesses in all.
        assert_eq!(wrong, 1, "{answers:x?}");
        assert_eq!(answers[17], LOCKED);
        assert_eq!(
            login_on(&connection(&daemon), 0, ck::CKU_USER, USER_PIN),
            LOCKED
        );
    } else {
        // The right PIN was the last guess of the cycle; only a new cycle's guesses follow.
        assert_eq!(answers[17], Ok(()));
        assert!(wrong <= MAX_PIN_FAILURES, "{answers:x?}");
    }
}
