//! Secure messaging seen from outside: a relay between client and daemon records and attacks
//! the traffic; the client is the same `tessera-client` code the PKCS#11 library runs.

mod sm_common;

use std::sync::Arc;

use sm_common::*;
use tessera_channel::Policy;
use tessera_core::{ck, Rv};
use tessera_testkit::relay::{Frame, Recorder, Relay, Way};
use tessera_testkit::{Daemon, Transport, TRANSPORTS};
use tessera_wire::{Call, Message, Reply};

const KEY: &[u8] = b"KEY-VALUE-THAT-MUST-NOT-LEAK-32b";
const PLAINTEXT: &[u8] = b"PLAINTEXT-OF-C_ENCRYPT-0123456789";

/// Index of this frame among the protected requests of its connection, if it is one.
fn protected_index(frame: &Frame, recorder: &Recorder) -> Option<usize> {
    if !is_protected(&frame.body) {
        return None;
    }
    Some(
        recorder
            .frames(frame.connection, Way::ToDevice)
            .iter()
            .filter(|b| is_protected(b))
            .count()
            - 1,
    )
}

#[test]
fn what_the_wire_shows_under_each_policy() {
    for transport in TRANSPORTS {
        for (flags, pin_visible, key_visible, plaintext_visible) in [
            ("", true, true, true),
            ("n", false, false, true),
            ("N", false, false, false),
            ("nuNU", false, false, false),
        ] {
            let daemon = Daemon::start();
            prepare(&daemon, transport, flags);
            let relay = Relay::transparent(&daemon, transport);
            let device = secured(&daemon, &relay.address, &[]);
            let (session, g) = user(&device);
            let Reply::Handle(key) = call(&device, g, aes_key(session, KEY)) else {
                panic!()
            };
            let ciphertext = encrypt(&device, g, session, key, PLAINTEXT);
            assert_ne!(ciphertext, PLAINTEXT);
            let seen = &relay.recorder;
            assert_eq!(
                seen.contains(USER_PIN.as_bytes()),
                pin_visible,
                "PIN, flags {flags:?} {transport:?}"
            );
            assert_eq!(
                seen.contains(KEY),
                key_visible,
                "key value, flags {flags:?} {transport:?}"
            );
            assert_eq!(
                seen.contains(PLAINTEXT),
                plaintext_visible,
                "plaintext, flags {flags:?} {transport:?}"
            );
        }
    }
}

