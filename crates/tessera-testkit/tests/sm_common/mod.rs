//! Shared pieces of the secure-messaging suites: secured clients, token set-up, frame surgery.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_client::{ClientError, Device, SecureSettings};
use tessera_config::{Config, ServerAddress};
use tessera_core::{ck, Attribute, Mechanism, MechanismParameter, SecretBytes, Template};
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Operation, Reply, Request, RequestEnvelope};

pub const SO_PIN: &str = "token-so-pin";
pub const USER_PIN: &str = "user-pin-1234";

/// Initialises slot 0 with ctconf (works under every flag) and sets the user PIN.
pub fn prepare(daemon: &Daemon, transport: Transport, flags: &str) {
    if flags.is_empty() {
        daemon.admin(transport, &[]);
    } else {
        daemon.secure(transport, flags);
    }
    std::fs::write(daemon.dir().join("so.pin"), format!("{SO_PIN}\n")).unwrap();
    let so = daemon.dir().join("so.pin").display().to_string();
    daemon.admin(transport, &["-n0", "--label", "sm", "--so-pin-file", &so]);
    let device = secured(daemon, &daemon.server_list(transport), &[]);
    let (session, g) = open(&device);
    call(
        &device,
        g,
        Request::Login {
            session,
            user_type: ck::CKU_SO as u64,
            pin: pin(SO_PIN),
        },
    );
    call(
        &device,
        g,
        Request::InitPin {
            session,
            pin: pin(USER_PIN),
        },
    );
    device.disconnect();
}

/// A client with secure messaging, this test's trust store, and extra configuration items.
pub fn secured(daemon: &Daemon, server: &str, extra: &[(&str, &str)]) -> Device {
    let mut environment: HashMap<String, String> = daemon.trust_env().into_iter().collect();
    for (k, v) in extra {
        environment.insert(k.to_string(), v.to_string());
    }
    let settings = SecureSettings::from_config(Config::from_levels(
        environment,
        HashMap::new(),
        HashMap::new(),
    ))
    .unwrap();
    let address = ServerAddress::parse(server).unwrap();
    Device::new(address, Duration::from_secs(3), Duration::from_secs(3))
        .with_security(Arc::new(settings))
}

pub fn pin(text: &str) -> SecretBytes {
    SecretBytes::from_slice(text.as_bytes())
}

pub fn call(device: &Device, generation: u64, request: Request) -> Reply {
    match device.call(Some(generation), request) {
        Ok((reply, _)) => reply,
        Err(e) => panic!("call failed: {e} (0x{:08X})", e.rv()),
    }
}

/// A R/W session: (handle, generation).
pub fn open(device: &Device) -> (u64, u64) {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    match device.call(None, Request::OpenSession { slot: 0, flags }) {
        Ok((Reply::Handle(h), g)) => (h, g),
        other => panic!("open session: {other:?}"),
    }
}

/// A user session.
pub fn user(device: &Device) -> (u64, u64) {
    let (session, g) = open(device);
    call(
        device,
        g,
        Request::Login {
            session,
            user_type: ck::CKU_USER as u64,
            pin: pin(USER_PIN),
        },
    );
    (session, g)
}

pub fn data_object(session: u64, label: &str) -> Request {
    Request::CreateObject {
        session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        ]),
    }
}

pub fn aes_key(session: u64, value: &[u8]) -> Request {
    Request::CreateObject {
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
        Request::OperationInit {
            session,
            operation: Operation::Encrypt,
            mechanism,
            key,
        },
    );
    let single = Request::OperationSingle {
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
    call(&device, g, Request::FindObjectsInit { session, template });
    match call(&device, g, Request::FindObjects { session, max: 100 }) {
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
    matches!(request(body).request, Request::Protected(_))
}

/// Decodes a response frame body.
pub fn response(body: &[u8]) -> tessera_wire::ResponseEnvelope {
    tessera_wire::decode_response(body).expect("a response envelope")
}

/// Encodes a response envelope as a frame body.
pub fn response_body(envelope: &tessera_wire::ResponseEnvelope) -> Vec<u8> {
    tessera_wire::encode_response(envelope)[4..].to_vec()
}
