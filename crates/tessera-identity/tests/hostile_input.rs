//! Hostile certificates, driven by proptest (the stable-toolchain form of the fuzz target for
//! certificate parsing): arbitrary bytes and real certificates with bytes changed, through the
//! parser, the PEM reader and the chain verification the library runs on every handshake.
//! Nothing may panic, and a changed certificate is trusted only if what its issuer signed is
//! unchanged.

// Chains are written as array literals for readability.
#![allow(clippy::cloned_ref_to_slice_refs)]

use proptest::prelude::*;
use tessera_identity::inspect::{self, CertificateInfo};
use tessera_identity::issue::{self, Curve};
use tessera_identity::pem;
use tessera_identity::verify::verify_chain;

const SERIAL: &str = "4242424242";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An owner certificate and a PIC it signed (by the same tools `ctident` uses).
fn chain() -> (Vec<u8>, Vec<u8>) {
    let pok = issue::generate_key(Curve::P384).unwrap();
    let poc = issue::owner_certificate(&pok, Curve::P384, "1000000001").unwrap();
    let pik = issue::generate_key(Curve::P256).unwrap();
    let request = issue::identity_request(&pik, Curve::P256, SERIAL).unwrap();
    let (pic, _) = issue::sign_request(&request, &pok, Curve::P384, &poc).unwrap();
    (poc, pic)
}

fn tbs(der: &[u8]) -> Option<Vec<u8>> {
    inspect::parse(der)
        .ok()
        .map(|c| c.tbs_certificate.as_ref().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(
        der in proptest::collection::vec(any::<u8>(), 0..600),
        more in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = inspect::parse(&der);
        let _ = CertificateInfo::parse(&der);
        let _ = inspect::fingerprint(&der);
        let _ = pem::decode_all(&der, "CERTIFICATE");
        prop_assert!(verify_chain(&[der.clone()], &[more.clone()], SERIAL, now()).is_err());
        prop_assert!(verify_chain(&[der, more], &[], SERIAL, now()).is_err());
    }

    #[test]
    fn changed_certificates_are_trusted_only_if_the_signed_part_is_intact(
        index in any::<usize>(),
        flip in 1u8..=255,
        in_pic in any::<bool>(),
    ) {
        let (poc, pic) = chain();
        prop_assert!(verify_chain(&[pic.clone()], &[poc.clone()], SERIAL, now()).is_ok());
        let (mut changed_pic, mut changed_poc) = (pic.clone(), poc.clone());
        let target = if in_pic { &mut changed_pic } else { &mut changed_poc };
        let at = index % target.len();
        target[at] ^= flip;
        if verify_chain(&[changed_pic.clone()], &[changed_poc.clone()], SERIAL, now()).is_ok() {
            prop_assert_eq!(tbs(&changed_pic), tbs(&pic));
        }
    }

    #[test]
    fn pem_text_of_any_shape_is_read_or_refused_without_panic(text in ".{0,400}") {
        let wrapped = format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n");
        let _ = pem::decode_all(wrapped.as_bytes(), "CERTIFICATE");
        let _ = pem::decode_all(text.as_bytes(), "CERTIFICATE");
    }
}
