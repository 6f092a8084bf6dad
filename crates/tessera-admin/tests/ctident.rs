//! The real `ctident` (and `ctconf`) binaries against daemons started by the tests: the
//! self-signed flow, online and offline CA across two devices, the trust store at both levels,
//! peers, identity surviving a tamper, and the `n` flag once an identity exists.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tessera_testkit::{tool, Daemon, Transport, TRANSPORTS};

/// A client environment: the server list and private trust stores.
struct Client {
    servers: String,
    dir: tempfile::TempDir,
}

impl Client {
    fn new(daemons: &[&Daemon], transport: Transport) -> Client {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aso.pin"), "aso-pin-1234\n").unwrap();
        std::fs::write(dir.path().join("admin.pin"), "admin-pin-1234\n").unwrap();
        let servers = daemons
            .iter()
            .map(|d| d.server_list(transport))
            .collect::<Vec<_>>()
            .join(" ");
        Client { servers, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, binary: &str, args: &[&str]) -> assert_cmd::assert::Assert {
        Command::cargo_bin(binary)
            .unwrap()
            .args(args)
            .arg("--pin-file")
            .arg(self.path("admin.pin"))
            .arg("--aso-pin-file")
            .arg(self.path("aso.pin"))
            .arg("--admin-pin-file")
            .arg(self.path("admin.pin"))
            .env("ET_HSM_NETCLIENT_SERVERLIST", &self.servers)
            .env("ET_PTKC_TRUSTSTORE_USER", self.path("user-trust"))
            .env("ET_PTKC_KNOWN_DEVICES_USER", self.path("known_devices"))
            .env("ET_PTKC_TRUSTSTORE_SYSTEM", self.path("system-trust"))
            .write_stdin("")
            .assert()
    }

    fn ok(&self, binary: &str, args: &[&str]) -> String {
        let output = self.run(binary, args).get_output().clone();
        assert!(
            output.status.success(),
            "{binary} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn refused(&self, binary: &str, args: &[&str]) -> String {
        let output = self.run(binary, args).failure().get_output().clone();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr
                .lines()
                .last()
                .unwrap_or_default()
                .starts_with(binary),
            "{stderr}"
        );
        stderr
    }

    fn ctident(&self, args: &[&str]) -> String {
        self.ok("ctident", args)
    }
}

fn line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} in:\n{text}"))
}

