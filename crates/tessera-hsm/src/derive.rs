//! Key derivation: ECDH (`CKM_ECDH1_DERIVE`, `CKM_ECDH1_COFACTOR_DERIVE`) on P-256/384/521 and
//! X25519 keys with the null KDF or the ANSI X9.63 KDFs (`CKD_SHA1_KDF` ... `CKD_SHA512_KDF`,
//! `CKD_SHA3_256_KDF` ... `CKD_SHA3_512_KDF`), HKDF (`CKM_HKDF_DERIVE`, `CKM_HKDF_DATA`,
//! RFC 5869), and the derivations that join values (`CKM_CONCATENATE_BASE_AND_KEY`,
//! `CKM_CONCATENATE_BASE_AND_DATA`, `CKM_CONCATENATE_DATA_AND_BASE`, `CKM_XOR_BASE_AND_DATA`).

use aws_lc_rs::{agreement, digest, hkdf, hmac};
use tessera_core::{ck, der, Mechanism, MechanismParameter, Rv, SecretBytes};

use crate::crypto::edwards;
use crate::object::Attributes;
use crate::Hsm;

fn fit(secret: SecretBytes, length: Option<u64>) -> Result<SecretBytes, Rv> {
    match length {
        None => Ok(secret),
        Some(n) if n as usize <= secret.len() && n > 0 => {
            Ok(SecretBytes::from_slice(&secret.expose()[..n as usize]))
        }
        Some(_) => Err(Rv::TemplateInconsistent),
    }
}

fn ecdh(
    parameter: &MechanismParameter,
    base: &Attributes,
    length: Option<u64>,
) -> Result<SecretBytes, Rv> {
    let MechanismParameter::Ecdh {
        kdf,
        shared_data,
        public_data,
    } = parameter
    else {
        return Err(Rv::MechanismParamInvalid);
    };
    let kdf = x963_hash(*kdf)?;
    if kdf.is_none() && !shared_data.is_empty() {
        // PKCS#11 3.0 §6.3.16: with CKD_NULL, pSharedData must be NULL.
        return Err(Rv::MechanismParamInvalid);
    }
    if base.class() != ck::CKO_PRIVATE_KEY as u64 {
        return Err(Rv::KeyTypeInconsistent);
    }
    let params = base.get(ck::CKA_EC_PARAMS);
    let value = base.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
    let peer = der::single(public_data, der::OCTET_STRING).unwrap_or(public_data);
    let (algorithm, size): (&agreement::Algorithm, usize) =
        if base.key_type() == ck::CKK_EC_MONTGOMERY as u64 && edwards::is_x25519(params) {
            (&agreement::X25519, 32)
        } else if base.key_type() == ck::CKK_EC as u64 {
            match params {
                Some(p) if p == der::P256_PARAMS => (&agreement::ECDH_P256, 32),
                Some(p) if p == der::P384_PARAMS => (&agreement::ECDH_P384, 48),
                Some(p) if p == der::P521_PARAMS => (&agreement::ECDH_P521, 66),
                _ => return Err(Rv::CurveNotSupported),
            }
        } else {
            return Err(Rv::KeyTypeInconsistent);
        };
    let mut scalar = vec![0u8; size.saturating_sub(value.len())];
    scalar.extend_from_slice(value);
    let scalar = SecretBytes::new(scalar);
    let private = agreement::PrivateKey::from_private_key(algorithm, scalar.expose())
        .map_err(|_| Rv::KeyTypeInconsistent)?;
    let shared = agreement::agree(
        &private,
        agreement::UnparsedPublicKey::new(algorithm, peer),
        Rv::MechanismParamInvalid,
        |s| Ok(SecretBytes::from_slice(s)),
    )?;
    match kdf {
        None => fit(shared, length),
        Some((hash, order)) => {
            let wanted = length.unwrap_or(hash.output_len() as u64);
            x963(hash, order, shared.expose(), shared_data, wanted)
        }
    }
}

