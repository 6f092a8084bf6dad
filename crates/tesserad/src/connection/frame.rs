//! Reading a connection's frames: the deadlines (idle, slowloris), the size limit, the memory
//! for unfinished frames shared by every connection, and a read buffer that can be wiped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tessera_wire::{
    find_sealed_start, split_request_head, FrameError, SealedFrame, FRAME_HEADER_LEN,
    REQUEST_HEAD_LEN, SEALED_START_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Sleep};
use zeroize::Zeroize;

use crate::tally::Tally;

/// What waiting for the next frame gave.
pub(crate) enum Read {
    Frame(Body),
    /// The peer closed the connection between frames.
    Closed,
    /// No frame began within the idle timeout.
    Idle,
}

/// A frame's body as read.
pub(crate) enum Body {
    /// The whole body.
    Whole(Vec<u8>),
    /// A large frame carrying a sealed record: its envelope's and record's headers were read
    /// first (what was found in them: the ranges of the record's body and MAC are this
    /// buffer's), and the rest of the record into a buffer of its own, with room behind it —
    /// where it is opened, a payload that starts its message becomes the call's data as it
    /// is, and the reply is sealed in it.
    Sealed(SealedFrame, Vec<u8>),
    /// A large `OperationSingle`, `OperationUpdate` or `OperationOnce` in the clear, in three
    /// parts (see `tessera_wire::split_request_head`): its head, its data read into a buffer of
    /// its own with room behind it (which becomes the call's data), and what follows the data.
    Call {
        head: Vec<u8>,
        payload: Vec<u8>,
        tail: Vec<u8>,
    },
}

/// The idle deadline of a connection: how long it may wait for a frame to begin. One timer
/// for the connection's life, set when it first waits and moved only when it fires early (a
/// frame came meanwhile): arming a fresh timer for every frame cost a lock of the runtime's
/// timer wheel twice per call, a tenth of what the daemon does for a small call outside the
/// engine.
pub(crate) struct IdleClock {
    limit: Duration,
    /// When the current wait began.
    since: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleClock {
    pub(crate) fn new(limit: Duration) -> IdleClock {
        IdleClock {
            limit,
            since: Instant::now(),
            timer: None,
        }
    }

    /// Starts a wait: the idle limit counts from now.
    fn begin(&mut self) {
        self.since = Instant::now();
    }

    /// Completes once the current wait has lasted the whole limit. The timer is set once and
    /// moved only when it fires before that (frames came meanwhile): waits that end in a frame
    /// leave it alone.
    async fn expired(&mut self) {
        let since = self.since;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + self.limit)));
        loop {
            timer.as_mut().await;
            let due = self.since + self.limit;
            if Instant::now() >= due {
                return;
            }
            timer.as_mut().reset(due);
        }
    }
}

/// `future`, within `limit` (as `tokio::time::timeout`), except that a future ready at its
/// first poll sets no timer: a frame that arrived whole is taken without one.
async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => tokio::time::timeout(limit, future).await,
    }
}

