//! The configuration crate's typed errors: what is wrong with an address, and with a file of
//! them. Their messages name the input and the fix; callers match on the variant.

use std::net::IpAddr;
use std::path::PathBuf;

/// What is wrong with an address: a `--listen` address, a server-list entry, or an entry of the
/// client access list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// `unix:` without a path.
    #[error("unix: needs a path, e.g. unix:/run/tessera/tesserad.sock")]
    UnixWithoutPath,
    /// `tcp:` without a host.
    #[error("tcp: needs a host, e.g. tcp:0.0.0.0:12396")]
    TcpWithoutHost,
    /// An IPv6 host without brackets, or a port that is not one number.
    #[error("{0:?}: an IPv6 host goes in brackets (tcp:[::1]:12396), and a port is one number")]
    UnbracketedHost(String),
    /// Neither `unix:` nor `tcp:`.
    #[error("{0:?}: expected unix:PATH or tcp:HOST:PORT")]
    UnknownScheme(String),
    /// A server-list entry's port is not 1-65535.
    #[error("entry {entry:?}: port {port:?} is not a number 1-65535")]
    BadPort {
        /// The entry.
        entry: String,
        /// Its port text.
        port: String,
    },
    /// `[` without its `]`.
    #[error("entry {0:?}: missing ']' after an IPv6 address")]
    MissingBracket(String),
    /// Something other than `:PORT` after `]`.
    #[error("entry {entry:?}: unexpected {tail:?} after ']'")]
    AfterBracket {
        /// The entry.
        entry: String,
        /// What follows the bracket.
        tail: String,
    },
    /// `:PORT` without a host.
    #[error("entry {0:?}: host is empty")]
    EmptyHost(String),
    /// An access-list entry that is no address.
    #[error("\"{0}\" is not an IP address, a network like 192.0.2.0/24, or \"any\"")]
    NotAnAddress(String),
    /// An access-list prefix out of range.
    #[error("\"{text}\": the prefix length must be 0-{bits}")]
    BadPrefix {
        /// The entry.
        text: String,
        /// The address family's bits.
        bits: u8,
    },
    /// An access-list network with host bits set.
    #[error("\"{text}\": host bits are set below the /{prefix} prefix (the network is {network}/{prefix})")]
    HostBits {
        /// The entry.
        text: String,
        /// Its prefix length.
        prefix: u8,
        /// The network it names.
        network: IpAddr,
    },
}

/// A file that cannot be read or written, or a line of it that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading failed (other than the file not existing, where that is allowed).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is wrong.
    #[error("{}: line {line}: {error}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        error: AddressError,
    },
}

/// A user that is neither a number nor a name in `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no user {user:?} in {passwd}; give the user's number instead")]
pub struct UnknownUser {
    /// The name given.
    pub user: String,
    /// The file searched.
    pub passwd: &'static str,
}
