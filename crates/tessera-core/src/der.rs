//! A minimal, panic-free DER codec: just what PKCS#11 attribute values need (EC parameters and
//! points, RSA key structures, `DigestInfo`).
//!
//! Private keys are encoded with [`secret_sequence`], which writes straight into one
//! [`SecretBytes`] sized in advance: no intermediate copy of key material is left unwiped.

use crate::SecretBytes;

/// DER tag of INTEGER.
pub const INTEGER: u8 = 0x02;
/// DER tag of OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// DER tag of OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;
/// DER tag of SEQUENCE.
pub const SEQUENCE: u8 = 0x30;

/// The DER of the OID of curve P-256 (`prime256v1`), as `CKA_EC_PARAMS` holds it.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// The DER of the OID of curve P-384 (`secp384r1`).
pub const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
/// The DER of the OID of curve P-521 (`secp521r1`).
pub const P521_PARAMS: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23];

/// Malformed DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER")]
pub struct DerError;

/// Reads DER elements from a byte string.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reads one element and returns its tag and contents.
    pub fn element(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.data.split_first().ok_or(DerError)?;
        let (&first, mut rest) = rest.split_first().ok_or(DerError)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7F);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(DerError);
            }
            let (bytes, tail) = rest.split_at(count);
            rest = tail;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return Err(DerError);
        }
        let (contents, tail) = rest.split_at(len);
        self.data = tail;
        Ok((tag, contents))
    }

    /// Reads one element that must have `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        match self.element()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(DerError),
        }
    }

    /// Reads an INTEGER and returns its unsigned big-endian magnitude without leading zeros.
    pub fn unsigned_integer(&mut self) -> Result<&'a [u8], DerError> {
        let bytes = self.expect(INTEGER)?;
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Ok(&bytes[start..])
    }
}

/// Parses `data` as exactly one element with `tag`, rejecting trailing bytes.
pub fn single(data: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let mut reader = Reader::new(data);
    let contents = reader.expect(tag)?;
    if reader.is_empty() {
        Ok(contents)
    } else {
        Err(DerError)
    }
}

/// A tag and a definite length: at most 1 + 1 + 8 bytes.
struct Header {
    bytes: [u8; 10],
    len: usize,
}

impl Header {
    fn new(tag: u8, contents: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = tag;
        let len = if contents < 0x80 {
            bytes[1] = contents as u8;
            2
        } else {
            let be = contents.to_be_bytes();
            let skip = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
            let count = be.len() - skip;
            bytes[1] = 0x80 | count as u8;
            bytes[2..2 + count].copy_from_slice(&be[skip..]);
            2 + count
        };
        Header { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Where encoded bytes go: a `Vec` for public structures, a [`SecretBytes`] for private keys.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for SecretBytes {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// One element of a SEQUENCE encoded by [`secret_sequence`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// An INTEGER of an unsigned big-endian magnitude (leading zeros dropped, a zero byte added
    /// when the top bit is set).
    Integer(&'a [u8]),
    /// An element of this tag with these contents.
    Element(u8, &'a [u8]),
    /// An element encoded already.
    Encoded(&'a [u8]),
}

impl Part<'_> {
    /// The header (none for an encoded part), the sign byte (if any) and the contents.
    fn layout(&self) -> (Option<Header>, &'static [u8], &[u8]) {
        match *self {
            Part::Integer(magnitude) => {
                let start = magnitude
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(magnitude.len());
                let trimmed = &magnitude[start..];
                let sign: &'static [u8] = if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
                    &[0]
                } else {
                    &[]
                };
                let header = Header::new(INTEGER, sign.len() + trimmed.len());
                (Some(header), sign, trimmed)
            }
            Part::Element(tag, contents) => (Some(Header::new(tag, contents.len())), &[], contents),
            Part::Encoded(bytes) => (None, &[], bytes),
        }
    }

    fn encoded_len(&self) -> usize {
        let (header, sign, contents) = self.layout();
        header.map_or(0, |h| h.len) + sign.len() + contents.len()
    }

    fn write(&self, out: &mut impl Sink) {
        let (header, sign, contents) = self.layout();
        if let Some(header) = header {
            out.put(header.as_bytes());
        }
        out.put(sign);
        out.put(contents);
    }

    fn to_vec(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out);
        out
    }
}

/// Encodes one element.
pub fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
    Part::Element(tag, contents).to_vec()
}

/// Encodes an unsigned big-endian magnitude as an INTEGER.
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    Part::Integer(magnitude).to_vec()
}

/// Encodes a SEQUENCE of already-encoded elements (public structures).
pub fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
    element(SEQUENCE, &parts.concat())
}

