//! The client access list of an appliance: which network addresses may connect to the daemon.
//!
//! One entry per line: an IPv4 or IPv6 address, a network in CIDR form (`192.0.2.0/24`,
//! `2001:db8::/32`), or `any`. `#` starts a comment line. A missing file means `any` (a fresh
//! appliance serves every address until an operator restricts it); a file without entries lets
//! no network client in (the local socket is never filtered). An IPv4-mapped IPv6 peer is
//! matched as its IPv4 address.

use crate::error::{AddressError, FileError};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// One entry of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEntry {
    /// Every address.
    Any,
    /// Addresses whose first `prefix` bits equal `network`'s.
    Network {
        /// The network's address (host bits clear).
        network: IpAddr,
        /// Its prefix length in bits.
        prefix: u8,
    },
}

impl AccessEntry {
    /// Parses `any`, an address, or `address/prefix`.
    pub fn parse(text: &str) -> Result<AccessEntry, AddressError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("any") {
            return Ok(AccessEntry::Any);
        }
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| AddressError::NotAnAddress(text.into()))?;
        let network = canonical(network);
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                AddressError::BadPrefix {
                    text: text.into(),
                    bits,
                }
            })?,
        };
        if mask(network, prefix) != network {
            return Err(AddressError::HostBits {
                text: text.into(),
                prefix,
                network: mask(network, prefix),
            });
        }
        Ok(AccessEntry::Network { network, prefix })
    }

    /// Whether the entry admits `peer`.
    pub fn admits(&self, peer: IpAddr) -> bool {
        match *self {
            AccessEntry::Any => true,
            AccessEntry::Network { network, prefix } => {
                let peer = canonical(peer);
                peer.is_ipv4() == network.is_ipv4() && mask(peer, prefix) == network
            }
        }
    }
}

impl fmt::Display for AccessEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessEntry::Any => f.write_str("any"),
            AccessEntry::Network { network, prefix } => {
                let bits = if network.is_ipv4() { 32 } else { 128 };
                if *prefix == bits {
                    write!(f, "{network}")
                } else {
                    write!(f, "{network}/{prefix}")
                }
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; others unchanged.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `address` with the bits below `prefix` cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// The whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccess {
    /// The entries, in file order.
    pub entries: Vec<AccessEntry>,
}

impl ClientAccess {
    /// The list of a fresh appliance: `any`.
    pub fn open_to_all() -> ClientAccess {
        ClientAccess {
            entries: vec![AccessEntry::Any],
        }
    }

    /// Parses the file's text; an error names the line (and `path`, the file it came from).
    pub fn parse_in(path: &Path, text: &str) -> Result<ClientAccess, FileError> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(AccessEntry::parse(line).map_err(|error| FileError::Line {
                path: path.into(),
                line: number + 1,
                error,
            })?);
        }
        Ok(ClientAccess { entries })
    }

    /// Reads the list at `path` (missing: [`ClientAccess::open_to_all`]).
    pub fn read(path: &Path) -> Result<ClientAccess, FileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => ClientAccess::parse_in(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientAccess::open_to_all()),
            Err(source) => Err(FileError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes the list to `path` atomically (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        let mut text = String::from(
            "# Tessera client access list: one address, network or \"any\" per line.\n",
        );
        for entry in &self.entries {
            text += &format!("{entry}\n");
        }
        // Group-writable whatever the umask: the appliance accounts share it.
        crate::write_atomically(path, &text, 0o660)
    }

    /// Whether `peer` may connect.
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.entries.iter().any(|e| e.admits(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_match_and_name_what_is_wrong() {
        let list = ClientAccess::parse_in(
            Path::new("clients"),
            "# office\n192.0.2.0/24\n2001:db8::1\n\n",
        )
        .unwrap();
        assert!(list.admits("192.0.2.77".parse().unwrap()));
        assert!(list.admits("::ffff:192.0.2.5".parse().unwrap()));
        assert!(!list.admits("192.0.3.1".parse().unwrap()));
        assert!(list.admits("2001:db8::1".parse().unwrap()));
        assert!(!list.admits("2001:db8::2".parse().unwrap()));
        assert!(!ClientAccess::parse_in(Path::new("clients"), "")
            .unwrap()
            .admits("127.0.0.1".parse().unwrap()));
        assert!(ClientAccess::parse_in(Path::new("clients"), "ANY")
            .unwrap()
            .admits("10.1.2.3".parse().unwrap()));
        assert_eq!(
            AccessEntry::parse("192.0.2.1/24").unwrap_err().to_string(),
            "\"192.0.2.1/24\": host bits are set below the /24 prefix (the network is 192.0.2.0/24)"
        );
        assert!(AccessEntry::parse("10.0.0.0/33")
            .unwrap_err()
            .to_string()
            .contains("0-32"));
        assert!(
            ClientAccess::parse_in(Path::new("clients"), "10.0.0.1\nexample.com")
                .unwrap_err()
                .to_string()
                .starts_with("clients: line 2:")
        );
        assert_eq!(
            AccessEntry::parse("0.0.0.0/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert!(AccessEntry::parse("0.0.0.0/0")
            .unwrap()
            .admits("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn a_missing_file_admits_all_and_a_written_list_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients");
        assert_eq!(
            ClientAccess::read(&path).unwrap(),
            ClientAccess::open_to_all()
        );
        let list = ClientAccess::parse_in(Path::new("clients"), "127.0.0.1\n10.0.0.0/8").unwrap();
        list.write(&path).unwrap();
        assert_eq!(ClientAccess::read(&path).unwrap(), list);
    }
}
