//! The pure parts of the message-based AES-GCM functions (`C_EncryptMessage`,
//! `C_DecryptMessage`, PKCS#11 3.0 §5.8.6, §5.9.6): the parameters of one message as typed
//! values, IV generation that keeps the application's fixed bits, and the tag, which the
//! device appends to the ciphertext and the application keeps apart (`pTag` of
//! `CK_GCM_MESSAGE_PARAMS`).

use tessera_core::Rv;

/// Where the IV of a message comes from (`ivGenerator` of `CK_GCM_MESSAGE_PARAMS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Iv {
    /// The application's IV (`CKG_NO_GENERATE`, and every decryption).
    Given(Vec<u8>),
    /// The library generates an IV of `len` bytes from the device's random generator
    /// (`CKG_GENERATE_RANDOM`, and `CKG_GENERATE`, which leaves the method to the token),
    /// keeping the first `fixed_bits` bits of the application's IV, which are in `fixed`.
    Generated {
        /// IV length in bytes.
        len: usize,
        /// The application's IV bytes that hold the fixed bits (`fixed_bits` rounded up to
        /// whole bytes).
        fixed: Vec<u8>,
        /// Bits of the application's IV to keep, counted from the most significant bit of
        /// its first byte.
        fixed_bits: usize,
    },
}

/// The parameters of one AES-GCM message, decoded from `CK_GCM_MESSAGE_PARAMS` and the
/// associated-data arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcmMessage {
    /// The IV or how to make it.
    pub iv: Iv,
    /// Additional authenticated data.
    pub aad: Vec<u8>,
    /// Tag length in bits (`ulTagBits`).
    pub tag_bits: u64,
}

/// An encrypted message, in the three pieces the application receives.
#[derive(Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The IV used (written back to `pIv` when the library generated it).
    pub iv: Vec<u8>,
    /// The ciphertext, as long as the plaintext.
    pub ciphertext: Vec<u8>,
    /// The tag, `tag_bits / 8` bytes.
    pub tag: Vec<u8>,
}

/// The tag length in bytes: `ulTagBits` must be whole bytes (`CKR_MECHANISM_PARAM_INVALID`
/// otherwise; the device judges which lengths it accepts).
pub fn tag_len(tag_bits: u64) -> Result<usize, Rv> {
    if !tag_bits.is_multiple_of(8) {
        return Err(Rv::MechanismParamInvalid);
    }
    usize::try_from(tag_bits / 8).map_err(|_| Rv::MechanismParamInvalid)
}

/// The bytes of the application's IV that hold `fixed_bits` bits, for an IV of `iv_len` bytes:
/// `CKR_MECHANISM_PARAM_INVALID` when the fixed bits do not fit in the IV.
pub fn fixed_len(fixed_bits: u64, iv_len: usize) -> Result<usize, Rv> {
    let bytes = usize::try_from(fixed_bits.div_ceil(8)).map_err(|_| Rv::MechanismParamInvalid)?;
    if bytes > iv_len {
        return Err(Rv::MechanismParamInvalid);
    }
    Ok(bytes)
}

/// A generated IV: the first `fixed_bits` bits of `fixed`, then the bits of `random` (whose
/// length is the IV's). `fixed` must hold the fixed bits ([`fixed_len`]).
pub fn generated_iv(fixed: &[u8], fixed_bits: usize, random: &[u8]) -> Result<Vec<u8>, Rv> {
    let whole = fixed_bits / 8;
    let rest = fixed_bits % 8;
    if fixed.len() != fixed_bits.div_ceil(8) || fixed.len() > random.len() {
        return Err(Rv::MechanismParamInvalid);
    }
    let mut iv = random.to_vec();
    iv[..whole].copy_from_slice(&fixed[..whole]);
    if rest > 0 {
        // The high `rest` bits of the partial byte are the application's.
        let kept = 0xFFu8 << (8 - rest);
        iv[whole] = (fixed[whole] & kept) | (random[whole] & !kept);
    }
    Ok(iv)
}

/// Splits the device's `ciphertext || tag` of a plaintext of `plaintext_len` bytes; `None`
/// when its length is not `plaintext_len + tag_len` (the device's fault).
pub fn split_tag(sealed: &[u8], plaintext_len: usize, tag_len: usize) -> Option<(&[u8], &[u8])> {
    if Some(sealed.len()) != plaintext_len.checked_add(tag_len) {
        return None;
    }
    Some(sealed.split_at(plaintext_len))
}

/// `ciphertext || tag`, the input the device decrypts; `None` where the memory cannot be had.
pub fn join_tag(ciphertext: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::new();
    joined
        .try_reserve_exact(ciphertext.len().checked_add(tag.len())?)
        .ok()?;
    joined.extend_from_slice(ciphertext);
    joined.extend_from_slice(tag);
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_whole_bytes() {
        assert_eq!(tag_len(128), Ok(16));
        assert_eq!(tag_len(96), Ok(12));
        assert_eq!(tag_len(0), Ok(0));
        assert_eq!(tag_len(100), Err(Rv::MechanismParamInvalid));
    }

    #[test]
    fn the_device_output_splits_into_ciphertext_and_tag() {
        let sealed = [1, 2, 3, 9, 9];
        assert_eq!(
            split_tag(&sealed, 3, 2),
            Some((&[1u8, 2, 3][..], &[9u8, 9][..]))
        );
        assert_eq!(split_tag(&sealed, 5, 0), Some((&sealed[..], &[][..])));
        assert_eq!(split_tag(&[9; 16], 0, 16), Some((&[][..], &[9u8; 16][..])));
        assert_eq!(split_tag(&sealed, 3, 3), None, "output too short");
        assert_eq!(split_tag(&sealed, 2, 2), None, "output too long");
        assert_eq!(split_tag(&sealed, usize::MAX, 2), None);
        assert_eq!(join_tag(&[1, 2, 3], &[9, 9]), Some(sealed.to_vec()));
        assert_eq!(join_tag(&[], &[9]), Some(vec![9]));
    }

    #[test]
    fn generated_ivs_keep_the_fixed_bits() {
        let random = [0xAAu8; 12];
        assert_eq!(generated_iv(&[], 0, &random), Ok(random.to_vec()));
        let fixed = [1, 2, 3, 4];
        let iv = generated_iv(&fixed, 32, &random).unwrap();
        assert_eq!(&iv[..4], &fixed);
        assert_eq!(&iv[4..], &random[4..]);
        // 12 bits: one whole byte, then the high nibble of the second.
        let iv = generated_iv(&[0x12, 0x3F], 12, &random).unwrap();
        assert_eq!(&iv[..2], &[0x12, 0x3A]);
        assert_eq!(&iv[2..], &random[2..]);
        let iv = generated_iv(&[0xFF; 12], 96, &random).unwrap();
        assert_eq!(iv, vec![0xFF; 12]);
        assert_eq!(
            generated_iv(&[1], 12, &random),
            Err(Rv::MechanismParamInvalid)
        );
    }

    #[test]
    fn fixed_bits_must_fit_in_the_iv() {
        assert_eq!(fixed_len(0, 12), Ok(0));
        assert_eq!(fixed_len(1, 12), Ok(1));
        assert_eq!(fixed_len(96, 12), Ok(12));
        assert_eq!(fixed_len(97, 12), Err(Rv::MechanismParamInvalid));
        assert_eq!(fixed_len(u64::MAX, 12), Err(Rv::MechanismParamInvalid));
    }
}
