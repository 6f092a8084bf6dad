//! The clock, and Unix seconds shown as UTC dates (the `time` crate's calendar).

use time::format_description::BorrowedFormatItem;
use time::macros::{datetime, format_description};
use time::OffsetDateTime;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The UTC date and time of a Unix time. A time past the end of the year 9999 (only a clock
/// set that far by hand) is shown as the last second of 9999.
pub fn utc(seconds: u64) -> OffsetDateTime {
    i64::try_from(seconds)
        .ok()
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
        .unwrap_or(datetime!(9999-12-31 23:59:59 UTC))
}

fn format(seconds: u64, description: &[BorrowedFormatItem<'_>]) -> String {
    utc(seconds)
        .format(description)
        .expect("a UTC date and time has every component these descriptions name")
}

/// `YYYYMMDDhhmmss00`, the `utcTime` of `CK_TOKEN_INFO`.
pub fn token_time(seconds: u64) -> String {
    format(
        seconds,
        format_description!("[year][month][day][hour][minute][second]00"),
    )
}

/// `YYYY-MM-DD hh:mm:ss UTC`, as the tools and the event log show times.
pub fn clock(seconds: u64) -> String {
    format(
        seconds,
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(token_time(0), "1970010100000000");
        assert_eq!(token_time(951_782_400), "2000022900000000");
        assert_eq!(token_time(1_795_740_245), "2026112700440500");
        assert_eq!(clock(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(clock(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(clock(1_795_740_245), "2026-11-27 00:44:05 UTC");
    }

    #[test]
    fn a_clock_past_the_year_9999_shows_its_last_second() {
        assert_eq!(token_time(253_402_300_799), "9999123123595900");
        assert_eq!(token_time(253_402_300_800), "9999123123595900");
        assert_eq!(clock(u64::MAX), "9999-12-31 23:59:59 UTC");
    }
}
