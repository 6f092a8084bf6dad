//! How `device.key` is protected: the secret that unwraps it comes from outside the data
//! directory (a key file, a passphrase, a systemd credential) or, by default, from a constant
//! in the code ("embedded": the file's permissions are all that protect it).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_core::SecretBytes;
use tessera_store::{MasterKey, PinRecord};

use crate::error::HsmError;

/// Where the secret that unwraps `device.key` comes from. Chosen when the device is set up;
/// a device created with the embedded default can be moved to another protection by starting
/// it once with that option (the key is wrapped again; nothing else changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeviceKeyProtection {
    /// A constant in the code: zero configuration; whoever copies the data directory can
    /// unseal everything the device key seals.
    #[default]
    Embedded,
    /// A file of 32 or more random bytes outside the data directory, readable only by its
    /// owner (created with 32 random bytes if missing when the device key is set up).
    KeyFile(PathBuf),
    /// A passphrase read from this file (`-`: standard input) at every start.
    PassphraseFile(PathBuf),
    /// A passphrase given at this start (asked on the terminal); the same protection as
    /// [`DeviceKeyProtection::PassphraseFile`].
    Passphrase(std::sync::Arc<SecretBytes>),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME` (32 or more bytes).
    Credential(String),
}

const MAGIC: &[u8] = b"TESSERA DEVICE KEY v2\n";
const EMBEDDED: &[u8] = b"tessera device key";
const MIN_MATERIAL: usize = 32;

/// `device.key` in format 2: how it is protected and the wrapped key.
#[derive(Serialize, Deserialize)]
struct KeyFileV2 {
    /// 0 embedded, 1 key file, 2 passphrase, 3 credential.
    kind: u8,
    /// The key file's path or the credential's name, to name it in errors (not a secret).
    hint: String,
    record: PinRecord,
}

fn kind_of(protection: &DeviceKeyProtection) -> u8 {
    match protection {
        DeviceKeyProtection::Embedded => 0,
        DeviceKeyProtection::KeyFile(_) => 1,
        DeviceKeyProtection::PassphraseFile(_) | DeviceKeyProtection::Passphrase(_) => 2,
        DeviceKeyProtection::Credential(_) => 3,
    }
}

fn hint_of(protection: &DeviceKeyProtection) -> String {
    match protection {
        DeviceKeyProtection::KeyFile(path) => path.display().to_string(),
        DeviceKeyProtection::Credential(name) => name.clone(),
        _ => String::new(),
    }
}

/// How a protection is described in the start-up log line and in errors.
pub(crate) fn describe(kind: u8, hint: &str) -> String {
    match kind {
        0 => "embedded (no external secret: device.key is protected only by the data directory's permissions)".into(),
        1 => format!("the external key file {hint} (--device-key-file)"),
        2 => "a passphrase given at start (--device-key-passphrase-file)".into(),
        _ => format!("the systemd credential {hint} (--device-key-credential)"),
    }
}

fn option_of(kind: u8, hint: &str) -> String {
    match kind {
        0 => "no --device-key-* option".into(),
        1 => format!("--device-key-file {hint}"),
        2 => "--device-key-passphrase-file FILE".into(),
        _ => format!("--device-key-credential {hint}"),
    }
}

fn error(path: &Path, reason: impl std::fmt::Display) -> HsmError {
    HsmError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Refuses a secret file that group or others may read.
fn check_private(path: &Path) -> Result<(), HsmError> {
    let metadata = std::fs::metadata(path).map_err(|e| error(path, e))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(
            path,
            format!(
                "the device key secret may be read by group or others (mode {mode:04o}); \
                 run `chmod 600 {}` (or 400) and start again",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn read_material(path: &Path, what: &str) -> Result<SecretBytes, HsmError> {
    check_private(path)?;
    let bytes = SecretBytes::new(std::fs::read(path).map_err(|e| error(path, e))?);
    if bytes.len() < MIN_MATERIAL {
        return Err(error(
            path,
            format!(
                "{what} holds {} bytes; it needs at least {MIN_MATERIAL} random bytes \
                 (e.g. `head -c 32 /dev/urandom`)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn inside(path: &Path, dir: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    parent.starts_with(dir)
}

/// Writes `bytes` to `path` atomically, mode 0600 ([`tessera_config::atomic::write`]).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HsmError> {
    use tessera_config::atomic::{write, Mode};
    write(path, bytes, Mode::Exactly(0o600)).map_err(|e| error(path, e))
}

/// The secret (and KDF iterations) that wraps the device key under `protection`. `create`
/// allows making a missing key file.
fn unlock_secret(
    protection: &DeviceKeyProtection,
    data_dir: &Path,
    iterations: u32,
    create: bool,
) -> Result<(SecretBytes, u32), HsmError> {
    match protection {
        DeviceKeyProtection::Embedded => Ok((SecretBytes::from_slice(EMBEDDED), 1)),
        DeviceKeyProtection::KeyFile(path) => {
            if inside(path, data_dir) {
                return Err(error(
                    path,
                    "the device key file must be outside the data directory (whoever copies \
                     the directory would have it); name a file elsewhere",
                ));
            }
            if create && !path.exists() {
                let material = crate::crypto::random(MIN_MATERIAL)
                    .map_err(|_| error(path, "the random generator failed"))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| error(path, format!("cannot create the device key file: {e}")))?;
                file.write_all(&material)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| error(path, e))?;
                tracing::info!(path = %path.display(), "created the device key file: keep it (and a backup) away from the data directory");
            }
            let material = read_material(path, "the device key file")?;
            let secret = MasterKey::from_material(material.expose(), b"tessera device key file v2");
            Ok((secret.derive(b"unlock"), 1))
        }
        DeviceKeyProtection::Credential(name) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                HsmError::Options(format!(
                    "--device-key-credential {name}: $CREDENTIALS_DIRECTORY is not set; systemd \
                     sets it for a unit with `LoadCredentialEncrypted={name}:...` \
                     (see docs/operations.md)"
                ))
            })?;
            let path = Path::new(&dir).join(name);
            let material = read_material(&path, "the credential")?;
            let secret =
                MasterKey::from_material(material.expose(), b"tessera device key credential v2");
            Ok((secret.derive(b"unlock"), 1))
        }
        DeviceKeyProtection::PassphraseFile(path) => {
            let mut bytes = Vec::new();
            let read = if path.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes).map(|_| ())
            } else {
                check_private(path)?;
                std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
            };
            let bytes = SecretBytes::new(bytes);
            read.map_err(|e| error(path, e))?;
            Ok((
                passphrase(bytes).map_err(|e| error(path, e))?,
                iterations.max(1),
            ))
        }
        DeviceKeyProtection::Passphrase(given) => {
            let bytes =
                passphrase(given.duplicate()).map_err(|e| error(Path::new("the terminal"), e))?;
            Ok((bytes, iterations.max(1)))
        }
    }
}

/// A passphrase without its line end; at least 8 bytes.
fn passphrase(mut bytes: SecretBytes) -> Result<SecretBytes, &'static str> {
    while bytes
        .expose()
        .last()
        .is_some_and(|b| *b == b'\n' || *b == b'\r')
    {
        bytes.pop();
    }
    if bytes.len() < 8 {
        return Err("the device key passphrase is empty or shorter than 8 characters");
    }
    Ok(bytes)
}

/// The opened device key, how it is protected, and whether this start set up or changed that
/// protection (the rollback state then starts afresh).
pub(crate) struct Opened {
    pub key: MasterKey,
    pub description: String,
    pub changed: bool,
}

fn encode(protection: &DeviceKeyProtection, record: PinRecord) -> Vec<u8> {
    let file = KeyFileV2 {
        kind: kind_of(protection),
        hint: hint_of(protection),
        record,
    };
    let encoded = postcard::to_stdvec(&file).expect("postcard encodes a key file's fields");
    [MAGIC, &encoded].concat()
}

/// Opens (or creates) `data_dir/device.key` under `protection`. A format-1 file (wrapped under
/// the embedded constant) and an embedded format-2 file are wrapped again under `protection`.
pub(crate) fn open_device_key(
    data_dir: &Path,
    protection: &DeviceKeyProtection,
    iterations: u32,
) -> Result<Opened, HsmError> {
    let path = data_dir.join("device.key");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(error(&path, e)),
    };
    let Some(bytes) = bytes else {
        let key = MasterKey::generate().map_err(|e| error(&path, e))?;
        let (secret, rounds) = unlock_secret(protection, data_dir, iterations, true)?;
        let record = key
            .wrap(secret.expose(), rounds)
            .map_err(|e| error(&path, e))?;
        write_atomically(&path, &encode(protection, record))?;
        return Ok(Opened {
            key,
            description: describe(kind_of(protection), &hint_of(protection)),
            changed: true,
        });
    };
    let (kind, hint, record, old_format) = match bytes.strip_prefix(MAGIC) {
        Some(rest) => {
            let file: KeyFileV2 = postcard::from_bytes(rest)
                .map_err(|_| error(&path, "damaged (it does not decode)"))?;
            (file.kind, file.hint, file.record, false)
        }
        None => {
            let record = postcard::from_bytes::<PinRecord>(&bytes)
                .map_err(|_| error(&path, "damaged (it does not decode)"))?;
            (0, String::new(), record, true)
        }
    };
    let wanted = kind_of(protection);
    if kind != 0 && kind != wanted {
        return Err(error(
            &path,
            format!(
                "the device key is protected by {}; start tesserad with {} \
                 (a device key protected by an external secret cannot be opened without it)",
                describe(kind, &hint),
                option_of(kind, &hint)
            ),
        ));
    }
    let (secret, _) = if kind == 0 {
        (SecretBytes::from_slice(EMBEDDED), 1)
    } else {
        unlock_secret(protection, data_dir, iterations, false)?
    };
    let key = MasterKey::unwrap(&record, secret.expose()).map_err(|_| {
        error(
            &path,
            format!(
                "the device key does not open with {}: it is not the secret this device was \
                 set up with (a data directory copied without its key cannot be opened)",
                describe(kind, &hint)
            ),
        )
    })?;
    let changed = kind != wanted || old_format;
    if changed {
        let (secret, rounds) = unlock_secret(protection, data_dir, iterations, true)?;
        let record = key
            .wrap(secret.expose(), rounds)
            .map_err(|e| error(&path, e))?;
        write_atomically(&path, &encode(protection, record))?;
        if kind != wanted {
            tracing::warn!(
                from = %describe(kind, &hint),
                to = %describe(wanted, &hint_of(protection)),
                "the device key was wrapped again under a new protection"
            );
        }
    }
    Ok(Opened {
        key,
        description: describe(wanted, &hint_of(protection)),
        changed: kind != wanted,
    })
}

/// Where the rollback state lives: beside the key file when there is one (so that it is outside
/// the data directory too), else in the data directory.
pub(crate) fn state_path(data_dir: &Path, protection: &DeviceKeyProtection) -> PathBuf {
    match protection {
        DeviceKeyProtection::KeyFile(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".state");
            PathBuf::from(name)
        }
        _ => data_dir.join("device.state"),
    }
}
