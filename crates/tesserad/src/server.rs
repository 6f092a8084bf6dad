//! Listeners, one task per connection, the connection limit and graceful shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_hsm::{Hsm, HsmOptions};
use tessera_wire::{
    decode_request, encode_response, find_sealed_request, FrameError, Reply, Request,
    ResponseEnvelope, SealedFrame, FRAME_HEADER_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use zeroize::Zeroize;

use crate::guard::Guard;
use crate::secure::{KeyLimits, Secure};
use tessera_config::listen::Listen;

/// The signal a process gets when a file would grow past its size limit (Linux).
const SIGXFSZ: i32 = 25;

/// What the daemon serves.
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Vec<Listen>,
    pub max_connections: usize,
    pub options: HsmOptions,
    pub key_limits: KeyLimits,
    /// Limits for network peers.
    pub peer_limits: crate::guard::Limits,
    /// How long a frame may take to arrive once it has begun, and a handshake to be finished
    /// once answered.
    pub frame_timeout: Duration,
    /// How long a connection without sessions may wait for its next request
    /// (`--idle-timeout`; zero: without limit).
    pub idle_timeout: Duration,
    /// Connections only local-socket clients may take (`--local-connections`): network
    /// clients may hold `max_connections - local_reserve`.
    pub local_reserve: usize,
    /// The largest frame one connection may send (`--max-frame-len`).
    pub max_frame_len: usize,
    /// Bytes buffered for unfinished frames, all connections together (`--max-frame-memory`).
    pub frame_memory: usize,
    /// Threads that serve connections (`--io-threads`).
    pub io_threads: usize,
    /// How long a connection polls for the next request after answering one (`--busy-poll`;
    /// with one I/O thread only).
    pub busy_poll: Duration,
    /// The appliance's client access list, read at every network connection; `None` outside
    /// appliance mode.
    pub client_access: Option<PathBuf>,
    /// With `--exit-with-parent`: the process id of tesserad's parent at start; the daemon
    /// shuts down once it has another.
    pub parent: Option<u32>,
    /// `--allow-group-access` (or `--appliance`): the data directory and the Unix sockets are
    /// open to the group.
    pub allow_group_access: bool,
}

/// Where a connection comes from, for the client access list.
trait PeerAddress: std::fmt::Debug {
    /// The network address, or `None` for a local socket (never filtered).
    fn ip(&self) -> Option<std::net::IpAddr>;
}

impl PeerAddress for std::net::SocketAddr {
    fn ip(&self) -> Option<std::net::IpAddr> {
        Some(std::net::SocketAddr::ip(self))
    }
}

impl PeerAddress for tokio::net::unix::SocketAddr {
    fn ip(&self) -> Option<std::net::IpAddr> {
        None
    }
}

/// Socket settings of an accepted connection.
trait Tune {
    fn tune(&self);
}

impl Tune for tokio::net::TcpStream {
    /// Replies go out at once: with several calls in flight, Nagle's algorithm would hold a
    /// small reply back until the previous one is acknowledged.
    fn tune(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Tune for tokio::net::UnixStream {
    fn tune(&self) {}
}

/// How a connection's peer is named in `ctconf --channels` and in the event log.
trait Named {
    /// `address` is what `accept` gave.
    fn named(&self, address: &dyn std::fmt::Debug) -> String;
}

impl Named for tokio::net::TcpStream {
    fn named(&self, address: &dyn std::fmt::Debug) -> String {
        format!("{address:?}")
    }
}

impl Named for tokio::net::UnixStream {
    /// A local peer has no address worth showing: its process id and program name
    /// (`SO_PEERCRED`, then `/proc/PID/comm`) say which application it is, as
    /// `pid=1234(pkcs11-tool)` (one word, as the columns of `ctconf --channels` need).
    fn named(&self, _address: &dyn std::fmt::Debug) -> String {
        let Ok(credentials) = self.peer_cred() else {
            return "local(unknown)".into();
        };
        let Some(pid) = credentials.pid() else {
            return format!("local(uid={})", credentials.uid());
        };
        format!("pid={pid}({})", program_name(pid))
    }
}

/// The program name of process `pid` as the kernel keeps it (at most 15 bytes, set by the
/// process itself: only printable characters of it are shown, a space as `_`).
fn program_name(pid: i32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) => name
            .trim_end_matches('\n')
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .take(16)
            .collect(),
        Err(_) => "unknown".into(),
    }
}

/// What identifies one version of the access list file: inode, modification time and size
/// (`None`: no file). `psesh` replaces the file by a rename, which changes the inode.
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The list last read, and the version it was read from.
static ACCESS_CACHE: std::sync::Mutex<
    Option<(PathBuf, Stamp, tessera_config::access::ClientAccess)>,
> = std::sync::Mutex::new(None);

/// The access list at `path`: read again only when the file changed (a `stat` per connection,
/// not a read), so a change made in `psesh` applies to the next connection.
fn access_list(path: &Path) -> Result<tessera_config::access::ClientAccess, String> {
    let current = stamp(path);
    let mut cache = ACCESS_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((cached_path, cached_stamp, list)) = cache.as_ref() {
        if cached_path == path && *cached_stamp == current {
            return Ok(list.clone());
        }
    }
    let list = tessera_config::access::ClientAccess::read(path)?;
    *cache = Some((path.to_path_buf(), current, list.clone()));
    Ok(list)
}

