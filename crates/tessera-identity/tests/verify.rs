//! Every refusal of the chain verification, with crafted certificates.
// Chains are written as array literals for readability.
#![allow(clippy::cloned_ref_to_slice_refs)]

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tessera_identity::issue::{self, Curve};
use tessera_identity::verify::{verify_chain, Refusal};

const SERIAL: &str = "4242424242";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn name(kind: &str, serial: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tessera");
    name.push(DnType::CommonName, format!("Tessera {kind} {serial}"));
    name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial);
    name
}

struct Owner {
    key: KeyPair,
    params: CertificateParams,
    der: Vec<u8>,
}

fn owner(usages: Vec<KeyUsagePurpose>) -> Owner {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Owner", "1000000001");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = usages;
    params.not_after = time::OffsetDateTime::now_utc() + days(5 * 365);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Owner { key, params, der }
}

/// A PIC for `serial`, signed by `owner`, with `edit` applied to its parameters.
fn pic(owner: &Owner, serial: &str, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = name("HSM", serial);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    edit(&mut params);
    let issuer = Issuer::from_params(&owner.params, &owner.key);
    params.signed_by(&key, &issuer).unwrap().der().to_vec()
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

#[test]
fn a_pic_signed_by_a_trusted_owner_is_trusted_and_so_is_a_trusted_pic_alone() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let device = pic(&owner, SERIAL, |_| {});
    let trusted = verify_chain(
        &[device.clone(), owner.der.clone()],
        &[owner.der.clone()],
        SERIAL,
        now(),
    )
    .unwrap();
    assert_eq!(
        trusted.anchor,
        tessera_identity::inspect::fingerprint(&owner.der)
    );
    // Trusting a PIC trusts that device alone, whoever signed it.
    assert!(verify_chain(&[device.clone()], &[device.clone()], SERIAL, now()).is_ok());
    let other = pic(&owner, "4343434343", |_| {});
    assert!(matches!(
        verify_chain(&[other], &[device], "4343434343", now()),
        Err(Refusal::UnknownIssuer { .. })
    ));
}

#[test]
fn unknown_issuer() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let stranger = self::owner(vec![KeyUsagePurpose::KeyCertSign]);
    let device = pic(&owner, SERIAL, |_| {});
    // Sending the owner along does not make it trusted: no trust on first use.
    let refusal =
        verify_chain(&[device.clone(), owner.der.clone()], &[], SERIAL, now()).unwrap_err();
    assert!(
        matches!(refusal, Refusal::UnknownIssuer { .. }),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("not trusted"));
    // A trust store with another owner of a different name.
    let mut renamed = CertificateParams::default();
    renamed.distinguished_name = name("Owner", "9");
    renamed.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    renamed.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let unrelated = renamed.self_signed(&stranger.key).unwrap().der().to_vec();
    assert!(matches!(
        verify_chain(&[device], &[unrelated], SERIAL, now()),
        Err(Refusal::UnknownIssuer { .. })
    ));
}

#[test]
fn expired_and_not_yet_valid() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let old = pic(&owner, SERIAL, |p| {
        p.not_before = time::OffsetDateTime::now_utc() - days(20);
        p.not_after = time::OffsetDateTime::now_utc() - days(10);
    });
    let expired = verify_chain(&[old], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(matches!(expired, Refusal::Expired { .. }), "{expired}");
    // The date as a date, not seconds since 1970.
    let shown = expired.to_string();
    let year = (time::OffsetDateTime::now_utc() - days(10))
        .year()
        .to_string();
    assert!(
        shown.contains(&format!("expired on {year}-")) && shown.ends_with(" UTC"),
        "{shown}"
    );
    assert!(!shown.contains("seconds"), "{shown}");
    assert_eq!(
        tessera_identity::verify::utc(1_795_740_245),
        "2026-11-27 00:44:05 UTC"
    );
    let future = pic(&owner, SERIAL, |p| {
        p.not_before = time::OffsetDateTime::now_utc() + days(10);
        p.not_after = time::OffsetDateTime::now_utc() + days(20);
    });
    let refusal = verify_chain(&[future], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(matches!(refusal, Refusal::NotYetValid { .. }), "{refusal}");
    assert!(refusal.to_string().contains(" UTC"), "{refusal}");
    // An expired owner certificate fails the chain too.
    let device = pic(&owner, SERIAL, |_| {});
    let later = now() + 7 * 365 * 86_400;
    assert!(matches!(
        verify_chain(&[device], &[owner.der.clone()], SERIAL, later),
        Err(Refusal::Expired { .. })
    ));
}

#[test]
fn wrong_serial() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let device = pic(&owner, "1111111111", |_| {});
    let refusal = verify_chain(&[device], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::WrongSerial {
            expected: SERIAL.into(),
            found: Some("1111111111".into())
        }
    );
    assert!(refusal.to_string().contains("4242424242"));
}

