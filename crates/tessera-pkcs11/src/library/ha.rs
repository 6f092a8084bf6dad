//! High Availability (`ET_PTKC_GENERAL_LIBRARY_MODE=HA`): a session whose device fails goes
//! on on another member of its virtual slot, and the call that met the failure is answered
//! there, so the application sees no error where the cluster can answer.
//!
//! Each session keeps a **journal** of what it has running on its device: the calls of each
//! operation in progress (its init and updates, up to [`JOURNAL_LIMIT`] bytes a session) and
//! its search (the template and how many handles were returned). When a call fails with a
//! device or connection error, the library leaves the device out, opens a session with the same
//! flags on another member (waiting up to `ET_PTKC_HA_RECOVER_WAIT` for one), replays the
//! journal there (the outputs of replayed updates were given already and are dropped; a
//! replayed search skips the handles returned), and sends the call again. The session keeps
//! its handle. Logins are already there (the keepers of [`super::spread`]).
//!
//! An operation whose journal grew past the limit cannot move: its call fails as in WLD, and
//! so does the call of a session that no member can take within the wait.

use std::time::{Duration, Instant};

use tessera_client::ClientError;
use tessera_core::{Rv, SecretBytes, Template};
use tessera_wire::{Call, Operation, Reply, SESSION_OBJECT_BASE};

use super::spread::{device_failed, drop_device};
use super::{device_call, failure, with, Library, Target};
use crate::ids::{SessionId, SlotId};
use crate::CkResult;

/// The bytes of recorded calls one session may keep for replay.
pub const JOURNAL_LIMIT: usize = 1 << 20;

/// What a session has running on its device, to replay on another.
#[derive(Default)]
pub struct Journal {
    /// Each operation in progress: its calls, encoded (wiped on drop), or `None` when they
    /// passed the limit.
    operations: Vec<(Operation, Option<Vec<SecretBytes>>)>,
    /// The search in progress on the device: its template and the handles returned.
    find: Option<(Template, u64)>,
    bytes: usize,
}

impl Journal {
    fn recount(&mut self) {
        self.bytes = self
            .operations
            .iter()
            .flat_map(|(_, calls)| calls.iter().flatten())
            .map(SecretBytes::len)
            .sum();
    }

    fn end(&mut self, operation: Operation) {
        self.operations.retain(|(op, _)| *op != operation);
        self.recount();
    }

    fn push(&mut self, operation: Operation, call: SecretBytes, start: bool) {
        if start {
            self.end(operation);
            self.operations.push((operation, Some(Vec::new())));
        }
        let room = self.bytes + call.len() <= JOURNAL_LIMIT;
        let Some((_, calls)) = self.operations.iter_mut().find(|(op, _)| *op == operation) else {
            return;
        };
        match calls {
            Some(list) if room => {
                self.bytes += call.len();
                list.push(call);
            }
            _ => {
                *calls = None;
                self.recount();
            }
        }
    }

    /// Records what `call` (encoded as `encoded`) did, given its outcome.
    fn record(&mut self, call: &Call, encoded: SecretBytes, outcome: Result<&Reply, u64>) {
        use Call as C;
        match call {
            // An operation on a session object cannot move: its journal is marked so.
            C::OperationInit { operation, key, .. } if outcome.is_ok() => {
                self.push(*operation, encoded, true);
                if *key >= SESSION_OBJECT_BASE {
                    if let Some((_, calls)) =
                        self.operations.iter_mut().find(|(op, _)| op == operation)
                    {
                        *calls = None;
                    }
                    self.recount();
                }
            }
            C::OperationUpdate { operation, .. } if outcome.is_ok() => {
                self.push(*operation, encoded, false)
            }
            C::DigestKey { .. } if outcome.is_ok() => self.push(Operation::Digest, encoded, false),
            // A failed update ends its operation (PKCS#11), as single and final calls do.
            C::OperationUpdate { operation, .. }
            | C::OperationSingle { operation, .. }
            | C::OperationFinal { operation, .. }
            | C::OperationOnce { operation, .. } => self.end(*operation),
            C::DigestKey { .. } => self.end(Operation::Digest),
            C::SessionCancel { flags, .. } => {
                for operation in [
                    Operation::Encrypt,
                    Operation::Decrypt,
                    Operation::Digest,
                    Operation::Sign,
                    Operation::Verify,
                ] {
                    if flags & super::pending::operation_flag(operation) != 0 {
                        self.end(operation);
                    }
                }
            }
            C::FindObjectsInit { template, .. } if outcome.is_ok() => {
                self.find = Some((template.clone(), 0));
            }
            C::FindObjectsFirst { template, .. } => {
                self.find = match outcome {
                    Ok(Reply::Found {
                        handles,
                        exhausted: false,
                    }) => Some((template.clone(), handles.len() as u64)),
                    _ => None,
                };
            }
            C::FindObjects { .. } => {
                if let (Some((_, returned)), Ok(Reply::Handles(handles))) =
                    (&mut self.find, outcome)
                {
                    *returned += handles.len() as u64;
                }
            }
            C::FindObjectsFinal { .. } => self.find = None,
            _ => {}
        }
    }

