//! Length-prefixed frames and the envelope codec.

use std::io::{Read, Write};

use std::sync::OnceLock;

use tessera_channel::{Direction, Protection, Record, RecordHeader};

use crate::{Message, RequestEnvelope, Response, ResponseEnvelope, PROTOCOL_VERSION};

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The largest frame body accepted, checked before allocation (16 MiB: a 1 MiB bulk operation
/// fits many times over, a hostile length does not exhaust memory).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

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
    /// The frame is not a valid envelope.
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
    // Read into capacity (no zeroing pass over a large body first), pooled for a large body
    // (see `tessera_core::bytes::take`).
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

/// The invariant behind every encoding here: postcard writes any of the protocol's types into a
/// `Vec` (every sequence has a known length, no `Serialize` of ours fails, and a `Vec` grows
/// without limit), so an encoder that failed would be a bug, not a bad input. An empty frame
/// in its place would be sent as a valid one and misread.
const ENCODES: &str = "postcard encodes every protocol type into a Vec";

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialised straight after room for the header, into a buffer sized first (pooled when
    // large, see `tessera_core::bytes::take`): a large body is neither copied a second time nor
    // grown by doubling.
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    let mut out = tessera_core::bytes::take(FRAME_HEADER_LEN + size);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let mut out = postcard::to_extend(value, out).expect(ENCODES);
    finish_frame(&mut out);
    out
}

/// Writes a frame's length into its header (the first [`FRAME_HEADER_LEN`] bytes), once the
/// body after it is complete.
pub fn finish_frame(frame: &mut [u8]) {
    let len = frame.len().saturating_sub(FRAME_HEADER_LEN) as u32;
    if let Some(header) = frame.get_mut(..FRAME_HEADER_LEN) {
        header.copy_from_slice(&len.to_be_bytes());
    }
}

/// The start of a frame that carries a sealed record: room for the length, then the envelope's
/// fields up to the record — which the channel appends, sealing its message in the frame
/// itself (`Channel::seal_value_framed`); [`finish_frame`] then writes the length. The bytes
/// are those [`encode_request`] or [`encode_response`] would write before the record.
pub struct FramePrefix {
    bytes: [u8; 48],
    len: usize,
}

impl AsRef<[u8]> for FramePrefix {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The encoding of the enum variants that wrap a record, `Message::Protected` and
/// `Ok(Response::Protected)`: what the derived encoding writes before the record itself (learnt
/// once from the encoder, so that it follows the enums' declarations).
fn record_tag(wrapped: fn(Record) -> Vec<u8>) -> Vec<u8> {
    let record = Record {
        header: RecordHeader {
            channel: 0,
            direction: Direction::ToDevice,
            sequence: 0,
            generation: 0,
            protection: Protection::Signed,
        },
        body: Vec::new(),
        mac: Vec::new(),
    };
    let alone = postcard::to_stdvec(&record).expect(ENCODES).len();
    let mut whole = wrapped(record);
    whole.truncate(whole.len().saturating_sub(alone));
    whole
}

fn frame_prefix(id: u64, channel: u64, tag: &[u8]) -> FramePrefix {
    let mut bytes = [0u8; 48];
    // Version, id and channel as the envelope encodes its first three fields: at most 24 bytes,
    // and a variant tag at most 10 more, so the buffer holds them.
    let fields = (PROTOCOL_VERSION, id, Some(channel));
    let written =
        postcard::to_slice(&fields, &mut bytes[FRAME_HEADER_LEN..]).map_or(0, |w| w.len());
    let len = FRAME_HEADER_LEN + written;
    bytes[len..len + tag.len()].copy_from_slice(tag);
    FramePrefix {
        bytes,
        len: len + tag.len(),
    }
}

fn request_record_tag() -> &'static [u8] {
    static TAG: OnceLock<Vec<u8>> = OnceLock::new();
    TAG.get_or_init(|| {
        record_tag(|record| postcard::to_stdvec(&Message::Protected(record)).expect(ENCODES))
    })
}

fn response_record_tag() -> &'static [u8] {
    static TAG: OnceLock<Vec<u8>> = OnceLock::new();
    TAG.get_or_init(|| {
        record_tag(|record| {
            postcard::to_stdvec(&Ok::<Response, u64>(Response::Protected(record))).expect(ENCODES)
        })
    })
}

/// The start of a request frame carrying the sealed record of request `id` on `channel`.
pub fn protected_request_prefix(id: u64, channel: u64) -> FramePrefix {
    frame_prefix(id, channel, request_record_tag())
}

/// The start of a response frame carrying the sealed reply to request `id` on `channel`.
pub fn protected_response_prefix(id: u64, channel: u64) -> FramePrefix {
    frame_prefix(id, channel, response_record_tag())
}

/// Encodes a request envelope as a complete frame (header included).
pub fn encode_request(envelope: &RequestEnvelope) -> Vec<u8> {
    encode(envelope)
}

