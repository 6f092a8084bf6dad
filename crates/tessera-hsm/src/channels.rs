//! The device's register of secure-messaging channels: what the Administrator lists and
//! terminates, bounded by a limit. The channel keys themselves live with each connection in the
//! daemon; this register holds what may be shown and the termination flag the connection checks
//! before every message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_channel::Policy;
use tessera_core::Rv;
use tessera_wire::{ChannelSummary, Reply};

use crate::Hsm;

/// Channels a device holds by default.
pub const DEFAULT_MAX_CHANNELS: usize = 4096;

/// What the device knows of one channel.
pub struct ChannelInfo {
    /// Channel id.
    pub id: u64,
    /// The engine client that owns the channel's sessions.
    pub client: u64,
    peer: String,
    opened: Instant,
    policy: Mutex<Policy>,
    messages: AtomicU64,
    generation: AtomicU32,
    terminated: Mutex<Option<String>>,
}

impl ChannelInfo {
    /// Why the device terminated the channel, if it did.
    pub fn terminated(&self) -> Option<String> {
        crate::locked::lock(&self.terminated).clone()
    }

    /// Counts a message.
    pub fn count(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the key generation after a rollover.
    pub fn set_generation(&self, generation: u32) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// Records the effective policy once the handshake is done.
    pub fn set_policy(&self, policy: Policy) {
        *crate::locked::lock(&self.policy) = policy;
    }
}

pub(crate) struct Channels {
    map: Mutex<HashMap<u64, Arc<ChannelInfo>>>,
    next: AtomicU64,
    limit: usize,
    /// Told when the flags come to require a channel and the clear sessions end (the daemon
    /// then closes its clear connections, with a notice, so that no library sends a PIN on
    /// them in the clear).
    clear_ended: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Channels {
    pub(crate) fn new(limit: usize) -> Channels {
        Channels {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            limit: limit.max(1),
            clear_ended: std::sync::OnceLock::new(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ChannelInfo>>> {
        crate::locked::lock(&self.map)
    }
}

impl Hsm {
    /// The secure-messaging policy the device's flags demand.
    pub fn device_policy(&self) -> Policy {
        Policy::from_device_flags(self.device.now().flags)
    }

    /// The number of secure-messaging channels open.
    pub fn channel_count(&self) -> usize {
        self.channels.map().len()
    }

    /// Registers a new channel for `peer`; refused when the device holds its limit.
    pub fn open_channel(&self, peer: &str) -> Result<Arc<ChannelInfo>, Rv> {
        let mut map = self.channels.map();
        if map.len() >= self.channels.limit {
            drop(map);
            self.event(
                "Device",
                "channel-refused",
                format!("limit of {} channels reached ({peer})", self.channels.limit),
            );
            return Err(Rv::ChannelLimit);
        }
        let id = self.channels.next.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ChannelInfo {
            id,
            client: self.connect(),
            peer: peer.into(),
            opened: Instant::now(),
            policy: Mutex::new(Policy::default()),
            messages: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            terminated: Mutex::new(None),
        });
        map.insert(id, info.clone());
        Ok(info)
    }

    /// Forgets a channel: its sessions and logins end. `by` and `why` go to the event log.
    pub fn close_channel(&self, info: &ChannelInfo, by: &str, why: &str) {
        if self.channels.map().remove(&info.id).is_some() {
            self.disconnect(info.client);
            self.event(
                by,
                "channel-closed",
                format!("channel {} ({}): {why}", info.id, info.peer),
            );
        }
    }

    /// Calls `notify` whenever the flags come to require a channel and the device ends the
    /// sessions opened in the clear (the daemon closes its clear connections then). Set once.
    pub fn on_clear_sessions_ended(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.channels.clear_ended.set(Box::new(notify));
    }

    /// Ends every session opened outside a channel, and its clients' logins, then tells the
    /// daemon: the flags now require a channel, so those sessions may not carry on
    /// (docs/secure-messaging.md, "Policy": the device never executes a request that lacks the protection its flags require).
    pub(crate) fn end_clear_sessions(&self) -> usize {
        let in_channels: std::collections::HashSet<u64> = self
            .channels
            .map()
            .values()
            .map(|info| info.client)
            .collect();
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        // Every token was fetched; a slot added since has no session opened in the clear
        // (the flags refuse it), so the tokens held are those to look at.
        let clear: Vec<(u64, u64)> = (state.sessions().iter())
            .filter(|(_, session)| state.held(session.token_id).is_some())
            .filter(|(_, session)| !in_channels.contains(&session.client))
            .map(|(handle, session)| (handle, session.client))
            .collect();
        for (handle, client) in &clear {
            state.close_session(*handle);
            for (_, token) in state.tokens_mut() {
                token.logout(*client);
            }
        }
        drop(state);
        if let Some(notify) = self.channels.clear_ended.get() {
            notify();
        }
        clear.len()
    }

    /// Records a channel event (open, rollover, integrity failure, policy refusal).
    pub fn channel_event(&self, role: &str, kind: &str, detail: String) {
        self.event(role, kind, detail);
    }

    /// Marks channels terminated (all when `which` is `None`); each connection notices before
    /// its next message, tells its client, and closes the channel.
    pub(crate) fn terminate_channels(&self, which: Option<u64>, reason: &str) -> usize {
        self.terminate_channels_except(which, None, reason)
    }

    /// As [`Hsm::terminate_channels`], sparing the channel of engine client `spare` (the
    /// Administrator's own, when a flag change is made through it).
    pub(crate) fn terminate_channels_except(
        &self,
        which: Option<u64>,
        spare: Option<u64>,
        reason: &str,
    ) -> usize {
        let map = self.channels.map();
        let mut count = 0;
        let chosen =
            |i: &&Arc<ChannelInfo>| which.is_none_or(|id| id == i.id) && Some(i.client) != spare;
        for info in map.values().filter(chosen) {
            *crate::locked::lock(&info.terminated) = Some(reason.into());
            // The sessions end now, not at the next message.
            self.disconnect(info.client);
            count += 1;
        }
        count
    }

    pub(crate) fn channel_list(&self) -> Reply {
        let map = self.channels.map();
        let mut list: Vec<ChannelSummary> = map
            .values()
            .filter(|i| i.terminated().is_none())
            .map(|i| ChannelSummary {
                id: i.id,
                peer: i.peer.clone(),
                age: i.opened.elapsed().as_secs(),
                messages: i.messages.load(Ordering::Relaxed),
                generation: i.generation.load(Ordering::Relaxed),
                policy: crate::locked::lock(&i.policy).letters(),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        Reply::Channels(list)
    }

    /// The device's PIC and its issuers, as a handshake presents them.
    pub fn handshake_chain(&self) -> Result<Vec<Vec<u8>>, Rv> {
        self.identity_chain()
    }

    /// The PIK's signature over `message` (a handshake transcript hash).
    pub fn sign_handshake(&self, message: &[u8]) -> Result<Vec<u8>, Rv> {
        self.identity_signature(message)
    }
}
