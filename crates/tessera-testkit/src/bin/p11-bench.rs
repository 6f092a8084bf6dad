//! `p11-bench`: the same PKCS#11 caller (the `cryptoki` crate, through the C function list)
//! against the systems users would pick instead, back to back in one run:
//!
//! (a) SoftHSM2 in-process, (b) SoftHSM2 behind p11-kit's remote RPC (`p11-kit server` on a
//! Unix socket, `p11-kit-client.so`), (c) Tessera over a Unix socket without a channel,
//! (d) Tessera over a Unix socket with full secure messaging (`nuNU`), (e) the same over
//! loopback TCP, (g) Tessera over a Unix socket without a channel, the device a node of a
//! cluster on a three-member etcd (its writes committed by etcd). Plus the bare round trip between two processes over a Unix socket and over
//! loopback TCP, each with both sides sleeping in `read` and with both polling.
//!
//! Limits printed beside the figures, measured in the same run: the bare round trips (TCP rows:
//! what TCP adds to a call against what it adds to a bare polling round trip), and for the
//! bulk rows AES-256-GCM timed in this process (one pass for a call without a channel, five
//! through one), with and without the bare round trip of 1 MiB each way over a Unix socket.
//!
//! Each system runs in a worker process of this binary (so that every module gets a clean
//! process and environment); the parent sets the systems up, collects the workers' lines and
//! prints one table with ratios to (b) and (a).
//!
//! Usage: `cargo build --release --workspace && ./target/release/p11-bench [--seconds S]
//! [--threads 1,2,16] [--ops random32,gcm4k,...] [--systems a,b,d] [--rounds 3]`
//!
//! `--rounds N` measures every system in turn N times and reports, for each row, the median of
//! the rounds: this machine's noise comes in spells, which then fall on all systems alike.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tessera_testkit::{binary, pkcs11_module, Daemon, Transport};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
const SO_PIN: &str = "87654321";
const USER_PIN: &str = "12345678";
const LABEL: &str = "bench";

/// Every operation, in table order.
const OPERATIONS: &[&str] = &[
    "open-close",
    "random32",
    "gcm64",
    "gcm4k",
    "gcm1m",
    "ecb4k",
    "ecdsa-p256",
    "rsa2048",
    "aes-keygen",
    "token-keygen",
    "create",
    "find",
    "sha256",
    "gcm64-first",
    "ecdsa-first",
    "sha256-first",
    "mldsa65-sign",
    "mldsa65-verify",
    "mlkem768-encaps",
    "mlkem768-decaps",
];

/// The post-quantum operations (PKCS#11 3.2), also measured with aws-lc-rs called in-process
/// ((f), the physical limit of this design).
const POST_QUANTUM: &[&str] = &[
    "mldsa65-sign",
    "mldsa65-verify",
    "mlkem768-encaps",
    "mlkem768-decaps",
];

/// The operations measured at their first use: `NAME-first` opens a session, runs `NAME` once
/// and closes the session (so it costs `open-close` more than `NAME`'s first use).
const FIRST_USE: &str = "-first";

struct Options {
    seconds: f64,
    threads: Vec<usize>,
    operations: Vec<String>,
    /// The systems to measure, by letter (all by default).
    systems: String,
    /// Rounds of every system in turn; each row is the median of its rounds (the parent's
    /// option: a worker measures one round).
    rounds: usize,
    /// The Tessera daemons' `--busy-poll` (their default when `None`; the parent's option).
    busy_poll: Option<u64>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 1.0,
        threads: vec![1, 2, 16],
        operations: OPERATIONS.iter().map(|s| s.to_string()).collect(),
        systems: "abcdeg".into(),
        rounds: 1,
        busy_poll: None,
    };
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--seconds" => {
                options.seconds = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 60.0)
                    .ok_or("--seconds takes a number of seconds, at most 60")?
            }
            "--threads" => {
                options.threads = value
                    .split(',')
                    .map(|t| t.parse().ok().filter(|t| (1..=64).contains(t)))
                    .collect::<Option<_>>()
                    .ok_or("--threads takes counts 1-64 separated by commas")?
            }
            "--ops" => {
                options.operations = value
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = options
                    .operations
                    .iter()
                    .find(|o| !OPERATIONS.contains(&o.as_str()))
                {
                    return Err(format!(
                        "unknown operation {bad:?}; the operations are {}",
                        OPERATIONS.join(",")
                    ));
                }
            }
            "--systems" => {
                options.systems = value.split(',').collect();
                if let Some(bad) = options.systems.chars().find(|c| !"abcdeg".contains(*c)) {
                    return Err(format!(
                        "unknown system {bad:?}; the systems are a,b,c,d,e,g (see the table's legend)"
                    ));
                }
            }
            "--rounds" => {
                options.rounds = value
                    .parse()
                    .ok()
                    .filter(|r| (1..=9).contains(r))
                    .ok_or("--rounds takes a count from 1 to 9")?
            }
            "--busy-poll" => {
                options.busy_poll = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|m| *m <= 10_000)
                        .ok_or("--busy-poll takes microseconds from 0 to 10000")?,
                )
            }
            other => {
                return Err(format!(
                    "unknown option {other:?}; the options are --seconds, --threads, --ops, \
                     --systems, --rounds and --busy-poll"
                ))
            }
        }
        i += 2;
    }
    Ok(options)
}

