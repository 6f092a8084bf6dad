//! The HSM engine: one device with its slots, tokens, sessions, objects and mechanisms.
//!
//! Typed requests in, typed replies out: [`Hsm::handle`] executes one
//! [`tessera_wire::Call`] for one client and returns the reply or the `CKR_*` error. It does
//! no network I/O; the daemon owns the sockets. Every change to token state is written to the
//! token store before the call returns.
//!
//! A *client* is one connection of one application: PKCS#11 login state is per application and
//! token, so it is kept per client and slot; all of a client's sessions end when it disconnects.
#![deny(unsafe_code)]

mod admin;
mod channels;
mod cluster;
mod crypto;
mod derive;
mod device;
mod error;
mod events;
mod identity;
mod kbkdf;
mod keep;
mod key_calls;
mod locked;
mod mechanisms;
mod object;
mod object_calls;
mod object_set;
mod operations;
mod protection;
mod replica;
mod rollback;
mod sessions;
mod time;
mod tokens;
mod wrap;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tessera_core::Rv;
use tessera_store::{HeldKey, MasterKey, Store, TokenRecord};
use tessera_wire::{Call, Reply};

pub(crate) use locked::Locked;
pub(crate) use sessions::Session;

pub use admin::{
    CKA_TESSERA_SECURITY_FLAGS, CKA_TESSERA_SERIAL, CKH_TESSERA_DEVICE, DEVICE_OBJECT,
};
pub use channels::{ChannelInfo, DEFAULT_MAX_CHANNELS};
pub use device::{DeviceKeyProtection, HsmOptions};
pub use error::HsmError;
pub use events::DEFAULT_EVENT_LOG_SIZE;
pub use mechanisms::uses_rsa;
pub use tessera_store::DEFAULT_KDF_ITERATIONS;

/// The most sessions a device holds at once (all clients).
pub const MAX_SESSIONS: u64 = 4096;
/// What one client (one connection of one application) and the device may hold in memory
/// (tesserad's `--max-sessions-per-connection`, `--max-session-object-bytes-per-connection`,
/// `--max-session-object-bytes`, `--max-public-objects`). A client at its limit is refused
/// (`CKR_SESSION_COUNT`, `CKR_DEVICE_MEMORY`); other clients are not affected. Each refusal is
/// recorded in the event log as `limit-reached`, once per client and limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions one client may hold open at once.
    pub sessions_per_client: u64,
    /// Bytes of session objects (their attributes) one client may hold.
    pub session_object_bytes_per_client: u64,
    /// Bytes of session objects the device holds for all clients together.
    pub session_object_bytes: u64,
    /// Public token objects a token may hold that were created without a login.
    pub public_objects_per_token: u64,
}

/// Default of [`Limits::sessions_per_client`].
pub const DEFAULT_SESSIONS_PER_CLIENT: u64 = 1024;
/// Default of [`Limits::session_object_bytes_per_client`]: 64 MiB.
pub const DEFAULT_SESSION_OBJECT_BYTES_PER_CLIENT: u64 = 64 << 20;
/// Default of [`Limits::session_object_bytes`]: 512 MiB.
pub const DEFAULT_SESSION_OBJECT_BYTES: u64 = 512 << 20;
/// Default of [`Limits::public_objects_per_token`].
pub const DEFAULT_PUBLIC_OBJECTS_PER_TOKEN: u64 = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_client: DEFAULT_SESSIONS_PER_CLIENT,
            session_object_bytes_per_client: DEFAULT_SESSION_OBJECT_BYTES_PER_CLIENT,
            session_object_bytes: DEFAULT_SESSION_OBJECT_BYTES,
            public_objects_per_token: DEFAULT_PUBLIC_OBJECTS_PER_TOKEN,
        }
    }
}

/// Consecutive wrong PINs after which a PIN is locked.
pub const MAX_PIN_FAILURES: u32 = 10;
/// Shortest PIN accepted.
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted.
pub const MAX_PIN_LEN: usize = 255;

/// Who is logged in, for one client on one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    So,
    User,
}

