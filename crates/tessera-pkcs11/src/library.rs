//! All global state of the library, in one [`Library`], and the calls that use it. The calls
//! of the session's operations that compose several requests or keep output in the session
//! entry are in the submodules `operations` (kept output, dual-function updates, key wrapping,
//! cancellation) and `messages` (the message-based functions), re-exported here.
//!
//! The state sits in one `Mutex<Option<Library>>`. A call takes the lock only to read or update
//! the tables; it clones what it needs (an `Arc` of the device, the remote handle, the
//! connection generation) and releases the lock before any network I/O, so threads that use
//! different sessions do not wait for each other here (each device client has its own lock).
//!
//! Fork awareness: the state remembers the process that initialised it, by a byte the kernel
//! wipes in every child (`MADV_WIPEONFORK`; by process id where the kernel lacks it). A call
//! that finds the byte wiped runs in a forked child: it drops the parent's state (closing the
//! child's copies of the sockets, which leaves the parent's connections alone) and answers
//! `CKR_CRYPTOKI_NOT_INITIALIZED` until the child calls `C_Initialize`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki_sys as ck;
use tessera_client::{ClientError, Device};
use tessera_config::{Config, ConfigError, CONNECT_TIMEOUT, REPLY_TIMEOUT};
use tessera_core::info::{SessionInfo, SlotInfo, Version};
use tessera_core::Rv;
use tessera_wire::{Call, Operation, Reply};

use crate::ids::{SessionId, SlotId, MAX_LOCAL_SLOTS};
use crate::CkResult;

mod deferred;
mod ha;
mod messages;
mod operations;
mod pending;
mod spread;

pub use deferred::{
    abandon, find, find_final, find_init, flush_held, not_waiting_for_single, operation_init,
    single,
};
pub use messages::{
    message_context, message_final, message_init, open, seal, sign_message, verify_message, Context,
};
pub use operations::{
    absorb, digest_key, dual_update, final_call, output, output_of, produce, random,
    session_cancel, update_output, wrap_key, Dual,
};
use pending::Pending;
pub use pending::{Producer, Stage};
pub use spread::Spread;

/// The one holder of the library's state (`None` before `C_Initialize`, after `C_Finalize`).
static LIBRARY: Mutex<Option<Library>> = Mutex::new(None);

/// A byte of a page the kernel wipes in every child process (`MADV_WIPEONFORK`, mapped by the
/// FFI layer before the first `C_Initialize`): `C_Initialize` sets it, and it reads 0 in any
/// process forked since, however the child was made.
static FORK_MARKER: OnceLock<&'static AtomicU8> = OnceLock::new();

/// Tells forked children by `marker` from now on: a byte of a page the kernel wipes in every
/// child (`MADV_WIPEONFORK`), which `C_Initialize` sets.
pub fn use_fork_marker(marker: &'static AtomicU8) {
    let _ = FORK_MARKER.set(marker);
}

/// The process that initialised the library: a child made by `fork` afterwards must not use
/// the parent's connections (nor its channel's keys and sequence numbers: two processes
/// sealing under one nonce would break AES-GCM). Known by the fork marker when there is one (a
/// memory read per call), else by the process id (a system call per call).
#[derive(Debug, Clone, Copy)]
enum Owner {
    Marked(&'static AtomicU8),
    Pid(u32),
}

impl Owner {
    /// This process, which is initialising the library (the marker is set for it).
    fn this_process() -> Owner {
        match FORK_MARKER.get() {
            Some(marker) => {
                marker.store(1, Ordering::Relaxed);
                Owner::Marked(marker)
            }
            None => Owner::Pid(std::process::id()),
        }
    }

    fn is_this_process(self) -> bool {
        match self {
            Owner::Marked(marker) => marker.load(Ordering::Relaxed) == 1,
            Owner::Pid(pid) => pid == std::process::id(),
        }
    }
}

/// What the library knows about a device's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSlots {
    /// Not asked yet.
    Unknown,
    /// Reachable at the last look, with this many slots.
    Up(u64),
    /// Unreachable at the last look: shown as one slot without a token.
    Down,
}

