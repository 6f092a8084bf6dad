//! The embedded token store: one `redb` file per device holding the device record, one record
//! per token (label, flags, PIN records) and the token objects.
//!
//! Every change is one write transaction that is durable when it returns, so an object whose
//! creation returned `CKR_OK` survives a `kill -9`, and a half-written object is never visible.
//! Secret attributes are sealed by the HSM engine with [`MasterKey`] before they get here: the
//! store never sees key material in the clear.
#![forbid(unsafe_code)]

pub mod agreement;
mod records;
mod seal;
pub mod shared;

pub use records::{DeviceRecord, EventRecord, PinRecord, StoredObject, TokenRecord};
pub use seal::{pepper_record, HeldKey, MasterKey, Seal, SealError, DEFAULT_KDF_ITERATIONS};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("tokens");
const OBJECTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEVICE_KEY: &str = "device";
const NEXT_ID_KEY: &str = "next_object_id";
const GENERATION_KEY: &str = "generation";
/// The `meta` record holding the store format (absent in format 1).
pub const FORMAT_KEY: &str = "format";
/// The store format this code writes: 2 peppers PIN records (see [`MasterKey::wrap_peppered`])
/// and keeps a generation counter.
pub const FORMAT: u32 = 2;

/// A durable commit, as told to the witness (see [`Store::set_witness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The store's generation after the commit: one more per durable write.
    pub generation: u64,
    /// The newest event entry the commit wrote (sequence, MAC), if it wrote events.
    pub event_head: Option<(u64, Vec<u8>)>,
}

/// Told of every durable commit, after it is on disk.
pub type Witness = Box<dyn Fn(&Commit) + Send + Sync>;

/// Why the store failed. These are ours (or the disk's), never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened (held by another process, unreadable, ...).
    #[error("cannot open the token store {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A storage operation failed.
    #[error("token store: {0}")]
    Storage(String),
    /// The disk is full, or the store file may not grow (`ENOSPC`, `EFBIG`).
    #[error("token store: no room to write: {0}")]
    Full(String),
    /// A stored record does not decode: the file is damaged or from an incompatible version.
    #[error("token store record {0} is damaged or from an incompatible version")]
    Corrupt(String),
    /// A record could not be encoded: nothing was written (an empty record would read back as
    /// damaged).
    #[error("token store: a record could not be encoded ({0}); nothing was written")]
    Encode(String),
    /// A shared token record was changed by another device since this one read it: the newer
    /// record (nothing was written).
    #[error("token {0}: changed by another device meanwhile; nothing was written")]
    Stale(u64, Box<TokenRecord>),
    /// The shared security flags were changed by another device since this one read them:
    /// the newer flags (nothing was written).
    #[error("the security flags were changed by another device meanwhile; nothing was written")]
    StaleFlags(u64),
    /// A shared object was destroyed by another device meanwhile.
    #[error("object {1} of token {0}: destroyed by another device meanwhile")]
    Gone(u64, u64),
    /// The shared store refused the request as asked (an argument that names nothing there):
    /// nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The shared store cannot commit now (a cluster without quorum): nothing was written.
    #[error("the cluster store cannot commit now: {0}")]
    Unavailable(String),
}

fn storage(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let full = match &e {
        redb::Error::Io(io) => matches!(io.raw_os_error(), Some(ENOSPC | EFBIG)),
        _ => false,
    };
    if full {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Storage(e.to_string())
    }
}

/// `errno` values of a full disk and of a file that may not grow (Linux).
const ENOSPC: i32 = 28;
const EFBIG: i32 = 27;

/// How long the store's commits took (every write transaction, durable or not), for the
/// daemon's metrics.
pub static COMMITS: tessera_core::histogram::Histogram = tessera_core::histogram::Histogram::new();