fn openssl(args: &[&str]) -> String {
    let output = std::process::Command::new(tool("openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn self_signed_flow_with_real_x509_and_replacement() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let client = Client::new(&[&daemon], transport);
        let shown = client.ctident(&["gen-selfsigned", "all"]);
        assert!(
            line(&shown, "Identity key (PIK)").contains("ready, P-521"),
            "{shown}"
        );
        assert!(
            line(&shown, "Owner key (POK)").contains("ready, P-521"),
            "{shown}"
        );
        client.ctident(&["export", "pic", "--out", p(&client.path("pic.pem"))]);
        client.ctident(&["export", "poc", "--out", p(&client.path("poc.pem"))]);
        client.ctident(&["export", "chain", "--out", p(&client.path("chain.pem"))]);
        let text = openssl(&["x509", "-in", p(&client.path("pic.pem")), "-noout", "-text"]);
        let serial = line(&client.ok("ctconf", &[]), "Serial Number")
            .split(": ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        assert!(text.contains(&format!("serialNumber = {serial}")), "{text}");
        for extension in [
            "Key Usage",
            "Digital Signature",
            "Subject Key Identifier",
            "Authority Key Identifier",
            "secp521r1",
        ] {
            assert!(text.contains(extension), "{extension} missing:\n{text}");
        }
        // Plain OpenSSL verifies the PIC against the POC.
        let verified = openssl(&[
            "verify",
            "-CAfile",
            p(&client.path("poc.pem")),
            p(&client.path("pic.pem")),
        ]);
        assert!(verified.contains("OK"));
        // ctconf shows the identity and its fingerprint.
        let fingerprint = tessera_identity::inspect::fingerprint(
            &tessera_identity::pem::decode_all(
                &std::fs::read(client.path("pic.pem")).unwrap(),
                "CERTIFICATE",
            )
            .unwrap()[0],
        );
        assert!(line(&client.ok("ctconf", &[]), "Identity").contains(&fingerprint));
        // It is not replaced by accident.
        let refused = client.refused("ctident", &["gen-selfsigned", "all"]);
        assert!(refused.contains("--replace"), "{refused}");
        client.refused("ctident", &["gen-selfsigned", "all", "--replace"]);
        client.ctident(&[
            "gen-selfsigned",
            "all",
            "--replace",
            "--yes",
            "--curve",
            "p384",
        ]);
        client.ctident(&["export", "pic", "--out", p(&client.path("new.pem"))]);
        assert_ne!(
            std::fs::read(client.path("new.pem")).unwrap(),
            std::fs::read(client.path("pic.pem")).unwrap()
        );
        assert!(
            openssl(&["x509", "-in", p(&client.path("new.pem")), "-noout", "-text"])
                .contains("secp384r1")
        );
    }
}

#[test]
fn self_signed_pic_only_and_owner_only_pending() {
    let daemon = Daemon::start();
    let client = Client::new(&[&daemon], Transport::Unix);
    let shown = client.ctident(&["gen-selfsigned", "poc", "--curve", "p256"]);
    assert!(
        line(&shown, "Owner key (POK)").contains("pending (has not signed a PIK yet), P-256"),
        "{shown}"
    );
    assert!(
        line(&shown, "Identity key (PIK)").contains("none"),
        "{shown}"
    );
    // Without a PIC the flags that need one stay refused, with the way out in the message.
    let refused = client.refused("ctconf", &["-fn"]);
    assert!(refused.contains("ctident gen-selfsigned all"), "{refused}");
    let shown = client.ctident(&["gen-selfsigned", "pic", "--curve", "p256"]);
    assert!(
        line(&shown, "Identity key (PIK)").contains("ready, P-256"),
        "{shown}"
    );
    let pic = client.ctident(&["export", "pic"]);
    std::fs::write(client.path("pic.pem"), &pic).unwrap();
    // Self-signed: it verifies against itself.
    assert!(openssl(&[
        "verify",
        "-CAfile",
        p(&client.path("pic.pem")),
        p(&client.path("pic.pem"))
    ])
    .contains("OK"));
    // Flags that require a channel wait until this client trusts the device.
    let refused = client.refused("ctconf", &["-fnuNU"]);
    assert!(refused.contains("trust add --from-device"), "{refused}");
    client.ctident(&["trust", "add", "--from-device", "--yes"]);
    client.ok("ctconf", &["-fnuNU"]);
    assert!(line(&client.ok("ctconf", &[]), "Security Mode").contains("No Clear PINs"));
}

#[test]
fn flags_that_require_a_channel_wait_until_this_client_can_make_one() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let client = Client::new(&[&daemon], transport);
        let shown = client.ctident(&["gen-selfsigned", "all"]);
        let fingerprint = line(&shown, "Identity certificate").to_string().clone();
        let pic = client.ctident(&["export", "pic"]);
        std::fs::write(client.path("pic.pem"), &pic).unwrap();
        let sha = openssl(&[
            "x509",
            "-in",
            p(&client.path("pic.pem")),
            "-noout",
            "-fingerprint",
            "-sha256",
        ]);
        let sha = sha.trim().rsplit('=').next().unwrap().to_string();
        assert!(!fingerprint.is_empty());
        // This client does not trust the device yet: every flag that makes the device
        // require a channel is refused before anything changes, with the way out.
        for letters in ["-fu", "-fn", "-fN", "-fU", "-fF"] {
            let refused = client.refused("ctconf", &[letters]);
            for part in [
                "not setting the flags",
                "device 0",
                "not trusted",
                p(&client.path("user-trust")),
                p(&client.path("system-trust")),
                "`ctident trust add --from-device`",
                "ctident show",
                &sha,
            ] {
                assert!(refused.contains(part), "{part:?} missing: {refused}");
            }
            assert!(
                !refused.contains("does not verify with the chain given"),
                "{refused}"
            );
        }
        let status = client.ok("ctconf", &[]);
        assert!(
            line(&status, "Security Mode").contains("Default"),
            "nothing changed: {status}"
        );
        // Once trusted, the flags are set, and cleared again: no lock-out.
        client.ctident(&["trust", "add", "--from-device", "--yes"]);
        client.ok("ctconf", &["-fnu"]);
        // Another client that does not trust the device is told what to run, not the
        // message of `ctident import`.
        let stranger = Client::new(&[&daemon], transport);
        let refused = stranger.refused("ctconf", &["-f0"]);
        for part in [
            "device 0",
            "not trusted",
            p(&stranger.path("user-trust")),
            "`ctident trust add --from-device`",
            &sha,
        ] {
            assert!(refused.contains(part), "{part:?} missing: {refused}");
        }
        assert!(
            !refused.contains("does not verify with the chain given"),
            "{refused}"
        );
        // ctident says the same.
        let refused = stranger.refused("ctident", &["peer", "list"]);
        assert!(
            refused.contains("`ctident trust add --from-device`") && refused.contains(&sha),
            "{refused}"
        );
        client.ok("ctconf", &["-f0"]);
        let status = client.ok("ctconf", &[]);
        assert!(
            line(&status, "Security Mode").contains("Default"),
            "{status}"
        );
    }
}