/// One open session.
struct Session {
    /// Device and remote handle.
    id: SessionId,
    /// The slot it was opened on (the device's, in WLD and HA the member's).
    slot: SlotId,
    /// The slot ID the application opened it on (in WLD and HA, the virtual slot).
    raw_slot: u64,
    /// The connection that carries it.
    generation: u64,
    /// Output the device produced that the application has not taken yet (it asked for the
    /// length, or its buffer was too small). Wiped on drop.
    pending: Pending,
    /// The message-based operations in progress (`C_MessageEncryptInit`, ...), at most one
    /// per operation. They live here only: each message is one operation on the device.
    messages: Vec<(Operation, Context)>,
    /// The signature given to `C_VerifySignatureInit` (PKCS#11 3.2), while that operation is
    /// in progress: it runs on the device as a verification whose signature the library adds
    /// to the last call.
    signature: Option<Vec<u8>>,
    /// Inits held for the call that follows, and the session's search.
    deferred: deferred::Deferred,
    /// The flags it was opened with (HA opens it again with them on another device).
    flags: u64,
    /// What it has running on its device, for HA to replay on another.
    journal: ha::Journal,
}

impl Session {
    /// Forgets, here, what of the session's operations `flags` (`C_SessionCancel`'s) names:
    /// their kept outputs, held inits and live marks, and the message-based ones (which live
    /// here only). What the device runs is the caller's to cancel there.
    fn cancel_here(&mut self, flags: u64) {
        self.pending.forget(|call| call.cancelled_by(flags));
        (self.deferred).cancel(|operation| flags & pending::operation_flag(operation) != 0);
        (self.messages).retain(|(operation, _)| flags & pending::message_flag(*operation) == 0);
        if flags & pending::operation_flag(Operation::Verify) != 0 {
            self.signature = None;
        }
    }
}

/// What a session call needs, cloned out of the table.
struct Target {
    number: usize,
    device: Arc<Device>,
    remote: u64,
    generation: u64,
}

/// Where the calls of a slot go.
enum SlotRoute {
    /// A slot of a reachable device: the device's number and the device, and its own slot
    /// number.
    Token(usize, Arc<Device>, u64),
    /// The placeholder slot of a device that is down.
    Absent,
}

/// The library's global state.
pub struct Library {
    /// The process that initialised the library.
    owner: Owner,
    /// The devices, by device number.
    devices: Vec<Arc<Device>>,
    /// Slot counts, by device number.
    slots: Vec<DeviceSlots>,
    /// Open sessions, by global handle.
    sessions: HashMap<u64, Session>,
    /// By device number: the calls this process made that can change what the verdict of an
    /// init depends on (objects, logins; see `deferred`).
    changes: Vec<deferred::Changes>,
    /// The virtual slots of WLD and HA (`None`: `NORMAL`, every device's slots).
    spread: Option<Spread>,
}

impl Library {
    /// State over these devices (device number = position), owned by this process.
    pub fn new(devices: Vec<Device>) -> Library {
        Library {
            owner: Owner::this_process(),
            slots: vec![DeviceSlots::Unknown; devices.len()],
            changes: devices.iter().map(|_| Default::default()).collect(),
            devices: devices.into_iter().map(Arc::new).collect(),
            sessions: HashMap::new(),
            spread: None,
        }
    }

    /// The same, showing virtual slots (WLD, HA).
    pub fn spread_over(mut self, spread: Spread) -> Library {
        self.spread = Some(spread);
        self
    }