/// Whether the access list admits this peer; an unreadable list admits nobody.
fn admitted(list: Option<&Path>, peer: &dyn PeerAddress) -> bool {
    let (Some(list), Some(ip)) = (list, peer.ip()) else {
        return true;
    };
    match access_list(list) {
        Ok(access) if access.admits(ip) => true,
        Ok(_) => {
            tracing::warn!(peer = %ip, "connection refused: not in the client access list");
            false
        }
        Err(e) => {
            tracing::error!(peer = %ip, error = %e, "connection refused: the client access list is unreadable");
            false
        }
    }
}

/// Ends a connection the client access list does not admit, after one frame: request id 0
/// (never a request's), `CKR_ACCESS_DENIED`, so that the library can log that the access list
/// refused it rather than a lost connection. What the client sends meanwhile is read and
/// dropped (closing with unread data would reset the connection, and the notice with it),
/// for one second at most.
async fn refuse_with_notice<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let frame = encode_response(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id: 0,
        channel: None,
        result: Err(tessera_core::Rv::AccessDenied.code()),
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Holds the data directory's lock for the daemon's lifetime.
fn lock_data_dir(data_dir: &Path, allow_group: bool) -> Result<File, String> {
    crate::datadir::prepare(data_dir, allow_group)?;
    let path = data_dir.join("tesserad.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the data directory {} is in use by another tesserad (lock {} is held); \
             stop that daemon or choose another --data-dir",
            data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// The mode of the daemon's Unix sockets: its user's (connecting needs write permission), and
/// its group's with `--allow-group-access`; never others'.
pub fn socket_mode(allow_group: bool) -> u32 {
    if allow_group {
        0o660
    } else {
        0o600
    }
}

fn bind_unix(path: &Path, allow_group: bool) -> Result<UnixListener, String> {
    crate::local::prepare_directory(path)?;
    // A socket of this user left by a daemon that died: only ours could be there while we
    // hold the data directory lock, unless another daemon with another data directory uses
    // this path. Anything else there is refused, not removed (see `local`).
    if crate::local::existing(path)? == crate::local::Existing::OwnSocket {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is already served by another daemon",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(socket_mode(allow_group)),
        )
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    }
    Ok(listener)
}

impl Config {
    /// One thread owns the event loop, and connections may busy-poll (see [`Poller`]).
    fn one_io_thread(&self) -> bool {
        self.io_threads <= 1
    }
}

/// Runs the daemon until SIGINT or SIGTERM (or, with `--exit-with-parent`, its parent's end).
pub fn run(config: Config) -> Result<(), String> {
    // Socket directories first: a refused one stops the daemon before it touches the data.
    for listen in &config.listen {
        if let Listen::Unix(path) = listen {
            crate::local::prepare_directory(path)?;
        }
    }
    let _lock = lock_data_dir(&config.data_dir, config.allow_group_access)?;
    let hsm = Hsm::open(&config.data_dir, &config.options).map_err(|e| e.to_string())?;
    // One I/O thread owns the runtime's event loop, so a connection that polls for its next
    // request (`Poller`) sees it as soon as it arrives; with several, readiness reaches the
    // thread that waits for events, and polling would only wake the others.
    let mut builder = if config.one_io_thread() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.io_threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(Arc::new(hsm), config))
}

async fn serve(hsm: Arc<Hsm>, config: Config) -> Result<(), String> {
    // A store file that may grow no more (RLIMIT_FSIZE) must fail the write, not kill the
    // daemon: with a handler installed, SIGXFSZ no longer terminates and the write gives EFBIG.
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
    let (stop_sender, stop) = watch::channel(false);
    let (clear_sender, clear_ended) = watch::channel(0u64);
    hsm.on_clear_sessions_ended(move || clear_sender.send_modify(|count| *count += 1));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let network = Arc::new(Semaphore::new(
        config
            .max_connections
            .saturating_sub(config.local_reserve)
            .max(1),
    ));
    let tally = Arc::new(Tally::default());
    let shared = Shared {
        idle_timeout: config.idle_timeout,
        max_frame_len: config.max_frame_len,
        frames: Arc::new(FrameMemory {
            bytes: Arc::new(Semaphore::new(config.frame_memory)),
            exhausted: AtomicBool::new(false),
            tally: tally.clone(),
        }),
        tally: tally.clone(),
        clear_ended,
        hsm: hsm.clone(),
        guard: Arc::new(Guard::new(config.peer_limits)),
        key_limits: config.key_limits,
        frame_timeout: config.frame_timeout,
        poller: Arc::new(Poller {
            window: if config.one_io_thread() {
                config.busy_poll
            } else {
                Duration::ZERO
            },
            busy: AtomicBool::new(false),
        }),
    };
    let mut sockets = Vec::new();
    let mut tasks = Vec::new();
    let mut shown = Vec::new();
    for listen in &config.listen {
        match listen {
            Listen::Unix(path) => {
                let listener = bind_unix(path, config.allow_group_access)?;
                sockets.push(path.clone());
                shown.push(format!("unix:{}", path.display()));
                tasks.push(tokio::spawn(accept_unix(
                    listener,
                    shared.clone(),
                    limit.clone(),
                    None,
                    stop.clone(),
                    config.client_access.clone(),
                )));
            }
            Listen::Tcp(address) => {
                let listener = match TcpListener::bind(address).await {
                    Ok(listener) => listener,
                    // An appliance keeps serving its other addresses (a bad one set with
                    // `psesh network` must not take the HSM off the air); otherwise it is fatal.
                    Err(e) if config.client_access.is_some() && config.listen.len() > 1 => {
                        tracing::error!(address = %address, error = %e, "cannot listen on this address; serving the others");
                        continue;
                    }
                    Err(e) => return Err(format!("cannot listen on tcp:{address}: {e}")),
                };
                let local = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| address.clone());
                shown.push(format!("tcp:{local}"));
                tasks.push(tokio::spawn(accept_tcp(
                    listener,
                    shared.clone(),
                    limit.clone(),
                    Some(network.clone()),
                    stop.clone(),
                    config.client_access.clone(),
                )));
            }
        }
    }
    if let Some(list) = &config.client_access {
        // What `psesh network show` reports.
        let listening = list.with_file_name("listening");
        // Group-readable (psesh runs as the appliance's accounts).
        if let Err(e) =
            tessera_config::write_atomically(&listening, &(shown.join("\n") + "\n"), 0o660)
        {
            tracing::warn!(file = %listening.display(), error = %e, "cannot record the listen addresses");
        }
    }
    tracing::info!(
        serial = hsm.serial(),
        data_dir = %config.data_dir.display(),
        listen = %shown.join(" "),
        appliance = config.client_access.is_some(),
        "tesserad ready"
    );
    // Channel openings and closings reach the event log in batches (tessera-hsm's EventLog).
    // So do the daemon's limits, counted and reported once a second at most.
    let flusher = {
        let hsm = hsm.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            let mut ticks = 0u64;
            loop {
                every.tick().await;
                ticks += 1;
                let hsm = hsm.clone();
                let tally = tally.clone();
                let report = ticks.is_multiple_of(4);
                let _ = tokio::task::spawn_blocking(move || {
                    if report {
                        tally.report(&hsm);
                    }
                    hsm.flush_events()
                })
                .await;
            }
        })
    };
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutting down"),
        parent = parent_gone(config.parent) => {
            tracing::info!(parent, "shutting down: the process that started tesserad has ended");
        }
    }
    let _ = stop_sender.send(true);
    for task in tasks {
        let _ = task.await;
    }
    flusher.abort();
    let last = hsm.clone();
    let _ = tokio::task::spawn_blocking(move || {
        tally.report(&last);
        last.close_events()
    })
    .await;
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
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

