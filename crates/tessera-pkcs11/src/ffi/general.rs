//! General-purpose functions (PKCS#11 3.0 §5.4): initialisation, library info, function lists
//! and interfaces.

use std::ffi::{c_char, c_void, CStr};

use cryptoki_sys::{
    CKF_OS_LOCKING_OK, CK_C_INITIALIZE_ARGS, CK_FLAGS, CK_FUNCTION_LIST, CK_INFO, CK_INTERFACE,
    CK_ULONG, CK_UTF8CHAR, CK_VERSION,
};
use tessera_core::Rv;

use super::tables::{FUNCTION_LIST, INTERFACES, INTERFACE_2_40, INTERFACE_3_0};
use super::{arguments_bad, read, Output, Place};
use crate::buffer::padded;
use crate::{library, CkResult};

/// The interface name of PKCS#11 (without its terminating NUL).
pub const INTERFACE_NAME: &[u8] = b"PKCS 11";

/// The checks on `C_Initialize`'s arguments: `callbacks` is how many of the four mutex
/// callbacks are set. The library always uses the operating system's locking.
pub(crate) fn check_initialize_args(
    callbacks: usize,
    flags: CK_FLAGS,
    reserved_is_null: bool,
) -> CkResult {
    if !reserved_is_null {
        return arguments_bad();
    }
    match callbacks {
        0 => Ok(()),
        4 if flags & CKF_OS_LOCKING_OK != 0 => Ok(()),
        // The application insists on its own mutexes, which we do not use.
        4 => Err(Rv::CantLock.code()),
        _ => arguments_bad(),
    }
}

/// Maps, once, a page the kernel wipes in every child (`MADV_WIPEONFORK`) and gives it to the
/// library as its fork marker (see `library::use_fork_marker`). The kernel wipes it however
/// the child was made — `fork`, `_Fork`, a raw `clone` — where `pthread_atfork` handlers run
/// for `fork` alone. On a kernel without `MADV_WIPEONFORK` (before 4.14) nothing is given and
/// the library compares process ids.
fn map_fork_marker() {
    static MAP: std::sync::Once = std::sync::Once::new();
    MAP.call_once(|| {
        const LEN: usize = 4096;
        // SAFETY: an anonymous private mapping at an address the kernel picks touches no
        // existing memory; the result is checked before use.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return;
        }
        // SAFETY: `page` is the start of the page-aligned mapping of LEN bytes made above.
        if unsafe { libc::madvise(page, LEN, libc::MADV_WIPEONFORK) } != 0 {
            // SAFETY: the same mapping, not shared with anything yet.
            unsafe { libc::munmap(page, LEN) };
            return;
        }
        // SAFETY: the mapping is readable and writable, zero-filled, page-aligned (so aligned
        // for `AtomicU8`, which has the layout of `u8`), never unmapped (this library is never
        // unloaded: `-z nodelete`), and only ever accessed through this atomic.
        let marker: &'static std::sync::atomic::AtomicU8 =
            unsafe { &*page.cast::<std::sync::atomic::AtomicU8>() };
        library::use_fork_marker(marker);
    });
}

/// `CK_INFO` of this library.
pub(crate) fn library_info() -> CK_INFO {
    CK_INFO {
        cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
        manufacturerID: padded("Tessera"),
        flags: 0,
        libraryDescription: padded("Tessera PKCS#11"),
        libraryVersion: CK_VERSION {
            major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
            minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
        },
    }
}

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
        None | Some((3, 0)) => Ok(&INTERFACE_3_0.0),
        Some((2, 40)) => Ok(&INTERFACE_2_40.0),
        Some(_) => arguments_bad(),
    }
}

entry_points! {
    /// `C_Initialize` (§5.4.1): reads the configuration; devices are dialled on first use.
    fn C_Initialize(init_args: *mut c_void) {
        if !init_args.is_null() {
            // SAFETY: a non-NULL pInitArgs points to a CK_C_INITIALIZE_ARGS (§5.4.1).
            let args = unsafe { read(init_args as *const CK_C_INITIALIZE_ARGS) }?;
            let callbacks = [
                args.CreateMutex.is_some(),
                args.DestroyMutex.is_some(),
                args.LockMutex.is_some(),
                args.UnlockMutex.is_some(),
            ];
            let given = callbacks.iter().filter(|given| **given).count();
            check_initialize_args(given, args.flags, args.pReserved.is_null())?;
        }
        map_fork_marker();
        library::initialize()
    }

    /// `C_Finalize` (§5.4.2): closes every connection and forgets all state.
    fn C_Finalize(reserved: *mut c_void) {
        if !reserved.is_null() {
            return arguments_bad();
        }
        library::finalize()
    }

    /// `C_GetInfo` (§5.4.3).
    fn C_GetInfo(info: *mut CK_INFO) {
        // SAFETY: pInfo is NULL or points to a CK_INFO to fill (§5.4.3).
        let info = unsafe { Place::new(info) }?;
        library::ensure_initialized()?;
        info.set(library_info());
        Ok(())
    }

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
    use cryptoki_sys::CK_FUNCTION_LIST_3_0;

    #[test]
    fn initialize_arguments() {
        let os = CKF_OS_LOCKING_OK;
        assert_eq!(check_initialize_args(0, 0, true), Ok(()));
        assert_eq!(check_initialize_args(0, os, true), Ok(()));
        assert_eq!(check_initialize_args(4, os, true), Ok(()));
        assert_eq!(check_initialize_args(4, 0, true), Err(Rv::CantLock.code()));
        assert_eq!(
            check_initialize_args(2, os, true),
            Err(Rv::ArgumentsBad.code())
        );
        assert_eq!(
            check_initialize_args(0, 0, false),
            Err(Rv::ArgumentsBad.code())
        );
    }

    #[test]
    fn library_info_is_padded_and_versioned() {
        let info = library_info();
        assert_eq!(
            (info.cryptokiVersion.major, info.cryptokiVersion.minor),
            (3, 0)
        );
        assert_eq!(&info.manufacturerID[..8], b"Tessera ");
        assert_eq!(info.libraryDescription[31], b' ');
        assert_eq!(
            info.libraryVersion.minor.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
    }

    #[test]
    fn interfaces_by_version() {
        let newest = choose_interface(None, 0).unwrap();
        assert_eq!(
            newest.pFunctionList as *const CK_FUNCTION_LIST_3_0,
            &super::super::tables::FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0
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
        assert_eq!((rv, count), (0, 2));
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
