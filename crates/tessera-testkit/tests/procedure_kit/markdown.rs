//! The marked blocks of a Markdown file: the steps of a documented procedure and their checks.
//!
//! A marker is an HTML comment (invisible once rendered) alone on the line before a fenced block:
//!
//! - `<!-- procedure: local, network; on: hsm, client -->` before a `sh` block: a step of the
//!   named procedures, run on the named hosts;
//! - the same with `; env` at the end: the values that depend on the site (exports the test
//!   gives its own values to); with `; daemon` (no `on:`): the daemon's command line;
//! - `<!-- expect -->` before a `text` block: the check of the step before it.
//!
//! Anything else malformed around a marker is an error naming the line, so that a marker
//! mistyped in the docs never silently drops a step.

/// What a marked block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Commands to run.
    Run,
    /// Site-specific assignments; the test gives its own values.
    Env,
    /// The daemon's command line.
    Daemon,
}

/// One marked `sh` block.
#[derive(Debug, Clone)]
pub struct Block {
    pub kind: Kind,
    pub procedures: Vec<String>,
    pub hosts: Vec<String>,
    /// The commands, as written.
    pub text: String,
    /// The check block that follows, if any.
    pub expect: Option<String>,
    /// 1-based line of the marker, for messages.
    pub line: usize,
}

impl Block {
    /// Whether this block is part of `procedure`.
    pub fn in_procedure(&self, procedure: &str) -> bool {
        self.procedures.iter().any(|p| p == procedure)
    }
}

/// The hosts a step may name.
pub const HOSTS: [&str; 2] = ["hsm", "client"];
/// The procedures a step may name: enabling secure messaging (docs/secure-messaging.md) and
/// keeping a token's keys (docs/backup.md).
pub const PROCEDURES: [&str; 5] = [
    "local",
    "network",
    "backup-passphrase",
    "backup-shares",
    "replication",
];

/// Every marked block of `markdown`, in order; `Err` names the line of a malformed marker.
pub fn blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found: Vec<Block> = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        let number = index + 1;
        index += 1;
        let Some(comment) = line
            .strip_prefix("<!--")
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        if comment == "expect" {
            let (text, next) = fenced(&lines, index, "text", number)?;
            index = next;
            let block = found
                .last_mut()
                .filter(|b| b.kind == Kind::Run)
                .ok_or_else(|| format!("line {number}: an expect block must follow a step"))?;
            if block.expect.is_some() {
                return Err(format!(
                    "line {number}: the step of line {} has two expect blocks",
                    block.line
                ));
            }
            block.expect = Some(text);
        } else if let Some(fields) = comment.strip_prefix("procedure:") {
            let mut block = marker(fields, number)?;
            let (text, next) = fenced(&lines, index, "sh", number)?;
            index = next;
            block.text = text;
            found.push(block);
        }
    }
    Ok(found)
}

/// Parses `local, network; on: hsm; env` (after `procedure:`).
fn marker(fields: &str, number: usize) -> Result<Block, String> {
    let mut parts = fields.split(';').map(str::trim);
    let procedures = list(parts.next().unwrap_or_default(), &PROCEDURES, number)?;
    let mut block = Block {
        kind: Kind::Run,
        procedures,
        hosts: Vec::new(),
        text: String::new(),
        expect: None,
        line: number,
    };
    for part in parts {
        if let Some(hosts) = part.strip_prefix("on:") {
            block.hosts = list(hosts, &HOSTS, number)?;
        } else if part == "env" && block.kind == Kind::Run {
            block.kind = Kind::Env;
        } else if part == "daemon" && block.kind == Kind::Run {
            block.kind = Kind::Daemon;
        } else {
            return Err(format!(
                "line {number}: unknown marker field {part:?} (known: on: HOSTS, env, daemon)"
            ));
        }
    }
    match (block.kind, block.hosts.is_empty()) {
        (Kind::Daemon, false) => Err(format!("line {number}: the daemon's line takes no on:")),
        (Kind::Daemon, true) => Ok(block),
        (_, true) => Err(format!("line {number}: a step needs on: hsm and/or client")),
        (_, false) => Ok(block),
    }
}

/// A comma-separated list of known names.
fn list(text: &str, known: &[&str], number: usize) -> Result<Vec<String>, String> {
    let names: Vec<String> = text.split(',').map(|n| n.trim().to_string()).collect();
    match names.iter().find(|n| !known.contains(&n.as_str())) {
        Some(unknown) => Err(format!(
            "line {number}: unknown name {unknown:?} in a marker (known: {})",
            known.join(", ")
        )),
        None => Ok(names),
    }
}

