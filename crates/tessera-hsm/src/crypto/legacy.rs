//! The legacy mechanisms that aws-lc-rs does not expose, from aws-lc itself (`aws-lc-sys`, the
//! library aws-lc-rs is built on): MD5 and HMAC-MD5, two- and three-key triple DES (ECB, CBC,
//! CBC with PKCS #7 padding, CMAC), AES-GCM with IVs of any length, and raw RSA (the private
//! operation blinded, as aws-lc does); and, not legacy but not in aws-lc-rs either, ML-DSA
//! with a context string or deterministic signing ([`MlDsaVariant`], approved, so offered
//! under every flag). Real deployments (payments, older PKI) and the PKCS#11
//! conformance suites still need them; under the `a` flag (FIPS Algorithms Only) none of them
//! is offered (`mechanisms::NOT_APPROVED`).
//!
//! This module is the only place in the engine with `unsafe` code. Each wrapper owns its aws-lc
//! object and frees it on drop; every buffer handed to aws-lc is sized from its length here.

use std::os::raw::{c_int, c_uint};

use aws_lc_sys as sys;
use tessera_core::{Rv, SecretBytes};
use zeroize::Zeroize;

/// aws-lc's success value.
const OK: c_int = 1;

fn check(result: c_int, error: Rv) -> Result<(), Rv> {
    if result == OK {
        Ok(())
    } else {
        // SAFETY: clears this thread's aws-lc error queue; no arguments.
        unsafe { sys::ERR_clear_error() };
        Err(error)
    }
}

/// A running digest that aws-lc-rs does not offer: MD5, or SHA3-224 (for HashML-DSA).
pub(crate) struct EvpDigest(*mut sys::EVP_MD_CTX);

// SAFETY: the context is owned by this value alone and aws-lc's digest contexts have no
// thread affinity.
unsafe impl Send for EvpDigest {}
// SAFETY: no method takes `&self` to touch the context; shared references do nothing.
unsafe impl Sync for EvpDigest {}

/// The length of an MD5 digest in bytes.
pub(crate) const MD5_LEN: usize = 16;

impl EvpDigest {
    /// A new MD5 digest.
    pub(crate) fn md5() -> Result<EvpDigest, Rv> {
        // SAFETY: EVP_md5 takes no arguments and returns a static method table.
        Self::new(unsafe { sys::EVP_md5() })
    }

    /// A new SHA3-224 digest.
    pub(crate) fn sha3_224() -> Result<EvpDigest, Rv> {
        // SAFETY: EVP_sha3_224 takes no arguments and returns a static method table.
        Self::new(unsafe { sys::EVP_sha3_224() })
    }

    fn new(md: *const sys::EVP_MD) -> Result<EvpDigest, Rv> {
        // SAFETY: allocates a context; NULL on failure, checked below.
        let ctx = unsafe { sys::EVP_MD_CTX_new() };
        if ctx.is_null() {
            return Err(Rv::HostMemory);
        }
        let digest = EvpDigest(ctx);
        // SAFETY: `ctx` is a live context; `md` is one of aws-lc's static method tables.
        let result = unsafe { sys::EVP_DigestInit_ex(ctx, md, std::ptr::null_mut()) };
        check(result, Rv::FunctionFailed)?;
        Ok(digest)
    }

    /// Feeds data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        // SAFETY: a live, initialised context; `data` is valid for its length.
        unsafe { sys::EVP_DigestUpdate(self.0, data.as_ptr().cast(), data.len()) };
    }

    /// The digest.
    pub(crate) fn finish(self) -> Result<Vec<u8>, Rv> {
        let mut out = vec![0u8; sys::EVP_MAX_MD_SIZE as usize];
        let mut len: c_uint = 0;
        // SAFETY: `out` has room for any digest (EVP_MAX_MD_SIZE), `len` is a valid pointer.
        let result = unsafe { sys::EVP_DigestFinal_ex(self.0, out.as_mut_ptr(), &mut len) };
        check(result, Rv::FunctionFailed)?;
        out.truncate(len as usize);
        Ok(out)
    }
}

impl Drop for EvpDigest {
    fn drop(&mut self) {
        // SAFETY: the context was allocated by EVP_MD_CTX_new and is freed once, here.
        unsafe { sys::EVP_MD_CTX_free(self.0) };
    }
}

/// A running HMAC-MD5.
pub(crate) struct HmacMd5(*mut sys::HMAC_CTX);

// SAFETY: as for `EvpDigest`: owned alone, no thread affinity.
unsafe impl Send for HmacMd5 {}
// SAFETY: as for `EvpDigest`.
unsafe impl Sync for HmacMd5 {}

impl HmacMd5 {
    /// HMAC-MD5 under `key`.
    pub(crate) fn new(key: &[u8]) -> Result<HmacMd5, Rv> {
        // SAFETY: allocates a context; NULL on failure, checked below.
        let ctx = unsafe { sys::HMAC_CTX_new() };
        if ctx.is_null() {
            return Err(Rv::HostMemory);
        }
        let hmac = HmacMd5(ctx);
        // SAFETY: a live context; `key` is valid for its length; EVP_md5 is static.
        let result = unsafe {
            sys::HMAC_Init_ex(
                ctx,
                key.as_ptr().cast(),
                key.len(),
                sys::EVP_md5(),
                std::ptr::null_mut(),
            )
        };
        check(result, Rv::FunctionFailed)?;
        Ok(hmac)
    }

    /// Feeds data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        // SAFETY: a live, initialised context; `data` is valid for its length.
        unsafe { sys::HMAC_Update(self.0, data.as_ptr(), data.len()) };
    }

    /// The MAC (16 bytes).
    pub(crate) fn finish(self) -> Result<Vec<u8>, Rv> {
        let mut out = vec![0u8; MD5_LEN];
        let mut len: c_uint = 0;
        // SAFETY: `out` has room for an MD5-sized MAC; `len` is a valid pointer.
        let result = unsafe { sys::HMAC_Final(self.0, out.as_mut_ptr(), &mut len) };
        check(result, Rv::FunctionFailed)?;
        out.truncate(len as usize);
        Ok(out)
    }
}

impl Drop for HmacMd5 {
    fn drop(&mut self) {
        // SAFETY: allocated by HMAC_CTX_new (which wipes the key on free), freed once here.
        unsafe { sys::HMAC_CTX_free(self.0) };
    }
}

