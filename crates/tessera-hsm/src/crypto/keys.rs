//! Key material: the supported curves, key generation, and the conversions between PKCS#11
//! attributes and the key structures of `aws-lc-rs` (PKCS#1, PKCS#8, RFC 5915, SPKI).

use super::{GeneratedPair, Key};
use std::collections::HashMap;
use std::sync::Arc;

use ::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use ::der::{Decode, Encode};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use tessera_core::der;
use tessera_core::{ck, Rv, SecretBytes};
use zeroize::Zeroizing;

use super::{Output, RsaCipher};

pub(crate) struct Curve {
    pub(crate) params: &'static [u8],
    /// Explicit ECParameters of the same curve (with and without seed), accepted under `E`.
    pub(crate) explicit: [&'static [u8]; 2],
    pub(crate) signing: &'static signature::EcdsaSigningAlgorithm,
    pub(crate) verifying: &'static signature::EcdsaVerificationAlgorithm,
    pub(crate) digest: &'static digest::Algorithm,
    pub(crate) bytes: usize,
}

pub(crate) const CURVES: &[Curve] = &[
    Curve {
        params: der::P256_PARAMS,
        explicit: [
            include_bytes!("../../curves/p256-explicit.der"),
            include_bytes!("../../curves/p256-explicit-seed.der"),
        ],
        signing: &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        verifying: &signature::ECDSA_P256_SHA256_FIXED,
        digest: &digest::SHA256,
        bytes: 32,
    },
    Curve {
        params: der::P384_PARAMS,
        explicit: [
            include_bytes!("../../curves/p384-explicit.der"),
            include_bytes!("../../curves/p384-explicit-seed.der"),
        ],
        signing: &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        verifying: &signature::ECDSA_P384_SHA384_FIXED,
        digest: &digest::SHA384,
        bytes: 48,
    },
    Curve {
        params: der::P521_PARAMS,
        explicit: [
            include_bytes!("../../curves/p521-explicit.der"),
            include_bytes!("../../curves/p521-explicit-seed.der"),
        ],
        signing: &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        verifying: &signature::ECDSA_P521_SHA512_FIXED,
        digest: &digest::SHA512,
        bytes: 66,
    },
];

/// The components of an RSA private key, in `RSAPrivateKey` order; the first two are public.
pub const RSA_PRIVATE_PARTS: [ck::CK_ATTRIBUTE_TYPE; 8] = [
    ck::CKA_MODULUS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_PRIVATE_EXPONENT,
    ck::CKA_PRIME_1,
    ck::CKA_PRIME_2,
    ck::CKA_EXPONENT_1,
    ck::CKA_EXPONENT_2,
    ck::CKA_COEFFICIENT,
];

/// The curve named by `CKA_EC_PARAMS`. Explicit parameters are accepted only with
/// `allow_explicit` (the `E` flag) and only when they describe a supported curve.
pub(crate) fn curve(params: Option<&[u8]>, allow_explicit: bool) -> Result<&'static Curve, Rv> {
    let params = params.ok_or(Rv::TemplateIncomplete)?;
    if let Some(curve) = CURVES.iter().find(|c| c.params == params) {
        return Ok(curve);
    }
    if params.first() == Some(&der::SEQUENCE) {
        let known = CURVES.iter().find(|c| c.explicit.contains(&params));
        return match known {
            Some(curve) if allow_explicit => Ok(curve),
            _ => Err(Rv::DomainParamsInvalid),
        };
    }
    Err(Rv::CurveNotSupported)
}

/// Checks `CKA_EC_PARAMS` of a new key: a supported named curve, or (with the `E` flag) the
/// explicit parameters of one.
pub fn check_curve(params: Option<&[u8]>, allow_explicit: bool) -> Result<(), Rv> {
    curve(params, allow_explicit).map(|_| ())
}

/// Generates an EC key pair on the curve named by `params`.
pub fn generate_ec(params: Option<&[u8]>, allow_explicit: bool) -> Result<GeneratedPair, Rv> {
    let curve = curve(params, allow_explicit)?;
    let pair = EcdsaKeyPair::generate(curve.signing).map_err(|_| Rv::FunctionFailed)?;
    let point = pair.public_key().as_ref().to_vec();
    let scalar = Zeroizing::new(
        pair.private_key()
            .as_be_bytes()
            .map_err(|_| Rv::FunctionFailed)?
            .as_ref()
            .to_vec(),
    );
    // Keep the parameters as the application gave them.
    let params = params.unwrap_or(curve.params).to_vec();
    Ok((
        vec![
            (ck::CKA_EC_PARAMS, params.clone()),
            (ck::CKA_EC_POINT, octet_string(&point)?),
        ],
        vec![
            (ck::CKA_EC_PARAMS, Zeroizing::new(params)),
            (ck::CKA_VALUE, scalar),
        ],
    ))
}

