//! PEM armour for certificates and requests.

/// Encodes DER as PEM with `label` (`CERTIFICATE`, `CERTIFICATE REQUEST`).
pub fn encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                body.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                body.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every block with `label` in a PEM text, decoded; a text that is not PEM is taken as DER.
pub fn decode_all(text: &[u8], label: &str) -> Result<Vec<Vec<u8>>, String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Ok(vec![text.to_vec()]);
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    if !text.contains(&begin) {
        return Err(format!("no {label} PEM block found"));
    }
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| format!("a {label} block is not terminated"))?;
        blocks.push(base64(&after[..stop])?);
        rest = &after[stop + end.len()..];
    }
    Ok(blocks)
}

fn base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        let value = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            '=' => continue,
            _ => return Err(format!("invalid character {c:?} in PEM")),
        };
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Ok(out)
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
}
