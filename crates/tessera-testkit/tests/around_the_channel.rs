//! Ways around the trusted channel, each performed by a man in the middle on loopback TCP:
//! a clear answer forged for a protected call, a device renamed in the clear phase, a device
//! that stops offering a channel or is another device, and a flag change that would let a PIN
//! leave on a clear session. Each must end in a refusal, with nothing secret on the wire and no
//! side effect on the device.

mod sm_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sm_common::*;
use tessera_core::{ck, Attribute, Mechanism, MechanismParameter, Rv, Template};
use tessera_testkit::relay::{Frame, Recorder, Relay, Way};
use tessera_testkit::{Daemon, Transport, TRANSPORTS};
use tessera_wire::{Call, Message, Operation, Reply, Response, ResponseEnvelope, PROTOCOL_VERSION};

const HMAC_KEY: &[u8] = b"HMAC-KEY-THAT-MUST-NOT-LEAK-0123";

fn protected_count(recorder: &Recorder, connection: usize) -> usize {
    (recorder.frames(connection, Way::ToDevice).iter())
        .filter(|b| is_protected(b))
        .count()
}

/// The id of the request the relay saw last on `connection`.
fn last_request_id(recorder: &Recorder, connection: usize) -> u64 {
    let frames = recorder.frames(connection, Way::ToDevice);
    request(frames.last().expect("a request")).id
}

/// A forged clear frame answering request `id`.
fn forged(id: u64, result: Result<Reply, u64>) -> Vec<u8> {
    response_body(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id,
        channel: None,
        result: result.map(Response::Reply),
    })
}

/// The library's report file (`ET_PTKC_GENERAL_LOG`) holds `needle`.
fn assert_logged(daemon: &Daemon, needle: &str) {
    let log = std::fs::read_to_string(daemon.client_log()).unwrap_or_default();
    assert!(
        log.contains(needle),
        "the library's log lacks {needle:?}: {log}"
    );
}

/// A device with an identity its clients trust, and no security flags.
fn identified_without_flags(transport: Transport) -> Daemon {
    let daemon = Daemon::start();
    prepare(&daemon, transport, "");
    daemon.identify(transport, &[]);
    daemon
}

/// Every request that reached the device in the clear is public (no session call, PIN or key
/// value left outside a channel).
fn only_public_in_the_clear(recorder: &Recorder, connection: usize) {
    for body in recorder.frames(connection, Way::ToDevice) {
        let envelope = request(&body);
        assert!(
            envelope.message.is_public(),
            "a session call went out in the clear: {:?}",
            envelope.message
        );
    }
}

fn hmac_key(session: u64) -> Call {
    Call::CreateObject {
        session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_SIGN, true),
            Attribute::bool(ck::CKA_VERIFY, true),
            Attribute::bytes(ck::CKA_LABEL, b"victim-key"),
            Attribute::bytes(ck::CKA_VALUE, HMAC_KEY),
        ]),
    }
}

