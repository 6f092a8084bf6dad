//! Independent sessions never wait behind one another: one application thread generates
//! RSA-4096 key pairs (seconds each) while another thread of the same process, in its own
//! session, completes calls during that generation — through the real library, whose threads
//! share one connection to the device with many requests in flight. And many threads get
//! their own answers whichever way the daemon serves connections (`--io-threads`,
//! `--busy-poll`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use tessera_testkit::TRANSPORTS;

#[test]
fn a_slow_call_does_not_hold_up_other_sessions() {
    for transport in TRANSPORTS {
        let f = common::fixture(transport);
        let slow = f.user_session();
        let quick = f.pkcs11.open_rw_session(f.slot).unwrap();
        let generating = AtomicBool::new(false);
        let finished = AtomicBool::new(false);
        let overlapped = AtomicU32::new(0);
        std::thread::scope(|scope| {
            let (generating, finished, overlapped) = (&generating, &finished, &overlapped);
            scope.spawn(move || {
                for _ in 0..5 {
                    generating.store(true, Ordering::SeqCst);
                    slow.generate_key_pair(
                        &Mechanism::RsaPkcsKeyPairGen,
                        &[
                            Attribute::ModulusBits(4096.into()),
                            Attribute::PublicExponent(vec![1, 0, 1]),
                        ],
                        &[Attribute::Sign(true)],
                    )
                    .unwrap();
                    generating.store(false, Ordering::SeqCst);
                    if overlapped.load(Ordering::SeqCst) >= 20 {
                        break;
                    }
                }
                finished.store(true, Ordering::SeqCst);
            });
            // Calls that start and end while a key pair is being generated.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !finished.load(Ordering::SeqCst) && Instant::now() < deadline {
                if !generating.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                quick.generate_random_vec(32).unwrap();
                if generating.load(Ordering::SeqCst) {
                    overlapped.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let overlapped = overlapped.load(Ordering::SeqCst);
        assert!(
            overlapped >= 20,
            "{transport:?}: only {overlapped} calls of the other session completed during RSA-4096 generations"
        );
    }
}

/// Threads of one process, each with its own session and data, pipelined on one connection:
/// each digest answered is the digest of that thread's own data, with one I/O thread that polls
/// (the default), one that does not, and several.
#[test]
fn every_thread_gets_its_own_answers_however_the_daemon_serves() {
    for args in [&[][..], &["--busy-poll", "0"], &["--io-threads", "3"]] {
        let f = common::fixture_with(tessera_testkit::Transport::Unix, args);
        std::thread::scope(|scope| {
            for thread in 0..8u8 {
                let session = f.pkcs11.open_ro_session(f.slot).unwrap();
                scope.spawn(move || {
                    for round in 0..200u32 {
                        let data: Vec<u8> = [thread]
                            .iter()
                            .chain(&round.to_be_bytes())
                            .copied()
                            .cycle()
                            .take(100 + round as usize)
                            .collect();
                        let digest = session.digest(&Mechanism::Sha256, &data).unwrap();
                        let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
                        assert_eq!(
                            digest,
                            expected.as_ref(),
                            "daemon {args:?}, thread {thread}"
                        );
                    }
                });
            }
        });
    }
}
