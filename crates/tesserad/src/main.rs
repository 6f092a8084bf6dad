//! `tesserad`, the Tessera HSM daemon: one data directory is one HSM device, served on a local
//! Unix socket and, when asked, on TCP.
#![forbid(unsafe_code)]

/// The daemon's allocator. Requests and replies of up to a few MiB are allocated and freed on
/// several threads; glibc's allocator gave that memory back to the system and faulted it in
/// again on every request (a 1 MiB AES-GCM call took twice as long, most of it in page
/// faults; p11-bench gcm1m), while mimalloc keeps it for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod config;
mod connection;
mod datadir;
mod dispatch;
mod guard;
mod listener;
mod local;
mod logfile;
mod memory;
mod poller;
mod prompt;
mod secure;
mod server;
mod shutdown;
mod tally;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tessera_config::listen::Listen;
use tessera_config::{default_data_dir, default_socket_path, DEFAULT_TCP_PORT};

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
struct Args {
    /// Directory holding the device (created if missing). Default: $XDG_DATA_HOME/tessera,
    /// else ~/.local/share/tessera.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Where to serve, repeatable: `unix:PATH`, or `tcp:HOST:PORT` for network mode (port
    /// 12396 is the usual one). The default local socket, which the library and the tools dial
    /// when ET_HSM_NETCLIENT_SERVERLIST is unset ($XDG_RUNTIME_DIR/tessera/tesserad.sock, else
    /// /tmp/tessera-UID/tesserad.sock), is always served unless a `unix:` address is given:
    /// `--listen tcp:0.0.0.0:12396` serves the network in addition to it. TCP is only served
    /// when asked. A Unix socket's directory must be tesserad's user's own and not writable by
    /// group or others (a missing one is created with mode 0700).
    #[arg(long = "listen", value_name = "ADDRESS")]
    listen: Vec<String>,

    /// User slots of a new device (1-64); the Admin slot is added after them. Ignored when the
    /// device already exists.
    #[arg(long, default_value_t = 2, value_name = "N")]
    slots: u64,