    /// State over the devices of the configuration (`ET_HSM_NETCLIENT_SERVERLIST`), with its
    /// connect and reply timeouts.
    pub fn from_config() -> Result<Library, ConfigError> {
        let config = Config::load()?;
        let servers = config.servers()?;
        let connect = config.seconds(CONNECT_TIMEOUT)?;
        let reply = config.seconds(REPLY_TIMEOUT)?;
        let mode = config.library_mode()?;
        let virtual_slots = config.wld_slots()?;
        let (recover_delay, recover_wait) = config.ha_timings()?;
        // Checked at every local connection (tessera-client's `peer`); a name that is no user
        // fails C_Initialize here, naming the item.
        config.server_user()?;
        // Secure messaging settings: trust store, SMPR per serial (checked here), limits, log.
        let allow_dumps = tessera_client::dumps::allowed(&config)?;
        let secure = Arc::new(tessera_client::SecureSettings::from_config(config)?);
        secure.report_configuration();
        // Before any PIN or key passes through: a crash must not write them to a core file.
        if allow_dumps {
            secure.log(&format!(
                "{}=YES: core dumps of this application stay on; a crash may write PINs and keys to disk (for debugging only)",
                tessera_client::dumps::ALLOW_CORE_DUMPS_ITEM
            ));
        } else if let Err(e) = tessera_client::dumps::disable() {
            secure.log(&format!(
                "cannot turn core dumps off ({e}); a crash may write PINs and keys to disk"
            ));
        }
        let devices = servers
            .into_iter()
            .enumerate()
            .map(|(position, address)| {
                Device::new(address, connect, reply)
                    .with_position(position)
                    .with_security(secure.clone())
            })
            .collect();
        let library = Library::new(devices);
        Ok(match mode {
            tessera_config::LibraryMode::Normal => library,
            mode => library.spread_over(Spread::new(
                mode,
                virtual_slots,
                recover_delay,
                recover_wait,
            )),
        })
    }

    fn target(&self, handle: u64) -> CkResult<Target> {
        let session = self
            .sessions
            .get(&handle)
            .ok_or(Rv::SessionHandleInvalid.code())?;
        let device = self
            .devices
            .get(session.id.device)
            .ok_or(Rv::GeneralError.code())?;
        Ok(Target {
            number: session.id.device,
            device: Arc::clone(device),
            remote: session.id.remote,
            generation: session.generation,
        })
    }

    /// Session `handle` and the changes of its device.
    fn session_and_changes(&mut self, handle: u64) -> CkResult<(&mut Session, &deferred::Changes)> {
        let session = self
            .sessions
            .get_mut(&handle)
            .ok_or(Rv::SessionHandleInvalid.code())?;
        let changes = (self.changes.get(session.id.device)).ok_or(Rv::GeneralError.code())?;
        Ok((session, changes))
    }

    fn session_mut(&mut self, handle: u64) -> CkResult<&mut Session> {
        self.sessions
            .get_mut(&handle)
            .ok_or(Rv::SessionHandleInvalid.code())
    }
}

fn lock() -> MutexGuard<'static, Option<Library>> {
    // A panic in another call (caught at the boundary) must not disable the library.
    LIBRARY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the state of this process.
fn with<T>(f: impl FnOnce(&mut Library) -> CkResult<T>) -> CkResult<T> {
    let mut guard = lock();
    match guard.as_mut() {
        Some(library) if library.owner.is_this_process() => f(library),
        Some(_) => {
            // A forked child: forget the parent's devices and sessions.
            *guard = None;
            Err(Rv::CryptokiNotInitialized.code())
        }
        None => Err(Rv::CryptokiNotInitialized.code()),
    }
}

/// `C_Initialize`: reads the configuration and sets up the devices (nothing is dialled yet).
/// A configuration error is printed on stderr, naming the item at fault.
pub fn initialize() -> CkResult {
    let mut guard = lock();
    if let Some(library) = guard.as_ref() {
        if library.owner.is_this_process() {
            return Err(Rv::CryptokiAlreadyInitialized.code());
        }
        *guard = None;
    }
    let library = Library::from_config().map_err(|error| {
        // The application may have no other channel to show this; stderr may be closed.
        let _ = writeln!(std::io::stderr(), "tessera-pkcs11: {error}");
        tracing::error!(%error, "C_Initialize: configuration error");
        Rv::FunctionFailed.code()
    })?;
    *guard = Some(library);
    Ok(())
}

