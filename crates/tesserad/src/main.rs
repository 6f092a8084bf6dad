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
mod metrics;
mod poller;
mod prompt;
mod secure;
mod server;
mod shutdown;
mod tally;

use std::process::ExitCode;

use clap::Parser;
use tessera_config::listen::Listen;
use tessera_config::{default_data_dir, default_socket_path, DEFAULT_TCP_PORT};
use tesserad::cli::Args;

/// `listen`, with the default local socket first unless it names a Unix socket: serving the
/// network too must not take the local socket away from `ctconf` and the local applications,
/// which dial it when no server list is configured.
/// An address given twice is served once (binding it twice would find the first binding and
/// refuse to start, as if another daemon served it).
fn with_local_socket(mut listen: Vec<Listen>) -> Vec<Listen> {
    if !listen.iter().any(|l| matches!(l, Listen::Unix(_))) {
        listen.insert(0, Listen::Unix(default_socket_path()));
    }
    let mut once: Vec<Listen> = Vec::with_capacity(listen.len());
    for address in listen {
        if !once.contains(&address) {
            once.push(address);
        }
    }
    once
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
    let colour = log_file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logger = tracing_subscriber::fmt()
        .with_writer(logfile::Tee { file: log_file })
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match args.log_format.as_str() {
        // One object per line, the event's fields at its top level.
        "json" => logger.json().flatten_event(true).init(),
        _ => logger.with_ansi(colour).init(),
    }
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
    let metrics = match args.metrics.as_deref().map(metrics::parse_address) {
        Some(Err(message)) => {
            eprintln!("tesserad: {message}");
            return ExitCode::from(2);
        }
        Some(Ok(address)) => Some(address),
        None => None,
    };
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
        metrics,
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
    fn an_address_given_twice_is_served_once() {
        let socket = Listen::Unix("/run/tessera/tesserad.sock".into());
        let tcp = Listen::Tcp("127.0.0.1:12396".into());
        assert_eq!(
            with_local_socket(vec![socket.clone(), tcp.clone(), socket.clone()]),
            vec![socket, tcp]
        );
    }

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
