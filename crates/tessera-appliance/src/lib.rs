//! The Tessera appliance: the HSM daemon housed in a network appliance, managed by appliance
//! users with `psesh`.
//!
//! The appliance's own state lives in `DATA_DIR/appliance` (made by `tesserad --appliance`):
//!
//! | file | what |
//! | --- | --- |
//! | `users` | the users' salted password hashes ([`users`]) |
//! | `trust/<user>/` | each user's appliance trust store (what `hsm cert` fetched) |
//! | `audit.log` | the appliance audit log ([`audit`]) |
//! | `clients` | the client access list the daemon enforces ([`tessera_config::access`]) |
//! | `listening` | the addresses the daemon serves (written by the daemon) |
//! | `history/<user>` | each user's shell history |
#![forbid(unsafe_code)]

pub mod audit;
pub mod shell;
pub mod users;

use std::path::{Path, PathBuf};

/// The appliance state directory of a daemon data directory.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("appliance")
}