/// `C_Finalize`: forgets all state and closes the connections (ending their sessions).
pub fn finalize() -> CkResult {
    let library = {
        let mut guard = lock();
        match guard.take() {
            Some(library) if library.owner.is_this_process() => library,
            // A forked child: the parent's state is dropped here.
            _ => return Err(Rv::CryptokiNotInitialized.code()),
        }
    };
    // Outside the lock: a call in flight on another thread holds its device until it ends.
    for device in &library.devices {
        device.disconnect();
    }
    Ok(())
}

/// Records which verification the session's verify operation is: `Some(signature)` for
/// `C_VerifySignatureInit`, `None` for `C_VerifyInit` (PKCS#11 3.2 §5.15).
pub fn set_verify_signature(handle: u64, signature: Option<Vec<u8>>) -> CkResult {
    with(|library| {
        library.session_mut(handle)?.signature = signature;
        Ok(())
    })
}

/// Checks that the session's verification is the kind the call belongs to (`signature`: a
/// `C_VerifySignature*` call) and, for a call that needs it (`read`), gives a copy of the
/// signature of `C_VerifySignatureInit` (it stays until the operation ends:
/// [`set_verify_signature`]). A call of the other kind is `CKR_OPERATION_NOT_INITIALIZED`.
pub fn verify_signature(handle: u64, signature: bool, read: bool) -> CkResult<Vec<u8>> {
    with(|library| {
        let session = library.session_mut(handle)?;
        match (&session.signature, signature, read) {
            (Some(_), false, _) | (None, true, _) => Err(Rv::OperationNotInitialized.code()),
            (Some(given), true, true) => crate::copied(given),
            _ => Ok(Vec::new()),
        }
    })
}

/// `CKR_CRYPTOKI_NOT_INITIALIZED` unless this process initialised the library.
pub fn ensure_initialized() -> CkResult {
    with(|_| Ok(()))
}

/// As [`ensure_initialized`], and `CKR_SESSION_HANDLE_INVALID` unless this process has the
/// session `handle`: checked before an entry point reads its other arguments.
pub fn ensure_session(handle: u64) -> CkResult {
    with(|library| library.session_mut(handle).map(|_| ()))
}

fn failure(error: ClientError) -> u64 {
    tracing::debug!(%error, "device call failed");
    error.rv()
}

/// Asks a device for its slot count.
fn probe(number: usize, device: &Device) -> DeviceSlots {
    match device.call(None, Call::DeviceInfo) {
        Ok((Reply::Device(info), _)) => {
            device.saw_serial(&info.serial);
            if info.slot_count > MAX_LOCAL_SLOTS {
                tracing::warn!(
                    device = number,
                    slots = info.slot_count,
                    "only the first {MAX_LOCAL_SLOTS} slots of the device are addressable"
                );
            }
            DeviceSlots::Up(info.slot_count.min(MAX_LOCAL_SLOTS))
        }
        Ok((reply, _)) => {
            tracing::warn!(
                device = number,
                reply = ?reply.shape(),
                "bad DeviceInfo reply"
            );
            DeviceSlots::Down
        }
        Err(error) => {
            tracing::debug!(device = number, %error, "device unreachable");
            DeviceSlots::Down
        }
    }
}

/// The slot IDs of devices in these states, in device order.
pub fn slot_ids(states: &[DeviceSlots], token_present: bool) -> Vec<u64> {
    let mut ids = Vec::new();
    for (device, state) in states.iter().enumerate() {
        match *state {
            DeviceSlots::Up(count) => {
                ids.extend(
                    (0..count)
                        .filter_map(|local| SlotId::new(device, local))
                        .map(SlotId::raw),
                );
            }
            DeviceSlots::Down | DeviceSlots::Unknown if !token_present => {
                ids.extend(SlotId::new(device, 0).map(SlotId::raw));
            }
            DeviceSlots::Down | DeviceSlots::Unknown => {}
        }
    }
    ids
}

