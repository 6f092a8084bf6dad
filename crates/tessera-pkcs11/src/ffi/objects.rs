//! Object management (PKCS#11 3.0 §5.7). Object handles are the device's own.

use cryptoki_sys::{CK_ATTRIBUTE, CK_OBJECT_HANDLE, CK_ULONG, CK_UNAVAILABLE_INFORMATION};
use tessera_core::attribute::{kind, AttributeKind};
use tessera_core::{Rv, Template};
use tessera_wire::{AttributeAnswer, Call, Reply};

use super::convert::template;
use super::{length, slice_mut, Place};
use crate::attribute::{deliver, Delivery};
use crate::buffer::{fit, Fit};
use crate::library::{self, expect_done, into_handle, unexpected};
use crate::CkResult;

/// Fills the application's `C_GetAttributeValue` template from the device's answers, by the
/// rules of §5.7.5: every attribute is processed, and the first soft error is returned.
fn fill(attributes: &mut [CK_ATTRIBUTE], answers: &[AttributeAnswer]) -> CkResult {
    if answers.len() != attributes.len() {
        tracing::warn!("the device answered for a different number of attributes");
        return Err(Rv::DeviceError.code());
    }
    let mut soft = None;
    for (attribute, answer) in attributes.iter_mut().zip(answers) {
        soft = soft.or(fill_one(attribute, answer)?);
    }
    soft.map_or(Ok(()), |rv| Err(rv.code()))
}

/// Fills one attribute; `Some` is a soft error (the value is unavailable). An attribute array
/// (`CKA_WRAP_TEMPLATE`, ...) fills the application's array of `CK_ATTRIBUTE`s: its length is
/// the array's size in bytes, and each element gets its type and, as any attribute, its value
/// or length (one level deep: `Template::from_nested` refuses arrays inside arrays).
fn fill_one(attribute: &mut CK_ATTRIBUTE, answer: &AttributeAnswer) -> CkResult<Option<Rv>> {
    let ty = attribute.type_ as u64;
    let capacity = if attribute.pValue.is_null() {
        None
    } else {
        Some(length(attribute.ulValueLen)?)
    };
    if let (AttributeKind::AttributeArray, AttributeAnswer::Value(wire)) = (kind(ty), answer) {
        let nested = Template::from_nested(wire).map_err(|_| Rv::DeviceError.code())?;
        let count = nested.0.len();
        let size = count * std::mem::size_of::<CK_ATTRIBUTE>();
        match fit(size, capacity) {
            Fit::Query => {
                attribute.ulValueLen = size as CK_ULONG;
                return Ok(None);
            }
            Fit::TooSmall => {
                attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                return Ok(Some(Rv::BufferTooSmall));
            }
            Fit::Fits => {}
        }
        // SAFETY: pValue of an attribute array points to ulValueLen bytes holding an array of
        // CK_ATTRIBUTE (§5.7.5), of which the first `count` fit (checked above).
        let elements = unsafe { slice_mut(attribute.pValue as *mut CK_ATTRIBUTE, count as _) }?;
        let mut soft = None;
        for (element, mut a) in elements.iter_mut().zip(nested.0) {
            element.type_ = a.ty as CK_ULONG;
            let answer = AttributeAnswer::Value(std::mem::take(&mut a.value));
            soft = soft.or(fill_one(element, &answer)?);
        }
        attribute.ulValueLen = size as CK_ULONG;
        return Ok(soft);
    }
    match deliver(ty, answer, capacity).map_err(Rv::code)? {
        Delivery::Value(value) => {
            // SAFETY: `Value` only comes with a non-NULL pValue whose ulValueLen is at least
            // the value's length; the application guarantees pValue holds ulValueLen bytes
            // (§5.7.5), and our value does not overlap its memory.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    value.expose().as_ptr(),
                    attribute.pValue as *mut u8,
                    value.len(),
                )
            };
            attribute.ulValueLen = value.len() as CK_ULONG;
            Ok(None)
        }
        Delivery::Length(len) => {
            attribute.ulValueLen = len as CK_ULONG;
            Ok(None)
        }
        Delivery::Unavailable(rv) => {
            attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            Ok(Some(rv))
        }
    }
}