/// A triple-DES key as aws-lc takes it: 24 bytes (a two-key 16-byte key becomes K1 K2 K1).
fn des3_key(key: &[u8]) -> Result<zeroize::Zeroizing<[u8; 24]>, Rv> {
    let mut full = zeroize::Zeroizing::new([0u8; 24]);
    match key.len() {
        16 => {
            full[..16].copy_from_slice(key);
            full[16..].copy_from_slice(&key[..8]);
        }
        24 => full.copy_from_slice(key),
        _ => return Err(Rv::KeyTypeInconsistent),
    }
    Ok(full)
}

/// The triple-DES block modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DesMode {
    /// `CKM_DES3_ECB`: whole blocks only.
    Ecb,
    /// `CKM_DES3_CBC`: whole blocks only.
    Cbc,
    /// `CKM_DES3_CBC_PAD`: PKCS #7 padding.
    CbcPad,
}

/// The size of a DES block.
pub(crate) const DES_BLOCK: usize = 8;

/// A triple-DES encryption or decryption in progress; each update returns the whole blocks it
/// can (aws-lc keeps the rest, and a padded decryption's last block, in the context).
pub(crate) struct Des3 {
    ctx: *mut sys::EVP_CIPHER_CTX,
    encrypt: bool,
    /// Input bytes fed so far.
    fed: usize,
}

// SAFETY: as for `EvpDigest`: owned alone, no thread affinity.
unsafe impl Send for Des3 {}
// SAFETY: as for `EvpDigest`.
unsafe impl Sync for Des3 {}

impl Des3 {
    /// A stream under `key` (16 or 24 bytes) with `iv` (CBC modes; ignored for ECB).
    pub(crate) fn new(
        key: &[u8],
        mode: DesMode,
        encrypt: bool,
        iv: [u8; DES_BLOCK],
    ) -> Result<Des3, Rv> {
        let key = des3_key(key)?;
        // SAFETY: allocates a context; NULL on failure, checked below.
        let ctx = unsafe { sys::EVP_CIPHER_CTX_new() };
        if ctx.is_null() {
            return Err(Rv::HostMemory);
        }
        let stream = Des3 {
            ctx,
            encrypt,
            fed: 0,
        };
        // SAFETY: static method tables.
        let cipher = unsafe {
            match mode {
                DesMode::Ecb => sys::EVP_des_ede3_ecb(),
                DesMode::Cbc | DesMode::CbcPad => sys::EVP_des_ede3_cbc(),
            }
        };
        // SAFETY: a live context; the key is 24 bytes and the IV 8, as the cipher takes them.
        let result = unsafe {
            sys::EVP_CipherInit_ex(
                ctx,
                cipher,
                std::ptr::null_mut(),
                key.as_ptr(),
                iv.as_ptr(),
                c_int::from(encrypt),
            )
        };
        check(result, Rv::FunctionFailed)?;
        let pad = c_int::from(mode == DesMode::CbcPad);
        // SAFETY: a live, initialised context.
        let result = unsafe { sys::EVP_CIPHER_CTX_set_padding(ctx, pad) };
        check(result, Rv::FunctionFailed)?;
        Ok(stream)
    }

    fn length_error(&self) -> Rv {
        super::length_error(self.encrypt)
    }

    /// Feeds `data`; the output of the blocks done.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<SecretBytes, Rv> {
        let len = c_int::try_from(data.len()).map_err(|_| self.length_error())?;
        let mut out = SecretBytes::unlocked();
        out.extend_from_slice(&vec![0u8; data.len() + DES_BLOCK]);
        let mut written: c_int = 0;
        // SAFETY: `out` has room for the input and one block more, as EVP_CipherUpdate may
        // write; `data` is valid for `len` bytes.
        let result = unsafe {
            sys::EVP_CipherUpdate(
                self.ctx,
                out.expose_mut().as_mut_ptr(),
                &mut written,
                data.as_ptr(),
                len,
            )
        };
        check(result, Rv::FunctionFailed)?;
        self.fed += data.len();
        out.truncate(written.max(0) as usize);
        Ok(out)
    }

    /// Ends the stream: a padded encryption's last block, a padded decryption's last
    /// plaintext; ECB and CBC must end on a whole block.
    pub(crate) fn finish(self) -> Result<SecretBytes, Rv> {
        let mut out = SecretBytes::from_slice(&[0u8; DES_BLOCK]);
        let mut written: c_int = 0;
        // SAFETY: `out` has room for one block, the most EVP_CipherFinal_ex writes.
        let result = unsafe {
            sys::EVP_CipherFinal_ex(self.ctx, out.expose_mut().as_mut_ptr(), &mut written)
        };
        if result != OK {
            // SAFETY: clears this thread's aws-lc error queue.
            unsafe { sys::ERR_clear_error() };
            // A padded decryption whose input was whole blocks fails on the padding; any
            // other failure is input that did not end on a block.
            let whole = self.fed > 0 && self.fed.is_multiple_of(DES_BLOCK);
            return Err(if !self.encrypt && whole {
                Rv::EncryptedDataInvalid
            } else {
                self.length_error()
            });
        }
        out.truncate(written.max(0) as usize);
        Ok(out)
    }
}

impl Drop for Des3 {
    fn drop(&mut self) {
        // SAFETY: allocated by EVP_CIPHER_CTX_new (which wipes the key schedule and buffered
        // data on free), freed once here.
        unsafe { sys::EVP_CIPHER_CTX_free(self.ctx) };
    }
}

/// A running triple-DES CMAC (`CKM_DES3_CMAC`, NIST SP 800-38B), 8 bytes.
pub(crate) struct Des3Cmac(*mut sys::CMAC_CTX);

// SAFETY: as for `EvpDigest`: owned alone, no thread affinity.
unsafe impl Send for Des3Cmac {}
// SAFETY: as for `EvpDigest`.
unsafe impl Sync for Des3Cmac {}

impl Des3Cmac {
    /// A CMAC under `key` (16 or 24 bytes).
    pub(crate) fn new(key: &[u8]) -> Result<Des3Cmac, Rv> {
        let key = des3_key(key)?;
        // SAFETY: allocates a context; NULL on failure, checked below.
        let ctx = unsafe { sys::CMAC_CTX_new() };
        if ctx.is_null() {
            return Err(Rv::HostMemory);
        }
        let cmac = Des3Cmac(ctx);
        // SAFETY: a live context; the key is 24 bytes, as EVP_des_ede3_cbc (static) takes.
        let result = unsafe {
            sys::CMAC_Init(
                ctx,
                key.as_ptr().cast(),
                key.len(),
                sys::EVP_des_ede3_cbc(),
                std::ptr::null_mut(),
            )
        };
        check(result, Rv::FunctionFailed)?;
        Ok(cmac)
    }

