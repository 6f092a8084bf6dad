//! The procedures of docs/backup.md run as written: the marked steps are read from the
//! Markdown (`procedure_kit/markdown.rs` says how), run with `sh -e` in a working directory of
//! their own with the built tools on `PATH`, and each step's output must hold every line of the
//! `expect` block after it. The test gives what the docs say is already there: test devices
//! with full secure messaging, slot 0 initialised and holding objects, the user and SO PINs in
//! `user.pin` and `so.pin` and the custodian's passphrase in `custodian.txt`; between the backup and the restore of
//! the single-custodian procedure it tampers the device and sets it up again, as the docs say
//! the Administrator does.

/// The marked blocks of a Markdown file (the terminal of the kit is not needed here).
#[path = "procedure_kit/markdown.rs"]
mod markdown;

use std::path::Path;
use std::process::Command;

use markdown::{Block, Kind};
use tessera_core::ck;
use tessera_testkit::{binary, sm, Daemon, Transport};
use tessera_wire::{Call, Reply};

fn steps(procedure: &str) -> Vec<Block> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/backup.md");
    let markdown = std::fs::read_to_string(path).unwrap();
    let blocks: Vec<Block> = markdown::blocks(&markdown)
        .unwrap_or_else(|e| panic!("docs/backup.md: {e}"))
        .into_iter()
        .filter(|b| b.in_procedure(procedure) && b.kind == Kind::Run)
        .collect();
    assert!(
        !blocks.is_empty(),
        "docs/backup.md has no step of {procedure}"
    );
    blocks
}

/// A device with full secure messaging, slot 0 initialised and holding two token objects.
fn device() -> Daemon {
    let daemon = Daemon::start();
    sm::prepare(&daemon, Transport::Unix, "nuNU");
    fill(&daemon);
    daemon
}

fn fill(daemon: &Daemon) {
    let device = sm::secured(daemon, &daemon.server_list(Transport::Unix), &[]);
    let (session, g) = sm::user(&device);
    let template = tessera_core::Template(vec![
        tessera_core::Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY as u64),
        tessera_core::Attribute::bool(ck::CKA_TOKEN, true),
        tessera_core::Attribute::bool(ck::CKA_PRIVATE, true),
        tessera_core::Attribute::bool(ck::CKA_EXTRACTABLE, true),
        tessera_core::Attribute::ulong(ck::CKA_VALUE_LEN, 32),
    ]);
    let mechanism = tessera_core::Mechanism::plain(ck::CKM_AES_KEY_GEN as u64);
    sm::call(
        &device,
        g,
        Call::GenerateKey {
            session,
            mechanism,
            template,
        },
    );
    let data = tessera_core::Template(vec![
        tessera_core::Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA as u64),
        tessera_core::Attribute::bool(ck::CKA_TOKEN, true),
    ]);
    sm::call(
        &device,
        g,
        Call::CreateObject {
            session,
            template: data,
        },
    );
    device.disconnect();
}

fn objects(daemon: &Daemon) -> u64 {
    let device = sm::secured(daemon, &daemon.server_list(Transport::Unix), &[]);
    match device.call(None, Call::DeviceStatus) {
        Ok((Reply::Status(status), _)) => status.slots[0].objects,
        other => panic!("status: {other:?}"),
    }
}

/// Runs one step in `work` with the tools on `PATH`; checks its expect block.
fn run(step: &Block, work: &Path, env: &[(String, String)], servers: &str) {
    let tools = binary("ctkmu");
    let path = format!(
        "{}:{}",
        tools.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .arg("-e")
        .arg("-c")
        .arg(&step.text)
        .current_dir(work)
        .envs(env.iter().cloned())
        .env("PATH", path)
        .env("HOME", work)
        .env("ET_HSM_NETCLIENT_SERVERLIST", servers)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "docs/backup.md line {}: the step failed:\n{}\n{screen}",
        step.line,
        step.text
    );
    for line in step.expect.as_deref().unwrap_or_default().lines() {
        let line = line.trim();
        assert!(
            line.is_empty() || screen.contains(line),
            "docs/backup.md line {}: the step did not print {line:?}:\n{screen}",
            step.line
        );
    }
}

fn workdir(daemon: &Daemon) -> std::path::PathBuf {
    let work = daemon.dir().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("so.pin"), format!("{}\n", sm::SO_PIN)).unwrap();
    std::fs::write(work.join("user.pin"), format!("{}\n", sm::USER_PIN)).unwrap();
    std::fs::write(work.join("custodian.txt"), "a long custodian passphrase\n").unwrap();
    work
}

#[test]
fn one_custodian_backs_up_and_restores_after_a_tamper_as_documented() {
    let daemon = device();
    let work = workdir(&daemon);
    let servers = daemon.server_list(Transport::Unix);
    let steps = steps("backup-passphrase");
    assert_eq!(steps.len(), 2, "a backup step and a restore step");
    run(&steps[0], &work, &daemon.trust_env(), &servers);
    daemon.admin(Transport::Unix, &["--tamper", "--yes"]);
    daemon.admin(Transport::Unix, &["-fnuNU"]);
    sm::init_token(&daemon, Transport::Unix);
    assert_eq!(objects(&daemon), 0);
    run(&steps[1], &work, &daemon.trust_env(), &servers);
    assert_eq!(objects(&daemon), 2);
}

#[test]
fn three_of_five_custodians_restore_as_documented() {
    let daemon = device();
    let work = workdir(&daemon);
    let servers = daemon.server_list(Transport::Unix);
    for step in steps("backup-shares") {
        run(&step, &work, &daemon.trust_env(), &servers);
    }
    assert_eq!(
        objects(&daemon),
        4,
        "the two objects and their restored copies"
    );
}

#[test]
fn a_token_replicates_to_a_peer_as_documented() {
    let a = device();
    let b = Daemon::start();
    sm::prepare(&b, Transport::Unix, "nuNU");
    a.trust_peer(&b);
    b.trust_peer(&a);
    a.clients_trust(&b);
    let work = workdir(&a);
    let servers = format!(
        "{} {}",
        a.server_list(Transport::Unix),
        b.server_list(Transport::Unix)
    );
    for step in steps("replication") {
        run(&step, &work, &a.trust_env(), &servers);
    }
    assert_eq!(objects(&b), 2);
}
