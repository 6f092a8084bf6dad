//! Mechanisms: key generation and the state machines of encrypt, decrypt, digest, sign and
//! verify, all on `aws-lc-rs`.
//!
//! Signing mechanisms that hash (`CKM_ECDSA_SHA256`, `CKM_SHA256_RSA_PKCS`, ...) hash
//! incrementally and sign the digest; the raw ones (`CKM_ECDSA`, `CKM_RSA_PKCS`) take the digest
//! (or `DigestInfo`) from the caller. AES in the block modes streams ([`stream`]): each update
//! returns the output of the whole blocks it can. The other ciphers (AES-GCM, RSA) gather
//! their input and produce all output at the final call, which PKCS#11 allows (an update may
//! return zero bytes; an AEAD decryption releases no plaintext before the tag is checked).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest::{self, Context, Digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey};
use tessera_core::{ck, der, Mechanism, MechanismParameter, Rv, SecretBytes};

pub(crate) mod edwards;
mod keys;
pub(crate) mod pq;
// The one module with `unsafe` code: aws-lc's legacy mechanisms.
#[allow(unsafe_code)]
pub(crate) mod legacy;
pub(crate) use keys::{forget_parsed_keys, ml_dsa_private};
pub(crate) mod mac;
mod stream;

use stream::{BlockStream, Mode, Piece};

pub use keys::{
    bit_len, check_curve, check_ec_private, check_rsa_private, generate_ec, generate_rsa,
    public_key_info, RSA_PRIVATE_PARTS,
};
use keys::{
    ec_point, ec_private_key, finish_rsa, rsa_private_key, rsa_private_pkcs8, rsa_public_key,
    rsa_public_spki, Curve,
};

/// What the algorithms read of a key object: its attributes by type. The object model
/// (`crate::object::Attributes`) provides it; the algorithms import nothing of the object model
/// (keys and data in, bytes out).
pub(crate) trait Key: Send + Sync {
    /// The value of attribute `ty`, if the key has it.
    fn get(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<&[u8]>;
    /// A boolean attribute (`CKA_SIGN`, ...); false when absent.
    fn flag(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> bool;
    /// `CKA_CLASS`.
    fn class(&self) -> u64;
    /// `CKA_KEY_TYPE`.
    fn key_type(&self) -> u64;
    /// A copy the algorithm keeps (EdDSA holds its key until the data is complete).
    fn owned(&self) -> Box<dyn Key>;
}

/// A generated key pair: (public attributes, private attributes), key material only. The
/// private values are wiped if dropped before they are moved into the key's attributes.
pub type GeneratedPair = (
    Vec<(ck::CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    Vec<(ck::CK_ATTRIBUTE_TYPE, zeroize::Zeroizing<Vec<u8>>)>,
);

/// The result of finishing an operation.
pub enum Output {
    /// Public output (ciphertext, signature, digest).
    Bytes(Vec<u8>),
    /// Secret output (plaintext).
    Secret(SecretBytes),
    /// A verification that passed.
    Verified,
}

/// Fills a buffer with random bytes.
pub fn random(len: usize) -> Result<Vec<u8>, Rv> {
    let mut out = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Rv::FunctionFailed)?;
    Ok(out)
}

/// Fits a caller's hash to the curve's order size as ECDSA does: keep the leftmost bytes of a
/// longer one, left-pad a shorter one with zeros (the same integer).
fn ecdsa_digest(curve: &Curve, hash: &[u8]) -> Result<Digest, Rv> {
    let len = curve.digest.output_len();
    let fitted: Vec<u8> = if hash.len() >= len {
        if curve.bytes != len && hash.len() > len {
            return Err(Rv::DataLenRange);
        }
        hash[..len].to_vec()
    } else {
        let mut padded = vec![0u8; len - hash.len()];
        padded.extend_from_slice(hash);
        padded
    };
    if hash.is_empty() {
        return Err(Rv::DataLenRange);
    }
    Digest::import_less_safe(&fitted, curve.digest).map_err(|_| Rv::DataLenRange)
}

pub(crate) fn digest_algorithm(mechanism: u64) -> Option<&'static digest::Algorithm> {
    match mechanism as ck::CK_MECHANISM_TYPE {
        ck::CKM_SHA_1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        ck::CKM_SHA224 => Some(&digest::SHA224),
        ck::CKM_SHA3_256 => Some(&digest::SHA3_256),
        ck::CKM_SHA3_384 => Some(&digest::SHA3_384),
        ck::CKM_SHA3_512 => Some(&digest::SHA3_512),
        ck::CKM_SHA256 => Some(&digest::SHA256),
        ck::CKM_SHA384 => Some(&digest::SHA384),
        ck::CKM_SHA512 => Some(&digest::SHA512),
        _ => None,
    }
}

const DIGEST_INFO: &[(&[u8], &digest::Algorithm)] = &[
    (
        &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        &digest::SHA256,
    ),
    (
        &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        &digest::SHA384,
    ),
    (
        &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
        &digest::SHA512,
    ),
];

/// Parses the `DigestInfo` that `CKM_RSA_PKCS` signs. Only SHA-2 digests are accepted: raw
/// PKCS#1 v1.5 signing of arbitrary data is not offered.
fn parse_digest_info(data: &[u8]) -> Result<Digest, Rv> {
    DIGEST_INFO
        .iter()
        .find_map(|(prefix, algorithm)| {
            data.strip_prefix(*prefix)
                .and_then(|hash| Digest::import_less_safe(hash, algorithm).ok())
        })
        .ok_or(Rv::DataInvalid)
}

#[derive(Clone, Copy)]
enum RsaScheme {
    Pkcs1,
    Pss,
}

fn rsa_encoding(
    scheme: RsaScheme,
    algorithm: &'static digest::Algorithm,
) -> Result<&'static dyn signature::RsaEncoding, Rv> {
    let id = algorithm.output_len();
    Ok(match (scheme, id) {
        (RsaScheme::Pkcs1, 32) => &signature::RSA_PKCS1_SHA256,
        (RsaScheme::Pkcs1, 48) => &signature::RSA_PKCS1_SHA384,
        (RsaScheme::Pkcs1, 64) => &signature::RSA_PKCS1_SHA512,
        (RsaScheme::Pss, 32) => &signature::RSA_PSS_SHA256,
        (RsaScheme::Pss, 48) => &signature::RSA_PSS_SHA384,
        (RsaScheme::Pss, 64) => &signature::RSA_PSS_SHA512,
        _ => return Err(Rv::MechanismInvalid),
    })
}

fn rsa_verification(
    scheme: RsaScheme,
    algorithm: &'static digest::Algorithm,
) -> Result<&'static signature::RsaParameters, Rv> {
    Ok(match (scheme, algorithm.output_len()) {
        (RsaScheme::Pkcs1, 32) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (RsaScheme::Pkcs1, 48) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (RsaScheme::Pkcs1, 64) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (RsaScheme::Pss, 32) => &signature::RSA_PSS_2048_8192_SHA256,
        (RsaScheme::Pss, 48) => &signature::RSA_PSS_2048_8192_SHA384,
        (RsaScheme::Pss, 64) => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return Err(Rv::MechanismInvalid),
    })
}

