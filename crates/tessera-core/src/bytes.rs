//! `#[serde(with = "tessera_core::bytes")]` for `Vec<u8>` fields: serialized as one byte
//! string rather than a sequence of `u8` elements. In postcard both are a varint length and the
//! raw bytes, so the wire format is unchanged; only the per-byte serde calls go (a 1 MiB
//! payload was costing about a millisecond per encode or decode).
//!
//! Large byte strings are decoded into buffers from a small pool ([`take`], [`give`]) that the
//! code moving bulk data hands its buffers back to once they are spent: a freed megabyte may go
//! back to the system (glibc trims the top of its heap) and the next call's buffer then costs a
//! page fault per 4 KiB as it is filled, which halved 1 MiB AES-GCM through a channel. The
//! PKCS#11 library runs under its host's allocator, so it keeps its own bulk buffers instead.
//! Whoever hands a buffer back says what it held ([`Held`]): one that held a secret is wiped,
//! its whole capacity, before it is kept or freed; application data and ciphertexts are not
//! (the application holds the same bytes in its own memory).

use std::fmt;
use std::sync::Mutex;

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes the bytes as a byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(copy(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element()? {
            out.push(byte);
        }
        Ok(out)
    }
}

/// Deserializes a byte string (or, from formats without one, a sequence of bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

/// `#[serde(with = "tessera_core::bytes::list")]` for `Vec<Vec<u8>>` fields (a certificate
/// chain): each element a byte string, the wire format unchanged.
pub mod list {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};
    use std::fmt;

    /// One element, as a byte string.
    struct Element<'a>(&'a [u8]);

    impl serde::Serialize for Element<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    /// One element read back.
    struct Owned(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::deserialize(deserializer).map(Owned)
        }
    }

    /// Serializes the list, each element as a byte string.
    pub fn serialize<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(list.len()))?;
        for element in list {
            seq.serialize_element(&Element(element))?;
        }
        seq.end()
    }

    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of byte strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<u8>>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(Owned(element)) = seq.next_element()? {
                out.push(element);
            }
            Ok(out)
        }
    }

    /// Deserializes a list of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// Buffers smaller than this are left to the allocator (they come from its free lists).
const POOLED: usize = 64 * 1024;
/// The most the pool keeps, in bytes of capacity: a few 1 MiB calls in flight.
const POOL_BYTES: usize = 8 * 1024 * 1024;

/// The capacity of a new bulk buffer: rounded up to a whole number of pool units, so that a
/// later call whose frame is a few bytes longer (another id, another header) still finds it
/// large enough.
fn rounded(len: usize) -> usize {
    len.div_ceil(POOLED) * POOLED
}

/// Spent bulk buffers, kept for the next ones.
struct Pool(Mutex<Vec<Vec<u8>>>);

static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    /// The buffers, unless another thread holds them: the pool never makes anyone wait (nor
    /// deadlocks a forked child whose parent held the lock at the fork); without it a buffer
    /// is simply allocated, or freed.
    fn buffers(&self) -> Option<std::sync::MutexGuard<'_, Vec<Vec<u8>>>> {
        match self.0.try_lock() {
            Ok(buffers) => Some(buffers),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn take(&self, len: usize) -> Vec<u8> {
        if len < POOLED {
            return Vec::with_capacity(len);
        }
        self.take_kept(len)
            .unwrap_or_else(|| Vec::with_capacity(rounded(len)))
    }

    /// The smallest kept buffer with room for `len` bytes, if there is one (nothing is
    /// allocated).
    fn take_kept(&self, len: usize) -> Option<Vec<u8>> {
        if len < POOLED {
            return None;
        }
        let mut buffers = self.buffers()?;
        let best = (buffers.iter().enumerate())
            .filter(|(_, buffer)| buffer.capacity() >= len)
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(i, _)| i)?;
        let mut buffer = buffers.swap_remove(best);
        buffer.clear();
        Some(buffer)
    }

    fn give(&self, mut buffer: Vec<u8>, held: Held) {
        if held == Held::Secret {
            wipe(&mut buffer);
        }
        if buffer.capacity() < POOLED || buffer.capacity() > POOL_BYTES / 2 {
            return;
        }
        buffer.clear();
        let Some(mut buffers) = self.buffers() else {
            return;
        };
        buffers.push(buffer);
        while buffers.iter().map(Vec::capacity).sum::<usize>() > POOL_BYTES {
            let smallest = (buffers.iter().enumerate())
                .min_by_key(|(_, buffer)| buffer.capacity())
                .map(|(i, _)| i);
            let Some(i) = smallest else { break };
            drop(buffers.swap_remove(i));
        }
    }
}

/// An empty buffer with room for `len` bytes: for a large one, the smallest pooled buffer that
/// is large enough, if there is one.
pub fn take(len: usize) -> Vec<u8> {
    POOL.take(len)
}

