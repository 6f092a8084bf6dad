//! Key management (PKCS#11 3.0 §5.14): generation, wrapping, unwrapping and derivation.
//! Templates are converted as for `C_CreateObject`; the new key's handle is the device's own.

use cryptoki_sys::{CK_ATTRIBUTE, CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_ULONG};
use tessera_core::Rv;
use tessera_wire::{Call, Reply};

use super::convert::template;
use super::mechanism::{derived_key_places, mechanism};
use super::{bytes, Output, Place};
use crate::library::{self, into_handle, unexpected};

entry_points! {
    /// `C_GenerateKey` (§5.14.1).
    fn C_GenerateKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phKey is NULL or points to a handle to fill (§5.14.1).
        let place = unsafe { Place::new(key) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.14.1).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: pTemplate is NULL or holds ulCount attributes (§5.14.1).
        let template = unsafe { template(attributes, count) }?;
        let request = |session| Call::GenerateKey {
            session,
            mechanism,
            template,
        };
        let handle = into_handle(library::session_call(session as u64, request)?)?;
        place.set(handle as CK_OBJECT_HANDLE);
        Ok(())
    }

    /// `C_GenerateKeyPair` (§5.14.2).
    fn C_GenerateKeyPair(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        public_attributes: *mut CK_ATTRIBUTE,
        public_count: CK_ULONG,
        private_attributes: *mut CK_ATTRIBUTE,
        private_count: CK_ULONG,
        public_key: *mut CK_OBJECT_HANDLE,
        private_key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phPublicKey is NULL or points to a handle to fill (§5.14.2).
        let public_place = unsafe { Place::new(public_key) }?;
        // SAFETY: phPrivateKey is NULL or points to a handle to fill (§5.14.2).
        let private_place = unsafe { Place::new(private_key) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.14.2).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: pPublicKeyTemplate is NULL or holds ulPublicKeyAttributeCount attributes.
        let public_template = unsafe { template(public_attributes, public_count) }?;
        // SAFETY: pPrivateKeyTemplate is NULL or holds ulPrivateKeyAttributeCount attributes.
        let private_template = unsafe { template(private_attributes, private_count) }?;
        let request = |session| Call::GenerateKeyPair {
            session,
            mechanism,
            public_template,
            private_template,
        };
        match library::session_call(session as u64, request)? {
            Reply::HandlePair(public, private) => {
                public_place.set(public as CK_OBJECT_HANDLE);
                private_place.set(private as CK_OBJECT_HANDLE);
                Ok(())
            }
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_WrapKey` (§5.14.3): the two-call convention on the wrapped key, which the device
    /// produces once (a length query keeps it in the session for the call that takes it).
    fn C_WrapKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: *mut CK_ULONG,
    ) {
        // SAFETY: pWrappedKey is NULL or holds *pulWrappedKeyLen bytes; pulWrappedKeyLen is
        // NULL or points to a CK_ULONG (§5.14.3).
        let output = unsafe { Output::new(wrapped, wrapped_len) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.14.3).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        let produced = library::wrap_key(
            session as u64,
            mechanism,
            wrapping_key as u64,
            key as u64,
            output.capacity()?,
        )?;
        output.deliver(produced.expose())
    }

    /// `C_UnwrapKey` (§5.14.4).
    fn C_UnwrapKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phKey is NULL or points to a handle to fill (§5.14.4).
        let place = unsafe { Place::new(key) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.14.4).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: pWrappedKey holds ulWrappedKeyLen bytes (§5.14.4).
        let wrapped = super::copied(unsafe { bytes(wrapped, wrapped_len) }?)?;
        // SAFETY: pTemplate is NULL or holds ulAttributeCount attributes (§5.14.4).
        let template = unsafe { template(attributes, count) }?;
        let request = |session| Call::UnwrapKey {
            session,
            mechanism,
            unwrapping_key: unwrapping_key as u64,
            wrapped,
            template,
        };
        let handle = into_handle(library::session_call(session as u64, request)?)?;
        place.set(handle as CK_OBJECT_HANDLE);
        Ok(())
    }

    /// `C_DeriveKey` (§5.14.5): phKey must not be NULL. The SP 800-108 mechanisms also make
    /// the additional keys of their parameter, whose handles go to their own `phKey`s.
    fn C_DeriveKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        base_key: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phKey is NULL or points to a handle to fill (§5.14.5).
        let place = unsafe { Place::new(key) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.14.5).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: the mechanism was just decoded; the phKey of each additional derived key
        // points to a handle to fill (PKCS#11 3.0 mechanisms §2.42, CK_DERIVED_KEY).
        let additional = unsafe { derived_key_places(mechanism_pointer) }?;
        // SAFETY: pTemplate is NULL or holds ulAttributeCount attributes (§5.14.5).
        let template = unsafe { template(attributes, count) }?;
        let request = |session| Call::DeriveKey {
            session,
            mechanism,
            base_key: base_key as u64,
            template,
        };
        match library::session_call(session as u64, request)? {
            Reply::Handle(handle) if additional.is_empty() => place.set(handle as CK_OBJECT_HANDLE),
            Reply::Handles(handles) if handles.len() == additional.len() + 1 => {
                place.set(handles[0] as CK_OBJECT_HANDLE);
                for (place, handle) in additional.into_iter().zip(&handles[1..]) {
                    place.set(*handle as CK_OBJECT_HANDLE);
                }
            }
            reply => return Err(unexpected(&reply)),
        }
        Ok(())
    }

    /// `C_EncapsulateKey` (PKCS#11 3.2 §5.18.8): the ciphertext follows the two-call
    /// convention; the new key is made only when the ciphertext is delivered, so a length
    /// query (which may pass a NULL `phKey`) or a buffer too small makes nothing.
    fn C_EncapsulateKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        public_key: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: *mut CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: pCiphertext is NULL or holds *pulCiphertextLen bytes; pulCiphertextLen is
        // NULL or points to a CK_ULONG (§5.18.8).
        let output = unsafe { Output::new(ciphertext, ciphertext_len) }?;
        let room = output.capacity()?;
        // SAFETY: phKey is NULL or points to a handle to fill (§5.18.8).
        let place = room.map(|_| unsafe { Place::new(key) }).transpose()?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.18.8).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: pTemplate is NULL or holds ulAttributeCount attributes (§5.18.8).
        let template = unsafe { template(attributes, count) }?;
        let request = |session| Call::EncapsulateKey {
            session,
            mechanism,
            public_key: public_key as u64,
            template,
            room: room.map(|n| n as u64),
        };
        match (library::session_call(session as u64, request)?, place) {
            // The device answers with the length only when the room was short: a length with
            // room enough is the device's fault, not a ciphertext of none.
            (Reply::Number(needed), _) => match output.has_room(needed as usize)? {
                false => Ok(()),
                true => Err(Rv::DeviceError.code()),
            },
            (Reply::Encapsulated { ciphertext, handle }, Some(place)) => {
                output.deliver(&ciphertext)?;
                place.set(handle as CK_OBJECT_HANDLE);
                Ok(())
            }
            (reply, _) => Err(unexpected(&reply)),
        }
    }

    /// `C_DecapsulateKey` (PKCS#11 3.2 §5.18.9).
    fn C_DecapsulateKey(
        session: CK_SESSION_HANDLE,
        mechanism_pointer: *mut CK_MECHANISM,
        private_key: CK_OBJECT_HANDLE,
        attributes: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        ciphertext: *mut CK_BYTE,
        ciphertext_len: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE,
    ) {
        // SAFETY: phKey is NULL or points to a handle to fill (§5.18.9).
        let place = unsafe { Place::new(key) }?;
        // SAFETY: pMechanism is NULL or a valid CK_MECHANISM (§5.18.9).
        let mechanism = unsafe { mechanism(mechanism_pointer) }?;
        // SAFETY: pCiphertext holds ulCiphertextLen bytes (§5.18.9).
        let ciphertext = super::copied(unsafe { bytes(ciphertext, ciphertext_len) }?)?;
        // SAFETY: pTemplate is NULL or holds ulAttributeCount attributes (§5.18.9).
        let template = unsafe { template(attributes, count) }?;
        let request = |session| Call::DecapsulateKey {
            session,
            mechanism,
            private_key: private_key as u64,
            template,
            ciphertext,
        };
        let handle = into_handle(library::session_call(session as u64, request)?)?;
        place.set(handle as CK_OBJECT_HANDLE);
        Ok(())
    }
}
