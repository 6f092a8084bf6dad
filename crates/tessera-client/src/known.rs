//! Known devices: what the library learnt of the device at each server-list entry through an
//! authenticated channel, as SSH's `known_hosts` or a browser's HSTS pins.
//!
//! After the first authenticated channel to an entry, the library records the device's serial,
//! its identity (the SHA-256 fingerprint of its PIC) and whether the device itself required a
//! channel. From then on that entry is only talked to through a channel to that very device: a
//! device at the entry that offers no channel, shows another serial or another identity is
//! refused, with a message naming what was recorded and what is seen, until the operator
//! accepts the change (`ctident known-devices forget ENTRY`, or `add` to provision a record).
//!
//! | level | file |
//! | --- | --- |
//! | user | `ET_PTKC_KNOWN_DEVICES_USER`, else `$XDG_CONFIG_HOME/tessera/known_devices`, else `~/.config/tessera/known_devices`; none without any of them |
//! | system | `ET_PTKC_KNOWN_DEVICES_SYSTEM`, else `/etc/tessera/known_devices` |
//!
//! The user's record of an entry wins over the system's. The library writes the user's file
//! only (mode 0600, replaced atomically, under an exclusive `flock` of `FILE.lock` so that
//! processes recording at once keep each other's records); the system's is provisioned by an
//! administrator. A file (or its directory) that another user owns or that group or others
//! can write is refused, as a planted record could let a device be talked to in the clear.
//! One line per entry, `#` starts a comment:
//!
//! ```text
//! ENTRY SERIAL IDENTITY CHANNEL
//! 127.0.0.1:12396 5711537307 sha256:9f86d0…15b0f00a08 required
//! ```
//!
//! `IDENTITY` is `sha256:` and 64 hex digits, or `none` for a device provisioned as having no
//! identity. `CHANNEL` is `required` (the device's flags required a channel), `used` (a
//! channel was made because this client asked for one) or `clear` (provisioned: a device
//! without identity, talked to in the clear when nothing requires more).

use std::path::{Path, PathBuf};

use tessera_config::Config;

/// Item naming the user's known-devices file.
pub const USER_ITEM: &str = "ET_PTKC_KNOWN_DEVICES_USER";
/// Item naming the system's known-devices file.
pub const SYSTEM_ITEM: &str = "ET_PTKC_KNOWN_DEVICES_SYSTEM";

/// Which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The current user's.
    User,
    /// The system's.
    System,
}

/// How the device at an entry was talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelUse {
    /// The device's own flags required a channel.
    Required,
    /// A channel was made because the client's policy asked for one.
    Used,
    /// Provisioned: a device without identity, allowed in the clear.
    Clear,
}

impl ChannelUse {
    fn word(self) -> &'static str {
        match self {
            ChannelUse::Required => "required",
            ChannelUse::Used => "used",
            ChannelUse::Clear => "clear",
        }
    }
}

/// What is known of the device at one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    /// The server-list entry (as the server list writes it).
    pub entry: String,
    /// The device's serial number.
    pub serial: String,
    /// Lower-case hex SHA-256 of the device's PIC (DER); `None` for a device without identity.
    pub identity: Option<String>,
    /// How it was talked to.
    pub channel: ChannelUse,
}

impl KnownDevice {
    /// The line of the file.
    pub fn line(&self) -> String {
        let identity = self
            .identity
            .as_ref()
            .map_or("none".to_string(), |id| format!("sha256:{id}"));
        format!(
            "{} {} {identity} {}",
            self.entry,
            self.serial,
            self.channel.word()
        )
    }

    /// Whether this entry may be talked to in the clear at all.
    pub fn allows_clear(&self) -> bool {
        self.channel == ChannelUse::Clear
    }

    /// One sentence: what was recorded.
    pub fn describe(&self) -> String {
        let identity = self
            .identity
            .as_ref()
            .map_or("no identity".to_string(), |id| {
                format!("identity sha256:{id}")
            });
        let channel = match self.channel {
            ChannelUse::Required => "which required a secure channel",
            ChannelUse::Used => "talked to through a secure channel",
            ChannelUse::Clear => "allowed in the clear",
        };
        format!("serial {}, {identity}, {channel}", self.serial)
    }
}

