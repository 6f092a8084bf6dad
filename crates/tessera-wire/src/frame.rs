//! Length-prefixed frames and the envelope codec.
//!
//! A frame is a 4-byte big-endian length, then the envelope header ([`ENVELOPE_HEADER_LEN`]
//! fixed bytes: version, body kind, channel flag, request id, channel id), then the body: a
//! message in the clear in postcard, or a sealed record as the channel lays it out
//! (`tessera_channel::Record`: header, body, MAC), which this crate never looks into.

use std::io::{Read, Write};

use tessera_channel::{Record, RecordHeader};

use crate::{Message, Reply, RequestEnvelope, Response, ResponseEnvelope, PROTOCOL_VERSION};

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest frame body accepted, checked before allocation (16 MiB: a 1 MiB bulk operation
/// fits many times over, a hostile length does not exhaust memory).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The send buffer both ends ask for on a Unix socket (`SO_SNDBUF`; Linux doubles it for its
/// bookkeeping and caps it at `net.core.wmem_max`). A Unix stream socket holds at most its
/// sender's buffer in flight: with the default (about 208 KiB) a 1 MiB bulk frame crosses in
/// five pieces, each a wake-up of the reader and of the writer, and a bare 1 MiB round trip
/// took twice as long as with this. It is a ceiling, not an allocation: the kernel holds only
/// what is written and not yet read. TCP keeps the kernel's own tuning, which does better.
pub const UNIX_SEND_BUFFER: usize = 512 * 1024;

/// Why a frame could not be read or decoded. Every variant is the peer's fault except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_LEN`].
    #[error("peer announced a frame of {0} bytes, over the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// The peer sent an empty frame.
    #[error("peer sent an empty frame")]
    Empty,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The frame's envelope header or sealed record is not valid.
    #[error("peer sent a frame with {0}")]
    Header(&'static str),
    /// The frame's message in the clear is not valid.
    #[error("peer sent a malformed envelope: {0}")]
    Malformed(postcard::Error),
    /// The frame has bytes after the envelope.
    #[error("peer sent {0} trailing bytes after the envelope")]
    Trailing(usize),
}

/// Checks a frame header and returns the body length.
pub fn body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Reads one frame body from a blocking reader.
pub fn read_frame(reader: &mut (impl Read + ?Sized)) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header)?;
    let len = body_len(header)?;
    // Read into a buffer pooled for a large body (see `tessera_core::bytes::take`); std fills
    // its capacity with zeros first unless the reader is one of std's own (a socket, a file).
    let mut body = tessera_core::bytes::take(len);
    (&mut *reader).take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(body)
}

/// Writes one frame (header and body) to a blocking writer.
pub fn write_frame(writer: &mut (impl Write + ?Sized), frame: &[u8]) -> Result<(), FrameError> {
    writer.write_all(frame)?;
    writer.flush()?;
    Ok(())
}

/// The invariant behind every encoding here: postcard writes any of the protocol's messages
/// in the clear into a `Vec` (every sequence has a known length, no `Serialize` of ours fails
/// for them, and a `Vec` grows without limit), so an encoder that failed would be a bug, not a
/// bad input. An empty frame in its place would be sent as a valid one and misread.
const ENCODES: &str = "postcard encodes every message in the clear into a Vec";

/// Bytes of the envelope header, after the length: the protocol version (2), what the body is
/// (1: 0 for a message in the clear, 1 for a sealed record), whether a channel is named (1: 0
/// or 1), the request id (8) and the channel id (8, zero when none is named), big-endian.
pub const ENVELOPE_HEADER_LEN: usize = 20;

/// The body is a message in the clear, in postcard: a request's [`Message`] or a response's
/// `Result<Response, u64>`.
const CLEAR: u8 = 0;
/// The body is a sealed record, as the channel lays it out (`tessera_channel::Record`).
const SEALED: u8 = 1;

/// The envelope header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EnvelopeHeader {
    kind: u8,
    id: u64,
    channel: Option<u64>,
}

impl EnvelopeHeader {
    fn to_bytes(self) -> [u8; ENVELOPE_HEADER_LEN] {
        let mut bytes = [0u8; ENVELOPE_HEADER_LEN];
        bytes[..2].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bytes[2] = self.kind;
        bytes[3] = u8::from(self.channel.is_some());
        bytes[4..12].copy_from_slice(&self.id.to_be_bytes());
        bytes[12..].copy_from_slice(&self.channel.unwrap_or(0).to_be_bytes());
        bytes
    }

    /// Reads the header of a frame body and returns it with the rest of the body.
    fn read(body: &[u8]) -> Result<(EnvelopeHeader, &[u8]), FrameError> {
        let version = body
            .get(..2)
            .ok_or(FrameError::Header("shorter than its header"))?;
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
        let (header, rest) = body
            .split_first_chunk::<ENVELOPE_HEADER_LEN>()
            .ok_or(FrameError::Header("shorter than its header"))?;
        let word = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let channel = match (header[3], word(12)) {
            (0, 0) => None,
            (1, channel) => Some(channel),
            (0, _) => return Err(FrameError::Header("a channel id but no channel flag")),
            _ => return Err(FrameError::Header("a channel flag other than 0 or 1")),
        };
        let kind = header[2];
        match kind {
            CLEAR => {}
            SEALED if channel.is_some() => {}
            SEALED => return Err(FrameError::Header("a sealed record outside any channel")),
            _ => return Err(FrameError::Header("a body kind other than 0 or 1")),
        }
        let id = word(4);
        Ok((EnvelopeHeader { kind, id, channel }, rest))
    }
}

/// Writes a frame's length into its header (the first [`FRAME_HEADER_LEN`] bytes), once the
/// body after it is complete.
pub fn finish_frame(frame: &mut [u8]) {
    finish_frame_around(frame, 0);
}

/// [`finish_frame`] for a frame of which `outside` bytes (a bulk payload) are written from
/// another buffer, in their place, rather than copied into `frame`: the length counts them too.
pub(crate) fn finish_frame_around(frame: &mut [u8], outside: usize) {
    let len = (frame.len().saturating_sub(FRAME_HEADER_LEN) + outside) as u32;
    if let Some(header) = frame.get_mut(..FRAME_HEADER_LEN) {
        header.copy_from_slice(&len.to_be_bytes());
    }
}

/// The start of a frame that carries a sealed record: room for the length, then the envelope
/// header — after which the channel appends the record, sealing its message in the frame
/// itself (`Channel::seal_value_framed`); [`finish_frame`] then writes the length. The bytes
/// are those [`encode_request`] or [`encode_response`] would write before the record.
pub struct FramePrefix {
    bytes: [u8; FRAME_HEADER_LEN + ENVELOPE_HEADER_LEN],
}

