//! The mechanism set against published known answers (FIPS 180-4/202, RFC 4231, RFC 4493,
//! SP 800-38A, RFC 3394, RFC 8032, RFC 7748, RFC 5869) and round trips where no vector
//! applies, through the same client code the PKCS#11 library runs.

mod sm_common;

use sm_common::{call, code, prepare, secured, user};
use tessera_core::{ck, Attribute, Mechanism, MechanismParameter, Rv, Template};
use tessera_testkit::{Daemon, Transport, TRANSPORTS};
use tessera_wire::{AttributeAnswer, Call, Operation, Reply};

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

struct Token {
    device: tessera_client::Device,
    session: u64,
    g: u64,
}

impl Token {
    fn new(daemon: &Daemon, transport: Transport) -> Token {
        let device = secured(daemon, &daemon.server_list(transport), &[]);
        let (session, g) = user(&device);
        Token { device, session, g }
    }

    fn call(&self, request: Call) -> Reply {
        call(&self.device, self.g, request)
    }

    fn create(&self, attributes: Vec<Attribute>) -> u64 {
        match self.call(Call::CreateObject {
            session: self.session,
            template: Template(attributes),
        }) {
            Reply::Handle(h) => h,
            other => panic!("{other:?}"),
        }
    }

    fn secret(&self, key_type: ck::CK_KEY_TYPE, value: &[u8]) -> u64 {
        self.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, key_type),
            Attribute::bool(ck::CKA_SENSITIVE, false),
            Attribute::bool(ck::CKA_DERIVE, true),
            Attribute::bytes(ck::CKA_VALUE, value),
        ])
    }

    /// An init alone, and the device's answer.
    fn init(&self, operation: Operation, mechanism: Mechanism, key: u64) -> Result<(), u64> {
        let init = Call::OperationInit {
            session: self.session,
            operation,
            mechanism,
            key,
        };
        (self.device.call(Some(self.g), init))
            .map(|_| ())
            .map_err(|e| e.rv())
    }

    fn single(
        &self,
        operation: Operation,
        mechanism: Mechanism,
        key: u64,
        data: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, u64> {
        self.call(Call::OperationInit {
            session: self.session,
            operation,
            mechanism,
            key,
        });
        match self.device.call(
            Some(self.g),
            Call::OperationSingle {
                session: self.session,
                operation,
                data: data.to_vec(),
                signature: signature.to_vec(),
            },
        ) {
            Ok((Reply::Bytes(b), _)) => Ok(b),
            Ok((Reply::Secret(s), _)) => Ok(s.expose().to_vec()),
            Ok((Reply::Verified, _)) => Ok(Vec::new()),
            Ok((other, _)) => panic!("{other:?}"),
            Err(e) => Err(e.rv()),
        }
    }

    fn value(&self, key: u64) -> Vec<u8> {
        match self.call(Call::GetAttributes {
            session: self.session,
            object: key,
            types: vec![ck::CKA_VALUE as u64],
        }) {
            Reply::Attributes(mut a) => match a.remove(0) {
                AttributeAnswer::Value(v) => v,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn derive(&self, mechanism: Mechanism, base: u64, length: u64) -> Result<u64, u64> {
        let template = Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
            Attribute::ulong(ck::CKA_VALUE_LEN, length),
            Attribute::bool(ck::CKA_SENSITIVE, false),
        ]);
        match self.device.call(
            Some(self.g),
            Call::DeriveKey {
                session: self.session,
                mechanism,
                base_key: base,
                template,
            },
        ) {
            Ok((Reply::Handle(h), _)) => Ok(h),
            Ok((other, _)) => panic!("{other:?}"),
            Err(e) => Err(e.rv()),
        }
    }
}

fn plain(ty: ck::CK_MECHANISM_TYPE) -> Mechanism {
    Mechanism::plain(ty as u64)
}

#[test]
fn digests_macs_and_aes_modes_match_published_vectors() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "");
        let t = Token::new(&daemon, transport);
        let digest = |m| {
            t.single(Operation::Digest, plain(m), 0, b"abc", &[])
                .unwrap()
        };
        assert_eq!(
            digest(ck::CKM_SHA224),
            hex("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7")
        );
        assert_eq!(
            digest(ck::CKM_SHA3_256),
            hex("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")
        );
        assert_eq!(digest(ck::CKM_SHA3_384), hex("ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25"));
        assert_eq!(digest(ck::CKM_SHA3_512), hex("b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"));
        // RFC 4231 test case 2.
        let jefe = t.secret(ck::CKK_GENERIC_SECRET, b"Jefe");
        let data = b"what do ya want for nothing?";
        let mac = t
            .single(Operation::Sign, plain(ck::CKM_SHA256_HMAC), jefe, data, &[])
            .unwrap();
        assert_eq!(
            mac,
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        t.single(
            Operation::Verify,
            plain(ck::CKM_SHA256_HMAC),
            jefe,
            data,
            &mac,
        )
        .unwrap();
        assert_eq!(
            t.single(
                Operation::Verify,
                plain(ck::CKM_SHA256_HMAC),
                jefe,
                b"x",
                &mac
            ),
            Err(Rv::SignatureInvalid.code())
        );
        // RFC 2202 §3 and RFC 4231 test case 2 for the shorter hashes.
        for (mechanism, expected) in [
            (
                ck::CKM_SHA_1_HMAC,
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                ck::CKM_SHA224_HMAC,
                "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44",
            ),
        ] {
            assert_eq!(
                t.single(Operation::Sign, plain(mechanism), jefe, data, &[])
                    .unwrap(),
                hex(expected)
            );
        }
        let general = Mechanism {
            ty: ck::CKM_SHA256_HMAC_GENERAL as u64,
            parameter: MechanismParameter::MacLength(16),
        };
        assert_eq!(
            t.single(Operation::Sign, general, jefe, data, &[]).unwrap(),
            mac[..16]
        );
        // RFC 4493 example 2 and SP 800-38A F.1.1, F.2.1, F.5.1.
        let aes = t.secret(ck::CKK_AES, &hex("2b7e151628aed2a6abf7158809cf4f3c"));
        let block = hex("6bc1bee22e409f96e93d7e117393172a");
        assert_eq!(
            t.single(Operation::Sign, plain(ck::CKM_AES_CMAC), aes, &block, &[])
                .unwrap(),
            hex("070a16b46b4d4144f79bdd9dd04a287c")
        );
        assert_eq!(
            t.single(Operation::Encrypt, plain(ck::CKM_AES_ECB), aes, &block, &[])
                .unwrap(),
            hex("3ad77bb40d7a3660a89ecaf32466ef97")
        );
        let cbc = Mechanism {
            ty: ck::CKM_AES_CBC as u64,
            parameter: MechanismParameter::Bytes(hex("000102030405060708090a0b0c0d0e0f")),
        };
        let sealed = t
            .single(Operation::Encrypt, cbc.clone(), aes, &block, &[])
            .unwrap();
        assert_eq!(sealed, hex("7649abac8119b246cee98e9b12e9197d"));
        assert_eq!(
            t.single(Operation::Decrypt, cbc.clone(), aes, &sealed, &[])
                .unwrap(),
            block
        );
        assert_eq!(
            t.single(Operation::Encrypt, cbc, aes, b"not a block", &[]),
            Err(Rv::DataLenRange.code())
        );
        let ctr = Mechanism {
            ty: ck::CKM_AES_CTR as u64,
            parameter: MechanismParameter::Ctr {
                counter_bits: 128,
                block: hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
            },
        };
        assert_eq!(
            t.single(Operation::Encrypt, ctr, aes, &block, &[]).unwrap(),
            hex("874d6191b620e3261bef6864990db6ce")
        );
        // An 8-bit counter at 0xff has one block before it wraps: that block is the same, a
        // second one (which would repeat the key stream) is refused.
        let short = |counter_bits| Mechanism {
            ty: ck::CKM_AES_CTR as u64,
            parameter: MechanismParameter::Ctr {
                counter_bits,
                block: hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
            },
        };
        assert_eq!(
            t.single(Operation::Encrypt, short(8), aes, &block, &[])
                .unwrap(),
            hex("874d6191b620e3261bef6864990db6ce")
        );
        assert_eq!(
            t.single(Operation::Encrypt, short(8), aes, &[0; 17], &[]),
            Err(Rv::DataLenRange.code())
        );
        assert_eq!(
            t.single(Operation::Decrypt, short(8), aes, &[0; 17], &[]),
            Err(Rv::EncryptedDataLenRange.code())
        );
        // A 16-bit counter at 0xfeff has 257 blocks.
        assert!(t
            .single(Operation::Encrypt, short(16), aes, &[0; 257 * 16], &[])
            .is_ok());
        assert_eq!(
            t.single(Operation::Encrypt, short(16), aes, &[0; 257 * 16 + 1], &[]),
            Err(Rv::DataLenRange.code())
        );
        // CTR in parts (PKCS#11 3.0 §5.8, C_EncryptUpdate "processing another data part"):
        // each update returns its whole blocks, the final call the last partial one, and the
        // key stream is the single-part call's. The counter's wrap is checked across parts.
        let data = [5u8; 37];
        let whole = t
            .single(Operation::Encrypt, short(128), aes, &data, &[])
            .unwrap();
        t.call(Call::OperationInit {
            session: t.session,
            operation: Operation::Encrypt,
            mechanism: short(128),
            key: aes,
        });
        let mut outputs = Vec::new();
        for part in [&data[..7], &data[7..35], &data[35..]] {
            outputs.push(
                match t.call(Call::OperationUpdate {
                    session: t.session,
                    operation: Operation::Encrypt,
                    data: part.to_vec(),
                }) {
                    Reply::Bytes(bytes) => bytes,
                    other => panic!("{other:?}"),
                },
            );
        }
        outputs.push(
            match t.call(Call::OperationFinal {
                session: t.session,
                operation: Operation::Encrypt,
                signature: Vec::new(),
            }) {
                Reply::Bytes(bytes) => bytes,
                other => panic!("{other:?}"),
            },
        );
        assert_eq!(
            outputs.iter().map(Vec::len).collect::<Vec<_>>(),
            [0, 32, 0, 5],
            "7, 28 and 2 bytes: nothing, two blocks, nothing; the last 5 bytes at the final call"
        );
        assert_eq!(outputs.concat(), whole);
        // Key derivation by encryption: the new value is the SP 800-38A F.1.1 / F.2.1 block.
        for (iv, expected) in [
            (Vec::new(), "3ad77bb40d7a3660a89ecaf32466ef97"),
            (
                hex("000102030405060708090a0b0c0d0e0f"),
                "7649abac8119b246cee98e9b12e9197d",
            ),
        ] {
            let ty = if iv.is_empty() {
                ck::CKM_AES_ECB_ENCRYPT_DATA
            } else {
                ck::CKM_AES_CBC_ENCRYPT_DATA
            };
            let mechanism = Mechanism {
                ty: ty as u64,
                parameter: MechanismParameter::EncryptData {
                    iv,
                    data: block.clone(),
                },
            };
            let derived = t.derive(mechanism.clone(), aes, 16).unwrap();
            assert_eq!(t.value(derived), hex(expected));
            // Only whole blocks.
            let MechanismParameter::EncryptData { iv, .. } = mechanism.parameter else {
                unreachable!()
            };
            let partial = Mechanism {
                ty: ty as u64,
                parameter: MechanismParameter::EncryptData {
                    iv,
                    data: block[..15].to_vec(),
                },
            };
            assert_eq!(
                t.derive(partial, aes, 15),
                Err(Rv::MechanismParamInvalid.code())
            );
        }
        // GCM test case 4 (McGrew and Viega), with the full tag and one truncated to 96 bits.
        let gcm_key = t.secret(ck::CKK_AES, &hex("feffe9928665731c6d6a8f9467308308"));
        let gcm = |tag_bits| Mechanism {
            ty: ck::CKM_AES_GCM as u64,
            parameter: MechanismParameter::Gcm {
                iv: hex("cafebabefacedbaddecaf888"),
                aad: hex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
                tag_bits,
            },
        };
        let plaintext = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let ciphertext = hex("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091");
        let tag = hex("5bc94fbc3221a5db94fae95ae7121a47");
        for tag_bits in [128u64, 96] {
            let expected = [ciphertext.as_slice(), &tag[..tag_bits as usize / 8]].concat();
            let sealed = t
                .single(Operation::Encrypt, gcm(tag_bits), gcm_key, &plaintext, &[])
                .unwrap();
            assert_eq!(sealed, expected, "{tag_bits}-bit tag");
            assert_eq!(
                t.single(Operation::Decrypt, gcm(tag_bits), gcm_key, &sealed, &[])
                    .unwrap(),
                plaintext
            );
            for flip in [0, sealed.len() - 1] {
                let mut forged = sealed.clone();
                forged[flip] ^= 1;
                assert_eq!(
                    t.single(Operation::Decrypt, gcm(tag_bits), gcm_key, &forged, &[]),
                    Err(Rv::EncryptedDataInvalid.code()),
                    "{tag_bits}-bit tag, byte {flip} flipped"
                );
            }
        }
        for tag_bits in [64u64, 100, 136] {
            let init = t.device.call(
                Some(t.g),
                Call::OperationInit {
                    session: t.session,
                    operation: Operation::Encrypt,
                    mechanism: gcm(tag_bits),
                    key: gcm_key,
                },
            );
            assert_eq!(
                init.err().map(|e| e.rv()),
                Some(Rv::MechanismParamInvalid.code()),
                "{tag_bits}-bit tag"
            );
        }
        // Key generation for generic secrets.
        let template = Template(vec![Attribute::ulong(ck::CKA_VALUE_LEN, 48)]);
        let Reply::Handle(generated) = t.call(Call::GenerateKey {
            session: t.session,
            mechanism: plain(ck::CKM_GENERIC_SECRET_KEY_GEN),
            template,
        }) else {
            panic!()
        };
        t.single(
            Operation::Sign,
            plain(ck::CKM_SHA384_HMAC),
            generated,
            b"m",
            &[],
        )
        .unwrap();
        // The SHA key generators make keys typed for their HMAC.
        let template = Template(vec![Attribute::ulong(ck::CKA_VALUE_LEN, 32)]);
        let Reply::Handle(typed) = t.call(Call::GenerateKey {
            session: t.session,
            mechanism: plain(ck::CKM_SHA256_KEY_GEN),
            template,
        }) else {
            panic!()
        };
        let Reply::Attributes(answers) = t.call(Call::GetAttributes {
            session: t.session,
            object: typed,
            types: vec![ck::CKA_KEY_TYPE as u64],
        }) else {
            panic!()
        };
        let key_type = (ck::CKK_SHA256_HMAC as u64).to_ne_bytes();
        assert!(
            matches!(&answers[..], [AttributeAnswer::Value(v)] if v[..] == key_type[..]),
            "{answers:?}"
        );
        t.single(
            Operation::Sign,
            plain(ck::CKM_SHA256_HMAC),
            typed,
            b"m",
            &[],
        )
        .unwrap();
    }
}

