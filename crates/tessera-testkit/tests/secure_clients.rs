//! Secure messaging with real clients: pkcs11-tool and the cryptoki crate under every
//! protection flag, the refusals an application sees (raw vendor codes from a C host), the
//! Administrator ending channels, many channels at once, the channel limit, and key rollover.

mod common;
mod sm_common;

use std::process::Command;
use std::sync::Arc;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::{AuthPin, Ulong};
use sm_common::{call, code, open, prepare, secured, user, SO_PIN, USER_PIN};
use tessera_core::Rv;
use tessera_testkit::relay::{Frame, Recorder, Relay};
use tessera_testkit::{pkcs11_module, tool, Daemon, Transport, TRANSPORTS};
use tessera_wire::{Call, Reply};

const FLAG_SETS: [&str; 5] = ["n", "u", "N", "U", "nuNU"];

fn pkcs11_tool(daemon: &Daemon, transport: Transport, args: &[&str]) -> String {
    let output = Command::new(tool("pkcs11-tool"))
        .arg("--module")
        .arg(pkcs11_module())
        .args(args)
        .envs(daemon.trust_env())
        .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pkcs11-tool {args:?}: {stdout}{}\nclient log: {}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(daemon.client_log()).unwrap_or_default()
    );
    stdout
}

#[test]
fn pkcs11_tool_works_unchanged_under_every_protection_flag() {
    for transport in TRANSPORTS {
        for flags in FLAG_SETS {
            let daemon = Daemon::start();
            prepare(&daemon, transport, flags);
            let dir = daemon.dir();
            let data = dir.join("payload");
            std::fs::write(&data, b"signed over a trusted channel").unwrap();
            let p = |name: &str| dir.join(name).display().to_string();
            let login = ["--token-label", "sm", "--login", "--pin", USER_PIN];
            fn with<'a>(login: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
                [login, extra].concat()
            }
            pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--keypairgen",
                        "--key-type",
                        "EC:prime256v1",
                        "--id",
                        "01",
                        "--label",
                        "ec",
                    ],
                ),
            );
            pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--keygen",
                        "--key-type",
                        "AES:32",
                        "--id",
                        "02",
                        "--label",
                        "aes",
                    ],
                ),
            );
            pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--sign",
                        "--id",
                        "01",
                        "-m",
                        "ECDSA-SHA256",
                        "--input-file",
                        &p("payload"),
                        "--output-file",
                        &p("sig"),
                    ],
                ),
            );
            let verified = pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--verify",
                        "--id",
                        "01",
                        "-m",
                        "ECDSA-SHA256",
                        "--input-file",
                        &p("payload"),
                        "--signature-file",
                        &p("sig"),
                    ],
                ),
            );
            assert!(
                verified.contains("Signature is valid"),
                "{flags} {transport:?}"
            );
            let iv = "00112233445566778899aabbccddeeff";
            pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--encrypt",
                        "--id",
                        "02",
                        "-m",
                        "AES-CBC-PAD",
                        "--iv",
                        iv,
                        "--input-file",
                        &p("payload"),
                        "--output-file",
                        &p("enc"),
                    ],
                ),
            );
            pkcs11_tool(
                &daemon,
                transport,
                &with(
                    &login,
                    &[
                        "--decrypt",
                        "--id",
                        "02",
                        "-m",
                        "AES-CBC-PAD",
                        "--iv",
                        iv,
                        "--input-file",
                        &p("enc"),
                        "--output-file",
                        &p("dec"),
                    ],
                ),
            );
            assert_eq!(
                std::fs::read(dir.join("dec")).unwrap(),
                std::fs::read(&data).unwrap()
            );
            let objects = pkcs11_tool(&daemon, transport, &with(&login, &["--list-objects"]));
            assert!(
                objects.contains("ec") && objects.contains("aes"),
                "{objects}"
            );
        }
    }
}

