//! The records kept in the store.

use serde::{Deserialize, Serialize};
use tessera_core::Template;

/// The device (adapter) facts fixed at creation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Serial number (decimal digits).
    pub serial: String,
    /// Model string.
    pub model: String,
    /// Number of user slots; the Admin slot follows them.
    pub user_slots: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// A PIN's record: the token master key wrapped under a key derived from the PIN. Unwrapping
/// it is the PIN check (an authenticated decryption: a wrong PIN fails, in constant time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinRecord {
    /// KDF salt.
    pub salt: Vec<u8>,
    /// KDF iterations.
    pub iterations: u32,
    /// Nonce, ciphertext and tag of the wrapped master key.
    pub wrapped: Vec<u8>,
}

/// A token's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The 32-byte label, blank padded.
    pub label: Vec<u8>,
    /// The SO PIN record; `None` until `C_InitToken`.
    pub so_pin: Option<PinRecord>,
    /// The user PIN record; `None` until `C_InitPIN`.
    pub user_pin: Option<PinRecord>,
    /// Consecutive wrong SO PINs.
    pub so_failures: u32,
    /// Consecutive wrong user PINs.
    pub user_failures: u32,
}

/// A stored object: its public attributes in the clear, its secret attributes sealed under the
/// token master key with the slot and object id as associated data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredObject {
    /// Attributes that are not secret.
    pub public: Template,
    /// Sealed secret attributes (`postcard` of a `Template`), if the object has any.
    pub sealed: Option<Vec<u8>>,
}
