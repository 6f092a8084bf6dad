//! Encryption, decryption, digests, signatures, verification and the dual-function updates
//! (PKCS#11 3.0 §5.8–5.13), and random numbers (§5.15).
//!
//! Calls that produce output ask the device once: a length query or a too-small buffer keeps
//! the output in the session ([`library::produce`]) for the next call.

use cryptoki_sys::{CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};
use tessera_core::bytes::Held;
use tessera_core::SecretBytes;
use tessera_wire::{Call, Operation};

use super::mechanism::mechanism;
use super::{bytes, input, length, secret_copied, Output};
use crate::library::{self, expect_done, verified, Dual, Producer, Stage};
use crate::CkResult;

/// `C_*Init`.
///
/// # Safety
///
/// `mechanism` must be NULL or a valid `CK_MECHANISM` (see [`mechanism`]).
unsafe fn init(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    mechanism_pointer: *const CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CkResult {
    // SAFETY: forwarded contract.
    let mechanism = unsafe { mechanism(mechanism_pointer) }?;
    library::operation_init(session as u64, operation, mechanism, key as u64)
}

/// A call that produces output: `run` asks the device, given the session's handle, unless the
/// output is kept from an earlier call.
///
/// # Safety
///
/// `out` and `out_len` follow the two-call convention (see [`Output::new`]).
unsafe fn produce(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    stage: Stage,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    run: impl FnOnce(u64) -> CkResult<SecretBytes>,
) -> CkResult {
    // SAFETY: forwarded contract.
    let output = unsafe { Output::new(out, out_len) }?;
    let handle = session as u64;
    let call = Producer::Operation(operation, stage);
    let mut produced = library::produce(handle, call, output.capacity()?, || run(handle))?;
    let delivered = output.deliver(produced.expose());
    // The spent buffer goes back to the pool for the next bulk call. Ciphertexts, signatures
    // and digests are not secret: only a decryption's plaintext is wiped first.
    let held = match operation {
        Operation::Decrypt => Held::Secret,
        Operation::Encrypt | Operation::Digest | Operation::Sign | Operation::Verify => Held::Data,
    };
    tessera_core::bytes::give(produced.take_bytes(), held);
    delivered
}

/// A single-part call that produces output (`C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`).
///
/// # Safety
///
/// `data` holds `data_len` bytes (or is NULL with 0); `out`/`out_len` as for [`produce`].
unsafe fn single(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    data: *const CK_BYTE,
    data_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CkResult {
    let result = (|| {
        // SAFETY: forwarded contract.
        let data = unsafe { input(data, data_len) }?;
        let run = |handle| {
            library::output(library::single(
                handle,
                operation,
                super::copied(data)?,
                Vec::new(),
            )?)
        };
        // SAFETY: forwarded contract.
        unsafe { produce(session, operation, Stage::Single, out, out_len, run) }
    })();
    ends_on_error(session, operation, result)
}

/// What a failed single-part, update or final call leaves: no operation (PKCS#11 3.0 §5.8 and
/// its siblings), unless it failed with `CKR_BUFFER_TOO_SMALL` (the two-call convention) — the
/// device ended what it answered; what the library refused before sending, it ends here
/// ([`library::abandon`]).
/// A call refused with `CKR_OPERATION_ACTIVE` (a single-part call of a multi-part operation,
/// or the reverse) leaves the operation as it was.
fn ends_on_error(session: CK_SESSION_HANDLE, operation: Operation, result: CkResult) -> CkResult {
    use tessera_core::Rv;
    if let Err(code) = result {
        if code != Rv::BufferTooSmall.code() && code != Rv::OperationActive.code() {
            library::abandon(session as u64, operation);
        }
    }
    result
}

/// The end of a `C_VerifySignature*` call: the operation ends with the call, as any failed
/// verification's (the signature was taken when the call began).
fn verification_ends(session: CK_SESSION_HANDLE, result: CkResult) -> CkResult {
    let ended = ends_on_error(session, Operation::Verify, result);
    if operation_over(&ended) {
        library::set_verify_signature(session as u64, None)?;
    }
    ended
}

/// Whether a call's outcome ends its operation: success of a final or single-part call, or any
/// error but `CKR_BUFFER_TOO_SMALL` and `CKR_OPERATION_ACTIVE` (which leave it as it was).
fn operation_over(result: &CkResult) -> bool {
    use tessera_core::Rv;
    !matches!(result, Err(code) if *code == Rv::BufferTooSmall.code() || *code == Rv::OperationActive.code())
}

/// A multi-part update that produces output (`C_EncryptUpdate`, `C_DecryptUpdate`).
///
/// # Safety
///
/// As for [`single`].
unsafe fn update_with_output(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    part: *const CK_BYTE,
    part_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CkResult {
    let result = (|| {
        library::not_waiting_for_single(session as u64, operation)?;
        // SAFETY: forwarded contract.
        let data = unsafe { input(part, part_len) }?;
        let run = |handle| library::update_output(handle, operation, super::copied(data)?);
        // SAFETY: forwarded contract.
        unsafe { produce(session, operation, Stage::Update, out, out_len, run) }
    })();
    ends_on_error(session, operation, result)
}

/// A multi-part update without output (`C_DigestUpdate`, `C_SignUpdate`, `C_VerifyUpdate`).
///
/// # Safety
///
/// `part` holds `part_len` bytes (or is NULL with 0).
unsafe fn update(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    part: *const CK_BYTE,
    part_len: CK_ULONG,
) -> CkResult {
    let result = (|| {
        library::not_waiting_for_single(session as u64, operation)?;
        // SAFETY: forwarded contract.
        let data = super::copied(unsafe { input(part, part_len) }?)?;
        library::absorb(session as u64, operation, data)
    })();
    ends_on_error(session, operation, result)
}

/// A final call that produces output (`C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`,
/// `C_SignFinal`).
///
/// # Safety
///
/// As for [`produce`].
unsafe fn final_with_output(
    session: CK_SESSION_HANDLE,
    operation: Operation,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CkResult {
    let result = library::not_waiting_for_single(session as u64, operation).and_then(|()| {
        let run = |handle| library::output(library::final_call(handle, operation, Vec::new())?);
        // SAFETY: forwarded contract.
        unsafe { produce(session, operation, Stage::Final, out, out_len, run) }
    });
    ends_on_error(session, operation, result)
}

/// A dual-function update (§5.13): the cipher's output follows the two-call convention.
///
/// # Safety
///
/// As for [`single`].
unsafe fn dual(
    session: CK_SESSION_HANDLE,
    dual: Dual,
    part: *const CK_BYTE,
    part_len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CkResult {
    // Both operations follow the rules of their own updates: a call refused for its
    // arguments ends them, and neither may be a single-part call's kept output.
    let operations = [dual.cipher(), dual.absorber()];
    let result = (|| {
        for operation in operations {
            library::not_waiting_for_single(session as u64, operation)?;
        }
        // SAFETY: forwarded contract.
        let data = unsafe { input(part, part_len) }?;
        // SAFETY: forwarded contract.
        let output = unsafe { Output::new(out, out_len) }?;
        let produced = library::dual_update(session as u64, dual, data, output.capacity()?)?;
        output.deliver(produced.expose())
    })();
    let result = ends_on_error(session, operations[0], result);
    ends_on_error(session, operations[1], result)
}

entry_points! {
    /// `C_EncryptInit` (§5.8.1).
    fn C_EncryptInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.8.1).
        unsafe { init(session, Operation::Encrypt, mechanism, key) }
    }

    /// `C_Encrypt` (§5.8.2).
    fn C_Encrypt(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    ) {
        // SAFETY: the buffers follow §5.8.2 and the two-call convention.
        unsafe { single(session, Operation::Encrypt, data, data_len, encrypted, encrypted_len) }
    }

    /// `C_EncryptUpdate` (§5.8.3).
    fn C_EncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    ) {
        let operation = Operation::Encrypt;
        // SAFETY: the buffers follow §5.8.3 and the two-call convention.
        unsafe { update_with_output(session, operation, part, part_len, encrypted, encrypted_len) }
    }

    /// `C_EncryptFinal` (§5.8.4).
    fn C_EncryptFinal(session: CK_SESSION_HANDLE, last: *mut CK_BYTE, last_len: *mut CK_ULONG) {
        // SAFETY: the buffer follows §5.8.4 and the two-call convention.
        unsafe { final_with_output(session, Operation::Encrypt, last, last_len) }
    }

    /// `C_DecryptInit` (§5.9.1).
    fn C_DecryptInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.9.1).
        unsafe { init(session, Operation::Decrypt, mechanism, key) }
    }

    /// `C_Decrypt` (§5.9.2).
    fn C_Decrypt(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        data: *mut CK_BYTE,
        data_len: *mut CK_ULONG,
    ) {
        // SAFETY: the buffers follow §5.9.2 and the two-call convention.
        unsafe { single(session, Operation::Decrypt, encrypted, encrypted_len, data, data_len) }
    }

    /// `C_DecryptUpdate` (§5.9.3).
    fn C_DecryptUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    ) {
        let operation = Operation::Decrypt;
        // SAFETY: the buffers follow §5.9.3 and the two-call convention.
        unsafe { update_with_output(session, operation, encrypted, encrypted_len, part, part_len) }
    }

    /// `C_DecryptFinal` (§5.9.4).
    fn C_DecryptFinal(session: CK_SESSION_HANDLE, last: *mut CK_BYTE, last_len: *mut CK_ULONG) {
        // SAFETY: the buffer follows §5.9.4 and the two-call convention.
        unsafe { final_with_output(session, Operation::Decrypt, last, last_len) }
    }

    /// `C_DigestInit` (§5.10.1).
    fn C_DigestInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.10.1). Digests use no key.
        unsafe { init(session, Operation::Digest, mechanism, 0) }
    }

    /// `C_Digest` (§5.10.2).
    fn C_Digest(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        digest: *mut CK_BYTE,
        digest_len: *mut CK_ULONG,
    ) {
        // SAFETY: the buffers follow §5.10.2 and the two-call convention.
        unsafe { single(session, Operation::Digest, data, data_len, digest, digest_len) }
    }

    /// `C_DigestUpdate` (§5.10.3).
    fn C_DigestUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) {
        // SAFETY: pPart holds ulPartLen bytes (§5.10.3).
        unsafe { update(session, Operation::Digest, part, part_len) }
    }

    /// `C_DigestKey` (§5.10.4): the device adds the secret key's value to the digest.
    fn C_DigestKey(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) {
        library::digest_key(session as u64, key as u64)
    }

    /// `C_DigestFinal` (§5.10.5).
    fn C_DigestFinal(session: CK_SESSION_HANDLE, digest: *mut CK_BYTE, digest_len: *mut CK_ULONG) {
        // SAFETY: the buffer follows §5.10.5 and the two-call convention.
        unsafe { final_with_output(session, Operation::Digest, digest, digest_len) }
    }

    /// `C_SignInit` (§5.11.1).
    fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.11.1).
        unsafe { init(session, Operation::Sign, mechanism, key) }
    }

    /// `C_Sign` (§5.11.2).
    fn C_Sign(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    ) {
        // SAFETY: the buffers follow §5.11.2 and the two-call convention.
        unsafe { single(session, Operation::Sign, data, data_len, signature, signature_len) }
    }

    /// `C_SignUpdate` (§5.11.3).
    fn C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) {
        // SAFETY: pPart holds ulPartLen bytes (§5.11.3).
        unsafe { update(session, Operation::Sign, part, part_len) }
    }

    /// `C_SignFinal` (§5.11.4).
    fn C_SignFinal(
        session: CK_SESSION_HANDLE,
        signature: *mut CK_BYTE,
        signature_len: *mut CK_ULONG,
    ) {
        // SAFETY: the buffer follows §5.11.4 and the two-call convention.
        unsafe { final_with_output(session, Operation::Sign, signature, signature_len) }
    }

    /// `C_VerifyInit` (§5.12.1).
    fn C_VerifyInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.12.1).
        unsafe { init(session, Operation::Verify, mechanism, key) }?;
        library::set_verify_signature(session as u64, None)
    }

    /// `C_Verify` (§5.12.2): `CKR_OK` only when the device says the signature is valid.
    fn C_Verify(
        session: CK_SESSION_HANDLE,
        data: *mut CK_BYTE,
        data_len: CK_ULONG,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    ) {
        library::verify_signature(session as u64, false, false)?;
        let result = (|| {
            // SAFETY: pData holds ulDataLen bytes (§5.12.2).
            let data = super::copied(unsafe { input(data, data_len) }?)?;
            // SAFETY: pSignature holds ulSignatureLen bytes (§5.12.2).
            let signature = super::copied(unsafe { bytes(signature, signature_len) }?)?;
            verified(library::single(session as u64, Operation::Verify, data, signature)?)
        })();
        ends_on_error(session, Operation::Verify, result)
    }

    /// `C_VerifyUpdate` (§5.12.3).
    fn C_VerifyUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) {
        library::verify_signature(session as u64, false, false)?;
        // SAFETY: pPart holds ulPartLen bytes (§5.12.3).
        unsafe { update(session, Operation::Verify, part, part_len) }
    }

    /// `C_VerifyFinal` (§5.12.4): `CKR_OK` only when the device says the signature is valid.
    fn C_VerifyFinal(session: CK_SESSION_HANDLE, signature: *mut CK_BYTE, signature_len: CK_ULONG) {
        library::verify_signature(session as u64, false, false)?;
        let result = (|| {
            // SAFETY: pSignature holds ulSignatureLen bytes (§5.12.4).
            let signature = super::copied(unsafe { bytes(signature, signature_len) }?)?;
            verified(library::final_call(session as u64, Operation::Verify, signature)?)
        })();
        ends_on_error(session, Operation::Verify, result)
    }

    /// `C_VerifySignatureInit` (PKCS#11 3.2 §5.15.1): a verification whose signature comes
    /// first. The init is judged as `C_VerifyInit`'s; the signature waits in the library for
    /// the call that ends the operation.
    fn C_VerifySignatureInit(
        session: CK_SESSION_HANDLE,
        mechanism: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        signature: *mut CK_BYTE,
        signature_len: CK_ULONG,
    ) {
        // SAFETY: pSignature holds ulSignatureLen bytes (§5.15.1).
        let signature = super::copied(unsafe { bytes(signature, signature_len) }?)?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.15.1).
        unsafe { init(session, Operation::Verify, mechanism, key) }?;
        library::set_verify_signature(session as u64, Some(signature))
    }

    /// `C_VerifySignature` (§5.15.2): `CKR_OK` only when the device says the signature given
    /// at the init is valid for the data.
    fn C_VerifySignature(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, data_len: CK_ULONG) {
        // Read, not taken: the signature stays while the operation does.
        let signature = library::verify_signature(session as u64, true, true)?;
        let result = (|| {
            // SAFETY: pData holds ulDataLen bytes (§5.15.2).
            let data = super::copied(unsafe { input(data, data_len) }?)?;
            verified(library::single(session as u64, Operation::Verify, data, signature)?)
        })();
        verification_ends(session, result)
    }

    /// `C_VerifySignatureUpdate` (§5.15.3).
    fn C_VerifySignatureUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) {
        library::verify_signature(session as u64, true, false)?;
        // SAFETY: pPart holds ulPartLen bytes (§5.15.3).
        let result = unsafe { update(session, Operation::Verify, part, part_len) };
        if result.is_err() && operation_over(&result) {
            library::set_verify_signature(session as u64, None)?;
        }
        result
    }

    /// `C_VerifySignatureFinal` (§5.15.4): `CKR_OK` only when the device says the signature
    /// given at the init is valid for the parts.
    fn C_VerifySignatureFinal(session: CK_SESSION_HANDLE) {
        // Read, not taken: the signature stays while the operation does.
        let signature = library::verify_signature(session as u64, true, true)?;
        let result = library::final_call(session as u64, Operation::Verify, signature)
            .and_then(verified);
        verification_ends(session, result)
    }

    /// `C_DigestEncryptUpdate` (§5.13.1): a digest update with the input, then an encryption
    /// update.
    fn C_DigestEncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    ) {
        let kind = Dual::DigestEncrypt;
        // SAFETY: the buffers follow §5.13.1 and the two-call convention.
        unsafe { dual(session, kind, part, part_len, encrypted, encrypted_len) }
    }

    /// `C_DecryptDigestUpdate` (§5.13.2): a decryption update, then a digest update with the
    /// plaintext.
    fn C_DecryptDigestUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    ) {
        let kind = Dual::DecryptDigest;
        // SAFETY: the buffers follow §5.13.2 and the two-call convention.
        unsafe { dual(session, kind, encrypted, encrypted_len, part, part_len) }
    }

    /// `C_SignEncryptUpdate` (§5.13.3): a signature update with the input, then an
    /// encryption update.
    fn C_SignEncryptUpdate(
        session: CK_SESSION_HANDLE,
        part: *mut CK_BYTE,
        part_len: CK_ULONG,
        encrypted: *mut CK_BYTE,
        encrypted_len: *mut CK_ULONG,
    ) {
        let kind = Dual::SignEncrypt;
        // SAFETY: the buffers follow §5.13.3 and the two-call convention.
        unsafe { dual(session, kind, part, part_len, encrypted, encrypted_len) }
    }

    /// `C_DecryptVerifyUpdate` (§5.13.4): a decryption update, then a verification update
    /// with the plaintext.
    fn C_DecryptVerifyUpdate(
        session: CK_SESSION_HANDLE,
        encrypted: *mut CK_BYTE,
        encrypted_len: CK_ULONG,
        part: *mut CK_BYTE,
        part_len: *mut CK_ULONG,
    ) {
        let kind = Dual::DecryptVerify;
        // Not into a verification that C_VerifySignatureInit began.
        library::verify_signature(session as u64, false, false)?;
        // SAFETY: the buffers follow §5.13.4 and the two-call convention.
        unsafe { dual(session, kind, encrypted, encrypted_len, part, part_len) }
    }

    /// `C_SeedRandom` (§5.15.1).
    fn C_SeedRandom(session: CK_SESSION_HANDLE, seed: *mut CK_BYTE, seed_len: CK_ULONG) {
        // SAFETY: pSeed holds ulSeedLen bytes (§5.15.1).
        let seed = secret_copied(unsafe { bytes(seed, seed_len) }?)?;
        expect_done(library::session_call(session as u64, |session| Call::SeedRandom {
            session,
            seed,
        })?)
    }

    /// `C_GenerateRandom` (§5.15.2).
    fn C_GenerateRandom(session: CK_SESSION_HANDLE, random: *mut CK_BYTE, random_len: CK_ULONG) {
        let wanted = length(random_len)?;
        if wanted > super::MAX_INPUT {
            // More than one reply can carry: refused before anything is asked or written.
            return Err(tessera_core::Rv::ArgumentsBad.code());
        }
        // SAFETY: pRandomData is NULL or holds ulRandomLen writable bytes (§5.15.2).
        let place = unsafe { super::Fill::new(random, wanted) }?;
        place.fill(&library::random(session as u64, wanted)?)
    }
}
