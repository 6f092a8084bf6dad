//! SP 800-108 key derivation through the built `.so` (the `cryptoki` crate's structures, as an
//! application passes them): counter mode against NIST CAVP vectors (KBKDF CTR, CAVS 14.4, for
//! HMAC and CMAC PRFs, counter before, after and in the middle of the fixed data), feedback and
//! double-pipeline modes against an independent computation of SP 800-108 §5.2/§5.3 here, and
//! additional keys taking consecutive slices of the same key stream.

mod common;

use std::num::NonZeroUsize;

use aws_lc_rs::hmac;
use common::{fixture, rv, value};
use cryptoki::error::RvError;
use cryptoki::mechanism::kbkdf::{
    DerivedKey, Endianness, KbkdfCounterFormat, KbkdfDkmLengthFormat, KbkdfDkmLengthMethod,
    KbkdfFeedbackParams, KbkdfParams, PrfDataParam, PrfDataParamType,
};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use tessera_testkit::Transport;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn base_key(session: &Session, key_type: KeyType, value: &[u8]) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(false),
            Attribute::Derive(true),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap()
}

fn readable(length: usize) -> Vec<Attribute> {
    let mut template = common::readable_secret();
    template.push(Attribute::ValueLen((length as u64).into()));
    template
}

fn counter(bits: usize) -> KbkdfCounterFormat {
    KbkdfCounterFormat::new(Endianness::Big, NonZeroUsize::new(bits).unwrap())
}

/// One NIST CAVP counter-mode vector: PRF, counter width, fixed data before and after the
/// counter, KI, KO (L = 320 bits).
struct Vector {
    prf: MechanismType,
    key_type: KeyType,
    bits: usize,
    before: &'static str,
    after: &'static str,
    ki: &'static str,
    ko: &'static str,
}

const VECTORS: [Vector; 4] = [
    // [PRF=HMAC_SHA256] [CTRLOCATION=BEFORE_FIXED] [RLEN=32_BITS], L = 320.
    Vector {
        prf: MechanismType::SHA256_HMAC,
        key_type: KeyType::GENERIC_SECRET,
        bits: 32,
        before: "",
        after: "1c69c54766791e315c2cc5c47ecd3ffab87d0d273dd920e70955814c220eacace6a5946542da3dfe24ff626b4897898cafb7db83bdff3c14fa46fd4b",
        ki: "c4bedbddb66493e7c7259a3bbbc25f8c7e0ca7fe284d92d431d9cd99a0d214ac",
        ko: "1da47638d6c9c4d04d74d4640bbd42ab814d9e8cc22f4326695239f96b0693f12d0dd1152cf44430",
    },
    // [PRF=CMAC_AES256] [CTRLOCATION=AFTER_FIXED] [RLEN=8_BITS], L = 320.
    Vector {
        prf: MechanismType::AES_CMAC,
        key_type: KeyType::AES,
        bits: 8,
        before: "6a7a51e74597e60f97d98a0a317a08a45ac4eb8143dc1d0ca9c73de1e716234b745a438162bd13069930188ec9fd6a6fe4a2c7737478a09d74ea23c2",
        after: "",
        ki: "91cc6500cd003d3da35014958bde0bf660c18edc6b905fa5df932d91939653e3",
        ko: "fb3db58620a605d3c3bdcd10762744edc0e25eb4100efdd39afefd5796a530b291509a87f31721d4",
    },
    // [PRF=HMAC_SHA512] [CTRLOCATION=MIDDLE_FIXED] [RLEN=16_BITS], L = 320.
    Vector {
        prf: MechanismType::SHA512_HMAC,
        key_type: KeyType::GENERIC_SECRET,
        bits: 16,
        before: "ad44bb858f52cf2de7fab0db5d360d89928b56ac520134ef4ae97478417006d635c7db92f2f05535256452fbded32e4bcc21",
        after: "d750ebe5b9f10a5d245c",
        ki: "951d18678484155db69c52cccea35430527d5e670f0f785bd176c7018a62259723b0fcf2d534fd7a244e4d21624e66eb4a28ce93f53a696cee3c9562d4713a7d",
        ko: "4ef6a0b646813d033c14118d070c16752f0fba3c65b7647ff70efe6338b585c569ae342a8cf123c7",
    },
    // [PRF=CMAC_AES128] [CTRLOCATION=BEFORE_FIXED] [RLEN=8_BITS], L = 320.
    Vector {
        prf: MechanismType::AES_CMAC,
        key_type: KeyType::AES,
        bits: 8,
        before: "",
        after: "24acb8e9227b180f2ccebea48051cbdbcd1be2bf94400d1e92945fe9b887585a295f46c469036107697813a3e12c45ae2ffde9a940f8f8c181018a93",
        ki: "e91e0d06ab23a4e495bbcc430efddcaf",
        ko: "e81ef2483729d4165aaa4866c17f26496e6c6924e2fe34f608efef0c35835f86df29a1e19ce166a8",
    },
];