/// Sets up a daemon with `nuNU`, then runs a client through a relay whose request hook acts
/// on the protected request number `target`; returns the daemon, the device and the outcome
/// of creating object "victim" at that point.
fn attacked(
    transport: Transport,
    hook: impl Fn(&Frame, &Recorder, usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
) -> (Daemon, u64, Relay) {
    let daemon = Daemon::start();
    prepare(&daemon, transport, "nuNU");
    let relay = Relay::start(
        &daemon,
        transport,
        Arc::new(move |frame: &Frame, recorder: &Recorder| {
            match protected_index(frame, recorder) {
                Some(index) => hook(frame, recorder, index),
                None => vec![frame.body.clone()],
            }
        }),
        Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
    );
    let device = secured(&daemon, &relay.address, &[]);
    // Protected requests: 0 OpenSession, 1 Login, 2 CreateObject "victim".
    let (session, g) = user(&device);
    let outcome = code(device.call(Some(g), data_object(session, "victim")));
    // After the attack the session is gone, and a new session makes a new channel.
    assert_eq!(
        code(device.call(Some(g), Call::SessionInfo { session })),
        Rv::SessionClosed.code()
    );
    (daemon, outcome, relay)
}

#[test]
fn altered_replayed_truncated_dropped_and_moved_requests_fail_closed() {
    for transport in TRANSPORTS {
        // A flipped bit.
        let (daemon, outcome, _) = attacked(transport, |frame, _, index| {
            let mut body = frame.body.clone();
            if index == 2 {
                let last = body.len() - 40;
                body[last] ^= 0x01;
            }
            vec![body]
        });
        assert_eq!(
            outcome,
            Rv::BadRequestSignature.code(),
            "flip {transport:?}"
        );
        assert_eq!(count(&daemon, transport, "victim"), 0);

        // A truncated record.
        let (daemon, outcome, _) = attacked(transport, |frame, _, index| {
            let mut envelope = request(&frame.body);
            if index == 2 {
                if let Message::Protected(record) = &mut envelope.message {
                    let keep = record.body.len() - 5;
                    record.body.truncate(keep);
                }
            }
            vec![body(&envelope)]
        });
        assert_eq!(
            outcome,
            Rv::BadRequestSignature.code(),
            "truncate {transport:?}"
        );
        assert_eq!(count(&daemon, transport, "victim"), 0);

        // A replayed request: the login's record is sent again in place of the creation's.
        let (daemon, outcome, _) = attacked(transport, |frame, recorder, index| {
            if index == 2 {
                let earlier = recorder
                    .frames(frame.connection, Way::ToDevice)
                    .into_iter()
                    .filter(|b| is_protected(b))
                    .nth(1)
                    .unwrap();
                let mut envelope = request(&frame.body);
                envelope.message = request(&earlier).message;
                return vec![body(&envelope)];
            }
            vec![frame.body.clone()]
        });
        assert_eq!(
            outcome,
            Rv::BadRequestSignature.code(),
            "replay {transport:?}"
        );
        assert_eq!(count(&daemon, transport, "victim"), 0);

        // A dropped request: the client times out; nothing happens on the device.
        let (daemon, outcome, _) = attacked(transport, |frame, _, index| {
            if index == 2 {
                vec![]
            } else {
                vec![frame.body.clone()]
            }
        });
        assert_eq!(outcome, Rv::DeviceError.code(), "drop {transport:?}");
        assert_eq!(count(&daemon, transport, "victim"), 0);
    }
}

#[test]
fn replies_replayed_or_reordered_are_refused_by_the_client() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "U");
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, _: &Recorder| vec![frame.body.clone()]),
            Arc::new(|frame: &Frame, recorder: &Recorder| {
                // The reply to the 4th request is swapped for the reply to the 3rd.
                let replies = recorder.frames(frame.connection, Way::ToClient);
                if replies.len() == 6 {
                    let mut envelope = response(&frame.body);
                    envelope.result = response(&replies[4]).result;
                    return response_body(&envelope);
                }
                frame.body.clone()
            }),
        );
        let device = secured(&daemon, &relay.address, &[]);
        let mut outcomes = Vec::new();
        let (session, g) = open(&device);
        for _ in 0..4 {
            outcomes.push(
                device
                    .call(Some(g), Call::SessionInfo { session })
                    .map(|_| ())
                    .map_err(|e| e.rv()),
            );
        }
        assert!(
            outcomes.contains(&Err(Rv::BadReplySignature.code())),
            "{outcomes:?} {transport:?}"
        );
        let log = std::fs::read_to_string(daemon.client_log()).unwrap_or_default();
        assert!(log.contains("reply refused"), "{log}");
    }
}

/// One record path: a sealed record is read as one only from a frame whose envelope says so,
/// and where it lies. A relay that relabels the envelope of a sealed request — as a message in
/// the clear, as a body kind or a channel flag the header does not define — gets the frame
/// refused: the call fails, and what it carried never happens.
#[test]
fn a_sealed_record_relabelled_in_its_envelope_is_refused() {
    for transport in TRANSPORTS {
        // The envelope header (after the frame's length): version (2), body kind, channel flag.
        for (at, value) in [(2usize, 0u8), (2, 7), (3, 0), (3, 2)] {
            let (daemon, outcome, _) = attacked(transport, move |frame, _, index| {
                let mut body = frame.body.clone();
                if index == 2 {
                    assert_eq!(body[2], 1, "a sealed record's body kind");
                    body[at] = value;
                }
                vec![body]
            });
            assert_ne!(outcome, 0, "{transport:?}, byte {at} = {value}");
            assert_eq!(
                count(&daemon, transport, "victim"),
                0,
                "{transport:?}, byte {at} = {value}"
            );
        }
    }
}