/// Rule 1: a relay drops the protected request (or the sealed reply) and answers the call in
/// the clear. `C_DestroyObject` must not report success for a key that still exists, and
/// `C_Verify` of a wrong MAC must not pass.
#[test]
fn a_clear_answer_to_a_protected_call_is_refused_as_forged() {
    let forgeries: Vec<(&str, Result<Reply, u64>)> = vec![
        ("Err(0)", Err(0)),
        ("Ok(Done)", Ok(Reply::Done)),
        ("Ok(Verified)", Ok(Reply::Verified)),
        ("Err(CKR_SESSION_CLOSED)", Err(Rv::SessionClosed.code())),
    ];
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "nuNU");
        for (name, forgery) in &forgeries {
            // Protected requests of connection 0: 1 OpenSession, 2 Login, 3 CreateObject,
            // 4 VerifyInit, 5 Verify (its sealed reply is replaced); of connection 1 (after
            // the first channel died): 1 OpenSession, 2 Login, 3 DestroyObject (dropped, and
            // answered by the relay).
            let forgery = Arc::new(Mutex::new(Some(forged(0, clone(forgery)))));
            let replace = forgery.clone();
            let relay = Relay::start(
                &daemon,
                transport,
                Arc::new(|frame: &Frame, recorder: &Recorder| {
                    let index = protected_count(recorder, frame.connection);
                    if is_protected(&frame.body) && frame.connection == 1 && index == 3 {
                        return vec![]; // DestroyObject never reaches the device.
                    }
                    vec![frame.body.clone()]
                }),
                Arc::new(move |frame: &Frame, recorder: &Recorder| {
                    let index = protected_count(recorder, frame.connection);
                    let id = last_request_id(recorder, frame.connection);
                    if frame.body.is_empty() || (frame.connection == 0 && index == 5) {
                        let template = replace.lock().unwrap().clone().unwrap();
                        let mut envelope: ResponseEnvelope =
                            match tessera_wire::decode_response(&template) {
                                Ok(envelope) => envelope,
                                // Err(0) does not decode: patch the id into its encoding.
                                Err(_) => return forged_err0(id),
                            };
                        envelope.id = id;
                        return response_body(&envelope);
                    }
                    frame.body.clone()
                }),
            );
            let device = secured(&daemon, &relay.address, &[]);
            let (session, g) = user(&device);
            let Reply::Handle(key) = call(&device, g, hmac_key(session)) else {
                panic!("no key")
            };
            let init = Call::OperationInit {
                session,
                operation: Operation::Verify,
                mechanism: Mechanism {
                    ty: ck::CKM_SHA256_HMAC as u64,
                    parameter: MechanismParameter::None,
                },
                key,
            };
            call(&device, g, init);
            let verify = Call::OperationSingle {
                session,
                operation: Operation::Verify,
                data: b"message".to_vec(),
                signature: vec![0x55; 32],
            };
            let outcome = code(device.call(Some(g), verify));
            assert_eq!(
                outcome,
                Rv::BadReplySignature.code(),
                "verify answered with {name} ({transport:?})"
            );
            // The channel is gone with its sessions.
            assert_eq!(
                code(device.call(Some(g), Call::SessionInfo { session })),
                Rv::SessionClosed.code()
            );
            // A second attempt on a fresh channel: DestroyObject dropped and answered in the
            // clear.
            let (session, g) = user(&device);
            let outcome = code(device.call(
                Some(g),
                Call::DestroyObject {
                    session,
                    object: key,
                },
            ));
            assert_eq!(
                outcome,
                Rv::BadReplySignature.code(),
                "destroy answered with {name} ({transport:?})"
            );
            assert_eq!(
                count(&daemon, transport, "victim-key"),
                1,
                "the key still exists"
            );
            assert_logged(&daemon, "refused as forged");
            assert!(!relay.recorder.contains(HMAC_KEY));
            assert!(!relay.recorder.contains(USER_PIN.as_bytes()));
            drop(forgery);
            // Clean up for the next forgery: the key is destroyed through a clean client.
            destroy_all(&daemon, transport, "victim-key");
        }
    }
}

fn clone(result: &Result<Reply, u64>) -> Result<Reply, u64> {
    match result {
        Ok(Reply::Done) => Ok(Reply::Done),
        Ok(Reply::Verified) => Ok(Reply::Verified),
        Ok(_) => unreachable!(),
        Err(code) => Err(*code),
    }
}

/// `ResponseEnvelope { id, channel: None, result: Err(0) }` as an encoder would write it (it
/// does not decode, on purpose).
fn forged_err0(id: u64) -> Vec<u8> {
    // The frame of `Err(1)` in the clear, its code (postcard's last byte, a varint) made 0.
    let mut body = response_body(&ResponseEnvelope {
        version: PROTOCOL_VERSION,
        id,
        channel: None,
        result: Err(1),
    });
    let code = body.len() - 1;
    assert_eq!(body[code], 1);
    body[code] = 0;
    body
}

fn destroy_all(daemon: &Daemon, transport: Transport, label: &str) {
    let device = secured(daemon, &daemon.server_list(transport), &[]);
    let (session, g) = user(&device);
    let template = Template(vec![Attribute::bytes(ck::CKA_LABEL, label.as_bytes())]);
    call(&device, g, Call::FindObjectsInit { session, template });
    if let Reply::Handles(handles) = call(&device, g, Call::FindObjects { session, max: 100 }) {
        for object in handles {
            call(&device, g, Call::DestroyObject { session, object });
        }
    }
}

