//! Protected records and the channel state.
//!
//! Every record carries, in an authenticated header, the channel id, its direction, a 64-bit
//! sequence number, the key generation and its protection. `Signed` records carry a
//! GMAC (AES-256-GCM over no plaintext, header and body as associated data) under the
//! direction's signing key; `Encrypted` records are AES-256-GCM with the header
//! as associated data (authenticated encryption, so they are signed too). The receiver accepts
//! only the next sequence number of its direction and channel: a replayed, reordered, dropped,
//! truncated, redirected or altered record is refused, and the channel dies with its keys.

use aws_lc_rs::aead::{Aad, Nonce, Tag, NONCE_LEN};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{Generation, KeyDerivationError, Side};
use crate::Policy;

/// Which way a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// From the library to the device.
    ToDevice,
    /// From the device to the library.
    ToClient,
}

/// How a record is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protection {
    /// Authenticated (GMAC under the signing key), readable.
    Signed,
    /// Authenticated and encrypted (AES-256-GCM).
    Encrypted,
}

/// The authenticated header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// Channel id.
    pub channel: u64,
    /// Direction.
    pub direction: Direction,
    /// Sequence number in this direction (from 0, never reused).
    pub sequence: u64,
    /// Key generation (rollover count).
    pub generation: u32,
    /// Protection of the body.
    pub protection: Protection,
}

/// A protected message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Header.
    pub header: RecordHeader,
    /// Body: the message, or its ciphertext with the GCM tag.
    #[serde(with = "tessera_core::bytes")]
    pub body: Vec<u8>,
    /// The GMAC tag of header and body (signed records).
    #[serde(with = "tessera_core::bytes")]
    pub mac: Vec<u8>,
}

/// Why a record was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The channel was closed or killed before.
    #[error("the channel is closed")]
    Closed,
    /// The record belongs to another channel.
    #[error("record for channel {got} arrived on channel {expected}")]
    WrongChannel {
        /// This channel.
        expected: u64,
        /// The record's.
        got: u64,
    },
    /// The record travels the other way.
    #[error("record in the wrong direction")]
    WrongDirection,
    /// Replayed, reordered or after a dropped record.
    #[error("record {got} arrived when {expected} was expected (replayed, reordered or dropped)")]
    Sequence {
        /// The next sequence number.
        expected: u64,
        /// The record's.
        got: u64,
    },
    /// Keys of another generation.
    #[error("record of key generation {got}, expected {expected}")]
    Generation {
        /// This channel's.
        expected: u32,
        /// The record's.
        got: u32,
    },
    /// The MAC or the AEAD tag does not verify: altered or truncated.
    #[error("record {0} failed authentication (altered or truncated)")]
    Authentication(u64),
    /// Weaker protection than policy requires.
    #[error("record protected as {got:?}, policy requires {required:?}")]
    Protection {
        /// What the policy requires.
        required: Protection,
        /// What arrived.
        got: Protection,
    },
    /// A key of the channel could not be derived: the channel is not used without it.
    #[error("{0}")]
    KeyDerivation(#[from] crate::keys::KeyDerivationError),
}

/// One end of an established channel.
pub struct Channel {
    id: u64,
    side: Side,
    policy: Policy,
    generation: u32,
    keys: Option<Generation>,
    /// A record failed to open: nothing more is opened, and only one last record may be
    /// sealed ([`Channel::seal_last`]) before the keys go.
    failed: bool,
    send_sequence: u64,
    receive_sequence: u64,
    messages: u64,
    bytes: u64,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("side", &self.side)
            .field("generation", &self.generation)
            .field("alive", &self.keys.is_some())
            .finish()
    }
}

/// A header's postcard encoding, on the stack (at most 27 bytes: three varints and two tags):
/// the AAD of every record, made twice per call.
struct HeaderBytes {
    bytes: [u8; 32],
    len: usize,
}

impl AsRef<[u8]> for HeaderBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn header_bytes(header: &RecordHeader) -> HeaderBytes {
    let mut bytes = [0u8; 32];
    let len = postcard::to_slice(header, &mut bytes)
        .expect("the buffer holds the largest header (a test encodes it)")
        .len();
    HeaderBytes { bytes, len }
}

/// Bytes of an AES-GCM tag (and of a GMAC).
const TAG: usize = 16;

