//! Busy polling (`--busy-poll`): after answering a request, a connection may poll for its
//! client's next one for a short window instead of sleeping at once. A sleeping daemon is woken
//! by an interrupt to an idle (halted) CPU, which on a virtual machine takes longer than a small
//! call; a polling one sees the request at once. One connection polls at a time, so polling
//! never takes both cores, and it yields the CPU to other threads between polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The polling window, and whether a connection is polling now.
pub(crate) struct Poller {
    window: Duration,
    busy: AtomicBool,
}

impl Poller {
    /// Polls for up to `window` (zero: never polls).
    pub(crate) fn new(window: Duration) -> Poller {
        Poller {
            window,
            busy: AtomicBool::new(false),
        }
    }

    /// Polls `future` once, then again and again (yielding between polls) for up to the window
    /// when no other connection is polling; `None` if it is still pending then: the caller waits for it
    /// (beside whatever else it waits for).
    pub(crate) async fn promptly_or_pending<F: std::future::Future>(
        &self,
        mut future: std::pin::Pin<&mut F>,
    ) -> Option<F::Output> {
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(output) = polled {
            return Some(output);
        }
        if self.window.is_zero()
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        struct Turn<'a>(&'a AtomicBool);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _turn = Turn(&self.busy);
        let start = std::time::Instant::now();
        while start.elapsed() < self.window {
            // Other threads of this CPU first, then the runtime's other tasks and its I/O
            // readiness (a yielded task runs again after the runtime polls for events).
            std::thread::yield_now();
            tokio::task::yield_now().await;
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
            if let std::task::Poll::Ready(output) = polled {
                return Some(output);
            }
            // The last reply has had its turn to be written: the time its client takes to
            // send the next request pays for the scrub that reply's call owes.
            crate::dispatch::pay_scrub();
        }
        None
    }
}
