//! The immutable function tables and interfaces, generated from one list of functions, and the
//! calls that hand them out (`C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`).

use std::ffi::{c_char, c_void, CStr};

use cryptoki_sys::{
    CK_CHAR, CK_FLAGS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_FUNCTION_LIST_3_2, CK_INTERFACE,
    CK_ULONG, CK_UTF8CHAR, CK_VERSION,
};

use super::crypto::*;
use super::general::{get_info_2_40, get_info_3_2, C_Finalize, C_GetInfo, C_Initialize};
use super::keys::*;
use super::messages::*;
use super::objects::*;
use super::sessions::*;
use super::slots::*;
use super::unsupported::*;
use super::{arguments_bad, read, Output, Place};
use crate::CkResult;

macro_rules! function_tables {
    (
        version_2_40: [$($base:ident),* $(,)?],
        added_in_3_0: [$($added:ident),* $(,)?],
        added_in_3_2: [$($newest:ident),* $(,)?] $(,)?
    ) => {
        /// The version 2.40 function list (`C_GetFunctionList`).
        pub static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            C_GetInfo: Some(get_info_2_40),
            $($base: Some($base),)*
        };

        /// The version 3.0 function list (`C_GetInterface`).
        pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            C_GetInfo: Some(C_GetInfo),
            $($base: Some($base),)*
            $($added: Some($added),)*
        };

        /// The version 3.2 function list (`C_GetInterface`): the 3.0 functions, then those
        /// PKCS#11 3.2 adds.
        pub static FUNCTION_LIST_3_2: CK_FUNCTION_LIST_3_2 = CK_FUNCTION_LIST_3_2 {
            version: CK_VERSION { major: 3, minor: 2 },
            C_GetInfo: Some(get_info_3_2),
            $($base: Some($base),)*
            $($added: Some($added),)*
            $($newest: Some($newest),)*
        };
    };
}

