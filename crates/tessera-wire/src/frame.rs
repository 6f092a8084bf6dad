//! Length-prefixed frames and the envelope codec.

use std::io::{Read, Write};

use crate::{RequestEnvelope, ResponseEnvelope, PROTOCOL_VERSION};

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

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialised straight after room for the header, into a buffer sized first (pooled when
    // large, see `tessera_core::bytes::take`): a large body is neither copied a second time nor
    // grown by doubling. Serialising owned, in-memory values into a Vec cannot fail.
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    let mut out = tessera_core::bytes::take(FRAME_HEADER_LEN + size);
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let mut out = postcard::to_extend(value, out).unwrap_or_default();
    let len = out.len().saturating_sub(FRAME_HEADER_LEN) as u32;
    if let Some(header) = out.get_mut(..FRAME_HEADER_LEN) {
        header.copy_from_slice(&len.to_be_bytes());
    }
    out
}

/// Encodes a request envelope as a complete frame (header included).
pub fn encode_request(envelope: &RequestEnvelope) -> Vec<u8> {
    encode(envelope)
}

/// Encodes a response envelope as a complete frame (header included).
pub fn encode_response(envelope: &ResponseEnvelope) -> Vec<u8> {
    encode(envelope)
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
    use crate::{Reply, Request};
    use proptest::prelude::*;

    fn envelope(request: Request) -> RequestEnvelope {
        RequestEnvelope {
            version: PROTOCOL_VERSION,
            id: 7,
            channel: None,
            request,
        }
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let frame = encode_request(&envelope(Request::GenerateRandom {
            session: 3,
            len: 32,
        }));
        let body = read_frame(&mut frame.as_slice()).unwrap();
        let decoded = decode_request(&body).unwrap();
        assert_eq!(decoded.id, 7);
        assert!(matches!(
            decoded.request,
            Request::GenerateRandom {
                session: 3,
                len: 32
            }
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
            result: Ok(Reply::Done),
        })
        .unwrap();
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Version(2))
        ));
        body[0] = PROTOCOL_VERSION as u8;
        body.push(0);
        assert!(matches!(
            decode_response(&body),
            Err(FrameError::Trailing(1))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }
    }
}