/// The SP 800-56C KDF types (`CKD_SHA1_KDF_SP800` ... `CKD_SHA3_512_KDF_SP800`, PKCS#11 3.0),
/// which cryptoki-sys 0.4 does not name.
const CKD_SHA1_KDF_SP800: u64 = 0x0e;
const CKD_SHA224_KDF_SP800: u64 = 0x0f;
const CKD_SHA256_KDF_SP800: u64 = 0x10;
const CKD_SHA384_KDF_SP800: u64 = 0x11;
const CKD_SHA512_KDF_SP800: u64 = 0x12;
const CKD_SHA3_256_KDF_SP800: u64 = 0x14;
const CKD_SHA3_384_KDF_SP800: u64 = 0x15;
const CKD_SHA3_512_KDF_SP800: u64 = 0x16;

/// Where a hash KDF puts its counter: after the shared secret (ANSI X9.63) or before it (the
/// one-step KDF of NIST SP 800-56C, §4.1 option 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterAt {
    /// Hash(Z ‖ counter ‖ SharedInfo).
    X963,
    /// Hash(counter ‖ Z ‖ FixedInfo).
    Sp800,
}

/// The hash of an ECDH KDF and where its counter goes; `None` for `CKD_NULL`. SHA3-224
/// (`CKD_SHA3_224_KDF`, `_SP800`) is not offered (aws-lc-rs has no SHA3-224):
/// `CKR_MECHANISM_PARAM_INVALID`.
fn x963_hash(kdf: u64) -> Result<Option<(&'static digest::Algorithm, CounterAt)>, Rv> {
    use CounterAt::{Sp800, X963};
    Ok(Some(match kdf {
        k if k == ck::CKD_NULL as u64 => return Ok(None),
        k if k == ck::CKD_SHA1_KDF as u64 => (&digest::SHA1_FOR_LEGACY_USE_ONLY, X963),
        k if k == ck::CKD_SHA224_KDF as u64 => (&digest::SHA224, X963),
        k if k == ck::CKD_SHA256_KDF as u64 => (&digest::SHA256, X963),
        k if k == ck::CKD_SHA384_KDF as u64 => (&digest::SHA384, X963),
        k if k == ck::CKD_SHA512_KDF as u64 => (&digest::SHA512, X963),
        k if k == ck::CKD_SHA3_256_KDF as u64 => (&digest::SHA3_256, X963),
        k if k == ck::CKD_SHA3_384_KDF as u64 => (&digest::SHA3_384, X963),
        k if k == ck::CKD_SHA3_512_KDF as u64 => (&digest::SHA3_512, X963),
        CKD_SHA1_KDF_SP800 => (&digest::SHA1_FOR_LEGACY_USE_ONLY, Sp800),
        CKD_SHA224_KDF_SP800 => (&digest::SHA224, Sp800),
        CKD_SHA256_KDF_SP800 => (&digest::SHA256, Sp800),
        CKD_SHA384_KDF_SP800 => (&digest::SHA384, Sp800),
        CKD_SHA512_KDF_SP800 => (&digest::SHA512, Sp800),
        CKD_SHA3_256_KDF_SP800 => (&digest::SHA3_256, Sp800),
        CKD_SHA3_384_KDF_SP800 => (&digest::SHA3_384, Sp800),
        CKD_SHA3_512_KDF_SP800 => (&digest::SHA3_512, Sp800),
        _ => return Err(Rv::MechanismParamInvalid),
    }))
}

