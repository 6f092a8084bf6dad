//! The library side of the handshake given any device answer: refused, even when its trust
//! checks are told to pass (the key confirmation cannot be forged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_channel::{ExpectServerHello, Policy, ServerHello, PROTOCOL_VERSION};

type Answer = (bool, u16, u64, Vec<u8>, Vec<u8>, u8, Vec<Vec<u8>>, Vec<u8>, Vec<u8>, bool);

fuzz_target!(|input: Answer| {
    let (current, version, channel, ephemeral, nonce, policy, chain, signature, finished, trust) =
        input;
    let answer = ServerHello {
        version: if current { PROTOCOL_VERSION } else { version },
        channel,
        ephemeral,
        nonce,
        policy: Policy(policy),
        chain,
        signature,
        finished,
    };
    let (state, _hello) = ExpectServerHello::start("123", Policy(0)).unwrap();
    assert!(state.handle(&answer, |_| Ok::<(), ()>(()), |_, _, _| trust).is_err());
});
