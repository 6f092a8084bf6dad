//! The engine through its API: requests in, replies out, over a real data directory.

mod common;

use common::{handle, pin, ready};

use tessera_core::{ck, Attribute, Mechanism, Rv, Template};
use tessera_hsm::{Hsm, HsmOptions, MAX_PIN_FAILURES};
use tessera_wire::{AttributeAnswer, Call, Reply};

fn options() -> HsmOptions {
    HsmOptions {
        user_slots: 2,
        kdf_iterations: 1000,
        ..HsmOptions::default()
    }
}

fn aes_template(value: &[u8], private: bool) -> Template {
    Template(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bool(ck::CKA_SENSITIVE, false),
        Attribute::bytes(ck::CKA_VALUE, value),
    ])
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn secrets_are_sealed_at_rest_and_reopen_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let private_value = *b"PRIVATE-KEY-BYTES-0123456789abcd";
    let public_value = *b"PUBLIC-OBJ-KEY-BYTES-0123456789a";
    let (private_key, public_key);
    {
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let (client, session) = ready(&hsm);
        private_key = handle(hsm.handle(
            client,
            false,
            Call::CreateObject {
                session,
                template: aes_template(&private_value, true),
            },
        ));
        public_key = handle(hsm.handle(
            client,
            false,
            Call::CreateObject {
                session,
                template: aes_template(&public_value, false),
            },
        ));
    }
    assert!(
        !files_contain(dir.path(), &private_value),
        "a private key is in the clear on disk"
    );
    assert!(
        !files_contain(dir.path(), &public_value),
        "a public object's key is in the clear on disk"
    );
    assert!(
        files_contain(dir.path(), b"t                               "),
        "the label is stored"
    );

    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let client = hsm.connect();
    let session = handle(hsm.handle(
        client,
        false,
        Call::OpenSession {
            slot: 0,
            flags: ck::CKF_SERIAL_SESSION as u64,
        },
    ));
    let value = |object| match hsm.handle(
        client,
        false,
        Call::GetAttributes {
            session,
            object,
            types: vec![ck::CKA_VALUE as u64],
        },
    ) {
        Ok(Reply::Attributes(mut answers)) => answers.remove(0),
        other => panic!("{other:?}"),
    };
    // Before login the private key does not exist for this client; the public one opens.
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::GetAttributes {
                session,
                object: private_key,
                types: vec![]
            }
        ),
        Err(Rv::ObjectHandleInvalid)
    ));
    assert!(matches!(value(public_key), AttributeAnswer::Value(v) if v == public_value));
    hsm.handle(
        client,
        false,
        Call::Login {
            session,
            user_type: ck::CKU_USER as u64,
            pin: pin("user-pin"),
        },
    )
    .unwrap();
    assert!(matches!(value(private_key), AttributeAnswer::Value(v) if v == private_value));
}

/// Zero PBKDF2 iterations are refused when the device opens, not quietly made 1.
#[test]
fn zero_kdf_iterations_are_refused_when_the_device_opens() {
    let dir = tempfile::tempdir().unwrap();
    let zero = HsmOptions {
        kdf_iterations: 0,
        ..options()
    };
    let Err(error) = Hsm::open(dir.path(), &zero) else {
        panic!("a device opened with 0 PBKDF2 iterations");
    };
    assert!(
        error.to_string().contains("at least 1 iteration"),
        "{error}"
    );
    assert!(Hsm::open(dir.path(), &options()).is_ok());
}

#[test]
fn a_disconnecting_client_loses_its_sessions_logins_and_session_objects() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let (client, session) = ready(&hsm);
    let template = Template(vec![Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA)]);
    let object = handle(hsm.handle(client, false, Call::CreateObject { session, template }));
    let other = hsm.connect();
    // Another client sees neither the session nor the session object.
    assert!(matches!(
        hsm.handle(other, false, Call::SessionInfo { session }),
        Err(Rv::SessionHandleInvalid)
    ));
    assert_eq!(hsm.session_count(), 1);
    hsm.disconnect(client);
    assert_eq!(hsm.session_count(), 0);
    let again = hsm.connect();
    let session = handle(hsm.handle(
        again,
        false,
        Call::OpenSession {
            slot: 0,
            flags: ck::CKF_SERIAL_SESSION as u64,
        },
    ));
    assert!(matches!(
        hsm.handle(
            again,
            false,
            Call::GetAttributes {
                session,
                object,
                types: vec![]
            }
        ),
        Err(Rv::ObjectHandleInvalid)
    ));
    // Not logged in any more.
    assert!(matches!(
        hsm.handle(again, false, Call::Logout { session }),
        Err(Rv::UserNotLoggedIn)
    ));
}

