//! The record layer given any record (decoded alone or lying in its frame), and the record and
//! handshake decoders given any bytes: nothing opens that the peer did not seal, a refused
//! record ends the channel, nothing panics.
#![no_main]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use libfuzzer_sys::fuzz_target;
use tessera_channel::{
    Channel, ClientFinished, ClientHello, ExpectServerHello, Policy, Record, ServerHello,
    ServerStart,
};

/// An open pair of channels: (library end, device end).
fn pair() -> (Channel, Channel) {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let (state, hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
    let chain = vec![key.public_key().as_ref().to_vec()];
    let (waiting, answer) = ServerStart::respond(&hello, 7, Policy(0), chain, |h| {
        key.sign(&SystemRandom::new(), h)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| e.to_string())
    })
    .unwrap();
    let verify = |pic: &[u8], message: &[u8], signature: &[u8]| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pic)
            .verify(message, signature)
            .is_ok()
    };
    let (client, finished) = state.handle(&answer, |_| Ok::<(), ()>(()), verify).unwrap();
    (client, waiting.handle(&finished).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<ClientHello>(data);
    let _ = postcard::from_bytes::<ServerHello>(data);
    let _ = postcard::from_bytes::<ClientFinished>(data);
    if let Some(record) = Record::decode(data) {
        let (_client, mut device) = pair();
        assert!(device.open(&record).is_err());
        assert!(!device.is_alive());
        // The same record where it would lie in a frame, opened there.
        let (_client, mut device) = pair();
        let mut body = record.body.clone();
        assert!(device.open_in_place(record.header, &mut body, &record.mac).is_err());
        assert!(!device.is_alive());
    }
});
