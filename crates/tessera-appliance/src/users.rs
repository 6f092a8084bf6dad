//! The appliance users `admin`, `pseoperator` and `audit`, and their passwords.
//!
//! The file `users` in the appliance state directory holds one line per user,
//! `name:iterations:salt:hash` (hex), where `hash` is PBKDF2-HMAC-SHA256 of the password with a
//! random 16-byte salt. Checks run in constant time (aws-lc's `pbkdf2::verify`). The file is
//! rewritten whole through a temporary file and a rename, so a crash leaves the old or the new.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Iterations for new password records (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;

/// An appliance user, which is also its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything `pseoperator` may do, plus users and the appliance's own logs.
    Admin,
    /// Client access, date and time, network settings, and the housed HSM.
    Operator,
    /// The appliance audit log, the HSM's event log, and its own trust store (`hsm cert`).
    Audit,
}

impl Role {
    /// Every user, in the order set-up asks for them.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Audit];

    /// The user name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "pseoperator",
            Role::Audit => "audit",
        }
    }

    /// The user of this name.
    pub fn from_name(name: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                format!("\"{name}\" is not an appliance user (they are admin, pseoperator, audit)")
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct Record {
    role: Role,
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The password file.
pub struct Users {
    path: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Users {
    /// The password file of the appliance state directory `state`.
    pub fn new(state: &Path) -> Users {
        Users {
            path: state.join("users"),
        }
    }

    fn records(&self) -> Result<Vec<Record>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                let bad = || {
                    format!(
                        "{} line {}: not name:iterations:salt:hash",
                        self.path.display(),
                        number + 1
                    )
                };
                let fields: Vec<&str> = line.trim().split(':').collect();
                let [name, iterations, salt, hash] = fields[..] else {
                    return Err(bad());
                };
                Ok(Record {
                    role: Role::from_name(name)
                        .map_err(|e| format!("{}: {e}", self.path.display()))?,
                    iterations: iterations.parse().map_err(|_| bad())?,
                    salt: unhex(salt).ok_or_else(bad)?,
                    hash: unhex(hash).ok_or_else(bad)?,
                })
            })
            .collect()
    }

    /// Whether first-time set-up has given every user a password.
    pub fn is_set_up(&self) -> Result<bool, String> {
        let records = self.records()?;
        Ok(Role::ALL
            .iter()
            .all(|role| records.iter().any(|r| r.role == *role)))
    }

    /// Sets `role`'s password (a new salt every time).
    pub fn set_password(&self, role: Role, password: &[u8], iterations: u32) -> Result<(), String> {
        if password.len() < MIN_PASSWORD {
            return Err(format!(
                "a password needs at least {MIN_PASSWORD} characters"
            ));
        }
        let iterations = NonZeroU32::new(iterations).ok_or("iterations must be at least 1")?;
        let mut salt = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "the random generator failed".to_string())?;
        let mut hash = vec![0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        let mut records = self.records()?;
        records.retain(|r| r.role != role);
        records.push(Record {
            role,
            iterations,
            salt,
            hash,
        });
        records.sort_by_key(|r| Role::ALL.iter().position(|x| *x == r.role));
        let text: String = records
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}:{}\n",
                    r.role,
                    r.iterations,
                    hex(&r.salt),
                    hex(&r.hash)
                )
            })
            .collect();
        crate::write_atomically(&self.path, &text)
    }

    /// Whether `password` is `role`'s (false for a user without one).
    pub fn verify(&self, role: Role, password: &[u8]) -> Result<bool, String> {
        let records = self.records()?;
        Ok(records.iter().find(|r| r.role == role).is_some_and(|r| {
            pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                r.iterations,
                &r.salt,
                password,
                &r.hash,
            )
            .is_ok()
        }))
    }

    /// The users that have a password, with their record's iteration count.
    pub fn list(&self) -> Result<Vec<(Role, u32)>, String> {
        Ok(self
            .records()?
            .iter()
            .map(|r| (r.role, r.iterations.get()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_salted_checked_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::new(dir.path());
        assert!(!users.is_set_up().unwrap());
        assert!(!users.verify(Role::Admin, b"anything-at-all").unwrap());
        for role in Role::ALL {
            users.set_password(role, b"same-password", 1000).unwrap();
        }
        assert!(users.is_set_up().unwrap());
        assert!(users.verify(Role::Audit, b"same-password").unwrap());
        assert!(!users.verify(Role::Audit, b"same-passwore").unwrap());
        // The same password gives different records (salts differ), and none holds it.
        let text = std::fs::read_to_string(dir.path().join("users")).unwrap();
        let hashes: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(':').next().unwrap())
            .collect();
        assert_eq!(hashes.len(), 3);
        assert_ne!(hashes[0], hashes[1]);
        assert!(!text.contains("same-password"));
        users
            .set_password(Role::Audit, b"another-password", 1000)
            .unwrap();
        assert!(!users.verify(Role::Audit, b"same-password").unwrap());
        assert!(users.verify(Role::Audit, b"another-password").unwrap());
        assert!(users.verify(Role::Admin, b"same-password").unwrap());
        assert_eq!(
            users.set_password(Role::Admin, b"short", 1000).unwrap_err(),
            "a password needs at least 8 characters"
        );
        assert!(Role::from_name("root")
            .unwrap_err()
            .contains("not an appliance user"));
    }
}
