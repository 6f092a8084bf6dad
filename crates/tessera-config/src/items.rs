//! Every configuration item Tessera knows, in one table, and the mistakes in a configuration
//! that would otherwise go unnoticed: an item name nobody reads (`ET_PTKC_1234_SMRP`), a name
//! that is not an item at all (`ET_PTKC_SMPR`, with no serial), an item kept for a mode Tessera
//! does not have, and an SMPR for a serial that no device of the server list has. The library
//! writes them to its log when it is initialised; `ctconf --check-config` prints them with the
//! effective configuration. The items are described for operators in docs/operations.md
//! ("Configuration items"), which a test holds to this table.

use crate::{Config, Level};

/// A known item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Its name; `<serial>` stands for a device's serial number.
    pub name: &'static str,
    /// The built-in value, as the operator should read it.
    pub default: &'static str,
    /// Read by Tessera (`false`: kept for a mode Tessera does not have yet; it has no effect).
    pub used: bool,
}

/// The per-device item: the client's secure-messaging policy for the device with that serial.
pub const SMPR: Item = Item {
    name: "ET_PTKC_<serial>_SMPR",
    default: "none (the device's flags decide)",
    used: true,
};

/// Every item but the per-device [`SMPR`], in the order `ctconf --check-config` shows them.
pub const ITEMS: &[Item] = &[
    item(crate::SERVER_LIST, "the default socket"),
    item(crate::CONNECT_TIMEOUT, "3"),
    item(crate::REPLY_TIMEOUT, "60"),
    item(crate::SERVER_USER, "none"),
    item("ET_PTKC_GENERAL_LOG", "stderr"),
    item("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS", "NO"),
    item("ET_PTKC_SMS_MAX_MESSAGES", "16777216"),
    item("ET_PTKC_SMS_MAX_BYTES", "17179869184"),
    item("ET_PTKC_SMS_MAX_SECONDS", "3600"),
    item("ET_PTKC_SMS_IDLE_SECONDS", "0 (never)"),
    item(
        "ET_PTKC_TRUSTSTORE_USER",
        "$XDG_CONFIG_HOME/tessera/trust, else ~/.config/tessera/trust",
    ),
    item("ET_PTKC_TRUSTSTORE_SYSTEM", "/etc/tessera/trust"),
    item(
        "ET_PTKC_KNOWN_DEVICES_USER",
        "$XDG_CONFIG_HOME/tessera/known_devices, else ~/.config/tessera/known_devices",
    ),
    item("ET_PTKC_KNOWN_DEVICES_SYSTEM", "/etc/tessera/known_devices"),
    item("ET_PTKC_GENERAL_LIBRARY_MODE", "NORMAL"),
    item("ET_PTKC_WLD_SLOT_<n>", "none"),
    item("ET_PTKC_HA_RECOVER_DELAY", "60"),
    item("ET_PTKC_HA_RECOVER_WAIT", "10"),
];

const fn item(name: &'static str, default: &'static str) -> Item {
    Item {
        name,
        default,
        used: true,
    }
}

/// Components of `ET_PTKC_<component>_...` names that are not serial numbers.
const COMPONENTS: &[&str] = &["GENERAL", "SMS", "TRUSTSTORE", "KNOWN", "WLD", "HA"];

/// What a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A known item (for `ET_PTKC_WLD_SLOT_<n>` and SMPRs, the pattern it matches).
    Known(Item),
    /// `ET_PTKC_<serial>_SMPR`, with its serial.
    Smpr(String),
    /// Not an item name: why, and what was probably meant.
    Malformed(String),
    /// A well-formed name that no part of Tessera reads; the nearest known name, if any.
    Unknown(Option<String>),
}

