//! The device end of secure messaging on one connection: the handshake, protected records,
//! rollover, and the termination checks (docs/secure-messaging.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tessera_channel::{
    Channel, ExpectClientFinished, HandshakeError, Protection, Record, RecordHeader, ServerStart,
    StepError,
};
use tessera_core::Rv;
use tessera_hsm::{ChannelInfo, Hsm};
use tessera_wire::{Inner, Reply, Response, SealedFrame};

/// Hard limits on one generation of channel keys; past them the device ends the channel (the
/// library renews its keys well before, at its own, lower limits).
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    /// Messages (both directions).
    pub messages: u64,
    /// Bytes of payload (both directions).
    pub bytes: u64,
}

/// Why the device could not sign a handshake.
#[derive(Debug, thiserror::Error)]
enum CannotSign {
    /// It has no identity certificate yet.
    #[error("the device has no identity certificate (ctident gen-selfsigned)")]
    NoIdentity,
    /// Signing with its identity key failed.
    #[error("signing with the identity key failed: {0}")]
    Failed(Rv),
}

struct Active {
    channel: Channel,
    info: Arc<ChannelInfo>,
}

struct Pending {
    state: ExpectClientFinished,
    info: Arc<ChannelInfo>,
    _underway: Underway,
}

/// Handshakes answered whose key confirmation is awaited, all connections together.
static UNDERWAY: AtomicUsize = AtomicUsize::new(0);

/// Those of [`UNDERWAY`] whose clients share this machine (a Unix socket or a loopback address).
static LOCAL_UNDERWAY: AtomicUsize = AtomicUsize::new(0);

/// One answered handshake counted in [`UNDERWAY`] while its key confirmation is awaited.
struct Underway {
    local: bool,
}

impl Underway {
    fn new(local: bool) -> Underway {
        UNDERWAY.fetch_add(1, Ordering::Relaxed);
        if local {
            LOCAL_UNDERWAY.fetch_add(1, Ordering::Relaxed);
        }
        Underway { local }
    }
}

impl Drop for Underway {
    fn drop(&mut self) {
        UNDERWAY.fetch_sub(1, Ordering::Relaxed);
        if self.local {
            LOCAL_UNDERWAY.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How many handshakes, on all connections, were answered and wait for their key confirmation:
/// their clients are checking the device's signature, and under load they are most of the
/// clients (a handshake that finds none underway is most likely the only one).
pub fn handshakes_underway() -> usize {
    UNDERWAY.load(Ordering::Relaxed)
}

/// As [`handshakes_underway`], counting only the clients on this machine: those whose
/// signature checks take this machine's cores.
pub fn local_handshakes_underway() -> usize {
    LOCAL_UNDERWAY.load(Ordering::Relaxed)
}

/// Locks a connection's channel state (a lock poisoned by a panicked call is taken as it is:
/// the call was answered `CKR_GENERAL_ERROR`).
pub fn lock(secure: &std::sync::Mutex<Secure>) -> std::sync::MutexGuard<'_, Secure> {
    secure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection's secure-messaging state.
pub struct Secure {
    hsm: Arc<Hsm>,
    peer: String,
    limits: KeyLimits,
    /// The client is on this machine (a Unix socket or a loopback address).
    local: bool,
    active: Option<Active>,
    pending: Option<Pending>,
    /// A channel the device has just ended while refusing a request, kept only to seal that
    /// refusal as its last record ([`Secure::seal_end`]): the library believes the end of a
    /// channel, and any error answering a protected call, only from the channel itself.
    ended: Option<Channel>,
}

impl Secure {
    /// No channel yet.
    pub fn new(hsm: Arc<Hsm>, peer: String, limits: KeyLimits, local: bool) -> Secure {
        Secure {
            hsm,
            peer,
            limits,
            local,
            active: None,
            pending: None,
            ended: None,
        }
    }

    /// Whether a handshake was answered and its key confirmation is awaited.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the client is on this machine (a Unix socket or a loopback address).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The engine client of the active channel (its sessions are the channel's).
    pub fn channel_client(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.info.client)
    }

    /// The active channel's id.
    pub fn channel_id(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.channel.id())
    }

    fn end(&mut self, by: &str, why: &str) {
        if let Some(mut active) = self.active.take() {
            active.channel.close();
            self.hsm.close_channel(&active.info, by, why);
        }
    }

    /// Ends the channel while refusing the request being opened: its keys stay only until
    /// the refusal is sealed into the channel's last record ([`Secure::seal_end`]).
    fn end_refusing(&mut self, by: &str, why: &str) {
        if let Some(active) = self.active.take() {
            self.hsm.close_channel(&active.info, by, why);
            self.ended = Some(active.channel);
        }
    }

    /// The frame answering request `id` with `code` after [`Secure::open_framed`] or
    /// [`Secure::open_record`] refused it: sealed as `Outcome::Ended` under the keys of
    /// the channel that was just ended (then gone), or in the clear when there was no channel
    /// left to seal with — which the library takes as a forgery, as it should.
    pub fn seal_end(&mut self, id: u64, code: u64) -> Vec<u8> {
        if let Some(mut channel) = self.ended.take() {
            let prefix = tessera_wire::protected_prefix(id, channel.id());
            let ended = tessera_wire::Bound {
                id,
                message: tessera_wire::OutcomeRef::Ended(code),
            };
            let protection = channel.policy().reply_protection(false);
            let sealed = channel.seal_last(&ended, protection, prefix.as_ref());
            if let Ok(mut frame) = sealed {
                tessera_wire::finish_frame(&mut frame);
                return frame;
            }
        }
        tessera_wire::encode_response(&tessera_wire::ResponseEnvelope {
            version: tessera_wire::PROTOCOL_VERSION,
            id,
            channel: None,
            result: Err(code),
        })
    }

    /// Answers a client hello; a previous channel of this connection is replaced.
    pub fn handshake(&mut self, hello: &tessera_channel::ClientHello) -> Result<Response, u64> {
        self.end("Library", "replaced by a new channel");
        if let Some(pending) = self.pending.take() {
            self.hsm
                .close_channel(&pending.info, "Library", "handshake abandoned");
        }
        let info = self.hsm.open_channel(&self.peer).map_err(Rv::code)?;
        let policy = self.hsm.device_policy();
        let answer = match self.hsm.handshake_chain() {
            Ok(chain) => ServerStart::respond(hello, info.id, policy, chain, |hash| {
                self.hsm.sign_handshake(hash).map_err(CannotSign::Failed)
            }),
            Err(_) => Err(StepError::Caller(CannotSign::NoIdentity)),
        };
        match answer {
            Ok((state, server_hello)) => {
                self.pending = Some(Pending {
                    state,
                    info,
                    _underway: Underway::new(self.local),
                });
                Ok(Response::ServerHello(server_hello))
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "handshake refused");
                self.hsm
                    .close_channel(&info, "Device", &format!("handshake failed: {e}"));
                // A library of another release is told so, not that the device has no keys.
                let version = matches!(e, StepError::Handshake(HandshakeError::Version(_)));
                Err(match version {
                    true => Rv::ProtocolVersion.code(),
                    false => Rv::NoSessionKeys.code(),
                })
            }
        }
    }

