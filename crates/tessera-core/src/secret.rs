//! Secret byte strings: PINs and key material.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes that must never be logged and are wiped when dropped.
///
/// `Debug` prints only the length. There is no `Clone`: copying a secret is an explicit
/// [`SecretBytes::duplicate`].
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretBytes(#[serde(with = "crate::bytes")] Vec<u8>);

impl SecretBytes {
    /// Wraps bytes (taking ownership; the caller's buffer moves in).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies a slice into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret bytes, for in-place transformation (decryption into the buffer).
    pub fn expose_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An explicit copy of the secret.
    pub fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = SecretBytes::from_slice(b"123456");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("123456"), "{shown}");
        assert!(shown.contains("6 bytes"));
    }
}
