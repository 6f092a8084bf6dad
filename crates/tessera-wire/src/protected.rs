//! The messages inside sealed records, with a bulk payload first.
//!
//! A record's message is its payload (a call's input data, a reply's output bytes, when they
//! are [`SPLIT_PAYLOAD`] bytes or more), the postcard encoding of the message with that field
//! left empty, and the payload's length (`tessera_channel::message_parts`). The payload is
//! sealed where it lies, in its own buffer; and a record read into a buffer of its own is,
//! once opened, the payload with the rest behind it: the buffer, cut short, becomes the call's
//! data or the reply's bytes. Neither end copies a bulk payload into or out of a record.

use tessera_channel::{Channel, Protection, RecordError};
use tessera_core::SecretBytes;

use crate::frame::finish_frame_around;
use crate::{Bound, Call, FramePrefix, Inner, Outcome, OutcomeRef, Reply, SPLIT_PAYLOAD};

/// A message that may carry a bulk payload: what travels first in its record.
pub trait Bulky {
    /// Moves a payload of [`SPLIT_PAYLOAD`] bytes or more out of the message, leaving its
    /// field empty; `None` (the message untouched) for a smaller one, or none.
    fn take_bulk(&mut self) -> Option<Vec<u8>>;

    /// Puts a payload into the message's empty bulk field; gives it back (`Err`) when the
    /// message has no such field, or has bytes in it: a payload the message cannot hold.
    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), Vec<u8>>;

    /// Whether the message carries a PIN or a secret value: its record's plaintext is wiped.
    fn carries_secret(&self) -> bool;
}

/// A bulk field's payload, moved out when it is large enough to travel first.
fn take_large(data: &mut Vec<u8>) -> Option<Vec<u8>> {
    (data.len() >= SPLIT_PAYLOAD).then(|| std::mem::take(data))
}

impl Bulky for Inner {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            Inner::Call(call) => call.bulk_mut().and_then(take_large),
            Inner::Rekey => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
        match self {
            Inner::Call(call) => put_call(call, bulk),
            Inner::Rekey => Err(bulk),
        }
    }

    fn carries_secret(&self) -> bool {
        Inner::carries_secret(self)
    }
}

fn put_call(call: &mut Call, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
    match call.bulk_mut() {
        Some(data) if data.is_empty() => {
            *data = bulk;
            Ok(())
        }
        _ => Err(bulk),
    }
}

impl Bulky for Result<Reply, u64> {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            Ok(Reply::Bytes(data)) => take_large(data),
            // A decryption's plaintext: sealed where it lies, so encrypted there (no plaintext
            // copy left behind) or, in a signed record, written out and the buffer dropped.
            Ok(Reply::Secret(secret)) if secret.len() >= SPLIT_PAYLOAD => Some(secret.take_bytes()),
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
        match self {
            Ok(Reply::Bytes(data)) if data.is_empty() => {
                *data = bulk;
                Ok(())
            }
            Ok(Reply::Secret(secret)) if secret.is_empty() => {
                *secret = SecretBytes::unlocked_from(bulk);
                Ok(())
            }
            _ => Err(bulk),
        }
    }

    fn carries_secret(&self) -> bool {
        matches!(self, Ok(reply) if reply.carries_secret())
    }
}

impl Bulky for Outcome {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            Outcome::Answer(result) => result.take_bulk(),
            Outcome::Ended(_) => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
        match self {
            Outcome::Answer(result) => result.put_bulk(bulk),
            Outcome::Ended(_) => Err(bulk),
        }
    }

    fn carries_secret(&self) -> bool {
        matches!(self, Outcome::Answer(result) if result.carries_secret())
    }
}

impl<T: Bulky> Bulky for Bound<T> {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        self.message.take_bulk()
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
        self.message.put_bulk(bulk)
    }

    fn carries_secret(&self) -> bool {
        self.message.carries_secret()
    }
}

/// Seals `message` for request `id` into its frame on `channel`: the frame and, when the
/// message had a bulk payload (moved out of it, and sealed where it lies), the rest of the
/// frame, its record's body, to be written behind it. Without a payload the whole frame is one
/// buffer and the rest is empty.
pub fn seal_message<T: serde::Serialize + Bulky>(
    channel: &mut Channel,
    id: u64,
    message: &mut T,
    protection: Protection,
) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
    let prefix = crate::protected_prefix(id, channel.id());
    let bulk = message.take_bulk();
    seal_bound(channel, &Bound { id, message }, bulk, protection, &prefix)
}

