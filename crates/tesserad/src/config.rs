//! What the daemon serves: the settings `main` reads from the command line and hands to
//! [`crate::server::run`], and that the listener and the connections read.

use std::path::PathBuf;
use std::time::Duration;

use tessera_config::listen::Listen;
use tessera_hsm::HsmOptions;

use crate::secure::KeyLimits;

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
    /// `--metrics`: where to serve the Prometheus metrics (HOST:PORT), if anywhere.
    pub metrics: Option<String>,
    /// `--cluster` and `--etcd`: the cluster this device is a node of.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Config {
    /// One thread owns the event loop, and connections may busy-poll (see [`Poller`](crate::poller::Poller)).
    pub fn one_io_thread(&self) -> bool {
        self.io_threads <= 1
    }
}
