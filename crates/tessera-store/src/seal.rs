//! Token master keys: generated per token, wrapped under PIN-derived keys, and used to seal
//! object secrets with AES-256-GCM.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use tessera_core::SecretBytes;

use crate::PinRecord;

/// PBKDF2-HMAC-SHA256 iterations for new PIN records (OWASP's 2023 figure for this KDF).
pub const DEFAULT_KDF_ITERATIONS: u32 = 600_000;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const TMK_AAD: &[u8] = b"tessera token master key v1";
const PEPPER_AAD: &[u8] = b"tessera peppered PIN record v2";

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
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    seal_under(&aead_key(key)?, nonce, aad, plaintext)
}

/// Seals under a prepared key with `nonce` into `nonce || ciphertext || tag` (what
/// [`open_under`] opens).
fn seal_under(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| SealError::Authentication)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
    open_under(&aead_key(key)?, aad, sealed)
}

/// Opens `nonce || ciphertext || tag` under a prepared key, into a secret (wiped on every path).
fn open_under(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Authentication);
    }
    let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| SealError::Authentication)?;
    let mut plain = SecretBytes::with_capacity(ciphertext.len());
    plain.extend_from_slice(ciphertext);
    let len = key
        .open_in_place(nonce, Aad::from(aad), plain.expose_mut())
        .map_err(|_| SealError::Authentication)?
        .len();
    plain.truncate(len);
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

    /// A key from 32 or more bytes of key material (an external key file, a credential):
    /// HMAC-SHA256 of the material over `label`.
    pub fn from_material(material: &[u8], label: &[u8]) -> MasterKey {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, material);
        MasterKey(SecretBytes::from_slice(
            aws_lc_rs::hmac::sign(&key, label).as_ref(),
        ))
    }

    /// A key made from a derived secret (see [`MasterKey::derive`]).
    pub fn from_secret(secret: SecretBytes) -> Result<MasterKey, SealError> {
        if secret.len() != KEY_LEN {
            return Err(SealError::Authentication);
        }
        Ok(MasterKey(secret))
    }

    /// Wraps this key under a key derived from `pin`, then seals the wrapped key under
    /// `pepper` (a device secret kept outside the store): the record alone does not let anyone
    /// test a PIN guess.
    pub fn wrap_peppered(
        &self,
        pin: &[u8],
        iterations: u32,
        pepper: &MasterKey,
    ) -> Result<PinRecord, SealError> {
        pepper_record(self.wrap(pin, iterations)?, pepper)
    }

    /// Unwraps a record made by [`MasterKey::wrap_peppered`] (or peppered by
    /// [`pepper_record`]); fails on a wrong PIN or a wrong pepper.
    pub fn unwrap_peppered(
        record: &PinRecord,
        pin: &[u8],
        pepper: &MasterKey,
    ) -> Result<MasterKey, SealError> {
        let inner = pepper.open(&pepper_aad(&record.salt), &record.wrapped)?;
        let inner = PinRecord {
            salt: record.salt.clone(),
            iterations: record.iterations,
            wrapped: inner.expose().to_vec(),
        };
        MasterKey::unwrap(&inner, pin)
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

    /// This key sealed under `key`, bound to `aad` (a cluster key kept by a device under its
    /// device key, or handed to a joining device under a key agreed with it).
    pub fn sealed_under(&self, key: &MasterKey, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        key.seal(aad, self.0.expose())
    }

    /// Opens a key that [`MasterKey::sealed_under`] sealed under `key` with the same `aad`.
    pub fn opened_from(key: &MasterKey, aad: &[u8], sealed: &[u8]) -> Result<MasterKey, SealError> {
        MasterKey::from_secret(key.open(aad, sealed)?)
    }

    /// The key's bytes, for a sealed record that carries it (a cluster's token key, inside
    /// the cluster's founding record).
    pub fn export(&self) -> SecretBytes {
        self.0.duplicate()
    }

    /// An explicit copy (a token keeps one while a user is logged in).
    pub fn duplicate(&self) -> MasterKey {
        MasterKey(self.0.duplicate())
    }
}

/// What seals an object's secrets: a token's or the device's [`MasterKey`] for what is stored,
/// the [`HeldKey`] for what lives only in memory.
pub trait Seal {
    /// `nonce || ciphertext || tag` of `plaintext`, bound to `aad`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    /// The plaintext of what [`Seal::seal`] sealed with the same `aad`.
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError>;
}

impl Seal for MasterKey {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        MasterKey::seal(self, aad, plaintext)
    }
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
        MasterKey::open(self, aad, sealed)
    }
}

