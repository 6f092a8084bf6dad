//! The Cryptoki API through the built `.so`, loaded by the `cryptoki` crate as an application
//! would, against a daemon of each test's own, over the Unix socket and over loopback TCP.

mod common;

use common::{fixture, rv, USER_PIN};
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::{AuthPin, Ulong};
use tessera_testkit::TRANSPORTS;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn library_slots_tokens_and_mechanisms() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let info = f.pkcs11.get_library_info().unwrap();
        assert_eq!(info.cryptoki_version().major(), 3);
        assert!(info.manufacturer_id().starts_with("Tessera"));
        // Two user slots and the Admin slot.
        let slots = f.pkcs11.get_all_slots().unwrap();
        assert_eq!(slots.len(), 3, "{transport:?}");
        let admin = f.pkcs11.get_slot_info(slots[2]).unwrap();
        assert!(
            admin.slot_description().contains("Admin"),
            "{}",
            admin.slot_description()
        );
        let token = f.pkcs11.get_token_info(f.slot).unwrap();
        assert_eq!(token.label(), "tessera test");
        assert!(
            token.token_initialized() && token.user_pin_initialized() && token.login_required()
        );
        assert_eq!(token.serial_number().len(), 12);
        let mechanisms = f.pkcs11.get_mechanism_list(f.slot).unwrap();
        for wanted in [
            MechanismType::SHA256,
            MechanismType::SHA384,
            MechanismType::SHA512,
            MechanismType::AES_KEY_GEN,
            MechanismType::AES_CBC_PAD,
            MechanismType::AES_GCM,
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::ECDSA_SHA256,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
            MechanismType::SHA256_RSA_PKCS,
            MechanismType::SHA256_RSA_PKCS_PSS,
        ] {
            assert!(mechanisms.contains(&wanted), "{wanted} missing");
        }
        let gcm = f
            .pkcs11
            .get_mechanism_info(f.slot, MechanismType::AES_GCM)
            .unwrap();
        assert_eq!((gcm.min_key_size(), gcm.max_key_size()), (16, 32));
        assert!(gcm.encrypt() && gcm.decrypt() && !gcm.sign());
        let rsa = f
            .pkcs11
            .get_mechanism_info(f.slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
            .unwrap();
        assert_eq!((rsa.min_key_size(), rsa.max_key_size()), (1024, 4096));
        // Single DES is not offered (triple DES is, from the legacy module).
        assert_eq!(
            rv(f.pkcs11.get_mechanism_info(f.slot, MechanismType::DES_CBC)),
            RvError::MechanismInvalid
        );
        let des3 = f
            .pkcs11
            .get_mechanism_info(f.slot, MechanismType::DES3_CBC)
            .unwrap();
        assert_eq!((des3.min_key_size(), des3.max_key_size()), (16, 24));
        assert_eq!(
            rv(f.pkcs11
                .get_token_info(cryptoki::slot::Slot::try_from(999u64).unwrap())),
            RvError::SlotIdInvalid
        );
    }
}