/// Rewrites the serial in clear `DeviceInfo` replies; with `refuse`, also answers every
/// handshake itself with `CKR_NO_SESSION_KEYS` (a device "without identity").
fn renaming_relay(daemon: &Daemon, transport: Transport, refuse: bool) -> Relay {
    Relay::start(
        daemon,
        transport,
        Arc::new(move |frame: &Frame, _: &Recorder| {
            let envelope = request(&frame.body);
            if refuse && matches!(envelope.message, Message::Handshake(_)) {
                return vec![];
            }
            vec![frame.body.clone()]
        }),
        Arc::new(|frame: &Frame, recorder: &Recorder| {
            if frame.body.is_empty() {
                let id = last_request_id(recorder, frame.connection);
                return forged(id, Err(Rv::NoSessionKeys.code()));
            }
            let mut envelope = response(&frame.body);
            if let Ok(Response::Reply(Reply::Device(info))) = &mut envelope.result {
                info.serial = "0000000001".into();
            }
            response_body(&envelope)
        }),
    )
}

/// Rule 2: the clear phase is rewritten (another serial, and optionally "no identity") so that
/// the client's SMPR would not apply. The client authenticates before any session call: it
/// refuses, and neither the PIN nor any session call leaves in the clear.
#[test]
fn a_device_renamed_in_the_clear_phase_gets_no_session_call() {
    let transport = Transport::Tcp;
    let daemon = Daemon::start();
    // The device requires nothing; the client requires everything of it.
    prepare(&daemon, transport, "");
    daemon.identify(transport, &[]);
    let serial = daemon.serial(transport);
    let item = format!("ET_PTKC_{serial}_SMPR");
    let before = daemon_sessions(&daemon, transport);
    for refuse in [false, true] {
        let relay = renaming_relay(&daemon, transport, refuse);
        let device = secured(&daemon, &relay.address, &[(&item, "SRPEDT")]);
        let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
        let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
        let expected = if refuse {
            Rv::NoSessionKeys.code()
        } else {
            Rv::CertNotValidated.code()
        };
        assert_eq!(outcome, expected, "refuse={refuse}");
        only_public_in_the_clear(&relay.recorder, 0);
        assert!(!relay.recorder.contains(USER_PIN.as_bytes()));
        assert_eq!(
            daemon_sessions(&daemon, transport),
            before,
            "no session was opened"
        );
    }
}

/// Sessions open on the device, as `ctconf` shows them ("Open Session Count").
fn daemon_sessions(daemon: &Daemon, transport: Transport) -> usize {
    let shown = daemon.admin(transport, &[]);
    shown
        .lines()
        .find(|l| l.starts_with("Open Session Count"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("ctconf shows the open session count: {shown}"))
}

fn ctident(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tessera_testkit::binary("ctident"))
        .envs(daemon.trust_env())
        .args(args)
        .output()
        .expect("ctident runs")
}

/// The operator records `entry` for the device of `serial` and `identity`, a channel required
/// (`ctident known-devices add ... --required`, in `daemon`'s client configuration).
fn record_required(daemon: &Daemon, entry: &str, serial: &str, identity: &str) {
    let added = ctident(
        daemon,
        &[
            "known-devices",
            "add",
            entry,
            "--serial",
            serial,
            "--identity",
            identity,
            "--required",
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
}

/// `daemon`'s clients trust `other`'s identity too.
fn trust_also(daemon: &Daemon, other: &Daemon) {
    for entry in std::fs::read_dir(other.trust_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), daemon.trust_dir().join(entry.file_name())).unwrap();
    }
}

