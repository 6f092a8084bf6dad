//! The immutable function tables and interfaces, generated from one list of functions.

use std::ffi::c_void;

use cryptoki_sys::{CK_CHAR, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_INTERFACE, CK_VERSION};

use super::crypto::*;
use super::general::*;
use super::keys::*;
use super::messages::*;
use super::objects::*;
use super::sessions::*;
use super::slots::*;
use super::unsupported::*;

macro_rules! function_tables {
    (version_2_40: [$($base:ident),* $(,)?], added_in_3_0: [$($added:ident),* $(,)?] $(,)?) => {
        /// The version 2.40 function list (`C_GetFunctionList`).
        pub static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $($base: Some($base),)*
        };

        /// The version 3.0 function list (`C_GetInterface`).
        pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            $($base: Some($base),)*
            $($added: Some($added),)*
        };
    };
}

function_tables! {
    version_2_40: [
        C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
        C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN,
        C_SetPIN, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
        C_GetOperationState, C_SetOperationState, C_Login, C_Logout, C_CreateObject,
        C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue,
        C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
        C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt,
        C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey,
        C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
        C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
        C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
        C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair,
        C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom,
        C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
    ],
    added_in_3_0: [
        C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel,
        C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext,
        C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin,
        C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage,
        C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit,
        C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
    ],
}

/// A `CK_INTERFACE` that may live in a static.
#[repr(transparent)]
pub struct Interface(pub CK_INTERFACE);

// SAFETY: the pointers of our interfaces refer to immutable statics (a NUL-terminated name and
// a function table) that nothing writes, so sharing them between threads is sound.
unsafe impl Sync for Interface {}

/// "PKCS 11", NUL-terminated.
static NAME: [CK_CHAR; 8] = *b"PKCS 11\0";

/// The "PKCS 11" interface, version 3.0.
pub static INTERFACE_3_0: Interface = Interface(CK_INTERFACE {
    pInterfaceName: NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
    flags: 0,
});

/// The "PKCS 11" interface, version 2.40.
pub static INTERFACE_2_40: Interface = Interface(CK_INTERFACE {
    pInterfaceName: NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
    flags: 0,
});

/// The interfaces of `C_GetInterfaceList`, newest first.
pub static INTERFACES: [&Interface; 2] = [&INTERFACE_3_0, &INTERFACE_2_40];
