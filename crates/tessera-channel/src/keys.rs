//! The key schedule: HKDF-SHA-384 from the X25519 secret, salted with the transcript hash;
//! separate encryption and MAC keys for each direction; a new generation of keys for rollover.

use std::sync::OnceLock;

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf::{self, Prk, Salt, HKDF_SHA384};
use zeroize::Zeroizing;

/// Which end of the channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The PKCS#11 library.
    Client,
    /// The HSM.
    Device,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Key derivation failed: no key was made, and no channel may use one in its place (a zero
/// key would be a key an attacker knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("channel key derivation failed (HKDF-SHA-384)")]
pub struct KeyDerivationError;

/// HKDF-Expand (aws-lc's) of `len` bytes labelled `label`. The lengths used here are far below
/// HKDF's limit of 255 hash lengths, but a failure is an error, never a key of zeros.
fn expand(prk: &Prk, label: &str, len: usize) -> Result<Zeroizing<Vec<u8>>, KeyDerivationError> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    let info = [label.as_bytes()];
    prk.expand(&info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| KeyDerivationError)?;
    Ok(out)
}

/// Secrets of a finished key agreement.
pub(crate) struct HandshakeKeys {
    pub(crate) client_finished: Zeroizing<Vec<u8>>,
    pub(crate) device_finished: Zeroizing<Vec<u8>>,
    pub(crate) traffic: Zeroizing<Vec<u8>>,
}

/// HKDF-Extract(salt = transcript hash, IKM = shared secret), then the labelled secrets.
pub(crate) fn handshake(
    shared: &[u8],
    transcript: &[u8],
) -> Result<HandshakeKeys, KeyDerivationError> {
    let prk = Salt::new(HKDF_SHA384, transcript).extract(shared);
    Ok(HandshakeKeys {
        client_finished: expand(&prk, "tessera sm v1 client finished", 48)?,
        device_finished: expand(&prk, "tessera sm v1 device finished", 48)?,
        traffic: expand(&prk, "tessera sm v1 traffic 0", 48)?,
    })
}

/// The keys of one direction: AES-256-GCM for encryption, and a separate AES-256 key for
/// signing-only records (GMAC: GCM with the message as associated data, a standard MAC that
/// runs at AES-GCM speed). The MAC key is made when first needed: a channel whose policy
/// encrypts every message never signs one, and an idle channel then holds two keys, not four
/// (an AES-GCM key with its tables is about 640 bytes in aws-lc).
pub(crate) struct DirectionKeys {
    pub(crate) aead: LessSafeKey,
    mac: OnceLock<LessSafeKey>,
    /// "to-device" or "to-client": the direction's part of the key labels.
    name: &'static str,
}

/// The keys of one generation: what this side sends with and what it receives with.
pub(crate) struct Generation {
    pub(crate) send: DirectionKeys,
    pub(crate) receive: DirectionKeys,
    /// This generation's traffic secret, for the MAC keys when they are first needed (the
    /// keys made from it are in memory anyway, and so is the next generation's secret).
    traffic: Zeroizing<Vec<u8>>,
    /// The traffic secret the next generation is derived from.
    pub(crate) secret: Zeroizing<Vec<u8>>,
}

/// The AES-256 key labelled `tessera sm v1 <direction> <use>`.
fn aes_key(prk: &Prk, direction: &str, usage: &str) -> Result<LessSafeKey, KeyDerivationError> {
    let bytes = expand(prk, &format!("tessera sm v1 {direction} {usage}"), 32)?;
    UnboundKey::new(&AES_256_GCM, &bytes)
        .map(LessSafeKey::new)
        .map_err(|_| KeyDerivationError)
}

fn direction(prk: &Prk, name: &'static str) -> Result<DirectionKeys, KeyDerivationError> {
    Ok(DirectionKeys {
        aead: aes_key(prk, name, "enc")?,
        mac: OnceLock::new(),
        name,
    })
}

impl Generation {
    /// The keys of a traffic secret for `side`.
    pub(crate) fn new(
        secret: Zeroizing<Vec<u8>>,
        side: Side,
    ) -> Result<Generation, KeyDerivationError> {
        let prk = Prk::new_less_safe(HKDF_SHA384, &secret);
        let to_device = direction(&prk, "to-device")?;
        let to_client = direction(&prk, "to-client")?;
        let (send, receive) = match side {
            Side::Client => (to_device, to_client),
            Side::Device => (to_client, to_device),
        };
        let next = expand(&prk, "tessera sm v1 next generation", 48)?;
        Ok(Generation {
            send,
            receive,
            traffic: secret,
            secret: next,
        })
    }

    /// The MAC key of the sending direction.
    pub(crate) fn send_mac(&self) -> Result<&LessSafeKey, KeyDerivationError> {
        self.mac(&self.send)
    }

    /// The MAC key of the receiving direction.
    pub(crate) fn receive_mac(&self) -> Result<&LessSafeKey, KeyDerivationError> {
        self.mac(&self.receive)
    }

    fn mac<'a>(&self, keys: &'a DirectionKeys) -> Result<&'a LessSafeKey, KeyDerivationError> {
        if let Some(key) = keys.mac.get() {
            return Ok(key);
        }
        // Derived outside `get_or_init`, so that a failure is returned rather than stored; two
        // threads deriving at once make the same key, and the first one stored is kept.
        let prk = Prk::new_less_safe(HKDF_SHA384, &self.traffic);
        let key = aes_key(&prk, keys.name, "mac")?;
        Ok(keys.mac.get_or_init(|| key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_mirror_each_other_and_generations_differ() {
        let keys = handshake(b"shared secret", b"transcript").unwrap();
        let client = Generation::new(keys.traffic.clone(), Side::Client).unwrap();
        let device = Generation::new(keys.traffic.clone(), Side::Device).unwrap();
        use aws_lc_rs::aead::{Aad, Nonce};
        let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
        let tag = client
            .send_mac()
            .unwrap()
            .seal_in_place_separate_tag(nonce(), Aad::from(b"m"), &mut [])
            .unwrap();
        let opens = |key: &LessSafeKey| {
            let mut tagged = tag.as_ref().to_vec();
            key.open_in_place(nonce(), Aad::from(b"m"), &mut tagged)
                .is_ok()
        };
        assert!(opens(device.receive_mac().unwrap()));
        assert!(
            !opens(device.send_mac().unwrap()),
            "directions have separate keys"
        );
        assert!(
            !opens(&device.receive.aead),
            "signing and encryption have separate keys"
        );
        let next = Generation::new(client.secret.clone(), Side::Device).unwrap();
        assert!(
            !opens(next.receive_mac().unwrap()),
            "a new generation has new keys"
        );
        assert_ne!(keys.client_finished, keys.device_finished);
    }

    /// An expansion HKDF refuses (longer than 255 hash lengths) is an error, not a key of
    /// zeros that both ends (and an attacker) would agree on.
    #[test]
    fn a_failed_expansion_is_an_error_not_a_zero_key() {
        let prk = Prk::new_less_safe(HKDF_SHA384, &[7u8; 48]);
        assert_eq!(expand(&prk, "label", 48).unwrap().len(), 48);
        assert_eq!(expand(&prk, "label", 255 * 48 + 1), Err(KeyDerivationError));
    }
}
