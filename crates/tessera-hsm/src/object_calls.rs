//! Object calls: create, copy, destroy, size, get/set attributes, find, and key generation.
//!
//! Visibility (v3.0 §4.1.3, §5.6): private objects exist for a client only while it is logged
//! in as the user; session objects only for the client whose session created them.

use std::sync::atomic::Ordering;

use tessera_core::ck;
use tessera_core::{Mechanism, MechanismParameter, Rv, Template};
use tessera_store::{MasterKey, Seal, StoredObject};
use tessera_wire::{AttributeAnswer, Reply};

use crate::object::{self, Attributes};
use crate::{crypto, Hsm, Locked, Login, Object, Token};

fn seal_aad(token_id: u64, id: u64) -> Vec<u8> {
    format!("tessera object {token_id}/{id}").into_bytes()
}

/// The stored form of a token object: public attributes in the clear, secrets sealed under
/// `key` and bound to the token_id and id.
pub(crate) fn seal(
    key: &MasterKey,
    token_id: u64,
    id: u64,
    attributes: &Attributes,
) -> Result<StoredObject, Rv> {
    seal_with(key, &seal_aad(token_id, id), attributes)
}

/// Public attributes in the clear, secrets sealed under `key` with `aad` (a token object's
/// stored form, or a session object's held one).
fn seal_with(key: &dyn Seal, aad: &[u8], attributes: &Attributes) -> Result<StoredObject, Rv> {
    let (public, secret) = attributes.split();
    Ok(StoredObject {
        public,
        sealed: seal_secrets(key, aad, &secret)?,
    })
}

/// `secret` encoded and sealed under `key` with `aad`; `None` when there is nothing to seal.
fn seal_secrets(key: &dyn Seal, aad: &[u8], secret: &Template) -> Result<Option<Vec<u8>>, Rv> {
    if secret.0.is_empty() {
        return Ok(None);
    }
    // Encoded straight into a secret: a growing plain buffer would leave copies behind.
    let plain = tessera_core::SecretBytes::encode(secret).map_err(|_| Rv::GeneralError)?;
    key.seal(aad, plain.expose())
        .map(Some)
        .map_err(|_| Rv::FunctionFailed)
}

/// The object sealed again if it holds values in the clear that are now sealed at rest (a
/// format-1 store kept data objects' and certificates' values in the clear).
pub(crate) fn reseal(
    key: &MasterKey,
    token_id: u64,
    id: u64,
    stored: &StoredObject,
) -> Option<StoredObject> {
    let public = Attributes::join(&stored.public, &Template::default());
    let class = public.class();
    if !stored
        .public
        .iter()
        .any(|a| object::sealed_at_rest(class, a.ty))
    {
        return None;
    }
    let mut attributes = public;
    if let Some(sealed) = &stored.sealed {
        let plain = key.open(&seal_aad(token_id, id), sealed).ok()?;
        let secrets: Template = postcard::from_bytes(plain.expose()).ok()?;
        for a in secrets.iter() {
            attributes.set(a.ty, a.value.clone());
        }
    }
    seal(key, token_id, id, &attributes).ok()
}

/// [`reseal`] for a public object (sealed under the device key); `None` for a private one.
pub(crate) fn reseal_public(
    device_key: &MasterKey,
    token_id: u64,
    id: u64,
    stored: &StoredObject,
) -> Option<StoredObject> {
    let private = Attributes::join(&stored.public, &Template::default()).flag(ck::CKA_PRIVATE);
    if private {
        return None;
    }
    reseal(device_key, token_id, id, stored)
}

/// True if the template asks for an attribute that is stored sealed but readable.
fn asks_sealed(class: u64, template: &Template) -> bool {
    template
        .iter()
        .any(|a| object::sealed_at_rest(class, a.ty) && !object::is_secret(class, a.ty))
}

/// A token object as held in memory: the secrets stay sealed until used.
pub(crate) fn in_memory(stored: StoredObject) -> Object {
    Object::new(
        Attributes::join(&stored.public, &Template::default()),
        stored.sealed,
        None,
    )
}

/// The additional data that binds a session object's sealed secrets to its token and handle
/// (held in memory only, under a key made at each start: no stored format depends on it).
fn session_aad(token_id: u64, handle: u64) -> [u8; 38] {
    let mut aad = [0u8; 38];
    aad[..22].copy_from_slice(b"tessera session object");
    aad[22..30].copy_from_slice(&token_id.to_be_bytes());
    aad[30..].copy_from_slice(&handle.to_be_bytes());
    aad
}

pub(crate) fn visible(token: &Token, client: u64, object: &Object) -> bool {
    if object.attributes.flag(ck::CKA_PRIVATE) && token.login_of(client) != Some(Login::User) {
        return false;
    }
    match object.owner {
        Some((owner, _)) => owner == client,
        None => true,
    }
}

