//! The security flags that do not depend on secure messaging, set with the real `ctconf` and
//! observed by an application through the `.so` (docs/reference.md, "Security flags").

mod common;

use common::{fixture, rv};
use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::types::Ulong;
use tessera_testkit::{Transport, TRANSPORTS};

const CKA_TESSERA_SECURITY_FLAGS: u64 = 0x8000_0000 + 0x5453_0001;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn device_flags(session: &cryptoki::session::Session) -> u64 {
    let devices = session
        .find_objects(&[Attribute::Class(ObjectClass::HARDWARE_FEATURE)])
        .unwrap();
    assert_eq!(devices.len(), 1, "one device object per token");
    let ty = AttributeType::VendorDefined(CKA_TESSERA_SECURITY_FLAGS);
    match &session.get_attributes(devices[0], &[ty]).unwrap()[0] {
        Attribute::VendorDefined((_, bytes)) => {
            u64::from_le_bytes(bytes.as_slice().try_into().unwrap())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flags_are_visible_to_applications_through_the_device_object() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.pkcs11.open_ro_session(f.slot).unwrap();
        assert_eq!(device_flags(&session), 0);
        f.daemon.admin(transport, &["-fcaw"]);
        assert_eq!(device_flags(&session), 0x8 | 0x40 | 0x10000);
        // The device object cannot be changed or destroyed.
        let rw = f.pkcs11.open_rw_session(f.slot).unwrap();
        let device = rw
            .find_objects(&[Attribute::Class(ObjectClass::HARDWARE_FEATURE)])
            .unwrap()[0];
        assert_eq!(rv(rw.destroy_object(device)), RvError::ActionProhibited);
        assert_eq!(
            rv(rw.update_attributes(device, &[Attribute::Label(b"x".to_vec())])),
            RvError::ActionProhibited
        );
    }
}

/// PKCS#11 3.0 §4.3: "When searching using C_FindObjectsInit and C_FindObjects, hardware
/// feature objects are not returned unless the CKA_CLASS attribute in the template has the
/// value CKO_HW_FEATURE." An application that lists every object (an empty template), or
/// looks for one by its label, does not meet the device object.
#[test]
fn the_device_object_is_found_only_by_its_class() {
    let f = fixture(Transport::Unix);
    let session = f.pkcs11.open_ro_session(f.slot).unwrap();
    assert_eq!(
        session.find_objects(&[]).unwrap(),
        vec![],
        "an empty template"
    );
    let by_label = [Attribute::Label(b"Tessera device".to_vec())];
    assert_eq!(
        session.find_objects(&by_label).unwrap(),
        vec![],
        "by its label"
    );
    let by_class = [Attribute::Class(ObjectClass::HARDWARE_FEATURE)];
    assert_eq!(
        session.find_objects(&by_class).unwrap().len(),
        1,
        "by its class"
    );
    let both = [by_class[0].clone(), by_label[0].clone()];
    assert_eq!(
        session.find_objects(&both).unwrap().len(),
        1,
        "by class and label"
    );
}

#[test]
fn no_public_crypto_requires_a_login_for_crypto_and_object_writes() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let public = f.pkcs11.open_rw_session(f.slot).unwrap();
        // Without the flag, public crypto and public object writes work.
        public.generate_random_vec(8).unwrap();
        public.digest(&Mechanism::Sha256, b"x").unwrap();
        public
            .create_object(&[Attribute::Class(ObjectClass::DATA)])
            .unwrap();
        f.daemon.admin(transport, &["-fc"]);
        assert_eq!(rv(public.generate_random_vec(8)), RvError::UserNotLoggedIn);
        assert_eq!(
            rv(public.digest(&Mechanism::Sha256, b"x")),
            RvError::UserNotLoggedIn
        );
        assert_eq!(
            rv(public.create_object(&[Attribute::Class(ObjectClass::DATA)])),
            RvError::UserNotLoggedIn
        );
        assert_eq!(
            rv(public.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(Ulong::from(16)),
                    Attribute::Private(false)
                ]
            )),
            RvError::UserNotLoggedIn
        );
        // After login, all of it works.
        let user = f.user_session();
        user.generate_random_vec(8).unwrap();
        user.digest(&Mechanism::Sha256, b"x").unwrap();
        user.create_object(&[Attribute::Class(ObjectClass::DATA)])
            .unwrap();
    }
}

