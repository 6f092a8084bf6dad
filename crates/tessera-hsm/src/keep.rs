//! Keeping a token's keys over time (`Call::Keep`; the `ctkmu` tool): a backup to a file, by
//! the token's user (the owner of its private objects), under a fresh backup key that one
//! custodian's passphrase or M of N custodians' shares protect, signed by the device's identity
//! key; its restore, by the SO of a token of this device or of another that trusts the
//! writer's identity; and replication to a peer device, by the SO (`replica.rs`).
//!
//! What may go into a backup file: every object but secret and private keys, which go in when
//! `CKA_TESSERA_BACKUP` is true, or when it is absent, `CKA_EXTRACTABLE` is true and
//! `CKA_WRAP_WITH_TRUSTED` false; a key whose `CKA_TESSERA_BACKUP` is false never does. A
//! replica carries every object (docs/backup.md).

use serde::{Deserialize, Serialize};
use tessera_core::attribute::CKA_TESSERA_BACKUP;
use tessera_core::{ck, Rv, SecretBytes, Template};
use tessera_store::{MasterKey, StoredObject};
use tessera_wire::backup::{BackupFile, Header, Lock, ManifestEntry, FORMAT};
use tessera_wire::share::Share;
use tessera_wire::{BackupLock, BackupUnlock, BackupWritten, KeepCommand, Reply};

use crate::locked::Locked;
use crate::object::Attributes;
use crate::{Hsm, Login};

/// PBKDF2-HMAC-SHA256 iterations for a custodian's passphrase (OWASP's figure for
/// PBKDF2-HMAC-SHA256, 2023).
pub const PASSPHRASE_ITERATIONS: u32 = 600_000;
/// Most shares a backup key is split into.
pub const MAX_SHARES: u8 = 16;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// One object as a backup or a replica carries it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Carried {
    pub public: Template,
    pub secret: Template,
}

impl Carried {
    /// The object's attributes, whole.
    pub(crate) fn attributes(&self) -> Attributes {
        Attributes::join(&self.public, &self.secret)
    }
}

/// A token's objects taken out for a backup or a replica: what goes, its manifest, and what
/// stays (with why).
pub(crate) struct TakenOut {
    pub carried: Vec<Carried>,
    pub manifest: Vec<ManifestEntry>,
    pub refused: Vec<String>,
    pub label: String,
    pub serial: String,
    pub model: String,
}

/// Why a key may not go into a backup file, or `None` if it may.
pub(crate) fn backup_refusal(attributes: &Attributes) -> Option<&'static str> {
    let class = attributes.class() as ck::CK_OBJECT_CLASS;
    if class != ck::CKO_SECRET_KEY && class != ck::CKO_PRIVATE_KEY {
        return None;
    }
    match attributes.get(CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE) {
        Some([0]) => Some("CKA_TESSERA_BACKUP is false"),
        Some(_) => None,
        None if !attributes.flag(ck::CKA_EXTRACTABLE) => {
            Some("it is not extractable and CKA_TESSERA_BACKUP is not true")
        }
        // Only a trusted key may wrap it: a file under a custodian's secret would go around.
        None if attributes.flag(ck::CKA_WRAP_WITH_TRUSTED) => {
            Some("CKA_WRAP_WITH_TRUSTED is true and CKA_TESSERA_BACKUP is not true")
        }
        None => None,
    }
}

fn text(value: Option<&[u8]>) -> String {
    String::from_utf8_lossy(value.unwrap_or_default()).into_owned()
}

/// The manifest line of an object.
fn entry(attributes: &Attributes) -> ManifestEntry {
    let class = attributes.class();
    let is_key = [ck::CKO_SECRET_KEY, ck::CKO_PRIVATE_KEY, ck::CKO_PUBLIC_KEY]
        .contains(&(class as ck::CK_OBJECT_CLASS));
    ManifestEntry {
        class,
        key_type: is_key.then(|| attributes.key_type()),
        label: text(attributes.get(ck::CKA_LABEL)),
        id: hex::encode(attributes.get(ck::CKA_ID).unwrap_or_default()),
        private: attributes.flag(ck::CKA_PRIVATE),
    }
}

