//! `CK_MECHANISM` to [`Mechanism`]: the one place where mechanism parameters are decoded from
//! their C structures (PKCS#11 3.0 §5.2 and the mechanism sections of the current mechanisms
//! specification), and the parameter structure of the message-based functions.
//!
//! A structure is read only when `ulParameterLen` is exactly its size; anything else is
//! `CKR_MECHANISM_PARAM_INVALID`, as is an embedded pointer that is NULL with a non-zero length.
//! Mechanisms whose parameter is a byte string (CBC IVs, the optional IV of the AES key wraps)
//! and those the module does not know pass their parameter on as bytes.

use std::ffi::c_void;

use cryptoki_sys::{
    CK_AES_CBC_ENCRYPT_DATA_PARAMS, CK_AES_CTR_PARAMS, CK_DERIVED_KEY, CK_ECDH1_DERIVE_PARAMS,
    CK_EDDSA_PARAMS, CK_FALSE, CK_GCM_PARAMS, CK_HKDF_PARAMS, CK_KEY_DERIVATION_STRING_DATA,
    CK_MAC_GENERAL_PARAMS, CK_MECHANISM, CK_OBJECT_HANDLE, CK_PRF_DATA_PARAM,
    CK_RSA_PKCS_OAEP_PARAMS, CK_RSA_PKCS_PSS_PARAMS, CK_SP800_108_COUNTER_FORMAT,
    CK_SP800_108_DKM_LENGTH_FORMAT, CK_SP800_108_FEEDBACK_KDF_PARAMS, CK_SP800_108_KDF_PARAMS,
    CK_ULONG,
};
use tessera_core::ck;
use tessera_core::{KbkdfData, KbkdfFormat, Mechanism, MechanismParameter, Rv};

use super::convert::template_within;
use super::{bytes, slice, Place};
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

/// Mechanisms whose parameter is a `CK_MAC_GENERAL_PARAMS` (the MAC length in bytes).
const MAC_GENERAL: &[ck::CK_MECHANISM_TYPE] = &[
    ck::CKM_SHA_1_HMAC_GENERAL,
    ck::CKM_SHA224_HMAC_GENERAL,
    ck::CKM_SHA256_HMAC_GENERAL,
    ck::CKM_SHA384_HMAC_GENERAL,
    ck::CKM_SHA512_HMAC_GENERAL,
    ck::CKM_AES_CMAC_GENERAL,
];

/// The most data segments and additional derived keys one SP 800-108 derivation may have
/// (a real one has a handful): more is `CKR_MECHANISM_PARAM_INVALID`, refused before the
/// arrays are read.
const KBKDF_MOST: u64 = 64;

fn invalid() -> u64 {
    Rv::MechanismParamInvalid.code()
}

/// A `CK_MECHANISM` as a [`Mechanism`] with its decoded parameter. A NULL `pParameter` (with
/// length 0) is [`MechanismParameter::None`] for every mechanism (`CKM_EDDSA` without
/// parameters, the key wraps with their default IV, ...).
///
/// # Safety
///
/// A non-NULL `mechanism` must point to a valid `CK_MECHANISM` whose `pParameter` is NULL or
/// valid for `ulParameterLen` bytes, and whose embedded pointers (IV, AAD, label, public data,
/// ...) are NULL or valid for their lengths, for the duration of the call.
pub(crate) unsafe fn mechanism(mechanism: *const CK_MECHANISM) -> CkResult<Mechanism> {
    // SAFETY: forwarded contract; NULL is refused.
    let mechanism = unsafe { super::read(mechanism) }?;
    let parameter = if mechanism.pParameter.is_null() {
        if mechanism.ulParameterLen != 0 {
            return Err(invalid());
        }
        MechanismParameter::None
    } else {
        // SAFETY: forwarded contract; `pParameter` is not NULL.
        unsafe { decode(mechanism) }?
    };
    Ok(Mechanism {
        ty: mechanism.mechanism as u64,
        parameter,
    })
}

/// Decodes the parameter of a mechanism: its pointer and length.
type Decoder = unsafe fn(*const c_void, CK_ULONG) -> CkResult<MechanismParameter>;

