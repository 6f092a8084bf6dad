//! Core dumps of the application that loaded the library: a core file holds what the process
//! held, PINs and key values passed through the library among them. `C_Initialize` makes the
//! process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`) and sets the soft `RLIMIT_CORE` to 0,
//! unless `ET_PTKC_GENERAL_ALLOW_CORE_DUMPS` is `YES`. This is a decision about the host
//! process, made by default because the issue that asked for it found keys in a core file;
//! docs/pkcs11.md says so.

use tessera_config::{Config, ConfigError};

/// Item: `YES` keeps the application's core dumps (debugging); `NO` (the default) turns them
/// off at `C_Initialize`.
pub const ALLOW_CORE_DUMPS_ITEM: &str = "ET_PTKC_GENERAL_ALLOW_CORE_DUMPS";

/// Whether the configuration allows core dumps; an unknown value is an error naming the item.
pub fn allowed(config: &Config) -> Result<bool, ConfigError> {
    let Some((value, level)) = config.item(ALLOW_CORE_DUMPS_ITEM) else {
        return Ok(false);
    };
    match value.trim().to_ascii_uppercase().as_str() {
        "YES" | "TRUE" | "1" => Ok(true),
        "NO" | "FALSE" | "0" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            item: ALLOW_CORE_DUMPS_ITEM.into(),
            level,
            reason: format!("{value:?} is neither YES nor NO"),
        }),
    }
}

/// Turns core dumps off for this process; the error says which call failed.
pub fn disable() -> Result<(), String> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"))?;
    let hard = rustix::process::getrlimit(rustix::process::Resource::Core).maximum;
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: hard,
        },
    )
    .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"))
}