/// Classifies an item name.
pub fn classify(name: &str) -> Name {
    if let Some(known) = ITEMS.iter().find(|i| i.name == name) {
        return Name::Known(*known);
    }
    if let Some(n) = name.strip_prefix("ET_PTKC_WLD_SLOT_") {
        if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
            if let Some(slot) = ITEMS.iter().find(|i| i.name == "ET_PTKC_WLD_SLOT_<n>") {
                return Name::Known(*slot);
            }
        }
    }
    if name != name.to_ascii_uppercase() {
        let upper = name.to_ascii_uppercase();
        return Name::Malformed(match classify(&upper) {
            Name::Known(_) | Name::Smpr(_) => {
                format!("item names are upper case: write {upper}")
            }
            _ => "item names are upper case".into(),
        });
    }
    let parts: Vec<&str> = name.split('_').collect();
    if parts.len() < 3 || parts[0] != "ET" || parts.iter().any(|p| p.is_empty()) {
        return Name::Malformed(
            "not ET_<class>_<component>_<item> (for example ET_HSM_NETCLIENT_SERVERLIST)".into(),
        );
    }
    if parts[1] == "PTKC" {
        let smpr_like = parts.last().is_some_and(|last| near(last, "SMPR"));
        if parts.len() == 3 && smpr_like {
            return Name::Malformed(
                "an SMPR item names the device's serial number: ET_PTKC_<serial>_SMPR (for example ET_PTKC_1234567890_SMPR; ctconf -a<device> shows the serial)".to_string()
            );
        }
        let serial = parts[2];
        let names_a_serial =
            !COMPONENTS.contains(&serial) && serial.chars().any(|c| c.is_ascii_digit());
        if names_a_serial {
            if parts.len() == 4 && parts[3] == "SMPR" {
                return Name::Smpr(serial.to_string());
            }
            return Name::Unknown(Some(format!("ET_PTKC_{serial}_SMPR")));
        }
    }
    let nearest = ITEMS
        .iter()
        .filter(|i| !i.name.contains('<'))
        .map(|i| (distance(name, i.name), i.name))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, n)| n.to_string());
    Name::Unknown(nearest)
}

/// Whether `word` is `target` with at most two letters wrong, missing or swapped.
fn near(word: &str, target: &str) -> bool {
    distance(word, target) <= 2
}

/// Edit distance (insertions, deletions, substitutions, adjacent swaps).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A mistake in the configuration, named by its item and where it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The item name as written.
    pub item: String,
    /// Where it is set: `environment`, `user file PATH`, `system file PATH`.
    pub place: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration item {} ({}): {}",
            self.item, self.place, self.message
        )
    }
}

impl Level {
    /// Where this level of this process is: `environment`, `user file PATH`, `system file
    /// PATH`, `default`.
    pub fn place(self) -> String {
        match self {
            Level::Temporary => "environment".into(),
            Level::User => format!("user file {}", crate::user_file().display()),
            Level::System => format!("system file {}", crate::system_file().display()),
            Level::Default => "default".into(),
        }
    }
}

impl Config {
    /// The places (levels) where `name` is set, first match first.
    pub fn places(&self, name: &str) -> Vec<Level> {
        [
            (&self.temporary, Level::Temporary),
            (&self.user, Level::User),
            (&self.system, Level::System),
        ]
        .into_iter()
        .filter(|(map, _)| map.contains_key(name))
        .map(|(_, level)| level)
        .collect()
    }

    /// The SMPR items set, as `(serial, item name)`.
    pub fn smpr_items(&self) -> Vec<(String, String)> {
        self.names()
            .into_iter()
            .filter_map(|name| match classify(&name) {
                Name::Smpr(serial) => Some((serial, name)),
                _ => None,
            })
            .collect()
    }

