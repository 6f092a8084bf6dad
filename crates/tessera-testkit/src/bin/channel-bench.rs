//! `channel-bench`: secure-messaging channels at scale, against daemons whose identity key is
//! P-521 or ML-DSA-87 and whose flags require full secure messaging (`nuNU`):
//!
//! - handshakes per second with 1, 2, 4 and 8 client threads, each handshake a new connection, a
//!   full handshake (chain and signature checked against the trust store) and a
//!   `C_OpenSession` inside the new channel;
//! - the daemon's memory per idle channel: its resident memory before and after opening N
//!   channels that then stay idle;
//!
//! each for the hybrid channel (X25519 and ML-KEM-768, the default) and the classical one (the
//! client offering no ML-KEM, as a library of the classical protocol does), each idle figure
//! on a fresh daemon.
//!
//! Client and daemon share this machine's cores, as the issue asks.
//!
//! Run: `cargo build --release --workspace && ./target/release/channel-bench [--seconds S]
//! [--idle N]` (defaults: 2 s per thread count, 10 000 idle channels).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::{Device, SecureSettings};
use tessera_config::ServerAddress;
use tessera_core::ck;
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Call, Reply};

/// A new connection with a new channel, in which a session is opened (and, for an idle
/// channel, closed again: a token has a session limit, channels do not).
fn channel(daemon: &Daemon, settings: &Arc<SecureSettings>, keep_session: bool) -> Device {
    let address = ServerAddress::parse(&daemon.server_list(Transport::Unix)).expect("address");
    let device = Device::new(address, Duration::from_secs(5), Duration::from_secs(30))
        .with_security(settings.clone());
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let (session, generation) = match device.call(None, Call::OpenSession { slot: 0, flags }) {
        Ok((Reply::Handle(session), generation)) => (session, generation),
        other => panic!("no channel: {other:?}"),
    };
    if !keep_session {
        device
            .call(Some(generation), Call::CloseSession { session })
            .expect("the session closes");
    }
    device
}

/// The cryptography of one handshake, timed in this process with aws-lc-rs (the library both
/// ends use), in seconds per operation: what the machine allows, beside what the channel does.
struct Crypto {
    /// The device's identity signature of the transcript.
    sign: f64,
    /// The client's check of it (the chain itself is checked once per trust store and minute).
    verify: f64,
    /// An X25519 key pair (each end makes one).
    x25519_keygen: f64,
    /// An X25519 agreement (each end makes one).
    x25519_agree: f64,
    /// ML-KEM-768: the client's key pair, the device's encapsulation, the client's
    /// decapsulation (hybrid channels only).
    kem: f64,
}

