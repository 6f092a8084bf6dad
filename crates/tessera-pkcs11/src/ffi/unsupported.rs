//! Functions Tessera does not offer. Each exists, so that the function tables are complete,
//! and answers `CKR_FUNCTION_NOT_SUPPORTED` once the library is initialised:
//!
//! - `C_GetOperationState`, `C_SetOperationState`: an operation's state lives in the device and
//!   never leaves it.
//! - `C_SignRecoverInit`, `C_SignRecover`, `C_VerifyRecoverInit`, `C_VerifyRecover`: no
//!   supported mechanism offers signatures with message recovery.
//! - `C_WaitForSlotEvent`: devices are network services without slot events.
//! - `C_EncryptMessageBegin`, `C_EncryptMessageNext`, and the same for decryption, signatures
//!   and verification: messages are processed whole ([`super::messages`]).
//!
//! - `C_GetSessionValidationFlags` (3.2): Tessera claims no validation of its operations.
//! - `C_AsyncComplete`, `C_AsyncGetID`, `C_AsyncJoin` (3.2): every call completes before it
//!   returns.
//! - `C_WrapKeyAuthenticated`, `C_UnwrapKeyAuthenticated` (3.2): key wrapping with associated
//!   data is not offered; `C_WrapKey` / `C_UnwrapKey` with `CKM_AES_KEY_WRAP_KWP` or GCM are.
//!
//! `C_GetFunctionStatus` and `C_CancelFunction` are legacy functions that every library answers
//! with `CKR_FUNCTION_NOT_PARALLEL` (§5.17).

use std::ffi::c_void;

use cryptoki_sys::{CK_BYTE, CK_FLAGS, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SLOT_ID, CK_ULONG};
use tessera_core::Rv;

use crate::CkResult;

fn not_supported() -> CkResult {
    Err(Rv::FunctionNotSupported.code())
}

fn not_parallel() -> CkResult {
    Err(cryptoki_sys::CKR_FUNCTION_NOT_PARALLEL as u64)
}