/// The ANSI X9.63 KDF (SEC 1 v2 §3.6.1): Hash(Z ‖ counter ‖ SharedInfo) for the counters 1, 2,
/// ... (32 bits, big-endian), concatenated and cut to `length` bytes; with the counter first,
/// the one-step KDF of SP 800-56C.
fn x963(
    hash: &'static digest::Algorithm,
    order: CounterAt,
    z: &[u8],
    shared_info: &[u8],
    length: u64,
) -> Result<SecretBytes, Rv> {
    let length = usize::try_from(length).map_err(|_| Rv::TemplateInconsistent)?;
    // The standard's bound: fewer than 2^32 - 1 blocks; a key is far shorter.
    if length == 0 || length > 255 * hash.output_len() {
        return Err(Rv::TemplateInconsistent);
    }
    let mut out = SecretBytes::with_capacity(length);
    let mut counter: u32 = 1;
    while out.len() < length {
        let mut context = digest::Context::new(hash);
        match order {
            CounterAt::X963 => {
                context.update(z);
                context.update(&counter.to_be_bytes());
            }
            CounterAt::Sp800 => {
                context.update(&counter.to_be_bytes());
                context.update(z);
            }
        }
        context.update(shared_info);
        let block = context.finish();
        let take = (length - out.len()).min(block.as_ref().len());
        out.extend_from_slice(&block.as_ref()[..take]);
        counter += 1;
    }
    Ok(out)
}

/// HKDF's hash: HMAC for the extract step, aws-lc's HKDF for the expand step, and the hash's
/// length.
fn prf(mechanism: u64) -> Result<(hmac::Algorithm, hkdf::Algorithm, usize), Rv> {
    match mechanism as ck::CK_MECHANISM_TYPE {
        ck::CKM_SHA256 => Ok((hmac::HMAC_SHA256, hkdf::HKDF_SHA256, 32)),
        ck::CKM_SHA384 => Ok((hmac::HMAC_SHA384, hkdf::HKDF_SHA384, 48)),
        ck::CKM_SHA512 => Ok((hmac::HMAC_SHA512, hkdf::HKDF_SHA512, 64)),
        _ => Err(Rv::MechanismParamInvalid),
    }
}

/// The length of HKDF output wanted (aws-lc's expand takes it as a key type).
struct Length(usize);

impl hkdf::KeyType for Length {
    fn len(&self) -> usize {
        self.0
    }
}

impl Hsm {
    fn hkdf(
        &self,
        client: u64,
        session: u64,
        parameter: &MechanismParameter,
        ikm: &[u8],
        length: Option<u64>,
    ) -> Result<SecretBytes, Rv> {
        let MechanismParameter::Hkdf {
            extract,
            expand,
            prf: hash,
            salt_type,
            salt,
            salt_key,
            info,
        } = parameter
        else {
            return Err(Rv::MechanismParamInvalid);
        };
        if !extract && !expand {
            return Err(Rv::MechanismParamInvalid);
        }
        let (algorithm, expansion, hash_len) = prf(*hash)?;
        let prk = if *extract {
            let salt = match *salt_type as ck::CK_FLAGS {
                ck::CKF_HKDF_SALT_NULL => SecretBytes::new(vec![0u8; hash_len]),
                ck::CKF_HKDF_SALT_DATA => SecretBytes::from_slice(salt),
                ck::CKF_HKDF_SALT_KEY => {
                    let key = self.usable_key(client, session, *salt_key)?;
                    SecretBytes::from_slice(
                        key.get(ck::CKA_VALUE).ok_or(Rv::MechanismParamInvalid)?,
                    )
                }
                _ => return Err(Rv::MechanismParamInvalid),
            };
            let tag = hmac::sign(&hmac::Key::new(algorithm, salt.expose()), ikm);
            SecretBytes::from_slice(tag.as_ref())
        } else {
            SecretBytes::from_slice(ikm)
        };
        if !expand {
            return fit(prk, length);
        }
        let wanted = length.ok_or(Rv::TemplateIncomplete)? as usize;
        if wanted == 0 || wanted > 255 * hash_len {
            return Err(Rv::TemplateInconsistent);
        }
        // The expand step is aws-lc's (RFC 5869 section 2.3), written straight into the secret.
        let mut okm = SecretBytes::with_capacity(wanted);
        okm.extend_from_slice(&vec![0u8; wanted]);
        hkdf::Prk::new_less_safe(expansion, prk.expose())
            .expand(&[info.as_slice()], Length(wanted))
            .and_then(|expanded| expanded.fill(okm.expose_mut()))
            .map_err(|_| Rv::FunctionFailed)?;
        Ok(okm)
    }
}