#[test]
fn a_record_moved_to_another_channel_is_refused() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "u");
        // Connection 1's third protected request is replaced by connection 0's latest one.
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, recorder: &Recorder| {
                if frame.connection == 1 && protected_index(frame, recorder) == Some(2) {
                    let other = recorder
                        .frames(0, Way::ToDevice)
                        .into_iter()
                        .rev()
                        .find(|b| is_protected(b))
                        .unwrap();
                    let mut envelope = request(&frame.body);
                    envelope.message = request(&other).message;
                    return vec![body(&envelope)];
                }
                vec![frame.body.clone()]
            }),
            Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
        );
        let first = secured(&daemon, &relay.address, &[]);
        let (s1, g1) = user(&first);
        call(&first, g1, data_object(s1, "first"));
        let second = secured(&daemon, &relay.address, &[]);
        let (s2, g2) = user(&second);
        let outcome = code(second.call(Some(g2), data_object(s2, "victim")));
        assert_eq!(outcome, Rv::BadRequestSignature.code(), "{transport:?}");
        assert_eq!(count(&daemon, transport, "victim"), 0);
        assert_eq!(
            count(&daemon, transport, "first"),
            1,
            "the other channel's request ran once only"
        );
    }
}

#[test]
fn a_downgraded_handshake_is_detected() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "u");
        // The relay lowers the client's offered policy (SMPR E = encrypt all requests).
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, _: &Recorder| {
                let mut envelope = request(&frame.body);
                if let Message::Handshake(hello) = &mut envelope.message {
                    hello.policy = Policy(0);
                }
                vec![body(&envelope)]
            }),
            Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
        );
        let serial = daemon.serial(transport);
        let item = format!("ET_PTKC_{serial}_SMPR");
        let device = secured(&daemon, &relay.address, &[(&item, "E")]);
        let flags = (ck::CKF_SERIAL_SESSION) as u64;
        let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
        assert_eq!(outcome, Rv::CannotDeriveKeys.code(), "{transport:?}");
        let log = std::fs::read_to_string(daemon.client_log()).unwrap();
        assert!(log.contains("altered in transit"), "{log}");
    }
}

/// Sessions open on the device.
fn sessions(daemon: &Daemon, transport: Transport) -> u64 {
    let device = secured(daemon, &daemon.server_list(transport), &[]);
    match device.call(None, Call::DeviceStatus) {
        Ok((Reply::Status(status), _)) => status.sessions,
        other => panic!("device status: {other:?}"),
    }
}

/// The key confirmation travels with the channel's first request, in one write (a round trip
/// less per channel). A relay that alters the confirmation gets the channel refused, and the
/// request sealed behind it, for a channel the device never opened, never runs: no session is
/// opened, the client says why, and the next call makes a channel that works.
#[test]
fn a_request_sent_behind_an_altered_key_confirmation_never_runs() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "nuNU");
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, _: &Recorder| {
                let mut envelope = request(&frame.body);
                if let (0, Message::HandshakeFinish(finished)) =
                    (frame.connection, &mut envelope.message)
                {
                    finished.finished[0] ^= 0x01;
                }
                vec![body(&envelope)]
            }),
            Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
        );
        let device = secured(&daemon, &relay.address, &[]);
        let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
        let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
        assert_eq!(outcome, Rv::CannotDeriveKeys.code(), "{transport:?}");
        let log = std::fs::read_to_string(daemon.client_log()).unwrap_or_default();
        assert!(log.contains("refused the key confirmation"), "{log}");
        // The request went right behind the confirmation, before its answer: the relay got it
        // and passed it on (after the clear question for the device's serial, the first time).
        let sent = || {
            relay
                .recorder
                .frames(0, Way::ToDevice)
                .iter()
                .map(|b| request(b).message)
                .collect::<Vec<_>>()
        };
        let protected = || sent().iter().any(|m| matches!(m, Message::Protected(_)));
        assert!(
            tessera_testkit::wait_until(std::time::Duration::from_secs(5), protected),
            "{transport:?}: {} frames",
            sent().len()
        );
        assert!(
            matches!(
                sent().as_slice(),
                [
                    ..,
                    Message::Handshake(_),
                    Message::HandshakeFinish(_),
                    Message::Protected(_)
                ]
            ),
            "{transport:?}"
        );
        // The device had it once the relay's connection to it ends (it refuses the record and
        // closes the channel's connection); then no session was opened.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(sessions(&daemon, transport), 0, "{transport:?}");
        let (session, _) = open(&device);
        assert!(session > 0);
        assert_eq!(sessions(&daemon, transport), 1, "{transport:?}");
    }
}

