//! Cryptographic operation calls: init, single-part, update and final for encrypt, decrypt,
//! digest, sign and verify.
//!
//! An active operation is taken out of its session while it computes, so no lock is held
//! during the cryptography, and taken and put back under the sessions' lock alone; an error
//! ends the operation (v3.0 §5.2).

use tessera_core::ck;
use tessera_core::{Mechanism, Rv};
use tessera_wire::{Operation, Reply};

use crate::crypto::{self, Output};
use crate::Hsm;

fn reply(output: Output) -> Reply {
    match output {
        Output::Bytes(bytes) => Reply::Bytes(bytes),
        Output::Secret(secret) => Reply::Secret(secret),
        Output::Verified => Reply::Verified,
    }
}

impl Hsm {
    pub(crate) fn operation_init(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        mechanism: &Mechanism,
        key: u64,
    ) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let current = state.session(client, session)?;
        if current.operations.contains_key(&operation) {
            return Err(Rv::OperationActive);
        }
        let token_id = current.token_id;
        state.check_public_crypto(client, token_id)?;
        let flags = state.device.flags;
        if !crate::mechanisms::allowed(mechanism.ty, flags) {
            return Err(Rv::MechanismInvalid);
        }
        if !crate::mechanisms::parameter_allowed(mechanism, flags) {
            return Err(Rv::MechanismParamInvalid);
        }
        let weak = flags & tessera_core::flags::WEAK_MECHANISMS != 0;
        let (active, key_needs_login) = if operation == Operation::Digest {
            (crypto::ActiveOperation::digest(mechanism)?, false)
        } else {
            let attributes = self.key_attributes(&state, client, session, key)?;
            // RSA below 2048 bits is not approved: not used under the `a` flag.
            if flags & tessera_core::flags::FIPS_ALGORITHMS != 0 && crypto::small_rsa(&attributes) {
                return Err(Rv::KeySizeRange);
            }
            if let Some(allowed) = attributes
                .get(ck::CKA_ALLOWED_MECHANISMS)
                .filter(|a| !a.is_empty())
            {
                let listed = allowed
                    .chunks_exact(8)
                    .any(|m| m.try_into().map(u64::from_le_bytes).ok() == Some(mechanism.ty));
                if !listed {
                    return Err(Rv::MechanismInvalid);
                }
            }
            let active = match operation {
                Operation::Encrypt => {
                    crypto::ActiveOperation::cipher(mechanism, &attributes, true, weak)?
                }
                Operation::Decrypt => {
                    crypto::ActiveOperation::cipher(mechanism, &attributes, false, weak)?
                }
                Operation::Sign => {
                    crypto::ActiveOperation::signature(mechanism, &attributes, false)?
                }
                Operation::Verify => {
                    crypto::ActiveOperation::signature(mechanism, &attributes, true)?
                }
                Operation::Digest => return Err(Rv::GeneralError),
            };
            (active, attributes.flag(ck::CKA_ALWAYS_AUTHENTICATE))
        };
        let current = state.session_mut(client, session)?;
        current.operations.insert(operation, active);
        current.multi_part.retain(|o| *o != operation);
        // Another operation's wait for its login is left as it is.
        current.authenticate.retain(|waiting| *waiting != operation);
        if key_needs_login {
            current.authenticate.push(operation);
        }
        Ok(Reply::Done)
    }

    /// Whether the next call of the session's active `operation`, with `more` bytes of input,
    /// is light enough to answer on the connection's own thread (no RSA, at most `limit` bytes
    /// to process: `ActiveOperation::is_light`). False without such an operation: the call
    /// then fails at once wherever it runs, and this cannot tell.
    pub fn light_operation(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        more: usize,
        limit: usize,
    ) -> bool {
        let sessions = self.sessions();
        let active = sessions.get(client, session).ok();
        active
            .and_then(|current| current.operations.get(&operation))
            .is_some_and(|active| active.is_light(more, limit))
    }

    /// The session's active `operation`, taken out while it computes; a single-part call
    /// (`single`) is refused with `CKR_OPERATION_ACTIVE`, the operation left as it was, once
    /// the operation has had an update. A call that does not put it back ends it.
    fn take(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        single: bool,
    ) -> Result<crypto::ActiveOperation, Rv> {
        // The session's own business: its lock alone.
        let mut sessions = self.sessions();
        let current = sessions.get_mut(client, session)?;
        if current.authenticate.contains(&operation) && current.operations.contains_key(&operation)
        {
            return Err(Rv::UserNotLoggedIn);
        }
        let multi_part = current.multi_part.contains(&operation);
        if single && multi_part && current.operations.contains_key(&operation) {
            return Err(Rv::OperationActive);
        }
        current.multi_part.retain(|o| *o != operation);
        current
            .operations
            .remove(&operation)
            .ok_or(Rv::OperationNotInitialized)
    }

    pub(crate) fn operation_single(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        data: Vec<u8>,
        signature: &[u8],
    ) -> Result<Reply, Rv> {
        let active = self.take(client, session, operation, true)?;
        active.single_owned(data, signature).map(reply)
    }

    pub(crate) fn operation_update(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        data: &[u8],
    ) -> Result<Reply, Rv> {
        let mut active = self.take(client, session, operation, false)?;
        let output = active.update(data)?;
        let mut sessions = self.sessions();
        // The session may have closed meanwhile; then the operation ends with it.
        let session = sessions.get_mut(client, session)?;
        session.operations.insert(operation, active);
        session.multi_part.push(operation);
        Ok(match (output, operation) {
            (Some(output), _) => reply(output),
            (None, Operation::Encrypt | Operation::Decrypt) => Reply::Bytes(Vec::new()),
            (None, _) => Reply::Done,
        })
    }

    pub(crate) fn operation_final(
        &self,
        client: u64,
        session: u64,
        operation: Operation,
        signature: &[u8],
    ) -> Result<Reply, Rv> {
        let active = self.take(client, session, operation, false)?;
        active.finish(signature).map(reply)
    }
}