/// Checks `CK_RSA_PKCS_PSS_PARAMS`: the hash must match, MGF1 with the same hash, salt as
/// long as the hash (what the underlying library implements).
fn pss_hash(
    parameter: &MechanismParameter,
    expected: Option<u64>,
) -> Result<&'static digest::Algorithm, Rv> {
    let MechanismParameter::Pss {
        hash,
        mgf,
        salt_len,
    } = parameter
    else {
        return Err(Rv::MechanismParamInvalid);
    };
    if expected.is_some_and(|e| e != *hash) {
        return Err(Rv::MechanismParamInvalid);
    }
    let (algorithm, expected_mgf) = match *hash as ck::CK_MECHANISM_TYPE {
        ck::CKM_SHA256 => (&digest::SHA256, ck::CKG_MGF1_SHA256),
        ck::CKM_SHA384 => (&digest::SHA384, ck::CKG_MGF1_SHA384),
        ck::CKM_SHA512 => (&digest::SHA512, ck::CKG_MGF1_SHA512),
        _ => return Err(Rv::MechanismParamInvalid),
    };
    if *mgf != expected_mgf as u64 || *salt_len != algorithm.output_len() as u64 {
        return Err(Rv::MechanismParamInvalid);
    }
    Ok(algorithm)
}

enum SignKey {
    Ec(std::sync::Arc<EcdsaKeyPair>, &'static Curve),
    Rsa(std::sync::Arc<RsaKeyPair>, RsaScheme),
    EcPublic(Vec<u8>, &'static Curve),
    RsaPublic(Vec<u8>, RsaScheme),
    /// An RSA key below 2048 bits (legacy module): private to sign, public to verify (true).
    SmallRsa(std::sync::Arc<legacy::RawRsa>, RsaScheme, bool),
}

/// Checks that `key` is an RSA key of the class an operation needs (private when `private`)
/// that allows `usage`.
fn rsa_key_for(key: &dyn Key, private: bool, usage: ck::CK_ATTRIBUTE_TYPE) -> Result<(), Rv> {
    let class = if private {
        ck::CKO_PRIVATE_KEY
    } else {
        ck::CKO_PUBLIC_KEY
    };
    if key.class() != class as u64 || key.key_type() != ck::CKK_RSA as u64 {
        return Err(Rv::KeyTypeInconsistent);
    }
    if !key.flag(usage) {
        return Err(Rv::KeyFunctionNotPermitted);
    }
    Ok(())
}

/// Whether an RSA key's modulus is below 2048 bits: aws-lc-rs takes it not, the legacy
/// module does (from 1024 bits, which key generation and import enforce).
pub(crate) fn small_rsa(key: &dyn Key) -> bool {
    key.key_type() == ck::CKK_RSA as u64
        && key
            .get(ck::CKA_MODULUS)
            .is_some_and(|modulus| bit_len(modulus) < 2048)
}

/// A small RSA key (see [`small_rsa`]) for the legacy module: the private key when `private`.
fn small_rsa_key(key: &dyn Key, private: bool) -> Result<std::sync::Arc<legacy::RawRsa>, Rv> {
    if private {
        keys::raw_rsa_private(key)
    } else {
        Ok(std::sync::Arc::new(legacy::RawRsa::public(
            &rsa_public_key(key)?,
        )?))
    }
}

/// The legacy module's name of a SHA-2 digest algorithm, and its DigestInfo prefix.
fn small_rsa_hash(
    algorithm: &'static digest::Algorithm,
) -> Result<(legacy::Hash, &'static [u8]), Rv> {
    let hash = match algorithm.output_len() {
        32 => legacy::Hash::Sha256,
        48 => legacy::Hash::Sha384,
        64 => legacy::Hash::Sha512,
        _ => return Err(Rv::MechanismInvalid),
    };
    let prefix = DIGEST_INFO
        .iter()
        .find(|(_, a)| *a == algorithm)
        .map(|(prefix, _)| *prefix)
        .ok_or(Rv::MechanismInvalid)?;
    Ok((hash, prefix))
}

/// Accumulated input: a running hash, or the raw bytes for mechanisms that take a digest.
enum Input {
    Hashing(Context),
    Raw(Vec<u8>, Option<&'static digest::Algorithm>),
}

impl Input {
    fn update(&mut self, data: &[u8]) -> Result<(), Rv> {
        match self {
            Input::Hashing(context) => context.update(data),
            Input::Raw(buffer, _) => {
                if buffer.len() + data.len() > 1 << 20 {
                    return Err(Rv::DataLenRange);
                }
                buffer.extend_from_slice(data)
            }
        }
        Ok(())
    }
}

enum OaepCipher {
    Encrypt(aws_lc_rs::rsa::OaepPublicEncryptingKey),
    Decrypt(aws_lc_rs::rsa::OaepPrivateDecryptingKey),
}

enum RsaCipher {
    Encrypt(aws_lc_rs::rsa::Pkcs1PublicEncryptingKey),
    Decrypt(aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey),
    /// A key below 2048 bits (legacy module): encryption with the public key, decryption with
    /// the private one.
    Small(std::sync::Arc<legacy::RawRsa>, bool),
}

enum Inner {
    Digest(Context),
    Mac {
        mac: Box<mac::Mac>,
        verify: bool,
    },
    Eddsa {
        key: Box<dyn Key>,
        data: Vec<u8>,
        verify: bool,
        /// Ed25519ctx or Ed25519ph (legacy module); plain Ed25519 when `None`.
        variant: Option<legacy::Ed25519Variant>,
    },
    /// ML-DSA (FIPS 204): the message is gathered, then signed or verified whole.
    MlDsa {
        key: Box<dyn Key>,
        data: Vec<u8>,
        verify: bool,
        /// A context string or deterministic signing, or HashML-DSA (legacy module); plain
        /// hedged ML-DSA when `None`.
        variant: Option<legacy::MlDsaVariant>,
        /// HashML-DSA's pre-hash (boxed: a hash context is large, and every frame that holds
        /// an operation would grow by it, below what the daemon's stack scrub reaches).
        hashing: Option<Box<pq::Hashing>>,
    },
    Oaep {
        cipher: OaepCipher,
        algorithm: &'static aws_lc_rs::rsa::OaepAlgorithm,
        label: Vec<u8>,
        data: SecretBytes,
    },
    Rsa {
        cipher: RsaCipher,
        data: SecretBytes,
    },
    Signature {
        key: SignKey,
        input: Input,
    },
    /// AES in a block mode (ECB, CBC, CBC-PAD, CTR).
    Stream(BlockStream),
    /// MD5 (legacy).
    Md5(legacy::EvpDigest),
    /// Triple DES in a block mode (legacy); whether it encrypts.
    Des3(legacy::Des3, bool),
    /// Raw RSA, and PKCS #1 v1.5 signatures of the data as given (legacy).
    RawRsa {
        key: std::sync::Arc<legacy::RawRsa>,
        use_: RawUse,
        data: SecretBytes,
    },
    Gcm {
        key: SecretBytes,
        iv: Vec<u8>,
        aad: Vec<u8>,
        tag_len: usize,
        encrypt: bool,
        data: SecretBytes,
    },
}

/// What a raw RSA operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawUse {
    /// `CKM_RSA_PKCS` signature: block type 1 padding of the data as given.
    SignPkcs1,
    /// `CKM_RSA_PKCS` verification.
    VerifyPkcs1,
    /// `CKM_RSA_X_509` signature or decryption: the private operation.
    Private,
    /// `CKM_RSA_X_509` verification: the public operation, compared with the data.
    VerifyX509,
    /// `CKM_RSA_X_509` encryption: the public operation.
    Public,
}

/// Whether `key` is a triple-DES secret key (`CKK_DES2` of 16 bytes, `CKK_DES3` of 24).
pub(crate) fn is_des3(key: &dyn Key) -> bool {
    let length = key.get(ck::CKA_VALUE).map_or(0, <[u8]>::len);
    key.class() == ck::CKO_SECRET_KEY as u64
        && ((key.key_type() == ck::CKK_DES2 as u64 && length == 16)
            || (key.key_type() == ck::CKK_DES3 as u64 && length == 24))
}

/// An active operation of a session.
pub struct ActiveOperation {
    inner: Inner,
}

/// The largest input a cipher operation accumulates (a 16 MiB frame holds it with room).
const MAX_CIPHER_INPUT: usize = 8 << 20;

impl ActiveOperation {
    /// Whether the call that continues this operation with `more` bytes of input is light: no
    /// RSA, and at most `limit` bytes to process at once (what the operation gathered so far
    /// and the new input; a running hash or MAC has gathered nothing).
    pub fn is_light(&self, more: usize, limit: usize) -> bool {
        let gathered = match &self.inner {
            Inner::Oaep { .. } | Inner::Rsa { .. } => return false,
            Inner::Signature {
                key: SignKey::Rsa(..) | SignKey::RsaPublic(..) | SignKey::SmallRsa(..),
                ..
            } => return false,
            Inner::Signature {
                input: Input::Raw(buffer, _),
                ..
            } => buffer.len(),
            Inner::Signature { .. } | Inner::Digest(_) | Inner::Mac { .. } => 0,
            // ML-DSA costs about what ECDSA P-384 does (about 90 us to sign ML-DSA-65 here).
            Inner::Eddsa { data, .. } | Inner::MlDsa { data, .. } => data.len(),
            Inner::Gcm { data, .. } => data.len(),
            Inner::Stream(stream) => stream.held(),
            Inner::Md5(_) | Inner::Des3(..) => 0,
            Inner::RawRsa { .. } => return false,
        };
        gathered.saturating_add(more) <= limit
    }

    /// Starts a digest.
    pub fn digest(mechanism: &Mechanism) -> Result<ActiveOperation, Rv> {
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        if mechanism.ty == ck::CKM_MD5 as u64 {
            return Ok(ActiveOperation {
                inner: Inner::Md5(legacy::EvpDigest::md5()?),
            });
        }
        let algorithm = digest_algorithm(mechanism.ty).ok_or(Rv::MechanismInvalid)?;
        Ok(ActiveOperation {
            inner: Inner::Digest(Context::new(algorithm)),
        })
    }

    /// Starts a signature (`verify` false) or a verification with `key`.
    pub fn signature(
        mechanism: &Mechanism,
        key: &dyn Key,
        verify: bool,
    ) -> Result<ActiveOperation, Rv> {
        let m = mechanism.ty as ck::CK_MECHANISM_TYPE;
        if mac::is_mac(mechanism.ty) {
            let usage = if verify { ck::CKA_VERIFY } else { ck::CKA_SIGN };
            let mac = mac::Mac::new(mechanism, key)?;
            if !key.flag(usage) {
                return Err(Rv::KeyFunctionNotPermitted);
            }
            return Ok(ActiveOperation {
                inner: Inner::Mac {
                    mac: Box::new(mac),
                    verify,
                },
            });
        }
        if m == ck::CKM_EDDSA {
            let variant = match &mechanism.parameter {
                MechanismParameter::None => None,
                MechanismParameter::Eddsa {
                    prehash: false,
                    context,
                } if context.is_empty() => None,
                MechanismParameter::Eddsa { prehash, context } => {
                    Some(legacy::Ed25519Variant::new(*prehash, context)?)
                }
                _ => return Err(Rv::MechanismParamInvalid),
            };
            let ed25519 = edwards::is_ed25519(key.get(ck::CKA_EC_PARAMS));
            signing_key(key, verify, ck::CKK_EC_EDWARDS, ed25519)?;
            return Ok(ActiveOperation {
                inner: Inner::Eddsa {
                    key: key.owned(),
                    data: Vec::new(),
                    verify,
                    variant,
                },
            });
        }
        let pre_hash = match (m, &mechanism.parameter) {
            (ck::CKM_HASH_ML_DSA, MechanismParameter::HashSignContext { hash, .. }) => {
                Some(pq::pre_hash_of_hash(*hash).ok_or(Rv::MechanismParamInvalid)?)
            }
            (ck::CKM_HASH_ML_DSA, _) => return Err(Rv::MechanismParamInvalid),
            _ => pq::pre_hash_of_mechanism(mechanism.ty),
        };
        if m == ck::CKM_ML_DSA || pre_hash.is_some() {
            // CK_SIGN_ADDITIONAL_CONTEXT: hedged signing (FIPS 204's default) with an empty
            // context through aws-lc-rs; a context string or deterministic signing through
            // aws-lc's own functions (legacy module).
            let (hedge, context) = match &mechanism.parameter {
                MechanismParameter::None => (ck::CKH_HEDGE_PREFERRED as u64, &[][..]),
                MechanismParameter::SignContext { hedge, context }
                | MechanismParameter::HashSignContext { hedge, context, .. } => {
                    (*hedge, &context[..])
                }
                _ => return Err(Rv::MechanismParamInvalid),
            };
            let deterministic = match hedge as ck::CK_ULONG {
                ck::CKH_HEDGE_PREFERRED | ck::CKH_HEDGE_REQUIRED => false,
                ck::CKH_DETERMINISTIC_REQUIRED => true,
                _ => return Err(Rv::MechanismParamInvalid),
            };
            let (variant, hashing) = match &pre_hash {
                Some(pre_hash) => (
                    Some(legacy::MlDsaVariant::prehashed(
                        deterministic,
                        context,
                        &pre_hash.oid,
                    )?),
                    Some(Box::new(match m {
                        ck::CKM_HASH_ML_DSA => pq::Hashing::Given(pre_hash.len),
                        _ => pq::Hashing::running(pre_hash)?,
                    })),
                ),
                None if deterministic || !context.is_empty() => (
                    Some(legacy::MlDsaVariant::new(deterministic, context)?),
                    None,
                ),
                None => (None, None),
            };
            signing_key(key, verify, ck::CKK_ML_DSA, true)?;
            return Ok(ActiveOperation {
                inner: Inner::MlDsa {
                    key: key.owned(),
                    data: Vec::new(),
                    verify,
                    variant,
                    hashing,
                },
            });
        }
        if m == ck::CKM_RSA_PKCS || m == ck::CKM_RSA_X_509 {
            let use_ = match (m == ck::CKM_RSA_PKCS, verify) {
                (true, false) => RawUse::SignPkcs1,
                (true, true) => RawUse::VerifyPkcs1,
                (false, false) => RawUse::Private,
                (false, true) => RawUse::VerifyX509,
            };
            let usage = if verify { ck::CKA_VERIFY } else { ck::CKA_SIGN };
            return Self::raw_rsa(mechanism, key, use_, usage);
        }
        let expected_class = if verify {
            ck::CKO_PUBLIC_KEY
        } else {
            ck::CKO_PRIVATE_KEY
        };
        let usage = if verify { ck::CKA_VERIFY } else { ck::CKA_SIGN };
        let no_parameter = || match mechanism.parameter {
            MechanismParameter::None => Ok(()),
            _ => Err(Rv::MechanismParamInvalid),
        };
        let (key_type, input, scheme) = match m {
            ck::CKM_ECDSA => (ck::CKK_EC, Input::Raw(Vec::new(), None), None),
            ck::CKM_ECDSA_SHA1 => (
                ck::CKK_EC,
                Input::Hashing(Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY)),
                None,
            ),
            ck::CKM_ECDSA_SHA224 => (
                ck::CKK_EC,
                Input::Hashing(Context::new(&digest::SHA224)),
                None,
            ),
            ck::CKM_ECDSA_SHA256 => (
                ck::CKK_EC,
                Input::Hashing(Context::new(&digest::SHA256)),
                None,
            ),
            ck::CKM_ECDSA_SHA384 => (
                ck::CKK_EC,
                Input::Hashing(Context::new(&digest::SHA384)),
                None,
            ),
            ck::CKM_ECDSA_SHA512 => (
                ck::CKK_EC,
                Input::Hashing(Context::new(&digest::SHA512)),
                None,
            ),
            ck::CKM_SHA256_RSA_PKCS => (
                ck::CKK_RSA,
                Input::Hashing(Context::new(&digest::SHA256)),
                Some(RsaScheme::Pkcs1),
            ),
            ck::CKM_SHA384_RSA_PKCS => (
                ck::CKK_RSA,
                Input::Hashing(Context::new(&digest::SHA384)),
                Some(RsaScheme::Pkcs1),
            ),
            ck::CKM_SHA512_RSA_PKCS => (
                ck::CKK_RSA,
                Input::Hashing(Context::new(&digest::SHA512)),
                Some(RsaScheme::Pkcs1),
            ),
            ck::CKM_RSA_PKCS_PSS => {
                let algorithm = pss_hash(&mechanism.parameter, None)?;
                (
                    ck::CKK_RSA,
                    Input::Raw(Vec::new(), Some(algorithm)),
                    Some(RsaScheme::Pss),
                )
            }
            ck::CKM_SHA256_RSA_PKCS_PSS
            | ck::CKM_SHA384_RSA_PKCS_PSS
            | ck::CKM_SHA512_RSA_PKCS_PSS => {
                let hash = match m {
                    ck::CKM_SHA256_RSA_PKCS_PSS => ck::CKM_SHA256,
                    ck::CKM_SHA384_RSA_PKCS_PSS => ck::CKM_SHA384,
                    _ => ck::CKM_SHA512,
                };
                let algorithm = pss_hash(&mechanism.parameter, Some(hash as u64))?;
                (
                    ck::CKK_RSA,
                    Input::Hashing(Context::new(algorithm)),
                    Some(RsaScheme::Pss),
                )
            }
            _ => return Err(Rv::MechanismInvalid),
        };
        if !matches!(
            m,
            ck::CKM_RSA_PKCS_PSS
                | ck::CKM_SHA256_RSA_PKCS_PSS
                | ck::CKM_SHA384_RSA_PKCS_PSS
                | ck::CKM_SHA512_RSA_PKCS_PSS
        ) {
            no_parameter()?;
        }
        if key.class() != expected_class as u64 || key.key_type() != key_type as u64 {
            return Err(Rv::KeyTypeInconsistent);
        }
        if !key.flag(usage) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        let key = match (scheme, verify) {
            (None, false) => {
                let (pair, curve) = ec_private_key(key)?;
                SignKey::Ec(pair, curve)
            }
            (None, true) => {
                let (point, curve) = ec_point(key)?;
                SignKey::EcPublic(point, curve)
            }
            (Some(scheme), verify) if small_rsa(key) => {
                SignKey::SmallRsa(small_rsa_key(key, !verify)?, scheme, verify)
            }
            (Some(scheme), false) => SignKey::Rsa(rsa_private_key(key)?, scheme),
            (Some(scheme), true) => SignKey::RsaPublic(rsa_public_key(key)?, scheme),
        };
        Ok(ActiveOperation {
            inner: Inner::Signature { key, input },
        })
    }

    /// Starts an encryption or decryption: AES with a secret key, or RSA PKCS#1 v1.5 with an
    /// RSA key (decryption only when `weak_allowed`: it is a padding oracle).
    pub fn cipher(
        mechanism: &Mechanism,
        key: &dyn Key,
        encrypt: bool,
        weak_allowed: bool,
    ) -> Result<ActiveOperation, Rv> {
        let usage = if encrypt {
            ck::CKA_ENCRYPT
        } else {
            ck::CKA_DECRYPT
        };
        if mechanism.ty == ck::CKM_RSA_PKCS as u64 {
            return Self::rsa_cipher(mechanism, key, encrypt, weak_allowed, usage);
        }
        if mechanism.ty == ck::CKM_RSA_PKCS_OAEP as u64 {
            return Self::oaep(mechanism, key, encrypt, usage);
        }
        if mechanism.ty == ck::CKM_RSA_X_509 as u64 {
            let use_ = if encrypt {
                RawUse::Public
            } else {
                RawUse::Private
            };
            return Self::raw_rsa(mechanism, key, use_, usage);
        }
        if let Some(mode) = des3_mode(mechanism.ty) {
            return Self::des3(mechanism, mode, key, encrypt, usage);
        }
        let block = |bytes: &Vec<u8>| -> Result<[u8; 16], Rv> {
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| Rv::MechanismParamInvalid)
        };
        // A block mode with its IV or first counter block, or GCM's parameters.
        let mode = match (mechanism.ty as ck::CK_MECHANISM_TYPE, &mechanism.parameter) {
            (ck::CKM_AES_CBC_PAD, MechanismParameter::Bytes(iv)) => Ok((Mode::CbcPad, block(iv)?)),
            (ck::CKM_AES_GCM, MechanismParameter::Gcm { iv, aad, tag_bits }) => {
                // IVs of 1 to 256 bytes (96 bits is the fast path; other lengths derive the
                // counter from GHASH of the IV, SP 800-38D §7.1, through the legacy module);
                // tags of 96 to 128 bits in whole bytes (SP 800-38D §5.2.1.2).
                if !(1..=MAX_GCM_IV).contains(&iv.len())
                    || !(96..=128).contains(tag_bits)
                    || !tag_bits.is_multiple_of(8)
                {
                    return Err(Rv::MechanismParamInvalid);
                }
                Err((iv.clone(), aad.clone(), (*tag_bits / 8) as usize))
            }
            (ck::CKM_AES_ECB, MechanismParameter::None) => Ok((Mode::Ecb, [0; 16])),
            (ck::CKM_AES_CBC, MechanismParameter::Bytes(iv)) => Ok((Mode::Cbc, block(iv)?)),
            // The low `counter_bits` bits of the block are the counter; data that would make it
            // wrap (and so repeat the key stream) is refused.
            (
                ck::CKM_AES_CTR,
                MechanismParameter::Ctr {
                    counter_bits,
                    block: counter,
                },
            ) => {
                if !(1..=128).contains(counter_bits) {
                    return Err(Rv::MechanismParamInvalid);
                }
                Ok((Mode::Ctr(*counter_bits as u32), block(counter)?))
            }
            (
                ck::CKM_AES_CBC_PAD
                | ck::CKM_AES_GCM
                | ck::CKM_AES_ECB
                | ck::CKM_AES_CBC
                | ck::CKM_AES_CTR,
                _,
            ) => return Err(Rv::MechanismParamInvalid),
            _ => return Err(Rv::MechanismInvalid),
        };
        if key.class() != ck::CKO_SECRET_KEY as u64 || key.key_type() != ck::CKK_AES as u64 {
            return Err(Rv::KeyTypeInconsistent);
        }
        if !key.flag(usage) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        let value = key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
        if !matches!(value.len(), 16 | 24 | 32) {
            return Err(Rv::KeyTypeInconsistent);
        }
        let inner = match mode {
            Ok((mode, iv)) => Inner::Stream(BlockStream::new(value, mode, encrypt, iv)),
            Err((iv, aad, tag_len)) => Inner::Gcm {
                key: SecretBytes::from_slice(value),
                iv,
                aad,
                tag_len,
                encrypt,
                // The data goes through the cipher in its own buffer: kept out of the locked
                // slots (it is the application's data, not key material), it is encrypted or
                // decrypted where it lies instead of being copied out of one first.
                data: SecretBytes::unlocked(),
            },
        };
        Ok(ActiveOperation { inner })
    }