#[test]
fn online_ca_across_two_devices() {
    let ca = Daemon::start();
    let device = Daemon::start();
    for transport in TRANSPORTS {
        let client = Client::new(&[&ca, &device], transport);
        client.ctident(&["-a0", "gen-selfsigned", "poc", "--replace", "--yes"]);
        let shown = client.ctident(&[
            "-a0",
            "sign-device",
            "1",
            "--target-pin-file",
            p(&client.path("admin.pin")),
            "--replace",
            "--yes",
        ]);
        assert!(
            line(&shown, "Identity key (PIK)").contains("ready"),
            "{shown}"
        );
        let issuer = shown
            .lines()
            .find(|l| l.trim_start().starts_with("issuer"))
            .unwrap();
        let ca_serial = line(&client.ok("ctconf", &["-a0"]), "Serial Number")
            .split(": ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        assert!(
            issuer.contains(&format!("Tessera Owner {ca_serial}")),
            "{issuer}"
        );
        // The CA's owner key is no longer pending.
        assert!(line(&client.ctident(&["-a0", "show"]), "Owner key (POK)").contains("ready"));
        client.ctident(&["-a0", "export", "poc", "--out", p(&client.path("ca.pem"))]);
        client.ctident(&[
            "-a1",
            "export",
            "pic",
            "--out",
            p(&client.path("device.pem")),
        ]);
        assert!(openssl(&[
            "verify",
            "-CAfile",
            p(&client.path("ca.pem")),
            p(&client.path("device.pem"))
        ])
        .contains("OK"));
        let chain = client.ctident(&["-a1", "export", "chain"]);
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    }
}

