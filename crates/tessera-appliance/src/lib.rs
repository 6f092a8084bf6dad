//! The Tessera appliance: the HSM daemon housed in a network appliance, managed by appliance
//! users with `psesh`.
//!
//! The appliance's own state lives in `DATA_DIR/appliance` (made by `tesserad --appliance`):
//!
//! | file | what |
//! | --- | --- |
//! | `users` | the users' salted password hashes ([`users`]) |
//! | `trust/<user>/` | each user's appliance trust store (what `hsm cert` fetched) |
//! | `known/<user>/known_devices` | each user's known devices (`known/<user>/` is its alone) |
//! | `audit.log` | the appliance audit log ([`audit`]) |
//! | `clients` | the client access list the daemon enforces ([`tessera_config::access`]) |
//! | `listen` | the addresses to serve, set with `network add/remove` |
//! | `listening` | the addresses the daemon serves (written by the daemon) |
//! | `tesserad.log` | the daemon's log |
//! | `client.log` | the reports of the client library psesh uses |
//! | `history/<user>` | each user's shell history |
//!
//! Directories are [`DIR_MODE`] and files [`FILE_MODE`], set explicitly whatever the umask, so
//! that the daemon's account and the three appliance accounts share them through one group.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
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

/// A directory of one appliance user (`known/<user>`): the client library refuses a
/// known-devices file in a directory that group or others can write.
pub const PRIVATE_DIR_MODE: u32 = 0o2700;

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub fn create_dir(dir: &Path) -> Result<(), String> {
    create_dir_with(dir, DIR_MODE, DIR_MODE)
}

/// Creates `dir` (in missing parents of [`DIR_MODE`]) with [`PRIVATE_DIR_MODE`].
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    create_dir_with(dir, PRIVATE_DIR_MODE, DIR_MODE)
}

/// Creates `dir` with `mode` and its missing parents with `parents_mode`, each set explicitly:
/// `mkdir` takes the umask's bits off (022 leaves the group unable to write) and ignores the
/// set-group-ID bit. Directories that exist are left as they are (another account's may not
/// be changed); one made by another process at the same moment is taken as it is.
fn create_dir_with(dir: &Path, mode: u32, parents_mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .collect();
    for (index, created) in missing.iter().enumerate().rev() {
        let wanted = if index == 0 { mode } else { parents_mode };
        match std::fs::DirBuilder::new()
            .mode(wanted & 0o777)
            .create(created)
        {
            Ok(()) => std::fs::set_permissions(created, std::fs::Permissions::from_mode(wanted))
                .map_err(|e| format!("cannot set the mode of {}: {e}", created.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                // The directory to make it in is not the group's (made by hand, or by an
                // earlier version).
                let fix = match created.parent() {
                    Some(parent) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        fix_mode(parent, DIR_MODE)
                    }
                    _ => String::new(),
                };
                return Err(format!("cannot create {}: {e}{fix}", created.display()));
            }
        }
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(())
}

/// Opens `path` for appending; a new file is made with [`FILE_MODE`], set explicitly (the
/// umask would take the group's write bit off, and the next account could not append).
pub fn open_shared(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::OpenOptions::new().append(true).open(path)
        }
        Err(e) => Err(e),
    }
}

/// What to run when an appliance account may not write the file `path` of the state: give
/// it to the group of its directory with [`FILE_MODE`] (a file made before the modes were set
/// explicitly, or by hand).
pub fn sharing_fix(path: &Path) -> String {
    fix_mode(path, FILE_MODE)
}

/// The advice of [`sharing_fix`] for `path` and `mode` (the group is its directory's).
fn fix_mode(path: &Path, mode: u32) -> String {
    use std::os::unix::fs::MetadataExt;
    let group = path
        .parent()
        .and_then(|dir| std::fs::metadata(dir).ok())
        .map_or("GROUP".to_string(), |m| m.gid().to_string());
    format!(
        "; the appliance accounts share it through the state's group: as root, run `chgrp {group} {0} && chmod {mode:o} {0}`",
        path.display()
    )
}

/// Sets [`FILE_MODE`] on a file this process has just made in the state (through a library
/// that applies the umask).
pub fn share_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

/// Replaces `path` with `text` atomically, group-shared ([`FILE_MODE`]).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    tessera_config::write_atomically(path, text, FILE_MODE).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_state_gets_its_modes_whatever_the_umask() {
        // The modes are set after creation, so whatever the umask of the test run (022 in
        // a login shell, 077 under some services) they end the same.
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("state/trust/admin");
        create_dir(&deep).unwrap();
        assert_eq!(mode(&dir.path().join("state")), 0o2770);
        assert_eq!(mode(&dir.path().join("state/trust")), 0o2770);
        assert_eq!(mode(&deep), 0o2770);
        let private = dir.path().join("state/known/admin");
        create_private_dir(&private).unwrap();
        assert_eq!(mode(&dir.path().join("state/known")), 0o2770);
        assert_eq!(mode(&private), 0o2700);
        // Existing directories are left as they are.
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o750);
        let file = dir.path().join("state/audit.log");
        open_shared(&file).unwrap();
        assert_eq!(mode(&file), 0o660);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        open_shared(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        let gid = std::fs::metadata(dir.path().join("state")).unwrap().gid();
        assert_eq!(
            sharing_fix(&file),
            format!(
                "; the appliance accounts share it through the state's group: as root, run `chgrp {gid} {0} && chmod 660 {0}`",
                file.display()
            )
        );
        // A file where a directory should be.
        assert!(create_dir(&file)
            .unwrap_err()
            .ends_with("audit.log is not a directory"));
    }
}