    /// Triple DES (`CKM_DES3_ECB`, `_CBC`, `_CBC_PAD`) with a `CKK_DES2` or `CKK_DES3` key.
    fn des3(
        mechanism: &Mechanism,
        mode: legacy::DesMode,
        key: &dyn Key,
        encrypt: bool,
        usage: ck::CK_ATTRIBUTE_TYPE,
    ) -> Result<ActiveOperation, Rv> {
        let iv = match (mode, &mechanism.parameter) {
            (legacy::DesMode::Ecb, MechanismParameter::None) => [0; legacy::DES_BLOCK],
            (legacy::DesMode::Cbc | legacy::DesMode::CbcPad, MechanismParameter::Bytes(iv)) => iv
                .as_slice()
                .try_into()
                .map_err(|_| Rv::MechanismParamInvalid)?,
            _ => return Err(Rv::MechanismParamInvalid),
        };
        if !is_des3(key) {
            return Err(Rv::KeyTypeInconsistent);
        }
        if !key.flag(usage) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        let value = key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
        Ok(ActiveOperation {
            inner: Inner::Des3(legacy::Des3::new(value, mode, encrypt, iv)?, encrypt),
        })
    }

    /// Raw RSA (`CKM_RSA_X_509`) and `CKM_RSA_PKCS` signatures of the data as given, with an
    /// RSA key of the class `use_` needs, which must allow `usage`.
    fn raw_rsa(
        mechanism: &Mechanism,
        key: &dyn Key,
        use_: RawUse,
        usage: ck::CK_ATTRIBUTE_TYPE,
    ) -> Result<ActiveOperation, Rv> {
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        let private = matches!(use_, RawUse::SignPkcs1 | RawUse::Private);
        rsa_key_for(key, private, usage)?;
        let raw = if private {
            keys::raw_rsa_private(key)?
        } else {
            std::sync::Arc::new(legacy::RawRsa::public(&rsa_public_key(key)?)?)
        };
        Ok(ActiveOperation {
            inner: Inner::RawRsa {
                key: raw,
                use_,
                data: SecretBytes::default(),
            },
        })
    }