/// The lower-case hex SHA-256 of a certificate, as the file records identities.
pub fn identity_of(pic: &[u8]) -> String {
    tessera_identity::inspect::fingerprint_id(pic)
}

/// What is wrong with a known-devices file, a record of it, or a change to it.
#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    /// A line of a file is not a record.
    #[error("{}:{line}: {problem}: expected ENTRY SERIAL sha256:HEX|none required|used|clear, found {text:?}", file.display())]
    Line {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Which part is wrong.
        problem: &'static str,
        /// The line.
        text: String,
    },
    /// A record to parse is empty.
    #[error("an empty record")]
    Empty,
    /// A record to write would not read back as itself.
    #[error("not a valid record: {0:?} (an entry or serial with spaces, an identity that is not 64 hex digits, or an identity with `clear`)")]
    Invalid(String),
    /// The file or its directory belongs to another user than this one or root.
    #[error("known-devices {what} {} belongs to uid {owner}, not to this user (uid {own}) or root: a record planted there could let a device be talked to in the clear; remove it or give it to its user", place.display())]
    ForeignOwner {
        /// `file` or `directory`.
        what: &'static str,
        /// Which.
        place: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's user.
        own: u32,
    },
    /// The file or its directory can be written by group or others.
    #[error("known-devices {what} {} can be written by group or others (mode {mode:04o}): a record planted there could let a device be talked to in the clear; chmod go-w it", place.display())]
    Writable {
        /// `file` or `directory`.
        what: &'static str,
        /// Which.
        place: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// This process has no user-level file to change.
    #[error("(no user-level file: set {} or HOME)", USER_ITEM)]
    NoUserFile,
    /// A file could not be read, made, opened, locked or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] tessera_config::FileError),
}

fn parse_line(file: &Path, number: usize, line: &str) -> Result<Option<KnownDevice>, KnownError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let bad = |problem: &'static str| KnownError::Line {
        file: file.into(),
        line: number,
        problem,
        text: line.into(),
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [entry, serial, identity, channel] = fields[..] else {
        return Err(bad("four fields"));
    };
    let identity = match identity {
        "none" => None,
        text => {
            let hex = text
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad("the identity"))?;
            Some(hex.to_ascii_lowercase())
        }
    };
    let channel = match channel {
        "required" => ChannelUse::Required,
        "used" => ChannelUse::Used,
        "clear" => ChannelUse::Clear,
        _ => return Err(bad("the channel word")),
    };
    if channel == ChannelUse::Clear && identity.is_some() {
        return Err(bad(
            "a device with an identity is never allowed in the clear",
        ));
    }
    if channel != ChannelUse::Clear && identity.is_none() {
        return Err(bad("a channel needs an identity"));
    }
    Ok(Some(KnownDevice {
        entry: entry.into(),
        serial: serial.into(),
        identity,
        channel,
    }))
}

/// Parses one record as the file writes it (`ENTRY SERIAL IDENTITY CHANNEL`); the error
/// says what is wrong.
pub fn parse_record(line: &str) -> Result<KnownDevice, KnownError> {
    parse_line(Path::new("record"), 1, line)?.ok_or(KnownError::Empty)
}

/// Refuses a file or directory that another user than this process's (or root) owns, or that
/// group or others can write.
fn owned_safely(path: &Path) -> Result<(), KnownError> {
    use std::os::unix::fs::MetadataExt;
    let own = rustix::process::geteuid().as_raw();
    for (what, place) in [("file", Some(path)), ("directory", path.parent())] {
        let Some(place) = place.filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(place) else {
            continue;
        };
        let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
        if owner != own && owner != 0 {
            return Err(KnownError::ForeignOwner {
                what,
                place: place.into(),
                owner,
                own,
            });
        }
        // A sticky directory others can write (such as /tmp) still lets nobody replace the
        // file of its owner; any other group- or world-writable place does.
        let sticky = what == "directory" && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky {
            return Err(KnownError::Writable {
                what,
                place: place.into(),
                mode,
            });
        }
    }
    Ok(())
}