/// Reads one frame. Waiting for a frame to begin is limited by `idle` only (clients keep idle
/// connections), but once its first byte is in, the rest must come within `timeout`: a client
/// that trickles bytes (slowloris) is cut off. A frame over `max_len` bytes is refused, and the
/// body of a large one is read into a buffer that grows as its bytes arrive, its memory taken
/// from `memory` until the frame is complete: a declared length allocates nothing by itself.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
    idle: Option<&mut IdleClock>,
    max_len: usize,
    memory: &FrameMemory,
) -> Result<Read, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = stream.read_exact(&mut header[..1]);
    let first = match idle {
        // Cancelled while waiting, the read has taken nothing.
        Some(idle) => {
            idle.begin();
            tokio::select! {
                biased;
                first = first => first,
                _ = idle.expired() => return Ok(Read::Idle),
            }
        }
        None => first.await,
    };
    match first {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Read::Closed),
        Err(e) => return Err(e.into()),
    }
    let rest = async {
        stream.read_exact(&mut header[1..]).await?;
        let len = tessera_wire::frame_body_len(header)?;
        if len > max_len {
            return Err(FrameError::TooLarge(len));
        }
        // What the frame holds until it is complete, of the memory for unfinished frames.
        let mut taken: Option<OwnedSemaphorePermit> = None;
        if len <= UNCOUNTED {
            let body = read_part(stream, len, &[], 0, false, memory, &mut taken).await?;
            return Ok(Body::Whole(body));
        }
        // A large body's first bytes say whether it is a sealed record or a bulk call in the
        // clear, whose record or data is then read into a buffer of its own, with room behind
        // it (for the reply sealed there, or the tag of a cipher that works there). They may
        // be a secret's (a key value in the clear): wiped once spent, whatever happens.
        let mut start = zeroize::Zeroizing::new([0u8; REQUEST_HEAD_LEN]);
        stream.read_exact(&mut start[..SEALED_START_LEN]).await?;
        let room = tessera_core::bytes::ROOM;
        let body = if let Some(sealed) = find_sealed_start(&start[..SEALED_START_LEN], len) {
            let wanted = len - SEALED_START_LEN;
            let record = read_part(stream, wanted, &[], room, true, memory, &mut taken).await?;
            Body::Sealed(sealed, record)
        } else {
            // A call's head may be longer (an `OperationOnce`'s mechanism): a few more bytes,
            // within the body (larger than these).
            stream.read_exact(&mut start[SEALED_START_LEN..]).await?;
            match split_request_head(&start[..], len) {
                Some((at, data)) => {
                    let first = &start[at..];
                    let payload =
                        read_part(stream, data, first, room, true, memory, &mut taken).await?;
                    let rest = len - at - data;
                    let tail = read_part(stream, rest, &[], 0, true, memory, &mut taken).await?;
                    Body::Call {
                        head: start[..at].to_vec(),
                        payload,
                        tail,
                    }
                }
                None => {
                    let body =
                        read_part(stream, len, &start[..], 0, true, memory, &mut taken).await?;
                    Body::Whole(body)
                }
            }
        };
        drop(taken);
        Ok(body)
    };
    match within(timeout, rest).await {
        Ok(body) => body.map(Read::Frame),
        Err(_) => Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "a frame took longer than {} s to arrive",
                timeout.as_secs_f32()
            ),
        ))),
    }
}

