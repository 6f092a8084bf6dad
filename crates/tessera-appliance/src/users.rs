//! The appliance users `admin`, `pseoperator` and `audit`, and their passwords.
//!
//! The file `users` in the appliance state directory holds one line per user,
//! `name:$pbkdf2-sha256$i=ITERATIONS,l=32$SALT$HASH`: after the name, a PHC string (read and
//! written by the `password-hash` crate, in the form of RustCrypto's `pbkdf2`), where `HASH` is
//! PBKDF2-HMAC-SHA256 of the password with a random 16-byte `SALT` (both in the PHC's base64).
//! aws-lc computes the PBKDF2 and checks it in constant time (`pbkdf2::verify`). A file of an
//! earlier version, `name:iterations:salt:hash` in hex, is read as well and rewritten in the PHC
//! form the first time it is read. The file is rewritten whole through
//! [`tessera_config::atomic`], so a crash leaves the old or the new.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use password_hash::{Ident, Output, ParamsString, PasswordHash, SaltString};

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

/// The PHC algorithm identifier of the records (RustCrypto's `pbkdf2` uses the same).
const ALGORITHM: &str = "pbkdf2-sha256";

/// The length of every record's hash: SHA-256's. A shorter one would be checked as a prefix.
const HASH_LEN: usize = 32;

impl Record {
    /// `name:` and the record's PHC string.
    fn line(&self) -> Result<String, String> {
        let failed = |e: password_hash::Error| format!("cannot encode a password record: {e}");
        let mut params = ParamsString::new();
        params
            .add_decimal("i", self.iterations.get())
            .and_then(|()| params.add_decimal("l", self.hash.len() as u32))
            .map_err(failed)?;
        let salt = SaltString::encode_b64(&self.salt).map_err(failed)?;
        let phc = PasswordHash {
            algorithm: Ident::new(ALGORITHM).map_err(failed)?,
            version: None,
            params,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&self.hash).map_err(failed)?),
        };
        Ok(format!("{}:{phc}\n", self.role))
    }

    /// A record of the PHC form (`phc`), or `None` if it is not one this file holds.
    fn from_phc(role: Role, phc: &str) -> Option<Record> {
        let phc = PasswordHash::new(phc).ok()?;
        if phc.algorithm.as_str() != ALGORITHM || phc.version.is_some() {
            return None;
        }
        let hash = phc.hash?.as_bytes().to_vec();
        if hash.len() != HASH_LEN
            || phc
                .params
                .get_decimal("l")
                .is_some_and(|l| l as usize != HASH_LEN)
        {
            return None;
        }
        let mut salt = [0u8; 64];
        let salt = phc.salt?.decode_b64(&mut salt).ok()?.to_vec();
        Some(Record {
            role,
            iterations: NonZeroU32::new(phc.params.get_decimal("i")?)?,
            salt,
            hash,
        })
    }

    /// A record of an earlier version: `iterations:salt:hash`, in hex.
    fn from_hex(role: Role, fields: &[&str]) -> Option<Record> {
        let [iterations, salt, hash] = fields[..] else {
            return None;
        };
        Some(Record {
            role,
            iterations: iterations.parse().ok()?,
            salt: hex::decode(salt).ok()?,
            hash: hex::decode(hash).ok().filter(|h| h.len() == HASH_LEN)?,
        })
    }
}