/// `C_GetSlotList`: asks every device for its slot count (a device's slots all hold a token).
pub fn slot_list(token_present: bool) -> CkResult<Vec<u64>> {
    if with(|library| Ok(library.spread.is_some()))? {
        return spread::slot_list(token_present);
    }
    let devices = with(|library| Ok(library.devices.clone()))?;
    let states: Vec<DeviceSlots> = devices
        .iter()
        .enumerate()
        .map(|(number, device)| probe(number, device))
        .collect();
    with(|library| {
        if library.slots.len() == states.len() {
            library.slots.clone_from(&states);
        }
        Ok(())
    })?;
    Ok(slot_ids(&states, token_present))
}

fn route(raw: u64) -> CkResult<SlotRoute> {
    if with(|library| Ok(library.spread.is_some()))? {
        return Ok(match spread::member(raw)? {
            Some((number, device, local)) => SlotRoute::Token(number, device, local),
            None => SlotRoute::Absent,
        });
    }
    let slot = SlotId::from_raw(raw);
    let (device, state) = with(|library| {
        let device = library
            .devices
            .get(slot.device)
            .ok_or(Rv::SlotIdInvalid.code())?;
        let state = library
            .slots
            .get(slot.device)
            .copied()
            .unwrap_or(DeviceSlots::Unknown);
        Ok((Arc::clone(device), state))
    })?;
    let state = match state {
        DeviceSlots::Unknown => {
            // The application skipped C_GetSlotList; look now.
            let state = probe(slot.device, &device);
            with(|library| {
                if let Some(known) = library.slots.get_mut(slot.device) {
                    *known = state;
                }
                Ok(())
            })?;
            state
        }
        known => known,
    };
    match state {
        DeviceSlots::Up(count) if slot.local < count => {
            Ok(SlotRoute::Token(slot.device, device, slot.local))
        }
        DeviceSlots::Down if slot.local == 0 => Ok(SlotRoute::Absent),
        _ => Err(Rv::SlotIdInvalid.code()),
    }
}

/// The slot info of a device that is down.
pub fn unreachable_slot_info(device: usize) -> SlotInfo {
    SlotInfo {
        description: format!("Tessera device {device} unreachable"),
        manufacturer: "Tessera".into(),
        flags: ck::CKF_REMOVABLE_DEVICE as u64,
        hardware: Version { major: 0, minor: 0 },
        firmware: Version { major: 0, minor: 0 },
    }
}

/// `C_GetSlotInfo`.
pub fn slot_info(raw: u64) -> CkResult<SlotInfo> {
    match route(raw)? {
        SlotRoute::Token(number, device, local) => {
            match device.call(None, Call::SlotInfo { slot: local }) {
                Ok((Reply::Slot(info), _)) => Ok(info),
                Ok((reply, _)) => Err(unexpected(&reply)),
                Err(error) => Err(spread::member_failure(number, error)),
            }
        }
        SlotRoute::Absent => Ok(unreachable_slot_info(SlotId::from_raw(raw).device)),
    }
}

/// A call about a slot's token (`build` gets the device's own slot number).
pub fn slot_call(raw: u64, build: impl FnOnce(u64) -> Call) -> CkResult<Reply> {
    match route(raw)? {
        SlotRoute::Token(number, device, local) => device_call(number, &device, None, build(local))
            .map(|(reply, _)| reply)
            .map_err(|error| spread::member_failure(number, error)),
        SlotRoute::Absent => Err(Rv::TokenNotPresent.code()),
    }
}

