//! C structures to typed values (templates) and typed values to C structures (info records).
//! Each conversion happens once, at the boundary. Mechanisms have their own module,
//! [`super::mechanism`].

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_MECHANISM_INFO, CK_SESSION_INFO, CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG,
    CK_UNAVAILABLE_INFORMATION, CK_VERSION,
};
use tessera_core::attribute::{kind, AttributeKind};
use tessera_core::info::{MechanismInfo, SessionInfo, SlotInfo, TokenInfo, Version};
use tessera_core::{Attribute, Rv, Template};

use super::{bytes, slice, MAX_INPUT};
use crate::attribute::to_wire;
use crate::buffer::padded;
use crate::CkResult;

/// A C template (`pTemplate`, `ulCount`) as a [`Template`] in wire form.
///
/// # Safety
///
/// A non-NULL `attributes` must point to `count` valid `CK_ATTRIBUTE`s, each `pValue` NULL or
/// valid for `ulValueLen` bytes, for the duration of the call.
pub(crate) unsafe fn template(
    attributes: *const CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CkResult<Template> {
    let mut budget = MAX_INPUT;
    // SAFETY: forwarded contract.
    unsafe { template_within(attributes, count, &mut budget) }
}

/// As [`template`], with the values' bytes taken from `budget`, which several templates of one
/// call share (what is left goes down as they are read).
///
/// # Safety
///
/// As for [`template`].
pub(crate) unsafe fn template_within(
    attributes: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    budget: &mut usize,
) -> CkResult<Template> {
    // SAFETY: forwarded contract.
    unsafe { converted(attributes, count, true, budget) }
}

/// The values of a template, nested ones included, hold at most `budget` bytes together (what
/// one frame can carry): a value over what is left is `CKR_ATTRIBUTE_VALUE_INVALID`, refused
/// before it is read.
///
/// # Safety
///
/// As for [`template`]; an attribute array's `pValue` holds `ulValueLen` bytes of
/// `CK_ATTRIBUTE`s, each valid as above.
unsafe fn converted(
    attributes: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    outer: bool,
    budget: &mut usize,
) -> CkResult<Template> {
    // SAFETY: forwarded contract.
    let attributes = unsafe { slice(attributes, count) }?;
    let mut template = Vec::with_capacity(attributes.len());
    for attribute in attributes {
        let ty = attribute.type_ as u64;
        let len = usize::try_from(attribute.ulValueLen as u64).unwrap_or(usize::MAX);
        *budget = budget
            .checked_sub(len)
            .ok_or(Rv::AttributeValueInvalid.code())?;
        let value = if kind(ty) == AttributeKind::AttributeArray {
            // A template in a template (CKA_WRAP_TEMPLATE, ...): one level only.
            let size = std::mem::size_of::<CK_ATTRIBUTE>() as CK_ULONG;
            if !outer || attribute.ulValueLen % size != 0 {
                return Err(Rv::AttributeValueInvalid.code());
            }
            let inner = attribute.pValue as *const CK_ATTRIBUTE;
            // SAFETY: forwarded contract: the array holds ulValueLen / size attributes.
            unsafe { converted(inner, attribute.ulValueLen / size, false, budget) }?.to_nested()
        } else {
            // SAFETY: `pValue` is NULL or valid for `ulValueLen` bytes (caller's contract); a
            // NULL with a non-zero length is refused with CKR_ARGUMENTS_BAD.
            let value = unsafe { bytes(attribute.pValue as *const u8, attribute.ulValueLen) }?;
            to_wire(ty, value).map_err(Rv::code)?
        };
        template.push(Attribute { ty, value });
    }
    Ok(Template(template))
}

/// A version.
pub(crate) fn version(version: Version) -> CK_VERSION {
    CK_VERSION {
        major: version.major,
        minor: version.minor,
    }
}

/// `CK_SLOT_INFO`.
pub(crate) fn slot_info(info: &SlotInfo) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: padded(&info.description),
        manufacturerID: padded(&info.manufacturer),
        flags: info.flags as CK_ULONG,
        hardwareVersion: version(info.hardware),
        firmwareVersion: version(info.firmware),
    }
}

