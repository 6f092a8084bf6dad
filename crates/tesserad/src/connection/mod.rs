//! One connection: its frames read in order ([`frame`]), its requests run concurrently (up to
//! [`IN_FLIGHT`], placed by [`crate::dispatch`]), its replies written as they are ready
//! ([`outbox`]), and its clean-up once it ends — calls still running answered, the channel
//! closed, the client's sessions and logins ended, the thread's stack scrubbed.
//!
//! Each reply carries its request's id. Inside a channel, records are opened in the order they
//! arrive and replies sealed in the order they are written, which is all the record layer
//! needs. A handshake or a key rollover waits until nothing else runs on the connection.

pub(crate) mod frame;
pub(crate) mod outbox;

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_hsm::Hsm;
use tessera_wire::{
    encode_response, find_sealed, Call, Inner, Message, Reply, Response, ResponseEnvelope,
    SealedFrame, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use zeroize::Zeroize;

use crate::dispatch::{self, off_thread, on_channel, Job, SMALL};
use crate::guard::Guard;
use crate::poller::{Poller, Wait};
use crate::secure::{self, KeyLimits, Secure};
use crate::shutdown::{Notice, Signal};
use crate::tally::Tally;
use frame::{read_frame, Body, FrameMemory, IdleClock, Read, WipingReader};
use outbox::{respond, respond_sealed, spawn_writer, Outbox, Outgoing};

/// Requests of one connection that may run at once; the connection's next request waits for
/// one of them to be answered (and written), which also bounds the replies queued for a client
/// that does not read.
const IN_FLIGHT: u32 = 32;

/// The slot of a request that ran alone, once its reply is queued: one of the slots it took
/// is kept until the reply is written, the others go back at once. Nothing else ran while it
/// did, and the outbox writes in queue order, so the next request may run now: the library's
/// first request behind its key confirmation is answered in the same write as the
/// confirmation, not one write (and one wake-up of the library) later.
fn done_alone(mut slot: OwnedSemaphorePermit) -> OwnedSemaphorePermit {
    drop(slot.split(slot.num_permits().saturating_sub(1)));
    slot
}

/// What every connection shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) hsm: Arc<Hsm>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) key_limits: KeyLimits,
    pub(crate) frame_timeout: Duration,
    pub(crate) poller: Arc<Poller>,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_frame_len: usize,
    pub(crate) frames: Arc<FrameMemory>,
    pub(crate) tally: Arc<Tally>,
}

/// Serves one connection until its client closes it, it fails, idles out, or the daemon
/// stops; then cleans up (see the module's documentation).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: String,
    ip: Option<IpAddr>,
    shared: Shared,
    stop: Notice,
) {
    let mut connection = Connection::new(stream, peer, ip, shared, stop);
    let _open = crate::metrics::connection();
    while let Some(body) = connection.next_frame().await {
        let Some((id, request)) = connection.read_request(body).await else {
            break;
        };
        if connection.handle(id, request).await.is_break() {
            break;
        }
    }
    connection.close().await;
}

/// A request as read: a sealed record found in its frame, or a decoded envelope's message.
enum Incoming {
    Sealed(SealedFrame, Vec<u8>),
    Decoded(Message),
}

/// What to do with a request: a step of a handshake, a call in the clear, or what a record
/// held (or why it could not be opened).
enum Next {
    Handshake(Box<tessera_channel::ClientHello>),
    Finish(tessera_channel::ClientFinished),
    Clear(Call),
    Opened(Result<(Inner, u64), u64>),
}