impl AsRef<[u8]> for FramePrefix {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The start of a frame carrying the sealed record of request `id` (or of its reply) on
/// `channel`: requests and replies alike, the record's own header saying which way it goes.
pub fn protected_prefix(id: u64, channel: u64) -> FramePrefix {
    let mut bytes = [0u8; FRAME_HEADER_LEN + ENVELOPE_HEADER_LEN];
    let header = EnvelopeHeader {
        kind: SEALED,
        id,
        channel: Some(channel),
    };
    bytes[FRAME_HEADER_LEN..].copy_from_slice(&header.to_bytes());
    FramePrefix { bytes }
}

/// A frame with room for the length, the envelope header, then `body` written by `write`
/// into a buffer sized first (pooled when large, see `tessera_core::bytes::take`): a large body
/// is neither copied a second time nor grown by doubling.
fn frame(header: EnvelopeHeader, size: usize, write: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut out = tessera_core::bytes::take(FRAME_HEADER_LEN + ENVELOPE_HEADER_LEN + size);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out.extend_from_slice(&header.to_bytes());
    let mut out = write(out);
    finish_frame(&mut out);
    out
}

fn clear_frame<T: serde::Serialize>(id: u64, channel: Option<u64>, value: &T) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    let header = EnvelopeHeader {
        kind: CLEAR,
        id,
        channel,
    };
    frame(header, size, |out| {
        tessera_core::bytes::encode_into(value, out).expect(ENCODES)
    })
}

fn sealed_frame(id: u64, channel: Option<u64>, record: &Record) -> Vec<u8> {
    let header = EnvelopeHeader {
        kind: SEALED,
        id,
        // A record is only ever sent on a channel; one built without (a test's) names the
        // channel of its own header.
        channel: Some(channel.unwrap_or(record.header.channel)),
    };
    frame(header, record.encoded_len(), |mut out| {
        record.encode_into(&mut out);
        out
    })
}

/// Encodes a request envelope as a complete frame (header included).
pub fn encode_request(envelope: &RequestEnvelope) -> Vec<u8> {
    match &envelope.message {
        Message::Protected(record) => sealed_frame(envelope.id, envelope.channel, record),
        message => clear_frame(envelope.id, envelope.channel, message),
    }
}

/// Encodes a response envelope as a complete frame (header included).
pub fn encode_response(envelope: &ResponseEnvelope) -> Vec<u8> {
    match &envelope.result {
        Ok(Response::Protected(record)) => sealed_frame(envelope.id, envelope.channel, record),
        result => clear_frame(envelope.id, envelope.channel, result),
    }
}

/// Payloads at least this large end a reply frame written in two parts
/// ([`encode_response_split`]).
pub const SPLIT_PAYLOAD: usize = 64 * 1024;

/// [`encode_response`] in two parts when the reply is in the clear and ends with a large
/// payload (`Reply::Bytes` of at least [`SPLIT_PAYLOAD`] bytes: a bulk ciphertext; or a
/// `Reply::Secret` as large: a bulk decryption's plaintext, moved out of its secret without a
/// copy, which the caller must wipe once written): the frame up to the payload, whose length
/// prefix counts the payload too, and the payload itself, to be written behind it rather than
/// copied into it. Written one after the other they are byte for byte what `encode_response`
/// writes. Any other reply: the whole frame, and no payload.
pub fn encode_response_split(mut envelope: ResponseEnvelope) -> (Vec<u8>, Vec<u8>) {
    let payload = match &mut envelope.result {
        Ok(Response::Reply(Reply::Bytes(data))) if data.len() >= SPLIT_PAYLOAD => {
            std::mem::take(data)
        }
        Ok(Response::Reply(Reply::Secret(secret))) if secret.len() >= SPLIT_PAYLOAD => {
            secret.take_bytes()
        }
        _ => return (encode_response(&envelope), Vec::new()),
    };
    let mut head = encode_response(&envelope);
    // The empty byte string ends the encoding: its length, a varint 0, is the frame's last
    // byte. It becomes the payload's length, and the length prefix counts the payload.
    if head.last() != Some(&0) {
        match &mut envelope.result {
            Ok(Response::Reply(Reply::Bytes(data))) => *data = payload,
            Ok(Response::Reply(Reply::Secret(secret))) => {
                *secret = tessera_core::SecretBytes::unlocked_from(payload)
            }
            _ => {}
        }
        return (encode_response(&envelope), Vec::new());
    }
    head.pop();
    let mut head = tessera_core::bytes::encode_into(&(payload.len() as u64), head).expect(ENCODES);
    finish_frame_around(&mut head, payload.len());
    (head, payload)
}