    /// Whether every operation in progress can be replayed.
    fn replayable(&self) -> bool {
        self.operations.iter().all(|(_, calls)| calls.is_some())
    }
}

/// Whether `call` makes token objects (sent as `Call::Once`). `C_EncapsulateKey` is not
/// among them: its answer, a ciphertext, cannot be given again.
fn makes_objects(call: &Call) -> bool {
    use Call as C;
    matches!(
        call,
        C::CreateObject { .. }
            | C::CopyObject { .. }
            | C::GenerateKey { .. }
            | C::GenerateKeyPair { .. }
            | C::UnwrapKey { .. }
            | C::DeriveKey { .. }
            | C::DecapsulateKey { .. }
    )
}

/// Whether `call` names a session object (it lives on its device only: the call cannot move).
fn names_session_object(call: &Call) -> bool {
    use Call as C;
    let handles: &[u64] = match call {
        C::Once { call, .. } => return names_session_object(call),
        C::OperationInit { key, .. } | C::OperationOnce { key, .. } | C::DigestKey { key, .. } => {
            &[*key]
        }
        C::CopyObject { object, .. }
        | C::DestroyObject { object, .. }
        | C::ObjectSize { object, .. }
        | C::GetAttributes { object, .. }
        | C::SetAttributes { object, .. } => &[*object],
        C::WrapKey {
            wrapping_key, key, ..
        } => &[*wrapping_key, *key],
        C::UnwrapKey { unwrapping_key, .. } => &[*unwrapping_key],
        C::DeriveKey { base_key, .. } => &[*base_key],
        C::EncapsulateKey { public_key, .. } => &[*public_key],
        C::DecapsulateKey { private_key, .. } => &[*private_key],
        _ => &[],
    };
    handles.iter().any(|h| *h >= SESSION_OBJECT_BASE)
}

/// Whether `call`, once it may have been carried out on the failed device, must not be sent
/// again on another: the session moves, and the call fails (`CKR_DEVICE_ERROR`) as in WLD.
/// A PIN change sent again would be checked against the new PIN; a logout is done with the
/// device; `C_InitToken` is not sent twice.
fn not_again(call: &Call) -> bool {
    matches!(
        call,
        Call::SetPin { .. } | Call::InitPin { .. } | Call::Logout { .. } | Call::InitToken { .. }
    )
}

/// Whether `call` changes the journal (the others need no copy kept).
fn journaled(call: &Call) -> bool {
    use Call as C;
    matches!(
        call,
        C::OperationInit { .. }
            | C::OperationUpdate { .. }
            | C::OperationSingle { .. }
            | C::OperationFinal { .. }
            | C::OperationOnce { .. }
            | C::DigestKey { .. }
            | C::SessionCancel { .. }
            | C::FindObjectsInit { .. }
            | C::FindObjectsFirst { .. }
            | C::FindObjects { .. }
            | C::FindObjectsFinal { .. }
    )
}

/// Whether an error means the session's device (or its connection) is gone: the session
/// must move. A session closed because its connection was lost counts; one the application
/// closed does not reach here (it left the table).
fn session_lost(error: &ClientError) -> bool {
    device_failed(error) || matches!(error, ClientError::StaleSession)
}

fn decode(encoded: &SecretBytes) -> CkResult<Call> {
    postcard::from_bytes(encoded.expose()).map_err(|_| Rv::GeneralError.code())
}

impl Library {
    pub(super) fn high_availability(&self) -> bool {
        self.spread
            .as_ref()
            .is_some_and(|s| s.mode == tessera_config::LibraryMode::Ha)
    }
}

