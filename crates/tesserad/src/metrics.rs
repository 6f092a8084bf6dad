//! `--metrics tcp:HOST:PORT`: what the daemon does, in Prometheus text format at
//! `GET /metrics` — requests by call and result code, latency by call family, connections,
//! sessions and channels, handshakes and their failures by reason, PIN lockouts, the store's
//! size and commit latency, and refusals by limit. Off unless asked; counters only, never a
//! value, a PIN, a label or a peer's address.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tessera_core::histogram::Histogram;
use tessera_core::Rv;
use tessera_hsm::Hsm;
use tessera_wire::{Family, Traits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The daemon's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Answered requests by (call, result code).
    requests: Mutex<HashMap<(&'static str, u64), u64>>,
    /// Time to answer, by call family ([`Family::index`]).
    latency: [Histogram; Family::ALL.len()],
    /// Client connections open now.
    connections: AtomicI64,
    /// Client connections accepted since the start.
    accepted: AtomicU64,
    /// Handshakes completed (key confirmation passed).
    handshakes: AtomicU64,
    /// Handshakes refused, by reason.
    handshake_failures: Mutex<HashMap<&'static str, u64>>,
    /// Handshakes answered, by the thread that signed them (`io` or `pool`).
    handshake_signatures: Mutex<HashMap<&'static str, u64>>,
    /// Refusals by limit.
    limits: Mutex<HashMap<&'static str, u64>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Scrapes served at once; more connections are answered 503 at once.
const SCRAPES: usize = 16;

/// How long a scraper may take to send its request; slower ones are closed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

/// How long one scrape may take, from its connection to its last byte.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// The counters, when `--metrics` is on.
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bump<K: Eq + std::hash::Hash>(map: &Mutex<HashMap<K, u64>>, key: K) {
    *lock(map).entry(key).or_default() += 1;
}

/// The limit a result code reports, if any (the others count under their limit where they
/// are refused: connections, frames, idle connections).
fn limit_of(code: u64) -> Option<&'static str> {
    match Rv::from_code(code)? {
        Rv::SessionCount => Some("sessions"),
        Rv::DeviceMemory => Some("memory"),
        Rv::ChannelLimit => Some("channels"),
        Rv::HandshakeRateLimited => Some("handshake-rate"),
        _ => None,
    }
}

/// The time a request starts, when the metrics are on (a clock read saved otherwise).
pub(crate) fn start() -> Option<std::time::Instant> {
    get().map(|_| std::time::Instant::now())
}

/// Counts an answered request.
pub(crate) fn request(traits: &Traits, result: Result<(), u64>, elapsed: Duration) {
    let Some(metrics) = get() else { return };
    let code = result.err().unwrap_or(0);
    bump(&metrics.requests, (traits.name, code));
    metrics.latency[traits.family.index()].record(elapsed);
    if let Some(kind) = limit_of(code) {
        bump(&metrics.limits, kind);
    }
}

/// Counts a refusal by one of the daemon's own limits.
pub(crate) fn limit(kind: &'static str) {
    if let Some(metrics) = get() {
        bump(&metrics.limits, kind);
    }
}

/// Counts a connection while it lives: open from here until the value is dropped, whatever
/// ends it.
pub(crate) struct Open(Option<&'static Metrics>);

/// Counts a connection that opens.
pub(crate) fn connection() -> Open {
    let metrics = get();
    if let Some(metrics) = metrics {
        metrics.connections.fetch_add(1, Ordering::Relaxed);
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
    }
    Open(metrics)
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts an answered handshake's identity signature by where it was made: on the I/O thread (`here`:
/// no other request handled and no other handshake underway) or on the worker pool.
pub(crate) fn handshake_signed(here: bool) {
    let Some(metrics) = get() else { return };
    bump(
        &metrics.handshake_signatures,
        match here {
            true => "io",
            false => "pool",
        },
    );
}

/// Counts a handshake's outcome: `Ok` once the key confirmation passed, or the reason of its
/// refusal.
pub(crate) fn handshake(outcome: Result<(), &'static str>) {
    let Some(metrics) = get() else { return };
    match outcome {
        Ok(()) => {
            metrics.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        Err(reason) => {
            bump(&metrics.handshake_failures, reason);
            match reason {
                "rate-limited" => bump(&metrics.limits, "handshake-rate"),
                "channel-limit" => bump(&metrics.limits, "channels"),
                _ => {}
            }
        }
    }
}

/// The reason label of a refused handshake step's result code.
pub(crate) fn handshake_reason(code: u64) -> &'static str {
    match Rv::from_code(code) {
        Some(Rv::ChannelLimit) => "channel-limit",
        Some(Rv::HandshakeRateLimited) => "rate-limited",
        Some(rv) => rv.name(),
        None => "other",
    }
}

fn result_name(code: u64) -> String {
    match Rv::from_code(code) {
        Some(rv) => rv.name().to_string(),
        None => format!("0x{code:08X}"),
    }
}

impl Metrics {
    /// The Prometheus text of every metric.
    fn render(&self, hsm: &Hsm, store: &std::path::Path) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "tessera_requests_total",
            "counter",
            "Requests answered, by call and PKCS#11 result code.",
        );
        let mut requests: Vec<_> = lock(&self.requests)
            .iter()
            .map(|(&(call, code), &count)| (call, result_name(code), count))
            .collect();
        requests.sort();
        for (call, result, count) in requests {
            let _ = writeln!(
                out,
                "tessera_requests_total{{call=\"{call}\",result=\"{result}\"}} {count}"
            );
        }
        header(
            &mut out,
            "tessera_request_duration_seconds",
            "histogram",
            "Time from a request's decoding to its result, the wait for the worker pool included, by call family.",
        );
        for f in Family::ALL {
            self.latency[f.index()].write_prometheus(
                &mut out,
                "tessera_request_duration_seconds",
                &format!("family=\"{}\"", f.as_str()),
            );
        }
        let single: [(&str, &str, &str, f64); 7] = [
            (
                "tessera_connections_open",
                "gauge",
                "Client connections open.",
                self.connections.load(Ordering::Relaxed) as f64,
            ),
            (
                "tessera_connections_accepted_total",
                "counter",
                "Client connections accepted since the start.",
                self.accepted.load(Ordering::Relaxed) as f64,
            ),
            (
                "tessera_sessions_open",
                "gauge",
                "PKCS#11 sessions open on the device.",
                hsm.session_count() as f64,
            ),
            (
                "tessera_channels_open",
                "gauge",
                "Secure-messaging channels open.",
                hsm.channel_count() as f64,
            ),
            (
                "tessera_handshakes_total",
                "counter",
                "Secure-messaging handshakes completed.",
                self.handshakes.load(Ordering::Relaxed) as f64,
            ),
            (
                "tessera_pin_lockouts_total",
                "counter",
                "PINs locked by wrong guesses since the start.",
                hsm.pin_lockouts() as f64,
            ),
            (
                "tessera_store_bytes",
                "gauge",
                "Size of the token store file.",
                std::fs::metadata(store).map_or(0.0, |m| m.len() as f64),
            ),
        ];
        for (name, kind, help, value) in single {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "tessera_handshake_failures_total",
            "counter",
            "Secure-messaging handshakes refused, by reason.",
        );
        write_map(
            &mut out,
            "tessera_handshake_failures_total",
            "reason",
            &self.handshake_failures,
        );
        header(
            &mut out,
            "tessera_handshake_signatures_total",
            "counter",
            "Handshakes signed, by thread: io (alone, on the I/O thread) or pool (under load, on the worker pool).",
        );
        write_map(
            &mut out,
            "tessera_handshake_signatures_total",
            "thread",
            &self.handshake_signatures,
        );
        header(
            &mut out,
            "tessera_store_commit_duration_seconds",
            "histogram",
            "Time of the token store's commits.",
        );
        tessera_store::COMMITS.write_prometheus(
            &mut out,
            "tessera_store_commit_duration_seconds",
            "",
        );
        header(
            &mut out,
            "tessera_limit_refusals_total",
            "counter",
            "Requests or connections refused, or connections closed, by a limit.",
        );
        write_map(
            &mut out,
            "tessera_limit_refusals_total",
            "kind",
            &self.limits,
        );
        out
    }
}

/// A metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn write_map(out: &mut String, name: &str, label: &str, map: &Mutex<HashMap<&'static str, u64>>) {
    let mut entries: Vec<_> = lock(map).iter().map(|(k, v)| (*k, *v)).collect();
    entries.sort();
    for (key, count) in entries {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {count}");
    }
}