/// The parameter of a mechanism whose `pParameter` is not NULL.
///
/// # Safety
///
/// As for [`mechanism`].
unsafe fn decode(mechanism: &CK_MECHANISM) -> CkResult<MechanismParameter> {
    let ty = mechanism.mechanism;
    let decoder: Decoder = match ty {
        ck::CKM_AES_GCM => gcm,
        _ if PSS.contains(&ty) => pss,
        ck::CKM_RSA_PKCS_OAEP => oaep,
        ck::CKM_AES_CTR => ctr,
        _ if MAC_GENERAL.contains(&ty) => mac_length,
        ck::CKM_ECDH1_DERIVE | ck::CKM_ECDH1_COFACTOR_DERIVE => ecdh,
        ck::CKM_HKDF_DERIVE | ck::CKM_HKDF_DATA => hkdf,
        ck::CKM_EDDSA => eddsa,
        ck::CKM_ML_DSA
        | ck::CKM_HASH_ML_DSA_SHA224
        | ck::CKM_HASH_ML_DSA_SHA256
        | ck::CKM_HASH_ML_DSA_SHA384
        | ck::CKM_HASH_ML_DSA_SHA512
        | ck::CKM_HASH_ML_DSA_SHA3_224
        | ck::CKM_HASH_ML_DSA_SHA3_256
        | ck::CKM_HASH_ML_DSA_SHA3_384
        | ck::CKM_HASH_ML_DSA_SHA3_512 => sign_context,
        ck::CKM_HASH_ML_DSA => hash_sign_context,
        ck::CKM_AES_ECB_ENCRYPT_DATA => ecb_encrypt_data,
        ck::CKM_CONCATENATE_BASE_AND_DATA
        | ck::CKM_CONCATENATE_DATA_AND_BASE
        | ck::CKM_XOR_BASE_AND_DATA => string_data,
        ck::CKM_CONCATENATE_BASE_AND_KEY => other_key,
        ck::CKM_EXTRACT_KEY_FROM_KEY => bit_index,
        ck::CKM_AES_CBC_ENCRYPT_DATA => cbc_encrypt_data,
        ck::CKM_SP800_108_COUNTER_KDF | ck::CKM_SP800_108_DOUBLE_PIPELINE_KDF => kbkdf,
        ck::CKM_SP800_108_FEEDBACK_KDF => kbkdf_feedback,
        // CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD (the IV), and
        // mechanisms unknown here, which the device judges.
        _ => raw,
    };
    // SAFETY: `pParameter` is valid for `ulParameterLen` bytes and the pointers embedded in it
    // for their lengths (caller's contract), which is what every decoder requires.
    unsafe { decoder(mechanism.pParameter, mechanism.ulParameterLen) }
}

/// The parameter structure `T` at `pointer`: `len` must be its size
/// (`CKR_MECHANISM_PARAM_INVALID` otherwise, and for NULL).
///
/// # Safety
///
/// `pointer` must be NULL or valid for `len` bytes.
pub(crate) unsafe fn structure<T: Copy>(pointer: *const c_void, len: CK_ULONG) -> CkResult<T> {
    if pointer.is_null() || len as u64 != std::mem::size_of::<T>() as u64 {
        return Err(invalid());
    }
    // SAFETY: non-NULL and valid for size_of::<T>() bytes (checked length, caller's contract);
    // the application need not align it, so read it unaligned. `T` is a plain C structure for
    // which any bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(pointer as *const T) })
}

/// Bytes behind a pointer embedded in a parameter structure: NULL with a non-zero length is
/// `CKR_MECHANISM_PARAM_INVALID`.
///
/// # Safety
///
/// `data` must be NULL or valid for `len` bytes.
pub(crate) unsafe fn embedded(data: *const u8, len: CK_ULONG) -> CkResult<Vec<u8>> {
    // SAFETY: forwarded contract.
    let data = unsafe { bytes(data, len) }.map_err(|_| invalid())?;
    super::copied(data)
}

// The decoders. Safety contract of each: `pointer` is NULL or valid for `len` bytes, and when
// it holds the decoder's structure, the pointers embedded in it are NULL or valid for their
// lengths.

