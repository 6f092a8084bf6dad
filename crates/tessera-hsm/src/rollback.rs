//! Rollback detection: the store's generation and the event log's head, recorded after every
//! durable commit in a small sealed file outside `tessera.redb` (`device.state`, or beside the
//! device key file). A store older than the record is refused at start.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tessera_store::{Commit, EventRecord, MasterKey};

use crate::error::HsmError;

const AAD: &[u8] = b"tessera device state v1";

/// What the state file records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub generation: u64,
    pub event_sequence: u64,
    pub event_mac: Vec<u8>,
}

pub(crate) struct Witness {
    path: PathBuf,
    key: MasterKey,
    recorded: Mutex<Recorded>,
}

fn key_of(device_key: &MasterKey) -> Result<MasterKey, HsmError> {
    MasterKey::from_secret(device_key.derive(b"tessera device state v1"))
        .map_err(|_| HsmError::Options("cannot derive the state key".into()))
}

impl Witness {
    /// Reads the state file; `None` if there is none.
    pub(crate) fn read(path: &Path, device_key: &MasterKey) -> Result<Option<Recorded>, HsmError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(HsmError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let damaged = || HsmError::File {
            path: path.to_path_buf(),
            reason: "the rollback state does not authenticate under this device's key (altered, \
                     or from another device)"
                .into(),
        };
        let plain = key_of(device_key)?
            .open(AAD, &bytes)
            .map_err(|_| damaged())?;
        postcard::from_bytes(plain.expose())
            .map(Some)
            .map_err(|_| damaged())
    }

    pub(crate) fn new(
        path: PathBuf,
        device_key: &MasterKey,
        recorded: Recorded,
    ) -> Result<Witness, HsmError> {
        let witness = Witness {
            path,
            key: key_of(device_key)?,
            recorded: Mutex::new(recorded.clone()),
        };
        witness.write(&recorded)?;
        Ok(witness)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn recorded(&self) -> Recorded {
        crate::locked::lock(&self.recorded).clone()
    }

    fn write(&self, recorded: &Recorded) -> Result<(), HsmError> {
        let plain = postcard::to_stdvec(recorded).map_err(|e| HsmError::File {
            path: self.path.clone(),
            reason: format!("cannot encode the rollback state: {e}"),
        })?;
        let sealed = self.key.seal(AAD, &plain).map_err(|e| HsmError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        crate::protection::write_atomically(&self.path, &sealed)
    }

    /// Records a durable commit (called by the store after it is on disk).
    pub(crate) fn commit(&self, commit: &Commit) {
        let mut recorded = crate::locked::lock(&self.recorded);
        let mut next = recorded.clone();
        next.generation = next.generation.max(commit.generation);
        if let Some((sequence, mac)) = &commit.event_head {
            // Sequence numbers only grow (a purge continues them), so the newest head wins
            // whatever order two committing threads report in.
            if *sequence >= next.event_sequence {
                next.event_sequence = *sequence;
                next.event_mac = mac.clone();
            }
        }
        if next == *recorded {
            return;
        }
        match self.write(&next) {
            Ok(()) => *recorded = next,
            Err(e) => tracing::error!(error = %e, "cannot record the rollback state"),
        }
    }
}

/// Compares the store with what was recorded; `Err` says what shows that the store is older.
/// `Ok` says what was checked.
pub(crate) fn check(
    store_generation: u64,
    events: &[EventRecord],
    recorded: &Recorded,
    path: &Path,
) -> Result<Vec<String>, String> {
    if store_generation < recorded.generation {
        return Err(format!(
            "tessera.redb is older than the state recorded in {}: the store is at generation \
             {store_generation}, the device had written generation {} — an older copy of the \
             store file was put back (rollback)",
            path.display(),
            recorded.generation
        ));
    }
    let mut checked = vec![format!(
        "store generation {store_generation} is not older than generation {} recorded in {}",
        recorded.generation,
        path.display()
    )];
    if recorded.event_sequence > 0 {
        let newest = events.last().map_or(0, |e| e.sequence);
        let oldest = events.first().map_or(0, |e| e.sequence);
        match events
            .iter()
            .find(|e| e.sequence == recorded.event_sequence)
        {
            Some(e) if e.mac != recorded.event_mac => {
                return Err(format!(
                    "event log entry {} differs from the one recorded in {} (the log was \
                     replaced by another copy)",
                    recorded.event_sequence,
                    path.display()
                ))
            }
            Some(_) => checked.push(format!(
                "event log entry {} matches the head recorded in {}",
                recorded.event_sequence,
                path.display()
            )),
            None if recorded.event_sequence > newest => {
                return Err(format!(
                    "the event log ends at entry {newest} but entry {} was written (recorded in \
                     {}): entries were removed by putting back an older store",
                    recorded.event_sequence,
                    path.display()
                ))
            }
            None => checked.push(format!(
                "the recorded head entry {} is older than the oldest kept ({oldest})",
                recorded.event_sequence
            )),
        }
    }
    Ok(checked)
}