#[test]
fn sessions_logins_and_the_pin_retry_counter() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let read_only = f.pkcs11.open_ro_session(f.slot).unwrap();
        assert_eq!(
            read_only.get_session_info().unwrap().session_state(),
            SessionState::RoPublic
        );
        // SO cannot log in while a read-only session of the application is open.
        let so_pin = AuthPin::new(common::SO_PIN.into());
        assert_eq!(
            rv(read_only.login(UserType::So, Some(&so_pin))),
            RvError::SessionReadOnlyExists
        );
        read_only
            .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        assert_eq!(
            read_only.get_session_info().unwrap().session_state(),
            SessionState::RoUser
        );
        // Login state is shared by the application's sessions on the token.
        let rw = f.pkcs11.open_rw_session(f.slot).unwrap();
        assert_eq!(
            rw.get_session_info().unwrap().session_state(),
            SessionState::RwUser
        );
        assert_eq!(
            rv(rw.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))),
            RvError::UserAlreadyLoggedIn
        );
        rw.logout().unwrap();
        assert_eq!(rv(rw.logout()), RvError::UserNotLoggedIn);
        assert_eq!(
            read_only.get_session_info().unwrap().session_state(),
            SessionState::RoPublic
        );
        drop(read_only);

        // Wrong PINs count down to a lock-out that the right PIN cannot undo.
        let wrong = AuthPin::new("wrong-pin".into());
        assert_eq!(
            rv(rw.login(UserType::User, Some(&wrong))),
            RvError::PinIncorrect
        );
        assert!(f
            .pkcs11
            .get_token_info(f.slot)
            .unwrap()
            .user_pin_count_low());
        for _ in 1..9 {
            assert_eq!(
                rv(rw.login(UserType::User, Some(&wrong))),
                RvError::PinIncorrect
            );
        }
        assert!(f
            .pkcs11
            .get_token_info(f.slot)
            .unwrap()
            .user_pin_final_try());
        assert_eq!(
            rv(rw.login(UserType::User, Some(&wrong))),
            RvError::PinIncorrect
        );
        assert!(f.pkcs11.get_token_info(f.slot).unwrap().user_pin_locked());
        assert_eq!(
            rv(rw.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))),
            RvError::PinLocked
        );
        // The SO resets it.
        rw.login(UserType::So, Some(&so_pin)).unwrap();
        rw.init_pin(&AuthPin::new("new-user-pin".into())).unwrap();
        rw.logout().unwrap();
        assert!(!f.pkcs11.get_token_info(f.slot).unwrap().user_pin_locked());
        rw.login(UserType::User, Some(&AuthPin::new("new-user-pin".into())))
            .unwrap();
        rw.set_pin(
            &AuthPin::new("new-user-pin".into()),
            &AuthPin::new("third-pin".into()),
        )
        .unwrap();
        rw.logout().unwrap();
        rw.login(UserType::User, Some(&AuthPin::new("third-pin".into())))
            .unwrap();
        assert_eq!(
            rv(rw.set_pin(&AuthPin::new("x".into()), &AuthPin::new("abc".into()))),
            RvError::PinLenRange
        );
        // C_InitToken is refused while sessions are open.
        assert_eq!(
            rv(f.pkcs11.init_token(f.slot, &so_pin, "again")),
            RvError::SessionExists
        );
        drop(rw);
        assert_eq!(
            rv(f.pkcs11
                .init_token(f.slot, &AuthPin::new("not-the-so".into()), "x")),
            RvError::PinIncorrect
        );
        f.pkcs11.init_token(f.slot, &so_pin, "again").unwrap();
        assert!(!f
            .pkcs11
            .get_token_info(f.slot)
            .unwrap()
            .user_pin_initialized());
    }
}

