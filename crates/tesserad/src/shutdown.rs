//! Stopping the daemon: what asks for it (SIGINT, SIGTERM, or with `--exit-with-parent` the end
//! of the process that started tesserad), the notice every listener and connection watches, and
//! the wait for every connection's clean-up — calls answered, the channel closed and its end
//! recorded, sessions and logins ended, stacks scrubbed — before the last event-log entries are
//! written. The wait lasts [`DEADLINE`] at most: a connection that cannot finish (a client that
//! never reads its replies) does not keep the daemon from stopping.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How long shutdown waits for the connections to finish their clean-up.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

/// The daemon's stop: the notice, and the count of connections not yet cleaned up.
pub(crate) struct Shutdown {
    notice: Arc<watch::Sender<Signals>>,
    running: Arc<watch::Sender<usize>>,
}

/// What the daemon tells listeners and connections: that it stops, and how many times the
/// flags came to require a channel and ended the sessions opened without one. One channel for
/// both, so that a connection waiting for its next request waits for one notice, not two.
#[derive(Clone, Copy, Default)]
struct Signals {
    stopping: bool,
    clear_ended: u64,
}

/// Why [`Notice::stop_or_clear_ended`] returned.
pub(crate) enum Signal {
    /// The daemon stops.
    Stop,
    /// Sessions opened without a channel were ended: a connection without one closes.
    ClearEnded,
}

/// What listeners and connections watch: stop accepting, stop reading.
#[derive(Clone)]
pub(crate) struct Notice {
    signals: watch::Receiver<Signals>,
    /// The endings of clear sessions already seen or ignored.
    seen: u64,
}

impl Notice {
    /// Returns once the daemon stops (at once if it already does).
    pub(crate) async fn received(&mut self) {
        let _ = self.signals.wait_for(|signals| signals.stopping).await;
    }

    /// Treats the endings of clear sessions so far as seen: they were not this holder's
    /// business (a connection with a channel).
    pub(crate) fn ignore_clear_ended(&mut self) {
        self.seen = self.signals.borrow().clear_ended;
    }

    /// What has been signalled and not yet seen, without waiting: the daemon's stop, or (when
    /// `clear`) an end of clear sessions. A connection looks before each request, so that one
    /// whose requests never stop coming still notices.
    pub(crate) fn signalled(&mut self, clear: bool) -> Option<Signal> {
        let now = *self.signals.borrow_and_update();
        if now.stopping {
            return Some(Signal::Stop);
        }
        if clear && now.clear_ended != self.seen {
            self.seen = now.clear_ended;
            return Some(Signal::ClearEnded);
        }
        None
    }

    /// Returns once the daemon stops or, when `clear`, once clear sessions were ended since
    /// they were last seen or ignored. Anything else wakes it only to wait again.
    pub(crate) async fn stop_or_clear_ended(&mut self, clear: bool) -> Signal {
        loop {
            if let Some(signal) = self.signalled(clear) {
                return signal;
            }
            if self.signals.changed().await.is_err() {
                // The daemon is gone without a word: nothing more will come.
                return Signal::Stop;
            }
        }
    }
}

/// Counts the connections that run; the listeners hold one.
#[derive(Clone)]
pub(crate) struct Connections(Arc<watch::Sender<usize>>);

impl Connections {
    /// One more connection runs until the returned guard is dropped, after its clean-up.
    pub(crate) fn start(&self) -> Running {
        self.0.send_modify(|running| *running += 1);
        Running(self.0.clone())
    }
}

/// A running connection, counted until dropped.
pub(crate) struct Running(Arc<watch::Sender<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|running| *running -= 1);
    }
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        Shutdown {
            notice: Arc::new(watch::Sender::new(Signals::default())),
            running: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The notice, for a listener or a connection.
    pub(crate) fn notice(&self) -> Notice {
        let signals = self.notice.subscribe();
        let seen = signals.borrow().clear_ended;
        Notice { signals, seen }
    }

    /// What tells the connections that sessions opened without a channel were ended.
    pub(crate) fn clear_sessions_ended(&self) -> impl Fn() + Send + Sync + 'static {
        let notice = self.notice.clone();
        move || notice.send_modify(|signals| signals.clear_ended += 1)
    }

    /// The count of running connections, for a listener.
    pub(crate) fn connections(&self) -> Connections {
        Connections(self.running.clone())
    }

    /// Tells every listener to stop accepting and every connection to stop reading and clean
    /// up.
    pub(crate) fn begin(&self) {
        self.notice.send_modify(|signals| signals.stopping = true);
    }

    /// Waits until every connection has finished its clean-up, for [`DEADLINE`] at most; the
    /// number of those that had not. Call it once no listener accepts any more.
    pub(crate) async fn connections_finished(&self) -> usize {
        let mut running = self.running.subscribe();
        let none = running.wait_for(|running| *running == 0);
        if tokio::time::timeout(DEADLINE, none).await.is_ok() {
            return 0;
        }
        let left = *running.borrow();
        left
    }
}

/// Returns once the daemon is asked to stop, and logs why: SIGINT or SIGTERM, or (with
/// `parent`) the end of the process that started it.
pub(crate) async fn requested(parent: Option<u32>) {
    tokio::select! {
        _ = signal() => tracing::info!("shutting down"),
        parent = parent_gone(parent) => {
            tracing::info!(parent, "shutting down: the process that started tesserad has ended");
        }
    }
}

/// Returns once the process is no longer `parent`'s child (it ended, and the process was given
/// to another); never without a parent to watch. Checked once a second.
async fn parent_gone(parent: Option<u32>) -> u32 {
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return parent;
        }
    }
}

/// Returns on SIGTERM or SIGINT.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    match (terminate, interrupt) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
