//! The Tessera wire protocol: versioned request/response envelopes carrying typed Cryptoki
//! calls, in length-prefixed frames whose size is checked before anything is allocated.
//!
//! A frame is a 4-byte big-endian length, then a fixed envelope header — the protocol version,
//! what the body is, a request id that pairs a response with its request, and a channel id
//! (none for a message in the clear, the channel's for one that belongs to a secure-messaging
//! channel) — then the body: a message in the clear in `postcard`, or a sealed record, opaque
//! here, laid out by the channel (`tessera_channel::Record`).
#![forbid(unsafe_code)]

mod admin;

/// The first handle of session objects; token object ids stay below it. Each device numbers
/// its own session objects, so such a handle names a key of one device only (the library's HA
/// never moves a call that names one).
pub const SESSION_OBJECT_BASE: u64 = 1 << 40;

pub mod backup;
mod call;
mod frame;
mod protected;
pub mod share;

pub use admin::{
    AdminCommand, BackupLock, BackupUnlock, BackupWritten, ChannelSummary, ClusterStatus,
    DeviceStatus, Event, Identity, IdentityTarget, KeepCommand, KeyState, MemberStatus, SlotStatus,
};
pub use call::{
    AttributeAnswer, Call, Family, Inner, Keys, Message, Operation, Reply, Shape, Traits, Work,
    ENVELOPE_ROOM,
};
pub use frame::{
    body_len as frame_body_len, decode_request, decode_request_split, decode_response,
    decode_response_split, encode_request, encode_request_split, encode_response,
    encode_response_split, find_sealed, find_sealed_start, finders_agree_with_decoders,
    finish_frame, protected_prefix, read_frame, split_request_head, split_response_head,
    write_frame, Bulk, FrameError, FramePrefix, SealedFrame, ENVELOPE_HEADER_LEN, FRAME_HEADER_LEN,
    MAX_FRAME_LEN, REQUEST_HEAD_LEN, SEALED_START_LEN, SPLIT_PAYLOAD, UNIX_SEND_BUFFER,
};

pub use protected::{open_message, seal_answer, seal_message, Bulky, Unreadable};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;

/// A request as sent by a client (encoded by [`encode_request`], read by [`decode_request`]).
#[derive(Debug)]
pub struct RequestEnvelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Chosen by the client; echoed in the response.
    pub id: u64,
    /// The secure-messaging channel, or `None` in the clear.
    pub channel: Option<u64>,
    /// The call in the clear, or a message of the secure-messaging transport.
    pub message: Message,
}

/// A response as sent by the HSM (encoded by [`encode_response`], read by
/// [`decode_response`]).
#[derive(Debug)]
pub struct ResponseEnvelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The id of the request this answers.
    pub id: u64,
    /// The secure-messaging channel, or `None` in the clear.
    pub channel: Option<u64>,
    /// The response, or a `CK_RV` error code (an open number: unknown codes pass through, but
    /// `0`, `CKR_OK`, is never an error: a frame carrying `Err(0)` does not decode).
    pub result: Result<Response, u64>,
}

/// What a response frame carries: a call's reply in the clear, or a message of the
/// secure-messaging transport. The engine only ever answers with a [`Reply`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// A call's reply, in the clear.
    Reply(Reply),
    /// Secure messaging: the device's half of the handshake.
    ServerHello(tessera_channel::ServerHello),
    /// Secure messaging: a sealed record, whose message is an [`Outcome`]. Sent as the
    /// channel lays it out, never in postcard (so a message in the clear cannot be one).
    #[serde(skip)]
    Protected(tessera_channel::Record),
}

impl From<Reply> for Response {
    fn from(reply: Reply) -> Response {
        Response::Reply(reply)
    }
}

/// What a reply record carries, as the library opens it: the call's outcome — its reply or a
/// `CK_RV` error code, never `Err(0)` (see [`ResponseEnvelope::result`]) — or the device's
/// word that it ends the channel, with the code of the refusal that ended it (the channel's
/// last record).
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// The call's reply or error code.
    Answer(#[serde(deserialize_with = "nonzero_error")] Result<Reply, u64>),
    /// The device ended the channel, refusing the call with this code.
    Ended(u64),
}

/// [`Outcome`] as the device seals it, without a copy of the reply (the same encoding: the
/// variants in the same order).
#[derive(Debug, Serialize)]
pub enum OutcomeRef<'a> {
    /// See [`Outcome::Answer`].
    Answer(&'a Result<Reply, u64>),
    /// See [`Outcome::Ended`].
    Ended(u64),
}

/// The message inside a record: the id of the request it belongs to, then the request or the
/// reply. The envelope's id (which routes a reply to the thread that waits for it) is outside
/// the record's protection; this copy is inside it, and the receiver checks that the two
/// agree, so that nobody in the middle can hand one call's sealed reply to another call, or
/// one request's record to another id. Encoded as the pair `(id, message)`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bound<T> {
    /// The request id, as the envelope carries it.
    pub id: u64,
    /// The request, or the reply's [`Outcome`].
    pub message: T,
}

/// Decodes a reply's result, refusing `Err(0)`: an error code of `CKR_OK` would let a forger
/// turn any refusal into a success where a caller maps codes to outcomes.
fn nonzero_error<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Result<T, u64>, D::Error> {
    match Result::<T, u64>::deserialize(deserializer)? {
        Err(0) => Err(serde::de::Error::custom(
            "error code 0 (CKR_OK) is not an error",
        )),
        result => Ok(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device seals an [`OutcomeRef`]; the library opens an [`Outcome`]: the same bytes.
    #[test]
    fn an_outcome_sealed_by_reference_opens_as_an_outcome() {
        let answer: Result<Reply, u64> = Ok(Reply::Handle(7));
        let bytes = postcard::to_stdvec(&OutcomeRef::Answer(&answer)).unwrap();
        assert!(matches!(
            postcard::from_bytes::<Outcome>(&bytes),
            Ok(Outcome::Answer(Ok(Reply::Handle(7))))
        ));
        let bytes = postcard::to_stdvec(&OutcomeRef::Ended(0x80000383)).unwrap();
        assert!(matches!(
            postcard::from_bytes::<Outcome>(&bytes),
            Ok(Outcome::Ended(0x80000383))
        ));
        // CKR_OK is never an error code, inside a record as outside.
        let bytes = postcard::to_stdvec(&OutcomeRef::Answer(&Err(0))).unwrap();
        assert!(postcard::from_bytes::<Outcome>(&bytes).is_err());
    }
}
