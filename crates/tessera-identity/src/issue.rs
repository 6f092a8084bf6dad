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

/// The algorithm of an identity or owner key: an ECDSA curve, or ML-DSA (FIPS 204, the IETF
/// LAMPS certificate identifiers), so that a device's identity outlives a quantum adversary too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256 with SHA-256.
    P256,
    /// NIST P-384 with SHA-384.
    P384,
    /// NIST P-521 with SHA-512 (the default, as in the product we model).
    P521,
    /// ML-DSA-65.
    MlDsa65,
    /// ML-DSA-87.
    MlDsa87,
}

impl Curve {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Curve::P521 => &rcgen::PKCS_ECDSA_P521_SHA512,
            Curve::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
            Curve::MlDsa87 => &rcgen::PKCS_ML_DSA_87,
        }
    }

    /// The ML-DSA parameter set, for an ML-DSA key.
    fn ml_dsa(self) -> Option<&'static aws_lc_rs::signature::PqdsaSigningAlgorithm> {
        use aws_lc_rs::signature::{ML_DSA_65_SIGNING, ML_DSA_87_SIGNING};
        match self {
            Curve::MlDsa65 => Some(&ML_DSA_65_SIGNING),
            Curve::MlDsa87 => Some(&ML_DSA_87_SIGNING),
            _ => None,
        }
    }

    /// Parses `p256`, `p384`, `p521`, `ml-dsa-65`, `ml-dsa-87` (any case, with or without
    /// dashes).
    pub fn parse(text: &str) -> Option<Curve> {
        match text.to_ascii_lowercase().replace('-', "").as_str() {
            "p256" => Some(Curve::P256),
            "p384" => Some(Curve::P384),
            "p521" => Some(Curve::P521),
            "mldsa65" => Some(Curve::MlDsa65),
            "mldsa87" => Some(Curve::MlDsa87),
            _ => None,
        }
    }

    /// The name shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::MlDsa65 => "ML-DSA-65",
            Curve::MlDsa87 => "ML-DSA-87",
        }
    }
}

/// A private key that signs certificates and requests: rcgen's own (ECDSA), or an ML-DSA key
/// from aws-lc-rs (rcgen writes ML-DSA certificates but reads no ML-DSA PKCS#8).
enum Key {
    Rcgen(KeyPair),
    MlDsa {
        pair: aws_lc_rs::signature::PqdsaKeyPair,
        algorithm: &'static rcgen::SignatureAlgorithm,
    },
}

impl rcgen::PublicKeyData for Key {
    fn der_bytes(&self) -> &[u8] {
        use aws_lc_rs::signature::KeyPair as _;
        match self {
            Key::Rcgen(key) => key.der_bytes(),
            Key::MlDsa { pair, .. } => pair.public_key().as_ref(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Key::Rcgen(key) => key.algorithm(),
            Key::MlDsa { algorithm, .. } => algorithm,
        }
    }
}

impl rcgen::SigningKey for Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Key::Rcgen(key) => key.sign(message),
            Key::MlDsa { pair, .. } => {
                ml_dsa_sign(pair, message).map_err(|_| rcgen::Error::RingUnspecified)
            }
        }
    }
}

fn ml_dsa_sign(
    pair: &aws_lc_rs::signature::PqdsaKeyPair,
    message: &[u8],
) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
    let mut signature = vec![0u8; pair.algorithm().signature_len()];
    let len = pair.sign(message, &mut signature)?;
    signature.truncate(len);
    Ok(signature)
}

/// The public key of a request, for the certificate that certifies it: its algorithm read
/// from the SubjectPublicKeyInfo's OID (rcgen's own reader knows no ML-DSA).
struct RequestKey {
    algorithm: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
}