/// One result line: operation, threads, ops/s, p50 µs, p99 µs.
struct Measured {
    ops_per_second: f64,
    p50: f64,
    p99: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    tessera_testkit::quantile(sorted, p).unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// Worker: one module, every operation and thread count.

struct Keys {
    aes: ObjectHandle,
    ec: ObjectHandle,
    rsa: ObjectHandle,
    /// ML-DSA-65 and ML-KEM-768 keys, with a signature and a ciphertext to check; `None` for a
    /// module without PKCS#11 3.2's post-quantum mechanisms.
    pq: Option<PqKeys>,
}

struct PqKeys {
    dsa_public: ObjectHandle,
    dsa_private: ObjectHandle,
    signature: Vec<u8>,
    kem_public: ObjectHandle,
    kem_private: ObjectHandle,
    ciphertext: Vec<u8>,
}

/// What the encapsulated secret becomes: a session key, destroyed after each measured call.
fn kem_secret_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
        Attribute::Token(false),
    ]
}

/// The ML-DSA-65 and ML-KEM-768 bench keys, made the first time.
fn pq_keys(session: &Session, message: &[u8]) -> Result<PqKeys, String> {
    use cryptoki::object::ParameterSetType;
    use cryptoki::object::{MlDsaParameterSetType, MlKemParameterSetType};
    let pair = |label: &str, mechanism: Mechanism, set: ParameterSetType| -> Result<_, String> {
        let found = (
            find_one(session, label, ObjectClass::PUBLIC_KEY),
            find_one(session, label, ObjectClass::PRIVATE_KEY),
        );
        if let (Some(public), Some(private)) = found {
            return Ok((public, private));
        }
        session
            .generate_key_pair(
                &mechanism,
                &[
                    Attribute::Token(true),
                    Attribute::Label(label.into()),
                    Attribute::ParameterSet(set),
                ],
                &[Attribute::Token(true), Attribute::Label(label.into())],
            )
            .map_err(|e| format!("{label}: {e}"))
    };
    let dsa65: ParameterSetType = MlDsaParameterSetType::ML_DSA_65.into();
    let kem768: ParameterSetType = MlKemParameterSetType::ML_KEM_768.into();
    let (dsa_public, dsa_private) = pair("bench-mldsa", Mechanism::MlDsaKeyPairGen, dsa65)?;
    let (kem_public, kem_private) = pair("bench-mlkem", Mechanism::MlKemKeyPairGen, kem768)?;
    let signature = session
        .sign(&ml_dsa(), dsa_private, message)
        .map_err(|e| e.to_string())?;
    let (ciphertext, secret) = session
        .encapsulate_key(&Mechanism::MlKem, kem_public, &kem_secret_template())
        .map_err(|e| e.to_string())?;
    session.destroy_object(secret).map_err(|e| e.to_string())?;
    Ok(PqKeys {
        dsa_public,
        dsa_private,
        signature,
        kem_public,
        kem_private,
        ciphertext,
    })
}

fn ml_dsa() -> Mechanism<'static> {
    use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
    Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None))
}

fn find_one(session: &Session, label: &str, class: ObjectClass) -> Option<ObjectHandle> {
    session
        .find_objects(&[Attribute::Label(label.into()), Attribute::Class(class)])
        .ok()?
        .first()
        .copied()
}

/// The slot with the bench token, initialising the first empty token slot if there is none.
fn bench_slot(pkcs11: &Pkcs11) -> Result<Slot, String> {
    let slots = pkcs11.get_slots_with_token().map_err(|e| e.to_string())?;
    for slot in &slots {
        let info = pkcs11.get_token_info(*slot).map_err(|e| e.to_string())?;
        if info.label() == LABEL {
            return Ok(*slot);
        }
    }
    let slot = *slots
        .iter()
        .find(|s| {
            pkcs11
                .get_token_info(**s)
                .is_ok_and(|t| !t.token_initialized())
        })
        .ok_or("no uninitialised token to use")?;
    pkcs11
        .init_token(slot, &AuthPin::new(SO_PIN.into()), LABEL)
        .map_err(|e| format!("init token: {e}"))?;
    let session = pkcs11.open_rw_session(slot).map_err(|e| e.to_string())?;
    session
        .login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
        .map_err(|e| format!("SO login: {e}"))?;
    session
        .init_pin(&AuthPin::new(USER_PIN.into()))
        .map_err(|e| format!("init PIN: {e}"))?;
    Ok(slot)
}

/// The bench keys on the token, made the first time.
fn keys(session: &Session) -> Result<Keys, String> {
    let aes = match find_one(session, "bench-aes", ObjectClass::SECRET_KEY) {
        Some(key) => key,
        None => session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Label("bench-aes".into()),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ],
            )
            .map_err(|e| format!("AES key: {e}"))?,
    };
    let ec = match find_one(session, "bench-ec", ObjectClass::PRIVATE_KEY) {
        Some(key) => key,
        None => {
            let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::EcParams(p256),
                        Attribute::Label("bench-ec".into()),
                        Attribute::Verify(true),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Label("bench-ec".into()),
                        Attribute::Sign(true),
                        Attribute::Private(true),
                    ],
                )
                .map_err(|e| format!("EC key pair: {e}"))?
                .1
        }
    };
    let rsa = match find_one(session, "bench-rsa", ObjectClass::PRIVATE_KEY) {
        Some(key) => key,
        None => {
            session
                .generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::ModulusBits(2048.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                        Attribute::Label("bench-rsa".into()),
                        Attribute::Verify(true),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Label("bench-rsa".into()),
                        Attribute::Sign(true),
                        Attribute::Private(true),
                    ],
                )
                .map_err(|e| format!("RSA key pair: {e}"))?
                .1
        }
    };
    // A module without the post-quantum mechanisms skips their rows.
    let message: Vec<u8> = (0..64u8).collect();
    let pq = pq_keys(session, &message).ok();
    Ok(Keys { aes, ec, rsa, pq })
}

