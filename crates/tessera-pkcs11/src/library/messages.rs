//! The message-based functions of PKCS#11 3.0 (§5.8.5–5.8.9, §5.9.5–5.9.9, §5.11.7–5.11.11,
//! §5.12.7–5.12.11), composed from the single-part operations of the wire protocol.
//!
//! `C_Message*Init` only records the mechanism and key in the session entry; each message is then
//! a whole operation on the device (one `OperationOnce` request), so messages need no
//! device state between them and `C_Message*Final` only forgets the record. Encryption and
//! decryption are AES-GCM, whose per-message parameters (`CK_GCM_MESSAGE_PARAMS`) the FFI layer
//! decodes into a [`GcmMessage`].

use cryptoki_sys as ck;
use tessera_core::{Mechanism, MechanismParameter, Rv, SecretBytes};
use tessera_wire::Operation;

use super::{output, produce, random, verified, with, Producer};
use crate::message::{generated_iv, join_tag, split_tag, tag_len, GcmMessage, Iv, Sealed};
use crate::CkResult;

/// A message-based operation in progress: what `C_Message*Init` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The mechanism: for encryption and decryption only its type (the parameters come with
    /// each message); for signatures the whole mechanism, used for every message.
    pub mechanism: Mechanism,
    /// The key.
    pub key: u64,
}

/// `C_MessageEncryptInit`, `C_MessageDecryptInit`, `C_MessageSignInit`,
/// `C_MessageVerifyInit`: `CKR_OPERATION_ACTIVE` while one of the same kind is in progress;
/// encryption and decryption take `CKM_AES_GCM` only (`CKR_MECHANISM_INVALID`).
pub fn message_init(handle: u64, operation: Operation, mechanism: Mechanism, key: u64) -> CkResult {
    with(|library| {
        let session = library.session_mut(handle)?;
        let mechanism = match operation {
            Operation::Encrypt | Operation::Decrypt => {
                if mechanism.ty != ck::CKM_AES_GCM as u64 {
                    return Err(Rv::MechanismInvalid.code());
                }
                Mechanism::plain(mechanism.ty)
            }
            Operation::Sign | Operation::Verify => mechanism,
            Operation::Digest => return Err(Rv::GeneralError.code()),
        };
        if session
            .messages
            .iter()
            .any(|(active, _)| *active == operation)
        {
            return Err(Rv::OperationActive.code());
        }
        session
            .messages
            .push((operation, Context { mechanism, key }));
        Ok(())
    })
}

/// The message-based operation in progress: `CKR_OPERATION_NOT_INITIALIZED` without one.
pub fn message_context(handle: u64, operation: Operation) -> CkResult<Context> {
    with(|library| {
        let session = library.session_mut(handle)?;
        session
            .messages
            .iter()
            .find(|(active, _)| *active == operation)
            .map(|(_, context)| context.clone())
            .ok_or(Rv::OperationNotInitialized.code())
    })
}

/// `C_MessageEncryptFinal`, ...: ends the operation (`CKR_OPERATION_NOT_INITIALIZED` without
/// one) and forgets its kept output.
pub fn message_final(handle: u64, operation: Operation) -> CkResult {
    with(|library| {
        let session = library.session_mut(handle)?;
        let before = session.messages.len();
        session.messages.retain(|(active, _)| *active != operation);
        if session.messages.len() == before {
            return Err(Rv::OperationNotInitialized.code());
        }
        if operation == Operation::Sign {
            session
                .pending
                .forget(|call| matches!(call, Producer::SignMessage(_)));
        }
        Ok(())
    })
}

/// The GCM mechanism of one message.
fn gcm(context: &Context, iv: Vec<u8>, message: GcmMessage) -> Mechanism {
    Mechanism {
        ty: context.mechanism.ty,
        parameter: MechanismParameter::Gcm {
            iv,
            aad: message.aad,
            tag_bits: message.tag_bits,
        },
    }
}

/// `C_EncryptMessage`: generates the IV if asked (random bytes from the device, with the
/// application's fixed bits), encrypts, and splits the device's `ciphertext || tag`.
pub fn seal(
    handle: u64,
    context: &Context,
    message: GcmMessage,
    plaintext: &[u8],
) -> CkResult<Sealed> {
    let tag_len = tag_len(message.tag_bits).map_err(Rv::code)?;
    let iv = match &message.iv {
        Iv::Given(iv) => iv.clone(),
        Iv::Generated {
            len,
            fixed,
            fixed_bits,
        } => generated_iv(fixed, *fixed_bits, &random(handle, *len)?).map_err(Rv::code)?,
    };
    let mechanism = gcm(context, iv.clone(), message);
    let reply = super::deferred::once(
        handle,
        Operation::Encrypt,
        mechanism,
        context.key,
        crate::copied(plaintext)?,
        Vec::new(),
    )?;
    let sealed = output(reply)?;
    let Some((ciphertext, tag)) = split_tag(sealed.expose(), plaintext.len(), tag_len) else {
        tracing::warn!(
            "the device returned {} bytes of AES-GCM output for {} bytes and a {tag_len}-byte tag",
            sealed.len(),
            plaintext.len()
        );
        return Err(Rv::DeviceError.code());
    };
    Ok(Sealed {
        iv,
        ciphertext: crate::copied(ciphertext)?,
        tag: crate::copied(tag)?,
    })
}

/// `C_DecryptMessage`: decrypts `ciphertext || tag`; the plaintext is as long as the
/// ciphertext.
pub fn open(
    handle: u64,
    context: &Context,
    message: GcmMessage,
    ciphertext: &[u8],
    tag: &[u8],
) -> CkResult<SecretBytes> {
    let Iv::Given(iv) = message.iv.clone() else {
        return Err(Rv::MechanismParamInvalid.code());
    };
    let mechanism = gcm(context, iv, message);
    let reply = super::deferred::once(
        handle,
        Operation::Decrypt,
        mechanism,
        context.key,
        join_tag(ciphertext, tag).ok_or(Rv::HostMemory.code())?,
        Vec::new(),
    )?;
    let plaintext = output(reply)?;
    if plaintext.len() != ciphertext.len() {
        tracing::warn!(
            "the device returned {} bytes of AES-GCM plaintext for {} bytes",
            plaintext.len(),
            ciphertext.len()
        );
        return Err(Rv::DeviceError.code());
    }
    Ok(plaintext)
}

/// `C_SignMessage`: the signature of `data` with the recorded mechanism, asked of the device
/// once for a length query and the call that takes it.
pub fn sign_message(
    handle: u64,
    context: &Context,
    data: &[u8],
    capacity: Option<usize>,
) -> CkResult<SecretBytes> {
    let call = Producer::SignMessage(crate::secret_copied(data)?);
    produce(handle, call, capacity, || {
        let mechanism = context.mechanism.clone();
        let reply = super::deferred::once(
            handle,
            Operation::Sign,
            mechanism,
            context.key,
            crate::copied(data)?,
            Vec::new(),
        )?;
        output(reply)
    })
}

/// `C_VerifyMessage`: `Ok` only when the device says the signature is valid.
pub fn verify_message(handle: u64, context: &Context, data: &[u8], signature: &[u8]) -> CkResult {
    let mechanism = context.mechanism.clone();
    verified(super::deferred::once(
        handle,
        Operation::Verify,
        mechanism,
        context.key,
        crate::copied(data)?,
        crate::copied(signature)?,
    )?)
}
