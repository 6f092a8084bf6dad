//! Protected records and the channel state.
//!
//! Every record carries, in an authenticated header, the channel id, its direction, a 64-bit
//! sequence number, the key generation and its protection. `Signed` records carry a
//! GMAC (AES-256-GCM over no plaintext, header and body as associated data) under the
//! direction's signing key; `Encrypted` records are AES-256-GCM with the header
//! as associated data (authenticated encryption, so they are signed too). The receiver accepts
//! only the next sequence number of its direction and channel: a replayed, reordered, dropped,
//! truncated, redirected or altered record is refused, and the channel dies with its keys.
//!
//! A record is sent as `header | body | mac`: the header's [`RECORD_HEADER_LEN`] fixed bytes
//! (big-endian; the same bytes are the associated data of its protection), then the body, then
//! a signed record's 16-byte GMAC (an encrypted body ends with its GCM tag, and has no MAC).
//! This crate owns that layout ([`Record::encode_into`], [`find_record`]); the frame around it
//! is the wire's.
//!
//! A record's message — what its body protects — ends with a 4-byte big-endian length
//! ([`BULK_LEN`]): that of a bulk payload at the message's start, 0 for none. Between the two
//! lies the encoding of the message itself. A message with a large payload (a 1 MiB
//! ciphertext) is sealed with the payload first ([`Channel::seal_split`]), so that it is
//! sealed in the payload's own buffer and, once opened in a buffer of its own, is that buffer
//! cut short ([`message_parts`]): neither end copies the payload into or out of its record.

use aws_lc_rs::aead::{Aad, Nonce, Tag, NONCE_LEN};
use zeroize::Zeroizing;

use crate::keys::{Generation, KeyDerivationError, Side};
use crate::Policy;

/// Which way a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the library to the device.
    ToDevice,
    /// From the device to the library.
    ToClient,
}

/// How a record is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// Authenticated (GMAC under the signing key), readable.
    Signed,
    /// Authenticated and encrypted (AES-256-GCM).
    Encrypted,
}

/// The authenticated header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Bytes that end every record's message: the length of the bulk payload that starts it
/// (big-endian; 0 for none). See [`message_parts`].
pub const BULK_LEN: usize = 4;

/// Where the parts of an opened record's message lie: its bulk payload (`..bulk`, empty for
/// most messages), then the encoding of the message itself (`rest`), then the payload's
/// length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts {
    /// Bytes of bulk payload at the message's start.
    pub bulk: usize,
    /// Where the message's own encoding lies.
    pub rest: std::ops::Range<usize>,
}

/// The parts of `message`, an opened record's message: `None` unless it ends with a payload
/// length that fits before it.
pub fn message_parts(message: &[u8]) -> Option<MessageParts> {
    let end = message.len().checked_sub(BULK_LEN)?;
    let len: [u8; BULK_LEN] = message.get(end..)?.try_into().ok()?;
    let bulk = usize::try_from(u32::from_be_bytes(len)).ok()?;
    (bulk <= end).then_some(MessageParts {
        bulk,
        rest: bulk..end,
    })
}

/// Bytes of a record header as sent: channel (8), direction (1), sequence (8), generation (4)
/// and protection (1), big-endian.
pub const RECORD_HEADER_LEN: usize = 22;

impl RecordHeader {
    /// The header as sent, and as its record's protection authenticates it.
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut bytes = [0u8; RECORD_HEADER_LEN];
        bytes[..8].copy_from_slice(&self.channel.to_be_bytes());
        bytes[8] = match self.direction {
            Direction::ToDevice => 0,
            Direction::ToClient => 1,
        };
        bytes[9..17].copy_from_slice(&self.sequence.to_be_bytes());
        bytes[17..21].copy_from_slice(&self.generation.to_be_bytes());
        bytes[21] = match self.protection {
            Protection::Signed => 0,
            Protection::Encrypted => 1,
        };
        bytes
    }

    /// Reads a header; `None` unless `bytes` is one (a direction or protection other than 0
    /// or 1 is none).
    pub fn from_bytes(bytes: &[u8; RECORD_HEADER_LEN]) -> Option<RecordHeader> {
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let mut generation = [0u8; 4];
        generation.copy_from_slice(&bytes[17..21]);
        Some(RecordHeader {
            channel: u64_at(0),
            direction: match bytes[8] {
                0 => Direction::ToDevice,
                1 => Direction::ToClient,
                _ => return None,
            },
            sequence: u64_at(9),
            generation: u32::from_be_bytes(generation),
            protection: match bytes[21] {
                0 => Protection::Signed,
                1 => Protection::Encrypted,
                _ => return None,
            },
        })
    }
}

