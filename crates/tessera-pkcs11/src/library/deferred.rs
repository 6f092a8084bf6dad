//! One round trip per single-part operation and per small search: `C_*Init` and
//! `C_FindObjectsInit` are held in the session entry and travel with the call that follows.
//!
//! - `C_EncryptInit` + `C_Encrypt` (and decrypt, digest, sign, verify) is one request,
//!   [`Call::OperationOnce`]; a multi-part call (`C_*Update`, `C_*Final`, the dual-function
//!   updates, `C_DigestKey`) first sends the held init on its own.
//! - `C_FindObjectsInit` + `C_FindObjects` is one request, [`Call::FindObjectsFirst`]; when
//!   every result fits, the device closes the search and `C_FindObjectsFinal` is answered here.
//!
//! What PKCS#11 lets the library check, it checks at the init (the session handle, the
//! mechanism's parameter, a search already active); what only the device knows (the key handle
//! and what the key may do) is reported by the call that carries the init. A second init of an
//! operation whose init was held sends the first one, then the second, so the device answers
//! `CKR_OPERATION_ACTIVE` at the second init as the standard says; so does an init of an
//! operation the device may still be running (its init went to the device and the library has
//! not seen it end).

use tessera_core::{Mechanism, Rv, Template};
use tessera_wire::{Call, Operation, Reply};

use super::{expect_done, session_call, unexpected, with};
use crate::CkResult;

/// The search of a session, as far as the library knows.
#[derive(Debug, Default)]
pub enum Find {
    /// No search.
    #[default]
    Idle,
    /// `C_FindObjectsInit` was called; the template goes with the first `C_FindObjects`.
    Held(Template),
    /// The search runs on the device.
    Remote,
    /// The device gave every result and closed the search.
    Exhausted,
}

/// Inits held in a session entry, and the operations whose init reached the device.
#[derive(Debug, Default)]
pub struct Deferred {
    held: Vec<(Operation, Mechanism, u64)>,
    live: Vec<Operation>,
    /// The session's search.
    pub find: Find,
}

impl Deferred {
    fn take(&mut self, operation: Operation) -> Option<(Mechanism, u64)> {
        let at = self.held.iter().position(|(o, ..)| *o == operation)?;
        let (_, mechanism, key) = self.held.swap_remove(at);
        Some((mechanism, key))
    }

    fn ended(&mut self, operation: Operation) {
        self.live.retain(|o| *o != operation);
    }

    /// Forgets the held inits and live operations of the operations `cancelled` names.
    pub fn cancel(&mut self, cancelled: impl Fn(Operation) -> bool) {
        self.held.retain(|(o, ..)| !cancelled(*o));
        self.live.retain(|o| !cancelled(*o));
    }
}

fn deferred<T>(handle: u64, f: impl FnOnce(&mut Deferred) -> T) -> CkResult<T> {
    with(|library| Ok(f(&mut library.session_mut(handle)?.deferred)))
}

/// Sends an init to the device now.
fn send_init(handle: u64, operation: Operation, mechanism: Mechanism, key: u64) -> CkResult {
    expect_done(session_call(handle, |session| Call::OperationInit {
        session,
        operation,
        mechanism,
        key,
    })?)?;
    deferred(handle, |d| d.live.push(operation))
}

/// `C_*Init` of an operation: forgets undelivered output of an earlier one, and is held for
/// the call that follows, unless the device may still run this operation (all in one turn of
/// the library's lock).
pub fn operation_init(
    handle: u64,
    operation: Operation,
    mechanism: Mechanism,
    key: u64,
) -> CkResult {
    let not_held = with(|library| {
        let session = library.session_mut(handle)?;
        session
            .pending
            .forget(|call| call.operation() == Some(operation));
        let deferred = &mut session.deferred;
        let earlier = deferred.take(operation);
        if earlier.is_none() && !deferred.live.contains(&operation) {
            deferred.held.push((operation, mechanism, key));
            return Ok(None);
        }
        Ok(Some((earlier, mechanism)))
    })?;
    let Some((earlier, mechanism)) = not_held else {
        return Ok(());
    };
    if let Some((earlier_mechanism, earlier_key)) = earlier {
        // The earlier init was answered CKR_OK; it reaches the device now, so that this one
        // gets the device's answer (CKR_OPERATION_ACTIVE when the earlier one took).
        let _ = send_init(handle, operation, earlier_mechanism, earlier_key);
    }
    send_init(handle, operation, mechanism, key)
}

/// Before a multi-part call of `operation`: the held init goes to the device first.
pub fn flush(handle: u64, operation: Operation) -> CkResult {
    match deferred(handle, |d| d.take(operation))? {
        Some((mechanism, key)) => send_init(handle, operation, mechanism, key),
        None => Ok(()),
    }
}

/// Before a context-specific login (`CKU_CONTEXT_SPECIFIC`, for a key with
/// `CKA_ALWAYS_AUTHENTICATE`): the session's held inits go to the device first, so that the
/// login finds the operation it is for (PKCS#11 3.0 §5.6: the login comes between the init and
/// the call that uses the key). An init the device refuses leaves no operation, which the
/// next call of it reports.
pub fn flush_held(handle: u64) -> CkResult {
    let held = deferred(handle, |d| std::mem::take(&mut d.held))?;
    for (operation, mechanism, key) in held {
        let _ = send_init(handle, operation, mechanism, key);
    }
    Ok(())
}

