//! A minimal, panic-free DER reader: just what PKCS#11 attribute values need read (EC
//! parameters and points, RSA key structures, `DigestInfo`), fuzzed on any bytes. Structures
//! are written with the `der`, `pkcs1`, `pkcs8`, `sec1` and `spki` crates (where private keys
//! are encoded straight into a wiping buffer).

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_read_without_their_sign_padding() {
        let encoded = [0x02, 0x03, 0x00, 0x80, 0x01];
        assert_eq!(
            Reader::new(&encoded).unsigned_integer().unwrap(),
            &[0x80, 0x01]
        );
        assert_eq!(
            Reader::new(&[0x02, 0x01, 0x00]).unsigned_integer().unwrap(),
            &[] as &[u8]
        );
    }

    #[test]
    fn long_lengths_and_truncation() {
        let mut big = vec![0x04, 0x82, 0x01, 0x2C];
        big.extend_from_slice(&[7u8; 300]);
        assert_eq!(single(&big, OCTET_STRING).unwrap().len(), 300);
        assert_eq!(single(&big[..big.len() - 1], OCTET_STRING), Err(DerError));
        assert_eq!(single(&[0x04, 0x80], OCTET_STRING), Err(DerError));
        let mut trailing = big.clone();
        trailing.push(0);
        assert_eq!(single(&trailing, OCTET_STRING), Err(DerError));
    }

    proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut reader = Reader::new(&data);
            while reader.element().is_ok() {}
        }

        #[test]
        fn short_and_long_form_lengths_read_alike(contents in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut encoded = vec![OCTET_STRING];
            match contents.len() {
                n if n < 0x80 => encoded.push(n as u8),
                n if n < 0x100 => encoded.extend_from_slice(&[0x81, n as u8]),
                n => encoded.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
            }
            encoded.extend_from_slice(&contents);
            prop_assert_eq!(single(&encoded, OCTET_STRING).unwrap(), contents.as_slice());
        }
    }
}