#[test]
fn the_cryptoki_crate_works_unchanged_under_every_protection_flag() {
    for transport in TRANSPORTS {
        for flags in FLAG_SETS {
            let _serial = common::serialise();
            let daemon = Daemon::start();
            prepare(&daemon, transport, flags);
            let pkcs11 = common::load_secured(&daemon, transport);
            let slot = pkcs11.get_slots_with_token().unwrap()[0];
            let session = pkcs11.open_rw_session(slot).unwrap();
            session
                .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
                .unwrap();
            let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            let (public, private) = session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[Attribute::EcParams(p256)],
                    &[Attribute::Sign(true)],
                )
                .unwrap();
            let signature = session
                .sign(&Mechanism::EcdsaSha256, private, b"m")
                .unwrap();
            session
                .verify(&Mechanism::EcdsaSha256, public, b"m", &signature)
                .unwrap();
            let key = session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[Attribute::ValueLen(Ulong::from(32))],
                )
                .unwrap();
            let mut iv = vec![7u8; 12];
            let sealed = session
                .encrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", Ulong::from(128)).unwrap()),
                    key,
                    b"secret",
                )
                .unwrap();
            let mut iv = vec![7u8; 12];
            let plain = session
                .decrypt(
                    &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", Ulong::from(128)).unwrap()),
                    key,
                    &sealed,
                )
                .unwrap();
            assert_eq!(plain, b"secret");
            assert_eq!(
                session.digest(&Mechanism::Sha256, b"abc").unwrap().len(),
                32
            );
            assert_eq!(session.generate_random_vec(16).unwrap().len(), 16);
            assert_eq!(
                session
                    .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                    .unwrap(),
                vec![private]
            );
            // Discovery works in the clear, and the token is there.
            assert_eq!(pkcs11.get_token_info(slot).unwrap().label(), "sm");
        }
    }
}

/// Runs the C probe (raw CK_RV values) through the library against `servers`.
fn probe(daemon: &Daemon, servers: &str, trust: Option<&std::path::Path>) -> String {
    let program = tessera_testkit::compile_c("probe", daemon.dir());
    let mut command = Command::new(&program);
    command
        .arg(pkcs11_module())
        .arg(USER_PIN)
        .envs(daemon.trust_env())
        .env("ET_HSM_NETCLIENT_SERVERLIST", servers);
    if let Some(dir) = trust {
        command.env("ET_PTKC_TRUSTSTORE_USER", dir);
    }
    String::from_utf8_lossy(&command.output().unwrap().stdout).into_owned()
}

#[test]
fn untrusted_wrong_serial_and_expired_devices_are_refused_with_the_reason_logged() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "u");
        let servers = daemon.server_list(transport);
        assert!(
            probe(&daemon, &servers, None).contains("login=0x0"),
            "trusted: works"
        );
        // The trust store lacks the chain.
        let empty = daemon.dir().join("empty-trust");
        let out = probe(&daemon, &servers, Some(&empty));
        assert!(
            out.contains("slots=0x0"),
            "discovery works in the clear: {out}"
        );
        assert!(
            out.contains("open=0x80000107"),
            "CKR_CERT_NOT_VALIDATED expected: {out}"
        );
        // The log names the device, the trust stores searched and the command that fixes it.
        let log = std::fs::read_to_string(daemon.client_log()).unwrap();
        let empty = empty.display().to_string();
        assert!(
            log.lines().any(|l| l.contains("device 0 (")
                && l.contains("CKR_CERT_NOT_VALIDATED")
                && l.contains("is not trusted")
                && l.contains(&format!("trust stores searched: {empty} (user"))
                && l.contains("`ctident trust add --from-device`")
                && l.contains("SHA-256 ")),
            "{log}"
        );

        // The device presents a trusted certificate that names another serial: a relay sends
        // the client to device B while telling it that it reached device A.
        let other = Daemon::start();
        prepare(&other, transport, "u");
        let trusted_other = other.ctident(transport, &["export", "pic"]);
        std::fs::write(daemon.dir().join("other.pem"), trusted_other).unwrap();
        daemon.ctident(
            transport,
            &[
                "trust",
                "add",
                daemon.dir().join("other.pem").to_str().unwrap(),
                "--yes",
            ],
        );
        let serial_a = daemon.serial(transport);
        let serial_for_hook = serial_a.clone();
        let relay = Relay::start(
            &other,
            transport,
            Arc::new(|frame: &Frame, _: &Recorder| vec![frame.body.clone()]),
            Arc::new(move |frame: &Frame, _: &Recorder| {
                let mut envelope = sm_common::response(&frame.body);
                if let Ok(tessera_wire::Response::Reply(Reply::Device(info))) = &mut envelope.result
                {
                    info.serial = serial_for_hook.clone();
                }
                sm_common::response_body(&envelope)
            }),
        );
        let out = probe(&daemon, &relay.address, None);
        assert!(out.contains("open=0x80000107"), "{out}");
        let log = std::fs::read_to_string(daemon.client_log()).unwrap();
        assert!(
            log.contains(&format!("but device {serial_a} was dialled")),
            "{log}"
        );
    }
}

