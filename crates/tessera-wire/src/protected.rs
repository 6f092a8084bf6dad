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

/// Puts a payload into a call's empty bulk field ([`Bulky::put_bulk`]).
pub(crate) fn put_call(call: &mut Call, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
    match call.bulk_mut() {
        Some(data) if data.is_empty() => {
            *data = bulk;
            Ok(())
        }
        _ => Err(bulk),
    }
}

/// Puts a payload into a reply's empty bytes or secret ([`Bulky::put_bulk`]).
pub(crate) fn put_reply(reply: &mut Reply, bulk: Vec<u8>) -> Result<(), Vec<u8>> {
    match reply {
        Reply::Bytes(data) if data.is_empty() => {
            *data = bulk;
            Ok(())
        }
        Reply::Secret(secret) if secret.is_empty() => {
            *secret = SecretBytes::unlocked_from(bulk);
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
            Ok(reply) => put_reply(reply, bulk),
            Err(_) => Err(bulk),
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
            // Not read: whatever it held is wiped, as for a message that did not decode.
            tessera_core::bytes::give(payload, tessera_core::bytes::Held::Secret);
            let spent = spent.map(|mut buffer| {
                wipe(&mut buffer, plain);
                buffer
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Call, Operation};

    /// The plaintext of a record whose message is `message`, its bulk payload first when it
    /// travels so (what `Channel::seal_split` seals).
    fn plaintext<T: serde::Serialize + Bulky>(mut message: T) -> Vec<u8> {
        let bulk = message.take_bulk().unwrap_or_default();
        let mut plain = bulk.clone();
        plain.extend_from_slice(&postcard::to_stdvec(&message).unwrap());
        plain.extend_from_slice(&(bulk.len() as u32).to_be_bytes());
        plain
    }

    fn call(data: Vec<u8>) -> Bound<Inner> {
        Bound {
            id: 5,
            message: Inner::Call(Call::OperationSingle {
                session: 3,
                operation: Operation::Encrypt,
                data,
                signature: vec![1, 2],
            }),
        }
    }

    fn data_of(bound: &Bound<Inner>) -> &[u8] {
        match &bound.message {
            Inner::Call(Call::OperationSingle { data, .. }) => data,
            _ => panic!("not the call"),
        }
    }

    proptest::proptest! {
        /// A message is read alike from a buffer it starts (its payload adopted: the buffer,
        /// cut short, is the call's data) and from the middle of a frame (its payload copied).
        #[test]
        fn a_message_reads_alike_adopted_and_copied(
            len in proptest::sample::select(vec![0, 40, SPLIT_PAYLOAD - 1, SPLIT_PAYLOAD, SPLIT_PAYLOAD + 999]),
            before in 1usize..50,
            after in 0usize..50,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
            let plain = plaintext(call(data.clone()));
            let address = plain.as_ptr();
            let end = plain.len();
            let (adopted, spent) = open_message::<Bound<Inner>>(plain.clone(), 0..end);
            let adopted = adopted.unwrap();
            proptest::prop_assert_eq!(data_of(&adopted), &data[..]);
            proptest::prop_assert_eq!(spent.is_none(), len >= SPLIT_PAYLOAD);
            let mut framed = vec![0xee; before];
            framed.extend_from_slice(&plain);
            framed.extend_from_slice(&vec![0xdd; after]);
            let (copied, spent) = open_message::<Bound<Inner>>(framed, before..before + end);
            let copied = copied.unwrap();
            proptest::prop_assert_eq!(data_of(&copied), &data[..]);
            proptest::prop_assert!(spent.is_some());
            // The adopted buffer is the very one read into.
            let kept = open_message::<Bound<Inner>>(plain, 0..end).0.unwrap();
            if len >= SPLIT_PAYLOAD {
                proptest::prop_assert_eq!(data_of(&kept).as_ptr(), address);
            }
        }
    }

    /// Only a message whose parts fit, whose encoding is all there is, and whose payload has
    /// its empty field and the size of one that travels first, is read; what was not read is
    /// wiped where it lay.
    #[test]
    fn a_message_that_does_not_fit_its_parts_is_refused_and_wiped() {
        let large = vec![7u8; SPLIT_PAYLOAD];
        let refused = |plain: Vec<u8>| {
            let end = plain.len();
            let mut framed = vec![0xee; 3];
            framed.extend_from_slice(&plain);
            let (read, spent) = open_message::<Bound<Inner>>(framed, 3..3 + end);
            let spent = spent.expect("the buffer back");
            assert!(spent[3..].iter().all(|&b| b == 0), "not wiped");
            read.map(|_| ()).unwrap_err()
        };
        // A payload length past the message.
        let mut plain = plaintext(call(large.clone()));
        let n = plain.len();
        plain[n - 4..].copy_from_slice(&(n as u32).to_be_bytes());
        assert_eq!(refused(plain), Unreadable::Parts);
        // A byte after the encoding.
        let mut plain = plaintext(call(vec![1; 10]));
        plain.insert(plain.len() - 4, 0);
        assert_eq!(refused(plain), Unreadable::Decode);
        // A payload smaller than one that travels first.
        let mut plain = vec![9u8; 100];
        plain.extend_from_slice(&postcard::to_stdvec(&call(Vec::new())).unwrap());
        plain.extend_from_slice(&100u32.to_be_bytes());
        assert_eq!(refused(plain), Unreadable::Payload);
        // A payload for a message with no field for it, and one whose field is not empty.
        let mut plain = large.clone();
        let rekey = Bound {
            id: 5,
            message: Inner::Rekey,
        };
        plain.extend_from_slice(&postcard::to_stdvec(&rekey).unwrap());
        plain.extend_from_slice(&(large.len() as u32).to_be_bytes());
        assert_eq!(refused(plain), Unreadable::Payload);
        let mut plain = large.clone();
        plain.extend_from_slice(&postcard::to_stdvec(&call(vec![1])).unwrap());
        plain.extend_from_slice(&(large.len() as u32).to_be_bytes());
        assert_eq!(refused(plain), Unreadable::Payload);
    }

    /// A decryption's plaintext is the reply's secret, and what the buffer held of it is
    /// wiped once it is copied out of the middle of a frame.
    #[test]
    fn a_secret_payload_copied_out_is_wiped_where_it_lay() {
        let secret = vec![0x5e; SPLIT_PAYLOAD + 3];
        let reply = Bound {
            id: 9,
            message: Outcome::Answer(Ok(Reply::Secret(SecretBytes::from_slice(&secret)))),
        };
        let plain = plaintext(reply);
        let end = plain.len();
        let mut framed = vec![0xee; 10];
        framed.extend_from_slice(&plain);
        let (read, spent) = open_message::<Bound<Outcome>>(framed, 10..10 + end);
        match read.unwrap().message {
            Outcome::Answer(Ok(Reply::Secret(got))) => assert_eq!(got.expose(), &secret[..]),
            other => panic!("{other:?}"),
        }
        let spent = spent.expect("the frame back");
        assert!(spent[10..].iter().all(|&b| b == 0), "the plaintext left");
        assert!(spent[..10].iter().all(|&b| b == 0xee));
    }
}