/// A request's bulk input, left out of its frame's buffer ([`encode_request_split`]): written
/// at `at` of it, between the bytes before and after (a vectored write), never copied into it.
#[derive(Debug)]
pub struct Bulk {
    /// Where the payload goes in the frame.
    pub at: usize,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A postcard output that leaves out one byte string — the one at `expected`'s address, of its
/// length — and remembers where it went.
struct Holed {
    out: Vec<u8>,
    expected: (usize, usize),
    at: Option<usize>,
}

impl postcard::ser_flavors::Flavor for Holed {
    type Output = Holed;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // The very field by its address, not any string of its length (a GCM AAD may have it).
        if self.at.is_none() && (data.as_ptr() as usize, data.len()) == self.expected {
            self.at = Some(self.out.len());
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Holed> {
        Ok(self)
    }
}

/// Encodes a request envelope as a complete frame, as [`encode_request`] does, but a call's
/// bulk input of [`SPLIT_PAYLOAD`] bytes or more is moved out of the call into [`Bulk`] rather
/// than copied into the frame: the frame is `frame[..at]`, the payload, `frame[at..]` (its
/// length counts the payload). Anything else is one buffer, as [`encode_request`] makes it.
pub fn encode_request_split(envelope: &mut RequestEnvelope) -> (Vec<u8>, Option<Bulk>) {
    let expected = match &mut envelope.message {
        Message::Call(call) => call
            .bulk_mut()
            .filter(|data| data.len() >= SPLIT_PAYLOAD)
            .map(|data| (data.as_ptr() as usize, data.len())),
        _ => None,
    };
    let Some(expected) = expected else {
        return (encode_request(envelope), None);
    };
    let header = EnvelopeHeader {
        kind: CLEAR,
        id: envelope.id,
        channel: envelope.channel,
    };
    let mut at = None;
    // The call's fields but its data: a few dozen bytes.
    let mut head = frame(header, 64, |out| {
        let holed = Holed {
            out,
            expected,
            at: None,
        };
        let holed = postcard::serialize_with_flavor(&envelope.message, holed).expect(ENCODES);
        at = holed.at;
        holed.out
    });
    let (Some(at), Message::Call(call)) = (at, &mut envelope.message) else {
        return (encode_request(envelope), None);
    };
    let Some(payload) = call.bulk_mut().map(std::mem::take) else {
        return (encode_request(envelope), None);
    };
    finish_frame_around(&mut head, payload.len());
    (head, Some(Bulk { at, payload }))
}

/// The encodings of `Ok(Response::Reply(Reply::Bytes(..)))` and of `Reply::Secret` (a
/// decryption's plaintext) before the bytes' length: what follows the envelope header in the
/// body of a bulk reply. Encoded once, when first needed.
fn bulk_reply_tags() -> &'static [Vec<u8>; 2] {
    static TAGS: std::sync::LazyLock<[Vec<u8>; 2]> = std::sync::LazyLock::new(|| {
        let tags = |reply: Reply| {
            let empty: Result<Response, u64> = Ok(Response::Reply(reply));
            let mut tags = postcard::to_allocvec(&empty).expect(ENCODES);
            // The empty byte string's length, a varint 0, ends it.
            tags.pop();
            tags
        };
        [
            tags(Reply::Bytes(Vec::new())),
            tags(Reply::Secret(tessera_core::SecretBytes::unlocked())),
        ]
    });
    &TAGS
}

/// The tags of a bulk reply that `rest` (a body after its envelope header) starts with, and
/// what follows them.
fn strip_reply_tags(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    bulk_reply_tags()
        .iter()
        .find_map(|tags| Some((&tags[..], rest.strip_prefix(&tags[..])?)))
}

/// Where a response body written in two parts by [`encode_response_split`] divides, for a
/// reader that takes the payload into a buffer of its own ([`decode_response_split`]): given
/// the body's length and its first bytes (as many as have arrived), the length of its head —
/// the envelope header, the tags of a `Reply::Bytes` or a `Reply::Secret` and the bytes'
/// length, which must account for the rest of the body. `None` for any other body, or when too
/// few bytes have arrived to tell.
pub fn split_response_head(start: &[u8], body_len: usize) -> Option<usize> {
    let (header, rest) = EnvelopeHeader::read(start).ok()?;
    if header.kind != CLEAR {
        return None;
    }
    let (_, after_tags) = strip_reply_tags(rest)?;
    // Read as the decoder reads a byte string's length (a `usize` varint).
    let (payload_len, after_len) = postcard::take_from_bytes::<usize>(after_tags).ok()?;
    let head_len = start.len() - after_len.len();
    let whole = head_len.checked_add(payload_len)?;
    (whole == body_len).then_some(head_len)
}

/// The response whose body is `head` (as [`split_response_head`] found it) and then `payload`,
/// read into a buffer of its own: the payload becomes the reply's bytes (or its secret) as it
/// is, without the copy a decode of the whole body makes. The head is read by
/// [`decode_response`], as the body of the same reply with no bytes: one decoder for both.
pub fn decode_response_split(
    head: &[u8],
    payload: Vec<u8>,
) -> Result<ResponseEnvelope, FrameError> {
    let envelope = reply_without_payload(head, payload.len());
    with_payload(
        envelope,
        payload,
        "not the head of a bulk reply",
        |envelope, payload| match &mut envelope.result {
            Ok(Response::Reply(reply)) => crate::protected::put_reply(reply, payload),
            _ => Err(payload),
        },
    )
}

/// `envelope`, decoded from a body with its payload left out, with `payload` put in its place
/// by `put`; when it did not decode, or has no place for it, the payload (which may be a
/// decryption's plaintext, or bytes that did not decode) is wiped before it goes.
fn with_payload<E>(
    envelope: Result<E, FrameError>,
    payload: Vec<u8>,
    not_a_head: &'static str,
    put: impl FnOnce(&mut E, Vec<u8>) -> Result<(), Vec<u8>>,
) -> Result<E, FrameError> {
    let mut envelope = match envelope {
        Ok(envelope) => envelope,
        Err(e) => {
            tessera_core::bytes::give(payload, tessera_core::bytes::Held::Secret);
            return Err(e);
        }
    };
    match put(&mut envelope, payload) {
        Ok(()) => Ok(envelope),
        Err(payload) => {
            tessera_core::bytes::give(payload, tessera_core::bytes::Held::Secret);
            Err(FrameError::Header(not_a_head))
        }
    }
}

/// The reply whose head is `head` and whose payload, of `len` bytes, is left out: decoded as
/// the body of the same reply with no bytes.
fn reply_without_payload(head: &[u8], len: usize) -> Result<ResponseEnvelope, FrameError> {
    let not_a_head = FrameError::Header("not the head of a bulk reply");
    if split_response_head(head, head.len() + len) != Some(head.len()) {
        return Err(not_a_head);
    }
    let (tags, _) = strip_reply_tags(&head[ENVELOPE_HEADER_LEN..]).ok_or(not_a_head)?;
    let mut empty = head[..ENVELOPE_HEADER_LEN + tags.len()].to_vec();
    empty.push(0);
    decode_response(&empty)
}

/// The calls whose data a reader takes into a buffer of its own, by the fields before it.
#[derive(Clone, Copy)]
enum BulkCall {
    /// `OperationSingle`: session, operation, data, signature.
    Single,
    /// `OperationUpdate`: session, operation, data.
    Update,
    /// `OperationOnce`: session, operation, mechanism, key, data, signature.
    Once,
}

/// The tags that start the encoding of a clear request `Message::Call(Call::OperationSingle
/// ..)`, `OperationUpdate` or `OperationOnce`: what follows the envelope header, before the
/// session. Encoded once, when first needed.
fn bulk_request_tags() -> &'static [(Vec<u8>, BulkCall); 3] {
    static TAGS: std::sync::LazyLock<[(Vec<u8>, BulkCall); 3]> = std::sync::LazyLock::new(|| {
        use crate::{Call, Operation};
        let operation = Operation::Encrypt;
        let mechanism = tessera_core::Mechanism {
            ty: 0,
            parameter: tessera_core::MechanismParameter::None,
        };
        // What follows the tags of a call with session 0 and empty byte strings: the session
        // (1), the operation, the mechanism and key (1), the data's length (1) and the
        // signature's (1).
        let length = |bytes: Vec<u8>| bytes.len();
        let op = length(postcard::to_allocvec(&operation).expect(ENCODES));
        let mech = length(postcard::to_allocvec(&mechanism).expect(ENCODES));
        let tags = |call: Call, after: usize| {
            let mut tags = postcard::to_allocvec(&Message::Call(call)).expect(ENCODES);
            tags.truncate(tags.len() - after);
            tags
        };
        [
            (
                tags(
                    Call::OperationSingle {
                        session: 0,
                        operation,
                        data: Vec::new(),
                        signature: Vec::new(),
                    },
                    op + 3,
                ),
                BulkCall::Single,
            ),
            (
                tags(
                    Call::OperationUpdate {
                        session: 0,
                        operation,
                        data: Vec::new(),
                    },
                    op + 2,
                ),
                BulkCall::Update,
            ),
            (
                tags(
                    Call::OperationOnce {
                        session: 0,
                        operation,
                        mechanism,
                        key: 0,
                        data: Vec::new(),
                        signature: Vec::new(),
                    },
                    op + mech + 4,
                ),
                BulkCall::Once,
            ),
        ]
    });
    &TAGS
}

/// Bytes a reader of a large clear request takes first, to find where its data starts
/// ([`split_request_head`]): the envelope header and the fields before the data, with a
/// mechanism's parameters (a GCM IV and a short AAD) in `OperationOnce`.
pub const REQUEST_HEAD_LEN: usize = 256;

