//! AES in the block modes (ECB, CBC, CBC with PKCS #7 padding, CTR) as a stream: each update
//! returns the output of every whole block it can, and the operation keeps at most one block
//! of input between calls (a CBC-PAD decryption keeps the last block, which may be the
//! padding, until the final call). A multi-part operation of any length runs in the memory of
//! one block.

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, PaddedBlockDecryptingKey,
    UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use tessera_core::{Rv, SecretBytes};

const BLOCK: usize = 16;

/// The block mode of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `CKM_AES_ECB`: whole blocks only.
    Ecb,
    /// `CKM_AES_CBC`: whole blocks only.
    Cbc,
    /// `CKM_AES_CBC_PAD`: PKCS #7 padding added by encryption, checked and removed by
    /// decryption.
    CbcPad,
    /// `CKM_AES_CTR` whose counter is the low `bits` bits of the counter block: input that
    /// would make it wrap (and so repeat the key stream) is refused.
    Ctr(u32),
}

/// What a stream returns: ciphertext (public), or plaintext (secret).
pub(crate) enum Piece {
    /// Ciphertext.
    Cipher(Vec<u8>),
    /// Plaintext.
    Plain(SecretBytes),
}

/// An AES block-mode encryption or decryption in progress.
pub(crate) struct BlockStream {
    key: SecretBytes,
    mode: Mode,
    encrypt: bool,
    /// CBC: the IV of the next block (the last ciphertext block). CTR: the next counter block.
    chain: [u8; BLOCK],
    /// CTR: the first counter block, for the wrap check.
    start: [u8; BLOCK],
    /// Blocks processed so far.
    blocks: u128,
    /// Input not processed yet: less than a block, or a CBC-PAD decryption's last block.
    held: SecretBytes,
}

impl BlockStream {
    /// A stream under `key` (16, 24 or 32 bytes); `iv` is the IV (CBC) or the first counter
    /// block (CTR), ignored for ECB.
    pub(crate) fn new(key: &[u8], mode: Mode, encrypt: bool, iv: [u8; BLOCK]) -> BlockStream {
        BlockStream {
            key: SecretBytes::from_slice(key),
            mode,
            encrypt,
            chain: iv,
            start: iv,
            blocks: 0,
            held: SecretBytes::with_capacity(2 * BLOCK),
        }
    }

    /// Input left over, in bytes (less than two blocks).
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// The error for input of a length the mode cannot take.
    fn length_error(&self) -> Rv {
        super::length_error(self.encrypt)
    }

