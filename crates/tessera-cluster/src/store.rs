//! The cluster's token state in etcd, as a [`Shared`] store for the engine.
//!
//! Keys, under the cluster's prefix:
//!
//! | key | value (sealed) |
//! | --- | --- |
//! | `state/token/<id>` | a token record |
//! | `state/object/<token>/<id>` | an object |
//! | `state/head` | written by every change: its revision is the newest change's |
//! | `ids` | the next free block of object ids |
//!
//! Each node remembers the revision of every key it has seen (from the snapshot, its own
//! writes and the watch). The watch tells the engine of a change only when it is newer than
//! what the node has seen, so the engine's own writes are not applied twice and an old event
//! never undoes a newer state. [`ClusterStore::catch_up`] reads `state/head` from a quorum and
//! waits until the watch has applied it: what any node committed before is then visible here.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde::Serialize;
use tessera_store::shared::{Change, Listener, Member, Shared, Snapshot};
use tessera_store::{StoreError, StoredObject, TokenRecord};

use crate::{ClusterError, Node};

pub(crate) const HEAD: &str = "state/head";
pub(crate) const FLAGS: &str = "state/flags";
/// The epoch record: the current epoch, the members removed, the epochs retired.
pub(crate) const EPOCH: &str = "epoch";
/// Present while a rotation runs: a [`Rotation`].
const ROTATION: &str = "rotation";

/// What a rotation is about, and who runs it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Rotation {
    epoch: u32,
    remove: String,
    by: String,
}

/// Keeps the cluster keys on this node's disk (the engine, sealed under the device key).
pub type Keeper = Box<dyn Fn(&[crate::keys::ClusterKey]) -> Result<(), String> + Send + Sync>;
const STATE: &str = "state/";
const IDS: &str = "ids";
/// Object ids a node takes at once (one compare-and-swap per block).
const ID_BLOCK: u64 = 256;

pub(crate) fn token_key(token: u64) -> String {
    format!("state/token/{token:020}")
}

fn object_key(token: u64, id: u64) -> String {
    format!("state/object/{token:020}/{id:020}")
}

fn objects_of(token: u64) -> String {
    format!("state/object/{token:020}/")
}

/// What a request made: recorded under `requests/<request>/<place>` in the commit of the
/// object.
#[derive(serde::Serialize, serde::Deserialize)]
struct Made {
    place: u32,
    token: u64,
    id: u64,
    /// When (seconds since the Unix epoch): records older than [`REQUESTS_KEPT`] are removed.
    time: u64,
}

/// How long a request's record is kept (a library sends a request again within seconds).
pub const REQUESTS_KEPT: Duration = Duration::from_secs(600);

fn requests_of(request: &[u8; 16]) -> String {
    format!("requests/{}/", hex::encode(request))
}

