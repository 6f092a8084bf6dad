//! One round trip per single-part operation and per small search, and every error of a
//! `C_*Init` returned by that `C_*Init`.
//!
//! - An init of an operation goes to the device, which judges it (the mechanism, its parameter,
//!   the key and what the key may do) and answers with the init's own errors. The library
//!   remembers the inits the device accepted, as [`Verdict`]s: the same init again (the same
//!   operation, mechanism and key, with a parameter of the same shape: a fresh IV of the same
//!   length is the same init) is accepted here and held in the session entry, to travel with
//!   the call that follows. `C_EncryptInit` + `C_Encrypt` (and decrypt, digest, sign, verify) is
//!   then one request, [`Call::OperationOnce`]; a multi-part call (`C_*Update`, `C_*Final`, the
//!   dual-function updates, `C_DigestKey`) first sends the held init on its own.
//! - A verdict lasts while nothing this process did could change the answer: `C_DestroyObject`
//!   and `C_SetAttributeValue` end the verdicts on their object; a call that ends a login or
//!   may destroy objects it does not name (`C_Logout`, `C_CloseSession`, `C_CloseAllSessions`,
//!   `C_InitToken`, an administration call) ends every verdict of its device ([`Changes`]).
//!   What another application does to a key, or the administrator to the device's flags, can
//!   make a remembered verdict stale; the device judges the held init again
//!   when it arrives with its call, so nothing is ever done that the device would refuse, and
//!   that call reports the init's error (and the verdict is forgotten).
//! - `C_FindObjectsInit` + `C_FindObjects` is one request, [`Call::FindObjectsFirst`]; when
//!   every result fits, the device closes the search and `C_FindObjectsFinal` is answered here.
//!
//! A held init is one the device would accept: a second init of its operation gets
//! `CKR_OPERATION_ACTIVE` here. An init of an operation the device may still be running (its
//! init went to the device and the library has not seen it end) goes to the device, which
//! answers the same.

use std::collections::VecDeque;

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

/// The calls this process made to one device that can change what the verdict of an init
/// depends on, numbered: the latest ones, each with the key it changed (`None`: any key).
#[derive(Debug, Default)]
pub struct Changes {
    count: u64,
    recent: VecDeque<(u64, Option<u64>)>,
}

/// The changes a device's [`Changes`] remembers; a verdict older than them all lapses.
const RECENT_CHANGES: usize = 64;

impl Changes {
    /// Records a change of `key` (`None`: of any key).
    pub fn record(&mut self, key: Option<u64>) {
        self.count += 1;
        self.recent.push_back((self.count, key));
        if self.recent.len() > RECENT_CHANGES {
            self.recent.pop_front();
        }
    }

    /// The number of the latest change.
    pub fn now(&self) -> u64 {
        self.count
    }

    /// Whether no change after change number `since` touched `key`.
    fn untouched(&self, key: u64, since: u64) -> bool {
        if since == self.count {
            return true;
        }
        match self.recent.front() {
            Some((oldest, _)) if *oldest <= since + 1 => self
                .recent
                .iter()
                .filter(|(number, _)| *number > since)
                .all(|(_, changed)| matches!(changed, Some(changed) if *changed != key)),
            // Changes after `since` were forgotten: any of them may have touched it.
            _ => false,
        }
    }
}

/// An init the device accepted, judged after change number `since` of its device.
#[derive(Debug)]
struct Verdict {
    operation: Operation,
    mechanism: Mechanism,
    key: u64,
    since: u64,
}

impl Verdict {
    /// Whether this verdict is about the same init: operation, key, mechanism and the shape of
    /// its parameter.
    fn covers(&self, operation: Operation, mechanism: &Mechanism, key: u64) -> bool {
        self.operation == operation
            && self.key == key
            && self.mechanism.ty == mechanism.ty
            && self.mechanism.parameter.same_shape(&mechanism.parameter)
    }
}

/// The verdicts a session remembers; the oldest goes first.
const MAX_VERDICTS: usize = 16;

/// Inits held in a session entry, the operations whose init reached the device, and the inits
/// the device accepted.
#[derive(Debug, Default)]
pub struct Deferred {
    held: Vec<(Operation, Mechanism, u64)>,
    live: Vec<Operation>,
    verdicts: Vec<Verdict>,
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

    /// Whether the device accepted this init (or one of the same shape), on a key that no
    /// change since touched.
    fn accepted(
        &self,
        operation: Operation,
        mechanism: &Mechanism,
        key: u64,
        changes: &Changes,
    ) -> bool {
        (self.verdicts.iter())
            .any(|v| v.covers(operation, mechanism, key) && changes.untouched(key, v.since))
    }

    /// Remembers that the device accepted this init, judged after change number `since`.
    fn remember(&mut self, operation: Operation, mechanism: &Mechanism, key: u64, since: u64) {
        self.verdicts
            .retain(|v| !v.covers(operation, mechanism, key));
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.remove(0);
        }
        self.verdicts.push(Verdict {
            operation,
            mechanism: mechanism.clone(),
            key,
            since,
        });
    }

    /// Forgets the verdicts on `key` for `operation` (a held init the device refused).
    fn overruled(&mut self, operation: Operation, key: u64) {
        self.verdicts
            .retain(|v| !(v.operation == operation && v.key == key));
    }
}

fn deferred<T>(handle: u64, f: impl FnOnce(&mut Deferred) -> T) -> CkResult<T> {
    with(|library| Ok(f(&mut library.session_mut(handle)?.deferred)))
}

