//! Post-quantum keys as PKCS#11 3.2 defines them: ML-KEM (FIPS 203, `CKK_ML_KEM`,
//! `CKM_ML_KEM`) and ML-DSA (FIPS 204, `CKK_ML_DSA`, `CKM_ML_DSA`), from aws-lc-rs.
//!
//! `CKA_PARAMETER_SET` names the set (`CKP_ML_KEM_512/768/1024`, `CKP_ML_DSA_44/65/87`). A
//! public key's `CKA_VALUE` is the raw encapsulation or verification key; a private key's
//! `CKA_VALUE` is the expanded decapsulation or signing key, and an ML-DSA private key made
//! here also keeps its 32-byte `CKA_SEED` (FIPS 204's ξ), from which the rest follows.

use aws_lc_rs::encoding::AsRawBytes;
use aws_lc_rs::kem::{self, DecapsulationKey, EncapsulationKey};
use aws_lc_rs::signature::{
    KeyPair, PqdsaKeyPair, PqdsaSigningAlgorithm, UnparsedPublicKey, VerificationAlgorithm,
    ML_DSA_44, ML_DSA_44_SIGNING, ML_DSA_65, ML_DSA_65_SIGNING, ML_DSA_87, ML_DSA_87_SIGNING,
};
use tessera_core::{ck, Rv, SecretBytes};
use zeroize::Zeroizing;

use super::{GeneratedPair, Key};

/// An ML-KEM parameter set.
pub(crate) fn ml_kem(parameter_set: u64) -> Result<&'static kem::Algorithm, Rv> {
    match parameter_set as ck::CK_ULONG {
        ck::CKP_ML_KEM_512 => Ok(&kem::ML_KEM_512),
        ck::CKP_ML_KEM_768 => Ok(&kem::ML_KEM_768),
        ck::CKP_ML_KEM_1024 => Ok(&kem::ML_KEM_1024),
        _ => Err(Rv::AttributeValueInvalid),
    }
}

/// An ML-DSA parameter set: signing and verification.
pub(crate) fn ml_dsa(
    parameter_set: u64,
) -> Result<
    (
        &'static PqdsaSigningAlgorithm,
        &'static dyn VerificationAlgorithm,
    ),
    Rv,
> {
    match parameter_set as ck::CK_ULONG {
        ck::CKP_ML_DSA_44 => Ok((&ML_DSA_44_SIGNING, &ML_DSA_44)),
        ck::CKP_ML_DSA_65 => Ok((&ML_DSA_65_SIGNING, &ML_DSA_65)),
        ck::CKP_ML_DSA_87 => Ok((&ML_DSA_87_SIGNING, &ML_DSA_87)),
        _ => Err(Rv::AttributeValueInvalid),
    }
}

/// The ciphertext length of an ML-KEM parameter set (FIPS 203, Table 3).
pub(crate) fn ciphertext_len(parameter_set: u64) -> Result<usize, Rv> {
    match parameter_set as ck::CK_ULONG {
        ck::CKP_ML_KEM_512 => Ok(768),
        ck::CKP_ML_KEM_768 => Ok(1088),
        ck::CKP_ML_KEM_1024 => Ok(1568),
        _ => Err(Rv::KeyTypeInconsistent),
    }
}

/// `CKA_PARAMETER_SET` (a `CK_ULONG`, 8 bytes little-endian as stored).
fn parameter_set(key: &dyn Key) -> Result<u64, Rv> {
    let bytes = key
        .get(ck::CKA_PARAMETER_SET)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or(Rv::KeyTypeInconsistent)?;
    Ok(u64::from_le_bytes(bytes))
}

fn value(key: &dyn Key) -> Result<&[u8], Rv> {
    key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)
}

/// A new ML-KEM key pair of the parameter set.
pub(crate) fn generate_ml_kem(parameter_set: u64) -> Result<GeneratedPair, Rv> {
    let algorithm = ml_kem(parameter_set).map_err(|_| Rv::TemplateInconsistent)?;
    let private = DecapsulationKey::generate(algorithm).map_err(|_| Rv::FunctionFailed)?;
    let public = private
        .encapsulation_key()
        .and_then(|key| key.key_bytes())
        .map_err(|_| Rv::FunctionFailed)?;
    let secret = private.key_bytes().map_err(|_| Rv::FunctionFailed)?;
    let set = parameter_set.to_le_bytes().to_vec();
    Ok(with_set(
        vec![(ck::CKA_VALUE, public.as_ref().to_vec())],
        vec![(ck::CKA_VALUE, Zeroizing::new(secret.as_ref().to_vec()))],
        set,
    ))
}