/// A multi-part call of `operation` (an update, `C_DigestKey`): the held init goes first, and
/// a failed call ends the operation.
pub fn continuing<T>(
    handle: u64,
    operation: Operation,
    call: impl FnOnce() -> CkResult<T>,
) -> CkResult<T> {
    flush(handle, operation)?;
    let result = call();
    if result.is_err() {
        ended(handle, operation);
    }
    result
}

/// Before an update or final call of `operation`: `CKR_OPERATION_ACTIVE` while the output of
/// its single-part call is kept for the application (it asked its length: the operation waits
/// for that call, PKCS#11 3.0 §5.2, and single-part and multi-part calls do not mix).
pub fn not_waiting_for_single(handle: u64, operation: Operation) -> CkResult {
    let single = super::Producer::Operation(operation, super::Stage::Single);
    let waiting = with(|library| Ok(library.session_mut(handle)?.pending.holds(&single)))?;
    match waiting {
        true => Err(Rv::OperationActive.code()),
        false => Ok(()),
    }
}

/// After a call of `operation` that failed with anything but `CKR_BUFFER_TOO_SMALL`: the
/// operation ends, as PKCS#11 3.0 says of every single-part, update and final call ("A call to
/// C_EncryptUpdate which results in an error terminates the current encryption operation";
/// C_Encrypt "always terminates the active encryption operation unless it returns
/// CKR_BUFFER_TOO_SMALL or is a successful call ... to determine the length of the buffer").
/// A call the device answered ended it there already; one the library refused before sending
/// it (an argument it could not take) did not: a held init is forgotten, kept output too, and
/// an operation the device runs is cancelled there.
pub fn abandon(handle: u64, operation: Operation) {
    let flags = super::pending::operation_flag(operation);
    let live = with(|library| {
        let session = library.session_mut(handle)?;
        let live = session.deferred.live.contains(&operation);
        session.cancel_here(flags);
        Ok(live)
    });
    if live == Ok(true) {
        let _ = session_call(handle, |session| Call::SessionCancel { session, flags });
    }
}

/// After a call that ends `operation` on the device (a single-part or final call, whatever its
/// outcome, or a failed update).
pub fn ended(handle: u64, operation: Operation) {
    let _ = deferred(handle, |d| d.ended(operation));
}

/// A single-part call (`C_Encrypt`, `C_Sign`, `C_Verify`, ...): with the held init when there
/// is one, in the same request. The operation ends with it.
pub fn single(
    handle: u64,
    operation: Operation,
    data: Vec<u8>,
    signature: Vec<u8>,
) -> CkResult<Reply> {
    let held = deferred(handle, |d| d.take(operation))?;
    let result = match held {
        Some((mechanism, key)) => once(handle, operation, mechanism, key, data, signature),
        None => session_call(handle, |session| Call::OperationSingle {
            session,
            operation,
            data,
            signature,
        }),
    };
    // A multi-part operation refuses a single-part call and goes on; anything else ends it.
    if !matches!(result, Err(code) if code == Rv::OperationActive.code()) {
        ended(handle, operation);
    }
    result
}

/// An init and its single-part call as one request (also each message of the message-based
/// functions, which is a whole operation on the device).
pub(super) fn once(
    handle: u64,
    operation: Operation,
    mechanism: Mechanism,
    key: u64,
    data: Vec<u8>,
    signature: Vec<u8>,
) -> CkResult<Reply> {
    session_call(handle, |session| Call::OperationOnce {
        session,
        operation,
        mechanism,
        key,
        data,
        signature,
    })
}

/// `C_FindObjectsInit`: held for the first `C_FindObjects`.
pub fn find_init(handle: u64, template: Template) -> CkResult {
    with(|library| {
        let session = library.session_mut(handle)?;
        if !matches!(session.deferred.find, Find::Idle) {
            return Err(Rv::OperationActive.code());
        }
        session.deferred.find = Find::Held(template);
        Ok(())
    })
}

/// `C_FindObjects`: the first call carries the template.
pub fn find(handle: u64, max: u64) -> CkResult<Vec<u64>> {
    let find = deferred(handle, |d| std::mem::take(&mut d.find))?;
    let (handles, next) = match find {
        Find::Idle => return Err(Rv::OperationNotInitialized.code()),
        Find::Exhausted => (Vec::new(), Find::Exhausted),
        Find::Held(template) => {
            let reply = session_call(handle, |session| Call::FindObjectsFirst {
                session,
                template,
                max,
            })?;
            match reply {
                Reply::Found { handles, exhausted } => {
                    let next = if exhausted {
                        Find::Exhausted
                    } else {
                        Find::Remote
                    };
                    (handles, next)
                }
                reply => return Err(unexpected(&reply)),
            }
        }
        Find::Remote => {
            let reply = session_call(handle, |session| Call::FindObjects { session, max });
            let reply = match reply {
                Ok(reply) => reply,
                Err(code) => {
                    deferred(handle, |d| d.find = Find::Remote)?;
                    return Err(code);
                }
            };
            match reply {
                Reply::Handles(handles) => (handles, Find::Remote),
                reply => return Err(unexpected(&reply)),
            }
        }
    };
    deferred(handle, |d| d.find = next)?;
    Ok(handles)
}

/// `C_FindObjectsFinal`: a round trip only if the search still runs on the device.
pub fn find_final(handle: u64) -> CkResult {
    match deferred(handle, |d| std::mem::take(&mut d.find))? {
        Find::Idle => Err(Rv::OperationNotInitialized.code()),
        Find::Held(_) | Find::Exhausted => Ok(()),
        Find::Remote => expect_done(session_call(handle, |session| Call::FindObjectsFinal {
            session,
        })?),
    }
}
