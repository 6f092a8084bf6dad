//! The daemon's life: the data directory locked, the device opened, the runtime started, the
//! sockets bound ([`crate::listener`]), the event log flushed as it runs, and on a stop
//! ([`crate::shutdown`]) the listeners ended, every connection's clean-up awaited (for
//! [`shutdown::DEADLINE`] at most), the last events written and the sockets removed.

use std::sync::Arc;
use std::time::Duration;

use tessera_config::listen::Listen;
use tessera_hsm::Hsm;
use tokio::sync::Semaphore;

pub use crate::config::Config;
use crate::connection::frame::FrameMemory;
use crate::connection::Shared;
use crate::guard::Guard;
use crate::listener::Admission;
use crate::poller::Poller;
use crate::shutdown::{self, Shutdown};
use crate::tally::Tally;

/// The signal a process gets when a file would grow past its size limit (Linux).
const SIGXFSZ: i32 = 25;

/// Runs the daemon until SIGINT or SIGTERM (or, with `--exit-with-parent`, its parent's end).
pub fn run(config: Config) -> Result<(), String> {
    // Socket directories first: a refused one stops the daemon before it touches the data.
    for listen in &config.listen {
        if let Listen::Unix(path) = listen {
            crate::local::prepare_directory(path)?;
        }
    }
    let _lock = crate::datadir::lock(&config.data_dir, config.allow_group_access)?;
    let hsm = Arc::new(Hsm::open(&config.data_dir, &config.options).map_err(|e| e.to_string())?);
    // A node serves once it holds the cluster's tokens, caught up.
    if let Some(cluster) = &config.cluster {
        crate::cluster::join(&hsm, cluster)?;
    }
    // One I/O thread owns the runtime's event loop, so a connection that polls for its next
    // request (`Poller`) sees it as soon as it arrives; with several, readiness reaches the
    // thread that waits for events, and polling would only wake the others.
    let mut builder = if config.one_io_thread() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.io_threads);
        builder
    };
    // An I/O thread that goes idle first scrubs what an answered call left on its stack.
    let runtime = builder
        .on_thread_park(crate::dispatch::pay_scrub_when_idle)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(hsm, config))
}

async fn serve(hsm: Arc<Hsm>, config: Config) -> Result<(), String> {
    // A store file that may grow no more (RLIMIT_FSIZE) must fail the write, not kill the
    // daemon: with a handler installed, SIGXFSZ no longer terminates and the write gives EFBIG.
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
    let shutdown = Shutdown::new();
    hsm.on_clear_sessions_ended(shutdown.clear_sessions_ended());
    let tally = Arc::new(Tally::default());
    let shared = Shared {
        idle_timeout: config.idle_timeout,
        max_frame_len: config.max_frame_len,
        frames: Arc::new(FrameMemory::new(config.frame_memory, tally.clone())),
        tally: tally.clone(),
        hsm: hsm.clone(),
        guard: Arc::new(Guard::new(config.peer_limits)),
        key_limits: config.key_limits,
        frame_timeout: config.frame_timeout,
        poller: Arc::new(Poller::new(if config.one_io_thread() {
            config.busy_poll
        } else {
            Duration::ZERO
        })),
    };
    let admission = Arc::new(Admission {
        limit: Arc::new(Semaphore::new(config.max_connections)),
        network: Arc::new(Semaphore::new(
            config
                .max_connections
                .saturating_sub(config.local_reserve)
                .max(1),
        )),
        client_access: config.client_access.clone(),
    });
    let bound = crate::listener::bind(&config).await?;
    if let Some(address) = &config.metrics {
        crate::metrics::serve(address.clone(), hsm.clone(), config.data_dir.clone()).await?;
    }
    let (shown, sockets) = (bound.shown.clone(), bound.sockets.clone());
    let listeners = bound.spawn(&shared, &admission, &shutdown);
    drop(shared);
    if let Some(list) = &config.client_access {
        // What `psesh network show` reports.
        let listening = list.with_file_name("listening");
        // Group-readable (psesh runs as the appliance's accounts).
        if let Err(e) =
            tessera_config::write_atomically(&listening, &(shown.join("\n") + "\n"), 0o660)
        {
            tracing::warn!(file = %listening.display(), error = %e, "cannot record the listen addresses");
        }
    }
    tracing::info!(
        serial = hsm.serial(),
        data_dir = %config.data_dir.display(),
        listen = %shown.join(" "),
        appliance = config.client_access.is_some(),
        "tesserad ready"
    );
    // Channel openings and closings reach the event log in batches (tessera-hsm's EventLog).
    // So do the daemon's limits, counted and reported once a second at most.
    let flusher = {
        let hsm = hsm.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            let mut ticks = 0u64;
            loop {
                every.tick().await;
                ticks += 1;
                let hsm = hsm.clone();
                let tally = tally.clone();
                let report = ticks.is_multiple_of(4);
                let _ = tokio::task::spawn_blocking(move || {
                    if report {
                        tally.report(&hsm);
                    }
                    hsm.flush_events()
                })
                .await;
            }
        })
    };
    shutdown::requested(config.parent).await;
    shutdown.begin();
    for listener in listeners {
        let _ = listener.await;
    }
    // The last events wait for what the connections record as they end: their channels'
    // closings (counted in the `channel-count` entry written below), their limits.
    let unfinished = shutdown.connections_finished().await;
    if unfinished > 0 {
        let (connections, their) = if unfinished == 1 {
            ("connection", "its")
        } else {
            ("connections", "their")
        };
        tracing::warn!(
            "{unfinished} {connections} did not finish {their} clean-up within {} s; stopping \
             without waiting longer (a channel still open is not counted as closed in the event log)",
            shutdown::DEADLINE.as_secs()
        );
    }
    flusher.abort();
    let last = hsm.clone();
    let _ = tokio::task::spawn_blocking(move || {
        tally.report(&last);
        last.close_events()
    })
    .await;
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