/// One connection's state.
struct Connection<S> {
    hsm: Arc<Hsm>,
    guard: Arc<Guard>,
    frame_timeout: Duration,
    poller: Arc<Poller>,
    idle_timeout: Duration,
    /// `--idle-timeout`, `None` when it is zero (no limit).
    idle: Option<IdleClock>,
    max_frame_len: usize,
    frames: Arc<FrameMemory>,
    tally: Arc<Tally>,
    stop: Notice,
    /// The engine's client id of the requests in the clear.
    client: u64,
    /// How the peer is named in the logs and `ctconf --channels`.
    peer: String,
    /// The peer's network address (`None`: a local socket), for the per-address limits.
    ip: Option<IpAddr>,
    /// Set when the flags came to require a channel while this connection had none: it closes
    /// once what runs has answered, with a notice the library reads before it would send a PIN.
    notice: bool,
    secure: Arc<Mutex<Secure>>,
    /// Buffered: a frame usually arrives whole, and is then taken in one read.
    reader: WipingReader<ReadHalf<S>>,
    out: Outbox,
    /// The writer task, which ends once every sender of `out` is gone.
    writing: JoinHandle<()>,
    /// One permit per request that may run ([`IN_FLIGHT`]); a reply gives its own back once
    /// written.
    slots: Arc<Semaphore>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    fn new(stream: S, peer: String, ip: Option<IpAddr>, shared: Shared, mut stop: Notice) -> Self {
        // Sessions ended before this connection came are none of its business.
        stop.ignore_clear_ended();
        let Shared {
            hsm,
            guard,
            key_limits,
            frame_timeout,
            poller,
            idle_timeout,
            max_frame_len,
            frames,
            tally,
        } = shared;
        let client = hsm.connect();
        let secure = Arc::new(Mutex::new(Secure::new(
            hsm.clone(),
            peer.clone(),
            key_limits,
            ip.is_none_or(|ip| ip.is_loopback()),
        )));
        let (reader, writer) = tokio::io::split(stream);
        let (out, writing) = spawn_writer(writer, client);
        tracing::debug!(client, peer, "client connected");
        Connection {
            hsm,
            guard,
            frame_timeout,
            poller,
            idle_timeout,
            idle: (!idle_timeout.is_zero()).then(|| IdleClock::new(idle_timeout)),
            max_frame_len,
            frames,
            tally,
            stop,
            client,
            peer,
            ip,
            notice: false,
            secure,
            reader: WipingReader::new(reader),
            out,
            writing,
            slots: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
        }
    }

    /// The next frame; `None` when the connection is to end: its client closed it or sent a
    /// bad frame, it idled out without sessions, a handshake was not finished in time, the
    /// daemon stops, or (for a connection without a channel) the flags came to require one.
    async fn next_frame(&mut self) -> Option<Body> {
        let (client, peer) = (self.client, self.peer.as_str());
        loop {
            // An answered handshake must be finished in time; only a connection without a
            // channel listens for the end of clear sessions: it closes then, so a read cut
            // short here is never resumed.
            let (pending, clear, local) = {
                let secure = secure::lock(&self.secure);
                let pending = secure.is_pending();
                let clear = !pending && secure.channel_id().is_none();
                (pending, clear, secure.is_local())
            };
            let (reader, frames) = (&mut self.reader, &*self.frames);
            let (timeout, idle, max_len) =
                (self.frame_timeout, self.idle.as_mut(), self.max_frame_len);
            let next = async {
                if pending {
                    tokio::time::timeout(
                        timeout,
                        read_frame(reader, timeout, None, max_len, frames),
                    )
                    .await
                    .ok()
                } else {
                    Some(read_frame(reader, timeout, idle, max_len, frames).await)
                }
            };
            if !clear {
                // An ending seen while the connection has a channel is not this connection's
                // business (its channel was ended on its own): it must not fire once it has
                // none.
                self.stop.ignore_clear_ended();
            }
            // The signals are looked at before every request, not only while waiting for one:
            // a connection whose next request is always there already still stops with the
            // daemon, and a clear one still gets its notice. The next request usually comes
            // within the polling window (or is there already): taken then without setting up
            // the wait for the signals, which a request that comes later waits beside.
            let mut next = std::pin::pin!(next);
            // Among other local connections' handshakes (more than this one's own) the daemon
            // does not poll: their clients are busy checking signatures on this machine's
            // cores, which are better left to the scheduler (`poller::Wait::AmongHandshakes`).
            let own = usize::from(pending && local);
            let wait = match secure::local_handshakes_underway() > own {
                true => Wait::AmongHandshakes,
                false if pending && self.ip.is_none() => Wait::Confirmation,
                false => Wait::Request,
            };
            let frame = match self.stop.signalled(clear) {
                Some(signal) => Err(signal),
                None => match self.poller.promptly_or_pending(next.as_mut(), wait).await {
                    Some(frame) => Ok(frame),
                    None => tokio::select! {
                        frame = next => Ok(frame),
                        signal = self.stop.stop_or_clear_ended(clear) => Err(signal),
                    },
                },
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(signal) => {
                    if matches!(signal, Signal::ClearEnded) {
                        self.notice = true;
                    }
                    return None;
                }
            };
            match frame {
                Some(Ok(Read::Frame(body))) => return Some(body),
                Some(Ok(Read::Closed)) => return None,
                Some(Ok(Read::Idle)) => {
                    // Kept while it has sessions (its own or its channel's) or calls running.
                    let channel_client = secure::lock(&self.secure).channel_client();
                    let busy = self.slots.available_permits() < IN_FLIGHT as usize
                        || self.hsm.has_sessions(client)
                        || channel_client.is_some_and(|c| self.hsm.has_sessions(c));
                    if busy {
                        tracing::debug!(
                            client,
                            peer,
                            "idle, kept: it has sessions or calls running"
                        );
                        continue;
                    }
                    Tally::count(&self.tally.idle, "idle-timeout");
                    tracing::debug!(
                        client,
                        peer,
                        "closing connection: idle without sessions for {} s (--idle-timeout)",
                        self.idle_timeout.as_secs_f32()
                    );
                    return None;
                }
                Some(Err(e)) => {
                    tracing::warn!(client, peer, reason = %e, "closing connection");
                    return None;
                }
                None => {
                    tracing::debug!(
                        client,
                        peer,
                        "closing connection: handshake not finished in time"
                    );
                    return None;
                }
            }
        }
    }