    /// Feeds data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        // SAFETY: a live, initialised context; `data` is valid for its length.
        unsafe { sys::CMAC_Update(self.0, data.as_ptr(), data.len()) };
    }

    /// The MAC (8 bytes).
    pub(crate) fn finish(self) -> Result<Vec<u8>, Rv> {
        let mut out = vec![0u8; DES_BLOCK];
        let mut len = 0usize;
        // SAFETY: `out` has room for one DES block, the CMAC's length.
        let result = unsafe { sys::CMAC_Final(self.0, out.as_mut_ptr(), &mut len) };
        check(result, Rv::FunctionFailed)?;
        out.truncate(len);
        Ok(out)
    }
}

impl Drop for Des3Cmac {
    fn drop(&mut self) {
        // SAFETY: allocated by CMAC_CTX_new, freed once here.
        unsafe { sys::CMAC_CTX_free(self.0) };
    }
}

/// AES-GCM with an IV of any length from 1 byte (NIST SP 800-38D: other lengths than 96 bits
/// derive the counter from GHASH of the IV), a tag of `tag_len` bytes. Encryption returns the
/// ciphertext and tag; decryption the plaintext, only once the tag is checked.
pub(crate) fn gcm(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_len: usize,
    encrypt: bool,
    data: &[u8],
) -> Result<SecretBytes, Rv> {
    let too_long = |_| super::length_error(encrypt);
    if iv.is_empty() || !(1..=16).contains(&tag_len) {
        return Err(Rv::MechanismParamInvalid);
    }
    let (body, tag) = if encrypt {
        (data, &[][..])
    } else {
        let cut = data
            .len()
            .checked_sub(tag_len)
            .ok_or(Rv::EncryptedDataLenRange)?;
        data.split_at(cut)
    };
    let iv_len = c_int::try_from(iv.len()).map_err(|_| Rv::MechanismParamInvalid)?;
    let aad_len = c_int::try_from(aad.len()).map_err(|_| Rv::MechanismParamInvalid)?;
    let body_len = c_int::try_from(body.len()).map_err(too_long)?;
    // SAFETY: static method tables.
    let cipher = unsafe {
        match key.len() {
            16 => sys::EVP_aes_128_gcm(),
            24 => sys::EVP_aes_192_gcm(),
            32 => sys::EVP_aes_256_gcm(),
            _ => return Err(Rv::KeyTypeInconsistent),
        }
    };
    // SAFETY: allocates a context; NULL on failure, checked below.
    let ctx = unsafe { sys::EVP_CIPHER_CTX_new() };
    if ctx.is_null() {
        return Err(Rv::HostMemory);
    }
    let context = Gcm(ctx);
    let null: *mut sys::ENGINE = std::ptr::null_mut();
    // SAFETY: a live context: the cipher first, then the IV length, then key and IV (the key
    // is the cipher's length, the IV `iv_len` bytes as just set).
    unsafe {
        check(
            sys::EVP_CipherInit_ex(
                context.0,
                cipher,
                null,
                std::ptr::null(),
                std::ptr::null(),
                c_int::from(encrypt),
            ),
            Rv::FunctionFailed,
        )?;
        check(
            sys::EVP_CIPHER_CTX_ctrl(
                context.0,
                sys::EVP_CTRL_GCM_SET_IVLEN,
                iv_len,
                std::ptr::null_mut(),
            ),
            Rv::MechanismParamInvalid,
        )?;
        check(
            sys::EVP_CipherInit_ex(
                context.0,
                std::ptr::null(),
                null,
                key.as_ptr(),
                iv.as_ptr(),
                -1,
            ),
            Rv::FunctionFailed,
        )?;
    }
    let mut written: c_int = 0;
    if !aad.is_empty() {
        // SAFETY: with a NULL output the update takes `aad` as additional data.
        let result = unsafe {
            sys::EVP_CipherUpdate(
                context.0,
                std::ptr::null_mut(),
                &mut written,
                aad.as_ptr(),
                aad_len,
            )
        };
        check(result, Rv::FunctionFailed)?;
    }
    let mut out = SecretBytes::unlocked();
    out.extend_from_slice(&vec![0u8; body.len() + tag_len]);
    // SAFETY: `out` has room for the body (GCM writes as much as it reads) and the tag.
    let result = unsafe {
        sys::EVP_CipherUpdate(
            context.0,
            out.expose_mut().as_mut_ptr(),
            &mut written,
            body.as_ptr(),
            body_len,
        )
    };
    check(result, Rv::FunctionFailed)?;
    let body_written = written.max(0) as usize;
    if encrypt {
        let mut rest: c_int = 0;
        // SAFETY: GCM's final writes nothing; then the tag is read into the room after the
        // ciphertext (`tag_len` bytes, at most 16).
        unsafe {
            check(
                sys::EVP_CipherFinal_ex(
                    context.0,
                    out.expose_mut()[body_written..].as_mut_ptr(),
                    &mut rest,
                ),
                Rv::FunctionFailed,
            )?;
            check(
                sys::EVP_CIPHER_CTX_ctrl(
                    context.0,
                    sys::EVP_CTRL_GCM_GET_TAG,
                    tag_len as c_int,
                    out.expose_mut()[body_written..].as_mut_ptr().cast(),
                ),
                Rv::FunctionFailed,
            )?;
        }
        out.truncate(body_written + tag_len);
        return Ok(out);
    }
    let mut expected = tag.to_vec();
    let mut rest: c_int = 0;
    // SAFETY: the expected tag (`tag_len` bytes) is set before the final call, which checks it
    // in constant time and writes nothing.
    let checked = unsafe {
        check(
            sys::EVP_CIPHER_CTX_ctrl(
                context.0,
                sys::EVP_CTRL_GCM_SET_TAG,
                tag_len as c_int,
                expected.as_mut_ptr().cast(),
            ),
            Rv::FunctionFailed,
        )
        .and_then(|()| {
            check(
                sys::EVP_CipherFinal_ex(
                    context.0,
                    out.expose_mut()[body_written..].as_mut_ptr(),
                    &mut rest,
                ),
                Rv::EncryptedDataInvalid,
            )
        })
    };
    expected.zeroize();
    // A wrong tag: the plaintext is wiped when `out` drops.
    checked?;
    out.truncate(body_written);
    Ok(out)
}