    /// RSA-OAEP with `key`, which must allow `usage` (CKA_ENCRYPT / CKA_DECRYPT for C_Encrypt /
    /// C_Decrypt, CKA_WRAP / CKA_UNWRAP for wrapping).
    pub(crate) fn oaep(
        mechanism: &Mechanism,
        key: &dyn Key,
        encrypt: bool,
        usage: ck::CK_ATTRIBUTE_TYPE,
    ) -> Result<ActiveOperation, Rv> {
        use aws_lc_rs::rsa;
        let MechanismParameter::Oaep { hash, mgf, label } = &mechanism.parameter else {
            return Err(Rv::MechanismParamInvalid);
        };
        let algorithm = match (
            *hash as ck::CK_MECHANISM_TYPE,
            *mgf as ck::CK_RSA_PKCS_MGF_TYPE,
        ) {
            (ck::CKM_SHA_1, ck::CKG_MGF1_SHA1) => &rsa::OAEP_SHA1_MGF1SHA1,
            (ck::CKM_SHA256, ck::CKG_MGF1_SHA256) => &rsa::OAEP_SHA256_MGF1SHA256,
            (ck::CKM_SHA384, ck::CKG_MGF1_SHA384) => &rsa::OAEP_SHA384_MGF1SHA384,
            (ck::CKM_SHA512, ck::CKG_MGF1_SHA512) => &rsa::OAEP_SHA512_MGF1SHA512,
            _ => return Err(Rv::MechanismParamInvalid),
        };
        rsa_key_for(key, !encrypt, usage)?;
        let inconsistent = |_| Rv::KeyTypeInconsistent;
        let cipher = if encrypt {
            let public = rsa::PublicEncryptingKey::from_der(&rsa_public_spki(key)?)
                .map_err(|_| Rv::KeyTypeInconsistent)?;
            OaepCipher::Encrypt(rsa::OaepPublicEncryptingKey::new(public).map_err(inconsistent)?)
        } else {
            let pkcs8 = rsa_private_pkcs8(key)?;
            let private = rsa::PrivateDecryptingKey::from_pkcs8(pkcs8.expose())
                .map_err(|_| Rv::KeyTypeInconsistent)?;
            OaepCipher::Decrypt(rsa::OaepPrivateDecryptingKey::new(private).map_err(inconsistent)?)
        };
        let data = SecretBytes::default();
        Ok(ActiveOperation {
            inner: Inner::Oaep {
                cipher,
                algorithm,
                label: label.clone(),
                data,
            },
        })
    }

