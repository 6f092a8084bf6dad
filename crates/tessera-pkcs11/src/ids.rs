//! Global slot IDs and session handles, and the device-local numbers they pack.
//!
//! A slot ID is `device_number << 16 | local_slot`; a session handle is
//! `device_number << 32 | remote_handle`. Both are plain `u64` at the C boundary; inside the
//! library they are [`SlotId`] and [`SessionId`] so that the two are never mixed up.

/// Bits of a slot ID that hold the device's own slot number.
pub const LOCAL_SLOT_BITS: u32 = 16;
/// Bits of a session handle that hold the device's own session handle.
pub const REMOTE_HANDLE_BITS: u32 = 32;
/// Number of slots one device can show (the rest are not addressable).
pub const MAX_LOCAL_SLOTS: u64 = 1 << LOCAL_SLOT_BITS;

/// A global slot ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId {
    /// Position of the device in the server list.
    pub device: usize,
    /// The device's own slot number.
    pub local: u64,
}

impl SlotId {
    /// The slot `local` of device `device`; `None` when `local` does not fit in 16 bits.
    pub fn new(device: usize, local: u64) -> Option<SlotId> {
        (local < MAX_LOCAL_SLOTS).then_some(SlotId { device, local })
    }

    /// Splits a `CK_SLOT_ID`.
    pub fn from_raw(raw: u64) -> SlotId {
        SlotId {
            // A u64 shifted right by 16 fits in usize on the 64-bit platforms we build for.
            device: usize::try_from(raw >> LOCAL_SLOT_BITS).unwrap_or(usize::MAX),
            local: raw & (MAX_LOCAL_SLOTS - 1),
        }
    }

    /// The `CK_SLOT_ID`.
    pub fn raw(self) -> u64 {
        ((self.device as u64) << LOCAL_SLOT_BITS) | self.local
    }
}

/// A global session handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// Position of the device in the server list.
    pub device: usize,
    /// The handle the device issued.
    pub remote: u64,
}

impl SessionId {
    /// The session `remote` of device `device`; `None` when the device's handle does not fit
    /// in 32 bits or the result would be `CK_INVALID_HANDLE` (0).
    pub fn new(device: usize, remote: u64) -> Option<SessionId> {
        let id = SessionId { device, remote };
        (remote < 1 << REMOTE_HANDLE_BITS
            && (device as u64) < 1 << REMOTE_HANDLE_BITS
            && id.raw() != 0)
            .then_some(id)
    }

    /// Splits a `CK_SESSION_HANDLE`.
    pub fn from_raw(raw: u64) -> SessionId {
        SessionId {
            device: usize::try_from(raw >> REMOTE_HANDLE_BITS).unwrap_or(usize::MAX),
            remote: raw & ((1 << REMOTE_HANDLE_BITS) - 1),
        }
    }

    /// The `CK_SESSION_HANDLE`.
    pub fn raw(self) -> u64 {
        ((self.device as u64) << REMOTE_HANDLE_BITS) | self.remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_pack_device_and_local_slot() {
        let slot = SlotId::new(3, 7).unwrap();
        assert_eq!(slot.raw(), 0x3_0007);
        assert_eq!(SlotId::from_raw(0x3_0007), slot);
        assert_eq!(SlotId::new(0, 0).unwrap().raw(), 0);
        assert_eq!(
            SlotId::from_raw(0x2_0000),
            SlotId {
                device: 2,
                local: 0
            }
        );
        assert_eq!(SlotId::new(1, 0xFFFF).unwrap().raw(), 0x1_FFFF);
        assert_eq!(SlotId::new(1, 0x1_0000), None);
    }

    #[test]
    fn session_handles_pack_device_and_remote_handle() {
        let session = SessionId::new(2, 0x1234).unwrap();
        assert_eq!(session.raw(), 0x2_0000_1234);
        assert_eq!(SessionId::from_raw(0x2_0000_1234), session);
        assert_eq!(SessionId::new(0, 1).unwrap().raw(), 1);
        assert_eq!(SessionId::new(0, 0), None, "0 is CK_INVALID_HANDLE");
        assert_eq!(SessionId::new(1, 0).unwrap().raw(), 1 << 32);
        assert_eq!(SessionId::new(0, 1 << 32), None);
        assert_eq!(
            SessionId::from_raw(u64::MAX),
            SessionId {
                device: 0xFFFF_FFFF,
                remote: 0xFFFF_FFFF
            }
        );
    }
}
