//! C structures to typed values (templates, mechanisms) and typed values to C structures (info
//! records). Each conversion happens once, at the boundary.

use std::ffi::c_void;

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_GCM_PARAMS, CK_MECHANISM, CK_MECHANISM_INFO, CK_RSA_PKCS_PSS_PARAMS,
    CK_SESSION_INFO, CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG, CK_UNAVAILABLE_INFORMATION, CK_VERSION,
};
use tessera_core::ck;
use tessera_core::info::{MechanismInfo, SessionInfo, SlotInfo, TokenInfo, Version};
use tessera_core::{Attribute, Mechanism, MechanismParameter, Rv, Template};

use super::{bytes, slice};
use crate::attribute::to_wire;
use crate::buffer::padded;
use crate::CkResult;

/// Mechanisms whose parameter is a `CK_RSA_PKCS_PSS_PARAMS`.
const PSS: &[ck::CK_MECHANISM_TYPE] = &[
    ck::CKM_RSA_PKCS_PSS,
    ck::CKM_SHA1_RSA_PKCS_PSS,
    ck::CKM_SHA224_RSA_PKCS_PSS,
    ck::CKM_SHA256_RSA_PKCS_PSS,
    ck::CKM_SHA384_RSA_PKCS_PSS,
    ck::CKM_SHA512_RSA_PKCS_PSS,
    ck::CKM_SHA3_224_RSA_PKCS_PSS,
    ck::CKM_SHA3_256_RSA_PKCS_PSS,
    ck::CKM_SHA3_384_RSA_PKCS_PSS,
    ck::CKM_SHA3_512_RSA_PKCS_PSS,
];

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
    // SAFETY: forwarded contract.
    let attributes = unsafe { slice(attributes, count) }?;
    let mut template = Vec::with_capacity(attributes.len());
    for attribute in attributes {
        // SAFETY: `pValue` is NULL or valid for `ulValueLen` bytes (caller's contract); a NULL
        // with a non-zero length is refused with CKR_ARGUMENTS_BAD.
        let value = unsafe { bytes(attribute.pValue as *const u8, attribute.ulValueLen) }?;
        let ty = attribute.type_ as u64;
        let value = to_wire(ty, value).map_err(Rv::code)?;
        template.push(Attribute { ty, value });
    }
    Ok(Template(template))
}

/// A `CK_MECHANISM` as a [`Mechanism`] with its decoded parameter.
///
/// # Safety
///
/// A non-NULL `mechanism` must point to a valid `CK_MECHANISM` whose `pParameter` is NULL or
/// valid for `ulParameterLen` bytes, and whose embedded pointers (IV, AAD) are NULL or valid
/// for their lengths, for the duration of the call.
pub(crate) unsafe fn mechanism(mechanism: *const CK_MECHANISM) -> CkResult<Mechanism> {
    // SAFETY: forwarded contract; NULL is refused.
    let mechanism = unsafe { super::read(mechanism) }?;
    let ty = mechanism.mechanism as u64;
    let invalid = Rv::MechanismParamInvalid.code();
    let parameter = if mechanism.pParameter.is_null() {
        if mechanism.ulParameterLen != 0 {
            return Err(invalid);
        }
        MechanismParameter::None
    } else if mechanism.mechanism == ck::CKM_AES_GCM {
        // SAFETY: forwarded contract.
        let gcm: CK_GCM_PARAMS = unsafe { parameter(mechanism) }?;
        // SAFETY: the IV and AAD pointers of the structure follow the caller's contract.
        let iv = unsafe { bytes(gcm.pIv, gcm.ulIvLen) }.map_err(|_| invalid)?;
        // SAFETY: as above.
        let aad = unsafe { bytes(gcm.pAAD, gcm.ulAADLen) }.map_err(|_| invalid)?;
        MechanismParameter::Gcm {
            iv: iv.to_vec(),
            aad: aad.to_vec(),
            tag_bits: gcm.ulTagBits as u64,
        }
    } else if PSS.contains(&mechanism.mechanism) {
        // SAFETY: forwarded contract.
        let pss: CK_RSA_PKCS_PSS_PARAMS = unsafe { parameter(mechanism) }?;
        MechanismParameter::Pss {
            hash: pss.hashAlg as u64,
            mgf: pss.mgf as u64,
            salt_len: pss.sLen as u64,
        }
    } else {
        // SAFETY: `pParameter` is valid for `ulParameterLen` bytes (caller's contract).
        let raw = unsafe { bytes(mechanism.pParameter as *const u8, mechanism.ulParameterLen) }?;
        MechanismParameter::Bytes(raw.to_vec())
    };
    Ok(Mechanism { ty, parameter })
}

