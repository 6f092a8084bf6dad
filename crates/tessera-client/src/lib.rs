//! A blocking client of one Tessera device, with the client end of secure messaging.
//!
//! The PKCS#11 module runs inside the host application, so this crate uses plain blocking
//! sockets (no async runtime), connects on demand, bounds every connect and reply with a
//! timeout, and counts *generations*: sessions live on one connection and, with secure
//! messaging, on one channel; when either is lost or replaced, every session of the old one is
//! gone and the next call starts afresh.
//!
//! A channel is made on demand, when the first call that needs one is sent: when the device's
//! flags require it (the device refuses the call in the clear with `CKR_BAD_PROTECTION`, and
//! the call is retried inside a new channel) or the client's SMPR for the device's serial asks
//! for it (brief §2.2).
#![forbid(unsafe_code)]

mod secure;
mod stream;

pub use secure::{LogTarget, SecureSettings};

use std::sync::Mutex;
use std::time::Duration;

use tessera_config::ServerAddress;
use tessera_core::Rv;
use tessera_wire::{Reply, Request};

use secure::ChannelState;
use stream::{Failure, Stream};

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
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

struct State {
    stream: Option<Stream>,
    channel: Option<ChannelState>,
    generations: u64,
    generation: u64,
    next_id: u64,
    /// The device refused a call in the clear: it requires secure messaging.
    requires_channel: bool,
    /// The device's serial number, learnt once.
    serial: Option<String>,
}

/// One device of the server list.
pub struct Device {
    address: ServerAddress,
    connect_timeout: Duration,
    reply_timeout: Duration,
    secure: Option<std::sync::Arc<SecureSettings>>,
    state: Mutex<State>,
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
            connect_timeout,
            reply_timeout,
            secure: None,
            state: Mutex::new(State {
                stream: None,
                channel: None,
                generations: 0,
                generation: 0,
                next_id: 1,
                requires_channel: false,
                serial: None,
            }),
        }
    }

    /// Enables secure messaging with these settings (trust store, SMPR, limits, log).
    pub fn with_security(mut self, settings: std::sync::Arc<SecureSettings>) -> Device {
        self.secure = Some(settings);
        self
    }

    /// The server address.
    pub fn address(&self) -> &ServerAddress {
        &self.address
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failure(&self, failure: Failure) -> ClientError {
        match failure {
            Failure::Io(reason) => ClientError::ConnectionLost {
                address: self.address.to_string(),
                reason,
            },
            Failure::Bad(reason) => ClientError::BadReply {
                address: self.address.to_string(),
                reason,
            },
        }
    }

    /// Makes sure there is a connection; a new one starts a new generation.
    fn connected(&self, state: &mut State) -> Result<(), ClientError> {
        if state.stream.is_none() {
            let stream = Stream::connect(&self.address, self.connect_timeout, self.reply_timeout)
                .map_err(|reason| ClientError::Unreachable {
                address: self.address.to_string(),
                reason,
            })?;
            state.stream = Some(stream);
            state.channel = None;
            state.generations += 1;
            state.generation = state.generations;
        }
        Ok(())
    }

    /// One request and its reply in the clear; a broken connection is forgotten.
    fn exchange(&self, state: &mut State, request: Request) -> Result<Reply, ClientError> {
        self.connected(state)?;
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        let Some(stream) = state.stream.as_mut() else {
            return Err(ClientError::StaleSession);
        };
        match stream.exchange(id, None, request) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(code)) => Err(ClientError::Returned(code)),
            Err(failure) => {
                state.stream = None;
                state.channel = None;
                Err(self.failure(failure))
            }
        }
    }

    /// Sends `request` and waits for its reply, inside a channel when one is needed.
    ///
    /// With `session_generation` set, the call is refused with [`ClientError::StaleSession`]
    /// unless the current connection and channel are the session's own. The reply comes with
    /// the current generation.
    pub fn call(
        &self,
        session_generation: Option<u64>,
        request: Request,
    ) -> Result<(Reply, u64), ClientError> {
        let mut state = self.lock();
        if session_generation.is_some() && state.stream.is_none() {
            return Err(ClientError::StaleSession);
        }
        let public = request.is_public();
        if !public && self.wants_channel(&mut state)? {
            return self.call_protected(&mut state, session_generation, request);
        }
        if session_generation.is_some_and(|g| g != state.generation) {
            return Err(ClientError::StaleSession);
        }
        let retry = if public {
            None
        } else {
            Some(postcard::to_stdvec(&request).ok())
        };
        match self.exchange(&mut state, request) {
            Ok(reply) => Ok((reply, state.generation)),
            Err(ClientError::Returned(code))
                if code == Rv::BadProtection.code() && self.secure.is_some() =>
            {
                // The device requires secure messaging: from now on, use a channel. A call
                // that opens something new is retried inside one; a call on an old session
                // cannot be (its session is bound to the clear connection).
                state.requires_channel = true;
                let request = retry
                    .flatten()
                    .and_then(|bytes| postcard::from_bytes::<Request>(&bytes).ok());
                match (session_generation, request) {
                    (None, Some(request)) => self.call_protected(&mut state, None, request),
                    _ => Err(ClientError::Returned(code)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Closes the connection (all its sessions and its channel end on the device).
    pub fn disconnect(&self) {
        let mut state = self.lock();
        if let Some(channel) = state.channel.as_mut() {
            channel.close();
        }
        state.channel = None;
        state.stream = None;
    }
}
