//! The command line of `tesserad`, in a library of its own so that the man page and the shell
//! completions are made from the same definition as `--help`.

use std::path::PathBuf;

use clap::Parser;

/// The Tessera HSM daemon.
///
/// The first start in an empty data directory creates one HSM device: a random serial number,
/// user slots (2 unless --slots says otherwise) and the Admin token in the last slot. Later
/// starts open the same device. Logs go to standard error (in appliance mode also to
/// DIR/appliance/tesserad.log); set RUST_LOG (for example
/// `RUST_LOG=debug`) for more detail.
///
/// Examples:
///
///   tesserad                                      # default data dir and local socket
///
///   tesserad --data-dir /var/lib/tessera --listen unix:/run/tessera/tesserad.sock --listen tcp:0.0.0.0:12396
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
pub struct Args {
    /// Directory holding the device (created if missing). Default: $XDG_DATA_HOME/tessera,
    /// else ~/.local/share/tessera.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where to serve, repeatable: `unix:PATH`, or `tcp:HOST:PORT` for network mode (port
    /// 12396 is the usual one). The default local socket, which the library and the tools dial
    /// when ET_HSM_NETCLIENT_SERVERLIST is unset ($XDG_RUNTIME_DIR/tessera/tesserad.sock, else
    /// /tmp/tessera-UID/tesserad.sock), is always served unless a `unix:` address is given:
    /// `--listen tcp:0.0.0.0:12396` serves the network in addition to it. TCP is only served
    /// when asked. A Unix socket's directory must be tesserad's user's own and not writable by
    /// group or others (a missing one is created with mode 0700).
    #[arg(long = "listen", value_name = "ADDRESS")]
    pub listen: Vec<String>,

    /// User slots of a new device (1-64); the Admin slot is added after them. Ignored when the
    /// device already exists.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub slots: u64,