/// A protected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Header.
    pub header: RecordHeader,
    /// Body: the message, or its ciphertext with the GCM tag.
    pub body: Vec<u8>,
    /// The GMAC tag of header and body (signed records).
    pub mac: Vec<u8>,
}

impl Record {
    /// Bytes of the record as sent.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.body.len() + self.mac.len()
    }

    /// Appends the record as sent: `header | body | mac`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.mac);
    }

    /// The record that `bytes` are, all of them ([`find_record`]); `None` if they are none.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let found = find_record(bytes)?;
        Some(Record {
            header: found.header,
            body: bytes.get(found.body)?.to_vec(),
            mac: bytes.get(found.mac)?.to_vec(),
        })
    }
}

/// A record found where it lies: its header, and where its body and MAC are in the bytes it
/// was found in — so that it is opened there ([`Channel::open_in_place`]), without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRecord {
    /// The record's header.
    pub header: RecordHeader,
    /// The body, as a range of the bytes.
    pub body: std::ops::Range<usize>,
    /// The MAC, as a range of the bytes (empty for an encrypted record).
    pub mac: std::ops::Range<usize>,
}

/// Finds the record that `bytes` are, all of them: a valid header, then a body and (signed) a
/// MAC of 16 bytes; an encrypted body holds at least its 16-byte tag. `None` otherwise.
pub fn find_record(bytes: &[u8]) -> Option<FoundRecord> {
    find_record_of(bytes, bytes.len())
}

