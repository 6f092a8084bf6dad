//! NIST SP 800-108 key-based key derivation (`CKM_SP800_108_COUNTER_KDF`, `_FEEDBACK_KDF`,
//! `_DOUBLE_PIPELINE_KDF`, PKCS#11 3.0 mechanisms §2.42) with an HMAC (SHA-1/224/256/384/512) or
//! AES-CMAC PRF keyed by the base key.
//!
//! The PRF input of round `i` is the parameter's data segments in order: the iteration variable
//! (counter mode: `i` in its format; feedback mode: the previous round's output, the IV for the
//! first; double pipeline: `A(i)`), the optional counter `i`, the length `L` in bits of the
//! derived key material, and fixed byte arrays. In double-pipeline mode `A(0)` is the segments
//! without the iteration variable and the counter, and `A(i) = PRF(A(i-1))`. The derived keys
//! take the output in order: the template's key first, then the additional keys.

use tessera_core::{ck, KbkdfData, KbkdfFormat, Mechanism, MechanismParameter, Rv, SecretBytes};

use crate::crypto::mac::Mac;
use crate::object::Attributes;

/// Whether a mechanism is one of the SP 800-108 KDFs.
pub(crate) fn is_kbkdf(mechanism: u64) -> bool {
    matches!(
        mechanism as ck::CK_MECHANISM_TYPE,
        ck::CKM_SP800_108_COUNTER_KDF
            | ck::CKM_SP800_108_FEEDBACK_KDF
            | ck::CKM_SP800_108_DOUBLE_PIPELINE_KDF
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Counter,
    Feedback,
    DoublePipeline,
}

/// `value` written in `format`; `None` when it does not fit.
fn encode(value: u64, format: KbkdfFormat) -> Option<Vec<u8>> {
    let bytes = (format.bits / 8) as usize;
    if bytes < 8 && value >> (8 * bytes) != 0 {
        return None;
    }
    Some(if format.little_endian {
        value.to_le_bytes()[..bytes].to_vec()
    } else {
        value.to_be_bytes()[8 - bytes..].to_vec()
    })
}

fn checked(format: KbkdfFormat, widest: u64) -> Result<KbkdfFormat, Rv> {
    if format.bits == 0 || !format.bits.is_multiple_of(8) || format.bits > widest {
        return Err(Rv::MechanismParamInvalid);
    }
    Ok(format)
}

/// Checks the data segments against the mode: exactly one iteration variable (with a counter
/// format in counter mode only), at most one optional counter (not in counter mode), at most
/// one DKM length; counters are 8 to 32 bits wide, lengths 8 to 64, in whole bytes.
fn check_segments(mode: Mode, data: &[KbkdfData]) -> Result<(), Rv> {
    let (mut iterations, mut counters, mut lengths) = (0, 0, 0);
    for segment in data {
        match segment {
            KbkdfData::Iteration(format) => {
                iterations += 1;
                match (mode, format) {
                    (Mode::Counter, Some(f)) => {
                        checked(*f, 32)?;
                    }
                    (Mode::Feedback | Mode::DoublePipeline, None) => {}
                    _ => return Err(Rv::MechanismParamInvalid),
                }
            }
            KbkdfData::Counter(format) => {
                counters += 1;
                if mode == Mode::Counter {
                    return Err(Rv::MechanismParamInvalid);
                }
                checked(*format, 32)?;
            }
            KbkdfData::DkmLength { method, format } => {
                lengths += 1;
                let known = [
                    ck::CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS as u64,
                    ck::CK_SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS as u64,
                ];
                if !known.contains(method) {
                    return Err(Rv::MechanismParamInvalid);
                }
                checked(*format, 64)?;
            }
            KbkdfData::Bytes(_) => {}
        }
    }
    if iterations != 1 || counters > 1 || lengths > 1 {
        return Err(Rv::MechanismParamInvalid);
    }
    Ok(())
}

struct Prf<'a> {
    mechanism: Mechanism,
    key: &'a Attributes,
}

impl Prf<'_> {
    /// A PRF computation keyed by the base key.
    fn start(&self) -> Result<Mac, Rv> {
        Mac::new(&self.mechanism, self.key)
    }
}