/// An object held by a token.
pub(crate) struct Object {
    /// All attributes that are in the clear.
    attributes: object::Attributes,
    /// The secret attributes, sealed (token objects: under the token master key or the device
    /// key, as stored; session objects: under the device's session key).
    sealed: Option<Vec<u8>>,
    /// Session objects: the client and session that created it.
    owner: Option<(u64, u64)>,
    /// Bytes it holds, counted once when it is made (an object is never changed in place: a
    /// change makes a new one).
    held: u64,
}

impl Object {
    pub(crate) fn new(
        attributes: object::Attributes,
        sealed: Option<Vec<u8>>,
        owner: Option<(u64, u64)>,
    ) -> Object {
        let held = attributes.size() + sealed.as_ref().map_or(0, |s| s.len() as u64);
        Object {
            attributes,
            sealed,
            owner,
            held,
        }
    }

    /// Bytes the object holds: its attributes in the clear and its sealed secrets.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held
    }
}

pub(crate) struct Token {
    record: TokenRecord,
    /// The token master key while some client is logged in.
    master: Option<MasterKey>,
    logins: HashMap<u64, Login>,
    objects: object_set::ObjectSet,
    /// PIN guesses counted and still being checked: the user's, the SO's.
    checking: [u32; 2],
}

/// One HSM device backed by its data directory.
pub struct Hsm {
    store: Store,
    serial: String,
    /// Seals the secrets of public token objects (private ones use the token master key).
    device_key: MasterKey,
    /// Seals the secrets of session objects while they are held: a fresh key per start, never
    /// stored, so that a session key's value is in the clear only while it is used.
    session_key: HeldKey,
    /// Seals PIN records once more, so that the store file alone cannot test a PIN guess.
    pepper: MasterKey,
    /// Records every durable commit outside the store (rollback detection).
    witness: std::sync::Arc<rollback::Witness>,
    /// How the device key is protected (for the log and `ctconf -e`).
    protection: String,
    kdf_iterations: u32,
    events: events::EventLog,
    channels: channels::Channels,
    limits: Limits,
    /// Requests served since the device started.
    requests: std::sync::atomic::AtomicU64,
    /// PINs locked by wrong guesses since the device started (`pin-locked` events).
    pin_lockouts: std::sync::atomic::AtomicU64,
    /// The PIK, parsed, with the sealed record it came from (see `identity_signature`).
    pik_cache: PikCache,
    /// Replication requests this device made, waiting for their replicas.
    replicas: replica::Requests,
    /// The device (flags, slots, clock, identity): read as one value, changed by the
    /// Administrator; first in the lock order.
    device: device::Device,
    /// The tokens, each behind its own lock (see [`locked`]); second in the lock order.
    tokens: locked::TokenMap,
    /// The sessions: an aggregate with its own lock, taken after the tokens when both are
    /// needed.
    sessions: Mutex<sessions::Sessions>,
    /// Bytes of session objects by client and in all, kept by the tokens' object sets.
    ledger: Arc<locked::Ledger>,
    next_client: AtomicU64,
    next_session_object: AtomicU64,
    /// Limits a client has reached and that are in the event log (once per client and limit).
    limits_reported: Mutex<std::collections::HashSet<(u64, &'static str)>>,
    /// The cluster this device is a node of (`cluster.rs`): set once, when it joins.
    cluster: std::sync::OnceLock<cluster::Clustered>,
}

/// The code for a failed store operation, logged: `CKR_DEVICE_MEMORY` when the disk is full
/// (or the file may grow no more), `CKR_DEVICE_ERROR` otherwise. The failed write changed
/// nothing (its transaction was aborted).
pub(crate) fn store_failure(e: tessera_store::StoreError) -> Rv {
    match &e {
        tessera_store::StoreError::Gone(..) => return Rv::ObjectHandleInvalid,
        tessera_store::StoreError::Refused(reason) => {
            tracing::warn!(reason = %reason, "the cluster store refused the request");
            return Rv::ArgumentsBad;
        }
        tessera_store::StoreError::Unavailable(reason) => {
            tracing::error!(reason = %reason, "the cluster store cannot commit or answer: the call was refused and nothing changed");
            return Rv::DeviceError;
        }
        _ => {}
    }
    if let tessera_store::StoreError::Full(reason) = &e {
        tracing::error!(reason = %reason, "the token store is full: the write was refused and nothing changed");
        return Rv::DeviceMemory;
    }
    tracing::error!(error = %e, "a token store operation failed");
    Rv::DeviceError
}

/// The device's identity key ready to sign, and the sealed form it was opened from.
type PikCache = Mutex<Option<(Vec<u8>, std::sync::Arc<tessera_identity::issue::SigningKey>)>>;

pub use tessera_wire::SESSION_OBJECT_BASE;

impl Hsm {
    /// Opens the device in `data_dir`, creating it on first use.
    pub fn open(data_dir: &Path, options: &HsmOptions) -> Result<Hsm, HsmError> {
        device::open(data_dir, options)
    }

