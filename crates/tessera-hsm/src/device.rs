//! Creating and opening a device, and the info records of the device, its slots and tokens.

use std::path::{Path, PathBuf};

use tessera_core::ck;
use tessera_core::info::{DeviceInfo, SlotInfo, TokenInfo, Version};
use tessera_core::Rv;
use tessera_store::{DeviceRecord, MasterKey, Store, StoreError, TokenRecord};

use crate::{Hsm, State, Token, MAX_PIN_FAILURES, MAX_PIN_LEN, MAX_SESSIONS, MIN_PIN_LEN};

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
}

impl Default for HsmOptions {
    fn default() -> Self {
        HsmOptions {
            user_slots: 2,
            kdf_iterations: tessera_store::DEFAULT_KDF_ITERATIONS,
        }
    }
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The token store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the data directory could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The options are invalid.
    #[error("{0}")]
    Options(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> HsmError {
    HsmError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The storage key that seals the secrets of public token objects.
fn device_key(data_dir: &Path) -> Result<MasterKey, HsmError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("device.key");
    let iterations = 1;
    let record_of = |bytes: &[u8]| postcard::from_bytes::<tessera_store::PinRecord>(bytes);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let record = record_of(&bytes).map_err(|e| file_error(&path, e))?;
            MasterKey::unwrap(&record, b"tessera device key").map_err(|e| file_error(&path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate().map_err(|e| file_error(&path, e))?;
            let record = key
                .wrap(b"tessera device key", iterations)
                .map_err(|e| file_error(&path, e))?;
            let bytes = postcard::to_stdvec(&record).map_err(|e| file_error(&path, e))?;
            let temporary = data_dir.join("device.key.new");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(|e| file_error(&temporary, e))?;
            file.write_all(&bytes)
                .and_then(|_| file.sync_all())
                .map_err(|e| file_error(&temporary, e))?;
            std::fs::rename(&temporary, &path).map_err(|e| file_error(&path, e))?;
            Ok(key)
        }
        Err(e) => Err(file_error(&path, e)),
    }
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
    let store = Store::open(&data_dir.join("tessera.redb"))?;
    let device_key = device_key(data_dir)?;
    let device = match store.device()? {
        Some(device) => device,
        None => {
            let device = DeviceRecord {
                serial: random_serial()?,
                model: MODEL.into(),
                user_slots: options.user_slots,
                created: crate::time::now(),
            };
            store.put_device(&device)?;
            tracing::info!(serial = %device.serial, slots = device.user_slots, "created a new HSM device");
            device
        }
    };
    let mut records: std::collections::BTreeMap<u64, TokenRecord> =
        store.tokens()?.into_iter().collect();
    let mut tokens = std::collections::BTreeMap::new();
    for slot in 0..=device.user_slots {
        let record = match records.remove(&slot) {
            Some(record) => record,
            None => {
                let record = TokenRecord::default();
                store.put_token(slot, &record)?;
                record
            }
        };
        let mut objects = std::collections::BTreeMap::new();
        for (id, stored) in store.objects(slot)? {
            objects.insert(id, crate::objects::in_memory(stored));
        }
        tokens.insert(
            slot,
            Token {
                record,
                master: None,
                logins: Default::default(),
                objects,
            },
        );
    }
    Ok(Hsm {
        store,
        device,
        device_key,
        kdf_iterations: options.kdf_iterations.max(1),
        state: std::sync::Mutex::new(State {
            tokens,
            sessions: Default::default(),
            next_session: 0,
            next_session_object: crate::SESSION_OBJECT_BASE,
            next_client: 0,
        }),
    })
}

fn version() -> Version {
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    Version { major, minor }
}

impl Hsm {
    pub(crate) fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            serial: self.device.serial.clone(),
            model: self.device.model.clone(),
            manufacturer: MANUFACTURER.into(),
            firmware: version(),
            hardware: Version { major: 1, minor: 0 },
            slot_count: self.device.user_slots + 1,
        }
    }

    /// The Admin slot (the last one).
    pub fn admin_slot(&self) -> u64 {
        self.device.user_slots
    }

    pub(crate) fn check_slot(&self, slot: u64) -> Result<(), Rv> {
        if slot <= self.device.user_slots {
            Ok(())
        } else {
            Err(Rv::SlotIdInvalid)
        }
    }

    pub(crate) fn slot_info(&self, slot: u64) -> Result<SlotInfo, Rv> {
        self.check_slot(slot)?;
        let description = if slot == self.admin_slot() {
            format!("Tessera {} Admin slot", self.device.serial)
        } else {
            format!("Tessera {} slot {slot}", self.device.serial)
        };
        Ok(SlotInfo {
            description,
            manufacturer: MANUFACTURER.into(),
            flags: (ck::CKF_TOKEN_PRESENT | ck::CKF_HW_SLOT) as u64,
            hardware: Version { major: 1, minor: 0 },
            firmware: version(),
        })
    }

    pub(crate) fn token_info(&self, slot: u64) -> Result<TokenInfo, Rv> {
        self.check_slot(slot)?;
        let state = self.lock();
        let token = state.token(slot)?;
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
        let sessions = state.sessions.values().filter(|s| s.slot == slot);
        let (count, rw) = sessions.fold((0, 0), |(c, rw), s| (c + 1, rw + u64::from(s.read_write)));
        let label = if record.label.is_empty() {
            String::new()
        } else {
            String::from_utf8_lossy(&record.label)
                .trim_end()
                .to_string()
        };
        let model = if slot == self.admin_slot() {
            "Tessera Admin"
        } else {
            MODEL
        };
        Ok(TokenInfo {
            label,
            manufacturer: MANUFACTURER.into(),
            model: model.into(),
            serial: format!("{}{:02}", self.device.serial, slot),
            flags: flags as u64,
            session_count: count,
            rw_session_count: rw,
            max_session_count: MAX_SESSIONS,
            max_pin_len: MAX_PIN_LEN as u64,
            min_pin_len: MIN_PIN_LEN as u64,
            hardware: Version { major: 1, minor: 0 },
            firmware: version(),
            utc_time: crate::time::utc_time(crate::time::now()),
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
