//! Device administration calls (`ctconf`): status, first-time set-up, and the changes that
//! need the Administrator (a session on the Admin slot, logged in with the Administrator PIN).

use serde::{Deserialize, Serialize};
use tessera_core::info::DeviceInfo;
use tessera_core::SecretBytes;

/// A change to the device; every one needs the Administrator.
#[derive(Debug, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Replace the security flags.
    SetFlags(u64),
    /// Initialise the token in a user slot (label and SO PIN), erasing what it held.
    InitToken {
        /// Slot.
        slot: u64,
        /// Label (up to 32 bytes).
        label: Vec<u8>,
        /// New SO PIN.
        so_pin: SecretBytes,
    },
    /// Add user slots.
    AddSlots(u64),
    /// Delete a user slot and its token.
    DeleteSlot(u64),
    /// Read the event log.
    Events,
    /// Empty the event log (one entry records the purge).
    PurgeEvents,
    /// Set the device clock (seconds since the Unix epoch).
    SetClock(u64),
    /// Set the transport mode (0, 1, 2).
    SetTransportMode(u8),
    /// Software tamper: erase tokens, PINs and flags.
    Tamper,
}

/// One user slot in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStatus {
    /// Slot number.
    pub slot: u64,
    /// Token label (empty if not initialised).
    pub label: String,
    /// The token has an SO PIN.
    pub initialized: bool,
    /// The token has a user PIN.
    pub user_pin: bool,
    /// Open sessions.
    pub sessions: u64,
    /// Token objects.
    pub objects: u64,
}

/// What `ctconf -a` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Fixed facts.
    pub info: DeviceInfo,
    /// Device clock, seconds since the Unix epoch.
    pub clock: u64,
    /// Security flags.
    pub flags: u64,
    /// Transport mode (0 none, 1 single shot, 2 continuous).
    pub transport_mode: u8,
    /// Sessions open on the device.
    pub sessions: u64,
    /// The Admin token has been set up (ASO and Administrator PINs).
    pub admin_ready: bool,
    /// The device has an identity key and certificate.
    pub identity: bool,
    /// Entries in the event log.
    pub events: u64,
    /// User slots.
    pub slots: Vec<SlotStatus>,
}

/// One event log entry as shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Sequence number.
    pub sequence: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// Who acted.
    pub role: String,
    /// What happened.
    pub kind: String,
    /// Details.
    pub detail: String,
}
