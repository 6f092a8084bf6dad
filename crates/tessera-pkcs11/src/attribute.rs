//! Attribute values between their C layout and their wire form, over byte slices.
//!
//! The C layout of a value depends on its type ([`tessera_core::attribute::kind`]): a
//! `CK_ULONG` is a native-endian machine word in C and 8 bytes little-endian on the wire; a
//! `CK_BBOOL` is one byte in both; byte strings and dates are copied. The FFI layer reads the
//! application's bytes and calls [`to_wire`]; for `C_GetAttributeValue` it asks [`deliver`] what
//! to do with each answer.

use cryptoki_sys::CK_ULONG;
use tessera_core::attribute::{kind, AttributeKind};
use tessera_core::{Rv, SecretBytes};
use tessera_wire::AttributeAnswer;

use crate::buffer::{fit, Fit};

/// Size of a `CK_ULONG` in C.
pub const ULONG_SIZE: usize = std::mem::size_of::<CK_ULONG>();
/// Size of a `CK_ULONG` on the wire.
pub const WIRE_ULONG_SIZE: usize = 8;

/// Converts a value from its C layout to its wire form (templates of `C_CreateObject`,
/// `C_FindObjectsInit`, ...).
pub fn to_wire(ty: u64, value: &[u8]) -> Result<Vec<u8>, Rv> {
    match kind(ty) {
        AttributeKind::Bool if value.len() == 1 => Ok(value.to_vec()),
        AttributeKind::Bool => Err(Rv::AttributeValueInvalid),
        AttributeKind::Ulong => ulongs_to_wire(value, true),
        AttributeKind::MechanismArray => ulongs_to_wire(value, false),
        // An application's value (up to the frame's 16 MiB): copied without an allocation that
        // can abort its host.
        AttributeKind::Bytes | AttributeKind::Date => {
            tessera_core::bytes::try_copy(value).ok_or(Rv::HostMemory)
        }
        AttributeKind::AttributeArray => Err(Rv::AttributeTypeInvalid),
    }
}

/// Converts a value from its wire form to its C layout. A value whose wire form has the wrong
/// shape is the device's fault (`CKR_DEVICE_ERROR`).
pub fn from_wire(ty: u64, value: &[u8]) -> Result<Vec<u8>, Rv> {
    match kind(ty) {
        AttributeKind::Bool if value.len() == 1 => Ok(value.to_vec()),
        AttributeKind::Bool => Err(Rv::DeviceError),
        AttributeKind::Ulong => ulongs_from_wire(value, true),
        AttributeKind::MechanismArray => ulongs_from_wire(value, false),
        AttributeKind::Bytes | AttributeKind::Date => Ok(value.to_vec()),
        // Nested templates would need pointers of the application's; not supported yet.
        AttributeKind::AttributeArray => Err(Rv::AttributeTypeInvalid),
    }
}

fn ulongs_to_wire(value: &[u8], exactly_one: bool) -> Result<Vec<u8>, Rv> {
    let whole = value.len().is_multiple_of(ULONG_SIZE);
    if !whole || (exactly_one && value.len() != ULONG_SIZE) {
        return Err(Rv::AttributeValueInvalid);
    }
    let mut wire = Vec::new();
    wire.try_reserve_exact(value.len() / ULONG_SIZE * WIRE_ULONG_SIZE)
        .map_err(|_| Rv::HostMemory)?;
    for chunk in value.chunks_exact(ULONG_SIZE) {
        let mut word = [0u8; ULONG_SIZE];
        word.copy_from_slice(chunk);
        wire.extend_from_slice(&(CK_ULONG::from_ne_bytes(word) as u64).to_le_bytes());
    }
    Ok(wire)
}

fn ulongs_from_wire(value: &[u8], exactly_one: bool) -> Result<Vec<u8>, Rv> {
    let whole = value.len().is_multiple_of(WIRE_ULONG_SIZE);
    if !whole || (exactly_one && value.len() != WIRE_ULONG_SIZE) {
        return Err(Rv::DeviceError);
    }
    let mut c = Vec::with_capacity(value.len() / WIRE_ULONG_SIZE * ULONG_SIZE);
    for chunk in value.chunks_exact(WIRE_ULONG_SIZE) {
        let mut word = [0u8; WIRE_ULONG_SIZE];
        word.copy_from_slice(chunk);
        c.extend_from_slice(&(u64::from_le_bytes(word) as CK_ULONG).to_ne_bytes());
    }
    Ok(c)
}

/// What `C_GetAttributeValue` does with one attribute of the template (PKCS#11 3.0 §5.7).
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Copy the value (C layout) into `pValue` and set `ulValueLen` to its length.
    Value(SecretBytes),
    /// `pValue` is NULL: set `ulValueLen` to this length.
    Length(usize),
    /// Set `ulValueLen` to `CK_UNAVAILABLE_INFORMATION`; the call returns this code (after
    /// processing every other attribute).
    Unavailable(Rv),
}

