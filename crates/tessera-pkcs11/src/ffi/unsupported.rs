//! Functions Tessera does not offer (yet). Each exists, so that the function tables are
//! complete, and answers `CKR_FUNCTION_NOT_SUPPORTED` once the library is initialised.
//! `C_GetFunctionStatus` and `C_CancelFunction` are legacy functions that every library answers
//! with `CKR_FUNCTION_NOT_PARALLEL` (§5.17).

use std::ffi::c_void;

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_BYTE, CK_FLAGS, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_SLOT_ID,
    CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR,
};
use tessera_core::Rv;

use crate::{library, CkResult};

fn not_supported() -> CkResult {
    library::ensure_initialized()?;
    Err(Rv::FunctionNotSupported.code())
}

fn not_parallel() -> CkResult {
    library::ensure_initialized()?;
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

    /// `C_DigestKey` (§5.10.4): not supported.
    fn C_DigestKey(_session: CK_SESSION_HANDLE, _key: CK_OBJECT_HANDLE) {
        not_supported()
    }

    /// `C_SignRecoverInit` (§5.11.5): not supported.
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

    /// `C_VerifyRecoverInit` (§5.12.5): not supported.
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

    /// `C_DigestEncryptUpdate` (§5.13.1): not supported.
    fn C_DigestEncryptUpdate(
        _session: CK_SESSION_HANDLE,
        _part: *mut CK_BYTE,
        _part_len: CK_ULONG,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_DecryptDigestUpdate` (§5.13.2): not supported.
    fn C_DecryptDigestUpdate(
        _session: CK_SESSION_HANDLE,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: CK_ULONG,
        _part: *mut CK_BYTE,
        _part_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_SignEncryptUpdate` (§5.13.3): not supported.
    fn C_SignEncryptUpdate(
        _session: CK_SESSION_HANDLE,
        _part: *mut CK_BYTE,
        _part_len: CK_ULONG,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_DecryptVerifyUpdate` (§5.13.4): not supported.
    fn C_DecryptVerifyUpdate(
        _session: CK_SESSION_HANDLE,
        _encrypted: *mut CK_BYTE,
        _encrypted_len: CK_ULONG,
        _part: *mut CK_BYTE,
        _part_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_WrapKey` (§5.14.3): not supported.
    fn C_WrapKey(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _wrapping_key: CK_OBJECT_HANDLE,
        _key: CK_OBJECT_HANDLE,
        _wrapped: *mut CK_BYTE,
        _wrapped_len: *mut CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_UnwrapKey` (§5.14.4): not supported.
    fn C_UnwrapKey(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _unwrapping_key: CK_OBJECT_HANDLE,
        _wrapped: *mut CK_BYTE,
        _wrapped_len: CK_ULONG,
        _template: *mut CK_ATTRIBUTE,
        _count: CK_ULONG,
        _key: *mut CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_DeriveKey` (§5.14.5): not supported.
    fn C_DeriveKey(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _base_key: CK_OBJECT_HANDLE,
        _template: *mut CK_ATTRIBUTE,
        _count: CK_ULONG,
        _key: *mut CK_OBJECT_HANDLE,
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

    /// `C_LoginUser` (§5.6.9): not supported.
    fn C_LoginUser(
        _session: CK_SESSION_HANDLE,
        _user_type: CK_USER_TYPE,
        _pin: *mut CK_UTF8CHAR,
        _pin_len: CK_ULONG,
        _username: *mut CK_UTF8CHAR,
        _username_len: CK_ULONG,
    ) {
        not_supported()
    }

    /// `C_SessionCancel` (§5.6.11): not supported.
    fn C_SessionCancel(_session: CK_SESSION_HANDLE, _flags: CK_FLAGS) {
        not_supported()
    }

    /// `C_MessageEncryptInit` (§5.8.5): not supported.
    fn C_MessageEncryptInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_EncryptMessage` (§5.8.6): not supported.
    fn C_EncryptMessage(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _associated: *mut CK_BYTE,
        _associated_len: CK_ULONG,
        _plaintext: *mut CK_BYTE,
        _plaintext_len: CK_ULONG,
        _ciphertext: *mut CK_BYTE,
        _ciphertext_len: *mut CK_ULONG,
    ) {
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

    /// `C_MessageEncryptFinal` (§5.8.9): not supported.
    fn C_MessageEncryptFinal(_session: CK_SESSION_HANDLE) {
        not_supported()
    }

    /// `C_MessageDecryptInit` (§5.9.5): not supported.
    fn C_MessageDecryptInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_DecryptMessage` (§5.9.6): not supported.
    fn C_DecryptMessage(
        _session: CK_SESSION_HANDLE,
        _parameter: *mut c_void,
        _parameter_len: CK_ULONG,
        _associated: *mut CK_BYTE,
        _associated_len: CK_ULONG,
        _ciphertext: *mut CK_BYTE,
        _ciphertext_len: CK_ULONG,
        _plaintext: *mut CK_BYTE,
        _plaintext_len: *mut CK_ULONG,
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

    /// `C_MessageDecryptFinal` (§5.9.9): not supported.
    fn C_MessageDecryptFinal(_session: CK_SESSION_HANDLE) {
        not_supported()
    }

    /// `C_MessageSignInit` (§5.11.7): not supported.
    fn C_MessageSignInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_SignMessage` (§5.11.8): not supported.
    fn C_SignMessage(
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

    /// `C_MessageSignFinal` (§5.11.11): not supported.
    fn C_MessageSignFinal(_session: CK_SESSION_HANDLE) {
        not_supported()
    }

    /// `C_MessageVerifyInit` (§5.12.7): not supported.
    fn C_MessageVerifyInit(
        _session: CK_SESSION_HANDLE,
        _mechanism: *mut CK_MECHANISM,
        _key: CK_OBJECT_HANDLE,
    ) {
        not_supported()
    }

    /// `C_VerifyMessage` (§5.12.8): not supported.
    fn C_VerifyMessage(
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

    /// `C_MessageVerifyFinal` (§5.12.11): not supported.
    fn C_MessageVerifyFinal(_session: CK_SESSION_HANDLE) {
        not_supported()
    }
}
