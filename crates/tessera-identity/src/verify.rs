//! Deciding whether the chain a device presents is trusted for the serial number dialled.
//!
//! The rules (docs/ctident.md, "Verification"): the device's identity certificate (PIC) must name the dialled
//! serial, be within its validity and allow digital signatures; it is trusted if it is itself
//! in the trust store (that device alone), or if it was signed by an owner certificate (POC) in
//! the trust store that is within its validity and allowed to sign certificates. Nothing is
//! trusted on first use. Every refusal says why.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use x509_parser::oid_registry as oids;

use crate::inspect::{self, CertificateInfo};

/// Why a chain is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The device presented no certificate.
    #[error("the device presented no certificate")]
    EmptyChain,
    /// A certificate does not parse.
    #[error("certificate {index} of the chain is malformed: {reason}")]
    Malformed {
        /// Position in the chain (0 = the device's PIC).
        index: usize,
        /// What is wrong.
        reason: crate::inspect::CertificateError,
    },
    /// Neither the PIC nor an owner certificate that signed it is in the trust store.
    #[error("{subject} is not trusted: neither it nor its issuer {issuer} is in the trust store")]
    UnknownIssuer {
        /// The PIC's subject.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate has expired.
    #[error("{subject} expired on {}", utc(*not_after))]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// Its end of validity.
        not_after: i64,
    },
    /// A certificate is not valid yet.
    #[error("{subject} is not valid before {}", utc(*not_before))]
    NotYetValid {
        /// The certificate's subject.
        subject: String,
        /// Its start of validity.
        not_before: i64,
    },
    /// The PIC names another device.
    #[error("the certificate names device {found:?}, but device {expected} was dialled")]
    WrongSerial {
        /// The serial number dialled.
        expected: String,
        /// The serial in the certificate, if any.
        found: Option<String>,
    },
    /// A certificate lacks the key usage its role needs.
    #[error("{subject} may not be used for {needed}")]
    WrongKeyUsage {
        /// The certificate's subject.
        subject: String,
        /// The usage it lacks.
        needed: &'static str,
    },
    /// The PIC's signature does not verify with the trusted issuer's key.
    #[error("the signature on {subject} does not verify with the key of {issuer}")]
    BadSignature {
        /// The PIC's subject.
        subject: String,
        /// The trusted issuer.
        issuer: String,
    },
}

/// A certificate's date as the operator reads it: `2026-12-02 01:19:44 UTC`.
pub fn utc(seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{seconds} seconds after 1970 (out of the calendar's range)"),
    }
}

/// How a trusted chain was trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// The PIC's SHA-256 fingerprint.
    pub pic: String,
    /// The trust-store certificate that vouched for it (the PIC itself or a POC).
    pub anchor: String,
}

fn validity(info: &CertificateInfo, now: i64) -> Result<(), Refusal> {
    if now < info.not_before {
        return Err(Refusal::NotYetValid {
            subject: info.subject.clone(),
            not_before: info.not_before,
        });
    }
    if now > info.not_after {
        return Err(Refusal::Expired {
            subject: info.subject.clone(),
            not_after: info.not_after,
        });
    }
    Ok(())
}

/// The ML-DSA algorithm identifiers (IETF LAMPS, `id-ml-dsa-44/65/87`), which name the key
/// and the signature alike.
const ML_DSA_OIDS: [(&[u64], crate::Curve); 2] = [
    (&[2, 16, 840, 1, 101, 3, 4, 3, 18], crate::Curve::MlDsa65),
    (&[2, 16, 840, 1, 101, 3, 4, 3, 19], crate::Curve::MlDsa87),
];

fn ml_dsa_of(oid: &x509_parser::der_parser::oid::Oid<'_>) -> Option<crate::Curve> {
    let arcs: Vec<u64> = oid.iter()?.collect();
    ML_DSA_OIDS
        .iter()
        .find(|(known, _)| *known == arcs.as_slice())
        .map(|(_, curve)| *curve)
}

/// The algorithm of the key in `spki`: an ECDSA curve or an ML-DSA parameter set.
pub(crate) fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Option<crate::Curve> {
    if let Some(curve) = ml_dsa_of(&spki.algorithm.algorithm) {
        // ML-DSA keys have no parameters (absent, RFC 9881).
        return spki.algorithm.parameters.is_none().then_some(curve);
    }
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    if curve == oids::OID_EC_P256 {
        Some(crate::Curve::P256)
    } else if curve == oids::OID_NIST_EC_P384 {
        Some(crate::Curve::P384)
    } else if curve == oids::OID_NIST_EC_P521 {
        Some(crate::Curve::P521)
    } else {
        None
    }
}

/// Whether `signature` (by `signature_algorithm`) of `message` verifies with the key in
/// `spki`: ECDSA with SHA-256/384/512 on P-256/384/521, or ML-DSA (the signature's algorithm
/// must then be the key's own).
pub(crate) fn signature_verifies(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    signature_algorithm: &x509_parser::der_parser::oid::Oid<'_>,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let key = spki.subject_public_key.data.as_ref();
    match key_algorithm(spki) {
        Some(curve @ (crate::Curve::MlDsa65 | crate::Curve::MlDsa87)) => {
            let algorithm: &dyn signature::VerificationAlgorithm =
                match ml_dsa_of(signature_algorithm) {
                    Some(c) if c != curve => return false,
                    Some(crate::Curve::MlDsa65) => &signature::ML_DSA_65,
                    Some(crate::Curve::MlDsa87) => &signature::ML_DSA_87,
                    _ => return false,
                };
            UnparsedPublicKey::new(algorithm, key)
                .verify(message, signature)
                .is_ok()
        }
        _ => ecdsa_verify(spki, signature_algorithm, message, signature),
    }
}

