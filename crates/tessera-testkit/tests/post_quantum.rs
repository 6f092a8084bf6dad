//! PKCS#11 3.2's post-quantum mechanisms through the real library, as an application uses
//! them: ML-KEM (FIPS 203) key pairs, `C_EncapsulateKey` / `C_DecapsulateKey`, and ML-DSA
//! (FIPS 204) signatures, single- and multi-part and through `C_VerifySignature*`. Each result
//! is checked against aws-lc-rs called in-process on the key material the token exports (the
//! public keys), and the attacks are made: a forged ciphertext, a tampered signature, a key of
//! the wrong kind.

mod common;

use aws_lc_rs::kem::{EncapsulationKey, ML_KEM_1024, ML_KEM_512, ML_KEM_768};
use aws_lc_rs::signature::{UnparsedPublicKey, ML_DSA_44, ML_DSA_65, ML_DSA_87};
use common::{readable_secret, rv, value};
use cryptoki::error::RvError;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, KeyType, MlDsaParameterSetType, MlKemParameterSetType, ObjectClass,
    ObjectHandle,
};
use cryptoki::session::Session;
use tessera_testkit::Transport;

fn secret_keys(session: &Session) -> usize {
    session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap()
        .len()
}

/// A session key pair of `mechanism` (ML-KEM or ML-DSA key pair generation) and parameter set.
fn pair(
    session: &Session,
    mechanism: Mechanism,
    set: cryptoki::object::ParameterSetType,
) -> (ObjectHandle, ObjectHandle) {
    session
        .generate_key_pair(
            &mechanism,
            &[Attribute::Token(false), Attribute::ParameterSet(set)],
            &[Attribute::Token(false)],
        )
        .unwrap()
}

#[test]
fn ml_kem_encapsulates_and_decapsulates_one_secret() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let sets = [
        (MlKemParameterSetType::ML_KEM_512, &ML_KEM_512, 768),
        (MlKemParameterSetType::ML_KEM_768, &ML_KEM_768, 1088),
        (MlKemParameterSetType::ML_KEM_1024, &ML_KEM_1024, 1568),
    ];
    for (set, algorithm, ciphertext_len) in sets {
        let (public, private) = pair(&session, Mechanism::MlKemKeyPairGen, set.into());
        // cryptoki asks the ciphertext's length first: that query makes no key.
        let before = secret_keys(&session);
        let (ciphertext, ours) = session
            .encapsulate_key(&Mechanism::MlKem, public, &readable_secret())
            .unwrap();
        assert_eq!(secret_keys(&session), before + 1, "one key, not two");
        assert_eq!(ciphertext.len(), ciphertext_len);
        let theirs = session
            .decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), &ciphertext)
            .unwrap();
        let secret = value(&session, ours);
        assert_eq!(secret.len(), 32);
        assert_eq!(value(&session, theirs), secret);

        // A second implementation's encapsulation, to the public key the token exports, gives
        // the token the same secret (aws-lc-rs in-process, FIPS 203's encoding).
        let exported = value(&session, public);
        let outside = EncapsulationKey::new(algorithm, &exported).unwrap();
        let (their_ciphertext, their_secret) = outside.encapsulate().unwrap();
        let got = session
            .decapsulate_key(
                &Mechanism::MlKem,
                private,
                &readable_secret(),
                their_ciphertext.as_ref(),
            )
            .unwrap();
        assert_eq!(value(&session, got), their_secret.as_ref());

        // A forged ciphertext of the right length decapsulates to an unrelated secret
        // (implicit rejection): nothing tells the forger whether it was valid.
        let mut forged = ciphertext.clone();
        forged[7] ^= 1;
        let rejected = session
            .decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), &forged)
            .unwrap();
        assert_ne!(value(&session, rejected), secret);
        // One of the wrong length is refused, and makes no key.
        let before = secret_keys(&session);
        assert_eq!(
            rv(session.decapsulate_key(
                &Mechanism::MlKem,
                private,
                &readable_secret(),
                &ciphertext[1..]
            )),
            RvError::EncryptedDataLenRange
        );
        assert_eq!(secret_keys(&session), before);
    }
}