    /// Checks the library's key confirmation.
    pub fn finish(&mut self, finished: &tessera_channel::ClientFinished) -> Result<Reply, u64> {
        let pending = self.pending.take().ok_or(Rv::CannotDeriveKeys.code())?;
        match pending.state.handle(finished) {
            Ok(channel) => {
                pending.info.set_policy(channel.policy());
                let detail = format!(
                    "channel {} ({}), policy {}, keys {}",
                    channel.id(),
                    self.peer,
                    channel.policy().letters(),
                    match channel.is_hybrid() {
                        true => "X25519+ML-KEM-768",
                        false => "X25519",
                    }
                );
                self.hsm.channel_event("Library", "channel-opened", detail);
                self.active = Some(Active {
                    channel,
                    info: pending.info,
                });
                Ok(Reply::Done)
            }
            Err(e) => {
                self.hsm.channel_event(
                    "Library",
                    "channel-integrity-failure",
                    format!("handshake: {e}"),
                );
                self.hsm
                    .close_channel(&pending.info, "Device", "key confirmation failed");
                Err(Rv::CannotDeriveKeys.code())
            }
        }
    }

    /// Opens a protected request where it arrived, in its frame body (`sealed` says where the
    /// record lies in it). `Ok` gives the request and the engine client of the channel; `Err`
    /// is the clear error to answer with (the channel is gone by then).
    pub fn open_framed(
        &mut self,
        sealed: &SealedFrame,
        frame: Vec<u8>,
    ) -> Result<(Inner, u64), u64> {
        let mut frame = frame;
        let Some((body, mac)) = sealed.parts(&mut frame) else {
            return Err(Rv::BadRequestSignature.code());
        };
        let opened = self.open_in_place(sealed.header, body, mac)?;
        let start = sealed.body.start;
        self.read(sealed.id, frame, start..start + opened.0, opened.1)
    }

    /// As [`Secure::open_framed`], for a record decoded on its own (its body a buffer of its
    /// own: a bulk payload that starts it becomes the call's data as it is).
    /// `id` is the envelope's request id.
    pub fn open_record(&mut self, id: u64, record: Record) -> Result<(Inner, u64), u64> {
        let Record {
            header,
            mut body,
            mac,
        } = record;
        let opened = self.open_in_place(header, &mut body, &mac)?;
        self.read(id, body, 0..opened.0, opened.1)
    }