#[test]
fn objects_visibility_attributes_and_find() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let public = f.pkcs11.open_rw_session(f.slot).unwrap();
        let data = public
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Label(b"public data".to_vec()),
                Attribute::Value(b"hello".to_vec()),
            ])
            .unwrap();
        // Private objects need a login.
        assert_eq!(
            rv(public.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Private(true)
            ])),
            RvError::UserNotLoggedIn
        );
        // Token objects need a R/W session.
        let read_only = f.pkcs11.open_ro_session(f.slot).unwrap();
        assert_eq!(
            rv(read_only
                .create_object(&[Attribute::Class(ObjectClass::DATA), Attribute::Token(true)])),
            RvError::SessionReadOnly
        );
        let user = f.user_session();
        let key = user
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Label(b"secret".to_vec()),
                Attribute::Sensitive(true),
                Attribute::Value(vec![7u8; 32]),
            ])
            .unwrap();
        // PKCS#11 3.0 §4.10, common secret key attributes: "CKA_SENSITIVE … CK_TRUE if object
        // is sensitive (default CK_FALSE)".
        let plain = user
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(vec![9u8; 16]),
            ])
            .unwrap();
        assert_eq!(
            user.get_attributes(plain, &[AttributeType::Sensitive])
                .unwrap(),
            vec![Attribute::Sensitive(false)]
        );
        // Defaults and derived attributes.
        let attrs = user
            .get_attributes(
                key,
                &[
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Local,
                    AttributeType::ValueLen,
                ],
            )
            .unwrap();
        assert_eq!(
            attrs,
            vec![
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Local(false),
                Attribute::ValueLen(Ulong::from(32))
            ]
        );
        // Sensitive values are never revealed; non-sensitive ones are.
        assert!(user
            .get_attributes(key, &[AttributeType::Value])
            .unwrap()
            .is_empty());
        assert_eq!(
            user.get_attributes(plain, &[AttributeType::Value]).unwrap(),
            vec![Attribute::Value(vec![9u8; 16])]
        );
        // One-way and read-only attributes.
        assert_eq!(
            rv(user.update_attributes(key, &[Attribute::Sensitive(false)])),
            RvError::AttributeReadOnly
        );
        assert_eq!(
            rv(user.update_attributes(key, &[Attribute::Value(vec![0; 32])])),
            RvError::AttributeReadOnly
        );
        assert_eq!(
            rv(user.update_attributes(key, &[Attribute::Modulus(vec![1])])),
            RvError::AttributeTypeInvalid
        );
        user.update_attributes(key, &[Attribute::Label(b"renamed".to_vec())])
            .unwrap();
        user.update_attributes(plain, &[Attribute::Sensitive(true)])
            .unwrap();
        assert!(user
            .get_attributes(plain, &[AttributeType::Value])
            .unwrap()
            .is_empty());
        // Find with templates; private objects are hidden from a public session of another
        // application but visible to this (logged-in) one.
        let found = user
            .find_objects(&[Attribute::Label(b"renamed".to_vec())])
            .unwrap();
        assert_eq!(found, vec![key]);
        let all_keys = user
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap();
        assert_eq!(all_keys.len(), 2);
        let datas = user
            .find_objects(&[Attribute::Class(ObjectClass::DATA)])
            .unwrap();
        assert_eq!(datas, vec![data]);
        // Copy with changes, then destroy.
        let copy = user
            .copy_object(
                key,
                &[Attribute::Label(b"copy".to_vec()), Attribute::Token(false)],
            )
            .unwrap();
        assert_eq!(
            user.get_attributes(copy, &[AttributeType::Token]).unwrap(),
            vec![Attribute::Token(false)]
        );
        assert_eq!(
            rv(user.copy_object(key, &[Attribute::Sensitive(false)])),
            RvError::AttributeReadOnly
        );
        user.destroy_object(copy).unwrap();
        assert_eq!(rv(user.destroy_object(copy)), RvError::ObjectHandleInvalid);
        // Non-destroyable and non-modifiable objects.
        let fixed = user
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Destroyable(false),
                Attribute::Modifiable(false),
            ])
            .unwrap();
        assert_eq!(rv(user.destroy_object(fixed)), RvError::ActionProhibited);
        assert_eq!(
            rv(user.update_attributes(fixed, &[Attribute::Label(b"x".to_vec())])),
            RvError::ActionProhibited
        );
        // Bad templates.
        assert_eq!(
            rv(user.create_object(&[Attribute::Label(b"no class".to_vec())])),
            RvError::TemplateIncomplete
        );
        assert_eq!(
            rv(user.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(vec![1; 5])
            ])),
            RvError::AttributeValueInvalid
        );
        assert_eq!(
            rv(user.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::ModulusBits(Ulong::from(8))
            ])),
            RvError::AttributeTypeInvalid
        );
        assert_eq!(
            rv(user.get_attributes(copy, &[AttributeType::Label])),
            RvError::ObjectHandleInvalid
        );
        // Session objects end with their session; token objects remain.
        user.logout().unwrap();
        assert!(read_only
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap()
            .is_empty());
        drop(user);
        drop(read_only);
        drop(public);
        let again = f.user_session();
        let keys = again
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap();
        assert_eq!(keys, vec![key], "the session key went with its session");
    }
}

