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
            file: self
                .file
                .as_ref()
                .and_then(|path| OpenOptions::new().create(true).append(true).open(path).ok()),
        }
    }
}
