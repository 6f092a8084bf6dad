//! The legacy mechanisms through the real library, as an application uses them (the
//! known-answer vectors are in tests/mechanisms.rs): triple-DES keys generated with odd parity
//! and used in parts; RSA-1024 generated and used with every RSA signature mechanism;
//! `CKM_RSA_PKCS` signing any input up to k − 11 bytes (a DigestInfo signed
//! raw is the `CKM_SHA256_RSA_PKCS` signature of its message); raw RSA (`CKM_RSA_X_509`); AES-GCM
//! with a 1-byte and a 60-byte IV.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use tessera_testkit::Transport;

#[test]
fn triple_des_keys_rsa_raw_and_gcm_with_any_iv() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();

    // Triple DES: generated keys carry odd parity; CBC-PAD in parts gives the single-part
    // output and decrypts back.
    for (mechanism, length) in [(Mechanism::Des2KeyGen, 16), (Mechanism::Des3KeyGen, 24)] {
        let key = session
            .generate_key(
                &mechanism,
                &[
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ],
            )
            .unwrap();
        let value = match &session
            .get_attributes(key, &[cryptoki::object::AttributeType::Value])
            .unwrap()[0]
        {
            Attribute::Value(value) => value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value.len(), length);
        assert!(value.iter().all(|b| b.count_ones() % 2 == 1), "odd parity");
        let cbc = Mechanism::Des3CbcPad([3; 8]);
        let data: Vec<u8> = (0..45u8).collect();
        let whole = session.encrypt(&cbc, key, &data).unwrap();
        assert_eq!(whole.len(), 48);
        session.encrypt_init(&cbc, key).unwrap();
        let mut parts = Vec::new();
        for chunk in data.chunks(10) {
            let out = session.encrypt_update(chunk).unwrap();
            assert_eq!(out.len() % 8, 0, "whole blocks as they come");
            parts.extend(out);
        }
        parts.extend(session.encrypt_final().unwrap());
        assert_eq!(parts, whole);
        assert_eq!(session.decrypt(&cbc, key, &whole).unwrap(), data);
    }

    // RSA: CKM_RSA_PKCS signs any input up to k - 11 bytes.
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Verify(true),
                Attribute::Encrypt(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let message = b"signed the usual way";
    let digest = session.digest(&Mechanism::Sha256, message).unwrap();
    let mut digest_info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    digest_info.extend(digest);
    assert_eq!(
        session
            .sign(&Mechanism::RsaPkcs, private, &digest_info)
            .unwrap(),
        session
            .sign(&Mechanism::Sha256RsaPkcs, private, message)
            .unwrap(),
        "PKCS #1 v1.5 is deterministic: the raw DigestInfo gives the hashing mechanism's signature"
    );
    for input in [&b"any data at all"[..], &[0x5a; 245][..]] {
        let signature = session.sign(&Mechanism::RsaPkcs, private, input).unwrap();
        session
            .verify(&Mechanism::RsaPkcs, public, input, &signature)
            .unwrap();
        assert_eq!(
            common::rv(session.verify(&Mechanism::RsaPkcs, public, b"other data", &signature)),
            RvError::SignatureInvalid
        );
    }
    assert_eq!(
        common::rv(session.sign(&Mechanism::RsaPkcs, private, &[0x5a; 246])),
        RvError::DataLenRange,
        "k - 11 = 245 bytes at most"
    );

    // Raw RSA: the public operation undoes the private one, both ways.
    let value: Vec<u8> = (1..=200u8).collect();
    let raised = session.sign(&Mechanism::RsaX509, private, &value).unwrap();
    assert_eq!(raised.len(), 256);
    session
        .verify(&Mechanism::RsaX509, public, &value, &raised)
        .unwrap();
    let encrypted = session
        .encrypt(&Mechanism::RsaX509, public, &value)
        .unwrap();
    let decrypted = session
        .decrypt(&Mechanism::RsaX509, private, &encrypted)
        .unwrap();
    assert_eq!(
        decrypted.len(),
        256,
        "k bytes, the value left-padded with zeros"
    );
    assert_eq!(&decrypted[56..], &value[..]);

    // RSA-1024 (legacy module): generated, then every RSA mechanism works with it.
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(1024.into()),
                Attribute::Verify(true),
                Attribute::Encrypt(true),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    for mechanism in [
        Mechanism::Sha256RsaPkcs,
        Mechanism::RsaPkcs,
        Mechanism::Sha256RsaPkcsPss(cryptoki::mechanism::rsa::PkcsPssParams {
            hash_alg: cryptoki::mechanism::MechanismType::SHA256,
            mgf: cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        }),
    ] {
        let signature = session.sign(&mechanism, private, b"1024 bits").unwrap();
        assert_eq!(signature.len(), 128);
        session
            .verify(&mechanism, public, b"1024 bits", &signature)
            .unwrap();
        assert_eq!(
            common::rv(session.verify(&mechanism, public, b"1025 bits", &signature)),
            RvError::SignatureInvalid
        );
    }
    assert_eq!(
        session
            .encrypt(&Mechanism::RsaPkcs, public, b"k")
            .unwrap()
            .len(),
        128
    );

    // AES-GCM with IVs of other lengths than 12 bytes.
    let aes = common::aes_key(&session).unwrap();
    for iv_len in [1, 8, 60] {
        let mut iv = vec![9u8; iv_len];
        let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).unwrap());
        let sealed = session.encrypt(&gcm, aes, b"any IV length").unwrap();
        assert_eq!(
            session.decrypt(&gcm, aes, &sealed).unwrap(),
            b"any IV length"
        );
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(
            common::rv(session.decrypt(&gcm, aes, &tampered)),
            RvError::EncryptedDataInvalid
        );
    }

    // CKM_EXTRACT_KEY_FROM_KEY (PKCS#11 3.0 §6.37.7): the standard's example, 0x329F84A9 from
    // bit 21, two bytes, wrapping around: 0x9526. Never under the `i` flag.
    let base = session
        .create_object(&[
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
            Attribute::Value(vec![0x32, 0x9f, 0x84, 0xa9]),
            Attribute::Sensitive(false),
            Attribute::Derive(true),
        ])
        .unwrap();
    let extract = Mechanism::ExtractKeyFromKey(cryptoki::mechanism::misc::ExtractParams::new(21));
    let template = [
        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
        Attribute::ValueLen(2.into()),
        Attribute::Sensitive(false),
    ];
    let extracted = session.derive_key(&extract, base, &template).unwrap();
    match &session
        .get_attributes(extracted, &[cryptoki::object::AttributeType::Value])
        .unwrap()[0]
    {
        Attribute::Value(value) => assert_eq!(value, &[0x95, 0x26]),
        other => panic!("{other:?}"),
    }
    f.daemon.admin(Transport::Unix, &["-fi"]);
    assert_eq!(
        common::rv(session.derive_key(&extract, base, &template)),
        RvError::MechanismInvalid
    );

    // Under FIPS Algorithms Only, RSA below 2048 bits is neither made nor used.
    f.daemon.admin(Transport::Unix, &["-fa"]);
    assert_eq!(
        common::rv(session.sign(&Mechanism::Sha256RsaPkcs, private, b"1024 bits")),
        RvError::KeySizeRange
    );
    assert_eq!(
        common::rv(session.generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::ModulusBits(1024.into())],
            &[Attribute::Token(false)],
        )),
        RvError::KeySizeRange
    );
    assert_eq!(
        common::rv(
            session
                .digest(&Mechanism::Sha256, b"x")
                .and_then(|_| { session.encrypt(&Mechanism::Des3Ecb, private, &[0; 8]) })
        ),
        RvError::MechanismInvalid
    );
}