/// Runs `operation` once.
fn run_once(
    pkcs11: &Pkcs11,
    slot: Slot,
    session: &Session,
    keys: &Keys,
    operation: &str,
    payload: &[u8],
) -> Result<(), String> {
    let gcm = |data: &[u8]| {
        let mut iv = [7u8; 12];
        let params = GcmParams::new(&mut iv, b"aad", 128.into()).map_err(|e| e.to_string())?;
        session
            .encrypt(&Mechanism::AesGcm(params), keys.aes, data)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    if let Some(base) = operation.strip_suffix(FIRST_USE) {
        let fresh = pkcs11.open_ro_session(slot).map_err(|e| e.to_string())?;
        let base = if base == "ecdsa" { "ecdsa-p256" } else { base };
        return run_once(pkcs11, slot, &fresh, keys, base, payload);
    }
    match operation {
        "open-close" => pkcs11
            .open_ro_session(slot)
            .map(drop)
            .map_err(|e| e.to_string()),
        "random32" => session
            .generate_random_vec(32)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "gcm64" => gcm(&payload[..64]),
        "sha256" => session
            .digest(&Mechanism::Sha256, &payload[..64])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "gcm4k" => gcm(&payload[..4096]),
        "gcm1m" => gcm(payload),
        // AES-ECB: an encryption without a mechanism parameter, which p11-kit's RPC carries
        // (it carries neither GCM's nor CBC's IV), so that encryption has a ratio to (b).
        "ecb4k" => session
            .encrypt(&Mechanism::AesEcb, keys.aes, &payload[..4096])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "ecdsa-p256" => session
            .sign(&Mechanism::Ecdsa, keys.ec, &payload[..32])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "rsa2048" => session
            .sign(&Mechanism::Sha256RsaPkcs, keys.rsa, &payload[..64])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "aes-keygen" => session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[Attribute::Token(false), Attribute::ValueLen(32.into())],
            )
            .and_then(|key| session.destroy_object(key))
            .map_err(|e| e.to_string()),
        // Two writes of token state each (the store's, or on a cluster node etcd's commits):
        // a token AES key made and destroyed; a token data object created and destroyed.
        "token-keygen" => session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::ValueLen(32.into()),
                ],
            )
            .and_then(|key| session.destroy_object(key))
            .map_err(|e| e.to_string()),
        "create" => session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Value(payload[..32].to_vec()),
            ])
            .and_then(|object| session.destroy_object(object))
            .map_err(|e| e.to_string()),
        "mldsa65-sign" | "mldsa65-verify" | "mlkem768-encaps" | "mlkem768-decaps" => {
            let pq = keys
                .pq
                .as_ref()
                .ok_or("the module offers no ML-DSA / ML-KEM (PKCS#11 3.2)")?;
            let message = &payload[..64];
            let result = match operation {
                "mldsa65-sign" => session.sign(&ml_dsa(), pq.dsa_private, message).map(drop),
                "mldsa65-verify" => {
                    session.verify(&ml_dsa(), pq.dsa_public, message, &pq.signature)
                }
                "mlkem768-encaps" => session
                    .encapsulate_key(&Mechanism::MlKem, pq.kem_public, &kem_secret_template())
                    .and_then(|(_, key)| session.destroy_object(key)),
                _ => session
                    .decapsulate_key(
                        &Mechanism::MlKem,
                        pq.kem_private,
                        &kem_secret_template(),
                        &pq.ciphertext,
                    )
                    .and_then(|key| session.destroy_object(key)),
            };
            result.map_err(|e| e.to_string())
        }
        "find" => match session.find_objects(&[Attribute::Label("bench-aes".into())]) {
            Ok(found) if found.len() == 1 => Ok(()),
            Ok(found) => Err(format!("found {} objects", found.len())),
            Err(e) => Err(e.to_string()),
        },
        other => Err(format!("unknown operation {other}")),
    }
}

/// One thread's measurement: `once` to warm up (connection, channel, caches), then, after every
/// thread is ready, as often as `seconds` allow (at most a million times); the latencies in us.
fn timed(
    seconds: f64,
    barrier: &Barrier,
    mut once: impl FnMut() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    once()?;
    barrier.wait();
    let mut latencies = Vec::new();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while start.elapsed() < budget && latencies.len() < 1_000_000 {
        let t = Instant::now();
        once()?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latencies)
}

