//! The composed calls of the library (dual-function updates, message-based operations,
//! `C_WrapKey`'s kept output, `C_SessionCancel`) against a scripted device, through the safe
//! API the entry points use. The library's state is global, so one test runs the scenarios in
//! order.

mod fake;

use cryptoki_sys as ck;
use tessera_core::{Mechanism, MechanismParameter, Rv, SecretBytes};
use tessera_pkcs11::library::{self, Dual};
use tessera_pkcs11::message::{GcmMessage, Iv};
use tessera_wire::{Operation, Request};

use fake::{FakeDevice, TAG};

fn code(rv: Rv) -> u64 {
    rv.code()
}

/// The operations of the requests, in order: `(operation, kind)` where kind is "init",
/// "update" or "single", and other requests by name.
fn steps(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|request| match request {
            Request::OperationInit { operation, .. } => format!("{operation:?} init"),
            Request::OperationUpdate { operation, .. } => format!("{operation:?} update"),
            Request::OperationSingle { operation, .. } => format!("{operation:?} single"),
            Request::OperationFinal { operation, .. } => format!("{operation:?} final"),
            Request::GenerateRandom { len, .. } => format!("random {len}"),
            Request::WrapKey { key, .. } => format!("wrap {key}"),
            Request::SessionCancel { flags, .. } => format!("cancel {flags:#x}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn composed_calls() {
    let device = FakeDevice::start("library");
    device.configure();
    library::initialize().unwrap();
    let session = library::open_session(0, (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64)
        .expect("a session on the fake device");
    device.take();

    dual_function_updates(&device, session);
    wrapped_keys_are_asked_for_once(&device, session);
    gcm_messages(&device, session);
    signature_messages(&device, session);
    session_cancel(&device, session);

    library::finalize().unwrap();
}

fn dual_function_updates(device: &FakeDevice, session: u64) {
    // A length query runs both updates; the call that takes the output runs neither.
    let output = library::dual_update(session, Dual::DigestEncrypt, b"abc", None).unwrap();
    assert_eq!(output.expose(), &[!b'a', !b'b', !b'c']);
    let output = library::dual_update(session, Dual::DigestEncrypt, b"abc", Some(2)).unwrap();
    assert_eq!(output.len(), 3, "still too small: the same output again");
    let output = library::dual_update(session, Dual::DigestEncrypt, b"abc", Some(3)).unwrap();
    assert_eq!(output.expose(), &[!b'a', !b'b', !b'c']);
    assert_eq!(
        steps(&device.take()),
        ["Digest update", "Encrypt update"],
        "the input is digested once"
    );

    // Decryption first, then the absorber gets the plaintext.
    let output = library::dual_update(session, Dual::DecryptVerify, &[0x00, 0x0F], Some(8));
    assert_eq!(output.unwrap().expose(), &[0xFF, 0xF0]);
    let requests = device.take();
    assert_eq!(steps(&requests), ["Decrypt update", "Verify update"]);
    assert!(
        matches!(&requests[1], Request::OperationUpdate { data, .. } if data == &[0xFF, 0xF0]),
        "the plaintext is verified: {requests:?}"
    );
    library::dual_update(session, Dual::SignEncrypt, b"x", Some(1)).unwrap();
    library::dual_update(session, Dual::DecryptDigest, b"y", Some(1)).unwrap();
    assert_eq!(
        steps(&device.take()),
        [
            "Sign update",
            "Encrypt update",
            "Decrypt update",
            "Digest update"
        ]
    );
}

fn wrapped_keys_are_asked_for_once(device: &FakeDevice, session: u64) {
    let mechanism = || Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD as u64);
    let query = library::wrap_key(session, mechanism(), 1, 2, None).unwrap();
    let taken = library::wrap_key(session, mechanism(), 1, 2, Some(64)).unwrap();
    assert_eq!(query, taken, "the bytes measured are the bytes delivered");
    assert_eq!(steps(&device.take()), ["wrap 2"]);
    // Other arguments are another call.
    let other = library::wrap_key(session, mechanism(), 1, 3, None).unwrap();
    let taken = library::wrap_key(session, mechanism(), 1, 2, Some(64)).unwrap();
    assert_ne!(other, taken);
    assert_eq!(steps(&device.take()), ["wrap 3", "wrap 2"]);
}

fn gcm_messages(device: &FakeDevice, session: u64) {
    let gcm = || Mechanism::plain(ck::CKM_AES_GCM as u64);
    let encrypt = Operation::Encrypt;
    assert_eq!(
        library::message_context(session, encrypt),
        Err(code(Rv::OperationNotInitialized))
    );
    library::message_init(session, encrypt, gcm(), 42).unwrap();
    assert_eq!(
        library::message_init(session, encrypt, gcm(), 42),
        Err(code(Rv::OperationActive))
    );
    let cbc = Mechanism::plain(ck::CKM_AES_CBC as u64);
    assert_eq!(
        library::message_init(session, Operation::Decrypt, cbc, 42),
        Err(code(Rv::MechanismInvalid))
    );
    let context = library::message_context(session, encrypt).unwrap();

    // A generated IV keeps the application's fixed bits and comes from the device.
    let message = GcmMessage {
        iv: Iv::Generated {
            len: 12,
            fixed: vec![1, 2, 3, 4],
            fixed_bits: 32,
        },
        aad: b"header".to_vec(),
        tag_bits: 128,
    };
    let sealed = library::seal(session, &context, message, b"secret").unwrap();
    let iv = [1, 2, 3, 4, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A];
    assert_eq!(sealed.iv, iv);
    assert_eq!(sealed.ciphertext, b"secret".map(|b| !b));
    assert_eq!(sealed.tag, TAG);
    let requests = device.take();
    assert_eq!(
        steps(&requests),
        ["random 12", "Encrypt init", "Encrypt single"]
    );
    let expected = Mechanism {
        ty: ck::CKM_AES_GCM as u64,
        parameter: MechanismParameter::Gcm {
            iv: iv.to_vec(),
            aad: b"header".to_vec(),
            tag_bits: 128,
        },
    };
    assert!(
        matches!(&requests[1], Request::OperationInit { mechanism, key: 42, .. } if *mechanism == expected),
        "{requests:?}"
    );
    // A tag length that does not match the device's output is the device's fault.
    let short_tag = GcmMessage {
        iv: Iv::Given(iv.to_vec()),
        aad: Vec::new(),
        tag_bits: 96,
    };
    let outcome = library::seal(session, &context, short_tag, b"secret");
    assert_eq!(outcome, Err(code(Rv::DeviceError)));
    device.take();

    library::message_init(session, Operation::Decrypt, gcm(), 43).unwrap();
    let context = library::message_context(session, Operation::Decrypt).unwrap();
    let message = || GcmMessage {
        iv: Iv::Given(iv.to_vec()),
        aad: b"header".to_vec(),
        tag_bits: 128,
    };
    let opened = library::open(session, &context, message(), &sealed.ciphertext, &TAG).unwrap();
    assert_eq!(opened, SecretBytes::from_slice(b"secret"));
    let requests = device.take();
    assert!(
        matches!(&requests[1], Request::OperationSingle { data, .. } if data.ends_with(&TAG)),
        "ciphertext || tag: {requests:?}"
    );
    let outcome = library::open(session, &context, message(), &sealed.ciphertext, &[0; 16]);
    assert_eq!(outcome, Err(ck::CKR_ENCRYPTED_DATA_INVALID as u64));

    library::message_final(session, encrypt).unwrap();
    library::message_final(session, Operation::Decrypt).unwrap();
    assert_eq!(
        library::message_final(session, encrypt),
        Err(code(Rv::OperationNotInitialized))
    );
    device.take();
}

fn signature_messages(device: &FakeDevice, session: u64) {
    let mechanism = Mechanism::plain(ck::CKM_ECDSA_SHA256 as u64);
    library::message_init(session, Operation::Sign, mechanism.clone(), 9).unwrap();
    library::message_init(session, Operation::Verify, mechanism, 10).unwrap();
    let sign = library::message_context(session, Operation::Sign).unwrap();
    let verify = library::message_context(session, Operation::Verify).unwrap();

    // Each message is a whole operation; a length query and the call that takes the
    // signature make one.
    let query = library::sign_message(session, &sign, b"one", None).unwrap();
    let taken = library::sign_message(session, &sign, b"one", Some(64)).unwrap();
    assert_eq!(
        (query.expose(), taken.expose()),
        (&b"sig:one"[..], &b"sig:one"[..])
    );
    let two = library::sign_message(session, &sign, b"two", Some(64)).unwrap();
    assert_eq!(two.expose(), b"sig:two");
    assert_eq!(
        steps(&device.take()),
        ["Sign init", "Sign single", "Sign init", "Sign single"]
    );

    assert_eq!(
        library::verify_message(session, &verify, b"two", b"sig:two"),
        Ok(())
    );
    assert_eq!(
        library::verify_message(session, &verify, b"two", b"sig:one"),
        Err(ck::CKR_SIGNATURE_INVALID as u64)
    );
    assert_eq!(
        steps(&device.take()),
        [
            "Verify init",
            "Verify single",
            "Verify init",
            "Verify single"
        ]
    );
}

fn session_cancel(device: &FakeDevice, session: u64) {
    // Message flags end the library's contexts and reach no device.
    let flags = (ck::CKF_MESSAGE_SIGN | ck::CKF_MESSAGE_VERIFY) as u64;
    library::session_cancel(session, flags).unwrap();
    assert_eq!(
        library::message_context(session, Operation::Sign),
        Err(code(Rv::OperationNotInitialized))
    );
    assert_eq!(
        library::message_context(session, Operation::Verify),
        Err(code(Rv::OperationNotInitialized))
    );
    assert!(device.take().is_empty());

    // Kept output of a cancelled operation is forgotten: the next call asks again.
    library::dual_update(session, Dual::DigestEncrypt, b"abc", None).unwrap();
    let flags = (ck::CKF_ENCRYPT | ck::CKF_MESSAGE_ENCRYPT) as u64;
    library::session_cancel(session, flags).unwrap();
    library::dual_update(session, Dual::DigestEncrypt, b"abc", Some(3)).unwrap();
    assert_eq!(
        steps(&device.take()),
        [
            "Digest update",
            "Encrypt update",
            format!("cancel {:#x}", ck::CKF_ENCRYPT).as_str(),
            "Digest update",
            "Encrypt update"
        ]
    );
    assert_eq!(
        library::session_cancel(session + 1, 0),
        Err(code(Rv::SessionHandleInvalid))
    );
}
