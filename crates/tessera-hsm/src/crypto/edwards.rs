//! Curve25519 keys: Ed25519 (`CKK_EC_EDWARDS`, `CKM_EDDSA`) and X25519 (`CKK_EC_MONTGOMERY`,
//! derivation with `CKM_ECDH1_DERIVE`), as PKCS#11 3.0 defines them: `CKA_EC_PARAMS` names the
//! curve (OID or printable string), `CKA_EC_POINT` is the raw public key in a DER OCTET STRING,
//! and the private `CKA_VALUE` is the 32-byte private key.

use super::Key;
use aws_lc_rs::agreement;
use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use tessera_core::{ck, der, Rv, SecretBytes};
use zeroize::Zeroizing;

use super::GeneratedPair;

/// `id-Ed25519`, 1.3.101.112.
pub(crate) const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
/// `id-X25519`, 1.3.101.110.
pub(crate) const X25519_OID: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x6E];

/// The curve names PKCS#11 3.0 also allows in `CKA_EC_PARAMS`, as DER PrintableStrings.
const EDWARDS25519_NAME: &[u8] = b"\x13\x0cedwards25519";
const CURVE25519_NAME: &[u8] = b"\x13\x0acurve25519";

/// Whether `CKA_EC_PARAMS` names Ed25519.
pub(crate) fn is_ed25519(params: Option<&[u8]>) -> bool {
    params.is_some_and(|p| p == ED25519_OID || p == EDWARDS25519_NAME)
}

/// Whether `CKA_EC_PARAMS` names X25519.
pub(crate) fn is_x25519(params: Option<&[u8]>) -> bool {
    params.is_some_and(|p| p == X25519_OID || p == CURVE25519_NAME)
}

/// Whether `CKA_EC_PARAMS` names the curve of this Edwards (Ed25519) or Montgomery (X25519)
/// key type; false for any other key type.
pub(crate) fn names_curve(key_type: ck::CK_KEY_TYPE, params: Option<&[u8]>) -> bool {
    match key_type {
        ck::CKK_EC_EDWARDS => is_ed25519(params),
        ck::CKK_EC_MONTGOMERY => is_x25519(params),
        _ => false,
    }
}

/// The raw public key of `CKA_EC_POINT` (a DER OCTET STRING, or the bare 32 bytes).
pub(crate) fn raw_point(value: &[u8]) -> &[u8] {
    der::single(value, der::OCTET_STRING).unwrap_or(value)
}

/// A new Ed25519 key pair.
pub(crate) fn generate_ed25519(params: &[u8]) -> Result<GeneratedPair, Rv> {
    let pair = Ed25519KeyPair::generate().map_err(|_| Rv::FunctionFailed)?;
    let seed = pair
        .seed()
        .and_then(|s| s.as_be_bytes())
        .map_err(|_| Rv::FunctionFailed)?;
    let point = super::keys::octet_string(pair.public_key().as_ref())?;
    Ok((
        vec![
            (ck::CKA_EC_PARAMS, params.to_vec()),
            (ck::CKA_EC_POINT, point),
        ],
        vec![
            (ck::CKA_EC_PARAMS, Zeroizing::new(params.to_vec())),
            (ck::CKA_VALUE, Zeroizing::new(seed.as_ref().to_vec())),
        ],
    ))
}

/// A new X25519 key pair.
pub(crate) fn generate_x25519(params: &[u8]) -> Result<GeneratedPair, Rv> {
    let private =
        agreement::PrivateKey::generate(&agreement::X25519).map_err(|_| Rv::FunctionFailed)?;
    let public = private
        .compute_public_key()
        .map_err(|_| Rv::FunctionFailed)?;
    let bytes: aws_lc_rs::encoding::Curve25519SeedBin<'_> =
        private.as_be_bytes().map_err(|_| Rv::FunctionFailed)?;
    Ok((
        vec![
            (ck::CKA_EC_PARAMS, params.to_vec()),
            (
                ck::CKA_EC_POINT,
                super::keys::octet_string(public.as_ref())?,
            ),
        ],
        vec![
            (ck::CKA_EC_PARAMS, Zeroizing::new(params.to_vec())),
            (ck::CKA_VALUE, Zeroizing::new(bytes.as_ref().to_vec())),
        ],
    ))
}

/// Signs with an Ed25519 private key.
pub(crate) fn sign(key: &dyn Key, message: &[u8]) -> Result<Vec<u8>, Rv> {
    let seed = SecretBytes::from_slice(key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?);
    let pair =
        Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| Rv::KeyTypeInconsistent)?;
    Ok(pair.sign(message).as_ref().to_vec())
}

/// Verifies with an Ed25519 public key.
pub(crate) fn verify(key: &dyn Key, message: &[u8], signature: &[u8]) -> Result<(), Rv> {
    if signature.len() != 64 {
        return Err(Rv::SignatureLenRange);
    }
    let point = raw_point(key.get(ck::CKA_EC_POINT).ok_or(Rv::KeyTypeInconsistent)?);
    UnparsedPublicKey::new(&ED25519, point)
        .verify(message, signature)
        .map_err(|_| Rv::SignatureInvalid)
}

/// Ed25519ctx or Ed25519ph (legacy module): a signature, or a verification's outcome.
pub(crate) fn variant(
    key: &dyn Key,
    variant: &super::legacy::Ed25519Variant,
    message: &[u8],
    verify: bool,
    signature: &[u8],
) -> Result<super::Output, Rv> {
    if verify {
        let point = raw_point(key.get(ck::CKA_EC_POINT).ok_or(Rv::KeyTypeInconsistent)?);
        return variant
            .verify(point, message, signature)
            .map(|()| super::Output::Verified);
    }
    let seed = SecretBytes::from_slice(key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?);
    variant
        .sign(seed.expose(), message)
        .map(super::Output::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::der::Encode;

    #[test]
    fn the_curve_names_are_their_der_printable_strings() {
        let name = |s| {
            ::der::asn1::PrintableStringRef::new(s)
                .unwrap()
                .to_der()
                .unwrap()
        };
        assert_eq!(EDWARDS25519_NAME, name("edwards25519"));
        assert_eq!(CURVE25519_NAME, name("curve25519"));
        assert!(is_ed25519(Some(EDWARDS25519_NAME)) && is_x25519(Some(CURVE25519_NAME)));
    }
}
