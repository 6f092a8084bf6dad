//! Client configuration items, resolved once here for every client-side tool.
//!
//! Item names follow `ET_<class>_<component>_<item>`; [`items`] lists every one, and
//! docs/operations.md describes them for operators. Four levels, first match wins:
//!
//! | level | where |
//! | --- | --- |
//! | temporary | the process environment |
//! | user | `$TESSERA_USER_CONFIG`, else `$XDG_CONFIG_HOME/tessera/et_hsm`, else `~/.config/tessera/et_hsm` |
//! | system | `$TESSERA_SYSTEM_CONFIG`, else `/etc/default/et_hsm` |
//! | default | built in ([`default_value`]) |
//!
//! Files hold `NAME=value` lines; `#` starts a comment line; a value may be quoted with `"`.
//!
//! [`atomic`] is the one way every Tessera crate replaces a file.
#![forbid(unsafe_code)]

pub mod access;
pub mod atomic;
pub mod error;
pub mod items;
pub mod listen;
pub mod modes;
mod server;
pub mod users;

pub use error::{AddressError, FileError, UnknownUser};
pub use modes::{LibraryMode, WldSlot};
pub use server::{default_data_dir, default_socket_path, ServerAddress, DEFAULT_TCP_PORT};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The item listing the devices: space-separated servers, position = device number.
pub const SERVER_LIST: &str = "ET_HSM_NETCLIENT_SERVERLIST";
/// Seconds to wait for a device to accept a connection.
pub const CONNECT_TIMEOUT: &str = "ET_HSM_NETCLIENT_CONNECT_TIMEOUT";
/// Seconds to wait for a device's reply before declaring it down.
pub const REPLY_TIMEOUT: &str = "ET_HSM_NETCLIENT_REPLY_TIMEOUT";
/// The user (a name or a uid) that may serve a local socket besides the client's own user and
/// root: the library refuses a Unix socket served by anyone else, or in a directory that anyone
/// else can write.
pub const SERVER_USER: &str = "ET_HSM_NETCLIENT_SERVER_USER";

/// Where an item's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The environment.
    Temporary,
    /// The user's file.
    User,
    /// The system file.
    System,
    /// Built in.
    Default,
}

/// A configuration problem, naming the item or file at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A file line is not `NAME=value`.
    #[error("{file}:{line}: expected NAME=value, found {text:?}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// A file could not be read (other than not existing).
    #[error("cannot read configuration file {file}: {reason}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A problem described in full by its message (it names the item).
    #[error("{0}")]
    Message(String),
    /// An item names an address that is wrong.
    #[error("configuration item {item} (from the {level:?} level): {error}")]
    Address {
        /// The item.
        item: String,
        /// The level it came from.
        level: Level,
        /// What is wrong with the address.
        error: AddressError,
    },
    /// An item's value is invalid.
    #[error("configuration item {item} (from the {level:?} level): {reason}")]
    Invalid {
        /// The item.
        item: String,
        /// The level it came from.
        level: Level,
        /// What is wrong.
        reason: String,
    },
}

/// The built-in default of an item, if it has one.
pub fn default_value(name: &str) -> Option<String> {
    match name {
        SERVER_LIST => Some(default_socket_path().display().to_string()),
        CONNECT_TIMEOUT => Some("3".into()),
        REPLY_TIMEOUT => Some("60".into()),
        "ET_PTKC_GENERAL_LIBRARY_MODE" => Some("NORMAL".into()),
        _ => None,
    }
}

/// Resolved configuration: the three stored levels, read once.
#[derive(Debug, Default, Clone)]
pub struct Config {
    temporary: HashMap<String, String>,
    user: HashMap<String, String>,
    system: HashMap<String, String>,
}