/// Known devices: after a first channel through entry R1, a device at a recorded entry that
/// offers no channel, or that is another (trusted) device, is refused with the record named;
/// `ctident known-devices forget` accepts a legitimate change.
#[test]
fn a_known_device_is_only_talked_to_through_a_channel_to_that_device() {
    let transport = Transport::Tcp;
    let daemon = Daemon::start();
    prepare(&daemon, transport, "nuNU");
    let serial = daemon.serial(transport);

    // First contact records the entry.
    let first = Relay::transparent(&daemon, transport);
    let device = secured(&daemon, &first.address, &[]);
    user(&device);
    device.disconnect();
    let known = std::fs::read_to_string(daemon.known_devices()).expect("a known-devices file");
    let line = known
        .lines()
        .find(|l| l.starts_with(&first.address))
        .unwrap_or_else(|| panic!("entry recorded: {known}"));
    assert!(
        line.contains(&serial) && line.ends_with(" required"),
        "{line}"
    );
    let identity = line.split_whitespace().nth(2).unwrap().to_string();

    // The same device, provisioned at a second entry whose relay strips the channel.
    let stripping = renaming_relay(&daemon, transport, true);
    record_required(&daemon, &stripping.address, &serial, &identity);
    let device = secured(&daemon, &stripping.address, &[]);
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
    assert_eq!(outcome, Rv::NoSessionKeys.code());
    only_public_in_the_clear(&stripping.recorder, 0);
    assert_logged(
        &daemon,
        &format!("entry {} is recorded as serial {serial}", stripping.address),
    );
    assert_logged(&daemon, "known-devices forget");

    // Another device, trusted by the same client, behind an entry recorded for the first.
    let other = Daemon::start();
    prepare(&other, transport, "nuNU");
    trust_also(&daemon, &other);
    let impostor = Relay::transparent(&other, transport);
    record_required(&daemon, &impostor.address, &serial, &identity);
    let device = secured(&daemon, &impostor.address, &[]);
    let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
    assert_eq!(outcome, Rv::CertNotValidated.code());
    assert!(!impostor.recorder.contains(USER_PIN.as_bytes()));
    only_public_in_the_clear(&impostor.recorder, 0);
    assert_logged(&daemon, "another device or identity");

    // The operator accepts the change: the entry is recorded afresh, for the other device.
    let forgot = ctident(&daemon, &["known-devices", "forget", &impostor.address]);
    assert!(forgot.status.success());
    let device = secured(&daemon, &impostor.address, &[]);
    assert!(device
        .call(None, Call::OpenSession { slot: 0, flags })
        .is_ok());
    let other_serial = other.serial(transport);
    let known = std::fs::read_to_string(daemon.known_devices()).unwrap();
    assert!(
        known
            .lines()
            .any(|l| l.starts_with(&impostor.address) && l.contains(&other_serial)),
        "{known}"
    );
}