    /// The device serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Registers a new client (a connection) and returns its id.
    pub fn connect(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes the event-log entries held back (channel openings and closings); the daemon
    /// calls it periodically and when it stops.
    pub fn flush_events(&self) {
        let time = self.clock();
        self.events.count_channels(&self.store, time, false);
        self.events.flush(&self.store);
    }

    /// Writes what the event log holds back, the counts of channels included: the daemon
    /// calls it when it stops.
    pub fn close_events(&self) {
        let time = self.clock();
        self.events.count_channels(&self.store, time, true);
        self.events.flush(&self.store);
    }

    /// Ends a client: closes its sessions and logs it out everywhere, a token at a time.
    pub fn disconnect(&self, client: u64) {
        for tokens in self.all_tokens().one_by_one() {
            let mut state = tokens.lock(self);
            let sessions = (state.sessions())
                .handles(|s| s.client == client && state.held(s.token_id).is_some());
            for handle in sessions {
                state.close_session(handle);
            }
            for (_, token) in state.tokens_mut() {
                token.logout(client);
            }
        }
        locked::lock(&self.limits_reported).retain(|(c, _)| *c != client);
    }

    /// Refuses a call with `rv` because `client` reached `limit`; the first time for this
    /// client and limit, records a `limit-reached` event (written with the next batch: a flood
    /// of refusals never becomes a flood of disk writes).
    pub(crate) fn limit_reached(&self, client: u64, limit: &'static str, rv: Rv) -> Rv {
        if locked::lock(&self.limits_reported).insert((client, limit)) {
            tracing::warn!(client, limit, code = rv.name(), "a client reached a limit");
            self.event(
                "Public",
                "limit-reached",
                format!("client {client}: {limit} ({})", rv.name()),
            );
        }
        rv
    }

    /// Records a `limit-reached` event for a limit of the daemon's (connections, frame memory,
    /// idle time); batched like channel events.
    pub fn limit_event(&self, detail: String) {
        self.event("Public", "limit-reached", detail);
    }

    /// Whether `client` has a session open.
    pub fn has_sessions(&self, client: u64) -> bool {
        self.sessions().held_by(client) > 0
    }

    /// The number of sessions open on the device.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// PINs locked by wrong guesses since the device started.
    pub fn pin_lockouts(&self) -> u64 {
        self.pin_lockouts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sessions alone: for what only concerns a session (its running operations, its
    /// search), so that it waits for no token. Never taken while holding them, nor before a
    /// token (see [`locked`]).
    pub(crate) fn sessions(&self) -> MutexGuard<'_, sessions::Sessions> {
        locked::lock(&self.sessions)
    }

    /// Executes one request for `client`; `protected` when it arrived inside a secure-messaging
    /// channel. A device whose flags require secure messaging refuses every call but the public
    /// ones in the clear (`CKR_BAD_PROTECTION`).
    pub fn handle(&self, client: u64, protected: bool, request: Call) -> Result<Reply, Rv> {
        use Call as R;
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !protected && !request.is_public() && self.device_policy().requires_channel() {
            self.channel_event(
                "Public",
                "policy-refusal",
                "a session call arrived without a channel".into(),
            );
            return Err(Rv::BadProtection);
        }
        match request {
            R::DeviceInfo => Ok(Reply::Device(self.device_info())),
            R::SlotInfo { slot } => self.slot_info(slot).map(Reply::Slot),
            R::TokenInfo { slot } => {
                self.catch_up()?;
                self.token_info(slot).map(Reply::Token)
            }
            R::MechanismList { slot } => {
                let device = self.device.now();
                device.slot_token(slot)?;
                Ok(Reply::Mechanisms(mechanisms::list(device.flags)))
            }
            R::MechanismInfo { slot, mechanism } => {
                let device = self.device.now();
                device.slot_token(slot)?;
                mechanisms::info(mechanism, device.flags)
                    .map(Reply::Mechanism)
                    .ok_or(Rv::MechanismInvalid)
            }
            R::InitToken {
                slot,
                so_pin,
                label,
            } => self.init_token(slot, &so_pin, &label),
            R::OpenSession { slot, flags } => {
                self.catch_up()?;
                self.open_session(client, slot, flags)
            }
            R::CloseSession { session } => {
                let tokens = self.tokens_of_session(client, session)?;
                let mut state = tokens.lock(self);
                state.session(client, session)?;
                state.close_session(session);
                Ok(Reply::Done)
            }
            R::CloseAllSessions { slot } => {
                let tokens = self.tokens_of_slot(slot)?;
                let mut state = tokens.lock(self);
                let token_id = state.slot_token(slot)?;
                let handles =
                    (state.sessions()).handles(|s| s.client == client && s.token_id == token_id);
                for handle in handles {
                    state.close_session(handle);
                }
                Ok(Reply::Done)
            }
            R::SessionInfo { session } => self.session_info(client, session).map(Reply::Session),
            R::Login {
                session,
                user_type,
                pin,
            } => {
                self.catch_up()?;
                self.login(client, session, user_type, &pin)
            }
            R::Logout { session } => self.logout(client, session),
            R::InitPin { session, pin } => self.init_pin(client, session, &pin),
            R::SetPin {
                session,
                old_pin,
                new_pin,
            } => self.set_pin(client, session, &old_pin, &new_pin),
            R::CreateObject { session, template } => self.create_object(client, session, &template),
            R::CopyObject {
                session,
                object,
                template,
            } => self.copy_object(client, session, object, &template),
            R::Keep { session, command } => self.keep(client, session, command),
            R::DestroyObject { session, object } => self.destroy_object(client, session, object),
            R::ObjectSize { session, object } => self.object_size(client, session, object),
            R::GetAttributes {
                session,
                object,
                types,
            } => self.get_attributes(client, session, object, &types),
            R::SetAttributes {
                session,
                object,
                template,
            } => self.set_attributes(client, session, object, &template),
            R::FindObjectsInit { session, template } => {
                self.catch_up()?;
                self.find_init(client, session, &template)
            }
            R::FindObjects { session, max } => self.find_next(client, session, max),
            R::FindObjectsFirst {
                session,
                template,
                max,
            } => {
                self.catch_up()?;
                self.find_init(client, session, &template)?;
                self.find_first(client, session, max)
            }
            R::OperationOnce {
                session,
                operation,
                mechanism,
                key,
                data,
                signature,
            } => {
                self.operation_init(client, session, operation, &mechanism, key)?;
                self.operation_single(client, session, operation, data, &signature)
            }
            R::FindObjectsFinal { session } => {
                let mut sessions = self.sessions();
                let session = sessions.get_mut(client, session)?;
                session.find.take().ok_or(Rv::OperationNotInitialized)?;
                Ok(Reply::Done)
            }
            R::OperationInit {
                session,
                operation,
                mechanism,
                key,
            } => self.operation_init(client, session, operation, &mechanism, key),
            R::OperationSingle {
                session,
                operation,
                data,
                signature,
            } => self.operation_single(client, session, operation, data, &signature),
            R::OperationUpdate {
                session,
                operation,
                data,
            } => self.operation_update(client, session, operation, &data),
            R::OperationFinal {
                session,
                operation,
                signature,
            } => self.operation_final(client, session, operation, &signature),
            R::GenerateKey {
                session,
                mechanism,
                template,
            } => self.generate_key(client, session, &mechanism, &template),
            R::GenerateKeyPair {
                session,
                mechanism,
                public_template,
                private_template,
            } => self.generate_key_pair(
                client,
                session,
                &mechanism,
                &public_template,
                &private_template,
            ),
            R::GenerateRandom { session, len } => {
                {
                    let tokens = self.tokens_of_session(client, session)?;
                    let state = tokens.lock(self);
                    let token_id = state.session(client, session)?.token_id;
                    state.check_public_crypto(client, token_id)?;
                }
                if len > (8 << 20) {
                    return Err(Rv::DataLenRange);
                }
                crypto::random(len as usize).map(Reply::Bytes)
            }
            R::WrapKey {
                session,
                mechanism,
                wrapping_key,
                key,
            } => self.wrap_key(client, session, &mechanism, wrapping_key, key),
            R::UnwrapKey {
                session,
                mechanism,
                unwrapping_key,
                wrapped,
                template,
            } => self.unwrap_key(
                client,
                session,
                &mechanism,
                unwrapping_key,
                &wrapped,
                &template,
            ),
            R::DeriveKey {
                session,
                mechanism,
                base_key,
                template,
            } => self.derive_key(client, session, &mechanism, base_key, &template),
            R::DigestKey { session, key } => self.digest_key(client, session, key),
            R::EncapsulateKey {
                session,
                mechanism,
                public_key,
                template,
                room,
            } => self.encapsulate_key(client, session, &mechanism, public_key, &template, room),
            R::DecapsulateKey {
                session,
                mechanism,
                private_key,
                template,
                ciphertext,
            } => self.decapsulate_key(
                client,
                session,
                &mechanism,
                private_key,
                &template,
                &ciphertext,
            ),
            R::SessionCancel { session, flags } => self.session_cancel(client, session, flags),
            R::Once { request, call } => self.once(client, protected, request, *call),
            R::DeviceStatus => Ok(Reply::Status(self.device_status())),
            R::Identity => Ok(Reply::Identity(self.identity())),
            R::AdminSetup { aso_pin, admin_pin } => self.admin_setup(&aso_pin, &admin_pin),
            R::Admin { session, command } => self.admin(client, session, command),
            // The system generator takes no seed from outside, and PKCS#11 lets a token ignore
            // one: a seed is accepted on a valid session (CKR_OK) and dropped, wiped.
            R::SeedRandom { session, seed: _ } => {
                self.sessions().get(client, session)?;
                Ok(Reply::Done)
            }
        }
    }
}

impl Locked<'_> {
    /// With No Public Crypto (`c`), crypto and object writes need a login on the token.
    pub(crate) fn check_public_crypto(&self, client: u64, token_id: u64) -> Result<(), Rv> {
        let logged_in = self.token(token_id)?.login_of(client).is_some();
        if self.device.flags & tessera_core::flags::NO_PUBLIC_CRYPTO != 0 && !logged_in {
            return Err(Rv::UserNotLoggedIn);
        }
        Ok(())
    }

    /// Closes a session and destroys the session objects it created.
    pub(crate) fn close_session(&mut self, handle: u64) {
        // A session on a token this call does not hold is not its to close (its objects are
        // in that token).
        match self.sessions().token_of(handle) {
            Some(token_id) if self.held(token_id).is_some() => {}
            _ => return,
        }
        let Some(session) = self.sessions_mut().remove(handle) else {
            return;
        };
        let still_open =
            (self.sessions().on_token(session.token_id)).any(|s| s.client == session.client);
        if let Ok(token) = self.token_mut(session.token_id) {
            token
                .objects
                .retain(|_, o| o.owner != Some((session.client, handle)));
            if !still_open {
                // The last session of an application on a token logs it out (§5.6).
                token.logout(session.client);
            }
        }
    }
}

impl Token {
    /// A token with nothing in it, whose session objects count in `ledger`.
    pub(crate) fn blank(ledger: &Arc<locked::Ledger>) -> Token {
        Token::new(
            TokenRecord::default(),
            object_set::ObjectSet::counted_in(ledger),
        )
    }

    pub(crate) fn new(record: TokenRecord, objects: object_set::ObjectSet) -> Token {
        Token {
            record,
            master: None,
            logins: HashMap::new(),
            objects,
            checking: [0, 0],
        }
    }

    pub(crate) fn login_of(&self, client: u64) -> Option<Login> {
        self.logins.get(&client).copied()
    }

    pub(crate) fn logout(&mut self, client: u64) {
        self.logins.remove(&client);
        if self.logins.is_empty() {
            // Nobody is logged in: forget the master key (wiped on drop), and the parsed
            // private keys (its token's among them).
            if self.master.take().is_some() {
                crate::crypto::forget_parsed_keys();
            }
        }
    }
}