/// Where a clear request's body divides for a reader that takes its bulk input into a buffer
/// of its own ([`decode_request_split`]), from its first bytes (as many as have arrived) and
/// its length: the head — the envelope header, the tags of an `OperationSingle`,
/// `OperationUpdate` or `OperationOnce`, the fields before the data (session, operation, and
/// for the last the mechanism and key) and the data's length, where the data starts — and the
/// data's length, [`SPLIT_PAYLOAD`] bytes or more, which must fit in the body (what follows it,
/// a signature's length and bytes, is the tail). `None` for any other body, or when too few
/// bytes have arrived to tell.
pub fn split_request_head(start: &[u8], body_len: usize) -> Option<(usize, usize)> {
    let (header, rest) = EnvelopeHeader::read(start).ok()?;
    if header.kind != CLEAR {
        return None;
    }
    let (after, call) = bulk_request_tags()
        .iter()
        .find_map(|(tags, call)| Some((rest.strip_prefix(&tags[..])?, *call)))?;
    let (_, after) = postcard::take_from_bytes::<u64>(after).ok()?;
    let (_, mut after) = postcard::take_from_bytes::<crate::Operation>(after).ok()?;
    if let BulkCall::Once = call {
        let (_, rest) = postcard::take_from_bytes::<tessera_core::Mechanism>(after).ok()?;
        let (_, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
        after = rest;
    }
    let (data_len, rest) = postcard::take_from_bytes::<usize>(after).ok()?;
    // The length as the encoder writes it (the decoder also takes an overlong varint, which
    // the reader, cutting the canonical length off the head, would misread): else read whole.
    let written = postcard::to_allocvec(&data_len).ok()?.len();
    if after.len() - rest.len() != written {
        return None;
    }
    let after = rest;
    let head_len = start.len() - after.len();
    let end = head_len.checked_add(data_len)?;
    // An update's data ends the body; the others' is followed by a signature.
    let fits = match call {
        BulkCall::Update => end == body_len,
        BulkCall::Single | BulkCall::Once => end < body_len,
    };
    (data_len >= SPLIT_PAYLOAD && fits).then_some((head_len, data_len))
}

/// The request whose body is `head` (as [`split_request_head`] found it), then `payload` read
/// into a buffer of its own, then `tail`: the payload becomes the call's data as it is,
/// without the copy a decode of the whole body makes. The rest is read by [`decode_request`],
/// as the body of the same call with no data: one decoder for both.
pub fn decode_request_split(
    head: &[u8],
    payload: Vec<u8>,
    tail: &[u8],
) -> Result<RequestEnvelope, FrameError> {
    let envelope = request_without_data(head, payload.len(), tail);
    with_payload(
        envelope,
        payload,
        "not the head of a bulk request",
        |envelope, payload| match &mut envelope.message {
            Message::Call(call) => crate::protected::put_call(call, payload),
            _ => Err(payload),
        },
    )
}

/// The request whose head is `head` and tail `tail`, its data of `len` bytes left out: decoded
/// as the body of the same call with no data.
fn request_without_data(
    head: &[u8],
    len: usize,
    tail: &[u8],
) -> Result<RequestEnvelope, FrameError> {
    let whole = head.len() + len + tail.len();
    if split_request_head(head, whole) != Some((head.len(), len)) {
        return Err(FrameError::Header("not the head of a bulk request"));
    }
    // The data's length, the head's last bytes (as the encoder writes it: the head says so),
    // becomes a varint 0.
    let length = postcard::to_allocvec(&len).expect(ENCODES).len();
    let mut empty = head[..head.len() - length].to_vec();
    empty.push(0);
    empty.extend_from_slice(tail);
    decode_request(&empty)
}

/// A frame body that carries a sealed record, found where it lies: the envelope's id and
/// channel, the record's header, and where its body and MAC are in the frame body — so that
/// the channel opens the record there (`Channel::open_in_place`), without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFrame {
    /// The request's id.
    pub id: u64,
    /// The channel the envelope names.
    pub channel: u64,
    /// The record's header.
    pub header: RecordHeader,
    /// The record's body, as a range of the frame body.
    pub body: std::ops::Range<usize>,
    /// The record's MAC, as a range of the frame body.
    pub mac: std::ops::Range<usize>,
}

impl SealedFrame {
    /// The record's body (to open where it lies) and its MAC, in `frame`, the frame body it
    /// was found in; `None` if `frame` is too short for them (another frame).
    pub fn parts<'a>(&self, frame: &'a mut [u8]) -> Option<(&'a mut [u8], &'a [u8])> {
        // The MAC follows the body.
        let (front, back) = frame.split_at_mut_checked(self.mac.start)?;
        Some((
            front.get_mut(self.body.clone())?,
            back.get(..self.mac.len())?,
        ))
    }
}

/// Finds the sealed record in a request or response frame body: `None` unless the body is an
/// envelope of this protocol version whose body is a sealed record (which is then read exactly
/// as [`decode_request`] and [`decode_response`] read it: one path).
pub fn find_sealed(frame: &[u8]) -> Option<SealedFrame> {
    let (header, rest) = EnvelopeHeader::read(frame).ok()?;
    if header.kind != SEALED {
        return None;
    }
    let found = tessera_channel::find_record(rest)?;
    let at = ENVELOPE_HEADER_LEN;
    Some(SealedFrame {
        id: header.id,
        channel: header.channel?,
        header: found.header,
        body: found.body.start + at..found.body.end + at,
        mac: found.mac.start + at..found.mac.end + at,
    })
}

/// Bytes at the start of a sealed frame's body before its record's body: the envelope header
/// and the record's header. A reader that has them knows whether a large body is a sealed
/// record ([`find_sealed_start`]) before it reads the rest.
pub const SEALED_START_LEN: usize = ENVELOPE_HEADER_LEN + tessera_channel::RECORD_HEADER_LEN;

/// [`find_sealed`] for a body of `body_len` bytes of which `start` holds the first
/// [`SEALED_START_LEN`]: the record found, with its body and MAC as ranges of the rest of the
/// frame body (what follows those bytes), for a reader that reads the rest into a buffer of
/// its own — where the record is then opened, its message starting the buffer.
pub fn find_sealed_start(start: &[u8], body_len: usize) -> Option<SealedFrame> {
    let (header, rest) = EnvelopeHeader::read(start.get(..SEALED_START_LEN)?).ok()?;
    if header.kind != SEALED {
        return None;
    }
    let record_len = body_len.checked_sub(ENVELOPE_HEADER_LEN)?;
    let found = tessera_channel::find_record_of(rest, record_len)?;
    let at = tessera_channel::RECORD_HEADER_LEN;
    Some(SealedFrame {
        id: header.id,
        channel: header.channel?,
        header: found.header,
        body: found.body.start - at..found.body.end - at,
        mac: found.mac.start - at..found.mac.end - at,
    })
}

