//! The device's event log: bounded, persistent, and chained with HMAC-SHA256 under a key
//! derived from the device storage key, so that an edited, removed or reordered entry is
//! detected (brief §3: every security event goes to a tamper-evident log).

use std::sync::Mutex;

use aws_lc_rs::hmac;
use tessera_store::{EventRecord, MasterKey, Store, StoreError};

/// Entries kept by default; older ones are dropped.
pub const DEFAULT_EVENT_LOG_SIZE: u64 = 10_000;

/// What the chain check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// `None` when the chain is intact, else what is wrong.
    pub problem: Option<String>,
}

pub(crate) struct EventLog {
    key: hmac::Key,
    size: u64,
    /// (last sequence, last mac) as written by this daemon.
    last: Mutex<(u64, Vec<u8>)>,
}

fn fields(record: &EventRecord) -> Vec<u8> {
    let fields = (
        record.sequence,
        record.time,
        &record.role,
        &record.kind,
        &record.detail,
        &record.previous,
    );
    postcard::to_stdvec(&fields).unwrap_or_default()
}

impl EventLog {
    pub(crate) fn open(
        store: &Store,
        device_key: &MasterKey,
        size: u64,
    ) -> Result<EventLog, StoreError> {
        let key_bytes = device_key.derive(b"tessera event log v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes.expose());
        let last = store
            .events()?
            .last()
            .map(|e| (e.sequence, e.mac.clone()))
            .unwrap_or((0, Vec::new()));
        Ok(EventLog {
            key,
            size: size.max(1),
            last: Mutex::new(last),
        })
    }

    fn seal(&self, mut record: EventRecord) -> EventRecord {
        record.mac = hmac::sign(&self.key, &fields(&record)).as_ref().to_vec();
        record
    }

    /// Appends an event. A failure to write is logged: the operation it describes has happened.
    pub(crate) fn record(&self, store: &Store, time: u64, role: &str, kind: &str, detail: String) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.seal(EventRecord {
            sequence: last.0 + 1,
            time,
            role: role.into(),
            kind: kind.into(),
            detail,
            previous: last.1.clone(),
            mac: Vec::new(),
        });
        tracing::info!(role, kind, detail = %record.detail, "security event");
        // Channels open and close at the rate of handshakes: those entries reach the disk with
        // the next durable write instead of one disk flush each. Every other event (flags,
        // tamper, integrity failures, refusals, logins, ...) is on disk when this returns.
        let durable = !matches!(kind, "channel-opened" | "channel-closed");
        match store.append_event(&record, self.size, durable) {
            Ok(()) => *last = (record.sequence, record.mac),
            Err(e) => tracing::error!(error = %e, kind, "cannot write the event log"),
        }
    }

    /// Replaces the log with one entry saying it was purged.
    pub(crate) fn purge(&self, store: &Store, time: u64, role: &str) -> Result<(), StoreError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.seal(EventRecord {
            sequence: last.0 + 1,
            time,
            role: role.into(),
            kind: "log-purged".into(),
            detail: format!("entries up to {} removed", last.0),
            previous: last.1.clone(),
            mac: Vec::new(),
        });
        store.replace_events(std::slice::from_ref(&record))?;
        *last = (record.sequence, record.mac);
        Ok(())
    }

    /// Checks every entry's MAC, the links between entries, and that the newest entry is the
    /// one this daemon last wrote.
    pub(crate) fn verify(&self, events: &[EventRecord]) -> Verification {
        let mut problem = None;
        for (index, event) in events.iter().enumerate() {
            if hmac::verify(&self.key, &fields(event), &event.mac).is_err() {
                problem = Some(format!(
                    "entry {} was altered (its MAC does not match)",
                    event.sequence
                ));
                break;
            }
            if let Some(before) = index.checked_sub(1).and_then(|i| events.get(i)) {
                if event.sequence != before.sequence + 1 || event.previous != before.mac {
                    problem = Some(format!(
                        "entries between {} and {} are missing or out of order",
                        before.sequence, event.sequence
                    ));
                    break;
                }
            }
        }
        if problem.is_none() {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let newest = events.last().map_or(0, |e| e.sequence);
            if newest != last.0 {
                problem = Some(format!(
                    "the log ends at entry {newest} but entry {} was written",
                    last.0
                ));
            }
        }
        Verification { problem }
    }
}