/// Reads `wanted` bytes of a frame into a buffer of their own that starts with `first` (bytes
/// of them read already). A small part is read into fresh capacity (no zeroing pass first); a
/// large one into capacity taken from `memory` (into `taken`, held until the frame is
/// complete) as the bytes come, when `counted` (a part of a large frame): from 1 MiB and a
/// little (a 1 MiB call's frame, data and headers, fits the first: growing it by a few bytes
/// copied the whole megabyte into a new buffer), doubling after that (a few copies at most).
/// A counted part read in one piece gets `behind` bytes of room after it.
async fn read_part<S: AsyncRead + Unpin>(
    stream: &mut S,
    wanted: usize,
    first: &[u8],
    behind: usize,
    counted: bool,
    memory: &FrameMemory,
    taken: &mut Option<OwnedSemaphorePermit>,
) -> Result<Vec<u8>, FrameError> {
    let mut merge = |permit: OwnedSemaphorePermit| match taken.as_mut() {
        Some(taken) => taken.merge(permit),
        None => *taken = Some(permit),
    };
    // Every part of a large frame counts, however small (its data, a record, what follows
    // the data); a small frame, read whole, does not.
    let mut body = if !counted {
        Vec::with_capacity(wanted)
    } else {
        let first = wanted.min(FIRST_LARGE);
        let behind = if first == wanted { behind } else { 0 };
        merge(memory.take(first + behind).await?);
        Vec::with_capacity(first + behind)
    };
    body.extend_from_slice(&first[..first.len().min(wanted)]);
    let mut room = body.capacity().min(wanted);
    while body.len() < wanted {
        if body.len() == room {
            let more = wanted.min(room * 2) - room;
            merge(memory.take(more).await?);
            body.reserve_exact(room + more - body.len());
            room += more;
        }
        let wanted = (room - body.len()) as u64;
        if (&mut *stream).take(wanted).read_buf(&mut body).await? == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(body)
}

/// The memory for unfinished frames, all connections together (`--max-frame-memory`): a frame
/// over [`UNCOUNTED`] bytes is read into a buffer that grows as its bytes arrive, each growth
/// taken from here and given back once the frame is complete. A connection that finds none
/// waits (its frame must still arrive within `--frame-timeout`); the others go on.
pub(crate) struct FrameMemory {
    bytes: Arc<Semaphore>,
    exhausted: AtomicBool,
    tally: Arc<Tally>,
}

/// The first buffer of a large frame: 1 MiB of data with room for its headers.
const FIRST_LARGE: usize = (1 << 20) + 4096;

/// Frames up to this size are read without counting against [`FrameMemory`] (every connection
/// may hold one).
const UNCOUNTED: usize = 64 * 1024;

// A large body holds the bytes read first to find a call's head.
const _: () = assert!(REQUEST_HEAD_LEN < UNCOUNTED);

impl FrameMemory {
    /// `bytes` for unfinished frames; a connection that waits for them is counted in `tally`.
    pub(crate) fn new(bytes: usize, tally: Arc<Tally>) -> FrameMemory {
        FrameMemory {
            bytes: Arc::new(Semaphore::new(bytes)),
            exhausted: AtomicBool::new(false),
            tally,
        }
    }

    async fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, FrameError> {
        let closed = || FrameError::Io(std::io::ErrorKind::BrokenPipe.into());
        let n = u32::try_from(bytes).map_err(|_| FrameError::TooLarge(bytes))?;
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                if self.exhausted.swap(false, Ordering::Relaxed) {
                    tracing::info!("memory for unfinished frames is available again");
                }
                Ok(permit)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Tally::count(&self.tally.frame_memory, "frame-memory");
                if !self.exhausted.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the memory for unfinished frames is taken (--max-frame-memory): large frames wait"
                    );
                }
                self.bytes
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| closed())
            }
            Err(tokio::sync::TryAcquireError::Closed) => Err(closed()),
        }
    }
}

/// The read buffer of a connection: a small request arrives whole in one read; a larger one is
/// read past it, straight into its own buffer. Kept small, as every idle connection holds one
/// (2 KiB, which takes a hybrid handshake's 1.3 KiB hello in one read instead of two, put
/// 10 000 idle channels at 100-102 MiB of daemon memory, over the 100 MiB they must fit in).
const READ_BUFFER: usize = 1024;

/// The connection's read buffer: a small request arrives whole in one read and is taken from
/// here; a read at least as large as the buffer goes straight to its destination. Unlike
/// tokio's `BufReader`, what it has handed out can be wiped ([`WipingReader::wipe_consumed`]):
/// a PIN sent in the clear does not stay in the buffer until later requests overwrite it.
pub(crate) struct WipingReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Handed out up to here.
    position: usize,
    /// Read from the peer up to here.
    filled: usize,
}

