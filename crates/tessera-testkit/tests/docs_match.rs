//! The documentation cannot drift from the code: every `tesserad` option is in
//! docs/operations.md, every configuration item Tessera reads is in its table (and every item
//! the code names is one `tessera-config` knows), every vendor return code is in
//! docs/reference.md with its value, and no file of the repository leans on a document that is
//! not in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_config::items::{classify, Name, ITEMS};
use tessera_core::Rv;
use tessera_testkit::binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The files of the repository (not `.git`, not build output), as (path, text); binary files
/// are skipped.
fn repository_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![root()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == ".git" || name == "target" || name == "corpus" || name == "artifacts" {
                continue;
            }
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    files.push((path, text));
                }
            }
        }
    }
    assert!(
        files.len() > 50,
        "the walk found too few files: {}",
        files.len()
    );
    files
}

/// The `--options` a `--help` lists (without `--help` and `--version`).
fn options_of(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter_map(|l| {
            l.strip_prefix("-V, ")
                .or(l.strip_prefix("-h, "))
                .or(Some(l))
        })
        .filter_map(|l| l.strip_prefix("--"))
        .map(|l| {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .filter(|o| o != "--help" && o != "--version")
        .collect()
}

#[test]
fn operations_md_lists_every_tesserad_option_in_the_synopsis_and_the_table() {
    let out = Command::new(binary("tesserad"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let options = options_of(&help);
    assert!(options.len() > 20, "{help}");
    let doc = read("docs/operations.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("`tesserad`"))
        .expect("docs/operations.md has a `tesserad` section");
    let synopsis = section
        .split("```")
        .nth(1)
        .expect("the section opens with the synopsis");
    let table: Vec<&str> = section.lines().filter(|l| l.starts_with("| `--")).collect();
    let mut missing = Vec::new();
    for option in &options {
        let in_synopsis = synopsis
            .split(|c: char| c.is_whitespace() || "[]|".contains(c))
            .any(|word| word == option);
        let in_table = table.iter().any(|row| {
            row.contains(&format!("`{option}`")) || row.contains(&format!("`{option} "))
        });
        if !in_synopsis || !in_table {
            missing.push(format!(
                "{option} (synopsis: {in_synopsis}, table: {in_table})"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md does not list these tesserad options: {missing:?}"
    );
    // And nothing there that tesserad does not have.
    for word in synopsis.split(|c: char| c.is_whitespace() || "[]|".contains(c)) {
        if word.starts_with("--") {
            assert!(
                options.iter().any(|o| o == word),
                "{word} is not a tesserad option"
            );
        }
    }
}

#[test]
fn every_configuration_item_is_documented_and_every_item_the_code_names_is_known() {
    let doc = read("docs/operations.md");
    for item in ITEMS {
        assert!(
            doc.contains(&format!("`{}`", item.name)),
            "{} is missing from the configuration items of docs/operations.md",
            item.name
        );
    }
    assert!(doc.contains("`ET_PTKC_<serial>_SMPR`"));
    let mut unknown = Vec::new();
    for (path, text) in repository_files() {
        let source = path.extension().is_some_and(|e| e == "rs");
        if !source || path.components().any(|c| c.as_os_str() == "tests") {
            continue;
        }
        // Unit tests name wrong items on purpose.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in text.match_indices("\"ET_") {
            let name: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `format!("ET_PTKC_{serial}_SMPR")` and prefixes such as "ET_" or "ET_PTKC_".
            if name.ends_with('_') || text[at + 1 + name.len()..].starts_with('{') {
                continue;
            }
            if matches!(classify(&name), Name::Unknown(_) | Name::Malformed(_)) {
                unknown.push(format!("{} names {name}", path.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "items the code reads but tessera-config's table (items.rs) does not know: {unknown:?}"
    );
}

#[test]
fn the_reference_lists_every_vendor_return_code_with_its_value() {
    let reference = read("docs/reference.md");
    for rv in Rv::ALL {
        if rv.code() < tessera_core::rv::VENDOR_DEFINED {
            continue;
        }
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{}`", rv.name())))
            .unwrap_or_else(|| panic!("{} is missing from docs/reference.md", rv.name()));
        let value = format!("`0x{:08X}`", rv.code());
        assert!(row.contains(&value), "{row} should give {value}");
    }
}

#[test]
fn the_reference_gives_every_flag_letter_with_its_bit_and_name() {
    let reference = read("docs/reference.md");
    for flag in tessera_core::flags::FLAGS {
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", flag.letter)))
            .unwrap_or_else(|| panic!("flag {} is missing from docs/reference.md", flag.letter));
        assert!(
            row.contains(&format!("`0x{:X}`", flag.bit)) && row.contains(flag.name),
            "{row} should give bit 0x{:X} and the name {}",
            flag.bit,
            flag.name
        );
    }
}

#[test]
fn no_file_links_a_document_outside_the_repository() {
    // Built from pieces, so that this file does not match itself.
    let needles = [
        ["shared", "/design"].concat(),
        ["brief", ".md"].concat(),
        ["brief ", "§"].concat(),
        ["the ", "brief"].concat(),
    ];
    let mut found = Vec::new();
    for (path, text) in repository_files() {
        for (number, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                found.push(format!(
                    "{}:{}: {}",
                    path.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the repository must stand alone; these lines cite a document outside it (move what \
         they need into docs/reference.md and cite that):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reference_gives_the_smpr_letters_and_the_flags_that_require_the_same() {
    use tessera_channel::Policy;
    let reference = read("docs/reference.md");
    let section = reference
        .split("\n## ")
        .find(|s| s.starts_with("SMPR letters"))
        .expect("docs/reference.md has an SMPR letters section");
    let mut letters = String::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let letter = cells[1].trim_matches('`');
        let policy =
            Policy::from_smpr(letter).unwrap_or_else(|e| panic!("{letter} is no SMPR letter: {e}"));
        letters.push_str(letter);
        // Every device flag named in the last column requires at least what the letter does.
        let flags: Vec<char> = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .flat_map(|code| code.split(' '))
            .filter_map(|f| f.chars().next())
            .collect();
        assert!(!flags.is_empty(), "{row}");
        for flag in flags {
            let bits = tessera_core::flags::parse(&flag.to_string()).unwrap();
            let device = Policy::from_device_flags(bits);
            assert_eq!(
                device.union(policy),
                device,
                "flag {flag} does not require what SMPR {letter} does ({row})"
            );
        }
    }
    // All the letters, and only those: any other is refused.
    assert_eq!(letters, "SRPEDTQ");
    assert!(Policy::from_smpr("X").is_err());
}
