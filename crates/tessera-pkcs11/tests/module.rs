//! The new entry points of the built module, loaded as an application loads it (the `cryptoki`
//! crate), against a scripted device: key wrapping (with its length query), unwrapping,
//! derivation with decoded parameters, `C_DigestKey`, and AES-GCM messages.

mod fake;

use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::hkdf::{HkdfParams, HkdfSalt};
use cryptoki::mechanism::{Mechanism, MechanismType, MessageParam};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys as ck;
use tessera_core::MechanismParameter;
use tessera_wire::Call;

use fake::{FakeDevice, TAG};

/// The `libtessera_pkcs11.so` that cargo built for this test: in `deps`, next to the test
/// itself (the copy one level up is only refreshed by `cargo build`).
fn module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join("libtessera_pkcs11.so")
}

fn key(session: &Session) -> ObjectHandle {
    session
        .generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(32.into())])
        .unwrap()
}

#[test]
fn new_entry_points_through_the_module() {
    let device = FakeDevice::start("module");
    device.configure();
    let pkcs11 = Pkcs11::new(module()).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_rw_session(slot).unwrap();
    let (wrapping, target) = (key(&session), key(&session));
    device.take();

    // C_WrapKey: cryptoki asks for the length, then for the bytes; the device is asked once.
    let wrapped = session
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping, target)
        .unwrap();
    assert_eq!(wrapped, format!("wrapped {target} #1").into_bytes());
    let requests = device.take();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(matches!(&requests[0], Call::WrapKey { mechanism, .. }
        if mechanism.ty == ck::CKM_AES_KEY_WRAP_PAD as u64
            && mechanism.parameter == MechanismParameter::None));

    let template = [Attribute::Token(false)];
    let unwrapped = session
        .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping, &wrapped, &template)
        .unwrap();
    assert_eq!(unwrapped.to_string(), "102");
    let requests = device.take();
    assert!(
        matches!(&requests[0], Call::UnwrapKey { wrapped: sent, template, .. }
            if *sent == wrapped && template.bool(ck::CKA_TOKEN) == Ok(Some(false))),
        "{requests:?}"
    );

    // C_DeriveKey with decoded ECDH and HKDF parameters.
    let point = [4u8; 65];
    let ecdh = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &point));
    session.derive_key(&ecdh, target, &template).unwrap();
    let hkdf = HkdfParams::new(
        MechanismType::SHA256,
        Some(HkdfSalt::Data(b"salt")),
        Some(b"info"),
    );
    session
        .derive_key(&Mechanism::HkdfDerive(hkdf), target, &template)
        .unwrap();
    let requests = device.take();
    assert!(
        matches!(&requests[0], Call::DeriveKey { mechanism, .. }
        if mechanism.parameter == MechanismParameter::Ecdh {
            kdf: ck::CKD_NULL as u64,
            shared_data: Vec::new(),
            public_data: point.to_vec(),
        }),
        "{requests:?}"
    );
    assert!(
        matches!(&requests[1], Call::DeriveKey { mechanism, .. }
        if mechanism.parameter == MechanismParameter::Hkdf {
            extract: true,
            expand: true,
            prf: ck::CKM_SHA256 as u64,
            salt_type: ck::CKF_HKDF_SALT_DATA as u64,
            salt: b"salt".to_vec(),
            salt_key: 0,
            info: b"info".to_vec(),
        }),
        "{requests:?}"
    );

    session.digest_key(target).unwrap();
    assert!(matches!(&device.take()[..], [Call::DigestKey { key, .. }] if *key == 101));

    // AES-GCM messages: a random IV below the fixed bits, written back; the tag apart. The
    // init gets a CK_GCM_MESSAGE_PARAMS, as cryptoki passes it.
    let (mut init_iv, mut init_tag) = ([0u8; 12], [0u8; 16]);
    let init = GcmMessageParams::new(
        &mut init_iv,
        0.into(),
        GeneratorFunction::GenerateRandom,
        &mut init_tag,
    )
    .unwrap();
    session
        .message_encrypt_init(&Mechanism::AesGcmMessage(init), target)
        .unwrap();
    let mut iv = [0xEE; 12];
    let mut tag = [0u8; 16];
    let params = GcmMessageParams::new(
        &mut iv,
        16.into(),
        GeneratorFunction::GenerateRandom,
        &mut tag,
    )
    .unwrap();
    let ciphertext = session
        .encrypt_message(&MessageParam::AesGcmMessage(params), b"aad", b"plaintext")
        .unwrap();
    assert_eq!(ciphertext, b"plaintext".map(|b| !b));
    assert_eq!(tag, TAG);
    assert_eq!(&iv[..2], &[0xEE, 0xEE], "the fixed bits stay");
    assert_eq!(&iv[2..], &[0x5A; 10], "the rest comes from the device");
    let requests = device.take();
    assert!(
        matches!(
            &requests[..],
            [
                Call::GenerateRandom { len: 12, .. },
                Call::OperationOnce { key, .. },
            ] if *key == 101
        ),
        "one encryption for the length query and the call: {requests:?}"
    );
    session.message_encrypt_final().unwrap();
    let again = session.message_encrypt_final();
    assert!(matches!(
        again,
        Err(Error::Pkcs11(RvError::OperationNotInitialized, _))
    ));

    session
        .message_decrypt_init(&Mechanism::AesGcmMessage(init), target)
        .unwrap();
    let params =
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut tag).unwrap();
    let plaintext = session
        .decrypt_message(&MessageParam::AesGcmMessage(params), b"aad", &ciphertext)
        .unwrap();
    assert_eq!(plaintext, b"plaintext");
    let mut wrong = [0u8; 16];
    let params =
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut wrong)
            .unwrap();
    let outcome =
        session.decrypt_message(&MessageParam::AesGcmMessage(params), b"aad", &ciphertext);
    assert!(matches!(
        outcome,
        Err(Error::Pkcs11(RvError::EncryptedDataInvalid, _))
    ));
    session.message_decrypt_final().unwrap();

    drop(session);
    pkcs11.finalize().expect("C_Finalize");
}
