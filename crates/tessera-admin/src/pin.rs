//! PIN input: a file's first line for scripts, else a prompt without echo on the terminal.

use std::path::Path;

use tessera_core::SecretBytes;

use crate::Failure;

/// The shortest PIN a device takes.
pub const MIN_LEN: usize = 4;
/// The longest PIN a device takes.
pub const MAX_LEN: usize = 255;

/// Reads the first line of a PIN file. A line that cannot be a PIN (shorter than 4 or longer
/// than 255 bytes) is refused here as a malformed file: sent to the device, it would be
/// counted as a wrong guess toward the lock-out.
pub fn from_file(path: &Path, what: &str) -> Result<SecretBytes, Failure> {
    let text = std::fs::read(path).map_err(|e| {
        Failure::new(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })?;
    let text = SecretBytes::new(text);
    let line = text
        .expose()
        .split(|b| *b == b'\n')
        .next()
        .expect("split yields at least one piece");
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Failure::new(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    if !(MIN_LEN..=MAX_LEN).contains(&line.len()) {
        return Err(Failure::new(format!(
            "the {what} file {} is malformed: its first line has {} bytes, and a PIN has {MIN_LEN} to {MAX_LEN}; nothing was sent to the device (a wrong PIN would count toward the lock-out). Put the PIN alone on the file's first line",
            path.display(),
            line.len()
        )));
    }
    Ok(SecretBytes::from_slice(line))
}

fn prompt(text: &str) -> Result<SecretBytes, Failure> {
    let pin = rpassword::prompt_password(text)
        .map(|pin| SecretBytes::new(pin.into_bytes()))
        .map_err(|e| {
            Failure::new(format!(
                "cannot prompt for a PIN ({e}); give it in a file with the --*-pin-file options"
            ))
        })?;
    if !(MIN_LEN..=MAX_LEN).contains(&pin.len()) {
        return Err(Failure::new(format!(
            "a PIN has {MIN_LEN} to {MAX_LEN} characters; that one has {}, and was not sent to the device",
            pin.len()
        )));
    }
    Ok(pin)
}

/// Whether PINs can be asked on a terminal (the prompts use `/dev/tty`).
pub fn can_prompt() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// A PIN from `file`, else prompted once.
pub fn read(file: Option<&Path>, what: &str) -> Result<SecretBytes, Failure> {
    match file {
        Some(path) => from_file(path, what),
        None => prompt(&format!("{what}: ")),
    }
}

/// A new PIN from `file`, else prompted twice (the two must match).
pub fn read_new(file: Option<&Path>, what: &str) -> Result<SecretBytes, Failure> {
    if let Some(path) = file {
        return from_file(path, what);
    }
    let first = prompt(&format!("New {what}: "))?;
    let second = prompt(&format!("Confirm {what}: "))?;
    if first != second {
        return Err(Failure::new(format!(
            "the two {what}s differ; nothing was changed"
        )));
    }
    Ok(first)
}

/// Asks the operator to type `yes` (unless `assume_yes`).
pub fn confirm(question: &str, assume_yes: bool) -> Result<(), Failure> {
    confirm_or(question, assume_yes, "add --yes")
}

/// [`confirm`], whose refusal without a terminal ends with `instead` (what to run to go on).
pub fn confirm_or(question: &str, assume_yes: bool, instead: &str) -> Result<(), Failure> {
    if assume_yes {
        return Ok(());
    }
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(format!(
            "{question} Refusing without confirmation: {instead}"
        )));
    }
    eprint!("{question} Type 'yes' to go on: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(e.to_string()))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::new("not confirmed; nothing was changed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_files_give_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret-pin\r\nignored\n").unwrap();
        assert_eq!(from_file(&path, "PIN").unwrap().expose(), b"s3cret-pin");
        std::fs::write(&path, "\n").unwrap();
        assert!(from_file(&path, "PIN")
            .unwrap_err()
            .message
            .contains("is empty"));
        for short in ["1", "123", "12\n3456"] {
            std::fs::write(&path, short).unwrap();
            let error = from_file(&path, "Administrator PIN").unwrap_err().message;
            assert!(
                error.contains("is malformed") && error.contains("4 to 255"),
                "{error}"
            );
        }
        std::fs::write(&path, "x".repeat(256)).unwrap();
        assert!(from_file(&path, "PIN")
            .unwrap_err()
            .message
            .contains("malformed"));
        std::fs::write(&path, "1234").unwrap();
        assert_eq!(from_file(&path, "PIN").unwrap().expose(), b"1234");
        assert!(from_file(&dir.path().join("missing"), "PIN")
            .unwrap_err()
            .message
            .contains("cannot read"));
    }
}