/// `CK_TOKEN_INFO`. The wire form has no memory figures and one session limit.
pub(crate) fn token_info(info: &TokenInfo) -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: padded(&info.label),
        manufacturerID: padded(&info.manufacturer),
        model: padded(&info.model),
        serialNumber: padded(&info.serial),
        flags: info.flags as CK_ULONG,
        ulMaxSessionCount: info.max_session_count as CK_ULONG,
        ulSessionCount: info.session_count as CK_ULONG,
        ulMaxRwSessionCount: info.max_session_count as CK_ULONG,
        ulRwSessionCount: info.rw_session_count as CK_ULONG,
        ulMaxPinLen: info.max_pin_len as CK_ULONG,
        ulMinPinLen: info.min_pin_len as CK_ULONG,
        ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: version(info.hardware),
        firmwareVersion: version(info.firmware),
        utcTime: padded(&info.utc_time),
    }
}

/// `CK_SESSION_INFO` (the slot already converted to a global slot ID).
pub(crate) fn session_info(info: &SessionInfo) -> CK_SESSION_INFO {
    CK_SESSION_INFO {
        slotID: info.slot as CK_ULONG,
        state: info.state as CK_ULONG,
        flags: info.flags as CK_ULONG,
        ulDeviceError: info.device_error as CK_ULONG,
    }
}

/// `CK_MECHANISM_INFO`.
pub(crate) fn mechanism_info(info: &MechanismInfo) -> CK_MECHANISM_INFO {
    CK_MECHANISM_INFO {
        ulMinKeySize: info.min_key_size as CK_ULONG,
        ulMaxKeySize: info.max_key_size as CK_ULONG,
        flags: info.flags as CK_ULONG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;
    use tessera_core::ck;

    #[test]
    fn templates_convert_values_once() {
        let class: CK_ULONG = ck::CKO_SECRET_KEY;
        let token: u8 = 1;
        let attributes = [
            CK_ATTRIBUTE {
                type_: ck::CKA_CLASS,
                pValue: &class as *const CK_ULONG as *mut c_void,
                ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_TOKEN,
                pValue: &token as *const u8 as *mut c_void,
                ulValueLen: 1,
            },
        ];
        // SAFETY: the template and its values are live locals of the stated lengths.
        let converted = unsafe { template(attributes.as_ptr(), 2) }.unwrap();
        assert_eq!(converted.ulong(ck::CKA_CLASS), Ok(Some(ck::CKO_SECRET_KEY)));
        assert_eq!(converted.bool(ck::CKA_TOKEN), Ok(Some(true)));
        let null_value = [CK_ATTRIBUTE {
            type_: ck::CKA_LABEL,
            pValue: std::ptr::null_mut(),
            ulValueLen: 3,
        }];
        // SAFETY: the NULL value with a length is refused before any access.
        let outcome = unsafe { template(null_value.as_ptr(), 1) };
        assert_eq!(outcome, Err(Rv::ArgumentsBad.code()));
        let short_ulong = [CK_ATTRIBUTE {
            type_: ck::CKA_CLASS,
            pValue: &token as *const u8 as *mut c_void,
            ulValueLen: 1,
        }];
        // SAFETY: the value is a live local of the stated length.
        let outcome = unsafe { template(short_ulong.as_ptr(), 1) };
        assert_eq!(outcome, Err(Rv::AttributeValueInvalid.code()));
    }

    #[test]
    fn token_info_fields_are_blank_padded() {
        let info = TokenInfo {
            label: "alpha".into(),
            manufacturer: "Tessera".into(),
            model: "Tessera HSM".into(),
            serial: "1234".into(),
            flags: 0,
            session_count: 1,
            rw_session_count: 0,
            max_session_count: 100,
            max_pin_len: 64,
            min_pin_len: 4,
            hardware: Version { major: 1, minor: 0 },
            firmware: Version { major: 0, minor: 1 },
            utc_time: "2024013112000000".into(),
        };
        let c = token_info(&info);
        assert_eq!(&c.label[..6], b"alpha ");
        assert_eq!(c.label[31], b' ');
        assert_eq!(&c.serialNumber, b"1234            ");
        assert_eq!(&c.utcTime, b"2024013112000000");
        assert_eq!(c.ulTotalPublicMemory, CK_UNAVAILABLE_INFORMATION);
    }
}
