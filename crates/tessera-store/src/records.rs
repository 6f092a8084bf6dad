//! The records kept in the store.

use serde::{Deserialize, Serialize};
use tessera_core::Template;

/// The device (adapter): identity facts fixed at creation and the settings the Administrator
/// changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Serial number (decimal digits).
    pub serial: String,
    /// Model string.
    pub model: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The token ids of the user slots, in slot order. Slot numbers are positions here; token
    /// ids never change, so secrets sealed to a token id stay bound to it when slots move.
    pub user_tokens: Vec<u64>,
    /// The token id of the Admin token, always shown in the last slot.
    pub admin_token: u64,
    /// The next token id to give out.
    pub next_token: u64,
    /// Security flags (the bits of docs/reference.md).
    pub flags: u64,
    /// Transport mode: 0 none, 1 single shot, 2 continuous.
    pub transport_mode: u8,
    /// Device clock minus host clock, in seconds.
    pub clock_offset: i64,
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

/// One entry of the device's event log. Entries are chained: `mac` authenticates the entry and
/// the previous entry's `mac`, so an edit, a removal in the middle or a reordering breaks the
/// chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// Sequence number, one more than the previous entry's.
    pub sequence: u64,
    /// Seconds since the Unix epoch (device clock).
    pub time: u64,
    /// Who acted: `ASO`, `Administrator`, `SO`, `User`, `Public`, `Device`.
    pub role: String,
    /// What happened, e.g. `login-failure`, `flags-changed`.
    pub kind: String,
    /// Details (slot, old and new values, ...); never a secret.
    pub detail: String,
    /// The previous entry's `mac` (empty for the very first entry).
    pub previous: Vec<u8>,
    /// HMAC-SHA256 over every field above.
    pub mac: Vec<u8>,
}
