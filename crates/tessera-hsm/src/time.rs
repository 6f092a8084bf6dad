//! The device clock.

pub use tessera_core::time::{now, token_time as utc_time};

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc_time(0), "1970010100000000");
        assert_eq!(super::utc_time(951_782_400), "2000022900000000");
        assert_eq!(super::utc_time(1_795_740_245), "2026112700440500");
    }
}
