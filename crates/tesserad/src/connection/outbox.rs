//! A connection's replies on their way out: queued by whichever thread answered (the
//! connection's task or the blocking pool), sealed first when they belong to the channel, and
//! written in queue order by the connection's writer task.

use std::sync::Mutex;

use tessera_wire::{encode_response_split, Reply, Response, ResponseEnvelope, PROTOCOL_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use zeroize::Zeroize;

use crate::secure::{self, Secure};

/// A reply frame on its way to the writer, with the slot it frees once written and whether it
/// carries a secret in the clear ([`Reply::carries_secret`]): such a frame, and its tail, are
/// wiped when the reply is dropped — once written, or unwritten when the client went away with
/// replies still queued.
pub(crate) struct Outgoing {
    frame: Vec<u8>,
    /// A large payload that ends the frame, written behind it rather than copied into it
    /// ([`tessera_wire::encode_response_split`]); empty for most replies.
    tail: Vec<u8>,
    /// Held until the reply is dropped (written, or given up): the slot frees then.
    _slot: OwnedSemaphorePermit,
    secret: bool,
}

impl Outgoing {
    /// A whole frame.
    pub(crate) fn frame(frame: Vec<u8>, slot: OwnedSemaphorePermit, secret: bool) -> Outgoing {
        Outgoing::split(frame, Vec::new(), slot, secret)
    }

    /// A frame and the payload written behind it (`tail`, empty for most replies).
    fn split(frame: Vec<u8>, tail: Vec<u8>, slot: OwnedSemaphorePermit, secret: bool) -> Outgoing {
        Outgoing {
            frame,
            tail,
            _slot: slot,
            secret,
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if self.secret {
            // Their whole capacity, at memset speed (a 1 MiB plaintext byte by byte took a
            // millisecond), then kept for reuse or freed.
            let held = tessera_core::bytes::Held::Secret;
            tessera_core::bytes::give(std::mem::take(&mut self.frame), held);
            tessera_core::bytes::give(std::mem::take(&mut self.tail), held);
        }
    }
}

/// Frames smaller than this are written together when ready together; a larger one is written
/// by itself.
const BATCHED: usize = 64 * 1024;

/// Where a connection's replies are queued.
pub(crate) type Outbox = UnboundedSender<Outgoing>;

/// Starts the task that writes what is queued in the returned outbox to `writer`, in order,
/// until every sender is gone or the client goes away.
pub(crate) fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut writer: W,
    client: u64,
) -> (Outbox, JoinHandle<()>) {
    let (out, mut outbox) = unbounded_channel::<Outgoing>();
    let writing = tokio::spawn(async move {
        // A large frame found while batching: the next write's start.
        let mut held: Option<Outgoing> = None;
        loop {
            let mut first = match held.take() {
                Some(first) => first,
                None => match outbox.recv().await {
                    Some(first) => first,
                    None => break,
                },
            };
            // Replies that are ready together go out in one write (small ones only; a large
            // one is written as it is, from its own buffer, not copied behind a small one). A
            // frame with a tail ends the batch: the tail follows it in the next write.
            let mut batched = Vec::new();
            while first.tail.is_empty() && first.frame.len() < BATCHED {
                match outbox.try_recv() {
                    Ok(more) if more.frame.len() >= BATCHED => {
                        held = Some(more);
                        break;
                    }
                    Ok(mut more) => {
                        let room = first.frame.capacity() - first.frame.len();
                        if first.secret && room < more.frame.len() {
                            // Growing would free the secret's buffer unwiped: it moves to a
                            // larger one by hand and is wiped.
                            let len = first.frame.len() + more.frame.len();
                            let mut larger = Vec::with_capacity(len.max(4096) * 2);
                            larger.extend_from_slice(&first.frame);
                            first.frame.zeroize();
                            first.frame = larger;
                        }
                        first.frame.extend_from_slice(&more.frame);
                        first.secret |= more.secret;
                        first.tail = std::mem::take(&mut more.tail);
                        // Its slot is freed, and its frame wiped if secret, with the batch.
                        batched.push(more);
                    }
                    Err(_) => break,
                }
            }
            let written = write_both(&mut writer, &first.frame, &first.tail).await;
            // Written: the slots are freed, a secret's buffers wiped.
            drop(first);
            drop(batched);
            if let Err(e) = written {
                tracing::debug!(client, reason = %e, "client went away");
                break;
            }
        }
    });
    (out, writing)
}

/// Writes `start`, then `rest` (a split reply's head and its payload; `rest` may be empty): as
/// one vectored write where the writer takes one (one system call, and a client waiting for
/// the reply woken once), else one after the other.
async fn write_both<W: AsyncWrite + Unpin>(
    writer: &mut W,
    start: &[u8],
    rest: &[u8],
) -> std::io::Result<()> {
    let mut slices = [std::io::IoSlice::new(start), std::io::IoSlice::new(rest)];
    let mut left: &mut [std::io::IoSlice<'_>] = &mut slices;
    // Leading empty slices go first, so an empty `left` means everything was written.
    std::io::IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        let written = writer.write_vectored(left).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut left, written);
    }
    Ok(())
}