/// An AES-GCM context, freed on drop.
struct Gcm(*mut sys::EVP_CIPHER_CTX);

impl Drop for Gcm {
    fn drop(&mut self) {
        // SAFETY: allocated by EVP_CIPHER_CTX_new, freed once here.
        unsafe { sys::EVP_CIPHER_CTX_free(self.0) };
    }
}

/// The Ed25519 variants of RFC 8032 §5.1 that aws-lc-rs lacks: Ed25519ctx (a context of 1 to
/// 255 bytes) and Ed25519ph (the message hashed with SHA-512 first; a context of 0 to 255
/// bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ed25519Variant {
    /// Ed25519ph rather than Ed25519ctx.
    pub(crate) prehash: bool,
    /// The context.
    pub(crate) context: Vec<u8>,
}

impl Ed25519Variant {
    /// The variant, if the context's length suits it.
    pub(crate) fn new(prehash: bool, context: &[u8]) -> Result<Ed25519Variant, Rv> {
        let fits = context.len() <= 255 && (prehash || !context.is_empty());
        if !fits {
            return Err(Rv::MechanismParamInvalid);
        }
        Ok(Ed25519Variant {
            prehash,
            context: context.to_vec(),
        })
    }

    /// Signs `message` with the key of this 32-byte seed: 64 bytes.
    pub(crate) fn sign(&self, seed: &[u8], message: &[u8]) -> Result<Vec<u8>, Rv> {
        let seed: &[u8; 32] = seed.try_into().map_err(|_| Rv::KeyTypeInconsistent)?;
        let mut public = [0u8; 32];
        let mut private = zeroize::Zeroizing::new([0u8; 64]);
        // SAFETY: the seed is 32 bytes, the outputs 32 and 64, as the function writes them.
        unsafe {
            sys::ED25519_keypair_from_seed(public.as_mut_ptr(), private.as_mut_ptr(), seed.as_ptr())
        };
        let mut signature = vec![0u8; 64];
        let sign = if self.prehash {
            sys::ED25519ph_sign
        } else {
            sys::ED25519ctx_sign
        };
        // SAFETY: 64 bytes of signature room, the 64-byte private key; the message and the
        // context (at most 255 bytes) are valid for their lengths.
        let result = unsafe {
            sign(
                signature.as_mut_ptr(),
                message.as_ptr(),
                message.len(),
                private.as_ptr(),
                self.context.as_ptr(),
                self.context.len(),
            )
        };
        check(result, Rv::FunctionFailed)?;
        Ok(signature)
    }

    /// Verifies a 64-byte signature of `message` with a 32-byte public key.
    pub(crate) fn verify(&self, public: &[u8], message: &[u8], signature: &[u8]) -> Result<(), Rv> {
        let public: &[u8; 32] = public.try_into().map_err(|_| Rv::KeyTypeInconsistent)?;
        let signature: &[u8; 64] = signature.try_into().map_err(|_| Rv::SignatureLenRange)?;
        let verify = if self.prehash {
            sys::ED25519ph_verify
        } else {
            sys::ED25519ctx_verify
        };
        // SAFETY: the signature is 64 bytes, the public key 32; the message and the context
        // are valid for their lengths.
        let result = unsafe {
            verify(
                message.as_ptr(),
                message.len(),
                signature.as_ptr(),
                public.as_ptr(),
                self.context.as_ptr(),
                self.context.len(),
            )
        };
        check(result, Rv::SignatureInvalid)
    }
}

/// The hashes of the RSA signature mechanisms, as aws-lc names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    fn md(self) -> *const sys::EVP_MD {
        // SAFETY: static method tables.
        unsafe {
            match self {
                Hash::Sha256 => sys::EVP_sha256(),
                Hash::Sha384 => sys::EVP_sha384(),
                Hash::Sha512 => sys::EVP_sha512(),
            }
        }
    }
}

/// An RSA key for the raw operations, parsed from PKCS #1 DER.
pub(crate) struct RawRsa(*mut sys::RSA);

// SAFETY: aws-lc's RSA objects are safe to use from any thread (their blinding state is
// locked inside aws-lc); this value owns its reference.
unsafe impl Send for RawRsa {}
// SAFETY: as above.
unsafe impl Sync for RawRsa {}

impl RawRsa {
    /// A private key from its PKCS #1 `RSAPrivateKey` DER.
    pub(crate) fn private(der: &[u8]) -> Result<RawRsa, Rv> {
        // SAFETY: `der` is valid for its length; NULL on a parse error, checked.
        RawRsa::from(unsafe { sys::RSA_private_key_from_bytes(der.as_ptr(), der.len()) })
    }

    /// A public key from its PKCS #1 `RSAPublicKey` DER.
    pub(crate) fn public(der: &[u8]) -> Result<RawRsa, Rv> {
        // SAFETY: `der` is valid for its length; NULL on a parse error, checked.
        RawRsa::from(unsafe { sys::RSA_public_key_from_bytes(der.as_ptr(), der.len()) })
    }

    fn from(rsa: *mut sys::RSA) -> Result<RawRsa, Rv> {
        if rsa.is_null() {
            // SAFETY: clears this thread's aws-lc error queue.
            unsafe { sys::ERR_clear_error() };
            return Err(Rv::KeyTypeInconsistent);
        }
        Ok(RawRsa(rsa))
    }

    /// A new RSA key of `bits` bits (1024: the size aws-lc-rs does not generate) with public
    /// exponent 65537: its PKCS #1 `RSAPrivateKey` DER, in a wiping buffer.
    pub(crate) fn generate(bits: u32) -> Result<SecretBytes, Rv> {
        let bits = c_int::try_from(bits).map_err(|_| Rv::KeySizeRange)?;
        // SAFETY: allocates a key; NULL on failure, checked below.
        let key = RawRsa::from(unsafe { sys::RSA_new() }).map_err(|_| Rv::HostMemory)?;
        // SAFETY: allocates a number; NULL on failure, checked below.
        let exponent = unsafe { sys::BN_new() };
        if exponent.is_null() {
            return Err(Rv::HostMemory);
        }
        // SAFETY: a live number and a live, empty key; no callback.
        let result = unsafe {
            let set = sys::BN_set_word(exponent, 65537);
            let made = if set == OK {
                sys::RSA_generate_key_ex(key.0, bits, exponent, std::ptr::null_mut())
            } else {
                set
            };
            sys::BN_free(exponent);
            made
        };
        check(result, Rv::FunctionFailed)?;
        let mut der: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live, generated key; aws-lc allocates the encoding and sets `der`.
        let result = unsafe { sys::RSA_private_key_to_bytes(&mut der, &mut len, key.0) };
        check(result, Rv::FunctionFailed)?;
        // SAFETY: aws-lc wrote `len` bytes at `der`, which it allocated.
        let encoded = unsafe { std::slice::from_raw_parts_mut(der, len) };
        let copy = SecretBytes::from_slice(encoded);
        encoded.zeroize();
        // SAFETY: allocated by aws-lc (OPENSSL_malloc) for this encoding, freed once here.
        unsafe { sys::OPENSSL_free(der.cast()) };
        Ok(copy)
    }