/// Generates an RSA key pair (`bits` 2048, 3072 or 4096; public exponent 65537).
pub fn generate_rsa(bits: u64, exponent: Option<&[u8]>) -> Result<GeneratedPair, Rv> {
    let size = match bits {
        1024 => None,
        2048 => Some(KeySize::Rsa2048),
        3072 => Some(KeySize::Rsa3072),
        4096 => Some(KeySize::Rsa4096),
        _ => return Err(Rv::KeySizeRange),
    };
    if let Some(e) = exponent {
        let start = e.iter().position(|b| *b != 0).unwrap_or(e.len());
        if e[start..] != [0x01, 0x00, 0x01] {
            return Err(Rv::TemplateInconsistent);
        }
    }
    // RSA-1024 (the size aws-lc-rs does not make) from the legacy module, as PKCS#1 DER.
    let small = match size {
        None => Some(super::legacy::RawRsa::generate(1024)?),
        Some(_) => None,
    };
    let pair = match size {
        Some(size) => Some(RsaKeyPair::generate(size).map_err(|_| Rv::FunctionFailed)?),
        None => None,
    };
    let pkcs8 = match &pair {
        Some(pair) => Some(pair.as_der().map_err(|_| Rv::FunctionFailed)?),
        None => None,
    };
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, OCTET STRING RSAPrivateKey } (aws-lc
    // wipes `pkcs8` when it is dropped; each part is copied once, into a wiping buffer).
    let parse = || -> Result<Vec<Zeroizing<Vec<u8>>>, der::DerError> {
        let pkcs1 = match (&pkcs8, &small) {
            (Some(pkcs8), _) => {
                let info = der::single(pkcs8.as_ref(), der::SEQUENCE)?;
                let mut reader = der::Reader::new(info);
                reader.expect(der::INTEGER)?;
                reader.expect(der::SEQUENCE)?;
                reader.expect(der::OCTET_STRING)?
            }
            (None, Some(small)) => small.expose(),
            (None, None) => return Err(der::DerError),
        };
        let inner = der::single(pkcs1, der::SEQUENCE)?;
        let mut reader = der::Reader::new(inner);
        reader.expect(der::INTEGER)?;
        (0..8)
            .map(|_| {
                reader
                    .unsigned_integer()
                    .map(|part| Zeroizing::new(part.to_vec()))
            })
            .collect()
    };
    let parts = parse().map_err(|_| Rv::FunctionFailed)?;
    let public = vec![
        (ck::CKA_MODULUS, parts[0].to_vec()),
        (ck::CKA_PUBLIC_EXPONENT, parts[1].to_vec()),
    ];
    let private = RSA_PRIVATE_PARTS.iter().copied().zip(parts).collect();
    Ok((public, private))
}

/// Parsed private keys, by the SHA-256 of their encoding. Parsing a key costs about as much
/// as a signature (RSA: the key is checked and its Montgomery constants computed; EC: the
/// public point is derived), so signing keys are parsed once while they are in use. At most
/// [`KEY_CACHE_LIMIT`] of each kind are kept (the cache starts afresh when full); aws-lc wipes
/// a key's memory when it is freed.
type KeyCache<T> = std::sync::OnceLock<std::sync::Mutex<HashMap<[u8; 32], Arc<T>>>>;

const KEY_CACHE_LIMIT: usize = 512;

static RSA_KEYS: KeyCache<RsaKeyPair> = std::sync::OnceLock::new();
static EC_KEYS: KeyCache<EcdsaKeyPair> = std::sync::OnceLock::new();
static RAW_RSA_KEYS: KeyCache<super::legacy::RawRsa> = std::sync::OnceLock::new();
static ML_DSA_KEYS: KeyCache<aws_lc_rs::signature::PqdsaKeyPair> = std::sync::OnceLock::new();

