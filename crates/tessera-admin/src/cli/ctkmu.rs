//! The command line of `ctkmu`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keep a token's keys over time: back them up to a file, restore them, replicate the token to
/// a peer device. A backup is made by the token's user (the owner of its private keys: the
/// user PIN, asked without echo or read from --user-pin-file); a restore and a replication by
/// the token's Security Officer (--so-pin-file). The device signs each backup file with its
/// identity key, and restores only files that it, or a peer device it trusts, signed.
///
/// A backup file is sealed under a fresh backup key, which one custodian's passphrase protects
/// (--passphrase) or which is split into N shares of which any M restore it (--shares M/N).
/// Secret and private keys go into a file when CKA_TESSERA_BACKUP is true, or when it is absent
/// and CKA_EXTRACTABLE is true; the others are listed as left out. A replica to a peer device
/// carries every object. See docs/backup.md.
///
/// Examples:
///
///   ctkmu backup -s0 --out payments.tbk --passphrase     (asks the user PIN and the passphrase)
///
///   ctkmu backup -s0 --out payments.tbk --shares 3/5 --shares-dir /media/custodians
///
///   ctkmu show payments.tbk
///
///   ctkmu restore -s0 --in payments.tbk          (asks each custodian for their share)
///
///   ctkmu replicate -s0 --to-device 1 --to-slot 0
#[derive(Parser, Debug)]
#[command(name = "ctkmu", version, verbatim_doc_comment)]
pub struct Args {
    /// Device number in the server list (position in ET_HSM_NETCLIENT_SERVERLIST).
    #[arg(
        short = 'a',
        long = "device",
        value_name = "DEVICE",
        default_value_t = 0,
        global = true
    )]
    pub device: usize,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// ctkmu's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back the token in a slot up to a file.
    Backup {
        /// The token's slot.
        #[arg(short = 's', long, value_name = "SLOT")]
        slot: u64,
        /// The file to write (refused if it exists).
        #[arg(long = "out", value_name = "FILE")]
        out: PathBuf,
        /// Protect the backup key with one custodian's passphrase (asked twice without echo,
        /// or the first line of --passphrase-file; at least 12 characters).
        #[arg(long, conflicts_with = "shares", required_unless_present = "shares")]
        passphrase: bool,
        /// Split the backup key into N shares of which any M restore it (2 <= M <= N <= 16).
        #[arg(long, value_name = "M/N")]
        shares: Option<String>,
        /// Write each share to its own file in this directory (share-K-of-N.txt, mode 0600)
        /// instead of printing them.
        #[arg(long, value_name = "DIR", requires = "shares")]
        shares_dir: Option<PathBuf>,
        /// File whose first line is the passphrase.
        #[arg(long, value_name = "PATH", requires = "passphrase")]
        passphrase_file: Option<PathBuf>,
        /// File whose first line is the token's user PIN.
        #[arg(long, value_name = "PATH")]
        user_pin_file: Option<PathBuf>,
    },
    /// Restore a backup file into the (initialised) token in a slot; all objects or none.
    Restore {
        /// The token's slot.
        #[arg(short = 's', long, value_name = "SLOT")]
        slot: u64,
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// File whose first line is the passphrase (for a passphrase backup).
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
        /// A file holding one custodian's share (repeat for each); without it each custodian
        /// types their share in turn, without echo.
        #[arg(long = "share-file", value_name = "PATH")]
        share_files: Vec<PathBuf>,
        /// File whose first line is the token's SO PIN.
        #[arg(long, value_name = "PATH")]
        so_pin_file: Option<PathBuf>,
    },
    /// Show what a backup file holds (no device and no key needed).
    Show {
        /// The backup file.
        file: PathBuf,
    },
    /// Copy every object of the token in a slot into the token of a peer device (another
    /// device of the server list), which must trust this device and be trusted by it
    /// (`ctident peer add`); the keys travel sealed between the two devices only.
    Replicate {
        /// The token's slot on this device.
        #[arg(short = 's', long, value_name = "SLOT")]
        slot: u64,
        /// The receiving device's number in the server list.
        #[arg(long, value_name = "DEVICE")]
        to_device: usize,
        /// The receiving token's slot.
        #[arg(long, value_name = "SLOT")]
        to_slot: u64,
        /// File whose first line is this token's SO PIN.
        #[arg(long, value_name = "PATH")]
        so_pin_file: Option<PathBuf>,
        /// File whose first line is the receiving token's SO PIN.
        #[arg(long, value_name = "PATH")]
        to_so_pin_file: Option<PathBuf>,
    },
}