/// `--metrics ADDRESS`: `tcp:HOST:PORT`.
pub(crate) fn parse_address(text: &str) -> Result<String, String> {
    match text.strip_prefix("tcp:") {
        Some(address)
            if address
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) =>
        {
            Ok(address.to_string())
        }
        _ => Err(format!(
            "--metrics {text:?}: give tcp:HOST:PORT, for example tcp:127.0.0.1:9412"
        )),
    }
}

/// Turns the counters on and serves them at `address` until the daemon stops.
pub(crate) async fn serve(address: String, hsm: Arc<Hsm>, data_dir: PathBuf) -> Result<(), String> {
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot serve metrics on tcp:{address}: {e}"))?;
    let _ = METRICS.set(Metrics::default());
    let shown = listener.local_addr().map_or(address, |a| a.to_string());
    tracing::info!(address = %shown, "metrics served at http://{shown}/metrics");
    let store = data_dir.join("tessera.redb");
    // A few scrapes at once, each within a deadline: a flood of connections to this port
    // takes no more than that from the daemon (the others are answered 503 at once).
    let scrapes = Arc::new(tokio::sync::Semaphore::new(SCRAPES));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = scrapes.clone().try_acquire_owned() else {
                // Without waiting: a short answer fits the socket's buffer, or is dropped.
                let _ = stream.try_write(BUSY);
                continue;
            };
            let (hsm, store) = (hsm.clone(), store.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(SCRAPE_DEADLINE, scrape(stream, &hsm, &store)).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

/// The answer when every scrape slot is taken.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Answers one HTTP request: `GET /metrics`, else 404 (the request is read up to its blank
/// line, 8 KiB at most, within [`REQUEST_DEADLINE`]).
async fn scrape(mut stream: tokio::net::TcpStream, hsm: &Hsm, store: &std::path::Path) {
    let mut request = Vec::with_capacity(512);
    let read = async {
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(REQUEST_DEADLINE, read).await, Ok(true)) {
        return;
    }
    let wanted = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?");
    let (status, body) = match (wanted, get()) {
        (true, Some(metrics)) => ("200 OK", metrics.render(hsm, store)),
        _ => (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
