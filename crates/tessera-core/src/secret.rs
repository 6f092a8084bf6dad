//! Secret byte strings: PINs and key material.
//!
//! A secret of up to [`LARGEST`](crate::locked::LARGEST) bytes — every PIN and every key
//! value — lives in a slot of locked, non-dumpable memory ([`crate::locked`]); a larger one (bulk
//! data that a call marks secret, such as a big plaintext) lives on the heap. Either way its
//! bytes are wiped when it is dropped, and when it moves from one buffer to a larger one.

use std::fmt;

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::locked::{self, Slot};

/// Bytes that must never be logged and are wiped when dropped.
///
/// `Debug` prints only the length; equality is compared in constant time. There is no `Clone`:
/// copying a secret is an explicit [`SecretBytes::duplicate`].
#[derive(Default)]
pub struct SecretBytes(Store);

#[derive(Default)]
enum Store {
    #[default]
    Empty,
    /// In a locked slot: the first `len` bytes are the secret, the rest are zero.
    Locked { slot: Slot, len: usize },
    /// Too large for a slot (or none could be had).
    Heap(Vec<u8>),
}

impl SecretBytes {
    /// Wraps bytes (taking ownership). A small secret is copied into locked memory and the
    /// given buffer wiped.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        if bytes.capacity() == 0 {
            return Self::default();
        }
        match locked::take(bytes.len().max(bytes.capacity())) {
            Some(mut slot) => {
                slot.bytes_mut()[..bytes.len()].copy_from_slice(&bytes);
                let len = bytes.len();
                bytes.zeroize();
                Self(Store::Locked { slot, len })
            }
            None => Self(Store::Heap(bytes)),
        }
    }

    /// An empty secret that stays on the heap (wiped when dropped or moved, as any secret, but
    /// never in a locked slot): an application's bulk data on its way through a cipher, which
    /// is not key material and would only be copied out of a slot to be transformed in place.
    pub fn unlocked() -> Self {
        Self(Store::Heap(Vec::new()))
    }

    /// Application data adopted as it is, on the heap as [`SecretBytes::unlocked`] keeps it
    /// (wiped when dropped or moved): a single-part cipher's input, transformed where it
    /// arrived instead of being copied into a buffer of the operation's first.
    pub fn unlocked_from(bytes: Vec<u8>) -> Self {
        Self(Store::Heap(bytes))
    }

    /// An empty secret with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut secret = Self::default();
        secret.reserve(capacity);
        secret
    }

    /// Copies a slice into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut secret = Self::default();
        secret.extend_from_slice(bytes);
        secret
    }

    /// As [`SecretBytes::from_slice`], but `None` where the memory cannot be had, instead of
    /// aborting the process: for what an application hands the PKCS#11 library (a PIN, a seed),
    /// which must never take its host down.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() {
            return Some(Self::default());
        }
        if let Some(mut slot) = locked::take(bytes.len()) {
            slot.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
            return Some(Self(Store::Locked {
                slot,
                len: bytes.len(),
            }));
        }
        let mut heap = Vec::new();
        heap.try_reserve_exact(bytes.len()).ok()?;
        heap.extend_from_slice(bytes);
        Some(Self(Store::Heap(heap)))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        match &self.0 {
            Store::Empty => &[],
            Store::Locked { slot, len } => &slot.bytes()[..*len],
            Store::Heap(bytes) => bytes,
        }
    }

    /// The secret bytes, for transformation in place (decryption into the buffer).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Store::Empty => &mut [],
            Store::Locked { slot, len } => &mut slot.bytes_mut()[..*len],
            Store::Heap(bytes) => bytes,
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An explicit copy of the secret.
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose())
    }

    /// Room for `additional` more bytes, so that later appends do not move the secret (a move
    /// wipes the old buffer, but costs a copy).
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self.len().saturating_add(additional);
        let capacity = match &self.0 {
            Store::Empty => 0,
            Store::Locked { slot, .. } => slot.capacity(),
            Store::Heap(bytes) => bytes.capacity(),
        };
        if wanted <= capacity {
            return;
        }
        if let Store::Heap(bytes) = &mut self.0 {
            // Grown by hand: `Vec::reserve` would leave the old buffer unwiped when it moves.
            let mut grown = Vec::with_capacity(wanted.max(bytes.capacity() * 2));
            grown.extend_from_slice(bytes);
            bytes.zeroize();
            *bytes = grown;
            return;
        }
        let moved = match locked::take(wanted) {
            Some(mut slot) => {
                let len = self.len();
                slot.bytes_mut()[..len].copy_from_slice(self.expose());
                Store::Locked { slot, len }
            }
            None => {
                let mut bytes = Vec::with_capacity(wanted);
                bytes.extend_from_slice(self.expose());
                Store::Heap(bytes)
            }
        };
        self.release();
        self.0 = moved;
    }

    /// Appends bytes.
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        self.reserve(more.len());
        match &mut self.0 {
            Store::Empty => {}
            Store::Locked { slot, len } => {
                slot.bytes_mut()[*len..*len + more.len()].copy_from_slice(more);
                *len += more.len();
            }
            Store::Heap(bytes) => bytes.extend_from_slice(more),
        }
    }

    /// Keeps the first `new_len` bytes, wiping the rest.
    pub fn truncate(&mut self, new_len: usize) {
        match &mut self.0 {
            Store::Empty => {}
            Store::Locked { slot, len } => {
                if new_len < *len {
                    slot.bytes_mut()[new_len..*len].zeroize();
                    *len = new_len;
                }
            }
            Store::Heap(bytes) => {
                if new_len < bytes.len() {
                    bytes[new_len..].zeroize();
                    bytes.truncate(new_len);
                }
            }
        }
    }

    /// Removes and returns the last byte.
    pub fn pop(&mut self) -> Option<u8> {
        let last = *self.expose().last()?;
        self.truncate(self.len() - 1);
        Some(last)
    }

    /// Moves the bytes out into a plain buffer: for a result that stops being secret once it is
    /// transformed in place (a plaintext about to be encrypted), or a secret written out as it
    /// is (a decryption's plaintext behind its reply frame's head), which the caller then wipes.
    /// A large secret's buffer moves without a copy; a small one is copied out of its slot,
    /// which is wiped.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        let bytes = match &mut self.0 {
            Store::Heap(bytes) => std::mem::take(bytes),
            _ => {
                let mut out = crate::bytes::take(self.len() + 16);
                out.extend_from_slice(self.expose());
                out
            }
        };
        self.release();
        bytes
    }

    /// Wipes and gives back the buffer, leaving the secret empty.
    fn release(&mut self) {
        match std::mem::take(&mut self.0) {
            Store::Empty => {}
            Store::Locked { slot, .. } => locked::give(slot),
            Store::Heap(mut bytes) => bytes.zeroize(),
        }
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.release();
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.release();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl SecretBytes {
    /// The postcard encoding of `value`, written straight into a secret sized first (a secret
    /// record: no plain buffer holds it on the way), each byte string copied in one piece.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<SecretBytes, postcard::Error> {
        let size = postcard::experimental::serialized_size(value)?;
        crate::bytes::encode_into(value, SecretBytes::with_capacity(size))
    }
}

