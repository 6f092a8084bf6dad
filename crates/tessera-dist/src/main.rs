//! `tessera-dist`: the Debian package, the man pages and the shell completions of Tessera.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Package Tessera: a Debian package, or its man pages and shell completions alone.
///
/// The man pages and completions are made from the same command-line definitions that
/// `--help` prints, so they cannot disagree.
///
/// Examples:
///
///   cargo build --release --workspace && ./target/release/tessera-dist deb
///
///   sudo apt install ./target/debian/tessera_0.1.0-1_amd64.deb
///
///   tessera-dist man --out /tmp/man && man /tmp/man/ctconf.1
#[derive(Parser, Debug)]
#[command(name = "tessera-dist", version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Build the Debian package `tessera` from the built binaries.
    Deb {
        /// Directory of the built binaries (tesserad, ctconf, ctident, psesh,
        /// libtessera_pkcs11.so). Default: the directory this program is in.
        #[arg(long, value_name = "DIR")]
        binaries: Option<PathBuf>,
        /// Debian version of the package.
        #[arg(long, value_name = "VERSION", default_value = concat!(env!("CARGO_PKG_VERSION"), "-1"))]
        version: String,
        /// Where to write the package. Default: target/debian beside the binaries' directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Compression of the package's data: xz (smallest), gzip, or none (fastest).
        #[arg(long, value_name = "xz|gzip|none", default_value = "xz")]
        compression: String,
    },
    /// Write the man pages (roff, uncompressed) into a directory.
    Man {
        /// The directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write the bash, zsh and fish completions under a root (at the places the shells look:
    /// usr/share/bash-completion/completions, usr/share/zsh/vendor-completions,
    /// usr/share/fish/vendor_completions.d).
    Completions {
        /// The root.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Action::Deb {
            binaries,
            version,
            out,
            compression,
        } => deb(binaries, version, out, compression),
        Action::Man { out } => tessera_dist::write_man_pages(&out)
            .map(|files| println!("{} man pages in {}", files.len(), out.display()))
            .map_err(|e| format!("{}: {e}", out.display())),
        Action::Completions { out } => tessera_dist::write_completions(&out)
            .map(|files| println!("{} completion scripts under {}", files.len(), out.display()))
            .map_err(|e| format!("{}: {e}", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tessera-dist: {message}");
            ExitCode::FAILURE
        }
    }
}

fn deb(
    binaries: Option<PathBuf>,
    version: String,
    out: Option<PathBuf>,
    compression: String,
) -> Result<(), String> {
    let binaries = match binaries {
        Some(dir) => dir,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's directory: {e}; give --binaries"))?
            .parent()
            .map(PathBuf::from)
            .ok_or("this program has no directory: give --binaries")?,
    };
    let out = out.unwrap_or_else(|| binaries.parent().unwrap_or(&binaries).join("debian"));
    let options = tessera_dist::deb::Options {
        binaries,
        version,
        out,
        compression,
    };
    let package = tessera_dist::deb::build(&options, |step| println!("tessera-dist: {step}"))?;
    println!("{}", package.display());
    Ok(())
}