/// Random bytes from the device's generator for the share split (`vsss-rs` asks for a
/// `rand_core` generator); a failure of the generator is kept and checked after the split.
struct DeviceRandom {
    failed: bool,
}

impl rand_core::RngCore for DeviceRandom {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if aws_lc_rs::rand::fill(dest).is_err() {
            self.failed = true;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for DeviceRandom {}

/// The backup key split into `count` printable shares, any `threshold` of which restore it.
fn split(key: &MasterKey, id: &[u8; 16], threshold: u8, count: u8) -> Result<Vec<SecretBytes>, Rv> {
    let secret = key.export();
    let mut random = DeviceRandom { failed: false };
    let mut parts = vsss_rs::Gf256::split_array(
        threshold as usize,
        count as usize,
        secret.expose(),
        &mut random,
    )
    .map_err(|_| Rv::FunctionFailed)?;
    let backup: [u8; 8] = id[..8].try_into().map_err(|_| Rv::GeneralError)?;
    let shares = parts
        .iter()
        .map(|part| {
            Share {
                backup,
                index: part[0],
                threshold,
                count,
                value: SecretBytes::from_slice(part),
            }
            .to_text()
        })
        .collect();
    for part in parts.iter_mut() {
        zeroize::Zeroize::zeroize(part);
    }
    if random.failed {
        return Err(Rv::FunctionFailed);
    }
    Ok(shares)
}

/// Share values on their way to the combination, wiped however it ends.
struct Parts(Vec<Vec<u8>>);

impl Drop for Parts {
    fn drop(&mut self) {
        for part in self.0.iter_mut() {
            zeroize::Zeroize::zeroize(part);
        }
    }
}

/// The backup key from the custodians' shares, checked against the file's header.
fn combine(header: &Header, texts: &[SecretBytes]) -> Result<MasterKey, Rv> {
    let Lock::Shares { threshold, count } = header.lock else {
        return Err(Rv::ArgumentsBad);
    };
    let mut parts = Parts(Vec::with_capacity(texts.len()));
    let mut seen = Vec::new();
    for text in texts {
        let share = Share::parse(text.expose()).map_err(|_| Rv::ArgumentsBad)?;
        let ours = share.backup[..] == header.id[..8]
            && share.threshold == threshold
            && share.count == count;
        if !ours || seen.contains(&share.index) {
            return Err(Rv::ArgumentsBad);
        }
        seen.push(share.index);
        // Made at its full size: no reallocation leaves a copy behind.
        let mut part = Vec::with_capacity(share.value.len());
        part.extend_from_slice(share.value.expose());
        parts.0.push(part);
    }
    if parts.0.len() < threshold as usize {
        return Err(Rv::ArgumentsBad);
    }
    let combined = vsss_rs::Gf256::combine_array(&parts.0);
    drop(parts);
    let mut combined = combined.map_err(|_| Rv::WrappedKeyInvalid)?;
    let secret = SecretBytes::from_slice(&combined);
    zeroize::Zeroize::zeroize(&mut combined);
    MasterKey::from_secret(secret).map_err(|_| Rv::WrappedKeyInvalid)
}

fn key_check(key: &MasterKey, id: &[u8; 16]) -> Vec<u8> {
    let mut label = b"tessera backup key check ".to_vec();
    label.extend_from_slice(id);
    key.derive(&label).expose().to_vec()
}

impl Hsm {
    /// Answers `Call::Keep`.
    pub(crate) fn keep(
        &self,
        client: u64,
        session: u64,
        command: KeepCommand,
    ) -> Result<Reply, Rv> {
        // A node of a cluster reads the token as the cluster has it.
        self.catch_up()?;
        match command {
            KeepCommand::Backup { lock } => self.backup(client, session, lock),
            KeepCommand::Restore { file, unlock } => self.restore(client, session, &file, unlock),
            KeepCommand::ReplicaRequest => self.replica_request(client, session),
            KeepCommand::Replicate { request } => self.replicate(client, session, &request),
            KeepCommand::AcceptReplica { replica } => {
                self.accept_replica(client, session, &replica)
            }
        }
    }