    /// The modulus length in bytes (k).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: a live key.
        unsafe { sys::RSA_size(self.0) as usize }
    }

    /// `input` as a k-byte big-endian number (left-padded with zeros): `CKR_DATA_LEN_RANGE`
    /// when longer than k.
    fn widened(&self, input: &[u8], error: Rv) -> Result<SecretBytes, Rv> {
        let k = self.len();
        if input.len() > k {
            return Err(error);
        }
        let mut wide = SecretBytes::from_slice(&vec![0u8; k - input.len()]);
        wide.extend_from_slice(input);
        Ok(wide)
    }

    /// One aws-lc RSA call writing at most k bytes.
    fn run(
        &self,
        call: unsafe extern "C" fn(
            *mut sys::RSA,
            *mut usize,
            *mut u8,
            usize,
            *const u8,
            usize,
            c_int,
        ) -> c_int,
        input: &[u8],
        padding: c_int,
        error: Rv,
    ) -> Result<SecretBytes, Rv> {
        let k = self.len();
        let mut out = SecretBytes::from_slice(&vec![0u8; k]);
        let mut len = 0usize;
        // SAFETY: a live key; `out` has room for k bytes, the most any RSA operation writes;
        // `input` is valid for its length.
        let result = unsafe {
            call(
                self.0,
                &mut len,
                out.expose_mut().as_mut_ptr(),
                k,
                input.as_ptr(),
                input.len(),
                padding,
            )
        };
        check(result, error)?;
        out.truncate(len);
        Ok(out)
    }

    /// The raw private operation (`CKM_RSA_X_509` decryption and signature): input^d mod n,
    /// k bytes, blinded.
    pub(crate) fn private_raw(&self, input: &[u8], error: Rv) -> Result<SecretBytes, Rv> {
        let wide = self.widened(input, error)?;
        self.run(sys::RSA_decrypt, wide.expose(), sys::RSA_NO_PADDING, error)
    }

    /// The raw public operation (`CKM_RSA_X_509` encryption and verification): input^e mod
    /// n, k bytes.
    pub(crate) fn public_raw(&self, input: &[u8], error: Rv) -> Result<Vec<u8>, Rv> {
        let wide = self.widened(input, error)?;
        self.run(sys::RSA_encrypt, wide.expose(), sys::RSA_NO_PADDING, error)
            .map(|out| out.expose().to_vec())
    }

    /// A PKCS #1 v1.5 signature (block type 1) of `input` as given, up to k − 11 bytes
    /// (`CKM_RSA_PKCS`: the caller supplies the DigestInfo, or any data).
    pub(crate) fn sign_pkcs1(&self, input: &[u8]) -> Result<Vec<u8>, Rv> {
        if input.len() + 11 > self.len() {
            return Err(Rv::DataLenRange);
        }
        self.run(
            sys::RSA_sign_raw,
            input,
            sys::RSA_PKCS1_PADDING,
            Rv::FunctionFailed,
        )
        .map(|out| out.expose().to_vec())
    }

    /// A PKCS #1 v1.5 encryption (block type 2) of `input`, up to k − 11 bytes.
    pub(crate) fn encrypt_pkcs1(&self, input: &[u8]) -> Result<Vec<u8>, Rv> {
        if input.len() + 11 > self.len() {
            return Err(Rv::DataLenRange);
        }
        self.run(
            sys::RSA_encrypt,
            input,
            sys::RSA_PKCS1_PADDING,
            Rv::FunctionFailed,
        )
        .map(|out| out.expose().to_vec())
    }

    /// The plaintext of a PKCS #1 v1.5 encryption (block type 2).
    pub(crate) fn decrypt_pkcs1(&self, input: &[u8]) -> Result<SecretBytes, Rv> {
        if input.len() != self.len() {
            return Err(Rv::EncryptedDataLenRange);
        }
        self.run(
            sys::RSA_decrypt,
            input,
            sys::RSA_PKCS1_PADDING,
            Rv::EncryptedDataInvalid,
        )
    }

    /// An RSASSA-PSS signature of `digest` (made with `hash`), MGF1 with the same hash, a salt
    /// as long as the hash.
    pub(crate) fn sign_pss(&self, hash: Hash, digest: &[u8]) -> Result<Vec<u8>, Rv> {
        let k = self.len();
        let mut out = vec![0u8; k];
        let mut len = 0usize;
        let md = hash.md();
        // SAFETY: a live key; `out` has room for k bytes; the digest is valid for its length;
        // `md` is a static method table; salt length -1 is the hash's length.
        let result = unsafe {
            sys::RSA_sign_pss_mgf1(
                self.0,
                &mut len,
                out.as_mut_ptr(),
                k,
                digest.as_ptr(),
                digest.len(),
                md,
                md,
                -1,
            )
        };
        check(result, Rv::FunctionFailed)?;
        out.truncate(len);
        Ok(out)
    }

    /// Checks an RSASSA-PSS signature of `digest`, as [`RawRsa::sign_pss`] makes them.
    pub(crate) fn verify_pss(&self, hash: Hash, digest: &[u8], signature: &[u8]) -> Result<(), Rv> {
        if signature.len() != self.len() {
            return Err(Rv::SignatureLenRange);
        }
        let md = hash.md();
        // SAFETY: a live key; the digest and signature are valid for their lengths; `md` is a
        // static method table; salt length -1 is the hash's length.
        let result = unsafe {
            sys::RSA_verify_pss_mgf1(
                self.0,
                digest.as_ptr(),
                digest.len(),
                md,
                md,
                -1,
                signature.as_ptr(),
                signature.len(),
            )
        };
        check(result, Rv::SignatureInvalid)
    }

    /// The data a PKCS #1 v1.5 signature (block type 1) carries, if its padding is right.
    pub(crate) fn recover_pkcs1(&self, signature: &[u8]) -> Result<Vec<u8>, Rv> {
        if signature.len() != self.len() {
            return Err(Rv::SignatureLenRange);
        }
        self.run(
            sys::RSA_verify_raw,
            signature,
            sys::RSA_PKCS1_PADDING,
            Rv::SignatureInvalid,
        )
        .map(|out| out.expose().to_vec())
    }
}