    /// Most client connections served at once; more are refused (and logged).
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = max_connections)]
    max_connections: usize,

    /// Connections one network address may hold at once (local-socket clients are not
    /// counted); more from it are refused, so that no single host can take every connection.
    /// Default: half of --max-connections.
    #[arg(long, value_name = "N")]
    max_connections_per_peer: Option<usize>,

    /// Connections kept for local (Unix-socket) applications: network clients together may
    /// hold at most --max-connections minus this many, so a network flood never locks local
    /// applications out. Default: a quarter of --max-connections.
    #[arg(long, value_name = "N")]
    local_connections: Option<usize>,

    /// Seconds a connection without sessions (its own or its channel's) may stay idle between
    /// requests before the daemon closes it; connections with sessions are kept. 0: never.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    idle_timeout: u64,

    /// Sessions one connection may hold open at once; more are refused with CKR_SESSION_COUNT
    /// for that connection only (the device holds 4096 in all).
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSIONS_PER_CLIENT, value_name = "N")]
    max_sessions_per_connection: u64,

    /// Bytes of session objects one connection may hold; more are refused with
    /// CKR_DEVICE_MEMORY for that connection only.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSION_OBJECT_BYTES_PER_CLIENT, value_name = "BYTES")]
    max_session_object_bytes_per_connection: u64,

    /// Bytes of session objects the device holds for all connections together; past it new
    /// session objects are refused with CKR_DEVICE_MEMORY.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_SESSION_OBJECT_BYTES, value_name = "BYTES")]
    max_session_object_bytes: u64,

    /// Public token objects a token may hold before a client that is not logged in may create
    /// no more (CKR_DEVICE_MEMORY); logged-in users are not limited by it.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_PUBLIC_OBJECTS_PER_TOKEN, value_name = "N")]
    max_public_objects: u64,

    /// The largest frame (request) one connection may send, in bytes (at most 16 MiB, the
    /// protocol's limit); a larger one closes the connection.
    #[arg(long, default_value_t = tessera_wire::MAX_FRAME_LEN, value_name = "BYTES")]
    max_frame_len: usize,

    /// Bytes the daemon buffers for frames still arriving, all connections together (frames
    /// over 64 KiB count, as their bytes arrive); past it, large frames wait for room (and
    /// must still arrive within --frame-timeout). At least --max-frame-len.
    #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
    max_frame_memory: usize,

    /// Failed or abandoned secure-messaging handshakes one network address may make within
    /// --handshake-window before its handshakes are refused (CKR_TESSERA_HANDSHAKE_RATE_LIMITED)
    /// for that long; logged once per block.
    #[arg(long, default_value_t = 20, value_name = "N")]
    handshake_failure_limit: u32,

    /// The window of --handshake-failure-limit, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    handshake_window: u64,

    /// Seconds a frame may take to arrive once its first byte is in, and a client to finish a
    /// handshake the device answered; slower peers are disconnected.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    frame_timeout: u64,

    /// Threads that serve connections: they read and write every connection, run the channel
    /// and answer quick calls (slow ones — PIN checks, disk writes, RSA, key pairs, large data —
    /// run on a pool of their own). One thread (the default) answers a busy client fastest, as
    /// it can poll for the next request (--busy-poll); more spread quick calls over more cores
    /// on a large machine, without busy polling.
    #[arg(long, default_value_t = 1, value_name = "N")]
    io_threads: usize,

    /// Microseconds a connection keeps polling for its client's next request after answering
    /// one, before it sleeps (one connection at a time). Waking a sleeping daemon costs tens of
    /// microseconds on a virtual machine, more than a small call; polling keeps that cost off
    /// a busy client's calls, for at most this much CPU per answered request. 0: never poll.
    /// Only with --io-threads 1.
    #[arg(long, default_value_t = 50, value_name = "MICROS")]
    busy_poll: u64,

    /// Entries the device's event log keeps; the oldest are dropped beyond this.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_EVENT_LOG_SIZE, value_name = "N")]
    event_log_size: u64,

    /// Secure-messaging channels held at once; more are refused with CKR_TESSERA_CHANNEL_LIMIT.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_MAX_CHANNELS, value_name = "N")]
    max_channels: usize,

    /// Messages one generation of channel keys may protect before the device ends the channel
    /// (the library renews keys well before; see ET_PTKC_SMS_MAX_MESSAGES).
    #[arg(long, default_value_t = 1 << 32, value_name = "N")]
    sm_max_messages: u64,

    /// Bytes one generation of channel keys may protect before the device ends the channel.
    #[arg(long, default_value_t = 1 << 40, value_name = "N")]
    sm_max_bytes: u64,

    /// Appliance mode: serve network clients (default listen: the addresses set with psesh's
    /// `network` command, else the local socket and tcp:0.0.0.0:12396) and keep the appliance's state in DIR/appliance: its users and their
    /// trust stores (managed with psesh), its audit log, and the client access list `clients`
    /// that every network connection is checked against.
    #[arg(long)]
    appliance: bool,

    /// PBKDF2-HMAC-SHA256 iterations for new PIN records. Lower only for tests.
    #[arg(long, default_value_t = tessera_hsm::DEFAULT_KDF_ITERATIONS, value_name = "N", value_parser = kdf_iterations)]
    kdf_iterations: u32,

    /// Protect the device key (device.key) with this key file, kept outside the data directory
    /// and readable only by tesserad's user (mode 0600 or 0400; refused otherwise). Created with
    /// 32 random bytes if missing when the device is set up (or moved from the embedded
    /// default). Without it and the data directory's copy of device.key cannot be opened. The
    /// rollback state is kept beside it (PATH.state). See docs/operations.md.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["device_key_passphrase_file", "device_key_credential"])]
    device_key_file: Option<PathBuf>,

    /// Protect the device key with a passphrase read from FILE at every start (`-`: standard
    /// input: asked with the terminal's echo off when it is a terminal, else read from it, e.g.
    /// `systemd-ask-password | tesserad --device-key-passphrase-file -`). The device does not
    /// start unattended.
    #[arg(long, value_name = "FILE", conflicts_with = "device_key_credential")]
    device_key_passphrase_file: Option<PathBuf>,

    /// Protect the device key with the systemd credential NAME, read from
    /// $CREDENTIALS_DIRECTORY/NAME (a unit's `LoadCredentialEncrypted=NAME:...`; sealed by the
    /// TPM2 where there is one). It must hold 32 or more random bytes.
    #[arg(long, value_name = "NAME")]
    device_key_credential: Option<String>,

    /// Serve a token store that is older than the recorded rollback state (or whose state file
    /// is missing): an older copy of tessera.redb was put back on purpose. The acceptance is
    /// recorded in the event log, and the store becomes the recorded state.
    #[arg(long)]
    accept_rollback: bool,

    /// Shut down (as on SIGTERM) within about a second of the process that started tesserad
    /// exiting, however it ended: for a test harness or a script that owns the daemon and may
    /// itself be killed. A service manager does not need it.
    #[arg(long)]
    exit_with_parent: bool,

    /// Let the group of the data directory read and enter it (mode up to 0770, set-group-ID
    /// allowed), for a group that shares it; implied by --appliance. Without it tesserad
    /// refuses a data directory its group can read (others never may). The store and key files
    /// stay 0600 either way.
    #[arg(long)]
    allow_group_access: bool,

    /// Leave core dumps on, for debugging only: by default tesserad makes itself non-dumpable
    /// (prctl PR_SET_DUMPABLE 0) and sets RLIMIT_CORE to 0 at start, so that a crash does not
    /// write keys and PINs to disk. Logged as a warning.
    #[arg(long)]
    allow_core_dumps: bool,

    /// Be a node of cluster NAME: the tokens (records, PINs and their failure counts, objects)
    /// live in etcd (--etcd), sealed under the cluster's key, and every node serves them. The
    /// first node founds the cluster (with blank tokens); another device joins once a member
    /// trusts its identity (`ctident peer add`) and it trusts a member: give it an identity
    /// first. See docs/cluster.md.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    cluster: Option<String>,

    /// The etcd endpoints of the cluster, comma-separated. Example:
    /// --etcd http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379
    #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "cluster")]
    etcd: Vec<String>,

    /// How long a device that joins a cluster waits for a member to admit it, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    join_wait: u64,

    /// How long one etcd request may take before the call fails (CKR_DEVICE_ERROR), in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    etcd_timeout: u64,

    /// While etcd cannot be reached (no quorum), how long after it last answered a node still
    /// opens sessions, logs in and searches on the tokens it holds, in seconds; then these
    /// calls fail with CKR_DEVICE_ERROR. Calls on keys already found go on either way; writes
    /// fail at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    cluster_stale_after: u64,

    /// The CA certificate(s), PEM, that etcd's server certificates must chain to: TLS to etcd
    /// (the endpoints are then https://).
    #[arg(long, value_name = "PATH", requires = "cluster")]
    etcd_ca: Option<PathBuf>,

    /// This node's client certificate for etcd (PEM), with --etcd-key: for an etcd that runs
    /// with --client-cert-auth.
    #[arg(long, value_name = "PATH", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,

    /// The private key of --etcd-cert (PEM, mode 0600).
    #[arg(long, value_name = "PATH", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,

    /// The etcd user this node authenticates as (etcd's `auth enable`), with
    /// --etcd-password-file.
    #[arg(long, value_name = "NAME", requires_all = ["etcd_password_file", "cluster"])]
    etcd_user: Option<String>,

    /// File whose first line is the password of --etcd-user.
    #[arg(long, value_name = "PATH", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
}