/// The fenced block of `language` that starts on the first non-blank line at `from`; its text
/// and the index of the line after its closing fence.
fn fenced(
    lines: &[&str],
    from: usize,
    language: &str,
    number: usize,
) -> Result<(String, usize), String> {
    let start = (from..lines.len())
        .find(|&i| !lines[i].trim().is_empty())
        .ok_or_else(|| format!("line {number}: the marker is not followed by a block"))?;
    if lines[start].trim() != format!("```{language}") {
        return Err(format!(
            "line {number}: the marker must be followed by a ```{language} block, found {:?}",
            lines[start]
        ));
    }
    let end = (start + 1..lines.len())
        .find(|&i| lines[i].trim() == "```")
        .ok_or_else(|| format!("line {number}: the block is not closed"))?;
    let mut text = lines[start + 1..end].join("\n");
    text.push('\n');
    Ok((text, end + 1))
}

/// Checks that every line of `expect` is a line of `output`, in this order (other lines may come
/// between), leading and trailing blanks aside; `…` stands for any text. `Err` names the first
/// line not found.
pub fn check(output: &str, expect: &str) -> Result<(), String> {
    let mut lines = output.lines();
    for wanted in expect.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = wanted.split('…').map(str::trim).collect();
        if !lines.any(|line| matches(line, &parts)) {
            return Err(format!(
                "the check line {wanted:?} is not in the output (in order)"
            ));
        }
    }
    Ok(())
}

/// Whether `line` is `parts` with any text between them (the whole line: a check `policy SRPED`
/// is not a line `policy SRPEDT`).
fn matches(line: &str, parts: &[&str]) -> bool {
    let line = line.trim();
    let (first, rest) = parts.split_first().expect("split gives at least one part");
    let Some((last, middle)) = rest.split_last() else {
        return line == *first;
    };
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The variables an `env` block sets (`NAME=...` or `export NAME=...`, comments and blank lines
/// aside); `Err` for a line that is anything else, since the test does not run these blocks.
pub fn assignments(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let assignment = line.strip_prefix("export ").unwrap_or(line);
        let name = assignment
            .split_once('=')
            .map(|(name, _)| name)
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| {
                format!("{line:?} is not an assignment: an env block only sets variables")
            })?;
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# Title

<!-- procedure: local, network; on: hsm, client; env -->
```sh
export PATH=\"$PWD/bin:$PATH\"
M=lib.so
```

<!-- procedure: network; daemon -->
```sh
tesserad --listen tcp:0.0.0.0:12396
```

<!-- procedure: local; on: hsm -->
```sh
ctconf
```

<!-- expect -->
```text
Serial Number : …
```

```sh
not a step
```
";

    #[test]
    fn marked_blocks_are_read_with_their_checks_and_unmarked_ones_are_not() {
        let found = blocks(DOC).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].kind, Kind::Env);
        assert_eq!(found[0].hosts, ["hsm", "client"]);
        assert_eq!(assignments(&found[0].text).unwrap(), ["PATH", "M"]);
        assert_eq!(found[1].kind, Kind::Daemon);
        assert!(found[1].in_procedure("network") && !found[1].in_procedure("local"));
        assert_eq!(found[2].kind, Kind::Run);
        assert_eq!(found[2].text, "ctconf\n");
        assert_eq!(found[2].expect.as_deref(), Some("Serial Number : …\n"));
    }

    #[test]
    fn a_mistyped_marker_is_an_error_not_a_dropped_step() {
        for (doc, says) in [
            (
                "<!-- procedure: lcoal; on: hsm -->\n```sh\nx\n```\n",
                "unknown name \"lcoal\"",
            ),
            (
                "<!-- procedure: local; on: hsm; evn -->\n```sh\nx\n```\n",
                "unknown marker field",
            ),
            ("<!-- procedure: local -->\n```sh\nx\n```\n", "needs on:"),
            (
                "<!-- procedure: local; on: hsm -->\n```bash\nx\n```\n",
                "```sh block",
            ),
            (
                "<!-- procedure: local; on: hsm -->\n```sh\nx\n",
                "not closed",
            ),
            ("<!-- expect -->\n```text\nx\n```\n", "must follow a step"),
        ] {
            let error = blocks(doc).unwrap_err();
            assert!(error.contains(says), "{doc:?}: {error}");
        }
    }

    #[test]
    fn checks_hold_in_order_with_wildcards() {
        let output =
            "Model : Tessera HSM\nSerial Number : 123\nIdentity : present, PIC SHA-256 AB:CD\n";
        assert!(check(
            output,
            "Serial Number : …\nIdentity : present, PIC SHA-256 …\n"
        )
        .is_ok());
        // Out of order, or text that is not there, fails.
        assert!(check(output, "Identity : …\nSerial Number : …\n").is_err());
        assert!(check(output, "Identity : none\n").is_err());
        assert!(
            check(output, "Model … HSM … 123\n").is_err(),
            "parts on two lines"
        );
        // A check is a whole line.
        assert!(check(output, "Identity : present, PIC SHA-256 AB:C\n").is_err());
        assert!(check(output, "Serial Number\n").is_err());
        assert!(check(output, "  Serial Number : 123  \n").is_ok());
    }

    #[test]
    fn env_blocks_only_assign() {
        assert!(assignments("export A=1\n# comment\nB=\"x y\"\n").is_ok());
        assert!(assignments("export A=1\nrm -rf ~\n").is_err());
    }
}