#[test]
fn ml_kem_secrets_obey_their_template_and_keys_their_kind() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let (public, private) = pair(
        &session,
        Mechanism::MlKemKeyPairGen,
        MlKemParameterSetType::ML_KEM_768.into(),
    );
    // A sensitive AES-128 key: its first 16 bytes, never readable.
    let aes = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(16.into()),
        Attribute::Sensitive(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Token(false),
    ];
    let (ciphertext, ours) = session
        .encapsulate_key(&Mechanism::MlKem, public, &aes)
        .unwrap();
    let theirs = session
        .decapsulate_key(&Mechanism::MlKem, private, &aes, &ciphertext)
        .unwrap();
    // Sensitive: its value is never returned (cryptoki leaves such attributes out).
    assert!(session
        .get_attributes(ours, &[AttributeType::Value])
        .unwrap()
        .is_empty());
    let data = [0x42u8; 32];
    let sealed = session.encrypt(&Mechanism::AesEcb, ours, &data).unwrap();
    assert_eq!(
        session
            .decrypt(&Mechanism::AesEcb, theirs, &sealed)
            .unwrap(),
        data
    );
    // The private key does not encapsulate, the public one does not decapsulate, and neither
    // signs.
    assert_eq!(
        rv(session.encapsulate_key(&Mechanism::MlKem, private, &readable_secret())),
        RvError::KeyTypeInconsistent
    );
    assert_eq!(
        rv(session.decapsulate_key(&Mechanism::MlKem, public, &readable_secret(), &ciphertext)),
        RvError::KeyTypeInconsistent
    );
    let hedged = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
    assert!(session.sign(&hedged, private, b"data").is_err());
    // The usage flags rule: a public key made without CKA_ENCAPSULATE does not encapsulate.
    let (barred, _) = session
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into()),
                Attribute::Encapsulate(false),
            ],
            &[Attribute::Token(false)],
        )
        .unwrap();
    assert_eq!(
        rv(session.encapsulate_key(&Mechanism::MlKem, barred, &readable_secret())),
        RvError::KeyFunctionNotPermitted
    );
    // The 3.2 attributes belong to their key types: no CKA_VALUE on an EC public key, no
    // unchecked seed on an ML-KEM private key (aws-lc-rs makes no ML-KEM key from a seed).
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut point = vec![0x04, 0x41, 0x04];
    point.extend([1u8; 64]);
    assert_eq!(
        rv(session.create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(p256),
            Attribute::EcPoint(point),
            Attribute::Value(vec![1; 32]),
        ])),
        RvError::AttributeTypeInvalid
    );
    assert_eq!(
        rv(session.create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::ML_KEM),
            Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into()),
            Attribute::Seed(vec![1; 64]),
            Attribute::Token(false),
        ])),
        RvError::AttributeTypeInvalid
    );
}

#[test]
fn ml_dsa_signs_single_and_multi_part_and_refuses_tampering() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let sets = [
        (MlDsaParameterSetType::ML_DSA_44, &ML_DSA_44),
        (MlDsaParameterSetType::ML_DSA_65, &ML_DSA_65),
        (MlDsaParameterSetType::ML_DSA_87, &ML_DSA_87),
    ];
    let message: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    for (set, algorithm) in sets {
        let (public, private) = pair(&session, Mechanism::MlDsaKeyPairGen, set.into());
        for mechanism in [
            Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None)),
            Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Required, None)),
        ] {
            let single = session.sign(&mechanism, private, &message).unwrap();
            session.sign_init(&mechanism, private).unwrap();
            for part in message.chunks(1000) {
                session.sign_update(part).unwrap();
            }
            let parts = session.sign_final().unwrap();
            // Hedged: two signatures of one message differ; both verify, here and outside.
            assert_ne!(single, parts);
            let exported = value(&session, public);
            for signature in [&single, &parts] {
                session
                    .verify(&mechanism, public, &message, signature)
                    .unwrap();
                UnparsedPublicKey::new(algorithm, &exported)
                    .verify(&message, signature)
                    .unwrap();
                session
                    .verify_signature_init(&mechanism, public, signature)
                    .unwrap();
                session.verify_signature(&message).unwrap();
            }
            // A tampered signature or message is refused, in each API.
            let mut tampered = single.clone();
            tampered[100] ^= 0x40;
            assert_eq!(
                rv(session.verify(&mechanism, public, &message, &tampered)),
                RvError::SignatureInvalid
            );
            session
                .verify_signature_init(&mechanism, public, &single)
                .unwrap();
            session.verify_signature_update(&message[..10]).unwrap();
            assert_eq!(
                rv(session.verify_signature_final()),
                RvError::SignatureInvalid
            );
            assert_eq!(
                rv(session.verify(&mechanism, public, &single[1..], &single)),
                RvError::SignatureInvalid
            );
            // A single-part call in the middle of a multi-part verification is refused and
            // leaves it as it was (PKCS#11 3.0 §5.2: CKR_OPERATION_ACTIVE); it still finishes.
            session
                .verify_signature_init(&mechanism, public, &single)
                .unwrap();
            session.verify_signature_update(&message).unwrap();
            assert_eq!(
                rv(session.verify_signature(&message)),
                RvError::OperationActive
            );
            session.verify_signature_final().unwrap();
            assert_eq!(
                rv(session.verify(&mechanism, public, &message, &single[1..])),
                RvError::SignatureLenRange
            );
        }
        // CK_SIGN_ADDITIONAL_CONTEXT's other choices: deterministic signing repeats itself,
        // and a context binds a signature to it (FIPS 204's external ML-DSA).
        let deterministic = Mechanism::MlDsa(SignAdditionalContext::new(
            HedgeType::DeterministicRequired,
            Some(b"context"),
        ));
        let once = session.sign(&deterministic, private, &message).unwrap();
        let again = session.sign(&deterministic, private, &message).unwrap();
        assert_eq!(once, again);
        session
            .verify(&deterministic, public, &message, &once)
            .unwrap();
        let plain = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
        let other = Mechanism::MlDsa(SignAdditionalContext::new(
            HedgeType::Preferred,
            Some(b"other"),
        ));
        for wrong in [&plain, &other] {
            assert_eq!(
                rv(session.verify(wrong, public, &message, &once)),
                RvError::SignatureInvalid
            );
        }
        let exported = value(&session, public);
        assert!(UnparsedPublicKey::new(algorithm, &exported)
            .verify(&message, &once)
            .is_err());
        let too_long = [0u8; 256];
        let refused = Mechanism::MlDsa(SignAdditionalContext::new(
            HedgeType::Preferred,
            Some(&too_long),
        ));
        assert_eq!(
            rv(session.sign(&refused, private, &message)),
            RvError::MechanismParamInvalid
        );
    }
}