/// [`find_record`] for a record of `len` bytes of which `start` holds the first ones (at least
/// its header): what a reader needs to know before it reads the rest into a buffer of its own.
pub fn find_record_of(start: &[u8], len: usize) -> Option<FoundRecord> {
    let header = RecordHeader::from_bytes(start.get(..RECORD_HEADER_LEN)?.try_into().ok()?)?;
    let mac_len = match header.protection {
        Protection::Signed => TAG,
        Protection::Encrypted => 0,
    };
    let mac_start = len.checked_sub(mac_len)?;
    if mac_start < RECORD_HEADER_LEN || len < RECORD_HEADER_LEN + TAG {
        return None;
    }
    Some(FoundRecord {
        header,
        body: RECORD_HEADER_LEN..mac_start,
        mac: mac_start..len,
    })
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
    /// A message too large for a record (its payload's length must fit in [`BULK_LEN`] bytes).
    #[error("a message of {0} bytes is more than a record carries")]
    TooLarge(usize),
    /// A key of the channel could not be derived: the channel is not used without it.
    #[error("{0}")]
    KeyDerivation(#[from] crate::keys::KeyDerivationError),
}

/// One end of an established channel.
pub struct Channel {
    id: u64,
    side: Side,
    policy: Policy,
    /// Keys from X25519 and ML-KEM-768 together (the hybrid handshake), not X25519 alone.
    hybrid: bool,
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

/// A header as sent: the associated data of its record's protection.
type HeaderBytes = [u8; RECORD_HEADER_LEN];

/// Bytes of an AES-GCM tag (and of a GMAC).
pub(crate) const TAG: usize = 16;

/// A signed record's header and message, one after the other: what its GMAC covers (one slice
/// of associated data). Sized whole first, so that it is never grown (which would free a copy
/// of the message unwiped); the caller wipes it once used.
fn header_and(aad: &HeaderBytes, message: &[u8]) -> Vec<u8> {
    let mut signed = tessera_core::bytes::take(aad.len() + message.len());
    signed.extend_from_slice(aad);
    signed.extend_from_slice(message);
    signed
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
            hybrid: false,
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

    /// Whether the channel's keys came from the hybrid handshake (X25519 and ML-KEM-768), so
    /// that a recording of it stays unreadable to whoever later breaks X25519 alone.
    pub fn is_hybrid(&self) -> bool {
        self.hybrid
    }

    pub(crate) fn with_hybrid(mut self, hybrid: bool) -> Channel {
        self.hybrid = hybrid;
        self
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

    /// Protects the postcard encoding of `value` as a record's message with no bulk payload
    /// (see [`message_parts`]), written straight into a buffer with room for the tag (a large
    /// message is neither copied nor moved).
    pub fn seal_value<T: serde::Serialize>(
        &mut self,
        value: &T,
        protection: Protection,
    ) -> Result<Record, RecordError> {
        let size =
            postcard::experimental::serialized_size(value).map_err(|_| RecordError::Closed)?;
        let buffer = tessera_core::bytes::take(size + BULK_LEN + TAG);
        let mut message =
            tessera_core::bytes::encode_into(value, buffer).map_err(|_| RecordError::Closed)?;
        message.extend_from_slice(&[0; BULK_LEN]);
        self.seal_vec(message, protection)
    }

    /// Seals a message whose bulk payload travels first: the record's message is `bulk`, then
    /// the postcard encoding of `value` (whose own bulk field the caller has emptied), then the
    /// payload's length ([`message_parts`]) — written behind the payload in its own buffer and
    /// sealed there, so that the payload is not copied (a buffer with room for the rest and the
    /// tag is not moved either). Returns the frame's start, `prefix` and the record's header,
    /// and the rest of the frame, the record's body and MAC: written one after the other, they
    /// are the frame [`Channel::seal_value_framed`] would make of the same message.
    pub fn seal_split<T: serde::Serialize>(
        &mut self,
        value: &T,
        bulk: Vec<u8>,
        protection: Protection,
        prefix: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
        let mut message = bulk;
        let wiped = |message: Vec<u8>, e: RecordError| {
            // The payload may be a plaintext (a decryption's), not sealed.
            tessera_core::bytes::give(message, tessera_core::bytes::Held::Secret);
            Err(e)
        };
        let Ok(len) = u32::try_from(message.len()) else {
            let too_large = RecordError::TooLarge(message.len());
            return wiped(message, too_large);
        };
        let Ok(size) = postcard::experimental::serialized_size(value) else {
            return wiped(message, RecordError::Closed);
        };
        let room = size + BULK_LEN + TAG;
        if message.capacity() - message.len() < room {
            // Moved to a larger buffer by hand, and the old one wiped: growing it would free a
            // payload that may be a plaintext (a decryption's) unwiped.
            let mut larger = tessera_core::bytes::take(message.len() + room);
            larger.extend_from_slice(&message);
            tessera_core::bytes::give(message, tessera_core::bytes::Held::Secret);
            message = larger;
        }
        // The message's own encoding (a few dozen bytes for a call or a reply) is made apart:
        // the payload's buffer is never handed to the encoder, so no error drops it unwiped.
        let Ok(mut encoded) = tessera_core::bytes::encode_into(value, Vec::with_capacity(size))
        else {
            return wiped(message, RecordError::Closed);
        };
        message.extend_from_slice(&encoded);
        zeroize::Zeroize::zeroize(&mut encoded);
        message.extend_from_slice(&len.to_be_bytes());
        let Record {
            header,
            body: mut rest,
            mac,
        } = self.seal_vec(message, protection)?;
        rest.extend_from_slice(&mac);
        let mut start = Vec::with_capacity(prefix.len() + RECORD_HEADER_LEN);
        start.extend_from_slice(prefix);
        start.extend_from_slice(&header.to_bytes());
        Ok((start, rest))
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
        let sealed = match protection {
            Protection::Signed => self.sign(header.sequence, &header.to_bytes(), &message),
            Protection::Encrypted => {
                self.encrypt(header.sequence, &header.to_bytes(), &mut message)
            }
        };
        let tag = match sealed {
            Ok(tag) => tag,
            Err(e) => {
                // The message may be a plaintext, not sealed.
                tessera_core::bytes::give(message, tessera_core::bytes::Held::Secret);
                return Err(e);
            }
        };
        let (body, mac) = match protection {
            Protection::Signed => (message, tag.as_ref().to_vec()),
            Protection::Encrypted => {
                message.extend_from_slice(tag.as_ref());
                (message, Vec::new())
            }
        };
        self.sent(length);
        Ok(Record { header, body, mac })
    }

    /// Seals the postcard encoding of `value`, as a message with no bulk payload, into a frame:
    /// returns `prefix` followed by the
    /// record that [`Channel::seal_value`] would make, as sent ([`Record::encode_into`]), with
    /// the message written straight into the frame — no message buffer, no record. An
    /// encrypted message is encrypted there (no plaintext copy anywhere); a signed one is sent
    /// as it is, and its GMAC is computed over a copy of header and message, as for
    /// [`Channel::seal_vec`]. `prefix` is what precedes the record in the frame (the frame's
    /// own header).
    pub fn seal_value_framed<T: serde::Serialize>(
        &mut self,
        value: &T,
        protection: Protection,
        prefix: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let size =
            postcard::experimental::serialized_size(value).map_err(|_| RecordError::Closed)?;
        let header = self.next_header(protection).ok_or(RecordError::Closed)?;
        let aad = header.to_bytes();
        // Prefix, header, message (its encoding and an empty payload's length), and its tag (a
        // signed record's MAC, an encrypted one's GCM tag: 16 bytes either way).
        let mut frame =
            tessera_core::bytes::take(prefix.len() + RECORD_HEADER_LEN + size + BULK_LEN + TAG);
        frame.extend_from_slice(prefix);
        frame.extend_from_slice(&aad);
        let start = frame.len();
        let mut frame =
            tessera_core::bytes::encode_into(value, frame).map_err(|_| RecordError::Closed)?;
        frame.extend_from_slice(&[0; BULK_LEN]);
        let length = frame.len() - start;
        let sealed = match protection {
            Protection::Signed => self.sign(header.sequence, &aad, &frame[start..]),
            Protection::Encrypted => self.encrypt(header.sequence, &aad, &mut frame[start..]),
        };
        let Ok(tag) = sealed else {
            zeroize::Zeroize::zeroize(&mut frame);
            return Err(RecordError::Closed);
        };
        frame.extend_from_slice(tag.as_ref());
        self.sent(length as u64);
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
        let signed = header_and(aad, message);
        let tag = keys.send_mac().map_err(RecordError::from).and_then(|key| {
            key.seal_in_place_separate_tag(nonce(sequence), Aad::from(&signed), &mut [])
                .map_err(|_| RecordError::Closed)
        });
        // The copy may hold a plaintext (a policy that signs secrets without encrypting them).
        tessera_core::bytes::give(signed, tessera_core::bytes::Held::Secret);
        tag
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
        let aad = header.to_bytes();
        let len = match header.protection {
            Protection::Signed => {
                let signed = header_and(&aad, body);
                let mut tag = mac.to_vec();
                let checked = keys
                    .receive_mac()
                    .map_err(RecordError::from)
                    .and_then(|key| {
                        key.open_in_place(nonce(header.sequence), Aad::from(&signed), &mut tag)
                            .map(|_| ())
                            .map_err(|_| RecordError::Authentication(header.sequence))
                    });
                // As when signing: the copy may hold a plaintext.
                tessera_core::bytes::give(signed, tessera_core::bytes::Held::Secret);
                checked?;
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
    fn headers_round_trip_and_only_known_tags_read() {
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
            let encoded = header.to_bytes();
            assert_eq!(RecordHeader::from_bytes(&encoded), Some(header));
            for at in [8, 21] {
                let mut unknown = encoded;
                unknown[at] = 2;
                assert_eq!(RecordHeader::from_bytes(&unknown), None);
            }
        }
    }

    #[test]
    fn a_record_is_found_only_whole() {
        let (mut client, _, _) = twins();
        for protection in [Protection::Signed, Protection::Encrypted] {
            let record = client.seal(b"message", protection).unwrap();
            let mut bytes = Vec::new();
            record.encode_into(&mut bytes);
            assert_eq!(bytes.len(), record.encoded_len());
            assert_eq!(Record::decode(&bytes), Some(record));
            // Shorter than a header and a tag: nothing.
            assert_eq!(find_record(&bytes[..RECORD_HEADER_LEN + TAG - 1]), None);
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
                    message.resize(20_000 + message.len(), 0x33);
                }
                let protection = if encrypted { Protection::Encrypted } else { Protection::Signed };
                let frame = framed.seal_value_framed(&message, protection, &prefix).unwrap();
                let record = alone.seal_value(&message, protection).unwrap();
                let mut expected = prefix.clone();
                record.encode_into(&mut expected);
                proptest::prop_assert_eq!(&frame, &expected);
                let found = find_record(&frame[prefix.len()..]).unwrap();
                proptest::prop_assert_eq!(found.header, record.header);
                let (opened, got) = device.open_record(record).unwrap();
                proptest::prop_assert_eq!(got, protection);
                let parts = message_parts(&opened).unwrap();
                proptest::prop_assert_eq!(parts.bulk, 0);
                let decoded: Vec<u8> = postcard::from_bytes(&opened[parts.rest]).unwrap();
                proptest::prop_assert_eq!(decoded, message);
            }
            proptest::prop_assert_eq!(framed.usage(), alone.usage());
        }

        /// A message sealed with its payload first is, written in its two parts, the frame
        /// whose message is the payload, the value's encoding and the payload's length; the
        /// payload is sealed in its own buffer (one with room is not moved), and the other end
        /// finds the parts where they were.
        #[test]
        fn a_message_sealed_payload_first_opens_into_its_parts(
            payload in proptest::collection::vec(0u8..=255, 0..3000),
            value in proptest::collection::vec(0u8..=255, 0..40),
            encrypted in proptest::bool::ANY,
            room in proptest::bool::ANY,
            prefix in proptest::collection::vec(0u8..=255, 0..40),
        ) {
            let (mut split, mut alone, mut device) = twins();
            let protection = if encrypted { Protection::Encrypted } else { Protection::Signed };
            let spare = if room { 64 + BULK_LEN + TAG } else { 0 };
            let mut bulk = Vec::with_capacity(payload.len() + spare);
            bulk.extend_from_slice(&payload);
            let address = bulk.as_ptr();
            let (start, rest) = split.seal_split(&value, bulk, protection, &prefix).unwrap();
            // Sealed where it lay when there was room (else moved, the old buffer wiped).
            proptest::prop_assert_eq!(rest.as_ptr() == address, room);
            let mut message = payload.clone();
            message.extend_from_slice(&postcard::to_stdvec(&value).unwrap());
            message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            let mut expected = prefix.clone();
            alone.seal(&message, protection).unwrap().encode_into(&mut expected);
            let frame = [start, rest].concat();
            proptest::prop_assert_eq!(&frame, &expected);
            let record = Record::decode(&frame[prefix.len()..]).unwrap();
            let (opened, got) = device.open_record(record).unwrap();
            proptest::prop_assert_eq!(got, protection);
            let parts = message_parts(&opened).unwrap();
            proptest::prop_assert_eq!(&opened[..parts.bulk], &payload[..]);
            let decoded: Vec<u8> = postcard::from_bytes(&opened[parts.rest]).unwrap();
            proptest::prop_assert_eq!(decoded, value);
        }
    }

    #[test]
    fn a_message_is_read_only_with_a_payload_length_that_fits() {
        assert_eq!(message_parts(&[0, 0, 0]), None);
        assert_eq!(
            message_parts(&[7, 0, 0, 0, 0]),
            Some(MessageParts {
                bulk: 0,
                rest: 0..1
            })
        );
        assert_eq!(
            message_parts(&[7, 8, 0, 0, 0, 2]),
            Some(MessageParts {
                bulk: 2,
                rest: 2..2
            })
        );
        assert_eq!(message_parts(&[7, 8, 0, 0, 0, 3]), None);
        assert_eq!(message_parts(&[0xff, 0xff, 0xff, 0xff]), None);
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