/// Whether what [`find_sealed`] finds in `body` is what the full decoders read: a record found in
/// it is the one [`decode_request`] and [`decode_response`] read, with the same id, channel,
/// header, body and MAC; a body the decoders read as a sealed record is one it finds.
/// The invariant the property tests and the `frames` fuzz target check on any bytes.
pub fn finders_agree_with_decoders(body: &[u8]) -> bool {
    let request = decode_request(body).ok().and_then(|e| match e.message {
        Message::Protected(record) => e.channel.map(|channel| (e.id, channel, record)),
        _ => None,
    });
    let response = decode_response(body).ok().and_then(|e| match e.result {
        Ok(Response::Protected(record)) => e.channel.map(|channel| (e.id, channel, record)),
        _ => None,
    });
    let agrees =
        |found: Option<SealedFrame>, decoded: Option<(u64, u64, Record)>| match (found, decoded) {
            (None, None) => true,
            (Some(found), Some((id, channel, record))) => {
                (found.id, found.channel, found.header) == (id, channel, record.header)
                    && body.get(found.body) == Some(&record.body[..])
                    && body.get(found.mac) == Some(&record.mac[..])
            }
            _ => false,
        };
    let found = find_sealed(body);
    // Found from its first bytes alone, as a reader finds it before it reads the rest, it is
    // the same record, its parts where they lie after those bytes.
    let start = &body[..body.len().min(SEALED_START_LEN)];
    let from_start = find_sealed_start(start, body.len()).map(|mut sealed| {
        let at = SEALED_START_LEN;
        sealed.body = sealed.body.start + at..sealed.body.end + at;
        sealed.mac = sealed.mac.start + at..sealed.mac.end + at;
        sealed
    });
    from_start == found
        && agrees(found.clone(), request)
        && agrees(found, response)
        && splits_agree(body)
        && request_splits_agree(body)
}