/// The hello's nonce: 32 random bytes, then the hybrid offer (an ML-KEM-768 encapsulation key)
/// or answer (a ciphertext).
const RANDOM: usize = 32;

/// A relay's request hook that removes the hybrid offer from the library's hello.
fn strip_offer(frame: &Frame, _: &Recorder) -> Vec<Vec<u8>> {
    let mut envelope = request(&frame.body);
    if let Message::Handshake(hello) = &mut envelope.message {
        hello.nonce.truncate(RANDOM);
    }
    vec![body(&envelope)]
}

#[test]
fn the_channel_is_hybrid_by_default_and_a_relay_cannot_strip_it() {
    for transport in TRANSPORTS {
        // Through a transparent relay: the offer and the answer are on the wire.
        let daemon = Daemon::start();
        prepare(&daemon, transport, "n");
        let relay = Relay::transparent(&daemon, transport);
        let device = secured(&daemon, &relay.address, &[]);
        let (session, _) = user(&device);
        assert!(session > 0);
        let hellos: Vec<usize> = (0..4)
            .flat_map(|c| relay.recorder.frames(c, Way::ToDevice))
            .filter_map(|b| match request(&b).message {
                Message::Handshake(hello) => Some(hello.nonce.len()),
                _ => None,
            })
            .collect();
        let answers: Vec<usize> = (0..4)
            .flat_map(|c| relay.recorder.frames(c, Way::ToClient))
            .filter_map(|b| match response(&b).result {
                Ok(tessera_wire::Response::ServerHello(hello)) => Some(hello.nonce.len()),
                _ => None,
            })
            .collect();
        assert_eq!(hellos, vec![RANDOM + 1184], "{transport:?}");
        assert_eq!(answers, vec![RANDOM + 1088], "{transport:?}");

        // A relay that removes the offer, or the answer, leaves no channel: the device signed
        // what it saw, and the client checks it against what it sent.
        let strip_answer = |frame: &Frame, _: &Recorder| {
            let mut envelope = response(&frame.body);
            if let Ok(tessera_wire::Response::ServerHello(hello)) = &mut envelope.result {
                hello.nonce.truncate(RANDOM);
            }
            response_body(&envelope)
        };
        let pass = |frame: &Frame, _: &Recorder| vec![frame.body.clone()];
        let pass_back = |frame: &Frame, _: &Recorder| frame.body.clone();
        type ToDevice = Arc<dyn Fn(&Frame, &Recorder) -> Vec<Vec<u8>> + Send + Sync>;
        type ToClient = Arc<dyn Fn(&Frame, &Recorder) -> Vec<u8> + Send + Sync>;
        let attacks: [(&str, ToDevice, ToClient); 2] = [
            ("offer", Arc::new(strip_offer), Arc::new(pass_back)),
            ("answer", Arc::new(pass), Arc::new(strip_answer)),
        ];
        for (what, to_device, to_client) in attacks {
            let daemon = Daemon::start();
            prepare(&daemon, transport, "n");
            let relay = Relay::start(&daemon, transport, to_device, to_client);
            let device = secured(&daemon, &relay.address, &[]);
            let flags = (ck::CKF_SERIAL_SESSION) as u64;
            let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
            assert_eq!(outcome, Rv::CannotDeriveKeys.code(), "{what} {transport:?}");
            let log = std::fs::read_to_string(daemon.client_log()).unwrap();
            assert!(log.contains("altered in transit"), "{what}: {log}");
        }
    }
}

