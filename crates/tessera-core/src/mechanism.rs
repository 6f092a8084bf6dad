//! Mechanisms: an open type number plus a typed parameter.
//!
//! The type stays an open `u64` (like rust-cryptoki's `MechanismType`) so that an unknown
//! mechanism reaches the HSM and is refused there with `CKR_MECHANISM_INVALID`. The parameter is
//! decoded from C once, in the PKCS#11 module, into [`MechanismParameter`].

use serde::{Deserialize, Serialize};

/// A mechanism with its parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    /// The `CKM_*` value.
    pub ty: u64,
    /// The decoded parameter.
    pub parameter: MechanismParameter,
}

impl Mechanism {
    /// A mechanism without parameter.
    pub fn plain(ty: u64) -> Self {
        Self {
            ty,
            parameter: MechanismParameter::None,
        }
    }
}

impl MechanismParameter {
    /// Whether `other` is valid wherever this parameter is: the same variant with the same
    /// numbers and byte strings of the same lengths, whatever the bytes of the data that an
    /// operation takes afresh each time (IVs, counter blocks, additional data, OAEP labels,
    /// EdDSA contexts). A parameter of another kind (a derivation's) is the same shape only
    /// when it is equal. An operation's init that the device accepted with one parameter is
    /// accepted with any parameter of the same shape, on the same key.
    pub fn same_shape(&self, other: &MechanismParameter) -> bool {
        use MechanismParameter as P;
        match (self, other) {
            (P::None, P::None) => true,
            (P::Bytes(a), P::Bytes(b)) => a.len() == b.len(),
            (
                P::Gcm {
                    iv: a, tag_bits: x, ..
                },
                P::Gcm {
                    iv: b, tag_bits: y, ..
                },
            ) => a.len() == b.len() && x == y,
            (
                P::Oaep {
                    hash: h1, mgf: m1, ..
                },
                P::Oaep {
                    hash: h2, mgf: m2, ..
                },
            ) => h1 == h2 && m1 == m2,
            (
                P::Ctr {
                    counter_bits: x,
                    block: a,
                },
                P::Ctr {
                    counter_bits: y,
                    block: b,
                },
            ) => x == y && a.len() == b.len(),
            (
                P::Eddsa {
                    prehash: x,
                    context: a,
                },
                P::Eddsa {
                    prehash: y,
                    context: b,
                },
            ) => x == y && a.len() == b.len(),
            (a, b) => a == b,
        }
    }
}

/// The parameter of a mechanism, decoded from its C structure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MechanismParameter {
    /// No parameter (`pParameter` NULL, length 0).
    None,
    /// A byte string parameter (an IV for CBC modes, for instance).
    Bytes(Vec<u8>),
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// The IV.
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: u64,
    },
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        /// The hash mechanism (`CKM_SHA256`, ...).
        hash: u64,
        /// The mask generation function (`CKG_MGF1_SHA256`, ...).
        mgf: u64,
        /// Salt length in bytes.
        salt_len: u64,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep {
        /// The hash mechanism.
        hash: u64,
        /// The mask generation function.
        mgf: u64,
        /// The label (`CKZ_DATA_SPECIFIED` source data), empty for none.
        label: Vec<u8>,
    },
    /// `CK_AES_CTR_PARAMS`.
    Ctr {
        /// Bits of the counter block that form the counter.
        counter_bits: u64,
        /// The initial counter block.
        block: Vec<u8>,
    },
    /// A `CK_MAC_GENERAL_PARAMS` length (HMAC_GENERAL, CMAC_GENERAL).
    MacLength(u64),
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh {
        /// The KDF (`CKD_NULL`, `CKD_SHA256_KDF`, ...).
        kdf: u64,
        /// Shared data for the KDF.
        shared_data: Vec<u8>,
        /// The other party's public value (EC point, or X25519 key).
        public_data: Vec<u8>,
    },
    /// `CK_HKDF_PARAMS`.
    Hkdf {
        /// Run the extract step.
        extract: bool,
        /// Run the expand step.
        expand: bool,
        /// The PRF hash mechanism (`CKM_SHA256`, ...).
        prf: u64,
        /// `CKF_HKDF_SALT_NULL`, `_DATA` or `_KEY`.
        salt_type: u64,
        /// Salt bytes (`_DATA`).
        salt: Vec<u8>,
        /// Salt key handle (`_KEY`).
        salt_key: u64,
        /// Info for the expand step.
        info: Vec<u8>,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        /// Pre-hashed variant (Ed25519ph).
        prehash: bool,
        /// Context string.
        context: Vec<u8>,
    },
    /// A parameter structure that the module does not decode, passed as raw bytes; the HSM
    /// refuses it with `CKR_MECHANISM_PARAM_INVALID` for every mechanism it knows.
    Unknown(Vec<u8>),
    /// `CK_KEY_DERIVATION_STRING_DATA` (`CKM_AES_ECB_ENCRYPT_DATA`, `iv` empty) or
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` (`CKM_AES_CBC_ENCRYPT_DATA`).
    EncryptData {
        /// The CBC IV (16 bytes), empty for ECB.
        iv: Vec<u8>,
        /// The data to encrypt; the ciphertext is the new key's value.
        data: Vec<u8>,
    },
    /// `CK_SP800_108_KDF_PARAMS` (counter and double-pipeline modes) or
    /// `CK_SP800_108_FEEDBACK_KDF_PARAMS` (feedback mode, with its IV).
    Kbkdf {
        /// The PRF mechanism (`CKM_SHA256_HMAC`, `CKM_AES_CMAC`, ...).
        prf: u64,
        /// The segments of the PRF input, in order.
        data: Vec<KbkdfData>,
        /// Feedback mode's IV (empty for none, and in the other modes).
        iv: Vec<u8>,
        /// Templates of the additional keys, derived from the key material after the first.
        additional: Vec<crate::Template>,
    },
    /// A `CK_OBJECT_HANDLE`: the other key of `CKM_CONCATENATE_BASE_AND_KEY`.
    Key(u64),
    /// `CK_EXTRACT_PARAMS`: the bit of the base key where `CKM_EXTRACT_KEY_FROM_KEY` starts.
    BitIndex(u64),
    /// `CK_SIGN_ADDITIONAL_CONTEXT` (PKCS#11 3.2, `CKM_ML_DSA`): hedged or deterministic
    /// signing, and the context string.
    SignContext {
        /// `CKH_HEDGE_PREFERRED`, `CKH_HEDGE_REQUIRED` or `CKH_DETERMINISTIC_REQUIRED`.
        hedge: u64,
        /// The context string (at most 255 bytes).
        context: Vec<u8>,
    },
    /// `CK_HASH_SIGN_ADDITIONAL_CONTEXT` (PKCS#11 3.2, `CKM_HASH_ML_DSA`): as `SignContext`,
    /// and the hash that made the data signed.
    HashSignContext {
        /// `CKH_HEDGE_PREFERRED`, `CKH_HEDGE_REQUIRED` or `CKH_DETERMINISTIC_REQUIRED`.
        hedge: u64,
        /// The context string (at most 255 bytes).
        context: Vec<u8>,
        /// The hash mechanism (`CKM_SHA256`, ...).
        hash: u64,
    },
}

/// How a counter or a length is written into the PRF input of SP 800-108
/// (`CK_SP800_108_COUNTER_FORMAT`, `CK_SP800_108_DKM_LENGTH_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbkdfFormat {
    /// Little-endian rather than big-endian.
    pub little_endian: bool,
    /// Width in bits.
    pub bits: u64,
}

