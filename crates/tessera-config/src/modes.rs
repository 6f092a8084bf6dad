//! The library's modes over several devices: `ET_PTKC_GENERAL_LIBRARY_MODE` (`NORMAL`, `WLD`,
//! `HA`), the virtual slots of `WLD` and `HA` (`ET_PTKC_WLD_SLOT_<n>`), and HA's recovery
//! timings (`ET_PTKC_HA_RECOVER_DELAY`, `ET_PTKC_HA_RECOVER_WAIT`).

use std::time::Duration;

use crate::{Config, ConfigError, Level};

/// The mode item.
pub const LIBRARY_MODE: &str = "ET_PTKC_GENERAL_LIBRARY_MODE";
/// The prefix of the virtual slot items.
pub const WLD_SLOT_PREFIX: &str = "ET_PTKC_WLD_SLOT_";
/// How long a device dropped after a failure stays out (seconds).
pub const HA_RECOVER_DELAY: &str = "ET_PTKC_HA_RECOVER_DELAY";
/// How long an HA call waits for a member to take over (seconds).
pub const HA_RECOVER_WAIT: &str = "ET_PTKC_HA_RECOVER_WAIT";
/// The highest virtual slot number.
pub const MAX_WLD_SLOT: u64 = 999;

/// How the library shows the devices of the server list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryMode {
    /// Every slot of every device, numbered by device (the default).
    Normal,
    /// Work Load Distribution: virtual slots, each over the tokens of one label (and serial)
    /// on every device; a session opens on the device with the fewest of this application's
    /// sessions, and a device that fails is left out.
    Wld,
    /// High Availability: WLD, and a session whose device fails goes on on another.
    Ha,
}

/// One virtual slot: `ET_PTKC_WLD_SLOT_<n>=<label>[,<serial>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WldSlot {
    /// Its slot ID (`<n>`).
    pub number: u64,
    /// The label of the tokens it spans (compared without trailing blanks).
    pub label: String,
    /// The token serial they must have too, if given.
    pub serial: Option<String>,
}

impl Config {
    /// `ET_PTKC_GENERAL_LIBRARY_MODE`.
    pub fn library_mode(&self) -> Result<LibraryMode, ConfigError> {
        let (value, level) = self
            .item(LIBRARY_MODE)
            .unwrap_or(("NORMAL".into(), Level::Default));
        match value.trim().to_ascii_uppercase().as_str() {
            "NORMAL" => Ok(LibraryMode::Normal),
            "WLD" => Ok(LibraryMode::Wld),
            "HA" => Ok(LibraryMode::Ha),
            _ => Err(ConfigError::Invalid {
                item: LIBRARY_MODE.into(),
                level,
                reason: format!("{value:?} is not a mode: give NORMAL, WLD or HA"),
            }),
        }
    }

    /// The virtual slots (`ET_PTKC_WLD_SLOT_<n>`), by number; at least one in WLD and HA.
    pub fn wld_slots(&self) -> Result<Vec<WldSlot>, ConfigError> {
        let mut names: Vec<String> = [&self.temporary, &self.user, &self.system]
            .iter()
            .flat_map(|level| level.keys())
            .filter(|name| name.starts_with(WLD_SLOT_PREFIX))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let mut slots = Vec::new();
        for name in names {
            let Some((value, level)) = self.item(&name) else {
                continue;
            };
            let invalid = |reason: String| ConfigError::Invalid {
                item: name.clone(),
                level,
                reason,
            };
            let number = name[WLD_SLOT_PREFIX.len()..]
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= MAX_WLD_SLOT)
                .ok_or_else(|| {
                    invalid(format!(
                        "the slot number must be 0 to {MAX_WLD_SLOT} (ET_PTKC_WLD_SLOT_1=<label>[,<serial>])"
                    ))
                })?;
            let (label, serial) = match value.split_once(',') {
                Some((label, serial)) => (label.trim(), Some(serial.trim())),
                None => (value.trim(), None),
            };
            if label.is_empty() || label.len() > 32 {
                return Err(invalid(format!(
                    "{value:?}: give the token label (1 to 32 bytes), then optionally a comma and the token serial"
                )));
            }
            if serial.is_some_and(|s| s.is_empty() || s.len() > 16) {
                return Err(invalid(format!(
                    "{value:?}: the token serial after the comma has 1 to 16 characters"
                )));
            }
            slots.push(WldSlot {
                number,
                label: label.to_string(),
                serial: serial.map(str::to_string),
            });
        }
        slots.sort_by_key(|s| s.number);
        if slots.is_empty() && self.library_mode()? != LibraryMode::Normal {
            return Err(ConfigError::Message(format!(
                "{LIBRARY_MODE} is WLD or HA, but no virtual slot is configured: add \
                 {WLD_SLOT_PREFIX}1=<token label>[,<token serial>]"
            )));
        }
        Ok(slots)
    }

    /// `ET_PTKC_HA_RECOVER_DELAY` (default 60 s) and `ET_PTKC_HA_RECOVER_WAIT` (default 10 s).
    pub fn ha_timings(&self) -> Result<(Duration, Duration), ConfigError> {
        let read = |name: &str, default: &str| {
            if self.item(name).is_none() {
                return Ok(Duration::from_secs(default.parse().unwrap_or(0)));
            }
            self.seconds(name)
        };
        Ok((read(HA_RECOVER_DELAY, "60")?, read(HA_RECOVER_WAIT, "10")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(items: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_levels(map, HashMap::new(), HashMap::new())
    }

    #[test]
    fn virtual_slots_are_read_with_their_label_and_serial() {
        let c = config(&[
            (LIBRARY_MODE, "wld"),
            ("ET_PTKC_WLD_SLOT_2", "payments , 123456789000"),
            ("ET_PTKC_WLD_SLOT_1", "signing"),
        ]);
        assert_eq!(c.library_mode().unwrap(), LibraryMode::Wld);
        let slots = c.wld_slots().unwrap();
        assert_eq!(
            slots,
            vec![
                WldSlot {
                    number: 1,
                    label: "signing".into(),
                    serial: None
                },
                WldSlot {
                    number: 2,
                    label: "payments".into(),
                    serial: Some("123456789000".into())
                },
            ]
        );
    }

    #[test]
    fn bad_modes_and_slots_are_refused_naming_the_item() {
        let e = config(&[(LIBRARY_MODE, "FAST")])
            .library_mode()
            .unwrap_err();
        assert!(e.to_string().contains("NORMAL, WLD or HA"), "{e}");
        let e = config(&[(LIBRARY_MODE, "HA")]).wld_slots().unwrap_err();
        assert!(e.to_string().contains("ET_PTKC_WLD_SLOT_1"), "{e}");
        let e = config(&[("ET_PTKC_WLD_SLOT_x", "a")])
            .wld_slots()
            .unwrap_err();
        assert!(e.to_string().contains("ET_PTKC_WLD_SLOT_x"), "{e}");
        let e = config(&[("ET_PTKC_WLD_SLOT_1", " ,5")])
            .wld_slots()
            .unwrap_err();
        assert!(e.to_string().contains("token label"), "{e}");
        assert_eq!(
            config(&[]).ha_timings().unwrap(),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
    }
}