impl Hsm {
    /// Creates a secret key holding `value` (from `C_UnwrapKey` or `C_DeriveKey`) with the
    /// application's template.
    pub(crate) fn create_secret_key(
        &self,
        client: u64,
        session: u64,
        template: &Template,
        value: &[u8],
        derived: bool,
    ) -> Result<Reply, Rv> {
        let mut attributes = object::from_template(template, ck::CKO_SECRET_KEY as u64)?;
        let key_type = attributes
            .ulong(ck::CKA_KEY_TYPE)
            .ok_or(Rv::TemplateIncomplete)?;
        if attributes.has(ck::CKA_VALUE) {
            return Err(Rv::TemplateInconsistent);
        }
        let length_differs = attributes
            .ulong(ck::CKA_VALUE_LEN)
            .is_some_and(|n| n != value.len() as u64);
        let not_aes = key_type == ck::CKK_AES as u64 && !matches!(value.len(), 16 | 24 | 32);
        let not_des = des_length(key_type) != 0 && des_length(key_type) != value.len();
        if length_differs || not_aes || not_des {
            return Err(if derived {
                Rv::TemplateInconsistent
            } else {
                Rv::WrappedKeyInvalid
            });
        }
        attributes.set(ck::CKA_VALUE as u64, value.to_vec());
        attributes.set_ulong(ck::CKA_VALUE_LEN, value.len() as u64);
        if derived {
            // A derived key does what its template says and nothing more (`CKA_DERIVE`
            // defaults to false for every secret key already).
            for usage in object::SECRET_KEY_USAGE {
                attributes.default_flag(usage, false);
            }
        }
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        object::complete(&mut attributes, None, state.device.flags)?;
        let token_id = Self::check_create(&state, client, session, &attributes)?;
        self.insert(&mut state, client, session, token_id, attributes)
            .map(Reply::Handle)
    }

    fn sealing_key<'a>(&'a self, token: &'a Token, private: bool) -> Result<&'a MasterKey, Rv> {
        if private {
            token.master.as_ref().ok_or(Rv::UserNotLoggedIn)
        } else {
            Ok(self.public_key())
        }
    }

    /// Seals the values that a format-1 store kept in the clear in the token's private objects,
    /// now that the user's login has brought the token master key (see `device::migrate`).
    pub(crate) fn reseal_private_objects(&self, state: &mut Locked<'_>, token_id: u64) {
        let Ok(token) = state.token(token_id) else {
            return;
        };
        let Some(master) = token.master.as_ref() else {
            return;
        };
        let mut resealed = Vec::new();
        for id in token.objects.keys() {
            let Some(object) = token.objects.get(id) else {
                continue;
            };
            let clear = object.attributes.holds_sealed_at_rest();
            if object.owner.is_some() || !object.attributes.flag(ck::CKA_PRIVATE) || !clear {
                continue;
            }
            let Ok(full) = self.full_attributes(token, token_id, *id, object) else {
                continue;
            };
            if let Ok(stored) = seal(master, token_id, *id, &full) {
                resealed.push((*id, stored));
            }
        }
        if resealed.is_empty() {
            return;
        }
        let list: Vec<(u64, u64, &StoredObject)> =
            resealed.iter().map(|(id, o)| (token_id, *id, o)).collect();
        if let Err(e) = self.store.replace_objects(&list) {
            tracing::error!(error = %e, "cannot seal the private objects' values of an older store");
            return;
        }
        tracing::info!(
            token_id,
            objects = list.len(),
            "sealed private objects' values kept in the clear by an older store"
        );
        if let Ok(token) = state.token_mut(token_id) {
            for (id, stored) in resealed {
                token.objects.insert(id, in_memory(stored));
            }
        }
    }

    /// All attributes of an object, secrets unsealed.
    pub(crate) fn full_attributes(
        &self,
        token: &Token,
        token_id: u64,
        id: u64,
        object: &Object,
    ) -> Result<Attributes, Rv> {
        let mut attributes = object.attributes.clone();
        if let Some(sealed) = &object.sealed {
            let opened = match object.owner {
                Some(_) => (self.session_key).open(&session_aad(token_id, id), sealed),
                None => self
                    .sealing_key(token, object.attributes.flag(ck::CKA_PRIVATE))?
                    .open(&seal_aad(token_id, id), sealed),
            };
            let plain = opened.map_err(|_| {
                tracing::error!(token_id, id, "a stored object failed authentication");
                Rv::DeviceError
            })?;
            let mut secrets: Template =
                postcard::from_bytes(plain.expose()).map_err(|_| Rv::DeviceError)?;
            // Moved, not copied: the decoded template wipes what is left of it.
            for a in secrets.0.iter_mut() {
                attributes.set(a.ty, std::mem::take(&mut a.value));
            }
        }
        Ok(attributes)
    }

