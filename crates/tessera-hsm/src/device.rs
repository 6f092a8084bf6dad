//! Creating and opening a device, and the info records of the device, its slots and tokens.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tessera_core::ck;
use tessera_core::info::{DeviceInfo, SlotInfo, TokenInfo, Version};
use tessera_core::Rv;
use tessera_store::{DeviceRecord, MasterKey, Store, StoreError, TokenRecord};

use crate::error::HsmError;
use crate::identity::IdentityRecord;
pub use crate::protection::DeviceKeyProtection;
use crate::{Hsm, Token, MAX_PIN_FAILURES, MAX_PIN_LEN, MAX_SESSIONS, MIN_PIN_LEN};

/// The device aggregate: its record (flags, slots, clock, transport mode) and its identity.
/// A call reads one consistent value of it, an `Arc` taken without waiting for administration
/// ([`Device::now`]); a change is made on a copy, stored, then published ([`Device::change`]).
/// Changes take the device's turn first: the engine's lock order is device, then tokens (each
/// behind its own lock, see `crate::locked`), then sessions. A change that touches tokens too
/// (flags, slots, tamper) publishes while it holds the tokens, so whoever holds them reads a
/// device that matches.
pub(crate) struct Device {
    current: RwLock<Arc<DeviceView>>,
    changing: Mutex<()>,
}

/// One value of the device: what it records and its identity. Reads as its [`DeviceRecord`].
#[derive(Clone)]
pub(crate) struct DeviceView {
    pub(crate) record: DeviceRecord,
    pub(crate) identity: IdentityRecord,
}

impl DeviceView {
    /// The token ids in slot order: the user slots, then the Admin slot.
    pub(crate) fn slot_tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.user_tokens
            .iter()
            .copied()
            .chain(std::iter::once(self.admin_token))
    }

    /// The token id in a slot.
    pub(crate) fn slot_token(&self, slot: u64) -> Result<u64, Rv> {
        usize::try_from(slot)
            .ok()
            .and_then(|index| self.slot_tokens().nth(index))
            .ok_or(Rv::SlotIdInvalid)
    }

    /// The slot a token is in now.
    pub(crate) fn slot_of(&self, token_id: u64) -> u64 {
        self.slot_tokens()
            .position(|t| t == token_id)
            .unwrap_or(usize::MAX) as u64
    }

    /// The name of a role on a token, for the event log.
    pub(crate) fn role(&self, token_id: u64, so: bool) -> &'static str {
        match (self.is_admin(token_id), so) {
            (true, true) => "ASO",
            (true, false) => "Administrator",
            (false, true) => "SO",
            (false, false) => "User",
        }
    }

    /// True for the Admin token.
    pub(crate) fn is_admin(&self, token_id: u64) -> bool {
        token_id == self.admin_token
    }
}

impl std::ops::Deref for DeviceView {
    type Target = DeviceRecord;
    fn deref(&self) -> &DeviceRecord {
        &self.record
    }
}

/// A change of the device in progress: a copy of its current value, published when done
/// ([`DeviceChange::publish`]); dropped unpublished, it changed nothing. Only one is in
/// progress at a time.
pub(crate) struct DeviceChange<'a> {
    device: &'a Device,
    _turn: MutexGuard<'a, ()>,
    view: DeviceView,
}

impl Device {
    pub(crate) fn new(record: DeviceRecord, identity: IdentityRecord) -> Device {
        Device {
            current: RwLock::new(Arc::new(DeviceView { record, identity })),
            changing: Mutex::new(()),
        }
    }

    /// The device as it is now.
    pub(crate) fn now(&self) -> Arc<DeviceView> {
        // A panic while a change was published is a bug of ours; the value it left is whole.
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Starts a change, waiting for one in progress to end.
    pub(crate) fn change(&self) -> DeviceChange<'_> {
        let turn = crate::locked::lock(&self.changing);
        DeviceChange {
            device: self,
            _turn: turn,
            view: DeviceView::clone(&self.now()),
        }
    }
}

impl DeviceChange<'_> {
    /// Makes the changed value the device's (after it is stored) and returns it.
    pub(crate) fn publish(self) -> Arc<DeviceView> {
        let view = Arc::new(self.view);
        *self
            .device
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::clone(&view);
        view
    }
}