    /// Feeds `data`; returns the output of the whole blocks that can be processed now.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<Piece, Rv> {
        let total = self.held.len() + data.len();
        // A CBC-PAD decryption keeps the last block (it may be the padding) until the end.
        let keep = match (self.mode, self.encrypt) {
            (Mode::CbcPad, false) if total > 0 => (total - 1) % BLOCK + 1,
            _ => total % BLOCK,
        };
        let process = total - keep;
        if process == 0 {
            self.held.extend_from_slice(data);
            return Ok(self.empty());
        }
        let from_data = process - self.held.len();
        let (now, later) = data.split_at(from_data);
        // What was held goes first (an error ends the operation, so it may go).
        let mut carried = zeroize::Zeroizing::new([0u8; 2 * BLOCK]);
        let carried_len = self.held.len();
        carried[..carried_len].copy_from_slice(self.held.expose());
        self.held.truncate(0);
        let piece = self.blocks_of(&carried[..carried_len], now)?;
        self.held.extend_from_slice(later);
        Ok(piece)
    }

    /// Ends the stream: the output of what is held (CTR's last partial block, CBC-PAD's last
    /// block with its padding); ECB and CBC must end on a whole block.
    pub(crate) fn finish(mut self) -> Result<Piece, Rv> {
        let held = std::mem::take(&mut self.held);
        match (self.mode, self.encrypt) {
            (Mode::Ecb | Mode::Cbc, _) => match held.is_empty() {
                true => Ok(self.empty()),
                false => Err(self.length_error()),
            },
            (Mode::Ctr(_), _) => self.blocks_of(held.expose(), &[]),
            (Mode::CbcPad, true) => {
                let pad = BLOCK - held.len();
                let mut last = SecretBytes::from_slice(held.expose());
                last.extend_from_slice(&[pad as u8; BLOCK][..pad]);
                self.blocks_of(last.expose(), &[])
            }
            (Mode::CbcPad, false) => {
                if held.len() != BLOCK {
                    return Err(Rv::EncryptedDataLenRange);
                }
                let cipher = PaddedBlockDecryptingKey::cbc_pkcs7(self.unbound()?)
                    .map_err(|_| Rv::FunctionFailed)?;
                let mut plain = SecretBytes::from_slice(held.expose());
                let context = DecryptionContext::Iv128(FixedLength::from(self.chain));
                let len = cipher
                    .decrypt(plain.expose_mut(), context)
                    .map_err(|_| Rv::EncryptedDataInvalid)?
                    .len();
                plain.truncate(len);
                Ok(Piece::Plain(plain))
            }
        }
    }

    fn empty(&self) -> Piece {
        match self.encrypt {
            true => Piece::Cipher(Vec::new()),
            false => Piece::Plain(SecretBytes::default()),
        }
    }

    fn unbound(&self) -> Result<UnboundCipherKey, Rv> {
        let algorithm = match self.key.len() {
            16 => &AES_128,
            24 => &AES_192,
            32 => &AES_256,
            _ => return Err(Rv::KeyTypeInconsistent),
        };
        UnboundCipherKey::new(algorithm, self.key.expose()).map_err(|_| Rv::KeyTypeInconsistent)
    }

    /// Processes `first` followed by `second` (whole blocks, or CTR's last partial one) and
    /// moves the chaining value on.
    fn blocks_of(&mut self, first: &[u8], second: &[u8]) -> Result<Piece, Rv> {
        let len = first.len() + second.len();
        let blocks = len.div_ceil(BLOCK) as u128;
        if let Mode::Ctr(bits) = self.mode {
            if !ctr_fits(&self.start, bits, self.blocks + blocks) {
                return Err(self.length_error());
            }
        }
        let context = match self.mode {
            Mode::Ecb => None,
            _ => Some(self.chain),
        };
        let next_chain = |ciphertext: &[u8]| -> [u8; BLOCK] {
            let mut last = [0u8; BLOCK];
            if ciphertext.len() >= BLOCK {
                last.copy_from_slice(&ciphertext[ciphertext.len() - BLOCK..]);
            }
            last
        };
        let piece = if self.encrypt {
            // The cipher first: the plaintext is copied only into a buffer it then overwrites.
            let cipher = match self.mode {
                Mode::Ecb => EncryptingKey::ecb(self.unbound()?),
                Mode::Cbc | Mode::CbcPad => EncryptingKey::cbc(self.unbound()?),
                Mode::Ctr(_) => EncryptingKey::ctr(self.unbound()?),
            }
            .map_err(|_| Rv::FunctionFailed)?;
            // Room for a last block too, which a single-part call appends without a move.
            let mut out = tessera_core::bytes::take(len + BLOCK);
            out.extend_from_slice(first);
            out.extend_from_slice(second);
            let context = context.map_or(EncryptionContext::None, |iv| {
                EncryptionContext::Iv128(FixedLength::from(iv))
            });
            cipher
                .less_safe_encrypt(&mut out, context)
                .map_err(|_| Rv::FunctionFailed)?;
            if matches!(self.mode, Mode::Cbc | Mode::CbcPad) {
                self.chain = next_chain(&out);
            }
            Piece::Cipher(out)
        } else {
            let mut out = SecretBytes::unlocked();
            out.reserve(len + BLOCK);
            out.extend_from_slice(first);
            out.extend_from_slice(second);
            if matches!(self.mode, Mode::Cbc | Mode::CbcPad) {
                // The IV of the next block is this input's last ciphertext block.
                let chain = next_chain(out.expose());
                let cipher = DecryptingKey::cbc(self.unbound()?).map_err(|_| Rv::FunctionFailed)?;
                let context = DecryptionContext::Iv128(FixedLength::from(self.chain));
                cipher
                    .decrypt(out.expose_mut(), context)
                    .map_err(|_| Rv::EncryptedDataInvalid)?;
                self.chain = chain;
            } else {
                let cipher = match self.mode {
                    Mode::Ecb => DecryptingKey::ecb(self.unbound()?),
                    _ => DecryptingKey::ctr(self.unbound()?),
                }
                .map_err(|_| Rv::FunctionFailed)?;
                let context = context.map_or(DecryptionContext::None, |iv| {
                    DecryptionContext::Iv128(FixedLength::from(iv))
                });
                cipher
                    .decrypt(out.expose_mut(), context)
                    .map_err(|_| Rv::EncryptedDataInvalid)?;
            }
            Piece::Plain(out)
        };
        if let Mode::Ctr(_) = self.mode {
            // The counter runs over the whole block (no carry out of the counter bits, which
            // the check above ensures).
            let next = u128::from_be_bytes(self.chain).wrapping_add(blocks);
            self.chain = next.to_be_bytes();
        }
        self.blocks += blocks;
        Ok(piece)
    }
}

impl Drop for BlockStream {
    fn drop(&mut self) {
        // The chaining value is the last ciphertext block, which a key derivation by
        // encryption (CKM_AES_CBC_ENCRYPT_DATA) makes key material.
        zeroize::Zeroize::zeroize(&mut self.chain);
        zeroize::Zeroize::zeroize(&mut self.start);
    }
}