/// `C_OpenSession`: the global handle of the new session.
pub fn open_session(raw: u64, flags: u64) -> CkResult<u64> {
    // In WLD and HA a member that fails is left out and the next one is tried.
    let mut tries = with(|library| Ok(library.devices.len()))?.max(1);
    let (number, device, local, reply, generation) = loop {
        let (number, device, local) = match route(raw)? {
            SlotRoute::Token(number, device, local) => (number, device, local),
            SlotRoute::Absent => return Err(Rv::TokenNotPresent.code()),
        };
        match device.call(None, Call::OpenSession { slot: local, flags }) {
            Ok((reply, generation)) => break (number, device, local, reply, generation),
            Err(error) => {
                let spreading = with(|library| Ok(library.spread.is_some()))?;
                tries -= 1;
                if spreading && spread::device_failed(&error) && tries > 0 {
                    spread::drop_device(number);
                    continue;
                }
                return Err(spread::member_failure(number, error));
            }
        }
    };
    let slot = SlotId {
        device: number,
        local,
    };
    let mut remote = into_handle(reply)?;
    // A session that HA moved keeps the handle it had on its first device; a new session
    // there (restarted, numbering from 1 again) may get the same number: it takes another.
    for _ in 0..8 {
        let taken = SessionId::new(number, remote).is_some_and(|id| {
            with(|library| Ok(library.sessions.contains_key(&id.raw()))).unwrap_or(false)
        });
        if !taken {
            break;
        }
        let again = device.call(Some(generation), Call::OpenSession { slot: local, flags });
        let _ = device.call(Some(generation), Call::CloseSession { session: remote });
        remote = match again {
            Ok((reply, _)) => into_handle(reply)?,
            Err(error) => return Err(spread::member_failure(number, error)),
        };
    }
    let Some(id) = SessionId::new(slot.device, remote) else {
        tracing::warn!(remote, "device issued a session handle outside 1..2^32");
        // Best effort: do not leave the session open on the device.
        let _ = device.call(Some(generation), Call::CloseSession { session: remote });
        return Err(Rv::DeviceError.code());
    };
    let handle = id.raw();
    with(|library| {
        let session = Session {
            id,
            slot,
            raw_slot: raw,
            flags,
            journal: ha::Journal::default(),
            generation,
            pending: Pending::default(),
            messages: Vec::new(),
            signature: None,
            deferred: deferred::Deferred::default(),
        };
        // A stale entry with the same handle belonged to a lost connection: replace it.
        library.sessions.insert(handle, session);
        Ok(handle)
    })
}

/// Whether `call` can change what the verdict of an init depends on, and on which key:
/// `Some(Some(key))` when it destroys or changes that object, `Some(None)` when it ends a login
/// or may destroy objects it does not name (a login only makes more keys usable).
fn changes_verdicts(call: &Call) -> Option<Option<u64>> {
    match call {
        Call::DestroyObject { object, .. } | Call::SetAttributes { object, .. } => {
            Some(Some(*object))
        }
        Call::Logout { .. }
        | Call::CloseSession { .. }
        | Call::CloseAllSessions { .. }
        | Call::InitToken { .. }
        | Call::Admin { .. } => Some(None),
        _ => None,
    }
}

/// A call to device `number` (`generation`: the connection it must go over, if any). One that
/// [`changes_verdicts`] is recorded once it is answered, whatever the answer.
fn device_call(
    number: usize,
    device: &Device,
    generation: Option<u64>,
    call: Call,
) -> Result<(Reply, u64), ClientError> {
    let changes = changes_verdicts(&call);
    if let Some(key) = changes {
        // An init held on a verdict reaches the device before the change, as it would have
        // without the verdict: the operation exists there when the key changes.
        deferred::send_held(number, key);
    }
    let result = device.call(generation, call);
    if let Some(key) = changes {
        let _ = with(|library| {
            if let Some(changes) = library.changes.get_mut(number) {
                changes.record(key);
            }
            Ok(())
        });
    }
    result
}

