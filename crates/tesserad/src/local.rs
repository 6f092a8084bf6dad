//! Where a Unix socket of the daemon may live: a directory that the daemon's user owns and
//! that nobody else can write, so that nobody else can put a socket in the daemon's place (and
//! collect the PINs sent to it). A missing directory is created with mode 0700; a directory
//! that fails the test is refused, never repaired: the daemon does not know who else relies
//! on it.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

use tessera_config::users;

/// This process's effective uid.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The directory of the socket `path` (`.` for a bare name).
fn directory(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes sure the directory of the socket `path` exists and is the daemon's own, writable by
/// nobody else; the error names the directory, its owner and mode, and the fix.
pub fn prepare_directory(path: &Path) -> Result<(), String> {
    let dir = directory(path);
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    format!("cannot create the socket directory {}: {e}", dir.display())
                })?;
            // Whoever made it (this daemon, or someone faster), it is checked like any other.
            std::fs::metadata(dir)
        }
        other => other,
    }
    .map_err(|e| format!("cannot inspect the socket directory {}: {e}", dir.display()))?;
    check_directory(dir, meta.uid(), meta.mode(), own_uid())
}

/// The test of [`prepare_directory`] on a directory's owner and mode.
fn check_directory(dir: &Path, owner: u32, mode: u32, own: u32) -> Result<(), String> {
    let mut problems = Vec::new();
    if owner != own {
        problems.push(format!(
            "is not owned by tesserad's user ({})",
            users::describe(own)
        ));
    }
    if mode & 0o022 != 0 {
        problems.push("can be written by group or others".to_string());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing the socket directory {} (owner {}, mode {:04o}): it {}, so another user could \
         put a socket in tesserad's place. Remove it (tesserad then creates it with mode 0700), \
         or choose another --listen path in a directory only tesserad's user owns and can write",
        dir.display(),
        users::describe(owner),
        mode & 0o7777,
        problems.join(" and ")
    ))
}

/// What is at the socket path already, in a directory that passed [`prepare_directory`].
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Nothing,
    /// A socket of the daemon's user: a daemon's, running or gone.
    OwnSocket,
}

/// Looks at the socket path without following a symbolic link: anything but nothing or a
/// socket of the daemon's own user is refused (it is not removed: it is not the daemon's).
pub fn existing(path: &Path) -> Result<Existing, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(format!(
            "refusing to listen on unix:{}: it exists and is {what} (owner {}), which tesserad \
             did not make and does not replace; remove it, or choose another --listen path",
            path.display(),
            users::describe(meta.uid())
        ));
    }
    if meta.uid() != own_uid() {
        return Err(format!(
            "refusing to listen on unix:{}: a socket of {} is there, not one of tesserad's user \
             ({}); remove it if it is stale, or choose another --listen path",
            path.display(),
            users::describe(meta.uid()),
            users::describe(own_uid())
        ));
    }
    Ok(Existing::OwnSocket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_private_directory_of_our_own_passes() {
        let dir = Path::new("/run/t");
        assert_eq!(check_directory(dir, 1000, 0o40700, 1000), Ok(()));
        assert_eq!(check_directory(dir, 1000, 0o40755, 1000), Ok(()));
        for mode in [0o40777, 0o41777, 0o40770, 0o40730] {
            let refused = check_directory(dir, 1000, mode, 1000).unwrap_err();
            assert!(refused.contains("written by group or others"), "{refused}");
            assert!(refused.contains("/run/t"), "{refused}");
            assert!(
                refused.contains(&format!("mode {:04o}", mode & 0o7777)),
                "{refused}"
            );
            assert!(refused.contains("another --listen path"), "{refused}");
        }
        let foreign = check_directory(dir, 65534, 0o40700, 1000).unwrap_err();
        assert!(foreign.contains("owner uid 65534"), "{foreign}");
    }

    #[test]
    fn a_missing_directory_is_made_private_and_a_shared_one_refused() {
        let base = tempfile::tempdir().unwrap();
        let socket = base.path().join("a/b/tesserad.sock");
        prepare_directory(&socket).unwrap();
        let mode = std::fs::metadata(base.path().join("a/b")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(
            base.path().join("a/b"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let refused = prepare_directory(&socket).unwrap_err();
        assert!(refused.contains("mode 0777"), "{refused}");
    }

    #[test]
    fn only_nothing_or_our_own_socket_may_be_at_the_path() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("s");
        assert_eq!(existing(&path), Ok(Existing::Nothing));
        std::fs::write(&path, "x").unwrap();
        assert!(existing(&path).unwrap_err().contains("a regular file"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        assert!(existing(&path).unwrap_err().contains("a symbolic link"));
        std::fs::remove_file(&path).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(existing(&path), Ok(Existing::OwnSocket));
    }
}
