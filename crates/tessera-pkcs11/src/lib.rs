//! The PKCS#11 (Cryptoki 3.0) library that applications load, `libtessera_pkcs11.so`: it maps
//! the Tessera devices of the configuration onto slots and forwards each call to its device
//! over the wire protocol.
//!
//! # Numbering
//!
//! - **Devices** are numbered by their position in `ET_HSM_NETCLIENT_SERVERLIST`.
//! - **Slot IDs** are `device_number << 16 | local_slot`, where `local_slot` runs over the
//!   device's own slots (`0..slot_count`, from the device's `DeviceInfo`). The list is rebuilt on
//!   every `C_GetSlotList`. A device that cannot be reached shows as one slot
//!   `device_number << 16` without a token ("Tessera device N unreachable"); it is left out when
//!   the application asks for slots with a token, and `C_GetTokenInfo` / `C_OpenSession` on it
//!   give `CKR_TOKEN_NOT_PRESENT`.
//! - **Session handles** are `device_number << 32 | remote_handle` (a device issues handles
//!   below 2^32). Each session is bound to the connection (generation) that opened it; when that
//!   connection is lost the session is gone and its handle becomes invalid.
//! - **Object handles** pass through unchanged: they are the device's own, and a session belongs
//!   to one device.
//!
//! # Shape
//!
//! [`ffi`] is the only module with `unsafe` code: it turns C pointers into owned typed values
//! once, at the boundary, and writes results back. [`library`] holds all global state (devices,
//! slot counts, sessions) in one [`library::Library`] and does the work in safe code. The pure
//! conversions live in [`ids`], [`buffer`], [`attribute`] and [`message`].
//!
//! The library is fork-aware: in a child process, every call answers
//! `CKR_CRYPTOKI_NOT_INITIALIZED` until the child calls `C_Initialize` itself. It runs no async
//! runtime and creates no threads. It emits `tracing` events (one per call, at trace level) and
//! installs no subscriber: a host that has one sees them, others pay nothing.
//!
//! # Functions not supported
//!
//! These return `CKR_FUNCTION_NOT_SUPPORTED`: `C_GetOperationState` and
//! `C_SetOperationState` (an operation's state stays in the device); `C_SignRecoverInit`,
//! `C_SignRecover`, `C_VerifyRecoverInit` and `C_VerifyRecover` (no supported mechanism offers
//! signatures with message recovery); `C_WaitForSlotEvent`; and the multi-part message calls
//! of PKCS#11 3.0, `C_EncryptMessageBegin`, `C_EncryptMessageNext`, `C_DecryptMessageBegin`,
//! `C_DecryptMessageNext`, `C_SignMessageBegin`, `C_SignMessageNext`, `C_VerifyMessageBegin`,
//! `C_VerifyMessageNext` (messages are processed whole). `C_GetFunctionStatus` and
//! `C_CancelFunction` return `CKR_FUNCTION_NOT_PARALLEL`, as the specification asks of every
//! library.
//!
//! # Composed and library-side functions
//!
//! - `C_LoginUser` behaves like `C_Login`; the user name is ignored, because Tessera tokens
//!   have no named users (one SO and one user per token).
//! - The dual-function updates (`C_DigestEncryptUpdate`, `C_DecryptDigestUpdate`,
//!   `C_SignEncryptUpdate`, `C_DecryptVerifyUpdate`) are two updates of the session's
//!   operations, in the order the specification gives.
//! - The message-based functions keep their context (mechanism and key) in the library; each
//!   message is one whole operation on the device. Encryption and decryption are AES-GCM
//!   (`CK_GCM_MESSAGE_PARAMS`; IVs generated with `CKG_GENERATE_RANDOM` come from the device's
//!   random generator); signature messages take no parameter. While a classic operation of
//!   the same kind is active in the session (say after `C_SignInit`), the device refuses a
//!   message with `CKR_OPERATION_ACTIVE`.
//!
//! # Platform
//!
//! Handles pack a device number above 32 bits, so the library needs a 64-bit `CK_ULONG`
//! (LP64 Unix); the build fails elsewhere.
#![deny(unsafe_code)]

pub mod attribute;
pub mod buffer;
#[allow(unsafe_code)]
pub mod ffi;
pub mod ids;
pub mod library;
pub mod message;

/// The outcome of a call: the error is a raw `CK_RV`, an open number, so that codes a device
/// returns reach the application unchanged.
pub type CkResult<T = ()> = Result<T, u64>;

/// A copy of an application's input, `CKR_HOST_MEMORY` where the memory cannot be had: never
/// an allocation that aborts the application (inputs are bounded by `ffi::MAX_INPUT` first).
/// Never inlined, as [`tessera_core::bytes::try_copy`].
#[inline(never)]
pub(crate) fn copied(input: &[u8]) -> CkResult<Vec<u8>> {
    tessera_core::bytes::try_copy(input).ok_or(tessera_core::Rv::HostMemory.code())
}

/// As [`copied`], for a secret (a PIN, a seed, a plaintext): locked memory where there is a
/// slot, wiped when dropped.
pub(crate) fn secret_copied(input: &[u8]) -> CkResult<tessera_core::SecretBytes> {
    tessera_core::SecretBytes::try_from_slice(input).ok_or(tessera_core::Rv::HostMemory.code())
}

// Session and slot numbering put the device number above bit 32; see the crate doc.
const _: () = assert!(std::mem::size_of::<cryptoki_sys::CK_ULONG>() == 8);