impl Crypto {
    /// Times the operations of a handshake with an identity of `identity` ("P-521" or
    /// "ML-DSA-87").
    fn measure(identity: &str) -> Crypto {
        use aws_lc_rs::agreement::{
            agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519,
        };
        use aws_lc_rs::kem::{DecapsulationKey, ML_KEM_768};
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, PqdsaKeyPair};
        let rng = SystemRandom::new();
        // A transcript hash's worth of message, as the handshake signs.
        let message = [0x5au8; 64];
        let (sign, verify) = match identity {
            "ML-DSA-87" => {
                let pair = PqdsaKeyPair::generate(&signature::ML_DSA_87_SIGNING).expect("a key");
                let mut sig = vec![0u8; signature::ML_DSA_87_SIGNING.signature_len()];
                let sign = tessera_testkit::seconds_per_call(|| {
                    pair.sign(&message, &mut sig).expect("a signature");
                });
                let public = pair.public_key().as_ref().to_vec();
                let key = signature::UnparsedPublicKey::new(&signature::ML_DSA_87, &public);
                let verify = tessera_testkit::seconds_per_call(|| {
                    key.verify(&message, &sig).expect("valid")
                });
                (sign, verify)
            }
            _ => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P521_SHA512_ASN1_SIGNING, &rng)
                        .expect("a key");
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                    pkcs8.as_ref(),
                )
                .expect("a key");
                let mut sig = pair.sign(&rng, &message).expect("a signature");
                let sign = tessera_testkit::seconds_per_call(|| {
                    sig = pair.sign(&rng, &message).expect("a signature")
                });
                let public = pair.public_key().as_ref().to_vec();
                let key =
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P521_SHA512_ASN1, &public);
                let verify = tessera_testkit::seconds_per_call(|| {
                    key.verify(&message, sig.as_ref()).expect("valid")
                });
                (sign, verify)
            }
        };
        let x25519_keygen = tessera_testkit::seconds_per_call(|| {
            let private = EphemeralPrivateKey::generate(&X25519, &rng).expect("a key");
            private.compute_public_key().expect("a public key");
        });
        let peer = EphemeralPrivateKey::generate(&X25519, &rng)
            .and_then(|k| k.compute_public_key())
            .expect("a key");
        let keys: Vec<EphemeralPrivateKey> = (0..20_000)
            .map(|_| EphemeralPrivateKey::generate(&X25519, &rng).expect("a key"))
            .collect();
        let mut keys = keys.into_iter();
        // Each agreement consumes its key: keys made beforehand, so that only the agreement
        // is timed.
        let x25519_agree = tessera_testkit::seconds_per_call(|| {
            let key = keys.next().expect("keys enough for 0.3 s");
            agree_ephemeral(
                key,
                UnparsedPublicKey::new(&X25519, peer.as_ref()),
                (),
                |_| Ok(()),
            )
            .expect("an agreement");
        });
        let decapsulation = DecapsulationKey::generate(&ML_KEM_768).expect("a key");
        let encapsulation = decapsulation.encapsulation_key().expect("a key");
        let kem_keygen = tessera_testkit::seconds_per_call(|| {
            DecapsulationKey::generate(&ML_KEM_768)
                .and_then(|k| k.encapsulation_key())
                .expect("a key");
        });
        let (ciphertext, _) = encapsulation.encapsulate().expect("a ciphertext");
        let kem_encaps = tessera_testkit::seconds_per_call(|| {
            encapsulation.encapsulate().expect("a ciphertext");
        });
        let kem_decaps = tessera_testkit::seconds_per_call(|| {
            decapsulation
                .decapsulate(ciphertext.as_ref().into())
                .expect("a secret");
        });
        Crypto {
            sign,
            verify,
            x25519_keygen,
            x25519_agree,
            kem: kem_keygen + kem_encaps + kem_decaps,
        }
    }

    /// CPU seconds of one handshake's cryptography, both ends together.
    fn per_handshake(&self, hybrid: bool) -> f64 {
        let classical = self.sign + self.verify + 2.0 * (self.x25519_keygen + self.x25519_agree);
        classical + if hybrid { self.kem } else { 0.0 }
    }
}

/// CPU seconds a process has used so far, (user, system): fields 14 and 15 of
/// `/proc/PID/stat`, in the kernel's user-visible ticks (`USER_HZ`, 100 a second on Linux).
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let seconds = |field| {
        Some(
            tessera_testkit::proc_stat_field(pid, field)?
                .parse::<f64>()
                .ok()?
                / 100.0,
        )
    };
    Some((seconds(14)?, seconds(15)?))
}

