//! The message-based functions of PKCS#11 3.0: AES-GCM encryption and decryption of whole
//! messages (§5.8.5–5.8.9, §5.9.5–5.9.9), signatures and verification of whole messages
//! (§5.11.7–5.11.11, §5.12.7–5.12.11). The multi-part message calls (`C_*MessageBegin`,
//! `C_*MessageNext`) are not supported (see [`super::unsupported`]).
//!
//! The per-message parameter of AES-GCM is a `CK_GCM_MESSAGE_PARAMS`: the library generates
//! the IV when `ivGenerator` asks for it (`CKG_GENERATE_RANDOM` or `CKG_GENERATE`: random bytes
//! from the device below the `ulIvFixedBits` fixed bits; counters are refused with
//! `CKR_MECHANISM_PARAM_INVALID`) and writes it back to `pIv`, and it keeps the tag apart in
//! `pTag`. The ciphertext is as long as the plaintext, so the two-call convention on it is
//! applied before anything reaches the device: a length query neither consumes an IV nor
//! encrypts. Signature messages take no parameter.

use std::ffi::c_void;

use cryptoki_sys::{
    CK_BYTE, CK_GCM_MESSAGE_PARAMS, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG,
};
use tessera_core::{ck, Mechanism, Rv};
use tessera_wire::Operation;

use super::mechanism::{embedded, mechanism, structure};
use super::{bytes, input, length, Fill, Output};
use crate::library;
use crate::message::{fixed_len, tag_len, GcmMessage, Iv};
use crate::CkResult;

fn invalid() -> u64 {
    Rv::MechanismParamInvalid.code()
}

/// The parameters of a message to encrypt, and where the IV (when generated) and the tag go.
struct Encryption<'a> {
    message: GcmMessage,
    iv: Option<Fill<'a>>,
    tag: Fill<'a>,
}

/// Decodes the `CK_GCM_MESSAGE_PARAMS` of `C_EncryptMessage`.
///
/// # Safety
///
/// `parameter` must be NULL or valid for `len` bytes; when it is a `CK_GCM_MESSAGE_PARAMS`,
/// `pIv` must be NULL or hold `ulIvLen` bytes and `pTag` NULL or hold `ulTagBits / 8` bytes,
/// both writable and unaliased for `'a`.
unsafe fn encryption<'a>(
    parameter: *const c_void,
    len: CK_ULONG,
    aad: Vec<u8>,
) -> CkResult<Encryption<'a>> {
    // SAFETY: forwarded contract.
    let gcm: CK_GCM_MESSAGE_PARAMS = unsafe { structure(parameter, len) }?;
    let tag_bytes = tag_len(gcm.ulTagBits as u64).map_err(Rv::code)?;
    // SAFETY: pTag holds ulTagBits / 8 writable bytes (forwarded contract).
    let tag = unsafe { Fill::new(gcm.pTag, tag_bytes) }.map_err(|_| invalid())?;
    let (iv, place) = match gcm.ivGenerator {
        ck::CKG_NO_GENERATE => {
            // SAFETY: pIv holds ulIvLen bytes (forwarded contract).
            let iv = unsafe { embedded(gcm.pIv, gcm.ulIvLen) }?;
            (Iv::Given(iv), None)
        }
        ck::CKG_GENERATE | ck::CKG_GENERATE_RANDOM => {
            let iv_len = length(gcm.ulIvLen)?;
            let fixed = fixed_len(gcm.ulIvFixedBits as u64, iv_len).map_err(Rv::code)?;
            // SAFETY: pIv holds ulIvLen bytes, of which we read the first `fixed` (at most
            // ulIvLen, checked), the ones with the fixed bits (forwarded contract).
            let fixed_bytes = unsafe { embedded(gcm.pIv, fixed as CK_ULONG) }?;
            // SAFETY: pIv holds ulIvLen writable bytes (forwarded contract); the read above
            // is over.
            let place = unsafe { Fill::new(gcm.pIv, iv_len) }.map_err(|_| invalid())?;
            let iv = Iv::Generated {
                len: iv_len,
                fixed: fixed_bytes,
                // At most 8 * ulIvLen (checked by `fixed_len`), so it fits.
                fixed_bits: gcm.ulIvFixedBits as usize,
            };
            (iv, Some(place))
        }
        // CKG_GENERATE_COUNTER and CKG_GENERATE_COUNTER_XOR would need a counter that
        // outlives the session; unknown generators.
        _ => return Err(invalid()),
    };
    Ok(Encryption {
        message: GcmMessage {
            iv,
            aad,
            tag_bits: gcm.ulTagBits as u64,
        },
        iv: place,
        tag,
    })
}