#[test]
fn random_and_digests_match_known_answers() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.pkcs11.open_ro_session(f.slot).unwrap();
        let a = session.generate_random_vec(32).unwrap();
        let b = session.generate_random_vec(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        // FIPS 180-2 "abc" vectors.
        let sha256 = hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(session.digest(&Mechanism::Sha256, b"abc").unwrap(), sha256);
        session.digest_init(&Mechanism::Sha256).unwrap();
        session.digest_update(b"a").unwrap();
        session.digest_update(b"bc").unwrap();
        assert_eq!(session.digest_final().unwrap(), sha256);
        let sha384 = hex("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
        assert_eq!(session.digest(&Mechanism::Sha384, b"abc").unwrap(), sha384);
        let sha512 = hex("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
        assert_eq!(session.digest(&Mechanism::Sha512, b"abc").unwrap(), sha512);
        // SHA-1 stays for legacy digests (hidden under the `a` flag).
        let sha1 = hex("a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(session.digest(&Mechanism::Sha1, b"abc").unwrap(), sha1);
        assert_eq!(
            rv(session.digest(&Mechanism::AesKeyGen, b"abc")),
            RvError::MechanismInvalid
        );
        assert_eq!(rv(session.digest_final()), RvError::OperationNotInitialized);
    }
}

#[test]
fn aes_cbc_pad_and_gcm_known_answers_and_round_trips() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        // NIST SP 800-38A F.2.5 (CBC-AES256) first block; CBC-PAD adds one block of padding.
        let key = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(hex(
                    "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                )),
            ])
            .unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plaintext = hex("6bc1bee22e409f96e93d7e117393172a");
        let ciphertext = session
            .encrypt(&Mechanism::AesCbcPad(iv), key, &plaintext)
            .unwrap();
        assert_eq!(ciphertext.len(), 32);
        assert_eq!(
            &ciphertext[..16],
            hex("f58c4c04d6e5f1ba779eabfb5f7bfbd6").as_slice()
        );
        assert_eq!(
            session
                .decrypt(&Mechanism::AesCbcPad(iv), key, &ciphertext)
                .unwrap(),
            plaintext
        );
        // Multi-part gives the same result.
        session
            .encrypt_init(&Mechanism::AesCbcPad(iv), key)
            .unwrap();
        let mut multi = session.encrypt_update(&plaintext[..5]).unwrap();
        multi.extend(session.encrypt_update(&plaintext[5..]).unwrap());
        multi.extend(session.encrypt_final().unwrap());
        assert_eq!(multi, ciphertext);
        let mut bad = ciphertext.clone();
        bad.truncate(20);
        assert_eq!(
            rv(session.decrypt(&Mechanism::AesCbcPad(iv), key, &bad)),
            RvError::EncryptedDataLenRange
        );

        // McGrew & Viega GCM test case 3 (AES-128).
        let gcm_key = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(hex("feffe9928665731c6d6a8f9467308308")),
            ])
            .unwrap();
        let mut nonce = hex("cafebabefacedbaddecaf888");
        let gcm_plain = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255");
        let expected = hex("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f59854d5c2af327cd64a62cf35abd2ba6fab4");
        let params = GcmParams::new(&mut nonce, &[], Ulong::from(128)).unwrap();
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), gcm_key, &gcm_plain)
            .unwrap();
        assert_eq!(sealed, expected);
        let mut nonce2 = hex("cafebabefacedbaddecaf888");
        let params = GcmParams::new(&mut nonce2, &[], Ulong::from(128)).unwrap();
        assert_eq!(
            session
                .decrypt(&Mechanism::AesGcm(params), gcm_key, &sealed)
                .unwrap(),
            gcm_plain
        );
        // Tampering is detected.
        let mut tampered = sealed.clone();
        tampered[3] ^= 1;
        let mut nonce3 = hex("cafebabefacedbaddecaf888");
        let params = GcmParams::new(&mut nonce3, &[], Ulong::from(128)).unwrap();
        assert_eq!(
            rv(session.decrypt(&Mechanism::AesGcm(params), gcm_key, &tampered)),
            RvError::EncryptedDataInvalid
        );
        // Bad parameters: a tag shorter than 96 bits (an IV of another length than 12 bytes
        // is taken: tests/legacy.rs).
        let mut twelve = vec![0u8; 12];
        let params = GcmParams::new(&mut twelve, &[], Ulong::from(64)).unwrap();
        assert_eq!(
            rv(session.encrypt(&Mechanism::AesGcm(params), gcm_key, b"x")),
            RvError::MechanismParamInvalid
        );

        // Generated keys: AES-256, session and token.
        let generated = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(Ulong::from(32)),
                    Attribute::Token(true),
                    Attribute::Sensitive(true),
                ],
            )
            .unwrap();
        let attrs = session
            .get_attributes(
                generated,
                &[
                    AttributeType::Local,
                    AttributeType::AlwaysSensitive,
                    AttributeType::KeyGenMechanism,
                ],
            )
            .unwrap();
        assert_eq!(
            attrs,
            vec![
                Attribute::Local(true),
                Attribute::AlwaysSensitive(true),
                Attribute::KeyGenMechanism(MechanismType::AES_KEY_GEN)
            ]
        );
        let mut nonce4 = vec![1u8; 12];
        let params = GcmParams::new(&mut nonce4, b"aad", Ulong::from(128)).unwrap();
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), generated, &[5u8; 1000])
            .unwrap();
        let mut nonce5 = vec![1u8; 12];
        let params = GcmParams::new(&mut nonce5, b"aad", Ulong::from(128)).unwrap();
        assert_eq!(
            session
                .decrypt(&Mechanism::AesGcm(params), generated, &sealed)
                .unwrap(),
            vec![5u8; 1000]
        );
        assert_eq!(
            rv(session.generate_key(&Mechanism::AesKeyGen, &[])),
            RvError::TemplateIncomplete
        );
        assert_eq!(
            rv(session.generate_key(
                &Mechanism::AesKeyGen,
                &[Attribute::ValueLen(Ulong::from(7))]
            )),
            RvError::AttributeValueInvalid
        );
        // A key may only do what its attributes allow.
        let no_encrypt = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(Ulong::from(16)),
                    Attribute::Encrypt(false),
                ],
            )
            .unwrap();
        assert_eq!(
            rv(session.encrypt(&Mechanism::AesCbcPad(iv), no_encrypt, b"x")),
            RvError::KeyFunctionNotPermitted
        );
        session.destroy_object(no_encrypt).unwrap();
        assert_eq!(
            rv(session.encrypt(&Mechanism::AesCbcPad(iv), no_encrypt, b"x")),
            RvError::KeyHandleInvalid
        );
    }
}