/// Encodes a response envelope as a complete frame (header included).
pub fn encode_response(envelope: &ResponseEnvelope) -> Vec<u8> {
    encode(envelope)
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

/// Finds the sealed record in a request frame body: `None` unless the body is a valid
/// envelope of this protocol version whose request is `Message::Protected`, which is then
/// decoded exactly as [`decode_request`] would (the same bytes, nothing after the record).
pub fn find_sealed_request(body: &[u8]) -> Option<SealedFrame> {
    find_sealed(body, request_record_tag())
}

/// As [`find_sealed_request`], for a response carrying `Ok(Response::Protected)`.
pub fn find_sealed_response(body: &[u8]) -> Option<SealedFrame> {
    find_sealed(body, response_record_tag())
}

fn find_sealed(frame: &[u8], tag: &[u8]) -> Option<SealedFrame> {
    // Lengths are read as 64-bit varints below, as the decoder reads byte-string lengths where
    // `usize` has 64 bits; elsewhere the two could differ on padded lengths, so the full
    // decoder decides.
    if usize::BITS != 64 {
        return None;
    }
    let ((version, id, channel), rest) =
        postcard::take_from_bytes::<(u16, u64, Option<u64>)>(frame).ok()?;
    if version != PROTOCOL_VERSION {
        return None;
    }
    let channel = channel?;
    let rest = rest.strip_prefix(tag)?;
    let (header, rest) = postcard::take_from_bytes::<RecordHeader>(rest).ok()?;
    let (body_len, rest) = postcard::take_from_bytes::<usize>(rest).ok()?;
    let body_start = frame.len() - rest.len();
    let rest = rest.get(body_len..)?;
    let (mac_len, rest) = postcard::take_from_bytes::<usize>(rest).ok()?;
    let mac_start = frame.len() - rest.len();
    // Nothing may follow the MAC, as nothing may follow an envelope.
    if rest.len() != mac_len {
        return None;
    }
    Some(SealedFrame {
        id,
        channel,
        header,
        body: body_start..body_start + body_len,
        mac: mac_start..frame.len(),
    })
}

/// Whether what the finders find in `body` is what the full decoders read: a record found in
/// it as a request (or as a reply) is the one [`decode_request`] (or [`decode_response`])
/// reads, with the same id, channel, header, body and MAC. Not finding one always agrees (the
/// caller then decodes in full). The invariant the property tests and the `frames` fuzz
/// target check on any bytes.
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
            (None, _) => true,
            (Some(_), None) => false,
            (Some(found), Some((id, channel, record))) => {
                (found.id, found.channel, found.header) == (id, channel, record.header)
                    && body.get(found.body) == Some(&record.body[..])
                    && body.get(found.mac) == Some(&record.mac[..])
            }
        };
    agrees(find_sealed_request(body), request) && agrees(find_sealed_response(body), response)
}

fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    let (version, _) = postcard::take_from_bytes::<u16>(body).map_err(FrameError::Malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Decodes a frame body into a request envelope.
pub fn decode_request(body: &[u8]) -> Result<RequestEnvelope, FrameError> {
    decode(body)
}

/// Decodes a frame body into a response envelope.
pub fn decode_response(body: &[u8]) -> Result<ResponseEnvelope, FrameError> {
    decode(body)
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
        let mut body = postcard::to_stdvec(&ResponseEnvelope {
            version: PROTOCOL_VERSION + 1,
            id: 1,
            channel: None,
            result: Ok(Response::Reply(Reply::Done)),
        })
        .unwrap();
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Version(v)) if v == PROTOCOL_VERSION + 1
        ));
        body[0] = PROTOCOL_VERSION as u8;
        body.push(0);
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Trailing(1))
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
        let mut body = protected_response_prefix(1, 2).as_ref()[FRAME_HEADER_LEN..].to_vec();
        body.extend(postcard::to_stdvec(&sealed).unwrap());
        let found = find_sealed_response(&body).unwrap();
        let (record_body, mac) = found.parts(&mut body).unwrap();
        assert_eq!((&*record_body, mac), (&sealed.body[..], &sealed.mac[..]));
        let short = body.len() - 1;
        assert!(found.parts(&mut body[..short]).is_none());
        assert!(found.parts(&mut []).is_none());
    }

    /// A frame the finder does not recognise — here the variant tag of `Message::Protected`
    /// padded to two bytes, which the decoder still reads — is left to the decoder (the
    /// daemon and the library then open the decoded record).
    #[test]
    fn a_padded_variant_tag_is_left_to_the_decoder() {
        let sealed = record(5, true, vec![1, 2, 3], Vec::new());
        let prefix = protected_request_prefix(9, 4);
        let fields = &prefix.as_ref()[FRAME_HEADER_LEN..];
        let tag = request_record_tag();
        assert_eq!(tag.len(), 1, "the tag is one byte");
        let mut body = fields[..fields.len() - 1].to_vec();
        body.extend([tag[0] | 0x80, 0x00]);
        body.extend(postcard::to_stdvec(&sealed).unwrap());
        assert_eq!(find_sealed_request(&body), None);
        let decoded = decode_request(&body).unwrap();
        assert!(matches!(decoded.message, Message::Protected(r) if r == sealed));
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
            mac in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let sealed = record(sequence, encrypted, body, mac);
            let mut frame = protected_request_prefix(id, channel).as_ref().to_vec();
            frame.extend(postcard::to_stdvec(&sealed).unwrap());
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
            prop_assert!(find_sealed_request(body).is_some() && find_sealed_response(body).is_none());
            prop_assert!(finders_agree_with_decoders(body));

            let mut frame = protected_response_prefix(id, channel).as_ref().to_vec();
            frame.extend(postcard::to_stdvec(&sealed).unwrap());
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
            prop_assert!(find_sealed_response(body).is_some() && find_sealed_request(body).is_none());
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
            let sealed = record(sequence, true, body, Vec::new());
            let mut frames = Vec::new();
            for prefix in [protected_request_prefix(id, 3), protected_response_prefix(id, 3)] {
                let mut frame = prefix.as_ref()[FRAME_HEADER_LEN..].to_vec();
                frame.extend(postcard::to_stdvec(&sealed).unwrap());
                for (at, byte) in &damage {
                    let at = at % frame.len();
                    frame[at] ^= byte;
                }
                if cut % 3 == 0 {
                    frame.truncate(cut % (frame.len() + 1));
                }
                frames.push(if use_garbage { garbage.clone() } else { frame });
            }
            for frame in &frames {
                prop_assert!(finders_agree_with_decoders(frame));
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }
    }
}