impl Drop for RawRsa {
    fn drop(&mut self) {
        // SAFETY: parsed by RSA_*_key_from_bytes (one reference), freed once here; aws-lc
        // wipes the private values.
        unsafe { sys::RSA_free(self.0) };
    }
}

/// aws-lc's ML-DSA functions that take FIPS 204's inputs directly: the message prefix (the
/// context string's encoding) and the 32-byte `rnd` that makes signing hedged (random) or
/// deterministic (zero). aws-lc exports them (`OPENSSL_EXPORT` in its `ml_dsa.h`) but
/// `aws-lc-sys` generates no bindings for that header, so they are declared here under their
/// prefixed names: an `aws-lc-sys` of another version fails to link, never calls a stranger.
mod ml_dsa_ffi {
    use std::os::raw::c_int;

    macro_rules! ml_dsa_functions {
        ($($sign:ident, $sign_name:literal, $verify:ident, $verify_name:literal;)*) => {
            extern "C" {
                $(
                    #[link_name = $sign_name]
                    pub(super) fn $sign(
                        private_key: *const u8,
                        sig: *mut u8,
                        sig_len: *mut usize,
                        message: *const u8,
                        message_len: usize,
                        pre: *const u8,
                        pre_len: usize,
                        rnd: *const u8,
                    ) -> c_int;
                    #[link_name = $verify_name]
                    pub(super) fn $verify(
                        public_key: *const u8,
                        sig: *const u8,
                        sig_len: usize,
                        message: *const u8,
                        message_len: usize,
                        pre: *const u8,
                        pre_len: usize,
                    ) -> c_int;
                )*
            }
        };
    }

    ml_dsa_functions! {
        sign_44, "aws_lc_0_47_0_ml_dsa_44_sign_internal",
        verify_44, "aws_lc_0_47_0_ml_dsa_44_verify_internal";
        sign_65, "aws_lc_0_47_0_ml_dsa_65_sign_internal",
        verify_65, "aws_lc_0_47_0_ml_dsa_65_verify_internal";
        sign_87, "aws_lc_0_47_0_ml_dsa_87_sign_internal",
        verify_87, "aws_lc_0_47_0_ml_dsa_87_verify_internal";
    }
}

/// ML-DSA with a context string or deterministic signing (`CK_SIGN_ADDITIONAL_CONTEXT`), which
/// aws-lc-rs does not offer: FIPS 204's ML-DSA.Sign / ML-DSA.Verify (Algorithms 2 and 3), the
/// message prefixed with `0 || len(ctx) || ctx` and signed with `rnd` random (hedged) or zero
/// (deterministic).
pub(crate) struct MlDsaVariant {
    /// Deterministic (`CKH_DETERMINISTIC_REQUIRED`) rather than hedged.
    pub(crate) deterministic: bool,
    /// `0 || len(ctx) || ctx`, or HashML-DSA's `1 || len(ctx) || ctx || OID`.
    prefix: Vec<u8>,
}

type MlDsaSign = unsafe extern "C" fn(
    *const u8,
    *mut u8,
    *mut usize,
    *const u8,
    usize,
    *const u8,
    usize,
    *const u8,
) -> c_int;
type MlDsaVerify =
    unsafe extern "C" fn(*const u8, *const u8, usize, *const u8, usize, *const u8, usize) -> c_int;

/// (sign, verify, private key length, public key length, signature length) of a parameter set
/// (FIPS 204, Table 2; `CKP_ML_DSA_44/65/87`).
fn ml_dsa_set(set: u64) -> Result<(MlDsaSign, MlDsaVerify, usize, usize, usize), Rv> {
    use tessera_core::ck;
    match set as ck::CK_ULONG {
        ck::CKP_ML_DSA_44 => Ok((ml_dsa_ffi::sign_44, ml_dsa_ffi::verify_44, 2560, 1312, 2420)),
        ck::CKP_ML_DSA_65 => Ok((ml_dsa_ffi::sign_65, ml_dsa_ffi::verify_65, 4032, 1952, 3309)),
        ck::CKP_ML_DSA_87 => Ok((ml_dsa_ffi::sign_87, ml_dsa_ffi::verify_87, 4896, 2592, 4627)),
        _ => Err(Rv::KeyTypeInconsistent),
    }
}

impl MlDsaVariant {
    /// The variant, if the context fits (at most 255 bytes, FIPS 204).
    pub(crate) fn new(deterministic: bool, context: &[u8]) -> Result<MlDsaVariant, Rv> {
        Self::with_domain(0, deterministic, context, &[])
    }

    /// HashML-DSA (FIPS 204, Algorithms 4 and 5): the prefix `1 || len(ctx) || ctx || OID`,
    /// where `oid` is the DER of the pre-hash function's identifier; the message signed is
    /// then the pre-hash itself.
    pub(crate) fn prehashed(
        deterministic: bool,
        context: &[u8],
        oid: &[u8],
    ) -> Result<MlDsaVariant, Rv> {
        Self::with_domain(1, deterministic, context, oid)
    }

    fn with_domain(
        domain: u8,
        deterministic: bool,
        context: &[u8],
        oid: &[u8],
    ) -> Result<MlDsaVariant, Rv> {
        let len = u8::try_from(context.len()).map_err(|_| Rv::MechanismParamInvalid)?;
        let mut prefix = vec![domain, len];
        prefix.extend_from_slice(context);
        prefix.extend_from_slice(oid);
        Ok(MlDsaVariant {
            deterministic,
            prefix,
        })
    }