    /// Checks the channel's state and limits, and opens the record in place: the length of
    /// its message and its protection.
    fn open_in_place(
        &mut self,
        header: RecordHeader,
        body: &mut [u8],
        mac: &[u8],
    ) -> Result<(usize, Protection), u64> {
        let Some(active) = self.active.as_mut() else {
            return Err(Rv::SessionClosed.code());
        };
        if let Some(reason) = active.info.terminated() {
            self.end_refusing("Device", &reason);
            return Err(Rv::SessionClosed.code());
        }
        let (usage_messages, usage_bytes) = active.channel.usage();
        if usage_messages >= self.limits.messages || usage_bytes >= self.limits.bytes {
            self.end_refusing("Device", "key-use limits reached without a rollover");
            return Err(Rv::SessionClosed.code());
        }
        match active.channel.open_in_place(header, body, mac) {
            Ok(opened) => Ok(opened),
            Err(e) => {
                self.hsm
                    .channel_event("Library", "channel-integrity-failure", e.to_string());
                self.end_refusing("Device", &format!("integrity failure: {e}"));
                Err(Rv::BadRequestSignature.code())
            }
        }
    }

    /// Reads the request in an opened record's message (`buffer[plain]`), and checks that it
    /// belongs to envelope `id` and came with the protection the policy requires.
    fn read(
        &mut self,
        id: u64,
        buffer: Vec<u8>,
        plain: std::ops::Range<usize>,
        protection: Protection,
    ) -> Result<(Inner, u64), u64> {
        // What the buffer holds of a request with a PIN or key value, or of one that did not
        // decode, is wiped where it lies (its other secrets are in wiping types of their own).
        let (decoded, spent) =
            tessera_wire::open_message::<tessera_wire::Bound<Inner>>(buffer, plain);
        if let Some(spent) = spent {
            tessera_core::bytes::give(spent, tessera_core::bytes::Held::Data);
        }
        let Ok(bound) = decoded else {
            self.end_refusing("Device", "a protected request did not decode");
            return Err(Rv::BadRequestSignature.code());
        };
        if bound.id != id {
            // A record moved to another envelope id: its reply would reach another call.
            let why = format!("record of request {} arrived as request {id}", bound.id);
            self.hsm
                .channel_event("Library", "channel-integrity-failure", why.clone());
            self.end_refusing("Device", &format!("integrity failure: {why}"));
            return Err(Rv::BadRequestSignature.code());
        }
        let Some(active) = self.active.as_mut() else {
            return Err(Rv::SessionClosed.code());
        };
        let request = bound.message;
        let required = active
            .channel
            .policy()
            .request_protection(request.carries_secret());
        if let Err(e) = active.channel.require(protection, required) {
            self.hsm
                .channel_event("Library", "policy-refusal", e.to_string());
            self.end_refusing("Device", "a request lacked the protection policy requires");
            return Err(Rv::BadProtection.code());
        }
        active.info.count();
        Ok((request, active.info.client))
    }

    /// Renews the channel keys after the rekey request's reply has been sealed.
    pub fn rekey(&mut self) {
        if let Some(active) = self.active.as_mut() {
            if active.channel.rekey().is_ok() {
                active.info.set_generation(active.channel.generation());
                let detail = format!(
                    "channel {} now at key generation {}",
                    active.channel.id(),
                    active.channel.generation()
                );
                self.hsm.channel_event("Library", "channel-rekey", detail);
            }
        }
    }

    /// Seals the reply to request `id` into its frame, or says why it cannot (the channel is
    /// gone: the error then travels in the clear). A bulk output is moved out of `result` and
    /// sealed where it lies, as the rest of the frame (empty for any other reply). The flag says
    /// whether the frame carries a secret readable (a plaintext in a signed record, where the
    /// policy does not encrypt secrets): its buffers are then wiped once spent.
    pub fn seal(
        &mut self,
        id: u64,
        result: &mut Result<Reply, u64>,
    ) -> Result<(Vec<u8>, Vec<u8>, bool), u64> {
        // A call that was running when the channel was ended by a refusal is still answered
        // under its keys, before the refusal's last record (see [`Secure::seal_end`]).
        let channel = match (self.active.as_mut(), self.ended.as_mut()) {
            (Some(active), _) => &mut active.channel,
            (None, Some(ended)) => ended,
            (None, None) => return Err(Rv::SessionClosed.code()),
        };
        let secret = matches!(result, Ok(reply) if reply.carries_secret());
        let protection = channel.policy().reply_protection(secret);
        // Encrypted in the frame, or in the payload's own buffer, when the policy says so: no
        // plaintext copy is left behind.
        let (frame, tail) = tessera_wire::seal_answer(channel, id, result, protection)
            .map_err(|_| Rv::SessionClosed.code())?;
        Ok((frame, tail, secret && protection == Protection::Signed))
    }

    pub fn close(&mut self) {
        if let Some(mut ended) = self.ended.take() {
            ended.close();
        }
        self.end("Library", "connection closed");
        if let Some(pending) = self.pending.take() {
            self.hsm.close_channel(
                &pending.info,
                "Library",
                "connection closed during the handshake",
            );
        }
    }
}