#[test]
fn offline_ca_with_a_request_and_mismatches_refused() {
    let ca = Daemon::start();
    let device = Daemon::start();
    let other = Daemon::start();
    let client = Client::new(&[&ca, &device, &other], Transport::Tcp);
    client.ctident(&["-a0", "gen-selfsigned", "all"]);
    let csr = client.path("pik.csr");
    client.ctident(&["-a1", "request", "--out", p(&csr)]);
    let shown = client.ctident(&["-a1", "show"]);
    assert!(
        line(&shown, "Identity key (PIK)").contains("pending (waiting for its signed PIC)"),
        "{shown}"
    );
    assert!(
        openssl(&["req", "-in", p(&csr), "-noout", "-verify", "-subject"]).contains("serialNumber")
    );
    // Asking again gives a request for the same pending key.
    client.ctident(&["-a1", "request", "--out", p(&client.path("again.csr"))]);
    let public = |path: &Path| openssl(&["req", "-in", p(path), "-noout", "-pubkey"]);
    assert_eq!(public(&csr), public(&client.path("again.csr")));
    let signed = client.path("pic.pem");
    client.ctident(&["-a0", "sign-request", "--in", p(&csr), "--out", p(&signed)]);
    // A PIC for another device's key is refused, and changes nothing.
    client.ctident(&["-a2", "request", "--out", p(&client.path("other.csr"))]);
    let refused = client.refused("ctident", &["-a2", "import", "--in", p(&signed)]);
    assert!(refused.contains("does not match"), "{refused}");
    client.ctident(&["-a1", "import", "--in", p(&signed)]);
    let shown = client.ctident(&["-a1", "show"]);
    assert!(
        line(&shown, "Identity key (PIK)").contains("ready"),
        "{shown}"
    );
    // A request that was tampered with is refused by the signer.
    let mut bytes = std::fs::read(&csr).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    std::fs::write(client.path("bad.csr"), bytes).unwrap();
    let refused = client.refused(
        "ctident",
        &[
            "-a0",
            "sign-request",
            "--in",
            p(&client.path("bad.csr")),
            "--out",
            p(&client.path("x.pem")),
        ],
    );
    assert!(
        refused.contains("malformed") || refused.contains("PEM"),
        "{refused}"
    );
    // Importing with nothing pending is refused as a mismatch too.
    let refused = client.refused("ctident", &["-a0", "import", "--in", p(&signed)]);
    assert!(refused.contains("does not match"), "{refused}");
}

#[test]
fn trust_store_add_list_remove_at_both_levels() {
    let daemon = Daemon::start();
    let client = Client::new(&[&daemon], Transport::Unix);
    client.ctident(&["gen-selfsigned", "all"]);
    client.ctident(&["export", "poc", "--out", p(&client.path("poc.pem"))]);
    // Confirmation is required unless --yes.
    let refused = client.refused("ctident", &["trust", "add", p(&client.path("poc.pem"))]);
    assert!(refused.contains("--yes"), "{refused}");
    let added = client.ctident(&["trust", "add", p(&client.path("poc.pem")), "--yes"]);
    assert!(
        added.contains("SHA-256") && added.contains("Tessera Owner") && added.contains("serial"),
        "{added}"
    );
    client.ctident(&["trust", "add", "--from-device", "--system", "--yes"]);
    let listed = client.ctident(&["trust", "list"]);
    assert!(
        listed.contains("User trust store") && listed.contains("System trust store"),
        "{listed}"
    );
    assert!(
        line(&listed, "User trust store").contains("(1 certificate)"),
        "{listed}"
    );
    assert!(
        line(&listed, "System trust store").contains("(1 certificate)"),
        "{listed}"
    );
    assert!(client
        .ctident(&["trust", "list", "--system"])
        .contains("Tessera HSM"));
    // Files are named by fingerprint, in the configured directories.
    assert_eq!(
        std::fs::read_dir(client.path("user-trust"))
            .unwrap()
            .count(),
        1
    );
    let fingerprint: String = added
        .lines()
        .find(|l| l.contains("SHA-256"))
        .unwrap()
        .split("SHA-256 ")
        .nth(1)
        .unwrap()
        .chars()
        .take(11)
        .collect();
    client.ctident(&["trust", "remove", &fingerprint]);
    assert!(
        line(&client.ctident(&["trust", "list"]), "User trust store").contains("(0 certificates)")
    );
    let missing = client.refused("ctident", &["trust", "remove", "ABCD"]);
    assert!(missing.contains("no certificate"), "{missing}");
    client.ctident(&["trust", "list", "--system"]);
    let system_pic = client.ctident(&["trust", "list", "--system"]);
    let system_fp: String = system_pic
        .lines()
        .find(|l| l.contains("SHA-256"))
        .unwrap()
        .split("SHA-256 ")
        .nth(1)
        .unwrap()
        .chars()
        .take(8)
        .collect();
    client.ctident(&["trust", "remove", &system_fp, "--system"]);
    assert!(client
        .ctident(&["trust", "list", "--system"])
        .contains("(0 certificates)"));
    // The location also comes from the configuration files (user level here).
    let config = client.path("et_hsm");
    std::fs::write(
        &config,
        format!(
            "ET_PTKC_TRUSTSTORE_USER={}\n",
            client.path("from-file").display()
        ),
    )
    .unwrap();
    let output = Command::cargo_bin("ctident")
        .unwrap()
        .args(["trust", "list", "--user"])
        .env("TESSERA_USER_CONFIG", &config)
        .env("ET_PTKC_KNOWN_DEVICES_USER", client.path("known_devices"))
        .env_remove("ET_PTKC_TRUSTSTORE_USER")
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&output.stdout).contains("from-file"));
}