fn ec_pair(
    session: &cryptoki::session::Session,
    token: bool,
) -> (
    cryptoki::object::ObjectHandle,
    cryptoki::object::ObjectHandle,
) {
    let p256 = hex("06082a8648ce3d030107");
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(p256),
                Attribute::Token(token),
                Attribute::Label(b"ec".to_vec()),
            ],
            &[
                Attribute::Token(token),
                Attribute::Label(b"ec".to_vec()),
                Attribute::Sign(true),
            ],
        )
        .unwrap()
}

#[test]
fn ecdsa_p256_sign_and_verify() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        let (public, private) = ec_pair(&session, false);
        let point = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .unwrap();
        match &point[0] {
            Attribute::EcPoint(p) => assert_eq!(
                &p[..3],
                &[0x04, 0x41, 0x04],
                "DER OCTET STRING of an uncompressed point"
            ),
            other => panic!("{other:?}"),
        }
        let signature = session
            .sign(&Mechanism::EcdsaSha256, private, b"message")
            .unwrap();
        assert_eq!(signature.len(), 64);
        session
            .verify(&Mechanism::EcdsaSha256, public, b"message", &signature)
            .unwrap();
        assert_eq!(
            rv(session.verify(&Mechanism::EcdsaSha256, public, b"messagE", &signature)),
            RvError::SignatureInvalid
        );
        // CKM_ECDSA signs a digest computed by the caller: same result family.
        let digest = session.digest(&Mechanism::Sha256, b"message").unwrap();
        let raw = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
        session
            .verify(&Mechanism::Ecdsa, public, &digest, &raw)
            .unwrap();
        session
            .verify(&Mechanism::EcdsaSha256, public, b"message", &raw)
            .unwrap();
        // Multi-part.
        session.sign_init(&Mechanism::EcdsaSha256, private).unwrap();
        session.sign_update(b"mess").unwrap();
        session.sign_update(b"age").unwrap();
        let multi = session.sign_final().unwrap();
        session
            .verify(&Mechanism::EcdsaSha256, public, b"message", &multi)
            .unwrap();
        // Wrong key class or type.
        assert_eq!(
            rv(session.sign(&Mechanism::EcdsaSha256, public, b"x")),
            RvError::KeyTypeInconsistent
        );
        assert_eq!(
            rv(session.sign(&Mechanism::Sha256RsaPkcs, private, b"x")),
            RvError::KeyTypeInconsistent
        );
        assert_eq!(
            rv(session.verify(&Mechanism::EcdsaSha256, public, b"x", &[0u8; 10])),
            RvError::SignatureLenRange
        );
        // The private scalar is never revealed.
        assert!(session
            .get_attributes(private, &[AttributeType::Value])
            .unwrap()
            .is_empty());
        let flags = session
            .get_attributes(
                private,
                &[
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )
            .unwrap();
        assert_eq!(
            flags,
            vec![
                Attribute::NeverExtractable(false),
                Attribute::AlwaysSensitive(true)
            ]
        );
    }
}

