//! The backup file's layout (`ctkmu backup`): what a tool can read without the backup key —
//! the token it came from and its manifest — and the sealed objects it cannot.
//!
//! ```text
//! "TSBACKUP" | header length (u32, BE) | header (postcard) | signature length (u32, BE) |
//! signature | sealed objects
//! ```
//!
//! The sealed part is AES-256-GCM under the backup key with the magic, the header's length and
//! the header as associated data; the signature, by the identity key of the device that wrote
//! the file (its chain is in the header), covers the same and a SHA-256 of the sealed part. A
//! change to any byte of the file, or a cut anywhere, is refused when the file is restored; so
//! is a file that a device this one does not trust did not sign — whoever holds the passphrase
//! or the shares can open a file, but cannot make one that a device restores.

use serde::{Deserialize, Serialize};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"TSBACKUP";
/// The layout this build writes and reads.
pub const FORMAT: u32 = 2;

/// What a backup file says of itself, in the clear (and authenticated by the sealed part).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT`].
    pub format: u32,
    /// A random id; a share names the backup by its first 8 bytes.
    pub id: [u8; 16],
    /// The serial number of the device that wrote it.
    pub device_serial: String,
    /// The token's label.
    pub token_label: String,
    /// The token's serial number.
    pub token_serial: String,
    /// The token's model (`CK_TOKEN_INFO.model`): a backup is restored only into a token of
    /// the same model.
    pub token_model: String,
    /// When it was written (the device clock, seconds since the Unix epoch).
    pub created: u64,
    /// One entry per object in the file.
    pub manifest: Vec<ManifestEntry>,
    /// What protects the backup key.
    pub lock: Lock,
    /// HMAC-SHA256 of the backup key over the id: tells a wrong key (a wrong passphrase,
    /// shares of too few custodians) from a damaged file, and says nothing of the key.
    pub key_check: Vec<u8>,
    /// The identity chain (DER, PIC first) of the device that wrote and signed the file.
    pub chain: Vec<Vec<u8>>,
}

/// One object in the manifest (public facts only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    /// `CKA_CLASS`.
    pub class: u64,
    /// `CKA_KEY_TYPE`, for keys.
    pub key_type: Option<u64>,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, in hex.
    pub id: String,
    /// `CKA_PRIVATE`.
    pub private: bool,
}

impl ManifestEntry {
    /// The class's name, for people.
    pub fn class_name(&self) -> &'static str {
        use tessera_core::ck;
        match self.class as ck::CK_OBJECT_CLASS {
            ck::CKO_DATA => "data",
            ck::CKO_CERTIFICATE => "certificate",
            ck::CKO_PUBLIC_KEY => "public key",
            ck::CKO_PRIVATE_KEY => "private key",
            ck::CKO_SECRET_KEY => "secret key",
            _ => "object",
        }
    }
}

/// What protects the backup key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Lock {
    /// Wrapped under a key derived from one custodian's passphrase (PBKDF2-HMAC-SHA256).
    Passphrase {
        /// The salt.
        salt: Vec<u8>,
        /// PBKDF2's iterations.
        iterations: u32,
        /// The wrapped backup key.
        wrapped: Vec<u8>,
    },
    /// Split into `count` shares, any `threshold` of which restore it.
    Shares {
        /// Shares needed.
        threshold: u8,
        /// Shares made.
        count: u8,
    },
}

/// Why bytes are not a backup file this build can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupFileError {
    /// Not a backup file.
    #[error("this is not a Tessera backup file (it does not start with TSBACKUP)")]
    NotABackup,
    /// Cut short.
    #[error("the backup file is truncated ({0} bytes): copy it again from where it was kept")]
    Truncated(usize),
    /// Damaged header.
    #[error("the backup file's header is damaged: the file was altered")]
    Damaged,
    /// A newer layout.
    #[error("the backup file has format {0}; this build reads format {FORMAT}: restore it with a newer Tessera")]
    Format(u32),
}