fn request_key(request: &[u8; 16], place: u32) -> String {
    format!("{}{place:04}", requests_of(request))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What is logged, and refused, when a value older than the one this node holds appears.
fn put_back(name: &[u8], found: u64, held: u64) -> String {
    let message = format!(
        "{} in etcd is version {found}, older than version {held} this node holds: an older \
         value was put back (by whoever can write to etcd); refused",
        String::from_utf8_lossy(name)
    );
    tracing::error!("{message}");
    message
}

fn unavailable(e: ClusterError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A change as the watch tells it: the key, the value (`None`: deleted), the revision.
type Event = (Vec<u8>, Option<Vec<u8>>, i64);

/// What the node has applied, and who waits for it.
#[derive(Default)]
struct Progress {
    /// Every change up to this revision has been told to the engine.
    applied: i64,
    /// The watch stopped for good (compaction): catch-up fails until a restart.
    broken: Option<String>,
    /// When etcd last answered this node (a read, a write, the watch).
    contact: Option<Instant>,
    /// When a catch-up last found etcd unavailable (the next ones do not wait for it again
    /// for a second).
    failed: Option<Instant>,
}

/// How long a rotation waits for the members to take the new key.
pub const REKEY_WAIT: Duration = Duration::from_secs(30);

/// How long a failed catch-up is not tried again.
const RETRY_CATCH_UP_AFTER: Duration = Duration::from_secs(1);

/// The cluster's token state, for one node.
pub struct ClusterStore {
    me: std::sync::Weak<ClusterStore>,
    /// This node's serial.
    serial: String,
    /// Where the keys are kept on disk, before a rotation seals anything under a new one.
    keeper: OnceLock<Keeper>,
    node: Arc<Node>,
    /// The keys of the epochs this node can open, and the one it seals under.
    values: std::sync::RwLock<crate::keys::Keyring>,
    /// The cluster key of the current epoch (what this member hands to a device it admits).
    key: Mutex<crate::keys::ClusterKey>,
    /// Changes whose values are sealed under an epoch this node has no key of yet (during a
    /// rotation, until it is admitted to the new epoch): applied once it is.
    pending: Mutex<Vec<Event>>,
    /// The revision of every key this node has seen (0: absent).
    /// And the version of its value (token state: see [`Keyring::seal_versioned`]).
    seen: Mutex<HashMap<Vec<u8>, (i64, u64)>>,
    progress: Mutex<Progress>,
    progressed: Condvar,
    listener: OnceLock<Listener>,
    /// Object ids taken and not used yet: next, end.
    ids: Mutex<(u64, u64)>,
    /// How long a catch-up may wait for the watch.
    catch_up_limit: Duration,
    /// How old the node's tokens may be (since etcd last answered) and still be served when
    /// etcd cannot be reached.
    stale_limit: Duration,
}

impl ClusterStore {
    /// The store of the cluster `node` belongs to, with its cluster key; `stale_limit`: how
    /// long after etcd last answered the node still serves from its memory when etcd cannot be
    /// reached (see [`Shared::catch_up`]).
    pub fn new(
        node: Arc<Node>,
        serial: &str,
        keys: &[crate::keys::ClusterKey],
        stale_limit: Duration,
    ) -> Result<Arc<ClusterStore>, ClusterError> {
        let key = keys
            .iter()
            .max_by_key(|k| k.epoch)
            .ok_or_else(|| ClusterError::Refused("no cluster key".into()))?;
        let mut ring = crate::keys::Keyring::new(key)?;
        for older in keys {
            ring.advance(older)?;
        }
        let values = std::sync::RwLock::new(ring);
        Ok(Arc::new_cyclic(|me| ClusterStore {
            me: me.clone(),
            serial: serial.to_string(),
            keeper: OnceLock::new(),
            stale_limit,
            values,
            key: Mutex::new(key.duplicate()),
            pending: Mutex::default(),
            catch_up_limit: node.timeout,
            node,
            seen: Mutex::default(),
            progress: Mutex::default(),
            progressed: Condvar::new(),
            listener: OnceLock::new(),
            ids: Mutex::default(),
        }))
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, crate::keys::Keyring> {
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where the keys are kept on disk (once).
    pub fn set_keeper(&self, keeper: Keeper) {
        let _ = self.keeper.set(keeper);
    }

    /// The cluster key of the current epoch.
    pub fn current_key(&self) -> crate::keys::ClusterKey {
        lock(&self.key).duplicate()
    }

    /// The epoch this node seals under.
    pub fn epoch(&self) -> u32 {
        self.ring().current()
    }

    /// Takes the key of a newer epoch (this node was admitted to it): seals under it from
    /// now on, and applies the changes that waited for it.
    pub fn install(&self, key: &crate::keys::ClusterKey) -> Result<(), ClusterError> {
        let waiting = {
            let mut pending = lock(&self.pending);
            self.values
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .advance(key)?;
            *lock(&self.key) = key.duplicate();
            std::mem::take(&mut *pending)
        };
        if !waiting.is_empty() {
            let newest = waiting.iter().map(|(_, _, at)| *at).max().unwrap_or(0);
            self.apply(waiting, newest);
        }
        Ok(())
    }

    /// Reads the epoch record once. Of an epoch this node has a key of: notes its revision
    /// (writes compare it) and retires the epochs it retires. Of a newer epoch (a rotation):
    /// `true`, this node must be admitted to it first ([`ClusterStore::install`]), judged by
    /// the record's tag.
    pub fn sync_epoch(&self) -> Result<bool, ClusterError> {
        let name = self.node.key(EPOCH);
        let found = self.node.get(name.clone(), None)?;
        let Some(kv) = found.kvs().first() else {
            return Ok(false);
        };
        if crate::keys::epoch_of(kv.value()).is_some_and(|epoch| epoch > self.epoch()) {
            return Ok(true);
        }
        if !self.ring().can_open(kv.value()) {
            return Ok(false);
        }
        let record: crate::EpochRecord = self.ring().open(&name, kv.value())?;
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retire_before(record.oldest);
        self.saw(&name, kv.mod_revision());
        Ok(false)
    }

    /// Removes member `remove` (see [`Shared::remove_member`]): run by the Administrator on a
    /// member. Waits up to [`REKEY_WAIT`] for the other members to take the new key (they ask
    /// to be admitted again, and this node's member thread admits them); a member that does
    /// not meanwhile (it is down) asks when it is back, as a restarted node does.
    pub fn rotate(&self, remove: &str) -> Result<crate::keys::ClusterKey, ClusterError> {
        let members =
            Shared::members(self).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        if !members.iter().any(|m| m.serial == remove) {
            let known: Vec<&str> = members.iter().map(|m| m.serial.as_str()).collect();
            return Err(ClusterError::Usage(format!(
                "no member of cluster {} has serial {remove} (its members: {})",
                self.node.name(),
                known.join(", ")
            )));
        }
        let current = self.current_key();
        let new = crate::keys::ClusterKey {
            epoch: current.epoch + 1,
            key: tessera_store::MasterKey::generate()
                .map_err(|e| ClusterError::Refused(e.to_string()))?,
        };
        // One rotation at a time: the marker is made only where there is none. It names the
        // node that rotates, which finishes the rotation if it stops in the middle.
        let marker = self.node.key(ROTATION);
        let intent = Rotation {
            epoch: new.epoch,
            remove: remove.to_string(),
            by: self.serial.clone(),
        };
        let taken = self.node.txn(
            Txn::new()
                .when([Compare::create_revision(
                    marker.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    marker.clone(),
                    self.ring().seal(&marker, &intent)?,
                    None,
                )]),
        )?;
        if !taken.succeeded() {
            return Err(ClusterError::Usage(format!(
                "another rotation of cluster {} is under way: wait for it to end",
                self.node.name()
            )));
        }
        // Both keys kept on this node's disk before anything is sealed under the new one: a
        // crash from here on is finished at the next start (`resume_rotation`).
        if let Some(keep) = self.keeper.get() {
            if let Err(e) = keep(&[current.duplicate(), new.duplicate()]) {
                let _ = self
                    .node
                    .txn(Txn::new().and_then([TxnOp::delete(marker, None)]));
                return Err(ClusterError::Refused(format!(
                    "cannot keep the new key: {e}"
                )));
            }
        }
        self.install(&new)?;
        self.finish_rotation(&new, remove)?;
        Ok(new)
    }

    /// A rotation that this node began and did not finish (it stopped in the middle): finished
    /// now, with the keys it kept. One that never got as far as sealing anything is abandoned.
    /// Returns the epoch finished, if any.
    pub fn resume_rotation(&self) -> Result<Option<u32>, ClusterError> {
        let marker = self.node.key(ROTATION);
        let found = self.node.get(marker.clone(), None)?;
        let Some(kv) = found.kvs().first() else {
            return Ok(None);
        };
        let Ok(intent) = self.ring().open::<Rotation>(&marker, kv.value()) else {
            return Ok(None);
        };
        if intent.by != self.serial {
            return Ok(None);
        }
        if self.epoch() < intent.epoch {
            // The new key was never kept: nothing was sealed under it.
            tracing::warn!(
                epoch = intent.epoch,
                "a rotation this node began never sealed anything: abandoned"
            );
            self.node
                .txn(Txn::new().and_then([TxnOp::delete(marker, None)]))?;
            return Ok(None);
        }
        tracing::warn!(
            epoch = intent.epoch,
            "finishing the rotation this node began before it stopped"
        );
        let new = self.current_key();
        self.finish_rotation(&new, &intent.remove)?;
        Ok(Some(intent.epoch))
    }

    /// A rotation to `new` (installed here), without device `remove`: sealed again, announced,
    /// members re-keyed, the old epochs retired, the marker removed.
    fn finish_rotation(
        &self,
        new: &crate::keys::ClusterKey,
        remove: &str,
    ) -> Result<(), ClusterError> {
        let mut record = match self.node.epoch_record()? {
            Some((epoch, _)) if epoch == new.epoch => self.node.read_epoch(new)?,
            _ => {
                // The record as it was, opened with the key of its epoch.
                let name = self.node.key(EPOCH);
                match self.node.epoch_record()? {
                    Some((_, sealed)) => self.ring().open(&name, &sealed)?,
                    None => crate::EpochRecord::default(),
                }
            }
        };
        record.epoch = new.epoch;
        if !record.removed.iter().any(|s| s == remove) {
            record.removed.push(remove.to_string());
        }
        // It is a member no more (its last report goes).
        self.node.txn(Txn::new().and_then([TxnOp::delete(
            self.node.key(&format!("members/{remove}")),
            None,
        )]))?;
        // Sealed again first (the founding record among them, which a member proves the new
        // key on), then announced: members see the new epoch and ask for its key.
        self.reseal_pass(new.epoch)?;
        let name = self.node.key(EPOCH);
        self.put_epoch(&name, &record)?;
        // Everything sealed again under the new key, pass after pass, until no value of an
        // older epoch is left and the members heard from lately hold the new key.
        let deadline = Instant::now() + REKEY_WAIT;
        loop {
            let resealed = self.reseal_pass(new.epoch)?;
            let members =
                Shared::members(self).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let waiting: Vec<&str> = members
                .iter()
                .filter(|m| m.serial != remove && !record.removed.contains(&m.serial))
                .filter(|m| now.saturating_sub(m.last_seen) <= 5 && m.epoch < new.epoch)
                .map(|m| m.serial.as_str())
                .collect();
            if resealed == 0 && waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(waiting = ?waiting, "rotation: members that did not take the new key in time ask for it when they can");
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Values of the old epochs no longer open anywhere: a writer that kept the old key
        // writes nothing that the cluster reads.
        record.oldest = new.epoch;
        self.put_epoch(&name, &record)?;
        self.reseal_pass(new.epoch)?;
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retire_before(new.epoch);
        if let Some(keep) = self.keeper.get() {
            if let Err(e) = keep(&[new.duplicate()]) {
                tracing::warn!(error = %e, "cannot drop the old key kept on disk");
            }
        }
        self.node
            .txn(Txn::new().and_then([TxnOp::delete(self.node.key(ROTATION), None)]))?;
        Ok(())
    }

    fn put_epoch(&self, name: &[u8], record: &crate::EpochRecord) -> Result<(), ClusterError> {
        let sealed = self.ring().seal(name, record)?;
        let done = self
            .node
            .txn(Txn::new().and_then([TxnOp::put(name.to_vec(), sealed, None)]))?;
        self.saw(name, done.header().map_or(0, |h| h.revision()));
        Ok(())
    }

    /// Seals again under `epoch` every value of an older epoch (each compared with the
    /// revision read, so that a value written meanwhile is taken at the next pass). Returns
    /// how many were left of older epochs.
    fn reseal_pass(&self, epoch: u32) -> Result<usize, ClusterError> {
        let prefix = self.node.key("");
        let found = self
            .node
            .get(prefix, Some(GetOptions::new().with_prefix()))?;
        let unsealed = [self.node.key("join/"), self.node.key("grant/")];
        let epoch_name = self.node.key(EPOCH);
        let mut ops = Vec::new();
        let mut compares = Vec::new();
        let mut left = 0;
        for kv in found.kvs() {
            if unsealed.iter().any(|p| kv.key().starts_with(p)) || kv.key() == epoch_name {
                continue;
            }
            if crate::keys::epoch_of(kv.value()).is_none_or(|e| e >= epoch) {
                continue;
            }
            let value = match self.ring().open_plain(kv.key(), kv.value()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "rotation: a value does not open; left as it is");
                    continue;
                }
            };
            left += 1;
            compares.push(Compare::mod_revision(
                kv.key().to_vec(),
                CompareOp::Equal,
                kv.mod_revision(),
            ));
            ops.push(TxnOp::put(
                kv.key().to_vec(),
                self.ring().seal_plain(kv.key(), value.expose())?,
                None,
            ));
            if ops.len() == 32 {
                let _ = self.node.txn(
                    Txn::new()
                        .when(std::mem::take(&mut compares))
                        .and_then(std::mem::take(&mut ops)),
                )?;
            }
        }
        if !ops.is_empty() {
            let _ = self.node.txn(Txn::new().when(compares).and_then(ops))?;
        }
        Ok(left)
    }

    /// The newest revision applied here.
    pub fn applied(&self) -> i64 {
        lock(&self.progress).applied
    }

    /// Notes that etcd answered.
    fn contact(&self) {
        let mut progress = lock(&self.progress);
        progress.contact = Some(Instant::now());
        progress.failed = None;
    }

    /// Removes the records of requests older than [`REQUESTS_KEPT`] (any member may; the
    /// daemon's member thread does it every minute). Returns how many.
    pub fn forget_old_requests(&self) -> Result<usize, ClusterError> {
        let found = self.node.get(
            self.node.key("requests/"),
            Some(GetOptions::new().with_prefix()),
        )?;
        let cutoff = now().saturating_sub(REQUESTS_KEPT.as_secs());
        let old: Vec<Vec<u8>> = found
            .kvs()
            .iter()
            .filter(|kv| {
                self.ring()
                    .open::<Made>(kv.key(), kv.value())
                    .is_ok_and(|made| made.time < cutoff)
            })
            .map(|kv| kv.key().to_vec())
            .collect();
        for chunk in old.chunks(64) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            self.node.txn(Txn::new().and_then(ops))?;
        }
        Ok(old.len())
    }

    /// Reports this node as a member: its serial, since when it serves, now, and what it
    /// applied.
    /// The daemon calls it every second; `ctconf` shows a member not heard from for a few
    /// seconds as such.
    pub fn heartbeat(&self, serial: &str, since: u64) -> Result<(), ClusterError> {
        let name = self.node.key(&format!("members/{serial}"));
        let member = Member {
            serial: serial.to_string(),
            since,
            last_seen: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            applied: self.applied(),
            epoch: self.epoch(),
        };
        let sealed = self.ring().seal(&name, &member)?;
        self.node
            .txn(Txn::new().and_then([TxnOp::put(name, sealed, None)]))?;
        self.contact();
        Ok(())
    }

    fn saw(&self, name: &[u8], revision: i64) {
        let mut seen = lock(&self.seen);
        let entry = seen.entry(name.to_vec()).or_insert((0, 0));
        entry.0 = entry.0.max(revision);
    }

    /// Records the revision and version of a value of the token state this node holds.
    fn saw_version(&self, name: &[u8], revision: i64, version: u64) {
        let mut seen = lock(&self.seen);
        let entry = seen.entry(name.to_vec()).or_insert((0, 0));
        entry.0 = entry.0.max(revision);
        entry.1 = entry.1.max(version);
    }

    fn seen(&self, name: &[u8]) -> i64 {
        lock(&self.seen)
            .get(name)
            .map_or(0, |(revision, _)| *revision)
    }

    /// The version of the value at `name` this node holds (0: none).
    fn version(&self, name: &[u8]) -> u64 {
        lock(&self.seen)
            .get(name)
            .map_or(0, |(_, version)| *version)
    }

    /// Decodes one key and value of the state into a change.
    /// Decodes one key and value of the state into a change and its value's version (0 for a
    /// deletion).
    fn change_of(
        &self,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<(Change, u64)>, ClusterError> {
        let text = String::from_utf8_lossy(name);
        let Some(rest) = text.strip_prefix(&self.node.prefix) else {
            return Ok(None);
        };
        let number = |s: &str| s.parse::<u64>().ok();
        if rest == FLAGS {
            return match value {
                Some(v) => {
                    let (version, flags) = self.ring().open_versioned(name, v)?;
                    Ok(Some((Change::Flags(flags), version)))
                }
                None => Ok(None),
            };
        }
        if let Some(id) = rest.strip_prefix("state/token/").and_then(number) {
            return match value {
                Some(v) => {
                    let (version, record) = self.ring().open_versioned(name, v)?;
                    Ok(Some((Change::Token(id, record), version)))
                }
                None => Ok(None),
            };
        }
        if let Some(path) = rest.strip_prefix("state/object/") {
            let mut parts = path.split('/');
            let (Some(token), Some(id)) =
                (parts.next().and_then(number), parts.next().and_then(number))
            else {
                return Ok(None);
            };
            return Ok(Some(match value {
                Some(v) => {
                    let (version, object) = self.ring().open_versioned(name, v)?;
                    (Change::Object { token, id, object }, version)
                }
                None => (Change::ObjectGone { token, id }, 0),
            }));
        }
        Ok(None)
    }

    /// Writes `value` at `name` if the stored value is the one this node last saw; else the
    /// newer value (nothing written), which this node has now seen.
    fn swap<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        name: &[u8],
        value: &T,
    ) -> Result<Option<T>, StoreError> {
        let expected = self.seen(name);
        let version = self.version(name) + 1;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(name.to_vec(), CompareOp::Equal, expected),
                self.epoch_guard(),
            ])
            .and_then(self.with_head(name, value, version)?)
            .or_else([TxnOp::get(name.to_vec(), None)]);
        let done = self.txn(txn)?;
        if done.succeeded() {
            self.saw_version(name, ClusterStore::revision_of(&done), version);
            return Ok(None);
        }
        for response in done.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = response {
                if let Some(kv) = get.kvs().first() {
                    let (held, newer): (u64, T) = self
                        .ring()
                        .open_versioned(name, kv.value())
                        .map_err(unavailable)?;
                    if held < self.version(name) {
                        return Err(StoreError::Unavailable(put_back(
                            name,
                            held,
                            self.version(name),
                        )));
                    }
                    self.saw_version(name, kv.mod_revision(), held);
                    return Ok(Some(newer));
                }
            }
        }
        Err(StoreError::Corrupt(format!(
            "{} is not in the cluster",
            String::from_utf8_lossy(name)
        )))
    }

    /// A transaction's puts of `name` (the token state's value, sealed with version
    /// `version`) and of the head.
    fn with_head<T: Serialize>(
        &self,
        name: &[u8],
        value: &T,
        version: u64,
    ) -> Result<Vec<TxnOp>, StoreError> {
        Ok(vec![
            TxnOp::put(
                name.to_vec(),
                self.ring()
                    .seal_versioned(name, value, version)
                    .map_err(unavailable)?,
                None,
            ),
            self.head_put()?,
        ])
    }

    fn head_put(&self) -> Result<TxnOp, StoreError> {
        let head = self.node.key(HEAD);
        let sealed = self.ring().seal(&head, &0u64).map_err(unavailable)?;
        Ok(TxnOp::put(head, sealed, None))
    }

    /// A write's transaction. Every write also compares the epoch record with the one this
    /// node last saw: during a rotation (a member removed), nothing is written under a key
    /// that is being retired; the write fails (`CKR_DEVICE_ERROR`) until this node has the
    /// new epoch's key, within a second or two.
    fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        let done = self.node.txn(txn).map_err(unavailable)?;
        self.contact();
        if !done.succeeded() {
            let name = self.node.key(EPOCH);
            let found = self.node.get(name.clone(), None).map_err(unavailable)?;
            let now = found.kvs().first().map_or(0, |kv| kv.mod_revision());
            if now != self.seen(&name) {
                return Err(StoreError::Unavailable(
                    "the cluster key is being rotated: this node writes again once it holds the new key"
                        .into(),
                ));
            }
        }
        Ok(done)
    }

    /// Compares the epoch record with the one this node last saw (see [`ClusterStore::txn`]).
    fn epoch_guard(&self) -> Compare {
        let name = self.node.key(EPOCH);
        let seen = self.seen(&name);
        Compare::mod_revision(name, CompareOp::Equal, seen)
    }

    fn revision_of(response: &etcd_client::TxnResponse) -> i64 {
        response.header().map_or(0, |h| h.revision())
    }

    /// The next object id: from the node's block, or a new block taken by compare-and-swap.
    fn next_id(&self) -> Result<u64, StoreError> {
        let mut ids = lock(&self.ids);
        if ids.0 < ids.1 {
            ids.0 += 1;
            return Ok(ids.0 - 1);
        }
        let name = self.node.key(IDS);
        for _ in 0..32 {
            let lookup = name.clone();
            let found = self.node.get(lookup, None).map_err(unavailable)?;
            let (next, revision) = match found.kvs().first() {
                Some(kv) => (
                    self.ring()
                        .open::<u64>(&name, kv.value())
                        .map_err(unavailable)?,
                    kv.mod_revision(),
                ),
                None => (1, 0),
            };
            let end = next.saturating_add(ID_BLOCK);
            let sealed = self.ring().seal(&name, &end).map_err(unavailable)?;
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(name.clone(), CompareOp::Equal, revision),
                    self.epoch_guard(),
                ])
                .and_then([TxnOp::put(name.clone(), sealed, None)]);
            if self.txn(txn)?.succeeded() {
                *ids = (next + 1, end);
                return Ok(next);
            }
        }
        Err(StoreError::Unavailable(
            "object ids: too many nodes took a block at once; try again".into(),
        ))
    }

    /// Starts the watch from the revision after `from`, on the node's runtime; its events are
    /// applied on a thread of their own (the engine's locks are not for a runtime's workers).
    fn watch(&self, from: i64) {
        let (events, receive) = std::sync::mpsc::channel::<(Vec<Event>, i64)>();
        let me = self.me.clone();
        let _ = std::thread::Builder::new()
            .name("cluster-apply".into())
            .spawn(move || {
                while let Ok((batch, revision)) = receive.recv() {
                    let Some(store) = me.upgrade() else { return };
                    store.apply(batch, revision);
                }
            });
        let prefix = self.node.key(STATE);
        let client = self.node.client();
        let me = self.me.clone();
        self.node.runtime().spawn(async move {
            let mut next = from + 1;
            loop {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(next)
                    .with_progress_notify();
                let mut stream = match client.clone().watch(prefix.clone(), Some(options)).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster watch: etcd unavailable; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                while let Ok(Some(response)) = stream.message().await {
                    if response.canceled() {
                        let Some(store) = me.upgrade() else { return };
                        let reason = format!(
                            "the watch was cancelled at revision {} (compacted: {}): restart this node to reload",
                            next,
                            response.compact_revision()
                        );
                        tracing::error!("cluster watch: {reason}");
                        lock(&store.progress).broken = Some(reason);
                        store.progressed.notify_all();
                        return;
                    }
                    // The answer to the watch's creation carries the store's revision, not the
                    // events up to it, which follow: it says nothing of progress.
                    if response.created() && response.events().is_empty() {
                        continue;
                    }
                    // Without events, a progress notice: every change up to its revision has
                    // been sent.
                    let mut newest = if response.events().is_empty() {
                        response.header().map_or(0, |h| h.revision())
                    } else {
                        0
                    };
                    let mut batch = Vec::new();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value = match event.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        };
                        newest = newest.max(kv.mod_revision());
                        batch.push((kv.key().to_vec(), value, kv.mod_revision()));
                    }
                    if newest >= next {
                        next = newest + 1;
                    }
                    if events.send((batch, newest)).is_err() {
                        return;
                    }
                }
                if me.upgrade().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Tells the engine of the changes (it applies those that [`Shared::accept`] finds newer
    /// than what it holds), then counts them as applied.
    fn apply(&self, batch: Vec<Event>, revision: i64) {
        let mut changes = Vec::new();
        for (name, value, at) in batch {
            if let Some(v) = &value {
                // Decided under the pending list's lock, which `install` holds while it
                // takes a new key: a change is either opened or handed to the next install.
                let mut pending = lock(&self.pending);
                let newer_epoch = crate::keys::epoch_of(v).is_some_and(|e| e > self.epoch());
                if newer_epoch && !self.ring().can_open(v) {
                    pending.push((name, value, at));
                    continue;
                }
            }
            match self.change_of(&name, value.as_deref()) {
                Ok(Some((change, version))) => changes.push((change, at, version)),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cluster watch: a change was refused"),
            }
        }
        if !changes.is_empty() {
            if let Some(listener) = self.listener.get() {
                listener(changes);
            }
        }
        let mut progress = lock(&self.progress);
        progress.applied = progress.applied.max(revision);
        progress.contact = Some(Instant::now());
        drop(progress);
        self.progressed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared for ClusterStore {
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let prefix = self.node.key(STATE);
        let found = self
            .node
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .map_err(unavailable)?;
        let revision = found.header().map_or(0, |h| h.revision());
        let mut snapshot = Snapshot::default();
        for kv in found.kvs() {
            self.saw(kv.key(), kv.mod_revision());
            let Some((change, version)) = self
                .change_of(kv.key(), Some(kv.value()))
                .map_err(unavailable)?
            else {
                continue;
            };
            self.saw_version(kv.key(), kv.mod_revision(), version);
            match change {
                Change::Token(id, record) => snapshot.tokens.push((id, record)),
                Change::Object { token, id, object } => snapshot.objects.push((token, id, object)),
                Change::Flags(flags) => snapshot.flags = Some(flags),
                Change::ObjectGone { .. } => {}
            }
        }
        lock(&self.progress).applied = revision;
        self.sync_epoch().map_err(unavailable)?;
        Ok(snapshot)
    }

    /// Sets the listener and starts the watch from the snapshot's revision: no change made
    /// after the snapshot is missed, none before it is told.
    fn listen(&self, listener: Listener) {
        if self.listener.set(listener).is_ok() {
            self.watch(self.applied());
        }
    }

    fn accept(&self, change: &Change, revision: i64, version: u64) -> bool {
        let name = self.node.key(&match change {
            Change::Token(token, _) => token_key(*token),
            Change::Flags(_) => FLAGS.to_string(),
            Change::Object { token, id, .. } | Change::ObjectGone { token, id } => {
                object_key(*token, *id)
            }
        });
        let mut seen = lock(&self.seen);
        let held = seen.entry(name.clone()).or_insert((0, 0));
        if held.0 >= revision {
            return false;
        }
        // A value older than the one held was put back in etcd: refused (the revision is
        // not taken either, so a write of this node over it fails rather than undoing more).
        let gone = matches!(change, Change::ObjectGone { .. });
        if !gone && version < held.1 {
            let held_version = held.1;
            drop(seen);
            put_back(&name, version, held_version);
            return false;
        }
        held.0 = revision;
        if !gone {
            held.1 = version;
        }
        true
    }

    fn put_token(&self, token: u64, record: &TokenRecord) -> Result<(), StoreError> {
        let name = self.node.key(&token_key(token));
        self.swap(&name, record)?.map_or(Ok(()), |newer| {
            Err(StoreError::Stale(token, Box::new(newer)))
        })
    }

    fn put_flags(&self, flags: u64) -> Result<(), StoreError> {
        let name = self.node.key(FLAGS);
        self.swap(&name, &flags)?
            .map_or(Ok(()), |newer| Err(StoreError::StaleFlags(newer)))
    }

    fn reset_token(&self, token: u64, record: &TokenRecord) -> Result<(), StoreError> {
        let name = self.node.key(&token_key(token));
        let version = self.version(&name) + 1;
        let mut ops = self.with_head(&name, record, version)?;
        ops.push(TxnOp::delete(
            self.node.key(&objects_of(token)),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ));
        let done = self.txn(Txn::new().when([self.epoch_guard()]).and_then(ops))?;
        self.saw_version(&name, ClusterStore::revision_of(&done), version);
        Ok(())
    }

    fn insert_object(
        &self,
        token: u64,
        request: Option<([u8; 16], u32)>,
        build: &mut dyn FnMut(u64) -> Result<StoredObject, StoreError>,
    ) -> Result<u64, StoreError> {
        let id = self.next_id()?;
        let object = build(id)?;
        let name = self.node.key(&object_key(token, id));
        let mut ops = self.with_head(&name, &object, 1)?;
        if let Some((request, place)) = request {
            let record = self.node.key(&request_key(&request, place));
            let made = Made {
                place,
                token,
                id,
                time: now(),
            };
            ops.push(TxnOp::put(
                record.clone(),
                self.ring().seal(&record, &made).map_err(unavailable)?,
                None,
            ));
        }
        let txn = Txn::new()
            .when([
                Compare::create_revision(name.clone(), CompareOp::Equal, 0),
                self.epoch_guard(),
            ])
            .and_then(ops);
        let done = self.txn(txn)?;
        if !done.succeeded() {
            return Err(StoreError::Storage(format!(
                "object id {id} of token {token} is taken: the id block was handed out twice"
            )));
        }
        self.saw_version(&name, ClusterStore::revision_of(&done), 1);
        Ok(id)
    }

    fn replace_object(&self, token: u64, id: u64, object: &StoredObject) -> Result<(), StoreError> {
        let name = self.node.key(&object_key(token, id));
        let version = self.version(&name) + 1;
        let txn = Txn::new()
            .when([
                Compare::version(name.clone(), CompareOp::Greater, 0),
                self.epoch_guard(),
            ])
            .and_then(self.with_head(&name, object, version)?);
        let done = self.txn(txn)?;
        if !done.succeeded() {
            return Err(StoreError::Gone(token, id));
        }
        self.saw_version(&name, ClusterStore::revision_of(&done), version);
        Ok(())
    }

    fn remove_object(&self, token: u64, id: u64) -> Result<(), StoreError> {
        let name = self.node.key(&object_key(token, id));
        let txn = Txn::new()
            .when([
                Compare::version(name.clone(), CompareOp::Greater, 0),
                self.epoch_guard(),
            ])
            .and_then([TxnOp::delete(name.clone(), None), self.head_put()?]);
        let done = self.txn(txn)?;
        if !done.succeeded() {
            return Err(StoreError::Gone(token, id));
        }
        self.saw(&name, ClusterStore::revision_of(&done));
        Ok(())
    }

    fn members(&self) -> Result<Vec<Member>, StoreError> {
        let found = self
            .node
            .get(
                self.node.key("members/"),
                Some(GetOptions::new().with_prefix()),
            )
            .map_err(unavailable)?;
        found
            .kvs()
            .iter()
            .map(|kv| self.ring().open(kv.key(), kv.value()).map_err(unavailable))
            .collect()
    }

    /// When etcd cannot be reached (no quorum), the node goes on serving what it holds as
    /// long as etcd answered it less than the stale limit ago (each such call logged), and
    /// refuses (`CKR_DEVICE_ERROR`) once its tokens are older than that.
    fn recall(&self, request: &[u8; 16]) -> Result<Vec<(u32, u64)>, StoreError> {
        let prefix = self.node.key(&requests_of(request));
        let found = self
            .node
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .map_err(unavailable)?;
        found
            .kvs()
            .iter()
            .map(|kv| {
                let made: Made = self
                    .ring()
                    .open(kv.key(), kv.value())
                    .map_err(unavailable)?;
                Ok((made.place, made.id))
            })
            .collect()
    }

    fn remove_member(&self, serial: &str) -> Result<(u32, tessera_store::MasterKey), StoreError> {
        let new = self.rotate(serial).map_err(|e| match e {
            ClusterError::Usage(m) => StoreError::Refused(m),
            other => StoreError::Unavailable(other.to_string()),
        })?;
        Ok((new.epoch, new.key))
    }

    fn catch_up(&self) -> Result<(), StoreError> {
        let recently_failed = lock(&self.progress)
            .failed
            .is_some_and(|at| at.elapsed() < RETRY_CATCH_UP_AFTER);
        let found = if recently_failed {
            Err(StoreError::Unavailable(
                "etcd did not answer a second ago".into(),
            ))
        } else {
            self.node
                .get(self.node.key(HEAD), None)
                .map_err(unavailable)
        };
        let found = match found {
            Ok(found) => {
                self.contact();
                found
            }
            Err(e) => {
                let mut progress = lock(&self.progress);
                if !recently_failed {
                    progress.failed = Some(Instant::now());
                }
                let age = progress.contact.map(|at| at.elapsed());
                return match age {
                    Some(age) if age < self.stale_limit => {
                        tracing::warn!(
                            age_ms = age.as_millis() as u64,
                            "etcd cannot be reached: serving this node's tokens as they were"
                        );
                        Ok(())
                    }
                    _ => Err(StoreError::Unavailable(format!(
                        "{e}; this node's tokens are older than the stale limit ({} s): refused",
                        self.stale_limit.as_secs()
                    ))),
                };
            }
        };
        let wanted = found.kvs().first().map_or(0, |kv| kv.mod_revision());
        let deadline = Instant::now() + self.catch_up_limit;
        let mut progress = lock(&self.progress);
        loop {
            if let Some(reason) = &progress.broken {
                return Err(StoreError::Unavailable(reason.clone()));
            }
            if progress.applied >= wanted && lock(&self.pending).is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "this node has applied the cluster's changes up to revision {} of {}: the watch is behind",
                    progress.applied, wanted
                )));
            }
            progress = self
                .progressed
                .wait_timeout(progress, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