fn cached<T>(
    cache: &'static KeyCache<T>,
    material: &[u8],
    parse: impl FnOnce() -> Result<T, Rv>,
) -> Result<Arc<T>, Rv> {
    let id: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material)
        .as_ref()
        .try_into()
        .map_err(|_| Rv::GeneralError)?;
    let map = cache.get_or_init(Default::default);
    if let Some(key) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(key.clone());
    }
    let key = Arc::new(parse()?);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= KEY_CACHE_LIMIT {
        map.clear();
    }
    map.insert(id, key.clone());
    Ok(key)
}

/// Drops every parsed private key (aws-lc wipes each as it is freed, once no operation in
/// flight holds it): called when a private key object is destroyed, when a token's last login
/// ends (its master key goes too) and on tamper. The caches are keyed by a hash of the key, not
/// by object, so they are emptied whole; a key still in use is parsed again at its next use.
pub(crate) fn forget_parsed_keys() {
    {
        if let Some(map) = RSA_KEYS.get() {
            map.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
    if let Some(map) = EC_KEYS.get() {
        map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    if let Some(map) = RAW_RSA_KEYS.get() {
        map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    if let Some(map) = ML_DSA_KEYS.get() {
        map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// An ML-DSA private key (its expanded `CKA_VALUE`), parsed once like the others: parsing
/// expands the public matrix, which costs about what a signature does. The cache finds it by
/// its 32-byte seed where the key has one (the seed makes the whole key, FIPS 204 Algorithm 6,
/// and a key's seed and value are checked to agree when it is made): hashing the 4 KB value
/// at every signature cost about a tenth of one.
pub(crate) fn ml_dsa_private(
    signing: &'static aws_lc_rs::signature::PqdsaSigningAlgorithm,
    value: &[u8],
    seed: Option<&[u8]>,
) -> Result<Arc<aws_lc_rs::signature::PqdsaKeyPair>, Rv> {
    let mut id = zeroize::Zeroizing::new(Vec::with_capacity(40));
    id.extend_from_slice(&(signing.signature_len() as u64).to_le_bytes());
    id.extend_from_slice(seed.unwrap_or(value));
    cached(&ML_DSA_KEYS, &id, || {
        aws_lc_rs::signature::PqdsaKeyPair::from_raw_private_key(signing, value)
            .map_err(|_| Rv::KeyTypeInconsistent)
    })
}

/// An RSA private key for the raw operations (legacy module), parsed once like the others.
pub(crate) fn raw_rsa_private(key: &dyn Key) -> Result<Arc<super::legacy::RawRsa>, Rv> {
    let pkcs1 = rsa_private_pkcs1(key)?;
    cached(&RAW_RSA_KEYS, pkcs1.expose(), || {
        super::legacy::RawRsa::private(pkcs1.expose())
    })
}

pub(crate) fn rsa_private_key(key: &dyn Key) -> Result<Arc<RsaKeyPair>, Rv> {
    let pkcs1 = rsa_private_pkcs1(key)?;
    cached(&RSA_KEYS, pkcs1.expose(), || {
        RsaKeyPair::from_der(pkcs1.expose()).map_err(|_| Rv::KeyTypeInconsistent)
    })
}

pub(crate) fn rsa_public_spki(key: &dyn Key) -> Result<Vec<u8>, Rv> {
    spki(
        pkcs1::ALGORITHM_OID,
        Some(AnyRef::NULL),
        &rsa_public_key(key)?,
    )
    .ok_or(Rv::KeyTypeInconsistent)
}

/// A SubjectPublicKeyInfo: the algorithm (its OID and parameters) and the key as a BIT STRING;
/// `None` if a part cannot be encoded.
fn spki(oid: ObjectIdentifier, parameters: Option<AnyRef<'_>>, key: &[u8]) -> Option<Vec<u8>> {
    spki::SubjectPublicKeyInfo {
        algorithm: spki::AlgorithmIdentifier { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).ok()?,
    }
    .to_der()
    .ok()
}

/// `bytes` as a DER OCTET STRING (`CKA_EC_POINT` holds the public point so).
pub(crate) fn octet_string(bytes: &[u8]) -> Result<Vec<u8>, Rv> {
    (OctetStringRef::new(bytes).and_then(|o| o.to_der())).map_err(|_| Rv::FunctionFailed)
}

/// A private key structure encoded straight into one wiping buffer sized first: its encoding
/// exists nowhere else (`der` writes into the slice it is given).
fn secret_der(value: &impl Encode) -> Result<SecretBytes, Rv> {
    let len = value.encoded_len().map_err(|_| Rv::KeyTypeInconsistent)?;
    let len = usize::try_from(len).map_err(|_| Rv::KeyTypeInconsistent)?;
    let mut out = SecretBytes::new(vec![0u8; len]);
    let written = value
        .encode_to_slice(out.expose_mut())
        .map_err(|_| Rv::KeyTypeInconsistent)?
        .len();
    out.truncate(written);
    Ok(out)
}

/// The PKCS#8 `PrivateKeyInfo` of an RSA private key, only ever in a wiping buffer.
pub(crate) fn rsa_private_pkcs8(key: &dyn Key) -> Result<SecretBytes, Rv> {
    let pkcs1 = rsa_private_pkcs1(key)?;
    secret_der(&pkcs8::PrivateKeyInfo {
        algorithm: spki::AlgorithmIdentifier {
            oid: pkcs1::ALGORITHM_OID,
            parameters: Some(AnyRef::NULL),
        },
        private_key: OctetStringRef::new(pkcs1.expose()).map_err(|_| Rv::KeyTypeInconsistent)?,
        public_key: None::<BitStringRef<'_>>,
    })
}

/// The PKCS#1 `RSAPrivateKey` of an RSA private key, only ever in a wiping buffer.
pub(crate) fn rsa_private_pkcs1(key: &dyn Key) -> Result<SecretBytes, Rv> {
    let part = |ty| {
        let magnitude = key.get(ty).ok_or(Rv::KeyTypeInconsistent)?;
        UintRef::new(magnitude).map_err(|_| Rv::KeyTypeInconsistent)
    };
    let [n, e, d, p, q, dp, dq, qinv] = RSA_PRIVATE_PARTS;
    secret_der(&pkcs1::RsaPrivateKey {
        modulus: part(n)?,
        public_exponent: part(e)?,
        private_exponent: part(d)?,
        prime1: part(p)?,
        prime2: part(q)?,
        exponent1: part(dp)?,
        exponent2: part(dq)?,
        coefficient: part(qinv)?,
        other_prime_infos: None,
    })
}

pub(crate) fn finish_rsa(cipher: RsaCipher, data: &SecretBytes) -> Result<Output, Rv> {
    match cipher {
        RsaCipher::Small(key, true) => key.encrypt_pkcs1(data.expose()).map(Output::Bytes),
        RsaCipher::Small(key, false) => key.decrypt_pkcs1(data.expose()).map(Output::Secret),
        RsaCipher::Encrypt(key) => {
            if data.len() > key.max_plaintext_size() {
                return Err(Rv::DataLenRange);
            }
            let mut out = vec![0u8; key.ciphertext_size()];
            let len = key
                .encrypt(data.expose(), &mut out)
                .map_err(|_| Rv::FunctionFailed)?
                .len();
            out.truncate(len);
            Ok(Output::Bytes(out))
        }
        RsaCipher::Decrypt(key) => {
            if data.len() != key.key_size_bytes() {
                return Err(Rv::EncryptedDataLenRange);
            }
            let mut out = SecretBytes::new(vec![0u8; key.min_output_size()]);
            let len = key
                .decrypt(data.expose(), out.expose_mut())
                .map_err(|_| Rv::EncryptedDataInvalid)?
                .len();
            out.truncate(len);
            Ok(Output::Secret(out))
        }
    }
}

pub(crate) fn rsa_public_key(key: &dyn Key) -> Result<Vec<u8>, Rv> {
    let modulus = key.get(ck::CKA_MODULUS).ok_or(Rv::KeyTypeInconsistent)?;
    let exponent = key
        .get(ck::CKA_PUBLIC_EXPONENT)
        .ok_or(Rv::KeyTypeInconsistent)?;
    let integer = |magnitude| UintRef::new(magnitude).map_err(|_| Rv::KeyTypeInconsistent);
    pkcs1::RsaPublicKey {
        modulus: integer(modulus)?,
        public_exponent: integer(exponent)?,
    }
    .to_der()
    .map_err(|_| Rv::KeyTypeInconsistent)
}

/// Checks an imported RSA private key and returns its modulus size in bits.
pub fn check_rsa_private(key: &dyn Key) -> Result<u64, Rv> {
    if super::small_rsa(key) {
        // From 1024 bits, through the legacy module (aws-lc checks the key as it parses it).
        let raw = raw_rsa_private(key).map_err(|_| Rv::AttributeValueInvalid)?;
        return match raw.len() * 8 {
            bits if bits >= 1024 => Ok(bits as u64),
            _ => Err(Rv::KeySizeRange),
        };
    }
    let pair = rsa_private_key(key).map_err(|_| Rv::AttributeValueInvalid)?;
    Ok(pair.public_modulus_len() as u64 * 8)
}

/// Checks an imported EC private key.
pub fn check_ec_private(key: &dyn Key) -> Result<(), Rv> {
    ec_private_key(key)
        .map(|_| ())
        .map_err(|_| Rv::AttributeValueInvalid)
}

/// The bit length of a big-endian magnitude.
pub fn bit_len(magnitude: &[u8]) -> u64 {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len());
    match magnitude.get(start) {
        Some(first) => (magnitude.len() - start) as u64 * 8 - u64::from(first.leading_zeros()),
        None => 0,
    }
}

pub(crate) fn ec_private_key(key: &dyn Key) -> Result<(Arc<EcdsaKeyPair>, &'static Curve), Rv> {
    let curve = curve(key.get(ck::CKA_EC_PARAMS), true).map_err(|_| Rv::KeyTypeInconsistent)?;
    let scalar = key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
    if scalar.len() > curve.bytes {
        return Err(Rv::KeyTypeInconsistent);
    }
    let mut padded = SecretBytes::with_capacity(curve.bytes);
    padded.extend_from_slice(&vec![0u8; curve.bytes - scalar.len()]);
    padded.extend_from_slice(scalar);
    // RFC 5915 ECPrivateKey { version 1, privateKey, [0] parameters }, only in a wiping buffer.
    let named = ObjectIdentifier::from_der(curve.params).map_err(|_| Rv::KeyTypeInconsistent)?;
    let rfc5915 = secret_der(&sec1::EcPrivateKey {
        private_key: padded.expose(),
        parameters: Some(sec1::EcParameters::NamedCurve(named)),
        public_key: None,
    })?;
    let pair = cached(&EC_KEYS, rfc5915.expose(), || {
        EcdsaKeyPair::from_private_key_der(curve.signing, rfc5915.expose())
            .map_err(|_| Rv::KeyTypeInconsistent)
    })?;
    Ok((pair, curve))
}

pub(crate) fn ec_point(key: &dyn Key) -> Result<(Vec<u8>, &'static Curve), Rv> {
    let curve = curve(key.get(ck::CKA_EC_PARAMS), true).map_err(|_| Rv::KeyTypeInconsistent)?;
    let raw = key.get(ck::CKA_EC_POINT).ok_or(Rv::KeyTypeInconsistent)?;
    // CKA_EC_POINT is a DER OCTET STRING; accept the bare point too, as many tools send it.
    let point = der::single(raw, der::OCTET_STRING).unwrap_or(raw);
    Ok((point.to_vec(), curve))
}

/// The SubjectPublicKeyInfo DER of a public key object (RSA, EC, Ed25519, X25519).
pub fn public_key_info(key: &dyn Key) -> Option<Vec<u8>> {
    match key.key_type() as ck::CK_KEY_TYPE {
        ck::CKK_RSA => rsa_public_spki(key).ok(),
        ck::CKK_EC => {
            // The curve as the key names it: a named curve's OID or explicit parameters.
            let params = AnyRef::from_der(key.get(ck::CKA_EC_PARAMS)?).ok()?;
            let point = key.get(ck::CKA_EC_POINT)?;
            let point = der::single(point, der::OCTET_STRING).unwrap_or(point);
            spki(ID_EC_PUBLIC_KEY, Some(params), point)
        }
        ck::CKK_EC_EDWARDS | ck::CKK_EC_MONTGOMERY => {
            let oid = if key.key_type() == ck::CKK_EC_EDWARDS as u64 {
                super::edwards::ED25519_OID
            } else {
                super::edwards::X25519_OID
            };
            let point = super::edwards::raw_point(key.get(ck::CKA_EC_POINT)?);
            spki(ObjectIdentifier::from_der(oid).ok()?, None, point)
        }
        _ => None,
    }
}

/// `id-ecPublicKey` (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

#[cfg(test)]
mod forget_tests {
    use super::*;

    #[test]
    fn forgetting_empties_both_caches() {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let material = der.as_ref().to_vec();
        cached(&RSA_KEYS, &material, || Ok(pair)).unwrap();
        let count = || RSA_KEYS.get().map_or(0, |m| m.lock().unwrap().len());
        assert!(count() >= 1);
        forget_parsed_keys();
        assert_eq!(count(), 0);
    }
}