async fn wait_for_signal() {
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

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    hsm: Arc<Hsm>,
    guard: Arc<Guard>,
    key_limits: KeyLimits,
    frame_timeout: Duration,
    poller: Arc<Poller>,
    /// Changes when the flags come to require a channel: connections without one close (see
    /// `serve_connection`).
    clear_ended: watch::Receiver<u64>,
    idle_timeout: Duration,
    max_frame_len: usize,
    frames: Arc<FrameMemory>,
    tally: Arc<Tally>,
}

/// What the daemon's own limits refused or cut off since the last report: one `limit-reached`
/// event per limit and second at most, with the count, so that a flood never floods the log.
#[derive(Default)]
struct Tally {
    idle: std::sync::atomic::AtomicU64,
    network_full: std::sync::atomic::AtomicU64,
    all_full: std::sync::atomic::AtomicU64,
    frame_memory: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self, hsm: &Hsm) {
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

/// The memory for unfinished frames, all connections together (`--max-frame-memory`): a frame
/// over [`UNCOUNTED`] bytes is read into a buffer that grows as its bytes arrive, each growth
/// taken from here and given back once the frame is complete. A connection that finds none
/// waits (its frame must still arrive within `--frame-timeout`); the others go on.
struct FrameMemory {
    bytes: Arc<Semaphore>,
    exhausted: AtomicBool,
    tally: Arc<Tally>,
}

/// Frames up to this size are read without counting against [`FrameMemory`] (every connection
/// may hold one).
const UNCOUNTED: usize = 64 * 1024;

impl FrameMemory {
    async fn take(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, FrameError> {
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
                Tally::count(&self.tally.frame_memory);
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

/// Busy polling (`--busy-poll`): after answering a request, a connection may poll for its
/// client's next one for a short window instead of sleeping at once. A sleeping daemon is woken
/// by an interrupt to an idle (halted) CPU, which on a virtual machine takes longer than a small
/// call; a polling one sees the request at once. One connection polls at a time, so polling
/// never takes both cores, and it yields the CPU to other threads between polls.
struct Poller {
    window: Duration,
    busy: AtomicBool,
}

impl Poller {
    /// Waits for `future`, polling it (and yielding) for up to the window first when no other
    /// connection is polling.
    async fn promptly<F: std::future::Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        if self.window.is_zero()
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return future.await;
        }
        struct Turn<'a>(&'a AtomicBool);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let turn = Turn(&self.busy);
        let start = std::time::Instant::now();
        loop {
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
            if let std::task::Poll::Ready(output) = polled {
                return output;
            }
            if start.elapsed() >= self.window {
                break;
            }
            // Other threads of this CPU first, then the runtime's other tasks and its I/O
            // readiness (a yielded task runs again after the runtime polls for events).
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
        drop(turn);
        future.await
    }
}

macro_rules! accept_loop {
    ($name:ident, $listener:ty) => {
        async fn $name(
            listener: $listener,
            shared: Shared,
            limit: Arc<Semaphore>,
            network: Option<Arc<Semaphore>>,
            mut stop: watch::Receiver<bool>,
            client_access: Option<PathBuf>,
        ) {
            // Whether the last connection was refused (logged once per episode).
            let mut refusing = false;
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.changed() => return,
                };
                let (stream, peer, ip) = match accepted {
                    Ok((stream, peer)) => {
                        if !admitted(client_access.as_deref(), &peer) {
                            // Told why, so that its library can say so: the connection's only
                            // frame is the notice.
                            tokio::spawn(refuse_with_notice(stream));
                            continue;
                        }
                        stream.tune();
                        let name = stream.named(&peer);
                        (stream, name, PeerAddress::ip(&peer))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = shared.guard.connect(ip) else {
                    drop(stream);
                    continue;
                };
                // A network connection takes one of the network's share first: the rest of
                // the connections stay for local applications.
                let share = match &network {
                    None => None,
                    Some(network) => match network.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            Tally::count(&shared.tally.network_full);
                            if !refusing {
                                tracing::warn!(peer, "network connection refused: the network share of the connections is taken (--max-connections minus --local-connections)");
                                refusing = true;
                            }
                            drop(stream);
                            continue;
                        }
                    },
                };
                let permit = match limit.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        Tally::count(&shared.tally.all_full);
                        if !refusing {
                            tracing::warn!(peer, "connection refused: the connection limit is reached (--max-connections)");
                            refusing = true;
                        }
                        drop(stream);
                        continue;
                    }
                };
                refusing = false;
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    serve_connection(stream, peer, ip, shared, stop).await;
                    drop(slot);
                    drop(permit);
                    drop(share);
                });
            }
        }
    };
}