/// Appends `value` as postcard writes a length: LEB128, seven bits a byte.
fn push_varint(out: &mut Vec<u8>, value: usize) {
    let mut value = value as u64;
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn nonce(sequence: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&sequence.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Channel {
    pub(crate) fn new(
        id: u64,
        side: Side,
        policy: Policy,
        traffic: Zeroizing<Vec<u8>>,
    ) -> Result<Channel, KeyDerivationError> {
        Ok(Channel {
            id,
            side,
            policy,
            generation: 0,
            keys: Some(Generation::new(traffic, side)?),
            failed: false,
            send_sequence: 0,
            receive_sequence: 0,
            messages: 0,
            bytes: 0,
        })
    }

    /// The channel id the device gave.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The effective policy (union of both sides').
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The key generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Messages and bytes protected with the current generation of keys (both directions).
    pub fn usage(&self) -> (u64, u64) {
        (self.messages, self.bytes)
    }

    /// True until closed or killed.
    pub fn is_alive(&self) -> bool {
        self.keys.is_some() && !self.failed
    }

    /// Seals `value` as the channel's last record, then closes it. The device answers the
    /// request that ended its channel this way (a failed record, a policy refusal, a
    /// termination), so that the library hears of the end from the channel itself: records
    /// of the other direction failing leaves this direction's keys sound. Works once after a
    /// failed open, when nothing else may be sealed.
    pub fn seal_last<T: serde::Serialize>(
        &mut self,
        value: &T,
        protection: Protection,
        prefix: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        self.failed = false;
        let sealed = self.seal_value_framed(value, protection, prefix);
        self.close();
        sealed
    }

    /// Closes the channel: its keys are wiped (dropped; aws-lc clears key memory on free).
    pub fn close(&mut self) {
        self.keys = None;
    }

    fn send_direction(&self) -> Direction {
        match self.side {
            Side::Client => Direction::ToDevice,
            Side::Device => Direction::ToClient,
        }
    }

    /// Protects a message.
    pub fn seal(&mut self, message: &[u8], protection: Protection) -> Result<Record, RecordError> {
        self.seal_vec(message.to_vec(), protection)
    }

    /// Protects the postcard encoding of `value`, written straight into a buffer with room for
    /// the tag (a large message is neither copied nor moved).
    pub fn seal_value<T: serde::Serialize>(
        &mut self,
        value: &T,
        protection: Protection,
    ) -> Result<Record, RecordError> {
        let size =
            postcard::experimental::serialized_size(value).map_err(|_| RecordError::Closed)?;
        let message = postcard::to_extend(value, tessera_core::bytes::take(size + 16))
            .map_err(|_| RecordError::Closed)?;
        self.seal_vec(message, protection)
    }

    /// Protects a message given by value: an encrypted record is encrypted in place (no copy of
    /// a large message, and no plaintext left behind); a signed one carries it as it is.
    pub fn seal_vec(
        &mut self,
        message: Vec<u8>,
        protection: Protection,
    ) -> Result<Record, RecordError> {
        let mut message = message;
        let Some(header) = self.next_header(protection) else {
            zeroize::Zeroize::zeroize(&mut message);
            return Err(RecordError::Closed);
        };
        let length = message.len() as u64;
        let (body, mac) = match protection {
            Protection::Signed => {
                let tag = self.sign(header.sequence, &header_bytes(&header), &message)?;
                (message, tag.as_ref().to_vec())
            }
            Protection::Encrypted => {
                let tag = self.encrypt(header.sequence, &header_bytes(&header), &mut message)?;
                message.extend_from_slice(tag.as_ref());
                (message, Vec::new())
            }
        };
        self.sent(length);
        Ok(Record { header, body, mac })
    }

    /// Seals the postcard encoding of `value` into a frame: returns `prefix` followed by the
    /// encoding of the record that [`Channel::seal_value`] would make (the bytes
    /// `postcard::to_extend(&record, ..)` appends), with the message written straight into
    /// the frame — no message buffer, no record. An encrypted message is encrypted there (no
    /// plaintext copy anywhere); a signed one is sent as it is, and its GMAC is computed over
    /// a copy of header and message, as for [`Channel::seal_vec`].
    /// `prefix` is what precedes the record in the frame (length placeholder, envelope fields).
    pub fn seal_value_framed<T: serde::Serialize>(
        &mut self,
        value: &T,
        protection: Protection,
        prefix: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let size =
            postcard::experimental::serialized_size(value).map_err(|_| RecordError::Closed)?;
        let header = self.next_header(protection).ok_or(RecordError::Closed)?;
        let aad = header_bytes(&header);
        // Prefix, header, body length, body (message and, encrypted, its tag), MAC length and
        // MAC: varints take at most 10 bytes.
        let mut frame = tessera_core::bytes::take(prefix.len() + aad.len + size + 2 * (10 + TAG));
        frame.extend_from_slice(prefix);
        frame.extend_from_slice(aad.as_ref());
        let body_len = match protection {
            Protection::Signed => size,
            Protection::Encrypted => size + TAG,
        };
        push_varint(&mut frame, body_len);
        let start = frame.len();
        let mut frame = postcard::to_extend(value, frame).map_err(|_| RecordError::Closed)?;
        if frame.len() - start != size {
            // The length written before the message would be wrong.
            zeroize::Zeroize::zeroize(&mut frame);
            return Err(RecordError::Closed);
        }
        match protection {
            Protection::Signed => {
                let tag = self.sign(header.sequence, &aad, &frame[start..])?;
                push_varint(&mut frame, tag.as_ref().len());
                frame.extend_from_slice(tag.as_ref());
            }
            Protection::Encrypted => {
                let sealed = self.encrypt(header.sequence, &aad, &mut frame[start..]);
                let Ok(tag) = sealed else {
                    zeroize::Zeroize::zeroize(&mut frame);
                    return Err(RecordError::Closed);
                };
                frame.extend_from_slice(tag.as_ref());
                push_varint(&mut frame, 0);
            }
        }
        self.sent(size as u64);
        Ok(frame)
    }

    /// The header of the next record sent, or `None` when the channel is closed.
    fn next_header(&self, protection: Protection) -> Option<RecordHeader> {
        self.keys.as_ref()?;
        if self.failed {
            return None;
        }
        Some(RecordHeader {
            channel: self.id,
            direction: self.send_direction(),
            sequence: self.send_sequence,
            generation: self.generation,
            protection,
        })
    }

    /// The GMAC of a signed record: header (`aad`, its encoding) and message as associated
    /// data.
    fn sign(&self, sequence: u64, aad: &HeaderBytes, message: &[u8]) -> Result<Tag, RecordError> {
        let keys = self.keys.as_ref().ok_or(RecordError::Closed)?;
        let mut signed = aad.as_ref().to_vec();
        signed.extend_from_slice(message);
        keys.send_mac()?
            .seal_in_place_separate_tag(nonce(sequence), Aad::from(&signed), &mut [])
            .map_err(|_| RecordError::Closed)
    }

    /// Encrypts a message in place (the header's encoding `aad` as associated data) and
    /// returns its tag.
    fn encrypt(
        &self,
        sequence: u64,
        aad: &HeaderBytes,
        message: &mut [u8],
    ) -> Result<Tag, RecordError> {
        let keys = self.keys.as_ref().ok_or(RecordError::Closed)?;
        keys.send
            .aead
            .seal_in_place_separate_tag(nonce(sequence), Aad::from(aad), message)
            .map_err(|_| RecordError::Closed)
    }

    /// Counts a record sent with a message of `length` bytes.
    fn sent(&mut self, length: u64) {
        self.send_sequence += 1;
        self.messages += 1;
        self.bytes += length;
    }

    /// Checks and opens a record; any failure kills the channel.
    pub fn open(
        &mut self,
        record: &Record,
    ) -> Result<(Zeroizing<Vec<u8>>, Protection), RecordError> {
        self.open_record(record.clone())
    }

    /// As [`Channel::open`], taking the record by value: an encrypted body is decrypted in
    /// place.
    pub fn open_record(
        &mut self,
        record: Record,
    ) -> Result<(Zeroizing<Vec<u8>>, Protection), RecordError> {
        let Record { header, body, mac } = record;
        let mut body = Zeroizing::new(body);
        let (len, protection) = self.open_in_place(header, &mut body, &mac)?;
        body.truncate(len);
        Ok((body, protection))
    }

    /// Checks and opens a record whose body and MAC lie where they arrived (in the frame
    /// that carried them): an encrypted body is decrypted there. Returns the length of the
    /// message, which starts where the body does. Any failure kills the channel.
    pub fn open_in_place(
        &mut self,
        header: RecordHeader,
        body: &mut [u8],
        mac: &[u8],
    ) -> Result<(usize, Protection), RecordError> {
        if self.failed {
            return Err(RecordError::Closed);
        }
        let result = self.open_inner(header, body, mac);
        if result.is_err() {
            // Dead for both directions, but for one last record: see `seal_last`.
            self.failed = true;
        }
        result
    }

    fn open_inner(
        &mut self,
        header: RecordHeader,
        body: &mut [u8],
        mac: &[u8],
    ) -> Result<(usize, Protection), RecordError> {
        let keys = self.keys.as_ref().ok_or(RecordError::Closed)?;
        if header.channel != self.id {
            return Err(RecordError::WrongChannel {
                expected: self.id,
                got: header.channel,
            });
        }
        if header.direction == self.send_direction() {
            return Err(RecordError::WrongDirection);
        }
        if header.generation != self.generation {
            return Err(RecordError::Generation {
                expected: self.generation,
                got: header.generation,
            });
        }
        if header.sequence != self.receive_sequence {
            return Err(RecordError::Sequence {
                expected: self.receive_sequence,
                got: header.sequence,
            });
        }
        let aad = header_bytes(&header);
        let len = match header.protection {
            Protection::Signed => {
                let mut signed = aad.as_ref().to_vec();
                signed.extend_from_slice(body);
                let mut tag = mac.to_vec();
                keys.receive_mac()?
                    .open_in_place(nonce(header.sequence), Aad::from(&signed), &mut tag)
                    .map_err(|_| RecordError::Authentication(header.sequence))?;
                body.len()
            }
            Protection::Encrypted => keys
                .receive
                .aead
                .open_in_place(nonce(header.sequence), Aad::from(&aad), body)
                .map_err(|_| RecordError::Authentication(header.sequence))?
                .len(),
        };
        self.receive_sequence += 1;
        self.messages += 1;
        self.bytes += len as u64;
        Ok((len, header.protection))
    }

    /// Checks that a message arrived with at least the protection policy requires; if not, the
    /// channel dies.
    pub fn require(&mut self, got: Protection, required: Protection) -> Result<(), RecordError> {
        if got < required {
            self.close();
            return Err(RecordError::Protection { required, got });
        }
        Ok(())
    }

    /// Moves both directions to the next generation of keys (rollover). Both ends call it at
    /// the same point of the conversation: after the rekey request and its reply.
    pub fn rekey(&mut self) -> Result<(), RecordError> {
        if self.failed {
            return Err(RecordError::Closed);
        }
        let keys = self.keys.take().ok_or(RecordError::Closed)?;
        // On failure the keys stay gone: the channel is closed, not left on zero keys.
        self.keys = Some(Generation::new(keys.secret.clone(), self.side)?);
        self.generation += 1;
        self.messages = 0;
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_header_fits_its_stack_buffer_and_round_trips() {
        for header in [
            RecordHeader {
                channel: u64::MAX,
                direction: Direction::ToClient,
                sequence: u64::MAX,
                generation: u32::MAX,
                protection: Protection::Encrypted,
            },
            RecordHeader {
                channel: 0,
                direction: Direction::ToDevice,
                sequence: 0,
                generation: 0,
                protection: Protection::Signed,
            },
        ] {
            let encoded = header_bytes(&header);
            assert!(encoded.len > 0, "the header was not encoded");
            assert_eq!(encoded.as_ref(), postcard::to_stdvec(&header).unwrap());
            let decoded: RecordHeader = postcard::from_bytes(encoded.as_ref()).unwrap();
            assert_eq!(decoded, header);
        }
    }

    /// Two library ends with the same keys (records sealed in the same order are the same
    /// bytes) and the device end.
    fn twins() -> (Channel, Channel, Channel) {
        let secret = || Zeroizing::new(vec![0x5a; 48]);
        let client = || Channel::new(9, Side::Client, Policy(0), secret()).unwrap();
        (
            client(),
            client(),
            Channel::new(9, Side::Device, Policy(0), secret()).unwrap(),
        )
    }

    proptest::proptest! {
        /// Sealing into a frame writes the prefix and then exactly the encoding of the record
        /// `seal_value` makes, which the other end opens.
        #[test]
        fn a_record_sealed_into_a_frame_is_the_record_sealed_alone(
            messages in proptest::collection::vec(
                (proptest::collection::vec(0u8..=255, 0..300), proptest::bool::ANY),
                1..6,
            ),
            large in proptest::bool::ANY,
            prefix in proptest::collection::vec(0u8..=255, 0..40),
        ) {
            let (mut framed, mut alone, mut device) = twins();
            for (mut message, encrypted) in messages {
                if large {
                    // Lengths over 16 KiB take three varint bytes.
                    message.resize(20_000 + message.len(), 0x33);
                }
                let protection = if encrypted { Protection::Encrypted } else { Protection::Signed };
                let frame = framed.seal_value_framed(&message, protection, &prefix).unwrap();
                let record = alone.seal_value(&message, protection).unwrap();
                let mut expected = prefix.clone();
                expected.extend(postcard::to_stdvec(&record).unwrap());
                proptest::prop_assert_eq!(&frame, &expected);
                let (opened, got) = device.open_record(record).unwrap();
                proptest::prop_assert_eq!(got, protection);
                let decoded: Vec<u8> = postcard::from_bytes(&opened).unwrap();
                proptest::prop_assert_eq!(decoded, message);
            }
            proptest::prop_assert_eq!(framed.usage(), alone.usage());
        }
    }

    #[test]
    fn a_closed_channel_seals_nothing_into_a_frame() {
        let (mut framed, _, _) = twins();
        framed.close();
        assert_eq!(
            framed.seal_value_framed(&7u32, Protection::Encrypted, b"prefix"),
            Err(RecordError::Closed)
        );
    }
}
