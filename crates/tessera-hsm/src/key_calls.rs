//! Key management calls beyond generation: wrapping, unwrapping, derivation, `C_DigestKey`,
//! and `C_SessionCancel`.

use tessera_core::ck;
use tessera_core::{Attribute, Mechanism, MechanismParameter, Rv, Template};
use tessera_wire::{Operation, Reply};

use crate::object::{constrained, Attributes};
use crate::Hsm;

/// The longest key `C_DeriveKey` makes with SP 800-108 (a generic secret's largest value).
const MAX_DERIVED_LENGTH: u64 = 512;

impl Hsm {
    /// The full attributes of a key the session may use.
    pub(crate) fn usable_key(
        &self,
        client: u64,
        session: u64,
        key: u64,
    ) -> Result<crate::object::Attributes, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let state = tokens.lock(self);
        let token_id = state.session(client, session)?.token_id;
        state.check_public_crypto(client, token_id)?;
        self.key_attributes(&state, client, session, key)
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
        let template = constrained(template, &unwrapping, ck::CKA_UNWRAP_TEMPLATE)?;
        let weak = self.device.now().flags & tessera_core::flags::WEAK_MECHANISMS != 0;
        let value = crate::wrap::unwrap(mechanism, &unwrapping, wrapped, weak)?;
        self.create_secret_key(client, session, &template, value.expose(), false)
    }

    pub(crate) fn derive_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        base_key: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        if !crate::mechanisms::allowed(mechanism.ty, self.device.now().flags) {
            return Err(Rv::MechanismInvalid);
        }
        let base = self.usable_key(client, session, base_key)?;
        if !base.flag(ck::CKA_DERIVE) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        if crate::kbkdf::is_kbkdf(mechanism.ty) {
            return self.derive_keys(client, session, mechanism, &base, template);
        }
        let mut template = constrained(template, &base, ck::CKA_DERIVE_TEMPLATE)?;
        // The other key a derivation joins to the base (CKM_CONCATENATE_BASE_AND_KEY).
        let other = match mechanism.parameter {
            MechanismParameter::Key(other) => Some(self.usable_key(client, session, other)?),
            _ => None,
        };
        if crate::derive::joins_values(mechanism.ty) {
            // The new key holds the values it joins: it is at least as protected as each of
            // them (PKCS#11 3.0 §6.37: "If the original key has its CKA_SENSITIVE attribute
            // set to CK_TRUE, so does the derived key"; likewise CKA_EXTRACTABLE false) —
            // whatever the template asks, or a sensitive value would read out of the new key.
            let sources = || std::iter::once(&base).chain(other.as_ref());
            if sources().any(|k| k.flag(ck::CKA_SENSITIVE)) {
                template.set(Attribute::bool(ck::CKA_SENSITIVE, true));
            }
            if sources().any(|k| !k.flag(ck::CKA_EXTRACTABLE)) {
                template.set(Attribute::bool(ck::CKA_EXTRACTABLE, false));
            }
            // Only a trusted key wraps it if only a trusted key wraps one of them.
            if sources().any(|k| k.flag(ck::CKA_WRAP_WITH_TRUSTED)) {
                template.set(Attribute::bool(ck::CKA_WRAP_WITH_TRUSTED, true));
            }
            // Nor may it go into a backup file if one of them may not (docs/backup.md).
            if sources().any(|k| crate::keep::backup_refusal(k).is_some()) {
                template.set(Attribute::bool(
                    tessera_core::attribute::CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE,
                    false,
                ));
            }
            // "If no length or key type is provided in the template, then the key produced by
            // this mechanism will be a generic secret key" (§2.43.2 and its siblings), as long
            // as the joined value.
            if template.ulong(ck::CKA_KEY_TYPE)?.is_none() {
                template.set(Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET));
            }
        }
        let length = template.ulong(ck::CKA_VALUE_LEN)?;
        let keys = crate::derive::Keys {
            base: &base,
            other: other.as_ref(),
        };
        let value = crate::derive::derive(self, client, session, mechanism, keys, length)?;
        self.create_secret_key(client, session, &template, value.expose(), true)
    }

    /// `C_EncapsulateKey` (PKCS#11 3.2, `CKM_ML_KEM`): a ciphertext for the public key and a
    /// new secret key from the template holding the shared secret. With no room for the
    /// ciphertext, nothing is made and the reply is its length.
    pub(crate) fn encapsulate_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        public_key: u64,
        template: &Template,
        room: Option<u64>,
    ) -> Result<Reply, Rv> {
        let public = self.kem_key(client, session, mechanism, public_key, false)?;
        let needed = crate::crypto::pq::ciphertext_len(
            public.ulong(ck::CKA_PARAMETER_SET).unwrap_or_default(),
        )?;
        if room.is_none_or(|room| room < needed as u64) {
            return Ok(Reply::Number(needed as u64));
        }
        let (ciphertext, secret) = crate::crypto::pq::encapsulate(&public)?;
        let template = kem_secret_template(template)?;
        let key = shared_secret(&template, secret.expose())?;
        match self.create_secret_key(client, session, &template, key, true)? {
            Reply::Handle(handle) => Ok(Reply::Encapsulated { ciphertext, handle }),
            _ => Err(Rv::GeneralError),
        }
    }

    /// `C_DecapsulateKey` (PKCS#11 3.2, `CKM_ML_KEM`): the secret key of a ciphertext.
    pub(crate) fn decapsulate_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        private_key: u64,
        template: &Template,
        ciphertext: &[u8],
    ) -> Result<Reply, Rv> {
        let private = self.kem_key(client, session, mechanism, private_key, true)?;
        let secret = crate::crypto::pq::decapsulate(&private, ciphertext)?;
        let template = kem_secret_template(template)?;
        let key = shared_secret(&template, secret.expose())?;
        self.create_secret_key(client, session, &template, key, true)
    }

    /// The ML-KEM key of an encapsulation (public) or decapsulation (private), checked as an
    /// operation's init checks its key.
    fn kem_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        key: u64,
        private: bool,
    ) -> Result<Attributes, Rv> {
        if mechanism.ty != ck::CKM_ML_KEM as u64
            || !crate::mechanisms::allowed(mechanism.ty, self.device.now().flags)
        {
            return Err(Rv::MechanismInvalid);
        }
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        let key = self.usable_key(client, session, key)?;
        let (class, usage) = match private {
            true => (ck::CKO_PRIVATE_KEY, ck::CKA_DECAPSULATE),
            false => (ck::CKO_PUBLIC_KEY, ck::CKA_ENCAPSULATE),
        };
        if key.class() != class as u64 || key.key_type() != ck::CKK_ML_KEM as u64 {
            return Err(Rv::KeyTypeInconsistent);
        }
        if !key.flag(usage) {
            return Err(Rv::KeyFunctionNotPermitted);
        }
        Ok(key)
    }

    /// SP 800-108: the template's key and the parameter's additional keys, all or none.
    fn derive_keys(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        base: &Attributes,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let MechanismParameter::Kbkdf { additional, .. } = &mechanism.parameter else {
            return Err(Rv::MechanismParamInvalid);
        };
        let templates = std::iter::once(template)
            .chain(additional)
            .map(|t| constrained(t, base, ck::CKA_DERIVE_TEMPLATE))
            .collect::<Result<Vec<Template>, Rv>>()?;
        let lengths = templates
            .iter()
            .map(|t| match t.ulong(ck::CKA_VALUE_LEN)? {
                Some(n) if n > 0 && n <= MAX_DERIVED_LENGTH => Ok(n as usize),
                Some(_) => Err(Rv::TemplateInconsistent),
                None => Err(Rv::TemplateIncomplete),
            })
            .collect::<Result<Vec<_>, Rv>>()?;
        let values = crate::kbkdf::derive(mechanism, base, &lengths)?;
        let mut handles = Vec::with_capacity(values.len());
        for (template, value) in templates.iter().zip(&values) {
            let made = self.create_secret_key(client, session, template, value.expose(), true);
            match made {
                Ok(Reply::Handle(handle)) => handles.push(handle),
                failed => {
                    for handle in handles {
                        let _ = self.destroy_object(client, session, handle);
                    }
                    return Err(failed.err().unwrap_or(Rv::GeneralError));
                }
            }
        }
        Ok(if additional.is_empty() {
            Reply::Handle(handles[0])
        } else {
            Reply::Handles(handles)
        })
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
        let mut sessions = self.sessions();
        let current = sessions.get_mut(client, session)?;
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
                current.multi_part.retain(|o| *o != operation);
            }
        }
        if flags & ck::CKF_FIND_OBJECTS as u64 != 0 {
            current.find = None;
        }
        Ok(Reply::Done)
    }
}

/// The template of an encapsulated key: a generic secret unless it says otherwise.
fn kem_secret_template(template: &Template) -> Result<Template, Rv> {
    let mut template = template.clone();
    if template.ulong(ck::CKA_KEY_TYPE)?.is_none() {
        template.set(Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET));
    }
    Ok(template)
}

/// The new key's value: the 32-byte shared secret, or its first `CKA_VALUE_LEN` bytes where
/// the template asks for fewer (an AES-128 key, say).
fn shared_secret<'a>(template: &Template, secret: &'a [u8]) -> Result<&'a [u8], Rv> {
    match template.ulong(ck::CKA_VALUE_LEN)? {
        Some(n) if n == 0 || n > secret.len() as u64 => Err(Rv::TemplateInconsistent),
        Some(n) => Ok(&secret[..n as usize]),
        None => Ok(secret),
    }
}
