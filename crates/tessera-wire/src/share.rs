//! Printable shares of a split backup key (`ctkmu backup --shares M/N`).
//!
//! One share is one line a custodian can print, keep and type back:
//!
//! ```text
//! TS1-0a1b2c3d4e5f6071-2-3of5-AEGHOPRU2ZGQ6MD7B5BTC6S3V4ZBRWAVYGQF3AVV6XZQNBJVH2L4WCY-9f3a21bc
//!     backup id        |  |    the share's value (base32)                           checksum
//!                share 2  any 3 of 5
//! ```
//!
//! The checksum (the first four bytes of SHA-256 over the rest of the line) catches a mistyped
//! or swapped character before the share is used; the backup id says which backup file the
//! share opens. Case and white space do not matter.

use aws_lc_rs::digest;
use tessera_core::SecretBytes;

/// The line's first part: the format.
const PREFIX: &str = "TS1";

/// One share of a backup key.
pub struct Share {
    /// The backup it opens (the first 8 bytes of the backup's id).
    pub backup: [u8; 8],
    /// Its number, 1 to `count`.
    pub index: u8,
    /// Shares needed.
    pub threshold: u8,
    /// Shares made.
    pub count: u8,
    /// The share itself: its number, then one byte per byte of the key.
    pub value: SecretBytes,
}

/// Why a share's text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    /// Not the layout of a share.
    #[error("this is not a Tessera share (expected TS1-<backup>-<number>-<M>of<N>-<value>-<checksum>): {0}")]
    Layout(&'static str),
    /// The checksum does not match.
    #[error("the share's checksum does not match: a character was mistyped or left out; check it against the printed share")]
    Checksum,
}

fn checksum(body: &str) -> String {
    let digest = digest::digest(&digest::SHA256, body.as_bytes());
    hex::encode(&digest.as_ref()[..4])
}

impl Share {
    /// The share as one printable line (a secret: it is one part of a backup key).
    pub fn to_text(&self) -> SecretBytes {
        let value =
            zeroize::Zeroizing::new(data_encoding::BASE32_NOPAD.encode(self.value.expose()));
        let head = format!(
            "{PREFIX}-{}-{}-{}of{}-",
            hex::encode(self.backup),
            self.index,
            self.threshold,
            self.count
        );
        // Made at its full size: no reallocation leaves a copy of the value behind.
        let mut body = zeroize::Zeroizing::new(String::with_capacity(head.len() + value.len() + 9));
        body.push_str(&head);
        body.push_str(&value);
        let sum = checksum(&body);
        body.push('-');
        body.push_str(&sum);
        SecretBytes::from_slice(body.as_bytes())
    }

    /// Reads a share's line back, checking its checksum.
    pub fn parse(text: &[u8]) -> Result<Share, ShareError> {
        let mut line = SecretBytes::with_capacity(text.len());
        for b in text.iter().filter(|b| !b.is_ascii_whitespace()) {
            line.extend_from_slice(&[b.to_ascii_uppercase()]);
        }
        let line = std::str::from_utf8(line.expose())
            .map_err(|_| ShareError::Layout("it holds characters that are not ASCII"))?;
        let (body, sum) = line
            .rsplit_once('-')
            .ok_or(ShareError::Layout("no checksum at the end"))?;
        // The checksum is of the line as printed: the prefix and value upper case, the id
        // lower case.
        let parts: Vec<&str> = body.split('-').collect();
        let [prefix, backup, index, shares, value] = parts[..] else {
            return Err(ShareError::Layout(
                "it does not have six parts separated by '-'",
            ));
        };
        if prefix != PREFIX {
            return Err(ShareError::Layout("it does not start with TS1"));
        }
        let printed = zeroize::Zeroizing::new(format!(
            "{prefix}-{}-{index}-{}-{value}",
            backup.to_ascii_lowercase(),
            shares.to_ascii_lowercase()
        ));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            checksum(&printed).as_bytes(),
            sum.to_ascii_lowercase().as_bytes(),
        )) {
            return Err(ShareError::Checksum);
        }
        let backup: [u8; 8] = hex::decode(backup)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ShareError::Layout(
                "the backup id is not 16 hexadecimal digits",
            ))?;
        let index: u8 = index
            .parse()
            .map_err(|_| ShareError::Layout("the share number is not a number"))?;
        let (threshold, count) = shares
            .to_ascii_lowercase()
            .split_once("of")
            .and_then(|(m, n)| Some((m.parse::<u8>().ok()?, n.parse::<u8>().ok()?)))
            .ok_or(ShareError::Layout("the fourth part is not <M>of<N>"))?;
        let mut decoded = data_encoding::BASE32_NOPAD
            .decode(value.as_bytes())
            .map_err(|_| ShareError::Layout("the value is not base32"))?;
        let value = SecretBytes::from_slice(&decoded);
        zeroize::Zeroize::zeroize(&mut decoded);
        if value.expose().first() != Some(&index) || index == 0 || index > count {
            return Err(ShareError::Layout(
                "the share's number does not match its value",
            ));
        }
        Ok(Share {
            backup,
            index,
            threshold,
            count,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> Share {
        let mut value = vec![3u8];
        value.extend((0..32).map(|i| i * 7));
        Share {
            backup: *b"\x0a\x1b\x2c\x3d\x4e\x5f\x60\x71",
            index: 3,
            threshold: 3,
            count: 5,
            value: SecretBytes::new(value),
        }
    }

    #[test]
    fn a_share_reads_back_whatever_its_case_and_spacing() {
        let text = share().to_text();
        let line = std::str::from_utf8(text.expose()).unwrap();
        assert!(line.starts_with("TS1-0a1b2c3d4e5f6071-3-3of5-"), "{line}");
        let spaced: String = line
            .chars()
            .enumerate()
            .flat_map(|(i, c)| (i % 6 == 5).then_some(' ').into_iter().chain([c]))
            .collect::<String>()
            .to_lowercase();
        for text in [line.to_string(), spaced] {
            let back = Share::parse(text.as_bytes()).unwrap();
            assert_eq!(back.backup, share().backup);
            assert_eq!((back.index, back.threshold, back.count), (3, 3, 5));
            assert_eq!(back.value.expose(), share().value.expose());
        }
    }

    #[test]
    fn every_mistyped_character_is_caught() {
        let text = share().to_text();
        let line = std::str::from_utf8(text.expose()).unwrap();
        for (i, c) in line.char_indices() {
            if c == '-' {
                continue;
            }
            let other = if c == 'A' || c == '0' { 'B' } else { 'A' };
            let other = if other.eq_ignore_ascii_case(&c) {
                '2'
            } else {
                other
            };
            let mut typed = line.to_string();
            typed.replace_range(i..i + 1, &other.to_string());
            assert!(Share::parse(typed.as_bytes()).is_err(), "{typed}");
        }
        assert_eq!(
            Share::parse(&line.as_bytes()[..line.len() - 1]).err(),
            Some(ShareError::Checksum)
        );
    }
}
