//! The device side of the handshake given any client hello, then any key confirmation: it
//! answers or refuses, and accepts no confirmation that was not computed from the handshake.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use libfuzzer_sys::fuzz_target;
use tessera_channel::{ClientFinished, ClientHello, Policy, ServerStart, PROTOCOL_VERSION};

fn key() -> &'static EcdsaKeyPair {
    static KEY: OnceLock<EcdsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap())
}

fuzz_target!(|input: (bool, u16, Vec<u8>, Vec<u8>, u8, String, u64, Vec<u8>)| {
    let (current, version, ephemeral, nonce, policy, serial, channel, finished) = input;
    let hello = ClientHello {
        // Mostly the version this build speaks, so that the fuzzer gets past the first check.
        version: if current { PROTOCOL_VERSION } else { version },
        ephemeral,
        nonce,
        policy: Policy(policy),
        serial,
    };
    let chain = vec![key().public_key().as_ref().to_vec()];
    let answered = ServerStart::respond(&hello, 9, Policy(0), chain, |h| {
        key()
            .sign(&SystemRandom::new(), h)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| e.to_string())
    });
    if let Ok((waiting, _answer)) = answered {
        assert!(waiting.handle(&ClientFinished { channel, finished }).is_err());
    }
});