/// Room left after a bulk byte string copied in ([`copy`], [`try_copy`]): a cipher that adopts
/// the buffer (a single-part AES-GCM) appends its tag, or a block of padding, there, and a
/// record sealed around it as its payload (`tessera_channel::Channel::seal_split`) the rest of
/// its message and its own tag, instead of moving the bytes to a larger buffer.
pub const ROOM: usize = 256;

/// `bytes` copied into a buffer from [`take`]; a bulk one (64 KiB or more) with
/// [`ROOM`] to spare. A smaller one gets none: a key value or PIN decoded here may be moved
/// into a locked slot sized by the buffer's capacity (`SecretBytes::new`), which must not grow.
///
/// Never inlined, nor are [`try_copy`] and the encoder's copy ([`encode_into`]): a profile of a
/// bulk call's copies (valgrind's DHAT, which sees each `memcpy` with its stack) tells them
/// apart by their names, which a release build's inlined frames lose.
#[inline(never)]
pub fn copy(bytes: &[u8]) -> Vec<u8> {
    let room = if bytes.len() >= POOLED { ROOM } else { 0 };
    let mut buffer = take(bytes.len() + room);
    buffer.extend_from_slice(bytes);
    buffer
}

/// As [`copy`], but `None` where the memory cannot be had, instead of aborting the process:
/// for what an application hands the PKCS#11 library, which must never take its host down.
#[inline(never)]
pub fn try_copy(bytes: &[u8]) -> Option<Vec<u8>> {
    // A pooled buffer when one is large enough; never a new allocation that can abort.
    let len = bytes.len();
    let room = if len >= POOLED { ROOM } else { 0 };
    let mut buffer = match POOL.take_kept(len + room) {
        Some(kept) => kept,
        None => {
            let mut fresh = Vec::new();
            let capacity = if len < POOLED {
                len
            } else {
                rounded(len + room)
            };
            fresh.try_reserve_exact(capacity).ok()?;
            fresh
        }
    };
    buffer.extend_from_slice(bytes);
    Some(buffer)
}

/// The postcard encoding of `value` appended to `out` (a plain buffer, or a secret's:
/// [`Append`]), each byte string copied in one piece (`postcard::to_extend` hands a slice over
/// as an iterator of bytes: a 1 MiB payload became a loop of a million appends, and a copy no
/// `memcpy` profile sees).
pub fn encode_into<T: serde::Serialize + ?Sized, B: Append>(
    value: &T,
    out: B,
) -> Result<B, postcard::Error> {
    postcard::serialize_with_flavor(value, Extending(out))
}

/// A buffer that postcard's writer appends to ([`encode_into`]): a `Vec<u8>`, or a
/// `SecretBytes` (a key value encoded for a record: no plain buffer holds it on the way).
pub trait Append {
    /// Appends `bytes`, in one piece.
    fn append(&mut self, bytes: &[u8]);
}

impl Append for Vec<u8> {
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// postcard's writer onto the end of a buffer (see [`encode_into`]).
struct Extending<B>(B);

impl<B: Append> postcard::ser_flavors::Flavor for Extending<B> {
    type Output = B;

    #[inline(never)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.append(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.append(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<B> {
        Ok(self.0)
    }
}

/// What a spent buffer held, as the call table classifies it (`tessera_wire::Traits::secret`,
/// `Reply::carries_secret`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A PIN, a key value, a decryption's plaintext, readable attributes, or bytes that did not
    /// decode (which may be any of these): wiped before the buffer is kept or freed.
    Secret,
    /// Application data on its way to an operation, a ciphertext, a signature, a sealed record:
    /// kept as it is (the application has the same bytes; wiping a megabyte costs a tenth of
    /// a 1 MiB AES-GCM call).
    Data,
}

impl Held {
    /// `Secret` when `secret`, else `Data`.
    pub fn secret_if(secret: bool) -> Held {
        if secret {
            Held::Secret
        } else {
            Held::Data
        }
    }
}

/// Hands a spent buffer back for reuse; a small one, or one the full pool cannot keep, is
/// freed. A buffer that [`Held::Secret`] is wiped first, its whole capacity (whatever was ever
/// written there). When the pool is full, the smallest buffers go.
pub fn give(buffer: Vec<u8>, held: Held) {
    POOL.give(buffer, held)
}