/// A byte string (an IV), or a structure the module does not decode.
///
/// # Safety
///
/// See above.
unsafe fn raw(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let raw = unsafe { bytes(pointer as *const u8, len) }.map_err(|_| invalid())?;
    Ok(MechanismParameter::Bytes(super::copied(raw)?))
}

/// `CK_GCM_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn gcm(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let gcm: CK_GCM_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Gcm {
        // SAFETY: forwarded contract.
        iv: unsafe { embedded(gcm.pIv, gcm.ulIvLen) }?,
        // SAFETY: forwarded contract.
        aad: unsafe { embedded(gcm.pAAD, gcm.ulAADLen) }?,
        tag_bits: gcm.ulTagBits as u64,
    })
}

/// `CK_RSA_PKCS_PSS_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn pss(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let pss: CK_RSA_PKCS_PSS_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Pss {
        hash: pss.hashAlg as u64,
        mgf: pss.mgf as u64,
        salt_len: pss.sLen as u64,
    })
}

/// `CK_RSA_PKCS_OAEP_PARAMS`: the source is `CKZ_DATA_SPECIFIED` (or 0, as some applications
/// leave it when they have no label); a NULL `pSourceData` is an empty label.
///
/// # Safety
///
/// See above.
unsafe fn oaep(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let oaep: CK_RSA_PKCS_OAEP_PARAMS = unsafe { structure(pointer, len) }?;
    if oaep.source != ck::CKZ_DATA_SPECIFIED && oaep.source != 0 {
        return Err(invalid());
    }
    let label = if oaep.pSourceData.is_null() {
        Vec::new()
    } else {
        // SAFETY: forwarded contract.
        unsafe { embedded(oaep.pSourceData as *const u8, oaep.ulSourceDataLen) }?
    };
    Ok(MechanismParameter::Oaep {
        hash: oaep.hashAlg as u64,
        mgf: oaep.mgf as u64,
        label,
    })
}

/// `CK_AES_CTR_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn ctr(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let ctr: CK_AES_CTR_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Ctr {
        counter_bits: ctr.ulCounterBits as u64,
        block: ctr.cb.to_vec(),
    })
}

/// `CK_MAC_GENERAL_PARAMS`: a `CK_ULONG`, the MAC length in bytes.
///
/// # Safety
///
/// See above.
unsafe fn mac_length(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let length: CK_MAC_GENERAL_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::MacLength(length as u64))
}

/// `CK_ECDH1_DERIVE_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn ecdh(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let ecdh: CK_ECDH1_DERIVE_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Ecdh {
        kdf: ecdh.kdf as u64,
        // SAFETY: forwarded contract.
        shared_data: unsafe { embedded(ecdh.pSharedData, ecdh.ulSharedDataLen) }?,
        // SAFETY: forwarded contract.
        public_data: unsafe { embedded(ecdh.pPublicData, ecdh.ulPublicDataLen) }?,
    })
}

/// `CK_KEY_DERIVATION_STRING_DATA` of `CKM_AES_ECB_ENCRYPT_DATA`.
///
/// # Safety
///
/// As for [`decode`].
unsafe fn ecb_encrypt_data(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let string: CK_KEY_DERIVATION_STRING_DATA = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::EncryptData {
        iv: Vec::new(),
        // SAFETY: forwarded contract.
        data: unsafe { embedded(string.pData, string.ulLen) }?,
    })
}

/// `CK_KEY_DERIVATION_STRING_DATA` of `CKM_CONCATENATE_BASE_AND_DATA`,
/// `CKM_CONCATENATE_DATA_AND_BASE` and `CKM_XOR_BASE_AND_DATA`: the data.
///
/// # Safety
///
/// As for [`decode`].
unsafe fn string_data(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let string: CK_KEY_DERIVATION_STRING_DATA = unsafe { structure(pointer, len) }?;
    // SAFETY: forwarded contract.
    Ok(MechanismParameter::Bytes(unsafe {
        embedded(string.pData, string.ulLen)
    }?))
}

/// The `CK_OBJECT_HANDLE` of `CKM_CONCATENATE_BASE_AND_KEY`: the other key.
///
/// # Safety
///
/// As for [`decode`].
unsafe fn other_key(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let key: CK_OBJECT_HANDLE = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Key(key as u64))
}