#[test]
fn bad_requests_get_the_specified_return_values() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let (client, session) = ready(&hsm);
    let init = |mechanism: Mechanism, key| {
        hsm.handle(
            client,
            false,
            Call::OperationInit {
                session,
                operation: tessera_wire::Operation::Sign,
                mechanism,
                key,
            },
        )
    };
    // The Admin token is set up by ctconf, never by C_InitToken.
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::InitToken {
                slot: 2,
                so_pin: pin("so-pin"),
                label: vec![]
            }
        ),
        Err(Rv::AccessDenied)
    ));
    assert!(matches!(
        hsm.handle(client, false, Call::SlotInfo { slot: 9 }),
        Err(Rv::SlotIdInvalid)
    ));
    assert!(matches!(
        hsm.handle(client, false, Call::OpenSession { slot: 0, flags: 0 }),
        Err(Rv::SessionParallelNotSupported)
    ));
    assert!(matches!(
        init(Mechanism::plain(0x8000_1234), 1),
        Err(Rv::KeyHandleInvalid)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::GenerateKey {
                session,
                mechanism: Mechanism::plain(0x8000_1234),
                template: Template::default()
            }
        ),
        Err(Rv::MechanismInvalid)
    ));
    assert!(matches!(
        hsm.handle(client, false, Call::FindObjects { session, max: 5 }),
        Err(Rv::OperationNotInitialized)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::GenerateRandom {
                session: 999,
                len: 1
            }
        ),
        Err(Rv::SessionHandleInvalid)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::SeedRandom {
                session,
                seed: pin("x")
            }
        ),
        Ok(Reply::Done)
    ));
    // A seed is ignored, but only on a session of this client.
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::SeedRandom {
                session: 999,
                seed: pin("x")
            }
        ),
        Err(Rv::SessionHandleInvalid)
    ));
    assert!(matches!(
        hsm.handle(
            hsm.connect(),
            false,
            Call::SeedRandom {
                session,
                seed: pin("x")
            }
        ),
        Err(Rv::SessionHandleInvalid)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Call::Login {
                session,
                user_type: 7,
                pin: pin("user-pin")
            }
        ),
        Err(Rv::UserTypeInvalid)
    ));
}

#[test]
fn close_all_sessions_closes_only_this_clients_sessions_on_that_slot() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let (client, first) = ready(&hsm);
    let flags = ck::CKF_SERIAL_SESSION as u64;
    let second = handle(hsm.handle(client, false, Call::OpenSession { slot: 0, flags }));
    let other_client = hsm.connect();
    let foreign = handle(hsm.handle(other_client, false, Call::OpenSession { slot: 0, flags }));
    hsm.handle(
        client,
        false,
        Call::InitToken {
            slot: 1,
            so_pin: pin("so-pin"),
            label: vec![],
        },
    )
    .unwrap();
    let other_slot = handle(hsm.handle(client, false, Call::OpenSession { slot: 1, flags }));
    hsm.handle(client, false, Call::CloseAllSessions { slot: 0 })
        .unwrap();
    for gone in [first, second] {
        assert!(matches!(
            hsm.handle(client, false, Call::SessionInfo { session: gone }),
            Err(Rv::SessionHandleInvalid)
        ));
    }
    assert!(hsm
        .handle(
            client,
            false,
            Call::SessionInfo {
                session: other_slot
            }
        )
        .is_ok());
    assert!(hsm
        .handle(other_client, false, Call::SessionInfo { session: foreign })
        .is_ok());
    // Closing the last session on the token logged the application out.
    let again = handle(hsm.handle(client, false, Call::OpenSession { slot: 0, flags }));
    match hsm.handle(client, false, Call::SessionInfo { session: again }) {
        Ok(Reply::Session(info)) => assert_eq!(info.state, ck::CKS_RO_PUBLIC_SESSION as u64),
        other => panic!("{other:?}"),
    }
}