#[test]
fn an_expired_identity_certificate_is_refused() {
    for transport in TRANSPORTS {
        expired_over(transport);
    }
}

fn expired_over(transport: Transport) {
    use tessera_identity::issue::{self, Curve};
    let daemon = Daemon::start();
    daemon.admin(transport, &[]);
    // An outside CA signs the device's request with a certificate valid for 3 seconds.
    let csr = daemon.dir().join("pik.csr");
    daemon.ctident(transport, &["request", "--out", csr.to_str().unwrap()]);
    let request =
        tessera_identity::pem::decode_all(&std::fs::read(&csr).unwrap(), "CERTIFICATE REQUEST")
            .unwrap()
            .remove(0);
    let pok = issue::generate_key(Curve::P256).unwrap();
    let poc = issue::owner_certificate(&pok, Curve::P256, "9999999999").unwrap();
    let (pic, _) = issue::sign_request_with_validity(
        &request,
        &pok,
        Curve::P256,
        &poc,
        std::time::Duration::from_secs(3),
    )
    .unwrap();
    let file = daemon.dir().join("pic.pem");
    std::fs::write(
        &file,
        tessera_identity::pem::encode("CERTIFICATE", &pic)
            + &tessera_identity::pem::encode("CERTIFICATE", &poc),
    )
    .unwrap();
    daemon.ctident(transport, &["import", "--in", file.to_str().unwrap()]);
    let owner = daemon.dir().join("poc.pem");
    std::fs::write(&owner, tessera_identity::pem::encode("CERTIFICATE", &poc)).unwrap();
    daemon.ctident(
        transport,
        &["trust", "add", owner.to_str().unwrap(), "--yes"],
    );
    daemon.admin(transport, &["-fu"]);
    std::fs::write(daemon.dir().join("so.pin"), format!("{SO_PIN}\n")).unwrap();
    daemon.admin(
        transport,
        &[
            "-n0",
            "--label",
            "x",
            "--so-pin-file",
            daemon.dir().join("so.pin").to_str().unwrap(),
        ],
    );
    let servers = daemon.server_list(transport);
    let now = probe(&daemon, &servers, None);
    assert!(now.contains("open=0x0"), "valid for now: {now}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let out = probe(&daemon, &servers, None);
    assert!(out.contains("open=0x80000107"), "{out}");
    let log = std::fs::read_to_string(daemon.client_log()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("expired on "))
        .unwrap_or_else(|| panic!("{log}"));
    // A date, not seconds since 1970, and what to do.
    assert!(
        line.contains(" UTC")
            && !line.contains("seconds")
            && line.contains("gen-selfsigned all --replace"),
        "{line}"
    );
}

#[test]
fn a_device_without_identity_says_so_and_what_to_run() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    prepare(&daemon, transport, "");
    let serial = daemon.serial(transport);
    // This client asks for a channel to the device (its SMPR), which has no identity.
    let item = format!("ET_PTKC_{serial}_SMPR");
    let device = secured(&daemon, &daemon.server_list(transport), &[(&item, "T")]).with_position(0);
    let flags = tessera_core::ck::CKF_SERIAL_SESSION as u64;
    assert_eq!(
        code(device.call(None, Call::OpenSession { slot: 0, flags })),
        Rv::NoSessionKeys.code()
    );
    let log = std::fs::read_to_string(daemon.client_log()).unwrap();
    assert!(
        log.lines().any(|l| l.contains("CKR_NO_SESSION_KEYS")
            && l.contains("has no identity")
            && l.contains("`ctident gen-selfsigned all`")),
        "{log}"
    );
    // The tools say the same, in their one line.
    let refusal = device.take_refusal().unwrap_or_default();
    assert!(refusal.contains("ctident gen-selfsigned all"), "{refusal}");
}

