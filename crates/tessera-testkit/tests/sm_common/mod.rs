//! Shared pieces of the secure-messaging suites: secured clients, token set-up, frame surgery.
#![allow(dead_code)]

use tessera_client::{ClientError, Device};
use tessera_core::{ck, Attribute, Mechanism, MechanismParameter, Template};
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Call, Message, Operation, Reply, RequestEnvelope};

pub use tessera_testkit::sm::*;

pub fn data_object(session: u64, label: &str) -> Call {
    Call::CreateObject {
        session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        ]),
    }
}

pub fn aes_key(session: u64, value: &[u8]) -> Call {
    Call::CreateObject {
        session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bytes(ck::CKA_VALUE, value),
        ]),
    }
}

pub fn encrypt(device: &Device, g: u64, session: u64, key: u64, plaintext: &[u8]) -> Vec<u8> {
    let mechanism = Mechanism {
        ty: ck::CKM_AES_CBC_PAD as u64,
        parameter: MechanismParameter::Bytes(vec![0; 16]),
    };
    call(
        device,
        g,
        Call::OperationInit {
            session,
            operation: Operation::Encrypt,
            mechanism,
            key,
        },
    );
    let single = Call::OperationSingle {
        session,
        operation: Operation::Encrypt,
        data: plaintext.to_vec(),
        signature: vec![],
    };
    match call(device, g, single) {
        Reply::Bytes(c) => c,
        other => panic!("{other:?}"),
    }
}

/// How many token objects with `label` a fresh client finds.
pub fn count(daemon: &Daemon, transport: Transport, label: &str) -> usize {
    let device = secured(daemon, &daemon.server_list(transport), &[]);
    let (session, g) = user(&device);
    let template = Template(vec![Attribute::bytes(ck::CKA_LABEL, label.as_bytes())]);
    call(&device, g, Call::FindObjectsInit { session, template });
    match call(&device, g, Call::FindObjects { session, max: 100 }) {
        Reply::Handles(h) => h.len(),
        other => panic!("{other:?}"),
    }
}

pub fn code(result: Result<(Reply, u64), ClientError>) -> u64 {
    match result {
        Err(e) => e.rv(),
        Ok(reply) => panic!("expected a failure, got {reply:?}"),
    }
}

/// Decodes a request frame body.
pub fn request(body: &[u8]) -> RequestEnvelope {
    tessera_wire::decode_request(body).expect("a request envelope")
}

/// Encodes a request envelope as a frame body (without the length prefix).
pub fn body(envelope: &RequestEnvelope) -> Vec<u8> {
    tessera_wire::encode_request(envelope)[4..].to_vec()
}

pub fn is_protected(body: &[u8]) -> bool {
    matches!(request(body).message, Message::Protected(_))
}

/// Decodes a response frame body.
pub fn response(body: &[u8]) -> tessera_wire::ResponseEnvelope {
    tessera_wire::decode_response(body).expect("a response envelope")
}

/// Encodes a response envelope as a frame body.
pub fn response_body(envelope: &tessera_wire::ResponseEnvelope) -> Vec<u8> {
    tessera_wire::encode_response(envelope)[4..].to_vec()
}