fn worker(module: &str, options: &Options) -> Result<(), String> {
    let pkcs11 = Arc::new(Pkcs11::new(module).map_err(|e| format!("{module}: {e}"))?);
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let slot = bench_slot(&pkcs11)?;
    let setup = pkcs11.open_rw_session(slot).map_err(|e| e.to_string())?;
    setup
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .map_err(|e| format!("login: {e}"))?;
    keys(&setup)?;
    if options.operations.is_empty() {
        // --setup-only: the token and keys are made; nothing is measured.
        return Ok(());
    }
    let payload: Arc<Vec<u8>> = Arc::new((0..1 << 20).map(|i| i as u8).collect());
    for operation in &options.operations {
        // An operation the module cannot do is reported, not measured.
        if let Err(e) = run_once(&pkcs11, slot, &setup, &keys(&setup)?, operation, &payload) {
            println!("SKIP {operation} {e}");
            continue;
        }
        for &threads in &options.threads {
            let barrier = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let pkcs11 = pkcs11.clone();
                    let barrier = barrier.clone();
                    let payload = payload.clone();
                    let operation = operation.clone();
                    let seconds = options.seconds;
                    std::thread::spawn(move || -> Result<Vec<f64>, String> {
                        // Token objects are written in read-write sessions only.
                        let writes = matches!(operation.as_str(), "token-keygen" | "create");
                        let session = if writes {
                            pkcs11.open_rw_session(slot)
                        } else {
                            pkcs11.open_ro_session(slot)
                        }
                        .map_err(|e| e.to_string())?;
                        let keys = keys(&session)?;
                        timed(seconds, &barrier, || {
                            run_once(&pkcs11, slot, &session, &keys, &operation, &payload)
                        })
                    })
                })
                .collect();
            let mut all = Vec::new();
            let started = Instant::now();
            for handle in handles {
                all.extend(handle.join().map_err(|_| "a thread panicked")??);
            }
            let elapsed = started.elapsed().as_secs_f64().max(options.seconds);
            all.sort_by(f64::total_cmp);
            println!(
                "RESULT {operation} {threads} {:.1} {:.1} {:.1}",
                all.len() as f64 / elapsed,
                percentile(&all, 0.5),
                percentile(&all, 0.99)
            );
        }
    }
    drop(setup);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parent: the systems, the bare round trip, the table.

/// The bare round trips between two processes (32-byte ping-pong), p50 in µs.
struct RoundTrips {
    /// Unix socket, each side sleeping in `read` (what the targets call the bare round trip).
    unix: f64,
    /// Loopback TCP (`TCP_NODELAY`), sleeping.
    tcp: f64,
    /// Unix socket, each side polling a non-blocking socket: the floor of a design that polls.
    unix_polling: f64,
    /// Loopback TCP, polling.
    tcp_polling: f64,
    /// 1 MiB each way over a Unix socket, sleeping: what moving a bulk call's data costs
    /// before any work is done on it.
    unix_1m: f64,
}

/// Runs each ping-pong against an echo process of this binary.
fn bare_round_trips() -> Result<RoundTrips, String> {
    Ok(RoundTrips {
        unix: ping_pong("unix", false, 32)?,
        tcp: ping_pong("tcp", false, 32)?,
        unix_polling: ping_pong("unix", true, 32)?,
        tcp_polling: ping_pong("tcp", true, 32)?,
        unix_1m: ping_pong("unix", false, 1 << 20)?,
    })
}

/// A socket to the echo process.
trait Link: Read + Write {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
}

impl Link for UnixStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
}

impl Link for TcpStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
}

