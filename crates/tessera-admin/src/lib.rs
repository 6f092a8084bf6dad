//! What the administration tools share: choosing a device from the server list, reading PINs
//! (no-echo prompts or `--pin-file`, never a PIN on the command line), the Administrator
//! session on the Admin slot, and turning return codes into one clear line.
#![forbid(unsafe_code)]

/// `print!` for the tools: see [`output`]. Imported over the standard macro
/// (`use tessera_admin::print;`); defined before the modules so that they use it too.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))
    };
}

/// `println!` for the tools: see [`output`].
#[macro_export]
macro_rules! println {
    () => {
        $crate::output::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for the tools: see [`output`].
#[macro_export]
macro_rules! eprintln {
    () => {
        $crate::output::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod check;
pub mod cli;
pub mod output;
pub mod pin;
pub mod progress;
pub mod session;
pub mod status;

pub use session::{AdminSession, Target};

/// A failure to show the operator: one line, and the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The line.
    pub message: String,
    /// The process exit code.
    pub code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
}