/// A session call in HA mode: sent, recorded in the journal, and on a lost device sent again
/// on the member the session moved to.
pub(super) fn call(handle: u64, target: Target, call: Call) -> CkResult<Reply> {
    // A call that makes objects goes with a request id, the same when it is sent again: a
    // node that carried it out before the failure answers with what it made then.
    let call = if makes_objects(&call) {
        let request = tessera_client::request_id().ok_or(Rv::FunctionFailed.code())?;
        Call::Once {
            request,
            call: Box::new(call),
        }
    } else {
        call
    };
    let encoded = SecretBytes::encode(&call).map_err(|_| Rv::GeneralError.code())?;
    let journal = journaled(&call).then(|| (decode(&encoded), encoded.duplicate()));
    let movable = !names_session_object(&call);
    let again = !not_again(&call);
    let kind = (
        matches!(call, Call::Login { .. }),
        matches!(call, Call::DestroyObject { .. }),
    );
    let mut target = target;
    let mut call = Some(call);
    let wait = with(|library| {
        Ok(library
            .spread
            .as_ref()
            .map_or(Duration::ZERO, |s| s.recover_wait))
    })?;
    let deadline = Instant::now() + wait;
    let mut moved = false;
    loop {
        let this = match call.take() {
            Some(call) => call,
            None => {
                let mut again = decode(&encoded)?;
                if let Some(session) = again.session_mut() {
                    *session = target.remote;
                }
                again
            }
        };
        let result = device_call(target.number, &target.device, Some(target.generation), this);
        match result {
            Ok((reply, _)) => {
                note(handle, &journal, Ok(&reply));
                return Ok(reply);
            }
            // Sent again after a move, a login finds the user logged in (the keeper's), a
            // destruction the object gone: what the first sending did.
            Err(ClientError::Returned(code))
                if moved
                    && ((kind.0 && code == Rv::UserAlreadyLoggedIn.code())
                        || (kind.1 && code == Rv::ObjectHandleInvalid.code())) =>
            {
                return Ok(Reply::Done);
            }
            Err(error) if session_lost(&error) && !movable => {
                // A session object lives on its device: the call fails as in WLD.
                if device_failed(&error) {
                    drop_device(target.number);
                }
                return Err(failure(error));
            }
            Err(error) if session_lost(&error) => {
                tracing::warn!(device = target.number, error = %error, "HA: the session's device failed; moving the session");
                if device_failed(&error) {
                    drop_device(target.number);
                } else {
                    // Its connection was lost (and the device may be back): the session is
                    // gone there; the device stays in unless it fails again.
                }
                target = failover(handle, target.number, deadline)?;
                moved = true;
                if !again {
                    return Err(Rv::DeviceError.code());
                }
            }
            Err(error) => {
                let rv = failure(error);
                note(handle, &journal, Err(rv));
                if rv == Rv::SessionHandleInvalid.code() || rv == Rv::SessionClosed.code() {
                    let _ = with(|library| Ok(library.sessions.remove(&handle)));
                }
                return Err(rv);
            }
        }
    }
}

fn note(
    handle: u64,
    journal: &Option<(CkResult<Call>, SecretBytes)>,
    outcome: Result<&Reply, u64>,
) {
    let Some((Ok(call), encoded)) = journal else {
        return;
    };
    let _ = with(|library| {
        if let Some(session) = library.sessions.get_mut(&handle) {
            session.journal.record(call, encoded.duplicate(), outcome);
        }
        Ok(())
    });
}

/// Moves session `handle` off device `failed`: a new session with its flags on another live
/// member of its virtual slot, its journal replayed there. Waits up to `deadline` for a member.
fn failover(handle: u64, failed: usize, deadline: Instant) -> CkResult<Target> {
    loop {
        if Instant::now() >= deadline {
            tracing::warn!("HA: no member of the virtual slot took the session in time");
            return Err(Rv::DeviceError.code());
        }
        let (raw, flags, operations, find) = with(|library| {
            let session = library
                .sessions
                .get(&handle)
                .ok_or(Rv::SessionHandleInvalid.code())?;
            if !session.journal.replayable() {
                tracing::warn!(
                    "HA: an operation's journal passed its limit: the session cannot move"
                );
                return Err(Rv::DeviceError.code());
            }
            let operations: Vec<SecretBytes> = session
                .journal
                .operations
                .iter()
                .flat_map(|(_, calls)| calls.iter().flatten())
                .map(SecretBytes::duplicate)
                .collect();
            Ok((
                session.raw_slot,
                session.flags,
                operations,
                session.journal.find.clone(),
            ))
        })?;
        let candidate = super::spread::member_except(raw, failed)?;
        let Some((number, device, local)) = candidate else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let opened = device.call(None, Call::OpenSession { slot: local, flags });
        let (remote, generation) = match opened {
            Ok((Reply::Handle(remote), generation)) => (remote, generation),
            Ok(_) => return Err(Rv::DeviceError.code()),
            Err(error) => {
                if device_failed(&error) {
                    drop_device(number);
                }
                continue;
            }
        };
        // The operations in progress, then the search, as they stood.
        let mut replayed = true;
        for encoded in &operations {
            let mut call = decode(encoded)?;
            if let Some(session) = call.session_mut() {
                *session = remote;
            }
            if let Err(error) = device.call(Some(generation), call) {
                if device_failed(&error) {
                    drop_device(number);
                }
                replayed = false;
                break;
            }
        }
        if let (true, Some((template, returned))) = (replayed, &find) {
            let init = Call::FindObjectsInit {
                session: remote,
                template: template.clone(),
            };
            let skip = Call::FindObjects {
                session: remote,
                max: *returned,
            };
            let done = device.call(Some(generation), init).and_then(|_| {
                if *returned > 0 {
                    device.call(Some(generation), skip).map(|_| ())
                } else {
                    Ok(())
                }
            });
            if let Err(error) = done {
                if device_failed(&error) {
                    drop_device(number);
                }
                replayed = false;
            }
        }
        if !replayed {
            // The session opened for the move goes (it would stay open, maybe logged in).
            let _ = device.call(Some(generation), Call::CloseSession { session: remote });
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let id = SessionId::new(number, remote).ok_or(Rv::DeviceError.code())?;
        tracing::info!(device = number, "HA: the session goes on on another device");
        return with(|library| {
            let session = library
                .sessions
                .get_mut(&handle)
                .ok_or(Rv::SessionHandleInvalid.code())?;
            session.id = id;
            session.slot = SlotId {
                device: number,
                local,
            };
            session.generation = generation;
            library.target(handle)
        });
    }
}
