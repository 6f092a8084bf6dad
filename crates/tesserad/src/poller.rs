//! Busy polling (`--busy-poll`): after answering a request, a connection may poll for its
//! client's next one for a short window instead of sleeping at once. A sleeping daemon is woken
//! by an interrupt to an idle (halted) CPU, which on a virtual machine takes longer than a small
//! call; a polling one sees the request at once. One connection polls at a time, so polling
//! never takes both cores, and it yields the CPU to other threads between polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a connection over a Unix socket whose handshake was answered polls for the key
/// confirmation (when polling is on at all, and no other connection asks to poll meanwhile):
/// the client checks the device's signature before it answers (0.4–0.6 ms for a P-521
/// identity on a 2-core virtual machine), longer than the usual window, so without this the
/// confirmation found the daemon asleep and paid for waking it (35–40 µs a handshake there,
/// measured from the library). Over TCP a network's round trip comes on top, and the window
/// would often be spent for nothing: TCP connections keep the usual one.
pub(crate) const HANDSHAKE_WINDOW: Duration = Duration::from_millis(1);

/// What a connection waits for, which decides whether and how long it polls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Its client's next request: the usual window.
    Request,
    /// The key confirmation of the handshake it answered, over a Unix socket:
    /// [`HANDSHAKE_WINDOW`].
    Confirmation,
    /// Anything, while other local connections' handshakes wait for their confirmations: no
    /// polling, and a long poll for a confirmation under way is cut to the usual window. Their
    /// clients are checking signatures, CPU-bound; a daemon that polls stays runnable on its
    /// core behind them (the scheduler does not move a task that has just run), while the other
    /// core may have nothing to run: on a 2-core machine, 8 client threads making handshakes
    /// left the cores idle 10–14 % of the time with polling and 8 % without, and made 5–7 %
    /// more handshakes without it (docs/BENCHMARKS.md, "Handshakes under load").
    AmongHandshakes,
}

/// The polling window, and whether a connection is polling now.
pub(crate) struct Poller {
    window: Duration,
    /// [`HANDSHAKE_WINDOW`] (tests choose their own).
    confirmation_window: Duration,
    busy: AtomicBool,
    /// Another connection found the poller busy: a poll for a key confirmation gives its
    /// turn up once the usual window has passed.
    wanted: AtomicBool,
}

impl Poller {
    /// Polls for up to `window` (zero: never polls).
    pub(crate) fn new(window: Duration) -> Poller {
        Poller {
            window,
            confirmation_window: HANDSHAKE_WINDOW,
            busy: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
        }
    }

