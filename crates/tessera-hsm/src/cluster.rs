//! A device that is a node of a cluster: its tokens live in a [`Shared`] store (etcd, through
//! `tessera-cluster`), written there before a call returns, and changes made by the other
//! nodes are applied to the tokens held here as they are told.
//!
//! What stays the node's own: its identity, its peers, its event log, its flags and its store
//! file (where it keeps the cluster key, sealed under its device key). What the cluster
//! shares: the token records (labels, PIN records, failure counts) and the token objects. The
//! secrets of public objects are sealed under a key derived from the cluster key, and PIN
//! records peppered with another, so that every node opens what any node wrote.

use std::sync::{Arc, Weak};

use tessera_core::Rv;
use tessera_store::shared::{Change, Shared};
use tessera_store::{MasterKey, StoreError, StoredObject, TokenRecord};

use crate::{Hsm, HsmError};

/// The cluster a node has joined.
pub(crate) struct Clustered {
    /// Set by a tamper: the node no longer writes to the cluster, nor takes its changes.
    detached: std::sync::atomic::AtomicBool,
    name: String,
    shared: Arc<dyn Shared>,
    /// Seals public objects' secrets (in place of the device key).
    public_key: MasterKey,
    /// Peppers PIN records (in place of the device's pepper).
    pepper: MasterKey,
    /// The first digits of the token serials, the same on every node (a device's own tokens
    /// start with the device serial): a token has one serial in the whole cluster, which the
    /// library's virtual slots may name.
    serial: String,
}

/// A 10-digit number of the cluster's name, as device serials are.
fn cluster_serial(name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("tessera cluster serial of {name}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    format!(
        "{}",
        1_000_000_000 + u64::from_le_bytes(first) % 9_000_000_000
    )
}

thread_local! {
    /// The request being carried out on this thread (`Call::Once`), and how many token objects
    /// it has made so far: each object it stores is recorded under it, in the same commit.
    static REQUEST: std::cell::Cell<Option<([u8; 16], u32)>> = const { std::cell::Cell::new(None) };
}

/// The `meta` record holding the key of cluster `name`, sealed under the device key.
fn key_record(name: &str) -> String {
    format!("cluster-key/{name}")
}

fn key_aad(name: &str, epoch: u32) -> Vec<u8> {
    format!("tessera cluster key of {name}, epoch {epoch}, kept by a node").into_bytes()
}

fn subkey(key: &MasterKey, label: &[u8]) -> Result<MasterKey, HsmError> {
    MasterKey::from_secret(key.derive(label)).map_err(|e| HsmError::Options(e.to_string()))
}

impl Hsm {
    fn clustered(&self) -> Option<&Clustered> {
        self.cluster.get()
    }

    /// The cluster, for a write: refused once the node was tampered with.
    fn attached(&self) -> Result<Option<&Clustered>, StoreError> {
        match self.clustered() {
            Some(c) if c.detached.load(std::sync::atomic::Ordering::Acquire) => {
                Err(StoreError::Unavailable(format!(
                    "this node left cluster {} at a tamper: it serves no token of the cluster                      until it is admitted again (restart it)",
                    c.name
                )))
            }
            other => Ok(other),
        }
    }

    /// What a tamper does to a node of a cluster, besides what it does to any device: the
    /// node forgets the cluster key it kept and stops writing to the cluster and taking its
    /// changes (its tokens are blank, as on any tampered device; the cluster's stay as they
    /// are on the other nodes). Restarted, it must be admitted again.
    pub(crate) fn leave_cluster_at_tamper(&self) {
        let Some(clustered) = self.clustered() else {
            return;
        };
        clustered
            .detached
            .store(true, std::sync::atomic::Ordering::Release);
        if let Err(e) = self.store.remove_meta(&key_record(&clustered.name)) {
            tracing::error!(error = %e, "a tamper could not remove the cluster key kept in the store");
        }
        tracing::warn!(cluster = %clustered.name, "tamper: this node left the cluster and forgot its key");
    }

    /// The key that seals public token objects' secrets.
    pub(crate) fn public_key(&self) -> &MasterKey {
        self.clustered().map_or(&self.device_key, |c| &c.public_key)
    }

    /// The pepper of PIN records.
    pub(crate) fn pepper(&self) -> &MasterKey {
        self.clustered().map_or(&self.pepper, |c| &c.pepper)
    }

    /// The serial number of token `token_id`: the device's serial (or, on a node, the
    /// cluster's) and the token's id.
    pub(crate) fn token_serial(&self, token_id: u64) -> String {
        let base = self.clustered().map_or(&self.serial, |c| &c.serial);
        format!("{base}{token_id:02}")
    }

