//! The handshake (SIGMA-I with ephemeral X25519, and ML-KEM-768 beside it), one type per
//! state.
//!
//! ```text
//!  library                                            device
//!  ClientHello{version, eC, nonceC = rC | ekC, policyC, serial} ──▶
//!                                                     channel id; eD; (ct, kK) = Encaps(ekC)
//!                                                     nonceD = rD | ct, policyD, chain
//!                                                     H = SHA-384(label | ClientHello | ServerHello core)
//!                                                     sig = Sign_PIK(H)
//!                                                     keys = HKDF(salt H, kK | X25519(eD, eC))
//!                  ◀── ServerHello{..., chain, sig, finishedD = HMAC(kD, H | sig)}
//!  verify chain (trust store, dialled serial), sig; kK = Decaps(ct); finishedD
//!  ClientFinished{finishedC = HMAC(kC, H | sig | finishedD)} ──▶
//!                                                     verify finishedC: channel open
//! ```
//!
//! The hybrid part is TLS's `X25519MLKEM768` construction: the ML-KEM shared secret first,
//! then the X25519 one, both into the key schedule, the encapsulation key and the ciphertext
//! in the transcript. They travel after the 32 random bytes of each side's nonce, which a
//! device or library of the classical protocol reads as a longer nonce and hashes like any: a
//! classical device answers an offer with a classical hello (a 32-byte nonce) that it signed
//! over the offer, so the library can tell it from a relay, which can neither remove the offer
//! nor the ciphertext without breaking the signature.
//!
//! Both policies are in `H`, so a change in transit breaks the signature and the key
//! confirmation; the effective policy is their union.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{self, Side};
use crate::{Channel, Policy};

/// The secure-messaging protocol version: 2 since a record's message ends with the length of a
/// bulk payload at its start (`message_parts`).
pub const PROTOCOL_VERSION: u16 = 2;
const LABEL: &[u8] = b"tessera secure messaging v1";
/// The random part of a nonce.
const RANDOM_LEN: usize = 32;
/// An ML-KEM-768 encapsulation key (FIPS 203), the library's hybrid offer.
const OFFER_LEN: usize = 1184;
/// An ML-KEM-768 ciphertext, the device's answer to the offer.
const CIPHERTEXT_LEN: usize = 1088;

/// The library's opening message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Protocol version.
    pub version: u16,
    /// Ephemeral X25519 public key.
    #[serde(with = "tessera_core::bytes")]
    pub ephemeral: Vec<u8>,
    /// 32 random bytes.
    #[serde(with = "tessera_core::bytes")]
    pub nonce: Vec<u8>,
    /// What the client requires (SMPR).
    pub policy: Policy,
    /// The serial number the client dialled.
    pub serial: String,
}

/// The device's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// Protocol version.
    pub version: u16,
    /// The channel id.
    pub channel: u64,
    /// Ephemeral X25519 public key.
    #[serde(with = "tessera_core::bytes")]
    pub ephemeral: Vec<u8>,
    /// 32 random bytes.
    #[serde(with = "tessera_core::bytes")]
    pub nonce: Vec<u8>,
    /// What the device requires (its flags).
    pub policy: Policy,
    /// The device's PIC and its issuers (DER).
    #[serde(with = "tessera_core::bytes::list")]
    pub chain: Vec<Vec<u8>>,
    /// The PIK's signature over the transcript hash.
    #[serde(with = "tessera_core::bytes")]
    pub signature: Vec<u8>,
    /// The device's key confirmation.
    #[serde(with = "tessera_core::bytes")]
    pub finished: Vec<u8>,
}

