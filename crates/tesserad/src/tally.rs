//! What the daemon's own limits refused or cut off since the last report: one `limit-reached`
//! event per limit and second at most, with the count, so that a flood never floods the log.

use std::sync::atomic::{AtomicU64, Ordering};

use tessera_hsm::Hsm;

/// The counts since the last report; the listeners and the connections count, the event
/// flusher reports (see `server`).
#[derive(Default)]
pub(crate) struct Tally {
    /// Idle connections without sessions closed (`--idle-timeout`).
    pub(crate) idle: AtomicU64,
    /// Network connections refused: the network's share is taken.
    pub(crate) network_full: AtomicU64,
    /// Connections refused: every connection is taken.
    pub(crate) all_full: AtomicU64,
    /// Frames held back: the memory for unfinished frames is taken.
    pub(crate) frame_memory: AtomicU64,
}

impl Tally {
    /// Counts one more of `counter`'s kind (`kind` names it in the metrics).
    pub(crate) fn count(counter: &AtomicU64, kind: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::limit(kind);
    }

    /// Records one `limit-reached` event per limit counted since the last report.
    pub(crate) fn report(&self, hsm: &Hsm) {
        let kinds = [
            (&self.idle, "idle connections without sessions closed (--idle-timeout)"),
            (
                &self.network_full,
                "network connections refused: the network share of the connections is taken (--max-connections, --local-connections)",
            ),
            (
                &self.all_full,
                "connections refused: every connection is taken (--max-connections)",
            ),
            (
                &self.frame_memory,
                "frames held back: the memory for unfinished frames is taken (--max-frame-memory)",
            ),
        ];
        for (counter, what) in kinds {
            let count = counter.swap(0, Ordering::Relaxed);
            if count > 0 {
                hsm.limit_event(format!("{count} {what}"));
            }
        }
    }
}