impl Config {
    /// Reads the environment and the user and system files of this process.
    pub fn load() -> Result<Config, ConfigError> {
        let temporary: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("ET_"))
            .collect();
        Ok(Config {
            temporary,
            user: read_file(&user_file())?,
            system: read_file(&system_file())?,
        })
    }

    /// Builds a configuration from explicit levels (tests and tools).
    pub fn from_levels(
        temporary: HashMap<String, String>,
        user: HashMap<String, String>,
        system: HashMap<String, String>,
    ) -> Config {
        Config {
            temporary,
            user,
            system,
        }
    }

    /// The value of an item and the level it came from; first match wins.
    pub fn item(&self, name: &str) -> Option<(String, Level)> {
        let stored = [
            (&self.temporary, Level::Temporary),
            (&self.user, Level::User),
            (&self.system, Level::System),
        ];
        stored
            .into_iter()
            .find_map(|(map, level)| map.get(name).map(|v| (v.clone(), level)))
            .or_else(|| default_value(name).map(|v| (v, Level::Default)))
    }

    /// The names of every item set at the stored levels (environment, user, system).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .temporary
            .keys()
            .chain(self.user.keys())
            .chain(self.system.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The devices, in device-number order.
    pub fn servers(&self) -> Result<Vec<ServerAddress>, ConfigError> {
        let (value, level) = self.item(SERVER_LIST).unwrap_or_default_list();
        let servers = value
            .split_whitespace()
            .map(ServerAddress::parse)
            .collect::<Result<Vec<_>, AddressError>>()
            .map_err(|error| ConfigError::Address {
                item: SERVER_LIST.into(),
                level,
                error,
            })?;
        if servers.is_empty() {
            return Err(ConfigError::Invalid {
                item: SERVER_LIST.into(),
                level,
                reason: "the list is empty; name at least one server or unset the item".into(),
            });
        }
        Ok(servers)
    }

    /// The uid named by [`SERVER_USER`] (a number, or a name looked up in `/etc/passwd`);
    /// `None` when the item is unset or empty. An unknown name is an error naming the item.
    pub fn server_user(&self) -> Result<Option<u32>, ConfigError> {
        match self.item(SERVER_USER) {
            None => Ok(None),
            // Unreadable: every name is unknown, an error naming the item (never a guess).
            Some(_) => {
                self.server_user_in(&std::fs::read_to_string(users::PASSWD).unwrap_or_default())
            }
        }
    }

    /// [`Config::server_user`] against the text of a password file.
    pub fn server_user_in(&self, passwd: &str) -> Result<Option<u32>, ConfigError> {
        match self.item(SERVER_USER) {
            Some((value, _)) if value.trim().is_empty() => Ok(None),
            Some((value, level)) => {
                users::resolve_in(passwd, &value)
                    .map(Some)
                    .map_err(|unknown| ConfigError::Invalid {
                        item: SERVER_USER.into(),
                        level,
                        reason: unknown.to_string(),
                    })
            }
            None => Ok(None),
        }
    }

    /// A duration item in seconds (whole or fractional).
    pub fn seconds(&self, name: &str) -> Result<std::time::Duration, ConfigError> {
        let (value, level) = self.item(name).unwrap_or(("0".into(), Level::Default));
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
            .map(std::time::Duration::from_secs_f64)
            .ok_or_else(|| ConfigError::Invalid {
                item: name.into(),
                level,
                reason: format!("{value:?} is not a number of seconds between 0 and 86400"),
            })
    }
}

trait OrDefaultList {
    fn unwrap_or_default_list(self) -> (String, Level);
}

impl OrDefaultList for Option<(String, Level)> {
    fn unwrap_or_default_list(self) -> (String, Level) {
        self.unwrap_or_else(|| (default_socket_path().display().to_string(), Level::Default))
    }
}

/// The user-level file of this process.
pub fn user_file() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_USER_CONFIG") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    base.join("tessera").join("et_hsm")
}

/// The system-level file of this process.
pub fn system_file() -> PathBuf {
    std::env::var_os("TESSERA_SYSTEM_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/default/et_hsm"))
}

