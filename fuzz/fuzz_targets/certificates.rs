//! Certificate parsing, PEM reading and chain verification given any bytes: refused without a
//! panic, and never trusted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_identity::inspect::{self, CertificateInfo};
use tessera_identity::pem;
use tessera_identity::verify::verify_chain;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (der, more) = input;
    let _ = inspect::parse(&der);
    let _ = CertificateInfo::parse(&der);
    let _ = inspect::fingerprint(&der);
    let _ = pem::decode_all(&der, "CERTIFICATE");
    let now = 1_800_000_000;
    assert!(verify_chain(&[der.clone()], &[more.clone()], "4242424242", now).is_err());
    assert!(verify_chain(&[der, more], &[], "4242424242", now).is_err());
});
