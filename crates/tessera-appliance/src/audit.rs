//! The appliance audit log: logins, failed logins and every command that changes state, one
//! line each (`time  user  event`), appended to `audit.log` in the appliance state directory.
//! `audit rotate` renames it to `audit.log.<time>` and starts a new one with a line saying so.

use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_admin::status::clock;
use tessera_core::time::now;

/// The audit log of an appliance state directory.
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log of the state directory `state`.
    pub fn new(state: &Path) -> AuditLog {
        AuditLog {
            path: state.join("audit.log"),
        }
    }

    /// Appends one entry and flushes it to disk.
    pub fn record(&self, user: &str, event: &str) -> Result<(), String> {
        // Control characters (a terminal escape typed into a command) are stored escaped, so
        // that `audit show` prints exactly what was recorded.
        let event: String = event
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        let line = format!("{}  {:<11}  {}\n", clock(now()), user, event);
        crate::open_shared(&self.path)
            .and_then(|mut file| {
                file.write_all(line.as_bytes())?;
                file.sync_data()
            })
            .map_err(|e| {
                let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    crate::sharing_fix(&self.path)
                } else {
                    String::new()
                };
                format!(
                    "cannot write the audit log {}: {e}{fix}",
                    self.path.display()
                )
            })
    }

    /// The current log.
    pub fn read(&self) -> Result<String, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!(
                "cannot read the audit log {}: {e}",
                self.path.display()
            )),
        }
    }

    /// Moves the current log aside and starts a new one; returns where the old one went.
    pub fn rotate(&self, user: &str) -> Result<PathBuf, String> {
        let kept = crate::move_aside(&self.path)?;
        self.record(
            user,
            &format!("audit log rotated; the previous log is {}", kept.display()),
        )?;
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_append_and_rotation_keeps_the_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.record("admin", "login").unwrap();
        log.record("audit", "login failed").unwrap();
        let text = log.read().unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .contains("audit        login failed"));
        let kept = log.rotate("audit").unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), text);
        let fresh = log.read().unwrap();
        assert_eq!(fresh.lines().count(), 1);
        assert!(fresh.contains("audit log rotated"));
        // A second rotation in the same second keeps both old logs.
        let again = log.rotate("audit").unwrap();
        assert_ne!(again, kept);
        assert!(again.exists() && kept.exists());
        log.record("audit", "user \u{1b}[2K erased?").unwrap();
        assert!(log.read().unwrap().contains("user \\u{1b}[2K erased?"));
    }
}