#[test]
fn counter_mode_matches_nist_cavp_vectors() {
    let f = fixture(Transport::Unix);
    let session = f.user_session();
    for v in &VECTORS {
        let base = base_key(&session, v.key_type, &hex(v.ki));
        let format = counter(v.bits);
        let (before, after) = (hex(v.before), hex(v.after));
        let mut data = Vec::new();
        if !before.is_empty() {
            data.push(PrfDataParam::new(PrfDataParamType::ByteArray(&before)));
        }
        data.push(PrfDataParam::new(PrfDataParamType::IterationVariable(
            Some(&format),
        )));
        if !after.is_empty() {
            data.push(PrfDataParam::new(PrfDataParamType::ByteArray(&after)));
        }
        let mechanism = Mechanism::KbkdfCounter(KbkdfParams::new(v.prf, &data, None));
        let key = session.derive_key(&mechanism, base, &readable(40)).unwrap();
        assert_eq!(value(&session, key), hex(v.ko), "{}", v.ki);
    }
}

/// SP 800-108 §5.2 (feedback) and §5.3 (double pipeline) with HMAC-SHA-256, computed here with
/// a fixed-data layout of [iteration variable] [counter, 32 bits] [label] [0x00] [context]
/// [L, 32 bits].
fn reference(double_pipeline: bool, key: &[u8], iv: &[u8], fixed: &[u8], len: usize) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let l = ((len * 8) as u32).to_be_bytes();
    let mut a = [fixed, &l[..]].concat();
    let mut k = iv.to_vec();
    let mut out = Vec::new();
    let mut i = 1u32;
    while out.len() < len {
        let chain = if double_pipeline {
            a = hmac::sign(&key, &a).as_ref().to_vec();
            a.clone()
        } else {
            k.clone()
        };
        let input = [&chain[..], &i.to_be_bytes(), fixed, &l].concat();
        k = hmac::sign(&key, &input).as_ref().to_vec();
        out.extend_from_slice(&k);
        i += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn feedback_and_double_pipeline_modes_match_the_standard() {
    let f = fixture(Transport::Unix);
    let session = f.user_session();
    let ki = hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let base = base_key(&session, KeyType::GENERIC_SECRET, &ki);
    let (label, context) = (b"tessera".as_slice(), b"kbkdf-test".as_slice());
    let fixed = [label, &[0], context].concat();
    let format = counter(32);
    let length = KbkdfDkmLengthFormat::new(
        KbkdfDkmLengthMethod::SumOfKeys,
        Endianness::Big,
        NonZeroUsize::new(32).unwrap(),
    );
    let data = [
        PrfDataParam::new(PrfDataParamType::IterationVariable(None)),
        PrfDataParam::new(PrfDataParamType::Counter(&format)),
        PrfDataParam::new(PrfDataParamType::ByteArray(label)),
        PrfDataParam::new(PrfDataParamType::ByteArray(&[0])),
        PrfDataParam::new(PrfDataParamType::ByteArray(context)),
        PrfDataParam::new(PrfDataParamType::DkmLength(&length)),
    ];
    let iv = b"an initialisation vector";
    for len in [16, 32, 75] {
        let feedback = Mechanism::KbkdfFeedback(KbkdfFeedbackParams::new(
            MechanismType::SHA256_HMAC,
            &data,
            Some(iv),
            None,
        ));
        let key = session.derive_key(&feedback, base, &readable(len)).unwrap();
        assert_eq!(value(&session, key), reference(false, &ki, iv, &fixed, len));
        let pipeline = Mechanism::KbkdfDoublePipeline(KbkdfParams::new(
            MechanismType::SHA256_HMAC,
            &data,
            None,
        ));
        let key = session.derive_key(&pipeline, base, &readable(len)).unwrap();
        assert_eq!(value(&session, key), reference(true, &ki, &[], &fixed, len));
    }
    // The two modes are different functions of the same inputs.
    assert_ne!(
        reference(false, &ki, iv, &fixed, 32),
        reference(true, &ki, &[], &fixed, 32)
    );
}

#[test]
fn additional_keys_take_the_following_key_material_and_bad_parameters_are_refused() {
    let f = fixture(Transport::Tcp);
    let session = f.user_session();
    let base = base_key(&session, KeyType::AES, &[0x42; 32]);
    let format = counter(16);
    let length = KbkdfDkmLengthFormat::new(
        KbkdfDkmLengthMethod::SumOfKeys,
        Endianness::Big,
        NonZeroUsize::new(16).unwrap(),
    );
    let data = [
        PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&format))),
        PrfDataParam::new(PrfDataParamType::ByteArray(b"label")),
        PrfDataParam::new(PrfDataParamType::DkmLength(&length)),
    ];
    // One key of 56 bytes, and the same stream cut into 16 + 32 + 8.
    let whole = session
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::AES_CMAC, &data, None)),
            base,
            &readable(56),
        )
        .unwrap();
    let whole = value(&session, whole);
    let (second, third) = (readable(32), readable(8));
    let mut additional = vec![DerivedKey::new(&second), DerivedKey::new(&third)];
    let first = session
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(
                MechanismType::AES_CMAC,
                &data,
                Some(&mut additional),
            )),
            base,
            &readable(16),
        )
        .unwrap();
    let handles: Vec<ObjectHandle> = additional.iter().filter_map(|k| k.handle()).collect();
    assert_eq!(handles.len(), 2);
    let mut joined = value(&session, first);
    for handle in handles {
        joined.extend(value(&session, handle));
    }
    assert_eq!(joined, whole);

    // A derived key can do only what its template says.
    let narrow = session
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::AES_CMAC, &data, None)),
            base,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(16.into()),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    let flags = session
        .get_attributes(
            narrow,
            &[
                AttributeType::Encrypt,
                AttributeType::Sign,
                AttributeType::Derive,
            ],
        )
        .unwrap();
    assert_eq!(
        flags,
        vec![
            Attribute::Encrypt(true),
            Attribute::Sign(false),
            Attribute::Derive(false)
        ]
    );

    // Refused: no iteration variable; a counter in counter mode; a PRF that is not one; an AES
    // key length that AES does not have.
    let derive = |data: &[PrfDataParam], prf: MechanismType, template: &[Attribute]| {
        rv(session.derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(prf, data, None)),
            base,
            template,
        ))
    };
    let no_iteration = [PrfDataParam::new(PrfDataParamType::ByteArray(b"x"))];
    assert_eq!(
        derive(&no_iteration, MechanismType::AES_CMAC, &readable(16)),
        RvError::MechanismParamInvalid
    );
    let with_counter = [
        PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&format))),
        PrfDataParam::new(PrfDataParamType::Counter(&format)),
    ];
    assert_eq!(
        derive(&with_counter, MechanismType::AES_CMAC, &readable(16)),
        RvError::MechanismParamInvalid
    );
    assert_eq!(
        derive(&data, MechanismType::SHA256, &readable(16)),
        RvError::MechanismParamInvalid
    );
    let mut odd_aes = readable(20);
    odd_aes[1] = Attribute::KeyType(KeyType::AES);
    assert_eq!(
        derive(&data, MechanismType::AES_CMAC, &odd_aes),
        RvError::TemplateInconsistent
    );
    // An HMAC PRF needs a generic secret (or HMAC) key, not an AES one.
    assert_eq!(
        derive(&data, MechanismType::SHA256_HMAC, &readable(16)),
        RvError::KeyTypeInconsistent
    );
}
