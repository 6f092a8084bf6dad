//! `sm-bench`: what secure messaging costs. For each protection level (plain, `n`, `u`, `U`,
//! `N`, `nuNU`) it measures, through the same client code the PKCS#11 library runs, a small
//! call (32 random bytes) and an AES-GCM encryption of 4 KiB (init and call in one request, as
//! the library sends them), and the handshake rate; it prints
//! ops/s, p50 and p99 latency, and the channel's cost per message against plain. In process,
//! without sockets: a small call's two messages encoded and decoded in the clear and through
//! the channel (the CPU secure messaging adds to a call), and the record layer alone.
//!
//! Run: `cargo build --release --workspace && ./target/release/sm-bench [--seconds S] [--tcp]`
//! (`--help` lists the options)
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_core::{ck, Attribute, Mechanism, MechanismParameter, Template};
use tessera_testkit::sm::{call, open as session, prepare, settings, user};
use tessera_testkit::{Daemon, Transport};
use tessera_wire::{Call, Operation, Reply};

/// A client of `daemon` with its trust store (generous reply timeout: 1 MiB calls on a busy
/// machine).
fn device(daemon: &Daemon, transport: Transport) -> Device {
    let address = ServerAddress::parse(&daemon.server_list(transport)).expect("address");
    Device::new(address, Duration::from_secs(3), Duration::from_secs(30))
        .with_security(settings(daemon, &[]))
}

struct Stats {
    ops: f64,
    p50: Duration,
    p99: Duration,
}

fn measure(seconds: f64, mut operation: impl FnMut()) -> Stats {
    for _ in 0..20 {
        operation();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds && samples.len() < 200_000 {
        let t = Instant::now();
        operation();
        samples.push(t.elapsed());
    }
    let total = start.elapsed().as_secs_f64();
    samples.sort();
    let at = |q: f64| tessera_testkit::quantile(&samples, q).unwrap_or_default();
    Stats {
        ops: samples.len() as f64 / total,
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// What `--help` prints.
const HELP: &str = "\
sm-bench: what secure messaging costs, policy by policy (plain, n, u, U, N, nuNU)

For each policy, through the client code the PKCS#11 library runs: a small call (32 random
bytes) and an AES-GCM encryption of 4 KiB (ops/s, p50, p99, the channel's cost per message),
and the handshake rate. Then, in process: a small call's two messages in the clear and through
the channel, the record layer alone, and find-objects on a token with 100 000 objects.

Options:
  --seconds S   time per case (default 1, from 0.05 to 60)
  --tcp         use loopback TCP instead of the Unix socket
  --messages    only a small call's two messages in process, eleven times (to profile them:
                perf record ./target/release/sm-bench --messages)
  --help        this text
";

/// Seconds per case, the transport and `--messages`, from the command line.
fn arguments() -> Result<(f64, Transport, bool), String> {
    let mut seconds = 1.0;
    let mut transport = Transport::Unix;
    let mut messages_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--tcp" => transport = Transport::Tcp,
            "--messages" => messages_only = true,
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| (0.05..=60.0).contains(s))
                    .ok_or("--seconds takes a number of seconds from 0.05 to 60")?
            }
            _ => {
                return Err(format!(
                    "unknown argument {arg} (known: --seconds, --tcp, --messages, --help)"
                ))
            }
        }
    }
    Ok((seconds, transport, messages_only))
}