// `C_GetInfo` is in each table apart: each reports the version of its own table.
function_tables! {
    version_2_40: [
        C_Initialize, C_Finalize, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
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
    added_in_3_2: [
        C_EncapsulateKey, C_DecapsulateKey, C_VerifySignatureInit, C_VerifySignature,
        C_VerifySignatureUpdate, C_VerifySignatureFinal, C_GetSessionValidationFlags,
        C_AsyncComplete, C_AsyncGetID, C_AsyncJoin, C_WrapKeyAuthenticated,
        C_UnwrapKeyAuthenticated,
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

/// The "PKCS 11" interface, version 3.2.
pub static INTERFACE_3_2: Interface = Interface(CK_INTERFACE {
    pInterfaceName: NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTION_LIST_3_2 as *const CK_FUNCTION_LIST_3_2 as *mut c_void,
    flags: 0,
});

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
pub static INTERFACES: [&Interface; 3] = [&INTERFACE_3_2, &INTERFACE_3_0, &INTERFACE_2_40];

/// The interface name of PKCS#11 (without its terminating NUL).
pub const INTERFACE_NAME: &[u8] = b"PKCS 11";

/// The interface for a requested version (`None`: the newest) and flags.
pub(crate) fn choose_interface(
    version: Option<(u8, u8)>,
    flags: CK_FLAGS,
) -> CkResult<&'static CK_INTERFACE> {
    // Our interfaces have no flags, so any requested flag cannot be met.
    if flags != 0 {
        return arguments_bad();
    }
    match version {
        None | Some((3, 2)) => Ok(&INTERFACE_3_2.0),
        Some((3, 0)) => Ok(&INTERFACE_3_0.0),
        Some((2, 40)) => Ok(&INTERFACE_2_40.0),
        Some(_) => arguments_bad(),
    }
}

entry_points! {
    /// `C_GetFunctionList` (§5.4.4): the version 2.40 table. Works before `C_Initialize`.
    fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) {
        // SAFETY: ppFunctionList is NULL or points to a pointer to fill (§5.4.4).
        let list = unsafe { Place::new(list) }?;
        // The table is immutable; applications only read through this pointer.
        list.set(&FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST);
        Ok(())
    }

    /// `C_GetInterfaceList` (§5.4.5): "PKCS 11" 3.0, then "PKCS 11" 2.40.
    fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) {
        // SAFETY: pInterfacesList is NULL or holds *pulCount entries; pulCount is NULL or
        // points to a CK_ULONG (§5.4.5).
        let output = unsafe { Output::new(list, count) }?;
        let interfaces: Vec<CK_INTERFACE> = INTERFACES.iter().map(|i| i.0).collect();
        output.deliver(&interfaces)
    }

    /// `C_GetInterface` (§5.4.6): name NULL or "PKCS 11"; version NULL or 3.0 gives the 3.0
    /// table, 2.40 the 2.40 table.
    fn C_GetInterface(
        name: *mut CK_UTF8CHAR,
        version: *mut CK_VERSION,
        interface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) {
        // SAFETY: ppInterface is NULL or points to a pointer to fill (§5.4.6).
        let interface = unsafe { Place::new(interface) }?;
        if !name.is_null() {
            // SAFETY: a non-NULL pInterfaceName is a NUL-terminated string (§5.4.6).
            let name = unsafe { CStr::from_ptr(name as *const c_char) };
            if name.to_bytes() != INTERFACE_NAME {
                return arguments_bad();
            }
        }
        let version = if version.is_null() {
            None
        } else {
            // SAFETY: a non-NULL pVersion points to a CK_VERSION (§5.4.6).
            let version = unsafe { read(version as *const CK_VERSION) }?;
            Some((version.major, version.minor))
        };
        let chosen = choose_interface(version, flags)?;
        interface.set(chosen as *const CK_INTERFACE as *mut CK_INTERFACE);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::CK_INFO;
    use tessera_core::Rv;

    #[test]
    fn interfaces_by_version() {
        let newest = choose_interface(None, 0).unwrap();
        assert_eq!(
            newest.pFunctionList as *const CK_FUNCTION_LIST_3_2,
            &FUNCTION_LIST_3_2 as *const CK_FUNCTION_LIST_3_2
        );
        let three = choose_interface(Some((3, 0)), 0).unwrap();
        assert_eq!(
            three.pFunctionList as *const CK_FUNCTION_LIST_3_0,
            &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0
        );
        let old = choose_interface(Some((2, 40)), 0).unwrap();
        assert_eq!(
            old.pFunctionList as *const CK_FUNCTION_LIST,
            &FUNCTION_LIST as *const CK_FUNCTION_LIST
        );
        assert!(choose_interface(Some((3, 1)), 0).is_err());
        assert!(choose_interface(None, 1).is_err());
        // SAFETY: the interface name is a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(newest.pInterfaceName as *const c_char) };
        assert_eq!(name.to_bytes(), INTERFACE_NAME);
    }

    #[test]
    fn function_lists_through_the_entry_points() {
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `list` is a valid place for the pointer.
        assert_eq!(unsafe { C_GetFunctionList(&mut list) }, 0);
        // SAFETY: the library returned a pointer to its static table.
        let table = unsafe { &*list };
        assert_eq!((table.version.major, table.version.minor), (2, 40));
        assert!(table.C_Initialize.is_some() && table.C_WaitForSlotEvent.is_some());

        let mut count: CK_ULONG = 0;
        // SAFETY: NULL list (a count query) and a valid count.
        let rv = unsafe { C_GetInterfaceList(std::ptr::null_mut(), &mut count) };
        assert_eq!((rv, count), (0, 3));
        let mut one = [CK_INTERFACE {
            pInterfaceName: std::ptr::null_mut(),
            pFunctionList: std::ptr::null_mut(),
            flags: 0,
        }; 1];
        count = 1;
        // SAFETY: `one` holds `count` entries.
        let rv = unsafe { C_GetInterfaceList(one.as_mut_ptr(), &mut count) };
        assert_eq!(rv as u64, Rv::BufferTooSmall.code());

        let mut interface: *mut CK_INTERFACE = std::ptr::null_mut();
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let mut name = *b"PKCS 11\0";
        // SAFETY: valid name, version and place.
        let rv = unsafe { C_GetInterface(name.as_mut_ptr(), &mut version, &mut interface, 0) };
        assert_eq!(rv, 0);
        // SAFETY: the library returned a pointer to its static interface.
        let table = unsafe { &*((*interface).pFunctionList as *const CK_FUNCTION_LIST_3_0) };
        assert_eq!((table.version.major, table.version.minor), (3, 0));
        assert!(table.C_MessageVerifyFinal.is_some());
        // The 3.2 table begins as the 3.0 one (an application that reads it as 3.0 works), and
        // goes on with the functions 3.2 adds.
        version.minor = 2;
        // SAFETY: valid name, version and place.
        let rv = unsafe { C_GetInterface(name.as_mut_ptr(), &mut version, &mut interface, 0) };
        assert_eq!(rv, 0);
        // SAFETY: the library returned a pointer to its static interface.
        let newest = unsafe { &*((*interface).pFunctionList as *const CK_FUNCTION_LIST_3_2) };
        assert_eq!((newest.version.major, newest.version.minor), (3, 2));
        assert!(newest.C_EncapsulateKey.is_some() && newest.C_UnwrapKeyAuthenticated.is_some());
        assert_eq!(
            std::mem::offset_of!(CK_FUNCTION_LIST_3_2, C_MessageVerifyFinal),
            std::mem::offset_of!(CK_FUNCTION_LIST_3_0, C_MessageVerifyFinal)
        );
        let mut other = *b"Vendor\0";
        // SAFETY: as above.
        let rv = unsafe { C_GetInterface(other.as_mut_ptr(), &mut version, &mut interface, 0) };
        assert_eq!(rv as u64, Rv::ArgumentsBad.code());
        // SAFETY: a NULL place is refused.
        let rv =
            unsafe { C_GetInterface(name.as_mut_ptr(), &mut version, std::ptr::null_mut(), 0) };
        assert_eq!(rv as u64, Rv::ArgumentsBad.code());
    }

    #[test]
    fn calls_before_initialize_are_refused() {
        let mut info = CK_INFO::default();
        // SAFETY: `info` is a valid place.
        let rv = unsafe { C_GetInfo(&mut info) };
        assert_eq!(rv as u64, Rv::CryptokiNotInitialized.code());
        // SAFETY: NULL reserved pointer.
        let rv = unsafe { C_Finalize(std::ptr::null_mut()) };
        assert_eq!(rv as u64, Rv::CryptokiNotInitialized.code());
        let mut reserved = 0u8;
        // SAFETY: a non-NULL reserved pointer is refused before any access.
        let rv = unsafe { C_Finalize(&mut reserved as *mut u8 as *mut c_void) };
        assert_eq!(rv as u64, Rv::ArgumentsBad.code());
    }
}