/// A backup file, read.
#[derive(Debug)]
pub struct BackupFile {
    /// What it says of itself.
    pub header: Header,
    /// The magic, the header's length and the header: the associated data of the seal.
    pub authenticated: Vec<u8>,
    /// The writing device's signature over [`BackupFile::signed`].
    pub signature: Vec<u8>,
    /// The sealed objects.
    pub sealed: Vec<u8>,
}

/// The shortest sealed part: the seal's nonce and tag around at least one byte.
const SEALED_MIN: usize = 12 + 16 + 1;

impl BackupFile {
    /// Reads a file's layout (not its sealed part).
    pub fn parse(bytes: &[u8]) -> Result<BackupFile, BackupFileError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BackupFileError::NotABackup);
        }
        let truncated = || BackupFileError::Truncated(bytes.len());
        let start = MAGIC.len() + 4;
        let len = bytes
            .get(MAGIC.len()..start)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(truncated)? as usize;
        let end = start.checked_add(len).ok_or(BackupFileError::Damaged)?;
        let header_bytes = bytes.get(start..end).ok_or_else(truncated)?;
        let signature_len = bytes
            .get(end..end + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(truncated)? as usize;
        let sealed_at = (end + 4)
            .checked_add(signature_len)
            .ok_or(BackupFileError::Damaged)?;
        let signature = bytes.get(end + 4..sealed_at).ok_or_else(truncated)?;
        if bytes.len() < sealed_at.saturating_add(SEALED_MIN) {
            return Err(truncated());
        }
        let header: Header =
            postcard::from_bytes(header_bytes).map_err(|_| BackupFileError::Damaged)?;
        if header.format != FORMAT {
            return Err(BackupFileError::Format(header.format));
        }
        Ok(BackupFile {
            header,
            authenticated: bytes[..end].to_vec(),
            signature: signature.to_vec(),
            sealed: bytes[sealed_at..].to_vec(),
        })
    }

    /// What the writing device signs: a label, the authenticated part, and a SHA-256 of the
    /// sealed part.
    pub fn signed(authenticated: &[u8], sealed: &[u8]) -> Vec<u8> {
        let mut message = b"tessera backup file v1\0".to_vec();
        message.extend_from_slice(authenticated);
        message.extend_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sealed).as_ref(),
        );
        message
    }

    /// The file's bytes from its parts.
    pub fn encode(authenticated: &[u8], signature: &[u8], sealed: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(authenticated.len() + 4 + signature.len() + sealed.len());
        out.extend_from_slice(authenticated);
        out.extend_from_slice(&(signature.len() as u32).to_be_bytes());
        out.extend_from_slice(signature);
        out.extend_from_slice(sealed);
        out
    }

    /// The layout's first part for a header: what the seal authenticates.
    pub fn authenticated(header: &Header) -> Vec<u8> {
        let encoded = postcard::to_stdvec(header).unwrap_or_default();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        out
    }

    /// The SHA-256 fingerprint of a file's bytes, in hex (what the event log records).
    pub fn fingerprint(bytes: &[u8]) -> String {
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        let header = Header {
            format: FORMAT,
            id: [7; 16],
            device_serial: "1".into(),
            token_label: "t".into(),
            token_serial: "101".into(),
            token_model: "m".into(),
            created: 0,
            manifest: vec![],
            lock: Lock::Shares {
                threshold: 2,
                count: 3,
            },
            key_check: vec![1; 32],
            chain: vec![vec![3; 10]],
        };
        BackupFile::encode(&BackupFile::authenticated(&header), &[5; 8], &[9; 40])
    }

    #[test]
    fn every_cut_of_a_file_is_refused_and_the_whole_is_read() {
        let bytes = file();
        let read = BackupFile::parse(&bytes).unwrap();
        assert_eq!(read.header.id, [7; 16]);
        assert_eq!(read.sealed, vec![9; 40]);
        assert_eq!(read.signature, vec![5; 8]);
        for cut in 0..bytes.len() - 40 + SEALED_MIN {
            assert!(BackupFile::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = b'X';
        assert_eq!(
            BackupFile::parse(&other).err(),
            Some(BackupFileError::NotABackup)
        );
    }
}
