//! Core Cryptoki types shared by every Tessera crate: return values (`Rv`), attributes,
//! mechanisms with typed parameters, info records, secret byte strings and a small DER codec.
//!
//! Nothing here does I/O or cryptography; these are the typed values that the wire protocol
//! carries and that the HSM engine and the PKCS#11 module agree on.
#![forbid(unsafe_code)]

pub mod attribute;
pub mod bytes;
pub mod der;
pub mod flags;
pub mod histogram;
pub mod info;
pub mod locked;
pub mod mechanism;
pub mod rv;
pub mod secret;
pub mod time;

pub use attribute::{Attribute, AttributeKind, Template};
pub use mechanism::{KbkdfData, KbkdfFormat, Mechanism, MechanismParameter};
pub use rv::Rv;
pub use secret::SecretBytes;

/// The raw constant names of PKCS#11 (`CKA_*`, `CKM_*`, `CKR_*`, ...), from `cryptoki-sys`.
pub use cryptoki_sys as ck;
