//! The calls of the session's operations (PKCS#11 3.0 §5.8–5.14) that need more than one
//! request or keep output in the session entry: the two-call convention's kept output
//! ([`produce`]), the dual-function updates, `C_WrapKey`, `C_SessionCancel`, random bytes.

use tessera_core::{Mechanism, Rv, SecretBytes};
use tessera_wire::{Call, Operation, Reply};

use super::deferred;
use super::pending::MESSAGE_FLAGS;
use super::{expect_done, session_call, unexpected, with, Producer, Stage};
use crate::CkResult;

/// A multi-part update that produces output (`C_EncryptUpdate`, `C_DecryptUpdate`).
pub fn update_output(handle: u64, operation: Operation, data: Vec<u8>) -> CkResult<SecretBytes> {
    deferred::continuing(handle, operation, || {
        output_of(handle, |session| Call::OperationUpdate {
            session,
            operation,
            data,
        })
    })
}

/// A final call (`C_EncryptFinal`, `C_SignFinal`, `C_VerifyFinal`, ...): the operation ends.
pub fn final_call(handle: u64, operation: Operation, signature: Vec<u8>) -> CkResult<Reply> {
    deferred::flush(handle, operation)?;
    let result = session_call(handle, |session| Call::OperationFinal {
        session,
        operation,
        signature,
    });
    deferred::ended(handle, operation);
    result
}

/// `C_DigestKey`: the held digest init goes first.
pub fn digest_key(handle: u64, key: u64) -> CkResult {
    deferred::continuing(handle, Operation::Digest, || {
        expect_done(session_call(handle, |session| Call::DigestKey {
            session,
            key,
        })?)
    })
}

/// A call that produces output, asking the device once: when the application's buffer is
/// NULL or too small (`capacity` is `None` or smaller than the output), the output is kept in
/// the session and the next call that equals `call` gets it without running `run` again. The
/// caller applies the two-call convention to the bytes returned.
pub fn produce(
    handle: u64,
    call: Producer,
    capacity: Option<usize>,
    run: impl FnOnce() -> CkResult<SecretBytes>,
) -> CkResult<SecretBytes> {
    let kept = with(|library| Ok(library.session_mut(handle)?.pending.take(&call, capacity)))?;
    if let Some(output) = kept {
        return Ok(output);
    }
    let output = run()?;
    with(|library| {
        let session = library.session_mut(handle)?;
        session.pending.keep(call, &output, capacity);
        Ok(())
    })?;
    Ok(output)
}

/// The output bytes of a reply (`Done`: none, as updates may answer).
pub fn output(reply: Reply) -> CkResult<SecretBytes> {
    match reply {
        Reply::Bytes(bytes) => Ok(SecretBytes::new(bytes)),
        Reply::Secret(secret) => Ok(secret),
        Reply::Done => Ok(SecretBytes::default()),
        reply => Err(unexpected(&reply)),
    }
}

/// A session call that produces output bytes.
pub fn output_of(handle: u64, build: impl FnOnce(u64) -> Call) -> CkResult<SecretBytes> {
    output(session_call(handle, build)?)
}

/// A multi-part update without output (`C_DigestUpdate`, `C_SignUpdate`, `C_VerifyUpdate`).
pub fn absorb(handle: u64, operation: Operation, data: Vec<u8>) -> CkResult {
    deferred::continuing(handle, operation, || {
        let request = |session| Call::OperationUpdate {
            session,
            operation,
            data,
        };
        match session_call(handle, request)? {
            Reply::Done => Ok(()),
            Reply::Bytes(bytes) if bytes.is_empty() => Ok(()),
            reply => Err(unexpected(&reply)),
        }
    })
}

/// The dual-function updates (PKCS#11 3.0 §5.13), each two updates of the session's
/// operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dual {
    /// `C_DigestEncryptUpdate`: digest the input, then encrypt it.
    DigestEncrypt,
    /// `C_DecryptDigestUpdate`: decrypt the input, then digest the plaintext.
    DecryptDigest,
    /// `C_SignEncryptUpdate`: sign the input, then encrypt it.
    SignEncrypt,
    /// `C_DecryptVerifyUpdate`: decrypt the input, then verify the plaintext.
    DecryptVerify,
}

impl Dual {
    /// The cipher operation, whose output the call returns.
    pub fn cipher(self) -> Operation {
        match self {
            Dual::DigestEncrypt | Dual::SignEncrypt => Operation::Encrypt,
            Dual::DecryptDigest | Dual::DecryptVerify => Operation::Decrypt,
        }
    }