    pub(crate) fn rsa_cipher(
        mechanism: &Mechanism,
        key: &dyn Key,
        encrypt: bool,
        weak_allowed: bool,
        usage: ck::CK_ATTRIBUTE_TYPE,
    ) -> Result<ActiveOperation, Rv> {
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        if !encrypt && !weak_allowed {
            return Err(Rv::MechanismInvalid);
        }
        rsa_key_for(key, !encrypt, usage)?;
        let inconsistent = |_| Rv::KeyTypeInconsistent;
        let cipher = if small_rsa(key) {
            RsaCipher::Small(small_rsa_key(key, !encrypt)?, encrypt)
        } else if encrypt {
            let spki = rsa_public_spki(key)?;
            let public = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&spki)
                .map_err(|_| Rv::KeyTypeInconsistent)?;
            RsaCipher::Encrypt(
                aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(public).map_err(inconsistent)?,
            )
        } else {
            let pkcs8 = rsa_private_pkcs8(key)?;
            let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(pkcs8.expose())
                .map_err(|_| Rv::KeyTypeInconsistent)?;
            RsaCipher::Decrypt(
                aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(private).map_err(inconsistent)?,
            )
        };
        let data = SecretBytes::default();
        Ok(ActiveOperation {
            inner: Inner::Rsa { cipher, data },
        })
    }

    /// Feeds input; returns the output made now: a block-mode cipher's, `None` for the
    /// others (which produce their output at the final call).
    pub fn update(&mut self, data: &[u8]) -> Result<Option<Output>, Rv> {
        match &mut self.inner {
            Inner::Stream(stream) => stream.update(data).map(|piece| Some(piece.into())),
            Inner::Des3(stream, encrypt) => {
                let out = stream.update(data)?;
                Ok(Some(cipher_output(out, *encrypt)))
            }
            Inner::Md5(md5) => {
                md5.update(data);
                Ok(None)
            }
            Inner::RawRsa { data: buffer, .. } => {
                // Raw RSA takes at most one modulus (4096 bits); more is refused at the end.
                if buffer.len() + data.len() > 1024 {
                    return Err(Rv::DataLenRange);
                }
                buffer.extend_from_slice(data);
                Ok(None)
            }
            Inner::Digest(context) => {
                context.update(data);
                Ok(None)
            }
            Inner::Signature { input, .. } => input.update(data).map(|()| None),
            Inner::Mac { mac, .. } => mac.update(data).map(|()| None),
            // CKM_HASH_ML_DSA signs a given hash in one part only (PKCS#11 3.2).
            Inner::MlDsa {
                hashing: Some(hashing),
                ..
            } => hashing.update(data).map(|()| None),
            Inner::Eddsa { data: buffer, .. } | Inner::MlDsa { data: buffer, .. } => {
                if buffer.len() + data.len() > MAX_CIPHER_INPUT {
                    return Err(Rv::DataLenRange);
                }
                buffer.extend_from_slice(data);
                Ok(None)
            }
            Inner::Gcm { data: buffer, .. }
            | Inner::Rsa { data: buffer, .. }
            | Inner::Oaep { data: buffer, .. } => {
                if buffer.len() + data.len() > MAX_CIPHER_INPUT {
                    return Err(Rv::DataLenRange);
                }
                // Room for a block of padding or a tag too, so that the buffer is not moved
                // (leaving a copy behind) when the operation finishes in place.
                buffer.reserve(data.len() + 16);
                buffer.extend_from_slice(data);
                Ok(None)
            }
        }
    }

    /// [`ActiveOperation::single`] with the call's own buffer: a single-part AES-GCM adopts it
    /// and works where the data arrived (the decoder left room for the tag), instead of
    /// copying it into a buffer of its own first. Other operations read it as `single` does.
    pub fn single_owned(mut self, data: Vec<u8>, signature: &[u8]) -> Result<Output, Rv> {
        if let Inner::Gcm {
            data: buffer,
            encrypt,
            ..
        } = &mut self.inner
        {
            // Adopted where it fits: an encryption's tag in the room the decoder left (a
            // buffer grown here would be a copy anyway); a decryption shrinks.
            let fits = !*encrypt || data.capacity() - data.len() >= aead::MAX_TAG_LEN;
            if buffer.is_empty() && fits {
                // As `update` refuses it.
                if data.len() > MAX_CIPHER_INPUT {
                    return Err(Rv::DataLenRange);
                }
                *buffer = SecretBytes::unlocked_from(data);
                return self.finish(signature);
            }
        }
        self.single(&data, signature)
    }

    /// A single-part call: `data`, then the final call; the two outputs joined.
    pub fn single(mut self, data: &[u8], signature: &[u8]) -> Result<Output, Rv> {
        if let Inner::MlDsa {
            hashing: Some(hashing),
            data: buffer,
            ..
        } = &mut self.inner
        {
            if matches!(**hashing, pq::Hashing::Given(_)) {
                // The given hash, whole (its updates are refused).
                buffer.extend_from_slice(data);
                return self.finish(signature);
            }
        }
        let head = self.update(data)?;
        let tail = self.finish(signature)?;
        Ok(match (head, tail) {
            (None, tail) => tail,
            (Some(Output::Bytes(mut head)), Output::Bytes(tail)) => {
                head.extend_from_slice(&tail);
                Output::Bytes(head)
            }
            (Some(Output::Secret(mut head)), Output::Secret(tail)) => {
                head.extend_from_slice(tail.expose());
                Output::Secret(head)
            }
            _ => return Err(Rv::GeneralError),
        })
    }

    /// Finishes: the digest, signature, cipher output, or the verification result.
    pub fn finish(self, signature: &[u8]) -> Result<Output, Rv> {
        match self.inner {
            Inner::Digest(context) => Ok(Output::Bytes(context.finish().as_ref().to_vec())),
            Inner::Signature { key, input } => finish_signature(key, input, signature),
            Inner::Stream(stream) => stream.finish().map(Output::from),
            Inner::Des3(stream, encrypt) => stream.finish().map(|out| cipher_output(out, encrypt)),
            Inner::Md5(md5) => md5.finish().map(Output::Bytes),
            Inner::RawRsa { key, use_, data } => finish_raw_rsa(&key, use_, &data, signature),
            Inner::Gcm {
                key,
                iv,
                aad,
                tag_len,
                encrypt,
                data,
            } => gcm(key.expose(), &iv, &aad, tag_len, encrypt, data),
            Inner::Rsa { cipher, data } => finish_rsa(cipher, &data),
            Inner::Mac { mac, verify: false } => mac.sign().map(Output::Bytes),
            Inner::Mac { mac, verify: true } => mac.verify(signature).map(|_| Output::Verified),
            Inner::Eddsa {
                key,
                data,
                verify,
                variant: Some(variant),
            } => edwards::variant(&*key, &variant, &data, verify, signature),
            Inner::Eddsa {
                key,
                data,
                verify: false,
                variant: None,
            } => edwards::sign(&*key, &data).map(Output::Bytes),
            Inner::Eddsa {
                key,
                data,
                verify: true,
                variant: None,
            } => edwards::verify(&*key, &data, signature).map(|_| Output::Verified),
            Inner::Oaep {
                cipher,
                algorithm,
                label,
                data,
            } => finish_oaep(cipher, algorithm, &label, &data),
            Inner::MlDsa {
                key,
                data,
                verify,
                variant: Some(variant),
                hashing,
            } => {
                let message = match hashing {
                    Some(hashing) => hashing.finish(&data)?,
                    None => data,
                };
                pq::variant(&*key, &variant, &message, verify, signature)
            }
            Inner::MlDsa {
                key,
                data,
                verify: false,
                variant: None,
                ..
            } => pq::sign(&*key, &data).map(Output::Bytes),
            Inner::MlDsa {
                key,
                data,
                verify: true,
                variant: None,
                ..
            } => pq::verify(&*key, &data, signature).map(|_| Output::Verified),
        }
    }
}