    /// The cluster this node has joined, if any.
    pub fn cluster_name(&self) -> Option<&str> {
        self.clustered().map(|c| c.name.as_str())
    }

    /// Writes the security flags where the cluster keeps them (nothing on a single device:
    /// its store's device record is written by the caller).
    pub(crate) fn store_flags(&self, bits: u64) -> Result<(), StoreError> {
        match self.attached()? {
            Some(c) => c.shared.put_flags(bits),
            None => Ok(()),
        }
    }

    /// Writes a token record where the tokens live.
    pub(crate) fn store_token(&self, token: u64, record: &TokenRecord) -> Result<(), StoreError> {
        match self.attached()? {
            Some(c) => c.shared.put_token(token, record),
            None => self.store.put_token(token, record),
        }
    }

    /// Writes a token record and drops its objects.
    pub(crate) fn store_reset_token(
        &self,
        token: u64,
        record: &TokenRecord,
    ) -> Result<(), StoreError> {
        match self.attached()? {
            Some(c) => c.shared.reset_token(token, record),
            None => self.store.reset_token(token, record),
        }
    }

    /// Allocates an id and stores the object `build` makes for it.
    pub(crate) fn store_insert_object(
        &self,
        token: u64,
        build: impl FnOnce(u64) -> Result<StoredObject, StoreError>,
    ) -> Result<u64, StoreError> {
        match self.attached()? {
            Some(c) => {
                let mut build = Some(build);
                let request = REQUEST.with(|r| {
                    let current = r.get();
                    if let Some((id, place)) = current {
                        r.set(Some((id, place + 1)));
                    }
                    current
                });
                c.shared
                    .insert_object(token, request, &mut |id| match build.take() {
                        Some(build) => build(id),
                        None => Err(StoreError::Storage("object builder used twice".into())),
                    })
            }
            None => self.store.insert_object(token, build),
        }
    }

    /// Stores several objects in one transaction (a restore, a replica): all or none. A node
    /// of a cluster refuses: restore into a single device, then let it found or join.
    pub(crate) fn store_insert_objects(
        &self,
        token: u64,
        count: usize,
        build: impl FnMut(usize, u64) -> Result<StoredObject, StoreError>,
    ) -> Result<Vec<u64>, StoreError> {
        match self.attached()? {
            Some(_) => Err(StoreError::Refused(
                "a restore or replica into a node of a cluster is not offered: restore into a \
                 single device, then found the cluster from it"
                    .into(),
            )),
            None => self.store.insert_objects(token, count, build),
        }
    }

    /// Replaces a stored object.
    pub(crate) fn store_replace_object(
        &self,
        token: u64,
        id: u64,
        object: &StoredObject,
    ) -> Result<(), StoreError> {
        match self.attached()? {
            Some(c) => c.shared.replace_object(token, id, object),
            None => self.store.replace_object(token, id, object),
        }
    }

    /// Removes a stored object.
    pub(crate) fn store_remove_object(&self, token: u64, id: u64) -> Result<(), StoreError> {
        match self.attached()? {
            Some(c) => c.shared.remove_object(token, id),
            None => self.store.remove_object(token, id),
        }
    }

    /// Before a call that reads token state another node may have changed (opening a
    /// session, a login, a search, the token's information): waits until every change
    /// committed in the cluster before it is applied here. Nothing on a single device.
    pub(crate) fn catch_up(&self) -> Result<(), Rv> {
        match self.attached().map_err(crate::store_failure)? {
            Some(c) => c.shared.catch_up().map_err(crate::store_failure),
            None => Ok(()),
        }
    }

    /// A call that makes objects, under a request id (`Call::Once`): on a node of a cluster, a
    /// request carried out before (on any node: the library sent it again after its node
    /// failed) is answered with the objects it made, which exist; else the call runs, and each
    /// token object it makes is recorded under the request in the commit that stores it. On a
    /// single device the call just runs.
    pub(crate) fn once(
        &self,
        client: u64,
        protected: bool,
        request: [u8; 16],
        call: tessera_wire::Call,
    ) -> Result<tessera_wire::Reply, Rv> {
        use tessera_wire::{Call, Reply};
        if matches!(call, Call::Once { .. }) {
            return Err(Rv::ArgumentsBad);
        }
        if let Some(clustered) = self.clustered() {
            let mut made = clustered
                .shared
                .recall(&request)
                .map_err(crate::store_failure)?;
            made.sort_unstable();
            let ids: Vec<u64> = made.iter().map(|(_, id)| *id).collect();
            let answer = match (&call, ids.as_slice()) {
                (_, []) => None,
                (Call::GenerateKeyPair { .. }, [public, private]) => {
                    Some(Reply::HandlePair(*public, *private))
                }
                // A pair of which only the public key was stored: made again (the first one
                // stays, unused).
                (Call::GenerateKeyPair { .. }, _) => None,
                (Call::DeriveKey { .. }, [one]) => Some(Reply::Handle(*one)),
                (Call::DeriveKey { .. }, many) => Some(Reply::Handles(many.to_vec())),
                (_, [first, ..]) => Some(Reply::Handle(*first)),
            };
            if let Some(answer) = answer {
                // The objects are in the cluster: here too before the answer.
                self.catch_up()?;
                tracing::info!("a request carried out before was sent again: answered with the objects it made");
                return Ok(answer);
            }
        }
        REQUEST.with(|r| r.set(Some((request, 0))));
        let result = self.handle(client, protected, call);
        REQUEST.with(|r| r.set(None));
        result
    }