impl Seal for HeldKey {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        HeldKey::seal(self, aad, plaintext)
    }
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
        HeldKey::open(self, aad, sealed)
    }
}

/// The key that seals the secrets of objects held only in memory (session objects): made at
/// random when the device starts and never stored, so nothing sealed under it outlives the
/// process. Unlike a [`MasterKey`] it is prepared once (the AES key schedule, kept by the crypto
/// library) and its nonces are a counter, as one is used for every session object a client
/// makes and at every use of one: a fresh key schedule and a random nonce cost more than the
/// sealing itself.
pub struct HeldKey {
    key: LessSafeKey,
    /// Records sealed so far: the next nonce (a nonce is never used twice under one key).
    sealed: AtomicU64,
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldKey(redacted)")
    }
}

impl HeldKey {
    /// A fresh random key.
    pub fn generate() -> Result<HeldKey, SealError> {
        let bytes = SecretBytes::new(random(KEY_LEN)?);
        Ok(HeldKey {
            key: aead_key(bytes.expose())?,
            sealed: AtomicU64::new(0),
        })
    }

    /// Seals `plaintext` bound to `aad`: `nonce || ciphertext || tag`, as [`MasterKey::seal`].
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let count = self.sealed.fetch_add(1, Ordering::Relaxed);
        if count == u64::MAX {
            // 2^64 records: never in practice, but a repeated nonce must be impossible.
            return Err(SealError::Random);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[NONCE_LEN - 8..].copy_from_slice(&count.to_be_bytes());
        seal_under(&self.key, nonce, aad, plaintext)
    }

    /// Opens what [`HeldKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBytes, SealError> {
        open_under(&self.key, aad, sealed)
    }
}

fn pepper_aad(salt: &[u8]) -> Vec<u8> {
    [PEPPER_AAD, salt].concat()
}

/// Peppers an existing (format 1) PIN record without knowing the PIN: its wrapped master key is
/// sealed once more under `pepper`. Used when an older store is migrated.
pub fn pepper_record(record: PinRecord, pepper: &MasterKey) -> Result<PinRecord, SealError> {
    let wrapped = pepper.seal(&pepper_aad(&record.salt), &record.wrapped)?;
    Ok(PinRecord {
        salt: record.salt,
        iterations: record.iterations,
        wrapped,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peppered_pin_record_does_not_open_without_the_pepper() {
        let tmk = MasterKey::generate().unwrap();
        let pepper = MasterKey::generate().unwrap();
        let record = tmk.wrap_peppered(b"1234", 1000, &pepper).unwrap();
        // The store file alone: the right PIN does not open the record, so no guess can be
        // checked offline.
        assert_eq!(
            MasterKey::unwrap(&record, b"1234").unwrap_err(),
            SealError::Authentication
        );
        let other = MasterKey::generate().unwrap();
        assert!(MasterKey::unwrap_peppered(&record, b"1234", &other).is_err());
        assert!(MasterKey::unwrap_peppered(&record, b"4321", &pepper).is_err());
        let opened = MasterKey::unwrap_peppered(&record, b"1234", &pepper).unwrap();
        assert_eq!(opened.0.expose(), tmk.0.expose());
        // An old record peppered in place opens with the same PIN.
        let old = tmk.wrap(b"5678", 1000).unwrap();
        let migrated = pepper_record(old, &pepper).unwrap();
        assert!(MasterKey::unwrap(&migrated, b"5678").is_err());
        assert!(MasterKey::unwrap_peppered(&migrated, b"5678", &pepper).is_ok());
    }

    use super::*;

    #[test]
    fn held_records_open_only_unaltered_with_their_own_data_and_key() {
        let key = HeldKey::generate().unwrap();
        let a = key.seal(b"session object 7", b"marker secret").unwrap();
        let b = key.seal(b"session object 7", b"marker secret").unwrap();
        // A counter nonce: the same secret sealed twice gives two records.
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
        assert!(!a.windows(13).any(|w| w == b"marker secret"));
        assert_eq!(
            key.open(b"session object 7", &a).unwrap().expose(),
            b"marker secret"
        );
        assert!(key.open(b"session object 8", &a).is_err());
        let mut altered = a.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open(b"session object 7", &altered).is_err());
        assert!(key.open(b"session object 7", &a[..NONCE_LEN - 1]).is_err());
        let other = HeldKey::generate().unwrap();
        assert!(other.open(b"session object 7", &a).is_err());
    }

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
