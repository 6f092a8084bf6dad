//! Round trips per PKCS#11 call, counted by the device (`Requests Served` in `ctconf -a`),
//! through the real library and `cryptoki`'s calls as an application makes them: a single-part
//! operation is one round trip once its init has been judged by the device in the session (the
//! init then travels with it, and the length query of the two-call convention costs nothing
//! more), two the first time (the init answers with its own errors); a small search is one,
//! random is one; opening and closing a session, or making and destroying a key, is two. Over
//! the plain socket and over full secure messaging.

mod common;

use std::time::Duration;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Call, Reply};

/// Requests the device has served.
fn served(daemon: &Daemon) -> u64 {
    let address = ServerAddress::parse(&daemon.server_list(Transport::Unix)).unwrap();
    let device = Device::new(address, Duration::from_secs(3), Duration::from_secs(3));
    match device.call(None, Call::DeviceStatus) {
        Ok((Reply::Status(status), _)) => status.requests,
        other => panic!("{other:?}"),
    }
}

/// The round trips `action` made (the status request that reads the counter is one).
fn round_trips(daemon: &Daemon, action: impl FnMut()) -> u64 {
    let mut action = action;
    let before = served(daemon);
    action();
    served(daemon) - before - 1
}

/// A call sequence: its name, the round trips it should take the first time and when
/// repeated, and the calls.
type Case<'a> = (&'static str, [u64; 2], Box<dyn FnMut() + 'a>);

fn check(daemon: &Daemon, session: &Session) {
    let key = common::aes_key(session).unwrap();
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ])],
            &[Attribute::Sign(true)],
        )
        .unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(b"needle".to_vec()),
            Attribute::Value(b"x".to_vec()),
        ])
        .unwrap();
    let mut iv = [7u8; 12];
    let mut sealed = Vec::new();
    let cases: Vec<Case> = vec![
        (
            "C_GenerateRandom",
            [1, 1],
            Box::new(|| drop(session.generate_random_vec(32).unwrap())),
        ),
        (
            "C_EncryptInit + C_Encrypt (length query, then the call)",
            [2, 1],
            Box::new(|| {
                let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into()).unwrap());
                sealed = session.encrypt(&gcm, key, &[1u8; 64]).unwrap();
            }),
        ),
        (
            "C_DigestInit + C_Digest",
            [2, 1],
            Box::new(|| drop(session.digest(&Mechanism::Sha256, b"abc").unwrap())),
        ),
        (
            "C_SignInit + C_Sign + C_VerifyInit + C_Verify",
            [4, 2],
            Box::new(|| {
                let signature = session
                    .sign(&Mechanism::EcdsaSha256, private, b"m")
                    .unwrap();
                session
                    .verify(&Mechanism::EcdsaSha256, public, b"m", &signature)
                    .unwrap();
            }),
        ),
        (
            "C_GenerateKey + C_DestroyObject (a session key)",
            [2, 2],
            Box::new(|| {
                let made = session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[Attribute::Token(false), Attribute::ValueLen(32.into())],
                    )
                    .unwrap();
                session.destroy_object(made).unwrap();
            }),
        ),
        (
            "C_FindObjectsInit + C_FindObjects + C_FindObjectsFinal (one match)",
            [1, 1],
            Box::new(|| {
                let found = session
                    .find_objects(&[Attribute::Label(b"needle".to_vec())])
                    .unwrap();
                assert_eq!(found.len(), 1);
            }),
        ),
    ];
    for (name, [first, repeated], mut action) in cases {
        assert_eq!(round_trips(daemon, &mut action), first, "{name}, first");
        assert_eq!(
            round_trips(daemon, &mut action),
            repeated,
            "{name}, repeated"
        );
    }
    // The ciphertext was right: decrypting it (one round trip more) gives the plaintext back.
    let mut iv = [7u8; 12];
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into()).unwrap());
    assert_eq!(session.decrypt(&gcm, key, &sealed).unwrap(), [1u8; 64]);
}

#[test]
fn single_part_calls_and_small_searches_take_one_round_trip() {
    // Plain local socket.
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    check(&f.daemon, &session);
    check_open_close(&f);
    drop(session);
    drop(f);

    // Full secure messaging (nuNU), over the same socket.
    let f = common::secured_fixture(Transport::Unix, "nuNU");
    check(&f.daemon, &f.user_session());
    check_open_close(&f);
}

/// C_OpenSession + C_CloseSession: two round trips (the device makes the session).
fn check_open_close(f: &common::Fixture) {
    let opened = round_trips(&f.daemon, || {
        let session = f.pkcs11.open_ro_session(f.slot).unwrap();
        session.close().expect("C_CloseSession");
    });
    assert_eq!(opened, 2, "C_OpenSession + C_CloseSession");
}
