//! Making identity keys, certificates and requests (X.509 v3, with `rcgen` on `aws-lc-rs`).
//!
//! Certificates name the device serial number in the subject (`serialNumber`, OID 2.5.4.5, and
//! the common name), carry key usage and a subject key identifier, and are valid from a minute
//! ago for 10 years (PIC) or 20 years (POC). The POC is a CA limited to signing identity
//! certificates (path length 0).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// OID of the X.520 `serialNumber` attribute.
pub const SERIAL_NUMBER_OID: [u64; 4] = [2, 5, 4, 5];

/// The curve of an identity or owner key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256 with SHA-256.
    P256,
    /// NIST P-384 with SHA-384.
    P384,
    /// NIST P-521 with SHA-512 (the default, as in the product we model).
    P521,
}

impl Curve {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Curve::P521 => &rcgen::PKCS_ECDSA_P521_SHA512,
        }
    }

    /// Parses `p256`, `p384`, `p521` (any case, with or without a dash).
    pub fn parse(text: &str) -> Option<Curve> {
        match text.to_ascii_lowercase().replace('-', "").as_str() {
            "p256" => Some(Curve::P256),
            "p384" => Some(Curve::P384),
            "p521" => Some(Curve::P521),
            _ => None,
        }
    }

    /// The name shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

/// Why a key, certificate or request could not be made or used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Making or signing failed (ours).
    #[error("cannot make the certificate: {0}")]
    Generation(String),
    /// A request or certificate given to us is malformed (the caller's).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was given.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A request does not name a device serial number.
    #[error("the request's subject has no serialNumber; it is not a Tessera identity request")]
    NoSerial,
}

fn generation(e: rcgen::Error) -> IdentityError {
    IdentityError::Generation(e.to_string())
}

/// A new private key, as PKCS#8 DER (wiped on drop).
pub fn generate_key(curve: Curve) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let key = KeyPair::generate_for(curve.algorithm()).map_err(generation)?;
    Ok(Zeroizing::new(key.serialize_der()))
}

fn key_pair(pkcs8: &[u8], curve: Curve) -> Result<KeyPair, IdentityError> {
    let der = rustls_pki_der(pkcs8);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, curve.algorithm()).map_err(generation)
}

fn rustls_pki_der(pkcs8: &[u8]) -> rustls_pki_types::PrivatePkcs8KeyDer<'_> {
    rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8)
}

/// The SubjectPublicKeyInfo DER of a private key.
pub fn public_key(pkcs8: &[u8], curve: Curve) -> Result<Vec<u8>, IdentityError> {
    use rcgen::PublicKeyData;
    Ok(key_pair(pkcs8, curve)?.subject_public_key_info())
}

fn subject(kind: &str, serial: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tessera");
    name.push(DnType::CommonName, format!("Tessera {kind} {serial}"));
    name.push(DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()), serial);
    name
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Generation("random generator failed".into()))?;
    bytes[0] &= 0x7F;
    Ok(SerialNumber::from_slice(&bytes))
}

fn params(owner: bool, years: i64) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(365 * years);
    params.serial_number = Some(random_serial()?);
    if owner {
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    Ok(params)
}

fn owner_params(serial: &str) -> Result<CertificateParams, IdentityError> {
    let mut params = params(true, 20)?;
    params.distinguished_name = subject("Owner", serial);
    Ok(params)
}

/// A self-signed owner certificate (POC) for the POK of device `serial`.
pub fn owner_certificate(pok: &[u8], curve: Curve, serial: &str) -> Result<Vec<u8>, IdentityError> {
    let key = key_pair(pok, curve)?;
    let certificate = owner_params(serial)?
        .self_signed(&key)
        .map_err(generation)?;
    Ok(certificate.der().to_vec())
}

/// A self-signed identity certificate (PIC) for the PIK of device `serial`.
pub fn self_signed_identity(
    pik: &[u8],
    curve: Curve,
    serial: &str,
) -> Result<Vec<u8>, IdentityError> {
    let key = key_pair(pik, curve)?;
    let mut params = params(false, 10)?;
    params.distinguished_name = subject("HSM", serial);
    let certificate = params.self_signed(&key).map_err(generation)?;
    Ok(certificate.der().to_vec())
}

/// A certificate signing request for the PIK of device `serial` (the offline and online CA
/// flows).
pub fn identity_request(pik: &[u8], curve: Curve, serial: &str) -> Result<Vec<u8>, IdentityError> {
    let key = key_pair(pik, curve)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject("HSM", serial);
    let request = params.serialize_request(&key).map_err(generation)?;
    Ok(request.der().to_vec())
}

/// Signs an identity request with the POK whose certificate is `poc`, imposing our own
/// subject layout, validity, key usage and extensions. Returns the PIC and the serial number it
/// names. The request's own signature is checked first (proof of possession of the PIK).
pub fn sign_request(
    request: &[u8],
    pok: &[u8],
    pok_curve: Curve,
    poc: &[u8],
) -> Result<(Vec<u8>, String), IdentityError> {
    sign_request_with_validity(
        request,
        pok,
        pok_curve,
        poc,
        std::time::Duration::from_secs(10 * 365 * 86_400),
    )
}

