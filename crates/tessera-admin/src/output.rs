//! What the tools print. The standard `println!` panics when its reader has gone
//! (`ctident trust list | head -1`: the write fails with EPIPE, as Rust ignores SIGPIPE); the
//! tools' own `print!`, `println!` and `eprintln!` (this crate's, imported over the standard
//! ones) end the tool quietly instead, with success: whoever read the output has all they
//! wanted. Another failure to write standard output (a full disk) ends it with one line and
//! exit code 1. SIGPIPE is left ignored: a tool that writes to a daemon that has gone must
//! report it, not die of the signal.

use std::io::{ErrorKind, Write};

/// Writes to standard output (see the module).
pub fn stdout(text: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Writes to standard error; a standard error that nobody reads any more is not a failure.
pub fn stderr(text: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(text);
}