/// A new ML-DSA key pair of the parameter set, from a fresh 32-byte seed.
pub(crate) fn generate_ml_dsa(parameter_set: u64) -> Result<GeneratedPair, Rv> {
    let (signing, _) = ml_dsa(parameter_set).map_err(|_| Rv::TemplateInconsistent)?;
    let seed = SecretBytes::new(super::random(32)?);
    let pair = PqdsaKeyPair::from_seed(signing, seed.expose()).map_err(|_| Rv::FunctionFailed)?;
    let secret = pair
        .private_key()
        .as_raw_bytes()
        .map_err(|_| Rv::FunctionFailed)?;
    let set = parameter_set.to_le_bytes().to_vec();
    Ok(with_set(
        vec![(ck::CKA_VALUE, pair.public_key().as_ref().to_vec())],
        vec![
            (ck::CKA_VALUE, Zeroizing::new(secret.as_ref().to_vec())),
            (ck::CKA_SEED, Zeroizing::new(seed.expose().to_vec())),
        ],
        set,
    ))
}

fn with_set(
    mut public: Vec<(ck::CK_ATTRIBUTE_TYPE, Vec<u8>)>,
    mut private: Vec<(ck::CK_ATTRIBUTE_TYPE, Zeroizing<Vec<u8>>)>,
    set: Vec<u8>,
) -> GeneratedPair {
    public.push((ck::CKA_PARAMETER_SET, set.clone()));
    private.push((ck::CKA_PARAMETER_SET, Zeroizing::new(set)));
    (public, private)
}