    /// Finds a visible object of the session's token.
    fn object_of<'a>(
        state: &'a Locked<'_>,
        client: u64,
        session: u64,
        handle: u64,
    ) -> Result<(u64, &'a Token, &'a Object), Rv> {
        let token_id = state.session(client, session)?.token_id;
        let token = state.token(token_id)?;
        let object = token
            .objects
            .get(&handle)
            .filter(|o| visible(token, client, o))
            .ok_or(Rv::ObjectHandleInvalid)?;
        Ok((token_id, token, object))
    }

    /// The full attributes of a key the client sees in this session (`CKR_KEY_HANDLE_INVALID`
    /// when it sees none of that handle).
    pub(crate) fn key_attributes(
        &self,
        state: &Locked<'_>,
        client: u64,
        session: u64,
        key: u64,
    ) -> Result<Attributes, Rv> {
        let (token_id, token, object) =
            Self::object_of(state, client, session, key).map_err(|rv| match rv {
                Rv::ObjectHandleInvalid => Rv::KeyHandleInvalid,
                other => other,
            })?;
        self.full_attributes(token, token_id, key, object)
    }

    /// Checks that the client may create an object with these attributes in this session.
    fn check_create(
        state: &Locked<'_>,
        client: u64,
        session: u64,
        attributes: &Attributes,
    ) -> Result<u64, Rv> {
        let session = state.session(client, session)?;
        let login = state.token(session.token_id)?.login_of(client);
        if attributes.flag(ck::CKA_TOKEN) && !session.read_write {
            return Err(Rv::SessionReadOnly);
        }
        if attributes.flag(ck::CKA_PRIVATE) && login != Some(Login::User) {
            return Err(Rv::UserNotLoggedIn);
        }
        if attributes.flag(ck::CKA_TRUSTED) && login != Some(Login::So) {
            return Err(Rv::AttributeReadOnly);
        }
        state.check_public_crypto(client, session.token_id)?;
        Ok(session.token_id)
    }

    /// Reserves room for a session object of `bytes` for `client`, in place of one of
    /// `replaced` bytes; refused (`CKR_DEVICE_MEMORY`) past the client's or the device's limit
    /// on session-object memory. The room is the client's until the reservation is dropped,
    /// after the object is counted: calls on several tokens at once cannot pass a limit
    /// together.
    fn reserve_session_bytes(
        &self,
        client: u64,
        bytes: u64,
        replaced: u64,
    ) -> Result<crate::locked::Reservation, Rv> {
        let reserved = self.ledger.reserve(
            client,
            bytes,
            replaced,
            self.limits.session_object_bytes_per_client,
            self.limits.session_object_bytes,
        );
        reserved.map_err(|over| {
            let limit = match over {
                crate::locked::OverLimit::Client => "session-object bytes per connection",
                crate::locked::OverLimit::Device => "session-object bytes of the device",
            };
            self.limit_reached(client, limit, Rv::DeviceMemory)
        })
    }

    /// A session object as held: its secrets sealed under the session key (see [`Hsm`]).
    fn session_object(
        &self,
        token_id: u64,
        handle: u64,
        mut attributes: Attributes,
        owner: (u64, u64),
    ) -> Result<Object, Rv> {
        let secret = attributes.take_sealed();
        let sealed = seal_secrets(&self.session_key, &session_aad(token_id, handle), &secret)?;
        Ok(Object::new(attributes, sealed, Some(owner)))
    }

    /// Stores a new object (token objects durably) and returns its handle.
    fn insert(
        &self,
        state: &mut Locked<'_>,
        client: u64,
        session: u64,
        token_id: u64,
        attributes: Attributes,
    ) -> Result<u64, Rv> {
        if !attributes.flag(ck::CKA_TOKEN) {
            let _room = self.reserve_session_bytes(client, attributes.size(), 0)?;
            let handle = 1 + (self.next_session_object).fetch_add(1, Ordering::Relaxed);
            let object = self.session_object(token_id, handle, attributes, (client, session))?;
            state.token_mut(token_id)?.objects.insert(handle, object);
            return Ok(handle);
        }
        // The store write below is the slow part: other tokens' calls go on meanwhile.
        state.release_sessions();
        let token = state.token(token_id)?;
        if !attributes.flag(ck::CKA_PRIVATE)
            && token.login_of(client).is_none()
            && token.objects.public_count() >= self.limits.public_objects_per_token
        {
            return Err(self.limit_reached(
                client,
                "public token objects created without a login",
                Rv::DeviceMemory,
            ));
        }
        let token = state.token(token_id)?;
        let key = self.sealing_key(token, attributes.flag(ck::CKA_PRIVATE))?;
        let mut stored = None;
        let id = self
            .store_insert_object(token_id, |id| {
                let object = seal(key, token_id, id, &attributes)
                    .map_err(|_| tessera_store::StoreError::Storage("sealing failed".into()))?;
                stored = Some(object.clone());
                Ok(object)
            })
            .map_err(crate::store_failure)?;
        let stored = stored.ok_or(Rv::GeneralError)?;
        state
            .token_mut(token_id)?
            .objects
            .insert(id, in_memory(stored));
        Ok(id)
    }

    fn replace(
        &self,
        state: &mut Locked<'_>,
        token_id: u64,
        handle: u64,
        attributes: Attributes,
    ) -> Result<(), Rv> {
        let token = state.token(token_id)?;
        let object = token.objects.get(&handle).ok_or(Rv::ObjectHandleInvalid)?;
        if let Some(owner) = object.owner {
            let old = object.held_bytes();
            let _room = self.reserve_session_bytes(owner.0, attributes.size(), old)?;
            let object = self.session_object(token_id, handle, attributes, owner)?;
            state.token_mut(token_id)?.objects.insert(handle, object);
            return Ok(());
        }
        state.release_sessions();
        let token = state.token(token_id)?;
        let key = self.sealing_key(token, attributes.flag(ck::CKA_PRIVATE))?;
        let stored = seal(key, token_id, handle, &attributes)?;
        self.store_replace_object(token_id, handle, &stored)
            .map_err(crate::store_failure)?;
        state
            .token_mut(token_id)?
            .objects
            .insert(handle, in_memory(stored));
        Ok(())
    }

    pub(crate) fn create_object(
        &self,
        client: u64,
        session: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let class = template
            .ulong(ck::CKA_CLASS)?
            .ok_or(Rv::TemplateIncomplete)?;
        let mut attributes = object::from_template(template, class)?;
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        object::complete(&mut attributes, None, state.device.flags)?;
        check_imported_key(&mut attributes, template, state.device.flags)?;
        let token_id = Self::check_create(&state, client, session, &attributes)?;
        self.insert(&mut state, client, session, token_id, attributes)
            .map(Reply::Handle)
    }

    pub(crate) fn copy_object(
        &self,
        client: u64,
        session: u64,
        handle: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let (token_id, token, object) = Self::object_of(&state, client, session, handle)?;
        if !object.attributes.flag(ck::CKA_COPYABLE) {
            return Err(Rv::ActionProhibited);
        }
        let so = token.login_of(client) == Some(Login::So);
        let mut attributes = self.full_attributes(token, token_id, handle, object)?;
        for change in template.iter() {
            object::check_change(&attributes, change, true, so, state.device.flags)?;
        }
        for change in template.iter() {
            attributes.set(change.ty, change.value.clone());
        }
        object::fresh_unique_id(&mut attributes)?;
        let token_id = Self::check_create(&state, client, session, &attributes)?;
        self.insert(&mut state, client, session, token_id, attributes)
            .map(Reply::Handle)
    }

    pub(crate) fn destroy_object(
        &self,
        client: u64,
        session: u64,
        handle: u64,
    ) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let (token_id, _, object) = Self::object_of(&state, client, session, handle)?;
        if !object.attributes.flag(ck::CKA_DESTROYABLE) {
            return Err(Rv::ActionProhibited);
        }
        let token_object = object.owner.is_none();
        let private_key = object.attributes.ulong(ck::CKA_CLASS) == Some(ck::CKO_PRIVATE_KEY);
        if token_object {
            if !state.session(client, session)?.read_write {
                return Err(Rv::SessionReadOnly);
            }
            state.release_sessions();
            self.store_remove_object(token_id, handle)
                .map_err(crate::store_failure)?;
        }
        state.token_mut(token_id)?.objects.remove(&handle);
        if private_key {
            // Its parsed form must not outlive it.
            crate::crypto::forget_parsed_keys();
        }
        Ok(Reply::Done)
    }

    pub(crate) fn object_size(&self, client: u64, session: u64, handle: u64) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let state = tokens.lock(self);
        let (_, _, object) = Self::object_of(&state, client, session, handle)?;
        Ok(Reply::Number(object.held_bytes()))
    }

    pub(crate) fn get_attributes(
        &self,
        client: u64,
        session: u64,
        handle: u64,
        types: &[u64],
    ) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let state = tokens.lock(self);
        let (token_id, token, object) = Self::object_of(&state, client, session, handle)?;
        let class = object.attributes.class();
        let hidden = object.attributes.flag(ck::CKA_SENSITIVE)
            || !object.attributes.flag(ck::CKA_EXTRACTABLE);
        let needs_secrets = types.iter().any(|ty| {
            object::sealed_at_rest(class, *ty) && !(object::is_secret(class, *ty) && hidden)
        });
        let full = if needs_secrets {
            Some(self.full_attributes(token, token_id, handle, object)?)
        } else {
            None
        };
        let attributes = full.as_ref().unwrap_or(&object.attributes);
        let answers = types
            .iter()
            .map(|ty| {
                if object::is_secret(class, *ty) && hidden {
                    AttributeAnswer::Sensitive
                } else {
                    match attributes.get(*ty as ck::CK_ATTRIBUTE_TYPE) {
                        Some(value) => AttributeAnswer::Value(value.to_vec()),
                        None => AttributeAnswer::Invalid,
                    }
                }
            })
            .collect();
        Ok(Reply::Attributes(answers))
    }

    pub(crate) fn set_attributes(
        &self,
        client: u64,
        session: u64,
        handle: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let (token_id, token, object) = Self::object_of(&state, client, session, handle)?;
        if object.owner.is_none() && !state.session(client, session)?.read_write {
            return Err(Rv::SessionReadOnly);
        }
        if !object.attributes.flag(ck::CKA_MODIFIABLE) {
            return Err(Rv::ActionProhibited);
        }
        state.check_public_crypto(client, token_id)?;
        let so = token.login_of(client) == Some(Login::So);
        let mut attributes = self.full_attributes(token, token_id, handle, object)?;
        for change in template.iter() {
            object::check_change(&attributes, change, false, so, state.device.flags)?;
        }
        for change in template.iter() {
            attributes.set(change.ty, change.value.clone());
        }
        self.replace(&mut state, token_id, handle, attributes)?;
        Ok(Reply::Done)
    }

    pub(crate) fn find_init(
        &self,
        client: u64,
        session: u64,
        template: &Template,
    ) -> Result<Reply, Rv> {
        // The client's template is sorted and its duplicates dropped before the lock (see
        // `object::normalise`).
        let wanted = object::normalise(template);
        let keys = wanted.as_ref().map(crate::object_set::index_keys);
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let current = state.session(client, session)?;
        if current.find.is_some() {
            return Err(Rv::OperationActive);
        }
        let token_id = current.token_id;
        // A search of many objects takes a while: other tokens' calls go on meanwhile.
        state.release_sessions();
        let token = state.token(token_id)?;
        // PKCS#11 3.0 §4.3: "When searching using C_FindObjectsInit and C_FindObjects,
        // hardware feature objects are not returned unless the CKA_CLASS attribute in the
        // template has the value CKO_HW_FEATURE."
        let hardware = ck::CKO_HW_FEATURE as u64;
        let asks_hardware =
            (wanted.as_ref()).is_some_and(|w| w.ulong(ck::CKA_CLASS) == Ok(Some(hardware)));
        let found: Vec<u64> = match (&wanted, &keys) {
            (Some(wanted), Some(keys)) => token
                .objects
                .candidates(keys)
                .filter(|(h, o)| {
                    if !visible(token, client, o) {
                        return false;
                    }
                    let class = o.attributes.class();
                    if class == hardware && !asks_hardware {
                        return false;
                    }
                    if o.sealed.is_some() && asks_sealed(class, wanted) {
                        // A data object's or certificate's value is sealed at rest: match on
                        // it unsealed.
                        return self
                            .full_attributes(token, token_id, **h, o)
                            .is_ok_and(|full| object::matches(&full, wanted, false));
                    }
                    object::matches(&o.attributes, wanted, false)
                })
                .map(|(h, _)| *h)
                .collect(),
            _ => Vec::new(),
        };
        let current = state.session_mut(client, session)?;
        // The session's own other call may have begun a search meanwhile.
        if current.find.is_some() {
            return Err(Rv::OperationActive);
        }
        current.find = Some(found);
        Ok(Reply::Done)
    }

    pub(crate) fn find_next(&self, client: u64, session: u64, max: u64) -> Result<Reply, Rv> {
        let mut sessions = self.sessions();
        let found = sessions
            .get_mut(client, session)?
            .find
            .as_mut()
            .ok_or(Rv::OperationNotInitialized)?;
        let take = (max as usize).min(found.len());
        Ok(Reply::Handles(found.drain(..take).collect()))
    }

    /// The first `max` results of the search just begun; a search with nothing left is closed.
    pub(crate) fn find_first(&self, client: u64, session: u64, max: u64) -> Result<Reply, Rv> {
        let mut sessions = self.sessions();
        let current = sessions.get_mut(client, session)?;
        let found = current.find.as_mut().ok_or(Rv::OperationNotInitialized)?;
        let take = (max as usize).min(found.len());
        let handles: Vec<u64> = found.drain(..take).collect();
        let exhausted = found.is_empty();
        if exhausted {
            current.find = None;
        }
        Ok(Reply::Found { handles, exhausted })
    }

    pub(crate) fn generate_key(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        template: &Template,
    ) -> Result<Reply, Rv> {
        let key_type = match mechanism.ty as ck::CK_MECHANISM_TYPE {
            ck::CKM_AES_KEY_GEN => ck::CKK_AES,
            ck::CKM_DES2_KEY_GEN => ck::CKK_DES2,
            ck::CKM_DES3_KEY_GEN => ck::CKK_DES3,
            ck::CKM_GENERIC_SECRET_KEY_GEN => ck::CKK_GENERIC_SECRET,
            ck::CKM_SHA_1_KEY_GEN => ck::CKK_SHA_1_HMAC,
            ck::CKM_SHA224_KEY_GEN => ck::CKK_SHA224_HMAC,
            ck::CKM_SHA256_KEY_GEN => ck::CKK_SHA256_HMAC,
            ck::CKM_SHA384_KEY_GEN => ck::CKK_SHA384_HMAC,
            ck::CKM_SHA512_KEY_GEN => ck::CKK_SHA512_HMAC,
            _ => return Err(Rv::MechanismInvalid),
        };
        if !crate::mechanisms::allowed(mechanism.ty, self.device.now().flags) {
            return Err(Rv::MechanismInvalid);
        }
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        let mut attributes = object::from_template(template, ck::CKO_SECRET_KEY as u64)?;
        // A generic secret may be typed for HMAC use; the SHA key generators make their own type.
        let allowed_types: &[ck::CK_KEY_TYPE] = match key_type {
            ck::CKK_AES => &[ck::CKK_AES],
            ck::CKK_GENERIC_SECRET => &crypto::mac::HMAC_KEY_TYPES,
            _ => std::slice::from_ref(&key_type),
        };
        let chosen = attributes
            .ulong(ck::CKA_KEY_TYPE)
            .unwrap_or(key_type as u64);
        if !allowed_types.iter().any(|t| *t as u64 == chosen) {
            return Err(Rv::TemplateInconsistent);
        }
        if attributes.has(ck::CKA_VALUE) {
            return Err(Rv::TemplateInconsistent);
        }
        let fixed = des_length(key_type as u64) as u64;
        let length = match attributes.ulong(ck::CKA_VALUE_LEN) {
            // A triple-DES key's length is its type's; a template that says otherwise is wrong.
            Some(asked) if fixed != 0 && asked != fixed => return Err(Rv::TemplateInconsistent),
            None if fixed != 0 => fixed,
            asked => asked.ok_or(Rv::TemplateIncomplete)?,
        };
        let valid = if fixed != 0 {
            true
        } else if key_type == ck::CKK_AES {
            matches!(length, 16 | 24 | 32)
        } else {
            (1..=512).contains(&length)
        };
        if !valid {
            return Err(Rv::AttributeValueInvalid);
        }
        attributes.set_ulong(ck::CKA_KEY_TYPE, chosen);
        let value = crypto::random(length as usize)?;
        let value = if fixed != 0 { odd_parity(value) } else { value };
        attributes.set(ck::CKA_VALUE as u64, value);
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        object::complete(&mut attributes, Some(mechanism.ty), state.device.flags)?;
        let token_id = Self::check_create(&state, client, session, &attributes)?;
        self.insert(&mut state, client, session, token_id, attributes)
            .map(Reply::Handle)
    }

    pub(crate) fn generate_key_pair(
        &self,
        client: u64,
        session: u64,
        mechanism: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<Reply, Rv> {
        if mechanism.parameter != MechanismParameter::None {
            return Err(Rv::MechanismParamInvalid);
        }
        let mut public = object::from_template(public_template, ck::CKO_PUBLIC_KEY as u64)?;
        let mut private = object::from_template(private_template, ck::CKO_PRIVATE_KEY as u64)?;
        let key_type = match mechanism.ty as ck::CK_MECHANISM_TYPE {
            ck::CKM_EC_KEY_PAIR_GEN => ck::CKK_EC,
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN => ck::CKK_RSA,
            ck::CKM_EC_EDWARDS_KEY_PAIR_GEN => ck::CKK_EC_EDWARDS,
            ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN => ck::CKK_EC_MONTGOMERY,
            ck::CKM_ML_KEM_KEY_PAIR_GEN => ck::CKK_ML_KEM,
            ck::CKM_ML_DSA_KEY_PAIR_GEN => ck::CKK_ML_DSA,
            _ => return Err(Rv::MechanismInvalid),
        };
        for attributes in [&mut public, &mut private] {
            if attributes
                .ulong(ck::CKA_KEY_TYPE)
                .is_some_and(|t| t != key_type as u64)
            {
                return Err(Rv::TemplateInconsistent);
            }
            attributes.set_ulong(ck::CKA_KEY_TYPE, key_type as u64);
        }
        // Check the session and rights before the (possibly slow) generation.
        {
            let tokens = self.tokens_of_session(client, session)?;
            let state = tokens.lock(self);
            Self::check_create(&state, client, session, &public)?;
            Self::check_create(&state, client, session, &private)?;
        }
        let flags = self.device.now().flags;
        let (public_parts, private_parts) = if matches!(key_type, ck::CKK_ML_KEM | ck::CKK_ML_DSA) {
            // PKCS#11 3.2: the parameter set is in the public template (or the private one);
            // where both give it, they agree.
            let sets = [
                public.ulong(ck::CKA_PARAMETER_SET),
                private.ulong(ck::CKA_PARAMETER_SET),
            ];
            let set = match sets {
                [Some(a), Some(b)] if a != b => return Err(Rv::TemplateInconsistent),
                [Some(a), _] | [None, Some(a)] => a,
                [None, None] => return Err(Rv::TemplateIncomplete),
            };
            if key_type == ck::CKK_ML_KEM {
                crypto::pq::generate_ml_kem(set)?
            } else {
                crypto::pq::generate_ml_dsa(set)?
            }
        } else if matches!(key_type, ck::CKK_EC_EDWARDS | ck::CKK_EC_MONTGOMERY) {
            let params = public
                .get(ck::CKA_EC_PARAMS)
                .ok_or(Rv::TemplateIncomplete)?;
            if !crypto::edwards::names_curve(key_type, Some(params)) {
                return Err(Rv::CurveNotSupported);
            }
            if key_type == ck::CKK_EC_EDWARDS {
                crypto::edwards::generate_ed25519(params)?
            } else {
                crypto::edwards::generate_x25519(params)?
            }
        } else if key_type == ck::CKK_EC {
            let explicit = flags & tessera_core::flags::USER_ECC_PARAMETERS != 0;
            crypto::generate_ec(public.get(ck::CKA_EC_PARAMS), explicit)?
        } else {
            let bits = public
                .ulong(ck::CKA_MODULUS_BITS)
                .ok_or(Rv::TemplateIncomplete)?;
            public.set_ulong(ck::CKA_MODULUS_BITS, bits);
            // RSA below 2048 bits is not approved: not under the `a` flag.
            if bits < 2048 && flags & tessera_core::flags::FIPS_ALGORITHMS != 0 {
                return Err(Rv::KeySizeRange);
            }
            crypto::generate_rsa(bits, public.get(ck::CKA_PUBLIC_EXPONENT))?
        };
        for (ty, value) in public_parts {
            public.set(ty as u64, value);
        }
        // Both halves carry the public key as SubjectPublicKeyInfo (v3.0 CKA_PUBLIC_KEY_INFO).
        if let Some(info) = crypto::public_key_info(&public) {
            // Without an application CKA_ID, both halves get the same one (the first 20 bytes
            // of the SHA-256 of the public key), so that tools can pair them.
            let no_id = |a: &Attributes| a.get(ck::CKA_ID).is_none_or(<[u8]>::is_empty);
            if no_id(&public) && no_id(&private) {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &info);
                public.set(ck::CKA_ID as u64, digest.as_ref()[..20].to_vec());
                private.set(ck::CKA_ID as u64, digest.as_ref()[..20].to_vec());
            }
            public.set(ck::CKA_PUBLIC_KEY_INFO as u64, info.clone());
            private.set(ck::CKA_PUBLIC_KEY_INFO as u64, info);
        }
        for (ty, mut value) in private_parts {
            // Moved, not copied: the attributes wipe the value when they are dropped.
            private.set(ty as u64, std::mem::take(&mut *value));
        }
        object::complete(&mut public, Some(mechanism.ty), flags)?;
        object::complete(&mut private, Some(mechanism.ty), flags)?;
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let token_id = Self::check_create(&state, client, session, &public)?;
        Self::check_create(&state, client, session, &private)?;
        let public_handle = self.insert(&mut state, client, session, token_id, public)?;
        match self.insert(&mut state, client, session, token_id, private) {
            Ok(private_handle) => Ok(Reply::HandlePair(public_handle, private_handle)),
            Err(rv) => {
                // Do not leave half a pair behind.
                if let Ok(token) = state.token_mut(token_id) {
                    if token
                        .objects
                        .remove(&public_handle)
                        .is_some_and(|o| o.owner.is_none())
                    {
                        let _ = self.store_remove_object(token_id, public_handle);
                    }
                }
                Err(rv)
            }
        }
    }
}