    /// The operation that takes the plaintext without output.
    pub fn absorber(self) -> Operation {
        match self {
            Dual::DigestEncrypt | Dual::DecryptDigest => Operation::Digest,
            Dual::SignEncrypt => Operation::Sign,
            Dual::DecryptVerify => Operation::Verify,
        }
    }

    /// Whether the plaintext is the call's input (encryption), rather than the cipher's
    /// output (decryption).
    pub fn plaintext_is_input(self) -> bool {
        self.cipher() == Operation::Encrypt
    }
}

/// A dual-function update. The cipher's output follows the two-call convention like that of
/// `C_EncryptUpdate` / `C_DecryptUpdate`; both updates run once, on the first call, so a
/// length query does not feed the input to the digest or signature twice. Tessera's cipher
/// updates that gather their input (AES-GCM) return no output: then the
/// plaintext comes from `C_DecryptFinal`, and the application digests or verifies it itself,
/// as the specification describes for outputs held back until the final call.
pub fn dual_update(
    handle: u64,
    dual: Dual,
    data: &[u8],
    capacity: Option<usize>,
) -> CkResult<SecretBytes> {
    let call = Producer::Operation(dual.cipher(), Stage::Update);
    produce(handle, call, capacity, || {
        if dual.plaintext_is_input() {
            absorb(handle, dual.absorber(), crate::copied(data)?)?;
        }
        let output = update_output(handle, dual.cipher(), crate::copied(data)?)?;
        if !dual.plaintext_is_input() {
            absorb(handle, dual.absorber(), crate::copied(output.expose())?)?;
        }
        Ok(output)
    })
}

/// `C_WrapKey`: the wrapped key, asked of the device once for a length query and the call
/// that takes it.
pub fn wrap_key(
    handle: u64,
    mechanism: Mechanism,
    wrapping_key: u64,
    key: u64,
    capacity: Option<usize>,
) -> CkResult<SecretBytes> {
    let call = Producer::WrapKey {
        mechanism: mechanism.clone(),
        wrapping_key,
        key,
    };
    produce(handle, call, capacity, || {
        let request = |session| Call::WrapKey {
            session,
            mechanism,
            wrapping_key,
            key,
        };
        match session_call(handle, request)? {
            Reply::Bytes(wrapped) => Ok(SecretBytes::new(wrapped)),
            reply => Err(unexpected(&reply)),
        }
    })
}

/// `C_SessionCancel`: forgets the kept outputs and message-based operations that `flags`
/// names, then asks the device to end its operations. The message flags stay here (the
/// device runs each message as a whole operation and has nothing to cancel for them).
pub fn session_cancel(handle: u64, flags: u64) -> CkResult {
    with(|library| {
        library.session_mut(handle)?.cancel_here(flags);
        Ok(())
    })?;
    let flags = flags & !MESSAGE_FLAGS;
    if flags == 0 {
        return Ok(());
    }
    expect_done(session_call(handle, |session| Call::SessionCancel {
        session,
        flags,
    })?)
}

/// `len` random bytes from the device (`C_GenerateRandom`, generated IVs).
pub fn random(handle: u64, len: usize) -> CkResult<Vec<u8>> {
    let request = |session| Call::GenerateRandom {
        session,
        len: len as u64,
    };
    let produced = match session_call(handle, request)? {
        Reply::Bytes(bytes) => bytes,
        reply => return Err(unexpected(&reply)),
    };
    if produced.len() != len {
        tracing::warn!(
            "the device returned {} random bytes for {len}",
            produced.len()
        );
        return Err(Rv::DeviceError.code());
    }
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_functions_compose_a_cipher_and_an_absorber() {
        let cases = [
            (
                Dual::DigestEncrypt,
                Operation::Encrypt,
                Operation::Digest,
                true,
            ),
            (
                Dual::DecryptDigest,
                Operation::Decrypt,
                Operation::Digest,
                false,
            ),
            (Dual::SignEncrypt, Operation::Encrypt, Operation::Sign, true),
            (
                Dual::DecryptVerify,
                Operation::Decrypt,
                Operation::Verify,
                false,
            ),
        ];
        for (dual, cipher, absorber, input) in cases {
            assert_eq!(
                (dual.cipher(), dual.absorber(), dual.plaintext_is_input()),
                (cipher, absorber, input),
                "{dual:?}"
            );
        }
    }
}