    /// Signs `message` with the expanded private key of parameter set `set`.
    pub(crate) fn sign(&self, set: u64, private_key: &[u8], message: &[u8]) -> Result<Vec<u8>, Rv> {
        let (sign, _, private_len, _, signature_len) = ml_dsa_set(set)?;
        if private_key.len() != private_len {
            return Err(Rv::KeyTypeInconsistent);
        }
        let mut rnd = zeroize::Zeroizing::new([0u8; 32]);
        if !self.deterministic {
            rnd.copy_from_slice(&super::random(32)?);
        }
        let mut signature = vec![0u8; signature_len];
        let mut written = signature.len();
        // SAFETY: the private key has the set's length (checked above); the signature buffer
        // has the set's signature length, which `written` says; the message, the prefix and
        // the 32-byte rnd are valid for their lengths.
        let result = unsafe {
            sign(
                private_key.as_ptr(),
                signature.as_mut_ptr(),
                &mut written,
                message.as_ptr(),
                message.len(),
                self.prefix.as_ptr(),
                self.prefix.len(),
                rnd.as_ptr(),
            )
        };
        if result != OK || written != signature_len {
            // SAFETY: clears this thread's aws-lc error queue; no arguments.
            unsafe { sys::ERR_clear_error() };
            return Err(Rv::FunctionFailed);
        }
        Ok(signature)
    }