/// `listen`, with the default local socket first unless it names a Unix socket: serving the
/// network too must not take the local socket away from `ctconf` and the local applications,
/// which dial it when no server list is configured.
fn with_local_socket(mut listen: Vec<Listen>) -> Vec<Listen> {
    if !listen.iter().any(|l| matches!(l, Listen::Unix(_))) {
        listen.insert(0, Listen::Unix(default_socket_path()));
    }
    listen
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

fn main() -> ExitCode {
    // Whatever the daemon creates (store, key files, lock, socket) is its user's alone,
    // whatever umask it was started with; the appliance's shared files set their modes
    // explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = Args::parse();
    // Before anything holds a secret; logged once logging is set up.
    let dumps = memory::protect_process(args.allow_core_dumps);
    // Read first: the parent may not live long.
    let parent = args
        .exit_with_parent
        .then(std::os::unix::process::parent_id);
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let state = data_dir.join("appliance");
    if args.appliance {
        // The data directory first, with its own mode (see `datadir`); checked again below.
        if let Err(message) = datadir::create(&data_dir, true) {
            eprintln!("tesserad: {message}");
            return ExitCode::FAILURE;
        }
        // Shared by the appliance accounts through their group (set-group-ID directory).
        let created = {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let fresh = !state.exists();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o2770)
                .create(&state)
                .and_then(|()| match fresh {
                    // The umask (077) took the group's bits off.
                    true => {
                        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2770))
                    }
                    false => Ok(()),
                })
        };
        if let Err(e) = created {
            eprintln!("tesserad: cannot create {}: {e}", state.display());
            return ExitCode::FAILURE;
        }
    }
    // In appliance mode the log also goes to appliance/tesserad.log (psesh `log`).
    let log_file = args.appliance.then(|| state.join("tesserad.log"));
    tracing_subscriber::fmt()
        .with_ansi(log_file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(logfile::Tee { file: log_file })
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    dumps.log();
    let listen = if !args.listen.is_empty() {
        args.listen
            .iter()
            .map(|l| tessera_config::listen::parse(l).map_err(|e| format!("--listen {e}")))
            .collect::<Result<Vec<Listen>, String>>()
            .map(with_local_socket)
    } else if args.appliance {
        // The addresses set with `psesh network`, else the local socket and every interface.
        tessera_config::listen::read_file(&state.join("listen"))
            .map(|configured| {
                configured.unwrap_or_else(|| {
                    vec![
                        Listen::Unix(default_socket_path()),
                        Listen::Tcp(format!("0.0.0.0:{DEFAULT_TCP_PORT}")),
                    ]
                })
            })
            .map_err(|e| e.to_string())
    } else {
        Ok(vec![Listen::Unix(default_socket_path())])
    };
    let listen: Vec<Listen> = match listen {
        Ok(listen) if listen.is_empty() => {
            eprintln!("tesserad: no address to listen on");
            return ExitCode::from(2);
        }
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("tesserad: {message}");
            return ExitCode::from(2);
        }
    };
    let client_access = args.appliance.then(|| state.join("clients"));
    if args.max_frame_len == 0 || args.max_frame_len > tessera_wire::MAX_FRAME_LEN {
        eprintln!(
            "tesserad: --max-frame-len {} is out of range: give 1 to {} bytes",
            args.max_frame_len,
            tessera_wire::MAX_FRAME_LEN
        );
        return ExitCode::from(2);
    }
    let max_frame_len = args.max_frame_len;
    let config = server::Config {
        data_dir,
        listen,
        max_connections: args.max_connections,
        options: tessera_hsm::HsmOptions {
            user_slots: args.slots,
            kdf_iterations: args.kdf_iterations,
            event_log_size: args.event_log_size,
            max_channels: args.max_channels,
            limits: tessera_hsm::Limits {
                sessions_per_client: args.max_sessions_per_connection.max(1),
                session_object_bytes_per_client: args.max_session_object_bytes_per_connection,
                session_object_bytes: args.max_session_object_bytes,
                public_objects_per_token: args.max_public_objects,
            },
            device_key: if let Some(path) = args.device_key_file.clone() {
                tessera_hsm::DeviceKeyProtection::KeyFile(path)
            } else if let Some(path) = args.device_key_passphrase_file.clone() {
                if path.as_os_str() == "-" && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    match prompt::ask_passphrase() {
                        Ok(given) => tessera_hsm::DeviceKeyProtection::Passphrase(given.into()),
                        Err(e) => {
                            eprintln!("tesserad: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    tessera_hsm::DeviceKeyProtection::PassphraseFile(path)
                }
            } else if let Some(name) = args.device_key_credential.clone() {
                tessera_hsm::DeviceKeyProtection::Credential(name)
            } else {
                tessera_hsm::DeviceKeyProtection::Embedded
            },
            accept_rollback: args.accept_rollback,
        },
        key_limits: secure::KeyLimits {
            messages: args.sm_max_messages,
            bytes: args.sm_max_bytes,
        },
        peer_limits: guard::Limits {
            connections_per_peer: args
                .max_connections_per_peer
                .unwrap_or(args.max_connections / 2)
                .max(1),
            failure_limit: args.handshake_failure_limit.max(1),
            window: std::time::Duration::from_secs(args.handshake_window.max(1)),
        },
        frame_timeout: std::time::Duration::from_secs(args.frame_timeout.max(1)),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
        local_reserve: args
            .local_connections
            .unwrap_or(args.max_connections / 4)
            .min(args.max_connections.saturating_sub(1)),
        max_frame_len,
        frame_memory: args.max_frame_memory.max(max_frame_len),
        io_threads: args.io_threads.clamp(1, 256),
        busy_poll: std::time::Duration::from_micros(args.busy_poll.min(10_000)),
        client_access,
        parent,
        allow_group_access: args.allow_group_access || args.appliance,
        cluster: args.cluster.clone().map(|name| cluster::ClusterConfig {
            name,
            security: cluster::EtcdFiles {
                ca: args.etcd_ca.clone(),
                cert: args.etcd_cert.clone(),
                key: args.etcd_key.clone(),
                user: args.etcd_user.clone(),
                password_file: args.etcd_password_file.clone(),
            },
            endpoints: args.etcd.clone(),
            join_wait: std::time::Duration::from_secs(args.join_wait.max(1)),
            timeout: std::time::Duration::from_millis(args.etcd_timeout.max(10)),
            stale_after: std::time::Duration::from_secs(args.cluster_stale_after),
        }),
    };
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tesserad: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_kdf_iterations_are_refused_when_the_command_line_is_read() {
        let parse = |value: &str| {
            Args::try_parse_from(["tesserad", "--kdf-iterations", value])
                .map(|args| args.kdf_iterations)
                .map_err(|e| e.to_string())
        };
        let refused = parse("0").unwrap_err();
        assert!(
            refused.contains("--kdf-iterations") && refused.contains("at least 1 iteration"),
            "{refused}"
        );
        assert!(parse("many").unwrap_err().contains("from 1 to"));
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(
            Args::try_parse_from(["tesserad"]).unwrap().kdf_iterations,
            tessera_hsm::DEFAULT_KDF_ITERATIONS
        );
    }

    #[test]
    fn zero_connections_are_refused_when_the_command_line_is_read() {
        let parse = |value: &str| {
            Args::try_parse_from(["tesserad", "--max-connections", value])
                .map(|args| args.max_connections)
                .map_err(|e| e.to_string())
        };
        let refused = parse("0").unwrap_err();
        assert!(
            refused.contains("--max-connections") && refused.contains("at least 1 connection"),
            "{refused}"
        );
        assert!(parse("many").unwrap_err().contains("1 or more"));
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(
            Args::try_parse_from(["tesserad"]).unwrap().max_connections,
            256
        );
    }
}