/// Verifies an ECDSA signature (`signature_algorithm` from the signed structure) over
/// `message` with the key in `spki`.
pub(crate) fn ecdsa_verify(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    signature_algorithm: &x509_parser::der_parser::oid::Oid<'_>,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let Some(curve) = curve else {
        return false;
    };
    let hashes = [
        (oids::OID_SIG_ECDSA_WITH_SHA256, 0),
        (oids::OID_SIG_ECDSA_WITH_SHA384, 1),
        (oids::OID_SIG_ECDSA_WITH_SHA512, 2),
    ];
    let Some(hash) = hashes
        .iter()
        .find(|(oid, _)| oid == signature_algorithm)
        .map(|(_, i)| *i)
    else {
        return false;
    };
    let table: [&dyn signature::VerificationAlgorithm; 3] = if curve == oids::OID_EC_P256 {
        [
            &signature::ECDSA_P256_SHA256_ASN1,
            &signature::ECDSA_P256_SHA384_ASN1,
            &signature::ECDSA_P256_SHA512_ASN1,
        ]
    } else if curve == oids::OID_NIST_EC_P384 {
        [
            &signature::ECDSA_P384_SHA256_ASN1,
            &signature::ECDSA_P384_SHA384_ASN1,
            &signature::ECDSA_P384_SHA512_ASN1,
        ]
    } else if curve == oids::OID_NIST_EC_P521 {
        [
            &signature::ECDSA_P521_SHA256_ASN1,
            &signature::ECDSA_P521_SHA384_ASN1,
            &signature::ECDSA_P521_SHA512_ASN1,
        ]
    } else {
        return false;
    };
    UnparsedPublicKey::new(table[hash], spki.subject_public_key.data.as_ref())
        .verify(message, signature)
        .is_ok()
}

/// Verifies `child`'s signature with `issuer`'s public key.
fn signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (Ok(child), Ok(issuer)) = (inspect::parse(child), inspect::parse(issuer)) else {
        return false;
    };
    signature_verifies(
        &issuer.tbs_certificate.subject_pki,
        &child.signature_algorithm.algorithm,
        child.tbs_certificate.as_ref(),
        child.signature_value.data.as_ref(),
    )
}

/// Decides whether `chain` (the device's PIC first, then what it sends along) is trusted for
/// device `serial` at time `now`, given the trusted certificates `anchors`.
pub fn verify_chain(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    serial: &str,
    now: i64,
) -> Result<Trusted, Refusal> {
    let pic_der = chain.first().ok_or(Refusal::EmptyChain)?;
    let pic = CertificateInfo::parse(pic_der)
        .map_err(|reason| Refusal::Malformed { index: 0, reason })?;
    if pic.serial_number.as_deref() != Some(serial) {
        return Err(Refusal::WrongSerial {
            expected: serial.into(),
            found: pic.serial_number.clone(),
        });
    }
    validity(&pic, now)?;
    if !pic.digital_signature {
        return Err(Refusal::WrongKeyUsage {
            subject: pic.subject,
            needed: "digital signatures",
        });
    }
    if anchors.iter().any(|a| a == pic_der) {
        return Ok(Trusted {
            pic: pic.fingerprint.clone(),
            anchor: pic.fingerprint,
        });
    }
    let issuers: Vec<(&Vec<u8>, CertificateInfo)> = anchors
        .iter()
        .filter_map(|a| CertificateInfo::parse(a).ok().map(|info| (a, info)))
        .filter(|(_, info)| {
            info.subject_der == pic.issuer_der && info.fingerprint != pic.fingerprint
        })
        .collect();
    let Some((_, first)) = issuers.first() else {
        return Err(Refusal::UnknownIssuer {
            subject: pic.subject,
            issuer: pic.issuer,
        });
    };
    // Several anchors may share a name (an owner that changed its key or algorithm keeps its
    // name): the one whose key verifies must itself be valid and a CA.
    let fit =
        |info: &CertificateInfo| validity(info, now).is_ok() && info.key_cert_sign && info.is_ca;
    if let Some((_, issuer)) = issuers
        .iter()
        .find(|(der, info)| fit(info) && signed_by(pic_der, der))
    {
        return Ok(Trusted {
            pic: pic.fingerprint,
            anchor: issuer.fingerprint.clone(),
        });
    }
    // None does: the reason, from the first of that name.
    validity(first, now)?;
    if !first.key_cert_sign || !first.is_ca {
        return Err(Refusal::WrongKeyUsage {
            subject: first.subject.clone(),
            needed: "signing certificates",
        });
    }
    Err(Refusal::BadSignature {
        subject: pic.subject,
        issuer: first.subject.clone(),
    })
}

/// Verifies a signature made by the key of certificate `der` (the handshake signature of a
/// device's PIK): ECDSA with the hash that goes with the key's curve, or ML-DSA.
pub fn verify_with_certificate(der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(certificate) = inspect::parse(der) else {
        return false;
    };
    let spki = &certificate.tbs_certificate.subject_pki;
    match key_algorithm(spki) {
        Some(crate::Curve::P256) => {
            ecdsa_verify(spki, &oids::OID_SIG_ECDSA_WITH_SHA256, message, signature)
        }
        Some(crate::Curve::P384) => {
            ecdsa_verify(spki, &oids::OID_SIG_ECDSA_WITH_SHA384, message, signature)
        }
        Some(crate::Curve::P521) => {
            ecdsa_verify(spki, &oids::OID_SIG_ECDSA_WITH_SHA512, message, signature)
        }
        Some(_) => signature_verifies(spki, &spki.algorithm.algorithm, message, signature),
        None => false,
    }
}
