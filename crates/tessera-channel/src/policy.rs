//! Secure messaging policy: what each direction must carry, from the device's security flags
//! and the client's SMPR letters (docs/reference.md, "Security flags", "SMPR letters"). The effective policy of a channel is the
//! union of both, and it is part of the handshake transcript.

use serde::{Deserialize, Serialize};
use tessera_core::flags;

/// Protection requirements, as a set of bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy(pub u8);

impl Policy {
    /// Sign requests (`u`, `S`).
    pub const SIGN_REQUESTS: u8 = 0x01;
    /// Sign replies (`U`, `R`).
    pub const SIGN_REPLIES: u8 = 0x02;
    /// Encrypt requests that carry PINs or secret values (`n`, `P`).
    pub const ENCRYPT_SECRETS: u8 = 0x04;
    /// Encrypt every request (`N`, `E`).
    pub const ENCRYPT_REQUESTS: u8 = 0x08;
    /// Encrypt every reply (`N`, `D`).
    pub const ENCRYPT_REPLIES: u8 = 0x10;
    /// Fail rather than run without a channel (`T`; any device flag implies it).
    pub const REQUIRE_CHANNEL: u8 = 0x20;
    /// Only a hybrid channel, X25519 and ML-KEM-768 (`q`, `Q`).
    pub const REQUIRE_HYBRID: u8 = 0x40;

    /// The policy the device's security flags demand.
    pub fn from_device_flags(bits: u64) -> Policy {
        let mut policy = 0;
        if bits & flags::AUTH_PROTECTION != 0 {
            policy |= Self::SIGN_REQUESTS;
        }
        if bits & flags::NO_CLEAR_PINS != 0 {
            policy |= Self::ENCRYPT_SECRETS;
        }
        if bits & flags::FULL_SM_ENCRYPTION != 0 {
            policy |= Self::ENCRYPT_REQUESTS | Self::ENCRYPT_REPLIES;
        }
        if bits & flags::FULL_SM_SIGNING != 0 {
            policy |= Self::SIGN_REQUESTS | Self::SIGN_REPLIES;
        }
        if bits & flags::HYBRID_CHANNEL != 0 {
            policy |= Self::REQUIRE_HYBRID;
        }
        if policy != 0 {
            policy |= Self::REQUIRE_CHANNEL;
        }
        Policy(policy)
    }

    /// Parses an SMPR value (`ET_PTKC_<serial>_SMPR`): letters of `S R P E D T Q`.
    pub fn from_smpr(letters: &str) -> Result<Policy, PolicyError> {
        let mut policy = 0;
        for letter in letters.trim().chars() {
            policy |= match letter {
                'S' => Self::SIGN_REQUESTS,
                'R' => Self::SIGN_REPLIES,
                'P' => Self::ENCRYPT_SECRETS,
                'E' => Self::ENCRYPT_REQUESTS,
                'D' => Self::ENCRYPT_REPLIES,
                'T' => Self::REQUIRE_CHANNEL,
                'Q' => Self::REQUIRE_HYBRID,
                other => return Err(PolicyError(other)),
            };
        }
        if policy != 0 {
            policy |= Self::REQUIRE_CHANNEL;
        }
        Ok(Policy(policy))
    }

    /// Both requirements.
    pub fn union(self, other: Policy) -> Policy {
        Policy(self.0 | other.0)
    }

    /// True if a channel is required.
    pub fn requires_channel(self) -> bool {
        self.0 & Self::REQUIRE_CHANNEL != 0
    }

    /// True if only a hybrid (post-quantum) channel will do.
    pub fn requires_hybrid(self) -> bool {
        self.0 & Self::REQUIRE_HYBRID != 0
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// The protection a request needs; `secret` when it carries a PIN or a secret value. Inside
    /// a channel every message is at least authenticated.
    pub fn request_protection(self, secret: bool) -> crate::Protection {
        if self.has(Self::ENCRYPT_REQUESTS) || (secret && self.has(Self::ENCRYPT_SECRETS)) {
            crate::Protection::Encrypted
        } else {
            crate::Protection::Signed
        }
    }

    /// The protection a reply needs. Decrypted plaintexts and secret values in replies are
    /// encrypted whenever secrets are.
    pub fn reply_protection(self, secret: bool) -> crate::Protection {
        if self.has(Self::ENCRYPT_REPLIES) || (secret && self.has(Self::ENCRYPT_SECRETS)) {
            crate::Protection::Encrypted
        } else {
            crate::Protection::Signed
        }
    }

    /// SMPR-style letters for display.
    pub fn letters(self) -> String {
        [
            (Self::SIGN_REQUESTS, 'S'),
            (Self::SIGN_REPLIES, 'R'),
            (Self::ENCRYPT_SECRETS, 'P'),
            (Self::ENCRYPT_REQUESTS, 'E'),
            (Self::ENCRYPT_REPLIES, 'D'),
            (Self::REQUIRE_CHANNEL, 'T'),
            (Self::REQUIRE_HYBRID, 'Q'),
        ]
        .iter()
        .filter(|(bit, _)| self.has(*bit))
        .map(|(_, letter)| *letter)
        .collect()
    }
}

/// An SMPR letter that is not one of `S R P E D T Q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown SMPR letter {0:?}; valid letters are S R P E D T Q")]
pub struct PolicyError(pub char);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_letters() {
        assert_eq!(Policy::from_device_flags(0), Policy(0));
        let n = Policy::from_device_flags(flags::NO_CLEAR_PINS);
        assert!(n.requires_channel());
        assert_eq!(n.request_protection(true), crate::Protection::Encrypted);
        assert_eq!(n.request_protection(false), crate::Protection::Signed);
        let full = Policy::from_device_flags(flags::FULL_SM_ENCRYPTION | flags::FULL_SM_SIGNING);
        assert_eq!(full.reply_protection(false), crate::Protection::Encrypted);
        assert_eq!(Policy::from_smpr("SR").unwrap().letters(), "SRT");
        assert_eq!(
            Policy::from_smpr("T").unwrap(),
            Policy(Policy::REQUIRE_CHANNEL)
        );
        assert_eq!(Policy::from_smpr("SX"), Err(PolicyError('X')));
        assert_eq!(Policy::from_smpr("").unwrap(), Policy(0));
    }
}