impl std::ops::Deref for DeviceChange<'_> {
    type Target = DeviceView;
    fn deref(&self) -> &DeviceView {
        &self.view
    }
}

impl std::ops::DerefMut for DeviceChange<'_> {
    fn deref_mut(&mut self) -> &mut DeviceView {
        &mut self.view
    }
}

/// Model string of every Tessera device.
pub const MODEL: &str = "Tessera HSM";
/// Manufacturer string.
pub const MANUFACTURER: &str = "Tessera project";

/// Options for opening a device.
#[derive(Debug, Clone)]
pub struct HsmOptions {
    /// User slots of a new device (the Admin slot comes after them). Ignored for an existing one.
    pub user_slots: u64,
    /// PBKDF2 iterations for new PIN records.
    pub kdf_iterations: u32,
    /// Entries the event log keeps; older ones are dropped.
    pub event_log_size: u64,
    /// Secure-messaging channels held at once.
    pub max_channels: usize,
    /// Limits on what one client (connection) and the device hold in memory.
    pub limits: crate::Limits,
    /// What protects `device.key` (see [`DeviceKeyProtection`]).
    pub device_key: DeviceKeyProtection,
    /// Serve a store older than the recorded rollback state (or one whose state file is
    /// missing), recording the acceptance as an event, and record the store as it is.
    pub accept_rollback: bool,
}

impl Default for HsmOptions {
    fn default() -> Self {
        HsmOptions {
            user_slots: 2,
            kdf_iterations: tessera_store::DEFAULT_KDF_ITERATIONS,
            event_log_size: crate::events::DEFAULT_EVENT_LOG_SIZE,
            max_channels: crate::channels::DEFAULT_MAX_CHANNELS,
            limits: crate::Limits::default(),
            device_key: DeviceKeyProtection::Embedded,
            accept_rollback: false,
        }
    }
}

/// Migrates a format-1 store: PIN records are peppered (without the PINs: the wrapped key is
/// sealed once more), and public objects' values that were stored in the clear are sealed
/// under the device key — in one transaction. Private objects' clear values are sealed at the
/// user's next login (their key, the token master key, needs the PIN).
fn migrate(store: &Store, device_key: &MasterKey, pepper: &MasterKey) -> Result<(), HsmError> {
    let pepper_of = |record: Option<tessera_store::PinRecord>| {
        record
            .map(|r| tessera_store::pepper_record(r, pepper))
            .transpose()
            .map_err(|e| HsmError::Options(format!("cannot pepper a PIN record: {e}")))
    };
    let mut tokens = Vec::new();
    let mut objects = Vec::new();
    for (token_id, mut record) in store.tokens()? {
        record.so_pin = pepper_of(record.so_pin.take())?;
        record.user_pin = pepper_of(record.user_pin.take())?;
        for (id, stored) in store.objects(token_id)? {
            if let Some(resealed) =
                crate::object_calls::reseal_public(device_key, token_id, id, &stored)
            {
                objects.push((token_id, id, resealed));
            }
        }
        tokens.push((token_id, record));
    }
    let put: Vec<(u64, &TokenRecord)> = tokens.iter().map(|(t, r)| (*t, r)).collect();
    let objects_ref: Vec<(u64, u64, &tessera_store::StoredObject)> =
        objects.iter().map(|(t, i, o)| (*t, *i, o)).collect();
    store.migrate(&put, &objects_ref, tessera_store::FORMAT)?;
    tracing::warn!(
        tokens = put.len(),
        sealed = objects_ref.len(),
        "migrated the token store to format {}: PIN records peppered, public objects' values sealed",
        tessera_store::FORMAT
    );
    Ok(())
}