/// Checks the key of a signature (a private key) or verification (a public key) of `key_type`
/// (`fits`: whatever else the mechanism asks of it, such as its curve), then its usage flag.
fn signing_key(
    key: &dyn Key,
    verify: bool,
    key_type: ck::CK_KEY_TYPE,
    fits: bool,
) -> Result<(), Rv> {
    let (class, usage) = match verify {
        true => (ck::CKO_PUBLIC_KEY, ck::CKA_VERIFY),
        false => (ck::CKO_PRIVATE_KEY, ck::CKA_SIGN),
    };
    if key.class() != class as u64 || key.key_type() != key_type as u64 || !fits {
        return Err(Rv::KeyTypeInconsistent);
    }
    if !key.flag(usage) {
        return Err(Rv::KeyFunctionNotPermitted);
    }
    Ok(())
}

fn ec_input_digest(curve: &Curve, input: Input) -> Result<Digest, Rv> {
    match input {
        Input::Hashing(context) => ecdsa_digest(curve, context.finish().as_ref()),
        Input::Raw(data, _) => ecdsa_digest(curve, &data),
    }
}

fn rsa_input_digest(input: Input) -> Result<Digest, Rv> {
    match input {
        Input::Hashing(context) => Ok(context.finish()),
        Input::Raw(data, Some(algorithm)) => {
            Digest::import_less_safe(&data, algorithm).map_err(|_| Rv::DataLenRange)
        }
        Input::Raw(data, None) => parse_digest_info(&data),
    }
}