    /// The request in a frame, with its id: a sealed request is found where it lies in the
    /// frame, anything else is decoded. `None` (logged) when it cannot be decoded.
    async fn read_request(&mut self, body: Body) -> Option<(u64, Incoming)> {
        let (mut spent, decoded) = match body {
            Body::Sealed(sealed, record) => {
                return Some((sealed.id, Incoming::Sealed(sealed, record)))
            }
            Body::Whole(body) => {
                if let Some(sealed) = find_sealed(&body) {
                    return Some((sealed.id, Incoming::Sealed(sealed, body)));
                }
                let (body, decoded) = dispatch::decode(body).await;
                ([body, Vec::new()], decoded)
            }
            // The data becomes the call's as it is; its head and what follows it are decoded.
            Body::Call {
                head,
                payload,
                tail,
            } => dispatch::decode_split(head, payload, tail).await,
        };
        // A PIN or key value sent in the clear: the frame and what the read buffer still holds
        // of it are wiped now (the decoded request wipes itself).
        if decoded
            .as_ref()
            .map_or(true, |envelope| envelope.message.carries_secret())
        {
            spent.iter_mut().for_each(|part| part.zeroize());
            self.reader.wipe_consumed();
        }
        match decoded {
            Ok(envelope) => Some((envelope.id, Incoming::Decoded(envelope.message))),
            Err(e) => {
                let (client, peer) = (self.client, self.peer.as_str());
                tracing::warn!(client, peer, reason = %e, "closing connection");
                None
            }
        }
    }