/// Checks the store against the recorded rollback state, and returns the witness that records
/// every later commit.
fn rollback_check(
    data_dir: &Path,
    options: &HsmOptions,
    store: &Store,
    device_key: &MasterKey,
    events: &crate::events::EventLog,
    fresh: bool,
) -> Result<std::sync::Arc<crate::rollback::Witness>, HsmError> {
    use crate::rollback::{Recorded, Witness};
    let path = crate::protection::state_path(data_dir, &options.device_key);
    let recorded = Witness::read(&path, device_key)?;
    let stored_events = store.events()?;
    let current = Recorded {
        generation: store.generation()?,
        event_sequence: stored_events.last().map_or(0, |e| e.sequence),
        event_mac: stored_events.last().map_or(Vec::new(), |e| e.mac.clone()),
    };
    let problem = match &recorded {
        None if fresh => None,
        None => Some(format!(
            "the rollback state {} is missing, so the store's age cannot be checked",
            path.display()
        )),
        Some(recorded) => {
            crate::rollback::check(current.generation, &stored_events, recorded, &path).err()
        }
    };
    if let Some(problem) = problem {
        let time = crate::time::now();
        if options.accept_rollback {
            tracing::warn!(problem = %problem, "serving the store anyway (--accept-rollback)");
            events.record(store, time, "Device", "rollback-accepted", problem);
        } else {
            tracing::error!(problem = %problem, "refusing a rolled-back store");
            events.record_uncounted(store, time, "Device", "rollback-refused", problem.clone());
            return Err(HsmError::Rollback(problem));
        }
    }
    // After an accepted rollback the event above moved the store on: record it as it is now.
    let stored_events = store.events()?;
    let current = Recorded {
        generation: store.generation()?,
        event_sequence: stored_events.last().map_or(0, |e| e.sequence),
        event_mac: stored_events.last().map_or(Vec::new(), |e| e.mac.clone()),
    };
    let witness = std::sync::Arc::new(Witness::new(path, device_key, current)?);
    let for_store = witness.clone();
    store.set_witness(Box::new(move |commit| for_store.commit(commit)));
    Ok(witness)
}

fn random_serial() -> Result<String, HsmError> {
    let bytes = crate::crypto::random(8)
        .map_err(|_| HsmError::Options("random generator failed".into()))?;
    let number = u64::from_le_bytes(bytes.try_into().unwrap_or([7; 8]));
    Ok(format!("{}", 1_000_000_000 + number % 9_000_000_000))
}

pub(crate) fn open(data_dir: &Path, options: &HsmOptions) -> Result<Hsm, HsmError> {
    if !(1..=64).contains(&options.user_slots) {
        return Err(HsmError::Options(format!(
            "a device has 1 to 64 user slots, not {}",
            options.user_slots
        )));
    }
    if options.kdf_iterations == 0 {
        // Refused rather than raised to 1 behind the operator's back.
        return Err(HsmError::Options(
            "PBKDF2 needs at least 1 iteration, not 0 (the default is the safe choice)".into(),
        ));
    }
    let store = Store::open(&data_dir.join("tessera.redb"))?;
    let opened =
        crate::protection::open_device_key(data_dir, &options.device_key, options.kdf_iterations)?;
    tracing::info!("device key protection: {}", opened.description);
    let device_key = opened.key;
    let pepper = MasterKey::from_secret(device_key.derive(b"tessera PIN pepper v1"))
        .map_err(|e| HsmError::Options(e.to_string()))?;
    let mut fresh = opened.changed;
    let device = match store.device()? {
        Some(device) => {
            if store.format()? < tessera_store::FORMAT {
                migrate(&store, &device_key, &pepper)?;
                fresh = true;
            }
            device
        }
        None => {
            let user_tokens: Vec<u64> = (0..options.user_slots).collect();
            let device = DeviceRecord {
                serial: random_serial()?,
                model: MODEL.into(),
                created: crate::time::now(),
                admin_token: options.user_slots,
                next_token: options.user_slots + 1,
                user_tokens,
                flags: 0,
                transport_mode: 0,
                clock_offset: 0,
            };
            let blank = TokenRecord::default();
            let tokens: Vec<(u64, &TokenRecord)> =
                (0..=options.user_slots).map(|t| (t, &blank)).collect();
            store.update_device(&device, &tokens, &[], &[])?;
            store.migrate(&[], &[], tessera_store::FORMAT)?;
            fresh = true;
            tracing::info!(serial = %device.serial, slots = options.user_slots, "created a new HSM device");
            device
        }
    };
    let mut records: std::collections::BTreeMap<u64, TokenRecord> =
        store.tokens()?.into_iter().collect();
    let ledger = std::sync::Arc::new(crate::locked::Ledger::default());
    let mut tokens = std::collections::BTreeMap::new();
    let token_ids: Vec<u64> = device
        .user_tokens
        .iter()
        .copied()
        .chain(std::iter::once(device.admin_token))
        .collect();
    for token_id in token_ids {
        let record = records.remove(&token_id).ok_or_else(|| {
            HsmError::Store(StoreError::Corrupt(format!(
                "token {token_id} of the slot list"
            )))
        })?;
        let mut objects = crate::object_set::ObjectSet::counted_in(&ledger);
        for (id, stored) in store.objects(token_id)? {
            objects.insert(id, crate::object_calls::in_memory(stored));
        }
        tokens.insert(
            token_id,
            crate::locked::TokenCell::new(Token::new(record, objects)),
        );
    }
    let events = crate::events::EventLog::open(&store, &device_key, options.event_log_size)?;
    let witness = rollback_check(data_dir, options, &store, &device_key, &events, fresh)?;
    let store_for_identity = &store;
    let identity = crate::identity::IdentityRecord::load(store_for_identity)?;
    let hsm = Hsm {
        store,
        serial: device.serial.clone(),
        device_key,
        session_key: tessera_store::HeldKey::generate()
            .map_err(|_| HsmError::Options("random generator failed".into()))?,
        pepper,
        witness,
        protection: opened.description,
        requests: Default::default(),
        pin_lockouts: Default::default(),
        pik_cache: Default::default(),
        replicas: Default::default(),
        sessions: Default::default(),
        kdf_iterations: options.kdf_iterations,
        events,
        channels: crate::channels::Channels::new(options.max_channels),
        limits: options.limits,
        device: Device::new(device, identity),
        tokens: std::sync::RwLock::new(tokens),
        ledger,
        next_client: Default::default(),
        next_session_object: crate::SESSION_OBJECT_BASE.into(),
        limits_reported: Default::default(),
        cluster: Default::default(),
    };
    let flags = hsm.device.now().flags;
    let tokens = hsm.all_tokens();
    hsm.refresh_device_objects(&mut tokens.lock(&hsm), flags);
    drop(tokens);
    Ok(hsm)
}