impl rcgen::PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl RequestKey {
    fn from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<RequestKey> {
        let curve = crate::verify::key_algorithm(spki)?;
        Some(RequestKey {
            algorithm: curve.algorithm(),
            raw: spki.subject_public_key.data.to_vec(),
        })
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

fn key_pair(pkcs8: &[u8], curve: Curve) -> Result<Key, IdentityError> {
    if let Some(signing) = curve.ml_dsa() {
        let pair = aws_lc_rs::signature::PqdsaKeyPair::from_pkcs8(signing, pkcs8)
            .map_err(|e| IdentityError::Generation(e.to_string()))?;
        return Ok(Key::MlDsa {
            pair,
            algorithm: curve.algorithm(),
        });
    }
    let der = rustls_pki_der(pkcs8);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, curve.algorithm())
        .map(Key::Rcgen)
        .map_err(generation)
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
    let proven = crate::verify::signature_verifies(
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
    let public = RequestKey::from_spki(&info.subject_pki).ok_or_else(|| {
        malformed("its key is neither ECDSA (P-256, P-384, P-521) nor ML-DSA".into())
    })?;
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

    /// ML-DSA identities (IETF LAMPS identifiers), alone and mixed with ECDSA: every chain is
    /// trusted through its owner certificate, every PIK's handshake signature verifies with
    /// its PIC, and what another key signed does not.
    #[test]
    fn ml_dsa_identities_and_mixed_chains() {
        use crate::verify::verify_with_certificate;
        let serial = "4242424242";
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cases = [
            (Curve::MlDsa87, Curve::MlDsa87),
            (Curve::P521, Curve::MlDsa65),
            (Curve::MlDsa65, Curve::P256),
        ];
        for (owner, identity) in cases {
            let pok = generate_key(owner).unwrap();
            let poc = owner_certificate(&pok, owner, serial).unwrap();
            let pik = generate_key(identity).unwrap();
            let request = identity_request(&pik, identity, serial).unwrap();
            let (pic, _) = sign_request(&request, &pok, owner, &poc)
                .unwrap_or_else(|e| panic!("{owner:?} signing {identity:?}: {e}"));
            let chain = [pic.clone(), poc.clone()];
            crate::verify_chain(&chain, std::slice::from_ref(&poc), serial, now)
                .unwrap_or_else(|e| panic!("{owner:?}/{identity:?}: {e}"));
            let signature = sign(&pik, identity, b"transcript").unwrap();
            assert!(verify_with_certificate(&pic, b"transcript", &signature));
            assert!(!verify_with_certificate(&pic, b"another", &signature));
            // Another owner of the same algorithm did not sign this PIC.
            let stranger = generate_key(owner).unwrap();
            let other = owner_certificate(&stranger, owner, serial).unwrap();
            assert!(crate::verify_chain(&chain, &[other], serial, now).is_err());
        }
        let pik = generate_key(Curve::MlDsa87).unwrap();
        let pic = self_signed_identity(&pik, Curve::MlDsa87, serial).unwrap();
        crate::verify_chain(
            std::slice::from_ref(&pic),
            std::slice::from_ref(&pic),
            serial,
            now,
        )
        .unwrap();
        assert_eq!(Curve::parse("ml-dsa-87"), Some(Curve::MlDsa87));
        assert_eq!(
            Curve::parse("ML-DSA-65").map(Curve::name),
            Some("ML-DSA-65")
        );
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
/// hash that goes with the curve (ASN.1 signature), or ML-DSA.
pub fn sign(pkcs8: &[u8], curve: Curve, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    sign_with(&signing_key(pkcs8, curve)?, message)
}

/// A key ready to sign many messages (the device's PIK, at every handshake): parsing and
/// checking it is costly, so a signer that signs often keeps it.
pub enum SigningKey {
    /// ECDSA.
    Ecdsa(aws_lc_rs::signature::EcdsaKeyPair),
    /// ML-DSA.
    MlDsa(aws_lc_rs::signature::PqdsaKeyPair),
}

/// A key (PKCS#8) ready to sign many messages, see [`SigningKey`].
pub fn signing_key(pkcs8: &[u8], curve: Curve) -> Result<SigningKey, IdentityError> {
    use aws_lc_rs::signature::{self, EcdsaKeyPair, PqdsaKeyPair};
    let failed = |e: aws_lc_rs::error::KeyRejected| IdentityError::Generation(e.to_string());
    let algorithm = match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        Curve::MlDsa65 | Curve::MlDsa87 => {
            let signing = curve
                .ml_dsa()
                .ok_or(IdentityError::Generation("no ML-DSA parameter set".into()))?;
            return PqdsaKeyPair::from_pkcs8(signing, pkcs8)
                .map(SigningKey::MlDsa)
                .map_err(failed);
        }
    };
    EcdsaKeyPair::from_pkcs8(algorithm, pkcs8)
        .map(SigningKey::Ecdsa)
        .map_err(failed)
}

/// Signs `message` with a key from [`signing_key`]: ECDSA (DER) or ML-DSA.
pub fn sign_with(key: &SigningKey, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let failed = |e: aws_lc_rs::error::Unspecified| IdentityError::Generation(e.to_string());
    match key {
        SigningKey::Ecdsa(key) => key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(failed),
        SigningKey::MlDsa(pair) => ml_dsa_sign(pair, message).map_err(failed),
    }
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