    /// Most client connections served at once; more are refused (and logged).
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = max_connections)]
    pub max_connections: usize,

    /// Connections one network address may hold at once (local-socket clients are not
    /// counted); more from it are refused, so that no single host can take every connection.
    /// Default: half of --max-connections.
    #[arg(long, value_name = "N")]
    pub max_connections_per_peer: Option<usize>,

    /// Connections kept for local (Unix-socket) applications: network clients together may
    /// hold at most --max-connections minus this many, so a network flood never locks local
    /// applications out. Default: a quarter of --max-connections.
    #[arg(long, value_name = "N")]
    pub local_connections: Option<usize>,

    /// Seconds a connection without sessions (its own or its channel's) may stay idle between
    /// requests before the daemon closes it; connections with sessions are kept. 0: never.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub idle_timeout: u64,

    /// Sessions one connection may hold open at once; more are refused with CKR_SESSION_COUNT
    /// for that connection only (the device holds 4096 in all).
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSIONS_PER_CLIENT, value_name = "N")]
    pub max_sessions_per_connection: u64,

    /// Bytes of session objects one connection may hold; more are refused with
    /// CKR_DEVICE_MEMORY for that connection only.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSION_OBJECT_BYTES_PER_CLIENT, value_name = "BYTES")]
    pub max_session_object_bytes_per_connection: u64,

    /// Bytes of session objects the device holds for all connections together; past it new
    /// session objects are refused with CKR_DEVICE_MEMORY.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSION_OBJECT_BYTES, value_name = "BYTES")]
    pub max_session_object_bytes: u64,

    /// Public token objects a token may hold before a client that is not logged in may create
    /// no more (CKR_DEVICE_MEMORY); logged-in users are not limited by it.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_PUBLIC_OBJECTS_PER_TOKEN, value_name = "N")]
    pub max_public_objects: u64,

    /// The largest frame (request) one connection may send, in bytes (at most 16 MiB, the
    /// protocol's limit); a larger one closes the connection.
    #[arg(long, default_value_t = tessera_wire::MAX_FRAME_LEN, value_name = "BYTES")]
    pub max_frame_len: usize,

    /// Bytes the daemon buffers for frames still arriving, all connections together (frames
    /// over 64 KiB count, as their bytes arrive); past it, large frames wait for room (and
    /// must still arrive within --frame-timeout). At least --max-frame-len.
    #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
    pub max_frame_memory: usize,

    /// Failed or abandoned secure-messaging handshakes one network address may make within
    /// --handshake-window before its handshakes are refused (CKR_TESSERA_HANDSHAKE_RATE_LIMITED)
    /// for that long; logged once per block.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub handshake_failure_limit: u32,

    /// The window of --handshake-failure-limit, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub handshake_window: u64,

    /// Seconds a frame may take to arrive once its first byte is in, and a client to finish a
    /// handshake the device answered; slower peers are disconnected.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub frame_timeout: u64,

    /// Threads that serve connections: they read and write every connection, run the channel
    /// and answer quick calls (slow ones — PIN checks, disk writes, RSA, key pairs, large data —
    /// run on a pool of their own). One thread (the default) answers a busy client fastest, as
    /// it can poll for the next request (--busy-poll); more spread quick calls over more cores
    /// on a large machine, without busy polling.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub io_threads: usize,

    /// Microseconds a connection keeps polling for its client's next request after answering
    /// one, before it sleeps (one connection at a time). Waking a sleeping daemon costs tens of
    /// microseconds on a virtual machine, more than a small call; polling keeps that cost off
    /// a busy client's calls, for at most this much CPU per answered request; after answering
    /// a handshake over a Unix socket, for up to 1 ms (or this, if longer) while the client
    /// checks the signature, unless another connection asks to poll. Not at all while other
    /// local connections' handshakes await their key confirmations (their clients are busy
    /// checking signatures: the cores are better left to them). 0: never poll. Only with
    /// --io-threads 1.
    #[arg(long, default_value_t = 50, value_name = "MICROS")]
    pub busy_poll: u64,

    /// Entries the device's event log keeps; the oldest are dropped beyond this.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_EVENT_LOG_SIZE, value_name = "N")]
    pub event_log_size: u64,

    /// Secure-messaging channels held at once; more are refused with CKR_TESSERA_CHANNEL_LIMIT.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_MAX_CHANNELS, value_name = "N")]
    pub max_channels: usize,

    /// Messages one generation of channel keys may protect before the device ends the channel
    /// (the library renews keys well before; see ET_PTKC_SMS_MAX_MESSAGES).
    #[arg(long, default_value_t = 1 << 32, value_name = "N")]
    pub sm_max_messages: u64,

    /// Bytes one generation of channel keys may protect before the device ends the channel.
    #[arg(long, default_value_t = 1 << 40, value_name = "N")]
    pub sm_max_bytes: u64,

    /// Appliance mode: serve network clients (default listen: the addresses set with psesh's
    /// `network` command, else the local socket and tcp:0.0.0.0:12396) and keep the appliance's state in DIR/appliance: its users and their
    /// trust stores (managed with psesh), its audit log, and the client access list `clients`
    /// that every network connection is checked against.
    #[arg(long)]
    pub appliance: bool,

    /// PBKDF2-HMAC-SHA256 iterations for new PIN records. Lower only for tests.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_KDF_ITERATIONS, value_name = "N", value_parser = kdf_iterations)]
    pub kdf_iterations: u32,

    /// Protect the device key (device.key) with this key file, kept outside the data directory
    /// and readable only by tesserad's user (mode 0600 or 0400; refused otherwise). Created with
    /// 32 random bytes if missing when the device is set up (or moved from the embedded
    /// default). Without it and the data directory's copy of device.key cannot be opened. The
    /// rollback state is kept beside it (PATH.state). See docs/operations.md.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["device_key_passphrase_file", "device_key_credential"])]
    pub device_key_file: Option<PathBuf>,

    /// Protect the device key with a passphrase read from FILE at every start (`-`: standard
    /// input: asked with the terminal's echo off when it is a terminal, else read from it, e.g.
    /// `systemd-ask-password | tesserad --device-key-passphrase-file -`). The device does not
    /// start unattended.
    #[arg(long, value_name = "FILE", conflicts_with = "device_key_credential")]
    pub device_key_passphrase_file: Option<PathBuf>,

    /// Protect the device key with the systemd credential NAME, read from
    /// $CREDENTIALS_DIRECTORY/NAME (a unit's `LoadCredentialEncrypted=NAME:...`; sealed by the
    /// TPM2 where there is one). It must hold 32 or more random bytes.
    #[arg(long, value_name = "NAME")]
    pub device_key_credential: Option<String>,

    /// Serve a token store that is older than the recorded rollback state (or whose state file
    /// is missing): an older copy of tessera.redb was put back on purpose. The acceptance is
    /// recorded in the event log, and the store becomes the recorded state.
    #[arg(long)]
    pub accept_rollback: bool,

    /// Shut down (as on SIGTERM) within about a second of the process that started tesserad
    /// exiting, however it ended: for a test harness or a script that owns the daemon and may
    /// itself be killed. A service manager does not need it.
    #[arg(long)]
    pub exit_with_parent: bool,

    /// Let the group of the data directory read and enter it (mode up to 0770, set-group-ID
    /// allowed), for a group that shares it; implied by --appliance. Without it tesserad
    /// refuses a data directory its group can read (others never may). The store and key files
    /// stay 0600 either way.
    #[arg(long)]
    pub allow_group_access: bool,

    /// Leave core dumps on, for debugging only: by default tesserad makes itself non-dumpable
    /// (prctl PR_SET_DUMPABLE 0) and sets RLIMIT_CORE to 0 at start, so that a crash does not
    /// write keys and PINs to disk. Logged as a warning.
    #[arg(long)]
    pub allow_core_dumps: bool,

    /// Serve metrics in Prometheus text format at http://HOST:PORT/metrics: requests by call
    /// and result code, latency by call family, connections, sessions, channels, handshakes
    /// and their failures, PIN lockouts, the store's size and commit latency, refusals by
    /// limit. Off by default; no secret, label or peer address is in them. Keep it on a
    /// loopback or management address. Example: --metrics tcp:127.0.0.1:9412
    #[arg(long, value_name = "tcp:HOST:PORT")]
    pub metrics: Option<String>,

    /// How log lines are written to standard error: `text` (the default) or `json` (one
    /// object per line, with the fields of each event: its level, target, message, and for
    /// security events their role, kind and detail).
    #[arg(long, value_name = "text|json", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Be a node of cluster NAME: the tokens (records, PINs and their failure counts, objects)
    /// live in etcd (--etcd), sealed under the cluster's key, and every node serves them. The
    /// first node founds the cluster (with blank tokens); another device joins once a member
    /// trusts its identity (`ctident peer add`) and it trusts a member: give it an identity
    /// first. See docs/cluster.md.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    pub cluster: Option<String>,

    /// The etcd endpoints of the cluster, comma-separated. Example:
    /// --etcd http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379
    #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "cluster")]
    pub etcd: Vec<String>,

    /// How long a device that joins a cluster waits for a member to admit it, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub join_wait: u64,

    /// How long one etcd request may take before the call fails (CKR_DEVICE_ERROR), in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub etcd_timeout: u64,

    /// While etcd cannot be reached (no quorum), how long after it last answered a node still
    /// opens sessions, logs in and searches on the tokens it holds, in seconds; then these
    /// calls fail with CKR_DEVICE_ERROR. Calls on keys already found go on either way; writes
    /// fail at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub cluster_stale_after: u64,

    /// The CA certificate(s), PEM, that etcd's server certificates must chain to: TLS to etcd
    /// (the endpoints are then https://).
    #[arg(long, value_name = "PATH", requires = "cluster")]
    pub etcd_ca: Option<PathBuf>,

    /// This node's client certificate for etcd (PEM), with --etcd-key: for an etcd that runs
    /// with --client-cert-auth.
    #[arg(long, value_name = "PATH", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,

    /// The private key of --etcd-cert (PEM, mode 0600).
    #[arg(long, value_name = "PATH", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,

    /// The etcd user this node authenticates as (etcd's `auth enable`), with
    /// --etcd-password-file.
    #[arg(long, value_name = "NAME", requires_all = ["etcd_password_file", "cluster"])]
    pub etcd_user: Option<String>,

    /// File whose first line is the password of --etcd-user.
    #[arg(long, value_name = "PATH", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

/// `--max-connections N`: 1 or more, checked when the command line is read (a daemon that may
/// serve no connection is a mistake, not a request; 0 was quietly raised to 1).
fn max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err(
            "a daemon must serve at least 1 connection: give --max-connections 1 or more, or \
             leave it out for the default of 256"
                .into(),
        ),
        Ok(count) => Ok(count),
        Err(e) => Err(format!(
            "{e}: give a whole number of connections, 1 or more"
        )),
    }
}

/// `--kdf-iterations N`: 1 or more, checked when the command line is read (0 is refused, not
/// quietly raised to 1).
fn kdf_iterations(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err(format!(
            "PBKDF2 needs at least 1 iteration: give --kdf-iterations 1 or more, or leave it out \
             for the default of {}",
            tessera_hsm::DEFAULT_KDF_ITERATIONS
        )),
        Ok(iterations) => Ok(iterations),
        Err(e) => Err(format!(
            "{e}: give a whole number of iterations from 1 to {}",
            u32::MAX
        )),
    }
}
