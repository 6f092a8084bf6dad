//! Keeping secrets out of core files: at start the daemon makes itself non-dumpable
//! (`prctl(PR_SET_DUMPABLE, 0)`: no core file, and only root may read its memory through
//! `/proc/PID/mem` or attach a debugger) and sets `RLIMIT_CORE` to 0, unless
//! `--allow-core-dumps` asks to keep dumps for debugging (a warning says so). A crash then does
//! not write the keys and PINs the daemon holds to disk.
//!
//! PINs and key values themselves live in locked pages left out of any dump
//! ([`tessera_core::locked`]); at start the daemon says once whether locking works, and how to
//! raise `RLIMIT_MEMLOCK` when it does not.

/// What [`protect_process`] did, logged once logging is set up.
pub struct Dumps {
    allowed: bool,
    failure: Option<String>,
}

/// Turns core dumps off for this process, unless `allow`.
pub fn protect_process(allow: bool) -> Dumps {
    if allow {
        return Dumps {
            allowed: true,
            failure: None,
        };
    }
    let dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .err()
            .map(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"));
    let core = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .err()
    .map(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"));
    Dumps {
        allowed: false,
        failure: dumpable.or(core),
    }
}

impl Dumps {
    /// One log line if dumps stay on (asked for, or not turned off).
    pub fn log(&self) {
        if self.allowed {
            tracing::warn!(
                "--allow-core-dumps: core dumps stay on; a crash may write keys and PINs to disk (for debugging only)"
            );
        } else if let Some(failure) = &self.failure {
            tracing::warn!(error = %failure, "cannot turn core dumps off; a crash may write keys and PINs to disk");
        }
        log_locked_memory(&tessera_core::locked::report());
    }
}

/// One line on the memory that holds PINs and key values: locked, or why not and what to do.
fn log_locked_memory(report: &tessera_core::locked::Report) {
    match &report.error {
        None => tracing::info!("PINs and key values are held in locked memory, left out of core dumps"),
        Some(error) => {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
            let shown = |v: Option<u64>| v.map_or("unlimited".to_owned(), |b| format!("{} KiB", b / 1024));
            tracing::warn!(
                %error,
                rlimit_memlock = %shown(limit.current),
                "cannot lock the memory that holds PINs and key values: they may be written to swap. \
                 Raise RLIMIT_MEMLOCK to at least 1 MiB (systemd: LimitMEMLOCK=1M; shell: ulimit -l 1024) \
                 or give tesserad CAP_IPC_LOCK"
            );
        }
    }
}