/// Whether a body that [`split_request_head`] divides (from its first [`REQUEST_HEAD_LEN`]
/// bytes, as the daemon's reader finds it) is, read in three parts, the request that
/// [`decode_request`] reads whole — the same request, once encoded again — or refused by both.
fn request_splits_agree(body: &[u8]) -> bool {
    let start = &body[..body.len().min(REQUEST_HEAD_LEN)];
    let Some((at, len)) = split_request_head(start, body.len()) else {
        return true;
    };
    let (head, rest) = body.split_at(at);
    let (payload, tail) = rest.split_at(len);
    match (
        decode_request_split(head, payload.to_vec(), tail),
        decode_request(body),
    ) {
        // The same request (compared encoded: a body may write its numbers overlong).
        (Ok(split), Ok(whole)) => encode_request(&split) == encode_request(&whole),
        // Refused both ways (a head can say nothing of the signature after the data).
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

/// Whether a body that [`split_response_head`] divides is, read in two parts, the reply that
/// [`decode_response`] reads whole (same id, channel and bytes); one it does not divide is
/// read whole anyway.
fn splits_agree(body: &[u8]) -> bool {
    let Some(head_len) = split_response_head(body, body.len()) else {
        return true;
    };
    let (head, payload) = body.split_at(head_len);
    match (
        decode_response_split(head, payload.to_vec()),
        decode_response(body),
    ) {
        (Ok(split), Ok(whole)) => {
            (split.id, split.channel) == (whole.id, whole.channel)
                && match (split.result, whole.result) {
                    (
                        Ok(Response::Reply(Reply::Bytes(a))),
                        Ok(Response::Reply(Reply::Bytes(b))),
                    ) => a == b && a == payload,
                    (
                        Ok(Response::Reply(Reply::Secret(a))),
                        Ok(Response::Reply(Reply::Secret(b))),
                    ) => a.expose() == b.expose() && a.expose() == payload,
                    _ => false,
                }
        }
        _ => false,
    }
}

/// Reads a clear body: exactly one `T`, nothing after it.
fn clear<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Reads a sealed body: exactly one record.
fn sealed(body: &[u8]) -> Result<Record, FrameError> {
    Record::decode(body).ok_or(FrameError::Header("a malformed sealed record"))
}

/// Decodes a frame body into a request envelope.
pub fn decode_request(body: &[u8]) -> Result<RequestEnvelope, FrameError> {
    let (header, rest) = EnvelopeHeader::read(body)?;
    let message = match header.kind {
        SEALED => Message::Protected(sealed(rest)?),
        _ => clear(rest)?,
    };
    Ok(RequestEnvelope {
        version: PROTOCOL_VERSION,
        id: header.id,
        channel: header.channel,
        message,
    })
}

/// A response's result in the clear, refusing `Err(0)` (see [`ResponseEnvelope::result`]).
#[derive(serde::Deserialize)]
struct ClearResult(#[serde(deserialize_with = "crate::nonzero_error")] Result<Response, u64>);

/// Decodes a frame body into a response envelope.
pub fn decode_response(body: &[u8]) -> Result<ResponseEnvelope, FrameError> {
    let (header, rest) = EnvelopeHeader::read(body)?;
    let result = match header.kind {
        SEALED => Ok(Response::Protected(sealed(rest)?)),
        _ => clear::<ClearResult>(rest)?.0,
    };
    Ok(ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id: header.id,
        channel: header.channel,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Call, Message, Reply, Response};
    use proptest::prelude::*;

    fn envelope(call: Call) -> RequestEnvelope {
        RequestEnvelope {
            version: PROTOCOL_VERSION,
            id: 7,
            channel: None,
            message: Message::Call(call),
        }
    }

    /// A request's bulk input left out of its frame is the frame [`encode_request`] makes, once
    /// written in its place; the call keeps nothing of it; a GCM AAD of the data's length (a
    /// sequence in the encoding), or a smaller input, stays in the frame.
    #[test]
    fn a_split_request_is_the_whole_frame_in_three_parts() {
        use crate::call::Operation;
        use tessera_core::{Mechanism, MechanismParameter};
        let data = |len: usize| (0..len).map(|i| (i % 249) as u8).collect::<Vec<u8>>();
        let calls = |len: usize| {
            [
                Call::OperationSingle {
                    session: 1,
                    operation: Operation::Encrypt,
                    data: data(len),
                    signature: vec![9; 3],
                },
                Call::OperationUpdate {
                    session: 2,
                    operation: Operation::Digest,
                    data: data(len),
                },
                Call::OperationOnce {
                    session: 3,
                    operation: Operation::Encrypt,
                    mechanism: Mechanism {
                        ty: 0x1087,
                        // As long as the data, and before it in the encoding.
                        parameter: MechanismParameter::Gcm {
                            iv: vec![1; 12],
                            aad: data(len).into_iter().rev().collect(),
                            tag_bits: 128,
                        },
                    },
                    key: 4,
                    data: data(len),
                    signature: Vec::new(),
                },
            ]
        };
        for len in [0, SPLIT_PAYLOAD - 1, SPLIT_PAYLOAD, (1 << 20) + 3] {
            for (call, original) in calls(len).into_iter().zip(calls(len)) {
                let whole = encode_request(&envelope(original));
                let mut split = envelope(call);
                let (frame, bulk) = encode_request_split(&mut split);
                let Some(bulk) = bulk else {
                    assert!(len < SPLIT_PAYLOAD, "{len}: not split");
                    assert_eq!(frame, whole);
                    continue;
                };
                assert!(len >= SPLIT_PAYLOAD, "{len}: split below the threshold");
                assert_eq!(bulk.payload, data(len));
                // Nothing of the data is left in the frame (the AAD is).
                let aad = match &split.message {
                    Message::Call(Call::OperationOnce { .. }) => len,
                    _ => 0,
                };
                assert!(frame.len() < 64 + aad, "{len}: {} bytes", frame.len());
                let written = [&frame[..bulk.at], &bulk.payload[..], &frame[bulk.at..]].concat();
                assert_eq!(written, whole, "{len} bytes");
                let Message::Call(mut call) = split.message else {
                    panic!("not a call")
                };
                assert_eq!(call.bulk_mut().map(|d| d.len()), Some(0));
            }
        }
    }

    /// The string left out is the field itself, found by its address: another byte string of
    /// its length before it (no call has one today) stays in the output.
    #[test]
    fn the_payload_left_out_is_the_field_itself() {
        #[derive(serde::Serialize)]
        struct Two {
            #[serde(with = "tessera_core::bytes")]
            first: Vec<u8>,
            #[serde(with = "tessera_core::bytes")]
            second: Vec<u8>,
        }
        let two = Two {
            first: vec![1; 100],
            second: vec![2; 100],
        };
        let holed = Holed {
            out: Vec::new(),
            expected: (two.second.as_ptr() as usize, two.second.len()),
            at: None,
        };
        let holed = postcard::serialize_with_flavor(&two, holed).expect("encoded");
        // The first string with its length, then the second's length; the second left out.
        assert_eq!(holed.at, Some(102));
        assert_eq!(holed.out.len(), 102);
        assert_eq!(&holed.out[1..101], &[1; 100][..]);
    }

    #[test]
    fn a_secret_reply_splits_as_a_ciphertext_does() {
        let reply = |len: usize| ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 78,
            channel: None,
            result: Ok(Response::Reply(Reply::Secret(
                tessera_core::SecretBytes::from_slice(
                    &(0..len).map(|i| (i % 249) as u8).collect::<Vec<u8>>(),
                ),
            ))),
        };
        let lengths = [0, 100, SPLIT_PAYLOAD - 1, SPLIT_PAYLOAD, (1 << 20) + 16];
        splits_into_the_whole_frame(reply, &lengths);
        // The library's reader divides it as it divides a ciphertext: the plaintext read into a
        // buffer of its own becomes the reply's secret.
        for len in lengths {
            let whole = encode_response(&reply(len));
            let body = &whole[FRAME_HEADER_LEN..];
            let head =
                split_response_head(&body[..64.min(body.len())], body.len()).expect("divided");
            let split = decode_response_split(&body[..head], body[head..].to_vec()).unwrap();
            match split.result {
                Ok(Response::Reply(Reply::Secret(secret))) => {
                    assert_eq!(secret.expose(), &body[head..])
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// The reply `reply(len)` makes, for each of `lengths`, is split from [`SPLIT_PAYLOAD`]
    /// bytes on into a short head and its payload, which together are the whole frame.
    fn splits_into_the_whole_frame(reply: impl Fn(usize) -> ResponseEnvelope, lengths: &[usize]) {
        for &len in lengths {
            let whole = encode_response(&reply(len));
            let (head, payload) = encode_response_split(reply(len));
            if len >= SPLIT_PAYLOAD {
                assert_eq!(payload.len(), len);
                assert!(head.len() < 64, "{len}: the head is {} bytes", head.len());
            } else {
                assert!(payload.is_empty(), "{len}: split below the threshold");
            }
            assert_eq!([head, payload].concat(), whole, "{len} bytes");
        }
    }

    #[test]
    fn a_split_reply_is_the_whole_frame_in_two_parts() {
        let reply = |len: usize| ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 77,
            channel: None,
            result: Ok(Response::Reply(Reply::Bytes(
                (0..len).map(|i| (i % 251) as u8).collect(),
            ))),
        };
        splits_into_the_whole_frame(
            reply,
            &[
                0,
                100,
                SPLIT_PAYLOAD - 1,
                SPLIT_PAYLOAD,
                SPLIT_PAYLOAD + 1,
                (1 << 20) + 16,
                2_097_153,
            ],
        );
        // A reader divides it where the writer did, from the head alone, and reads the same
        // reply as from the whole body.
        for len in [0, 100, SPLIT_PAYLOAD, (1 << 20) + 16] {
            let whole = encode_response(&reply(len));
            let body = &whole[FRAME_HEADER_LEN..];
            let (head, _) = encode_response_split(reply(len));
            let head_len = split_response_head(&body[..64.min(body.len())], body.len());
            if len >= SPLIT_PAYLOAD {
                assert_eq!(head_len, Some(head.len() - FRAME_HEADER_LEN), "{len} bytes");
            }
            let head_len = head_len.expect("a bulk reply's head");
            assert_eq!(
                split_response_head(&body[..head_len], body.len()),
                Some(head_len)
            );
            // Too few bytes to tell, or a body of another length: not divided.
            assert_eq!(split_response_head(&body[..head_len - 1], body.len()), None);
            assert_eq!(split_response_head(body, body.len() + 1), None);
            let split = decode_response_split(&body[..head_len], body[head_len..].to_vec())
                .expect("the reply");
            assert_eq!(split.id, 77);
            assert!(
                matches!(split.result, Ok(Response::Reply(Reply::Bytes(ref b))) if b[..] == body[head_len..]),
                "{len} bytes"
            );
            assert!(splits_agree(body));
            // A payload of another length than the head says is refused.
            assert!(decode_response_split(&body[..head_len], vec![0; len + 1]).is_err());
        }
        // Anything but a large `Reply::Bytes` is one part.
        let done = || ResponseEnvelope {
            result: Ok(Response::Reply(Reply::Done)),
            ..reply(0)
        };
        assert_eq!(
            encode_response_split(done()),
            (encode_response(&done()), Vec::new())
        );
        // Nor is it divided by a reader: a large sealed record (opened where it lies) above all.
        let sealed = encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 77,
            channel: Some(3),
            result: Ok(Response::Protected(record(
                1,
                true,
                vec![0; SPLIT_PAYLOAD * 2],
                Vec::new(),
            ))),
        });
        let body = &sealed[FRAME_HEADER_LEN..];
        assert!(find_sealed(body).is_some());
        assert_eq!(split_response_head(body, body.len()), None);
        for other in [
            Ok(Response::Reply(Reply::Done)),
            Ok(Response::Reply(Reply::Handles(vec![5; 100]))),
            Err(0x101),
        ] {
            let whole = encode_response(&ResponseEnvelope {
                result: other,
                ..reply(0)
            });
            let body = &whole[FRAME_HEADER_LEN..];
            assert_eq!(split_response_head(body, body.len()), None);
        }
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let frame = encode_request(&envelope(Call::GenerateRandom {
            session: 3,
            len: 32,
        }));
        let body = read_frame(&mut frame.as_slice()).unwrap();
        let decoded = decode_request(&body).unwrap();
        assert_eq!(decoded.id, 7);
        assert!(matches!(
            decoded.message,
            Message::Call(Call::GenerateRandom {
                session: 3,
                len: 32
            })
        ));
    }

    #[test]
    fn oversized_empty_wrong_version_and_trailing_frames_are_refused() {
        let huge = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut huge.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut [0u8; 4].as_slice()),
            Err(FrameError::Empty)
        ));
        let frame = encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 1,
            channel: None,
            result: Ok(Response::Reply(Reply::Done)),
        });
        let mut body = frame[FRAME_HEADER_LEN..].to_vec();
        assert!(decode_response(&body).is_ok());
        body[..2].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Version(v)) if v == PROTOCOL_VERSION + 1
        ));
        body[..2].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        body.push(0);
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Trailing(1))
        ));
        assert!(matches!(
            decode_response(&body[..ENVELOPE_HEADER_LEN - 1]),
            Err(FrameError::Header(_))
        ));
    }

    /// The envelope header admits only what it defines: a body kind of 0 or 1, a channel flag
    /// of 0 or 1 (no channel id without it), and a sealed record only on a channel.
    #[test]
    fn an_envelope_header_admits_only_what_it_defines() {
        let sealed = record(3, true, vec![5; 20], Vec::new());
        let mut body = protected_prefix(1, 2).as_ref()[FRAME_HEADER_LEN..].to_vec();
        sealed.encode_into(&mut body);
        assert!(decode_request(&body).is_ok() && find_sealed(&body).is_some());
        for (at, value) in [(2, 2u8), (3, 2), (3, 0)] {
            let mut altered = body.clone();
            altered[at] = value;
            assert!(matches!(
                decode_request(&altered),
                Err(FrameError::Header(_))
            ));
            assert!(find_sealed(&altered).is_none());
        }
        // No channel, no sealed record: flag and id both cleared.
        let mut outside = body.clone();
        outside[3] = 0;
        outside[12..20].fill(0);
        assert!(matches!(
            decode_request(&outside),
            Err(FrameError::Header(_))
        ));
        // A call in the clear is never read as a record, nor a record as a call.
        let mut clear = body.clone();
        clear[2] = 0;
        assert!(find_sealed(&clear).is_none());
        assert!(!matches!(
            decode_request(&clear),
            Ok(RequestEnvelope {
                message: Message::Protected(_),
                ..
            })
        ));
    }

    fn record(
        sequence: u64,
        encrypted: bool,
        body: Vec<u8>,
        mac: Vec<u8>,
    ) -> tessera_channel::Record {
        tessera_channel::Record {
            header: tessera_channel::RecordHeader {
                channel: sequence.rotate_left(17),
                direction: tessera_channel::Direction::ToClient,
                sequence,
                generation: (sequence % 7) as u32,
                protection: if encrypted {
                    tessera_channel::Protection::Encrypted
                } else {
                    tessera_channel::Protection::Signed
                },
            },
            body,
            mac,
        }
    }

    /// A found record's parts are its body and MAC in the frame it was found in; a shorter
    /// frame has none.
    #[test]
    fn a_found_record_s_parts_lie_in_its_frame() {
        let sealed = record(2, false, vec![7; 40], vec![9; 16]);
        let mut body = protected_prefix(1, 2).as_ref()[FRAME_HEADER_LEN..].to_vec();
        sealed.encode_into(&mut body);
        let found = find_sealed(&body).unwrap();
        let (record_body, mac) = found.parts(&mut body).unwrap();
        assert_eq!((&*record_body, mac), (&sealed.body[..], &sealed.mac[..]));
        let short = body.len() - 1;
        assert!(found.parts(&mut body[..short]).is_none());
        assert!(found.parts(&mut []).is_none());
    }

    proptest! {
        /// A frame built from a prefix and a record's encoding (as the channel seals into a
        /// frame) is the frame the envelope's own encoding makes, and decodes to that record.
        #[test]
        fn a_prefixed_record_is_the_envelope_encoding(
            id in any::<u64>(),
            channel in any::<u64>(),
            sequence in any::<u64>(),
            encrypted in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            // As the channel makes them: an encrypted body holds its tag, a signed record has
            // a MAC of 16 bytes.
            let (body, mac) = if encrypted {
                ([body, vec![0x7a; 16]].concat(), Vec::new())
            } else {
                (body, vec![0x3c; 16])
            };
            let sealed = record(sequence, encrypted, body, mac);
            let mut frame = protected_prefix(id, channel).as_ref().to_vec();
            sealed.encode_into(&mut frame);
            finish_frame(&mut frame);
            let whole = encode_request(&RequestEnvelope {
                version: PROTOCOL_VERSION,
                id,
                channel: Some(channel),
                message: Message::Protected(sealed.clone()),
            });
            prop_assert_eq!(&frame, &whole);
            let decoded = decode_request(&read_frame(&mut frame.as_slice()).unwrap()).unwrap();
            prop_assert!(matches!(decoded.message, Message::Protected(ref r) if *r == sealed));
            let body = &frame[FRAME_HEADER_LEN..];
            prop_assert!(find_sealed(body).is_some());
            prop_assert!(finders_agree_with_decoders(body));

            let mut frame = protected_prefix(id, channel).as_ref().to_vec();
            sealed.encode_into(&mut frame);
            finish_frame(&mut frame);
            let whole = encode_response(&ResponseEnvelope {
                version: PROTOCOL_VERSION,
                id,
                channel: Some(channel),
                result: Ok(Response::Protected(sealed.clone())),
            });
            prop_assert_eq!(&frame, &whole);
            let decoded = decode_response(&read_frame(&mut frame.as_slice()).unwrap()).unwrap();
            prop_assert!(matches!(decoded.result, Ok(Response::Protected(ref r)) if *r == sealed));
            let body = &frame[FRAME_HEADER_LEN..];
            prop_assert!(find_sealed(body).is_some());
            prop_assert!(finders_agree_with_decoders(body));
        }

        /// On any bytes — damaged sealed frames above all — a sealed record found is the one
        /// the full decoder reads (same id, channel, header, body and MAC). Not finding one is
        /// always safe: the caller then decodes the frame in full.
        #[test]
        fn finding_a_sealed_record_agrees_with_decoding(
            id in any::<u64>(),
            sequence in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..80),
            use_garbage in any::<bool>(),
        ) {
            let sealed = record(sequence, true, [body, vec![1; 16]].concat(), Vec::new());
            let mut frame = protected_prefix(id, 3).as_ref()[FRAME_HEADER_LEN..].to_vec();
            sealed.encode_into(&mut frame);
            for (at, byte) in &damage {
                let at = at % frame.len();
                frame[at] ^= byte;
            }
            if cut % 3 == 0 {
                frame.truncate(cut % (frame.len() + 1));
            }
            let frame = if use_garbage { garbage } else { frame };
            prop_assert!(finders_agree_with_decoders(&frame));
        }
    }

    proptest! {
        /// Damaged bulk replies: a head the reader divides is read as the whole body's decoder
        /// reads it; a head it does not divide is read whole.
        #[test]
        fn dividing_a_bulk_reply_agrees_with_decoding(
            id in any::<u64>(),
            channel in proptest::option::of(any::<u64>()),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            damage in proptest::collection::vec((0usize..40, any::<u8>()), 0..3),
            cut in 0usize..3,
        ) {
            let whole = encode_response(&ResponseEnvelope {
                version: PROTOCOL_VERSION,
                id,
                channel,
                result: Ok(Response::Reply(Reply::Bytes(payload))),
            });
            let mut body = whole[FRAME_HEADER_LEN..].to_vec();
            prop_assert!(split_response_head(&body, body.len()).is_some());
            prop_assert!(splits_agree(&body));
            for (at, byte) in &damage {
                let at = at % body.len();
                body[at] ^= byte;
            }
            body.truncate(body.len() - cut.min(body.len()));
            prop_assert!(finders_agree_with_decoders(&body));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Bulk requests in the clear, damaged or not: a head the daemon's reader divides (from
        /// the first bytes it reads) is read as the whole body's decoder reads it, data and
        /// signature; one it does not divide is read whole.
        #[test]
        fn dividing_a_bulk_request_agrees_with_decoding(
            id in any::<u64>(),
            session in any::<u64>(),
            operation in 0u8..5,
            kind in 0u8..3,
            aad in proptest::collection::vec(any::<u8>(), 0..100),
            extra in 0usize..40,
            signature in proptest::collection::vec(any::<u8>(), 0..300),
            damage in proptest::collection::vec((0usize..48, any::<u8>()), 0..3),
            cut in 0usize..3,
        ) {
            use crate::call::Operation;
            let operation = [
                Operation::Encrypt,
                Operation::Decrypt,
                Operation::Digest,
                Operation::Sign,
                Operation::Verify,
            ][operation as usize];
            let data: Vec<u8> = (0..SPLIT_PAYLOAD + extra).map(|i| (i % 247) as u8).collect();
            let single = kind != 1;
            let call = match kind {
                0 => Call::OperationSingle { session, operation, data, signature },
                1 => Call::OperationUpdate { session, operation, data },
                _ => Call::OperationOnce {
                    session,
                    operation,
                    mechanism: tessera_core::Mechanism {
                        ty: 0x1087,
                        parameter: tessera_core::MechanismParameter::Gcm {
                            iv: vec![3; 12],
                            aad,
                            tag_bits: 128,
                        },
                    },
                    key: session ^ 0x55,
                    data,
                    signature,
                },
            };
            let whole = encode_request(&RequestEnvelope {
                version: PROTOCOL_VERSION,
                id,
                channel: None,
                message: Message::Call(call),
            });
            let mut body = whole[FRAME_HEADER_LEN..].to_vec();
            let start = &body[..REQUEST_HEAD_LEN];
            let (at, len) = split_request_head(start, body.len()).expect("divided");
            prop_assert_eq!(len, SPLIT_PAYLOAD + extra);
            prop_assert!(request_splits_agree(&body));
            // A length that does not account for the body is no head: an update's data ends
            // it, a single call's is followed by at least its signature's length.
            match single {
                true => prop_assert_eq!(split_request_head(start, at + len), None),
                false => prop_assert_eq!(split_request_head(start, body.len() + 1), None),
            }
            prop_assert!(decode_request_split(&body[..at], vec![0; len + 1], &body[at + len..]).is_err());
            for (at, byte) in &damage {
                let at = at % body.len();
                body[at] ^= byte;
            }
            body.truncate(body.len() - cut.min(body.len()));
            prop_assert!(finders_agree_with_decoders(&body));
        }
    }

    /// Only an `OperationSingle`, `OperationUpdate` or `OperationOnce` of [`SPLIT_PAYLOAD`]
    /// bytes or more, whose head fits the bytes read first, is divided: a smaller input,
    /// another call with a large byte string, a head too long, a reply, are not.
    #[test]
    fn only_a_bulk_operation_request_is_divided() {
        use crate::call::Operation;
        let body = |call: Call| encode_request(&envelope(call))[FRAME_HEADER_LEN..].to_vec();
        let divided =
            |body: &[u8]| split_request_head(&body[..REQUEST_HEAD_LEN.min(body.len())], body.len());
        let small = body(Call::OperationSingle {
            session: 1,
            operation: Operation::Sign,
            data: vec![1; SPLIT_PAYLOAD - 1],
            signature: Vec::new(),
        });
        assert_eq!(divided(&small), None);
        let seed = body(Call::SeedRandom {
            session: 3,
            seed: tessera_core::SecretBytes::from_slice(&[2; SPLIT_PAYLOAD]),
        });
        assert_eq!(divided(&seed), None);
        // A GCM AAD as large as a payload, before the data: the head does not fit the bytes
        // read first, and the call is read whole.
        let aad = body(Call::OperationOnce {
            session: 3,
            operation: Operation::Encrypt,
            mechanism: tessera_core::Mechanism {
                ty: 0x1087,
                parameter: tessera_core::MechanismParameter::Gcm {
                    iv: vec![1; 12],
                    aad: vec![5; SPLIT_PAYLOAD],
                    tag_bits: 128,
                },
            },
            key: 4,
            data: vec![2; SPLIT_PAYLOAD],
            signature: Vec::new(),
        });
        assert_eq!(divided(&aad), None);
        let reply = encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 7,
            channel: None,
            result: Ok(Response::Reply(Reply::Bytes(vec![3; SPLIT_PAYLOAD]))),
        });
        assert_eq!(divided(&reply[FRAME_HEADER_LEN..]), None);
        let large = body(Call::OperationUpdate {
            session: 1,
            operation: Operation::Digest,
            data: vec![4; SPLIT_PAYLOAD],
        });
        let (at, len) = divided(&large).expect("divided");
        assert_eq!(len, SPLIT_PAYLOAD);
        assert_eq!(at + len, large.len());
        // The same call with its data's length written overlong (a varint of 65 536 in four
        // bytes instead of three): decoded whole, as the whole-body decoder takes it.
        let canonical = postcard::to_allocvec(&SPLIT_PAYLOAD).unwrap();
        assert_eq!(canonical, [0x80, 0x80, 0x04]);
        let mut overlong = large[..at - 3].to_vec();
        overlong.extend_from_slice(&[0x80, 0x80, 0x84, 0x00]);
        overlong.extend_from_slice(&large[at..]);
        assert!(decode_request(&overlong).is_ok(), "postcard takes it");
        assert_eq!(divided(&overlong), None);
        assert!(finders_agree_with_decoders(&overlong));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }
    }
}
