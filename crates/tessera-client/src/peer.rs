//! Who is on the other end of a local socket: checked once per new Unix connection, before
//! anything is sent on it.
//!
//! A Unix socket path names whoever bound it last. In a directory that another user can write,
//! that user can put a socket of their own in place of the daemon's and read what the library
//! sends (the PIN of `C_Login`). So a new connection is used only when
//!
//! - the process that listens on it (`SO_PEERCRED`) runs as this process's effective uid, as
//!   root, or as the user named by `ET_HSM_NETCLIENT_SERVER_USER`; and
//! - the socket's directory (after symbolic links) is owned by one of those users and is not
//!   writable by group or others.
//!
//! Otherwise the connection is closed unused: the device is unreachable (`CKR_DEVICE_REMOVED`
//! for a call, an absent token in the slot list) and one line giving the reason and the fix
//! goes to the library's log (`ET_PTKC_GENERAL_LOG`). TCP connections are not concerned: the
//! secure-messaging channel authenticates a network device.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use tessera_config::{users, Config, SERVER_USER};

use crate::SecureSettings;

/// The users that may serve a local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trusted {
    /// This process's effective uid.
    own: u32,
    /// `ET_HSM_NETCLIENT_SERVER_USER`, when set.
    server: Option<u32>,
}

impl Trusted {
    fn admits(&self, uid: u32) -> bool {
        uid == self.own || uid == 0 || Some(uid) == self.server
    }

    /// Who is admitted, for a message.
    fn described(&self) -> String {
        let mut who = format!("this process's own {}", users::describe(self.own));
        if self.own != 0 {
            who.push_str(", root");
        }
        match self.server {
            Some(uid) => who.push_str(&format!(" or {} ({SERVER_USER})", users::describe(uid))),
            None => who.push_str(&format!(" ({SERVER_USER} is not set)")),
        }
        who
    }
}

/// Checks the new connection `stream` to the socket at `path`; `Err` is the reason to refuse
/// it, already written to the library's log. `secure`: the device's settings, whose
/// configuration and log are used (without them, the process's configuration).
pub(crate) fn verify(
    stream: &UnixStream,
    path: &Path,
    secure: Option<&SecureSettings>,
) -> Result<(), String> {
    let loaded;
    let config = match secure {
        Some(settings) => settings.config(),
        None => {
            // Unreadable: no server user is named, so only this process's user and root are
            // admitted (stricter, not weaker).
            loaded = Config::load().unwrap_or_default();
            &loaded
        }
    };
    let outcome = check(stream, path, config);
    if let Err(reason) = &outcome {
        let line = format!("refused the local socket {}: {reason}", path.display());
        match secure {
            Some(settings) => settings.log(&line),
            // The same log, as this process's configuration names it.
            None => match SecureSettings::from_config(config.clone()) {
                Ok(settings) => settings.log(&line),
                Err(_) => eprintln!("tessera-pkcs11: {line}"),
            },
        }
    }
    outcome
}

fn check(stream: &UnixStream, path: &Path, config: &Config) -> Result<(), String> {
    let trusted = Trusted {
        own: rustix::process::geteuid().as_raw(),
        server: config.server_user().map_err(|e| e.to_string())?,
    };
    let peer = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot tell who serves it (SO_PEERCRED): {e}"))?;
    check_peer(peer.uid.as_raw(), trusted)?;
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = real
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect its directory {}: {e}", dir.display()))?;
    check_dir(dir, meta.uid(), meta.mode(), trusted)
}

fn check_peer(peer: u32, trusted: Trusted) -> Result<(), String> {
    if trusted.admits(peer) {
        return Ok(());
    }
    Err(format!(
        "the process serving it runs as {}, expected {}; nothing was sent. If that user really \
         runs tesserad, set {SERVER_USER}={peer} (or the user's name); otherwise another user \
         is standing in for the daemon",
        users::describe(peer),
        trusted.described()
    ))
}

fn check_dir(dir: &Path, owner: u32, mode: u32, trusted: Trusted) -> Result<(), String> {
    let mut problems = Vec::new();
    if !trusted.admits(owner) {
        problems.push(format!("is not owned by {}", trusted.described()));
    }
    if mode & 0o022 != 0 {
        problems.push("can be written by group or others".to_string());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "its directory {} (owner {}, mode {:04o}) {}, so another user could replace the socket; \
         nothing was sent. Serve the socket from a directory that only the daemon's user owns \
         and can write (e.g. chmod 0700 {}), or point ET_HSM_NETCLIENT_SERVERLIST at one",
        dir.display(),
        users::describe(owner),
        mode & 0o7777,
        problems.join(" and "),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    const ME: u32 = 1000;
    const OTHER: u32 = 65534;
    const ALONE: Trusted = Trusted {
        own: ME,
        server: None,
    };

    #[test]
    fn own_uid_and_root_serve_and_others_do_not() {
        assert_eq!(check_peer(ME, ALONE), Ok(()));
        assert_eq!(check_peer(0, ALONE), Ok(()));
        let refused = check_peer(OTHER, ALONE).unwrap_err();
        assert!(refused.contains("uid 65534"), "{refused}");
        assert!(refused.contains("uid 1000"), "{refused}");
        assert!(
            refused.contains(&format!("{SERVER_USER}=65534")),
            "{refused}"
        );
    }

    #[test]
    fn the_configured_server_user_serves() {
        let with = Trusted {
            own: ME,
            server: Some(OTHER),
        };
        assert_eq!(check_peer(OTHER, with), Ok(()));
        assert!(check_peer(4242, with).is_err());
        assert_eq!(check_dir(Path::new("/run/t"), OTHER, 0o40750, with), Ok(()));
    }

    #[test]
    fn a_directory_others_can_write_or_own_is_refused() {
        let dir = Path::new("/run/t");
        assert_eq!(check_dir(dir, ME, 0o40700, ALONE), Ok(()));
        assert_eq!(check_dir(dir, 0, 0o40755, ALONE), Ok(()));
        for mode in [0o40777, 0o40770, 0o40702, 0o41777] {
            let refused = check_dir(dir, ME, mode, ALONE).unwrap_err();
            assert!(refused.contains("written by group or others"), "{refused}");
            assert!(
                refused.contains(&format!("mode {:04o}", mode & 0o7777)),
                "{refused}"
            );
            assert!(refused.contains("/run/t"), "{refused}");
        }
        let foreign = check_dir(dir, OTHER, 0o40700, ALONE).unwrap_err();
        assert!(foreign.contains("owner uid 65534"), "{foreign}");
        assert!(foreign.contains("not owned by"), "{foreign}");
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        let level = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>();
        Config::from_levels(level, HashMap::new(), HashMap::new())
    }

    #[test]
    fn a_real_connection_is_checked_with_its_directory() {
        // A socket pair's peer is this process itself.
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        assert_eq!(check(&ours, &path, &config(&[])), Ok(()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = check(&ours, &path, &config(&[])).unwrap_err();
        assert!(refused.contains("mode 0777"), "{refused}");
        assert!(
            refused.contains(&dir.path().display().to_string()),
            "{refused}"
        );
    }

    #[test]
    fn an_unknown_server_user_is_a_configuration_error() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let unknown = config(&[(SERVER_USER, "no-such-tessera-user")]);
        let refused = check(&ours, Path::new("/nonexistent/t.sock"), &unknown).unwrap_err();
        assert!(
            refused.contains(SERVER_USER) && refused.contains("no-such-tessera-user"),
            "{refused}"
        );
    }
}
