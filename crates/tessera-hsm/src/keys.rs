//! Key management calls beyond generation: wrapping, unwrapping, derivation, `C_DigestKey`,
//! and `C_SessionCancel`.

use tessera_core::ck;
use tessera_core::{Mechanism, Rv, Template};
use tessera_wire::{Operation, Reply};

use crate::objects::visible;
use crate::Hsm;

impl Hsm {
    /// The full attributes of a key the session may use.
    pub(crate) fn usable_key(
        &self,
        client: u64,
        session: u64,
        key: u64,
    ) -> Result<crate::object::Attributes, Rv> {
        let state = self.lock();
        let token_id = state.session(client, session)?.token_id;
        state.check_public_crypto(client, token_id)?;
        let token = state.token(token_id)?;
        let object = token
            .objects
            .get(&key)
            .filter(|o| visible(token, client, o))
            .ok_or(Rv::KeyHandleInvalid)?;
        self.full_attributes(token, token_id, key, object)
    }

    pub(crate) fn wrap_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        wrapping_key: u64,
        key: u64,
    ) -> Result<Reply, Rv> {
        let wrapping = self
            .usable_key(client, session, wrapping_key)
            .map_err(|_| Rv::WrappingKeyHandleInvalid)?;
        let target = self.usable_key(client, session, key)?;
        crate::wrap::wrap(mechanism, &wrapping, &target).map(Reply::Bytes)
    }

    pub(crate) fn unwrap_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        unwrapping_key: u64,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<Reply, Rv> {
        let unwrapping = self
            .usable_key(client, session, unwrapping_key)
            .map_err(|_| Rv::UnwrappingKeyHandleInvalid)?;
        let value = crate::wrap::unwrap(mechanism, &unwrapping, wrapped)?;
        self.create_secret_key(
            client,
            session,
            template,
            value.expose(),
            mechanism.ty,
            false,
        )
    }

    pub(crate) fn derive_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        base_key: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let base = self.usable_key(client, session, base_key)?;
        if !base.flag(ck::CKA_DERIVE) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        let length = template.ulong(ck::CKA_VALUE_LEN)?;
        let value = crate::derive::derive(self, client, session, mechanism, &base, length)?;
        self.create_secret_key(
            client,
            session,
            template,
            value.expose(),
            mechanism.ty,
            true,
        )
    }

    pub(crate) fn digest_key(&self, client: u64, session: u64, key: u64) -> Result<Reply, Rv> {
        let attributes = self.usable_key(client, session, key)?;
        if attributes.class() != ck::CKO_SECRET_KEY as u64 {
            return Err(Rv::KeyIndigestible);
        }
        let value = attributes
            .get(ck::CKA_VALUE)
            .ok_or(Rv::KeyIndigestible)?
            .to_vec();
        self.operation_update(client, session, Operation::Digest, &value)
    }

    pub(crate) fn session_cancel(
        &self,
        client: u64,
        session: u64,
        flags: u64,
    ) -> Result<Reply, Rv> {
        let mut state = self.lock();
        let current = state.session_mut(client, session)?;
        let kinds = [
            (ck::CKF_ENCRYPT, Operation::Encrypt),
            (ck::CKF_DECRYPT, Operation::Decrypt),
            (ck::CKF_DIGEST, Operation::Digest),
            (ck::CKF_SIGN, Operation::Sign),
            (ck::CKF_VERIFY, Operation::Verify),
        ];
        for (flag, operation) in kinds {
            if flags & flag as u64 != 0 {
                current.operations.remove(&operation);
            }
        }
        if flags & ck::CKF_FIND_OBJECTS as u64 != 0 {
            current.find = None;
        }
        Ok(Reply::Done)
    }
}