/// The parameter structure `T` of a mechanism: `ulParameterLen` must be its size.
///
/// # Safety
///
/// `pParameter` must be NULL or valid for `ulParameterLen` bytes.
unsafe fn parameter<T: Copy>(mechanism: &CK_MECHANISM) -> CkResult<T> {
    let pointer: *const c_void = mechanism.pParameter;
    if pointer.is_null() || mechanism.ulParameterLen as u64 != std::mem::size_of::<T>() as u64 {
        return Err(Rv::MechanismParamInvalid.code());
    }
    // SAFETY: non-NULL and valid for size_of::<T>() bytes (checked length, caller's contract);
    // the application need not align it, so read it unaligned. `T` is a plain C structure for
    // which any bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(pointer as *const T) })
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

    fn with_parameter<T>(ty: ck::CK_MECHANISM_TYPE, parameter: &mut T, len: usize) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: ty,
            pParameter: parameter as *mut T as *mut c_void,
            ulParameterLen: len as CK_ULONG,
        }
    }

    #[test]
    fn gcm_parameters_are_decoded_and_checked() {
        let mut iv = [7u8; 12];
        let mut aad = *b"header";
        let mut gcm = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 6,
            ulTagBits: 128,
        };
        let size = std::mem::size_of::<CK_GCM_PARAMS>();
        let good = with_parameter(ck::CKM_AES_GCM, &mut gcm, size);
        // SAFETY: every pointer refers to live locals of the stated lengths.
        let decoded = unsafe { mechanism(&good) }.unwrap();
        assert_eq!(
            decoded,
            Mechanism {
                ty: ck::CKM_AES_GCM as u64,
                parameter: MechanismParameter::Gcm {
                    iv: vec![7; 12],
                    aad: b"header".to_vec(),
                    tag_bits: 128
                }
            }
        );
        let short = with_parameter(ck::CKM_AES_GCM, &mut gcm, size - 8);
        // SAFETY: as above; the length is refused before any read.
        let outcome = unsafe { mechanism(&short) };
        assert_eq!(outcome, Err(Rv::MechanismParamInvalid.code()));
        gcm.pIv = std::ptr::null_mut();
        let null_iv = with_parameter(ck::CKM_AES_GCM, &mut gcm, size);
        // SAFETY: as above; the NULL IV with a length is refused.
        let outcome = unsafe { mechanism(&null_iv) };
        assert_eq!(outcome, Err(Rv::MechanismParamInvalid.code()));
    }

    #[test]
    fn pss_raw_and_absent_parameters() {
        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: ck::CKM_SHA256,
            mgf: ck::CKG_MGF1_SHA256,
            sLen: 32,
        };
        let size = std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>();
        let good = with_parameter(ck::CKM_SHA256_RSA_PKCS_PSS, &mut pss, size);
        // SAFETY: the parameter is a live local of the stated length.
        let decoded = unsafe { mechanism(&good) }.unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Pss {
                hash: ck::CKM_SHA256 as u64,
                mgf: ck::CKG_MGF1_SHA256 as u64,
                salt_len: 32
            }
        );
        let mut iv = [1u8; 16];
        let cbc = with_parameter(ck::CKM_AES_CBC_PAD, &mut iv, 16);
        // SAFETY: the IV is a live local of the stated length.
        let decoded = unsafe { mechanism(&cbc) }.unwrap();
        assert_eq!(decoded.parameter, MechanismParameter::Bytes(vec![1; 16]));
        let plain = CK_MECHANISM {
            mechanism: ck::CKM_SHA256,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: no parameter.
        let outcome = unsafe { mechanism(&plain) };
        assert_eq!(outcome, Ok(Mechanism::plain(ck::CKM_SHA256 as u64)));
        // SAFETY: NULL is refused before any access.
        let outcome = unsafe { mechanism(std::ptr::null()) };
        assert_eq!(outcome, Err(Rv::ArgumentsBad.code()));
    }

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