/// Encodes a SEQUENCE of `parts` into one secret buffer, sized before the first byte is
/// written: a private key's encoding (PKCS#1, PKCS#8, RFC 5915) exists only there, wiped when
/// it is dropped, with no intermediate copy.
pub fn secret_sequence(parts: &[Part<'_>]) -> SecretBytes {
    let contents: usize = parts.iter().map(Part::encoded_len).sum();
    let header = Header::new(SEQUENCE, contents);
    let mut out = SecretBytes::with_capacity(header.len + contents);
    out.put(header.as_bytes());
    for part in parts {
        part.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_round_trip_with_sign_padding() {
        let encoded = unsigned_integer(&[0x00, 0x80, 0x01]);
        assert_eq!(encoded, vec![0x02, 0x03, 0x00, 0x80, 0x01]);
        assert_eq!(
            Reader::new(&encoded).unsigned_integer().unwrap(),
            &[0x80, 0x01]
        );
        assert_eq!(unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths_and_truncation() {
        let big = element(OCTET_STRING, &[7u8; 300]);
        assert_eq!(&big[..4], &[0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(single(&big, OCTET_STRING).unwrap().len(), 300);
        assert_eq!(single(&big[..big.len() - 1], OCTET_STRING), Err(DerError));
        assert_eq!(single(&[0x04, 0x80], OCTET_STRING), Err(DerError));
    }

    #[test]
    fn a_secret_sequence_is_the_sequence_of_its_parts() {
        let long = [0x91u8; 300];
        let parts = [
            Part::Integer(&[0]),
            Part::Integer(&[0x00, 0x80, 0x01]),
            Part::Integer(&long),
            Part::Element(OCTET_STRING, &long),
            Part::Element(0xA0, P256_PARAMS),
            Part::Encoded(P384_PARAMS),
        ];
        let secret = secret_sequence(&parts);
        let plain = sequence(&[
            unsigned_integer(&[0]),
            unsigned_integer(&[0x00, 0x80, 0x01]),
            unsigned_integer(&long),
            element(OCTET_STRING, &long),
            element(0xA0, P256_PARAMS),
            P384_PARAMS.to_vec(),
        ]);
        assert_eq!(secret.expose(), plain.as_slice());
        let mut reader = Reader::new(single(secret.expose(), SEQUENCE).unwrap());
        assert_eq!(reader.unsigned_integer().unwrap(), &[] as &[u8]);
        assert_eq!(reader.unsigned_integer().unwrap(), &[0x80, 0x01]);
        assert_eq!(reader.unsigned_integer().unwrap(), &long[..]);
        assert_eq!(reader.expect(OCTET_STRING).unwrap(), &long[..]);
    }

    proptest! {
        #[test]
        fn secret_and_plain_encodings_agree(
            magnitude in proptest::collection::vec(any::<u8>(), 0..300),
            contents in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let secret = secret_sequence(&[Part::Integer(&magnitude), Part::Element(0x04, &contents)]);
            let plain = sequence(&[unsigned_integer(&magnitude), element(0x04, &contents)]);
            prop_assert_eq!(secret.expose(), plain.as_slice());
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = Reader::new(&data);
            while reader.element().is_ok() {}
        }

        #[test]
        fn elements_round_trip(contents in proptest::collection::vec(any::<u8>(), 0..400)) {
            let encoded = element(OCTET_STRING, &contents);
            prop_assert_eq!(single(&encoded, OCTET_STRING).unwrap(), contents.as_slice());
        }
    }
}