/// An open token store.
///
/// After a failed write (a full disk, an I/O error) redb refuses every later operation until
/// the database is opened again; the store then reopens it at its next use, so writes work
/// again as soon as there is room, without a daemon restart. The failed write itself changed
/// nothing.
pub struct Store {
    db: RwLock<Option<Database>>,
    path: PathBuf,
    reopen: AtomicBool,
    witness: std::sync::OnceLock<Witness>,
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl Store {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_database(path)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(META).map_err(storage)?;
            txn.open_table(TOKENS).map_err(storage)?;
            txn.open_table(OBJECTS).map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            reopen: AtomicBool::new(false),
            witness: std::sync::OnceLock::new(),
        })
    }

    /// Sets the function told of every later durable commit (the engine records the
    /// generation outside the store, to detect a rollback). Set once.
    pub fn set_witness(&self, witness: Witness) {
        let _ = self.witness.set(witness);
    }

    /// The store's generation: the number of durable writes since format 2 began counting.
    pub fn generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta(GENERATION_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// The store format (1 when the record is absent: a store from before format 2).
    pub fn format(&self) -> Result<u32, StoreError> {
        Ok(self
            .meta(FORMAT_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map_or(1, u32::from_le_bytes))
    }

    /// Writes token records, replaces objects and sets the format, in one transaction (the
    /// migration of an older store).
    pub fn migrate(
        &self,
        put: &[(u64, &TokenRecord)],
        objects: &[(u64, u64, &StoredObject)],
        format: u32,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut tokens = txn.open_table(TOKENS)?;
            for (token, record) in put {
                tokens.insert(*token, encode(*record)?.as_slice())?;
            }
            let mut table = txn.open_table(OBJECTS)?;
            for (token, id, object) in objects {
                table.insert((*token, *id), encode(*object)?.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(FORMAT_KEY, format.to_le_bytes().as_slice())?;
            Ok(())
        })
    }

    /// Replaces objects in one transaction (secrets sealed again).
    pub fn replace_objects(&self, objects: &[(u64, u64, &StoredObject)]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(OBJECTS)?;
            for (token, id, object) in objects {
                table.insert((*token, *id), encode(*object)?.as_slice())?;
            }
            Ok(())
        })
    }

    /// Opens the database again if a failed write left it unusable.
    fn recover(&self) -> Result<(), StoreError> {
        if !self.reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if !self.reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        // The old handle must be gone (it holds the file lock) before the file is opened again.
        db.take();
        *db = Some(open_database(&self.path)?);
        self.reopen.store(false, Ordering::Release);
        Ok(())
    }

    fn with_database<T>(
        &self,
        use_it: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.recover()?;
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db
            .as_ref()
            .ok_or_else(|| StoreError::Storage("the token store could not be reopened".into()))?;
        use_it(db)
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.with_database(|db| db.begin_read().map_err(storage))
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.with_database(|db| db.begin_write().map_err(storage))
    }

    /// The device record, if the device was created.
    pub fn device(&self) -> Result<Option<DeviceRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(META).map_err(storage)?;
        let value = table.get(DEVICE_KEY).map_err(storage)?;
        value.map(|v| decode(v.value(), "device")).transpose()
    }

    /// Removes a named record of the `meta` table (nothing if there is none).
    pub fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            meta.remove(key)?;
            Ok(())
        })
    }

    /// A named record of the `meta` table (e.g. the device identity), if written.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(META).map_err(storage)?;
        let value = table.get(key).map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Writes a named record of the `meta` table.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(META)?;
            table.insert(key, value)?;
            Ok(())
        })
    }

    /// Writes the device record.
    pub fn put_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(META)?;
            table.insert(DEVICE_KEY, encode(device)?.as_slice())?;
            Ok(())
        })
    }

    /// Every token record, by token id.
    pub fn tokens(&self) -> Result<Vec<(u64, TokenRecord)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TOKENS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (token, value) = entry.map_err(storage)?;
            let token = token.value();
            out.push((token, decode(value.value(), &format!("token {token}"))?));
        }
        Ok(out)
    }

    /// Writes a token record.
    pub fn put_token(&self, token_id: u64, token: &TokenRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(TOKENS)?;
            table.insert(token_id, encode(token)?.as_slice())?;
            Ok(())
        })
    }

    /// Replaces a token record and erases all its objects, in one transaction (token init).
    pub fn reset_token(&self, token_id: u64, token: &TokenRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut tokens = txn.open_table(TOKENS)?;
            tokens.insert(token_id, encode(token)?.as_slice())?;
            let mut objects = txn.open_table(OBJECTS)?;
            objects.retain_in((token_id, 0)..=(token_id, u64::MAX), |_, _| false)?;
            Ok(())
        })
    }

    /// Every object of a token, by id.
    pub fn objects(&self, token: u64) -> Result<Vec<(u64, StoredObject)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(OBJECTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table
            .range((token, 0)..=(token, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let (_, id) = key.value();
            out.push((id, decode(value.value(), &format!("object {id}"))?));
        }
        Ok(out)
    }

    /// Allocates an object id and stores the object that `build` makes for it, in one
    /// transaction. `build` seals secrets with the id as associated data.
    pub fn insert_object(
        &self,
        token_id: u64,
        build: impl FnOnce(u64) -> Result<StoredObject, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut build = Some(build);
        let ids = self.insert_objects(token_id, 1, |_, id| match build.take() {
            Some(build) => build(id),
            None => Err(StoreError::Storage("object builder used twice".into())),
        })?;
        ids.first()
            .copied()
            .ok_or_else(|| StoreError::Storage("no id allocated".into()))
    }

    /// Allocates ids for `count` objects and stores what `build` makes for each (its place in
    /// the list and its id), all in one transaction: all of them are stored, or none (a
    /// restore).
    pub fn insert_objects(
        &self,
        token_id: u64,
        count: usize,
        mut build: impl FnMut(usize, u64) -> Result<StoredObject, StoreError>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut allocated = Vec::with_capacity(count);
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let first = match meta.get(NEXT_ID_KEY)? {
                Some(v) => <[u8; 8]>::try_from(v.value())
                    .map(u64::from_le_bytes)
                    .unwrap_or(1),
                None => 1,
            };
            let next = first.saturating_add(count as u64);
            meta.insert(NEXT_ID_KEY, next.to_le_bytes().as_slice())?;
            let mut objects = txn.open_table(OBJECTS)?;
            for place in 0..count {
                let id = first + place as u64;
                let object = build(place, id)?;
                objects.insert((token_id, id), encode(&object)?.as_slice())?;
                allocated.push(id);
            }
            Ok(())
        })?;
        Ok(allocated)
    }

    /// Replaces an existing object.
    pub fn replace_object(
        &self,
        token_id: u64,
        id: u64,
        object: &StoredObject,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut objects = txn.open_table(OBJECTS)?;
            objects.insert((token_id, id), encode(object)?.as_slice())?;
            Ok(())
        })
    }

    /// Removes an object.
    pub fn remove_object(&self, token_id: u64, id: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut objects = txn.open_table(OBJECTS)?;
            objects.remove((token_id, id))?;
            Ok(())
        })
    }

    /// Changes the device record and tokens in one transaction: `put` writes token records,
    /// `erase` deletes the objects of tokens, `remove` deletes token records (slot changes,
    /// tamper).
    pub fn update_device(
        &self,
        device: &DeviceRecord,
        put: &[(u64, &TokenRecord)],
        erase: &[u64],
        remove: &[u64],
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            meta.insert(DEVICE_KEY, encode(device)?.as_slice())?;
            let mut tokens = txn.open_table(TOKENS)?;
            for (token, record) in put {
                tokens.insert(*token, encode(*record)?.as_slice())?;
            }
            for token in remove {
                tokens.remove(*token)?;
            }
            let mut objects = txn.open_table(OBJECTS)?;
            for token in erase.iter().chain(remove) {
                objects.retain_in((*token, 0)..=(*token, u64::MAX), |_, _| false)?;
            }
            Ok(())
        })
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (sequence, value) = entry.map_err(storage)?;
            out.push(decode(
                value.value(),
                &format!("event {}", sequence.value()),
            )?);
        }
        Ok(out)
    }

    /// Appends an event and drops the oldest ones beyond `keep`, in one transaction.
    ///
    /// A `durable` entry is on disk when this returns; one that is not is written with the
    /// next durable change (a crash may lose it, and only it: the chain stays whole).
    pub fn append_event(
        &self,
        event: &EventRecord,
        keep: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        self.append_events(std::slice::from_ref(event), keep, durable)
    }

    /// Appends events (in sequence order) in one write; see [`Store::append_event`].
    pub fn append_events(
        &self,
        events: &[EventRecord],
        keep: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let Some(newest) = events.last().map(|e| e.sequence) else {
            return Ok(());
        };
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::Eventual
        };
        let head = events.last().map(|e| (e.sequence, e.mac.clone()));
        self.write_inner(durability, durable, head, |txn| {
            let mut table = txn.open_table(EVENTS)?;
            for event in events {
                table.insert(event.sequence, encode(event)?.as_slice())?;
            }
            let oldest_kept = newest.saturating_add(1).saturating_sub(keep.max(1));
            table.retain_in(0..oldest_kept, |_, _| false)?;
            Ok(())
        })
    }

    /// Appends events durably without counting a generation and without telling the witness:
    /// for the entry that says a rolled-back store was refused (the store stays as old as it
    /// was, so it is refused again).
    pub fn append_events_uncounted(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        self.write_inner(redb::Durability::Immediate, false, None, |txn| {
            let mut table = txn.open_table(EVENTS)?;
            for event in events {
                table.insert(event.sequence, encode(event)?.as_slice())?;
            }
            Ok(())
        })
    }

    /// Replaces the whole event log (a purge leaves its own entry behind).
    pub fn replace_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let head = events.last().map(|e| (e.sequence, e.mac.clone()));
        self.write_inner(redb::Durability::Immediate, true, head, |txn| {
            let mut table = txn.open_table(EVENTS)?;
            table.retain(|_, _| false)?;
            for event in events {
                table.insert(event.sequence, encode(event)?.as_slice())?;
            }
            Ok(())
        })
    }

    fn write(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), WriteError>,
    ) -> Result<(), StoreError> {
        self.write_inner(redb::Durability::Immediate, true, None, change)
    }

    /// A write transaction. A `counted` one (always durable) adds one to the generation and
    /// tells the witness once it is on disk.
    fn write_inner(
        &self,
        durability: redb::Durability,
        counted: bool,
        event_head: Option<(u64, Vec<u8>)>,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), WriteError>,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin_write()?;
        txn.set_durability(durability);
        let mut generation = 0;
        // An error drops the transaction, which aborts it: nothing half-written is visible.
        let result = change(&txn)
            .and_then(|()| {
                if counted {
                    let mut meta = txn.open_table(META)?;
                    let current = meta
                        .get(GENERATION_KEY)?
                        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                        .map_or(0, u64::from_le_bytes);
                    generation = current.saturating_add(1);
                    meta.insert(GENERATION_KEY, generation.to_le_bytes().as_slice())?;
                }
                Ok(())
            })
            .map_err(|e| e.0)
            .and_then(|()| {
                let started = std::time::Instant::now();
                let committed = txn.commit().map_err(storage);
                COMMITS.record(started.elapsed());
                committed
            });
        if let Err(StoreError::Full(_) | StoreError::Storage(_)) = &result {
            // redb refuses everything after an I/O error until it is opened again.
            self.reopen.store(true, Ordering::Release);
        }
        if result.is_ok() && counted {
            if let Some(witness) = self.witness.get() {
                witness(&Commit {
                    generation,
                    event_head,
                });
            }
        }
        result
    }
}