/// The library's key confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFinished {
    /// The channel id.
    pub channel: u64,
    /// HMAC over the transcript, the signature and the device's confirmation.
    #[serde(with = "tessera_core::bytes")]
    pub finished: Vec<u8>,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks another version.
    #[error("the peer speaks secure messaging version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The device presented no certificate.
    #[error("the device presented no certificate")]
    NoCertificate,
    /// The device's signature over the transcript does not verify.
    #[error("the device's signature over the handshake does not verify (altered in transit?)")]
    BadSignature,
    /// A key confirmation failed: the two sides did not see the same handshake.
    #[error("key confirmation failed: the handshake was altered in transit")]
    BadConfirmation,
    /// Key agreement failed (a malformed public key).
    #[error("key agreement failed")]
    KeyAgreement,
    /// A policy requires a hybrid (post-quantum) channel and the other side offered none.
    #[error(
        "a post-quantum hybrid channel is required (device flag q or SMPR letter Q) and the \
         other side offers only the classical one: upgrade it, or drop the requirement"
    )]
    HybridRequired,
    /// A nonce of a length neither protocol uses.
    #[error("the handshake carried a malformed nonce ({0} bytes)")]
    Nonce(usize),
    /// The random generator failed.
    #[error("the random generator failed")]
    Random,
    /// The channel keys could not be derived (no channel is made without them).
    #[error("{0}")]
    KeyDerivation(#[from] crate::keys::KeyDerivationError),
}

/// Why a handshake step that asks its caller failed: the handshake's own checks, or the
/// caller's answer (`E`: why the library's chain check refused the device, or why the device's
/// signer could not sign), kept as the caller's own type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError<E> {
    /// The handshake's own checks failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The caller refused (the chain) or failed (the signature).
    #[error("{0}")]
    Caller(E),
}

fn random32() -> Result<Vec<u8>, HandshakeError> {
    let mut bytes = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| HandshakeError::Random)?;
    Ok(bytes)
}

fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), HandshakeError> {
    let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
        .map_err(|_| HandshakeError::Random)?;
    let public = private
        .compute_public_key()
        .map_err(|_| HandshakeError::KeyAgreement)?;
    Ok((private, public.as_ref().to_vec()))
}

/// SHA-384 of the label, the client hello and the server hello without signature and finished.
fn transcript(client: &ClientHello, server: &ServerHello) -> Vec<u8> {
    let core = (
        server.version,
        server.channel,
        &server.ephemeral,
        &server.nonce,
        server.policy,
        &server.chain,
    );
    let mut context = digest::Context::new(&digest::SHA384);
    context.update(LABEL);
    // Both are plain structs of sized fields, which postcard always encodes into a `Vec`.
    let encode = "postcard encodes a hello into a Vec";
    for part in [
        postcard::to_stdvec(client).expect(encode),
        postcard::to_stdvec(&core).expect(encode),
    ] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(&part);
    }
    context.finish().as_ref().to_vec()
}

/// The handshake keys from the X25519 agreement and, for a hybrid channel, the ML-KEM shared
/// secret before it (as `X25519MLKEM768` orders them).
fn agree(
    private: EphemeralPrivateKey,
    peer: &[u8],
    kem: Option<&[u8]>,
    hash: &[u8],
) -> Result<keys::HandshakeKeys, HandshakeError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer),
        HandshakeError::KeyAgreement,
        |shared| {
            let mut secret = Zeroizing::new(Vec::with_capacity(64));
            secret.extend_from_slice(kem.unwrap_or_default());
            secret.extend_from_slice(shared);
            Ok(keys::handshake(&secret, hash)?)
        },
    )
}

