//! The engine through its API: requests in, replies out, over a real data directory.

use tessera_core::{ck, Attribute, Mechanism, Rv, SecretBytes, Template};
use tessera_hsm::{Hsm, HsmOptions};
use tessera_wire::{AttributeAnswer, Reply, Request};

fn options() -> HsmOptions {
    HsmOptions {
        user_slots: 2,
        kdf_iterations: 1000,
        ..HsmOptions::default()
    }
}

fn handle(reply: Result<Reply, Rv>) -> u64 {
    match reply {
        Ok(Reply::Handle(h)) => h,
        other => panic!("{other:?}"),
    }
}

fn pin(text: &str) -> SecretBytes {
    SecretBytes::from_slice(text.as_bytes())
}

/// Initialises slot 0 and returns (client, R/W user session).
fn ready(hsm: &Hsm) -> (u64, u64) {
    let client = hsm.connect();
    hsm.handle(
        client,
        false,
        Request::InitToken {
            slot: 0,
            so_pin: pin("so-pin"),
            label: b"t".to_vec(),
        },
    )
    .unwrap();
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let session = handle(hsm.handle(client, false, Request::OpenSession { slot: 0, flags }));
    hsm.handle(
        client,
        false,
        Request::Login {
            session,
            user_type: ck::CKU_SO as u64,
            pin: pin("so-pin"),
        },
    )
    .unwrap();
    hsm.handle(
        client,
        false,
        Request::InitPin {
            session,
            pin: pin("user-pin"),
        },
    )
    .unwrap();
    hsm.handle(client, false, Request::Logout { session })
        .unwrap();
    hsm.handle(
        client,
        false,
        Request::Login {
            session,
            user_type: ck::CKU_USER as u64,
            pin: pin("user-pin"),
        },
    )
    .unwrap();
    (client, session)
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
            Request::CreateObject {
                session,
                template: aes_template(&private_value, true),
            },
        ));
        public_key = handle(hsm.handle(
            client,
            false,
            Request::CreateObject {
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
        Request::OpenSession {
            slot: 0,
            flags: ck::CKF_SERIAL_SESSION as u64,
        },
    ));
    let value = |object| match hsm.handle(
        client,
        false,
        Request::GetAttributes {
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
            Request::GetAttributes {
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
        Request::Login {
            session,
            user_type: ck::CKU_USER as u64,
            pin: pin("user-pin"),
        },
    )
    .unwrap();
    assert!(matches!(value(private_key), AttributeAnswer::Value(v) if v == private_value));
}

#[test]
fn a_disconnecting_client_loses_its_sessions_logins_and_session_objects() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let (client, session) = ready(&hsm);
    let template = Template(vec![Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA)]);
    let object = handle(hsm.handle(client, false, Request::CreateObject { session, template }));
    let other = hsm.connect();
    // Another client sees neither the session nor the session object.
    assert!(matches!(
        hsm.handle(other, false, Request::SessionInfo { session }),
        Err(Rv::SessionHandleInvalid)
    ));
    assert_eq!(hsm.session_count(), 1);
    hsm.disconnect(client);
    assert_eq!(hsm.session_count(), 0);
    let again = hsm.connect();
    let session = handle(hsm.handle(
        again,
        false,
        Request::OpenSession {
            slot: 0,
            flags: ck::CKF_SERIAL_SESSION as u64,
        },
    ));
    assert!(matches!(
        hsm.handle(
            again,
            false,
            Request::GetAttributes {
                session,
                object,
                types: vec![]
            }
        ),
        Err(Rv::ObjectHandleInvalid)
    ));
    // Not logged in any more.
    assert!(matches!(
        hsm.handle(again, false, Request::Logout { session }),
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
            Request::OperationInit {
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
            Request::InitToken {
                slot: 2,
                so_pin: pin("so-pin"),
                label: vec![]
            }
        ),
        Err(Rv::AccessDenied)
    ));
    assert!(matches!(
        hsm.handle(client, false, Request::SlotInfo { slot: 9 }),
        Err(Rv::SlotIdInvalid)
    ));
    assert!(matches!(
        hsm.handle(client, false, Request::OpenSession { slot: 0, flags: 0 }),
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
            Request::GenerateKey {
                session,
                mechanism: Mechanism::plain(0x8000_1234),
                template: Template::default()
            }
        ),
        Err(Rv::MechanismInvalid)
    ));
    assert!(matches!(
        hsm.handle(client, false, Request::FindObjects { session, max: 5 }),
        Err(Rv::OperationNotInitialized)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Request::GenerateRandom {
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
            Request::SeedRandom {
                session,
                seed: pin("x")
            }
        ),
        Ok(Reply::Done)
    ));
    assert!(matches!(
        hsm.handle(
            client,
            false,
            Request::Login {
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
    let second = handle(hsm.handle(client, false, Request::OpenSession { slot: 0, flags }));
    let other_client = hsm.connect();
    let foreign = handle(hsm.handle(other_client, false, Request::OpenSession { slot: 0, flags }));
    hsm.handle(
        client,
        false,
        Request::InitToken {
            slot: 1,
            so_pin: pin("so-pin"),
            label: vec![],
        },
    )
    .unwrap();
    let other_slot = handle(hsm.handle(client, false, Request::OpenSession { slot: 1, flags }));
    hsm.handle(client, false, Request::CloseAllSessions { slot: 0 })
        .unwrap();
    for gone in [first, second] {
        assert!(matches!(
            hsm.handle(client, false, Request::SessionInfo { session: gone }),
            Err(Rv::SessionHandleInvalid)
        ));
    }
    assert!(hsm
        .handle(
            client,
            false,
            Request::SessionInfo {
                session: other_slot
            }
        )
        .is_ok());
    assert!(hsm
        .handle(
            other_client,
            false,
            Request::SessionInfo { session: foreign }
        )
        .is_ok());
    // Closing the last session on the token logged the application out.
    let again = handle(hsm.handle(client, false, Request::OpenSession { slot: 0, flags }));
    match hsm.handle(client, false, Request::SessionInfo { session: again }) {
        Ok(Reply::Session(info)) => assert_eq!(info.state, ck::CKS_RO_PUBLIC_SESSION as u64),
        other => panic!("{other:?}"),
    }
}