    /// Verifies `signature` of `message` with the public key of parameter set `set`.
    pub(crate) fn verify(
        &self,
        set: u64,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Rv> {
        let (_, verify, _, public_len, signature_len) = ml_dsa_set(set)?;
        if public_key.len() != public_len {
            return Err(Rv::KeyTypeInconsistent);
        }
        if signature.len() != signature_len {
            return Err(Rv::SignatureLenRange);
        }
        // SAFETY: the public key and the signature have the set's lengths (checked above); the
        // message and the prefix are valid for their lengths.
        let result = unsafe {
            verify(
                public_key.as_ptr(),
                signature.as_ptr(),
                signature.len(),
                message.as_ptr(),
                message.len(),
                self.prefix.as_ptr(),
                self.prefix.len(),
            )
        };
        check(result, Rv::SignatureInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    #[test]
    fn md5_and_hmac_md5_known_answers() {
        // RFC 1321 §A.5.
        let mut md5 = EvpDigest::md5().unwrap();
        md5.update(b"message ");
        md5.update(b"digest");
        assert_eq!(
            md5.finish().unwrap(),
            hex("f96b697d7cb7938d525a2f31aaf161d0")
        );
        assert_eq!(
            EvpDigest::md5().unwrap().finish().unwrap(),
            hex("d41d8cd98f00b204e9800998ecf8427e")
        );
        // RFC 2104 / RFC 2202 test case 2.
        let mut hmac = HmacMd5::new(b"Jefe").unwrap();
        hmac.update(b"what do ya want for nothing?");
        assert_eq!(
            hmac.finish().unwrap(),
            hex("750c783e6ab0b503eaa86e310a5db738")
        );
    }

    #[test]
    fn triple_des_known_answers() {
        // NIST SP 800-67 Rev. 2 / SP 800-20 style vector: three-key TDEA ECB.
        let key = hex("0123456789abcdef23456789abcdef01456789abcdef0123");
        let plain = hex("5468652071756663");
        let mut ecb = Des3::new(&key, DesMode::Ecb, true, [0; 8]).unwrap();
        let mut out = ecb.update(&plain).unwrap().expose().to_vec();
        out.extend_from_slice(ecb.finish().unwrap().expose());
        assert_eq!(out, hex("a826fd8ce53b855f"));
        // A two-key key is K1 K2 K1.
        let two = hex("0123456789abcdef23456789abcdef01");
        let three = hex("0123456789abcdef23456789abcdef010123456789abcdef");
        let run = |key: &[u8], mode, encrypt, data: &[u8], parts: usize| {
            let mut stream = Des3::new(key, mode, encrypt, [7; 8])?;
            let mut out = Vec::new();
            for chunk in data.chunks(parts.max(1)) {
                out.extend_from_slice(stream.update(chunk)?.expose());
            }
            out.extend_from_slice(stream.finish()?.expose());
            Ok::<_, Rv>(out)
        };
        let data: Vec<u8> = (0..45u8).collect();
        assert_eq!(
            run(&two, DesMode::CbcPad, true, &data, 45),
            run(&three, DesMode::CbcPad, true, &data, 45)
        );
        // Any split gives the whole's output; padding is checked and removed.
        let sealed = run(&two, DesMode::CbcPad, true, &data, 45).unwrap();
        assert_eq!(sealed.len(), 48);
        assert_eq!(run(&two, DesMode::CbcPad, true, &data, 5).unwrap(), sealed);
        assert_eq!(run(&two, DesMode::CbcPad, false, &sealed, 3).unwrap(), data);
        assert_eq!(
            run(&two, DesMode::Cbc, true, &data, 8),
            Err(Rv::DataLenRange)
        );
        assert_eq!(
            run(&two, DesMode::CbcPad, false, &sealed[..47], 8),
            Err(Rv::EncryptedDataLenRange)
        );
        let mut bad = sealed.clone();
        bad[47] ^= 0x55;
        assert_eq!(
            run(&two, DesMode::CbcPad, false, &bad, 16),
            Err(Rv::EncryptedDataInvalid)
        );
        assert_eq!(
            Des3::new(&[0; 8], DesMode::Ecb, true, [0; 8]).err(),
            Some(Rv::KeyTypeInconsistent)
        );
    }

    #[test]
    fn triple_des_cmac_known_answer() {
        // NIST SP 800-38B, D.4 (three-key TDEA), example 6 (Mlen = 0) and 7 (Mlen = 64).
        let key = hex("8aa83bf8cbda10620bc1bf19fbb6cd58bc313d4a371ca8b5");
        let cmac = Des3Cmac::new(&key).unwrap();
        assert_eq!(cmac.finish().unwrap(), hex("b7a688e122ffaf95"));
        let mut cmac = Des3Cmac::new(&key).unwrap();
        cmac.update(&hex("6bc1bee22e409f96"));
        assert_eq!(cmac.finish().unwrap(), hex("8e8f293136283797"));
    }

    #[test]
    fn gcm_with_a_long_iv_known_answer() {
        // The GCM specification's (McGrew & Viega) test case 6: a 60-byte IV.
        let key = hex("feffe9928665731c6d6a8f9467308308");
        let iv = hex(concat!(
            "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728",
            "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b"
        ));
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = hex(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ));
        let expected = hex(concat!(
            "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7",
            "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
            "619cc5aefffe0bfa462af43c1699d050"
        ));
        let sealed = gcm(&key, &iv, &aad, 16, true, &plain).unwrap();
        assert_eq!(sealed.expose(), &expected[..]);
        let opened = gcm(&key, &iv, &aad, 16, false, &expected).unwrap();
        assert_eq!(opened.expose(), &plain[..]);
        let mut bad = expected.clone();
        bad[0] ^= 1;
        assert_eq!(
            gcm(&key, &iv, &aad, 16, false, &bad).err(),
            Some(Rv::EncryptedDataInvalid)
        );
        // A 1-byte IV works, a truncated tag too; an empty IV does not.
        let short = gcm(&key, &[1], b"", 12, true, b"hello").unwrap();
        assert_eq!(short.len(), 5 + 12);
        assert_eq!(
            gcm(&key, &[1], b"", 12, false, short.expose())
                .unwrap()
                .expose(),
            b"hello"
        );
        assert_eq!(
            gcm(&key, &[], b"", 16, true, b"x").err(),
            Some(Rv::MechanismParamInvalid)
        );
    }

    #[test]
    fn ed25519_ctx_and_ph_known_answers() {
        // RFC 8032 §7.2 (Ed25519ctx, context "foo") and §7.3 (Ed25519ph, message "abc").
        let seed = hex("0305334e381af78f141cb666f6199f57bc3495335a256a95bd2a55bf546663f6");
        let public = hex("dfc9425e4f968f7f0c29f0259cf5f9aed6851c2bb4ad8bfb860cfee0ab248292");
        let ctx = Ed25519Variant::new(false, b"foo").unwrap();
        let message = hex("f726936d19c800494e3fdaff20b276a8");
        let signature = ctx.sign(&seed, &message).unwrap();
        assert_eq!(
            signature,
            hex(concat!(
                "55a4cc2f70a54e04288c5f4cd1e45a7bb520b36292911876cada7323198dd87a",
                "8b36950b95130022907a7fb7c4e9b2d5f6cca685a587b4b21f4b888e4e7edb0d"
            ))
        );
        ctx.verify(&public, &message, &signature).unwrap();
        assert_eq!(
            Ed25519Variant::new(false, b"bar")
                .unwrap()
                .verify(&public, &message, &signature),
            Err(Rv::SignatureInvalid),
            "another context"
        );
        let seed = hex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42");
        let public = hex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf");
        let ph = Ed25519Variant::new(true, b"").unwrap();
        let signature = ph.sign(&seed, b"abc").unwrap();
        assert_eq!(
            signature,
            hex(concat!(
                "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41",
                "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
            ))
        );
        ph.verify(&public, b"abc", &signature).unwrap();
        assert_eq!(
            Ed25519Variant::new(false, b"").err(),
            Some(Rv::MechanismParamInvalid)
        );
    }

    #[test]
    fn rsa_1024_generated_signs_encrypts_and_checks() {
        let der = RawRsa::generate(1024).unwrap();
        let private = RawRsa::private(der.expose()).unwrap();
        assert_eq!(private.len(), 128);
        let signature = private.sign_pkcs1(b"DigestInfo or anything").unwrap();
        assert_eq!(
            private.recover_pkcs1(&signature).unwrap(),
            b"DigestInfo or anything"
        );
        let sealed = private.encrypt_pkcs1(b"a wrapped key").unwrap();
        assert_eq!(
            private.decrypt_pkcs1(&sealed).unwrap().expose(),
            b"a wrapped key"
        );
        let digest = [7u8; 32];
        let pss = private.sign_pss(Hash::Sha256, &digest).unwrap();
        private.verify_pss(Hash::Sha256, &digest, &pss).unwrap();
        assert_eq!(
            private.verify_pss(Hash::Sha256, &[8u8; 32], &pss),
            Err(Rv::SignatureInvalid)
        );
        assert_eq!(
            private.encrypt_pkcs1(&[0; 118]),
            Err(Rv::DataLenRange),
            "k - 11 = 117"
        );
    }

    /// FIPS 204's external ML-DSA: with an empty context, the prefix `0 || 0` makes these
    /// signatures the ones aws-lc-rs checks (a wrong prefix would fail there); deterministic
    /// signing repeats itself, hedged does not; a context binds the signature to it.
    #[test]
    fn ml_dsa_contexts_and_deterministic_signing() {
        use aws_lc_rs::encoding::AsRawBytes;
        use aws_lc_rs::signature::{KeyPair, PqdsaKeyPair, UnparsedPublicKey};
        use aws_lc_rs::signature::{ML_DSA_44, ML_DSA_44_SIGNING, ML_DSA_65, ML_DSA_65_SIGNING};
        use tessera_core::ck;
        let sets = [
            (ck::CKP_ML_DSA_44, &ML_DSA_44_SIGNING, &ML_DSA_44),
            (ck::CKP_ML_DSA_65, &ML_DSA_65_SIGNING, &ML_DSA_65),
        ];
        for (set, signing, verification) in sets {
            let set = set as u64;
            let pair = PqdsaKeyPair::from_seed(signing, &[7u8; 32]).unwrap();
            let private = pair.private_key().as_raw_bytes().unwrap();
            let public = pair.public_key().as_ref().to_vec();
            let message = b"the message";

            let deterministic = MlDsaVariant::new(true, b"").unwrap();
            let one = deterministic.sign(set, private.as_ref(), message).unwrap();
            let two = deterministic.sign(set, private.as_ref(), message).unwrap();
            assert_eq!(one, two, "deterministic");
            UnparsedPublicKey::new(verification, &public)
                .verify(message, &one)
                .expect("aws-lc-rs verifies it: the empty context's prefix is FIPS 204's");
            deterministic.verify(set, &public, message, &one).unwrap();

            let hedged = MlDsaVariant::new(false, b"context").unwrap();
            let first = hedged.sign(set, private.as_ref(), message).unwrap();
            let second = hedged.sign(set, private.as_ref(), message).unwrap();
            assert_ne!(first, second, "hedged");
            hedged.verify(set, &public, message, &first).unwrap();
            hedged.verify(set, &public, message, &second).unwrap();
            let other = MlDsaVariant::new(false, b"other").unwrap();
            assert_eq!(
                other.verify(set, &public, message, &first),
                Err(Rv::SignatureInvalid)
            );
            assert!(UnparsedPublicKey::new(verification, &public)
                .verify(message, &first)
                .is_err());
            assert_eq!(
                hedged.verify(set, &public, message, &first[1..]),
                Err(Rv::SignatureLenRange)
            );
        }
        assert!(MlDsaVariant::new(false, &[0; 255]).is_ok());
        assert_eq!(
            MlDsaVariant::new(false, &[0; 256]).err(),
            Some(Rv::MechanismParamInvalid)
        );
    }
}
