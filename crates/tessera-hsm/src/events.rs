//! The device's event log: bounded, persistent, and chained with HMAC-SHA256 under a key
//! derived from the device storage key, so that an edited, removed or reordered entry is
//! detected (docs/ctconf.md, "Event log": every security event goes to a tamper-evident log).

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
    /// Sealed entries not yet written (channel openings and closings; see [`EventLog::record`]).
    pending: Mutex<Vec<EventRecord>>,
    /// Held while a batch is written, taken while `last` is held: batches reach the store in
    /// the chain's order, and a reader sees every entry sealed before it looked.
    writing: Mutex<()>,
    /// Channels opened, and closed by their clients, since the last `channel-count` entry.
    counted: Mutex<Counted>,
}

/// Channel openings and ordinary closings: counted rather than logged one by one, so that a
/// busy device's fixed-size log keeps its security events (see [`EventLog::record`]).
struct Counted {
    opened: u64,
    closed: u64,
    /// When the last `channel-count` entry was written (or the log opened).
    last: std::time::Instant,
}

/// How often at most the counts of channels become a `channel-count` entry, besides when the
/// log is read and when the daemon stops.
pub const COUNT_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether an event is one of those counted rather than logged: every channel opening, and
/// the closings its client made (the connection closed, a new channel replaced it). Closings
/// the device made (termination, tamper, integrity failure, limits) stay entries.
fn counted(role: &str, kind: &str) -> bool {
    kind == "channel-opened" || (kind == "channel-closed" && role == "Library")
}

/// Entries held before they are written anyway.
const PENDING_LIMIT: usize = 64;