#[test]
fn peers_of_a_device() {
    let a = Daemon::start();
    let b = Daemon::start();
    let client = Client::new(&[&a, &b], Transport::Unix);
    client.ctident(&["-a1", "gen-selfsigned", "pic"]);
    client.ctident(&["-a1", "export", "pic", "--out", p(&client.path("b.pem"))]);
    assert!(client
        .ctident(&["-a0", "peer", "list"])
        .contains("trusts no peer"));
    client.ctident(&["-a0", "peer", "add", p(&client.path("b.pem")), "--yes"]);
    let listed = client.ctident(&["-a0", "peer", "list"]);
    assert!(listed.contains("Tessera HSM"), "{listed}");
    let fingerprint: String = listed
        .lines()
        .find(|l| l.contains("SHA-256"))
        .unwrap()
        .split("SHA-256 ")
        .nth(1)
        .unwrap()
        .chars()
        .take(8)
        .collect();
    client.refused("ctident", &["-a0", "peer", "remove", "0000"]);
    client.ctident(&["-a0", "peer", "remove", &fingerprint]);
    assert!(client
        .ctident(&["-a0", "peer", "list"])
        .contains("trusts no peer"));
    let events = client.ok("ctconf", &["-a0", "-e"]);
    assert!(
        events.contains("peer-added") && events.contains("peer-removed"),
        "{events}"
    );
}

#[test]
fn identity_survives_a_tamper_while_tokens_do_not() {
    let daemon = Daemon::start();
    let client = Client::new(&[&daemon], Transport::Unix);
    client.ctident(&["gen-selfsigned", "all"]);
    let before = client.ctident(&["export", "chain"]);
    std::fs::write(client.path("so.pin"), "token-so-pin\n").unwrap();
    client.ok(
        "ctconf",
        &[
            "-n0",
            "--label",
            "gone",
            "--so-pin-file",
            p(&client.path("so.pin")),
        ],
    );
    assert!(line(&client.ok("ctconf", &["-v"]), "Slot 0").contains("gone"));
    client.ok("ctconf", &["--tamper", "--yes"]);
    // After the tamper the device is set up again (the PIN files answer the prompts).
    let status = client.ok("ctconf", &["-v"]);
    assert!(
        line(&status, "Slot 0").contains("not initialised"),
        "{status}"
    );
    assert!(line(&status, "Identity").contains("present"), "{status}");
    assert_eq!(client.ctident(&["export", "chain"]), before);
}

