//! Info records exchanged between the HSM and the PKCS#11 module (the wire form of
//! `CK_SLOT_INFO`, `CK_TOKEN_INFO`, `CK_SESSION_INFO`, `CK_MECHANISM_INFO` and device facts).

use serde::{Deserialize, Serialize};

/// A version `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
}

/// What a device says about itself (the analogue of an adapter's fixed data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device serial number (decimal digits).
    pub serial: String,
    /// The model string.
    pub model: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Firmware (daemon) version.
    pub firmware: Version,
    /// Hardware version.
    pub hardware: Version,
    /// Number of slots, the Admin slot included (it is the last one).
    pub slot_count: u64,
    /// The device's flags require a secure channel for session calls. Said in the clear: a
    /// client may become stricter on it (make a channel at once), never looser.
    pub channel_required: bool,
}

/// `CK_SLOT_INFO` in wire form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Slot description.
    pub description: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// `CKF_*` slot flags.
    pub flags: u64,
    /// Hardware version.
    pub hardware: Version,
    /// Firmware version.
    pub firmware: Version,
}

/// `CK_TOKEN_INFO` in wire form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token label (up to 32 bytes).
    pub label: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number (up to 16 characters).
    pub serial: String,
    /// `CKF_*` token flags.
    pub flags: u64,
    /// Sessions open on this token (all clients).
    pub session_count: u64,
    /// R/W sessions open on this token.
    pub rw_session_count: u64,
    /// Maximum sessions.
    pub max_session_count: u64,
    /// Maximum PIN length.
    pub max_pin_len: u64,
    /// Minimum PIN length.
    pub min_pin_len: u64,
    /// Hardware version.
    pub hardware: Version,
    /// Firmware version.
    pub firmware: Version,
    /// `YYYYMMDDhhmmss00` UTC.
    pub utc_time: String,
}

/// `CK_SESSION_INFO` in wire form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The slot, in the device's own numbering.
    pub slot: u64,
    /// `CKS_*` state.
    pub state: u64,
    /// `CKF_*` session flags.
    pub flags: u64,
    /// Device error code.
    pub device_error: u64,
}

/// `CK_MECHANISM_INFO` in wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MechanismInfo {
    /// Minimum key size (bits or bytes, as the spec says for the mechanism).
    pub min_key_size: u64,
    /// Maximum key size.
    pub max_key_size: u64,
    /// `CKF_*` mechanism flags.
    pub flags: u64,
}