accept_loop!(accept_unix, UnixListener);
accept_loop!(accept_tcp, TcpListener);

/// What waiting for the next frame gave.
enum Read {
    Frame(Vec<u8>),
    /// The peer closed the connection between frames.
    Closed,
    /// No frame began within the idle timeout.
    Idle,
}

/// Reads one frame. Waiting for a frame to begin is limited by `idle` only (clients keep idle
/// connections), but once its first byte is in, the rest must come within `timeout`: a client
/// that trickles bytes (slowloris) is cut off. A frame over `max_len` bytes is refused, and the
/// body of a large one is read into a buffer that grows as its bytes arrive, its memory taken
/// from `memory` until the frame is complete: a declared length allocates nothing by itself.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
    idle: Option<Duration>,
    max_len: usize,
    memory: &FrameMemory,
) -> Result<Read, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = stream.read_exact(&mut header[..1]);
    let first = match idle {
        // Cancelled while waiting, the read has taken nothing.
        Some(idle) => match tokio::time::timeout(idle, first).await {
            Ok(first) => first,
            Err(_) => return Ok(Read::Idle),
        },
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
        // A small body is read into fresh capacity (no zeroing pass first); a large one into
        // capacity taken as the bytes come (from 1 MiB, doubling: a few copies at most).
        let mut taken: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut body = if len <= UNCOUNTED {
            Vec::with_capacity(len)
        } else {
            let first = len.min(1 << 20);
            taken = Some(memory.take(first).await?);
            Vec::with_capacity(first)
        };
        let mut room = body.capacity().min(len);
        while body.len() < len {
            if body.len() == room {
                let more = len.min(room * 2) - room;
                let permit = memory.take(more).await?;
                match taken.as_mut() {
                    Some(taken) => taken.merge(permit),
                    None => taken = Some(permit),
                }
                body.reserve_exact(room + more - body.len());
                room += more;
            }
            let wanted = (room - body.len()) as u64;
            if (&mut *stream).take(wanted).read_buf(&mut body).await? == 0 {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        drop(taken);
        Ok(body)
    };
    match tokio::time::timeout(timeout, rest).await {
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

/// The read buffer of a connection: a small request arrives whole in one read; a larger one is
/// read past it, straight into its own buffer. Kept small, as every idle connection holds one.
const READ_BUFFER: usize = 1024;

/// Requests of one connection that may run at once; the connection's next request waits for
/// one of them to be answered (and written), which also bounds the replies queued for a client
/// that does not read.
const IN_FLIGHT: u32 = 32;

/// A reply frame on its way to the writer, with the slot it frees once written and whether it
/// carries a secret in the clear ([`Reply::carries_secret`]): such a frame is wiped once
/// written.
type Outgoing = (Vec<u8>, tokio::sync::OwnedSemaphorePermit, bool);

fn lock_secure(secure: &std::sync::Mutex<Secure>) -> std::sync::MutexGuard<'_, Secure> {
    secure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `work` on the connection's channel state on the blocking pool and waits for it, so that
/// the I/O thread serves other connections meanwhile (a panic answers CKR_GENERAL_ERROR).
async fn off_thread<T: Send + 'static>(
    secure: &Arc<std::sync::Mutex<Secure>>,
    work: impl FnOnce(&mut Secure) -> Result<T, u64> + Send + 'static,
) -> Result<T, u64> {
    let secure = secure.clone();
    tokio::task::spawn_blocking(move || work(&mut lock_secure(&secure)))
        .await
        .unwrap_or(Err(tessera_core::Rv::GeneralError.code()))
}

/// Runs `work` on the connection's channel state: on the blocking pool when it is `large`
/// (see [`off_thread`]), else at once on the I/O thread.
async fn on_channel<T: Send + 'static>(
    secure: &Arc<std::sync::Mutex<Secure>>,
    large: bool,
    work: impl FnOnce(&mut Secure) -> Result<T, u64> + Send + 'static,
) -> Result<T, u64> {
    if large {
        off_thread(secure, work).await
    } else {
        work(&mut lock_secure(secure))
    }
}

/// Queues one response.
fn respond(
    out: &tokio::sync::mpsc::UnboundedSender<Outgoing>,
    id: u64,
    channel: Option<u64>,
    result: Result<Reply, u64>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let secret = matches!(&result, Ok(reply) if reply.carries_secret());
    let frame = encode_response(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id,
        channel,
        result,
    });
    let _ = out.send((frame, slot, secret));
}