#[test]
fn rsa_2048_pkcs1_pss_and_raw_digest_info() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &[
                    Attribute::ModulusBits(Ulong::from(2048)),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                ],
                &[Attribute::Sign(true)],
            )
            .unwrap();
        let modulus = session
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::ModulusBits],
            )
            .unwrap();
        match &modulus[0] {
            Attribute::Modulus(m) => assert_eq!(m.len(), 256),
            other => panic!("{other:?}"),
        }
        assert_eq!(modulus[1], Attribute::ModulusBits(Ulong::from(2048)));
        let signature = session
            .sign(&Mechanism::Sha256RsaPkcs, private, b"document")
            .unwrap();
        assert_eq!(signature.len(), 256);
        session
            .verify(&Mechanism::Sha256RsaPkcs, public, b"document", &signature)
            .unwrap();
        assert_eq!(
            rv(session.verify(&Mechanism::Sha256RsaPkcs, public, b"documenT", &signature)),
            RvError::SignatureInvalid
        );
        // CKM_RSA_PKCS over a DigestInfo gives the same deterministic signature.
        let mut digest_info = hex("3031300d060960864801650304020105000420");
        digest_info.extend(session.digest(&Mechanism::Sha256, b"document").unwrap());
        assert_eq!(
            session
                .sign(&Mechanism::RsaPkcs, private, &digest_info)
                .unwrap(),
            signature
        );
        session
            .verify(&Mechanism::RsaPkcs, public, &digest_info, &signature)
            .unwrap();
        // Any input up to k - 11 bytes is signed as given (PKCS#11 3.0 §6.1.6), not only a
        // DigestInfo.
        let raw = session
            .sign(&Mechanism::RsaPkcs, private, b"not a digest info")
            .unwrap();
        session
            .verify(&Mechanism::RsaPkcs, public, b"not a digest info", &raw)
            .unwrap();
        // PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
        let pss = PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: Ulong::from(32),
        };
        let pss_signature = session
            .sign(&Mechanism::Sha256RsaPkcsPss(pss), private, b"document")
            .unwrap();
        session
            .verify(
                &Mechanism::Sha256RsaPkcsPss(pss),
                public,
                b"document",
                &pss_signature,
            )
            .unwrap();
        let bad = PkcsPssParams {
            hash_alg: MechanismType::SHA384,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: Ulong::from(32),
        };
        assert_eq!(
            rv(session.sign(&Mechanism::Sha256RsaPkcsPss(bad), private, b"x")),
            RvError::MechanismParamInvalid
        );
        // Multi-part signing.
        session
            .sign_init(&Mechanism::Sha256RsaPkcs, private)
            .unwrap();
        session.sign_update(b"docu").unwrap();
        session.sign_update(b"ment").unwrap();
        assert_eq!(session.sign_final().unwrap(), signature);
        // Sizes other than 1024 (legacy module), 2048, 3072 and 4096 bits are refused.
        assert_eq!(
            rv(session.generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &[Attribute::ModulusBits(Ulong::from(1536))],
                &[]
            )),
            RvError::KeySizeRange
        );
        // An imported public key verifies too.
        let exponent = session
            .get_attributes(public, &[AttributeType::PublicExponent])
            .unwrap();
        let Attribute::Modulus(n) = modulus[0].clone() else {
            unreachable!()
        };
        let Attribute::PublicExponent(e) = exponent[0].clone() else {
            unreachable!()
        };
        let imported = session
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n),
                Attribute::PublicExponent(e),
            ])
            .unwrap();
        session
            .verify(&Mechanism::Sha256RsaPkcs, imported, b"document", &signature)
            .unwrap();
    }
}