/// The keys a derivation starts from: the base key, and the other key of
/// `CKM_CONCATENATE_BASE_AND_KEY` (loaded once, by the caller, which also judges the new key's
/// protection by it).
pub(crate) struct Keys<'a> {
    pub(crate) base: &'a Attributes,
    pub(crate) other: Option<&'a Attributes>,
}

/// Derives the value of a new secret key from `keys`.
pub(crate) fn derive(
    hsm: &Hsm,
    client: u64,
    session: u64,
    mechanism: &Mechanism,
    keys: Keys<'_>,
    length: Option<u64>,
) -> Result<SecretBytes, Rv> {
    let base = keys.base;
    match mechanism.ty as ck::CK_MECHANISM_TYPE {
        ck::CKM_ECDH1_DERIVE | ck::CKM_ECDH1_COFACTOR_DERIVE => {
            ecdh(&mechanism.parameter, base, length)
        }
        ck::CKM_HKDF_DERIVE => {
            if base.class() != ck::CKO_SECRET_KEY as u64 {
                return Err(Rv::KeyTypeInconsistent);
            }
            let ikm = base.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
            hsm.hkdf(client, session, &mechanism.parameter, ikm, length)
        }
        ck::CKM_HKDF_DATA => {
            if base.class() != ck::CKO_DATA as u64 {
                return Err(Rv::KeyTypeInconsistent);
            }
            // A data object's value defaults to empty (v3.0 §4.5): empty input keying material.
            let ikm = base.get(ck::CKA_VALUE).unwrap_or_default();
            hsm.hkdf(client, session, &mechanism.parameter, ikm, length)
        }
        ck::CKM_AES_ECB_ENCRYPT_DATA | ck::CKM_AES_CBC_ENCRYPT_DATA => {
            encrypt_data(mechanism, base, length)
        }
        ck::CKM_CONCATENATE_BASE_AND_DATA
        | ck::CKM_CONCATENATE_DATA_AND_BASE
        | ck::CKM_XOR_BASE_AND_DATA
        | ck::CKM_CONCATENATE_BASE_AND_KEY => {
            let value = secret_value(base)?;
            let joined = match (mechanism.ty as ck::CK_MECHANISM_TYPE, &mechanism.parameter) {
                (ck::CKM_CONCATENATE_BASE_AND_DATA, MechanismParameter::Bytes(data)) => {
                    [value, data.as_slice()].concat()
                }
                (ck::CKM_CONCATENATE_DATA_AND_BASE, MechanismParameter::Bytes(data)) => {
                    [data.as_slice(), value].concat()
                }
                // PKCS#11 3.0 §6.37.5: as long as the shorter of the two.
                (ck::CKM_XOR_BASE_AND_DATA, MechanismParameter::Bytes(data)) => {
                    value.iter().zip(data).map(|(a, b)| a ^ b).collect()
                }
                (ck::CKM_CONCATENATE_BASE_AND_KEY, MechanismParameter::Key(_)) => {
                    let other = keys.other.ok_or(Rv::MechanismParamInvalid)?;
                    [value, secret_value(other)?].concat()
                }
                _ => return Err(Rv::MechanismParamInvalid),
            };
            if joined.is_empty() {
                return Err(Rv::MechanismParamInvalid);
            }
            fit(SecretBytes::new(joined), length)
        }
        ck::CKM_EXTRACT_KEY_FROM_KEY => {
            let MechanismParameter::BitIndex(index) = mechanism.parameter else {
                return Err(Rv::MechanismParamInvalid);
            };
            let length = length.ok_or(Rv::TemplateIncomplete)?;
            extract(secret_value(base)?, index, length).map(SecretBytes::new)
        }
        _ => Err(Rv::MechanismInvalid),
    }
}