#[test]
fn wrong_key_usage() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let no_signing = pic(&owner, SERIAL, |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
    });
    let refusal = verify_chain(&[no_signing], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::WrongKeyUsage {
                needed: "digital signatures",
                ..
            }
        ),
        "{refusal}"
    );
    // An owner that may not sign certificates.
    let weak_owner = self::owner(vec![KeyUsagePurpose::DigitalSignature]);
    let device = pic(&weak_owner, SERIAL, |_| {});
    let refusal = verify_chain(&[device], &[weak_owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::WrongKeyUsage {
                needed: "signing certificates",
                ..
            }
        ),
        "{refusal}"
    );
}

#[test]
fn bad_signature() {
    let owner = owner(vec![KeyUsagePurpose::KeyCertSign]);
    // An impostor owner with the same name but another key signs a PIC.
    let impostor = self::owner(vec![KeyUsagePurpose::KeyCertSign]);
    let forged = pic(&impostor, SERIAL, |_| {});
    let refusal = verify_chain(&[forged], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(matches!(refusal, Refusal::BadSignature { .. }), "{refusal}");
    // A genuine PIC with one byte of its signature changed.
    let mut altered = pic(&owner, SERIAL, |_| {});
    let last = altered.len() - 3;
    altered[last] ^= 0x55;
    let refusal = verify_chain(&[altered], &[owner.der.clone()], SERIAL, now()).unwrap_err();
    assert!(
        matches!(
            refusal,
            Refusal::BadSignature { .. } | Refusal::Malformed { .. }
        ),
        "{refusal}"
    );
    assert!(matches!(
        verify_chain(&[b"junk".to_vec()], &[], SERIAL, now()),
        Err(Refusal::Malformed { index: 0, .. })
    ));
    assert_eq!(
        verify_chain(&[], &[], SERIAL, now()),
        Err(Refusal::EmptyChain)
    );
}

#[test]
fn the_production_certificates_verify() {
    for curve in [Curve::P521, Curve::P384, Curve::P256] {
        let pok = issue::generate_key(curve).unwrap();
        let poc = issue::owner_certificate(&pok, curve, "1").unwrap();
        let pik = issue::generate_key(Curve::P521).unwrap();
        let request = issue::identity_request(&pik, Curve::P521, SERIAL).unwrap();
        let (device, _) = issue::sign_request(&request, &pok, curve, &poc).unwrap();
        verify_chain(&[device, poc.clone()], &[poc], SERIAL, now()).unwrap();
        let alone = issue::self_signed_identity(&pik, Curve::P521, SERIAL).unwrap();
        verify_chain(&[alone.clone()], &[alone], SERIAL, now()).unwrap();
    }
}

/// Two anchors of one name (an owner that changed its key keeps its name): the one whose key
/// signed the PIC must itself be fit to, whatever the other is. Here a stale owner certificate
/// that may not sign certificates signed the PIC, and a valid owner of the same name is listed
/// first: refused (before, the first one's fitness was checked and any one's signature taken).
#[test]
fn only_a_fit_anchor_of_that_name_may_have_signed() {
    let current = owner(vec![KeyUsagePurpose::KeyCertSign]);
    let stale = owner(vec![KeyUsagePurpose::DigitalSignature]);
    let signed_by_stale = pic(&stale, SERIAL, |_| {});
    let anchors = [current.der.clone(), stale.der.clone()];
    assert!(verify_chain(&[signed_by_stale], &anchors, SERIAL, now()).is_err());
    // The current owner's PIC is trusted through the same anchors, in either order.
    let signed_by_current = pic(&current, SERIAL, |_| {});
    for anchors in [anchors.clone(), [stale.der.clone(), current.der.clone()]] {
        verify_chain(&[signed_by_current.clone()], &anchors, SERIAL, now()).unwrap();
    }
}
