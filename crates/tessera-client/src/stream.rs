//! The socket to a device: Unix or TCP, blocking, with timeouts.

use std::io::{IoSlice, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::SecureSettings;
use rustix::net::RecvFlags;
use tessera_config::ServerAddress;
use tessera_core::bytes::Held;
use tessera_core::Rv;
use tessera_wire::{
    decode_response, decode_response_split, encode_request_split, find_sealed, find_sealed_start,
    frame_body_len, split_response_head, Bulk, FrameError, Message, RequestEnvelope, Response,
    ResponseEnvelope, SealedFrame, FRAME_HEADER_LEN, PROTOCOL_VERSION, SEALED_START_LEN,
    SPLIT_PAYLOAD,
};

/// What a connection lost on the device's notice that its flags now require a channel says.
pub(crate) const NOTICE: &str =
    "the device closed the connection: its flags now require a secure channel";

/// What a connection the device's client access list refused says.
pub(crate) const ACCESS_DENIED: &str = "refused by the access list: the appliance's client access list does not admit this host's address; ask an appliance operator to run `clients add ADDRESS` in psesh (`clients show` lists it)";

/// A connection that could not be made.
pub(crate) struct ConnectFailure {
    /// Why, and what to do.
    pub(crate) reason: String,
    /// Already written to the library's log (the local-socket checks say why themselves).
    pub(crate) logged: bool,
}

/// Why a local socket could not be connected to, and what to do.
fn unix_failure(path: &std::path::Path, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let path = path.display();
    match error.kind() {
        ErrorKind::NotFound => format!(
            "no such socket {path}: tesserad is not running (or listens on another socket); start tesserad, or fix the entry in ET_HSM_NETCLIENT_SERVERLIST"
        ),
        ErrorKind::ConnectionRefused => format!(
            "connection refused on {path}: nothing listens on the socket (tesserad stopped and left it behind); start tesserad"
        ),
        ErrorKind::PermissionDenied => format!(
            "permission denied on {path}: this user may not open the socket or its directory; see docs/operations.md (the daemon's socket directory and group)"
        ),
        _ => format!("{path}: {error}"),
    }
}

/// Why a TCP connection could not be made, and what to do.
fn tcp_failure(address: std::net::SocketAddr, timeout: Duration, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => format!(
            "connection refused by {address}: nothing listens on that port (tesserad stopped, or its --listen is another address); start tesserad or fix ET_HSM_NETCLIENT_SERVERLIST"
        ),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!(
            "no answer from {address} within {} s: the host is down or a firewall drops the connection (ET_HSM_NETCLIENT_CONNECT_TIMEOUT sets the wait)",
            timeout.as_secs_f32()
        ),
        _ => format!("{address}: {error}"),
    }
}

/// A frame to send, with what it holds: once written, its buffers go back to the pool of
/// `tessera_core::bytes`, wiped first if they carried a PIN or a key value in the clear.
pub(crate) struct Frame {
    bytes: Vec<u8>,
    /// A call's bulk input, written in its place in `bytes` rather than copied there (see
    /// [`tessera_wire::encode_request_split`]).
    bulk: Option<Bulk>,
    held: Held,
}

impl Frame {
    /// A sealed record's frame, and the rest of it when its message had a bulk payload first
    /// (sealed in its own buffer: written behind the frame's start, not copied there).
    /// `held` says what they hold: a secret only in a signed record (the policy did not
    /// encrypt it).
    pub(crate) fn sealed(bytes: Vec<u8>, rest: Vec<u8>, held: Held) -> Frame {
        let bulk = (!rest.is_empty()).then_some(Bulk {
            at: bytes.len(),
            payload: rest,
        });
        Frame { bytes, bulk, held }
    }

    /// The frame's parts in the order they are written.
    fn parts(&self) -> impl Iterator<Item = IoSlice<'_>> {
        let (before, payload, after) = match &self.bulk {
            Some(bulk) => {
                let (before, after) = self.bytes.split_at(bulk.at.min(self.bytes.len()));
                (before, &bulk.payload[..], after)
            }
            None => (&self.bytes[..], &[][..], &[][..]),
        };
        [before, payload, after]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(IoSlice::new)
    }
}

/// A frame's buffers go back to the pool when it is written — or dropped unwritten (queued
/// behind a write that failed): wiped first if they held a secret.
impl Drop for Frame {
    fn drop(&mut self) {
        tessera_core::bytes::give(std::mem::take(&mut self.bytes), self.held);
        if let Some(bulk) = self.bulk.take() {
            tessera_core::bytes::give(bulk.payload, self.held);
        }
    }
}

/// Linux's `IOV_MAX`: the most parts one `sendmsg` takes.
const IOV_MAX: usize = 1024;

