//! A latency histogram that threads record into without a lock, and its Prometheus text: the
//! daemon's metrics (request latency by call family, the store's commit latency).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: from 20 µs (a small call on the local socket) to
/// 2.5 s (an RSA-4096 key pair); longer ones count in the last (`+Inf`) bucket.
pub const BOUNDS: [f64; 14] = [
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
    2.5,
];

/// Counts of durations by bucket, and their sum.
pub struct Histogram {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram (usable in a `static`).
    pub const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the histogram as Prometheus text: cumulative `NAME_bucket{LABELS,le=…}` lines,
    /// `NAME_sum` and `NAME_count`. `labels` is empty or `key="value",…` without braces.
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |labels: &str| match labels.is_empty() {
            true => String::new(),
            false => format!("{{{labels}}}"),
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_is_in_seconds() {
        let histogram = Histogram::new();
        histogram.record(Duration::from_micros(10));
        histogram.record(Duration::from_micros(300));
        histogram.record(Duration::from_secs(5));
        let mut text = String::new();
        histogram.write_prometheus(&mut text, "t", "family=\"crypto\"");
        assert!(
            text.contains("t_bucket{family=\"crypto\",le=\"0.00002\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_bucket{family=\"crypto\",le=\"0.0005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_bucket{family=\"crypto\",le=\"2.5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_bucket{family=\"crypto\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("t_count{family=\"crypto\"} 3\n"), "{text}");
        assert!(
            text.contains("t_sum{family=\"crypto\"} 5.00031\n"),
            "{text}"
        );
        assert_eq!(histogram.count(), 3);
        let mut bare = String::new();
        Histogram::new().write_prometheus(&mut bare, "u", "");
        assert!(bare.contains("u_bucket{le=\"+Inf\"} 0\n") && bare.contains("u_count 0\n"));
    }
}
