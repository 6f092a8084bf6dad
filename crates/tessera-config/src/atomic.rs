//! The one way Tessera replaces a file: a temporary file beside it (`tempfile`), synced, renamed
//! over it, and the directory synced, so that a crash or a second writer leaves a whole file,
//! old or new, and the rename itself survives a power cut.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The permissions of a file [`write()`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Exactly these bits, whatever the umask: secrets' 0600, the appliance's group-shared 0660
    /// (tesserad runs with umask 077, psesh's accounts with 022).
    Exactly(u32),
    /// These bits less the process's umask, as `open(2)` makes a file: public certificates.
    LessUmask(u32),
}

/// Replaces `path` with `bytes`, made with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bits = match mode {
        Mode::Exactly(bits) | Mode::LessUmask(bits) => bits,
    };
    // Made with O_EXCL under a random name; removed if anything below fails.
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(bits))
        .tempfile_in(dir)?;
    if let Mode::Exactly(bits) = mode {
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(bits))?;
    }
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn replaces_the_whole_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write(&path, b"a longer first version", Mode::Exactly(0o600)).unwrap();
        write(&path, b"second", Mode::Exactly(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file"]);
    }

    #[test]
    fn exact_modes_whatever_the_file_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, b"new", Mode::Exactly(0o600)).unwrap();
        assert_eq!(mode(&path), 0o600);
        write(&path, b"new", Mode::Exactly(0o660)).unwrap();
        assert_eq!(mode(&path), 0o660);
        // Never more than asked for: the umask may only take bits away.
        write(&path, b"new", Mode::LessUmask(0o640)).unwrap();
        assert_eq!(mode(&path) & !0o640, 0);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write(&path, b"old", Mode::Exactly(0o600)).unwrap();
        // A directory in the way of the rename: the temporary file goes, the old one stays.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write(&blocked, b"new", Mode::Exactly(0o600)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["blocked", "file"]);
    }
}
