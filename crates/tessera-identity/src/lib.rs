//! Device identities (docs/ctident.md): the owner key and certificate (POK/POC) that let one device
//! act as CA for an organisation's devices, the identity key and certificate (PIK/PIC) of each
//! device, the verification of the chain a device presents, and the client trust store.
//!
//! Keys are generated and used inside the daemon; this crate turns them into X.509 v3
//! certificates and requests ([`issue`]), reads certificates for display ([`inspect`]), decides
//! whether a presented chain is trusted for a dialled serial number ([`verify`]) and keeps the
//! trusted certificates of a user or of the system ([`trust`]).
#![forbid(unsafe_code)]

pub mod inspect;
pub mod issue;
pub mod pem;
pub mod trust;
pub mod verify;

pub use inspect::CertificateInfo;
pub use issue::{Curve, IdentityError};
pub use verify::{verify_chain, Refusal};