    /// The keys of cluster `name` this device keeps, with their epochs (one; two while a
    /// rotation this node runs is not finished), if it has joined it before.
    pub fn cluster_keys(&self, name: &str) -> Result<Vec<(u32, MasterKey)>, HsmError> {
        let Some(kept) = self.store.meta(&key_record(name))? else {
            return Ok(Vec::new());
        };
        let bad = || {
            HsmError::Options(format!(
                "the key of cluster {name} kept in the store does not open with this device key"
            ))
        };
        let mut keys = Vec::new();
        let mut rest = kept.as_slice();
        while !rest.is_empty() {
            let (head, tail) = rest.split_at_checked(6).ok_or_else(bad)?;
            let epoch = u32::from_be_bytes(head[..4].try_into().map_err(|_| bad())?);
            let len = usize::from(u16::from_be_bytes(head[4..].try_into().map_err(|_| bad())?));
            let (sealed, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
            let key = MasterKey::opened_from(&self.device_key, &key_aad(name, epoch), sealed)
                .map_err(|_| bad())?;
            keys.push((epoch, key));
            rest = tail;
        }
        Ok(keys)
    }

    /// Keeps the keys of cluster `name` with their epochs (sealed under the device key), for
    /// the next start; replaces what was kept.
    pub fn keep_cluster_keys(
        &self,
        name: &str,
        keys: &[(u32, &MasterKey)],
    ) -> Result<(), HsmError> {
        let mut kept = Vec::new();
        for (epoch, key) in keys {
            let sealed = key
                .sealed_under(&self.device_key, &key_aad(name, *epoch))
                .map_err(|e| HsmError::Options(e.to_string()))?;
            let len = u16::try_from(sealed.len())
                .map_err(|_| HsmError::Options("a sealed key is too long".into()))?;
            kept.extend_from_slice(&epoch.to_be_bytes());
            kept.extend_from_slice(&len.to_be_bytes());
            kept.extend(sealed);
        }
        self.store.put_meta(&key_record(name), &kept)?;
        Ok(())
    }

    /// `ctconf --remove-member SERIAL`: the cluster's key is rotated without that member (see
    /// `tessera_cluster::ClusterStore::rotate`); this node keeps the new key.
    pub(crate) fn remove_member(&self, serial: &str) -> Result<tessera_wire::Reply, Rv> {
        let clustered = self
            .attached()
            .map_err(crate::store_failure)?
            .ok_or_else(|| {
                tracing::warn!("--remove-member on a device that is no node of a cluster");
                Rv::FunctionNotSupported
            })?;
        if serial == self.serial {
            // A node does not remove itself: another member must, so that the rotation's key
            // is made where it stays.
            return Err(Rv::ArgumentsBad);
        }
        // The new key is kept on disk by the cluster store before anything is sealed under
        // it (its keeper, set by the daemon).
        let (epoch, _key) = clustered
            .shared
            .remove_member(serial)
            .map_err(crate::store_failure)?;
        self.event(
            "Administrator",
            "member-removed",
            format!(
                "device {serial} removed from cluster {}; key epoch {epoch}",
                clustered.name
            ),
        );
        Ok(tessera_wire::Reply::Done)
    }

    /// Stops serving the cluster (this node was not admitted to the cluster's new key: it was
    /// removed, or no member answered): it writes nothing to the cluster and takes none of its
    /// changes, every session and login ends, and calls that need the cluster get
    /// `CKR_DEVICE_ERROR`. The key it kept stays on disk (no good without the new one): a
    /// restart asks to be admitted again.
    pub fn suspend_cluster(&self, reason: &str) {
        let Some(clustered) = self.clustered() else {
            return;
        };
        clustered
            .detached
            .store(true, std::sync::atomic::Ordering::Release);
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        state.sessions_mut().clear();
        for (_, token) in state.tokens_mut() {
            token.logins.clear();
            token.master = None;
        }
        drop(state);
        drop(tokens);
        crate::crypto::forget_parsed_keys();
        self.event("Administrator", "cluster-left", reason.to_string());
        self.terminate_channels(None, "this node stopped serving its cluster");
    }

    /// Whether this node stopped serving its cluster (a tamper, or not admitted to a new key).
    pub fn cluster_detached(&self) -> bool {
        self.clustered()
            .is_some_and(|c| c.detached.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The device's security flags.
    pub fn flags(&self) -> u64 {
        self.device.now().flags
    }

    /// The slots of this device: its user tokens in slot order, and its Admin token.
    pub fn slot_layout(&self) -> (Vec<u64>, u64) {
        let device = self.device.now();
        (device.user_tokens.clone(), device.admin_token)
    }

    /// Becomes a node of cluster `name`: the tokens are replaced by the cluster's (every session
    /// ends), and from now on token state is written to `shared` and changes told by it are
    /// applied here. The cluster's slots must be this device's (`user_tokens`, `admin_token`).
    pub fn join_cluster(
        self: &Arc<Self>,
        name: &str,
        shared: Arc<dyn Shared>,
        token_key: &MasterKey,
        user_tokens: &[u64],
        admin_token: u64,
    ) -> Result<(), HsmError> {
        let (mine, my_admin) = self.slot_layout();
        if mine != user_tokens || my_admin != admin_token {
            return Err(HsmError::Options(format!(
                "cluster {name} has {} user slots (tokens {user_tokens:?}, Admin token \
                 {admin_token}) and this device {} (tokens {mine:?}, Admin token {my_admin}): \
                 a node has the cluster's slots; start it with a new data directory and \
                 --user-slots {}",
                user_tokens.len(),
                mine.len(),
                user_tokens.len()
            )));
        }
        let clustered = Clustered {
            detached: Default::default(),
            name: name.to_string(),
            shared: shared.clone(),
            public_key: subkey(token_key, b"tessera cluster public objects v1")?,
            pepper: subkey(token_key, b"tessera cluster PIN pepper v1")?,
            serial: cluster_serial(name),
        };
        let snapshot = shared.snapshot()?;
        let mut records: std::collections::BTreeMap<u64, TokenRecord> =
            snapshot.tokens.into_iter().collect();
        let all = self.all_tokens();
        let mut state = all.lock(self);
        state.sessions_mut().clear();
        let ids: Vec<u64> = state.device.slot_tokens().collect();
        for token_id in ids {
            let record = records.remove(&token_id).ok_or_else(|| {
                HsmError::Store(StoreError::Corrupt(format!(
                    "token {token_id} is not in cluster {name}"
                )))
            })?;
            let mut objects = crate::object_set::ObjectSet::counted_in(&self.ledger);
            for (_, id, stored) in snapshot.objects.iter().filter(|(t, _, _)| *t == token_id) {
                objects.insert(*id, crate::object_calls::in_memory(stored.clone()));
            }
            let mut token = crate::Token::new(record, objects);
            token.checking = state.token(token_id).map_or([0, 0], |t| t.checking);
            state
                .set_token(token_id, Some(token))
                .map_err(|rv| HsmError::Options(format!("token {token_id}: {}", rv.name())))?;
        }
        if self.cluster.set(clustered).is_err() {
            return Err(HsmError::Options(
                "this device has joined a cluster already".into(),
            ));
        }
        let flags = state.device.flags;
        self.refresh_device_objects(&mut state, flags);
        drop(state);
        drop(all);
        crate::crypto::forget_parsed_keys();
        // The cluster's flags are every node's.
        if let Some(flags) = snapshot.flags {
            self.take_flags(flags, "on joining the cluster", || true);
        }
        let me: Weak<Hsm> = Arc::downgrade(self);
        shared.listen(Box::new(move |changes| {
            if let Some(hsm) = me.upgrade() {
                hsm.apply_changes(changes);
            }
        }));
        self.event(
            "Administrator",
            "cluster-joined",
            format!("node {} serves the tokens of cluster {name}", self.serial),
        );
        Ok(())
    }

    /// Takes security flags set elsewhere in the cluster (another node, or a change that a
    /// write of this node's met): as a change by the Administrator here, without its checks
    /// (they were made where the flags were set), every channel ended.
    pub(crate) fn take_flags(&self, bits: u64, how: &str, accept: impl FnOnce() -> bool) {
        let mut change = self.device.change();
        // Decided under the device's change turn, where this node writes its flags: a change
        // told late never undoes a newer one written here.
        if !accept() {
            return;
        }
        let before = change.flags;
        if before == bits {
            return;
        }
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        change.record.flags = bits;
        if let Err(e) = self.store.update_device(&change.record, &[], &[], &[]) {
            tracing::warn!(error = %e, "cannot keep the cluster's flags in this node's store");
        }
        state.publish(change);
        self.refresh_device_objects(&mut state, bits);
        let detail = format!(
            "{:?} -> {:?} ({how})",
            tessera_core::flags::letters(before),
            tessera_core::flags::letters(bits)
        );
        self.event("Administrator", "flags-changed", detail);
        drop(state);
        drop(tokens);
        self.after_flags_changed(bits, None);
    }

    /// Applies changes made by other nodes to the tokens held here.
    fn apply_changes(&self, changes: Vec<(Change, i64, u64)>) {
        let Ok(Some(clustered)) = self.attached() else {
            return;
        };
        let mut forget_keys = false;
        for (change, revision, version) in changes {
            let token_id = match &change {
                Change::Flags(bits) => {
                    self.take_flags(*bits, "set on another node of the cluster", || {
                        clustered.shared.accept(&change, revision, version)
                    });
                    continue;
                }
                Change::Token(token, _) => *token,
                Change::Object { token, .. } | Change::ObjectGone { token, .. } => *token,
            };
            let Ok(cell) = self.cell(token_id) else {
                continue;
            };
            let mut held = crate::locked::lock(&cell.token);
            let Some(token) = held.as_mut() else {
                continue;
            };
            // Decided under the token's lock, where this node's own writes of the token are
            // made: a change told after a newer one was written here is not applied.
            if !clustered.shared.accept(&change, revision, version) {
                continue;
            }
            match change {
                Change::Flags(_) => {}
                Change::Token(_, record) => {
                    // Initialised again on another node (a new SO PIN record, a new token
                    // master key): the logins here were to the old token and end, with its
                    // sessions, as C_InitToken ends them on a single device.
                    if record.so_pin != token.record.so_pin {
                        token.logins.clear();
                        token.master = None;
                        let mut sessions = self.sessions();
                        let on_token = sessions.handles(|s| s.token_id == token_id);
                        for handle in &on_token {
                            sessions.remove(*handle);
                        }
                        drop(sessions);
                        // Their session objects go with them.
                        token
                            .objects
                            .retain(|_, o| o.owner.is_none_or(|(_, s)| !on_token.contains(&s)));
                        forget_keys = true;
                    }
                    token.record = record;
                }
                Change::Object { id, object, .. } => {
                    forget_keys |= token.objects.get(&id).is_some();
                    token
                        .objects
                        .insert(id, crate::object_calls::in_memory(object));
                }
                Change::ObjectGone { id, .. } => {
                    forget_keys |= token.objects.remove(&id).is_some();
                }
            }
        }
        if forget_keys {
            // A parsed private key must not outlive its object.
            crate::crypto::forget_parsed_keys();
        }
    }

    /// The cluster and its members, for the device status (`None` on a single device).
    pub(crate) fn cluster_status(&self) -> Option<Box<tessera_wire::ClusterStatus>> {
        let clustered = self.clustered()?;
        let (members, unavailable) = match clustered.shared.members() {
            Ok(members) => (members, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Some(Box::new(tessera_wire::ClusterStatus {
            name: clustered.name.clone(),
            unavailable,
            members: members
                .into_iter()
                .map(|m| tessera_wire::MemberStatus {
                    serial: m.serial,
                    since: m.since,
                    last_seen: m.last_seen,
                    applied: m.applied,
                    epoch: m.epoch,
                })
                .collect(),
        }))
    }

    /// This node's identity chain (PIC first), for the cluster's admission.
    pub fn node_chain(&self) -> Option<Vec<Vec<u8>>> {
        self.identity_chain().ok()
    }

    /// The PIK's signature over `message`, for the cluster's admission.
    pub fn node_sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.identity_signature(message)
            .map_err(|rv| format!("the identity key cannot sign ({})", rv.name()))
    }

    /// The certificates of the devices this device trusts (`ctident peer`).
    pub fn node_peers(&self) -> Vec<Vec<u8>> {
        match self.peers() {
            tessera_wire::Reply::Certificates(peers) => peers,
            _ => Vec::new(),
        }
    }

    /// Records an event of the cluster (a node admitted, a refusal) in this node's log.
    pub fn cluster_event(&self, kind: &str, detail: String) {
        self.event("Administrator", kind, detail);
    }
}