#[test]
fn the_administrator_ends_channels_and_applications_carry_on() {
    for transport in TRANSPORTS {
        let _serial = common::serialise();
        let daemon = Daemon::start();
        prepare(&daemon, transport, "nu");
        let pkcs11 = common::load_secured(&daemon, transport);
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let session = pkcs11.open_ro_session(slot).unwrap();
        session.generate_random_vec(4).unwrap();
        let listed = daemon.admin(transport, &["--channels"]);
        assert!(
            listed.contains("2 channels"),
            "the application's and ctconf's own: {listed}"
        );
        assert!(listed.contains("SPT"), "policy letters shown: {listed}");
        if transport == Transport::Unix {
            // A local peer is shown by its process id and program name.
            let ours = format!("pid={}(secure_clients-)", std::process::id());
            assert!(listed.contains(&ours), "{ours} missing: {listed}");
            assert!(listed.contains("(ctconf)"), "ctconf's own: {listed}");
        }
        // An id no channel has is said so, not "0 channel(s) terminated".
        let pin = daemon.dir().join("admin.pin");
        let unknown = Command::new(tessera_testkit::binary("ctconf"))
            .envs(daemon.trust_env())
            .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
            .args(["--terminate-channel", "99999", "--pin-file"])
            .arg(&pin)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&unknown.stderr);
        assert_eq!(unknown.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no channel has id 99999") && stderr.contains("ctconf --channels"),
            "{stderr}"
        );
        daemon.admin(transport, &["--terminate-channel", "all"]);
        assert_eq!(
            common::rv(session.get_session_info()),
            cryptoki::error::RvError::SessionClosed
        );
        drop(session);
        // No C_Finalize/C_Initialize needed: a new session makes a new channel.
        let again = pkcs11.open_rw_session(slot).unwrap();
        again
            .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        again.generate_random_vec(4).unwrap();
        // A change of the security flags ends the channels agreed under the old policy too.
        daemon.admin(transport, &["-fnuN"]);
        assert_eq!(
            common::rv(again.get_session_info()),
            cryptoki::error::RvError::SessionClosed
        );
        let third = pkcs11.open_ro_session(slot).unwrap();
        third
            .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        third.generate_random_vec(4).unwrap();
        let events = daemon.admin(transport, &["-e"]);
        for kind in [
            "channel-count",
            "channel-closed",
            "channels-terminated",
            "the security flags changed",
        ] {
            assert!(events.contains(kind), "{kind} missing:\n{events}");
        }
        // Legitimate clients under flags never try a session call in the clear (a policy
        // refusal means a misconfigured or hostile client), and channels opened and closed
        // by their clients are counted, not logged one by one.
        for kind in ["policy-refusal", "channel-opened", ": connection closed"] {
            assert!(!events.contains(kind), "{kind} logged:\n{events}");
        }
    }
}

#[test]
fn a_policy_refusal_in_the_event_log_means_a_client_that_tried_in_the_clear() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "nu");
        let servers = daemon.server_list(transport);
        // A legitimate client that never met this device (no known-devices record, no SMPR):
        // the device's word that its flags require a channel sends every session call
        // through one, none in the clear first.
        for round in 0..3 {
            let fresh = daemon.dir().join(format!("fresh-known-{round}"));
            let device = secured(
                &daemon,
                &servers,
                &[("ET_PTKC_KNOWN_DEVICES_USER", fresh.to_str().unwrap())],
            );
            let (session, g) = user(&device);
            call(&device, g, Call::GenerateRandom { session, len: 8 });
        }
        let events = daemon.admin(transport, &["-e"]);
        assert!(!events.contains("policy-refusal"), "{events}");
        // A client that sends a session call in the clear is what the entry means.
        let clear = tessera_client::Device::new(
            tessera_config::ServerAddress::parse(&servers).unwrap(),
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(3),
        );
        let flags = tessera_core::ck::CKF_SERIAL_SESSION as u64;
        assert_eq!(
            code(clear.call(None, Call::OpenSession { slot: 0, flags })),
            Rv::BadProtection.code()
        );
        let events = daemon.admin(transport, &["-e"]);
        assert_eq!(events.matches("policy-refusal").count(), 1, "{events}");
    }
}