/// `CK_EXTRACT_PARAMS` of `CKM_EXTRACT_KEY_FROM_KEY`: a `CK_ULONG`, the first bit to take.
///
/// # Safety
///
/// As for [`decode`].
unsafe fn bit_index(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let index: ck::CK_EXTRACT_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::BitIndex(index as u64))
}

/// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` of `CKM_AES_CBC_ENCRYPT_DATA`.
///
/// # Safety
///
/// As for [`decode`].
unsafe fn cbc_encrypt_data(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let cbc: CK_AES_CBC_ENCRYPT_DATA_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::EncryptData {
        iv: cbc.iv.to_vec(),
        // SAFETY: forwarded contract.
        data: unsafe { embedded(cbc.pData, cbc.length) }?,
    })
}

/// `CK_HKDF_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn hkdf(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let hkdf: CK_HKDF_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Hkdf {
        extract: hkdf.bExtract != CK_FALSE,
        expand: hkdf.bExpand != CK_FALSE,
        prf: hkdf.prfHashMechanism as u64,
        salt_type: hkdf.ulSaltType as u64,
        // SAFETY: forwarded contract.
        salt: unsafe { embedded(hkdf.pSalt, hkdf.ulSaltLen) }?,
        salt_key: hkdf.hSaltKey as u64,
        // SAFETY: forwarded contract.
        info: unsafe { embedded(hkdf.pInfo, hkdf.ulInfoLen) }?,
    })
}

/// `CK_EDDSA_PARAMS` (a NULL `pParameter` never gets here: it is
/// [`MechanismParameter::None`]).
///
/// # Safety
///
/// See above.
unsafe fn eddsa(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let eddsa: CK_EDDSA_PARAMS = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::Eddsa {
        prehash: eddsa.phFlag != CK_FALSE,
        // SAFETY: forwarded contract.
        context: unsafe { embedded(eddsa.pContextData, eddsa.ulContextDataLen) }?,
    })
}

/// `CK_SIGN_ADDITIONAL_CONTEXT` (PKCS#11 3.2, `CKM_ML_DSA`).
///
/// # Safety
///
/// As for [`eddsa`].
unsafe fn sign_context(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let given: ck::CK_SIGN_ADDITIONAL_CONTEXT = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::SignContext {
        hedge: given.hedgeVariant as u64,
        // SAFETY: forwarded contract.
        context: unsafe { embedded(given.pContext, given.ulContextLen) }?,
    })
}

/// `CK_HASH_SIGN_ADDITIONAL_CONTEXT` (PKCS#11 3.2, `CKM_HASH_ML_DSA`).
///
/// # Safety
///
/// As for [`eddsa`].
unsafe fn hash_sign_context(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let given: ck::CK_HASH_SIGN_ADDITIONAL_CONTEXT = unsafe { structure(pointer, len) }?;
    Ok(MechanismParameter::HashSignContext {
        hedge: given.hedgeVariant as u64,
        // SAFETY: forwarded contract.
        context: unsafe { embedded(given.pContext, given.ulContextLen) }?,
        hash: given.hash as u64,
    })
}

/// The common part of `CK_SP800_108_KDF_PARAMS` and `CK_SP800_108_FEEDBACK_KDF_PARAMS`.
struct Sp800108 {
    prf: CK_ULONG,
    data: (*const CK_PRF_DATA_PARAM, CK_ULONG),
    iv: (*const u8, CK_ULONG),
    additional: (*const CK_DERIVED_KEY, CK_ULONG),
}

impl From<CK_SP800_108_KDF_PARAMS> for Sp800108 {
    fn from(p: CK_SP800_108_KDF_PARAMS) -> Sp800108 {
        Sp800108 {
            prf: p.prfType,
            data: (p.pDataParams, p.ulNumberOfDataParams),
            iv: (std::ptr::null(), 0),
            additional: (p.pAdditionalDerivedKeys, p.ulAdditionalDerivedKeys),
        }
    }
}