fn version() -> Version {
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    Version { major, minor }
}

impl Hsm {
    pub(crate) fn device_info(&self) -> DeviceInfo {
        let device = self.device.now();
        DeviceInfo {
            serial: self.serial.clone(),
            model: device.model.clone(),
            manufacturer: MANUFACTURER.into(),
            firmware: version(),
            hardware: Version { major: 1, minor: 0 },
            slot_count: device.user_tokens.len() as u64 + 1,
            channel_required: tessera_channel::Policy::from_device_flags(device.flags)
                .requires_channel(),
        }
    }

    /// The device clock: the host clock plus the offset the Administrator set.
    pub(crate) fn clock(&self) -> u64 {
        crate::time::now().saturating_add_signed(self.device.now().clock_offset)
    }

    pub(crate) fn slot_info(&self, slot: u64) -> Result<SlotInfo, Rv> {
        let device = self.device.now();
        let token_id = device.slot_token(slot)?;
        let description = if device.is_admin(token_id) {
            format!("Tessera {} Admin slot", self.serial)
        } else {
            format!("Tessera {} slot {slot}", self.serial)
        };
        Ok(SlotInfo {
            description,
            manufacturer: MANUFACTURER.into(),
            // A software device: no CKF_HW_SLOT, whatever it runs on.
            flags: ck::CKF_TOKEN_PRESENT as u64,
            hardware: Version { major: 1, minor: 0 },
            firmware: version(),
        })
    }

