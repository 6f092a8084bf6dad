//! Key wrapping: AES key wrap (RFC 3394 `CKM_AES_KEY_WRAP`, RFC 5649 `CKM_AES_KEY_WRAP_KWP`,
//! and `CKM_AES_KEY_WRAP_PAD`, RFC 3394 over PKCS#7 padding) and RSA-OAEP, of secret keys.

use aws_lc_rs::key_wrap::{KeyEncryptionKey, KeyWrap, KeyWrapPadded, AES_128, AES_256};
use tessera_core::{ck, Mechanism, MechanismParameter, Rv, SecretBytes};

use crate::crypto::{ActiveOperation, Output};
use crate::object::Attributes;

fn kek(
    wrapping: &Attributes,
    usage: ck::CK_ATTRIBUTE_TYPE,
) -> Result<KeyEncryptionKey<aws_lc_rs::key_wrap::AesBlockCipher>, Rv> {
    if wrapping.class() != ck::CKO_SECRET_KEY as u64 || wrapping.key_type() != ck::CKK_AES as u64 {
        return Err(if usage == ck::CKA_WRAP {
            Rv::WrappingKeyTypeInconsistent
        } else {
            Rv::UnwrappingKeyTypeInconsistent
        });
    }
    if !wrapping.flag(usage) {
        return Err(Rv::KeyFunctionNotPermitted);
    }
    let value = wrapping.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
    let cipher = match value.len() {
        16 => &AES_128,
        32 => &AES_256,
        _ => {
            return Err(if usage == ck::CKA_WRAP {
                Rv::WrappingKeySizeRange
            } else {
                Rv::UnwrappingKeySizeRange
            })
        }
    };
    KeyEncryptionKey::new(cipher, value).map_err(|_| Rv::FunctionFailed)
}

fn no_parameter(mechanism: &Mechanism) -> Result<(), Rv> {
    match &mechanism.parameter {
        MechanismParameter::None => Ok(()),
        // The default IV may be given explicitly.
        MechanismParameter::Bytes(iv) if iv.is_empty() => Ok(()),
        _ => Err(Rv::MechanismParamInvalid),
    }
}

/// Wraps the value of secret key `target` with `wrapping`.
pub(crate) fn wrap(
    mechanism: &Mechanism,
    wrapping: &Attributes,
    target: &Attributes,
) -> Result<Vec<u8>, Rv> {
    if target.class() != ck::CKO_SECRET_KEY as u64 {
        return Err(Rv::KeyNotWrappable);
    }
    if !target.flag(ck::CKA_EXTRACTABLE) {
        return Err(Rv::KeyUnextractable);
    }
    if target.flag(ck::CKA_WRAP_WITH_TRUSTED) && !wrapping.flag(ck::CKA_TRUSTED) {
        return Err(Rv::KeyNotWrappable);
    }
    if !crate::object::matches_wrap_template(wrapping, target)? {
        return Err(Rv::KeyNotWrappable);
    }
    let value = target.get(ck::CKA_VALUE).ok_or(Rv::KeyNotWrappable)?;
    match mechanism.ty as ck::CK_MECHANISM_TYPE {
        ck::CKM_AES_KEY_WRAP | ck::CKM_AES_KEY_WRAP_PAD => {
            no_parameter(mechanism)?;
            let mut input = SecretBytes::from_slice(value);
            if mechanism.ty == ck::CKM_AES_KEY_WRAP_PAD as u64 {
                let pad = 8 - input.len() % 8;
                input.extend_from_slice(&[pad as u8; 8][..pad]);
            } else if !input.len().is_multiple_of(8) || input.len() < 16 {
                return Err(Rv::KeySizeRange);
            }
            let mut out = vec![0u8; input.len() + 8];
            let len = kek(wrapping, ck::CKA_WRAP)?
                .wrap(input.expose(), &mut out)
                .map_err(|_| Rv::FunctionFailed)?
                .len();
            out.truncate(len);
            Ok(out)
        }
        ck::CKM_AES_KEY_WRAP_KWP => {
            no_parameter(mechanism)?;
            let mut out = vec![0u8; value.len() + 16];
            let len = kek(wrapping, ck::CKA_WRAP)?
                .wrap_with_padding(value, &mut out)
                .map_err(|_| Rv::FunctionFailed)?
                .len();
            out.truncate(len);
            Ok(out)
        }
        ck::CKM_RSA_PKCS => {
            let operation =
                ActiveOperation::rsa_cipher(mechanism, wrapping, true, false, ck::CKA_WRAP)?;
            wrapped(operation, value)
        }
        ck::CKM_RSA_PKCS_OAEP => {
            if !wrapping.flag(ck::CKA_WRAP) {
                return Err(Rv::KeyFunctionNotPermitted);
            }
            let operation = ActiveOperation::oaep(mechanism, wrapping, true, ck::CKA_WRAP)?;
            wrapped(operation, value)
        }
        _ => Err(Rv::MechanismInvalid),
    }
}