fn main() {
    let (seconds, transport, messages_only) = match arguments() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("sm-bench: {message}");
            std::process::exit(2);
        }
    };
    if messages_only {
        record_cost(true);
        return;
    }
    println!("sm-bench: {transport:?} transport, {seconds} s per case, one client thread");
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>12} {:>14} {:>10} {:>14}",
        "policy",
        "random ops/s",
        "p50 us",
        "p99 us",
        "cost/msg us",
        "gcm4k ops/s",
        "p50 us",
        "handshakes/s"
    );
    let mut plain_p50 = None;
    for (name, flags) in [
        ("plain", ""),
        ("n", "n"),
        ("u", "u"),
        ("U", "U"),
        ("N", "N"),
        ("nuNU", "nuNU"),
    ] {
        let daemon = Daemon::start_for_benchmark(&[]);
        prepare(&daemon, transport, flags);
        let d = device(&daemon, transport);
        let (s, g) = user(&d);
        let random = measure(seconds, || {
            call(
                &d,
                g,
                Call::GenerateRandom {
                    session: s,
                    len: 32,
                },
            );
        });
        let template = Template(vec![Attribute::ulong(ck::CKA_VALUE_LEN, 32)]);
        let Reply::Handle(key) = call(
            &d,
            g,
            Call::GenerateKey {
                session: s,
                mechanism: Mechanism::plain(ck::CKM_AES_KEY_GEN as u64),
                template,
            },
        ) else {
            panic!("no key")
        };
        let data = vec![0x5Au8; 4096];
        let gcm = measure(seconds, || {
            let mechanism = Mechanism {
                ty: ck::CKM_AES_GCM as u64,
                parameter: MechanismParameter::Gcm {
                    iv: vec![1; 12],
                    aad: vec![],
                    tag_bits: 128,
                },
            };
            call(
                &d,
                g,
                Call::OperationOnce {
                    session: s,
                    operation: Operation::Encrypt,
                    mechanism,
                    key,
                    data: data.clone(),
                    signature: vec![],
                },
            );
        });
        let handshakes = if flags.is_empty() {
            "-".to_string()
        } else {
            let rate = measure(seconds, || {
                let fresh = device(&daemon, transport);
                session(&fresh);
            });
            format!("{:.0}", rate.ops)
        };
        let cost = match plain_p50 {
            None => {
                plain_p50 = Some(random.p50);
                "-".to_string()
            }
            Some(base) => format!(
                "{:.1}",
                (random.p50.as_secs_f64() - Duration::as_secs_f64(&base)) * 1e6 / 2.0
            ),
        };
        println!(
            "{:<8} {:>12.0} {:>10} {:>10} {:>12} {:>14.0} {:>10} {:>14}",
            name,
            random.ops,
            micros(random.p50),
            micros(random.p99),
            cost,
            gcm.ops,
            micros(gcm.p50),
            handshakes
        );
    }
    println!("cost/msg: (p50 of the small call with the channel - p50 plain) / 2 messages; handshakes/s include a new connection and C_OpenSession.");
    record_cost(false);
    find_objects(transport);
}

/// `C_FindObjects` by label on a token holding 100 000 objects.
fn find_objects(transport: Transport) {
    let daemon = Daemon::start_for_benchmark(&[]);
    prepare(&daemon, transport, "");
    let d = device(&daemon, transport);
    let (s, g) = session(&d);
    let count = 100_000;
    let started = Instant::now();
    for n in 0..count {
        let template = Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bytes(ck::CKA_LABEL, format!("object-{n}").as_bytes()),
        ]);
        call(
            &d,
            g,
            Call::CreateObject {
                session: s,
                template,
            },
        );
    }
    let created = started.elapsed();
    let find = |label: &str| {
        let template = Template(vec![Attribute::bytes(ck::CKA_LABEL, label.as_bytes())]);
        call(
            &d,
            g,
            Call::FindObjectsInit {
                session: s,
                template,
            },
        );
        let Reply::Handles(found) = call(
            &d,
            g,
            Call::FindObjects {
                session: s,
                max: 10,
            },
        ) else {
            panic!("find")
        };
        call(&d, g, Call::FindObjectsFinal { session: s });
        found.len()
    };
    assert_eq!(find("object-77777"), 1);
    let by_label = measure(1.0, || {
        find("object-54321");
    });
    let by_class = measure(1.0, || {
        let template = Template(vec![Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY)]);
        call(
            &d,
            g,
            Call::FindObjectsInit {
                session: s,
                template,
            },
        );
        call(&d, g, Call::FindObjectsFinal { session: s });
    });
    println!(
        "\nfind objects on a token with {count} objects (created in {:.1} s):",
        created.as_secs_f64()
    );
    println!(
        "  by label (indexed), 3 round trips: p50 {} us, p99 {} us",
        micros(by_label.p50),
        micros(by_label.p99)
    );
    println!(
        "  by class (full scan), 2 round trips: p50 {} us, p99 {} us",
        micros(by_class.p50),
        micros(by_class.p99)
    );
}

