//! Session management (PKCS#11 3.0 §5.6) and the PIN functions of §5.5.

use std::ffi::c_void;

use cryptoki_sys::{
    CKF_SERIAL_SESSION, CK_FLAGS, CK_NOTIFY, CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID,
    CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR,
};
use tessera_core::Rv;
use tessera_wire::Call;

use super::{bytes, convert, secret_copied, Place};
use crate::library::{self, expect_done};
use crate::CkResult;

/// `C_Login` and `C_LoginUser`.
///
/// # Safety
///
/// `pin` must be NULL or hold `pin_len` bytes.
unsafe fn login(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: *const CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CkResult {
    // SAFETY: forwarded contract.
    let pin = secret_copied(unsafe { bytes(pin, pin_len) }?)?;
    if user_type == cryptoki_sys::CKU_CONTEXT_SPECIFIC {
        // The operation this login is for must be on the device first.
        library::flush_held(session as u64)?;
    }
    library::login(session as u64, user_type as u64, pin)
}

entry_points! {
    /// `C_InitPIN` (§5.5.8).
    fn C_InitPIN(session: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) {
        // SAFETY: pPin is NULL or holds ulPinLen bytes (§5.5.8).
        let pin = secret_copied(unsafe { bytes(pin, pin_len) }?)?;
        expect_done(library::session_call(session as u64, |session| Call::InitPin {
            session,
            pin,
        })?)
    }

    /// `C_SetPIN` (§5.5.9).
    fn C_SetPIN(
        session: CK_SESSION_HANDLE,
        old_pin: *mut CK_UTF8CHAR,
        old_len: CK_ULONG,
        new_pin: *mut CK_UTF8CHAR,
        new_len: CK_ULONG,
    ) {
        // SAFETY: pOldPin is NULL or holds ulOldLen bytes (§5.5.9).
        let old_pin = secret_copied(unsafe { bytes(old_pin, old_len) }?)?;
        // SAFETY: pNewPin is NULL or holds ulNewLen bytes (§5.5.9).
        let new_pin = secret_copied(unsafe { bytes(new_pin, new_len) }?)?;
        expect_done(library::session_call(session as u64, |session| Call::SetPin {
            session,
            old_pin,
            new_pin,
        })?)
    }

    /// `C_OpenSession` (§5.6.1): serial sessions only; notification callbacks are ignored.
    fn C_OpenSession(
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        _application: *mut c_void,
        _notify: CK_NOTIFY,
        session: *mut CK_SESSION_HANDLE,
    ) {
        // SAFETY: phSession is NULL or points to a handle to fill (§5.6.1).
        let place = unsafe { Place::new(session) }?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Rv::SessionParallelNotSupported.code());
        }
        let handle = library::open_session(slot as u64, flags as u64)?;
        place.set(handle as CK_SESSION_HANDLE);
        Ok(())
    }

    /// `C_CloseSession` (§5.6.2).
    fn C_CloseSession(session: CK_SESSION_HANDLE) {
        library::close_session(session as u64)
    }

    /// `C_CloseAllSessions` (§5.6.3): this application's sessions on the slot.
    fn C_CloseAllSessions(slot: CK_SLOT_ID) {
        library::close_all_sessions(slot as u64)
    }

    /// `C_GetSessionInfo` (§5.6.4).
    fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) {
        // SAFETY: pInfo is NULL or points to a CK_SESSION_INFO to fill (§5.6.4).
        let place = unsafe { Place::new(info) }?;
        let info = library::session_info(session as u64)?;
        place.set(convert::session_info(&info));
        Ok(())
    }

    /// `C_Login` (§5.6.8).
    fn C_Login(
        session: CK_SESSION_HANDLE,
        user_type: CK_USER_TYPE,
        pin: *mut CK_UTF8CHAR,
        pin_len: CK_ULONG,
    ) {
        // SAFETY: pPin is NULL or holds ulPinLen bytes (§5.6.8).
        unsafe { login(session, user_type, pin, pin_len) }
    }

    /// `C_LoginUser` (§5.6.9): `C_Login` with a user name, which is ignored: Tessera tokens
    /// have one user and one SO, without names.
    fn C_LoginUser(
        session: CK_SESSION_HANDLE,
        user_type: CK_USER_TYPE,
        pin: *mut CK_UTF8CHAR,
        pin_len: CK_ULONG,
        _username: *mut CK_UTF8CHAR,
        _username_len: CK_ULONG,
    ) {
        // SAFETY: pPin is NULL or holds ulPinLen bytes (§5.6.9).
        unsafe { login(session, user_type, pin, pin_len) }
    }

    /// `C_Logout` (§5.6.10).
    fn C_Logout(session: CK_SESSION_HANDLE) {
        library::logout(session as u64)
    }

    /// `C_SessionCancel` (§5.6.11): ends the operations that `flags` names (`CKF_ENCRYPT`,
    /// `CKF_MESSAGE_SIGN`, ...), with any output the library kept for them.
    fn C_SessionCancel(session: CK_SESSION_HANDLE, flags: CK_FLAGS) {
        library::session_cancel(session as u64, flags as u64)
    }
}
