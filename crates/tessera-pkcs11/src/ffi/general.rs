//! General-purpose functions (PKCS#11 3.0 §5.4): initialisation and library info; the function
//! lists and interfaces are handed out by `tables.rs`, beside the tables themselves.

use std::ffi::c_void;

use cryptoki_sys::{CKF_OS_LOCKING_OK, CK_C_INITIALIZE_ARGS, CK_FLAGS, CK_INFO, CK_VERSION};
use tessera_core::Rv;

use super::{arguments_bad, read, Place};
use crate::buffer::padded;
use crate::{library, CkResult};

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

/// `CK_INFO` of this library, as a table of `version` reports it.
pub(crate) fn library_info(version: CK_VERSION) -> CK_INFO {
    CK_INFO {
        cryptokiVersion: version,
        manufacturerID: padded("Tessera"),
        flags: 0,
        libraryDescription: padded("Tessera PKCS#11"),
        libraryVersion: CK_VERSION {
            major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
            minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
        },
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
        info.set(library_info(CK_VERSION { major: 3, minor: 0 }));
        Ok(())
    }

}

/// `C_GetInfo` of the version 2.40 table (`C_GetFunctionList`): reports 2.40. Not exported:
/// the exported `C_GetInfo` is the 3.0 table's, as it always was.
///
/// # Safety
///
/// As for [`C_GetInfo`].
pub(crate) unsafe extern "C" fn get_info_2_40(info: *mut CK_INFO) -> cryptoki_sys::CK_RV {
    // SAFETY: forwarded contract.
    unsafe {
        info_of_version(
            info,
            CK_VERSION {
                major: 2,
                minor: 40,
            },
        )
    }
}

/// `C_GetInfo` of the version 3.2 table: reports 3.2.
///
/// # Safety
///
/// As for [`C_GetInfo`].
pub(crate) unsafe extern "C" fn get_info_3_2(info: *mut CK_INFO) -> cryptoki_sys::CK_RV {
    // SAFETY: forwarded contract.
    unsafe { info_of_version(info, CK_VERSION { major: 3, minor: 2 }) }
}

/// # Safety
///
/// `info` is NULL or points to a `CK_INFO` to fill (§5.4.3).
unsafe fn info_of_version(info: *mut CK_INFO, version: CK_VERSION) -> cryptoki_sys::CK_RV {
    super::run("C_GetInfo", || {
        library::ensure_initialized()?;
        // SAFETY: forwarded contract.
        let info = unsafe { Place::new(info) }?;
        info.set(library_info(version));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let info = library_info(CK_VERSION { major: 3, minor: 0 });
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
}
