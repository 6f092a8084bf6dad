//! Output rules of Cryptoki, separated from raw pointers so that they can be tested: the
//! two-call buffer convention (PKCS#11 3.0 §5.2) and blank-padded fixed-size text fields.

/// What to do with an output of `needed` elements, given the application's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The application passed a NULL buffer: report the length, return `CKR_OK`.
    Query,
    /// The buffer is too small: report the length, return `CKR_BUFFER_TOO_SMALL`.
    TooSmall,
    /// The output fits: copy it and report its length.
    Fits,
}

/// The two-call convention: `capacity` is `None` for a NULL buffer, else its length in elements.
pub fn fit(needed: usize, capacity: Option<usize>) -> Fit {
    match capacity {
        None => Fit::Query,
        Some(capacity) if capacity < needed => Fit::TooSmall,
        Some(_) => Fit::Fits,
    }
}

/// Fills a fixed-size Cryptoki text field: `text`, then blanks. Text longer than the field is
/// cut at the last whole UTF-8 character that fits, so the field stays valid UTF-8.
pub fn pad(dst: &mut [u8], text: &str) {
    let mut end = text.len().min(dst.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let (head, tail) = dst.split_at_mut(end);
    head.copy_from_slice(&text.as_bytes()[..end]);
    tail.fill(b' ');
}

/// A padded field as an array (for struct literals).
pub fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut field = [0u8; N];
    pad(&mut field, text);
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_call_convention() {
        assert_eq!(fit(16, None), Fit::Query);
        assert_eq!(fit(16, Some(15)), Fit::TooSmall);
        assert_eq!(fit(16, Some(16)), Fit::Fits);
        assert_eq!(fit(16, Some(1000)), Fit::Fits);
        assert_eq!(fit(0, Some(0)), Fit::Fits);
        assert_eq!(fit(0, None), Fit::Query);
    }

    #[test]
    fn pad_fills_with_blanks_and_truncates_on_char_boundaries() {
        let mut field = [0u8; 8];
        pad(&mut field, "abc");
        assert_eq!(&field, b"abc     ");
        pad(&mut field, "0123456789");
        assert_eq!(&field, b"01234567");
        pad(&mut field, "");
        assert_eq!(&field, b"        ");
        // "é" is two bytes; it must not be split at the field's end.
        pad(&mut field, "abcdefgé");
        assert_eq!(&field, b"abcdefg ");
        assert!(std::str::from_utf8(&field).is_ok());
        assert_eq!(&padded::<4>("ab"), b"ab  ");
    }
}