/// Decodes the `CK_GCM_MESSAGE_PARAMS` of `C_DecryptMessage`: the message and its tag. The IV
/// is always the application's (`ivGenerator` does not apply).
///
/// # Safety
///
/// `parameter` must be NULL or valid for `len` bytes; when it is a `CK_GCM_MESSAGE_PARAMS`,
/// `pIv` must be NULL or hold `ulIvLen` bytes and `pTag` NULL or hold `ulTagBits / 8` bytes.
unsafe fn decryption(
    parameter: *const c_void,
    len: CK_ULONG,
    aad: Vec<u8>,
) -> CkResult<(GcmMessage, Vec<u8>)> {
    // SAFETY: forwarded contract.
    let gcm: CK_GCM_MESSAGE_PARAMS = unsafe { structure(parameter, len) }?;
    let tag_bytes = tag_len(gcm.ulTagBits as u64).map_err(Rv::code)?;
    // SAFETY: pTag holds ulTagBits / 8 bytes (forwarded contract).
    let tag = unsafe { embedded(gcm.pTag, tag_bytes as CK_ULONG) }?;
    // SAFETY: pIv holds ulIvLen bytes (forwarded contract).
    let iv = unsafe { embedded(gcm.pIv, gcm.ulIvLen) }?;
    let message = GcmMessage {
        iv: Iv::Given(iv),
        aad,
        tag_bits: gcm.ulTagBits as u64,
    };
    Ok((message, tag))
}