/// Any error inside a write transaction.
struct WriteError(StoreError);

impl<E: Into<redb::Error>> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError(storage(e.into()))
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError(e)
    }
}

/// A record's stored bytes (postcard), as this store writes them (a shared store writes the
/// same bytes, sealed).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Encode(e.to_string()))
}

/// A record from its stored bytes; `what` names it in the error.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(what.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{Attribute, Template};

    fn object(label: &str) -> StoredObject {
        StoredObject {
            public: Template(vec![Attribute::bytes(
                tessera_core::ck::CKA_LABEL,
                label.as_bytes(),
            )]),
            sealed: None,
        }
    }

    /// A value postcard cannot encode (a sequence of unknown length) is an error, not an
    /// empty record.
    #[test]
    fn a_record_that_does_not_encode_is_an_error_not_an_empty_record() {
        struct UnknownLength;
        impl serde::Serialize for UnknownLength {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq((0u8..3).filter(|n| n % 2 == 0))
            }
        }
        assert!(matches!(encode(&UnknownLength), Err(StoreError::Encode(_))));
        assert_eq!(encode(&Vec::from([1u8, 2])).unwrap(), vec![2, 1, 2]);
    }

    #[test]
    fn objects_persist_across_reopen_and_reset_erases_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            let a = store.insert_object(0, |_| Ok(object("a"))).unwrap();
            let b = store.insert_object(1, |_| Ok(object("b"))).unwrap();
            assert_ne!(a, b);
            store.put_token(0, &TokenRecord::default()).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.objects(0).unwrap().len(), 1);
        assert_eq!(store.tokens().unwrap().len(), 1);
        store.reset_token(0, &TokenRecord::default()).unwrap();
        assert!(store.objects(0).unwrap().is_empty());
        assert_eq!(store.objects(1).unwrap().len(), 1);
    }

    #[test]
    fn the_event_log_is_bounded_and_update_device_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        for sequence in 1..=10 {
            let event = EventRecord {
                sequence,
                time: 0,
                role: "Device".into(),
                kind: "test".into(),
                detail: String::new(),
                previous: vec![],
                mac: vec![],
            };
            store.append_event(&event, 4, true).unwrap();
        }
        let kept: Vec<u64> = store.events().unwrap().iter().map(|e| e.sequence).collect();
        assert_eq!(kept, vec![7, 8, 9, 10]);
        store.insert_object(5, |_| Ok(object("gone"))).unwrap();
        store.insert_object(6, |_| Ok(object("stays"))).unwrap();
        let device = DeviceRecord {
            serial: "1".into(),
            model: "m".into(),
            created: 0,
            user_tokens: vec![6],
            admin_token: 7,
            next_token: 8,
            flags: 0,
            transport_mode: 0,
            clock_offset: 0,
        };
        store
            .update_device(&device, &[(6, &TokenRecord::default())], &[], &[5])
            .unwrap();
        assert!(store.objects(5).unwrap().is_empty());
        assert_eq!(store.objects(6).unwrap().len(), 1);
        assert_eq!(store.device().unwrap(), Some(device));
    }

    #[test]
    fn a_failed_builder_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let failed = store.insert_object(0, |_| Err(StoreError::Storage("no".into())));
        assert!(failed.is_err());
        assert!(store.objects(0).unwrap().is_empty());
        let id = store.insert_object(0, |_| Ok(object("x"))).unwrap();
        assert_eq!(id, 1, "the aborted transaction did not consume an id");
    }
}
