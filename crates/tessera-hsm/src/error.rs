//! Why a device could not be opened or kept: the engine's error for its callers (the daemon).

use std::path::PathBuf;

use tessera_store::StoreError;

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The token store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the data directory could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The options are invalid.
    #[error("{0}")]
    Options(String),
    /// The store is older than the recorded state: it was rolled back.
    #[error(
        "refusing to serve: {0}. Put back the newest tessera.redb; to serve this one \
             anyway (its older PIN counters, flags and events become current), start once with \
             --accept-rollback"
    )]
    Rollback(String),
}
