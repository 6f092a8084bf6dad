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

fn expand(prk: &Prk, label: &str, len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    let info = [label.as_bytes()];
    // Lengths here are far below HKDF's limit of 255 hash lengths, so expansion cannot fail.
    if let Ok(okm) = prk.expand(&info, Len(len)) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// Secrets of a finished key agreement.
pub(crate) struct HandshakeKeys {
    pub(crate) client_finished: Zeroizing<Vec<u8>>,
    pub(crate) device_finished: Zeroizing<Vec<u8>>,
    pub(crate) traffic: Zeroizing<Vec<u8>>,
}

/// HKDF-Extract(salt = transcript hash, IKM = shared secret), then the labelled secrets.
pub(crate) fn handshake(shared: &[u8], transcript: &[u8]) -> HandshakeKeys {
    let prk = Salt::new(HKDF_SHA384, transcript).extract(shared);
    HandshakeKeys {
        client_finished: expand(&prk, "tessera sm v1 client finished", 48),
        device_finished: expand(&prk, "tessera sm v1 device finished", 48),
        traffic: expand(&prk, "tessera sm v1 traffic 0", 48),
    }
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
fn aes_key(prk: &Prk, direction: &str, usage: &str) -> LessSafeKey {
    let bytes = expand(prk, &format!("tessera sm v1 {direction} {usage}"), 32);
    // A 32-byte key is always a valid AES-256 key.
    UnboundKey::new(&AES_256_GCM, &bytes)
        .map(LessSafeKey::new)
        .unwrap_or_else(|_| {
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0u8; 32]).expect("static key"))
        })
}

fn direction(prk: &Prk, name: &'static str) -> DirectionKeys {
    DirectionKeys {
        aead: aes_key(prk, name, "enc"),
        mac: OnceLock::new(),
        name,
    }
}

impl Generation {
    /// The keys of a traffic secret for `side`.
    pub(crate) fn new(secret: Zeroizing<Vec<u8>>, side: Side) -> Generation {
        let prk = Prk::new_less_safe(HKDF_SHA384, &secret);
        let to_device = direction(&prk, "to-device");
        let to_client = direction(&prk, "to-client");
        let (send, receive) = match side {
            Side::Client => (to_device, to_client),
            Side::Device => (to_client, to_device),
        };
        let next = expand(&prk, "tessera sm v1 next generation", 48);
        Generation {
            send,
            receive,
            traffic: secret,
            secret: next,
        }
    }

    /// The MAC key of the sending direction.
    pub(crate) fn send_mac(&self) -> &LessSafeKey {
        self.mac(&self.send)
    }

    /// The MAC key of the receiving direction.
    pub(crate) fn receive_mac(&self) -> &LessSafeKey {
        self.mac(&self.receive)
    }

    fn mac<'a>(&self, keys: &'a DirectionKeys) -> &'a LessSafeKey {
        keys.mac.get_or_init(|| {
            let prk = Prk::new_less_safe(HKDF_SHA384, &self.traffic);
            aes_key(&prk, keys.name, "mac")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_mirror_each_other_and_generations_differ() {
        let keys = handshake(b"shared secret", b"transcript");
        let client = Generation::new(keys.traffic.clone(), Side::Client);
        let device = Generation::new(keys.traffic.clone(), Side::Device);
        use aws_lc_rs::aead::{Aad, Nonce};
        let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
        let tag = client
            .send_mac()
            .seal_in_place_separate_tag(nonce(), Aad::from(b"m"), &mut [])
            .unwrap();
        let opens = |key: &LessSafeKey| {
            let mut tagged = tag.as_ref().to_vec();
            key.open_in_place(nonce(), Aad::from(b"m"), &mut tagged)
                .is_ok()
        };
        assert!(opens(device.receive_mac()));
        assert!(!opens(device.send_mac()), "directions have separate keys");
        assert!(
            !opens(&device.receive.aead),
            "signing and encryption have separate keys"
        );
        let next = Generation::new(client.secret.clone(), Side::Device);
        assert!(!opens(next.receive_mac()), "a new generation has new keys");
        assert_ne!(keys.client_finished, keys.device_finished);
    }
}