fn finish_signature(key: SignKey, input: Input, signature: &[u8]) -> Result<Output, Rv> {
    match key {
        SignKey::SmallRsa(key, scheme, verify) => {
            use subtle::ConstantTimeEq;
            let digest = rsa_input_digest(input)?;
            let (hash, prefix) = small_rsa_hash(digest.algorithm())?;
            let mut info = prefix.to_vec();
            info.extend_from_slice(digest.as_ref());
            match (scheme, verify) {
                (RsaScheme::Pkcs1, false) => key.sign_pkcs1(&info).map(Output::Bytes),
                (RsaScheme::Pss, false) => key.sign_pss(hash, digest.as_ref()).map(Output::Bytes),
                (RsaScheme::Pkcs1, true) => {
                    let carried = key.recover_pkcs1(signature)?;
                    match bool::from(carried.as_slice().ct_eq(&info)) {
                        true => Ok(Output::Verified),
                        false => Err(Rv::SignatureInvalid),
                    }
                }
                (RsaScheme::Pss, true) => key
                    .verify_pss(hash, digest.as_ref(), signature)
                    .map(|()| Output::Verified),
            }
        }
        SignKey::Ec(pair, curve) => {
            let digest = ec_input_digest(curve, input)?;
            let signature = pair.sign_digest(&digest).map_err(|_| Rv::FunctionFailed)?;
            Ok(Output::Bytes(signature.as_ref().to_vec()))
        }
        SignKey::EcPublic(point, curve) => {
            if signature.len() != 2 * curve.bytes {
                return Err(Rv::SignatureLenRange);
            }
            let digest = ec_input_digest(curve, input)?;
            UnparsedPublicKey::new(curve.verifying, point)
                .verify_digest(&digest, signature)
                .map(|_| Output::Verified)
                .map_err(|_| Rv::SignatureInvalid)
        }
        SignKey::Rsa(pair, scheme) => {
            let digest = rsa_input_digest(input)?;
            let encoding = rsa_encoding(scheme, digest.algorithm())?;
            let mut out = vec![0u8; pair.public_modulus_len()];
            pair.sign_digest(encoding, &digest, &mut out)
                .map_err(|_| Rv::FunctionFailed)?;
            Ok(Output::Bytes(out))
        }
        SignKey::RsaPublic(public, scheme) => {
            let digest = rsa_input_digest(input)?;
            let parameters = rsa_verification(scheme, digest.algorithm())?;
            let modulus_len = rsa_modulus_len(&public);
            if modulus_len != 0 && signature.len() != modulus_len {
                return Err(Rv::SignatureLenRange);
            }
            UnparsedPublicKey::new(parameters, public)
                .verify_digest(&digest, signature)
                .map(|_| Output::Verified)
                .map_err(|_| Rv::SignatureInvalid)
        }
    }
}

fn rsa_modulus_len(pkcs1_public: &[u8]) -> usize {
    der::single(pkcs1_public, der::SEQUENCE)
        .and_then(|seq| der::Reader::new(seq).unsigned_integer().map(<[u8]>::len))
        .unwrap_or(0)
}

fn finish_oaep(
    cipher: OaepCipher,
    algorithm: &'static aws_lc_rs::rsa::OaepAlgorithm,
    label: &[u8],
    data: &SecretBytes,
) -> Result<Output, Rv> {
    let label = (!label.is_empty()).then_some(label);
    match cipher {
        OaepCipher::Encrypt(key) => {
            if data.len() > key.max_plaintext_size(algorithm) {
                return Err(Rv::DataLenRange);
            }
            let mut out = vec![0u8; key.ciphertext_size()];
            let len = key
                .encrypt(algorithm, data.expose(), &mut out, label)
                .map_err(|_| Rv::FunctionFailed)?
                .len();
            out.truncate(len);
            Ok(Output::Bytes(out))
        }
        OaepCipher::Decrypt(key) => {
            if data.len() != key.key_size_bytes() {
                return Err(Rv::EncryptedDataLenRange);
            }
            let mut out = SecretBytes::new(vec![0u8; key.min_output_size()]);
            let len = key
                .decrypt(algorithm, data.expose(), out.expose_mut(), label)
                .map_err(|_| Rv::EncryptedDataInvalid)?
                .len();
            out.truncate(len);
            Ok(Output::Secret(out))
        }
    }
}

/// The longest AES-GCM IV taken, in bytes (PKCS#11 allows up to 2^32 − 1; no one uses more).
const MAX_GCM_IV: usize = 256;