/// A call on a session (`build` gets the device's own session handle). A session whose
/// connection is gone, or that the device no longer knows, leaves the table.
pub fn session_call(handle: u64, build: impl FnOnce(u64) -> Call) -> CkResult<Reply> {
    let (target, high_availability) =
        with(|library| Ok((library.target(handle)?, library.high_availability())))?;
    let call = build(target.remote);
    if high_availability {
        return ha::call(handle, target, call);
    }
    match device_call(target.number, &target.device, Some(target.generation), call) {
        Ok((reply, _)) => Ok(reply),
        Err(error) => {
            let rv = spread::member_failure(target.number, error);
            if rv == Rv::SessionHandleInvalid.code() || rv == Rv::SessionClosed.code() {
                let _ = with(|library| Ok(library.sessions.remove(&handle)));
            }
            Err(rv)
        }
    }
}

/// `C_Login` (and `C_LoginUser`) on session `handle`. On a virtual slot, a user or SO login
/// reaches every member (see `spread`); a context-specific login stays with the session.
pub fn login(handle: u64, user_type: u64, pin: tessera_core::SecretBytes) -> CkResult {
    let spread_to = with(|library| {
        Ok(library.spread.as_ref().and_then(|_| {
            library
                .sessions
                .get(&handle)
                .map(|s| (s.raw_slot, s.id.device))
        }))
    })?;
    let copy = spread_to.map(|_| pin.duplicate());
    expect_done(session_call(handle, |session| Call::Login {
        session,
        user_type,
        pin,
    })?)?;
    if let (Some((raw, on)), Some(pin)) = (spread_to, copy) {
        if user_type != ck::CKU_CONTEXT_SPECIFIC as u64 {
            spread::spread_login(raw, on, user_type, &pin)?;
        }
    }
    Ok(())
}

/// The virtual slot of session `handle` (WLD, HA); `None` in `NORMAL`.
fn virtual_slot_of(handle: u64) -> CkResult<Option<u64>> {
    with(|library| {
        Ok(library
            .spread
            .as_ref()
            .and_then(|_| library.sessions.get(&handle).map(|s| s.raw_slot)))
    })
}

/// `C_Logout` on session `handle`; on a virtual slot, on every member.
pub fn logout(handle: u64) -> CkResult {
    let raw = virtual_slot_of(handle)?;
    let result = session_call(handle, |session| Call::Logout { session });
    if let Some(raw) = raw {
        spread::spread_logout(raw);
    }
    expect_done(result?)
}

/// `C_CloseSession`: the handle is gone afterwards, whatever the device says.
pub fn close_session(handle: u64) -> CkResult {
    let result = session_call(handle, |session| Call::CloseSession { session });
    let last_of_virtual_slot = with(|library| {
        let raw = library.sessions.remove(&handle).map(|s| s.raw_slot);
        Ok(match (&library.spread, raw) {
            (Some(_), Some(raw)) if !library.sessions.values().any(|s| s.raw_slot == raw) => {
                Some(raw)
            }
            _ => None,
        })
    })?;
    // The application's last session of a virtual slot: its login ends on every member, as
    // closing a token's last session ends it on one device.
    if let Some(raw) = last_of_virtual_slot {
        spread::spread_logout(raw);
    }
    expect_done(result?)
}

/// `C_CloseAllSessions`: this process's sessions on the slot.
pub fn close_all_sessions(raw: u64) -> CkResult {
    if with(|library| Ok(library.spread.is_some()))? {
        // A virtual slot's sessions are on several members: each is closed, then the
        // keepers (which ends the login, as closing a token's last session does).
        let handles: Vec<u64> = with(|library| {
            Ok(library
                .sessions
                .iter()
                .filter(|(_, s)| s.raw_slot == raw)
                .map(|(h, _)| *h)
                .collect())
        })?;
        for handle in handles {
            let _ = close_session(handle);
        }
        spread::spread_logout(raw);
        return Ok(());
    }
    let slot = SlotId::from_raw(raw);
    let route = route(raw)?;
    with(|library| {
        library.sessions.retain(|_, session| session.slot != slot);
        Ok(())
    })?;
    match route {
        SlotRoute::Token(_, device, local) => {
            let call = Call::CloseAllSessions { slot: local };
            match device_call(slot.device, &device, None, call) {
                Ok((reply, _)) => expect_done(reply),
                Err(error) => Err(failure(error)),
            }
        }
        SlotRoute::Absent => Err(Rv::TokenNotPresent.code()),
    }
}