    /// The names that are no item Tessera reads: malformed, unknown, or kept for a mode
    /// Tessera does not have. One problem per name, at the place that wins.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for name in self.names() {
            let message = match classify(&name) {
                Name::Known(item) if item.used => continue,
                Name::Smpr(_) => continue,
                Name::Known(_) => {
                    "kept for a mode Tessera does not have: this item has no effect".to_string()
                }
                Name::Malformed(why) => format!("not an item name, ignored: {why}"),
                Name::Unknown(Some(nearest)) => {
                    format!("no such item, ignored; did you mean {nearest}?")
                }
                Name::Unknown(None) => {
                    "no such item, ignored (the items are listed in docs/operations.md)".to_string()
                }
            };
            let place = self
                .places(&name)
                .first()
                .map_or_else(|| "default".to_string(), |l| l.place());
            problems.push(Problem {
                item: name,
                place,
                message,
            });
        }
        problems
    }

    /// The SMPR items whose serial none of `serials` (those of the devices of the server list)
    /// is: they apply to no device, so the device the operator meant runs without them.
    pub fn unmatched_smpr(&self, serials: &[String]) -> Vec<Problem> {
        self.smpr_items()
            .into_iter()
            .filter(|(serial, _)| !serials.contains(serial))
            .map(|(serial, name)| {
                let place = self
                    .places(&name)
                    .first()
                    .map_or_else(|| "default".to_string(), |l| l.place());
                let devices = match serials.len() {
                    0 => "the server list has no device".to_string(),
                    _ => format!("the devices that answered are serial {}", serials.join(", ")),
                };
                Problem {
                    item: name,
                    place,
                    message: format!(
                        "no device of the server list has serial {serial} ({devices}), so this policy applies to none; correct the serial (`ctconf -a<device>` shows it)"
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_levels(map, HashMap::new(), HashMap::new())
    }

    #[test]
    fn names_are_known_smprs_malformed_or_unknown() {
        assert!(matches!(classify("ET_HSM_NETCLIENT_SERVERLIST"), Name::Known(i) if i.used));
        assert_eq!(
            classify("ET_PTKC_1234567890_SMPR"),
            Name::Smpr("1234567890".into())
        );
        assert!(matches!(classify("ET_PTKC_WLD_SLOT_3"), Name::Known(i) if i.used));
        // A typo in the item of an SMPR.
        assert_eq!(
            classify("ET_PTKC_1234567890_SMRP"),
            Name::Unknown(Some("ET_PTKC_1234567890_SMPR".into()))
        );
        // An SMPR without its serial.
        assert!(
            matches!(classify("ET_PTKC_SMPR"), Name::Malformed(m) if m.contains("ET_PTKC_<serial>_SMPR"))
        );
        assert!(matches!(classify("ET_PTKC_SMRP"), Name::Malformed(_)));
        assert!(matches!(classify("ET_HSM__SERVERLIST"), Name::Malformed(_)));
        assert!(matches!(classify("ET_X"), Name::Malformed(_)));
        assert!(
            matches!(classify("et_hsm_netclient_serverlist"), Name::Malformed(m) if m.contains("write ET_HSM_NETCLIENT_SERVERLIST"))
        );
        assert_eq!(
            classify("ET_HSM_NETCLIENT_SERVERLST"),
            Name::Unknown(Some("ET_HSM_NETCLIENT_SERVERLIST".into()))
        );
        assert_eq!(classify("ET_SOMETHING_ELSE_ENTIRELY"), Name::Unknown(None));
    }

    #[test]
    fn every_mistake_is_one_problem_naming_its_item_and_place() {
        let config = env(&[
            ("ET_HSM_NETCLIENT_SERVERLIST", "/tmp/s"),
            ("ET_PTKC_1234567890_SMPR", "SR"),
            ("ET_PTKC_1234567890_SMRP", "SR"),
            ("ET_PTKC_SMPR", "SR"),
            ("ET_PTKC_HA_RECOVER_WAIT", "3"),
        ]);
        let problems = config.problems();
        let items: Vec<&str> = problems.iter().map(|p| p.item.as_str()).collect();
        assert_eq!(items, ["ET_PTKC_1234567890_SMRP", "ET_PTKC_SMPR"]);
        assert!(problems.iter().all(|p| p.place == "environment"));
        assert!(problems[0]
            .to_string()
            .contains("did you mean ET_PTKC_1234567890_SMPR?"));
        assert!(problems[1].message.contains("serial"));
        assert!(env(&[("ET_PTKC_1_SMPR", "T")]).problems().is_empty());
    }

    #[test]
    fn an_smpr_for_a_serial_no_device_has_is_reported() {
        let config = env(&[
            ("ET_PTKC_1111111111_SMPR", "SR"),
            ("ET_PTKC_2222222222_SMPR", "T"),
        ]);
        let problems = config.unmatched_smpr(&["2222222222".to_string()]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].item, "ET_PTKC_1111111111_SMPR");
        assert!(
            problems[0]
                .message
                .contains("no device of the server list has serial 1111111111")
                && problems[0]
                    .message
                    .contains("answered are serial 2222222222"),
            "{}",
            problems[0]
        );
        assert!(config
            .unmatched_smpr(&["1111111111".into(), "2222222222".into()])
            .is_empty());
    }

    #[test]
    fn the_table_holds_the_items_the_crates_name() {
        for name in [
            crate::SERVER_LIST,
            crate::CONNECT_TIMEOUT,
            crate::REPLY_TIMEOUT,
            crate::SERVER_USER,
        ] {
            assert!(ITEMS.iter().any(|i| i.name == name), "{name}");
        }
        // The built-in values the table shows are those the code uses.
        for item in ITEMS.iter().filter(|i| i.name != crate::SERVER_LIST) {
            if let Some(value) = crate::default_value(item.name) {
                assert_eq!(value, item.default, "{}", item.name);
            }
        }
    }
}
