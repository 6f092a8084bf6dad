//! Progress of long work, on standard error: on a terminal a spinner with the elapsed time,
//! drawn by `indicatif`; otherwise a plain line when the work starts and one when it ends, so
//! that a script's log shows what took the time. Work that ends within [`DELAY`] shows
//! nothing.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How long work runs before its progress is shown.
pub const DELAY: Duration = Duration::from_millis(700);

/// Runs `work`, showing `what` (for example "device 0: erasing every token") once it has
/// taken longer than [`DELAY`], and how long it took when it ends.
pub fn run<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let (done, finished) = mpsc::channel::<()>();
    let label = what.to_string();
    let started = Instant::now();
    let watcher = std::thread::spawn(move || {
        if !matches!(
            finished.recv_timeout(DELAY),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return false;
        }
        let spinner = match std::io::stderr().is_terminal() {
            true => {
                let spinner = ProgressBar::new_spinner().with_message(label);
                spinner.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                spinner.enable_steady_tick(Duration::from_millis(120));
                Some(spinner)
            }
            false => {
                crate::eprintln!("{label} …");
                None
            }
        };
        let _ = finished.recv();
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        true
    });
    let result = work();
    let _ = done.send(());
    if watcher.join().unwrap_or(false) {
        crate::eprintln!("{what}: done in {:.1} s", started.elapsed().as_secs_f64());
    }
    result
}