// PIN guessing raced from many clients at once. Each guess runs PBKDF2 outside its token's lock,
// so a counter checked before the KDF and raised after it let every guess of a burst through.
// The KDF is made slow enough here (tens of milliseconds) that a burst is in flight together.

/// PBKDF2 iterations for the race tests: enough that one check takes tens of milliseconds and
/// all guesses of a burst overlap, few enough that the burst stays short.
const RACE_KDF_ITERATIONS: u32 = 100_000;
/// Guesses in a burst: many more than the lockout allows.
const BURST: usize = 32;
/// The Admin slot with [`options`] (two user slots).
const ADMIN_SLOT: u64 = 2;

/// A start line for threads: `wait` returns once all `threads` have reached it, so that their
/// next calls are sent together (a thread that never arrives fails the test in 60 s rather
/// than hanging it, unlike `std::sync::Barrier`).
struct StartLine {
    arrived: std::sync::Mutex<usize>,
    all_here: std::sync::Condvar,
    threads: usize,
}

impl StartLine {
    fn new(threads: usize) -> StartLine {
        StartLine {
            arrived: std::sync::Mutex::new(0),
            all_here: std::sync::Condvar::new(),
            threads,
        }
    }

    fn wait(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        if *arrived == self.threads {
            self.all_here.notify_all();
            return;
        }
        let limit = std::time::Duration::from_secs(60);
        let (arrived, wait) = self
            .all_here
            .wait_timeout_while(arrived, limit, |a| *a < self.threads)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "{} of {} threads ready",
            *arrived,
            self.threads
        );
    }
}

fn race_options() -> HsmOptions {
    HsmOptions {
        kdf_iterations: RACE_KDF_ITERATIONS,
        ..options()
    }
}

/// Slot 0 with its SO and user PINs, and the Admin token with its ASO and Administrator PINs
/// ("aso-pin", "admin-pin"); nobody logged in.
fn ready_for_guessing(hsm: &Hsm) {
    let (client, _) = ready(hsm);
    hsm.disconnect(client);
    let client = hsm.connect();
    hsm.handle(
        client,
        false,
        Call::AdminSetup {
            aso_pin: pin("aso-pin"),
            admin_pin: pin("admin-pin"),
        },
    )
    .unwrap();
    hsm.disconnect(client);
}