/// What the pipe does with each frame the device sends: the frames to pass on now (written
/// together, in one write), possibly held ones.
type Shaper = Box<dyn FnMut(Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// A pipe between a client and a daemon's TCP port that records every byte the client sent
/// and passes the device's frames through `shaper` (unlike the request/reply relay, it passes
/// on frames the device sends unasked, and its close).
fn pipe(
    daemon: &Daemon,
    shaper: impl Fn() -> Shaper + Send + 'static,
) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let upstream = daemon.server_list(Transport::Tcp);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut device = TcpStream::connect(&upstream).unwrap();
            let (mut client_in, mut device_out) =
                (client.try_clone().unwrap(), device.try_clone().unwrap());
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while let Ok(n) = client_in.read(&mut buffer) {
                    if n == 0 || device_out.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buffer[..n]);
                }
                let _ = device_out.shutdown(std::net::Shutdown::Write);
            });
            let mut shape = shaper();
            std::thread::spawn(move || {
                let _ = device.set_read_timeout(Some(Duration::from_secs(30)));
                loop {
                    let mut header = [0u8; 4];
                    if device.read_exact(&mut header).is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    if device.read_exact(&mut body).is_err() {
                        break;
                    }
                    let mut out = Vec::new();
                    for frame in shape(body) {
                        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                        out.extend_from_slice(&frame);
                    }
                    if !out.is_empty() && client.write_all(&out).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (address, sent)
}

fn passes_all() -> Shaper {
    Box::new(|frame| vec![frame])
}

/// Once `armed`, holds the device's frames until it has `count` of them (those that
/// `wanted`), then passes them on together after `change`.
fn holding(
    armed: Arc<std::sync::atomic::AtomicBool>,
    count: usize,
    wanted: fn(&[u8]) -> bool,
    change: fn(&mut Vec<Vec<u8>>),
) -> impl Fn() -> Shaper + Send + 'static {
    move || {
        let armed = armed.clone();
        let mut held: Vec<Vec<u8>> = Vec::new();
        Box::new(move |frame| {
            if !armed.load(std::sync::atomic::Ordering::SeqCst) || !wanted(&frame) {
                return vec![frame];
            }
            held.push(frame);
            if held.len() < count {
                return vec![];
            }
            armed.store(false, std::sync::atomic::Ordering::SeqCst);
            let mut out = std::mem::take(&mut held);
            change(&mut out);
            out
        })
    }
}

fn contains(bytes: &Mutex<Vec<u8>>, needle: &[u8]) -> bool {
    let bytes = bytes.lock().unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Rule 1, pipelined: two calls in flight on one channel; the relay keeps the two sealed
/// replies in order (their records open) but swaps their envelope ids, so that each would
/// reach the other call. The id sealed inside each record gives it away.
#[test]
fn sealed_replies_swapped_between_calls_in_flight_are_refused() {
    let transport = Transport::Tcp;
    let daemon = Daemon::start();
    prepare(&daemon, transport, "nuNU");
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (address, _) = pipe(
        &daemon,
        holding(
            armed.clone(),
            2,
            |frame| tessera_wire::find_sealed(frame).is_some(),
            |frames| {
                let (mut first, mut second) = (response(&frames[0]), response(&frames[1]));
                std::mem::swap(&mut first.id, &mut second.id);
                *frames = vec![response_body(&first), response_body(&second)];
            },
        ),
    );
    let device = Arc::new(secured(&daemon, &address, &[]));
    let (session, g) = user(&device);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes: Vec<Result<Reply, u64>> = std::thread::scope(|scope| {
        let calls = [
            Call::GenerateRandom { session, len: 16 },
            Call::SessionInfo { session },
        ];
        let handles: Vec<_> = calls
            .into_iter()
            .map(|request| {
                let device = device.clone();
                let handle = scope.spawn(move || {
                    device
                        .call(Some(g), request)
                        .map(|(r, _)| r)
                        .map_err(|e| e.rv())
                });
                // The second call is sent while the first waits (its reply is held).
                std::thread::sleep(Duration::from_millis(100));
                handle
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        outcomes.iter().all(Result::is_err),
        "a call took a reply that was not its own: {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(code) if *code == Rv::BadReplySignature.code())),
        "{outcomes:?}"
    );
    assert_logged(&daemon, "arrived as the reply to request");
}

/// A protected request's record moved to another envelope id (its reply would then be
/// routed to another call) is refused by the device: not executed, channel ended.
#[test]
fn a_request_record_moved_to_another_id_is_not_executed() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "nuNU");
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, recorder: &Recorder| {
                let index = protected_count(recorder, frame.connection);
                let mut envelope = request(&frame.body);
                if is_protected(&frame.body) && index == 3 {
                    envelope.id += 1000;
                }
                vec![body(&envelope)]
            }),
            // The reply goes back under the id the client waits for.
            Arc::new(|frame: &Frame, _: &Recorder| {
                let mut envelope = response(&frame.body);
                if envelope.id > 1000 {
                    envelope.id -= 1000;
                }
                response_body(&envelope)
            }),
        );
        let device = secured(&daemon, &relay.address, &[]);
        let (session, g) = user(&device);
        let outcome = code(device.call(Some(g), data_object(session, "moved")));
        assert_eq!(outcome, Rv::BadReplySignature.code(), "{transport:?}");
        assert_eq!(count(&daemon, transport, "moved"), 0, "the request ran");
        let events = daemon.admin(transport, &["-e"]);
        assert!(events.contains("arrived as request"), "{events}");
    }
}

