//! Who may read the data directory: the store holds every token's PIN records and sealed
//! secrets, so a copy of it lets its holder guess PINs offline at their own pace. The
//! directory must be the daemon's user's own and closed to others (to the group too, unless
//! `--allow-group-access` or `--appliance` says the group shares it); a directory that fails
//! is refused, never repaired. Files the daemon keeps in it (the store, `device.key`, the lock)
//! that grant anything to group or others are tightened to the owner's bits at start, with a
//! warning naming each file and both modes: the directory check already proves that this is the
//! daemon's own directory, and a file left wider by an older version or a restored backup is
//! closed rather than the device kept offline.
//!
//! The daemon also runs with umask 077 (see `main`), so whatever it creates later is 0600/0700
//! whatever the umask it was started with.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tessera_config::users;

/// The appliance's shared state, which keeps its own modes (2770/0660, the group's).
const APPLIANCE: &str = "appliance";

/// Creates the data directory if it is missing: 0700, or 0750 when the group shares it (so
/// that the group can reach `appliance/`), whatever the umask.
pub fn create(dir: &Path, allow_group: bool) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    let wanted = if allow_group { 0o750 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(wanted)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted)))
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))
}

/// Creates the data directory if it is missing ([`create`]), then checks it: refused unless it
/// is tesserad's user's own and closed to others (and to its group without `allow_group`).
/// Tightens the daemon's files in it.
pub fn prepare(dir: &Path, allow_group: bool) -> Result<(), String> {
    create(dir, allow_group)?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect the data directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "the data directory {} is not a directory",
            dir.display()
        ));
    }
    check(
        dir,
        meta.uid(),
        meta.mode(),
        crate::local::own_uid(),
        allow_group,
    )?;
    tighten_files(dir);
    Ok(())
}

/// Prepares the data directory ([`prepare`]) and takes its lock (`tesserad.lock`), held for
/// as long as the returned file is open: one daemon per data directory.
pub fn lock(data_dir: &Path, allow_group: bool) -> Result<std::fs::File, String> {
    prepare(data_dir, allow_group)?;
    let path = data_dir.join("tesserad.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the data directory {} is in use by another tesserad (lock {} is held); \
             stop that daemon or choose another --data-dir",
            data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// The test of [`prepare`] on the directory's owner and mode.
fn check(dir: &Path, owner: u32, mode: u32, own: u32, allow_group: bool) -> Result<(), String> {
    let shown = dir.display();
    if owner != own {
        return Err(format!(
            "refusing the data directory {shown} (owner {}, mode {:04o}): it is not owned by \
             tesserad's user ({}), so its owner could read the store and guess its PINs offline. \
             Run tesserad as that user, or `chown {} {shown}` if this directory is meant for it",
            users::describe(owner),
            mode & 0o7777,
            users::describe(own),
            own
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "refusing the data directory {shown} (mode {:04o}): other users can read or enter it, \
             so anyone on this machine could copy the store and guess its PINs offline. Run \
             `chmod 700 {shown}` (or `chmod 750 {shown}` with --allow-group-access, for a group \
             that shares it)",
            mode & 0o7777
        ));
    }
    if mode & 0o070 != 0 && !allow_group {
        return Err(format!(
            "refusing the data directory {shown} (mode {:04o}): its group can read or enter it. \
             Run `chmod 700 {shown}`, or start tesserad with --allow-group-access if the group is \
             meant to share it (as on the appliance)",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Closes the daemon's files in `dir` to group and others (symbolic links and directories are
/// left alone; `appliance/` keeps the group's modes); logs each change.
fn tighten_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() == APPLIANCE {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if !meta.is_file() || mode & 0o077 == 0 {
            continue;
        }
        let tight = mode & 0o700;
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight)) {
            Ok(()) => tracing::warn!(
                file = %path.display(),
                was = %format!("{mode:04o}"),
                now = %format!("{tight:04o}"),
                "tightened a file of the data directory that group or others could read"
            ),
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "cannot tighten a file of the data directory that group or others could read"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_and_group_are_refused_with_the_fix() {
        let dir = Path::new("/srv/hsm");
        let e = check(dir, 7, 0o40755, 7, false).unwrap_err();
        assert!(
            e.contains("mode 0755") && e.contains("chmod 700 /srv/hsm"),
            "{e}"
        );
        let e = check(dir, 7, 0o40750, 7, false).unwrap_err();
        assert!(e.contains("--allow-group-access"), "{e}");
        assert!(check(dir, 7, 0o40750, 7, true).is_ok());
        assert!(check(dir, 7, 0o42770, 7, true).is_ok());
        assert!(check(dir, 7, 0o40705, 7, true).is_err());
        let e = check(dir, 8, 0o40700, 7, false).unwrap_err();
        assert!(e.contains("not owned"), "{e}");
        assert!(check(dir, 7, 0o40700, 7, false).is_ok());
    }

    #[test]
    fn a_missing_directory_is_made_0700_and_wide_files_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/data");
        prepare(&dir, false).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        let store = dir.join("tessera.redb");
        std::fs::write(&store, "x").unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o664)).unwrap();
        prepare(&dir, false).unwrap();
        assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o7777, 0o600);
    }
}