/// Reads exactly `buffer.len()` bytes, polling while a non-blocking socket has nothing.
fn read_all(link: &mut dyn Link, buffer: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buffer.len() {
        match link.read(&mut buffer[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Echoes `size`-byte messages until the peer leaves.
fn echo(link: &mut dyn Link, polling: bool, size: usize) {
    let mut buffer = vec![0u8; size];
    if link.set_nonblocking(polling).is_err() {
        return;
    }
    while read_all(link, &mut buffer).is_ok() {
        if link.write_all(&buffer).is_err() {
            break;
        }
    }
}

/// Seconds one AES-256-GCM encryption of `size` bytes takes in this process (aws-lc-rs, the
/// library the device uses), over about 0.3 s after a warm-up.
fn gcm_pass_seconds(size: usize) -> f64 {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("a key"));
    let mut data = vec![0x5au8; size];
    tessera_testkit::seconds_per_call(|| {
        let nonce = Nonce::assume_unique_for_key([7u8; 12]);
        let _tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(b"aad"), &mut data)
            .expect("sealed");
    })
}

/// The p50 of round trips of `size` bytes each way through `transport` ("unix" or "tcp") to
/// an echo process (20 000 of 32 bytes; fewer of larger messages).
fn ping_pong(transport: &str, polling: bool, size: usize) -> Result<f64, String> {
    let mut echo = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--echo", transport, if polling { "poll" } else { "sleep" }])
        .arg(size.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let measured = measure_echo(&mut echo, transport, polling, size);
    // Gone once its peer leaves; killed if the measurement failed before connecting.
    if measured.is_err() {
        let _ = echo.kill();
    }
    let _ = echo.wait();
    measured
}

/// The ping-pong itself, against a started echo process.
fn measure_echo(
    echo: &mut Child,
    transport: &str,
    polling: bool,
    size: usize,
) -> Result<f64, String> {
    // The echo process says where it listens.
    let mut address = String::new();
    BufReader::new(echo.stdout.take().ok_or("no echo output")?)
        .read_line(&mut address)
        .map_err(|e| e.to_string())?;
    let address = address.trim();
    let mut link: Box<dyn Link> = match transport {
        "unix" => Box::new(bulk_ready(
            UnixStream::connect(address).map_err(|e| format!("{address}: {e}"))?,
        )),
        _ => {
            let stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            Box::new(stream)
        }
    };
    link.set_nonblocking(polling).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; size];
    let mut latencies = Vec::new();
    for _ in 0..(20_000 * 32 / size).clamp(1000, 20_000) {
        let t = Instant::now();
        link.write_all(&buffer).map_err(|e| e.to_string())?;
        read_all(&mut *link, &mut buffer).map_err(|e| e.to_string())?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(percentile(&latencies, 0.5))
}

/// A Unix socket with the send buffer that the library and the device ask for
/// ([`tessera_wire::UNIX_SEND_BUFFER`]), so that the bare round trip moves a megabyte as
/// their calls do.
fn bulk_ready(stream: UnixStream) -> UnixStream {
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(tessera_wire::UNIX_SEND_BUFFER);
    stream
}

/// `--echo unix|tcp sleep|poll`: listens (a Unix socket in a fresh directory, or loopback TCP
/// on a free port), prints the address, and echoes one connection.
fn echo_server(transport: &str, polling: bool, size: usize) {
    match transport {
        "unix" => {
            let Ok(dir) = tempfile::tempdir() else { return };
            let path = dir.path().join("echo.sock");
            let Ok(listener) = UnixListener::bind(&path) else {
                return;
            };
            println!("{}", path.display());
            if let Ok((stream, _)) = listener.accept() {
                echo(&mut bulk_ready(stream), polling, size);
            }
        }
        _ => {
            let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
                return;
            };
            let Ok(address) = listener.local_addr() else {
                return;
            };
            println!("{address}");
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_nodelay(true);
                echo(&mut stream, polling, size);
            }
        }
    }
}

/// A system under test: its module and environment.
struct System {
    key: &'static str,
    name: &'static str,
    module: String,
    env: Vec<(String, String)>,
}

/// A worker's results, and the operations it could not do (with the module's reason).
type Results = (
    BTreeMap<(String, usize), Measured>,
    BTreeMap<String, String>,
);

fn run_worker(system: &System, args: &[String]) -> Result<Results, String> {
    eprintln!("p11-bench: measuring {} ...", system.name);
    let mut child: Child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--worker")
        .arg(&system.module)
        .args(args)
        .envs(system.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut results = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for line in BufReader::new(child.stdout.take().ok_or("no worker output")?).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("SKIP ") {
            let (operation, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            skipped.insert(operation.to_string(), reason.to_string());
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["RESULT", operation, threads, ops, p50, p99] = fields[..] {
            results.insert(
                (operation.to_string(), threads.parse().unwrap_or(0)),
                Measured {
                    ops_per_second: ops.parse().unwrap_or(f64::NAN),
                    p50: p50.parse().unwrap_or(f64::NAN),
                    p99: p99.parse().unwrap_or(f64::NAN),
                },
            );
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the {} worker failed ({status})", system.name));
    }
    Ok((results, skipped))
}

/// One system's rounds as one: each figure of each row is the median of its rounds (the upper
/// one of an even count); an operation skipped in any round is skipped.
fn median_of_rounds(rounds: Vec<Results>) -> Results {
    let mut merged = Results::default();
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let keys: std::collections::BTreeSet<_> = rounds.iter().flat_map(|r| r.0.keys()).collect();
    for key in keys {
        let each: Vec<&Measured> = rounds.iter().filter_map(|r| r.0.get(key)).collect();
        let figure = |f: fn(&Measured) -> f64| median(each.iter().map(|m| f(m)).collect());
        merged.0.insert(
            key.clone(),
            Measured {
                ops_per_second: figure(|m| m.ops_per_second),
                p50: figure(|m| m.p50),
                p99: figure(|m| m.p99),
            },
        );
    }
    for round in &rounds {
        for (operation, reason) in &round.1 {
            merged.0.retain(|(o, _), _| o != operation);
            merged.1.insert(operation.clone(), reason.clone());
        }
    }
    merged
}

fn softhsm_setup(dir: &Path) -> Result<PathBuf, String> {
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| format!("softhsm2-util: {e} (apt-get install softhsm2)"))?;
    if !init.status.success() {
        return Err(format!(
            "softhsm2-util failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    Ok(conf)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--echo") {
        let transport = args.get(1).map(String::as_str).unwrap_or("unix");
        let size = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
        echo_server(
            transport,
            args.get(2).map(String::as_str) == Some("poll"),
            size,
        );
        return;
    }
    if args.first().map(String::as_str) == Some("--worker") {
        let module = args.get(1).cloned().unwrap_or_default();
        let result = parse_options(&args[2..]).and_then(|o| worker(&module, &o));
        if let Err(e) = result {
            eprintln!("p11-bench worker ({module}): {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("p11-bench: {e}");
        std::process::exit(1);
    }
}

/// Round trips to the device of one operation as the worker makes it (counted for Tessera in
/// `--test round_trips`): a session is opened and closed, a key made and destroyed; everything
/// else is one.
fn round_trips(operation: &str) -> u32 {
    match operation {
        "open-close" | "aes-keygen" | "token-keygen" | "create" | "mlkem768-encaps"
        | "mlkem768-decaps" => 2,
        _ => 1,
    }
}

/// A post-quantum operation with aws-lc-rs in this process, `threads` at once for `seconds`.
fn in_process(operation: &str, threads: usize, seconds: f64) -> Result<Measured, String> {
    use aws_lc_rs::kem::{DecapsulationKey, ML_KEM_768};
    use aws_lc_rs::signature::{
        KeyPair, PqdsaKeyPair, UnparsedPublicKey, ML_DSA_65, ML_DSA_65_SIGNING,
    };
    let dsa = Arc::new(PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).map_err(|e| e.to_string())?);
    let kem = Arc::new(DecapsulationKey::generate(&ML_KEM_768).map_err(|e| e.to_string())?);
    let message = [7u8; 64];
    let mut signature = vec![0u8; ML_DSA_65_SIGNING.signature_len()];
    dsa.sign(&message, &mut signature)
        .map_err(|e| e.to_string())?;
    let encapsulation = kem.encapsulation_key().map_err(|e| e.to_string())?;
    let (ciphertext, _) = encapsulation.encapsulate().map_err(|e| e.to_string())?;
    let ciphertext = Arc::new(ciphertext.as_ref().to_vec());
    let signature = Arc::new(signature);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (dsa, kem) = (dsa.clone(), kem.clone());
            let (signature, ciphertext) = (signature.clone(), ciphertext.clone());
            let barrier = barrier.clone();
            let operation = operation.to_string();
            std::thread::spawn(move || -> Result<Vec<f64>, String> {
                let public = dsa.public_key().as_ref().to_vec();
                let encapsulation = kem.encapsulation_key().map_err(|e| e.to_string())?;
                let mut out = vec![0u8; signature.len()];
                let once = |out: &mut Vec<u8>| -> Result<(), String> {
                    let failed = |_| "aws-lc-rs failed".to_string();
                    match operation.as_str() {
                        "mldsa65-sign" => dsa.sign(&message, out).map(drop).map_err(failed),
                        "mldsa65-verify" => UnparsedPublicKey::new(&ML_DSA_65, &public)
                            .verify(&message, &signature)
                            .map_err(failed),
                        "mlkem768-encaps" => encapsulation.encapsulate().map(drop).map_err(failed),
                        _ => kem
                            .decapsulate(ciphertext.as_slice().into())
                            .map(drop)
                            .map_err(failed),
                    }
                };
                timed(seconds, &barrier, || once(&mut out))
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.join().map_err(|_| "a thread panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds);
    all.sort_by(f64::total_cmp);
    Ok(Measured {
        ops_per_second: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    })
}

/// What `--help` prints.
const HELP: &str = "\
p11-bench: PKCS#11 throughput and latency of Tessera against SoftHSM2, back to back

Systems (pick with --systems, default all):
  a  SoftHSM2 loaded in-process
  b  SoftHSM2 behind p11-kit's remote RPC (p11-kit server on a Unix socket)
  c  Tessera over a Unix socket, no channel
  d  Tessera over a Unix socket, full secure messaging (nuNU)
  e  Tessera over loopback TCP, full secure messaging (nuNU)
  g  Tessera over a Unix socket, no channel, the device a node of a cluster (a three-member
     etcd on loopback, started here; needs Debian's etcd-server, else left out)
Also measured: the bare round trip between two processes (Unix and TCP, sleeping and polling;
and 1 MiB each way over a Unix socket), and AES-256-GCM in this process: the limits printed
beside the TCP and bulk rows.

Options:
  --seconds S        time per case (default 1, at most 60)
  --threads 1,2,16   client thread counts (default 1,2,16)
  --ops LIST         operations, comma-separated (default all):
                     open-close,random32,gcm64,gcm4k,gcm1m,ecb4k,ecdsa-p256,rsa2048,aes-keygen,
                     token-keygen and create (a token key or data object made and destroyed:
                     two writes of token state), find, sha256, and the first uses gcm64-first,ecdsa-first,sha256-first (each:
                     open a session, the operation once, close it; compare with open-close);
                     post-quantum (PKCS#11 3.2; SoftHSM2 has none): mldsa65-sign,
                     mldsa65-verify, mlkem768-encaps, mlkem768-decaps (each encapsulation
                     makes a session key, destroyed in the same measured call), also measured
                     as (f), aws-lc-rs called in this process
  --systems LIST     systems by letter, e.g. c,d,e
  --rounds N         measure every system in turn N times (1-9) and print each row's median
  --busy-poll MICROS start the Tessera daemons with this --busy-poll (default: theirs, 50);
                     0: the daemons sleep while they wait for a request (the library
                     still polls briefly for each reply)
  --help             this text

Prints ops/s, p50 and p99 latency, throughput ratios to (b) and (a) (\"-\" when that system
was not measured), the (d)/(c) and (e)/(d) ratios, and what TCP adds to a round trip against
what it adds to a bare one. Needs softhsm2 and p11-kit installed.
Example: ./target/release/p11-bench --seconds 0.5 --rounds 5 --threads 1 --systems c,d,e
";

fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(());
    }
    let options = parse_options(args)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let conf = softhsm_setup(dir.path())?;
    let softhsm_env = vec![("SOFTHSM2_CONF".to_string(), conf.display().to_string())];
    let p11kit_socket = dir.path().join("p11-kit.sock");
    // Stopped when `run` returns, whichever way.
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let p11kit = Command::new("p11-kit")
        .args(["server", "-f", "--provider", SOFTHSM, "-n"])
        .arg(&p11kit_socket)
        .arg(format!("pkcs11:token={LABEL}"))
        .env("SOFTHSM2_CONF", &conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("p11-kit server: {e}"))?;
    let _p11kit = Server(p11kit);
    for _ in 0..100 {
        if p11kit_socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy_poll = options.busy_poll.map(|micros| micros.to_string());
    let daemon_options = match &busy_poll {
        Some(micros) => vec!["--busy-poll", micros.as_str()],
        None => vec![],
    };
    let plain = Daemon::start_for_benchmark(&daemon_options);
    let secure = Daemon::start_for_benchmark(&daemon_options);
    // (g): a node of a cluster, alone on a three-member etcd (its writes are etcd's commits;
    // what it serves from memory is what a single device serves).
    let clustered = if options.systems.contains('g') && tessera_testkit::etcd::binary().exists() {
        let etcd = tessera_testkit::etcd::Etcd::start(3);
        let endpoints = etcd.endpoints();
        let mut args = daemon_options.clone();
        args.extend(["--cluster", "bench", "--etcd", endpoints.as_str()]);
        let node = Daemon::start_for_benchmark(&args);
        Some((etcd, node))
    } else {
        if options.systems.contains('g') {
            eprintln!(
                "p11-bench: (g) left out: no etcd at {}",
                tessera_testkit::etcd::binary().display()
            );
        }
        None
    };
    let tessera_env = |daemon: &Daemon, transport: Transport| {
        let mut env = daemon.trust_env();
        env.push((
            "ET_HSM_NETCLIENT_SERVERLIST".into(),
            daemon.server_list(transport),
        ));
        env
    };
    // The token and keys are made before the flags forbid C_InitToken (`n`).
    let prepared = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args([
            "--worker",
            &pkcs11_module().display().to_string(),
            "--ops",
            "",
        ])
        .envs(tessera_env(&secure, Transport::Unix))
        .status()
        .map_err(|e| e.to_string())?;
    if !prepared.success() {
        return Err("could not prepare the token of the secure daemon".into());
    }
    secure.secure(Transport::Unix, "nuNU");
    let module = pkcs11_module().display().to_string();
    let _ = binary("tesserad");
    let systems = [
        System {
            key: "a",
            name: "SoftHSM2 in-process",
            module: SOFTHSM.into(),
            env: softhsm_env,
        },
        System {
            key: "b",
            name: "SoftHSM2 via p11-kit remote",
            module: P11KIT_CLIENT.into(),
            env: vec![(
                "P11_KIT_SERVER_ADDRESS".into(),
                format!("unix:path={}", p11kit_socket.display()),
            )],
        },
        System {
            key: "c",
            name: "Tessera Unix, no channel",
            module: module.clone(),
            env: tessera_env(&plain, Transport::Unix),
        },
        System {
            key: "d",
            name: "Tessera Unix, nuNU channel",
            module: module.clone(),
            env: tessera_env(&secure, Transport::Unix),
        },
        System {
            key: "e",
            name: "Tessera TCP, nuNU channel",
            module: module.clone(),
            env: tessera_env(&secure, Transport::Tcp),
        },
        System {
            key: "g",
            name: "Tessera Unix, no channel, a cluster node (3-member etcd)",
            module,
            env: match &clustered {
                Some((_, node)) => tessera_env(node, Transport::Unix),
                None => Vec::new(),
            },
        },
    ];
    let bare = bare_round_trips()?;
    let rtt = bare.unix;
    // Round after round, every system in turn: a noisy spell of the machine falls on all of
    // them instead of on one.
    let mut rounds: Vec<Vec<Results>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.rounds {
        if options.rounds > 1 {
            eprintln!("p11-bench: round {round} of {}", options.rounds);
        }
        for (i, system) in systems.iter().enumerate() {
            if options.systems.contains(system.key) && (system.key != "g" || clustered.is_some()) {
                rounds[i].push(run_worker(system, args)?);
            }
        }
    }
    let results: Vec<Results> = rounds.into_iter().map(median_of_rounds).collect();
    let rounds = match options.rounds {
        1 => String::new(),
        n => format!(", median of {n} rounds"),
    };
    let busy_poll = match &busy_poll {
        Some(micros) => format!(", Tessera daemons with --busy-poll {micros}"),
        None => String::new(),
    };
    println!(
        "p11-bench: {} s per case{rounds}{busy_poll}; bare Unix-socket round trip between two processes: p50 {rtt:.1} us",
        options.seconds
    );
    for system in systems.iter().filter(|s| options.systems.contains(s.key)) {
        println!("  ({}) {}", system.key, system.name);
    }
    println!(
        "{:<15} {:>3} {:>4}  {:>10} {:>9} {:>9}  {:>7} {:>7}",
        "operation", "thr", "sys", "ops/s", "p50 us", "p99 us", "vs (b)", "vs (a)"
    );
    for operation in &options.operations {
        for &threads in &options.threads {
            let key = (operation.clone(), threads);
            let ops = |i: usize| {
                results[i]
                    .0
                    .get(&key)
                    .map_or(f64::NAN, |m| m.ops_per_second)
            };
            for (i, system) in systems.iter().enumerate() {
                let Some(m) = results[i].0.get(&key) else {
                    if let Some(reason) = results[i].1.get(operation) {
                        let reason = reason.rsplit(": ").next().unwrap_or(reason);
                        let reason: String = reason.chars().take(70).collect();
                        println!(
                            "{operation:<15} {threads:>3} {:>4}  n/a: {reason}",
                            format!("({})", system.key)
                        );
                    }
                    continue;
                };
                // A ratio to a system that was not measured is shown as "-".
                let against = |base: f64| {
                    let ratio = m.ops_per_second / base;
                    if ratio.is_finite() {
                        format!("{ratio:.2}x")
                    } else {
                        "-".to_string()
                    }
                };
                println!(
                    "{:<15} {:>3} {:>4}  {:>10.0} {:>9.1} {:>9.1}  {:>7} {:>7}",
                    operation,
                    threads,
                    format!("({})", system.key),
                    m.ops_per_second,
                    m.p50,
                    m.p99,
                    against(ops(1)),
                    against(ops(0))
                );
            }
        }
    }
    println!("vs (b), vs (a): throughput ratio to SoftHSM2 via p11-kit and to SoftHSM2 in-process (higher is better).");
    // The channel's cost and TCP's, as ratios of throughput: (d)/(c) and (e)/(d).
    let ratio = |operation: &str, threads: usize, over: usize, under: usize| {
        let key = (operation.to_string(), threads);
        let ops = |i: usize| results[i].0.get(&key).map(|m| m.ops_per_second);
        match (ops(over), ops(under)) {
            (Some(over), Some(under)) => format!("{:>5.2}", over / under),
            _ => format!("{:>5}", "-"),
        }
    };
    println!(
        "(d)/(c) full secure messaging against no channel, (e)/(d) TCP against Unix, (g)/(c) a cluster node against a single device, by threads {}:",
        options.threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("/")
    );
    for operation in &options.operations {
        let row = |over, under| {
            (options.threads.iter())
                .map(|&t| ratio(operation, t, over, under))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {operation:<15} (d)/(c) {}   (e)/(d) {}   (g)/(c) {}",
            row(3, 2),
            row(4, 3),
            row(5, 2)
        );
    }
    println!(
        "bare round trips, p50: Unix {:.1} us, TCP {:.1} us (each side sleeping in read); \
         Unix {:.1} us, TCP {:.1} us (each side polling): TCP/Unix {:.2}x and {:.2}x",
        bare.unix,
        bare.tcp,
        bare.unix_polling,
        bare.tcp_polling,
        bare.tcp / bare.unix,
        bare.tcp_polling / bare.unix_polling
    );
    // What TCP adds to a call, against what it adds to a bare round trip: the kernel's part.
    let bare_extra = bare.tcp_polling - bare.unix_polling;
    let extra: Vec<String> = (options.operations.iter())
        .filter_map(|operation| {
            let p50 = |i: usize| results[i].0.get(&(operation.clone(), 1)).map(|m| m.p50);
            let added = (p50(4)? - p50(3)?) / round_trips(operation) as f64;
            Some(format!(
                "{operation} {added:+.1} ({:.2}x)",
                added / bare_extra
            ))
        })
        .collect();
    if !extra.is_empty() {
        println!(
            "TCP's extra p50 per round trip with one thread, (e) - (d), in us, and its ratio to \
             the limit (what TCP adds to a bare round trip, polling: {bare_extra:+.1} us): {}",
            extra.join(", ")
        );
    }
    // The bulk rows against what the machine allows: AES-256-GCM timed in this process. A
    // call without a channel needs one pass over the data (the operation); one through the
    // channel five (client seal, device open, the operation, device seal, client open).
    let bulk: Vec<(&String, usize)> = (options.operations.iter())
        .filter_map(|o| match o.as_str() {
            "gcm4k" => Some((o, 4096)),
            "gcm1m" => Some((o, 1 << 20)),
            _ => None,
        })
        .collect();
    if !bulk.is_empty() {
        println!(
            "bulk limits (aws-lc-rs AES-256-GCM in this process, one thread): one pass for (c), \
             five for (d) and (e); and with the bare round trip of the same bytes over a Unix \
             socket added (+rtt: 1 MiB each way took {:.1} us, sleeping), what a call over a \
             socket can reach; cap (d) = the most (d)/lim can reach over this socket, with \
             nothing but the five passes and the bare round trip (five / (five + rtt)):",
            bare.unix_1m
        );
        println!(
            "{:<15} {:>9} {:>11} {:>11}  {:>7} {:>7} {:>7}  {:>11} {:>11} {:>8}",
            "operation",
            "pass us",
            "limit (c)",
            "limit (d)",
            "(c)/lim",
            "(d)/lim",
            "(e)/lim",
            "(c)/+rtt",
            "(d)/+rtt",
            "cap (d)"
        );
        for (operation, size) in bulk {
            let pass = gcm_pass_seconds(size);
            let (one, five) = (1.0 / pass, 1.0 / (5.0 * pass));
            // With the bare round trip of the same bytes (measured for 1 MiB).
            let rtt = (size == 1 << 20).then_some(bare.unix_1m * 1e-6);
            let share = |i: usize, limit: f64| {
                results[i]
                    .0
                    .get(&(operation.clone(), 1))
                    .map_or("-".to_string(), |m| {
                        format!("{:.2}", m.ops_per_second / limit)
                    })
            };
            println!(
                "{operation:<15} {:>9.1} {one:>11.0} {five:>11.0}  {:>7} {:>7} {:>7}  {:>11} {:>11} {:>8}",
                pass * 1e6,
                share(2, one),
                share(3, five),
                share(4, five),
                rtt.map_or("-".into(), |rtt| share(2, 1.0 / (pass + rtt))),
                rtt.map_or("-".into(), |rtt| share(3, 1.0 / (5.0 * pass + rtt))),
                rtt.map_or("-".into(), |rtt| format!(
                    "{:.2}",
                    5.0 * pass / (5.0 * pass + rtt)
                ))
            );
        }
    }
    // The post-quantum rows against aws-lc-rs called in this process: what the same
    // computation costs with no library, wire, channel or daemon around it.
    let pq: Vec<&String> = (options.operations.iter())
        .filter(|o| POST_QUANTUM.contains(&o.as_str()))
        .collect();
    if !pq.is_empty() {
        println!("(f) aws-lc-rs in-process (the same computation, no PKCS#11 around it):");
        println!(
            "{:<15} {:>3}  {:>10} {:>9}  {:>7} {:>7}",
            "operation", "thr", "ops/s", "p50 us", "(c)/(f)", "(d)/(f)"
        );
        for operation in pq {
            for &threads in &options.threads {
                let f = in_process(operation, threads, options.seconds)?;
                let share = |i: usize| {
                    results[i]
                        .0
                        .get(&(operation.clone(), threads))
                        .map_or("-".to_string(), |m| {
                            format!("{:.2}", m.ops_per_second / f.ops_per_second)
                        })
                };
                println!(
                    "{operation:<15} {threads:>3}  {:>10.0} {:>9.1}  {:>7} {:>7}",
                    f.ops_per_second,
                    f.p50,
                    share(2),
                    share(3)
                );
            }
        }
    }
    println!(
        "p50 of random32 with one thread over (d) / bare round trip: {:.2}",
        results[3]
            .0
            .get(&("random32".into(), 1))
            .map_or(f64::NAN, |m| m.p50)
            / rtt
    );
    Ok(())
}