    /// The session's token, if `role` is logged in to it (in a R/W session when `write`); the
    /// Admin token is refused (it holds the device's administration, not application keys).
    pub(crate) fn token_for(
        &self,
        state: &Locked<'_>,
        client: u64,
        session: u64,
        role: Login,
        write: bool,
    ) -> Result<u64, Rv> {
        let session = state.session(client, session)?;
        let token_id = session.token_id;
        if state.token(token_id)?.login_of(client) != Some(role) {
            return Err(Rv::UserNotLoggedIn);
        }
        if write && !session.read_write {
            return Err(Rv::SessionReadOnly);
        }
        if state.device.is_admin(token_id) {
            return Err(Rv::TokenNotRecognized);
        }
        Ok(token_id)
    }

    /// The session's token if `role` is logged in to it (see [`Hsm::token_for`]), checked
    /// under its lock and let go.
    pub(crate) fn logged_in_token(
        &self,
        client: u64,
        session: u64,
        role: Login,
        write: bool,
    ) -> Result<u64, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let state = tokens.lock(self);
        self.token_for(&state, client, session, role, write)
    }

    /// The token's objects with their secrets: for a backup file (by its user: only those
    /// that may go into a file) or a replica (by its SO: all of them).
    pub(crate) fn take_out(
        &self,
        client: u64,
        session: u64,
        for_file: bool,
    ) -> Result<TakenOut, Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let role = if for_file { Login::User } else { Login::So };
        let token_id = self.token_for(&state, client, session, role, false)?;
        // Unsealing every object is slow: the other sessions' calls go on meanwhile.
        state.release_sessions();
        let token = state.token(token_id)?;
        let mut out = TakenOut {
            carried: Vec::new(),
            manifest: Vec::new(),
            refused: Vec::new(),
            label: String::from_utf8_lossy(&token.record.label)
                .trim_end()
                .to_string(),
            serial: self.token_serial(token_id),
            model: crate::device::MODEL.to_string(),
        };
        let mut ids: Vec<u64> = token.objects.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(object) = token.objects.get(&id) else {
                continue;
            };
            if object.owner.is_some() || !carried_class(object.attributes.class()) {
                continue;
            }
            let full = self.full_attributes(token, token_id, id, object)?;
            if let Some(why) = backup_refusal(&full).filter(|_| for_file) {
                let entry = entry(&full);
                out.refused
                    .push(format!("{:?} ({}): {why}", entry.label, entry.class_name()));
                continue;
            }
            out.manifest.push(entry(&full));
            let (public, secret) = full.split();
            out.carried.push(Carried { public, secret });
        }
        Ok(out)
    }

    fn backup(&self, client: u64, session: u64, lock: BackupLock) -> Result<Reply, Rv> {
        match &lock {
            BackupLock::Passphrase(p) if p.len() < MIN_PASSPHRASE_LEN => {
                return Err(Rv::PinLenRange)
            }
            BackupLock::Shares { threshold, count }
                if *threshold < 2 || threshold > count || *count > MAX_SHARES =>
            {
                return Err(Rv::ArgumentsBad)
            }
            _ => {}
        }
        // The file is signed by the device's identity: without one there is no backup.
        let chain = self.identity_chain()?;
        let taken = self.take_out(client, session, true)?;
        // The slow work (the passphrase's derivation, sealing) holds no lock.
        let key = MasterKey::generate().map_err(|_| Rv::FunctionFailed)?;
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| Rv::FunctionFailed)?;
        let (lock, shares, how) = match lock {
            BackupLock::Passphrase(passphrase) => {
                let record = key
                    .wrap(passphrase.expose(), PASSPHRASE_ITERATIONS)
                    .map_err(|_| Rv::FunctionFailed)?;
                let lock = Lock::Passphrase {
                    salt: record.salt,
                    iterations: record.iterations,
                    wrapped: record.wrapped,
                };
                (lock, Vec::new(), "one custodian's passphrase".to_string())
            }
            BackupLock::Shares { threshold, count } => (
                Lock::Shares { threshold, count },
                split(&key, &id, threshold, count)?,
                format!("{threshold} of {count} shares"),
            ),
        };
        let header = Header {
            format: FORMAT,
            id,
            device_serial: self.serial.clone(),
            token_label: taken.label.clone(),
            token_serial: taken.serial.clone(),
            token_model: taken.model.clone(),
            created: self.clock(),
            manifest: taken.manifest,
            lock,
            key_check: key_check(&key, &id),
            chain,
        };
        let authenticated = BackupFile::authenticated(&header);
        let payload = SecretBytes::encode(&taken.carried).map_err(|_| Rv::GeneralError)?;
        let sealed = key
            .seal(&authenticated, payload.expose())
            .map_err(|_| Rv::FunctionFailed)?;
        let signature = self.identity_signature(&BackupFile::signed(&authenticated, &sealed))?;
        let file = BackupFile::encode(&authenticated, &signature, &sealed);
        let objects = taken.carried.len() as u64;
        self.event(
            "User",
            "token-backup",
            format!(
                "token {} ({:?}): {objects} objects, {} refused, under {how}; file {}",
                taken.serial,
                taken.label,
                taken.refused.len(),
                BackupFile::fingerprint(&file)
            ),
        );
        Ok(Reply::Backup(Box::new(BackupWritten {
            file,
            shares,
            objects,
            refused: taken.refused,
        })))
    }

    /// A restore refused after the SO was checked: an event (with the file's fingerprint),
    /// then the code.
    fn restore_refused(&self, bytes: &[u8], why: &str, rv: Rv) -> Rv {
        self.event(
            "SO",
            "restore-refused",
            format!("{why}; file {}", BackupFile::fingerprint(bytes)),
        );
        rv
    }

    fn restore(
        &self,
        client: u64,
        session: u64,
        bytes: &[u8],
        unlock: BackupUnlock,
    ) -> Result<Reply, Rv> {
        // Who asks comes first: nothing of the file is worked on for anyone but the SO.
        self.logged_in_token(client, session, Login::So, true)?;
        let refused = |why: &str, rv: Rv| self.restore_refused(bytes, why, rv);
        let file =
            BackupFile::parse(bytes).map_err(|e| refused(&e.to_string(), Rv::DataInvalid))?;
        let header = &file.header;
        if header.token_model != crate::device::MODEL {
            return Err(refused(
                "a backup of another token type",
                Rv::TokenNotRecognized,
            ));
        }
        // Only files that this device (its own identity certificate, not whatever else its
        // owner signed) or a peer it trusts wrote and signed.
        let mut anchors: Vec<Vec<u8>> = self
            .identity_chain()
            .map(|chain| chain.into_iter().take(1).collect())
            .unwrap_or_default();
        anchors.extend(self.peer_certificates());
        let trusted = tessera_identity::verify::verify_chain(
            &header.chain,
            &anchors,
            &header.device_serial,
            self.clock() as i64,
        );
        if let Err(refusal) = trusted {
            return Err(refused(
                &format!(
                    "written by device {:?}, which this device does not trust: {:?}",
                    header.device_serial,
                    refusal.to_string()
                ),
                Rv::CertNotValidated,
            ));
        }
        let signed = BackupFile::signed(&file.authenticated, &file.sealed);
        let pic = header.chain.first().map(Vec::as_slice).unwrap_or_default();
        if !tessera_identity::verify::verify_with_certificate(pic, &signed, &file.signature) {
            return Err(refused(
                "the file's signature does not verify",
                Rv::SignatureInvalid,
            ));
        }
        let key = match (&header.lock, unlock) {
            (
                Lock::Passphrase {
                    salt,
                    iterations,
                    wrapped,
                },
                BackupUnlock::Passphrase(passphrase),
            ) => {
                if *iterations != PASSPHRASE_ITERATIONS {
                    return Err(refused("an unexpected key derivation", Rv::DataInvalid));
                }
                let record = tessera_store::PinRecord {
                    salt: salt.clone(),
                    iterations: *iterations,
                    wrapped: wrapped.clone(),
                };
                MasterKey::unwrap(&record, passphrase.expose())
                    .map_err(|_| refused("a wrong passphrase", Rv::PinIncorrect))?
            }
            (Lock::Shares { .. }, BackupUnlock::Shares(texts)) => combine(header, &texts)
                .map_err(|rv| refused("shares that do not fit this backup", rv))?,
            _ => return Err(Rv::ArgumentsBad),
        };
        let check = key_check(&key, &header.id);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &check[..],
            &header.key_check[..],
        )) {
            return Err(refused(
                "shares that do not open this backup",
                Rv::WrappedKeyInvalid,
            ));
        }
        let damaged = || refused("sealed objects that do not open", Rv::EncryptedDataInvalid);
        let payload = key
            .open(&file.authenticated, &file.sealed)
            .map_err(|_| damaged())?;
        let carried: Vec<Carried> =
            postcard::from_bytes(payload.expose()).map_err(|_| damaged())?;
        let objects: Vec<Attributes> = carried.iter().map(Carried::attributes).collect();
        // The manifest that `ctkmu show` prints is what comes back, object by object.
        let listed = objects.len() == header.manifest.len()
            && objects
                .iter()
                .zip(&header.manifest)
                .all(|(o, m)| entry(o) == *m);
        if !listed {
            return Err(damaged());
        }
        let (token_id, serial, restored) = self.put_in(client, session, objects)?;
        self.event(
            "SO",
            "token-restore",
            format!(
                "token {serial}: {restored} objects from the backup of token {} ({:?}) of device {}; file {}",
                header.token_serial,
                header.token_label,
                header.device_serial,
                BackupFile::fingerprint(bytes)
            ),
        );
        tracing::info!(token_id, restored, "restored a backup");
        Ok(Reply::Number(restored))
    }

    /// Puts objects that a backup or a replica carried into the session's token (its SO logged in, R/W), sealed under
    /// this device's keys, in one store transaction: all or none. Each is checked as an
    /// object of its class, and made to follow this device's flags. Returns the token, its
    /// serial and how many.
    pub(crate) fn put_in(
        &self,
        client: u64,
        session: u64,
        mut objects: Vec<Attributes>,
    ) -> Result<(u64, String, u64), Rv> {
        let tokens = self.tokens_of_session(client, session)?;
        let mut state = tokens.lock(self);
        let token_id = self.token_for(&state, client, session, Login::So, true)?;
        let flags = state.device.flags;
        for attributes in objects.iter_mut() {
            let class = attributes.class();
            let well_formed = carried_class(class)
                && attributes.flag(ck::CKA_TOKEN)
                && attributes
                    .types()
                    .all(|ty| crate::object::valid_for_class(class, ty));
            if !well_formed {
                return Err(Rv::EncryptedDataInvalid);
            }
            let key = [ck::CKO_SECRET_KEY, ck::CKO_PRIVATE_KEY].contains(&(class as _));
            if key && flags & tessera_core::flags::NO_CLEAR_PINS != 0 {
                // As for every key made here under `n`: always sensitive.
                attributes.set_flag(ck::CKA_SENSITIVE, true);
            }
            // A fresh CKA_UNIQUE_ID: ids are unique on a token, and a token may hold the
            // same backup twice.
            crate::object::fresh_unique_id(attributes)?;
        }
        state.release_sessions();
        let token = state.token(token_id)?;
        let master = token.master.as_ref().ok_or(Rv::UserNotLoggedIn)?;
        let mut stored: Vec<StoredObject> = Vec::with_capacity(objects.len());
        let ids = self
            .store_insert_objects(token_id, objects.len(), |place, id| {
                let attributes = &objects[place];
                let key = match attributes.flag(ck::CKA_PRIVATE) {
                    true => master,
                    false => self.public_key(),
                };
                let object = crate::object_calls::seal(key, token_id, id, attributes)
                    .map_err(|_| tessera_store::StoreError::Storage("sealing failed".into()))?;
                stored.push(object.clone());
                Ok(object)
            })
            .map_err(|e| match e {
                tessera_store::StoreError::Refused(_) => Rv::FunctionNotSupported,
                other => crate::store_failure(other),
            })?;
        let token = state.token_mut(token_id)?;
        for (id, object) in ids.iter().zip(stored) {
            token
                .objects
                .insert(*id, crate::object_calls::in_memory(object));
        }
        Ok((token_id, self.token_serial(token_id), ids.len() as u64))
    }
}

