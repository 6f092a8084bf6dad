//! Token master keys: generated per token, wrapped under PIN-derived keys, and used to seal
//! object secrets with AES-256-GCM.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;
use tessera_core::SecretBytes;

use crate::PinRecord;

/// PBKDF2-HMAC-SHA256 iterations for new PIN records (OWASP's 2023 figure for this KDF).
pub const DEFAULT_KDF_ITERATIONS: u32 = 600_000;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const TMK_AAD: &[u8] = b"tessera token master key v1";

/// A sealing or unwrapping failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Authentication failed: a wrong PIN, or data that was altered or moved.
    #[error("authentication failed (wrong PIN, or altered data)")]
    Authentication,
    /// The system random generator failed.
    #[error("the random generator failed")]
    Random,
}

/// A token master key (32 bytes, wiped on drop).
pub struct MasterKey(SecretBytes);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

fn random(len: usize) -> Result<Vec<u8>, SealError> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SealError::Random)?;
    Ok(bytes)
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Authentication)
}

fn seal_with(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let key = aead_key(key)?;
    let nonce_bytes = random(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(&nonce_bytes).map_err(|_| SealError::Random)?;
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut buffer)
        .map_err(|_| SealError::Authentication)?;
    let mut out = nonce_bytes;
    out.append(&mut buffer);
    Ok(out)
}

fn open_with(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Authentication);
    }
    let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| SealError::Authentication)?;
    // Decrypt inside a SecretBytes so the plaintext is wiped on every path.
    let mut plain = SecretBytes::new(ciphertext.to_vec());
    let len = aead_key(key)?
        .open_in_place(nonce, Aad::from(aad), plain.expose_mut())
        .map_err(|_| SealError::Authentication)?
        .len();
    plain.expose_mut().truncate(len);
    Ok(plain)
}

fn derive(pin: &[u8], salt: &[u8], iterations: u32) -> SecretBytes {
    let mut key = vec![0u8; KEY_LEN];
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        pin,
        &mut key,
    );
    SecretBytes::new(key)
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<MasterKey, SealError> {
        Ok(MasterKey(SecretBytes::new(random(KEY_LEN)?)))
    }

    /// Wraps this key under a key derived from `pin`.
    pub fn wrap(&self, pin: &[u8], iterations: u32) -> Result<PinRecord, SealError> {
        let salt = random(SALT_LEN)?;
        let kek = derive(pin, &salt, iterations);
        let wrapped = seal_with(kek.expose(), TMK_AAD, self.0.expose())?;
        Ok(PinRecord {
            salt,
            iterations,
            wrapped,
        })
    }

    /// Unwraps the master key with `pin`; fails on a wrong PIN.
    pub fn unwrap(record: &PinRecord, pin: &[u8]) -> Result<MasterKey, SealError> {
        let kek = derive(pin, &record.salt, record.iterations);
        let key = open_with(kek.expose(), TMK_AAD, &record.wrapped)?;
        if key.len() != KEY_LEN {
            return Err(SealError::Authentication);
        }
        Ok(MasterKey(key))
    }

    /// Seals `plaintext`, bound to `aad` (the object's slot and id).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(self.0.expose(), aad, plaintext)
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
        open_with(self.0.expose(), aad, sealed)
    }

    /// A subkey for another purpose: HMAC-SHA256 of the key over `label`.
    pub fn derive(&self, label: &[u8]) -> SecretBytes {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.expose());
        SecretBytes::from_slice(aws_lc_rs::hmac::sign(&key, label).as_ref())
    }

    /// An explicit copy (a token keeps one while a user is logged in).
    pub fn duplicate(&self) -> MasterKey {
        MasterKey(self.0.duplicate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_pin_and_moved_or_altered_secrets_fail() {
        let tmk = MasterKey::generate().unwrap();
        let record = tmk.wrap(b"1234", 1000).unwrap();
        assert_eq!(
            MasterKey::unwrap(&record, b"4321").unwrap_err(),
            SealError::Authentication
        );
        let again = MasterKey::unwrap(&record, b"1234").unwrap();
        let sealed = tmk.seal(b"slot0/object7", b"key bytes").unwrap();
        assert_eq!(
            again.open(b"slot0/object7", &sealed).unwrap().expose(),
            b"key bytes"
        );
        assert!(
            again.open(b"slot0/object8", &sealed).is_err(),
            "bound to the object id"
        );
        let mut altered = sealed.clone();
        altered[NONCE_LEN] ^= 1;
        assert!(again.open(b"slot0/object7", &altered).is_err());
        assert!(again.open(b"x", &sealed[..5]).is_err());
        assert!(
            !sealed.windows(9).any(|w| w == b"key bytes"),
            "ciphertext hides the key"
        );
    }
}