/// Checks an imported ML-KEM or ML-DSA key: a known parameter set, and a value that parses
/// as a key of it. A private ML-DSA key may come as its seed alone: then its expanded value is
/// returned, for the key to keep.
pub(crate) fn check_import(
    key_type: ck::CK_KEY_TYPE,
    private: bool,
    set: u64,
    value: Option<&[u8]>,
    seed: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, Rv> {
    let bad = |_| Rv::AttributeValueInvalid;
    if key_type == ck::CKK_ML_KEM {
        // aws-lc-rs makes no ML-KEM key from its seed, so a seed could not be checked against
        // the key: refused rather than kept unchecked.
        if seed.is_some() {
            return Err(Rv::AttributeTypeInvalid);
        }
        let algorithm = ml_kem(set)?;
        let value = value.ok_or(Rv::TemplateIncomplete)?;
        match private {
            true => DecapsulationKey::new(algorithm, value)
                .map(drop)
                .map_err(bad)?,
            false => EncapsulationKey::new(algorithm, value)
                .map(drop)
                .map_err(bad)?,
        }
        return Ok(None);
    }
    let (signing, _) = ml_dsa(set)?;
    if !private {
        let value = value.ok_or(Rv::TemplateIncomplete)?;
        return match value.len() == signing.public_key_len() {
            true => Ok(None),
            false => Err(Rv::AttributeValueInvalid),
        };
    }
    let seeded = seed
        .map(|seed| PqdsaKeyPair::from_seed(signing, seed))
        .transpose()
        .map_err(bad)?;
    let given = value
        .map(|value| PqdsaKeyPair::from_raw_private_key(signing, value))
        .transpose()
        .map_err(bad)?;
    match (seeded, given) {
        (None, None) => Err(Rv::TemplateIncomplete),
        // Both given: the value must be the one the seed makes, byte for byte (the parsed-key
        // cache finds a key by its seed).
        (Some(seeded), Some(_)) => {
            use subtle::ConstantTimeEq;
            let expanded = seeded
                .private_key()
                .as_raw_bytes()
                .map_err(|_| Rv::AttributeValueInvalid)?;
            let given = value.unwrap_or_default();
            match bool::from(expanded.as_ref().ct_eq(given)) {
                true => Ok(None),
                false => Err(Rv::TemplateInconsistent),
            }
        }
        (Some(seeded), None) => {
            let secret = seeded
                .private_key()
                .as_raw_bytes()
                .map_err(|_| Rv::AttributeValueInvalid)?;
            Ok(Some(secret.as_ref().to_vec()))
        }
        (None, Some(_)) => Ok(None),
    }
}

/// Signs with an ML-DSA private key (hedged: FIPS 204's default, with fresh randomness).
pub(crate) fn sign(key: &dyn Key, message: &[u8]) -> Result<Vec<u8>, Rv> {
    let (signing, _) = ml_dsa(parameter_set(key)?).map_err(|_| Rv::KeyTypeInconsistent)?;
    let pair = super::ml_dsa_private(signing, value(key)?, key.get(ck::CKA_SEED))?;
    let mut signature = vec![0u8; signing.signature_len()];
    let len = pair
        .sign(message, &mut signature)
        .map_err(|_| Rv::FunctionFailed)?;
    signature.truncate(len);
    Ok(signature)
}

/// Verifies with an ML-DSA public key.
pub(crate) fn verify(key: &dyn Key, message: &[u8], signature: &[u8]) -> Result<(), Rv> {
    let (signing, verification) =
        ml_dsa(parameter_set(key)?).map_err(|_| Rv::KeyTypeInconsistent)?;
    if signature.len() != signing.signature_len() {
        return Err(Rv::SignatureLenRange);
    }
    UnparsedPublicKey::new(verification, value(key)?)
        .verify(message, signature)
        .map_err(|_| Rv::SignatureInvalid)
}

/// ML-DSA with a context string or deterministic signing (legacy module): a signature, or a
/// verification's outcome.
pub(crate) fn variant(
    key: &dyn Key,
    variant: &super::legacy::MlDsaVariant,
    message: &[u8],
    verify: bool,
    signature: &[u8],
) -> Result<super::Output, Rv> {
    let set = parameter_set(key)?;
    if verify {
        return variant
            .verify(set, value(key)?, message, signature)
            .map(|()| super::Output::Verified);
    }
    let secret = SecretBytes::from_slice(value(key)?);
    variant
        .sign(set, secret.expose(), message)
        .map(super::Output::Bytes)
}

/// HashML-DSA's pre-hash functions (FIPS 204, section 5.4): (hash mechanism, HashML-DSA
/// mechanism, last arc of the hash's identifier under 2.16.840.1.101.3.4.2, hash length).
const PRE_HASHES: &[(ck::CK_MECHANISM_TYPE, ck::CK_MECHANISM_TYPE, u8, usize)] = &[
    (ck::CKM_SHA224, ck::CKM_HASH_ML_DSA_SHA224, 4, 28),
    (ck::CKM_SHA256, ck::CKM_HASH_ML_DSA_SHA256, 1, 32),
    (ck::CKM_SHA384, ck::CKM_HASH_ML_DSA_SHA384, 2, 48),
    (ck::CKM_SHA512, ck::CKM_HASH_ML_DSA_SHA512, 3, 64),
    (ck::CKM_SHA3_224, ck::CKM_HASH_ML_DSA_SHA3_224, 7, 28),
    (ck::CKM_SHA3_256, ck::CKM_HASH_ML_DSA_SHA3_256, 8, 32),
    (ck::CKM_SHA3_384, ck::CKM_HASH_ML_DSA_SHA3_384, 9, 48),
    (ck::CKM_SHA3_512, ck::CKM_HASH_ML_DSA_SHA3_512, 10, 64),
];

/// A HashML-DSA pre-hash: its hash mechanism, the DER of its identifier, its length.
pub(crate) struct PreHash {
    pub(crate) hash: u64,
    pub(crate) oid: [u8; 11],
    pub(crate) len: usize,
}

fn pre_hash_where(found: impl Fn(&(u64, u64)) -> bool) -> Option<PreHash> {
    let (hash, _, arc, len) = PRE_HASHES
        .iter()
        .find(|(hash, mechanism, _, _)| found(&(*hash as u64, *mechanism as u64)))?;
    let oid = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, *arc,
    ];
    Some(PreHash {
        hash: *hash as u64,
        oid,
        len: *len,
    })
}

/// The pre-hash of a `CKM_HASH_ML_DSA_<hash>` mechanism.
pub(crate) fn pre_hash_of_mechanism(mechanism: u64) -> Option<PreHash> {
    pre_hash_where(|(_, m)| *m == mechanism)
}

