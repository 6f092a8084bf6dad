//! A blocking client of one Tessera device, with the client end of secure messaging.
//!
//! The PKCS#11 module runs inside the host application, so this crate uses plain blocking
//! sockets (no async runtime), connects on demand, bounds every connect and reply with a
//! timeout, and counts *generations*: sessions live on one connection and, with secure
//! messaging, on one channel; when either is lost or replaced, every session of the old one is
//! gone and the next call starts afresh.
//!
//! A channel is made on demand, when the first call that needs one is sent: when the device's
//! flags require it (its device info says so, in the clear: that only ever makes the client
//! stricter; should a call still go in the clear, the device refuses it with
//! `CKR_BAD_PROTECTION` and the call is retried inside a new channel) or the client's SMPR for
//! the device's serial asks for it (docs/reference.md, "SMPR letters"). Every failure to reach or use the device goes
//! to the library's log with what to do (`Device::unreachable`, `Device::refuse`).
#![forbid(unsafe_code)]

pub mod dumps;
pub mod known;
mod peer;
mod report;
mod secure;
mod stream;

pub use secure::{LogTarget, SecureSettings};

/// A new request id for [`tessera_wire::Call::Once`] (16 random bytes); `None` if the system
/// random generator fails.
pub fn request_id() -> Option<[u8; 16]> {
    use aws_lc_rs::rand::SecureRandom;
    let mut id = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut id).ok()?;
    Some(id)
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tessera_config::ServerAddress;
use tessera_core::{Rv, SecretBytes};
use tessera_wire::{Call, Inner, Message, Reply, Response};

use secure::{ChannelState, Opened};
use stream::{Failure, Stream};