/// Queues one response.
pub(crate) fn respond(
    out: &Outbox,
    id: u64,
    channel: Option<u64>,
    result: Result<Response, u64>,
    slot: OwnedSemaphorePermit,
) {
    let secret = matches!(&result, Ok(Response::Reply(reply)) if reply.carries_secret());
    // A bulk ciphertext is written behind its frame's start, not copied into the frame.
    let (frame, tail) = encode_response_split(ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id,
        channel,
        result,
    });
    let _ = out.send(Outgoing::split(frame, tail, slot, secret));
}

/// Queues the reply to request `id` sealed in the connection's channel, under its lock (so
/// that replies are written in the order of their sequence numbers); when the channel is gone,
/// the error in the clear.
pub(crate) fn respond_sealed(
    out: &Outbox,
    id: u64,
    current: &mut Secure,
    mut result: Result<Reply, u64>,
    slot: OwnedSemaphorePermit,
) {
    match current.seal(id, &mut result) {
        Ok((frame, tail, secret)) => {
            let _ = out.send(Outgoing::split(frame, tail, slot, secret));
        }
        Err(code) => respond(out, id, current.channel_id(), Err(code), slot),
    }
}

/// Queues the reply to request `id`, sealed when it came through the channel: sealed and
/// queued under the channel's lock, replies are written in the order of their sequence numbers.
pub(crate) fn answer(
    out: &Outbox,
    channel: Option<&Mutex<Secure>>,
    id: u64,
    result: Result<Reply, tessera_core::Rv>,
    slot: OwnedSemaphorePermit,
) {
    let result = result.map_err(|rv| rv.code());
    match channel {
        Some(channel) => respond_sealed(out, id, &mut secure::lock(channel), result, slot),
        None => respond(out, id, None, result.map(Response::Reply), slot),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::AsyncWrite;
    use tokio::sync::Semaphore;

    use super::{spawn_writer, Outgoing, BATCHED};

    /// A writer that keeps what was written, and where each write's bytes came from; or, `gone`,
    /// one whose client has gone: every write fails.
    #[derive(Clone, Default)]
    struct Recorder {
        gone: bool,
        /// It takes vectored writes, as a socket does: each call one entry of `writes` (the
        /// first buffer's address, the length of all), written up to `room` bytes if not 0.
        vectored: bool,
        room: usize,
        written: Arc<Mutex<Vec<u8>>>,
        /// (address, length) of each write's buffer.
        writes: Arc<Mutex<Vec<(usize, usize)>>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.gone {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            self.writes
                .lock()
                .unwrap()
                .push((buf.as_ptr() as usize, buf.len()));
            self.written.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if !self.vectored {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                return self.poll_write(cx, first);
            }
            if self.gone {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let mut taken = Vec::new();
            for buf in bufs {
                let room = match self.room {
                    0 => usize::MAX,
                    room => room - taken.len(),
                };
                taken.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            let at = bufs.first().map_or(0, |b| b.as_ptr() as usize);
            self.writes.lock().unwrap().push((at, taken.len()));
            self.written.lock().unwrap().extend_from_slice(&taken);
            Poll::Ready(Ok(taken.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Queues `frames` (each with whether it is secret), each with a slot of `slots`.
    async fn queue(out: &super::Outbox, slots: &Arc<Semaphore>, frames: Vec<(Vec<u8>, bool)>) {
        for (frame, secret) in frames {
            let slot = slots.clone().acquire_owned().await.unwrap();
            out.send(Outgoing::frame(frame, slot, secret)).ok().unwrap();
        }
    }

    /// When the client has gone, the writer ends at its first failed write, and every reply
    /// still queued — a large one held for the next write among them — gives its slot back
    /// (a connection's close waits for all of them).
    #[tokio::test(flavor = "current_thread")]
    async fn replies_queued_when_the_client_went_away_give_their_slots_back() {
        let gone = Recorder {
            gone: true,
            ..Recorder::default()
        };
        let (out, writing) = spawn_writer(gone, 1);
        let slots = Arc::new(Semaphore::new(8));
        let frames = vec![
            (vec![1u8; 100], true),
            (vec![2u8; 1 << 20], false),
            (vec![3u8; 50], true),
        ];
        queue(&out, &slots, frames).await;
        writing.await.unwrap();
        // The writer is gone: a reply queued now is refused, and dropped with its slot.
        let slot = slots.clone().acquire_owned().await.unwrap();
        assert!(out
            .send(Outgoing::frame(vec![4u8; 10], slot, true))
            .is_err());
        assert_eq!(slots.available_permits(), 8, "every slot given back");
    }

    /// A large frame queued behind small ones (a sealed 1 MiB reply behind a small reply) is
    /// written from its own buffer, in order, not copied onto the end of the small ones' batch;
    /// small frames ready together still go out in one write.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_frame_is_written_from_its_own_buffer_not_batched_behind_small_ones() {
        let recorder = Recorder::default();
        let (out, writing) = spawn_writer(recorder.clone(), 1);
        let slots = Arc::new(Semaphore::new(8));
        let large = vec![7u8; 1 << 20];
        let large_at = large.as_ptr() as usize;
        let frames = [vec![1u8; 100], vec![2u8; 200], large, vec![3u8; 50]];
        let expected: Vec<u8> = frames.concat();
        // Queued before the writer first runs (a current-thread runtime runs it at the await
        // below): all four are ready together.
        queue(
            &out,
            &slots,
            frames.into_iter().map(|frame| (frame, false)).collect(),
        )
        .await;
        drop(out);
        writing.await.unwrap();
        assert_eq!(*recorder.written.lock().unwrap(), expected);
        let writes = recorder.writes.lock().unwrap().clone();
        assert_eq!(
            writes[0].1, 300,
            "the two small frames in one write: {writes:?}"
        );
        assert!(
            writes
                .iter()
                .any(|&(at, len)| at == large_at && len >= BATCHED),
            "the large frame written from its own buffer: {writes:?}"
        );
        assert_eq!(slots.available_permits(), 8, "every slot given back");
    }

    /// A split reply (a frame's head and its payload apart) goes out in one vectored write to
    /// a writer that takes them; one that takes part of it gets the rest, in order, from where
    /// it stopped; one that takes no vectored writes gets the head, then the payload.
    #[tokio::test(flavor = "current_thread")]
    async fn a_split_reply_goes_out_in_one_vectored_write() {
        let head = vec![1u8; 40];
        let payload = vec![2u8; 1 << 20];
        let expected = [&head[..], &payload[..]].concat();
        for (vectored, room, writes) in [(true, 0, 1), (true, 300_000, 4), (false, 0, 2)] {
            let recorder = Recorder {
                vectored,
                room,
                ..Recorder::default()
            };
            let slots = Arc::new(Semaphore::new(1));
            let (out, writing) = spawn_writer(recorder.clone(), 1);
            let slot = slots.clone().acquire_owned().await.unwrap();
            out.send(Outgoing::split(head.clone(), payload.clone(), slot, false))
                .ok()
                .unwrap();
            drop(out);
            writing.await.unwrap();
            assert!(
                *recorder.written.lock().unwrap() == expected,
                "vectored {vectored}, room {room}: the bytes differ"
            );
            let made = recorder.writes.lock().unwrap().clone();
            assert_eq!(
                made.len(),
                writes,
                "vectored {vectored}, room {room}: {made:?}"
            );
        }
    }
}
