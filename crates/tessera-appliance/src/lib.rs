//! The Tessera appliance: the HSM daemon housed in a network appliance, managed by appliance
//! users with `psesh`.
//!
//! The appliance's own state lives in `DATA_DIR/appliance` (made by `tesserad --appliance`):
//!
//! | file | what |
//! | --- | --- |
//! | `users` | the users' salted password hashes ([`users`]) |
//! | `trust/<user>/` | each user's appliance trust store (what `hsm cert` fetched) |
//! | `audit.log` | the appliance audit log ([`audit`]) |
//! | `clients` | the client access list the daemon enforces ([`tessera_config::access`]) |
//! | `listen` | the addresses to serve, set with `network add/remove` |
//! | `listening` | the addresses the daemon serves (written by the daemon) |
//! | `tesserad.log` | the daemon's log |
//! | `client.log` | the reports of the client library psesh uses |
//! | `history/<user>` | each user's shell history |
#![forbid(unsafe_code)]

pub mod audit;
pub mod shell;
pub mod users;

use std::path::{Path, PathBuf};

/// The appliance state directory of a daemon data directory.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("appliance")
}

/// Files of the appliance state are shared by the appliance accounts through their group:
/// read and write for owner and group, nothing for others, whatever the umask.
pub const FILE_MODE: u32 = 0o660;

/// Directories of the appliance state: the group's, set-group-ID so new files stay in it.
pub const DIR_MODE: u32 = 0o2770;

/// Creates `dir` (and missing parents) with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Replaces `path` with `text` atomically, group-shared ([`FILE_MODE`]).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    tessera_config::write_atomically(path, text, FILE_MODE)
}

/// Moves a log aside as `<name>.<unix time>` (or `.<time>-<n>` if taken: the link fails
/// rather than overwrite) and returns where it went.
pub fn move_aside(path: &Path) -> Result<PathBuf, String> {
    let now = tessera_core::time::now();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..1000 {
        let suffix = if n == 0 {
            format!("{now}")
        } else {
            format!("{now}-{n}")
        };
        let kept = path.with_file_name(format!("{name}.{suffix}"));
        match std::fs::hard_link(path, &kept) {
            Ok(()) => {
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot rotate {}: {e}", path.display()))?;
                return Ok(kept);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("there is no {} to rotate", path.display()))
            }
            Err(e) => return Err(format!("cannot rotate {}: {e}", path.display())),
        }
    }
    Err(format!(
        "cannot find a free name to rotate {}",
        path.display()
    ))
}