/// A nonce's parts: its 32 random bytes and what follows them (the hybrid offer or answer).
fn split_nonce(nonce: &[u8]) -> Result<&[u8], HandshakeError> {
    nonce
        .get(RANDOM_LEN..)
        .ok_or(HandshakeError::Nonce(nonce.len()))
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context.sign().as_ref().to_vec()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The library, waiting for the device's answer.
pub struct ExpectServerHello {
    private: EphemeralPrivateKey,
    /// The ML-KEM-768 key of the hybrid offer (`None`: a classical hello).
    kem: Option<DecapsulationKey>,
    hello: ClientHello,
}

impl ExpectServerHello {
    /// Starts a handshake with the device of `serial`, requiring `policy`, offering the hybrid
    /// channel.
    pub fn start(
        serial: &str,
        policy: Policy,
    ) -> Result<(ExpectServerHello, ClientHello), HandshakeError> {
        Self::start_with(serial, policy, true)
    }

    /// As [`ExpectServerHello::start`], with the hybrid offer (`hybrid`) or without it, as a
    /// library of the classical protocol starts (for measurements and compatibility tests).
    pub fn start_with(
        serial: &str,
        policy: Policy,
        hybrid: bool,
    ) -> Result<(ExpectServerHello, ClientHello), HandshakeError> {
        let (private, public) = ephemeral()?;
        let mut nonce = random32()?;
        let kem = match hybrid {
            true => {
                let key =
                    DecapsulationKey::generate(&ML_KEM_768).map_err(|_| HandshakeError::Random)?;
                let offer = key
                    .encapsulation_key()
                    .and_then(|k| k.key_bytes())
                    .map_err(|_| HandshakeError::KeyAgreement)?;
                nonce.extend_from_slice(offer.as_ref());
                Some(key)
            }
            false => None,
        };
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            ephemeral: public,
            nonce,
            policy,
            serial: serial.into(),
        };
        Ok((
            ExpectServerHello {
                private,
                kem,
                hello: hello.clone(),
            },
            hello,
        ))
    }

    /// Checks the device's answer: the chain (`verify_chain`, which applies the trust store and
    /// the dialled serial), the signature by the PIC's key (`verify_signature(pic, message,
    /// signature)`), the hybrid part, and the key confirmation. Returns the open channel and
    /// the message that confirms the keys to the device.
    pub fn handle<E>(
        self,
        server: &ServerHello,
        verify_chain: impl FnOnce(&[Vec<u8>]) -> Result<(), E>,
        verify_signature: impl FnOnce(&[u8], &[u8], &[u8]) -> bool,
    ) -> Result<(Channel, ClientFinished), StepError<E>> {
        if server.version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(server.version).into());
        }
        verify_chain(&server.chain).map_err(StepError::Caller)?;
        let hash = transcript(&self.hello, server);
        let pic = server.chain.first().ok_or(HandshakeError::NoCertificate)?;
        if !verify_signature(pic, &hash, &server.signature) {
            return Err(HandshakeError::BadSignature.into());
        }
        // The device signed our hello, offer included: a classical answer to it comes from a
        // device of the classical protocol, not from a relay.
        let policy = self.hello.policy.union(server.policy);
        let answer = split_nonce(&server.nonce)?;
        let kem_secret = match (&self.kem, answer.len()) {
            (_, 0) if policy.requires_hybrid() => return Err(HandshakeError::HybridRequired.into()),
            (_, 0) => None,
            (Some(key), CIPHERTEXT_LEN) => Some(
                key.decapsulate(Ciphertext::from(answer))
                    .map_err(|_| HandshakeError::KeyAgreement)?,
            ),
            _ => return Err(HandshakeError::Nonce(server.nonce.len()).into()),
        };
        let kem = kem_secret.as_ref().map(|s| s.as_ref());
        let keys = agree(self.private, &server.ephemeral, kem, &hash)?;
        let expected = mac(&keys.device_finished, &[&hash, &server.signature]);
        if !same(&expected, &server.finished) {
            return Err(HandshakeError::BadConfirmation.into());
        }
        let finished = mac(
            &keys.client_finished,
            &[&hash, &server.signature, &server.finished],
        );
        let channel = Channel::new(server.channel, Side::Client, policy, keys.traffic)
            .map_err(HandshakeError::from)?
            .with_hybrid(kem.is_some());
        Ok((
            channel,
            ClientFinished {
                channel: server.channel,
                finished,
            },
        ))
    }
}

/// The device, answering a client hello.
pub struct ServerStart;

