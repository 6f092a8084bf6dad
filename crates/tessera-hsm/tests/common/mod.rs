//! Shared set-up of the engine suites: a token initialised with known PINs and a user session.
#![allow(dead_code)]

use tessera_core::{ck, Rv, SecretBytes};
use tessera_hsm::Hsm;
use tessera_wire::{Call, Reply};

pub fn handle(reply: Result<Reply, Rv>) -> u64 {
    match reply {
        Ok(Reply::Handle(h)) => h,
        other => panic!("{other:?}"),
    }
}

pub fn pin(text: &str) -> SecretBytes {
    SecretBytes::from_slice(text.as_bytes())
}

pub fn session(hsm: &Hsm, client: u64) -> u64 {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    handle(hsm.handle(client, false, Call::OpenSession { slot: 0, flags }))
}

pub fn login(
    hsm: &Hsm,
    client: u64,
    session: u64,
    user_type: ck::CK_USER_TYPE,
    text: &str,
) -> Result<Reply, Rv> {
    hsm.handle(
        client,
        false,
        Call::Login {
            session,
            user_type: user_type as u64,
            pin: pin(text),
        },
    )
}

/// Initialises slot 0 (SO PIN `so-pin`, user PIN `user-pin`); returns (client, user session).
pub fn ready(hsm: &Hsm) -> (u64, u64) {
    let client = hsm.connect();
    hsm.handle(
        client,
        false,
        Call::InitToken {
            slot: 0,
            so_pin: pin("so-pin"),
            label: b"t".to_vec(),
        },
    )
    .unwrap();
    let session = session(hsm, client);
    login(hsm, client, session, ck::CKU_SO, "so-pin").unwrap();
    hsm.handle(
        client,
        false,
        Call::InitPin {
            session,
            pin: pin("user-pin"),
        },
    )
    .unwrap();
    hsm.handle(client, false, Call::Logout { session }).unwrap();
    login(hsm, client, session, ck::CKU_USER, "user-pin").unwrap();
    (client, session)
}