/// Rule 2 on first contact: the client has an SMPR for device A; the relay sends its
/// connection for A's (unrecorded) entry to device B, which the client also trusts and
/// which answers honestly as itself. B proves its serial — but no SMPR names B while others
/// are named, so the client does not take B for the entry: A's PIN never reaches B.
#[test]
fn another_trusted_device_is_not_taken_for_an_unrecorded_entry() {
    let transport = Transport::Tcp;
    let a = identified_without_flags(transport);
    let b = identified_without_flags(transport);
    // The client trusts both.
    trust_also(&a, &b);
    let item = format!("ET_PTKC_{}_SMPR", a.serial(transport));
    let relay = Relay::transparent(&b, transport);
    let device = secured(&a, &relay.address, &[(&item, "SRPEDT")]);
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
    assert_eq!(outcome, Rv::CertNotValidated.code());
    only_public_in_the_clear(&relay.recorder, 0);
    assert!(!relay.recorder.contains(USER_PIN.as_bytes()));
    assert_logged(&a, "which no SMPR of this client names");
    assert!(
        !a.known_devices().exists()
            || !std::fs::read_to_string(a.known_devices())
                .unwrap()
                .contains(&relay.address)
    );
    // The operator who means it records the entry; then it works.
    // Trust-store files are named by the certificate's SHA-256 (the PIC here).
    let identity = std::fs::read_dir(b.trust_dir())
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .next()
        .unwrap();
    let added = ctident(
        &a,
        &[
            "known-devices",
            "add",
            &relay.address,
            "--serial",
            &b.serial(transport),
            "--identity",
            &format!("sha256:{identity}"),
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let device = secured(&a, &relay.address, &[(&item, "SRPEDT")]);
    assert!(device
        .call(None, Call::OpenSession { slot: 0, flags })
        .is_ok());
}

/// `ctident known-devices add` refuses a record that would not read back (so a typo cannot
/// make every later call fail), and a process with neither HOME nor XDG_CONFIG_HOME has no
/// user-level file — never one in its working directory, which another user might control.
#[test]
fn known_devices_are_never_read_from_an_untrusted_place() {
    let daemon = Daemon::start();
    let bad = ctident(
        &daemon,
        &[
            "known-devices",
            "add",
            "h:1",
            "--serial",
            "1",
            "--identity",
            "none",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not recorded"));
    let list = ctident(&daemon, &["known-devices", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );

    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cwd.path().join("tessera")).unwrap();
    std::fs::write(
        cwd.path().join("tessera/known_devices"),
        "planted:1 9 none clear\n",
    )
    .unwrap();
    let output = std::process::Command::new(tessera_testkit::binary("ctident"))
        .args(["known-devices", "list"])
        .env_remove("HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("ET_PTKC_KNOWN_DEVICES_USER")
        .env("ET_PTKC_KNOWN_DEVICES_SYSTEM", cwd.path().join("none"))
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        shown.contains("no user-level file") && !shown.contains("planted"),
        "{shown}"
    );
}

/// After a flag change that requires a channel, `C_Login` on the session opened in the clear
/// is refused as closed, and the user PIN is not among the bytes the client sent (`sent`).
fn login_on_the_clear_session_is_stopped(
    device: &tessera_client::Device,
    session: u64,
    generation: u64,
    sent: &Mutex<Vec<u8>>,
) {
    let login = Call::Login {
        session,
        user_type: ck::CKU_USER as u64,
        pin: pin(USER_PIN),
    };
    assert_eq!(
        code(device.call(Some(generation), login)),
        Rv::SessionClosed.code()
    );
    assert!(
        !contains(sent, USER_PIN.as_bytes()),
        "the PIN left in the clear"
    );
}

/// Rule 5 with the notice already read: it arrived in the same read as the reply before it
/// (the pipe holds that reply back until the notice comes, then sends both at once), so it
/// lies in the library's read buffer, not in the socket. The next `C_Login` still sees it.
#[test]
fn a_notice_read_with_the_last_reply_still_stops_the_pin() {
    let transport = Transport::Tcp;
    let daemon = identified_without_flags(transport);
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (address, sent) = pipe(&daemon, holding(armed.clone(), 2, |_| true, |_| {}));
    let device = Arc::new(secured(&daemon, &address, &[]));
    let (session, g) = open(&device);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = {
        let device = device.clone();
        std::thread::spawn(move || {
            device
                .call(Some(g), Call::SessionInfo { session })
                .map(|_| ())
                .map_err(|e| e.rv())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    daemon.admin(transport, &["-fN"]);
    // The held reply and the notice come together.
    assert!(waiting.join().unwrap().is_ok());
    login_on_the_clear_session_is_stopped(&device, session, g, &sent);
    // The notice was read, not only the close: a call with a PIN and no session (which a
    // new connection would otherwise carry in the clear first) goes through a channel.
    const NEW_SO_PIN: &str = "new-so-pin-5678";
    let init = Call::InitToken {
        slot: 0,
        so_pin: pin(NEW_SO_PIN),
        label: [b"renewed".as_slice(), &[b' '; 25]].concat(),
    };
    let _ = device.call(None, init);
    assert!(
        !contains(&sent, NEW_SO_PIN.as_bytes()),
        "the SO PIN left in the clear"
    );
    assert_logged(&daemon, "its flags now require a secure channel");
}

/// Rule 5: an application opens a session with no flags set; the Administrator sets `-fN`;
/// the next `C_Login` must not send the PIN in the clear. The device ends the clear sessions
/// and closes their connections with a notice; the library reads it before the PIN would
/// leave, and the next session goes through a channel.
#[test]
fn a_flag_change_ends_clear_sessions_before_a_pin_leaves() {
    let transport = Transport::Tcp;
    let daemon = identified_without_flags(transport);
    let (address, sent) = pipe(&daemon, passes_all);
    let device = secured(&daemon, &address, &[]);
    let (session, g) = open(&device);
    daemon.admin(transport, &["-fN"]);
    // The device closes the clear connections as soon as the flags change; give the close a
    // moment to cross the pipe (bounded).
    std::thread::sleep(Duration::from_millis(300));
    login_on_the_clear_session_is_stopped(&device, session, g, &sent);
    // A new session works, through a channel: the PIN still never crosses in the clear.
    let (_, g) = user(&device);
    assert!(g > 1);
    assert!(
        !contains(&sent, USER_PIN.as_bytes()),
        "the PIN left in the clear"
    );
    let events = daemon.admin(transport, &["-e"]);
    assert!(events.contains("clear-sessions-ended"), "{events}");
}

/// An entry pinned while a client talks to it in the clear. The client opened a session in the
/// clear through a relay to a device it trusts but has no record of; the operator then records
/// that entry for another device. The relay forges a clear `CKR_BAD_PROTECTION` for the next
/// `C_OpenSession`, which sends the library into a channel at once: that handshake must read
/// the files as they are now (not what the library read before the first call), so the device
/// behind the relay, not the recorded one, is refused and no session opens.
#[test]
fn an_entry_pinned_during_a_clear_connection_binds_its_next_handshake() {
    let transport = Transport::Tcp;
    let real = Daemon::start();
    prepare(&real, transport, "nuNU");
    let serial = real.serial(transport);
    let other = identified_without_flags(transport);
    // The client trusts both devices.
    trust_also(&real, &other);
    // The real device's identity, as a first channel to it records it.
    let direct = secured(&real, &real.server_list(transport), &[]);
    user(&direct);
    direct.disconnect();
    let known = std::fs::read_to_string(real.known_devices()).expect("a known-devices file");
    let identity = known
        .lines()
        .find(|l| l.contains(&serial))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("the real device recorded: {known}"))
        .to_string();

    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let arm = armed.clone();
    let relay = Relay::start(
        &other,
        transport,
        Arc::new(|frame: &Frame, _: &Recorder| vec![frame.body.clone()]),
        Arc::new(move |frame: &Frame, recorder: &Recorder| {
            let frames = recorder.frames(frame.connection, Way::ToDevice);
            let Some(last) = frames.last().filter(|b| !is_protected(b)) else {
                return frame.body.clone();
            };
            let asked = request(last);
            let opening = matches!(asked.message, Message::Call(Call::OpenSession { .. }));
            if opening && arm.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return forged(asked.id, Err(Rv::BadProtection.code()));
            }
            frame.body.clone()
        }),
    );
    let device = secured(&real, &relay.address, &[]);
    open(&device);
    assert_eq!(protected_count(&relay.recorder, 0), 0, "a clear session");

    record_required(&real, &relay.address, &serial, &identity);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
    assert!(
        !armed.load(std::sync::atomic::Ordering::SeqCst),
        "the relay forged the refusal"
    );
    assert_eq!(
        outcome,
        Rv::CertNotValidated.code(),
        "the device behind the relay was taken for the entry's recorded one"
    );
    assert_logged(&real, "another device or identity");
    assert!(!relay.recorder.contains(USER_PIN.as_bytes()));
}