#[test]
fn the_library_offers_the_3_2_interface_and_reports_its_version() {
    let f = common::fixture(Transport::Unix);
    // cryptoki loads the newest interface it knows, 3.2.
    let info = f.pkcs11.get_library_info().unwrap();
    let version = info.cryptoki_version();
    assert_eq!((version.major(), version.minor()), (3, 2));
    assert!(f
        .pkcs11
        .is_fn_supported(cryptoki::context::Function::EncapsulateKey));
}

/// A second implementation (RustCrypto's `ml-dsa` and `ml-kem`, test-only) against the token:
/// the same ML-DSA-65 key from one seed on both sides; the token's deterministic signature with
/// a context is byte for byte RustCrypto's (FIPS 204's deterministic variant is a known answer);
/// each side verifies the other's hedged signatures; ML-KEM-768 secrets agree both ways.
#[test]
fn a_second_implementation_agrees() {
    use ml_dsa::{EncodedSignature, ExpandedSigningKey, MlDsa65, Signature};
    use ml_kem::kem::{Decapsulate, KeyExport, TryKeyInit};
    use ml_kem::MlKem768;
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();

    // ML-DSA-65 from one seed: the token expands it (CKA_SEED), RustCrypto too.
    let seed = [0x5Au8; 32];
    let theirs = ExpandedSigningKey::<MlDsa65>::from_seed(&seed.into());
    let their_public = theirs.verifying_key().encode().to_vec();
    let set = Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into());
    let private = session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::ML_DSA),
            set.clone(),
            Attribute::Seed(seed.to_vec()),
            Attribute::Sign(true),
            Attribute::Token(false),
        ])
        .unwrap();
    let public = session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::ML_DSA),
            set,
            Attribute::Value(their_public.clone()),
            Attribute::Verify(true),
            Attribute::Token(false),
        ])
        .unwrap();
    // A seed with the value it makes (RustCrypto's encoding of it) is one key; with another
    // key's value, it is refused (the parsed-key cache finds keys by their seed).
    let with_value = |value: Vec<u8>| {
        session.create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::ML_DSA),
            Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into()),
            Attribute::Seed(seed.to_vec()),
            Attribute::Value(value),
            Attribute::Token(false),
        ])
    };
    // `to_expanded` is deprecated in favour of seeds, but the expanded encoding is what
    // CKA_VALUE holds (PKCS#11 3.2), so it is what is compared here.
    #[allow(deprecated)]
    let (same, different) = (
        theirs.to_expanded().to_vec(),
        ExpandedSigningKey::<MlDsa65>::from_seed(&[0x11u8; 32].into())
            .to_expanded()
            .to_vec(),
    );
    with_value(same).unwrap();
    assert_eq!(rv(with_value(different)), RvError::TemplateInconsistent);
    let message = b"interoperability";
    let deterministic = Mechanism::MlDsa(SignAdditionalContext::new(
        HedgeType::DeterministicRequired,
        Some(b"tessera"),
    ));
    let ours = session.sign(&deterministic, private, message).unwrap();
    let expected = theirs
        .sign_deterministic(message, b"tessera")
        .unwrap()
        .encode()
        .to_vec();
    assert_eq!(ours, expected, "FIPS 204 deterministic signature");
    let hedged = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Required, None));
    let ours = session.sign(&hedged, private, message).unwrap();
    let decoded =
        Signature::<MlDsa65>::decode(&EncodedSignature::<MlDsa65>::try_from(&ours[..]).unwrap())
            .expect("a well-formed signature");
    assert!(theirs
        .verifying_key()
        .verify_with_context(message, b"", &decoded));
    let their_signature = theirs
        .sign_deterministic(b"theirs", b"")
        .unwrap()
        .encode()
        .to_vec();
    session
        .verify(&hedged, public, b"theirs", &their_signature)
        .unwrap();

    // ML-KEM-768: their encapsulation to the token's key, the token's to theirs.
    let (token_public, token_private) = pair(
        &session,
        Mechanism::MlKemKeyPairGen,
        MlKemParameterSetType::ML_KEM_768.into(),
    );
    let key = ml_kem::EncapsulationKey::<MlKem768>::new_from_slice(&value(&session, token_public))
        .unwrap();
    let (ciphertext, shared) = key.encapsulate_deterministic(&[0x33u8; 32].into());
    let got = session
        .decapsulate_key(
            &Mechanism::MlKem,
            token_private,
            &readable_secret(),
            ciphertext.as_slice(),
        )
        .unwrap();
    assert_eq!(value(&session, got), shared.as_slice());
    let their_private = ml_kem::DecapsulationKey::<MlKem768>::from_seed([0x77u8; 64].into());
    let their_public = their_private.encapsulation_key();
    let imported = session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::ML_KEM),
            Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into()),
            Attribute::Value(their_public.to_bytes().to_vec()),
            Attribute::Token(false),
        ])
        .unwrap();
    let (ciphertext, ours) = session
        .encapsulate_key(&Mechanism::MlKem, imported, &readable_secret())
        .unwrap();
    let ciphertext = ml_kem::Ciphertext::<MlKem768>::try_from(&ciphertext[..]).unwrap();
    assert_eq!(
        their_private.decapsulate(&ciphertext).as_slice(),
        value(&session, ours)
    );
}

