//! Server addresses of the server list, and the default local socket.

use crate::error::AddressError;
use std::path::PathBuf;

/// The TCP port of the network mode when a server entry names none.
pub const DEFAULT_TCP_PORT: u16 = 12396;

/// One entry of `ET_HSM_NETCLIENT_SERVERLIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    /// A local Unix socket (entries that start with `/` or `.`).
    Unix(PathBuf),
    /// A network server: `HOST`, `HOST:PORT`, or `[V6]:PORT`.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl ServerAddress {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<ServerAddress, AddressError> {
        if entry.starts_with('/') || entry.starts_with('.') {
            return Ok(ServerAddress::Unix(PathBuf::from(entry)));
        }
        let bad_port = |port: &str| AddressError::BadPort {
            entry: entry.into(),
            port: port.into(),
        };
        let parse_port = |port: &str| {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_port(port))
        };
        if let Some(rest) = entry.strip_prefix('[') {
            let (host, tail) = rest
                .split_once(']')
                .ok_or_else(|| AddressError::MissingBracket(entry.into()))?;
            let port = match tail.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None if tail.is_empty() => DEFAULT_TCP_PORT,
                None => {
                    return Err(AddressError::AfterBracket {
                        entry: entry.into(),
                        tail: tail.into(),
                    })
                }
            };
            return Ok(ServerAddress::Tcp {
                host: host.into(),
                port,
            });
        }
        match entry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                if host.is_empty() {
                    return Err(AddressError::EmptyHost(entry.into()));
                }
                Ok(ServerAddress::Tcp {
                    host: host.into(),
                    port: parse_port(port)?,
                })
            }
            Some(_) => Ok(ServerAddress::Tcp {
                host: entry.into(),
                port: DEFAULT_TCP_PORT,
            }),
            None => Ok(ServerAddress::Tcp {
                host: entry.into(),
                port: DEFAULT_TCP_PORT,
            }),
        }
    }
}

impl ServerAddress {
    /// The entry as the server list writes it (`/path`, `host:port`, `[v6]:port`): the key
    /// of the known-devices records.
    pub fn entry(&self) -> String {
        match self {
            ServerAddress::Unix(path) => path.display().to_string(),
            ServerAddress::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            ServerAddress::Tcp { host, port } => format!("{host}:{port}"),
        }
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            ServerAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            ServerAddress::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// The local socket that the daemon listens on and the library dials when nothing else is
/// configured: `$XDG_RUNTIME_DIR/tessera/tesserad.sock`, else `/tmp/tessera-<uid>/tesserad.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tessera").join("tesserad.sock");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    PathBuf::from(format!("/tmp/tessera-{uid}")).join("tesserad.sock")
}

/// The daemon's data directory when none is given: `$XDG_DATA_HOME/tessera`, else
/// `~/.local/share/tessera`. `psesh` finds the appliance state under it too.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tessera")
}