impl crate::bytes::Append for SecretBytes {
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.expose().ct_eq(other.expose()).into()
    }
}

impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.expose())
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = SecretBytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<SecretBytes, E> {
        if v.len() > locked::LARGEST {
            // Bulk data: from the pool of large buffers, as other byte strings.
            return Ok(SecretBytes(Store::Heap(crate::bytes::copy(v))));
        }
        Ok(SecretBytes::from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<SecretBytes, E> {
        Ok(SecretBytes::new(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SecretBytes, A::Error> {
        let mut out = SecretBytes::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element::<u8>()? {
            out.extend_from_slice(&[byte]);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::locked::tests::vm_flags;

    #[test]
    fn an_unlocked_secret_stays_on_the_heap_and_moves_out_without_a_copy() {
        let mut data = SecretBytes::unlocked();
        data.extend_from_slice(&[7; 100]);
        data.reserve(16);
        let address = data.expose().as_ptr();
        let taken = data.take_bytes();
        assert_eq!(taken.as_ptr(), address, "moved, not copied out of a slot");
        assert_eq!(taken, vec![7; 100]);
        assert!(data.is_empty());
    }

    #[test]
    fn an_encoder_writes_a_record_straight_into_a_secret() {
        let values: Vec<Vec<u8>> = vec![vec![0x11; 40], vec![0x22; 300], vec![0x33; 5000]];
        let encoded = SecretBytes::encode(&values).expect("encoded");
        assert_eq!(encoded.expose(), postcard::to_stdvec(&values).unwrap());
        let flags = vm_flags(encoded.expose().as_ptr() as usize);
        assert!(flags.split(' ').any(|f| f == "dd"), "{flags}");
    }

    #[test]
    fn a_fallible_copy_is_the_same_secret_in_the_same_memory() {
        let pin = SecretBytes::try_from_slice(b"123456").expect("memory");
        assert_eq!(pin.expose(), b"123456");
        let flags = vm_flags(pin.expose().as_ptr() as usize);
        assert!(flags.split(' ').any(|f| f == "dd"), "{flags}");
        let big = SecretBytes::try_from_slice(&[9; 1 << 20]).expect("memory");
        assert_eq!(big.expose(), &[9; 1 << 20][..]);
        assert!(SecretBytes::try_from_slice(&[]).expect("memory").is_empty());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = SecretBytes::from_slice(b"123456");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("123456"), "{shown}");
        assert!(shown.contains("6 bytes"));
    }

    #[test]
    fn pins_and_keys_live_in_locked_memory_left_out_of_dumps() {
        let pin = SecretBytes::new(b"marker-pin-1234".to_vec());
        let key = SecretBytes::from_slice(&[0x5A; 4800]);
        for secret in [&pin, &key] {
            let flags = vm_flags(secret.expose().as_ptr() as usize);
            let has = |flag| flags.split(' ').any(|f| f == flag);
            assert!(has("lo") && has("dd"), "{} bytes in {flags}", secret.len());
        }
        assert_eq!(pin.expose(), b"marker-pin-1234");
    }

    #[test]
    fn growing_moves_to_a_larger_slot_and_wipes_the_old_one() {
        let mut secret = SecretBytes::from_slice(&[7; 30]);
        let old = secret.expose().as_ptr() as usize;
        secret.extend_from_slice(&[8; 100]);
        assert_eq!(secret.len(), 130);
        assert_eq!(&secret.expose()[..30], &[7; 30]);
        assert_eq!(&secret.expose()[30..], &[8; 100]);
        assert_ne!(secret.expose().as_ptr() as usize, old, "should have moved");
        // Past the largest slot it goes to the heap, still whole.
        secret.extend_from_slice(&vec![9; locked::LARGEST]);
        assert_eq!(secret.len(), 130 + locked::LARGEST);
        assert_eq!(secret.expose()[129], 8);
    }

    #[test]
    fn truncate_pop_and_take_keep_the_right_bytes() {
        let mut secret = SecretBytes::from_slice(b"abcdef");
        secret.truncate(4);
        assert_eq!(secret.expose(), b"abcd");
        assert_eq!(secret.pop(), Some(b'd'));
        assert_eq!(secret.take_bytes(), b"abc");
        assert!(secret.is_empty());
        assert_eq!(SecretBytes::default().pop(), None);
    }

    #[test]
    fn equality_and_wire_form() {
        let a = SecretBytes::from_slice(b"same");
        assert_eq!(a, SecretBytes::new(b"same".to_vec()));
        assert_ne!(a, SecretBytes::from_slice(b"diff"));
        let wire = postcard::to_allocvec(&a).unwrap();
        assert_eq!(wire, postcard::to_allocvec(&b"same"[..]).unwrap());
        let back: SecretBytes = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, a);
        let big = SecretBytes::from_slice(&vec![1; 100_000]);
        let back: SecretBytes =
            postcard::from_bytes(&postcard::to_allocvec(&big).unwrap()).unwrap();
        assert_eq!(back, big);
    }
}
