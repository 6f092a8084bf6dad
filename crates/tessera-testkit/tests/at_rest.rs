//! Secrets at rest through the daemon (issue 17): no secret value of any object reaches the data
//! directory's files, after a clean stop or a `kill -9`; a rolled-back store is refused at start
//! and `ctconf -e` says what it checked; a copied data directory without its key file does not
//! start.

mod common;

use std::path::{Path, PathBuf};

use cryptoki::object::{Attribute, AttributeType, CertificateType, KeyType, ObjectClass};
use cryptoki::session::Session;
use tessera_testkit::{Daemon, Transport};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn on_disk(dir: &Path, markers: &[Vec<u8>]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for marker in markers {
            if bytes.windows(marker.len()).any(|w| w == marker.as_slice()) {
                found.push(format!(
                    "{} in {}",
                    String::from_utf8_lossy(marker),
                    file.display()
                ));
            }
        }
    }
    found
}

/// Creates a data object, a certificate and an AES key, private and public, each with a marker
/// of `round` as its value; returns the markers.
fn create(session: &Session, round: &str) -> Vec<Vec<u8>> {
    let mut markers = Vec::new();
    for private in [true, false] {
        let tag = format!("{round}-{}", if private { "PRIV" } else { "PUBL" });
        let value = format!("DATA-MARKER-{tag}").into_bytes();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Label(b"marker".to_vec()),
                Attribute::Value(value.clone()),
            ])
            .unwrap();
        markers.push(value);
        let value = format!("CERT-MARKER-{tag}").into_bytes();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Label(b"marker".to_vec()),
                Attribute::Subject(b"subject".to_vec()),
                Attribute::Value(value.clone()),
            ])
            .unwrap();
        markers.push(value);
        let mut value = format!("AES-MARKER-{tag}-").into_bytes();
        value.resize(32, b'k');
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Sensitive(false),
                Attribute::Label(b"marker".to_vec()),
                Attribute::Value(value.clone()),
            ])
            .unwrap();
        markers.push(value);
    }
    markers
}

