//! Packaging of Tessera: man pages and shell completions made from the clap definitions that
//! `--help` prints (so the three cannot disagree), and the Debian package ([`deb`]).
#![forbid(unsafe_code)]

pub mod deb;

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// A program of the package.
pub struct Program {
    /// Its file name.
    pub name: &'static str,
    /// The manual section of its page: 8 for the daemon, 1 for the tools.
    pub section: &'static str,
    /// Where it is installed, relative to the root.
    pub dir: &'static str,
    /// Its command line.
    pub command: clap::Command,
}

/// Every program the package installs, with its command line.
pub fn programs() -> Vec<Program> {
    vec![
        Program {
            name: "tesserad",
            section: "8",
            dir: "usr/sbin",
            command: tesserad::cli::Args::command(),
        },
        Program {
            name: "ctconf",
            section: "1",
            dir: "usr/bin",
            command: tessera_admin::cli::ctconf::Args::command(),
        },
        Program {
            name: "ctident",
            section: "1",
            dir: "usr/bin",
            command: tessera_admin::cli::ctident::Args::command(),
        },
        Program {
            name: "ctkmu",
            section: "1",
            dir: "usr/bin",
            command: tessera_admin::cli::ctkmu::Args::command(),
        },
        Program {
            name: "psesh",
            section: "1",
            dir: "usr/bin",
            command: tessera_appliance::cli::Args::command(),
        },
    ]
}

/// The man pages of a program: its own, then one per subcommand (`ctident-trust.1`, as git
/// names them), each as (file name, roff text).
pub fn man_pages(program: &Program) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let mut command = program.command.clone();
    command.build();
    add_pages(&command, program.name, program.section, &mut pages)?;
    Ok(pages)
}

fn add_pages(
    command: &clap::Command,
    name: &str,
    section: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    let mut text = Vec::new();
    clap_mangen::Man::new(command.clone().display_name(name.to_string()))
        .section(section)
        .manual("Tessera")
        .source(format!("Tessera {}", env!("CARGO_PKG_VERSION")))
        .render(&mut text)?;
    pages.push((format!("{name}.{section}"), text));
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        add_pages(sub, &format!("{name}-{}", sub.get_name()), section, pages)?;
    }
    Ok(())
}

/// The shells completions are made for, with where each looks for them (relative to the root).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "usr/share/bash-completion/completions/{}"),
    (Shell::Zsh, "usr/share/zsh/vendor-completions/_{}"),
    (Shell::Fish, "usr/share/fish/vendor_completions.d/{}.fish"),
];

/// The completion script of a program for a shell.
pub fn completion(program: &Program, shell: Shell) -> Vec<u8> {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut program.command.clone(), program.name, &mut text);
    text
}

/// Writes every man page (uncompressed) into `dir`; returns the files written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for program in programs() {
        for (file, text) in man_pages(&program)? {
            let path = dir.join(file);
            std::fs::write(&path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Writes every completion script under `root` at its shell's place; returns the files written.
pub fn write_completions(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for program in programs() {
        for (shell, place) in SHELLS {
            let path = root.join(place.replace("{}", program.name));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, completion(&program, shell))?;
            written.push(path);
        }
    }
    Ok(written)
}