/// The (user, system) CPU seconds spent between two readings of [`cpu_seconds`]; `None` when
/// either could not be read.
fn cpu_spent(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<(f64, f64)> {
    let ((bu, bs), (au, as_)) = (before?, after?);
    Some((au - bu, as_ - bs))
}

/// The CPU that one thread count's handshakes cost both ends, per handshake, against the
/// crypto's: where a handshake's time goes when the cores are what limits it.
struct CpuShare {
    row: String,
    /// (user, system) seconds per handshake, the library's process and the daemon.
    library: (f64, f64),
    daemon: (f64, f64),
    crypto: f64,
}

impl CpuShare {
    fn print_header() {
        println!(
            "{:<10} {:<24} {:<8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>13}",
            "identity",
            "channel",
            "threads",
            "lib user us",
            "lib sys us",
            "dev user us",
            "dev sys us",
            "total us",
            "crypto us",
            "crypto/total"
        );
    }

    fn print(&self) {
        let (lu, ls) = self.library;
        let (du, ds) = self.daemon;
        let total = lu + ls + du + ds;
        println!(
            "{} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>10.0} {:>10.0} {:>13.2}",
            self.row,
            lu * 1e6,
            ls * 1e6,
            du * 1e6,
            ds * 1e6,
            total * 1e6,
            self.crypto * 1e6,
            self.crypto / total
        );
    }
}

/// The sizes on the wire of a handshake's four messages in bytes (read off `strace` of this
/// build's `--profile 1`): the client's hello, the device's answer (with its certificate and
/// signature), the key confirmation sent with the first request (`C_OpenSession`), and the
/// device's answers to both, which leave in one write.
const HYBRID_SIZES: [usize; 4] = [1289, 2609, 126, 94];
const CLASSICAL_SIZES: [usize; 4] = [104, 1519, 126, 94];

/// The floor a fresh connection puts under a handshake: the same exchange as a channel's (a
/// new Unix connection, two round trips of a handshake's sizes, the close) between this process
/// and a server process that does nothing else (`--bare-server`, blocking threads, no
/// parsing, no crypto). What it costs both ends is the kernel's (and the wake-ups'), not
/// Tessera's: the handshake rows are also set against their limit with it added. Its CPU is
/// measured with both ends sleeping in their reads (the cheapest way), its time with one
/// thread also with both ends polling (the quickest way: the library and the daemon poll for
/// a while before they sleep).
struct Bare {
    server: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The bare messages' header: their own length and their answer's (each at least this long).
const BARE_HEADER: usize = 8;

/// One measurement of the floor with some number of threads.
struct Floor {
    per_second: f64,
    p50: Duration,
    /// The p50 with both ends polling (one thread only).
    p50_polling: Option<Duration>,
    /// CPU seconds per connection, both processes, user and system together (NaN when
    /// `/proc` could not be read).
    cpu: f64,
}

/// The flag in a bare message's answer length that asks the server to poll for the rest of
/// the connection.
const POLL: u32 = 1 << 31;

/// How long a polling bare read or write waits at most.
const BARE_WAIT: Duration = Duration::from_secs(5);

/// Moves `len` bytes with `step` (a read or a write from an offset, which says how many it
/// moved), retrying while the socket is not ready, yielding the CPU between tries as the
/// library's polling does, for [`BARE_WAIT`] at most; a step that moves nothing is `ended`.
fn bare_loop(
    len: usize,
    ended: std::io::ErrorKind,
    mut step: impl FnMut(usize) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + BARE_WAIT;
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => return Err(ended.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buffer` from `stream`: blocking (the client's socket times out after
/// [`BARE_WAIT`]), or polling it ([`bare_loop`]).
fn bare_read(
    stream: &mut std::os::unix::net::UnixStream,
    buffer: &mut [u8],
    poll: bool,
) -> std::io::Result<()> {
    use std::io::Read;
    if !poll {
        return stream.read_exact(buffer);
    }
    let len = buffer.len();
    bare_loop(len, std::io::ErrorKind::UnexpectedEof, |done| {
        stream.read(&mut buffer[done..])
    })
}

/// Writes `bytes` to `stream`, blocking or not ([`bare_loop`]).
fn bare_write(stream: &mut std::os::unix::net::UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    bare_loop(bytes.len(), std::io::ErrorKind::WriteZero, |done| {
        stream.write(&bytes[done..])
    })
}

impl Bare {
    fn start() -> Bare {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("bare.sock");
        // Its standard input is a pipe from this process: it ends when this process does,
        // however that ends, and the server exits then.
        let mut server = std::process::Command::new(std::env::current_exe().expect("this program"))
            .arg("--bare-server")
            .arg(&socket)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("the bare server starts");
        if !tessera_testkit::wait_until(Duration::from_secs(10), || socket.exists()) {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the bare server did not listen within 10 s");
        }
        Bare {
            server,
            socket,
            _dir: dir,
        }
    }

    /// One connection: the two round trips of a handshake with `sizes`, then the close; both
    /// ends polling for their reads if `poll`.
    fn connection(&self, sizes: [usize; 4], poll: bool) {
        assert!(
            sizes.iter().all(|&size| size >= BARE_HEADER),
            "a bare message holds at least its header"
        );
        let mut stream =
            std::os::unix::net::UnixStream::connect(&self.socket).expect("the bare server");
        match poll {
            true => stream.set_nonblocking(true).expect("the socket's mode"),
            false => bare_timeouts(&stream),
        }
        let mut buffer = vec![0u8; sizes.iter().copied().max().unwrap_or(0)];
        for (ask, answer) in [(sizes[0], sizes[1]), (sizes[2], sizes[3])] {
            // Each message says its own length and its answer's (the server reads nothing
            // else from it).
            let flag = if poll { POLL } else { 0 };
            buffer[..4].copy_from_slice(&(ask as u32).to_be_bytes());
            buffer[4..BARE_HEADER].copy_from_slice(&(answer as u32 | flag).to_be_bytes());
            bare_write(&mut stream, &buffer[..ask]).expect("a bare send");
            bare_read(&mut stream, &mut buffer[..answer], poll).expect("a bare answer");
        }
    }

    /// Connections with `threads` threads for `seconds`, both ends polling if `poll`: their
    /// rate, their times (sorted) and the CPU both processes spent on each.
    fn run(
        &self,
        sizes: [usize; 4],
        threads: usize,
        seconds: f64,
        poll: bool,
    ) -> (f64, Vec<Duration>, f64) {
        let before = (
            cpu_seconds(std::process::id()),
            cpu_seconds(self.server.id()),
        );
        let (samples, elapsed) = on_threads(threads, seconds, || self.connection(sizes, poll));
        let elapsed = elapsed.as_secs_f64();
        let after = (
            cpu_seconds(std::process::id()),
            cpu_seconds(self.server.id()),
        );
        let count = samples.len().max(1) as f64;
        let cpu = match (cpu_spent(before.0, after.0), cpu_spent(before.1, after.1)) {
            (Some((cu, cs)), Some((su, ss))) => (cu + cs + su + ss) / count,
            _ => f64::NAN,
        };
        (count / elapsed, samples, cpu)
    }

    /// The floor with `threads` threads: sleeping reads for `seconds`, and with one thread
    /// polling ones for as long again.
    fn measure(&self, sizes: [usize; 4], threads: usize, seconds: f64) -> Floor {
        let (per_second, samples, cpu) = self.run(sizes, threads, seconds, false);
        let p50_polling = (threads == 1).then(|| {
            let (_, samples, _) = self.run(sizes, threads, seconds, true);
            tessera_testkit::quantile(&samples, 0.5).unwrap_or_default()
        });
        Floor {
            per_second,
            p50: tessera_testkit::quantile(&samples, 0.5).unwrap_or_default(),
            p50_polling,
            cpu,
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Blocking reads and writes of a bare connection's client wait [`BARE_WAIT`] at most (the
/// library sets both timeouts too).
fn bare_timeouts(stream: &std::os::unix::net::UnixStream) {
    let _ = stream.set_read_timeout(Some(BARE_WAIT));
    let _ = stream.set_write_timeout(Some(BARE_WAIT));
}

/// `--bare-server PATH`: the far end of [`Bare`]. Eight threads accept connections on a Unix
/// socket at PATH; each message names its own length and its answer's, and is answered with
/// that many bytes, until the client closes; a message whose answer length carries [`POLL`]
/// makes it poll for the rest of that connection. Exits when its standard input ends (the
/// bench that started it is gone) or it is killed.
fn bare_server(path: &std::path::Path) -> ! {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap_or_else(|e| {
        eprintln!("channel-bench: cannot listen on {}: {e}", path.display());
        std::process::exit(1)
    });
    std::thread::spawn(|| {
        use std::io::Read;
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
        std::process::exit(0)
    });
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let mut buffer = vec![0u8; 64 * 1024];
                // No timeouts here (they would add two system calls a connection to the
                // floor): a client that stops answering holds a thread until the bench ends,
                // and the server with it.
                while let Ok((mut stream, _)) = listener.accept() {
                    let mut head = [0u8; BARE_HEADER];
                    let mut poll = false;
                    while bare_read(&mut stream, &mut head, poll).is_ok() {
                        let ask = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                        let answer = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                        if answer & POLL != 0 && !poll {
                            poll = stream.set_nonblocking(true).is_ok();
                        }
                        let (ask, answer) = (ask as usize, (answer & !POLL) as usize);
                        if !(BARE_HEADER..=buffer.len()).contains(&ask) || answer > buffer.len() {
                            break;
                        }
                        if bare_read(&mut stream, &mut buffer[BARE_HEADER..ask], poll).is_err()
                            || bare_write(&mut stream, &buffer[..answer]).is_err()
                        {
                            break;
                        }
                    }
                }
            });
        }
    });
    std::process::exit(0)
}

/// Runs `op` on `threads` threads, each again and again until `seconds` have passed: every
/// call's time, sorted, and the whole run's time.
fn on_threads(threads: usize, seconds: f64, op: impl Fn() + Sync) -> (Vec<Duration>, Duration) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut samples: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut samples = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        op();
                        samples.push(t.elapsed());
                    }
                    samples
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker"))
            .collect()
    });
    let elapsed = started.elapsed();
    samples.sort();
    (samples, elapsed)
}

/// The seconds all CPUs have spent idle since boot, and how many CPUs `/proc/stat` counts
/// (its first line, idle and iowait, in clock ticks of 10 ms; a `cpuN` line per CPU: in a
/// container these may be more than the cores this process may use).
fn idle_seconds() -> Option<(f64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(((fields.get(3)? + fields.get(4)?) / 100.0, cpus.max(1)))
}

/// The machine's cores (the daemon and the clients share them).
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// What `--help` prints.
const HELP: &str = "\
channel-bench: secure-messaging channels at scale, against daemons with a P-521 and an ML-DSA-87
identity that require full secure messaging (nuNU)

Measures the daemon's resident memory per idle channel, then handshakes per second with 1, 2, 4
and 8 client threads (each a new connection, a full handshake checked against the trust store
and a C_OpenSession inside the channel); each for the hybrid channel (X25519 and ML-KEM-768, the
default) and for the classical one (X25519 alone, as a library of the classical protocol makes).
Beside each figure, its limit: the machine's cores over the crypto of one handshake (the
identity signature, its check, the X25519 and ML-KEM-768 operations), timed with aws-lc-rs in
this process in the same run; with one thread, the handshake's time against that crypto's.
Then, for each run, the CPU both ends used per handshake (user and system, the library's process
and the daemon) against that crypto: where the rest of a handshake's time goes.

Options:
  --seconds S   time per thread count (default 2, from 0.1 to 60)
  --idle N      idle channels to open for the memory figure (default 10000, at most 15000)
  --profile N   only N handshakes (P-521 identity, hybrid channel; one client thread unless
                --threads) after three to warm up, for a profiler: the client's are made in profiled_handshakes; with
                --daemon-launcher 'exec valgrind --tool=callgrind ...' the daemon runs under
                callgrind and its counters are zeroed before them and dumped after them
                (callgrind_control). scripts/cg-handshake does both and prints where a
                handshake's instructions go
  --classical   with --profile: the classical channel (X25519 alone)
  --threads T   with --profile: the N handshakes spread over T client threads (default 1, at
                most 64), to profile the cores busy
  --daemon-launcher CMD
                with --profile: a shell command prefix the daemon is started through
  --bare-server PATH
                (internal) the far end of the bare connections the rows are set against
  --help        this text
";

/// What the command line asked for.
struct Arguments {
    seconds: f64,
    idle: usize,
    /// `--profile N`: only N handshakes, for a profiler.
    profile: Option<u64>,
    /// `--threads T`: the profiled handshakes' client threads.
    threads: usize,
    classical: bool,
    daemon_launcher: Option<String>,
}

fn arguments() -> Result<Arguments, String> {
    let mut parsed = Arguments {
        seconds: 2.0,
        idle: 10_000,
        profile: None,
        threads: 1,
        classical: false,
        daemon_launcher: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--classical" => {
                parsed.classical = true;
                continue;
            }
            _ => {}
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => {
                parsed.seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (0.1..=60.0).contains(s))
                    .ok_or("--seconds takes a number of seconds from 0.1 to 60")?
            }
            "--idle" => {
                parsed.idle = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=15_000).contains(n))
                    .ok_or("--idle takes a number of channels from 1 to 15000")?
            }
            "--profile" => {
                parsed.profile = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or("--profile takes a number of handshakes from 1 to 100000")?,
                )
            }
            "--threads" => {
                parsed.threads = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or("--threads takes a number of client threads from 1 to 64")?
            }
            "--daemon-launcher" => parsed.daemon_launcher = Some(value),
            _ => {
                return Err(format!(
                    "unknown argument {arg} (known: --seconds, --idle, --profile, --threads, --classical, --daemon-launcher; --help explains them)"
                ))
            }
        }
    }
    if parsed.profile.is_none()
        && (parsed.classical || parsed.daemon_launcher.is_some() || parsed.threads != 1)
    {
        return Err("--classical, --threads and --daemon-launcher go with --profile N".into());
    }
    Ok(parsed)
}

/// A fresh daemon with a P-521 or ML-DSA-87 `identity` (as `ctident` names them), flags nuNU
/// and a token, started through `launcher` if any.
fn device(identity: &str, launcher: Option<&str>, extra: &[&str]) -> Daemon {
    let daemon = Daemon::start_for_benchmark_through(launcher, extra);
    daemon.identify(Transport::Unix, &["--algorithm", identity]);
    daemon.admin(Transport::Unix, &["-fnuNU"]);
    tessera_testkit::sm::init_token(&daemon, Transport::Unix);
    daemon
}

/// `--profile N`: N handshakes over `--threads` client threads (one by default), nothing else
/// timed or printed but their count, time and the cores' idle share; a daemon under callgrind has its counters zeroed before them and dumped after.
fn profile(arguments: &Arguments, count: u64) {
    let launcher = arguments.daemon_launcher.as_deref();
    let callgrind = launcher.is_some_and(|l| l.contains("callgrind"));
    // No busy polling in a daemon under callgrind: a poll's spinning, counted as
    // instructions, would measure how long the client took, not what the daemon did.
    // Otherwise the daemon polls as it does by default.
    let extra: &[&str] = match callgrind {
        true => &["--busy-poll", "0"],
        false => &[],
    };
    let daemon = device("p521", launcher, extra);
    let settings = match arguments.classical {
        true => tessera_testkit::sm::classical_settings(&daemon, &[]),
        false => tessera_testkit::sm::settings(&daemon, &[]),
    };
    // Warm: the chain's check cached, the allocator's pools and the daemon's tasks made.
    for _ in 0..3 {
        drop(channel(&daemon, &settings, true));
    }
    let pid = daemon.pid().expect("the daemon runs").to_string();
    let control = |what: &str| {
        if callgrind {
            let status = std::process::Command::new("callgrind_control")
                .args([what, &pid])
                .stdout(std::process::Stdio::null())
                .status();
            // A panic, not an exit: the daemon and its directory go with the unwinding.
            assert!(
                status.as_ref().is_ok_and(|s| s.success()),
                "callgrind_control {what} {pid} failed: {status:?}"
            );
        }
    };
    control("-z");
    let threads = arguments.threads as u64;
    let idle_before = idle_seconds();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            // The count spread as evenly as it goes: the first threads take one more.
            let share = count / threads + u64::from(thread < count % threads);
            let (daemon, settings) = (&daemon, &settings);
            scope.spawn(move || profiled_handshakes(daemon, settings, share));
        }
    });
    let took = started.elapsed();
    let idle = idle_seconds()
        .zip(idle_before)
        .map(|((after, cpus), (before, _))| (after - before, cpus));
    control("-d");
    println!(
        "{count} handshakes ({}) on {threads} thread(s) in {:.3} s, {:.3} ms each, {:.0}/s; \
         the cores idle {}",
        match arguments.classical {
            true => "classical X25519",
            false => "hybrid X25519+ML-KEM-768",
        },
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / count as f64,
        count as f64 / took.as_secs_f64(),
        match idle {
            Some((idle, cpus)) => format!(
                "{:.0} % of the time",
                100.0 * idle / (cpus as f64 * took.as_secs_f64())
            ),
            None => "for an unknown share (no /proc/stat)".into(),
        }
    );
}

/// `count` handshakes, one after another, each a new connection, a channel and a
/// `C_OpenSession` in it (a profiler of the client collects inside this function).
#[inline(never)]
fn profiled_handshakes(daemon: &Daemon, settings: &Arc<SecureSettings>, count: u64) {
    for _ in 0..count {
        drop(channel(daemon, settings, true));
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--bare-server") {
        match std::env::args_os().nth(2) {
            Some(path) => bare_server(std::path::Path::new(&path)),
            None => {
                eprintln!("channel-bench: --bare-server needs a socket path");
                std::process::exit(2);
            }
        }
    }
    let arguments = match arguments() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("channel-bench: {message}");
            std::process::exit(2);
        }
    };
    if let Some(count) = arguments.profile {
        profile(&arguments, count);
        return;
    }
    let (seconds, idle) = (arguments.seconds, arguments.idle);
    let limit = (idle + 200).to_string();
    let transport = Transport::Unix;
    let connections = [
        "--max-connections",
        &limit,
        "--max-connections-per-peer",
        &limit,
        "--max-channels",
        &limit,
        // Idle channels are what is measured: kept however long the run.
        "--idle-timeout",
        "0",
    ];
    let device = |identity: &str| device(identity, None, &connections);

    println!("channel-bench: flags nuNU, Unix socket, {seconds} s per case; idle channels with a P-521 identity");
    // Idle channels first, each kind on a fresh daemon (opened by 4 threads, then held): what
    // they cost, not what bursts of handshakes (or the other kind) left in the allocator.
    for kind in ["hybrid", "classical"] {
        let daemon = device("p521");
        let settings = match kind {
            "hybrid" => tessera_testkit::sm::settings(&daemon, &[]),
            _ => tessera_testkit::sm::classical_settings(&daemon, &[]),
        };
        drop(channel(&daemon, &settings, true));
        std::thread::sleep(Duration::from_millis(300));
        let before = daemon.rss_kib().expect("daemon memory");
        let started = Instant::now();
        let held: Vec<Device> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let (daemon, settings) = (&daemon, &settings);
                    scope.spawn(move || {
                        (0..idle)
                            .filter(|i| i % 4 == w)
                            .map(|_| channel(daemon, settings, false))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a worker"))
                .collect()
        });
        std::thread::sleep(Duration::from_millis(500));
        let after = daemon.rss_kib().expect("daemon memory");
        let listed = daemon.admin(transport, &["--channels"]);
        let count = listed
            .lines()
            .rev()
            .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                // ctconf's count line: "50 channels" (or "1 channel").
                [count, "channel" | "channels"] => count.parse::<usize>().ok(),
                _ => None,
            })
            .unwrap_or(0);
        println!(
        "{} idle {kind} channels (device lists {count}) opened in {:.1} s: daemon RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per channel, {:.1} MiB for 10 000",
        held.len(),
        started.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / held.len() as f64,
        (after.saturating_sub(before)) as f64 / held.len() as f64 * 10_000.0 / 1024.0
    );
        drop(held);
        // The daemon closes them (and forgets their channels) before the next figure.
        std::thread::sleep(Duration::from_millis(500));
    }

    let daemon = device("p521");
    let settings = tessera_testkit::sm::settings(&daemon, &[]);
    let classical = tessera_testkit::sm::classical_settings(&daemon, &[]);
    // The same with an ML-DSA-87 identity (a post-quantum signature in every handshake).
    let ml_dsa = device("ml-dsa-87");
    let ml_dsa_settings = tessera_testkit::sm::settings(&ml_dsa, &[]);
    let ml_dsa_classical = tessera_testkit::sm::classical_settings(&ml_dsa, &[]);
    for (daemon, settings) in [(&daemon, &settings), (&ml_dsa, &ml_dsa_settings)] {
        drop(channel(daemon, settings, true));
    }

    // The limits, measured now, on this machine.
    let p521 = Crypto::measure("P-521");
    let ml_dsa_87 = Crypto::measure("ML-DSA-87");
    for (name, crypto) in [("P-521", &p521), ("ML-DSA-87", &ml_dsa_87)] {
        println!(
            "crypto (aws-lc-rs, one thread): {name} sign {:.3} ms, verify {:.3} ms; X25519 key pair {:.3} ms, agreement {:.3} ms; ML-KEM-768 key pair + encapsulation + decapsulation {:.3} ms",
            crypto.sign * 1e3,
            crypto.verify * 1e3,
            crypto.x25519_keygen * 1e3,
            crypto.x25519_agree * 1e3,
            crypto.kem * 1e3,
        );
    }
    println!(
        "limit = {} cores / the crypto of one handshake (a signature, its check, two X25519 key pairs and agreements, and for hybrid the ML-KEM-768 three); crypto ms = that crypto on one thread, timed again before and after each row (the mean of the two: the host's speed moves during a run)",
        cores()
    );
    println!(
        "with a fresh connection's floor: conn us = the CPU (both ends) of a bare connection with a handshake's two round trips and sizes and no work, measured beside each row; ×lim+conn = handshakes/s against cores / (crypto + conn us); with one thread, p50/(c+conn) = p50 against the crypto plus that bare connection's p50 with both ends polling"
    );
    println!(
        "{:<10} {:<24} {:<8} {:>14} {:>9} {:>8} {:>9} {:>10} {:>10} {:>8} {:>10} {:>11}",
        "identity",
        "channel",
        "threads",
        "handshakes/s",
        "limit/s",
        "×limit",
        "p50 ms",
        "crypto ms",
        "p50/crypto",
        "conn us",
        "×lim+conn",
        "p50/(c+conn)"
    );
    let bare = Bare::start();
    let mut floors = Vec::new();
    let mut shares = Vec::new();
    for (identity, daemon, name, settings) in [
        ("P-521", &daemon, "hybrid X25519+ML-KEM-768", &settings),
        ("P-521", &daemon, "classical X25519", &classical),
        (
            "ML-DSA-87",
            &ml_dsa,
            "hybrid X25519+ML-KEM-768",
            &ml_dsa_settings,
        ),
        ("ML-DSA-87", &ml_dsa, "classical X25519", &ml_dsa_classical),
    ] {
        let hybrid = name.starts_with("hybrid");
        // The host's speed moves during a run (a slow spell halves it): the crypto is timed
        // again before and after every row, and the row is set against the mean of the two.
        let mut crypto_before = Crypto::measure(identity).per_handshake(hybrid);
        let sizes = match hybrid {
            true => HYBRID_SIZES,
            false => CLASSICAL_SIZES,
        };
        for threads in [1usize, 2, 4, 8] {
            let floor = bare.measure(sizes, threads, seconds / 2.0);
            let daemon_pid = daemon.pid().expect("the daemon runs");
            let cpu_before = (cpu_seconds(std::process::id()), cpu_seconds(daemon_pid));
            let (samples, elapsed) = on_threads(threads, seconds, || {
                drop(channel(daemon, settings, true));
            });
            let rate = samples.len() as f64 / elapsed.as_secs_f64();
            let handshakes = samples.len().max(1) as f64;
            let cpu_after = (cpu_seconds(std::process::id()), cpu_seconds(daemon_pid));
            let crypto_after = Crypto::measure(identity).per_handshake(hybrid);
            let crypto = (crypto_before + crypto_after) / 2.0;
            crypto_before = crypto_after;
            let limit = cores() / crypto;
            // A process whose `/proc` could not be read gives NaN, not a figure.
            let per = |before, after| {
                cpu_spent(before, after).map_or((f64::NAN, f64::NAN), |(u, s)| {
                    (u / handshakes, s / handshakes)
                })
            };
            shares.push(CpuShare {
                row: format!("{:<10} {:<24} {:<8}", identity, name, threads),
                library: per(cpu_before.0, cpu_after.0),
                daemon: per(cpu_before.1, cpu_after.1),
                crypto,
            });
            let p50 = tessera_testkit::quantile(&samples, 0.5).unwrap_or_default();
            // With one thread a handshake's time is its crypto plus everything else; with more,
            // its latency also holds the waits for the shared cores.
            let (against, against_floor) = match threads {
                1 => (
                    format!("{:.2}", p50.as_secs_f64() / crypto),
                    format!(
                        "{:.2}",
                        p50.as_secs_f64()
                            / (crypto + floor.p50_polling.unwrap_or(floor.p50).as_secs_f64())
                    ),
                ),
                _ => ("-".to_string(), "-".to_string()),
            };
            let limit_with_floor = cores() / (crypto + floor.cpu);
            println!(
                "{:<10} {:<24} {:<8} {:>14.0} {:>9.0} {:>8.2} {:>9.2} {:>10.2} {:>10} {:>8.0} {:>10.2} {:>11}",
                identity,
                name,
                threads,
                rate,
                limit,
                rate / limit,
                p50.as_secs_f64() * 1e3,
                crypto * 1e3,
                against,
                floor.cpu * 1e6,
                rate / limit_with_floor,
                against_floor
            );
            floors.push((
                format!(
                    "{:<10} {:<8}",
                    match hybrid {
                        true => "hybrid",
                        false => "classical",
                    },
                    threads
                ),
                floor,
            ));
        }
    }
    println!(
        "CPU per handshake, both ends (from /proc/PID/stat, 10 ms ticks over each run): the library's process (its client threads) and the daemon, user and system time, against the crypto of its row; with the cores busy, crypto/total is what x limit can reach"
    );
    CpuShare::print_header();
    for share in &shares {
        share.print();
    }
    println!(
        "the floor beside each row: a bare Unix connection with a handshake's two round trips and sizes (hybrid {HYBRID_SIZES:?}, classical {CLASSICAL_SIZES:?} bytes), no work, to a server process of eight threads; both ends sleeping in their reads, and with one thread also both polling"
    );
    println!(
        "{:<10} {:<8} {:>14} {:>9} {:>12} {:>16}",
        "sizes", "threads", "connections/s", "p50 us", "CPU us/conn", "p50 polling us"
    );
    for (row, floor) in &floors {
        println!(
            "{row} {:>14.0} {:>9.1} {:>12.1} {:>16}",
            floor.per_second,
            floor.p50.as_secs_f64() * 1e6,
            floor.cpu * 1e6,
            floor
                .p50_polling
                .map_or("-".into(), |p| format!("{:.1}", p.as_secs_f64() * 1e6))
        );
    }
}