/// Whether `code` is an answer about the init (its mechanism, parameter, key or login), which
/// makes the verdict it was held on lapse; an answer about the data does not.
fn judges_the_init(code: u64) -> bool {
    [
        Rv::MechanismInvalid,
        Rv::MechanismParamInvalid,
        Rv::KeyHandleInvalid,
        Rv::KeyTypeInconsistent,
        Rv::KeyFunctionNotPermitted,
        Rv::KeySizeRange,
        Rv::UserNotLoggedIn,
    ]
    .iter()
    .any(|rv| rv.code() == code)
}

/// Sends an init to the device now. A refused init forgets the verdicts it was held on.
fn send_init(handle: u64, operation: Operation, mechanism: Mechanism, key: u64) -> CkResult {
    let sent = session_call(handle, |session| Call::OperationInit {
        session,
        operation,
        mechanism,
        key,
    })
    .and_then(expect_done);
    if let Err(code) = sent {
        let _ = deferred(handle, |d| d.overruled(operation, key));
        return Err(code);
    }
    deferred(handle, |d| d.live.push(operation))
}

/// `C_*Init` of an operation: forgets undelivered output of an earlier one; held for the call
/// that follows when the device accepted the same init before on a key nothing changed since,
/// else sent to the device now, whose answer is the init's.
pub fn operation_init(
    handle: u64,
    operation: Operation,
    mechanism: Mechanism,
    key: u64,
) -> CkResult {
    let unjudged = with(|library| {
        let (session, changes) = library.session_and_changes(handle)?;
        session
            .pending
            .forget(|call| call.operation() == Some(operation));
        let deferred = &mut session.deferred;
        if deferred.held.iter().any(|(o, ..)| *o == operation) {
            // A held init is one the device accepted: its operation is active.
            return Err(Rv::OperationActive.code());
        }
        // An operation the device may still run goes there, which answers
        // (CKR_OPERATION_ACTIVE if it does).
        let live = deferred.live.contains(&operation);
        if !live && deferred.accepted(operation, &mechanism, key, changes) {
            deferred.held.push((operation, mechanism, key));
            return Ok(None);
        }
        Ok(Some((mechanism, changes.now())))
    })?;
    let Some((mechanism, since)) = unjudged else {
        return Ok(());
    };
    let judged = mechanism.clone();
    send_init(handle, operation, mechanism, key)?;
    deferred(handle, |d| d.remember(operation, &judged, key, since))
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

/// Before a call to device `number` that changes `key` (`None`: any key): the inits held on
/// it in the device's sessions go to the device first, so that the change finds their
/// operations where an init without a verdict would have put them (a key destroyed or
/// changed after its init, or a logout after it, then does to the operation what the device
/// does, whatever the library remembered).
pub(super) fn send_held(number: usize, key: Option<u64>) {
    let held = with(|library| {
        let mut held = Vec::new();
        for (handle, session) in library.sessions.iter_mut() {
            if session.id.device != number {
                continue;
            }
            let deferred = &mut session.deferred;
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut deferred.held)
                .into_iter()
                .partition(|(_, _, k)| key.is_none_or(|key| key == *k));
            deferred.held = later;
            held.extend(now.into_iter().map(|init| (*handle, init)));
        }
        Ok(held)
    });
    for (handle, (operation, mechanism, key)) in held.unwrap_or_default() {
        let _ = send_init(handle, operation, mechanism, key);
    }
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
        Some((mechanism, key)) => {
            let result = once(handle, operation, mechanism, key, data, signature);
            if matches!(result, Err(code) if judges_the_init(code)) {
                // The device refused the init itself (another application changed the key):
                // judged afresh next time.
                let _ = deferred(handle, |d| d.overruled(operation, key));
            }
            result
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_lapse_with_changes_of_their_key() {
        let mut changes = Changes::default();
        let since = changes.now();
        assert!(changes.untouched(5, since));
        changes.record(Some(6));
        assert!(changes.untouched(5, since), "another key");
        changes.record(Some(5));
        assert!(!changes.untouched(5, since));
        let since = changes.now();
        changes.record(None);
        assert!(!changes.untouched(5, since), "a change of any key");
        // A verdict older than every change remembered lapses.
        let since = changes.now();
        for _ in 0..RECENT_CHANGES {
            changes.record(Some(7));
        }
        assert!(changes.untouched(5, since));
        changes.record(Some(7));
        assert!(!changes.untouched(5, since));
    }

    #[test]
    fn a_verdict_covers_parameters_of_the_same_shape() {
        let cbc = |iv: &[u8]| Mechanism {
            ty: 0x1082,
            parameter: tessera_core::MechanismParameter::Bytes(iv.to_vec()),
        };
        let changes = Changes::default();
        let mut deferred = Deferred::default();
        deferred.remember(Operation::Encrypt, &cbc(&[1; 16]), 3, changes.now());
        assert!(deferred.accepted(Operation::Encrypt, &cbc(&[2; 16]), 3, &changes));
        assert!(!deferred.accepted(Operation::Encrypt, &cbc(&[2; 8]), 3, &changes));
        assert!(!deferred.accepted(Operation::Decrypt, &cbc(&[2; 16]), 3, &changes));
        assert!(!deferred.accepted(Operation::Encrypt, &cbc(&[2; 16]), 4, &changes));
        deferred.overruled(Operation::Encrypt, 3);
        assert!(!deferred.accepted(Operation::Encrypt, &cbc(&[2; 16]), 3, &changes));
        for key in 0..=MAX_VERDICTS as u64 {
            deferred.remember(Operation::Sign, &cbc(&[0; 16]), key, changes.now());
        }
        assert_eq!(deferred.verdicts.len(), MAX_VERDICTS, "bounded");
        assert!(!deferred.accepted(Operation::Sign, &cbc(&[0; 16]), 0, &changes));
    }
}