fn values(session: &Session) -> Vec<Vec<u8>> {
    let objects = session
        .find_objects(&[Attribute::Label(b"marker".to_vec())])
        .unwrap();
    let mut out: Vec<Vec<u8>> = objects
        .iter()
        .map(|o| {
            match session
                .get_attributes(*o, &[AttributeType::Value])
                .unwrap()
                .remove(0)
            {
                Attribute::Value(v) => v,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    out.sort();
    out
}

#[test]
fn no_secret_value_reaches_the_disk_after_a_clean_stop_or_a_kill_9() {
    let f = common::fixture(Transport::Unix);
    let mut markers = create(&f.user_session(), "first");
    let common::Fixture {
        mut daemon,
        pkcs11,
        slot,
        serial,
    } = f;
    drop(pkcs11);
    daemon.stop();
    assert_eq!(on_disk(&daemon.data_dir(), &markers), Vec::<String>::new());
    daemon.restart();
    let pkcs11 = common::load(&daemon.server_list(Transport::Unix));
    let session = common::user_session(&pkcs11, slot);
    markers.extend(create(&session, "second"));
    drop(session);
    drop(pkcs11);
    daemon.kill9();
    assert_eq!(on_disk(&daemon.data_dir(), &markers), Vec::<String>::new());
    daemon.restart();
    let pkcs11 = common::load(&daemon.server_list(Transport::Unix));
    let session = common::user_session(&pkcs11, slot);
    markers.sort();
    assert_eq!(values(&session), markers, "every object reads back");
    drop(serial);
}

#[test]
fn a_rolled_back_store_is_refused_and_ctconf_e_reports_the_check() {
    let mut daemon = Daemon::start();
    let events = daemon.admin(Transport::Unix, &["-e"]);
    assert!(events.contains("Event log integrity: OK"), "{events}");
    assert!(
        events.contains("Checked: store generation") && events.contains("device.state"),
        "{events}"
    );
    assert!(events.contains("Checked: event log entry"), "{events}");
    daemon.stop();
    let store = daemon.data_dir().join("tessera.redb");
    let old = daemon.dir().join("old.redb");
    std::fs::copy(&store, &old).unwrap();
    daemon.restart();
    // Mode Locked, which the old store does not have.
    daemon.admin(Transport::Unix, &["-fcl", "--yes"]);
    daemon.stop();
    std::fs::copy(&old, &store).unwrap();
    let log = daemon
        .try_restart()
        .expect_err("a rolled-back store was served");
    assert!(
        log.contains("refusing to serve") && log.contains("older than the state recorded"),
        "{log}"
    );
    assert!(log.contains("--accept-rollback"), "{log}");
}

#[test]
fn a_copied_data_directory_does_not_start_without_its_key_file() {
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("device-key");
    let key_arg = key.display().to_string();
    let mut daemon = Daemon::start_with(&["--device-key-file", &key_arg]);
    assert!(
        daemon
            .log()
            .contains("device key protection: the external key file"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    // The thief's copy, started without the key file.
    let mut thief = Daemon::start();
    thief.stop();
    std::fs::remove_dir_all(thief.data_dir()).unwrap();
    // Made as tesserad makes its own (0700): the only thing missing is the key file.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(thief.data_dir())
        .unwrap();
    for file in files(&daemon.data_dir()) {
        std::fs::copy(&file, thief.data_dir().join(file.file_name().unwrap())).unwrap();
    }
    let log = thief.try_restart().expect_err("a copied directory started");
    assert!(
        log.contains("the device key is protected by the external key file")
            && log.contains("--device-key-file"),
        "{log}"
    );
}

/// `--device-key-passphrase-file -` on a terminal asks for the passphrase with the terminal's
/// echo off: what an operator types at start is not shown on the screen nor kept in a
/// terminal log (`script` records everything the terminal displays). The daemon then starts
/// with that passphrase, and refuses the wrong one at the next start.
#[test]
fn a_passphrase_asked_on_the_terminal_is_not_echoed() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    const PASSPHRASE: &str = "typed-marker-passphrase-5c2e";
    let dir = tempfile::tempdir().unwrap();
    let start = |typed: &str| -> (String, bool) {
        let command = format!(
            "exec {} --data-dir {} --listen unix:{} --kdf-iterations 1 --device-key-passphrase-file -",
            tessera_testkit::binary("tesserad").display(),
            dir.path().join("data").display(),
            dir.path().join("tesserad.sock").display(),
        );
        // `script` runs the daemon on a new pseudo-terminal and copies what it displays.
        let mut script = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (bsdutils)");
        // Read on a thread of its own, so that a daemon that never prompts (or never ends)
        // cannot hold the test: everything below is bounded by the deadline.
        let mut out = script.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut shown = Vec::new();
        let mut typed_yet = false;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut ready = false;
        // Typed only once the prompt is up (as a person would): echo is off by then.
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(chunk) = rx.recv_timeout(left) else {
                break;
            };
            shown.extend_from_slice(&chunk);
            let text = String::from_utf8_lossy(&shown);
            if !typed_yet && text.contains("Tessera device key passphrase:") {
                let stdin = script.stdin.as_mut().unwrap();
                stdin.write_all(format!("{typed}\n").as_bytes()).unwrap();
                stdin.flush().unwrap();
                typed_yet = true;
            }
            if text.contains("tesserad ready") {
                ready = true;
                break;
            }
        }
        drop(script.stdin.take());
        let _ = script.kill();
        let _ = Command::new("pkill")
            .args(["-f", &dir.path().display().to_string()])
            .status();
        let _ = script.wait();
        (String::from_utf8_lossy(&shown).into_owned(), ready)
    };

    let (shown, ready) = start(PASSPHRASE);
    assert!(ready, "the daemon did not start:\n{shown}");
    assert!(shown.contains("Tessera device key passphrase:"), "{shown}");
    assert!(
        !shown.contains(PASSPHRASE) && !shown.contains("typed-marker"),
        "the passphrase was echoed:\n{shown}"
    );
    // Wait for the first daemon to be gone before the next start on the same directory.
    assert!(tessera_testkit::wait_until(
        std::time::Duration::from_secs(10),
        || {
            Command::new("pgrep")
                .args(["-f", &dir.path().display().to_string()])
                .status()
                .is_ok_and(|s| !s.success())
        }
    ));
    let (shown, ready) = start("another-wrong-passphrase");
    assert!(!ready, "started with the wrong passphrase:\n{shown}");
    assert!(!shown.contains("another-wrong"), "echoed:\n{shown}");
}