#[test]
fn rsa_3072_key_pair_signs() {
    let f = fixture(tessera_testkit::Transport::Unix);
    let session = f.user_session();
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::ModulusBits(Ulong::from(3072))],
            &[],
        )
        .unwrap();
    let signature = session
        .sign(&Mechanism::Sha256RsaPkcs, private, b"x")
        .unwrap();
    assert_eq!(signature.len(), 384);
    session
        .verify(&Mechanism::Sha256RsaPkcs, public, b"x", &signature)
        .unwrap();
}

#[test]
fn token_keys_survive_a_daemon_restart() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let (signature, public_point) = {
            let session = f.user_session();
            let (public, private) = ec_pair(&session, true);
            let signature = session
                .sign(&Mechanism::EcdsaSha256, private, b"persist")
                .unwrap();
            let point = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .unwrap();
            (signature, point)
        };
        let common::Fixture {
            mut daemon,
            pkcs11,
            slot,
            serial,
        } = f;
        drop(pkcs11);
        daemon.restart();
        let pkcs11 = common::load(&daemon.server_list(transport));
        let session = pkcs11.open_rw_session(slot).unwrap();
        // Private keys are hidden until login.
        assert!(session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap()
            .is_empty());
        session
            .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        let private = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"ec".to_vec()),
            ])
            .unwrap();
        let public = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(b"ec".to_vec()),
            ])
            .unwrap();
        assert_eq!((private.len(), public.len()), (1, 1));
        assert_eq!(
            session
                .get_attributes(public[0], &[AttributeType::EcPoint])
                .unwrap(),
            public_point
        );
        session
            .verify(&Mechanism::EcdsaSha256, public[0], b"persist", &signature)
            .unwrap();
        let fresh = session
            .sign(&Mechanism::EcdsaSha256, private[0], b"after")
            .unwrap();
        session
            .verify(&Mechanism::EcdsaSha256, public[0], b"after", &fresh)
            .unwrap();
        drop(session);
        drop(pkcs11);
        drop(serial);
    }
}

#[test]
fn many_threads_share_the_library() {
    let f = fixture(tessera_testkit::Transport::Unix);
    let session = f.user_session();
    let (public, private) = ec_pair(&session, true);
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let pkcs11 = f.pkcs11.clone();
            let slot = f.slot;
            scope.spawn(move || {
                let own = pkcs11.open_ro_session(slot).unwrap();
                for round in 0..10 {
                    let message = format!("{thread}/{round}");
                    let signature = own
                        .sign(&Mechanism::EcdsaSha256, private, message.as_bytes())
                        .unwrap();
                    own.verify(
                        &Mechanism::EcdsaSha256,
                        public,
                        message.as_bytes(),
                        &signature,
                    )
                    .unwrap();
                }
            });
        }
    });
}

#[test]
fn a_device_that_is_down_is_a_slot_without_a_token_and_never_hangs() {
    let _serial = common::serialise();
    let daemon = tessera_testkit::Daemon::start();
    let missing = daemon.dir().join("nobody-listens-here.sock");
    let list = format!(
        "{} {} 127.0.0.1:1",
        daemon.socket().display(),
        missing.display()
    );
    let started = std::time::Instant::now();
    let pkcs11 = common::load(&list);
    let all = pkcs11.get_all_slots().unwrap();
    assert_eq!(
        all.len(),
        3 + 1 + 1,
        "device 0 has three slots, each dead device shows one"
    );
    let with_token = pkcs11.get_slots_with_token().unwrap();
    assert_eq!(with_token.len(), 3);
    let dead = all[3];
    assert!(!pkcs11.get_slot_info(dead).unwrap().token_present());
    assert_eq!(rv(pkcs11.get_token_info(dead)), RvError::TokenNotPresent);
    assert_eq!(rv(pkcs11.open_ro_session(dead)), RvError::TokenNotPresent);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
