//! The composed calls of the library (dual-function updates, message-based operations,
//! `C_WrapKey`'s kept output, `C_SessionCancel`) against a scripted device, through the safe
//! API the entry points use. The library's state is global, so one test runs the scenarios in
//! order.

mod fake;

use cryptoki_sys as ck;
use tessera_core::{Mechanism, MechanismParameter, Rv, SecretBytes};
use tessera_pkcs11::library::{self, Dual};
use tessera_pkcs11::message::{GcmMessage, Iv};
use tessera_wire::{Call, Operation};

use fake::{FakeDevice, TAG};

fn code(rv: Rv) -> u64 {
    rv.code()
}

/// The operations of the requests, in order: `(operation, kind)` where kind is "init",
/// "update" or "single", and other requests by name.
fn steps(requests: &[Call]) -> Vec<String> {
    requests
        .iter()
        .map(|request| match request {
            Call::OperationInit { operation, .. } => format!("{operation:?} init"),
            Call::OperationUpdate { operation, .. } => format!("{operation:?} update"),
            Call::OperationSingle { operation, .. } => format!("{operation:?} single"),
            Call::OperationOnce { operation, .. } => format!("{operation:?} once"),
            Call::FindObjectsFirst { max, .. } => format!("find first {max}"),
            Call::FindObjects { max, .. } => format!("find {max}"),
            Call::FindObjectsFinal { .. } => "find final".to_string(),
            Call::OperationFinal { operation, .. } => format!("{operation:?} final"),
            Call::GenerateRandom { len, .. } => format!("random {len}"),
            Call::WrapKey { key, .. } => format!("wrap {key}"),
            Call::SessionCancel { flags, .. } => format!("cancel {flags:#x}"),
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

    one_round_trip_per_single_part_call(&device, session);
    dual_function_updates(&device, session);
    wrapped_keys_are_asked_for_once(&device, session);
    gcm_messages(&device, session);
    signature_messages(&device, session);
    session_cancel(&device, session);
    a_reply_of_the_wrong_shape(&device, session);

    library::finalize().unwrap();
}

fn one_round_trip_per_single_part_call(device: &FakeDevice, session: u64) {
    let mechanism = || Mechanism::plain(ck::CKM_ECDSA_SHA256 as u64);
    // The first init of a key goes to the device, which judges it; its call follows alone.
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    assert_eq!(steps(&device.take()), ["Sign init"], "judged by the device");
    library::single(session, Operation::Sign, b"m".to_vec(), Vec::new()).unwrap();
    assert_eq!(steps(&device.take()), ["Sign single"]);
    // The same init again is held: init and call travel together.
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    assert!(device.take().is_empty(), "the init is held");
    let signature = library::single(session, Operation::Sign, b"m".to_vec(), Vec::new()).unwrap();
    assert!(matches!(signature, tessera_wire::Reply::Bytes(_)));
    assert_eq!(steps(&device.take()), ["Sign once"]);
    // A length query and the call that takes the output: still one round trip.
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    let call = library::Producer::Operation(Operation::Sign, library::Stage::Single);
    let run = || {
        library::output(library::single(
            session,
            Operation::Sign,
            b"m".to_vec(),
            Vec::new(),
        )?)
    };
    let query = library::produce(session, call, None, run).unwrap();
    let call = library::Producer::Operation(Operation::Sign, library::Stage::Single);
    let taken = library::produce(session, call, Some(64), run).unwrap();
    assert_eq!(query, taken);
    assert_eq!(steps(&device.take()), ["Sign once"]);
    // A multi-part operation sends its init before the first update, once.
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    library::absorb(session, Operation::Sign, b"a".to_vec()).unwrap();
    library::absorb(session, Operation::Sign, b"b".to_vec()).unwrap();
    assert_eq!(
        steps(&device.take()),
        ["Sign init", "Sign update", "Sign update"]
    );
    // While it runs, a new init goes to the device at once (which answers
    // CKR_OPERATION_ACTIVE); after its final call, inits are held again.
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    assert_eq!(steps(&device.take()), ["Sign init"]);
    library::final_call(session, Operation::Sign, Vec::new()).unwrap();
    library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
    assert_eq!(steps(&device.take()), ["Sign final"]);
    // A second init while one is held: the held one is active (PKCS#11 3.0 §5.2), answered
    // here.
    assert_eq!(
        library::operation_init(session, Operation::Sign, mechanism(), 5),
        Err(code(Rv::OperationActive))
    );
    assert!(device.take().is_empty());
    library::single(session, Operation::Sign, b"m".to_vec(), Vec::new()).unwrap();
    assert_eq!(steps(&device.take()), ["Sign once"]);
    // Another key, or a parameter of another shape, is judged by the device again.
    library::operation_init(session, Operation::Sign, mechanism(), 6).unwrap();
    assert_eq!(steps(&device.take()), ["Sign init"]);
    library::final_call(session, Operation::Sign, Vec::new()).unwrap();
    device.take();
    let cbc = |iv: &[u8]| Mechanism {
        ty: ck::CKM_AES_CBC as u64,
        parameter: MechanismParameter::Bytes(iv.to_vec()),
    };
    library::operation_init(session, Operation::Encrypt, cbc(&[1; 16]), 7).unwrap();
    library::final_call(session, Operation::Encrypt, Vec::new()).unwrap();
    library::operation_init(session, Operation::Encrypt, cbc(&[2; 16]), 7).unwrap();
    library::final_call(session, Operation::Encrypt, Vec::new()).unwrap();
    library::operation_init(session, Operation::Encrypt, cbc(&[1; 8]), 7).unwrap();
    library::final_call(session, Operation::Encrypt, Vec::new()).unwrap();
    assert_eq!(
        steps(&device.take()),
        [
            "Encrypt init",
            "Encrypt final",
            // A fresh IV of the same length: the same init, held for the final call.
            "Encrypt init",
            "Encrypt final",
            "Encrypt init",
            "Encrypt final"
        ]
    );
    // A call that may change what the device judged makes the next init go to the device
    // again: C_DestroyObject (or C_SetAttributeValue) of the key, not of another object; a
    // call that may change any key (C_Logout, C_CloseSession, ...).
    let signs = |device: &FakeDevice| {
        library::operation_init(session, Operation::Sign, mechanism(), 5).unwrap();
        library::single(session, Operation::Sign, b"m".to_vec(), Vec::new()).unwrap();
        steps(&device.take())
    };
    assert_eq!(signs(device), ["Sign once"]);
    let destroy = |object| {
        library::session_call(session, |session| Call::DestroyObject { session, object }).unwrap();
        device.take();
    };
    destroy(99);
    assert_eq!(signs(device), ["Sign once"], "another object");
    destroy(5);
    assert_eq!(signs(device), ["Sign init", "Sign single"]);
    assert_eq!(signs(device), ["Sign once"]);
    library::session_call(session, |session| Call::Logout { session }).unwrap();
    device.take();
    assert_eq!(signs(device), ["Sign init", "Sign single"]);

    // A small search: one round trip for init, objects and final.
    library::find_init(session, tessera_core::Template::default()).unwrap();
    assert_eq!(
        library::find_init(session, tessera_core::Template::default()),
        Err(code(Rv::OperationActive))
    );
    assert_eq!(library::find(session, 10).unwrap(), [1, 2]);
    assert_eq!(library::find(session, 10).unwrap(), Vec::<u64>::new());
    library::find_final(session).unwrap();
    assert_eq!(steps(&device.take()), ["find first 10"]);
    assert_eq!(
        library::find_final(session),
        Err(code(Rv::OperationNotInitialized))
    );
    // A search with more results than asked for stays on the device until its final call.
    library::find_init(session, tessera_core::Template::default()).unwrap();
    assert_eq!(library::find(session, 1).unwrap(), [1]);
    assert_eq!(library::find(session, 1).unwrap(), Vec::<u64>::new());
    library::find_final(session).unwrap();
    assert_eq!(
        steps(&device.take()),
        ["find first 1", "find 1", "find final"]
    );
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
        matches!(&requests[1], Call::OperationUpdate { data, .. } if data == &[0xFF, 0xF0]),
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
    assert_eq!(steps(&requests), ["random 12", "Encrypt once"]);
    let expected = Mechanism {
        ty: ck::CKM_AES_GCM as u64,
        parameter: MechanismParameter::Gcm {
            iv: iv.to_vec(),
            aad: b"header".to_vec(),
            tag_bits: 128,
        },
    };
    assert!(
        matches!(&requests[1], Call::OperationOnce { mechanism, key: 42, .. } if *mechanism == expected),
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
        matches!(&requests[0], Call::OperationOnce { data, .. } if data.ends_with(&TAG)),
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
    assert_eq!(steps(&device.take()), ["Sign once", "Sign once"]);

    assert_eq!(
        library::verify_message(session, &verify, b"two", b"sig:two"),
        Ok(())
    );
    assert_eq!(
        library::verify_message(session, &verify, b"two", b"sig:one"),
        Err(ck::CKR_SIGNATURE_INVALID as u64)
    );
    assert_eq!(steps(&device.take()), ["Verify once", "Verify once"]);
}

/// A reply the call never answers with is refused once, centrally (the client compares its
/// shape with the call's row in the call table): CKR_DEVICE_ERROR, and the session goes on.
fn a_reply_of_the_wrong_shape(device: &FakeDevice, session: u64) {
    assert_eq!(
        library::random(session, fake::WRONG_SHAPE as usize),
        Err(code(Rv::DeviceError))
    );
    assert_eq!(library::random(session, 4), Ok(vec![0x5A; 4]));
    assert_eq!(steps(&device.take()), ["random 13", "random 4"]);
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