fn fields(record: &EventRecord) -> Vec<u8> {
    let fields = (
        record.sequence,
        record.time,
        &record.role,
        &record.kind,
        &record.detail,
        &record.previous,
    );
    postcard::to_stdvec(&fields).expect("postcard encodes numbers, strings and bytes into a Vec")
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
            pending: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
            counted: Mutex::new(Counted {
                opened: 0,
                closed: 0,
                last: std::time::Instant::now(),
            }),
        })
    }

    fn seal(&self, mut record: EventRecord) -> EventRecord {
        record.mac = hmac::sign(&self.key, &fields(&record)).as_ref().to_vec();
        record
    }

    /// Appends an event. A failure to write is logged: the operation it describes has happened.
    ///
    /// Channels open and close at the rate of handshakes: openings, and closings by their
    /// clients, are counted (and go to the daemon's own log, at the `debug` level), and the
    /// counts become one `channel-count` entry when the log is read, when the daemon stops,
    /// and at most once per [`COUNT_PERIOD`] otherwise ([`EventLog::count_channels`]).
    /// `limit-reached` entries and the closings the device made are sealed into the chain at
    /// once but written in batches — with the next other event, when 64 are waiting, or by
    /// [`EventLog::flush`] (the daemon calls it every quarter of a second, and before the log
    /// is read or the daemon stops). A crash may lose the last of them, never the chain. Every
    /// other event (flags, tamper, integrity failures, refusals, logins, ...) is on disk, with
    /// all entries before it, when this returns.
    pub(crate) fn record(&self, store: &Store, time: u64, role: &str, kind: &str, detail: String) {
        if counted(role, kind) {
            tracing::debug!(
                role,
                kind,
                detail,
                "channel event (counted in the event log)"
            );
            let mut counts = crate::locked::lock(&self.counted);
            if kind == "channel-opened" {
                counts.opened += 1;
            } else {
                counts.closed += 1;
            }
            return;
        }
        let batched = matches!(kind, "channel-closed" | "limit-reached");
        let batch = {
            let mut last = crate::locked::lock(&self.last);
            let record = self.chain(&mut last, time, role, kind, detail);
            let mut pending = crate::locked::lock(&self.pending);
            pending.push(record);
            if batched && pending.len() < PENDING_LIMIT {
                return;
            }
            // The batch leaves with the writing turn, before another entry can be sealed.
            (std::mem::take(&mut *pending), self.writing())
        };
        self.write(store, &batch.0, !batched);
    }

    /// Appends an event durably without moving the store's generation on (the entry saying a
    /// rolled-back store was refused: the store must stay as old as it was).
    pub(crate) fn record_uncounted(
        &self,
        store: &Store,
        time: u64,
        role: &str,
        kind: &str,
        detail: String,
    ) {
        let mut last = crate::locked::lock(&self.last);
        let record = self.chain(&mut last, time, role, kind, detail);
        if let Err(e) = store.append_events_uncounted(std::slice::from_ref(&record)) {
            tracing::error!(error = %e, "cannot write the event log");
        }
    }

    /// The next entry of the chain after `last` (its sequence and MAC), sealed and logged;
    /// `last` moves on to it.
    fn chain(
        &self,
        last: &mut (u64, Vec<u8>),
        time: u64,
        role: &str,
        kind: &str,
        detail: String,
    ) -> EventRecord {
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
        *last = (record.sequence, record.mac.clone());
        record
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        crate::locked::lock(&self.writing)
    }

    /// Writes the counts of channels as one `channel-count` entry, if there are any and
    /// `always` or [`COUNT_PERIOD`] has passed since the last one.
    pub(crate) fn count_channels(&self, store: &Store, time: u64, always: bool) {
        let (opened, closed) = {
            let mut counts = crate::locked::lock(&self.counted);
            let due = always || counts.last.elapsed() >= COUNT_PERIOD;
            if !due || (counts.opened == 0 && counts.closed == 0) {
                return;
            }
            counts.last = std::time::Instant::now();
            (
                std::mem::take(&mut counts.opened),
                std::mem::take(&mut counts.closed),
            )
        };
        self.record(
            store,
            time,
            "Device",
            "channel-count",
            format!("{opened} opened, {closed} closed by their clients (unfinished handshakes included) since the last count; each is in the daemon's log at the debug level"),
        );
    }

    /// Writes the entries held back.
    pub(crate) fn flush(&self, store: &Store) {
        let _last = crate::locked::lock(&self.last);
        self.write_pending(store);
    }

    /// Writes the entries held back; the caller holds `last`.
    fn write_pending(&self, store: &Store) {
        let batch = std::mem::take(&mut *crate::locked::lock(&self.pending));
        let _writing = self.writing();
        self.write(store, &batch, false);
    }

    /// The whole log as stored, with every entry sealed so far written first, and its check
    /// ([`EventLog::verify`]); no entry is sealed meanwhile.
    pub(crate) fn read(
        &self,
        store: &Store,
    ) -> Result<(Vec<EventRecord>, Verification), StoreError> {
        let last = crate::locked::lock(&self.last);
        self.write_pending(store);
        let events = store.events()?;
        let verification = Self::check(&self.key, &events, last.0);
        Ok((events, verification))
    }

    fn write(&self, store: &Store, batch: &[EventRecord], durable: bool) {
        if let Err(e) = store.append_events(batch, self.size, durable) {
            tracing::error!(error = %e, entries = batch.len(), "cannot write the event log");
        }
    }

    /// Replaces the log with one entry saying it was purged.
    pub(crate) fn purge(&self, store: &Store, time: u64, role: &str) -> Result<(), StoreError> {
        let mut last = crate::locked::lock(&self.last);
        crate::locked::lock(&self.pending).clear();
        let _writing = self.writing();
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
    #[cfg(test)]
    pub(crate) fn verify(&self, events: &[EventRecord]) -> Verification {
        let last = crate::locked::lock(&self.last).0;
        Self::check(&self.key, events, last)
    }

    /// [`EventLog::verify`] against `last`, the sequence number this daemon last sealed.
    fn check(key: &hmac::Key, events: &[EventRecord], last: u64) -> Verification {
        let mut problem = None;
        for (index, event) in events.iter().enumerate() {
            if hmac::verify(key, &fields(event), &event.mac).is_err() {
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
            let newest = events.last().map_or(0, |e| e.sequence);
            if newest != last {
                problem = Some(format!(
                    "the log ends at entry {newest} but entry {last} was written"
                ));
            }
        }
        Verification { problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_entries_are_batched_and_a_crash_loses_only_them_never_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let key = MasterKey::generate().unwrap();
        let log = EventLog::open(&store, &key, 100).unwrap();
        log.record(&store, 1, "Administrator", "flags-changed", "a".into());
        log.record(&store, 2, "Public", "limit-reached", "b".into());
        log.record(&store, 3, "Device", "channel-closed", "c".into());
        // The channel entries wait; the first one is on disk.
        assert_eq!(store.events().unwrap().len(), 1);
        // Another kind of event writes them too, in order.
        log.record(&store, 4, "Device", "tamper", "d".into());
        let written = store.events().unwrap();
        assert_eq!(
            written.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(log.verify(&written).problem, None);
        // A flush writes what waits.
        log.record(&store, 5, "Public", "limit-reached", "e".into());
        log.flush(&store);
        assert_eq!(store.events().unwrap().len(), 5);
        // A crash with entries waiting: they are lost, the chain read back is whole.
        log.record(&store, 6, "Device", "channel-closed", "f".into());
        drop(log);
        let reopened = EventLog::open(&store, &key, 100).unwrap();
        let after = store.events().unwrap();
        assert_eq!(after.len(), 5);
        assert_eq!(reopened.verify(&after).problem, None);
        // 64 waiting entries are written without a flush.
        for i in 0..64 {
            reopened.record(&store, 10 + i, "Public", "limit-reached", String::new());
        }
        assert_eq!(store.events().unwrap().len(), 69);
    }

    #[test]
    fn channel_openings_and_client_closings_are_counted_not_logged_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let key = MasterKey::generate().unwrap();
        // A log of 100 entries, and a thousand channels.
        let log = EventLog::open(&store, &key, 100).unwrap();
        log.record(&store, 1, "Administrator", "flags-changed", "u".into());
        for i in 0..1000 {
            log.record(
                &store,
                2,
                "Library",
                "channel-opened",
                format!("channel {i}"),
            );
            log.record(
                &store,
                2,
                "Library",
                "channel-closed",
                format!("channel {i}"),
            );
        }
        // The device's own closings stay entries.
        log.record(&store, 3, "Device", "channel-closed", "terminated".into());
        // Within the period, nothing is counted into the log yet.
        log.count_channels(&store, 4, false);
        log.flush(&store);
        let kinds: Vec<String> = store
            .events()
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["flags-changed", "channel-closed"]);
        // Reading the log (or stopping) writes the counts: the first entry is still there.
        log.count_channels(&store, 5, true);
        let (events, verification) = log.read(&store).unwrap();
        assert_eq!(verification.problem, None);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].kind, "flags-changed");
        assert_eq!(events[2].kind, "channel-count");
        assert!(
            events[2].detail.starts_with("1000 opened, 1000 closed"),
            "{}",
            events[2].detail
        );
        // Nothing new: no entry.
        log.count_channels(&store, 6, true);
        assert_eq!(store.events().unwrap().len(), 3);
    }

    #[test]
    fn a_reader_sees_every_entry_sealed_before_it_looked_while_others_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let key = MasterKey::generate().unwrap();
        let log = EventLog::open(&store, &key, 10_000).unwrap();
        std::thread::scope(|scope| {
            for writer in 0..3 {
                let (log, store) = (&log, &store);
                scope.spawn(move || {
                    for i in 0..40 {
                        // Durable entries and batched ones, from several threads at once.
                        let kind = if i % 2 == 0 { "login" } else { "limit-reached" };
                        log.record(store, i, "Library", kind, format!("{writer}/{i}"));
                    }
                });
            }
            for _ in 0..40 {
                let (events, verification) = log.read(&store).unwrap();
                assert_eq!(verification.problem, None, "after {} entries", events.len());
            }
        });
        let (events, verification) = log.read(&store).unwrap();
        assert_eq!(verification.problem, None);
        assert_eq!(events.len(), 120);
    }
}