/// As [`sign_request`], with the PIC valid from a minute ago for `valid_for` (a CA outside the
/// device may choose a shorter life).
pub fn sign_request_with_validity(
    request: &[u8],
    pok: &[u8],
    pok_curve: Curve,
    poc: &[u8],
    valid_for: std::time::Duration,
) -> Result<(Vec<u8>, String), IdentityError> {
    use x509_parser::prelude::FromDer;
    let malformed = |reason: String| IdentityError::Malformed {
        what: "certificate request",
        reason,
    };
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(request)
            .map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes".into()));
    }
    let info = &csr.certification_request_info;
    let proven = crate::verify::ecdsa_verify(
        &info.subject_pki,
        &csr.signature_algorithm.algorithm,
        info.raw,
        csr.signature_value.data.as_ref(),
    );
    if !proven {
        return Err(malformed(
            "its signature does not verify with the key it carries".into(),
        ));
    }
    let serial = info
        .subject
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .next()
        .and_then(|a| a.as_str().ok().map(str::to_string))
        .ok_or(IdentityError::NoSerial)?;
    let public = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| malformed(e.to_string()))?;
    let mut params = params(false, 10)?;
    params.not_after = time::OffsetDateTime::now_utc() + valid_for;
    params.distinguished_name = subject("HSM", &serial);
    params.use_authority_key_identifier_extension = true;
    let key = key_pair(pok, pok_curve)?;
    let issuer = Issuer::from_ca_cert_der(&rustls_pki_types::CertificateDer::from(poc), key)
        .map_err(|e| malformed(e.to_string()))?;
    let certificate = params.signed_by(&public, &issuer).map_err(generation)?;
    Ok((certificate.der().to_vec(), serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::CertificateInfo;

    #[test]
    fn self_signed_owner_and_identity_certificates() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let pok = generate_key(curve).unwrap();
            let poc = owner_certificate(&pok, curve, "1234567890").unwrap();
            let info = CertificateInfo::parse(&poc).unwrap();
            assert_eq!(info.serial_number.as_deref(), Some("1234567890"));
            assert!(info.is_ca && info.key_cert_sign && info.subject_key_identifier.is_some());
            let pik = generate_key(curve).unwrap();
            let request = identity_request(&pik, curve, "5555555555").unwrap();
            let (pic, serial) = sign_request(&request, &pok, curve, &poc)
                .unwrap_or_else(|e| panic!("{curve:?}: {e}"));
            assert_eq!(serial, "5555555555");
            let info = CertificateInfo::parse(&pic).unwrap();
            assert!(info.digital_signature && !info.is_ca && info.subject_key_identifier.is_some());
            assert_eq!(info.public_key, public_key(&pik, curve).unwrap());
            assert!(info.subject.contains("5555555555") && info.issuer.contains("Owner"));
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let pok = generate_key(Curve::P256).unwrap();
        let poc = owner_certificate(&pok, Curve::P256, "1").unwrap();
        assert!(matches!(
            sign_request(b"junk", &pok, Curve::P256, &poc),
            Err(IdentityError::Malformed { .. })
        ));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let no_serial = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        assert_eq!(
            sign_request(no_serial.der(), &pok, Curve::P256, &poc).unwrap_err(),
            IdentityError::NoSerial
        );
    }
}

/// Signs `message` with a private key (the PIK signing a handshake transcript): ECDSA with the
/// hash that goes with the curve, ASN.1 signature.
pub fn sign(pkcs8: &[u8], curve: Curve, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    sign_with(&signing_key(pkcs8, curve)?, message)
}

/// A key (PKCS#8) ready to sign many messages: parsing and checking it is costly, so a signer
/// that signs often (the device's PIK, at every handshake) keeps it.
pub fn signing_key(
    pkcs8: &[u8],
    curve: Curve,
) -> Result<aws_lc_rs::signature::EcdsaKeyPair, IdentityError> {
    use aws_lc_rs::signature::{self, EcdsaKeyPair};
    let algorithm = match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
    };
    EcdsaKeyPair::from_pkcs8(algorithm, pkcs8).map_err(|e| IdentityError::Generation(e.to_string()))
}

/// Signs `message` (ECDSA, DER) with a key from [`signing_key`].
pub fn sign_with(
    key: &aws_lc_rs::signature::EcdsaKeyPair,
    message: &[u8],
) -> Result<Vec<u8>, IdentityError> {
    key.sign(&aws_lc_rs::rand::SystemRandom::new(), message)
        .map(|s| s.as_ref().to_vec())
        .map_err(|e| IdentityError::Generation(e.to_string()))
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    #[test]
    fn handshake_signatures_verify_with_the_certificate() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let pik = generate_key(curve).unwrap();
            let pic = self_signed_identity(&pik, curve, "1").unwrap();
            let signature = sign(&pik, curve, b"transcript").unwrap();
            assert!(crate::verify::verify_with_certificate(
                &pic,
                b"transcript",
                &signature
            ));
            assert!(!crate::verify::verify_with_certificate(
                &pic, b"other", &signature
            ));
        }
    }
}