/// Overwrites the buffer's whole capacity with zeros and leaves it empty. One fill at memset
/// speed (`zeroize` writes a byte at a time, volatile: 1 MiB cost about a millisecond); the
/// buffer is then handed to an opaque barrier, so the writes are not dropped as dead stores
/// even when it is freed next.
fn wipe(buffer: &mut Vec<u8>) {
    buffer.clear();
    buffer.resize(buffer.capacity(), 0);
    std::hint::black_box(buffer.as_mut_slice());
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::{copy, POOLED, ROOM};

    /// A bulk byte string is decoded with room for a tag; a small one (a key value, a PIN that
    /// may move into a locked slot sized by the capacity) with none.
    #[test]
    fn only_bulk_byte_strings_get_room_to_spare() {
        for len in [0, 32, 16_384, POOLED - 1] {
            assert_eq!(copy(&vec![3; len]).capacity(), len, "{len} bytes");
        }
        for len in [POOLED, POOLED + 1, 1 << 20] {
            let copied = copy(&vec![3; len]);
            assert!(copied.capacity() >= len + ROOM, "{len} bytes");
            assert_eq!(copied.len(), len);
        }
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "crate::bytes")] Vec<u8>);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Plain(Vec<u8>);

    #[test]
    fn the_postcard_encoding_is_the_plain_vec_encoding() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let fast = postcard::to_stdvec(&Fast(data.clone())).unwrap();
            let plain = postcard::to_stdvec(&Plain(data.clone())).unwrap();
            assert_eq!(fast, plain, "length {len}");
            assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap(), Fast(data));
        }
    }

    /// The encoder that copies byte strings in one piece writes what postcard's own writes,
    /// after what the buffer held.
    #[test]
    fn encode_into_appends_the_postcard_encoding() {
        for len in [0usize, 1, 128, 70_000] {
            let value = (
                len as u64,
                Fast((0..len).map(|i| (i * 5) as u8).collect()),
                "end",
            );
            let mut expected = vec![9, 8, 7];
            expected.extend(postcard::to_stdvec(&value).unwrap());
            assert_eq!(
                super::encode_into(&value, vec![9, 8, 7]).unwrap(),
                expected,
                "length {len}"
            );
        }
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct FastList(#[serde(with = "crate::bytes::list")] Vec<Vec<u8>>);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct PlainList(Vec<Vec<u8>>);

    #[test]
    fn a_list_of_byte_strings_is_encoded_as_the_plain_list() {
        for lens in [vec![], vec![0], vec![5, 1500, 0, 128], vec![7000; 3]] {
            let list: Vec<Vec<u8>> = lens
                .iter()
                .map(|&len| (0..len).map(|i| (i * 3) as u8).collect())
                .collect();
            let fast = postcard::to_stdvec(&FastList(list.clone())).unwrap();
            let plain = postcard::to_stdvec(&PlainList(list.clone())).unwrap();
            assert_eq!(fast, plain, "lengths {lens:?}");
            assert_eq!(
                postcard::from_bytes::<FastList>(&plain).unwrap(),
                FastList(list)
            );
        }
    }

    #[test]
    fn large_buffers_are_reused_and_the_pool_stays_bounded() {
        use super::{Pool, POOLED, POOL_BYTES};
        let pool = Pool::new();
        let mut buffer = pool.take(200_000);
        buffer.extend_from_slice(&[7; 200_000]);
        let address = buffer.as_ptr();
        pool.give(buffer, super::Held::Data);
        // Too large for it: a fresh buffer, its capacity rounded up to whole pool units, and
        // the pooled one stays.
        assert_eq!(pool.take(300_000).capacity(), 5 * POOLED);
        // A little longer than the spent one (its capacity was rounded up too): it is reused.
        let again = pool.take(200_100);
        assert!(again.is_empty(), "a reused buffer comes back empty");
        assert_eq!(again.as_ptr(), address, "the spent buffer is reused");
        // The smallest buffer that fits is chosen.
        pool.give(Vec::with_capacity(1024 * 1024), super::Held::Data);
        pool.give(again, super::Held::Data);
        let smallest = pool.take(100_000);
        assert_eq!(smallest.as_ptr(), address);
        // Bounded: small buffers and ones over half the pool are never kept, and the total
        // stays under the cap however many are given.
        pool.give(Vec::with_capacity(1000), super::Held::Data);
        pool.give(Vec::with_capacity(POOL_BYTES), super::Held::Data);
        for _ in 0..20 {
            pool.give(Vec::with_capacity(3 * 1024 * 1024), super::Held::Data);
        }
        let buffers = pool.buffers().unwrap();
        let kept: usize = buffers.iter().map(Vec::capacity).sum();
        assert!(kept <= POOL_BYTES, "the pool keeps {kept} bytes");
        assert!(buffers.iter().all(|b| b.capacity() >= POOLED));
        assert_eq!(
            buffers.len(),
            2,
            "two 3 MiB buffers fit under the 8 MiB cap"
        );
    }

    #[test]
    fn a_held_pool_makes_no_one_wait() {
        use super::Pool;
        let pool = Pool::new();
        pool.give(Vec::with_capacity(100_000), super::Held::Data);
        let held = pool.buffers().unwrap();
        // Another thread holds the buffers: a fresh buffer comes at once, a spent one is freed.
        assert!(pool.take(100_000).capacity() >= 100_000);
        pool.give(Vec::with_capacity(200_000), super::Held::Data);
        drop(held);
        let buffers = pool.buffers().unwrap();
        assert_eq!(
            buffers.len(),
            1,
            "only the buffer given while the pool was free is kept"
        );
        assert_eq!(buffers[0].capacity(), 100_000);
    }
}