/// HashML-DSA (FIPS 204, Algorithms 4 and 5): `CKM_HASH_ML_DSA` signs a hash the application
/// gives (one part only), `CKM_HASH_ML_DSA_<hash>` hashes the data itself (in parts too). Signed
/// deterministically, the two give the same bytes for the same message; a HashML-DSA signature
/// is not a pure ML-DSA one (domain separation), nor one under another hash.
#[test]
fn hash_ml_dsa_signs_given_and_computed_hashes_alike() {
    use cryptoki::mechanism::dsa::HashSignAdditionalContext;
    use cryptoki::mechanism::MechanismType;
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let (public, private) = pair(
        &session,
        Mechanism::MlDsaKeyPairGen,
        MlDsaParameterSetType::ML_DSA_44.into(),
    );
    let message: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    let digest = session.digest(&Mechanism::Sha256, &message).unwrap();
    let deterministic =
        || SignAdditionalContext::new(HedgeType::DeterministicRequired, Some(b"ctx"));
    let given = Mechanism::HashMlDsa(HashSignAdditionalContext::new(
        HedgeType::DeterministicRequired,
        Some(b"ctx"),
        MechanismType::SHA256,
    ));
    let computed = Mechanism::HashMlDsaSha256(deterministic());
    let from_hash = session.sign(&given, private, &digest).unwrap();
    let from_message = session.sign(&computed, private, &message).unwrap();
    assert_eq!(from_hash, from_message);
    session.sign_init(&computed, private).unwrap();
    for part in message.chunks(300) {
        session.sign_update(part).unwrap();
    }
    assert_eq!(session.sign_final().unwrap(), from_hash);
    session
        .verify(&computed, public, &message, &from_hash)
        .unwrap();
    session.verify(&given, public, &digest, &from_hash).unwrap();
    // Not a pure ML-DSA signature of the message, nor one of the same message under SHA-512.
    let pure = Mechanism::MlDsa(deterministic());
    assert_eq!(
        rv(session.verify(&pure, public, &message, &from_hash)),
        RvError::SignatureInvalid
    );
    let sha512 = Mechanism::HashMlDsaSha512(deterministic());
    assert_eq!(
        rv(session.verify(&sha512, public, &message, &from_hash)),
        RvError::SignatureInvalid
    );
    // SHA3-224 (from aws-lc itself) works the same way.
    let sha3 = Mechanism::HashMlDsaSha3_224(deterministic());
    let signature = session.sign(&sha3, private, &message).unwrap();
    session.verify(&sha3, public, &message, &signature).unwrap();
    // A given hash of the wrong length is refused; the given hash takes no parts.
    assert_eq!(
        rv(session.sign(&given, private, &digest[1..])),
        RvError::DataLenRange
    );
    session.sign_init(&given, private).unwrap();
    assert_eq!(
        rv(session.sign_update(&digest)),
        RvError::OperationNotInitialized
    );
}