/// `BURST` clients, each with a R/W session of its own on `slot`, send `guess(session)` at once
/// (released together); their answers. `before` runs first in each client (such
/// as a login that a guess needs).
fn burst(
    hsm: &Hsm,
    slot: u64,
    before: impl Fn(u64, u64) + Sync,
    guess: impl Fn(u64) -> Call + Sync,
) -> Vec<Result<Reply, Rv>> {
    let start = StartLine::new(BURST);
    let (before, guess, start) = (&before, &guess, &start);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..BURST)
            .map(|_| {
                scope.spawn(move || {
                    let client = hsm.connect();
                    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
                    let session =
                        handle(hsm.handle(client, false, Call::OpenSession { slot, flags }));
                    before(client, session);
                    start.wait();
                    let answer = hsm.handle(client, false, guess(session));
                    hsm.disconnect(client);
                    answer
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// The lockout held against a burst: exactly `MAX_PIN_FAILURES` guesses were checked (and
/// found wrong), every other one was refused without a check.
fn assert_lockout_held(answers: &[Result<Reply, Rv>]) {
    let wrong = answers
        .iter()
        .filter(|a| matches!(a, Err(Rv::PinIncorrect)))
        .count();
    let locked = answers
        .iter()
        .filter(|a| matches!(a, Err(Rv::PinLocked)))
        .count();
    assert_eq!(
        (wrong, locked),
        (MAX_PIN_FAILURES as usize, BURST - MAX_PIN_FAILURES as usize),
        "{answers:?}"
    );
}

fn login(session: u64, user_type: ck::CK_USER_TYPE, text: &str) -> Call {
    Call::Login {
        session,
        user_type: user_type as u64,
        pin: pin(text),
    }
}

/// A right PIN for `user_type` on `slot`, from a new client.
fn right_login(hsm: &Hsm, slot: u64, user_type: ck::CK_USER_TYPE, right: &str) -> Result<(), Rv> {
    let client = hsm.connect();
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let session = handle(hsm.handle(client, false, Call::OpenSession { slot, flags }));
    let answer = hsm
        .handle(client, false, login(session, user_type, right))
        .map(|_| ());
    hsm.disconnect(client);
    answer
}

/// A burst of wrong logins for one role: at most `MAX_PIN_FAILURES` are checked, then the
/// right PIN is refused too, and still after the device restarts (the count is on disk).
fn wrong_login_burst_locks(slot: u64, user_type: ck::CK_USER_TYPE, right: &str) {
    let dir = tempfile::tempdir().unwrap();
    {
        let hsm = Hsm::open(dir.path(), &race_options()).unwrap();
        ready_for_guessing(&hsm);
        let answers = burst(&hsm, slot, |_, _| {}, |s| login(s, user_type, "wrong-pin"));
        assert_lockout_held(&answers);
        assert_eq!(
            right_login(&hsm, slot, user_type, right),
            Err(Rv::PinLocked)
        );
    }
    let hsm = Hsm::open(dir.path(), &race_options()).unwrap();
    assert_eq!(
        right_login(&hsm, slot, user_type, right),
        Err(Rv::PinLocked)
    );
}

#[test]
fn a_burst_of_wrong_user_pins_is_held_to_the_lockout() {
    wrong_login_burst_locks(0, ck::CKU_USER, "user-pin");
}

#[test]
fn a_burst_of_wrong_so_pins_is_held_to_the_lockout() {
    wrong_login_burst_locks(0, ck::CKU_SO, "so-pin");
}

#[test]
fn a_burst_of_wrong_administrator_pins_is_held_to_the_lockout() {
    wrong_login_burst_locks(ADMIN_SLOT, ck::CKU_USER, "admin-pin");
}

#[test]
fn a_burst_of_wrong_aso_pins_is_held_to_the_lockout() {
    wrong_login_burst_locks(ADMIN_SLOT, ck::CKU_SO, "aso-pin");
}

/// The other PIN checks count on the same counters: wrong old PINs in `C_SetPIN` (the user
/// logged in each client first) and wrong SO PINs re-initialising a token.
#[test]
fn bursts_of_wrong_pins_in_set_pin_and_init_token_are_held_to_the_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &race_options()).unwrap();
    ready_for_guessing(&hsm);
    let log_in = |client, session| {
        hsm.handle(client, false, login(session, ck::CKU_USER, "user-pin"))
            .unwrap();
    };
    let set_pin = |session| Call::SetPin {
        session,
        old_pin: pin("wrong-pin"),
        new_pin: pin("new-user-pin"),
    };
    assert_lockout_held(&burst(&hsm, 0, log_in, set_pin));
    assert_eq!(
        right_login(&hsm, 0, ck::CKU_USER, "user-pin"),
        Err(Rv::PinLocked)
    );

    // C_InitToken needs no session open on the token: the guesses go to slot 0 from sessions
    // on slot 1.
    let client = hsm.connect();
    hsm.handle(
        client,
        false,
        Call::InitToken {
            slot: 1,
            so_pin: pin("so-pin"),
            label: vec![],
        },
    )
    .unwrap();
    hsm.disconnect(client);
    let init_token = |_| Call::InitToken {
        slot: 0,
        so_pin: pin("wrong-pin"),
        label: b"taken".to_vec(),
    };
    assert_lockout_held(&burst(&hsm, 1, |_, _| {}, init_token));
    assert_eq!(
        right_login(&hsm, 0, ck::CKU_SO, "so-pin"),
        Err(Rv::PinLocked)
    );
}

/// Counting a guess before it is checked must not refuse honest users: many applications
/// logging in at once with the right PIN (more than the lockout allows in flight) all get in.
#[test]
fn many_right_pins_at_once_all_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &race_options()).unwrap();
    ready_for_guessing(&hsm);
    let answers = burst(&hsm, 0, |_, _| {}, |s| login(s, ck::CKU_USER, "user-pin"));
    assert!(
        answers.iter().all(|a| matches!(a, Ok(Reply::Done))),
        "{answers:?}"
    );
}