impl From<CK_SP800_108_FEEDBACK_KDF_PARAMS> for Sp800108 {
    fn from(p: CK_SP800_108_FEEDBACK_KDF_PARAMS) -> Sp800108 {
        Sp800108 {
            prf: p.prfType,
            data: (p.pDataParams, p.ulNumberOfDataParams),
            iv: (p.pIV, p.ulIVLen),
            additional: (p.pAdditionalDerivedKeys, p.ulAdditionalDerivedKeys),
        }
    }
}

/// The SP 800-108 structure of a KBKDF mechanism (`None` for other mechanisms).
///
/// # Safety
///
/// See above; `mechanism` names the structure at `pointer`.
unsafe fn sp800_108(
    mechanism: CK_ULONG,
    pointer: *const c_void,
    len: CK_ULONG,
) -> CkResult<Option<Sp800108>> {
    Ok(Some(match mechanism {
        ck::CKM_SP800_108_COUNTER_KDF | ck::CKM_SP800_108_DOUBLE_PIPELINE_KDF => {
            // SAFETY: forwarded contract.
            unsafe { structure::<CK_SP800_108_KDF_PARAMS>(pointer, len) }?.into()
        }
        ck::CKM_SP800_108_FEEDBACK_KDF => {
            // SAFETY: forwarded contract.
            unsafe { structure::<CK_SP800_108_FEEDBACK_KDF_PARAMS>(pointer, len) }?.into()
        }
        _ => return Ok(None),
    }))
}

/// `CK_SP800_108_KDF_PARAMS` (counter and double-pipeline modes).
///
/// # Safety
///
/// See above.
unsafe fn kbkdf(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let p: CK_SP800_108_KDF_PARAMS = unsafe { structure(pointer, len) }?;
    // SAFETY: forwarded contract.
    unsafe { kbkdf_parameter(p.into()) }
}

/// `CK_SP800_108_FEEDBACK_KDF_PARAMS`.
///
/// # Safety
///
/// See above.
unsafe fn kbkdf_feedback(pointer: *const c_void, len: CK_ULONG) -> CkResult<MechanismParameter> {
    // SAFETY: forwarded contract.
    let p: CK_SP800_108_FEEDBACK_KDF_PARAMS = unsafe { structure(pointer, len) }?;
    // SAFETY: forwarded contract.
    unsafe { kbkdf_parameter(p.into()) }
}

/// # Safety
///
/// The arrays, IV and templates `p` points to are valid for their lengths (see above).
unsafe fn kbkdf_parameter(p: Sp800108) -> CkResult<MechanismParameter> {
    if p.data.1 as u64 > KBKDF_MOST || p.additional.1 as u64 > KBKDF_MOST {
        return Err(invalid());
    }
    // SAFETY: forwarded contract: the arrays hold their counts of elements.
    let segments = unsafe { slice(p.data.0, p.data.1) }.map_err(|_| invalid())?;
    // The segments' values and the additional keys' templates are one input: no more than a
    // frame carries, counted before any is read.
    let mut budget = super::MAX_INPUT;
    for segment in segments {
        let len = usize::try_from(segment.ulValueLen as u64).unwrap_or(usize::MAX);
        budget = budget.checked_sub(len).ok_or_else(invalid)?;
    }
    let mut data = Vec::with_capacity(segments.len());
    for segment in segments {
        // SAFETY: forwarded contract: each segment's value is valid for its length.
        data.push(unsafe { prf_data(segment) }?);
    }
    // SAFETY: forwarded contract.
    let keys = unsafe { slice(p.additional.0, p.additional.1) }.map_err(|_| invalid())?;
    let mut additional = Vec::with_capacity(keys.len());
    for key in keys {
        // SAFETY: forwarded contract: each template holds its count of attributes.
        let template = unsafe { template_within(key.pTemplate, key.ulAttributeCount, &mut budget) };
        additional.push(template.map_err(|_| invalid())?);
    }
    Ok(MechanismParameter::Kbkdf {
        prf: p.prf as u64,
        data,
        // SAFETY: forwarded contract.
        iv: unsafe { embedded(p.iv.0, p.iv.1) }?,
        additional,
    })
}

