//! A key two devices agree on for one exchange (a cluster's admission, a token's replication):
//! ephemeral X25519, then HKDF-SHA256 bound to the exchange's request and the answering
//! device's public key, with a label that names the exchange.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::SystemRandom;
use tessera_core::SecretBytes;

use crate::MasterKey;

/// Why no key was agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgreementError {
    /// The other device's public key is malformed.
    #[error("key agreement failed (a malformed public key)")]
    PublicKey,
    /// The random generator or the derivation failed.
    #[error("key generation or derivation failed")]
    Failed,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

/// A fresh X25519 key pair for one exchange: the private key and the public key's bytes.
pub fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), AgreementError> {
    let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
        .map_err(|_| AgreementError::Failed)?;
    let public = private
        .compute_public_key()
        .map_err(|_| AgreementError::Failed)?
        .as_ref()
        .to_vec();
    Ok((private, public))
}

/// The transport key of one exchange: the X25519 agreement of `private` with `peer_public`,
/// through HKDF-SHA256 salted with `request` and the answering device's `answer_public`, and
/// `label` as the info.
pub fn transport_key(
    private: EphemeralPrivateKey,
    peer_public: &[u8],
    request: &[u8],
    answer_public: &[u8],
    label: &[u8],
) -> Result<MasterKey, AgreementError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer_public),
        AgreementError::PublicKey,
        |shared| {
            let mut salt = request.to_vec();
            salt.extend_from_slice(answer_public);
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt);
            let info: &[&[u8]] = &[label];
            let mut out = SecretBytes::from_slice(&[0u8; 32]);
            salt.extract(shared)
                .expand(info, KeyLen)
                .and_then(|okm| okm.fill(out.expose_mut()))
                .map_err(|_| AgreementError::Failed)?;
            MasterKey::from_secret(out).map_err(|_| AgreementError::Failed)
        },
    )
}
