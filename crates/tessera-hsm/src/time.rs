//! Civil UTC time without a calendar dependency.

pub use tessera_core::time::now;

/// `YYYYMMDDhhmmss00`, the `utcTime` of `CK_TOKEN_INFO`.
pub fn utc_time(seconds: u64) -> String {
    let (year, month, day, hour, minute, second) = tessera_core::time::civil(seconds);
    format!("{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}00")
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc_time(0), "1970010100000000");
        assert_eq!(super::utc_time(951_782_400), "2000022900000000");
        assert_eq!(super::utc_time(1_795_740_245), "2026112700440500");
    }
}