/// `C_GetSessionInfo`, with the slot as a global slot ID.
pub fn session_info(handle: u64) -> CkResult<SessionInfo> {
    match session_call(handle, |session| Call::SessionInfo { session })? {
        Reply::Session(mut info) => {
            info.slot = match virtual_slot_of(handle)? {
                Some(raw) => raw,
                None => {
                    let device = SessionId::from_raw(handle).device;
                    SlotId::new(device, info.slot)
                        .ok_or(Rv::DeviceError.code())?
                        .raw()
                }
            };
            Ok(info)
        }
        reply => Err(unexpected(&reply)),
    }
}

/// A reply of the wrong shape is the device's fault: `CKR_DEVICE_ERROR`.
pub fn unexpected(reply: &Reply) -> u64 {
    tracing::warn!(
        reply = ?reply.shape(),
        "the device answered with an unexpected reply"
    );
    Rv::DeviceError.code()
}

/// `Ok` for `Reply::Done`.
pub fn expect_done(reply: Reply) -> CkResult {
    match reply {
        Reply::Done => Ok(()),
        reply => Err(unexpected(&reply)),
    }
}

/// Only `Reply::Verified` means the signature is valid: any other shape is an error, never a
/// pass.
pub fn verified(reply: Reply) -> CkResult {
    match reply {
        Reply::Verified => Ok(()),
        reply => Err(unexpected(&reply)),
    }
}

/// The handle of `Reply::Handle`.
pub fn into_handle(reply: Reply) -> CkResult<u64> {
    match reply {
        Reply::Handle(handle) => Ok(handle),
        reply => Err(unexpected(&reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::SecretBytes;

    #[test]
    fn slot_list_shows_down_devices_as_one_empty_slot() {
        let states = [
            DeviceSlots::Up(2),
            DeviceSlots::Down,
            DeviceSlots::Up(0),
            DeviceSlots::Up(1),
        ];
        assert_eq!(slot_ids(&states, false), vec![0, 1, 0x1_0000, 0x3_0000]);
        assert_eq!(slot_ids(&states, true), vec![0, 1, 0x3_0000]);
        assert!(slot_ids(&[], false).is_empty());
    }

    #[test]
    fn unreachable_slots_have_no_token() {
        let info = unreachable_slot_info(4);
        assert_eq!(info.description, "Tessera device 4 unreachable");
        assert_eq!(info.flags & ck::CKF_TOKEN_PRESENT as u64, 0);
        assert_ne!(info.flags & ck::CKF_REMOVABLE_DEVICE as u64, 0);
        assert_eq!(info.flags & ck::CKF_HW_SLOT as u64, 0);
    }

    #[test]
    fn reply_shapes_are_named_without_their_contents() {
        let secret = Reply::Secret(SecretBytes::from_slice(b"plaintext"));
        assert_eq!(format!("{:?}", secret.shape()), "Secret");
        assert_eq!(expect_done(Reply::Done), Ok(()));
        assert_eq!(expect_done(secret), Err(Rv::DeviceError.code()));
        assert_eq!(into_handle(Reply::Handle(5)), Ok(5));
        assert_eq!(verified(Reply::Verified), Ok(()));
        assert_eq!(verified(Reply::Done), Err(Rv::DeviceError.code()));
        assert_eq!(
            output(Reply::Bytes(vec![1])),
            Ok(SecretBytes::from_slice(&[1]))
        );
        assert_eq!(output(Reply::Done), Ok(SecretBytes::default()));
        assert_eq!(output(Reply::Verified), Err(Rv::DeviceError.code()));
    }
}