/// Queues the reply to request `id` sealed in the connection's channel, under its lock (so
/// that replies are written in the order of their sequence numbers); when the channel is gone,
/// the error in the clear.
fn respond_sealed(
    out: &tokio::sync::mpsc::UnboundedSender<Outgoing>,
    id: u64,
    current: &mut Secure,
    result: &Result<Reply, u64>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    match current.seal(id, result) {
        Ok(frame) => {
            let _ = out.send((frame, slot, false));
        }
        Err(code) => respond(out, id, current.channel_id(), Err(code), slot),
    }
}

/// Serves one connection. Requests are read in order and run concurrently (up to
/// [`IN_FLIGHT`]); each reply carries its request's id and goes out when ready. Inside a
/// channel, records are opened in the order they arrive and replies sealed in the order they
/// are written, which is all the record layer needs. A handshake or a key rollover waits until
/// nothing else runs on the connection.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: String,
    ip: Option<std::net::IpAddr>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let Shared {
        hsm,
        guard,
        key_limits: limits,
        frame_timeout,
        poller,
        mut clear_ended,
        idle_timeout,
        max_frame_len,
        frames,
        tally,
    } = shared;
    let idle = (!idle_timeout.is_zero()).then_some(idle_timeout);
    clear_ended.mark_unchanged();
    // Set when the flags came to require a channel while this connection had none: it closes
    // once what runs has answered, with a notice the library reads before it would send a PIN.
    let mut notice = false;
    let client = hsm.connect();
    let secure = Arc::new(std::sync::Mutex::new(Secure::new(
        hsm.clone(),
        peer.clone(),
        limits,
    )));
    let (reader, mut writer) = tokio::io::split(stream);
    // Buffered: a frame usually arrives whole, and is then taken in one read.
    let mut reader = WipingReader::new(reader);
    let (out, mut outbox) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
    let writing = tokio::spawn(async move {
        while let Some((mut frame, slot, mut secret)) = outbox.recv().await {
            // Replies that are ready together go out in one write (small ones only; a large
            // one is written as it is).
            let mut slots = vec![slot];
            while frame.len() < 64 * 1024 {
                match outbox.try_recv() {
                    Ok((mut more, slot, more_secret)) => {
                        frame.extend_from_slice(&more);
                        if more_secret {
                            more.zeroize();
                        }
                        secret |= more_secret;
                        slots.push(slot);
                    }
                    Err(_) => break,
                }
            }
            let written = writer.write_all(&frame).await;
            if secret {
                // Its whole capacity: growing it may have left earlier copies nowhere else.
                frame.zeroize();
            }
            drop(slots);
            if let Err(e) = written {
                tracing::debug!(client, reason = %e, "client went away");
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    tracing::debug!(client, peer, "client connected");
    loop {
        // An answered handshake must be finished in time.
        let pending = lock_secure(&secure).is_pending();
        let next = async {
            if pending {
                tokio::time::timeout(
                    frame_timeout,
                    read_frame(&mut reader, frame_timeout, None, max_frame_len, &frames),
                )
                .await
                .ok()
            } else {
                Some(read_frame(&mut reader, frame_timeout, idle, max_frame_len, &frames).await)
            }
        };
        // Only a connection without a channel listens for the end of clear sessions: it
        // closes then, so a read cut short here is never resumed.
        let clear = !pending && lock_secure(&secure).channel_id().is_none();
        if !clear {
            // A change seen while the connection has a channel is not this connection's
            // business (its channel was ended on its own): it must not fire once it has none.
            clear_ended.mark_unchanged();
        }
        let frame = tokio::select! {
            frame = poller.promptly(next) => frame,
            _ = stop.changed() => break,
            _ = clear_ended.changed(), if clear => {
                notice = true;
                break;
            }
        };
        let body = match frame {
            Some(Ok(Read::Frame(body))) => body,
            Some(Ok(Read::Closed)) => break,
            Some(Ok(Read::Idle)) => {
                // Kept while it has sessions (its own or its channel's) or calls running.
                let channel_client = lock_secure(&secure).channel_client();
                let busy = slots.available_permits() < IN_FLIGHT as usize
                    || hsm.has_sessions(client)
                    || channel_client.is_some_and(|c| hsm.has_sessions(c));
                if busy {
                    tracing::debug!(client, peer, "idle, kept: it has sessions or calls running");
                    continue;
                }
                Tally::count(&tally.idle);
                tracing::debug!(
                    client,
                    peer,
                    "closing connection: idle without sessions for {} s (--idle-timeout)",
                    idle_timeout.as_secs_f32()
                );
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(client, peer, reason = %e, "closing connection");
                break;
            }
            None => {
                tracing::debug!(
                    client,
                    peer,
                    "closing connection: handshake not finished in time"
                );
                break;
            }
        };
        // A sealed request is opened where it lies in the frame; anything else is decoded.
        let (id, request) = match find_sealed_request(&body) {
            Some(sealed) => (sealed.id, Incoming::Sealed(sealed, body)),
            None => {
                let (mut body, decoded) = decode(body).await;
                // A PIN or key value sent in the clear: the frame and what the read buffer
                // still holds of it are wiped now (the decoded request wipes itself).
                if decoded
                    .as_ref()
                    .map_or(true, |envelope| envelope.request.carries_secret())
                {
                    body.zeroize();
                    reader.wipe_consumed();
                }
                match decoded {
                    Ok(envelope) => (envelope.id, Incoming::Decoded(envelope.request)),
                    Err(e) => {
                        tracing::warn!(client, peer, reason = %e, "closing connection");
                        break;
                    }
                }
            }
        };
        // A slot for this request: one, or all of them for what must run alone.
        let alone = matches!(
            request,
            Incoming::Decoded(Request::Handshake(_) | Request::HandshakeFinish(_))
        );
        let wanted = if alone { IN_FLIGHT } else { 1 };
        let Ok(slot) = slots.clone().acquire_many_owned(wanted).await else {
            break;
        };
        // A record is opened before this connection's next request is read; a large one on
        // the blocking pool (the I/O thread serves the other connections meanwhile).
        let next = match request {
            Incoming::Sealed(sealed, mut frame) => {
                let large = sealed.body.len() > SMALL;
                Next::Opened(
                    on_channel(&secure, large, move |current| {
                        current.open_framed(&sealed, &mut frame)
                    })
                    .await,
                )
            }
            Incoming::Decoded(Request::Protected(record)) => {
                let large = record.body.len() > SMALL;
                Next::Opened(
                    on_channel(&secure, large, move |current| {
                        current.open_record(id, record)
                    })
                    .await,
                )
            }
            Incoming::Decoded(request) => Next::Clear(request),
        };
        match next {
            Next::Clear(Request::Handshake(_)) if !guard.may_handshake(ip) => respond(
                &out,
                id,
                None,
                Err(tessera_core::Rv::HandshakeRateLimited.code()),
                slot,
            ),
            Next::Clear(Request::Handshake(hello)) => {
                if lock_secure(&secure).is_pending() {
                    guard.failed(ip, "a handshake was abandoned for another");
                }
                // The key agreement and the identity signature run on the blocking pool: a
                // flood of handshakes does not hold up the calls of other connections.
                let answer = off_thread(&secure, move |current| current.handshake(&hello)).await;
                if answer.is_err() {
                    guard.failed(ip, "the handshake was refused");
                }
                respond(&out, id, None, answer, slot);
            }
            Next::Clear(Request::HandshakeFinish(finished)) => {
                let answer = lock_secure(&secure).finish(&finished);
                if answer.is_err() {
                    guard.failed(ip, "the key confirmation failed");
                }
                respond(&out, id, None, answer, slot);
            }
            Next::Opened(opened) => {
                match opened {
                    Ok((Request::Rekey, _)) => {
                        // Every earlier reply is sealed and queued before the keys change.
                        drop(slot);
                        let Ok(all) = slots.clone().acquire_many_owned(IN_FLIGHT).await else {
                            break;
                        };
                        let mut current = lock_secure(&secure);
                        respond_sealed(&out, id, &mut current, &Ok(Reply::Done), all);
                        current.rekey();
                    }
                    Ok((request, channel_client)) => {
                        let call = Call {
                            hsm: &hsm,
                            channel: Some(&secure),
                            out: &out,
                            client: channel_client,
                            id,
                        };
                        call.run(request, slot);
                    }
                    // The channel was ended refusing the request: the refusal is its last
                    // record, sealed and queued under the lock like any reply.
                    Err(code) => {
                        let mut current = lock_secure(&secure);
                        let frame = current.seal_end(id, code);
                        let _ = out.send((frame, slot, false));
                        drop(current);
                    }
                }
            }
            Next::Clear(request) => {
                let call = Call {
                    hsm: &hsm,
                    channel: None,
                    out: &out,
                    client,
                    id,
                };
                call.run(request, slot);
            }
        }
    }
    // What runs finishes (its replies may no longer reach anyone), then the connection ends.
    let _all = slots.acquire_many(IN_FLIGHT).await;
    if notice {
        // The connection's last frame, after every reply: request id 0 (never a request's),
        // `CKR_BAD_PROTECTION`. Unauthenticated, so the library only ever raises protection
        // on it.
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
            let _ = out.send((frame, permit, false));
        }
    }
    drop(out);
    let _ = writing.await;
    let mut current = lock_secure(&secure);
    if current.is_pending() {
        guard.failed(ip, "the handshake was abandoned");
    }
    current.close();
    drop(current);
    hsm.disconnect(client);
    // The connection's sessions are gone: so is what their calls left on this thread's stack.
    scrub_stack();
    tracing::debug!(client, "client disconnected");
}

/// A request as read: a sealed record found in its frame, or a decoded envelope's request.
enum Incoming {
    Sealed(SealedFrame, Vec<u8>),
    Decoded(Request),
}

/// What to do with a request: answer it in the clear, or run what a record held (or answer
/// why it could not be opened).
enum Next {
    Clear(Request),
    Opened(Result<(Request, u64), u64>),
}

/// Data up to this size is handled on the I/O thread; larger runs on the blocking pool.
const SMALL: usize = 16 * 1024;

/// Templates and attribute lists up to this many entries are handled on the I/O thread; work
/// on longer ones (matching every object against every attribute) runs on the blocking pool.
const FEW: usize = 64;

/// Decodes a request frame: a large one on the blocking pool (decoding a template of 500 000
/// attributes takes tens of milliseconds, which the I/O thread spends on other connections).
/// The frame is handed back with the result, for the caller to wipe when it carried a secret.
async fn decode(body: Vec<u8>) -> (Vec<u8>, Result<tessera_wire::RequestEnvelope, FrameError>) {
    if body.len() <= SMALL {
        let decoded = decode_request(&body);
        return (body, decoded);
    }
    tokio::task::spawn_blocking(move || {
        let decoded = decode_request(&body);
        (body, decoded)
    })
    .await
    .unwrap_or_else(|_| {
        (
            Vec::new(),
            Err(FrameError::Io(std::io::Error::other(
                "decoding the request failed",
            ))),
        )
    })
}

/// Whether a template is small enough to be handled on the I/O thread.
fn small_template(template: &tessera_core::Template) -> bool {
    template.0.len() <= FEW && template.iter().map(|a| a.value.len()).sum::<usize>() <= SMALL
}

/// Whether a request is answered at once, on the connection's own task: calls that only touch
/// memory and do little work. The others run on the blocking pool (PIN checks, disk writes,
/// RSA, key generation, large data), where a slow one holds up nothing else.
fn quick(request: &Request) -> bool {
    match request {
        Request::DeviceInfo
        | Request::SlotInfo { .. }
        | Request::TokenInfo { .. }
        | Request::MechanismList { .. }
        | Request::MechanismInfo { .. }
        | Request::OpenSession { .. }
        | Request::CloseSession { .. }
        | Request::SessionInfo { .. }
        | Request::ObjectSize { .. }
        | Request::FindObjects { .. }
        | Request::FindObjectsFinal { .. } => true,
        // Work in proportion to the client's input: quick only when that is small.
        Request::GetAttributes { types, .. } => types.len() <= FEW,
        Request::FindObjectsInit { template, .. } | Request::FindObjectsFirst { template, .. } => {
            small_template(template)
        }
        Request::GenerateRandom { len, .. } => *len as usize <= SMALL,
        // Session objects live in memory only; token objects are written to disk.
        Request::GenerateKey { template, .. } | Request::CreateObject { template, .. } => {
            !matches!(template.bool(tessera_core::ck::CKA_TOKEN), Ok(Some(true)))
                && small_template(template)
        }
        Request::DestroyObject { object, .. } => *object >= tessera_hsm::SESSION_OBJECT_BASE,
        Request::OperationOnce {
            mechanism, data, ..
        } => data.len() <= SMALL && !tessera_hsm::uses_rsa(mechanism.ty),
        _ => false,
    }
}

/// One request to answer, in the clear or inside a channel.
struct Call<'a> {
    hsm: &'a Arc<Hsm>,
    channel: Option<&'a Arc<std::sync::Mutex<Secure>>>,
    out: &'a tokio::sync::mpsc::UnboundedSender<Outgoing>,
    client: u64,
    id: u64,
}

impl Call<'_> {
    /// Answers a quick request at once; runs any other on the blocking pool, where a slow one
    /// holds up nothing else and its reply is sealed and queued (large ones off the I/O thread).
    fn run(self, request: Request, slot: tokio::sync::OwnedSemaphorePermit) {
        let protected = self.channel.is_some();
        let stack = StackUse::of(&request);
        if quick(&request) {
            let result = self.hsm.handle(self.client, protected, request);
            let secret_reply = matches!(&result, Ok(reply) if reply.carries_secret());
            answer(self.out, self.channel.map(|c| &**c), self.id, result, slot);
            stack.after(secret_reply);
            return;
        }
        // The I/O thread decoded this request (a PIN or key value passed through its stack) or
        // may hold the marks of key use that this call ends: it scrubs its own stack too.
        if matches!(stack, StackUse::Secret | StackUse::Ending) {
            stack.after(false);
        }
        let (hsm, channel, out) = (self.hsm.clone(), self.channel.cloned(), self.out.clone());
        let (client, id) = (self.client, self.id);
        tokio::task::spawn_blocking(move || {
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                hsm.handle(client, protected, request)
            }));
            let result = handled.unwrap_or_else(|_| {
                tracing::error!(client, "request handler failed");
                Err(tessera_core::Rv::GeneralError)
            });
            let secret_reply = matches!(&result, Ok(reply) if reply.carries_secret());
            answer(&out, channel.as_deref(), id, result, slot);
            stack.after(secret_reply);
        });
    }
}