impl ServerStart {
    /// Answers `client` as channel `channel`, requiring `policy`, presenting `chain` and signing
    /// the transcript hash with `sign` (the PIK). A hybrid offer is always taken; a hello
    /// without one gets the classical channel unless `policy` requires hybrid.
    pub fn respond<E>(
        client: &ClientHello,
        channel: u64,
        policy: Policy,
        chain: Vec<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<(ExpectClientFinished, ServerHello), StepError<E>> {
        Self::respond_with(client, channel, policy, chain, sign, true)
    }

    /// As [`ServerStart::respond`]; with `take_offer` false, as a device of the classical
    /// protocol answers (a hybrid offer read as a longer nonce), for compatibility tests.
    pub(crate) fn respond_with<E>(
        client: &ClientHello,
        channel: u64,
        policy: Policy,
        chain: Vec<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
        take_offer: bool,
    ) -> Result<(ExpectClientFinished, ServerHello), StepError<E>> {
        if client.version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(client.version).into());
        }
        let offer = match take_offer {
            true => split_nonce(&client.nonce)?,
            false => &[],
        };
        let effective = client.policy.union(policy);
        let mut nonce = random32()?;
        let kem_secret = match offer.len() {
            0 if effective.requires_hybrid() => return Err(HandshakeError::HybridRequired.into()),
            0 => None,
            OFFER_LEN => {
                let key = EncapsulationKey::new(&ML_KEM_768, offer)
                    .map_err(|_| HandshakeError::KeyAgreement)?;
                let (ciphertext, secret) = key
                    .encapsulate()
                    .map_err(|_| HandshakeError::KeyAgreement)?;
                nonce.extend_from_slice(ciphertext.as_ref());
                Some(secret)
            }
            _ => return Err(HandshakeError::Nonce(client.nonce.len()).into()),
        };
        let (private, public) = ephemeral()?;
        let mut hello = ServerHello {
            version: PROTOCOL_VERSION,
            channel,
            ephemeral: public,
            nonce,
            policy,
            chain,
            signature: Vec::new(),
            finished: Vec::new(),
        };
        let hash = transcript(client, &hello);
        hello.signature = sign(&hash).map_err(StepError::Caller)?;
        let kem = kem_secret.as_ref().map(|s| s.as_ref());
        let keys = agree(private, &client.ephemeral, kem, &hash)?;
        hello.finished = mac(&keys.device_finished, &[&hash, &hello.signature]);
        let expected = Zeroizing::new(mac(
            &keys.client_finished,
            &[&hash, &hello.signature, &hello.finished],
        ));
        let channel = Channel::new(channel, Side::Device, effective, keys.traffic)
            .map_err(HandshakeError::from)?
            .with_hybrid(kem.is_some());
        Ok((ExpectClientFinished { channel, expected }, hello))
    }
}

/// The device, waiting for the library's key confirmation.
pub struct ExpectClientFinished {
    channel: Channel,
    expected: Zeroizing<Vec<u8>>,
}

impl ExpectClientFinished {
    /// The channel id being set up.
    pub fn channel_id(&self) -> u64 {
        self.channel.id()
    }

    /// Checks the library's confirmation; the channel is open when it matches.
    pub fn handle(self, finished: &ClientFinished) -> Result<Channel, HandshakeError> {
        if finished.channel != self.channel.id() || !same(&finished.finished, &self.expected) {
            return Err(HandshakeError::BadConfirmation);
        }
        Ok(self.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protection, RecordError};
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey as Verifier, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING,
    };

    struct Device {
        key: EcdsaKeyPair,
    }

    impl Device {
        fn new() -> Device {
            Device {
                key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
            }
        }

        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
            self.key
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
        }