/// One `CK_PRF_DATA_PARAM`.
///
/// # Safety
///
/// `segment.pValue` is NULL or valid for `ulValueLen` bytes.
unsafe fn prf_data(segment: &CK_PRF_DATA_PARAM) -> CkResult<KbkdfData> {
    let (value, len) = (segment.pValue as *const c_void, segment.ulValueLen);
    let counter = || -> CkResult<KbkdfFormat> {
        // SAFETY: forwarded contract.
        let f: CK_SP800_108_COUNTER_FORMAT = unsafe { structure(value, len) }?;
        Ok(KbkdfFormat {
            little_endian: f.bLittleEndian != CK_FALSE,
            bits: f.ulWidthInBits as u64,
        })
    };
    Ok(match segment.type_ {
        ck::CK_SP800_108_ITERATION_VARIABLE if value.is_null() && len == 0 => {
            KbkdfData::Iteration(None)
        }
        ck::CK_SP800_108_ITERATION_VARIABLE => KbkdfData::Iteration(Some(counter()?)),
        ck::CK_SP800_108_OPTIONAL_COUNTER => KbkdfData::Counter(counter()?),
        ck::CK_SP800_108_DKM_LENGTH => {
            // SAFETY: forwarded contract.
            let f: CK_SP800_108_DKM_LENGTH_FORMAT = unsafe { structure(value, len) }?;
            KbkdfData::DkmLength {
                method: f.dkmLengthMethod as u64,
                format: KbkdfFormat {
                    little_endian: f.bLittleEndian != CK_FALSE,
                    bits: f.ulWidthInBits as u64,
                },
            }
        }
        // SAFETY: forwarded contract.
        ck::CK_SP800_108_BYTE_ARRAY => KbkdfData::Bytes(unsafe { embedded(value as _, len) }?),
        _ => return Err(invalid()),
    })
}