#[test]
fn key_wrap_unwrap_with_aes_and_oaep() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "");
        let t = Token::new(&daemon, transport);
        // RFC 3394 section 4.1.
        let kek = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bytes(ck::CKA_VALUE, &hex("000102030405060708090A0B0C0D0E0F")),
        ]);
        let target = t.secret(ck::CKK_AES, &hex("00112233445566778899AABBCCDDEEFF"));
        let wrap = |mechanism: ck::CK_MECHANISM_TYPE, wrapping: u64, key: u64| match t.device.call(
            Some(t.g),
            Call::WrapKey {
                session: t.session,
                mechanism: plain(mechanism),
                wrapping_key: wrapping,
                key,
            },
        ) {
            Ok((Reply::Bytes(b), _)) => Ok(b),
            Ok((other, _)) => panic!("{other:?}"),
            Err(e) => Err(e.rv()),
        };
        let wrapped = wrap(ck::CKM_AES_KEY_WRAP, kek, target).unwrap();
        assert_eq!(
            wrapped,
            hex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
        );
        let unwrap = |mechanism: ck::CK_MECHANISM_TYPE, unwrapping: u64, wrapped: Vec<u8>| {
            let template = Template(vec![
                Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                Attribute::bool(ck::CKA_SENSITIVE, false),
            ]);
            match t.device.call(
                Some(t.g),
                Call::UnwrapKey {
                    session: t.session,
                    mechanism: plain(mechanism),
                    unwrapping_key: unwrapping,
                    wrapped,
                    template,
                },
            ) {
                Ok((Reply::Handle(h), _)) => Ok(h),
                Ok((other, _)) => panic!("{other:?}"),
                Err(e) => Err(e.rv()),
            }
        };
        let restored = unwrap(ck::CKM_AES_KEY_WRAP, kek, wrapped.clone()).unwrap();
        assert_eq!(t.value(restored), hex("00112233445566778899AABBCCDDEEFF"));
        let mut altered = wrapped;
        altered[3] ^= 1;
        assert_eq!(
            unwrap(ck::CKM_AES_KEY_WRAP, kek, altered),
            Err(Rv::WrappedKeyInvalid.code())
        );
        for mechanism in [ck::CKM_AES_KEY_WRAP_PAD, ck::CKM_AES_KEY_WRAP_KWP] {
            let odd = t.secret(ck::CKK_GENERIC_SECRET, b"twenty-one bytes long");
            let wrapped = wrap(mechanism, kek, odd).unwrap();
            let template = Template(vec![
                Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
                Attribute::bool(ck::CKA_SENSITIVE, false),
            ]);
            let Ok((Reply::Handle(back), _)) = t.device.call(
                Some(t.g),
                Call::UnwrapKey {
                    session: t.session,
                    mechanism: plain(mechanism),
                    unwrapping_key: kek,
                    wrapped,
                    template,
                },
            ) else {
                panic!("unwrap {mechanism:#x}")
            };
            assert_eq!(t.value(back), b"twenty-one bytes long");
        }
        // Unextractable keys cannot be wrapped.
        let locked = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bool(ck::CKA_EXTRACTABLE, false),
            Attribute::bytes(ck::CKA_VALUE, &[9u8; 16]),
        ]);
        assert_eq!(
            wrap(ck::CKM_AES_KEY_WRAP, kek, locked),
            Err(Rv::KeyUnextractable.code())
        );
        // RSA-OAEP: encrypt/decrypt and wrap/unwrap.
        let template = Template(vec![Attribute::ulong(ck::CKA_MODULUS_BITS, 2048)]);
        let Reply::HandlePair(public, private) = t.call(Call::GenerateKeyPair {
            session: t.session,
            mechanism: plain(ck::CKM_RSA_PKCS_KEY_PAIR_GEN),
            public_template: template,
            private_template: Template::default(),
        }) else {
            panic!()
        };
        let oaep = Mechanism {
            ty: ck::CKM_RSA_PKCS_OAEP as u64,
            parameter: MechanismParameter::Oaep {
                hash: ck::CKM_SHA256 as u64,
                mgf: ck::CKG_MGF1_SHA256 as u64,
                label: b"label".to_vec(),
            },
        };
        let sealed = t
            .single(Operation::Encrypt, oaep.clone(), public, b"secret", &[])
            .unwrap();
        assert_eq!(sealed.len(), 256);
        assert_eq!(
            t.single(Operation::Decrypt, oaep.clone(), private, &sealed, &[])
                .unwrap(),
            b"secret"
        );
        let wrapped = match t.call(Call::WrapKey {
            session: t.session,
            mechanism: oaep.clone(),
            wrapping_key: public,
            key: target,
        }) {
            Reply::Bytes(b) => b,
            other => panic!("{other:?}"),
        };
        let template = Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bool(ck::CKA_SENSITIVE, false),
        ]);
        let Reply::Handle(back) = t.call(Call::UnwrapKey {
            session: t.session,
            mechanism: oaep.clone(),
            unwrapping_key: private,
            wrapped,
            template,
        }) else {
            panic!()
        };
        assert_eq!(t.value(back), hex("00112233445566778899AABBCCDDEEFF"));
        // A key for wrapping only does not encrypt or decrypt: C_Decrypt would hand out the
        // value of every key wrapped for it.
        let Reply::HandlePair(wrap_only, unwrap_only) = t.call(Call::GenerateKeyPair {
            session: t.session,
            mechanism: plain(ck::CKM_RSA_PKCS_KEY_PAIR_GEN),
            public_template: Template(vec![
                Attribute::ulong(ck::CKA_MODULUS_BITS, 2048),
                Attribute::bool(ck::CKA_ENCRYPT, false),
                Attribute::bool(ck::CKA_WRAP, true),
            ]),
            private_template: Template(vec![
                Attribute::bool(ck::CKA_DECRYPT, false),
                Attribute::bool(ck::CKA_UNWRAP, true),
            ]),
        }) else {
            panic!()
        };
        for (operation, key) in [
            (Operation::Encrypt, wrap_only),
            (Operation::Decrypt, unwrap_only),
        ] {
            let init = Call::OperationInit {
                session: t.session,
                operation,
                mechanism: oaep.clone(),
                key,
            };
            assert_eq!(
                code(t.device.call(Some(t.g), init)),
                Rv::KeyFunctionNotPermitted.code(),
                "{operation:?}"
            );
        }
    }
}