/// The pre-hash `CKM_HASH_ML_DSA`'s parameter names.
pub(crate) fn pre_hash_of_hash(hash: u64) -> Option<PreHash> {
    pre_hash_where(|(h, _)| *h == hash)
}

/// The pre-hash of a HashML-DSA operation, as its data comes.
pub(crate) enum Hashing {
    /// `CKM_HASH_ML_DSA`: the application gives the hash, whole, of this length.
    Given(usize),
    /// `CKM_HASH_ML_DSA_<hash>`: the device hashes the data as it comes.
    Running(aws_lc_rs::digest::Context),
    /// The same, for SHA3-224 (aws-lc itself: aws-lc-rs has no SHA3-224).
    Legacy(super::legacy::EvpDigest),
}

impl Hashing {
    /// The device's running hash for `pre_hash`.
    pub(crate) fn running(pre_hash: &PreHash) -> Result<Hashing, Rv> {
        if pre_hash.hash == ck::CKM_SHA3_224 as u64 {
            return super::legacy::EvpDigest::sha3_224().map(Hashing::Legacy);
        }
        let algorithm = super::digest_algorithm(pre_hash.hash).ok_or(Rv::MechanismInvalid)?;
        Ok(Hashing::Running(aws_lc_rs::digest::Context::new(algorithm)))
    }

    /// Feeds data; a given hash takes no parts (PKCS#11 3.2: `CKM_HASH_ML_DSA` is single-part,
    /// `CKR_OPERATION_NOT_INITIALIZED` for an update).
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), Rv> {
        match self {
            Hashing::Given(_) => Err(Rv::OperationNotInitialized),
            Hashing::Running(context) => {
                context.update(data);
                Ok(())
            }
            Hashing::Legacy(digest) => {
                digest.update(data);
                Ok(())
            }
        }
    }

    /// The pre-hash of `data` (gathered whole for [`Hashing::Given`]).
    pub(crate) fn finish(self, data: &[u8]) -> Result<Vec<u8>, Rv> {
        match self {
            Hashing::Given(len) if data.len() == len => Ok(data.to_vec()),
            Hashing::Given(_) => Err(Rv::DataLenRange),
            Hashing::Running(context) => Ok(context.finish().as_ref().to_vec()),
            Hashing::Legacy(digest) => digest.finish(),
        }
    }
}

/// `C_EncapsulateKey`: the ciphertext for an ML-KEM public key and the shared secret.
pub(crate) fn encapsulate(key: &dyn Key) -> Result<(Vec<u8>, SecretBytes), Rv> {
    let algorithm = ml_kem(parameter_set(key)?).map_err(|_| Rv::KeyTypeInconsistent)?;
    let public =
        EncapsulationKey::new(algorithm, value(key)?).map_err(|_| Rv::KeyTypeInconsistent)?;
    let (ciphertext, secret) = public.encapsulate().map_err(|_| Rv::FunctionFailed)?;
    Ok((
        ciphertext.as_ref().to_vec(),
        SecretBytes::from_slice(secret.as_ref()),
    ))
}

/// `C_DecapsulateKey`: the shared secret of a ciphertext, with an ML-KEM private key. A
/// ciphertext of the wrong length is `CKR_ENCRYPTED_DATA_LEN_RANGE`; a forged one of the right
/// length gives an unrelated secret, as FIPS 203's implicit rejection makes it.
pub(crate) fn decapsulate(key: &dyn Key, ciphertext: &[u8]) -> Result<SecretBytes, Rv> {
    let set = parameter_set(key)?;
    if ciphertext.len() != ciphertext_len(set)? {
        return Err(Rv::EncryptedDataLenRange);
    }
    let algorithm = ml_kem(set).map_err(|_| Rv::KeyTypeInconsistent)?;
    let secret = SecretBytes::from_slice(value(key)?);
    let private =
        DecapsulationKey::new(algorithm, secret.expose()).map_err(|_| Rv::KeyTypeInconsistent)?;
    let shared = private
        .decapsulate(ciphertext.into())
        .map_err(|_| Rv::EncryptedDataInvalid)?;
    Ok(SecretBytes::from_slice(shared.as_ref()))
}