/// Whether `blocks` blocks of CTR key stream fit before the low `bits` bits of `start` (the
/// counter, big-endian) wrap around.
fn ctr_fits(start: &[u8; BLOCK], bits: u32, blocks: u128) -> bool {
    if bits >= 128 {
        return true;
    }
    let counter = u128::from_be_bytes(*start) & ((1u128 << bits) - 1);
    blocks <= (1u128 << bits) - counter
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(piece: Piece) -> Vec<u8> {
        match piece {
            Piece::Cipher(bytes) => bytes,
            Piece::Plain(secret) => secret.expose().to_vec(),
        }
    }

    /// The whole input at once.
    fn whole(
        key: &[u8],
        mode: Mode,
        encrypt: bool,
        iv: [u8; 16],
        data: &[u8],
    ) -> Result<Vec<u8>, Rv> {
        let mut stream = BlockStream::new(key, mode, encrypt, iv);
        let mut out = bytes(stream.update(data)?);
        out.extend(bytes(stream.finish()?));
        Ok(out)
    }

    /// The input in parts of the given sizes (cycled), checking what each update may hold.
    fn parts(
        key: &[u8],
        mode: Mode,
        encrypt: bool,
        iv: [u8; 16],
        data: &[u8],
        sizes: &[usize],
    ) -> Result<Vec<u8>, Rv> {
        let mut stream = BlockStream::new(key, mode, encrypt, iv);
        let mut out = Vec::new();
        let mut rest = data;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (part, tail) = rest.split_at((*size).min(rest.len()));
            out.extend(bytes(stream.update(part)?));
            assert!(stream.held() <= BLOCK, "at most one block is kept");
            rest = tail;
        }
        out.extend(bytes(stream.finish()?));
        Ok(out)
    }

    #[test]
    fn published_vectors() {
        // NIST SP 800-38A F.2.1 (CBC-AES128.Encrypt), F.5.1 (CTR-AES128.Encrypt), F.1.1 (ECB).
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let plain = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51"
        ));
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let cbc = hex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2");
        assert_eq!(
            parts(&key, Mode::Cbc, true, iv, &plain, &[5, 17]),
            Ok(cbc.clone())
        );
        assert_eq!(
            parts(&key, Mode::Cbc, false, iv, &cbc, &[3]),
            Ok(plain.clone())
        );
        let counter: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let ctr = hex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff");
        assert_eq!(
            parts(&key, Mode::Ctr(128), true, counter, &plain, &[7]),
            Ok(ctr)
        );
        let ecb = hex("3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf");
        assert_eq!(
            parts(&key, Mode::Ecb, true, [0; 16], &plain, &[16, 1]),
            Ok(ecb)
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    #[test]
    fn lengths_the_modes_refuse() {
        let key = [1u8; 16];
        assert_eq!(
            whole(&key, Mode::Cbc, true, [0; 16], &[0; 17]),
            Err(Rv::DataLenRange)
        );
        assert_eq!(
            whole(&key, Mode::Ecb, false, [0; 16], &[0; 15]),
            Err(Rv::EncryptedDataLenRange)
        );
        assert_eq!(
            whole(&key, Mode::CbcPad, false, [0; 16], &[]),
            Err(Rv::EncryptedDataLenRange)
        );
        assert_eq!(
            whole(&key, Mode::CbcPad, false, [0; 16], &[0; 16]),
            Err(Rv::EncryptedDataInvalid),
            "not a padding"
        );
        // An 8-bit counter at 0xfe has two blocks left: a third would repeat the key stream,
        // whether it comes in one update or across several.
        let mut start = [0u8; 16];
        start[15] = 0xfe;
        assert!(whole(&key, Mode::Ctr(8), true, start, &[0; 32]).is_ok());
        assert_eq!(
            whole(&key, Mode::Ctr(8), true, start, &[0; 33]),
            Err(Rv::DataLenRange)
        );
        assert_eq!(
            parts(&key, Mode::Ctr(8), true, start, &[0; 33], &[16, 16, 1]),
            Err(Rv::DataLenRange)
        );
    }

    proptest! {
        #[test]
        fn parts_give_what_the_whole_gives(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            sizes in proptest::collection::vec(1usize..40, 1..6),
            key_len in prop::sample::select(vec![16usize, 24, 32]),
            mode in prop::sample::select(vec![Mode::Ecb, Mode::Cbc, Mode::CbcPad, Mode::Ctr(128), Mode::Ctr(32)]),
            iv in any::<[u8; 16]>(),
        ) {
            let key = vec![7u8; key_len];
            let aligned = matches!(mode, Mode::Ecb | Mode::Cbc);
            let data = if aligned { &data[..data.len() / 16 * 16] } else { &data[..] };
            let sealed = whole(&key, mode, true, iv, data).unwrap();
            prop_assert_eq!(&parts(&key, mode, true, iv, data, &sizes).unwrap(), &sealed);
            prop_assert_eq!(parts(&key, mode, false, iv, &sealed, &sizes).unwrap(), data.to_vec());
        }
    }
}