/// Decides the fate of one attribute: `capacity` is `None` when `pValue` is NULL, else
/// `ulValueLen`. `Err` means the whole call fails (the device sent a malformed value).
pub fn deliver(ty: u64, answer: &AttributeAnswer, capacity: Option<usize>) -> Result<Delivery, Rv> {
    let wire = match answer {
        AttributeAnswer::Value(wire) => wire,
        AttributeAnswer::Sensitive => return Ok(Delivery::Unavailable(Rv::AttributeSensitive)),
        AttributeAnswer::Invalid => return Ok(Delivery::Unavailable(Rv::AttributeTypeInvalid)),
    };
    let value = match from_wire(ty, wire) {
        Ok(value) => SecretBytes::new(value),
        Err(Rv::AttributeTypeInvalid) => {
            return Ok(Delivery::Unavailable(Rv::AttributeTypeInvalid))
        }
        Err(rv) => return Err(rv),
    };
    Ok(match fit(value.len(), capacity) {
        Fit::Query => Delivery::Length(value.len()),
        Fit::TooSmall => Delivery::Unavailable(Rv::BufferTooSmall),
        Fit::Fits => Delivery::Value(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys as ck;

    fn native(value: CK_ULONG) -> Vec<u8> {
        value.to_ne_bytes().to_vec()
    }

    #[test]
    fn ulongs_become_eight_bytes_little_endian_and_back() {
        let c = native(ck::CKO_SECRET_KEY);
        let wire = to_wire(ck::CKA_CLASS as u64, &c).unwrap();
        assert_eq!(wire, (ck::CKO_SECRET_KEY as u64).to_le_bytes());
        assert_eq!(from_wire(ck::CKA_CLASS as u64, &wire).unwrap(), c);
        assert_eq!(
            to_wire(ck::CKA_VALUE_LEN as u64, &[1, 2, 3, 4]),
            Err(Rv::AttributeValueInvalid)
        );
        assert_eq!(
            from_wire(ck::CKA_VALUE_LEN as u64, &[1, 2, 3]),
            Err(Rv::DeviceError)
        );
    }

    #[test]
    fn bools_are_one_byte_and_bytes_are_copied() {
        assert_eq!(to_wire(ck::CKA_TOKEN as u64, &[1]).unwrap(), vec![1]);
        assert_eq!(
            to_wire(ck::CKA_TOKEN as u64, &[1, 0]),
            Err(Rv::AttributeValueInvalid)
        );
        assert_eq!(to_wire(ck::CKA_LABEL as u64, b"key").unwrap(), b"key");
        assert_eq!(to_wire(ck::CKA_LABEL as u64, b"").unwrap(), b"");
        assert_eq!(
            to_wire(ck::CKA_START_DATE as u64, b"20240131").unwrap(),
            b"20240131"
        );
        assert_eq!(
            to_wire(ck::CKA_WRAP_TEMPLATE as u64, &[0; 24]),
            Err(Rv::AttributeTypeInvalid)
        );
    }

    #[test]
    fn mechanism_arrays_convert_element_by_element() {
        let mut c = native(ck::CKM_AES_GCM);
        c.extend(native(ck::CKM_SHA256));
        let wire = to_wire(ck::CKA_ALLOWED_MECHANISMS as u64, &c).unwrap();
        assert_eq!(wire.len(), 16);
        assert_eq!(&wire[..8], (ck::CKM_AES_GCM as u64).to_le_bytes());
        assert_eq!(
            from_wire(ck::CKA_ALLOWED_MECHANISMS as u64, &wire).unwrap(),
            c
        );
        assert_eq!(
            to_wire(ck::CKA_ALLOWED_MECHANISMS as u64, &[]).unwrap(),
            b""
        );
        assert_eq!(
            to_wire(ck::CKA_ALLOWED_MECHANISMS as u64, &[0; 5]),
            Err(Rv::AttributeValueInvalid)
        );
    }

    #[test]
    fn get_attribute_value_rules() {
        let class = AttributeAnswer::Value((ck::CKO_DATA as u64).to_le_bytes().to_vec());
        let ty = ck::CKA_CLASS as u64;
        assert_eq!(deliver(ty, &class, None), Ok(Delivery::Length(ULONG_SIZE)));
        assert_eq!(
            deliver(ty, &class, Some(ULONG_SIZE - 1)),
            Ok(Delivery::Unavailable(Rv::BufferTooSmall))
        );
        assert_eq!(
            deliver(ty, &class, Some(64)),
            Ok(Delivery::Value(SecretBytes::new(native(ck::CKO_DATA))))
        );
        assert_eq!(
            deliver(ty, &AttributeAnswer::Sensitive, Some(64)),
            Ok(Delivery::Unavailable(Rv::AttributeSensitive))
        );
        assert_eq!(
            deliver(ty, &AttributeAnswer::Invalid, None),
            Ok(Delivery::Unavailable(Rv::AttributeTypeInvalid))
        );
        assert_eq!(
            deliver(ty, &AttributeAnswer::Value(vec![1]), None),
            Err(Rv::DeviceError)
        );
        assert_eq!(
            deliver(
                ck::CKA_WRAP_TEMPLATE as u64,
                &AttributeAnswer::Value(vec![]),
                None
            ),
            Ok(Delivery::Unavailable(Rv::AttributeTypeInvalid))
        );
    }
}
