//! The daemon's log: standard error, and in appliance mode also `appliance/tesserad.log`,
//! opened for every line so that `psesh log rotate` may move the file aside at any time.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use tracing_subscriber::fmt::MakeWriter;

/// Makes a [`TeeWriter`] per log line.
pub struct Tee {
    /// The appliance log file, if any.
    pub file: Option<PathBuf>,
}

/// Writes one log line to standard error and to the log file (when it can be opened; a log
/// line is never worth stopping the daemon for).
pub struct TeeWriter {
    file: Option<File>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        if let Some(file) = &mut self.file {
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter {
            file: self.file.as_ref().and_then(|path| open_shared(path).ok()),
        }
    }
}

/// Opens the appliance log for appending; a new one is made group-readable and writable
/// (0660, psesh reads and rotates it), whatever the daemon's umask (077).
fn open_shared(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match OpenOptions::new().append(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o660)
                .open(path)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o660))?;
            Ok(file)
        }
        other => other,
    }
}
