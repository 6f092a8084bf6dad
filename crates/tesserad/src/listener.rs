//! Listening: the daemon's sockets bound, one accept loop per socket, and what decides whether
//! an accepted connection is served — the client access list (appliance mode), the connections
//! one network address may hold ([`crate::guard`]), the network's share of the connections and
//! the connection limit. Each connection admitted runs in a task of its own
//! ([`crate::connection::serve`]), counted until its clean-up is done ([`crate::shutdown`]).

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_config::listen::Listen;
use tessera_wire::{encode_response, ResponseEnvelope, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connection::{self, Shared};
use crate::shutdown::{Connections, Notice, Shutdown};
use crate::tally::Tally;

/// The daemon's sockets, bound.
pub(crate) struct Bound {
    unix: Vec<UnixListener>,
    tcp: Vec<TcpListener>,
    /// The addresses served, as the ready line and `psesh network show` give them.
    pub(crate) shown: Vec<String>,
    /// The Unix sockets' paths, removed at shutdown.
    pub(crate) sockets: Vec<PathBuf>,
}

/// Binds every address of `config.listen`. An appliance keeps serving its other addresses when
/// one TCP address cannot be bound (a bad one set with `psesh network` must not take the HSM
/// off the air); otherwise any failure is fatal.
pub(crate) async fn bind(config: &Config) -> Result<Bound, String> {
    let mut bound = Bound {
        unix: Vec::new(),
        tcp: Vec::new(),
        shown: Vec::new(),
        sockets: Vec::new(),
    };
    for listen in &config.listen {
        match listen {
            Listen::Unix(path) => {
                bound.unix.push(bind_unix(path, config.allow_group_access)?);
                bound.sockets.push(path.clone());
                bound.shown.push(format!("unix:{}", path.display()));
            }
            Listen::Tcp(address) => {
                let listener = match TcpListener::bind(address).await {
                    Ok(listener) => listener,
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
                bound.shown.push(format!("tcp:{local}"));
                bound.tcp.push(listener);
            }
        }
    }
    Ok(bound)
}

/// The mode of the daemon's Unix sockets: its user's (connecting needs write permission), and
/// its group's with `--allow-group-access`; never others'.
pub(crate) fn socket_mode(allow_group: bool) -> u32 {
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

/// The limits every accept loop applies.
pub(crate) struct Admission {
    /// Every connection (`--max-connections`).
    pub(crate) limit: Arc<Semaphore>,
    /// The network's share (`--max-connections` minus `--local-connections`).
    pub(crate) network: Arc<Semaphore>,
    /// The appliance's client access list, read at every network connection; `None` outside
    /// appliance mode.
    pub(crate) client_access: Option<PathBuf>,
}

impl Bound {
    /// Starts one accept loop per socket; each ends on the stop notice.
    pub(crate) fn spawn(
        self,
        shared: &Shared,
        admission: &Arc<Admission>,
        shutdown: &Shutdown,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for listener in self.unix {
            tasks.push(tokio::spawn(accept_loop(
                listener,
                shared.clone(),
                admission.clone(),
                None,
                shutdown.notice(),
                shutdown.connections(),
            )));
        }
        for listener in self.tcp {
            tasks.push(tokio::spawn(accept_loop(
                listener,
                shared.clone(),
                admission.clone(),
                Some(admission.network.clone()),
                shutdown.notice(),
                shutdown.connections(),
            )));
        }
        tasks
    }
}

/// A listening socket.
trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + Tune + Named + 'static;
    type Address: PeerAddress + Send;
    fn accept(&self)
        -> impl Future<Output = std::io::Result<(Self::Stream, Self::Address)>> + Send;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    type Address = tokio::net::unix::SocketAddr;
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Address)>> + Send {
        UnixListener::accept(self)
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    type Address = std::net::SocketAddr;
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Address)>> + Send {
        TcpListener::accept(self)
    }
}

/// Accepts connections until the stop notice; `network` is the network's share of the
/// connections, which a network connection takes first (`None` for a local socket).
async fn accept_loop<L: Accept>(
    listener: L,
    shared: Shared,
    admission: Arc<Admission>,
    network: Option<Arc<Semaphore>>,
    mut stop: Notice,
    connections: Connections,
) {
    // Whether the last connection was refused (logged once per episode).
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.received() => return,
        };
        let (stream, peer, ip) = match accepted {
            Ok((stream, peer)) => {
                if !admitted(admission.client_access.as_deref(), &peer) {
                    // Told why, so that its library can say so: the connection's only frame
                    // is the notice.
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
        // A network connection takes one of the network's share first: the rest of the
        // connections stay for local applications.
        let share = match &network {
            None => None,
            Some(network) => match network.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    Tally::count(&shared.tally.network_full, "network-connections");
                    if !refusing {
                        tracing::warn!(peer, "network connection refused: the network share of the connections is taken (--max-connections minus --local-connections)");
                        refusing = true;
                    }
                    drop(stream);
                    continue;
                }
            },
        };
        let permit = match admission.limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                Tally::count(&shared.tally.all_full, "connections");
                if !refusing {
                    tracing::warn!(
                        peer,
                        "connection refused: the connection limit is reached (--max-connections)"
                    );
                    refusing = true;
                }
                drop(stream);
                continue;
            }
        };
        refusing = false;
        let shared = shared.clone();
        let stop = stop.clone();
        let running = connections.start();
        tokio::spawn(async move {
            connection::serve(stream, peer, ip, shared, stop).await;
            drop(slot);
            drop(permit);
            drop(share);
            // Counted until here: shutdown waits for this.
            drop(running);
        });
    }
}

/// Where a connection comes from, for the client access list.
trait PeerAddress: std::fmt::Debug {
    /// The network address, or `None` for a local socket (never filtered).
    fn ip(&self) -> Option<IpAddr>;
}

impl PeerAddress for std::net::SocketAddr {
    fn ip(&self) -> Option<IpAddr> {
        Some(std::net::SocketAddr::ip(self))
    }
}

impl PeerAddress for tokio::net::unix::SocketAddr {
    fn ip(&self) -> Option<IpAddr> {
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
    /// A bulk reply crosses in one piece rather than five (see [`tessera_wire::UNIX_SEND_BUFFER`]);
    /// the library asks the same for its requests. Without it the connection still works.
    fn tune(&self) {
        let _ =
            rustix::net::sockopt::set_socket_send_buffer_size(self, tessera_wire::UNIX_SEND_BUFFER);
    }
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
    let list = tessera_config::access::ClientAccess::read(path).map_err(|e| e.to_string())?;
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