/// One segment of the PRF input of SP 800-108 (`CK_PRF_DATA_PARAM`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KbkdfData {
    /// `CK_SP800_108_ITERATION_VARIABLE`: the counter (counter mode, which needs its format) or
    /// the chaining value (feedback and double-pipeline modes, no format).
    Iteration(Option<KbkdfFormat>),
    /// `CK_SP800_108_OPTIONAL_COUNTER` (feedback and double-pipeline modes).
    Counter(KbkdfFormat),
    /// `CK_SP800_108_DKM_LENGTH`: the length in bits of the derived key material.
    DkmLength {
        /// `CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS` or `_SUM_OF_SEGMENTS`.
        method: u64,
        /// How it is written.
        format: KbkdfFormat,
    },
    /// `CK_SP800_108_BYTE_ARRAY`: fixed bytes (label, separator, context).
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::MechanismParameter as P;

    #[test]
    fn shapes_ignore_the_data_but_not_its_lengths_or_numbers() {
        let gcm = |iv: &[u8], aad: &[u8], tag_bits| P::Gcm {
            iv: iv.to_vec(),
            aad: aad.to_vec(),
            tag_bits,
        };
        assert!(gcm(&[1; 12], b"", 128).same_shape(&gcm(&[2; 12], b"header", 128)));
        assert!(!gcm(&[1; 12], b"", 128).same_shape(&gcm(&[1; 16], b"", 128)));
        assert!(!gcm(&[1; 12], b"", 128).same_shape(&gcm(&[1; 12], b"", 96)));
        assert!(P::Bytes(vec![0; 16]).same_shape(&P::Bytes(vec![9; 16])));
        assert!(!P::Bytes(vec![0; 16]).same_shape(&P::Bytes(vec![0; 15])));
        assert!(!P::Bytes(Vec::new()).same_shape(&P::None));
        let ctr = |bits, block: &[u8]| P::Ctr {
            counter_bits: bits,
            block: block.to_vec(),
        };
        assert!(ctr(32, &[0; 16]).same_shape(&ctr(32, &[5; 16])));
        assert!(!ctr(32, &[0; 16]).same_shape(&ctr(33, &[0; 16])));
        let pss = |salt_len| P::Pss {
            hash: 0x250,
            mgf: 2,
            salt_len,
        };
        assert!(pss(32).same_shape(&pss(32)));
        assert!(!pss(32).same_shape(&pss(33)), "numbers must be equal");
        let oaep = |label: &[u8]| P::Oaep {
            hash: 0x250,
            mgf: 2,
            label: label.to_vec(),
        };
        assert!(oaep(b"").same_shape(&oaep(b"label")));
        let eddsa = |context: &[u8]| P::Eddsa {
            prehash: false,
            context: context.to_vec(),
        };
        assert!(!eddsa(b"").same_shape(&eddsa(b"c")));
        assert!(P::Key(3).same_shape(&P::Key(3)));
        assert!(!P::Key(3).same_shape(&P::Key(4)));
    }
}