/// Reads a `NAME=value` file; a missing file is an empty level.
pub fn read_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&path.display().to_string(), &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(ConfigError::Unreadable {
            file: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Parses the text of a `NAME=value` file.
pub fn parse(file: &str, text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let mut items = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let syntax = || ConfigError::Syntax {
            file: file.into(),
            line: index + 1,
            text: raw.into(),
        };
        let (name, value) = line.split_once('=').ok_or_else(syntax)?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(syntax());
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        items.insert(name.to_string(), value.to_string());
    }
    Ok(items)
}

/// Replaces `path` with `text` through [`atomic::write`] (with `mode`, whatever the umask), so a
/// crash or a second writer leaves a whole file, old or new.
pub fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<(), FileError> {
    atomic::write(path, text.as_bytes(), atomic::Mode::Exactly(mode)).map_err(|source| {
        FileError::Write {
            path: path.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_level_that_has_the_item_wins() {
        let config = Config::from_levels(
            level(&[]),
            level(&[(SERVER_LIST, "user-host")]),
            level(&[
                (SERVER_LIST, "system-host"),
                ("ET_PTKC_GENERAL_LIBRARY_MODE", "WLD"),
            ]),
        );
        assert_eq!(
            config.item(SERVER_LIST),
            Some(("user-host".into(), Level::User))
        );
        assert_eq!(
            config.item("ET_PTKC_GENERAL_LIBRARY_MODE"),
            Some(("WLD".into(), Level::System))
        );
        let env = Config::from_levels(level(&[(SERVER_LIST, "env-host")]), level(&[]), level(&[]));
        assert_eq!(env.item(SERVER_LIST).unwrap().1, Level::Temporary);
        let empty = Config::default();
        assert_eq!(
            empty.item(CONNECT_TIMEOUT),
            Some(("3".into(), Level::Default))
        );
        assert_eq!(
            empty.servers().unwrap(),
            vec![ServerAddress::Unix(default_socket_path())]
        );
    }

    #[test]
    fn server_list_positions_and_errors() {
        let config = Config::from_levels(
            level(&[(SERVER_LIST, "hsm1 10.0.0.2:1234 /run/t.sock [::1]:99")]),
            level(&[]),
            level(&[]),
        );
        let servers = config.servers().unwrap();
        assert_eq!(
            servers[0],
            ServerAddress::Tcp {
                host: "hsm1".into(),
                port: DEFAULT_TCP_PORT
            }
        );
        assert_eq!(
            servers[1],
            ServerAddress::Tcp {
                host: "10.0.0.2".into(),
                port: 1234
            }
        );
        assert_eq!(servers[2], ServerAddress::Unix("/run/t.sock".into()));
        assert_eq!(
            servers[3],
            ServerAddress::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        let bad = Config::from_levels(
            level(&[(SERVER_LIST, "host:notaport")]),
            level(&[]),
            level(&[]),
        );
        let message = bad.servers().unwrap_err().to_string();
        assert!(
            message.contains(SERVER_LIST) && message.contains("notaport"),
            "{message}"
        );
        let blank = Config::from_levels(level(&[(SERVER_LIST, "  ")]), level(&[]), level(&[]));
        assert!(blank.servers().unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn files_parse_with_comments_quotes_and_report_bad_lines() {
        let items = parse("f", "# c\nexport A_B=\"x y\"\n\nC = 3\n").unwrap();
        assert_eq!(items["A_B"], "x y");
        assert_eq!(items["C"], "3");
        let err = parse("f", "ok=1\nnot a line\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f:2: expected NAME=value, found \"not a line\""
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(read_file(&dir.path().join("missing")).unwrap().is_empty());
        let path = dir.path().join("et_hsm");
        std::fs::write(&path, "ET_HSM_NETCLIENT_SERVERLIST=/tmp/x.sock\n").unwrap();
        assert_eq!(read_file(&path).unwrap()[SERVER_LIST], "/tmp/x.sock");
    }

    #[test]
    fn the_server_user_is_a_number_or_a_known_name() {
        let passwd = "root:x:0:0::/root:/bin/sh\ntessera:x:998:998::/:/bin/false\n";
        let with = |value: &str| {
            Config::from_levels(level(&[(SERVER_USER, value)]), level(&[]), level(&[]))
        };
        assert_eq!(Config::default().server_user_in(passwd), Ok(None));
        assert_eq!(with("").server_user_in(passwd), Ok(None));
        assert_eq!(with("tessera").server_user_in(passwd), Ok(Some(998)));
        assert_eq!(with("65534").server_user_in(passwd), Ok(Some(65534)));
        let error = with("mallory")
            .server_user_in(passwd)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(SERVER_USER) && error.contains("mallory"),
            "{error}"
        );
    }

    #[test]
    fn timeouts_must_be_positive_numbers() {
        let config = Config::from_levels(level(&[(REPLY_TIMEOUT, "-1")]), level(&[]), level(&[]));
        assert!(config
            .seconds(REPLY_TIMEOUT)
            .unwrap_err()
            .to_string()
            .contains(REPLY_TIMEOUT));
        assert_eq!(
            Config::default()
                .seconds(CONNECT_TIMEOUT)
                .unwrap()
                .as_secs(),
            3
        );
    }
}
