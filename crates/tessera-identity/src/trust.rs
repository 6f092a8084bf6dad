//! The client trust store: certificates of devices (PICs) or owners (POCs) that this user, or
//! this system, trusts. One PEM file per certificate, named by its SHA-256 fingerprint.
//!
//! | level | directory |
//! | --- | --- |
//! | user | `ET_PTKC_TRUSTSTORE_USER`, else `$XDG_CONFIG_HOME/tessera/trust`, else `~/.config/tessera/trust` |
//! | system | `ET_PTKC_TRUSTSTORE_SYSTEM`, else `/etc/tessera/trust` |
//!
//! The items are configuration items (environment, user file, system file). Verification
//! trusts the union of both levels.

use std::path::{Path, PathBuf};

use tessera_config::Config;

use crate::inspect::{fingerprint_id, CertificateInfo};
use crate::pem;

/// Item naming the user-level trust store directory.
pub const USER_ITEM: &str = "ET_PTKC_TRUSTSTORE_USER";
/// Item naming the system-level trust store directory.
pub const SYSTEM_ITEM: &str = "ET_PTKC_TRUSTSTORE_SYSTEM";

/// Which trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The current user's.
    User,
    /// The system's.
    System,
}

/// A trust store directory.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// Its directory.
    pub dir: PathBuf,
    /// Its level.
    pub level: Level,
}

/// A trust store problem, naming the file or certificate.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A given file is not a certificate.
    #[error("{0}")]
    NotACertificate(#[from] crate::inspect::CertificateError),
    /// No certificate or several match a fingerprint prefix.
    #[error("{0}")]
    NoMatch(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TrustError {
    TrustError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl TrustStore {
    /// The store of `level` as configured.
    pub fn open(config: &Config, level: Level) -> TrustStore {
        let dir = match level {
            Level::User => config
                .item(USER_ITEM)
                .map(|(v, _)| PathBuf::from(v))
                .unwrap_or_else(|| {
                    std::env::var_os("XDG_CONFIG_HOME")
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config"))
                        })
                        .unwrap_or_else(|| PathBuf::from("/nonexistent"))
                        .join("tessera")
                        .join("trust")
                }),
            Level::System => config
                .item(SYSTEM_ITEM)
                .map(|(v, _)| PathBuf::from(v))
                .unwrap_or_else(|| PathBuf::from("/etc/tessera/trust")),
        };
        TrustStore { dir, level }
    }

    /// Adds a certificate; returns the file it was written to.
    pub fn add(&self, der: &[u8]) -> Result<PathBuf, TrustError> {
        CertificateInfo::parse(der).map_err(TrustError::NotACertificate)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| file_error(&self.dir, e))?;
        let path = self.dir.join(format!("{}.pem", fingerprint_id(der)));
        // Certificates are public: readable by every account the umask lets read them.
        let mode = tessera_config::atomic::Mode::LessUmask(0o666);
        tessera_config::atomic::write(&path, pem::encode("CERTIFICATE", der).as_bytes(), mode)
            .map_err(|e| file_error(&path, e))?;
        Ok(path)
    }

    /// Every certificate in the store, with its file. Unreadable files are reported.
    pub fn list(&self) -> Result<Vec<(PathBuf, Vec<u8>)>, TrustError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(file_error(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| file_error(&self.dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
            for der in pem::decode_all(&text, "CERTIFICATE").map_err(|e| file_error(&path, e))? {
                out.push((path.clone(), der));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes the certificate whose fingerprint starts with `prefix` (hex, colons allowed).
    pub fn remove(&self, prefix: &str) -> Result<Vec<u8>, TrustError> {
        let wanted = prefix.replace(':', "").to_ascii_lowercase();
        if wanted.len() < 4 {
            return Err(TrustError::NoMatch(
                "give at least 4 hex digits of the fingerprint".into(),
            ));
        }
        let matching: Vec<(PathBuf, Vec<u8>)> = self
            .list()?
            .into_iter()
            .filter(|(_, der)| fingerprint_id(der).starts_with(&wanted))
            .collect();
        match matching.as_slice() {
            [(path, der)] => {
                std::fs::remove_file(path).map_err(|e| file_error(path, e))?;
                Ok(der.clone())
            }
            [] => Err(TrustError::NoMatch(format!(
                "no certificate with fingerprint {prefix} in {}",
                self.dir.display()
            ))),
            _ => Err(TrustError::NoMatch(format!(
                "{} certificates match {prefix}; give more digits",
                matching.len()
            ))),
        }
    }
}

/// The trusted certificates of both levels.
pub fn anchors(config: &Config) -> Result<Vec<Vec<u8>>, TrustError> {
    let mut all = Vec::new();
    for level in [Level::User, Level::System] {
        all.extend(
            TrustStore::open(config, level)
                .list()?
                .into_iter()
                .map(|(_, der)| der),
        );
    }
    Ok(all)
}
