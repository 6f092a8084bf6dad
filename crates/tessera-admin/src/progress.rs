//! Progress of long work, on standard error: on a terminal a spinner (or a bar for counted
//! steps) with the elapsed time, drawn by `indicatif`; otherwise a plain line when the work
//! starts and one when it ends, so that a script's log shows what took the time. Work that
//! ends within [`DELAY`] shows nothing.

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

/// Counted steps of one piece of work: a bar on a terminal, a line per step otherwise.
pub struct Steps {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    started: Instant,
}

impl Steps {
    /// Starts `total` steps of `what`.
    pub fn new(what: &str, total: u64) -> Steps {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total).with_message(what.to_string());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Steps {
            bar,
            what: what.to_string(),
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Starts the next step, named `step`.
    pub fn step(&mut self, step: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{}: {step}", self.what));
                bar.set_position(self.done - 1);
            }
            None => crate::eprintln!("{}: {}/{}: {step}", self.what, self.done, self.total),
        }
    }

    /// Ends the work.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        crate::eprintln!(
            "{}: done in {:.1} s",
            self.what,
            self.started.elapsed().as_secs_f64()
        );
    }
}
