//! `ctconf --check-config`: the configuration as the library and the tools read it — every item
//! with its value and the level it came from, every device of the server list with its serial
//! and its SMPR — and the mistakes that would otherwise be silently ignored.

use tessera_config::items::{self, ITEMS};
use tessera_config::{Config, Level};

use crate::{Failure, Target};

fn value_line(out: &mut String, name: &str, value: &str, level: Level) {
    let value = match value.is_empty() {
        true => "\"\"",
        false => value,
    };
    out.push_str(&format!("  {name} = {value}  ({})\n", level.place()));
}

/// Prints the effective configuration and its problems; exit code 1 if there is one.
pub fn run() -> Result<u8, Failure> {
    let config = Config::load().map_err(|e| Failure::new(e.to_string()))?;
    let mut problems: Vec<String> = config.problems().iter().map(|p| p.to_string()).collect();
    let mut out = String::from("Configuration files:\n");
    for level in [Level::User, Level::System] {
        let path = match level {
            Level::User => tessera_config::user_file(),
            _ => tessera_config::system_file(),
        };
        let state = if path.exists() { "" } else { " (absent)" };
        out.push_str(&format!(
            "  {:<6} {}{state}\n",
            if level == Level::User {
                "user"
            } else {
                "system"
            },
            path.display()
        ));
    }
    out.push_str("Items for every device (value, and where it comes from):\n");
    for item in ITEMS {
        match config.item(item.name) {
            Some((value, level)) => value_line(&mut out, item.name, &value, level),
            None if item.used && !item.name.contains('<') => {
                out.push_str(&format!("  {} = {}  (default)\n", item.name, item.default))
            }
            None => {}
        }
    }
    // Items whose names are known but whose values are not valid.
    let checks = [
        config.servers().err().map(|e| e.to_string()),
        config
            .seconds(tessera_config::CONNECT_TIMEOUT)
            .err()
            .map(|e| e.to_string()),
        config
            .seconds(tessera_config::REPLY_TIMEOUT)
            .err()
            .map(|e| e.to_string()),
        config.server_user().err().map(|e| e.to_string()),
        tessera_client::dumps::allowed(&config)
            .err()
            .map(|e| e.to_string()),
        tessera_client::SecureSettings::from_config(config.clone())
            .err()
            .map(|e| e.to_string()),
    ];
    let invalid = checks.iter().any(Option::is_some);
    problems.extend(checks.into_iter().flatten());
    let servers = config.servers().unwrap_or_default();
    let list_level = config
        .item(tessera_config::SERVER_LIST)
        .map_or(Level::Default, |(_, level)| level);
    let mut serials = Vec::new();
    let mut unreached = Vec::new();
    for (number, address) in servers.iter().enumerate() {
        out.push_str(&format!(
            "Device {number}: {address}  ({} position {number}, {})\n",
            tessera_config::SERVER_LIST,
            list_level.place()
        ));
        if invalid {
            out.push_str("  not asked: correct the configuration first\n");
            unreached.push(number);
            continue;
        }
        let status = Target::open(number).and_then(|target| target.status());
        let status = match status {
            Ok(status) => status,
            Err(failure) => {
                out.push_str(&format!("  not reached: {failure}\n"));
                unreached.push(number);
                continue;
            }
        };
        let serial = status.info.serial.clone();
        out.push_str(&format!("  Serial Number = {serial}  (the device)\n"));
        out.push_str(&format!(
            "  Security Mode = {}  (the device)\n",
            tessera_core::flags::describe(status.flags)
        ));
        let smpr = format!("ET_PTKC_{serial}_SMPR");
        match config.item(&smpr) {
            Some((value, level)) => value_line(&mut out, &smpr, &value, level),
            None => out.push_str(&format!("  {smpr} = {}  (default)\n", items::SMPR.default)),
        }
        serials.push(serial);
    }
    for mut problem in config.unmatched_smpr(&serials) {
        if !unreached.is_empty() {
            let numbers: Vec<String> = unreached.iter().map(|n| n.to_string()).collect();
            problem.message = format!(
                "{} (device {} could not be asked: it may be the one)",
                problem.message,
                numbers.join(", ")
            );
        }
        problems.push(problem.to_string());
    }
    match problems.len() {
        0 => out.push_str("No problems found.\n"),
        count => {
            out.push_str(&format!(
                "{count} {}:\n",
                crate::status::plural(count, "problem", "problems")
            ));
            for problem in &problems {
                out.push_str(&format!("  {problem}\n"));
            }
        }
    }
    crate::print!("{out}");
    Ok(u8::from(!problems.is_empty()))
}