/// Writes every part, in order, with as few vectored writes as the socket takes; on an error,
/// `parts` is what is left to write. Each write is a `sendmsg` with `MSG_NOSIGNAL`: std's
/// `write_vectored` is a `writev`, and a `writev` to a connection the device has closed raises
/// `SIGPIPE`, which ends a host that keeps the signal's default action (most C programs).
fn write_all_parts(socket: &Socket, parts: &mut &mut [IoSlice<'_>]) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
    while !parts.is_empty() {
        let mut control = SendAncillaryBuffer::default();
        // The kernel takes at most IOV_MAX parts a call (more is EMSGSIZE); the rest go next.
        let some = &parts[..parts.len().min(IOV_MAX)];
        let written = match socket {
            Socket::Unix(s) => sendmsg(s, some, &mut control, SendFlags::NOSIGNAL),
            Socket::Tcp(s) => sendmsg(s, some, &mut control, SendFlags::NOSIGNAL),
        }
        .map_err(std::io::Error::from);
        match written {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(parts, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A failed exchange.
pub(crate) enum Failure {
    /// The connection broke or timed out.
    Io(String),
    /// The answer is not a valid response.
    Bad(String),
}

/// How long a reader polls for a reply before it sleeps in `read`, at least and at most. Waking
/// a sleeping thread costs tens of microseconds on a virtual machine's idle CPU, more than most
/// calls take, and a third of an ML-DSA signature's. The window in between adapts to the replies
/// (see [`Spin`]): calls that take longer than the shortest window but less than the longest
/// (signatures, key generation) are polled for as long as they typically take.
const SPIN_MIN: Duration = Duration::from_micros(60);
const SPIN_MAX: Duration = Duration::from_micros(500);

/// After [`LATE_STREAK`] replies in a row came later than [`SPIN_MAX`], this many reads sleep at
/// once: replies that come late (the device and another client thread share the CPUs, or the
/// device does slow work) would only lose the poller's CPU to them. Adaptive, as a spinning
/// mutex is. One late reply is not enough: a signature's time has a tail (ML-DSA's rejection
/// sampling), and a call in that tail says nothing of the next.
const SPIN_BACKOFF: u32 = 8;
const LATE_STREAK: u32 = 3;

/// How a connection polls for its replies: the current window, and the reads left that sleep
/// at once.
struct Spin {
    /// Microseconds a reader polls before it sleeps, between [`SPIN_MIN`] and [`SPIN_MAX`].
    window: AtomicU32,
    /// Replies in a row that came later than [`SPIN_MAX`].
    late: AtomicU32,
    /// Reads left that sleep at once (see [`SPIN_BACKOFF`]).
    skip: AtomicU32,
}

/// What a poll for a reply saw.
enum Polled {
    /// Data arrived, or the stream ended (the read that follows reports it).
    Done,
    /// Nothing arrived within the window (which began at this instant); the reader sleeps.
    TimedOut(std::time::Instant),
    /// The poll was skipped (see [`SPIN_BACKOFF`]).
    Skipped,
}

/// The window for handshake replies, learned across connections: a connection makes one
/// handshake, and its own window, fresh, would let the reply (a signature away) find the reader
/// asleep every time.
static HANDSHAKES: Spin = Spin::new();

impl Spin {
    const fn new() -> Spin {
        Spin {
            window: AtomicU32::new(SPIN_MIN.as_micros() as u32),
            late: AtomicU32::new(0),
            skip: AtomicU32::new(0),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_micros(u64::from(self.window.load(Ordering::Relaxed)))
    }

    /// A poll saw its reply after `took`: the window drifts down towards twice that, slowly
    /// (a thirty-second of the difference a reply), so that a run of quick calls after slow
    /// ones does not keep polling for long, while a mix of quick and slow calls keeps it.
    fn arrived_within(&self, took: Duration) {
        self.late.store(0, Ordering::Relaxed);
        let window = self.window.load(Ordering::Relaxed);
        let wanted = (took.as_micros() as u32)
            .saturating_mul(2)
            .max(SPIN_MIN.as_micros() as u32);
        if wanted < window {
            self.window
                .store(window - (window - wanted).div_ceil(32), Ordering::Relaxed);
        }
    }

    /// A reply came after the poll gave up, `took` after the poll began: a reply that the
    /// longest window would have caught widens the window to it, with half as much to spare;
    /// [`LATE_STREAK`] later ones in a row send the next reads to sleep at once.
    fn arrived_after(&self, took: Duration) {
        if took <= SPIN_MAX {
            self.late.store(0, Ordering::Relaxed);
            let widened = (took + took / 2).min(SPIN_MAX).as_micros() as u32;
            self.window.fetch_max(widened, Ordering::Relaxed);
        } else if self.late.fetch_add(1, Ordering::Relaxed) + 1 >= LATE_STREAK {
            self.late.store(0, Ordering::Relaxed);
            self.window
                .store(SPIN_MIN.as_micros() as u32, Ordering::Relaxed);
            self.skip.store(SPIN_BACKOFF, Ordering::Relaxed);
        }
    }
}

/// A connection. One thread may write a request while another reads replies (requests are
/// pipelined; see the crate documentation): reads and writes each take their own lock, on the
/// one socket (no second descriptor).
pub(crate) struct Stream {
    socket: Socket,
    /// The reading turn, with what was read and not taken yet: replies written together by
    /// the device are read together.
    reading: Mutex<ReadBuffer>,
    writing: Mutex<()>,
    /// Frames sent and not written yet.
    outbox: Mutex<Vec<Frame>>,
    /// How readers poll for replies before they sleep.
    spin: Spin,
    /// The device closed the connection with its notice that a channel is now required.
    notice: AtomicBool,
    /// When the connection was made, and milliseconds after it that the last reply came (see
    /// [`Stream::quiet_for`]).
    opened: std::time::Instant,
    last_reply: std::sync::atomic::AtomicU64,
}

/// A connection quiet for this long is checked before a call without a session is sent on it:
/// the device closes connections without sessions after its idle timeout (at least 1 s).
pub(crate) const QUIET: Duration = Duration::from_millis(500);

enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes read from the socket and not taken yet.
struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// How far fills have written since the buffer was last wiped: a shorter fill leaves
    /// what a longer one wrote beyond its end.
    high: usize,
}

impl ReadBuffer {
    const SIZE: usize = 16 * 1024;

    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The socket read through a [`ReadBuffer`]: small reads are served from one larger one; a
/// read as large as the buffer (bulk data) goes to the socket directly.
struct Buffered<'a> {
    socket: &'a Socket,
    buffer: &'a mut ReadBuffer,
}

impl Read for Buffered<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let buffer = &mut *self.buffer;
        if buffer.is_empty() {
            if out.len() >= buffer.data.len() {
                return self.socket.read(out);
            }
            buffer.end = self.socket.read(&mut buffer.data)?;
            buffer.high = buffer.high.max(buffer.end);
            buffer.start = 0;
        }
        let n = out.len().min(buffer.end - buffer.start);
        out[..n].copy_from_slice(&buffer.data[buffer.start..buffer.start + n]);
        buffer.start += n;
        Ok(n)
    }
}

impl Socket {
    fn read(&self, out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Unix(s) => (&mut &*s).read(out),
            Socket::Tcp(s) => (&mut &*s).read(out),
        }
    }

    /// Ends the connection both ways (the descriptor stays until the stream is dropped).
    fn shut_down(&self) {
        let _ = match self {
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Appends the next `len` bytes to `out` (fewer at the end of the stream), read into its
    /// spare capacity as it is: std's sockets read into uninitialised memory, where a reader
    /// of ours (which only has `read`) has it zero-filled first — a pass over a megabyte.
    fn read_into(&self, out: &mut Vec<u8>, len: usize) -> std::io::Result<usize> {
        match self {
            Socket::Unix(s) => (&mut &*s).take(len as u64).read_to_end(out),
            Socket::Tcp(s) => (&mut &*s).take(len as u64).read_to_end(out),
        }
    }
}

/// A frame as read: its body, or a bulk reply read in two parts.
enum Arrived {
    Body(Vec<u8>),
    /// A sealed record in a body of [`SPLIT_PAYLOAD`] bytes or more, its envelope's and
    /// record's headers read first and the rest into a buffer of its own (see
    /// [`tessera_wire::find_sealed_start`]): opened there, a bulk output that starts its
    /// message becomes the reply's bytes as it is.
    Sealed(SealedFrame, Vec<u8>),
    /// A `Reply::Bytes` or `Reply::Secret` in a body of [`SPLIT_PAYLOAD`] bytes or more, its
    /// payload read into a buffer of its own (see [`tessera_wire::split_response_head`]).
    Bulk(ResponseEnvelope),
}

/// Reads the next frame: its start through the read buffer, the rest of a large body straight
/// from the socket ([`read_body`]); a bulk reply's payload into a buffer of its own that
/// becomes the reply's bytes, without the copy that decoding the whole body makes.
fn read_reply(socket: &Socket, buffer: &mut ReadBuffer) -> Result<Arrived, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    Buffered { socket, buffer }.read_exact(&mut header)?;
    let len = frame_body_len(header)?;
    if len >= SPLIT_PAYLOAD {
        // The head is in the read buffer when the frame's first read brought it (else the body
        // is read whole: nothing lost but the copy).
        let start = &buffer.data[buffer.start..buffer.end];
        if let Some(head_len) = split_response_head(start, len) {
            let head = start[..head_len].to_vec();
            buffer.start += head_len;
            let payload = read_body(socket, buffer, len - head_len)?;
            return Ok(Arrived::Bulk(decode_response_split(&head, payload)?));
        }
        if let Some(sealed) = find_sealed_start(start, len) {
            buffer.start += SEALED_START_LEN;
            let record = read_body(socket, buffer, len - SEALED_START_LEN)?;
            return Ok(Arrived::Sealed(sealed, record));
        }
    }
    read_body(socket, buffer, len).map(Arrived::Body)
}

/// Reads `len` bytes of a body into a buffer of its own (pooled when large, see
/// `tessera_core::bytes::take`): what the read buffer holds of it first, then a remainder as
/// large as the read buffer straight from the socket, a smaller one through the read buffer
/// (which also takes whatever replies follow it in the same read).
fn read_body(socket: &Socket, buffer: &mut ReadBuffer, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = tessera_core::bytes::take(len);
    let buffered = (buffer.end - buffer.start).min(len);
    body.extend_from_slice(&buffer.data[buffer.start..buffer.start + buffered]);
    buffer.start += buffered;
    let rest = len - buffered;
    let read = if rest >= ReadBuffer::SIZE {
        socket.read_into(&mut body, rest)
    } else {
        (Buffered { socket, buffer })
            .take(rest as u64)
            .read_to_end(&mut body)
    };
    match read {
        Ok(_) if body.len() == len => Ok(body),
        // Part of a reply that may be a plaintext: wiped before it goes.
        failed => {
            tessera_core::bytes::give(body, Held::Secret);
            Err(FrameError::Io(failed.err().unwrap_or_else(|| {
                std::io::ErrorKind::UnexpectedEof.into()
            })))
        }
    }
}

impl Stream {
    /// Connects to `address`; a Unix socket is used only if the checks of [`crate::peer`]
    /// pass (with `secure`'s configuration and log, when the device has them).
    pub(crate) fn connect(
        address: &ServerAddress,
        connect: Duration,
        reply: Duration,
        secure: Option<&SecureSettings>,
    ) -> Result<Stream, ConnectFailure> {
        let unlogged = |reason: String| ConnectFailure {
            reason,
            logged: false,
        };
        let socket = match address {
            ServerAddress::Unix(path) => {
                let stream =
                    UnixStream::connect(path).map_err(|e| unlogged(unix_failure(path, &e)))?;
                // Who serves it, before anything is sent (see the `peer` module).
                crate::peer::verify(&stream, path, secure).map_err(|reason| ConnectFailure {
                    reason,
                    logged: true,
                })?;
                stream.set_read_timeout(Some(reply)).ok();
                stream.set_write_timeout(Some(reply)).ok();
                // A bulk request crosses in one piece (the device asks the same for replies).
                rustix::net::sockopt::set_socket_send_buffer_size(
                    &stream,
                    tessera_wire::UNIX_SEND_BUFFER,
                )
                .ok();
                Socket::Unix(stream)
            }
            ServerAddress::Tcp { host, port } => {
                let addresses = (host.as_str(), *port).to_socket_addrs().map_err(|e| {
                    unlogged(format!(
                        "cannot resolve {host}: {e}; fix the entry in ET_HSM_NETCLIENT_SERVERLIST or this host's name service"
                    ))
                })?;
                let mut last = format!(
                    "{host} resolved to no address; fix the entry in ET_HSM_NETCLIENT_SERVERLIST"
                );
                let mut connected = None;
                for address in addresses {
                    match TcpStream::connect_timeout(&address, connect) {
                        Ok(stream) => {
                            stream.set_nodelay(true).ok();
                            stream.set_read_timeout(Some(reply)).ok();
                            stream.set_write_timeout(Some(reply)).ok();
                            connected = Some(stream);
                            break;
                        }
                        Err(e) => last = tcp_failure(address, connect, &e),
                    }
                }
                Socket::Tcp(connected.ok_or_else(|| unlogged(last))?)
            }
        };
        Ok(Stream::over(socket))
    }

    /// A stream over a connected socket.
    fn over(socket: Socket) -> Stream {
        Stream {
            socket,
            reading: Mutex::new(ReadBuffer {
                data: vec![0; ReadBuffer::SIZE],
                start: 0,
                end: 0,
                high: 0,
            }),
            writing: Mutex::new(()),
            outbox: Mutex::new(Vec::new()),
            spin: Spin::new(),
            notice: AtomicBool::new(false),
            opened: std::time::Instant::now(),
            last_reply: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Sends one message in the clear.
    pub(crate) fn send(&self, id: u64, message: Message) -> Result<(), Failure> {
        self.queue(Self::clear_frame(id, message));
        self.flush()
    }

    /// The frame of a message in the clear; its spent bulk buffers go back to the pool.
    pub(crate) fn clear_frame(id: u64, message: Message) -> Frame {
        let held = Held::secret_if(message.carries_secret());
        let mut envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: None,
            message,
        };
        let (bytes, bulk) = encode_request_split(&mut envelope);
        envelope.message.recycle();
        Frame { bytes, bulk, held }
    }

    /// Queues one frame for the next [`Stream::flush`]: frames go out in the order they were
    /// queued.
    pub(crate) fn queue(&self, frame: Frame) {
        // Queued in the caller's order (which, for the channel, is the records' order), then
        // written by whichever sender holds the writing turn: a sender never waits for another
        // one's write, and frames queued meanwhile go out together in one write.
        locked(&self.outbox).push(frame);
    }

    /// Writes what is queued, unless another sender is writing (it will write it).
    pub(crate) fn flush(&self) -> Result<(), Failure> {
        loop {
            let writing = match self.writing.try_lock() {
                Ok(writing) => writing,
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
                // A writer that panicked may have left a torn frame: the connection ends.
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    self.socket.shut_down();
                    return Err(Failure::Io("an earlier write broke off".into()));
                }
            };
            let frames = std::mem::take(&mut *locked(&self.outbox));
            if frames.is_empty() {
                drop(writing);
                // A frame queued while this sender held the turn: write it too.
                let queued = !locked(&self.outbox).is_empty();
                if queued {
                    continue;
                }
                return Ok(());
            }
            // Frames queued together go out in one vectored write (IOV_MAX parts at a time),
            // none copied into another buffer.
            let mut parts: Vec<IoSlice<'_>> = frames.iter().flat_map(Frame::parts).collect();
            let written = write_all_parts(&self.socket, &mut &mut parts[..]);
            drop(parts);
            drop(frames);
            if let Err(e) = written {
                // Part of a frame may have gone out: nothing may follow it on this connection
                // (the device would read the next frames as the rest of it), and the frames
                // queued meanwhile go with it.
                self.socket.shut_down();
                drop(std::mem::take(&mut *locked(&self.outbox)));
                return Err(Failure::Io(e.to_string()));
            }
        }
    }

    /// Reads the next response, whichever request it answers, with that request's id;
    /// `spin`: poll briefly first (when this is the only call waiting: with many in flight
    /// replies come often, and polling would only take a core from the device). A sealed
    /// reply stays in its frame, for the channel to open it there.
    pub(crate) fn receive(&self, spin: bool) -> Result<(u64, Answer), Failure> {
        self.receive_polling(spin.then_some(&self.spin))
    }

    /// [`Stream::receive`], polling first with `spin`'s window (and teaching it), if any.
    fn receive_polling(&self, spin: Option<&Spin>) -> Result<(u64, Answer), Failure> {
        let mut buffer = locked(&self.reading);
        let polled = match spin {
            Some(spin) if buffer.is_empty() => self.spin_for_data(spin, &mut buffer),
            _ => Polled::Skipped,
        };
        let arrived = read_reply(&self.socket, &mut buffer);
        if let (Polled::TimedOut(start), Ok(_), Some(spin)) = (&polled, &arrived, spin) {
            spin.arrived_after(start.elapsed());
        }
        if arrived.as_ref().is_ok_and(|arrived| match arrived {
            Arrived::Body(body) => find_sealed(body).is_none(),
            Arrived::Sealed(..) => false,
            Arrived::Bulk(_) => true,
        }) || arrived.is_err()
        {
            // A reply in the clear (or one that broke off: whatever it was) may be a
            // decryption's plaintext or a key value: what the read buffer has handed out of it,
            // and what earlier, longer fills left beyond the bytes not read yet, is wiped now,
            // before the buffer waits for the next reply.
            let (start, end, high) = (buffer.start, buffer.end, buffer.high);
            buffer.data[..start].fill(0);
            if high > end {
                buffer.data[end..high].fill(0);
            }
            buffer.high = end;
            std::hint::black_box(&mut buffer.data);
        }
        drop(buffer);
        if arrived.is_ok() {
            let now = self.opened.elapsed().as_millis() as u64;
            self.last_reply.store(now, Ordering::Relaxed);
        }
        let arrived = arrived.map_err(|e| match e {
            tessera_wire::FrameError::Io(e) => Failure::Io(e.to_string()),
            other => Failure::Bad(other.to_string()),
        })?;
        let body = match arrived {
            Arrived::Body(body) => body,
            Arrived::Sealed(sealed, record) => {
                return Ok((sealed.id, Answer::Sealed(sealed, record)))
            }
            // Bytes, never an error code: none of the notices below.
            Arrived::Bulk(envelope) => return Ok((envelope.id, Answer::Clear(envelope.result))),
        };
        if let Some(sealed) = find_sealed(&body) {
            return Ok((sealed.id, Answer::Sealed(sealed, body)));
        }
        let envelope = decode_response(&body).map_err(|e| Failure::Bad(e.to_string()));
        // Readable attributes or a decryption's plaintext (or bytes that did not decode) are
        // wiped before the buffer is kept or freed.
        let held = match &envelope {
            Ok(ResponseEnvelope {
                result: Ok(Response::Reply(reply)),
                ..
            }) if !reply.carries_secret() => Held::Data,
            Ok(ResponseEnvelope {
                result: Ok(Response::ServerHello(_)) | Err(_),
                ..
            }) => Held::Data,
            _ => Held::Secret,
        };
        tessera_core::bytes::give(body, held);
        let envelope = envelope?;
        if envelope.id == 0 && envelope.result.as_ref().err() == Some(&Rv::BadProtection.code()) {
            // The device's notice before it closes a clear connection: its flags now require
            // a channel. Unauthenticated, so it may only raise protection (see `Device`).
            self.notice.store(true, Ordering::Relaxed);
            return Err(Failure::Io(NOTICE.into()));
        }
        if envelope.id == 0 && envelope.result.as_ref().err() == Some(&Rv::AccessDenied.code()) {
            // The device's notice before it closes a connection its client access list does
            // not admit (unauthenticated: it only ever ends the connection, which the device
            // does anyway).
            return Err(Failure::Io(ACCESS_DENIED.into()));
        }
        Ok((envelope.id, Answer::Clear(envelope.result)))
    }

    /// How long since the last reply came (or the connection was made).
    pub(crate) fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_reply.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Whether the device sent its closing notice (see [`Stream::receive`]).
    pub(crate) fn noticed(&self) -> bool {
        self.notice.load(Ordering::Relaxed)
    }

    /// Whether the device has closed this connection, or said something while nothing was
    /// asked (its closing notice, which is then read): called with nothing in flight, before a
    /// PIN or a key value would leave in the clear. Frames already read into the buffer are
    /// looked at first, then the socket (one `recv(MSG_PEEK | MSG_DONTWAIT)`). A flag change
    /// that races the call itself is refused by the device, after the fact.
    pub(crate) fn closed_by_device(&self) -> bool {
        let buffered = !locked(&self.reading).is_empty();
        if !buffered {
            let mut byte = [0u8; 1];
            let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
            let peek = match &self.socket {
                Socket::Unix(s) => rustix::net::recv(s, &mut byte, flags),
                Socket::Tcp(s) => rustix::net::recv(s, &mut byte, flags),
            };
            match peek {
                Err(rustix::io::Errno::AGAIN) => return false,
                Ok((n, _)) if n > 0 => {}
                // The end of the stream, or an error: the connection is gone.
                _ => return true,
            }
        }
        // Something arrived unasked: read it (the notice sets `notice`).
        if let Ok((_, answer)) = self.receive(false) {
            answer.discard();
        }
        true
    }

    /// Polls for a reply for a few microseconds before the caller sleeps in `read` (see
    /// [`Spin`]). Each poll is a read that does not wait (`MSG_DONTWAIT`, leaving the socket's
    /// own flags alone: another thread may be writing on it) into the read buffer, so the
    /// reply that ends the poll is already read: one system call, not a peek and a read.
    fn spin_for_data(&self, spin: &Spin, buffer: &mut ReadBuffer) -> Polled {
        if spin
            .skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Polled::Skipped;
        }
        let start = std::time::Instant::now();
        let window = spin.window();
        loop {
            let took = start.elapsed();
            if took >= window {
                return Polled::TimedOut(start);
            }
            let read = match &self.socket {
                Socket::Unix(s) => rustix::net::recv(s, &mut buffer.data, RecvFlags::DONTWAIT),
                Socket::Tcp(s) => rustix::net::recv(s, &mut buffer.data, RecvFlags::DONTWAIT),
            };
            match read {
                Ok((n, _)) if n > 0 => {
                    buffer.start = 0;
                    buffer.end = n;
                    buffer.high = buffer.high.max(n);
                    spin.arrived_within(took);
                    return Polled::Done;
                }
                // Yield rather than spin: the device may be waiting for this very CPU.
                Err(rustix::io::Errno::AGAIN) => std::thread::yield_now(),
                Err(rustix::io::Errno::INTR) => {}
                // The end of the stream or an error: the blocking read sees it (again) and
                // reports it.
                _ => return Polled::Done,
            }
        }
    }

    /// Sends one request's frame and reads its response (with nothing else in flight).
    pub(crate) fn exchange(&self, id: u64, frame: Frame) -> Result<Answer, Failure> {
        self.exchange_polling(id, frame, &self.spin)
    }

    /// Sends a handshake's opening, runs `meanwhile` while the device works on it, then waits
    /// for the device's answer, polling for it with the window learned from earlier handshakes
    /// of this process.
    pub(crate) fn exchange_handshake<T>(
        &self,
        id: u64,
        frame: Frame,
        meanwhile: impl FnOnce() -> T,
    ) -> Result<(T, Answer), Failure> {
        self.queue(frame);
        self.flush()?;
        let done = meanwhile();
        self.receive_polling_for(id, &HANDSHAKES)
            .map(|answer| (done, answer))
    }

    fn exchange_polling(&self, id: u64, frame: Frame, spin: &Spin) -> Result<Answer, Failure> {
        self.queue(frame);
        self.flush()?;
        self.receive_polling_for(id, spin)
    }

    /// Reads the response to request `id`, sent already, with nothing else in flight before it
    /// but what has been read.
    pub(crate) fn receive_for(&self, id: u64) -> Result<Answer, Failure> {
        self.receive_polling_for(id, &self.spin)
    }

    fn receive_polling_for(&self, id: u64, spin: &Spin) -> Result<Answer, Failure> {
        let (for_id, answer) = self.receive_polling(Some(spin))?;
        if for_id != id {
            answer.discard();
            return Err(Failure::Bad(format!(
                "reply to request {for_id} arrived for request {id}"
            )));
        }
        Ok(answer)
    }
}

/// A response: in the clear, or a sealed reply still in its frame body (see
/// [`tessera_wire::find_sealed`]).
pub(crate) enum Answer {
    Clear(Result<Response, u64>),
    Sealed(SealedFrame, Vec<u8>),
}

/// A reply record of the channel, as it arrived: the only answer a protected call accepts
/// (rule: once a call is sent in a channel, nothing but a record of that channel that opens
/// answers it).
pub(crate) enum SealedReply {
    /// Still in its frame body, where it will be opened.
    Framed(SealedFrame, Vec<u8>),
    /// Decoded with its envelope (a frame the finder did not recognise).
    Decoded(tessera_channel::Record),
}

impl Answer {
    /// The answer to a request sent through the channel: a sealed record, or what arrived
    /// instead (a clear reply or error code: a forgery, never a result).
    pub(crate) fn into_sealed(self) -> Result<SealedReply, String> {
        match self {
            Answer::Sealed(sealed, frame) => Ok(SealedReply::Framed(sealed, frame)),
            Answer::Clear(Ok(Response::Protected(record))) => Ok(SealedReply::Decoded(record)),
            Answer::Clear(Ok(_)) => Err("a reply in the clear".into()),
            Answer::Clear(Err(code)) => Err(format!("a clear error code 0x{code:08X}")),
        }
    }

    /// The answer to a request sent in the clear: a sealed one is not an answer to it.
    pub(crate) fn into_clear(self) -> Result<Response, u64> {
        match self {
            Answer::Clear(result) => result,
            sealed => {
                sealed.discard();
                Err(Rv::BadReply.code())
            }
        }
    }

    /// As [`Answer::into_clear`], for a call: anything but a reply is a bad reply.
    pub(crate) fn into_clear_reply(self) -> Result<tessera_wire::Reply, u64> {
        match self.into_clear()? {
            Response::Reply(reply) => Ok(reply),
            _ => Err(Rv::BadReply.code()),
        }
    }

    /// Drops an answer that will not be opened; its frame goes back to the pool.
    pub(crate) fn discard(self) {
        if let Answer::Sealed(_, frame) = self {
            tessera_core::bytes::give(frame, Held::Data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reply(id: u64, reply: tessera_wire::Reply) -> Vec<u8> {
        tessera_wire::encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: None,
            result: Ok(Response::Reply(reply)),
        })
    }

    /// A record whose body is `len` bytes (not sealed by any channel: the reader only finds it).
    fn record(id: u64, len: usize) -> tessera_channel::Record {
        tessera_channel::Record {
            header: tessera_channel::RecordHeader {
                channel: 9,
                direction: tessera_channel::Direction::ToClient,
                sequence: id,
                generation: 0,
                protection: tessera_channel::Protection::Encrypted,
            },
            body: (0..len).map(|i| (i % 247) as u8).collect(),
            mac: Vec::new(),
        }
    }

    /// The frame of a sealed reply to request `id` whose record's body is `len` bytes.
    fn sealed(id: u64, len: usize) -> Vec<u8> {
        tessera_wire::encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: Some(9),
            result: Ok(Response::Protected(record(id, len))),
        })
    }

    fn bytes_of(arrived: Arrived) -> (u64, Vec<u8>) {
        let envelope = match arrived {
            Arrived::Bulk(envelope) => envelope,
            Arrived::Body(body) => decode_response(&body).expect("a reply"),
            Arrived::Sealed(..) => panic!("a sealed record, not bytes"),
        };
        match envelope.result {
            Ok(Response::Reply(tessera_wire::Reply::Bytes(bytes))) => (envelope.id, bytes),
            other => panic!("not bytes: {other:?}"),
        }
    }

    /// Bulk replies are read with their payload in a buffer of its own when their head came
    /// with the frame's first read, whole otherwise, and either way the same reply; the
    /// replies behind them are read as they came.
    #[test]
    fn a_bulk_reply_is_read_whole_however_its_bytes_arrive() {
        let (device, library) = UnixStream::pair().expect("a socket pair");
        let payload = |seed: u8| -> Vec<u8> {
            (0..(1usize << 20) + 16)
                .map(|i| (i % 253) as u8 ^ seed)
                .collect()
        };
        let writer = std::thread::spawn(move || {
            let mut device = device;
            // Whole, then a small reply in the same write.
            let bulk = reply(1, tessera_wire::Reply::Bytes(payload(1)));
            let done = reply(2, tessera_wire::Reply::Done);
            device.write_all(&[bulk, done].concat()).expect("written");
            // Its head cut short by the first write: the reader cannot divide it.
            let bulk = reply(3, tessera_wire::Reply::Bytes(payload(3)));
            device
                .write_all(&bulk[..FRAME_HEADER_LEN + 5])
                .expect("written");
            std::thread::sleep(Duration::from_millis(50));
            device
                .write_all(&bulk[FRAME_HEADER_LEN + 5..])
                .expect("written");
            // A payload of exactly the threshold, and one below it.
            for (id, len) in [(4, SPLIT_PAYLOAD), (5, SPLIT_PAYLOAD - 40)] {
                let bytes = vec![id as u8; len];
                device
                    .write_all(&reply(id, tessera_wire::Reply::Bytes(bytes)))
                    .expect("written");
            }
            // A large sealed record, then a small one.
            for (id, len) in [(7, (1usize << 20) + 40), (8, 100)] {
                device.write_all(&sealed(id, len)).expect("written");
            }
            // Cut off in the middle of a payload.
            let bulk = reply(6, tessera_wire::Reply::Bytes(payload(6)));
            device.write_all(&bulk[..bulk.len() / 2]).expect("written");
        });
        let socket = Socket::Unix(library);
        let mut buffer = ReadBuffer {
            data: vec![0; ReadBuffer::SIZE],
            start: 0,
            end: 0,
            high: 0,
        };
        let first = read_reply(&socket, &mut buffer).expect("a reply");
        assert!(matches!(first, Arrived::Bulk(_)), "not divided");
        assert_eq!(bytes_of(first), (1, payload(1)));
        let second = read_reply(&socket, &mut buffer).expect("a reply");
        let Arrived::Body(body) = second else {
            panic!("a small reply divided")
        };
        assert!(matches!(
            decode_response(&body).map(|e| (e.id, e.result)),
            Ok((2, Ok(Response::Reply(tessera_wire::Reply::Done))))
        ));
        let third = read_reply(&socket, &mut buffer).expect("a reply");
        assert!(
            matches!(third, Arrived::Body(_)),
            "divided without its head"
        );
        assert_eq!(bytes_of(third), (3, payload(3)));
        let fourth = read_reply(&socket, &mut buffer).expect("a reply");
        assert!(matches!(fourth, Arrived::Bulk(_)));
        assert_eq!(bytes_of(fourth), (4, vec![4; SPLIT_PAYLOAD]));
        let fifth = read_reply(&socket, &mut buffer).expect("a reply");
        assert!(matches!(fifth, Arrived::Body(_)));
        assert_eq!(bytes_of(fifth), (5, vec![5; SPLIT_PAYLOAD - 40]));
        // The large record's rest in a buffer of its own, its parts where the finder says.
        let seventh = read_reply(&socket, &mut buffer).expect("a reply");
        let Arrived::Sealed(found, rest) = seventh else {
            panic!("a large sealed record read whole")
        };
        let whole = sealed(7, (1 << 20) + 40);
        assert_eq!(
            rest,
            whole[FRAME_HEADER_LEN + SEALED_START_LEN..],
            "the record's rest"
        );
        assert_eq!(found.id, 7);
        assert_eq!(
            &rest[found.body.clone()],
            &record(7, (1 << 20) + 40).body[..]
        );
        let eighth = read_reply(&socket, &mut buffer).expect("a reply");
        let Arrived::Body(body) = eighth else {
            panic!("a small sealed record divided")
        };
        assert_eq!(find_sealed(&body).map(|found| found.id), Some(8));
        let cut = read_reply(&socket, &mut buffer);
        writer.join().expect("the writer");
        assert!(
            matches!(cut, Err(FrameError::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "a cut reply: {:?}",
            cut.map(|_| ())
        );
    }

    /// Frames queued together, a bulk input among them, arrive as their whole encodings, in
    /// order, also when the socket takes them a piece at a time (a send timeout makes a write
    /// stop partway while the reader pauses).
    #[test]
    fn frames_with_a_bulk_input_are_written_whole_and_in_order() {
        use tessera_wire::{Call, Operation};
        let data = || {
            (0..(1usize << 20) + 3)
                .map(|i| (i % 241) as u8)
                .collect::<Vec<u8>>()
        };
        let encrypt = || {
            Message::Call(Call::OperationSingle {
                session: 5,
                operation: Operation::Encrypt,
                data: data(),
                signature: Vec::new(),
            })
        };
        let random = || {
            Message::Call(Call::GenerateRandom {
                session: 5,
                len: 32,
            })
        };
        let whole = |id: u64, message: Message| {
            tessera_wire::encode_request(&RequestEnvelope {
                version: PROTOCOL_VERSION,
                id,
                channel: None,
                message,
            })
        };
        let expected = [
            whole(1, random()),
            whole(2, encrypt()),
            whole(3, random()),
            whole(4, encrypt()),
        ]
        .concat();
        let frames = [
            Stream::clear_frame(1, random()),
            Stream::clear_frame(2, encrypt()),
            Stream::clear_frame(3, random()),
            Stream::clear_frame(4, encrypt()),
        ];
        assert!(frames[1].bulk.is_some() && frames[3].bulk.is_some());
        let (library, device) = UnixStream::pair().expect("a socket pair");
        library
            .set_write_timeout(Some(Duration::from_millis(30)))
            .expect("a send timeout");
        let len = expected.len();
        device
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a receive timeout");
        let reader = std::thread::spawn(move || {
            let mut device = device;
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 96 * 1024];
            for round in 0.. {
                if got.len() >= len {
                    break;
                }
                // Now and then longer than the send timeout: the write in progress stops.
                let pause = if round % 4 == 1 { 70 } else { 2 };
                std::thread::sleep(Duration::from_millis(pause));
                let n = device.read(&mut chunk).expect("read");
                assert!(n > 0, "the stream ended after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let socket = Socket::Unix(library);
        let mut parts: Vec<IoSlice<'_>> = frames.iter().flat_map(Frame::parts).collect();
        assert_eq!(parts.len(), 8);
        let mut parts = &mut parts[..];
        let mut written = Ok(());
        // A write that timed out with nothing taken is retried, as the stream's own timeout
        // would not be here.
        for _ in 0..200 {
            written = write_all_parts(&socket, &mut parts);
            match &written {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => break,
            }
        }
        written.expect("written");
        let got = reader.join().expect("the reader");
        assert!(got == expected, "the bytes differ");
    }

    /// A write that breaks off partway (a send timeout while the device reads nothing) ends
    /// the connection: a later call, with room in the socket again, fails instead of being
    /// written behind the torn frame (where the device would read it as the rest of that
    /// frame: a PIN as data), and the device sees the connection end right after the part
    /// that went out.
    #[test]
    fn nothing_is_written_behind_a_torn_frame() {
        use tessera_wire::{Call, Operation};
        let (library, device) = UnixStream::pair().expect("a socket pair");
        library
            .set_write_timeout(Some(Duration::from_millis(30)))
            .expect("a send timeout");
        device
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a receive timeout");
        let stream = Stream::over(Socket::Unix(library));
        let encrypt = Message::Call(Call::OperationSingle {
            session: 5,
            operation: Operation::Encrypt,
            data: vec![0x11; 4 << 20],
            signature: Vec::new(),
        });
        let torn_len = 4 << 20;
        stream.queue(Stream::clear_frame(1, encrypt));
        assert!(
            stream.flush().is_err(),
            "4 MiB went into a socket nobody reads"
        );
        // The device reads what is there; then the application's next call, with a PIN.
        let mut device = device;
        device.set_nonblocking(true).expect("non-blocking");
        let mut got = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match device.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        let login = Message::Call(Call::Login {
            session: 5,
            user_type: 1,
            pin: tessera_core::SecretBytes::from_slice(b"marker-pin-4242"),
        });
        assert!(
            stream.send(2, login).is_err(),
            "a call was written behind a torn frame"
        );
        device.set_nonblocking(false).expect("blocking");
        let mut rest = Vec::new();
        device.read_to_end(&mut rest).expect("the connection ends");
        got += rest.len();
        assert!(got < torn_len, "the whole frame went out ({got} bytes)");
        assert!(
            !rest.windows(15).any(|w| w == b"marker-pin-4242"),
            "the PIN crossed behind the torn frame"
        );
    }

    /// A handshake's own work (`meanwhile`: the library reads its trust store there) runs
    /// once the opening has reached the device and before the answer is read. The device
    /// here answers only once that work has run: after it, the exchange gets request 1's
    /// answer; with the work left until after the answer (as it was), the device would wait
    /// two seconds and answer for request 99 (which fails the exchange), and the work would
    /// not have seen the opening arrive.
    #[test]
    fn a_handshake_does_its_own_work_while_the_device_answers() {
        let (library, device) = UnixStream::pair().expect("a socket pair");
        let stream = Stream::over(Socket::Unix(library));
        let (opening_arrived, arrival) = std::sync::mpsc::channel();
        let (work_done, done) = std::sync::mpsc::channel();
        let device = std::thread::spawn(move || {
            let mut device = device;
            let frame = tessera_wire::read_frame(&mut device).expect("the opening");
            opening_arrived.send(frame.len()).expect("told");
            let ran = done.recv_timeout(Duration::from_secs(2)).is_ok();
            let id = if ran { 1 } else { 99 };
            device
                .write_all(&reply(id, tessera_wire::Reply::Done))
                .expect("answered");
        });
        let opening = Message::Call(tessera_wire::Call::DeviceInfo);
        let (seen, answer) = stream
            .exchange_handshake(1, Stream::clear_frame(1, opening), || {
                let seen = arrival.recv_timeout(Duration::from_secs(2)).ok();
                work_done.send(()).expect("told");
                seen
            })
            .unwrap_or_else(|_| panic!("the answer to request 1"));
        assert!(
            seen.is_some_and(|len| len > 0),
            "the work ran before the opening reached the device"
        );
        assert!(matches!(
            answer,
            Answer::Clear(Ok(Response::Reply(tessera_wire::Reply::Done)))
        ));
        device.join().expect("the device");
    }

    /// More frames queued than one `sendmsg` takes parts (IOV_MAX) go out whole, in order.
    #[test]
    fn more_queued_frames_than_one_write_takes_go_out_in_order() {
        let frames: Vec<Frame> = (0..1100u64)
            .map(|id| {
                Stream::clear_frame(
                    id,
                    Message::Call(tessera_wire::Call::GenerateRandom {
                        session: 1,
                        len: 32,
                    }),
                )
            })
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
        let (library, device) = UnixStream::pair().expect("a socket pair");
        device
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a receive timeout");
        let len = expected.len();
        let reader = std::thread::spawn(move || {
            let mut device = device;
            let mut got = vec![0u8; len];
            device.read_exact(&mut got).expect("every frame");
            got
        });
        let mut parts: Vec<IoSlice<'_>> = frames.iter().flat_map(Frame::parts).collect();
        assert_eq!(parts.len(), 1100);
        write_all_parts(&Socket::Unix(library), &mut &mut parts[..]).expect("written");
        assert!(
            reader.join().expect("the reader") == expected,
            "the bytes differ"
        );
    }

    fn window(spin: &Spin) -> u32 {
        spin.window.load(Ordering::Relaxed)
    }

    #[test]
    fn the_polling_window_follows_the_replies() {
        let spin = Spin::new();
        assert_eq!(window(&spin), 60);
        // A 150 µs signature, missed by the shortest window: the next poll waits for it.
        spin.arrived_after(Duration::from_micros(150));
        assert_eq!(window(&spin), 225);
        assert_eq!(spin.skip.load(Ordering::Relaxed), 0);
        // Quick replies after it bring the window back down, a step at a time.
        spin.arrived_within(Duration::from_micros(5));
        assert_eq!(window(&spin), 219);
        for _ in 0..200 {
            spin.arrived_within(Duration::from_micros(5));
        }
        assert_eq!(window(&spin), 60);
        // Replies later than the longest window: one or two leave the window as it was (a
        // signature's tail), a third in a row sends the next reads to sleep at once.
        spin.arrived_after(Duration::from_micros(200));
        for _ in 0..2 {
            spin.arrived_after(Duration::from_millis(3));
            assert_eq!(window(&spin), 300);
            assert_eq!(spin.skip.load(Ordering::Relaxed), 0);
        }
        spin.arrived_after(Duration::from_millis(3));
        assert_eq!(window(&spin), 60);
        assert_eq!(spin.skip.load(Ordering::Relaxed), SPIN_BACKOFF);
        // Never wider than the longest window.
        spin.arrived_after(SPIN_MAX);
        assert_eq!(window(&spin), SPIN_MAX.as_micros() as u32);
    }
}