impl<R> WipingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        WipingReader {
            inner,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            position: 0,
            filled: 0,
        }
    }

    /// Zeroes everything in the buffer but the bytes not yet handed out.
    pub(crate) fn wipe_consumed(&mut self) {
        self.buffer[..self.position].zeroize();
        self.buffer[self.filled..].zeroize();
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WipingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.position == this.filled {
            if out.remaining() >= this.buffer.len() {
                return std::pin::Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut fill = tokio::io::ReadBuf::new(&mut this.buffer);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.filled = fill.filled().len();
            this.position = 0;
        }
        let n = (this.filled - this.position).min(out.remaining());
        out.put_slice(&this.buffer[this.position..this.position + n]);
        this.position += n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tessera_wire::{
        encode_response, find_sealed, Response, ResponseEnvelope, FRAME_HEADER_LEN,
        PROTOCOL_VERSION, SEALED_START_LEN,
    };
    use tokio::io::AsyncWriteExt;

    use super::{read_frame, Body, FrameError, FrameMemory, Read};

    /// The frame of a sealed record on channel 9 whose body is `len` bytes (a reply's: the
    /// reader only finds records, whichever way they go).
    fn sealed(id: u64, len: usize) -> Vec<u8> {
        let record = tessera_channel::Record {
            header: tessera_channel::RecordHeader {
                channel: 9,
                direction: tessera_channel::Direction::ToDevice,
                sequence: id,
                generation: 0,
                protection: tessera_channel::Protection::Encrypted,
            },
            body: (0..len).map(|i| (i % 251) as u8).collect(),
            mac: Vec::new(),
        };
        encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: Some(9),
            result: Ok(Response::Protected(record)),
        })
    }

    /// A frame in the clear of about `len` bytes.
    fn clear(id: u64, len: usize) -> Vec<u8> {
        encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: None,
            result: Ok(Response::Reply(tessera_wire::Reply::Bytes(vec![7; len]))),
        })
    }

    /// `call` in a request frame in the clear.
    fn clear_request(id: u64, call: tessera_wire::Call) -> Vec<u8> {
        tessera_wire::encode_request(&tessera_wire::RequestEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: None,
            message: tessera_wire::Message::Call(call),
        })
    }

    /// A bulk call in the clear: `OperationSingle` with `len` bytes of data and a signature.
    fn call(id: u64, len: usize) -> Vec<u8> {
        let call = tessera_wire::Call::OperationSingle {
            session: 77,
            operation: tessera_wire::Operation::Verify,
            data: (0..len).map(|i| (i % 241) as u8).collect(),
            signature: vec![0x51; 96],
        };
        clear_request(id, call)
    }

    /// A bulk `OperationOnce` (init and call in one) in the clear, AES-GCM with an IV and AAD.
    fn once(id: u64, len: usize) -> Vec<u8> {
        let call = tessera_wire::Call::OperationOnce {
            session: 78,
            operation: tessera_wire::Operation::Encrypt,
            mechanism: tessera_core::Mechanism {
                ty: 0x1087,
                parameter: tessera_core::MechanismParameter::Gcm {
                    iv: vec![9; 12],
                    aad: vec![8; 40],
                    tag_bits: 128,
                },
            },
            key: 5,
            data: (0..len).map(|i| (i % 233) as u8).collect(),
            signature: Vec::new(),
        };
        clear_request(id, call)
    }

    const MEMORY: usize = 8 << 20;

    /// Reads every frame the writer sends in small pieces (a pause between them), as the
    /// connection reads them; the memory for unfinished frames is all given back after each.
    async fn read_all(frames: Vec<Vec<u8>>, piece: usize) -> Vec<Result<Body, FrameError>> {
        let (mut reader, mut writer) = tokio::io::duplex(64 * 1024);
        let bytes = frames.concat();
        let writing = tokio::spawn(async move {
            for chunk in bytes.chunks(piece) {
                writer.write_all(chunk).await.expect("written");
                tokio::task::yield_now().await;
            }
        });
        let memory = FrameMemory::new(MEMORY, Arc::default());
        let mut read = Vec::new();
        for _ in 0..frames.len() {
            let frame = read_frame(&mut reader, Duration::from_secs(5), None, 16 << 20, &memory);
            read.push(match frame.await {
                Ok(Read::Frame(body)) => Ok(body),
                Ok(_) => Err(FrameError::Header("no frame")),
                Err(e) => Err(e),
            });
            assert_eq!(
                memory.bytes.available_permits(),
                MEMORY,
                "memory given back"
            );
        }
        writing.await.expect("the writer");
        read
    }

    /// A large sealed frame is read as its record's rest in a buffer of its own, with room
    /// behind it for the reply sealed there, its parts found from its first bytes exactly
    /// where the finder of whole frames finds them; a large bulk call in the clear in three
    /// parts, its data alone in a buffer with room behind it; any other large frame, and a
    /// small one, whole — however the bytes arrive.
    #[tokio::test]
    async fn a_large_sealed_frame_is_read_into_a_buffer_of_its_own() {
        let frames = vec![
            sealed(1, (1 << 20) + 40),
            clear(2, 200_000),
            sealed(3, 100),
            sealed(4, 3 << 20),
            call(5, 1 << 20),
            call(6, 1000),
            once(7, 1 << 20),
            // Data of exactly the size that is read apart.
            call(8, tessera_wire::SPLIT_PAYLOAD),
        ];
        for piece in [7, 4096, 1 << 20] {
            let read = read_all(frames.clone(), piece).await;
            for (frame, body) in frames.iter().zip(read) {
                let whole = &frame[FRAME_HEADER_LEN..];
                let large = whole.len() > super::UNCOUNTED;
                let division = tessera_wire::split_request_head(
                    &whole[..tessera_wire::REQUEST_HEAD_LEN.min(whole.len())],
                    whole.len(),
                );
                let divided = division.is_some();
                match (body, find_sealed(whole)) {
                    (Ok(Body::Sealed(found, rest)), Some(expected)) if large => {
                        assert_eq!(rest, &whole[SEALED_START_LEN..]);
                        let shift = |r: std::ops::Range<usize>| {
                            r.start + SEALED_START_LEN..r.end + SEALED_START_LEN
                        };
                        assert_eq!(
                            (found.id, found.header, shift(found.body), shift(found.mac)),
                            (expected.id, expected.header, expected.body, expected.mac)
                        );
                        if rest.len() <= super::FIRST_LARGE {
                            assert!(
                                rest.capacity() >= rest.len() + tessera_core::bytes::ROOM,
                                "no room behind the record"
                            );
                        }
                    }
                    (
                        Ok(Body::Call {
                            head,
                            payload,
                            tail,
                        }),
                        None,
                    ) if large => {
                        assert_eq!([&head[..], &payload, &tail].concat(), whole);
                        assert_eq!(Some((head.len(), payload.len())), division);
                        assert!(payload.starts_with(&[0, 1, 2]), "the data's first bytes");
                        assert!(payload.capacity() >= payload.len() + tessera_core::bytes::ROOM);
                        let envelope =
                            tessera_wire::decode_request_split(&head, payload, &tail).unwrap();
                        assert_eq!(tessera_wire::encode_request(&envelope), *frame);
                    }
                    (Ok(Body::Whole(body)), found) if !large || (found.is_none() && !divided) => {
                        assert_eq!(body, whole)
                    }
                    (other, _) => panic!(
                        "piece {piece}, frame of {} bytes: {:?}",
                        whole.len(),
                        other.map(|b| matches!(b, Body::Sealed(..)))
                    ),
                }
            }
        }
    }

    /// A large frame that ends within its first bytes, or within its record, is an error, and
    /// what it took of the memory for unfinished frames is given back.
    #[tokio::test]
    async fn a_large_frame_cut_short_is_an_error() {
        let cuts = [
            (sealed(5, 1 << 20), FRAME_HEADER_LEN + 10),
            (
                sealed(5, 1 << 20),
                FRAME_HEADER_LEN + SEALED_START_LEN + 1000,
            ),
            (call(6, 1 << 20), FRAME_HEADER_LEN + 100),
            (call(6, 1 << 20), FRAME_HEADER_LEN + 5000),
            (call(6, 1 << 20), (1 << 20) + 40),
        ];
        for (mut frame, cut) in cuts {
            frame.truncate(cut);
            let read = read_all(vec![frame], 4096).await;
            assert!(
                matches!(&read[0], Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {:?}",
                read[0].as_ref().map(|_| ())
            );
        }
    }
}