#[test]
fn ed25519_x25519_ecdh_and_hkdf_match_published_vectors() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "");
        let t = Token::new(&daemon, transport);
        let ed_oid = hex("06032b6570");
        // RFC 8032 section 7.1, test 1 (empty message).
        let private = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_EC_EDWARDS),
            Attribute::bytes(ck::CKA_EC_PARAMS, &ed_oid),
            Attribute::bytes(
                ck::CKA_VALUE,
                &hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
            ),
        ]);
        let signature = t
            .single(Operation::Sign, plain(ck::CKM_EDDSA), private, b"", &[])
            .unwrap();
        assert_eq!(signature, hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"));
        let public = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_EC_EDWARDS),
            Attribute::bytes(ck::CKA_EC_PARAMS, &ed_oid),
            Attribute::bytes(
                ck::CKA_EC_POINT,
                &hex("0420d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
            ),
        ]);
        t.single(
            Operation::Verify,
            plain(ck::CKM_EDDSA),
            public,
            b"",
            &signature,
        )
        .unwrap();
        assert_eq!(
            t.single(
                Operation::Verify,
                plain(ck::CKM_EDDSA),
                public,
                b"x",
                &signature
            ),
            Err(Rv::SignatureInvalid.code())
        );
        // Generated Ed25519 pairs sign and verify.
        let Reply::HandlePair(gp, gs) = t.call(Call::GenerateKeyPair {
            session: t.session,
            mechanism: plain(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN),
            public_template: Template(vec![Attribute::bytes(ck::CKA_EC_PARAMS, &ed_oid)]),
            private_template: Template::default(),
        }) else {
            panic!()
        };
        let s = t
            .single(Operation::Sign, plain(ck::CKM_EDDSA), gs, b"hello", &[])
            .unwrap();
        t.single(Operation::Verify, plain(ck::CKM_EDDSA), gp, b"hello", &s)
            .unwrap();

        // RFC 7748 section 6.1: Alice's private key with Bob's public key.
        let alice = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_EC_MONTGOMERY),
            Attribute::bytes(ck::CKA_EC_PARAMS, &hex("06032b656e")),
            Attribute::bytes(
                ck::CKA_VALUE,
                &hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
            ),
        ]);
        let ecdh = |public: Vec<u8>| Mechanism {
            ty: ck::CKM_ECDH1_DERIVE as u64,
            parameter: MechanismParameter::Ecdh {
                kdf: ck::CKD_NULL as u64,
                shared_data: vec![],
                public_data: public,
            },
        };
        let shared = t
            .derive(
                ecdh(hex(
                    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
                )),
                alice,
                32,
            )
            .unwrap();
        assert_eq!(
            t.value(shared),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );

        // The ANSI X9.63 KDFs over that agreed value Z (SEC 1 v2 §3.6.1): the key is
        // Hash(Z || counter || SharedInfo) for the counters 1, 2, ... (32-bit big-endian),
        // computed here from the standard's definition.
        let z = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        let x963 = |hash: &'static aws_lc_rs::digest::Algorithm, info: &[u8], len: usize| {
            let mut out = Vec::new();
            for counter in 1u32.. {
                if out.len() >= len {
                    break;
                }
                let block = [z.as_slice(), &counter.to_be_bytes(), info].concat();
                out.extend_from_slice(aws_lc_rs::digest::digest(hash, &block).as_ref());
            }
            out.truncate(len);
            out
        };
        let with_kdf = |kdf: ck::CK_EC_KDF_TYPE, info: &[u8]| Mechanism {
            ty: ck::CKM_ECDH1_DERIVE as u64,
            parameter: MechanismParameter::Ecdh {
                kdf: kdf as u64,
                shared_data: info.to_vec(),
                public_data: hex(
                    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
                ),
            },
        };
        let sha256 = t
            .derive(with_kdf(ck::CKD_SHA256_KDF, b"abc"), alice, 32)
            .unwrap();
        let expected = x963(&aws_lc_rs::digest::SHA256, b"abc", 32);
        assert_eq!(t.value(sha256), expected, "CKD_SHA256_KDF");
        // Two blocks of SHA-1 for 32 bytes.
        let sha1 = t
            .derive(with_kdf(ck::CKD_SHA1_KDF, b""), alice, 32)
            .unwrap();
        let expected = x963(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, b"", 32);
        assert_eq!(t.value(sha1), expected, "CKD_SHA1_KDF");
        let sha3 = t
            .derive(with_kdf(ck::CKD_SHA3_512_KDF, b"x"), alice, 24)
            .unwrap();
        let expected = x963(&aws_lc_rs::digest::SHA3_512, b"x", 24);
        assert_eq!(t.value(sha3), expected, "CKD_SHA3_512_KDF");
        // The null KDF takes no shared data; SHA3-224 is not offered.
        for (kdf, info) in [
            (ck::CKD_NULL, b"abc".as_slice()),
            (ck::CKD_SHA3_224_KDF, b""),
        ] {
            assert_eq!(
                t.derive(with_kdf(kdf, info), alice, 32),
                Err(Rv::MechanismParamInvalid.code())
            );
        }

        // ECDH on P-256 between two generated pairs agrees.
        let pair = || {
            let Reply::HandlePair(p, s) = t.call(Call::GenerateKeyPair {
                session: t.session,
                mechanism: plain(ck::CKM_EC_KEY_PAIR_GEN),
                public_template: Template(vec![Attribute::bytes(
                    ck::CKA_EC_PARAMS,
                    &hex("06082a8648ce3d030107"),
                )]),
                private_template: Template(vec![Attribute::bool(ck::CKA_DERIVE, true)]),
            }) else {
                panic!()
            };
            let point = match t.call(Call::GetAttributes {
                session: t.session,
                object: p,
                types: vec![ck::CKA_EC_POINT as u64],
            }) {
                Reply::Attributes(mut a) => match a.remove(0) {
                    AttributeAnswer::Value(v) => v,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            (s, point)
        };
        let (a, a_point) = pair();
        let (b, b_point) = pair();
        let ab = t.derive(ecdh(a_point.clone()), b, 32).unwrap();
        let ba = t.derive(ecdh(b_point), a, 32).unwrap();
        assert_eq!(t.value(ab), t.value(ba));
        assert_eq!(
            t.derive(ecdh(vec![4, 1, 2]), a, 32),
            Err(Rv::MechanismParamInvalid.code())
        );

        // RFC 5869 test case 1.
        let ikm = t.secret(ck::CKK_GENERIC_SECRET, &[0x0b; 22]);
        let hkdf = Mechanism {
            ty: ck::CKM_HKDF_DERIVE as u64,
            parameter: MechanismParameter::Hkdf {
                extract: true,
                expand: true,
                prf: ck::CKM_SHA256 as u64,
                salt_type: ck::CKF_HKDF_SALT_DATA as u64,
                salt: hex("000102030405060708090a0b0c"),
                salt_key: 0,
                info: hex("f0f1f2f3f4f5f6f7f8f9"),
            },
        };
        let okm = t.derive(hkdf, ikm, 42).unwrap();
        assert_eq!(t.value(okm), hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"));
        // A base key without CKA_DERIVE cannot derive.
        let no_derive = t.create(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
            Attribute::bytes(ck::CKA_VALUE, &[1; 16]),
        ]);
        let _ = code(t.device.call(
            Some(t.g),
            Call::DigestKey {
                session: t.session,
                key: no_derive,
            },
        ));
        assert_eq!(
            t.derive(plain(ck::CKM_HKDF_DERIVE), no_derive, 16),
            Err(Rv::KeyFunctionNotPermitted.code())
        );
    }
}

