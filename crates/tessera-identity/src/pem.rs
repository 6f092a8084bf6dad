//! PEM armour for certificates and requests: `rustls-pki-types` reads it (strict base64: a `=`
//! only as the final padding), `pem` writes it (64-column lines, `\n` endings).

use rustls_pki_types::pem::{self as pki_pem, PemObject, SectionKind};

/// Encodes DER as PEM with `label` (`CERTIFICATE`, `CERTIFICATE REQUEST`).
pub fn encode(label: &str, der: &[u8]) -> String {
    let block = pem::Pem::new(label, der);
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What is wrong with a PEM text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The label asked for is not one Tessera reads.
    #[error("{0} is not a PEM label Tessera reads")]
    UnknownLabel(String),
    /// A block has no end line.
    #[error("a {0} block is not terminated")]
    Unterminated(String),
    /// A block's body is not base64.
    #[error("a {label} block is not valid base64 ({reason})")]
    Base64 {
        /// The label.
        label: String,
        /// The decoder's reason.
        reason: String,
    },
    /// A block is otherwise malformed.
    #[error("a {label} block is not valid PEM ({reason})")]
    Invalid {
        /// The label.
        label: String,
        /// The reader's reason.
        reason: String,
    },
    /// No block has the label.
    #[error("no {0} PEM block found")]
    Missing(String),
}

/// Every block with `label` in a PEM text, decoded; a text that is not PEM is taken as DER.
/// Blocks with other labels are skipped.
pub fn decode_all(text: &[u8], label: &str) -> Result<Vec<Vec<u8>>, PemError> {
    if std::str::from_utf8(text).is_err() {
        return Ok(vec![text.to_vec()]);
    }
    let wanted = SectionKind::try_from(label.as_bytes())
        .map_err(|()| PemError::UnknownLabel(label.into()))?;
    let mut blocks = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        match section {
            Ok((kind, der)) if kind == wanted => blocks.push(der),
            Ok(_) => {}
            Err(pki_pem::Error::MissingSectionEnd { .. }) => {
                return Err(PemError::Unterminated(label.into()))
            }
            Err(pki_pem::Error::Base64Decode(e)) => {
                return Err(PemError::Base64 {
                    label: label.into(),
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                return Err(PemError::Invalid {
                    label: label.into(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if blocks.is_empty() {
        return Err(PemError::Missing(label.into()));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        for len in 0..10 {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37)).collect();
            let pem = encode("CERTIFICATE", &data);
            assert_eq!(
                decode_all(pem.as_bytes(), "CERTIFICATE").unwrap(),
                vec![data]
            );
        }
        let two = encode("CERTIFICATE", b"a") + &encode("CERTIFICATE", b"bc");
        assert_eq!(decode_all(two.as_bytes(), "CERTIFICATE").unwrap().len(), 2);
        assert!(decode_all(b"hello", "CERTIFICATE").is_err());
        assert_eq!(
            decode_all(&[0x30, 0xff], "CERTIFICATE").unwrap(),
            vec![vec![0x30, 0xff]]
        );
    }

    #[test]
    fn lines_of_64_columns_ending_in_newline() {
        let pem = encode("CERTIFICATE REQUEST", &[0xab; 100]);
        let expected = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n{}\n{}\n-----END CERTIFICATE REQUEST-----\n",
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6ur",
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6ur",
            "q6urqw=="
        );
        assert_eq!(pem, expected);
        assert!(!pem.contains('\r'));
        assert!(pem.ends_with("-----\n"));
    }

    #[test]
    fn padding_inside_the_base64_is_refused() {
        // "YQ==" is "a"; the old reader skipped every `=` and read "YQ==YmM=" as "abc".
        let text = "-----BEGIN CERTIFICATE-----\nYQ==YmM=\n-----END CERTIFICATE-----\n";
        let error = decode_all(text.as_bytes(), "CERTIFICATE").unwrap_err();
        assert!(matches!(error, PemError::Base64 { .. }), "{error}");
        assert!(error.to_string().contains("not valid base64"), "{error}");
        let text = "-----BEGIN CERTIFICATE-----\nYW=Jj\n-----END CERTIFICATE-----\n";
        assert!(decode_all(text.as_bytes(), "CERTIFICATE").is_err());
    }

    #[test]
    fn a_block_without_its_end_is_refused() {
        let text = "-----BEGIN CERTIFICATE-----\nYWJj\n";
        assert_eq!(
            decode_all(text.as_bytes(), "CERTIFICATE")
                .unwrap_err()
                .to_string(),
            "a CERTIFICATE block is not terminated"
        );
    }

    #[test]
    fn blocks_of_other_labels_are_skipped() {
        let text = encode("CERTIFICATE REQUEST", b"req") + &encode("CERTIFICATE", b"cert");
        assert_eq!(
            decode_all(text.as_bytes(), "CERTIFICATE").unwrap(),
            vec![b"cert".to_vec()]
        );
        assert_eq!(
            decode_all(text.as_bytes(), "CERTIFICATE REQUEST").unwrap(),
            vec![b"req".to_vec()]
        );
    }
}