/// The known-devices files of this process's configuration.
#[derive(Debug, Clone)]
pub struct KnownDevices {
    /// `None` when neither the item, `XDG_CONFIG_HOME` nor `HOME` names a place: never the
    /// working directory, which another user might control.
    user: Option<PathBuf>,
    system: PathBuf,
}

impl KnownDevices {
    /// The files as configured (see the module documentation).
    pub fn from_config(config: &Config) -> KnownDevices {
        let user = config
            .item(USER_ITEM)
            .map(|(v, _)| PathBuf::from(v.trim()))
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .filter(|h| !h.is_empty())
                            .map(|h| PathBuf::from(h).join(".config"))
                    })
                    .map(|config| config.join("tessera").join("known_devices"))
            });
        let system = config
            .item(SYSTEM_ITEM)
            .map(|(v, _)| PathBuf::from(v.trim()))
            .unwrap_or_else(|| PathBuf::from("/etc/tessera/known_devices"));
        KnownDevices { user, system }
    }

    /// The file of `level` (`None`: this process has no user-level file).
    pub fn path(&self, level: Level) -> Option<&Path> {
        match level {
            Level::User => self.user.as_deref(),
            Level::System => Some(&self.system),
        }
    }

    /// The file of `level`, for a message.
    pub fn shown(&self, level: Level) -> String {
        self.path(level).map_or(
            format!("(no user-level file: set {USER_ITEM} or HOME)"),
            |p| p.display().to_string(),
        )
    }

    /// Every record of `level` (a missing file has none).
    pub fn list(&self, level: Level) -> Result<Vec<KnownDevice>, KnownError> {
        let Some(path) = self.path(level) else {
            return Ok(Vec::new());
        };
        owned_safely(path)?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(KnownError::Io {
                    action: "read",
                    path: path.into(),
                    source,
                })
            }
        };
        let mut records = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if let Some(record) = parse_line(path, index + 1, line)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The record of `entry`: the user's, else the system's.
    pub fn lookup(&self, entry: &str) -> Result<Option<(KnownDevice, Level)>, KnownError> {
        for level in [Level::User, Level::System] {
            if let Some(record) = self.list(level)?.into_iter().find(|r| r.entry == entry) {
                return Ok(Some((record, level)));
            }
        }
        Ok(None)
    }

    /// Records (or replaces) the record of its entry at `level`. The record must read back
    /// as itself: nothing is written that would make the file unreadable.
    pub fn record(&self, level: Level, device: &KnownDevice) -> Result<(), KnownError> {
        if parse_record(&device.line()).ok().as_ref() != Some(device) {
            return Err(KnownError::Invalid(device.line()));
        }
        self.change(level, |records| {
            records.retain(|r| r.entry != device.entry);
            records.push(device.clone());
            true
        })
    }

    /// Removes the record of `entry` at `level`; whether there was one.
    pub fn forget(&self, level: Level, entry: &str) -> Result<bool, KnownError> {
        let mut found = false;
        self.change(level, |records| {
            let before = records.len();
            records.retain(|r| r.entry != entry);
            found = records.len() != before;
            found
        })?;
        Ok(found)
    }

    /// Reads, changes and rewrites the file of `level` under an exclusive lock of its
    /// `.lock` file (`change` says whether anything changed).
    fn change(
        &self,
        level: Level,
        change: impl FnOnce(&mut Vec<KnownDevice>) -> bool,
    ) -> Result<(), KnownError> {
        let path = self.path(level).ok_or(KnownError::NoUserFile)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| KnownError::Io {
                    action: "create",
                    path: parent.into(),
                    source,
                })?;
        }
        let lock_path = path.with_extension("lock");
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(|source| KnownError::Io {
                    action: "open",
                    path: lock_path.clone(),
                    source,
                })?
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|errno| {
            KnownError::Io {
                action: "lock",
                path: lock_path.clone(),
                source: errno.into(),
            }
        })?;
        let mut records = self.list(level)?;
        if !change(&mut records) {
            return Ok(());
        }
        let mut text = String::from(
            "# Tessera known devices (see docs/secure-messaging.md): ENTRY SERIAL IDENTITY CHANNEL\n",
        );
        for record in &records {
            text.push_str(&record.line());
            text.push('\n');
        }
        // The lock is released when `lock` closes, after the rename.
        Ok(tessera_config::write_atomically(path, &text, 0o600)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> KnownDevices {
        KnownDevices {
            user: Some(dir.join("user").join("known_devices")),
            system: dir.join("system"),
        }
    }

    fn device(entry: &str, serial: &str) -> KnownDevice {
        KnownDevice {
            entry: entry.into(),
            serial: serial.into(),
            identity: Some("ab".repeat(32)),
            channel: ChannelUse::Required,
        }
    }

    #[test]
    fn records_round_trip_and_replace_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        assert_eq!(known.lookup("127.0.0.1:1").unwrap(), None);
        known
            .record(Level::User, &device("127.0.0.1:1", "111"))
            .unwrap();
        known
            .record(Level::User, &device("/run/t.sock", "222"))
            .unwrap();
        known
            .record(Level::User, &device("127.0.0.1:1", "333"))
            .unwrap();
        let (found, level) = known.lookup("127.0.0.1:1").unwrap().unwrap();
        assert_eq!((found.serial.as_str(), level), ("333", Level::User));
        assert_eq!(known.list(Level::User).unwrap().len(), 2);
        assert!(known.forget(Level::User, "127.0.0.1:1").unwrap());
        assert!(!known.forget(Level::User, "127.0.0.1:1").unwrap());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(known.path(Level::User).unwrap())
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_users_record_wins_over_the_systems() {
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        known.record(Level::System, &device("h:1", "sys")).unwrap();
        assert_eq!(known.lookup("h:1").unwrap().unwrap().1, Level::System);
        known.record(Level::User, &device("h:1", "usr")).unwrap();
        assert_eq!(known.lookup("h:1").unwrap().unwrap().0.serial, "usr");
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        for bad in [
            "h:1 123",
            "h:1 123 sha256:00 required",
            "h:1 123 none required",
            &format!("h:1 123 sha256:{} clear", "ab".repeat(32)),
            &format!("h:1 123 sha256:{} maybe", "ab".repeat(32)),
        ] {
            std::fs::write(dir.path().join("system"), format!("# c\n{bad}\n")).unwrap();
            let error = known.lookup("h:1").unwrap_err();
            assert!(matches!(error, KnownError::Line { line: 2, .. }), "{error}");
            assert!(error.to_string().contains("system:2"), "{error}");
        }
        std::fs::write(dir.path().join("system"), "h:1 123 none clear\n").unwrap();
        assert!(known.lookup("h:1").unwrap().unwrap().0.allows_clear());
    }

    #[test]
    fn a_record_that_would_not_read_back_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        let mut bad = device("h:1", "12 34");
        assert!(known.record(Level::User, &bad).is_err());
        bad.serial = "1234".into();
        bad.identity = Some("abc".into());
        assert!(known.record(Level::User, &bad).is_err());
        bad.identity = None;
        assert!(
            known.record(Level::User, &bad).is_err(),
            "a channel needs an identity"
        );
        assert!(!known.path(Level::User).unwrap().exists());
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        known.record(Level::User, &device("h:1", "1")).unwrap();
        let path = known.path(Level::User).unwrap().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = known.lookup("h:1").unwrap_err();
        assert!(matches!(error, KnownError::Writable { .. }), "{error}");
        assert!(error.to_string().contains("chmod go-w"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let parent = path.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(known.lookup("h:1").is_err(), "a world-writable directory");
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(known.lookup("h:1").is_ok());
    }

    #[test]
    fn records_made_at_once_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let known = files(dir.path());
        std::thread::scope(|scope| {
            for n in 0..16 {
                let known = known.clone();
                scope.spawn(move || {
                    known
                        .record(Level::User, &device(&format!("h:{n}"), "1"))
                        .unwrap()
                });
            }
        });
        assert_eq!(known.list(Level::User).unwrap().len(), 16);
    }
}