/// A single-part AES-GCM works where the call's data arrived: the ciphertext comes back in the
/// request's own buffer (no copy into a buffer of the operation's), it is what aws-lc-rs makes
/// of the data and what the multi-part path, which gathers the data, makes; decryption in the
/// adopted buffer gives the data back; data decoded without room for the tag still works.
#[test]
fn a_single_part_gcm_works_in_the_calls_own_buffer() {
    use tessera_core::MechanismParameter;
    use tessera_wire::Operation;
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let (client, session) = ready(&hsm);
    let value = [0x42u8; 32];
    let mut template = aes_template(&value, true);
    template.0.push(Attribute::bool(ck::CKA_ENCRYPT, true));
    template.0.push(Attribute::bool(ck::CKA_DECRYPT, true));
    let key = handle(hsm.handle(client, false, Call::CreateObject { session, template }));
    let iv = [7u8; 12];
    let gcm = || Mechanism {
        ty: ck::CKM_AES_GCM,
        parameter: MechanismParameter::Gcm {
            iv: iv.to_vec(),
            aad: b"header".to_vec(),
            tag_bits: 128,
        },
    };
    let plain: Vec<u8> = (0..(1usize << 20) + 5).map(|i| (i % 239) as u8).collect();
    let expected = {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &value).unwrap());
        let mut out = plain.clone();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(b"header"),
            &mut out,
        )
        .unwrap();
        out
    };
    let once = |operation: Operation, data: Vec<u8>| {
        hsm.handle(
            client,
            false,
            Call::OperationOnce {
                session,
                operation,
                mechanism: gcm(),
                key,
                data,
                signature: Vec::new(),
            },
        )
    };
    // As the daemon decodes it: with room for the tag.
    let data = tessera_core::bytes::copy(&plain);
    let at = data.as_ptr() as usize;
    let Ok(Reply::Bytes(sealed)) = once(Operation::Encrypt, data) else {
        panic!("no ciphertext")
    };
    assert!(sealed == expected, "not the ciphertext");
    assert_eq!(
        sealed.as_ptr() as usize,
        at,
        "copied out of the call's buffer"
    );
    // Without room: the same result (gathered in a buffer of its own, as before).
    let Ok(Reply::Bytes(again)) = once(Operation::Encrypt, plain.clone()) else {
        panic!("no ciphertext")
    };
    assert!(again == expected, "not the ciphertext");
    // Multi-part, gathered: the same.
    hsm.handle(
        client,
        false,
        Call::OperationInit {
            session,
            operation: Operation::Encrypt,
            mechanism: gcm(),
            key,
        },
    )
    .unwrap();
    let (first, second) = plain.split_at(1000);
    for part in [first, second] {
        hsm.handle(
            client,
            false,
            Call::OperationUpdate {
                session,
                operation: Operation::Encrypt,
                data: part.to_vec(),
            },
        )
        .unwrap();
    }
    let Ok(Reply::Bytes(gathered)) = hsm.handle(
        client,
        false,
        Call::OperationFinal {
            session,
            operation: Operation::Encrypt,
            signature: Vec::new(),
        },
    ) else {
        panic!("no ciphertext")
    };
    assert!(gathered == expected, "the multi-part ciphertext differs");
    // Decrypted in the adopted buffer; a damaged tag is refused.
    let opened = once(Operation::Decrypt, tessera_core::bytes::copy(&sealed));
    assert!(
        matches!(&opened, Ok(Reply::Secret(p)) if p.expose() == &plain[..]),
        "not the plaintext"
    );
    let mut damaged = sealed.clone();
    *damaged.last_mut().unwrap() ^= 1;
    assert!(matches!(
        once(Operation::Decrypt, damaged),
        Err(Rv::EncryptedDataInvalid)
    ));
}