    /// Polls `future` once, then again and again (yielding between polls) for up to the window
    /// when no other connection is polling; `None` if it is still pending then: the caller waits for it
    /// (beside whatever else it waits for). What the connection waits for decides the window
    /// ([`Wait`]): a key confirmation is polled for [`HANDSHAKE_WINDOW`] if polling is on, or
    /// for the usual window once another connection has asked to poll (the long wait is spent
    /// only while the daemon has nothing else to poll for; the others' requests are served
    /// meanwhile either way, giving up saves the CPU); among other handshakes, not at all.
    pub(crate) async fn promptly_or_pending<F: std::future::Future>(
        &self,
        mut future: std::pin::Pin<&mut F>,
        wait: Wait,
    ) -> Option<F::Output> {
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(output) = polled {
            return Some(output);
        }
        if self.window.is_zero() {
            return None;
        }
        if wait == Wait::AmongHandshakes {
            // A key confirmation's long poll, begun while its handshake was alone, ends with
            // its usual window now that other handshakes have come.
            if self.busy.load(Ordering::Relaxed) {
                self.wanted.store(true, Ordering::Relaxed);
            }
            return None;
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.wanted.store(true, Ordering::Relaxed);
            return None;
        }
        self.wanted.store(false, Ordering::Relaxed);
        struct Turn<'a>(&'a AtomicBool);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _turn = Turn(&self.busy);
        let window = match wait {
            Wait::Confirmation => self.window.max(self.confirmation_window),
            _ => self.window,
        };
        let start = std::time::Instant::now();
        while start.elapsed() < window {
            if start.elapsed() >= self.window && self.wanted.load(Ordering::Relaxed) {
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A poller with a usual window of 2 ms and 1 s for a key confirmation: margins wide
    /// enough that a busy test machine does not decide the outcome.
    fn poller() -> Poller {
        Poller {
            confirmation_window: Duration::from_secs(1),
            ..Poller::new(Duration::from_millis(2))
        }
    }

    /// A future ready 150 ms after it is made (after the usual window, within the
    /// confirmation's); `on_poll` runs at each of its polls with the poll's number.
    fn ready_later(mut on_poll: impl FnMut(u32)) -> impl std::future::Future<Output = ()> {
        let due = Instant::now() + Duration::from_millis(150);
        let mut polls = 0;
        std::future::poll_fn(move |_| {
            polls += 1;
            on_poll(polls);
            match Instant::now() >= due {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            }
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    /// Polls `future` once with a waker that does nothing: its output if it was ready.
    fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    /// Another connection's request while the poller is busy: refused (it sleeps instead).
    fn refused_meanwhile(poller: &Poller) {
        let other = std::pin::pin!(std::future::pending::<()>());
        let refused = poll_once(poller.promptly_or_pending(other, Wait::Request));
        assert_eq!(refused, Some(None), "the busy poller was not refused");
    }

    /// A key confirmation that comes after the usual window but within the handshake's is
    /// taken by polling; any other request that late is left to the wait (the usual window).
    #[test]
    fn a_key_confirmation_is_polled_for_longer_than_a_request() {
        let poller = poller();
        runtime().block_on(async {
            let request = std::pin::pin!(ready_later(|_| {}));
            assert!(poller
                .promptly_or_pending(request, Wait::Request)
                .await
                .is_none());
            let confirmation = std::pin::pin!(ready_later(|_| {}));
            assert!(poller
                .promptly_or_pending(confirmation, Wait::Confirmation)
                .await
                .is_some());
        });
    }

    /// Among other handshakes a connection does not poll: a request ready at its second poll
    /// is left to the wait, and the poller is neither taken nor wished for (another connection
    /// may still poll); the same request waited for as usual is taken by polling. A
    /// confirmation's long poll under way when other handshakes come is cut short.
    #[test]
    fn among_other_handshakes_nothing_polls() {
        let poller = poller();
        runtime().block_on(async {
            for (wait, polled) in [(Wait::AmongHandshakes, false), (Wait::Request, true)] {
                let mut polls = 0;
                let request = std::pin::pin!(std::future::poll_fn(|_| {
                    polls += 1;
                    match polls >= 2 {
                        true => std::task::Poll::Ready(()),
                        false => std::task::Poll::Pending,
                    }
                }));
                let taken = poller.promptly_or_pending(request, wait).await.is_some();
                assert_eq!(taken, polled, "{wait:?}");
                if !polled {
                    assert_eq!(polls, 1, "it polled among other handshakes");
                    assert!(!poller.busy.load(Ordering::Relaxed));
                    assert!(!poller.wanted.load(Ordering::Relaxed));
                }
            }
        });
        // A confirmation's long poll under way when other handshakes come is cut to the
        // usual window: they ask for the poller as a connection refused it would.
        runtime().block_on(async {
            let confirmation = std::pin::pin!(ready_later(|poll| {
                if poll == 2 {
                    let other = std::pin::pin!(std::future::pending::<()>());
                    let asked = poll_once(poller.promptly_or_pending(other, Wait::AmongHandshakes));
                    assert_eq!(asked, Some(None));
                }
            }));
            assert!(poller
                .promptly_or_pending(confirmation, Wait::Confirmation)
                .await
                .is_none());
        });
    }

    /// Another connection that asks for the poller (and is refused: it is busy) ends a
    /// confirmation's long poll once the usual window has passed: the confirmation, 150 ms
    /// later, is then left to the wait. The wish ends with that turn: the next confirmation
    /// polls long again. With polling off nothing polls, whatever it waits for.
    #[test]
    fn a_confirmation_gives_the_poller_up_to_other_connections() {
        let poller = poller();
        runtime().block_on(async {
            let confirmation = std::pin::pin!(ready_later(|poll| {
                if poll == 2 {
                    refused_meanwhile(&poller);
                }
            }));
            assert!(poller
                .promptly_or_pending(confirmation, Wait::Confirmation)
                .await
                .is_none());
            assert!(!poller.busy.load(Ordering::Relaxed));
            let next = std::pin::pin!(ready_later(|_| {}));
            assert!(
                poller
                    .promptly_or_pending(next, Wait::Confirmation)
                    .await
                    .is_some(),
                "an old wish cut a later confirmation's poll short"
            );
        });
        let off = Poller {
            confirmation_window: Duration::from_secs(1),
            ..Poller::new(Duration::ZERO)
        };
        runtime().block_on(async {
            let confirmation = std::pin::pin!(ready_later(|_| {}));
            assert!(off
                .promptly_or_pending(confirmation, Wait::Confirmation)
                .await
                .is_none());
        });
    }
}