entry_points! {
    /// `C_GetOperationState` (§5.6.5): not supported.
    fn C_GetOperationState(
        _session: CK_SESSION_HANDLE,
        _state: *mut CK_BYTE,
        _state_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_SetOperationState` (§5.6.6): not supported.
    fn C_SetOperationState(
        _session: CK_SESSION_HANDLE,
        _state: *mut CK_BYTE,
        _state_len: CK_ULONG,
        _encryption_key: CK_OBJECT_HANDLE,
        _authentication_key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_SignRecoverInit` (§5.11.5): not supported (no mechanism with recovery).
    fn C_SignRecoverInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_SignRecover` (§5.11.6): not supported.
    fn C_SignRecover(
        _session: CK_SESSION_HANDLE,
        _data: *mut CK_BYTE,
        _data_len: CK_ULONG,
        _signature: *mut CK_BYTE,
        _signature_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_VerifyRecoverInit` (§5.12.5): not supported (no mechanism with recovery).
    fn C_VerifyRecoverInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_VerifyRecover` (§5.12.6): not supported.
    fn C_VerifyRecover(
        _session: CK_SESSION_HANDLE,
        _signature: *mut CK_BYTE,
        _signature_len: CK_ULONG,
        _data: *mut CK_BYTE,
        _data_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_GetFunctionStatus` (§5.17.1): `CKR_FUNCTION_NOT_PARALLEL`.
    fn C_GetFunctionStatus(_session: CK_SESSION_HANDLE) {
        not_parallel()
    }

    /// `C_CancelFunction` (§5.17.2): `CKR_FUNCTION_NOT_PARALLEL`.
    fn C_CancelFunction(_session: CK_SESSION_HANDLE) {
        not_parallel()
    }

    /// `C_WaitForSlotEvent` (§5.5.4): not supported.
    fn C_WaitForSlotEvent(_flags: CK_FLAGS, _slot: *mut CK_SLOT_ID, _reserved: *mut c_void) {
        not_supported()
    }

    /// `C_EncryptMessageBegin` (§5.8.7): not supported.
    fn C_EncryptMessageBegin(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _associated: *mut CK_BYTE,
        _associated_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_EncryptMessageNext` (§5.8.8): not supported.
    fn C_EncryptMessageNext(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _part: *mut CK_BYTE,
        _part_len: CK_ULONG,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: *mut CK_ULONG,
        _flags: CK_FLAGS,
    ) {
        not_supported()
    }

    /// `C_DecryptMessageBegin` (§5.9.7): not supported.
    fn C_DecryptMessageBegin(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _associated: *mut CK_BYTE,
        _associated_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_DecryptMessageNext` (§5.9.8): not supported.
    fn C_DecryptMessageNext(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: CK_ULONG,
        _part: *mut CK_BYTE,
        _part_len: *mut CK_ULONG,
        _flags: CK_FLAGS,
    ) {
        not_supported()
    }

    /// `C_SignMessageBegin` (§5.11.9): not supported.
    fn C_SignMessageBegin(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_SignMessageNext` (§5.11.10): not supported.
    fn C_SignMessageNext(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _data: *mut CK_BYTE,
        _data_len: CK_ULONG,
        _signature: *mut CK_BYTE,
        _signature_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_VerifyMessageBegin` (§5.12.9): not supported.
    fn C_VerifyMessageBegin(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_VerifyMessageNext` (§5.12.10): not supported.
    fn C_VerifyMessageNext(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _data: *mut CK_BYTE,
        _data_len: CK_ULONG,
        _signature: *mut CK_BYTE,
        _signature_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_GetSessionValidationFlags` (3.2 §5.6.7): not supported.
    fn C_GetSessionValidationFlags(
        _session: CK_SESSION_HANDLE,
        _kind: cryptoki_sys::CK_SESSION_VALIDATION_FLAGS_TYPE,
        _flags: *mut CK_FLAGS,
    ) {
        not_supported()
    }

    /// `C_AsyncComplete` (3.2 §5.20.1): not supported.
    fn C_AsyncComplete(
        _session: CK_SESSION_HANDLE,
        _function: *mut cryptoki_sys::CK_UTF8CHAR,
        _result: *mut cryptoki_sys::CK_ASYNC_DATA,
    ) {
        not_supported()
    }

    /// `C_AsyncGetID` (3.2 §5.20.2): not supported.
    fn C_AsyncGetID(
        _session: CK_SESSION_HANDLE,
        _function: *mut cryptoki_sys::CK_UTF8CHAR,
        _id: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_AsyncJoin` (3.2 §5.20.3): not supported.
    fn C_AsyncJoin(
        _session: CK_SESSION_HANDLE,
        _function: *mut cryptoki_sys::CK_UTF8CHAR,
        _id: CK_ULONG,
        _data: *mut CK_BYTE,
        _data_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_WrapKeyAuthenticated` (3.2 §5.18.6): not supported.
    fn C_WrapKeyAuthenticated(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _wrapping_key: CK_OBJECT_HANDLE,
        _key: CK_OBJECT_HANDLE,
        _associated_data: *mut CK_BYTE,
        _associated_data_len: CK_ULONG,
        _wrapped: *mut CK_BYTE,
        _wrapped_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_UnwrapKeyAuthenticated` (3.2 §5.18.7): not supported.
    fn C_UnwrapKeyAuthenticated(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _unwrapping_key: CK_OBJECT_HANDLE,
        _wrapped: *mut CK_BYTE,
        _wrapped_len: CK_ULONG,
        _template: *mut cryptoki_sys::CK_ATTRIBUTE,
        _count: CK_ULONG,
        _associated_data: *mut CK_BYTE,
        _associated_data_len: CK_ULONG,
        _key: *mut CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }
}
