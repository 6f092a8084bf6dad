//! The handshake (SIGMA-I with ephemeral X25519), one type per state.
//!
//! ```text
//!  library                                            device
//!  ClientHello{version, eC, nonceC, policyC, serial} ──▶
//!                                                     channel id; eD, nonceD, policyD, chain
//!                                                     H = SHA-384(label | ClientHello | ServerHello core)
//!                                                     sig = Sign_PIK(H)
//!                                                     keys = HKDF(salt H, X25519(eD, eC))
//!                  ◀── ServerHello{..., chain, sig, finishedD = HMAC(kD, H | sig)}
//!  verify chain (trust store, dialled serial), sig, finishedD
//!  ClientFinished{finishedC = HMAC(kC, H | sig | finishedD)} ──▶
//!                                                     verify finishedC: channel open
//! ```
//!
//! Both policies are in `H`, so a change in transit breaks the signature and the key
//! confirmation; the effective policy is their union.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{self, Side};
use crate::{Channel, Policy};

/// The secure-messaging protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
const LABEL: &[u8] = b"tessera secure messaging v1";

/// The library's opening message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Protocol version.
    pub version: u16,
    /// Ephemeral X25519 public key.
    pub ephemeral: Vec<u8>,
    /// 32 random bytes.
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
    pub ephemeral: Vec<u8>,
    /// 32 random bytes.
    pub nonce: Vec<u8>,
    /// What the device requires (its flags).
    pub policy: Policy,
    /// The device's PIC and its issuers (DER).
    pub chain: Vec<Vec<u8>>,
    /// The PIK's signature over the transcript hash.
    pub signature: Vec<u8>,
    /// The device's key confirmation.
    pub finished: Vec<u8>,
}

/// The library's key confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFinished {
    /// The channel id.
    pub channel: u64,
    /// HMAC over the transcript, the signature and the device's confirmation.
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

fn agree(
    private: EphemeralPrivateKey,
    peer: &[u8],
    hash: &[u8],
) -> Result<keys::HandshakeKeys, HandshakeError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer),
        HandshakeError::KeyAgreement,
        |shared| Ok(keys::handshake(shared, hash)?),
    )
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
    hello: ClientHello,
}

impl ExpectServerHello {
    /// Starts a handshake with the device of `serial`, requiring `policy`.
    pub fn start(
        serial: &str,
        policy: Policy,
    ) -> Result<(ExpectServerHello, ClientHello), HandshakeError> {
        let (private, public) = ephemeral()?;
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            ephemeral: public,
            nonce: random32()?,
            policy,
            serial: serial.into(),
        };
        Ok((
            ExpectServerHello {
                private,
                hello: hello.clone(),
            },
            hello,
        ))
    }

    /// Checks the device's answer: the chain (`verify_chain`, which applies the trust store and
    /// the dialled serial), the signature by the PIC's key (`verify_signature(pic, message,
    /// signature)`), and the key confirmation. Returns the open channel and the message that
    /// confirms the keys to the device.
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
        let keys = agree(self.private, &server.ephemeral, &hash)?;
        let expected = mac(&keys.device_finished, &[&hash, &server.signature]);
        if !same(&expected, &server.finished) {
            return Err(HandshakeError::BadConfirmation.into());
        }
        let finished = mac(
            &keys.client_finished,
            &[&hash, &server.signature, &server.finished],
        );
        let policy = self.hello.policy.union(server.policy);
        let channel = Channel::new(server.channel, Side::Client, policy, keys.traffic)
            .map_err(HandshakeError::from)?;
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
    /// the transcript hash with `sign` (the PIK).
    pub fn respond<E>(
        client: &ClientHello,
        channel: u64,
        policy: Policy,
        chain: Vec<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<(ExpectClientFinished, ServerHello), StepError<E>> {
        if client.version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version(client.version).into());
        }
        let (private, public) = ephemeral()?;
        let mut hello = ServerHello {
            version: PROTOCOL_VERSION,
            channel,
            ephemeral: public,
            nonce: random32()?,
            policy,
            chain,
            signature: Vec::new(),
            finished: Vec::new(),
        };
        let hash = transcript(client, &hello);
        hello.signature = sign(&hash).map_err(StepError::Caller)?;
        let keys = agree(private, &client.ephemeral, &hash)?;
        hello.finished = mac(&keys.device_finished, &[&hash, &hello.signature]);
        let expected = Zeroizing::new(mac(
            &keys.client_finished,
            &[&hash, &hello.signature, &hello.finished],
        ));
        let effective = client.policy.union(policy);
        let channel = Channel::new(channel, Side::Device, effective, keys.traffic)
            .map_err(HandshakeError::from)?;
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