    /// Runs one request, or starts it (its reply is queued when it is done); `Break` when the
    /// connection is to end.
    async fn handle(&mut self, id: u64, request: Incoming) -> ControlFlow<()> {
        // What an earlier call on this thread left on its stack goes before this one is served.
        crate::dispatch::pay_scrub();
        let handling = crate::dispatch::Handling::enter();
        let (hsm, guard, ip, out, secure) =
            (&self.hsm, &self.guard, self.ip, &self.out, &self.secure);
        // A slot for this request: one, or all of them for what must run alone.
        let alone = matches!(
            request,
            Incoming::Decoded(Message::Handshake(_) | Message::HandshakeFinish(_))
        );
        let wanted = if alone { IN_FLIGHT } else { 1 };
        let Ok(slot) = self.slots.clone().acquire_many_owned(wanted).await else {
            return ControlFlow::Break(());
        };
        // A record is opened before this connection's next request is read; a large one on
        // the blocking pool (the I/O thread serves the other connections meanwhile).
        let next = match request {
            Incoming::Sealed(sealed, frame) => {
                let large = sealed.body.len() > SMALL;
                Next::Opened(
                    on_channel(secure, large, move |current| {
                        current.open_framed(&sealed, frame)
                    })
                    .await,
                )
            }
            Incoming::Decoded(Message::Protected(record)) => {
                let large = record.body.len() > SMALL;
                Next::Opened(
                    on_channel(secure, large, move |current| {
                        current.open_record(id, record)
                    })
                    .await,
                )
            }
            Incoming::Decoded(Message::Handshake(hello)) => Next::Handshake(Box::new(hello)),
            Incoming::Decoded(Message::HandshakeFinish(finished)) => Next::Finish(finished),
            Incoming::Decoded(Message::Call(call)) => Next::Clear(call),
        };
        match next {
            Next::Handshake(_) if !guard.may_handshake(ip) => {
                crate::metrics::handshake(Err("rate-limited"));
                respond(
                    out,
                    id,
                    None,
                    Err(tessera_core::Rv::HandshakeRateLimited.code()),
                    slot,
                )
            }
            Next::Handshake(hello) => {
                let abandoned = secure::lock(secure).is_pending();
                if abandoned {
                    guard.failed(ip, "a handshake was abandoned for another");
                }
                // The key agreement and the identity signature run on the blocking pool: a
                // flood of handshakes does not hold up the calls of other connections, and
                // the signatures use every core. Alone — no other request being handled and
                // no other handshake waiting for its key confirmation — a handshake runs here
                // (a request that arrives meanwhile waits for one signature at most). The
                // handshakes underway tell load apart: with one I/O thread a handshake signed
                // here is the only request being handled, so that count alone kept every
                // handshake of a flood on this thread, one core for all their signatures.
                // (This connection's own abandoned handshake, replaced now, does not count.)
                let here =
                    handling.alone() && secure::handshakes_underway() == usize::from(abandoned);
                let answer = match here {
                    true => {
                        let answer = secure::lock(secure).handshake(&hello);
                        crate::dispatch::scrub_after(crate::dispatch::Thread::Io);
                        answer
                    }
                    false => {
                        off_thread(secure, move |current| {
                            let answer = current.handshake(&hello);
                            crate::dispatch::scrub_after(crate::dispatch::Thread::Pool);
                            answer
                        })
                        .await
                    }
                };
                if answer.is_ok() {
                    crate::metrics::handshake_signed(here);
                }
                if let Err(code) = &answer {
                    // A library of another release is refused before any signing, cheaply, and
                    // told why each time (the rate limit would hide the reason from it).
                    if *code != tessera_core::Rv::ProtocolVersion.code() {
                        guard.failed(ip, "the handshake was refused");
                    }
                    crate::metrics::handshake(Err(crate::metrics::handshake_reason(*code)));
                }
                respond(out, id, None, answer, done_alone(slot));
            }
            Next::Finish(finished) => {
                let answer = secure::lock(secure).finish(&finished);
                crate::dispatch::scrub_after(crate::dispatch::Thread::Io);
                match &answer {
                    Ok(_) => crate::metrics::handshake(Ok(())),
                    Err(_) => {
                        guard.failed(ip, "the key confirmation failed");
                        crate::metrics::handshake(Err("key-confirmation"));
                    }
                }
                respond(out, id, None, answer.map(Response::Reply), done_alone(slot));
            }
            Next::Opened(opened) => {
                match opened {
                    Ok((Inner::Rekey, _)) => {
                        // Every earlier reply is sealed and queued before the keys change.
                        drop(slot);
                        let Ok(all) = self.slots.clone().acquire_many_owned(IN_FLIGHT).await else {
                            return ControlFlow::Break(());
                        };
                        let mut current = secure::lock(secure);
                        respond_sealed(out, id, &mut current, Ok(Reply::Done), all);
                        current.rekey();
                        crate::dispatch::scrub_after(crate::dispatch::Thread::Io);
                    }
                    Ok((Inner::Call(request), channel_client)) => {
                        let call = Job {
                            hsm,
                            channel: Some(secure),
                            out,
                            client: channel_client,
                            id,
                        };
                        call.run(request, slot);
                    }
                    // The channel was ended refusing the request: the refusal is its last
                    // record, sealed and queued under the lock like any reply.
                    Err(code) => {
                        let mut current = secure::lock(secure);
                        let frame = current.seal_end(id, code);
                        let _ = out.send(Outgoing::frame(frame, slot, false));
                        drop(current);
                    }
                }
            }
            Next::Clear(request) => {
                let call = Job {
                    hsm,
                    channel: None,
                    out,
                    client: self.client,
                    id,
                };
                call.run(request, slot);
            }
        }
        ControlFlow::Continue(())
    }

    /// Ends the connection: what runs finishes (its replies may no longer reach anyone), the
    /// last replies are written, the channel is closed (its end recorded) and the client's
    /// sessions and logins end.
    async fn close(self) {
        let Connection {
            hsm,
            guard,
            client,
            peer,
            ip,
            notice,
            secure,
            out,
            writing,
            slots,
            ..
        } = self;
        let _all = slots.acquire_many(IN_FLIGHT).await;
        if notice {
            // The connection's last frame, after every reply: request id 0 (never a
            // request's), `CKR_BAD_PROTECTION`. Unauthenticated, so the library only ever
            // raises protection on it.
            tracing::info!(
                client,
                peer,
                "closing a clear connection: the flags now require a secure channel"
            );
            let frame = encode_response(&ResponseEnvelope {
                version: PROTOCOL_VERSION,
                id: 0,
                channel: None,
                result: Err(tessera_core::Rv::BadProtection.code()),
            });
            if let Ok(permit) = Arc::new(Semaphore::new(1)).acquire_owned().await {
                let _ = out.send(Outgoing::frame(frame, permit, false));
            }
        }
        drop(out);
        let _ = writing.await;
        let mut current = secure::lock(&secure);
        if current.is_pending() {
            guard.failed(ip, "the handshake was abandoned");
        }
        current.close();
        drop(current);
        hsm.disconnect(client);
        // The connection's sessions are gone: so is what their calls left on this thread's
        // stack.
        dispatch::scrub_stack();
        tracing::debug!(client, "client disconnected");
    }
}