/// The triple-DES mode of a mechanism.
fn des3_mode(mechanism: u64) -> Option<legacy::DesMode> {
    Some(match mechanism as ck::CK_MECHANISM_TYPE {
        ck::CKM_DES3_ECB => legacy::DesMode::Ecb,
        ck::CKM_DES3_CBC => legacy::DesMode::Cbc,
        ck::CKM_DES3_CBC_PAD => legacy::DesMode::CbcPad,
        _ => return None,
    })
}

/// The error for input of a length a cipher cannot take: `CKR_DATA_LEN_RANGE` when it
/// encrypts, `CKR_ENCRYPTED_DATA_LEN_RANGE` when it decrypts.
pub(crate) fn length_error(encrypt: bool) -> Rv {
    if encrypt {
        Rv::DataLenRange
    } else {
        Rv::EncryptedDataLenRange
    }
}

/// A legacy cipher's output: ciphertext is public, plaintext secret.
fn cipher_output(mut out: SecretBytes, encrypt: bool) -> Output {
    if encrypt {
        Output::Bytes(out.take_bytes())
    } else {
        Output::Secret(out)
    }
}

/// Finishes a raw RSA operation on the gathered `data`.
fn finish_raw_rsa(
    key: &legacy::RawRsa,
    use_: RawUse,
    data: &SecretBytes,
    signature: &[u8],
) -> Result<Output, Rv> {
    use subtle::ConstantTimeEq;
    match use_ {
        RawUse::SignPkcs1 => key.sign_pkcs1(data.expose()).map(Output::Bytes),
        RawUse::VerifyPkcs1 => {
            let carried = key.recover_pkcs1(signature)?;
            match bool::from(carried.as_slice().ct_eq(data.expose())) {
                true => Ok(Output::Verified),
                false => Err(Rv::SignatureInvalid),
            }
        }
        RawUse::Private => {
            // A signature's input may be shorter than the modulus; a decryption's ciphertext
            // is the modulus's length at most.
            key.private_raw(data.expose(), Rv::DataLenRange)
                .map(Output::Secret)
        }
        RawUse::Public => key
            .public_raw(data.expose(), Rv::DataLenRange)
            .map(Output::Bytes),
        RawUse::VerifyX509 => {
            if signature.len() != key.len() {
                return Err(Rv::SignatureLenRange);
            }
            let recovered = key.public_raw(signature, Rv::SignatureInvalid)?;
            let k = key.len();
            if data.len() > k {
                return Err(Rv::DataLenRange);
            }
            let mut expected = vec![0u8; k - data.len()];
            expected.extend_from_slice(data.expose());
            match bool::from(recovered.as_slice().ct_eq(&expected)) {
                true => Ok(Output::Verified),
                false => Err(Rv::SignatureInvalid),
            }
        }
    }
}

/// AES-ECB (no IV) or AES-CBC encryption of whole blocks, for key derivation.
pub(crate) fn aes_encrypt_blocks(
    key: &[u8],
    iv: Option<[u8; 16]>,
    data: &[u8],
) -> Result<Vec<u8>, Rv> {
    let (mode, iv) = iv.map_or((Mode::Ecb, [0; 16]), |iv| (Mode::Cbc, iv));
    let mut stream = BlockStream::new(key, mode, true, iv);
    let head = stream.update(data)?;
    match (head, stream.finish()?) {
        (Piece::Cipher(head), Piece::Cipher(tail)) if tail.is_empty() => Ok(head),
        _ => Err(Rv::GeneralError),
    }
}

impl From<Piece> for Output {
    fn from(piece: Piece) -> Output {
        match piece {
            Piece::Cipher(bytes) => Output::Bytes(bytes),
            Piece::Plain(secret) => Output::Secret(secret),
        }
    }
}

/// AES-GCM with a tag of `tag_len` bytes. Encryption truncates the full tag. Decryption with a
/// full tag is aws-lc's; with a truncated one the plaintext comes from the GCM counter stream
/// (CTR from `IV || 00000002`), the tag is recomputed over it, and the first `tag_len` bytes are
/// compared in constant time before any plaintext is released. An IV of another length than
/// 96 bits goes through the legacy module (aws-lc-rs takes 96-bit nonces only).
fn gcm(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_len: usize,
    encrypt: bool,
    mut data: SecretBytes,
) -> Result<Output, Rv> {
    use subtle::ConstantTimeEq;
    use zeroize::Zeroize;
    if iv.len() != aead::NONCE_LEN {
        let out = legacy::gcm(key, iv, aad, tag_len, encrypt, data.expose())?;
        return Ok(cipher_output(out, encrypt));
    }
    let algorithm = match key.len() {
        16 => &aead::AES_128_GCM,
        24 => &aead::AES_192_GCM,
        _ => &aead::AES_256_GCM,
    };
    let aead_key =
        LessSafeKey::new(UnboundKey::new(algorithm, key).map_err(|_| Rv::KeyTypeInconsistent)?);
    let nonce = || Nonce::try_assume_unique_for_key(iv).map_err(|_| Rv::MechanismParamInvalid);
    if encrypt {
        // Encrypted in its own buffer (room for the tag was reserved when the data came in):
        // the plaintext is overwritten, not copied.
        let mut out = data.take_bytes();
        let plain_len = out.len();
        aead_key
            .seal_in_place_append_tag(nonce()?, Aad::from(aad), &mut out)
            .map_err(|_| Rv::FunctionFailed)?;
        out.truncate(plain_len + tag_len);
        return Ok(Output::Bytes(out));
    }
    let Some(cipher_len) = data.len().checked_sub(tag_len) else {
        return Err(Rv::EncryptedDataLenRange);
    };
    if tag_len == aead::MAX_TAG_LEN {
        let plain_len = aead_key
            .open_in_place(nonce()?, Aad::from(aad), data.expose_mut())
            .map_err(|_| Rv::EncryptedDataInvalid)?
            .len();
        data.truncate(plain_len);
        return Ok(Output::Secret(data));
    }
    let mut counter = [0u8; 16];
    counter[..aead::NONCE_LEN].copy_from_slice(iv);
    counter[15] = 2;
    let mut stream = BlockStream::new(key, Mode::Ctr(32), false, counter);
    let (Piece::Plain(mut plain), Piece::Plain(tail)) = (
        stream.update(&data.expose()[..cipher_len])?,
        stream.finish()?,
    ) else {
        return Err(Rv::GeneralError);
    };
    plain.extend_from_slice(tail.expose());
    let mut resealed = plain.expose().to_vec();
    aead_key
        .seal_in_place_append_tag(nonce()?, Aad::from(aad), &mut resealed)
        .map_err(|_| Rv::FunctionFailed)?;
    let expected = &resealed[cipher_len..cipher_len + tag_len];
    let given = &data.expose()[cipher_len..];
    let matches: bool = expected.ct_eq(given).into();
    resealed.zeroize();
    if matches {
        Ok(Output::Secret(plain))
    } else {
        Err(Rv::EncryptedDataInvalid)
    }
}