/// `C_MessageSignInit`, `C_MessageVerifyInit`: the mechanism is decoded with its parameter,
/// which serves every message.
///
/// # Safety
///
/// `mechanism_pointer` must be NULL or a valid `CK_MECHANISM` (see [`mechanism`]).
unsafe fn init(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    mechanism_pointer: *const CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CkResult {
    // SAFETY: forwarded contract.
    let mechanism = unsafe { mechanism(mechanism_pointer) }?;
    library::message_init(session as u64, operation, mechanism, key as u64)
}

/// `C_MessageEncryptInit`, `C_MessageDecryptInit`: only the mechanism type counts. The
/// parameter is not read: applications pass NULL or a `CK_GCM_MESSAGE_PARAMS` (the `cryptoki`
/// crate does), which has the size of a `CK_GCM_PARAMS` but other fields, so decoding it as
/// the parameter of `CKM_AES_GCM` would follow a generator number as a pointer. The parameters
/// that count come with each message.
///
/// # Safety
///
/// `mechanism_pointer` must be NULL or point to a valid `CK_MECHANISM`.
unsafe fn cipher_init(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    mechanism_pointer: *const CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CkResult {
    // SAFETY: forwarded contract; NULL is refused.
    let mechanism = unsafe { super::read(mechanism_pointer) }?;
    let mechanism = Mechanism::plain(mechanism.mechanism as u64);
    library::message_init(session as u64, operation, mechanism, key as u64)
}

/// Signature messages take no parameter.
fn no_parameter(parameter: *const c_void, len: CK_ULONG) -> CkResult {
    if parameter.is_null() && len == 0 {
        Ok(())
    } else {
        Err(invalid())
    }
}

entry_points! {
    /// `C_MessageEncryptInit` (§5.8.5): `CKM_AES_GCM` only; its parameter is not read.
    fn C_MessageEncryptInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.8.5).
        unsafe { cipher_init(session, Operation::Encrypt, mechanism, key) }
    }

    /// `C_EncryptMessage` (§5.8.6): one AES-GCM message; the tag goes to `pTag`.
    fn C_EncryptMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: *mut CK_ULONG,
    ) {
        let handle = session as u64;
        let context = library::message_context(handle, Operation::Encrypt)?;
        // SAFETY: pAssociatedData holds ulAssociatedDataLen bytes (§5.8.6).
        let aad = super::copied(unsafe { bytes(associated, associated_len) }?)?;
        // SAFETY: pParameter holds ulParameterLen bytes, a CK_GCM_MESSAGE_PARAMS whose pIv
        // and pTag the application lends us for the call (§5.8.6).
        let encryption = unsafe { encryption(parameter, parameter_len, aad) }?;
        // SAFETY: pPlaintext holds ulPlaintextLen bytes (§5.8.6).
        let plaintext = unsafe { input(plaintext, plaintext_len) }?;
        // SAFETY: the ciphertext buffer follows the two-call convention (§5.8.6).
        let output = unsafe { Output::new(ciphertext, ciphertext_len) }?;
        if !output.has_room(plaintext.len())? {
            return Ok(());
        }
        let sealed = library::seal(handle, &context, encryption.message, plaintext)?;
        if let Some(iv) = encryption.iv {
            iv.fill(&sealed.iv)?;
        }
        encryption.tag.fill(&sealed.tag)?;
        output.deliver(&sealed.ciphertext)
    }

    /// `C_MessageEncryptFinal` (§5.8.9).
    fn C_MessageEncryptFinal(session: CK_SESSION_HANDLE) {
        library::message_final(session as u64, Operation::Encrypt)
    }

    /// `C_MessageDecryptInit` (§5.9.5): `CKM_AES_GCM` only; its parameter is not read.
    fn C_MessageDecryptInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.9.5).
        unsafe { cipher_init(session, Operation::Decrypt, mechanism, key) }
    }

    /// `C_DecryptMessage` (§5.9.6): one AES-GCM message, its tag taken from `pTag`.
    fn C_DecryptMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        associated: *mut CK_BYTE,
        associated_len: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: CK_ULONG,
        plaintext: *mut CK_BYTE,
        plaintext_len: *mut CK_ULONG,
    ) {
        let handle = session as u64;
        let context = library::message_context(handle, Operation::Decrypt)?;
        // SAFETY: pAssociatedData holds ulAssociatedDataLen bytes (§5.9.6).
        let aad = super::copied(unsafe { bytes(associated, associated_len) }?)?;
        // SAFETY: pParameter holds ulParameterLen bytes, a CK_GCM_MESSAGE_PARAMS (§5.9.6).
        let (message, tag) = unsafe { decryption(parameter, parameter_len, aad) }?;
        // SAFETY: pCiphertext holds ulCiphertextLen bytes (§5.9.6).
        let ciphertext = unsafe { input(ciphertext, ciphertext_len) }?;
        // SAFETY: the plaintext buffer follows the two-call convention (§5.9.6).
        let output = unsafe { Output::new(plaintext, plaintext_len) }?;
        if !output.has_room(ciphertext.len())? {
            return Ok(());
        }
        let opened = library::open(handle, &context, message, ciphertext, &tag)?;
        output.deliver(opened.expose())
    }

    /// `C_MessageDecryptFinal` (§5.9.9).
    fn C_MessageDecryptFinal(session: CK_SESSION_HANDLE) {
        library::message_final(session as u64, Operation::Decrypt)
    }

    /// `C_MessageSignInit` (§5.11.7): the mechanism (with its parameter) serves every message.
    fn C_MessageSignInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.11.7).
        unsafe { init(session, Operation::Sign, mechanism, key) }
    }

    /// `C_SignMessage` (§5.11.8): `pParameter` must be NULL.
    fn C_SignMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    ) {
        let handle = session as u64;
        let context = library::message_context(handle, Operation::Sign)?;
        no_parameter(parameter, parameter_len)?;
        // SAFETY: pData holds ulDataLen bytes (§5.11.8).
        let data = unsafe { input(data, data_len) }?;
        // SAFETY: the signature buffer follows the two-call convention (§5.11.8).
        let output = unsafe { Output::new(signature, signature_len) }?;
        let produced = library::sign_message(handle, &context, data, output.capacity()?)?;
        output.deliver(produced.expose())
    }

    /// `C_MessageSignFinal` (§5.11.11).
    fn C_MessageSignFinal(session: CK_SESSION_HANDLE) {
        library::message_final(session as u64, Operation::Sign)
    }

    /// `C_MessageVerifyInit` (§5.12.7): the mechanism (with its parameter) serves every
    /// message.
    fn C_MessageVerifyInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.12.7).
        unsafe { init(session, Operation::Verify, mechanism, key) }
    }

    /// `C_VerifyMessage` (§5.12.8): `pParameter` must be NULL; `CKR_OK` only when the device
    /// says the signature is valid.
    fn C_VerifyMessage(
        session: CK_SESSION_HANDLE,
        parameter: *mut c_void,
        parameter_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    ) {
        let handle = session as u64;
        let context = library::message_context(handle, Operation::Verify)?;
        no_parameter(parameter, parameter_len)?;
        // SAFETY: pData holds ulDataLen bytes (§5.12.8).
        let data = unsafe { input(data, data_len) }?;
        // SAFETY: pSignature holds ulSignatureLen bytes (§5.12.8).
        let signature = unsafe { bytes(signature, signature_len) }?;
        library::verify_message(handle, &context, data, signature)
    }

    /// `C_MessageVerifyFinal` (§5.12.11).
    fn C_MessageVerifyFinal(session: CK_SESSION_HANDLE) {
        library::message_final(session as u64, Operation::Verify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(
        iv: &mut [u8],
        fixed_bits: CK_ULONG,
        generator: ck::CK_GENERATOR_FUNCTION,
        tag: &mut [u8],
    ) -> CK_GCM_MESSAGE_PARAMS {
        CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: iv.len() as CK_ULONG,
            ulIvFixedBits: fixed_bits,
            ivGenerator: generator,
            pTag: tag.as_mut_ptr(),
            ulTagBits: (tag.len() * 8) as CK_ULONG,
        }
    }

    const SIZE: CK_ULONG = std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

    fn pointer(gcm: &CK_GCM_MESSAGE_PARAMS) -> *const c_void {
        gcm as *const CK_GCM_MESSAGE_PARAMS as *const c_void
    }

    #[test]
    fn given_ivs_are_read_and_the_tag_written() {
        let mut iv = [7u8; 12];
        let mut tag = [0u8; 16];
        let gcm = parameters(&mut iv, 0, ck::CKG_NO_GENERATE, &mut tag);
        // SAFETY: the structure, its IV and tag are live locals of the stated lengths.
        let decoded = unsafe { encryption(pointer(&gcm), SIZE, b"aad".to_vec()) }.unwrap();
        assert_eq!(
            decoded.message,
            GcmMessage {
                iv: Iv::Given(vec![7; 12]),
                aad: b"aad".to_vec(),
                tag_bits: 128
            }
        );
        assert!(decoded.iv.is_none(), "the application's IV is left alone");
        decoded.tag.fill(&[9; 16]).unwrap();
        assert_eq!(tag, [9; 16]);
    }

    #[test]
    fn generated_ivs_keep_the_fixed_part_and_are_written_back() {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&[1, 2, 3, 4]);
        let mut tag = [0u8; 16];
        let gcm = parameters(&mut iv, 32, ck::CKG_GENERATE_RANDOM, &mut tag);
        // SAFETY: as above.
        let decoded = unsafe { encryption(pointer(&gcm), SIZE, Vec::new()) }.unwrap();
        assert_eq!(
            decoded.message.iv,
            Iv::Generated {
                len: 12,
                fixed: vec![1, 2, 3, 4],
                fixed_bits: 32
            }
        );
        decoded.iv.unwrap().fill(&[5; 12]).unwrap();
        assert_eq!(iv, [5; 12]);

        let gcm = parameters(&mut iv, 97, ck::CKG_GENERATE, &mut tag);
        // SAFETY: as above; the fixed bits do not fit in the IV and are refused.
        let outcome = unsafe { encryption(pointer(&gcm), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
        let gcm = parameters(&mut iv, 0, ck::CKG_GENERATE_COUNTER, &mut tag);
        // SAFETY: as above; counters are refused.
        let outcome = unsafe { encryption(pointer(&gcm), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
    }

    #[test]
    fn bad_message_parameters_are_refused() {
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let mut gcm = parameters(&mut iv, 0, ck::CKG_NO_GENERATE, &mut tag);
        // SAFETY: the length is refused before any read.
        let outcome = unsafe { encryption(pointer(&gcm), SIZE - 8, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
        // SAFETY: NULL is refused.
        let outcome = unsafe { decryption(std::ptr::null(), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
        gcm.ulTagBits = 100;
        // SAFETY: as above; the tag length is refused.
        let outcome = unsafe { encryption(pointer(&gcm), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
        gcm.ulTagBits = 128;
        gcm.pTag = std::ptr::null_mut();
        // SAFETY: as above; a NULL tag is refused.
        let outcome = unsafe { encryption(pointer(&gcm), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
        // SAFETY: as above.
        let outcome = unsafe { decryption(pointer(&gcm), SIZE, Vec::new()) };
        assert_eq!(outcome.err(), Some(invalid()));
    }

    #[test]
    fn decryption_reads_iv_and_tag() {
        let mut iv = [3u8; 12];
        let mut tag = [8u8; 12];
        // The generator does not apply to decryption.
        let gcm = parameters(&mut iv, 0, ck::CKG_GENERATE_RANDOM, &mut tag);
        // SAFETY: the structure, its IV and tag are live locals of the stated lengths.
        let (message, tag) = unsafe { decryption(pointer(&gcm), SIZE, b"a".to_vec()) }.unwrap();
        assert_eq!(
            message,
            GcmMessage {
                iv: Iv::Given(vec![3; 12]),
                aad: b"a".to_vec(),
                tag_bits: 96
            }
        );
        assert_eq!(tag, vec![8; 12]);
    }

    #[test]
    fn cipher_init_reads_only_the_mechanism_type() {
        // A CK_GCM_MESSAGE_PARAMS whose generator, read as a CK_GCM_PARAMS, would be an AAD
        // pointer: the init must not look inside. Without an initialised library the call
        // ends at the session lookup, after the mechanism was read.
        let mut tag = [0u8; 16];
        let mut gcm = parameters(&mut [0; 12], 0, ck::CKG_GENERATE_RANDOM, &mut tag);
        let mechanism = CK_MECHANISM {
            mechanism: ck::CKM_AES_GCM,
            pParameter: &mut gcm as *mut CK_GCM_MESSAGE_PARAMS as *mut c_void,
            ulParameterLen: SIZE,
        };
        // SAFETY: the mechanism and its parameter are live locals.
        let outcome = unsafe { cipher_init(1, Operation::Encrypt, &mechanism, 2) };
        assert_eq!(outcome, Err(Rv::CryptokiNotInitialized.code()));
        // SAFETY: NULL is refused before any access.
        let outcome = unsafe { cipher_init(1, Operation::Encrypt, std::ptr::null(), 2) };
        assert_eq!(outcome, Err(Rv::ArgumentsBad.code()));
    }

    #[test]
    fn signature_messages_take_no_parameter() {
        let value = 0u8;
        assert_eq!(no_parameter(std::ptr::null(), 0), Ok(()));
        assert_eq!(no_parameter(std::ptr::null(), 4), Err(invalid()));
        let pointer = &value as *const u8 as *const c_void;
        assert_eq!(no_parameter(pointer, 1), Err(invalid()));
    }
}