    pub(crate) fn token_info(&self, slot: u64) -> Result<TokenInfo, Rv> {
        let tokens = self.tokens_of_slot(slot)?;
        let state = tokens.lock(self);
        let token_id = state.slot_token(slot)?;
        let token = state.token(token_id)?;
        let record = &token.record;
        let mut flags = ck::CKF_RNG | ck::CKF_LOGIN_REQUIRED | ck::CKF_RESTORE_KEY_NOT_NEEDED;
        if record.so_pin.is_some() {
            flags |= ck::CKF_TOKEN_INITIALIZED;
        }
        if record.user_pin.is_some() {
            flags |= ck::CKF_USER_PIN_INITIALIZED;
        }
        flags |= pin_count_flags(
            record.user_failures,
            ck::CKF_USER_PIN_COUNT_LOW,
            ck::CKF_USER_PIN_FINAL_TRY,
            ck::CKF_USER_PIN_LOCKED,
        );
        flags |= pin_count_flags(
            record.so_failures,
            ck::CKF_SO_PIN_COUNT_LOW,
            ck::CKF_SO_PIN_FINAL_TRY,
            ck::CKF_SO_PIN_LOCKED,
        );
        let sessions = state.sessions().on_token(token_id);
        let (count, rw) = sessions.fold((0, 0), |(c, rw), s| (c + 1, rw + u64::from(s.read_write)));
        let label = String::from_utf8_lossy(&record.label)
            .trim_end()
            .to_string();
        let model = if state.device.is_admin(token_id) {
            "Tessera Admin"
        } else {
            MODEL
        };
        Ok(TokenInfo {
            label,
            manufacturer: MANUFACTURER.into(),
            model: model.into(),
            serial: self.token_serial(token_id),
            flags: flags as u64,
            session_count: count,
            rw_session_count: rw,
            max_session_count: MAX_SESSIONS,
            max_pin_len: MAX_PIN_LEN as u64,
            min_pin_len: MIN_PIN_LEN as u64,
            hardware: Version { major: 1, minor: 0 },
            firmware: version(),
            utc_time: crate::time::utc_time(self.clock()),
        })
    }
}

fn pin_count_flags(
    failures: u32,
    low: ck::CK_FLAGS,
    final_try: ck::CK_FLAGS,
    locked: ck::CK_FLAGS,
) -> ck::CK_FLAGS {
    match failures {
        0 => 0,
        f if f >= MAX_PIN_FAILURES => locked,
        f if f + 1 == MAX_PIN_FAILURES => low | final_try,
        _ => low,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tessera_core::SecretBytes;
    use tessera_wire::{Call, Reply};

    fn device(dir: &std::path::Path) -> Arc<crate::Hsm> {
        let options = crate::HsmOptions {
            user_slots: 1,
            kdf_iterations: 1000,
            ..Default::default()
        };
        Arc::new(crate::Hsm::open(dir, &options).unwrap())
    }

    /// The device is an aggregate of its own: while the Administrator's change of it is in
    /// progress (an identity key being generated, say), token and session calls read the
    /// device as it is and go on, instead of waiting for it.
    #[test]
    fn calls_go_on_while_the_device_is_being_changed() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = device(dir.path());
        let client = hsm.connect();
        let init = Call::InitToken {
            slot: 0,
            so_pin: SecretBytes::from_slice(b"so-pin"),
            label: b"t".to_vec(),
        };
        hsm.handle(client, true, init).unwrap();

        let change = hsm.device.change();
        let worker = {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                hsm.handle(client, true, Call::DeviceInfo)?;
                hsm.handle(client, true, Call::SlotInfo { slot: 0 })?;
                hsm.handle(client, true, Call::TokenInfo { slot: 0 })?;
                let flags = tessera_core::ck::CKF_SERIAL_SESSION as u64;
                let Reply::Handle(session) =
                    hsm.handle(client, true, Call::OpenSession { slot: 0, flags })?
                else {
                    panic!("no session")
                };
                hsm.handle(client, true, Call::GenerateRandom { session, len: 16 })?;
                hsm.handle(client, true, Call::CloseSession { session })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = worker.is_finished();
        drop(change);
        assert!(finished, "the calls waited for the device's change");
        assert!(matches!(worker.join().unwrap(), Ok(Reply::Done)));
    }

    /// A change is made on a copy: dropped unpublished it changed nothing; published, the next
    /// call reads it, and one that had read the device before keeps the value it read.
    #[test]
    fn a_device_change_counts_only_once_published() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = device(dir.path());
        let before = hsm.device.now();
        let mut change = hsm.device.change();
        change.record.clock_offset = 3600;
        drop(change);
        assert_eq!(hsm.device.now().clock_offset, 0, "an unpublished change");
        let mut change = hsm.device.change();
        change.record.clock_offset = 3600;
        change.publish();
        assert_eq!(hsm.device.now().clock_offset, 3600);
        assert_eq!(hsm.all_tokens().lock(&hsm).device.clock_offset, 3600);
        assert_eq!(before.clock_offset, 0, "a value read before is its own");
    }
}