/// What a call leaves on the stack of the thread that runs it, and when that is overwritten
/// ([`scrub_stack`], a memset of [`SCRUBBED_STACK`]: microseconds and the caches' contents,
/// so not after every call).
#[derive(Clone, Copy)]
enum StackUse {
    /// A PIN or a key value came in the request: scrubbed as soon as it is answered.
    Secret,
    /// Keys were used or made (key schedules, generated values): the stack is marked, and
    /// scrubbed when the use of keys or PINs ends (the next `Ending` call on this thread).
    Keys,
    /// The end of a use of keys or PINs (logout, destroy, session close): scrubs a marked
    /// stack.
    Ending,
    /// Nothing of the kind.
    Plain,
}

thread_local! {
    /// Keys were used on this thread since its stack was last scrubbed.
    static KEYS_ON_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl StackUse {
    fn of(request: &Request) -> StackUse {
        use Request as R;
        match request {
            R::Login { .. }
            | R::InitPin { .. }
            | R::SetPin { .. }
            | R::InitToken { .. }
            | R::CreateObject { .. }
            | R::UnwrapKey { .. }
            | R::AdminSetup { .. }
            | R::Admin { .. } => StackUse::Secret,
            R::OperationInit { .. }
            | R::OperationSingle { .. }
            | R::OperationUpdate { .. }
            | R::OperationFinal { .. }
            | R::OperationOnce { .. }
            | R::GenerateKey { .. }
            | R::GenerateKeyPair { .. }
            | R::WrapKey { .. }
            | R::DeriveKey { .. }
            | R::DigestKey { .. }
            | R::CopyObject { .. }
            | R::GetAttributes { .. }
            | R::SeedRandom { .. } => StackUse::Keys,
            R::Logout { .. }
            | R::DestroyObject { .. }
            | R::CloseSession { .. }
            | R::CloseAllSessions { .. } => StackUse::Ending,
            _ => StackUse::Plain,
        }
    }

    /// After the call has been answered (`secret_reply`: its reply carried a secret).
    fn after(self, secret_reply: bool) {
        let marked = KEYS_ON_STACK.with(|k| k.get());
        let scrub = match self {
            StackUse::Secret => true,
            StackUse::Ending => marked,
            StackUse::Keys | StackUse::Plain => secret_reply,
        };
        if scrub {
            scrub_stack();
            KEYS_ON_STACK.with(|k| k.set(false));
        } else if matches!(self, StackUse::Keys) {
            KEYS_ON_STACK.with(|k| k.set(true));
        }
    }
}

/// How much of the stack below the caller [`scrub_stack`] overwrites: deeper than the engine's
/// calls go on it (the memory scan of `tests/secrets_in_memory.rs` finds no marker with it).
const SCRUBBED_STACK: usize = 32 * 1024;

/// Overwrites the stack below the caller with zeros: what a call that handled a PIN or a key
/// left in the frames of the functions it ran (key schedules, copies made on the way) is
/// overwritten before the thread serves anything else.
#[inline(never)]
fn scrub_stack() {
    let mut area = [0u8; SCRUBBED_STACK];
    // The compiler must write the zeros: the area escapes.
    std::hint::black_box(&mut area);
}

/// The connection's read buffer: a small request arrives whole in one read and is taken from
/// here; a read at least as large as the buffer goes straight to its destination. Unlike
/// tokio's `BufReader`, what it has handed out can be wiped ([`WipingReader::wipe_consumed`]):
/// a PIN sent in the clear does not stay in the buffer until later requests overwrite it.
struct WipingReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Handed out up to here.
    position: usize,
    /// Read from the peer up to here.
    filled: usize,
}

impl<R> WipingReader<R> {
    fn new(inner: R) -> Self {
        WipingReader {
            inner,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            position: 0,
            filled: 0,
        }
    }

    /// Zeroes everything in the buffer but the bytes not yet handed out.
    fn wipe_consumed(&mut self) {
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

/// Queues the reply to request `id`, sealed when it came through the channel: sealed and
/// queued under the channel's lock, replies are written in the order of their sequence numbers.
fn answer(
    out: &tokio::sync::mpsc::UnboundedSender<Outgoing>,
    channel: Option<&std::sync::Mutex<Secure>>,
    id: u64,
    result: Result<Reply, tessera_core::Rv>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let result = result.map_err(|rv| rv.code());
    match channel {
        Some(channel) => respond_sealed(out, id, &mut lock_secure(channel), &result, slot),
        None => respond(out, id, None, result, slot),
    }
}
