//! Reading certificates: the facts shown to operators and used by verification.

use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// What a certificate says, in owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name, as text.
    pub subject: String,
    /// Issuer distinguished name, as text.
    pub issuer: String,
    /// Subject DER (for issuer matching).
    pub subject_der: Vec<u8>,
    /// Issuer DER.
    pub issuer_der: Vec<u8>,
    /// The subject's `serialNumber` attribute: the device serial number.
    pub serial_number: Option<String>,
    /// The certificate's own serial, hex.
    pub certificate_serial: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// SHA-256 of the DER, as colon-separated hex.
    pub fingerprint: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Key usage digitalSignature.
    pub digital_signature: bool,
    /// Key usage keyCertSign.
    pub key_cert_sign: bool,
    /// Basic constraints CA.
    pub is_ca: bool,
    /// Subject key identifier.
    pub subject_key_identifier: Option<Vec<u8>>,
}

/// SHA-256 of bytes as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| hex::encode_upper([*b]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint without separators, lower case (file names, prefixes).
pub fn fingerprint_id(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// What is wrong with bytes given as a DER certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Bytes follow the certificate.
    #[error("trailing bytes after the certificate")]
    Trailing,
    /// Not a certificate (the parser's reason).
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
}

/// Parses a DER certificate.
pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    match X509Certificate::from_der(der) {
        Ok(([], certificate)) => Ok(certificate),
        Ok(_) => Err(CertificateError::Trailing),
        Err(e) => Err(CertificateError::NotX509(e.to_string())),
    }
}

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertificateInfo, CertificateError> {
        let certificate = parse(der)?;
        let tbs = &certificate.tbs_certificate;
        let serial_oid = x509_parser::oid_registry::OID_X509_SERIALNUMBER;
        let serial_number = tbs
            .subject
            .iter_by_oid(&serial_oid)
            .next()
            .and_then(|a| a.as_str().ok().map(str::to_string));
        let mut info = CertificateInfo {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            subject_der: tbs.subject.as_raw().to_vec(),
            issuer_der: tbs.issuer.as_raw().to_vec(),
            serial_number,
            certificate_serial: hex::encode_upper(tbs.raw_serial()),
            not_before: tbs.validity.not_before.timestamp(),
            not_after: tbs.validity.not_after.timestamp(),
            fingerprint: fingerprint(der),
            public_key: tbs.subject_pki.raw.to_vec(),
            digital_signature: false,
            key_cert_sign: false,
            is_ca: false,
            subject_key_identifier: None,
        };
        for extension in tbs.extensions() {
            match extension.parsed_extension() {
                ParsedExtension::KeyUsage(usage) => {
                    info.digital_signature = usage.digital_signature();
                    info.key_cert_sign = usage.key_cert_sign();
                }
                ParsedExtension::BasicConstraints(constraints) => info.is_ca = constraints.ca,
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    info.subject_key_identifier = Some(id.0.to_vec())
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_are_sha_256_in_hex() {
        // FIPS 180-2's "abc" vector.
        assert_eq!(
            super::fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
        assert_eq!(
            super::fingerprint_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