/// The classes a backup or a replica carries (not the device object, `CKO_HW_FEATURE`).
fn carried_class(class: u64) -> bool {
    [
        ck::CKO_DATA,
        ck::CKO_CERTIFICATE,
        ck::CKO_PUBLIC_KEY,
        ck::CKO_PRIVATE_KEY,
        ck::CKO_SECRET_KEY,
    ]
    .contains(&(class as ck::CK_OBJECT_CLASS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(key: &MasterKey, id: [u8; 16], threshold: u8, count: u8) -> Header {
        Header {
            format: FORMAT,
            id,
            device_serial: "1".into(),
            token_label: "t".into(),
            token_serial: "101".into(),
            token_model: crate::device::MODEL.into(),
            created: 0,
            manifest: vec![],
            lock: Lock::Shares { threshold, count },
            key_check: key_check(key, &id),
            chain: vec![],
        }
    }

    /// Every subset of a 3-of-5 split: those of three or more give the key back, those of
    /// two give a key that fails the check (or are refused as too few).
    #[test]
    fn any_three_of_five_shares_restore_the_key_and_no_two_do() {
        let key = MasterKey::generate().unwrap();
        let id = [5u8; 16];
        let shares = split(&key, &id, 3, 5).unwrap();
        let header = header_for(&key, id, 3, 5);
        let mut opened = 0;
        for mask in 1u32..32 {
            let chosen: Vec<SecretBytes> = (0..5)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| shares[i].duplicate())
                .collect();
            let result = combine(&header, &chosen);
            if chosen.len() >= 3 {
                let got = result.unwrap();
                assert_eq!(key_check(&got, &id), header.key_check, "mask {mask:05b}");
                opened += 1;
            } else {
                assert!(result.is_err(), "mask {mask:05b}");
            }
        }
        assert_eq!(opened, 10 + 5 + 1);
        // Two shares given as three (one twice) are refused, not combined.
        let twice = vec![
            shares[0].duplicate(),
            shares[1].duplicate(),
            shares[0].duplicate(),
        ];
        assert_eq!(combine(&header, &twice).err(), Some(Rv::ArgumentsBad));
    }

    /// Below the threshold the interpolation gives some key, never this one: shown by
    /// combining two shares as if two were enough.
    #[test]
    fn two_shares_of_a_three_share_split_say_nothing_of_the_key() {
        let key = MasterKey::generate().unwrap();
        let id = [6u8; 16];
        let shares = split(&key, &id, 3, 5).unwrap();
        let mut parts: Vec<Vec<u8>> = shares[..2]
            .iter()
            .map(|t| Share::parse(t.expose()).unwrap().value.expose().to_vec())
            .collect();
        let wrong = vsss_rs::Gf256::combine_array(&parts).unwrap();
        assert_ne!(wrong, key.export().expose());
        parts.clear();
    }

    #[test]
    fn a_share_of_another_backup_is_refused() {
        let key = MasterKey::generate().unwrap();
        let shares = split(&key, &[1; 16], 2, 3).unwrap();
        let other = split(&key, &[2; 16], 2, 3).unwrap();
        let header = header_for(&key, [1; 16], 2, 3);
        let mixed = vec![shares[0].duplicate(), other[1].duplicate()];
        assert_eq!(combine(&header, &mixed).err(), Some(Rv::ArgumentsBad));
    }
}
