//! The command line of `psesh`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::users::DEFAULT_ITERATIONS;

/// The Tessera appliance shell, for the appliance users admin, pseoperator and audit.
///
/// Run on the appliance's console, or as the ForceCommand of its SSH accounts (see
/// docs/appliance.md). Commands are case-insensitive and may be shortened to any unique prefix
/// ("he" is help; "h" alone is ambiguous because of hsm). Type help inside for the commands
/// your user may run.
///
/// Examples:
///
///   psesh setup                          first time: passwords for admin, pseoperator, audit
///
///   psesh --user pseoperator             log in and get the psesh:> prompt
///
///   psesh --user pseoperator -c "hsm cert; hsm show"     run commands and leave
///
///   printf 'hsm show\n' | psesh --user pseoperator --password-file pw     scripted
///
/// In scripted mode (-c, or standard input not a terminal) each command is echoed after the
/// prompt, questions (confirmations, PINs) are answered by the next input line, and the script
/// stops at the first command that fails, with exit status 1.
#[derive(Parser, Debug)]
#[command(name = "psesh", version, verbatim_doc_comment)]
pub struct Args {
    /// The HSM daemon's data directory (the appliance state is its `appliance` subdirectory).
    /// Default: $XDG_DATA_HOME/tessera, else ~/.local/share/tessera.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The appliance user: admin, pseoperator or audit. Default: the login name ($USER), as
    /// under an SSH ForceCommand.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// File whose first line is the password (else asked without echo, or, in scripted mode,
    /// the first line of standard input).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Commands to run, separated by ';', instead of a prompt (under an SSH ForceCommand, the
    /// command given to ssh, SSH_ORIGINAL_COMMAND, is used the same way).
    #[arg(short = 'c', value_name = "COMMANDS")]
    pub commands: Option<String>,

    /// What to do instead of the shell (setup).
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// The actions of `psesh` besides the shell.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// First-time set-up: a password for each of admin, pseoperator and audit.
    /// Example: psesh setup --passwords-file initial.txt
    Setup {
        /// File with lines `admin=PASSWORD`, `pseoperator=PASSWORD`, `audit=PASSWORD` (else
        /// each is asked twice without echo).
        #[arg(long, value_name = "FILE")]
        passwords_file: Option<PathBuf>,
        /// PBKDF2 iterations of the password records. Lower only for tests.
        #[arg(long, default_value_t = DEFAULT_ITERATIONS, value_name = "N")]
        kdf_iterations: u32,
    },
}
