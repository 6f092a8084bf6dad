//! `--help`, the man pages and the docs cannot disagree: the man pages are made from the clap
//! definitions the built programs parse, and every option and command each program's `--help`
//! prints is in its man page and in its document.

use std::path::Path;
use std::process::Command;

use tessera_testkit::binary;

/// The long options a help text defines (its option lines: `--data-dir <DIR>`,
/// `-a, --device <DEVICE>`), without `--help` and `--version`.
fn options_of(help: &str) -> Vec<String> {
    let mut options: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter_map(|line| match line.get(..2) {
            Some(short) if short.starts_with('-') && line[2..].starts_with(", --") => {
                Some(&line[6..])
            }
            _ => line.strip_prefix("--"),
        })
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty() && name != "help" && name != "version")
        .map(|name| format!("--{name}"))
        .collect();
    options.sort();
    options.dedup();
    options
}

/// The subcommands a help text lists.
fn commands_of(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

fn help(program: &str, words: &[&str]) -> String {
    let output = Command::new(binary(program))
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{program} {words:?} --help");
    String::from_utf8(output.stdout).unwrap()
}

/// A man page as plain text: roff's escaped hyphens made plain.
fn plain(roff: &[u8]) -> String {
    String::from_utf8_lossy(roff).replace("\\-", "-")
}

#[test]
fn every_man_page_carries_every_option_the_program_prints() {
    let mut checked = 0;
    for program in tessera_dist::programs() {
        let pages = tessera_dist::man_pages(&program).unwrap();
        // The program's page, then one per subcommand, named as in the package.
        let mut pending: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(words) = pending.pop() {
            let words_ref: Vec<&str> = words.iter().map(String::as_str).collect();
            let text = help(program.name, &words_ref);
            let file = std::iter::once(program.name.to_string())
                .chain(words.iter().cloned())
                .collect::<Vec<_>>()
                .join("-")
                + "."
                + program.section;
            let page = pages
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, roff)| plain(roff))
                .unwrap_or_else(|| panic!("no man page {file}"));
            for option in options_of(&text) {
                assert!(page.contains(&option), "{file} lacks {option}");
                checked += 1;
            }
            for command in commands_of(&text) {
                assert!(
                    page.contains(&command),
                    "{file} lacks the command {command}"
                );
                let mut deeper = words.clone();
                deeper.push(command);
                pending.push(deeper);
            }
        }
    }
    assert!(checked > 80, "only {checked} options checked");
}

#[test]
fn the_docs_name_every_option_and_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |doc: &str| std::fs::read_to_string(root.join(doc)).unwrap();
    // tesserad's options are checked against docs/operations.md by the test kit's docs_match.
    let ctconf = read("docs/ctconf.md");
    for option in options_of(&help("ctconf", &[])) {
        assert!(ctconf.contains(&option), "docs/ctconf.md lacks {option}");
    }
    let appliance = read("docs/appliance.md");
    for option in options_of(&help("psesh", &[])) {
        assert!(
            appliance.contains(&option),
            "docs/appliance.md lacks {option}"
        );
    }
    let backup = read("docs/backup.md");
    for command in commands_of(&help("ctkmu", &[])) {
        assert!(
            backup.contains(&format!("`ctkmu {command}")),
            "docs/backup.md lacks the command {command}"
        );
        for option in options_of(&help("ctkmu", &[command.as_str()])) {
            assert!(
                backup.contains(&option),
                "docs/backup.md lacks {option} of ctkmu {command}"
            );
        }
    }
    let ctident = read("docs/ctident.md");
    for command in commands_of(&help("ctident", &[])) {
        assert!(
            ctident.contains(&format!("`{command}")),
            "docs/ctident.md lacks the command {command}"
        );
    }
}

#[test]
fn completions_know_every_program_and_option() {
    for program in tessera_dist::programs() {
        for (shell, _) in tessera_dist::SHELLS {
            let script = String::from_utf8(tessera_dist::completion(&program, shell)).unwrap();
            assert!(script.contains(program.name), "{shell} {}", program.name);
            for option in options_of(&help(program.name, &[])) {
                let bare = option.trim_start_matches('-');
                assert!(
                    script.contains(bare),
                    "{shell} completion of {} lacks {option}",
                    program.name
                );
            }
        }
    }
    // bash accepts the scripts it is given.
    for program in tessera_dist::programs() {
        let script = tessera_dist::completion(&program, clap_complete::Shell::Bash);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(program.name);
        std::fs::write(&path, script).unwrap();
        let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "bash -n {}", program.name);
    }
}
