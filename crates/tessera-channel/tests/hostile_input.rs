//! Hostile input against secure messaging, driven by proptest (the stable-toolchain form of the
//! fuzz targets): the handshake state machine on both sides given arbitrary messages, the record
//! layer given arbitrary and tampered records, and the postcard decoders of every handshake
//! message. None may panic; nothing forged or altered may be accepted.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use proptest::prelude::*;
use tessera_channel::{
    Channel, ClientFinished, ClientHello, Direction, ExpectServerHello, Policy, Protection, Record,
    RecordHeader, ServerHello, ServerStart,
};

/// A device key; the "certificate" in these tests is the raw public key, as in the unit tests.
fn device_key() -> EcdsaKeyPair {
    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap()
}

fn sign(key: &EcdsaKeyPair, message: &[u8]) -> Result<Vec<u8>, String> {
    key.sign(&SystemRandom::new(), message)
        .map(|s| s.as_ref().to_vec())
        .map_err(|e| e.to_string())
}

fn verify(pic: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pic)
        .verify(message, signature)
        .is_ok()
}

/// An open pair of channels: (library end, device end).
fn pair() -> (Channel, Channel) {
    let key = device_key();
    let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
    let chain = vec![key.public_key().as_ref().to_vec()];
    let (waiting, answer) =
        ServerStart::respond(&hello, 7, Policy(0), chain, |h| sign(&key, h)).unwrap();
    let (client, finished) = state.handle(&answer, |_| Ok::<(), ()>(()), verify).unwrap();
    (client, waiting.handle(&finished).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn client_hello() -> impl Strategy<Value = ClientHello> {
    (any::<u16>(), bytes(80), bytes(80), any::<u8>(), ".{0,40}").prop_map(
        |(version, ephemeral, nonce, policy, serial)| ClientHello {
            version,
            ephemeral,
            nonce,
            policy: Policy(policy),
            serial,
        },
    )
}

fn server_hello() -> impl Strategy<Value = ServerHello> {
    (
        (
            any::<u16>(),
            any::<u64>(),
            bytes(80),
            bytes(80),
            any::<u8>(),
        ),
        proptest::collection::vec(bytes(200), 0..3),
        bytes(120),
        bytes(80),
    )
        .prop_map(
            |((version, channel, ephemeral, nonce, policy), chain, signature, finished)| {
                ServerHello {
                    version,
                    channel,
                    ephemeral,
                    nonce,
                    policy: Policy(policy),
                    chain,
                    signature,
                    finished,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The device answers any client hello or refuses it, and then accepts no key confirmation
    /// that was not computed from the handshake.
    #[test]
    fn the_device_side_survives_any_hello_and_forged_confirmations(
        hello in client_hello(),
        finished in bytes(80),
        channel in any::<u64>(),
    ) {
        let key = device_key();
        let chain = vec![key.public_key().as_ref().to_vec()];
        let answered = ServerStart::respond(&hello, 9, Policy(0), chain, |h| sign(&key, h));
        if let Ok((waiting, _answer)) = answered {
            let forged = ClientFinished { channel, finished };
            prop_assert!(waiting.handle(&forged).is_err());
        }
    }

    /// The library refuses any device answer it did not get from a real device, even when its
    /// trust checks are told to pass.
    #[test]
    fn the_library_side_refuses_any_forged_answer(
        answer in server_hello(),
        trusting in any::<bool>(),
    ) {
        let (state, _hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let outcome = state.handle(&answer, |_| Ok::<(), ()>(()), |_, _, _| trusting);
        prop_assert!(outcome.is_err());
    }

    /// A real device answer with any one byte changed is refused.
    #[test]
    fn a_tampered_device_answer_is_refused(
        field in 0usize..4,
        index in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let key = device_key();
        let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
        let chain = vec![key.public_key().as_ref().to_vec()];
        let (_waiting, mut answer) =
            ServerStart::respond(&hello, 7, Policy(0), chain, |h| sign(&key, h)).unwrap();
        let target = match field {
            0 => &mut answer.ephemeral,
            1 => &mut answer.nonce,
            2 => &mut answer.signature,
            _ => &mut answer.finished,
        };
        let at = index % target.len();
        target[at] ^= flip;
        prop_assert!(state.handle(&answer, |_| Ok::<(), ()>(()), verify).is_err());
    }

    /// Arbitrary records never open, and never panic; a refused record kills the channel.
    #[test]
    fn arbitrary_records_are_refused(
        channel in prop_oneof![Just(7u64), any::<u64>()],
        to_device in any::<bool>(),
        sequence in prop_oneof![Just(0u64), any::<u64>()],
        generation in prop_oneof![Just(0u32), any::<u32>()],
        encrypted in any::<bool>(),
        body in bytes(300),
        mac in bytes(40),
    ) {
        let (_client, mut device) = pair();
        let record = Record {
            header: RecordHeader {
                channel,
                direction: if to_device { Direction::ToDevice } else { Direction::ToClient },
                sequence,
                generation,
                protection: if encrypted { Protection::Encrypted } else { Protection::Signed },
            },
            body,
            mac,
        };
        prop_assert!(device.open(&record).is_err());
        prop_assert!(!device.is_alive());
    }

    /// A genuine record with any byte of its body or tag changed is refused.
    #[test]
    fn tampered_records_are_refused(
        message in bytes(200),
        encrypted in any::<bool>(),
        in_mac in any::<bool>(),
        index in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let (mut client, mut device) = pair();
        let protection = if encrypted { Protection::Encrypted } else { Protection::Signed };
        let mut record = client.seal(&message, protection).unwrap();
        let target = if in_mac && !record.mac.is_empty() {
            &mut record.mac
        } else {
            &mut record.body
        };
        prop_assume!(!target.is_empty());
        let at = index % target.len();
        target[at] ^= flip;
        prop_assert!(device.open(&record).is_err());
    }

    /// The decoders of every handshake message and of records take any bytes without panicking.
    #[test]
    fn handshake_and_record_decoders_take_any_bytes(input in bytes(600)) {
        let _ = postcard::from_bytes::<ClientHello>(&input);
        let _ = postcard::from_bytes::<ServerHello>(&input);
        let _ = postcard::from_bytes::<ClientFinished>(&input);
        if let Some(record) = Record::decode(&input) {
            let mut again = Vec::new();
            record.encode_into(&mut again);
            prop_assert_eq!(again, input);
        }
    }
}