#[test]
fn a_thousand_channels_at_once_and_a_clear_error_past_the_limit() {
    let daemon = Daemon::start_with(&[
        "--max-connections",
        "1100",
        "--max-connections-per-peer",
        "1100",
        // Every connection is a network one here: none kept for local applications.
        "--local-connections",
        "0",
        "--max-channels",
        "1050",
    ]);
    let transport = Transport::Tcp;
    prepare(&daemon, transport, "u");
    let servers = daemon.server_list(transport);
    let devices: Vec<tessera_client::Device> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..125)
                        .map(|_| {
                            let device = secured(&daemon, &servers, &[]);
                            open(&device);
                            device
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(devices.len(), 1000);
    let listed = daemon.admin(transport, &["--channels"]);
    assert!(
        listed.contains("1001 channels"),
        "{}",
        listed.lines().last().unwrap_or_default()
    );
    // Past the limit, the handshake is refused with a clear code and a logged reason.
    let more: Vec<_> = (0..60).map(|_| secured(&daemon, &servers, &[])).collect();
    let refused = more
        .iter()
        .map(|d| d.call(None, Call::OpenSession { slot: 0, flags: 4 }))
        .filter(|r| r.is_err())
        .count();
    assert!(refused >= 10, "{refused} refused");
    let failure = more
        .iter()
        .find_map(|d| d.call(None, Call::OpenSession { slot: 0, flags: 4 }).err())
        .unwrap();
    assert_eq!(failure.rv(), Rv::ChannelLimit.code());
    let log = std::fs::read_to_string(daemon.client_log()).unwrap();
    assert!(log.contains("CKR_TESSERA_CHANNEL_LIMIT"), "{log}");
    drop(devices);
}

#[test]
fn keys_roll_over_transparently_and_limits_are_enforced() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start_with(&["--sm-max-messages", "40"]);
        prepare(&daemon, transport, "nu");
        let servers = daemon.server_list(transport);
        // The library renews keys every few messages; the application notices nothing.
        let device = secured(&daemon, &servers, &[("ET_PTKC_SMS_MAX_MESSAGES", "6")]);
        let (session, g) = user(&device);
        for round in 0..30 {
            if let Err(e) = device.call(Some(g), Call::GenerateRandom { session, len: 8 }) {
                panic!("round {round}: {e}\n{}", daemon.admin(transport, &["-e"]));
            }
        }
        let listed = daemon.admin(transport, &["--channels"]);
        let generation: u32 = listed
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).and_then(|g| g.parse().ok()))
            .max()
            .unwrap_or(0);
        assert!(generation >= 5, "{listed}");
        assert!(daemon.admin(transport, &["-e"]).contains("channel-rekey"));
        drop(device);

        // A client that never renews meets the device's hard limit: the channel ends, and the
        // application opens a new session.
        let lazy = secured(&daemon, &servers, &[]);
        let (session, g) = user(&lazy);
        let mut ended = None;
        for _ in 0..40 {
            if let Err(e) = lazy.call(Some(g), Call::GenerateRandom { session, len: 8 }) {
                ended = Some(e.rv());
                break;
            }
        }
        assert_eq!(ended, Some(Rv::SessionClosed.code()), "{transport:?}");
        let (session, g) = user(&lazy);
        call(&lazy, g, Call::GenerateRandom { session, len: 8 });
        assert!(daemon.admin(transport, &["-e"]).contains("key-use limits"));

        // A rollover that fails (the relay corrupts the rekey request) gives CKR_KEY_ROLLOVER.
        let relay = Relay::start(
            &daemon,
            transport,
            Arc::new(|frame: &Frame, recorder: &Recorder| {
                let protected = recorder
                    .frames(frame.connection, tessera_testkit::relay::Way::ToDevice)
                    .iter()
                    .filter(|b| sm_common::is_protected(b))
                    .count();
                let mut body = frame.body.clone();
                // Protected requests: 1 OpenSession, then (4 messages used) 2 the rekey.
                if sm_common::is_protected(&body) && protected == 2 {
                    let at = body.len() - 10;
                    body[at] ^= 1;
                }
                vec![body]
            }),
            Arc::new(|frame: &Frame, _: &Recorder| frame.body.clone()),
        );
        let through = secured(
            &daemon,
            &relay.address,
            &[("ET_PTKC_SMS_MAX_MESSAGES", "4")],
        );
        let (session, g) = open(&through);
        let login = Call::Login {
            session,
            user_type: 1,
            pin: sm_common::pin(USER_PIN),
        };
        let outcome = code(through.call(Some(g), login));
        assert_eq!(outcome, Rv::KeyRollover.code(), "{transport:?}");
        let events = daemon.admin(transport, &["-e"]);
        assert!(events.contains("channel-integrity-failure"), "{events}");
    }
}