#[test]
fn always_authenticate_unique_ids_and_public_key_info() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    prepare(&daemon, transport, "");
    let t = Token::new(&daemon, transport);
    let Reply::HandlePair(public, private) = t.call(Call::GenerateKeyPair {
        session: t.session,
        mechanism: plain(ck::CKM_EC_KEY_PAIR_GEN),
        public_template: Template(vec![Attribute::bytes(
            ck::CKA_EC_PARAMS,
            &hex("06082a8648ce3d030107"),
        )]),
        private_template: Template(vec![Attribute::bool(ck::CKA_ALWAYS_AUTHENTICATE, true)]),
    }) else {
        panic!()
    };
    // Each use of the key needs a context-specific login.
    let init = Call::OperationInit {
        session: t.session,
        operation: Operation::Sign,
        mechanism: plain(ck::CKM_ECDSA_SHA256),
        key: private,
    };
    t.call(init);
    let sign = || Call::OperationSingle {
        session: t.session,
        operation: Operation::Sign,
        data: b"m".to_vec(),
        signature: vec![],
    };
    assert_eq!(
        code(t.device.call(Some(t.g), sign())),
        Rv::UserNotLoggedIn.code()
    );
    // Starting another operation in the session does not lift the wait.
    t.call(Call::OperationInit {
        session: t.session,
        operation: Operation::Digest,
        mechanism: plain(ck::CKM_SHA256),
        key: 0,
    });
    assert_eq!(
        code(t.device.call(Some(t.g), sign())),
        Rv::UserNotLoggedIn.code()
    );
    let login = Call::Login {
        session: t.session,
        user_type: ck::CKU_CONTEXT_SPECIFIC as u64,
        pin: sm_common::pin(sm_common::USER_PIN),
    };
    t.call(login);
    assert!(matches!(t.call(sign()), Reply::Bytes(s) if s.len() == 64));
    // Unique ids: given by the token, distinct, read-only.
    let ids = |object| match t.call(Call::GetAttributes {
        session: t.session,
        object,
        types: vec![ck::CKA_UNIQUE_ID as u64, ck::CKA_PUBLIC_KEY_INFO as u64],
    }) {
        Reply::Attributes(answers) => answers
            .into_iter()
            .map(|a| match a {
                AttributeAnswer::Value(v) => v,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let (a, b) = (ids(public), ids(private));
    assert_eq!(a[0].len(), 32);
    assert_ne!(a[0], b[0]);
    // The public key info is the same DER on both halves, and OpenSSL reads it.
    assert_eq!(a[1], b[1]);
    let file = daemon.dir().join("spki.der");
    std::fs::write(&file, &a[1]).unwrap();
    let parsed = std::process::Command::new(tessera_testkit::tool("openssl"))
        .args(["pkey", "-pubin", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&parsed.stdout).contains("prime256v1"),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let with_id = Call::CreateObject {
        session: t.session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bytes(ck::CKA_UNIQUE_ID, b"mine"),
        ]),
    };
    assert_eq!(
        code(t.device.call(Some(t.g), with_id)),
        Rv::AttributeReadOnly.code()
    );
}

/// The derivations that join values (PKCS#11 3.0 §6.37): the new key's value is the base's
/// and the data's (or the other key's) concatenated, or their XOR (as long as the shorter);
/// and, as the standard says, the new key is sensitive if either source is and not
/// extractable if either is not — else a sensitive value would read straight out of a key
/// made from it (the attacker asks for a non-sensitive result in the template).
#[test]
fn joining_derivations_join_values_and_keep_their_protection() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    prepare(&daemon, transport, "");
    let t = Token::new(&daemon, transport);
    let base = t.secret(ck::CKK_GENERIC_SECRET, b"BASE");
    let other = t.secret(ck::CKK_GENERIC_SECRET, b"other");
    let with_data = |ty: ck::CK_MECHANISM_TYPE, data: &[u8]| Mechanism {
        ty: ty as u64,
        parameter: MechanismParameter::Bytes(data.to_vec()),
    };
    let derived = |mechanism, length| t.value(t.derive(mechanism, base, length).unwrap());
    let data = b"-data";
    assert_eq!(
        derived(with_data(ck::CKM_CONCATENATE_BASE_AND_DATA, data), 9),
        b"BASE-data"
    );
    assert_eq!(
        derived(with_data(ck::CKM_CONCATENATE_DATA_AND_BASE, data), 9),
        b"-dataBASE"
    );
    let xor: Vec<u8> = b"BASE".iter().zip(data).map(|(a, b)| a ^ b).collect();
    assert_eq!(derived(with_data(ck::CKM_XOR_BASE_AND_DATA, data), 4), xor);
    let and_key = Mechanism {
        ty: ck::CKM_CONCATENATE_BASE_AND_KEY as u64,
        parameter: MechanismParameter::Key(other),
    };
    assert_eq!(derived(and_key.clone(), 9), b"BASEother");
    // Cut to CKA_VALUE_LEN.
    assert_eq!(
        derived(with_data(ck::CKM_CONCATENATE_BASE_AND_DATA, data), 6),
        b"BASE-d"
    );

    // The attack: a sensitive key joined with known data (or as the other key), the result
    // asked for non-sensitive (Token::derive's template says CKA_SENSITIVE false).
    let secret = t.create(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_DERIVE, true),
        Attribute::bytes(ck::CKA_VALUE, b"SECRET-marker"),
    ]);
    let through_data = t
        .derive(
            with_data(ck::CKM_CONCATENATE_BASE_AND_DATA, b"x"),
            secret,
            14,
        )
        .unwrap();
    let as_other = Mechanism {
        ty: ck::CKM_CONCATENATE_BASE_AND_KEY as u64,
        parameter: MechanismParameter::Key(secret),
    };
    let through_key = t.derive(as_other, base, 17).unwrap();
    for key in [through_data, through_key] {
        let answer = t.call(Call::GetAttributes {
            session: t.session,
            object: key,
            types: vec![ck::CKA_VALUE as u64, ck::CKA_SENSITIVE as u64],
        });
        let Reply::Attributes(answers) = answer else {
            panic!("{answer:?}")
        };
        assert!(
            matches!(answers[0], AttributeAnswer::Sensitive),
            "the joined value reads out: {:?}",
            answers[0]
        );
        assert!(
            matches!(&answers[1], AttributeAnswer::Value(v) if v == &[1]),
            "{:?}",
            answers[1]
        );
    }
}