/// The channel's own cost, without the network: seal and open of one record, in process.
fn record_cost(messages_only: bool) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING,
    };
    use tessera_channel::{ExpectServerHello, Policy, Protection, ServerStart};
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let chain = vec![key.public_key().as_ref().to_vec()];
    let (state, hello) = ExpectServerHello::start("1", Policy(0)).expect("hello");
    let (waiting, answer) = ServerStart::respond(&hello, 1, Policy(0), chain, |h| {
        key.sign(&SystemRandom::new(), h)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| e.to_string())
    })
    .expect("answer");
    let verify = |pic: &[u8], m: &[u8], s: &[u8]| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pic)
            .verify(m, s)
            .is_ok()
    };
    let (mut client, finished) = state
        .handle(&answer, |_| Ok::<(), ()>(()), verify)
        .expect("client");
    let mut device = waiting.handle(&finished).expect("device");
    message_cost(&mut client, &mut device);
    if messages_only {
        for _ in 0..10 {
            message_cost(&mut client, &mut device);
        }
        return;
    }
    println!("\nrecord cost in process (seal + open, one message):");
    for (size, label) in [(32usize, "32 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")] {
        for protection in [Protection::Signed, Protection::Encrypted] {
            let message = vec![0x42u8; size];
            let rounds = if size > 100_000 { 50 } else { 20_000 };
            let start = Instant::now();
            for _ in 0..rounds {
                let record = client.seal(&message, protection).expect("seal");
                device.open(&record).expect("open");
            }
            let each = start.elapsed() / rounds;
            let rate = size as f64 / each.as_secs_f64() / 1e6;
            println!(
                "  {label:>6} {protection:<10?} {:>9.2} us  {rate:>9.1} MB/s",
                each.as_secs_f64() * 1e6
            );
        }
    }
}

/// Opens a sealed record where it lies in its frame, as the library and the daemon do: the
/// frame, and where the message lies in it.
fn open_framed(
    channel: &mut tessera_channel::Channel,
    mut frame: Vec<u8>,
) -> (Vec<u8>, std::ops::Range<usize>) {
    let header = tessera_wire::FRAME_HEADER_LEN;
    let sealed = tessera_wire::find_sealed(&frame[header..]).expect("a sealed record");
    let (body, mac) = sealed
        .parts(&mut frame[header..])
        .expect("the record's parts");
    let (len, _) = channel
        .open_in_place(sealed.header, body, mac)
        .expect("open");
    let start = header + sealed.body.start;
    (frame, start..start + len)
}

/// A small call's two messages as the library and the daemon make and read them (envelope,
/// frame, request and reply encodings), in the clear and through the channel, in process: the
/// CPU that secure messaging adds to a call, without the sockets.
#[inline(never)] // a frame of its own in a profile
fn message_cost(client: &mut tessera_channel::Channel, device: &mut tessera_channel::Channel) {
    use tessera_channel::Protection::Encrypted;
    use tessera_wire::{
        decode_request, decode_response, encode_request, encode_response, RequestEnvelope,
        ResponseEnvelope, PROTOCOL_VERSION,
    };
    let request = || Call::GenerateRandom {
        session: 1,
        len: 32,
    };
    let reply = || Ok(Reply::Bytes(vec![0x5a; 32]));
    let send = |request: Call, channel: Option<u64>| {
        encode_request(&RequestEnvelope {
            version: PROTOCOL_VERSION,
            id: 7,
            channel,
            message: request.into(),
        })
    };
    let answer = |result: Result<Reply, u64>, channel: Option<u64>| {
        encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: 7,
            channel,
            result: result.map(tessera_wire::Response::Reply),
        })
    };
    let rounds = 200_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        let frame = send(request(), None);
        let received = decode_request(&frame[4..]).expect("request");
        std::hint::black_box(received);
        let frame = answer(reply(), None);
        let received = decode_response(&frame[4..]).expect("response");
        std::hint::black_box(received);
    }
    let plain = start.elapsed() / rounds;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut call = tessera_wire::Inner::Call(request());
        let (frame, _) = tessera_wire::seal_message(client, 7, &mut call, Encrypted).expect("seal");
        let (frame, plain) = open_framed(device, frame);
        let (received, _) =
            tessera_wire::open_message::<tessera_wire::Bound<tessera_wire::Inner>>(frame, plain);
        let _ = std::hint::black_box(received.expect("decode"));
        let (frame, _) =
            tessera_wire::seal_answer(device, 7, &mut reply(), Encrypted).expect("seal");
        let (frame, plain) = open_framed(client, frame);
        let (received, _) =
            tessera_wire::open_message::<tessera_wire::Bound<tessera_wire::Outcome>>(frame, plain);
        let _ = std::hint::black_box(received.expect("decode"));
    }
    let sealed = start.elapsed() / rounds;
    println!(
        "\na small call's two messages in process (random32: request and reply encoded and decoded):"
    );
    println!(
        "  plain {:.2} us, through the channel (encrypted both ways) {:.2} us: +{:.2} us per call",
        plain.as_secs_f64() * 1e6,
        sealed.as_secs_f64() * 1e6,
        (sealed.as_secs_f64() - plain.as_secs_f64()) * 1e6
    );
}