/// Recovers a key value wrapped with `unwrapping`.
/// `weak_allowed`: the `w` flag, without which PKCS #1 v1.5 unwrapping (a padding oracle, as
/// its decryption is) is refused.
pub(crate) fn unwrap(
    mechanism: &Mechanism,
    unwrapping: &Attributes,
    wrapped: &[u8],
    weak_allowed: bool,
) -> Result<SecretBytes, Rv> {
    match mechanism.ty as ck::CK_MECHANISM_TYPE {
        ck::CKM_RSA_PKCS => {
            let operation = ActiveOperation::rsa_cipher(
                mechanism,
                unwrapping,
                false,
                weak_allowed,
                ck::CKA_UNWRAP,
            )?;
            unwrapped(operation, wrapped)
        }
        ck::CKM_AES_KEY_WRAP | ck::CKM_AES_KEY_WRAP_PAD => {
            no_parameter(mechanism)?;
            if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
                return Err(Rv::WrappedKeyLenRange);
            }
            let mut out = SecretBytes::new(vec![0u8; wrapped.len()]);
            let len = kek(unwrapping, ck::CKA_UNWRAP)?
                .unwrap(wrapped, out.expose_mut())
                .map_err(|_| Rv::WrappedKeyInvalid)?
                .len();
            out.truncate(len);
            if mechanism.ty == ck::CKM_AES_KEY_WRAP_PAD as u64 {
                let pad = usize::from(*out.expose().last().ok_or(Rv::WrappedKeyInvalid)?);
                let bytes = out.expose();
                if !(1..=8).contains(&pad)
                    || pad > bytes.len()
                    || bytes[bytes.len() - pad..]
                        .iter()
                        .any(|b| usize::from(*b) != pad)
                {
                    return Err(Rv::WrappedKeyInvalid);
                }
                let keep = bytes.len() - pad;
                out.truncate(keep);
            }
            Ok(out)
        }
        ck::CKM_AES_KEY_WRAP_KWP => {
            no_parameter(mechanism)?;
            if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
                return Err(Rv::WrappedKeyLenRange);
            }
            let mut out = SecretBytes::new(vec![0u8; wrapped.len()]);
            let len = kek(unwrapping, ck::CKA_UNWRAP)?
                .unwrap_with_padding(wrapped, out.expose_mut())
                .map_err(|_| Rv::WrappedKeyInvalid)?
                .len();
            out.truncate(len);
            Ok(out)
        }
        ck::CKM_RSA_PKCS_OAEP => {
            if !unwrapping.flag(ck::CKA_UNWRAP) {
                return Err(Rv::KeyFunctionNotPermitted);
            }
            let operation = ActiveOperation::oaep(mechanism, unwrapping, false, ck::CKA_UNWRAP)?;
            unwrapped(operation, wrapped)
        }
        _ => Err(Rv::MechanismInvalid),
    }
}

/// The wrapped value of `value` by an RSA encryption `operation`.
fn wrapped(mut operation: ActiveOperation, value: &[u8]) -> Result<Vec<u8>, Rv> {
    operation.update(value)?;
    match operation.finish(&[])? {
        Output::Bytes(bytes) => Ok(bytes),
        _ => Err(Rv::GeneralError),
    }
}

/// The key value in `wrapped`, by an RSA decryption `operation`; a ciphertext it cannot open is
/// `CKR_WRAPPED_KEY_INVALID`.
fn unwrapped(mut operation: ActiveOperation, wrapped: &[u8]) -> Result<SecretBytes, Rv> {
    operation.update(wrapped)?;
    match operation.finish(&[]) {
        Ok(Output::Secret(secret)) => Ok(secret),
        Ok(_) => Err(Rv::GeneralError),
        Err(Rv::EncryptedDataInvalid | Rv::EncryptedDataLenRange) => Err(Rv::WrappedKeyInvalid),
        Err(e) => Err(e),
    }
}