fn text_of(records: &[Record]) -> Result<String, String> {
    records.iter().map(Record::line).collect()
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
        let mut earlier = false;
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                let bad = || {
                    format!(
                        "{} line {}: not name:$pbkdf2-sha256$i=ITERATIONS,l=32$SALT$HASH",
                        self.path.display(),
                        number + 1
                    )
                };
                let fields: Vec<&str> = line.trim().split(':').collect();
                let (name, rest) = fields.split_first().ok_or_else(bad)?;
                let role =
                    Role::from_name(name).map_err(|e| format!("{}: {e}", self.path.display()))?;
                match rest {
                    [phc] if phc.starts_with('$') => Record::from_phc(role, phc).ok_or_else(bad),
                    _ => {
                        earlier = true;
                        Record::from_hex(role, rest).ok_or_else(bad)
                    }
                }
            })
            .collect::<Result<Vec<Record>, String>>()?;
        if earlier {
            // The file of an earlier version becomes PHC strings. Should it fail, the records
            // read still serve (the old form stays readable), and the next read tries again.
            let _ = text_of(&records).and_then(|text| crate::write_atomically(&self.path, &text));
        }
        Ok(records)
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
        let mut hash = vec![0u8; HASH_LEN];
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
        crate::write_atomically(&self.path, &text_of(&records)?)
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

    /// A password file of an earlier version (PBKDF2-HMAC-SHA256, 1000 iterations, salt
    /// 00..0f, in hex; computed apart with Python's hashlib).
    const EARLIER: &str = "\
admin:1000:000102030405060708090a0b0c0d0e0f:01e4836dc85fb7db1dc5fe19c72b2de98bc4016436d0877e36f8dcbdfd84ae2e
pseoperator:1000:000102030405060708090a0b0c0d0e0f:b6814992e973c8994eb04469d5ff5d218fd4d2b2ad7cd7a8d68d30108420ac98
";

    #[test]
    fn a_file_of_an_earlier_version_is_read_and_rewritten_as_phc_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, EARLIER).unwrap();
        let users = Users::new(dir.path());
        assert!(users.verify(Role::Admin, b"old-admin-password").unwrap());
        // The first read rewrote it: same salt, iterations and hash, as PHC strings.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "admin:$pbkdf2-sha256$i=1000,l=32$AAECAwQFBgcICQoLDA0ODw$\
             AeSDbchft9sdxf4Zxyst6YvEAWQ20Id+Nvjcvf2Eri4"
        );
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("pseoperator:$pbkdf2-sha256$"));
        assert_eq!(text.lines().count(), 2);
        // Still the same passwords, and only those.
        assert!(users.verify(Role::Admin, b"old-admin-password").unwrap());
        assert!(!users.verify(Role::Admin, b"old-admin-passwore").unwrap());
        assert!(users
            .verify(Role::Operator, b"old-operator-password")
            .unwrap());
        assert!(!users.verify(Role::Audit, b"old-admin-password").unwrap());
        assert_eq!(
            users.list().unwrap(),
            [(Role::Admin, 1000), (Role::Operator, 1000)]
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // New records are PHC strings too, with their own salt.
        users
            .set_password(Role::Audit, b"new-audit-password", 1000)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("audit:$pbkdf2-sha256$i=1000,l=32$"));
        assert!(users.verify(Role::Audit, b"new-audit-password").unwrap());
    }

    #[test]
    fn malformed_records_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let users = Users::new(dir.path());
        for bad in [
            // '=' padding inside a PHC field, another algorithm, a length that is not the
            // hash's, no iterations, a hash cut short (aws-lc would check it as a prefix) in
            // either form, a hex field of an odd length.
            "admin:$pbkdf2-sha256$i=1000,l=32$AAEC=AwQFBgcICQoLDA0ODw$AeSDbchft9sdxf4Zxyst6YvEAWQ20Id+Nvjcvf2Eri4",
            "admin:$pbkdf2-sha512$i=1000,l=32$AAECAwQFBgcICQoLDA0ODw$AeSDbchft9sdxf4Zxyst6YvEAWQ20Id+Nvjcvf2Eri4",
            "admin:$pbkdf2-sha256$i=1000,l=16$AAECAwQFBgcICQoLDA0ODw$AeSDbchft9sdxf4Zxyst6YvEAWQ20Id+Nvjcvf2Eri4",
            "admin:$pbkdf2-sha256$l=32$AAECAwQFBgcICQoLDA0ODw$AeSDbchft9sdxf4Zxyst6YvEAWQ20Id+Nvjcvf2Eri4",
            "admin:$pbkdf2-sha256$i=1000,l=32$AAECAwQFBgcICQoLDA0ODw$AeSDbchft9sdxf4Zxyst",
            "admin:1000:000102030405060708090a0b0c0d0e0f:01e4836dc8",
            "admin:1000:000102030405060708090a0b0c0d0e0f:01e4836dc8f",
        ] {
            std::fs::write(&path, format!("\n{bad}\n")).unwrap();
            let error = match users.verify(Role::Admin, b"old-admin-password") { Err(e) => e, Ok(v) => panic!("{bad}: accepted ({v})") };
            assert!(error.ends_with("line 2: not name:$pbkdf2-sha256$i=ITERATIONS,l=32$SALT$HASH"), "{bad}: {error}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("\n{bad}\n"));
        }
    }
}