        /// The "certificate" in these tests is the raw public key.
        fn chain(&self) -> Vec<Vec<u8>> {
            vec![self.key.public_key().as_ref().to_vec()]
        }
    }

    fn verify(pic: &[u8], message: &[u8], signature: &[u8]) -> bool {
        Verifier::new(&ECDSA_P256_SHA256_ASN1, pic)
            .verify(message, signature)
            .is_ok()
    }

    fn open(client_policy: Policy, device_policy: Policy) -> (Channel, Channel) {
        let device = Device::new();
        let (state, hello) = ExpectServerHello::start("123", client_policy).unwrap();
        let (waiting, answer) =
            ServerStart::respond(&hello, 7, device_policy, device.chain(), |h| device.sign(h))
                .unwrap();
        let (client, finished) = state.handle(&answer, |_| Ok::<(), ()>(()), verify).unwrap();
        let server = waiting.handle(&finished).unwrap();
        (client, server)
    }

    /// A handshake whose messages `relay` may change: the client's hello before the device
    /// reads it, the device's hello before the client reads it.
    struct Relay {
        hello: fn(&mut ClientHello),
        answer: fn(&mut ServerHello),
    }

    const PASS: Relay = Relay {
        hello: |_| {},
        answer: |_| {},
    };

    fn handshake(
        hybrid_client: bool,
        classical_device: bool,
        client_policy: Policy,
        device_policy: Policy,
        relay: Relay,
    ) -> Result<(Channel, Channel), HandshakeError> {
        let device = Device::new();
        let (state, mut hello) =
            ExpectServerHello::start_with("123", client_policy, hybrid_client).unwrap();
        (relay.hello)(&mut hello);
        let respond = ServerStart::respond_with(
            &hello,
            7,
            device_policy,
            device.chain(),
            |h| device.sign(h),
            !classical_device,
        );
        let (waiting, mut answer) = respond.map_err(|e| match e {
            StepError::Handshake(e) => e,
            StepError::Caller(_) => panic!("signing failed"),
        })?;
        (relay.answer)(&mut answer);
        let (client, finished) = state
            .handle(&answer, |_| Ok::<(), ()>(()), verify)
            .map_err(|e| match e {
                StepError::Handshake(e) => e,
                StepError::Caller(()) => panic!("chain refused"),
            })?;
        Ok((client, waiting.handle(&finished)?))
    }

    #[test]
    fn the_hybrid_channel_is_the_default_and_each_old_side_still_gets_a_classical_one() {
        let none = Policy(0);
        let (mut client, mut server) = handshake(true, false, none, none, PASS).unwrap();
        assert!(client.is_hybrid() && server.is_hybrid());
        let record = client.seal(b"C_Login 1234", Protection::Encrypted).unwrap();
        assert_eq!(server.open(&record).unwrap().0.as_slice(), b"C_Login 1234");
        // A library of the classical protocol with a new device, and a new library with a
        // device of the classical protocol (which reads the offer as a longer nonce).
        for (hybrid_client, classical_device) in [(false, false), (true, true)] {
            let (mut client, mut server) =
                handshake(hybrid_client, classical_device, none, none, PASS).unwrap();
            assert!(!client.is_hybrid() && !server.is_hybrid());
            let record = client.seal(b"message", Protection::Encrypted).unwrap();
            assert_eq!(server.open(&record).unwrap().0.as_slice(), b"message");
        }
    }

    #[test]
    fn a_required_hybrid_channel_is_never_classical() {
        let none = Policy(0);
        let q = Policy::from_device_flags(tessera_core::flags::HYBRID_CHANNEL);
        assert!(q.requires_hybrid() && q.requires_channel());
        let smpr = Policy::from_smpr("Q").unwrap();
        assert_eq!(smpr.letters(), "TQ");
        // The device (flag q) refuses a classical hello; the library (SMPR Q) refuses a
        // classical device.
        assert_eq!(
            handshake(false, false, none, q, PASS).err(),
            Some(HandshakeError::HybridRequired)
        );
        assert_eq!(
            handshake(true, true, smpr, none, PASS).err(),
            Some(HandshakeError::HybridRequired)
        );
        let (client, _) = handshake(true, false, smpr, q, PASS).unwrap();
        assert!(client.is_hybrid());
    }

    /// A relay between two hybrid ends cannot make them settle for X25519 alone: the offer and
    /// the answer are in the signed transcript.
    #[test]
    fn a_relay_cannot_strip_the_hybrid_offer_or_its_answer() {
        let none = Policy(0);
        let strip_offer = Relay {
            hello: |hello| hello.nonce.truncate(RANDOM_LEN),
            answer: |_| {},
        };
        let strip_answer = Relay {
            hello: |_| {},
            answer: |answer| answer.nonce.truncate(RANDOM_LEN),
        };
        let swap_answer = Relay {
            hello: |_| {},
            answer: |answer| {
                let other = DecapsulationKey::generate(&ML_KEM_768).unwrap();
                let (ciphertext, _) = other.encapsulation_key().unwrap().encapsulate().unwrap();
                answer.nonce.truncate(RANDOM_LEN);
                answer.nonce.extend_from_slice(ciphertext.as_ref());
            },
        };
        let garble_offer = Relay {
            hello: |hello| hello.nonce.truncate(RANDOM_LEN + 10),
            answer: |_| {},
        };
        for relay in [strip_offer, strip_answer, swap_answer] {
            assert_eq!(
                handshake(true, false, none, none, relay).err(),
                Some(HandshakeError::BadSignature)
            );
        }
        assert_eq!(
            handshake(true, false, none, none, garble_offer).err(),
            Some(HandshakeError::Nonce(RANDOM_LEN + 10))
        );
    }

    #[test]
    fn a_channel_carries_messages_both_ways_with_the_union_of_policies() {
        let (mut client, mut server) = open(
            Policy(Policy::SIGN_REPLIES),
            Policy(Policy::ENCRYPT_SECRETS),
        );
        assert_eq!(client.policy(), server.policy());
        assert_eq!(
            client.policy().0,
            Policy::SIGN_REPLIES | Policy::ENCRYPT_SECRETS
        );
        let record = client.seal(b"C_Login 1234", Protection::Encrypted).unwrap();
        assert!(!record.body.windows(4).any(|w| w == b"1234"), "encrypted");
        assert_eq!(server.open(&record).unwrap().0.as_slice(), b"C_Login 1234");
        let reply = server.seal(b"ok", Protection::Signed).unwrap();
        assert_eq!(client.open(&reply).unwrap().0.as_slice(), b"ok");
        // Rollover on both sides at the same point.
        client.rekey().unwrap();
        server.rekey().unwrap();
        let record = client.seal(b"after", Protection::Signed).unwrap();
        assert_eq!(record.header.generation, 1);
        assert_eq!(server.open(&record).unwrap().0.as_slice(), b"after");
    }

    #[test]
    fn tampering_replay_reordering_and_redirection_kill_the_channel() {
        type Case = Box<dyn Fn(&mut Channel, &mut Channel) -> RecordError>;
        let cases: Vec<(&str, Case)> = vec![
            (
                "flip",
                Box::new(|c, s| {
                    let mut r = c.seal(b"message", Protection::Signed).unwrap();
                    r.body[0] ^= 1;
                    s.open(&r).unwrap_err()
                }),
            ),
            (
                "flip encrypted",
                Box::new(|c, s| {
                    let mut r = c.seal(b"message", Protection::Encrypted).unwrap();
                    r.body[2] ^= 1;
                    s.open(&r).unwrap_err()
                }),
            ),
            (
                "truncate",
                Box::new(|c, s| {
                    let mut r = c.seal(b"message", Protection::Encrypted).unwrap();
                    r.body.truncate(3);
                    s.open(&r).unwrap_err()
                }),
            ),
            (
                "header",
                Box::new(|c, s| {
                    let mut r = c.seal(b"message", Protection::Encrypted).unwrap();
                    r.header.protection = Protection::Signed;
                    s.open(&r).unwrap_err()
                }),
            ),
            (
                "replay",
                Box::new(|c, s| {
                    let r = c.seal(b"message", Protection::Signed).unwrap();
                    s.open(&r).unwrap();
                    s.open(&r).unwrap_err()
                }),
            ),
            (
                "reorder",
                Box::new(|c, s| {
                    let first = c.seal(b"1", Protection::Signed).unwrap();
                    let second = c.seal(b"2", Protection::Signed).unwrap();
                    let error = s.open(&second).unwrap_err();
                    assert!(s.open(&first).is_err(), "dead after the failure");
                    error
                }),
            ),
            (
                "reflect",
                Box::new(|c, _s| {
                    let r = c.seal(b"message", Protection::Signed).unwrap();
                    c.open(&r).unwrap_err()
                }),
            ),
        ];
        for (name, case) in cases {
            let (mut client, mut server) = open(Policy(0), Policy(0));
            let error = case(&mut client, &mut server);
            assert!(
                !server.is_alive() || !client.is_alive(),
                "{name}: channel still alive after {error}"
            );
        }
        // A record moved to another channel.
        let (mut a, _) = open(Policy(0), Policy(0));
        let (_, mut b) = open(Policy(0), Policy(0));
        let record = a.seal(b"m", Protection::Signed).unwrap();
        assert!(matches!(b.open(&record), Err(RecordError::Authentication(_))) || !b.is_alive());
    }

    #[test]
    fn a_downgraded_or_substituted_handshake_is_detected() {
        let device = Device::new();
        // The relay lowers the client's policy on the way to the device.
        let (state, hello) = ExpectServerHello::start(
            "123",
            Policy(Policy::ENCRYPT_REQUESTS | Policy::REQUIRE_CHANNEL),
        )
        .unwrap();
        let mut lowered = hello.clone();
        lowered.policy = Policy(0);
        let (_, answer) =
            ServerStart::respond(&lowered, 1, Policy(0), device.chain(), |h| device.sign(h))
                .unwrap();
        assert_eq!(
            state
                .handle(&answer, |_| Ok::<(), ()>(()), verify)
                .unwrap_err(),
            StepError::Handshake(HandshakeError::BadSignature)
        );
        // The relay lowers the device's policy on the way back.
        let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let (_, mut answer) = ServerStart::respond(
            &hello,
            1,
            Policy(Policy::ENCRYPT_SECRETS),
            device.chain(),
            |h| device.sign(h),
        )
        .unwrap();
        answer.policy = Policy(0);
        assert_eq!(
            state
                .handle(&answer, |_| Ok::<(), ()>(()), verify)
                .unwrap_err(),
            StepError::Handshake(HandshakeError::BadSignature)
        );
        // A wrong client confirmation.
        let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let (waiting, answer) =
            ServerStart::respond(&hello, 1, Policy(0), device.chain(), |h| device.sign(h)).unwrap();
        let (_, mut finished) = state.handle(&answer, |_| Ok::<(), ()>(()), verify).unwrap();
        finished.finished[0] ^= 1;
        assert!(matches!(
            waiting.handle(&finished),
            Err(HandshakeError::BadConfirmation)
        ));
        // An untrusted chain is refused with the verifier's own reason.
        let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let (_, answer) =
            ServerStart::respond(&hello, 1, Policy(0), device.chain(), |h| device.sign(h)).unwrap();
        let error = state
            .handle(&answer, |_| Err("unknown issuer"), verify)
            .unwrap_err();
        assert_eq!(error, StepError::Caller("unknown issuer"));
        // So is a device that presents no certificate at all.
        let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let (_, answer) =
            ServerStart::respond(&hello, 1, Policy(0), Vec::new(), |h| device.sign(h)).unwrap();
        let error = state.handle(&answer, |_| Ok::<(), ()>(()), verify);
        assert_eq!(
            error.unwrap_err(),
            StepError::Handshake(HandshakeError::NoCertificate)
        );
        // A device that cannot sign answers nothing; the signer's reason is the error.
        let (_, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let refused = ServerStart::respond(&hello, 1, Policy(0), device.chain(), |_| Err("no key"));
        assert_eq!(refused.err(), Some(StepError::Caller("no key")));
    }
}