#[test]
fn a_device_with_flag_q_refuses_a_classical_hello() {
    let transport = Transport::Unix;
    // A hybrid client works with it; a library of the classical protocol (the same client
    // code, offering no ML-KEM) works with a device without q, and is refused by one with q.
    let daemon = Daemon::start();
    prepare(&daemon, transport, "q");
    let device = secured(&daemon, &daemon.server_list(transport), &[]);
    let (session, _) = user(&device);
    assert!(session > 0);
    let old = |daemon: &Daemon| {
        let address = tessera_config::ServerAddress::parse(&daemon.server_list(transport)).unwrap();
        tessera_client::Device::new(
            address,
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(3),
        )
        .with_security(tessera_testkit::sm::classical_settings(daemon, &[]))
    };
    let flags = (ck::CKF_SERIAL_SESSION) as u64;
    let open = || Call::OpenSession { slot: 0, flags };
    assert_eq!(
        code(old(&daemon).call(None, open())),
        Rv::NoSessionKeys.code()
    );
    let without_q = Daemon::start();
    prepare(&without_q, transport, "n");
    let opened = old(&without_q).call(None, open());
    assert!(matches!(opened, Ok((Reply::Handle(_), _))), "{opened:?}");
    // A hello without the offer (what a library of the classical protocol sends; here a relay
    // removes it) is refused by the device before it signs anything.
    let daemon = Daemon::start();
    prepare(&daemon, transport, "q");
    let relay = Relay::start(
        &daemon,
        transport,
        Arc::new(strip_offer),
        Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
    );
    let device = secured(&daemon, &relay.address, &[]);
    let flags = (ck::CKF_SERIAL_SESSION) as u64;
    let outcome = code(device.call(None, Call::OpenSession { slot: 0, flags }));
    assert_eq!(outcome, Rv::NoSessionKeys.code());
    let answers = (0..4)
        .flat_map(|c| relay.recorder.frames(c, Way::ToClient))
        .filter(|b| {
            matches!(
                response(b).result,
                Ok(tessera_wire::Response::ServerHello(_))
            )
        })
        .count();
    assert_eq!(answers, 0, "no signed answer to a classical hello");
    assert!(
        daemon
            .log()
            .contains("post-quantum hybrid channel is required"),
        "{}",
        daemon.log()
    );
}

/// Post-quantum identities: a device whose POK and PIK are ML-DSA-87 (`ctident gen-selfsigned
/// all --algorithm ml-dsa-87`), and one whose P-521 owner key certifies an ML-DSA-65 PIK
/// through the offline flow (request, sign-request, import): the library checks either chain
/// and the PIK's handshake signature as it checks ECDSA ones, and the channel opens (hybrid).
#[test]
fn ml_dsa_identities_and_a_mixed_chain_open_channels() {
    let transport = Transport::Unix;
    let all_ml_dsa = Daemon::start();
    all_ml_dsa.identify(transport, &["--algorithm", "ml-dsa-87"]);
    let shown = all_ml_dsa.ctident(transport, &["show"]);
    assert!(shown.contains("ML-DSA-87"), "{shown}");

    let mixed = Daemon::start();
    mixed.ctident(transport, &["gen-selfsigned", "poc", "--curve", "p521"]);
    let csr = mixed.dir().join("pik.csr");
    let pic = mixed.dir().join("pic.pem");
    let (csr_path, pic_path) = (csr.to_str().unwrap(), pic.to_str().unwrap());
    mixed.ctident(
        transport,
        &["request", "--out", csr_path, "--algorithm", "ml-dsa-65"],
    );
    mixed.ctident(
        transport,
        &["sign-request", "--in", csr_path, "--out", pic_path],
    );
    mixed.ctident(transport, &["import", "--in", pic_path]);
    mixed.ctident(transport, &["trust", "add", "--from-device", "--yes"]);
    let shown = mixed.ctident(transport, &["show"]);
    assert!(
        shown.contains("ML-DSA-65") && shown.contains("P-521"),
        "{shown}"
    );

    for daemon in [&all_ml_dsa, &mixed] {
        daemon.admin(transport, &["-fn"]);
        init_token(daemon, transport);
        let relay = Relay::transparent(daemon, transport);
        let device = secured(daemon, &relay.address, &[]);
        let (session, _) = user(&device);
        assert!(session > 0);
        assert!(
            !relay.recorder.contains(USER_PIN.as_bytes()),
            "the PIN went in the channel"
        );
    }
}
