//! The addresses the daemon serves (`--listen`, and an appliance's `listen` file).

use crate::error::{AddressError, FileError};
use std::fmt;
use std::path::PathBuf;

use crate::DEFAULT_TCP_PORT;

/// A parsed listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// Parses `unix:PATH` or `tcp:HOST[:PORT]` (port 12396 when none is given).
pub fn parse(text: &str) -> Result<Listen, AddressError> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(AddressError::UnixWithoutPath);
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if let Some(address) = text.strip_prefix("tcp:") {
        if address.is_empty() {
            return Err(AddressError::TcpWithoutHost);
        }
        let with_port = if address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok() && !h.ends_with(':'))
        {
            address.to_string()
        } else {
            format!("{address}:{DEFAULT_TCP_PORT}")
        };
        let host = with_port.rsplit_once(':').map_or("", |(h, _)| h);
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(AddressError::UnbracketedHost(text.into()));
        }
        return Ok(Listen::Tcp(with_port));
    }
    Err(AddressError::UnknownScheme(text.into()))
}

/// Reads an appliance's `listen` file: one address per line, `#` comments. `Ok(None)` when
/// the file does not exist; an error names the line.
pub fn read_file(path: &std::path::Path) -> Result<Option<Vec<Listen>>, FileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Read {
                path: path.into(),
                source,
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| {
            parse(l.trim()).map_err(|error| FileError::Line {
                path: path.into(),
                line: n + 1,
                error,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_the_default_port_and_print_back() {
        assert_eq!(
            parse("tcp:0.0.0.0").unwrap(),
            Listen::Tcp("0.0.0.0:12396".into())
        );
        assert_eq!(parse("tcp:[::1]:99").unwrap().to_string(), "tcp:[::1]:99");
        assert_eq!(
            parse("unix:/run/t.sock").unwrap().to_string(),
            "unix:/run/t.sock"
        );
        assert_eq!(
            parse("udp:1.2.3.4"),
            Err(AddressError::UnknownScheme("udp:1.2.3.4".into()))
        );
        assert!(parse("udp:1.2.3.4")
            .unwrap_err()
            .to_string()
            .contains("expected unix:PATH or tcp:HOST:PORT"));
        assert_eq!(parse("unix:"), Err(AddressError::UnixWithoutPath));
        assert!(matches!(
            parse("tcp:0.0.0.0:12396:7"),
            Err(AddressError::UnbracketedHost(_))
        ));
        assert!(parse("tcp:::1")
            .unwrap_err()
            .to_string()
            .contains("in brackets"));
        assert_eq!(
            parse("tcp:[::1]").unwrap(),
            Listen::Tcp("[::1]:12396".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("listen");
        assert_eq!(read_file(&file).unwrap(), None);
        std::fs::write(&file, "# served\ntcp:127.0.0.1:1\nbogus\n").unwrap();
        let refused = read_file(&file).unwrap_err();
        assert!(
            matches!(refused, FileError::Line { line: 3, .. }),
            "{refused}"
        );
        assert!(refused
            .to_string()
            .ends_with("line 3: \"bogus\": expected unix:PATH or tcp:HOST:PORT"));
    }
}
