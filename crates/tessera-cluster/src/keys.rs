//! The cluster's keys by epoch. Every value in etcd starts with the epoch of the key that
//! sealed it (4 bytes, big-endian), then the AES-256-GCM seal of the value under that epoch's
//! value key, bound to the value's key name and the epoch. A rotation (a member removed) makes
//! a new epoch: the members still trusted get its key, every value is sealed again under it,
//! and the old epoch is retired, after which its values no longer open.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_core::SecretBytes;
use tessera_store::MasterKey;

use crate::ClusterError;

/// A cluster key and its epoch: what a member holds.
pub struct ClusterKey {
    /// 0 at the founding, one more at each rotation.
    pub epoch: u32,
    /// The key.
    pub key: MasterKey,
}

impl ClusterKey {
    /// A copy.
    pub fn duplicate(&self) -> ClusterKey {
        ClusterKey {
            epoch: self.epoch,
            key: self.key.duplicate(),
        }
    }
}

/// The epoch a sealed value was sealed under.
pub fn epoch_of(sealed: &[u8]) -> Option<u32> {
    sealed
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
}

fn aad(name: &[u8], epoch: u32) -> Vec<u8> {
    let mut aad = name.to_vec();
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// The value keys of the epochs a member can open, and the one it seals under.
pub(crate) struct Keyring {
    current: u32,
    keys: BTreeMap<u32, MasterKey>,
}

fn value_key(key: &MasterKey) -> Result<MasterKey, ClusterError> {
    MasterKey::from_secret(key.derive(b"tessera cluster values v1"))
        .map_err(|e| ClusterError::Refused(e.to_string()))
}

impl Keyring {
    pub(crate) fn new(key: &ClusterKey) -> Result<Keyring, ClusterError> {
        let mut keys = BTreeMap::new();
        keys.insert(key.epoch, value_key(&key.key)?);
        Ok(Keyring {
            current: key.epoch,
            keys,
        })
    }

    /// The epoch this member seals under.
    pub(crate) fn current(&self) -> u32 {
        self.current
    }

    /// Adds an epoch's key; seals under it from now on if it is the newest.
    pub(crate) fn advance(&mut self, key: &ClusterKey) -> Result<(), ClusterError> {
        self.keys.insert(key.epoch, value_key(&key.key)?);
        self.current = self.current.max(key.epoch);
        Ok(())
    }

    /// Forgets the epochs before `epoch`: their values no longer open.
    pub(crate) fn retire_before(&mut self, epoch: u32) {
        self.keys.retain(|e, _| *e >= epoch);
    }

    pub(crate) fn seal<T: Serialize>(
        &self,
        name: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, ClusterError> {
        let plain = SecretBytes::encode(value).map_err(|e| ClusterError::Refused(e.to_string()))?;
        self.seal_plain(name, plain.expose())
    }

    /// Seals `plain` (a value's encoding) under the current epoch.
    pub(crate) fn seal_plain(&self, name: &[u8], plain: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| ClusterError::Refused("no key for the current epoch".into()))?;
        let sealed = key
            .seal(&aad(name, self.current), plain)
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        let mut out = self.current.to_be_bytes().to_vec();
        out.extend(sealed);
        Ok(out)
    }

    /// Seals a value of the token state with its version: one more than the version of the
    /// value it replaces. A node refuses a value older than the one it holds, so that an older
    /// sealed value put back in etcd (by whoever can write there) undoes nothing.
    pub(crate) fn seal_versioned<T: Serialize>(
        &self,
        name: &[u8],
        value: &T,
        version: u64,
    ) -> Result<Vec<u8>, ClusterError> {
        let encoded =
            SecretBytes::encode(value).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let mut plain = SecretBytes::with_capacity(8 + encoded.len());
        plain.extend_from_slice(&version.to_be_bytes());
        plain.extend_from_slice(encoded.expose());
        self.seal_plain(name, plain.expose())
    }

    /// Opens what [`Keyring::seal_versioned`] sealed: the version and the value.
    pub(crate) fn open_versioned<T: DeserializeOwned>(
        &self,
        name: &[u8],
        sealed: &[u8],
    ) -> Result<(u64, T), ClusterError> {
        let what = String::from_utf8_lossy(name).into_owned();
        let plain = self.open_plain(name, sealed)?;
        let (version, encoded) = plain
            .expose()
            .split_at_checked(8)
            .ok_or_else(|| ClusterError::Refused(format!("{what} has no version")))?;
        let version = u64::from_be_bytes(version.try_into().unwrap_or([0xff; 8]));
        let value = tessera_store::decode(encoded, &what)
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok((version, value))
    }

    /// Whether this member has the key of the epoch `sealed` was sealed under.
    pub(crate) fn can_open(&self, sealed: &[u8]) -> bool {
        epoch_of(sealed).is_some_and(|e| self.keys.contains_key(&e))
    }

    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        name: &[u8],
        sealed: &[u8],
    ) -> Result<T, ClusterError> {
        let what = String::from_utf8_lossy(name).into_owned();
        let plain = self.open_plain(name, sealed)?;
        tessera_store::decode(plain.expose(), &what)
            .map_err(|e| ClusterError::Refused(e.to_string()))
    }

    /// Opens a sealed value into its encoding.
    pub(crate) fn open_plain(
        &self,
        name: &[u8],
        sealed: &[u8],
    ) -> Result<SecretBytes, ClusterError> {
        let what = String::from_utf8_lossy(name).into_owned();
        let epoch = epoch_of(sealed)
            .ok_or_else(|| ClusterError::Refused(format!("{what} is too short to be sealed")))?;
        let key = self.keys.get(&epoch).ok_or_else(|| {
            ClusterError::Refused(format!(
                "{what} is sealed under the key of epoch {epoch}, which this node does not hold"
            ))
        })?;
        key.open(&aad(name, epoch), &sealed[4..]).map_err(|_| {
            ClusterError::Refused(format!("{what} does not open with the cluster key"))
        })
    }
}