/// Where `C_DeriveKey` stores the handles of the additional keys of an SP 800-108 mechanism
/// (`pAdditionalDerivedKeys[i].phKey`), in order; empty for every other mechanism. A NULL
/// `phKey` is `CKR_MECHANISM_PARAM_INVALID`.
///
/// # Safety
///
/// `mechanism` must have been accepted by [`mechanism`] and still be valid, and each `phKey`
/// must point to a writable handle that nothing else accesses for `'a`.
pub(crate) unsafe fn derived_key_places<'a>(
    mechanism: *const CK_MECHANISM,
) -> CkResult<Vec<Place<'a, CK_OBJECT_HANDLE>>> {
    // SAFETY: forwarded contract.
    let m = unsafe { super::read(mechanism) }?;
    // SAFETY: forwarded contract (`mechanism` decoded it already).
    let Some(p) = unsafe { sp800_108(m.mechanism, m.pParameter, m.ulParameterLen) }? else {
        return Ok(Vec::new());
    };
    if p.additional.1 as u64 > KBKDF_MOST {
        return Err(invalid());
    }
    // SAFETY: forwarded contract.
    let keys = unsafe { slice(p.additional.0, p.additional.1) }.map_err(|_| invalid())?;
    keys.iter()
        // SAFETY: forwarded contract.
        .map(|key| unsafe { Place::new(key.phKey) }.map_err(|_| invalid()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::CK_TRUE;

    fn with_parameter<T>(ty: ck::CK_MECHANISM_TYPE, parameter: &mut T, len: usize) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: ty,
            pParameter: parameter as *mut T as *mut c_void,
            ulParameterLen: len as CK_ULONG,
        }
    }

    /// Decodes `parameter` as the parameter of `ty`, with its exact size and with a size one
    /// word short (which must be refused before any read).
    fn decode_both_sizes<T>(ty: ck::CK_MECHANISM_TYPE, parameter: &mut T) -> CkResult<Mechanism> {
        let size = std::mem::size_of::<T>();
        let short = with_parameter(ty, parameter, size - std::mem::size_of::<CK_ULONG>());
        // SAFETY: the parameter is a live local; the short length is refused before any read.
        let outcome = unsafe { mechanism(&short) };
        assert_eq!(outcome, Err(invalid()), "short parameter of 0x{ty:x}");
        let long = with_parameter(ty, parameter, size + 1);
        // SAFETY: as above; the long length is refused before any read.
        let outcome = unsafe { mechanism(&long) };
        assert_eq!(outcome, Err(invalid()), "long parameter of 0x{ty:x}");
        let exact = with_parameter(ty, parameter, size);
        // SAFETY: the parameter and everything it points to are live locals of the stated
        // lengths.
        unsafe { mechanism(&exact) }
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
        let decoded = decode_both_sizes(ck::CKM_AES_GCM, &mut gcm).unwrap();
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
        gcm.pIv = std::ptr::null_mut();
        let outcome = decode_both_sizes(ck::CKM_AES_GCM, &mut gcm);
        assert_eq!(outcome, Err(invalid()), "a NULL IV with a length");
    }

    #[test]
    fn pss_parameters() {
        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: ck::CKM_SHA256,
            mgf: ck::CKG_MGF1_SHA256,
            sLen: 32,
        };
        let decoded = decode_both_sizes(ck::CKM_SHA256_RSA_PKCS_PSS, &mut pss).unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Pss {
                hash: ck::CKM_SHA256 as u64,
                mgf: ck::CKG_MGF1_SHA256 as u64,
                salt_len: 32
            }
        );
    }

    #[test]
    fn oaep_parameters_with_and_without_label() {
        let mut label = *b"label";
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: ck::CKM_SHA256,
            mgf: ck::CKG_MGF1_SHA256,
            source: ck::CKZ_DATA_SPECIFIED,
            pSourceData: label.as_mut_ptr() as *mut c_void,
            ulSourceDataLen: 5,
        };
        let decoded = decode_both_sizes(ck::CKM_RSA_PKCS_OAEP, &mut oaep).unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Oaep {
                hash: ck::CKM_SHA256 as u64,
                mgf: ck::CKG_MGF1_SHA256 as u64,
                label: b"label".to_vec()
            }
        );
        oaep.pSourceData = std::ptr::null_mut();
        oaep.ulSourceDataLen = 0;
        oaep.source = 0;
        let decoded = decode_both_sizes(ck::CKM_RSA_PKCS_OAEP, &mut oaep).unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Oaep {
                hash: ck::CKM_SHA256 as u64,
                mgf: ck::CKG_MGF1_SHA256 as u64,
                label: Vec::new()
            }
        );
        oaep.source = 2;
        let outcome = decode_both_sizes(ck::CKM_RSA_PKCS_OAEP, &mut oaep);
        assert_eq!(outcome, Err(invalid()), "an unknown source");
    }

    #[test]
    fn ctr_parameters() {
        let mut block = [0u8; 16];
        block[15] = 1;
        let mut ctr = CK_AES_CTR_PARAMS {
            ulCounterBits: 32,
            cb: block,
        };
        let decoded = decode_both_sizes(ck::CKM_AES_CTR, &mut ctr).unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Ctr {
                counter_bits: 32,
                block: block.to_vec()
            }
        );
    }

    #[test]
    fn mac_general_lengths() {
        for ty in MAC_GENERAL {
            let mut length: CK_MAC_GENERAL_PARAMS = 16;
            let size = std::mem::size_of::<CK_MAC_GENERAL_PARAMS>();
            let good = with_parameter(*ty, &mut length, size);
            // SAFETY: the parameter is a live local of the stated length.
            let decoded = unsafe { mechanism(&good) }.unwrap();
            assert_eq!(decoded.parameter, MechanismParameter::MacLength(16));
            let short = with_parameter(*ty, &mut length, 4);
            // SAFETY: as above; the length is refused before any read.
            let outcome = unsafe { mechanism(&short) };
            assert_eq!(outcome, Err(invalid()));
        }
    }

    #[test]
    fn ecdh_parameters() {
        let mut point = [4u8; 65];
        let mut ecdh = CK_ECDH1_DERIVE_PARAMS {
            kdf: ck::CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: std::ptr::null_mut(),
            ulPublicDataLen: 65,
            pPublicData: point.as_mut_ptr(),
        };
        for ty in [ck::CKM_ECDH1_DERIVE, ck::CKM_ECDH1_COFACTOR_DERIVE] {
            let decoded = decode_both_sizes(ty, &mut ecdh).unwrap();
            assert_eq!(
                decoded.parameter,
                MechanismParameter::Ecdh {
                    kdf: ck::CKD_NULL as u64,
                    shared_data: Vec::new(),
                    public_data: vec![4; 65]
                }
            );
        }
        ecdh.ulSharedDataLen = 3;
        let outcome = decode_both_sizes(ck::CKM_ECDH1_DERIVE, &mut ecdh);
        assert_eq!(outcome, Err(invalid()), "NULL shared data with a length");
    }

    #[test]
    fn hkdf_parameters() {
        let mut salt = *b"salt";
        let mut info = *b"info";
        let mut hkdf = CK_HKDF_PARAMS {
            bExtract: CK_TRUE,
            bExpand: CK_FALSE,
            prfHashMechanism: ck::CKM_SHA384,
            ulSaltType: ck::CKF_HKDF_SALT_DATA,
            pSalt: salt.as_mut_ptr(),
            ulSaltLen: 4,
            hSaltKey: 9,
            pInfo: info.as_mut_ptr(),
            ulInfoLen: 4,
        };
        for ty in [ck::CKM_HKDF_DERIVE, ck::CKM_HKDF_DATA] {
            let decoded = decode_both_sizes(ty, &mut hkdf).unwrap();
            assert_eq!(
                decoded.parameter,
                MechanismParameter::Hkdf {
                    extract: true,
                    expand: false,
                    prf: ck::CKM_SHA384 as u64,
                    salt_type: ck::CKF_HKDF_SALT_DATA as u64,
                    salt: b"salt".to_vec(),
                    salt_key: 9,
                    info: b"info".to_vec()
                }
            );
        }
        hkdf.pInfo = std::ptr::null_mut();
        let outcome = decode_both_sizes(ck::CKM_HKDF_DERIVE, &mut hkdf);
        assert_eq!(outcome, Err(invalid()), "NULL info with a length");
    }

    #[test]
    fn eddsa_parameters_or_none() {
        let mut context = *b"ctx";
        let mut eddsa = CK_EDDSA_PARAMS {
            phFlag: CK_TRUE,
            ulContextDataLen: 3,
            pContextData: context.as_mut_ptr(),
        };
        let decoded = decode_both_sizes(ck::CKM_EDDSA, &mut eddsa).unwrap();
        assert_eq!(
            decoded.parameter,
            MechanismParameter::Eddsa {
                prehash: true,
                context: b"ctx".to_vec()
            }
        );
        let plain = CK_MECHANISM {
            mechanism: ck::CKM_EDDSA,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: no parameter.
        let outcome = unsafe { mechanism(&plain) };
        assert_eq!(outcome, Ok(Mechanism::plain(ck::CKM_EDDSA as u64)));
    }

    #[test]
    fn byte_parameters_and_absent_ones() {
        for ty in [
            ck::CKM_AES_CBC,
            ck::CKM_AES_CBC_PAD,
            ck::CKM_AES_KEY_WRAP,
            ck::CKM_AES_KEY_WRAP_PAD,
        ] {
            let mut iv = [1u8; 16];
            let with_iv = with_parameter(ty, &mut iv, 16);
            // SAFETY: the IV is a live local of the stated length.
            let decoded = unsafe { mechanism(&with_iv) }.unwrap();
            assert_eq!(decoded.parameter, MechanismParameter::Bytes(vec![1; 16]));
            let without = CK_MECHANISM {
                mechanism: ty,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            // SAFETY: no parameter.
            let decoded = unsafe { mechanism(&without) }.unwrap();
            assert_eq!(decoded.parameter, MechanismParameter::None);
        }
        let null_with_length = CK_MECHANISM {
            mechanism: ck::CKM_SHA256,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 8,
        };
        // SAFETY: NULL with a length is refused before any access.
        let outcome = unsafe { mechanism(&null_with_length) };
        assert_eq!(outcome, Err(invalid()));
        // SAFETY: NULL is refused before any access.
        let outcome = unsafe { mechanism(std::ptr::null()) };
        assert_eq!(outcome, Err(Rv::ArgumentsBad.code()));
    }
}
