//! Secure messaging between the PKCS#11 library and the HSM, with no I/O: the handshake as a
//! chain of state types, the key schedule, protected records, policy and key rollover.
//!
//! The construction is SIGMA-I with ephemeral X25519, as in TLS 1.3's signed Diffie-Hellman and
//! GlobalPlatform SCP11: the device signs the transcript with its identity key (PIK) and both
//! sides prove the derived keys with a MAC over the transcript. See `docs/secure-messaging.md`
//! for the message diagram and the reasons.
#![forbid(unsafe_code)]

mod handshake;
mod keys;
mod policy;
mod record;

pub use handshake::{
    ClientFinished, ClientHello, ExpectClientFinished, ExpectServerHello, HandshakeError,
    ServerHello, ServerStart, StepError, PROTOCOL_VERSION,
};
pub use keys::Side;
pub use policy::{Policy, PolicyError};
pub use record::{
    find_record, find_record_of, message_parts, Channel, Direction, FoundRecord, MessageParts,
    Protection, Record, RecordError, RecordHeader, BULK_LEN, RECORD_HEADER_LEN,
};