#[test]
fn invalid_smpr_values_are_a_clear_configuration_error() {
    let daemon = Daemon::start();
    let output = Command::new(tool("pkcs11-tool"))
        .arg("--module")
        .arg(pkcs11_module())
        .arg("--list-slots")
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .env("ET_PTKC_1234567890_SMPR", "SX")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ET_PTKC_1234567890_SMPR") && stderr.contains("'X'"),
        "{stderr}"
    );
}

#[test]
fn an_idle_channel_is_closed_by_the_library_and_a_new_session_opens_a_new_one() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    prepare(&daemon, transport, "u");
    let device = secured(
        &daemon,
        &daemon.server_list(transport),
        &[("ET_PTKC_SMS_IDLE_SECONDS", "1")],
    );
    let (session, g) = user(&device);
    call(&device, g, Call::GenerateRandom { session, len: 8 });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        code(device.call(Some(g), Call::GenerateRandom { session, len: 8 })),
        Rv::SessionClosed.code()
    );
    let (session, g) = user(&device);
    call(&device, g, Call::GenerateRandom { session, len: 8 });
    // The device saw the old channel close with its connection (counted, not logged one by
    // one: see the event log's `channel-count`).
    let events = daemon.admin(transport, &["-e"]);
    assert!(
        events.contains("channel-count") && !events.contains(", 0 closed by their clients"),
        "{events}"
    );
}

#[test]
fn an_smpr_uses_a_channel_where_the_device_does_not_require_one_and_t_refuses_to_run_without() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        prepare(&daemon, transport, "");
        let serial = daemon.serial(transport);
        let item = format!("ET_PTKC_{serial}_SMPR");
        // T, and the device has no identity: the library refuses rather than run in the clear.
        let strict = secured(&daemon, &daemon.server_list(transport), &[(&item, "T")]);
        assert_eq!(
            code(strict.call(None, Call::OpenSession { slot: 0, flags: 4 })),
            Rv::NoSessionKeys.code()
        );
        // With an identity the library uses a channel; the device itself requires none.
        daemon.identify(transport, &[]);
        let relay = Relay::transparent(&daemon, transport);
        let careful = secured(&daemon, &relay.address, &[(&item, "PT")]);
        let (session, g) = user(&careful);
        call(&careful, g, Call::GenerateRandom { session, len: 8 });
        assert!(
            !relay.recorder.contains(USER_PIN.as_bytes()),
            "P encrypts the PIN"
        );
        let listed = daemon.admin(transport, &["--channels"]);
        assert!(listed.contains("PT"), "{listed}");
        // Without SMPR, the same device is used in the clear.
        let plain_relay = Relay::transparent(&daemon, transport);
        let plain = secured(&daemon, &plain_relay.address, &[]);
        user(&plain);
        assert!(plain_relay.recorder.contains(USER_PIN.as_bytes()));
    }
}

#[test]
fn keys_also_roll_over_on_time() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    prepare(&daemon, transport, "u");
    let device = secured(
        &daemon,
        &daemon.server_list(transport),
        &[("ET_PTKC_SMS_MAX_SECONDS", "1")],
    );
    let (session, g) = user(&device);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        call(&device, g, Call::GenerateRandom { session, len: 8 });
    }
    let events = daemon.admin(transport, &["-e"]);
    assert!(events.matches("channel-rekey").count() >= 3, "{events}");
}