entry_points! {
    /// `C_CreateObject` (§5.7.1).
    fn C_CreateObject(
        session: CK_SESSION_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        object: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phObject is NULL or points to a handle to fill (§5.7.1).
        let place = unsafe { Place::new(object) }?;
        // SAFETY: pTemplate is NULL or holds ulCount attributes (§5.7.1).
        let template = unsafe { template(attributes, count) }?;
        let reply = library::session_call(session as u64, |session| Call::CreateObject {
            session,
            template,
        })?;
        place.set(into_handle(reply)? as CK_OBJECT_HANDLE);
        Ok(())
    }

    /// `C_CopyObject` (§5.7.2).
    fn C_CopyObject(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        new_object: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phNewObject is NULL or points to a handle to fill (§5.7.2).
        let place = unsafe { Place::new(new_object) }?;
        // SAFETY: pTemplate is NULL or holds ulCount attributes (§5.7.2).
        let template = unsafe { template(attributes, count) }?;
        let reply = library::session_call(session as u64, |session| Call::CopyObject {
            session,
            object: object as u64,
            template,
        })?;
        place.set(into_handle(reply)? as CK_OBJECT_HANDLE);
        Ok(())
    }

    /// `C_DestroyObject` (§5.7.3).
    fn C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) {
        expect_done(library::session_call(session as u64, |session| {
            Call::DestroyObject {
                session,
                object: object as u64,
            }
        })?)
    }

    /// `C_GetObjectSize` (§5.7.4).
    fn C_GetObjectSize(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, size: *mut CK_ULONG) {
        // SAFETY: pulSize is NULL or points to a CK_ULONG to fill (§5.7.4).
        let place = unsafe { Place::new(size) }?;
        let request = |session| Call::ObjectSize {
            session,
            object: object as u64,
        };
        match library::session_call(session as u64, request)? {
            Reply::Number(size) => {
                place.set(size as CK_ULONG);
                Ok(())
            }
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_GetAttributeValue` (§5.7.5).
    fn C_GetAttributeValue(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
    ) {
        // SAFETY: pTemplate is NULL or holds ulCount initialised attributes that the function
        // updates in place (§5.7.5).
        let attributes = unsafe { slice_mut(attributes, count) }?;
        let types = attributes.iter().map(|a| a.type_ as u64).collect();
        let request = |session| Call::GetAttributes {
            session,
            object: object as u64,
            types,
        };
        match library::session_call(session as u64, request)? {
            Reply::Attributes(answers) => fill(attributes, &answers),
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_SetAttributeValue` (§5.7.6).
    fn C_SetAttributeValue(
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
    ) {
        // SAFETY: pTemplate is NULL or holds ulCount attributes (§5.7.6).
        let template = unsafe { template(attributes, count) }?;
        expect_done(library::session_call(session as u64, |session| {
            Call::SetAttributes {
                session,
                object: object as u64,
                template,
            }
        })?)
    }

    /// `C_FindObjectsInit` (§5.7.7).
    fn C_FindObjectsInit(
        session: CK_SESSION_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
    ) {
        // SAFETY: pTemplate is NULL or holds ulCount attributes (§5.7.7).
        let template = unsafe { template(attributes, count) }?;
        library::find_init(session as u64, template)
    }

    /// `C_FindObjects` (§5.7.8).
    fn C_FindObjects(
        session: CK_SESSION_HANDLE,
        objects: *mut CK_OBJECT_HANDLE,
        max: CK_ULONG,
        count: *mut CK_ULONG,
    ) {
        // SAFETY: pulObjectCount is NULL or points to a CK_ULONG to fill (§5.7.8).
        let place = unsafe { Place::new(count) }?;
        let max_len = length(max)?;
        if objects.is_null() && max_len > 0 {
            return super::arguments_bad();
        }
        let handles: Vec<CK_OBJECT_HANDLE> = library::find(session as u64, max as u64)?
            .into_iter()
            .map(|h| h as CK_OBJECT_HANDLE)
            .collect();
        if handles.len() > max_len {
            tracing::warn!("the device returned more objects than asked for");
            return Err(Rv::DeviceError.code());
        }
        if !handles.is_empty() {
            // SAFETY: phObject is non-NULL here (max > 0 since handles fit in it) and holds
            // ulMaxObjectCount handles (§5.7.8); we write handles.len() <= max of them,
            // without reading the (possibly uninitialised) array.
            unsafe { std::ptr::copy_nonoverlapping(handles.as_ptr(), objects, handles.len()) };
        }
        place.set(handles.len() as CK_ULONG);
        Ok(())
    }

    /// `C_FindObjectsFinal` (§5.7.9).
    fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) {
        library::find_final(session as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys as ck;
    use std::ffi::c_void;
    use tessera_wire::AttributeAnswer;

    #[test]
    fn get_attribute_value_processes_every_attribute() {
        let mut class: CK_ULONG = 0;
        let mut small = [0u8; 2];
        let mut attributes = [
            CK_ATTRIBUTE {
                type_: ck::CKA_CLASS,
                pValue: &mut class as *mut CK_ULONG as *mut c_void,
                ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_VALUE,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_LABEL,
                pValue: small.as_mut_ptr() as *mut c_void,
                ulValueLen: 2,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_ID,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            },
        ];
        let answers = [
            AttributeAnswer::Value((ck::CKO_SECRET_KEY as u64).to_le_bytes().to_vec()),
            AttributeAnswer::Sensitive,
            AttributeAnswer::Value(b"long label".to_vec()),
            AttributeAnswer::Value(vec![9; 5]),
        ];
        assert_eq!(
            fill(&mut attributes, &answers),
            Err(Rv::AttributeSensitive.code())
        );
        assert_eq!(class, ck::CKO_SECRET_KEY);
        assert_eq!(attributes[0].ulValueLen, 8);
        assert_eq!(attributes[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(attributes[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(small, [0, 0]);
        assert_eq!(attributes[3].ulValueLen, 5);
        assert_eq!(
            fill(&mut attributes[..1], &answers),
            Err(Rv::DeviceError.code())
        );
    }
}