/// The value length of a triple-DES key type (`CKK_DES2`: 16 bytes, `CKK_DES3`: 24), 0 for
/// other types.
fn des_length(key_type: u64) -> usize {
    match key_type as ck::CK_KEY_TYPE {
        ck::CKK_DES2 => 16,
        ck::CKK_DES3 => 24,
        _ => 0,
    }
}

/// `bytes` with each byte's low bit set for odd parity, as DES keys carry it.
fn odd_parity(mut bytes: Vec<u8>) -> Vec<u8> {
    for byte in &mut bytes {
        let high = *byte & 0xfe;
        *byte = high | u8::from(high.count_ones() % 2 == 0);
    }
    bytes
}

/// Checks the key material of a key created with `C_CreateObject` and fills derived attributes.
fn check_imported_key(
    attributes: &mut Attributes,
    template: &Template,
    flags: u64,
) -> Result<(), Rv> {
    let explicit = flags & tessera_core::flags::USER_ECC_PARAMETERS != 0;
    let class = attributes.class() as ck::CK_OBJECT_CLASS;
    if !matches!(
        class,
        ck::CKO_SECRET_KEY | ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY
    ) {
        return Ok(());
    }
    let key_type = attributes.key_type() as ck::CK_KEY_TYPE;
    match (class, key_type) {
        (
            ck::CKO_SECRET_KEY,
            ck::CKK_AES
            | ck::CKK_GENERIC_SECRET
            | ck::CKK_HKDF
            | ck::CKK_SHA_1_HMAC
            | ck::CKK_SHA224_HMAC
            | ck::CKK_SHA256_HMAC
            | ck::CKK_SHA384_HMAC
            | ck::CKK_SHA512_HMAC
            | ck::CKK_DES2
            | ck::CKK_DES3,
        ) => {
            if template.find(ck::CKA_VALUE_LEN).is_some() {
                return Err(Rv::TemplateInconsistent);
            }
            let length = attributes
                .get(ck::CKA_VALUE)
                .ok_or(Rv::TemplateIncomplete)?
                .len();
            let des = des_length(key_type as u64);
            let valid = match key_type {
                ck::CKK_AES => matches!(length, 16 | 24 | 32),
                ck::CKK_DES2 | ck::CKK_DES3 => length == des,
                ck::CKK_GENERIC_SECRET | ck::CKK_HKDF => length != 0,
                _ => true,
            };
            if !valid {
                return Err(Rv::AttributeValueInvalid);
            }
            // Triple-DES keys have no CKA_VALUE_LEN: their type says their length.
            if des == 0 {
                attributes.set_ulong(ck::CKA_VALUE_LEN, length as u64);
            }
        }
        (ck::CKO_PUBLIC_KEY, ck::CKK_EC) => {
            object::require(attributes, &[ck::CKA_EC_PARAMS, ck::CKA_EC_POINT])?;
            crypto::check_curve(attributes.get(ck::CKA_EC_PARAMS), explicit)?;
        }
        (ck::CKO_PRIVATE_KEY, ck::CKK_EC) => {
            object::require(attributes, &[ck::CKA_EC_PARAMS, ck::CKA_VALUE])?;
            crypto::check_curve(attributes.get(ck::CKA_EC_PARAMS), explicit)?;
            crypto::check_ec_private(attributes)?;
        }
        (ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY, ck::CKK_EC_EDWARDS | ck::CKK_EC_MONTGOMERY) => {
            let needed = if class == ck::CKO_PUBLIC_KEY {
                ck::CKA_EC_POINT
            } else {
                ck::CKA_VALUE
            };
            object::require(attributes, &[ck::CKA_EC_PARAMS, needed])?;
            if !crypto::edwards::names_curve(key_type, attributes.get(ck::CKA_EC_PARAMS)) {
                return Err(Rv::CurveNotSupported);
            }
            let material = attributes
                .get(needed)
                .map(crypto::edwards::raw_point)
                .ok_or(Rv::TemplateIncomplete)?;
            if material.len() != 32 {
                return Err(Rv::AttributeValueInvalid);
            }
        }
        (ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY, ck::CKK_ML_KEM | ck::CKK_ML_DSA) => {
            let set = attributes
                .ulong(ck::CKA_PARAMETER_SET)
                .ok_or(Rv::TemplateIncomplete)?;
            let expanded = crypto::pq::check_import(
                key_type,
                class == ck::CKO_PRIVATE_KEY,
                set,
                attributes.get(ck::CKA_VALUE),
                attributes.get(ck::CKA_SEED),
            )?;
            if let Some(value) = expanded {
                attributes.set(ck::CKA_VALUE as u64, value);
            }
        }
        (ck::CKO_PUBLIC_KEY, ck::CKK_RSA) => {
            object::require(attributes, &[ck::CKA_MODULUS, ck::CKA_PUBLIC_EXPONENT])?;
            if template.find(ck::CKA_MODULUS_BITS).is_some() {
                return Err(Rv::TemplateInconsistent);
            }
            let modulus = attributes
                .get(ck::CKA_MODULUS)
                .ok_or(Rv::TemplateIncomplete)?;
            let bits = crypto::bit_len(modulus);
            attributes.set_ulong(ck::CKA_MODULUS_BITS, bits);
        }
        (ck::CKO_PRIVATE_KEY, ck::CKK_RSA) => {
            object::require(attributes, &object::RSA_PRIVATE_PARTS)?;
            crypto::check_rsa_private(attributes)?;
        }
        _ => return Err(Rv::AttributeValueInvalid),
    }
    Ok(())
}