/// The device's answer `result` to request `id`, sealed as [`seal_message`] seals it: its
/// bulk output (moved out of `result`) first.
pub fn seal_answer(
    channel: &mut Channel,
    id: u64,
    result: &mut Result<Reply, u64>,
    protection: Protection,
) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
    let prefix = crate::protected_prefix(id, channel.id());
    let bulk = result.take_bulk();
    let bound = Bound {
        id,
        message: OutcomeRef::Answer(result),
    };
    seal_bound(channel, &bound, bulk, protection, &prefix)
}

fn seal_bound<T: serde::Serialize>(
    channel: &mut Channel,
    bound: &T,
    bulk: Option<Vec<u8>>,
    protection: Protection,
    prefix: &FramePrefix,
) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
    match bulk {
        Some(bulk) => {
            let (mut frame, rest) = channel.seal_split(bound, bulk, protection, prefix.as_ref())?;
            finish_frame_around(&mut frame, rest.len());
            Ok((frame, rest))
        }
        None => {
            let mut frame = channel.seal_value_framed(bound, protection, prefix.as_ref())?;
            crate::finish_frame(&mut frame);
            Ok((frame, Vec::new()))
        }
    }
}

/// Why an opened record's message was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// It does not end with a payload length that fits in it.
    #[error("the message's payload length does not fit in it")]
    Parts,
    /// Its encoding is not a message of its kind, or has bytes after it.
    #[error("the message does not decode")]
    Decode,
    /// A payload that the message has no empty field for, or one smaller than a payload that
    /// travels first ([`SPLIT_PAYLOAD`]).
    #[error("the message's payload has no place in it")]
    Payload,
}

/// Reads the message of a record opened in `buffer`, at `plain`. A payload is moved into its
/// message without a copy when the message starts the buffer (a record read into a buffer of
/// its own): the buffer, cut short, becomes it. Otherwise it is copied out. What the buffer
/// holds of a message that carries a secret ([`Bulky::carries_secret`]), or of one that could
/// not be read, is wiped where it lies. The buffer comes back (`None` when it became the
/// payload) for its owner to reuse or free.
pub fn open_message<T>(
    mut buffer: Vec<u8>,
    plain: std::ops::Range<usize>,
) -> (Result<T, Unreadable>, Option<Vec<u8>>)
where
    T: serde::de::DeserializeOwned + Bulky,
{
    let (mut message, bulk) = match read_message::<T>(&buffer, plain.clone()) {
        Ok(read) => read,
        Err(e) => {
            wipe(&mut buffer, plain);
            return (Err(e), Some(buffer));
        }
    };
    let secret = message.carries_secret();
    let payload = plain.start..plain.start + bulk;
    if secret {
        // The message's own encoding and the payload's length.
        wipe(&mut buffer, payload.end..plain.end);
    }
    if bulk == 0 {
        return (Ok(message), Some(buffer));
    }
    let (payload, spent) = if plain.start == 0 {
        buffer.truncate(bulk);
        (buffer, None)
    } else {
        let copied = tessera_core::bytes::copy(&buffer[payload.clone()]);
        if secret {
            wipe(&mut buffer, payload);
        }
        (copied, Some(buffer))
    };
    match message.put_bulk(payload) {
        Ok(()) => (Ok(message), spent),
        Err(payload) => {
            tessera_core::bytes::give(payload, tessera_core::bytes::Held::Secret);
            (Err(Unreadable::Payload), spent)
        }
    }
}

/// Wipes `range` of `buffer` where it lies (as much of it as there is).
fn wipe(buffer: &mut [u8], range: std::ops::Range<usize>) {
    let end = range.end.min(buffer.len());
    if let Some(bytes) = buffer.get_mut(range.start.min(end)..end) {
        zeroize::Zeroize::zeroize(bytes);
    }
}

/// The message in `buffer[plain]` with its payload's length: decoded from its encoding alone,
/// nothing after it; a payload must be one that travels first and have its empty field.
fn read_message<T>(buffer: &[u8], plain: std::ops::Range<usize>) -> Result<(T, usize), Unreadable>
where
    T: serde::de::DeserializeOwned + Bulky,
{
    let message = buffer.get(plain).ok_or(Unreadable::Parts)?;
    let parts = tessera_channel::message_parts(message).ok_or(Unreadable::Parts)?;
    let (decoded, after) =
        postcard::take_from_bytes::<T>(&message[parts.rest]).map_err(|_| Unreadable::Decode)?;
    if !after.is_empty() {
        return Err(Unreadable::Decode);
    }
    if parts.bulk != 0 && parts.bulk < SPLIT_PAYLOAD {
        return Err(Unreadable::Payload);
    }
    Ok((decoded, parts.bulk))
}