/// Why a call did not produce a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The device did not accept a connection.
    #[error("device {address} is unreachable: {reason}")]
    Unreachable {
        /// The server address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The connection failed or timed out during the call.
    #[error("device {address}: connection lost: {reason}")]
    ConnectionLost {
        /// The server address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The device answered something that is not a valid response to this request.
    #[error("device {address} sent a bad reply: {reason}")]
    BadReply {
        /// The server address.
        address: String,
        /// What was wrong.
        reason: String,
    },
    /// The session belongs to an earlier connection or channel that is gone.
    #[error("the session was opened on a connection or channel that has since ended")]
    StaleSession,
    /// The device executed the call (or the channel refused it) with this `CK_RV`.
    #[error("device returned 0x{0:08X}")]
    Returned(u64),
}

impl ClientError {
    /// The `CK_RV` an application should see.
    pub fn rv(&self) -> u64 {
        match self {
            ClientError::Unreachable { .. } => Rv::DeviceRemoved.code(),
            ClientError::ConnectionLost { .. } => Rv::DeviceError.code(),
            ClientError::BadReply { .. } => Rv::DeviceError.code(),
            ClientError::StaleSession => Rv::SessionClosed.code(),
            ClientError::Returned(code) => *code,
        }
    }
}

pub(crate) struct State {
    pub(crate) stream: Option<Stream>,
    pub(crate) channel: Option<Mutex<ChannelState>>,
    pub(crate) generations: u64,
    pub(crate) generation: u64,
    next_id: AtomicU64,
    /// The device refused a call in the clear: it requires secure messaging.
    pub(crate) requires_channel: bool,
    /// The device's serial number: as claimed in the clear until a handshake proves it.
    pub(crate) serial: Option<String>,
    /// The device said in the clear, on this connection, that its flags require a channel:
    /// unauthenticated, so it may only make this client stricter (a channel at once rather
    /// than a call in the clear that the device would refuse), never looser.
    pub(crate) claimed_required: bool,
    /// `serial` was proven by a handshake (a serial only claimed in the clear is forgotten
    /// with its connection: one forged answer must not stick).
    pub(crate) serial_proven: bool,
    /// This connection may carry session calls in the clear (decided once per connection by
    /// `Device::wants_channel`).
    pub(crate) clear_ok: bool,
    /// What the known-devices files said of this entry earlier under the same exclusive hold
    /// of the state (forgotten whenever it is taken: [`Device::exclusive`]): that hold's
    /// handshake takes it instead of reading the files a second time a few microseconds later.
    pub(crate) known_read: Option<Option<(known::KnownDevice, known::Level)>>,
    /// A pipelined call found the connection or channel failed: the next call cleans up.
    broken: AtomicBool,
}

impl State {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The channel, for a caller that holds the state exclusively.
    pub(crate) fn channel_mut(&mut self) -> Option<&mut ChannelState> {
        self.channel
            .as_mut()
            .map(|c| c.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn channel_lock(&self) -> Option<MutexGuard<'_, ChannelState>> {
        self.channel
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Replies read by whichever waiting thread read them, for the thread that waits for each.
#[derive(Default)]
struct Inbox {
    /// Replies by request id (protected ones already opened).
    replies: HashMap<u64, Result<Result<Reply, u64>, ClientError>>,
    /// Requests sent and not answered yet: whether each went through the channel.
    waiting: HashMap<u64, bool>,
    /// A thread is reading.
    reading: bool,
    /// How to wake each waiting thread, by request id.
    wakers: HashMap<u64, Arc<Condvar>>,
    /// The connection failed: every waiter gets this.
    failed: Option<ClientError>,
}

impl Inbox {
    /// The connection failed: every waiter gets the first error, and is woken to see it.
    fn fail(&mut self, error: ClientError) {
        if self.failed.is_none() {
            self.failed = Some(error);
        }
        for owner in self.wakers.values() {
            owner.notify_one();
        }
    }
}

/// One device of the server list.
///
/// Calls are pipelined: many threads may have a request in flight on the one connection (and
/// channel) at once; each sends its request and waits for the reply with its id, which any of
/// the waiting threads may read from the socket (one at a time) and hand over. No thread is
/// started for it. Making a connection or a channel, renewing the channel's keys and closing
/// them wait until no call is in flight.
pub struct Device {
    address: ServerAddress,
    /// Its position in the server list (`ctconf -aN`), for the commands messages give.
    position: Option<usize>,
    /// Why the last channel to it was refused, with the fix (see [`Device::take_refusal`]).
    refusal: Mutex<Option<String>>,
    /// The last reason it could not be reached that went to the log (said once per episode).
    unreachable: Mutex<Option<String>>,
    connect_timeout: Duration,
    reply_timeout: Duration,
    secure: Option<std::sync::Arc<SecureSettings>>,
    state: RwLock<State>,
    inbox: Mutex<Inbox>,
}

/// How a call can go without waiting for the connection to itself.
enum Route {
    /// In the clear.
    Clear,
    /// Through the channel.
    Channel,
}

impl Device {
    /// A device at `address`; nothing is dialled until the first call. Without
    /// [`Device::with_security`] it never opens a channel.
    pub fn new(
        address: ServerAddress,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Device {
        Device {
            address,
            position: None,
            refusal: Mutex::new(None),
            unreachable: Mutex::new(None),
            connect_timeout,
            reply_timeout,
            secure: None,
            state: RwLock::new(State {
                stream: None,
                channel: None,
                generations: 0,
                generation: 0,
                next_id: AtomicU64::new(1),
                requires_channel: false,
                claimed_required: false,
                serial: None,
                serial_proven: false,
                clear_ok: false,
                known_read: None,
                broken: AtomicBool::new(false),
            }),
            inbox: Mutex::new(Inbox::default()),
        }
    }

    /// Enables secure messaging with these settings (trust store, SMPR, limits, log).
    pub fn with_security(mut self, settings: std::sync::Arc<SecureSettings>) -> Device {
        self.secure = Some(settings);
        self
    }

    /// Numbers the device by its position in the server list (`ctconf -aN`): the messages
    /// of the library's log then give commands that name it.
    pub fn with_position(mut self, position: usize) -> Device {
        self.position = Some(position);
        self
    }

    /// The server address.
    pub fn address(&self) -> &ServerAddress {
        &self.address
    }

    /// Why the last secure channel to this device was refused, and what fixes it (the line
    /// the library's log got), once: a tool shows it rather than the bare `CK_RV`.
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Makes a secure channel to the device now, unless the connection has one: what a tool
    /// checks before it sets flags that will require one (a refusal then is the one every
    /// later call would meet; [`Device::take_refusal`] says why).
    pub fn open_channel(&self) -> Result<(), ClientError> {
        let mut state = self.exclusive();
        let state = &mut *state;
        self.forget_if_broken(state);
        self.connected(state)?;
        if state.channel.is_none() {
            self.handshake(state)?;
        }
        self.confirm(state)
    }

    /// The state, for one caller alone. What an earlier holder read of the known-devices
    /// files is forgotten here, on every way in: only the handshake of the same hold may
    /// use it (a record read by one call must not stand in for the files at a later one).
    fn exclusive(&self) -> RwLockWriteGuard<'_, State> {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.known_read = None;
        state
    }

    fn shared(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn failure(&self, failure: Failure) -> ClientError {
        match failure {
            Failure::Io(reason) => {
                // The device's notice that its flags now require a channel is no failure to
                // reach it (`drop_stream` says what it means).
                if reason != stream::NOTICE {
                    self.unreachable(&format!("connection lost: {reason}"));
                }
                ClientError::ConnectionLost {
                    address: self.address.to_string(),
                    reason,
                }
            }
            Failure::Bad(reason) => {
                self.unreachable(&format!("bad reply: {reason}"));
                ClientError::BadReply {
                    address: self.address.to_string(),
                    reason,
                }
            }
        }
    }

    /// As [`Device::failure`]; on a connection with a channel, a frame that is no valid
    /// response is a forged reply (`CKR_BAD_REPLY_SIGNATURE`): no clear frame answers a call
    /// in a channel.
    pub(crate) fn failure_in_channel(&self, in_channel: bool, failure: Failure) -> ClientError {
        match failure {
            Failure::Bad(reason) if in_channel => {
                self.report(
                    "unknown",
                    &format!("a malformed frame arrived on a connection with a secure channel ({reason}): refused as forged, channel closed"),
                );
                ClientError::Returned(Rv::BadReplySignature.code())
            }
            other => self.failure(other),
        }
    }

    /// A connection a pipelined call found failed is closed (its sessions and channel end).
    fn forget_if_broken(&self, state: &mut State) {
        if state.broken.swap(false, Ordering::Relaxed) {
            self.kill(state, true);
        }
    }

    /// Makes sure there is a connection; a new one starts a new generation.
    pub(crate) fn connected(&self, state: &mut State) -> Result<(), ClientError> {
        self.forget_if_broken(state);
        if state.stream.is_none() {
            let stream = Stream::connect(
                &self.address,
                self.connect_timeout,
                self.reply_timeout,
                self.secure.as_deref(),
            )
            .map_err(|failure| {
                if !failure.logged {
                    self.unreachable(&format!("cannot connect: {}", failure.reason));
                }
                ClientError::Unreachable {
                    address: self.address.to_string(),
                    reason: failure.reason,
                }
            })?;
            self.reachable();
            state.stream = Some(stream);
            state.channel = None;
            state.clear_ok = false;
            state.claimed_required = false;
            if !state.serial_proven {
                state.serial = None;
            }
            *self.inbox() = Inbox::default();
            state.generations += 1;
            state.generation = state.generations;
        }
        Ok(())
    }

    /// One request and its reply in the clear, with nothing else in flight; a broken
    /// connection is forgotten.
    pub(crate) fn exchange(
        &self,
        state: &mut State,
        message: Message,
    ) -> Result<Response, ClientError> {
        self.exchange_meanwhile(state, message, || ())
            .map(|((), response)| response)
    }

    /// As [`Device::exchange`], running `meanwhile` once a handshake's opening has left and
    /// before its answer is read: work of this end that does not need the answer (reading the
    /// trust store) is done while the device signs, not after. For any other message it runs
    /// after the reply. It does not run when the request could not be sent, nor, for another
    /// message, when no reply came.
    pub(crate) fn exchange_meanwhile<T>(
        &self,
        state: &mut State,
        message: Message,
        meanwhile: impl FnOnce() -> T,
    ) -> Result<(T, Response), ClientError> {
        self.connected(state)?;
        let id = state.next_id();
        let Some(stream) = state.stream.as_ref() else {
            return Err(ClientError::StaleSession);
        };
        let handshake = matches!(message, Message::Handshake(_));
        let frame = Stream::clear_frame(id, message);
        let answer = match handshake {
            true => stream.exchange_handshake(id, frame, meanwhile),
            false => stream
                .exchange(id, frame)
                .map(|answer| (meanwhile(), answer)),
        };
        match answer.map(|(done, answer)| (done, answer.into_clear())) {
            Ok((done, Ok(response))) => Ok((done, response)),
            Ok((_, Err(code))) => Err(ClientError::Returned(code)),
            Err(failure) => {
                self.drop_stream(state);
                state.channel = None;
                Err(self.failure(failure))
            }
        }
    }

    /// One call and its reply in the clear (see [`Device::exchange`]): a transport message in
    /// answer to a call is a bad reply.
    pub(crate) fn exchange_call(
        &self,
        state: &mut State,
        call: Call,
    ) -> Result<Reply, ClientError> {
        match self.exchange(state, Message::Call(call))? {
            Response::Reply(reply) => Ok(reply),
            _ => Err(ClientError::BadReply {
                address: self.address.to_string(),
                reason: "a secure-messaging message in answer to a call in the clear".into(),
            }),
        }
    }

    /// Whether a call can be pipelined on the connection as it is, and how.
    fn route(&self, state: &State, public: bool) -> Option<Route> {
        if state.stream.is_none() || state.broken.load(Ordering::Relaxed) {
            return None;
        }
        if public {
            return Some(Route::Clear);
        }
        if let Some(channel) = state.channel_lock() {
            let settings = self.secure.as_deref()?;
            return (!channel.needs_care(settings)).then_some(Route::Channel);
        }
        if self.secure.is_none() {
            return Some(Route::Clear);
        }
        (state.clear_ok && !state.requires_channel).then_some(Route::Clear)
    }

    /// Tells the configuration check which serial the device at this entry gave (see
    /// [`SecureSettings::saw_serial`]).
    pub fn saw_serial(&self, serial: &str) {
        if let Some(settings) = self.secure.as_deref() {
            settings.saw_serial(&self.address.entry(), serial);
        }
    }

    /// Sends `request` and waits for its reply, inside a channel when one is needed.
    ///
    /// With `session_generation` set, the call is refused with [`ClientError::StaleSession`]
    /// unless the current connection and channel are the session's own. The reply comes with
    /// the current generation.
    /// A reply of a shape the call never answers with (`tessera_wire::Traits::reply`) is the
    /// device's fault: [`ClientError::BadReply`], here, once for every call.
    pub fn call(
        &self,
        session_generation: Option<u64>,
        request: Call,
    ) -> Result<(Reply, u64), ClientError> {
        let expected = request.traits().reply;
        let (reply, generation) = self.call_unchecked(session_generation, request)?;
        let shape = reply.shape();
        if !expected.contains(&shape) {
            let reason = format!("a {shape:?} reply to a call that answers {expected:?}");
            self.report(
                "?",
                &format!("the device answered with a bad reply: {reason}"),
            );
            return Err(ClientError::BadReply {
                address: self.address.to_string(),
                reason,
            });
        }
        Ok((reply, generation))
    }

    fn call_unchecked(
        &self,
        session_generation: Option<u64>,
        request: Call,
    ) -> Result<(Reply, u64), ClientError> {
        // Too large for a frame: refused here, so that the connection (and the application's
        // other sessions on it) stays.
        if let Some(rv) = request.oversized() {
            self.report(
                "?",
                &format!(
                    "a call was refused without sending it ({}): its request is larger than the protocol's frame limit of {} bytes",
                    rv.name(),
                    tessera_wire::MAX_FRAME_LEN
                ),
            );
            return Err(ClientError::Returned(rv.code()));
        }
        let public = request.is_public();
        {
            let state = self.shared();
            if self.device_left(&state, &request, session_generation.is_none()) {
                // Not sent: the call goes on a new connection (`call_alone` cleans up and reads
                // the device's notice), unless its session was on this one.
                state.broken.store(true, Ordering::Relaxed);
                if session_generation.is_some() {
                    return Err(ClientError::StaleSession);
                }
            }
            if let Some(route) = self.route(&state, public) {
                if session_generation.is_some_and(|g| g != state.generation) {
                    return Err(ClientError::StaleSession);
                }
                let clear = matches!(route, Route::Clear);
                let retry = self.retry_copy(clear, session_generation, &request);
                let generation = state.generation;
                match self.pipelined(&state, route, request) {
                    Err(ClientError::Returned(code))
                        if code == Rv::BadProtection.code() && self.secure.is_some() =>
                    {
                        drop(state);
                        return self.retry_in_channel(&mut self.exclusive(), code, retry);
                    }
                    outcome => return outcome.map(|reply| (reply, generation)),
                }
            }
        }
        self.call_alone(session_generation, request)
    }

    /// A call that needs the connection to itself first (to connect, to make or renew a
    /// channel).
    fn call_alone(
        &self,
        session_generation: Option<u64>,
        request: Call,
    ) -> Result<(Reply, u64), ClientError> {
        let mut state = self.exclusive();
        let state = &mut *state;
        self.forget_if_broken(state);
        if session_generation.is_some() && state.stream.is_none() {
            return Err(ClientError::StaleSession);
        }
        let public = request.is_public();
        if self.device_left(state, &request, session_generation.is_none()) {
            self.kill(state, true);
            if session_generation.is_some() {
                return Err(ClientError::StaleSession);
            }
        }
        if !public && self.wants_channel(state)? {
            return self.call_protected(state, session_generation, request);
        }
        if session_generation.is_some_and(|g| g != state.generation) {
            return Err(ClientError::StaleSession);
        }
        let retry = self.retry_copy(true, session_generation, &request);
        match self.exchange_call(state, request) {
            Ok(reply) => Ok((reply, state.generation)),
            Err(ClientError::Returned(code))
                if code == Rv::BadProtection.code() && self.secure.is_some() =>
            {
                self.retry_in_channel(state, code, retry)
            }
            Err(e) => Err(e),
        }
    }

    /// A copy of a call sent in the `clear` that may have to be made again inside a channel:
    /// one that opens something (no session yet), when this client can make channels.
    fn retry_copy(
        &self,
        clear: bool,
        session_generation: Option<u64>,
        request: &Call,
    ) -> Option<SecretBytes> {
        let may_retry =
            clear && !request.is_public() && session_generation.is_none() && self.secure.is_some();
        may_retry.then(|| retry_copy_of(request)).flatten()
    }

    /// The device refused a call in the clear (`CKR_BAD_PROTECTION`): it requires secure
    /// messaging, so from now on calls use a channel. A call that opens something new (its
    /// `retry` copy) is made again inside one; a call on an old session cannot be (its session
    /// is bound to the clear connection) and gets the refusal.
    fn retry_in_channel(
        &self,
        state: &mut State,
        code: u64,
        retry: Option<SecretBytes>,
    ) -> Result<(Reply, u64), ClientError> {
        // A clear refusal may only raise protection, never lower it.
        state.requires_channel = true;
        state.clear_ok = false;
        match retry.and_then(|bytes| postcard::from_bytes::<Call>(bytes.expose()).ok()) {
            Some(request) => self.call_protected(state, None, request),
            None => Err(ClientError::Returned(code)),
        }
    }

    /// Whether the device closed this connection (or sent its closing notice, which is then
    /// read) while nothing was in flight: looked at, with one `recv(MSG_PEEK | MSG_DONTWAIT)`,
    /// only before a call that must not go on it unaware — a PIN or key value about to leave in
    /// the clear (the device may now require a channel: `Stream::closed_by_device`), or a call
    /// without a session after a quiet spell of [`stream::QUIET`] (the device closes idle
    /// connections without sessions).
    fn device_left(&self, state: &State, request: &Call, sessionless: bool) -> bool {
        let Some(stream) = state.stream.as_ref() else {
            return false;
        };
        let secret_in_clear =
            request.carries_secret() && state.channel.is_none() && self.secure.is_some();
        let quiet = sessionless && stream.quiet_for() >= stream::QUIET;
        (secret_in_clear || quiet) && self.inbox().waiting.is_empty() && stream.closed_by_device()
    }

    /// Sends a request on the shared connection and waits for its reply.
    fn pipelined(&self, state: &State, route: Route, request: Call) -> Result<Reply, ClientError> {
        let Some(stream) = state.stream.as_ref() else {
            return Err(ClientError::StaleSession);
        };
        let id = state.next_id();
        let sent = match route {
            Route::Clear => {
                self.inbox().waiting.insert(id, false);
                stream.send(id, Message::Call(request))
            }
            Route::Channel => {
                // Sealed and queued under the channel's lock: the device opens records in the
                // order of their sequence numbers. Written after it is released (by this
                // thread, or by one writing already), so that others seal meanwhile.
                let Some(mut channel) = state.channel_lock() else {
                    return Err(ClientError::StaleSession);
                };
                let mut inner = Inner::Call(request);
                let frame = channel.seal(id, &mut inner)?;
                inner.recycle();
                self.inbox().waiting.insert(id, true);
                stream.queue(frame);
                drop(channel);
                stream.flush()
            }
        };
        if let Err(failure) = sent {
            let error = self.failure(failure);
            self.fail(state, error.clone());
            self.inbox().waiting.remove(&id);
            return Err(error);
        }
        self.wait(state, id)?.map_err(ClientError::Returned)
    }

    /// Marks the connection failed for every waiter; the next call cleans up.
    fn fail(&self, state: &State, error: ClientError) {
        state.broken.store(true, Ordering::Relaxed);
        self.inbox().fail(error);
    }

    /// Waits for the reply to request `id`. When no thread is reading, this one reads — every
    /// reply, handing each to the thread that waits for it (waking that thread only) — until
    /// its own comes, then hands the reading over to another waiting thread.
    fn wait(&self, state: &State, id: u64) -> Result<Result<Reply, u64>, ClientError> {
        let waker = Arc::new(Condvar::new());
        let mut inbox = self.inbox();
        inbox.wakers.insert(id, waker.clone());
        let result = 'waiting: loop {
            if let Some(reply) = inbox.replies.remove(&id) {
                break reply;
            }
            if let Some(error) = inbox.failed.clone() {
                inbox.waiting.remove(&id);
                break Err(error);
            }
            if inbox.reading {
                inbox = waker
                    .wait(inbox)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            inbox.reading = true;
            // The owner of the reply read last, woken once the inbox is unlocked (so that it
            // does not wake only to wait for the lock).
            let mut wake: Option<Arc<Condvar>> = None;
            loop {
                let alone = inbox.waiting.len() <= 1;
                drop(inbox);
                if let Some(owner) = wake.take() {
                    owner.notify_one();
                }
                let read = self.read_reply(state, alone);
                inbox = self.inbox();
                match read {
                    Ok((for_id, reply)) if for_id == id => {
                        inbox.reading = false;
                        break 'waiting reply;
                    }
                    Ok((for_id, reply)) => {
                        inbox.replies.insert(for_id, reply);
                        wake = inbox.wakers.get(&for_id).cloned();
                    }
                    Err(error) => {
                        state.broken.store(true, Ordering::Relaxed);
                        inbox.reading = false;
                        inbox.fail(error);
                        continue 'waiting;
                    }
                }
            }
        };
        inbox.wakers.remove(&id);
        // Someone else may still be waiting for a reply: it reads now.
        let next = if inbox.reading {
            None
        } else {
            inbox.wakers.values().next().cloned()
        };
        drop(inbox);
        if let Some(next) = next {
            next.notify_one();
        }
        result
    }

    /// Reads one reply from the shared connection, opening it if it came through the channel.
    /// `Err` is a failure of the connection or channel, for every waiter.
    #[allow(clippy::type_complexity)]
    fn read_reply(
        &self,
        state: &State,
        spin: bool,
    ) -> Result<(u64, Result<Result<Reply, u64>, ClientError>), ClientError> {
        let Some(stream) = state.stream.as_ref() else {
            return Err(ClientError::StaleSession);
        };
        let (id, answer) = stream
            .receive(spin)
            .map_err(|f| self.failure_in_channel(state.channel.is_some(), f))?;
        let Some(protected) = self.inbox().waiting.remove(&id) else {
            answer.discard();
            return Err(ClientError::BadReply {
                address: self.address.to_string(),
                reason: format!("a reply arrived for request {id}, which is not waiting"),
            });
        };
        if !protected {
            return Ok((id, Ok(answer.into_clear_reply())));
        }
        let Some(mut channel) = state.channel_lock() else {
            answer.discard();
            return Err(ClientError::StaleSession);
        };
        // For the log lines only.
        let serial = state.serial.as_deref().unwrap_or_default();
        match channel.open_reply(id, answer, self, serial) {
            Ok(Opened::Answer(result)) => Ok((id, Ok(result))),
            // The device ended the channel and said why, in its last record: this call gets
            // the reason, later ones that the channel is gone.
            Ok(Opened::Ended(code)) => {
                state.broken.store(true, Ordering::Relaxed);
                Ok((id, Err(ClientError::Returned(code))))
            }
            Err(ClientError::StaleSession) => {
                state.broken.store(true, Ordering::Relaxed);
                Ok((id, Err(ClientError::StaleSession)))
            }
            Err(error) => Err(error),
        }
    }

    /// Closes the connection (all its sessions and its channel end on the device).
    pub fn disconnect(&self) {
        let mut state = self.exclusive();
        if let Some(channel) = state.channel_mut() {
            channel.close();
        }
        state.channel = None;
        state.stream = None;
        state.broken.store(false, Ordering::Relaxed);
        *self.inbox() = Inbox::default();
    }
}

/// The encoding of `request` kept to send it again: such a call may carry a PIN (`C_InitToken`'s
/// SO PIN, an administration PIN), so it is written once into a secret buffer of its exact size
/// (locked memory, wiped when dropped), never into a growing `Vec` that would leave copies.
fn retry_copy_of(request: &Call) -> Option<SecretBytes> {
    let size = postcard::experimental::serialized_size(request).ok()?;
    let mut copy = SecretBytes::new(vec![0; size]);
    postcard::to_slice(request, copy.expose_mut()).ok()?;
    Some(copy)
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    /// The retry copy of `C_InitToken` holds the SO PIN in a type that wipes it, and decodes
    /// to the same call.
    #[test]
    fn the_retry_copy_of_an_so_pin_is_a_wiping_secret_that_decodes_to_the_call() {
        fn wiped_when_dropped<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let request = Call::InitToken {
            slot: 3,
            so_pin: SecretBytes::from_slice(b"SO-PIN-retried"),
            label: vec![b' '; 32],
        };
        let copy = retry_copy_of(&request).expect("a retry copy");
        wiped_when_dropped(&copy);
        assert_eq!(copy.len(), postcard::to_stdvec(&request).unwrap().len());
        let Ok(Call::InitToken { slot, so_pin, .. }) = postcard::from_bytes(copy.expose()) else {
            panic!("the retry copy does not decode to the call");
        };
        assert_eq!(slot, 3);
        assert_eq!(so_pin.expose(), b"SO-PIN-retried");
    }

    /// What one hold of the state read of the known-devices files never reaches a later hold's
    /// handshake: a record made meanwhile (an operator pinning the entry) must be read, or a
    /// retry in a channel after a clear call would take the entry for an unrecorded one.
    #[test]
    fn a_known_devices_read_does_not_outlive_its_hold_of_the_state() {
        let device = Device::new(
            ServerAddress::parse("127.0.0.1:1").expect("an address"),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        device.exclusive().known_read = Some(None);
        assert!(
            device.exclusive().known_read.is_none(),
            "a later hold sees an earlier hold's read of the known-devices files"
        );
    }
}