/// The legacy mechanisms (crypto/legacy.rs, aws-lc through aws-lc-sys) against published
/// vectors, over the wire: MD5 (RFC 1321), HMAC-MD5 (RFC 2202), three-key and two-key triple
/// DES (SP 800-67), triple-DES CMAC (SP 800-38B D.4), AES-GCM with a 60-byte and a 1-byte IV
/// (the GCM specification's test case 6). Under the `a` flag none is accepted.
#[test]
fn legacy_mechanisms_match_published_vectors() {
    let daemon = Daemon::start();
    prepare(&daemon, Transport::Unix, "");
    let t = Token::new(&daemon, Transport::Unix);
    let md5 = t
        .single(
            Operation::Digest,
            plain(ck::CKM_MD5),
            0,
            b"message digest",
            &[],
        )
        .unwrap();
    assert_eq!(md5, hex("f96b697d7cb7938d525a2f31aaf161d0"));
    let jefe = t.secret(ck::CKK_GENERIC_SECRET, b"Jefe");
    let mac = t
        .single(
            Operation::Sign,
            plain(ck::CKM_MD5_HMAC),
            jefe,
            b"what do ya want for nothing?",
            &[],
        )
        .unwrap();
    assert_eq!(mac, hex("750c783e6ab0b503eaa86e310a5db738"));
    let des3 = t.secret(
        ck::CKK_DES3,
        &hex("0123456789abcdef23456789abcdef01456789abcdef0123"),
    );
    assert_eq!(
        t.single(
            Operation::Encrypt,
            plain(ck::CKM_DES3_ECB),
            des3,
            &hex("5468652071756663"),
            &[]
        )
        .unwrap(),
        hex("a826fd8ce53b855f")
    );
    // A two-key key is K1 K2 K1.
    let des2 = t.secret(ck::CKK_DES2, &hex("0123456789abcdef23456789abcdef01"));
    let des2_as_3 = t.secret(
        ck::CKK_DES3,
        &hex("0123456789abcdef23456789abcdef010123456789abcdef"),
    );
    let cbc_pad = || Mechanism {
        ty: ck::CKM_DES3_CBC_PAD as u64,
        parameter: MechanismParameter::Bytes(vec![7; 8]),
    };
    let sealed = t
        .single(Operation::Encrypt, cbc_pad(), des2, b"eleven byte", &[])
        .unwrap();
    assert_eq!(sealed.len(), 16);
    assert_eq!(
        t.single(
            Operation::Encrypt,
            cbc_pad(),
            des2_as_3,
            b"eleven byte",
            &[]
        )
        .unwrap(),
        sealed
    );
    assert_eq!(
        t.single(Operation::Decrypt, cbc_pad(), des2, &sealed, &[])
            .unwrap(),
        b"eleven byte"
    );
    assert_eq!(
        t.init(Operation::Encrypt, cbc_pad(), jefe),
        Err(Rv::KeyTypeInconsistent.code()),
        "an HMAC key is no DES key"
    );
    let cmac_key = t.secret(
        ck::CKK_DES3,
        &hex("8aa83bf8cbda10620bc1bf19fbb6cd58bc313d4a371ca8b5"),
    );
    assert_eq!(
        t.single(
            Operation::Sign,
            plain(ck::CKM_DES3_CMAC),
            cmac_key,
            &hex("6bc1bee22e409f96"),
            &[]
        )
        .unwrap(),
        hex("8e8f293136283797")
    );
    let aes = t.secret(ck::CKK_AES, &hex("feffe9928665731c6d6a8f9467308308"));
    let gcm = |iv: Vec<u8>, aad: Vec<u8>| Mechanism {
        ty: ck::CKM_AES_GCM as u64,
        parameter: MechanismParameter::Gcm {
            iv,
            aad,
            tag_bits: 128,
        },
    };
    let iv60 = hex(concat!(
        "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728",
        "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b"
    ));
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let plain_text = hex(concat!(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    ));
    let expected = hex(concat!(
        "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7",
        "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
        "619cc5aefffe0bfa462af43c1699d050"
    ));
    assert_eq!(
        t.single(
            Operation::Encrypt,
            gcm(iv60.clone(), aad.clone()),
            aes,
            &plain_text,
            &[]
        )
        .unwrap(),
        expected
    );
    assert_eq!(
        t.single(
            Operation::Decrypt,
            gcm(iv60.clone(), aad.clone()),
            aes,
            &expected,
            &[]
        )
        .unwrap(),
        plain_text
    );
    let one = t
        .single(
            Operation::Encrypt,
            gcm(vec![1], Vec::new()),
            aes,
            b"hello",
            &[],
        )
        .unwrap();
    assert_eq!(
        t.single(Operation::Decrypt, gcm(vec![1], Vec::new()), aes, &one, &[])
            .unwrap(),
        b"hello"
    );

    // FIPS Algorithms Only: none of them, and GCM with 96-bit IVs only (the mechanism is
    // judged before the key, so the old session's key handles serve).
    daemon.admin(Transport::Unix, &["-fa"]);
    let t = Token::new(&daemon, Transport::Unix);
    assert_eq!(
        t.init(Operation::Digest, plain(ck::CKM_MD5), 0),
        Err(Rv::MechanismInvalid.code())
    );
    assert_eq!(
        t.init(Operation::Sign, plain(ck::CKM_MD5_HMAC), jefe),
        Err(Rv::MechanismInvalid.code())
    );
    assert_eq!(
        t.init(Operation::Encrypt, plain(ck::CKM_DES3_ECB), des3),
        Err(Rv::MechanismInvalid.code())
    );
    assert_eq!(
        t.init(Operation::Encrypt, gcm(iv60, aad), aes),
        Err(Rv::MechanismParamInvalid.code())
    );
    let aes = t.secret(ck::CKK_AES, &[7; 16]);
    assert!(t
        .single(
            Operation::Encrypt,
            gcm(vec![1; 12], Vec::new()),
            aes,
            b"data",
            &[]
        )
        .is_ok());
    let list = match t.call(Call::MechanismList { slot: 0 }) {
        Reply::Mechanisms(list) => list,
        other => panic!("{other:?}"),
    };
    for legacy in [
        ck::CKM_MD5,
        ck::CKM_MD5_HMAC,
        ck::CKM_DES2_KEY_GEN,
        ck::CKM_DES3_KEY_GEN,
        ck::CKM_DES3_ECB,
        ck::CKM_DES3_CBC,
        ck::CKM_DES3_CBC_PAD,
        ck::CKM_DES3_CMAC,
        ck::CKM_RSA_X_509,
    ] {
        assert!(
            !list.contains(&(legacy as u64)),
            "{legacy:#x} listed under a"
        );
    }
    assert!(list.contains(&(ck::CKM_AES_GCM as u64)));
    let generated = t.device.call(
        Some(t.g),
        Call::GenerateKey {
            session: t.session,
            mechanism: plain(ck::CKM_DES3_KEY_GEN),
            template: Template(vec![Attribute::bool(ck::CKA_TOKEN, false)]),
        },
    );
    assert_eq!(
        generated.map(|_| ()).map_err(|e| e.rv()),
        Err(Rv::MechanismInvalid.code())
    );
}