#[test]
fn fips_algorithms_only_hides_and_refuses_unapproved_mechanisms() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.pkcs11.open_ro_session(f.slot).unwrap();
        assert!(f
            .pkcs11
            .get_mechanism_list(f.slot)
            .unwrap()
            .contains(&MechanismType::SHA1));
        session.digest(&Mechanism::Sha1, b"abc").unwrap();
        f.daemon.admin(transport, &["-fa"]);
        let listed = f.pkcs11.get_mechanism_list(f.slot).unwrap();
        assert!(
            !listed.contains(&MechanismType::SHA1),
            "SHA-1 is still offered"
        );
        assert!(listed.contains(&MechanismType::SHA256));
        assert_eq!(
            rv(f.pkcs11.get_mechanism_info(f.slot, MechanismType::SHA1)),
            RvError::MechanismInvalid
        );
        assert_eq!(
            rv(session.digest(&Mechanism::Sha1, b"abc")),
            RvError::MechanismInvalid
        );
        session.digest(&Mechanism::Sha256, b"abc").unwrap();
    }
}

#[test]
fn weak_mechanisms_gate_raw_rsa_pkcs1_decryption() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &[Attribute::ModulusBits(Ulong::from(2048))],
                &[],
            )
            .unwrap();
        let ciphertext = session
            .encrypt(&Mechanism::RsaPkcs, public, b"session key")
            .unwrap();
        assert_eq!(ciphertext.len(), 256);
        assert!(!f
            .pkcs11
            .get_mechanism_info(f.slot, MechanismType::RSA_PKCS)
            .unwrap()
            .decrypt());
        assert_eq!(
            rv(session.decrypt(&Mechanism::RsaPkcs, private, &ciphertext)),
            RvError::MechanismInvalid
        );
        f.daemon.admin(transport, &["-fw"]);
        assert!(f
            .pkcs11
            .get_mechanism_info(f.slot, MechanismType::RSA_PKCS)
            .unwrap()
            .decrypt());
        assert_eq!(
            session
                .decrypt(&Mechanism::RsaPkcs, private, &ciphertext)
                .unwrap(),
            b"session key"
        );
    }
}

#[test]
fn increased_security_keeps_read_only_copies_read_only() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        let fixed = session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Modifiable(false),
            ])
            .unwrap();
        let copy = session
            .copy_object(fixed, &[Attribute::Modifiable(true)])
            .unwrap();
        session
            .update_attributes(copy, &[Attribute::Label(b"changed".to_vec())])
            .unwrap();
        f.daemon.admin(transport, &["-fi"]);
        assert_eq!(
            rv(session.copy_object(fixed, &[Attribute::Modifiable(true)])),
            RvError::AttributeReadOnly
        );
        session
            .copy_object(fixed, &[Attribute::Label(b"still copyable".to_vec())])
            .unwrap();
    }
}

#[test]
fn explicit_ec_domain_parameters_need_the_e_flag() {
    let explicit = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tessera-hsm/curves/p256-explicit.der"
    ))
    .unwrap();
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let session = f.user_session();
        let generate = |params: Vec<u8>| {
            session.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[Attribute::EcParams(params)],
                &[],
            )
        };
        assert_eq!(rv(generate(explicit.clone())), RvError::DomainParamsInvalid);
        // Parameters of an unknown curve are refused in either mode.
        assert_eq!(
            rv(generate(hex("06052b81040021"))),
            RvError::CurveNotSupported
        );
        f.daemon.admin(transport, &["-fE"]);
        let (public, private) = generate(explicit.clone()).unwrap();
        let signature = session
            .sign(&Mechanism::EcdsaSha256, private, b"explicit")
            .unwrap();
        session
            .verify(&Mechanism::EcdsaSha256, public, b"explicit", &signature)
            .unwrap();
        let params = session
            .get_attributes(public, &[AttributeType::EcParams])
            .unwrap();
        assert_eq!(
            params,
            vec![Attribute::EcParams(explicit.clone())],
            "kept as given"
        );
        let Attribute::EcPoint(point) = session
            .get_attributes(public, &[AttributeType::EcPoint])
            .unwrap()
            .remove(0)
        else {
            panic!("no EC point")
        };
        let imported = session.create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(explicit.clone()),
            Attribute::EcPoint(point),
        ]);
        session
            .verify(
                &Mechanism::EcdsaSha256,
                imported.unwrap(),
                b"explicit",
                &signature,
            )
            .unwrap();
    }
}