/// `CKM_EXTRACT_KEY_FROM_KEY` (PKCS#11 3.0 §6.37.7): `length` bytes of the base key's value
/// read as a bit string from bit `index` (bit 0 the most significant of the first byte),
/// wrapping around to its start.
fn extract(value: &[u8], index: u64, length: u64) -> Result<Vec<u8>, Rv> {
    let bits = value.len() as u64 * 8;
    if bits == 0 || length == 0 || length > MAX_EXTRACTED {
        return Err(Rv::TemplateInconsistent);
    }
    let bit = |at: u64| {
        let at = at % bits;
        (value[(at / 8) as usize] >> (7 - at % 8)) & 1
    };
    Ok((0..length)
        .map(|byte| {
            (0..8).fold(0u8, |out, i| {
                (out << 1) | bit(index.wrapping_add(byte * 8 + i))
            })
        })
        .collect())
}

/// The longest key `CKM_EXTRACT_KEY_FROM_KEY` makes, in bytes.
const MAX_EXTRACTED: u64 = 512;

/// Whether `mechanism` derives a key that holds the values it joins or extracts
/// (concatenation, XOR, extraction): the new key keeps the protection of the keys it came
/// from.
pub(crate) fn joins_values(mechanism: u64) -> bool {
    matches!(
        mechanism as ck::CK_MECHANISM_TYPE,
        ck::CKM_CONCATENATE_BASE_AND_KEY
            | ck::CKM_CONCATENATE_BASE_AND_DATA
            | ck::CKM_CONCATENATE_DATA_AND_BASE
            | ck::CKM_XOR_BASE_AND_DATA
            | ck::CKM_EXTRACT_KEY_FROM_KEY
    )
}

/// The value of a secret key, for the derivations that join values (PKCS#11 3.0 §6.37).
fn secret_value(key: &Attributes) -> Result<&[u8], Rv> {
    if key.class() != ck::CKO_SECRET_KEY as u64 {
        return Err(Rv::KeyTypeInconsistent);
    }
    key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)
}

/// `CKM_AES_ECB_ENCRYPT_DATA` and `CKM_AES_CBC_ENCRYPT_DATA`: the new key's value is the
/// encryption of the parameter's data (whole blocks) under the base AES key, cut to
/// `CKA_VALUE_LEN`.
fn encrypt_data(
    mechanism: &Mechanism,
    base: &Attributes,
    length: Option<u64>,
) -> Result<SecretBytes, Rv> {
    let MechanismParameter::EncryptData { iv, data } = &mechanism.parameter else {
        return Err(Rv::MechanismParamInvalid);
    };
    let cbc = mechanism.ty == ck::CKM_AES_CBC_ENCRYPT_DATA as u64;
    if cbc != (iv.len() == 16) || data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(Rv::MechanismParamInvalid);
    }
    if base.class() != ck::CKO_SECRET_KEY as u64 || base.key_type() != ck::CKK_AES as u64 {
        return Err(Rv::KeyTypeInconsistent);
    }
    let key = base.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
    let iv = if cbc {
        Some(<[u8; 16]>::try_from(iv.as_slice()).map_err(|_| Rv::MechanismParamInvalid)?)
    } else {
        None
    };
    let value = crate::crypto::aes_encrypt_blocks(key, iv, data)?;
    fit(SecretBytes::new(value), length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_key_from_key_reads_bits_and_wraps() {
        // PKCS#11's example: 0x329F84A9 from bit 21, two bytes: 0x95, 0x26 (wrapped around).
        assert_eq!(
            extract(&[0x32, 0x9f, 0x84, 0xa9], 21, 2),
            Ok(vec![0x95, 0x26])
        );
        assert_eq!(extract(&[0xab], 0, 1), Ok(vec![0xab]));
        assert_eq!(extract(&[0xab], 8, 2), Ok(vec![0xab, 0xab]));
        assert_eq!(extract(&[], 0, 1), Err(Rv::TemplateInconsistent));
    }
}