/// Derives keys of `lengths` bytes (the first for the template, the rest for the additional
/// keys) from the base key `base`.
pub(crate) fn derive(
    mechanism: &Mechanism,
    base: &Attributes,
    lengths: &[usize],
) -> Result<Vec<SecretBytes>, Rv> {
    let mode = match mechanism.ty as ck::CK_MECHANISM_TYPE {
        ck::CKM_SP800_108_COUNTER_KDF => Mode::Counter,
        ck::CKM_SP800_108_FEEDBACK_KDF => Mode::Feedback,
        ck::CKM_SP800_108_DOUBLE_PIPELINE_KDF => Mode::DoublePipeline,
        _ => return Err(Rv::MechanismInvalid),
    };
    let MechanismParameter::Kbkdf { prf, data, iv, .. } = &mechanism.parameter else {
        return Err(Rv::MechanismParamInvalid);
    };
    let h = crate::crypto::mac::prf_length(*prf).ok_or(Rv::MechanismParamInvalid)?;
    check_segments(mode, data)?;
    if mode != Mode::Feedback && !iv.is_empty() {
        return Err(Rv::MechanismParamInvalid);
    }
    if base.class() != ck::CKO_SECRET_KEY as u64 {
        return Err(Rv::KeyTypeInconsistent);
    }
    if lengths.contains(&0) {
        return Err(Rv::TemplateInconsistent);
    }
    let total: usize = lengths.iter().sum();
    let rounds = total.div_ceil(h);
    let prf = Prf {
        mechanism: Mechanism::plain(*prf),
        key: base,
    };
    // Lengths and counters that do not fit their formats are refused before any work.
    let length_bits = |method: u64| -> u64 {
        if method == ck::CK_SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS as u64 {
            (rounds * h * 8) as u64
        } else {
            (total * 8) as u64
        }
    };
    let mut fixed: Vec<Vec<u8>> = Vec::with_capacity(data.len());
    for segment in data {
        fixed.push(match segment {
            KbkdfData::DkmLength { method, format } => {
                encode(length_bits(*method), *format).ok_or(Rv::KeySizeRange)?
            }
            KbkdfData::Bytes(bytes) => bytes.clone(),
            KbkdfData::Iteration(Some(format)) | KbkdfData::Counter(format) => {
                encode(rounds as u64, *format).ok_or(Rv::KeySizeRange)?;
                Vec::new()
            }
            KbkdfData::Iteration(None) => Vec::new(),
        });
    }
    // Round i: the PRF over the segments, with `chain` as the iteration variable where it is
    // not the counter.
    let round = |i: u64, chain: &[u8]| -> Result<Vec<u8>, Rv> {
        let mut mac = prf.start()?;
        for (segment, fixed) in data.iter().zip(&fixed) {
            match segment {
                KbkdfData::Iteration(Some(format)) | KbkdfData::Counter(format) => {
                    // Fits: the largest counter, `rounds`, was checked above.
                    mac.update(&encode(i, *format).ok_or(Rv::KeySizeRange)?)?
                }
                KbkdfData::Iteration(None) => mac.update(chain)?,
                _ => mac.update(fixed)?,
            }
        }
        mac.sign()
    };
    let mut material = SecretBytes::new(Vec::with_capacity(rounds * h));
    let mut chain = match mode {
        Mode::Feedback => iv.clone(),
        Mode::DoublePipeline => data
            .iter()
            .zip(&fixed)
            .filter(|(segment, _)| {
                !matches!(segment, KbkdfData::Iteration(_) | KbkdfData::Counter(_))
            })
            .flat_map(|(_, fixed)| fixed.iter().copied())
            .collect(),
        Mode::Counter => Vec::new(),
    };
    for i in 1..=rounds as u64 {
        if mode == Mode::DoublePipeline {
            let mut mac = prf.start()?;
            mac.update(&chain)?;
            chain = mac.sign()?;
        }
        let block = round(i, &chain)?;
        material.extend_from_slice(&block);
        if mode == Mode::Feedback {
            chain = block;
        }
    }
    let mut keys = Vec::with_capacity(lengths.len());
    let mut offset = 0;
    for length in lengths {
        keys.push(SecretBytes::from_slice(
            &material.expose()[offset..offset + length],
        ));
        offset += length;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_write_what_fits_and_refuse_the_rest() {
        let big = KbkdfFormat {
            little_endian: false,
            bits: 16,
        };
        let little = KbkdfFormat {
            little_endian: true,
            bits: 24,
        };
        assert_eq!(encode(0x0102, big), Some(vec![1, 2]));
        assert_eq!(encode(0x010203, little), Some(vec![3, 2, 1]));
        assert_eq!(encode(0x10000, big), None);
        let wide = KbkdfFormat {
            little_endian: false,
            bits: 64,
        };
        assert_eq!(encode(u64::MAX, wide), Some(vec![0xff; 8]));
    }

    #[test]
    fn segments_must_fit_the_mode() {
        let counter = KbkdfFormat {
            little_endian: false,
            bits: 16,
        };
        let ok = [
            KbkdfData::Iteration(Some(counter)),
            KbkdfData::Bytes(vec![1]),
        ];
        assert!(check_segments(Mode::Counter, &ok).is_ok());
        assert!(check_segments(Mode::Feedback, &ok).is_err());
        let missing = [KbkdfData::Bytes(vec![1])];
        assert!(check_segments(Mode::Counter, &missing).is_err());
        let with_counter = [KbkdfData::Iteration(None), KbkdfData::Counter(counter)];
        assert!(check_segments(Mode::Feedback, &with_counter).is_ok());
        assert!(check_segments(Mode::DoublePipeline, &with_counter).is_ok());
        let odd = KbkdfFormat {
            little_endian: false,
            bits: 12,
        };
        assert!(check_segments(Mode::Counter, &[KbkdfData::Iteration(Some(odd))]).is_err());
        let length = KbkdfData::DkmLength {
            method: ck::CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS as u64,
            format: counter,
        };
        let twice = [KbkdfData::Iteration(Some(counter)), length.clone(), length];
        assert!(check_segments(Mode::Counter, &twice).is_err());
    }
}