#[test]
fn no_clear_pins_rules_once_an_identity_exists() {
    use std::collections::HashMap;
    use std::time::Duration;
    use tessera_client::{Device, SecureSettings};
    use tessera_config::{Config, ServerAddress};
    use tessera_core::{ck, Attribute, Rv, SecretBytes, Template};
    use tessera_wire::{Call, Reply};
    let daemon = Daemon::start();
    let client = Client::new(&[&daemon], Transport::Unix);
    client.ctident(&["gen-selfsigned", "all"]);
    client.ctident(&["trust", "add", "--from-device", "--yes"]);
    client.ok("ctconf", &["-fn"]);
    // In the clear, every session call is refused now: the device requires a channel.
    let clear = Device::new(
        ServerAddress::Unix(daemon.socket()),
        Duration::from_secs(3),
        Duration::from_secs(10),
    );
    let init = || Call::InitToken {
        slot: 0,
        so_pin: SecretBytes::from_slice(b"token-so-pin"),
        label: b"x".to_vec(),
    };
    match clear.call(None, init()) {
        Err(tessera_client::ClientError::Returned(code)) => {
            assert_eq!(code, Rv::BadProtection.code())
        }
        other => panic!("{other:?}"),
    }
    let environment: HashMap<String, String> = [
        (
            "ET_PTKC_TRUSTSTORE_USER".to_string(),
            client.path("user-trust").display().to_string(),
        ),
        (
            "ET_PTKC_KNOWN_DEVICES_USER".to_string(),
            client.path("known_devices").display().to_string(),
        ),
    ]
    .into();
    let settings = SecureSettings::from_config(Config::from_levels(
        environment,
        HashMap::new(),
        HashMap::new(),
    ))
    .unwrap();
    let device = Device::new(
        ServerAddress::Unix(daemon.socket()),
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .with_security(std::sync::Arc::new(settings));
    // Plain C_InitToken is refused with the vendor code CKR_ACCESS_DENIED...
    let init = Call::InitToken {
        slot: 0,
        so_pin: SecretBytes::from_slice(b"token-so-pin"),
        label: b"x".to_vec(),
    };
    match device.call(None, init) {
        Err(tessera_client::ClientError::Returned(code)) => {
            assert_eq!(code, Rv::AccessDenied.code())
        }
        other => panic!("{other:?}"),
    }
    // ...while ctconf -n still initialises tokens.
    std::fs::write(client.path("so.pin"), "token-so-pin\n").unwrap();
    client.ok(
        "ctconf",
        &[
            "-n0",
            "--label",
            "n-flag",
            "--so-pin-file",
            p(&client.path("so.pin")),
        ],
    );
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let Ok((Reply::Handle(session), generation)) =
        device.call(None, Call::OpenSession { slot: 0, flags })
    else {
        panic!("no session")
    };
    let so_login = Call::Login {
        session,
        user_type: ck::CKU_SO as u64,
        pin: SecretBytes::from_slice(b"token-so-pin"),
    };
    device.call(Some(generation), so_login).unwrap();
    // Secret keys are always sensitive, even when the template asks otherwise.
    let key = Call::CreateObject {
        session,
        template: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bool(ck::CKA_PRIVATE, false),
            Attribute::bytes(ck::CKA_VALUE, &[3u8; 16]),
            Attribute::bool(ck::CKA_SENSITIVE, false),
        ]),
    };
    let Ok((Reply::Handle(object), _)) = device.call(Some(generation), key) else {
        panic!("create failed")
    };
    let get = Call::GetAttributes {
        session,
        object,
        types: vec![ck::CKA_SENSITIVE as u64],
    };
    match device.call(Some(generation), get) {
        Ok((Reply::Attributes(answers), _)) => {
            assert!(matches!(&answers[0], tessera_wire::AttributeAnswer::Value(v) if v == &[1]))
        }
        other => panic!("{other:?}"),
    }
}
