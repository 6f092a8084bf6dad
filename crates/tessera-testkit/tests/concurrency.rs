//! Independent sessions never wait behind one another: one application thread generates
//! RSA-4096 key pairs (seconds each) while another thread of the same process, in its own
//! session, completes calls during that generation — through the real library, whose threads
//! share one connection to the device with many requests in flight.

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
