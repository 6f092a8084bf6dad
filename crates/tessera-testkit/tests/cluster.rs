//! A cluster of three devices on a real three-member etcd (Debian's `etcd-server`), all on
//! loopback: the tokens are shared, etcd holds only ciphertext, a PIN guessed on one node
//! counts on all, only trusted devices get the cluster key, and faults (a node killed, an etcd
//! member killed, quorum lost) do what docs/cluster.md says.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{load, rv, serialise, Module, SO_PIN, USER_PIN};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tessera_testkit::etcd::Etcd;
use tessera_testkit::{Daemon, Transport};

const CLUSTER: &str = "test-cluster";
const MARKER: &[u8] = b"MARKER-cluster-private-data-7f3a9c";

/// Three nodes of one cluster, with their etcd.
struct Cluster {
    etcd: Etcd,
    nodes: Vec<Daemon>,
    serials: Vec<String>,
}

/// A device with a self-signed identity, its owner certificate written to `poc.pem` in its
/// test directory.
fn device_with_identity() -> Daemon {
    let daemon = Daemon::start();
    daemon.identify(Transport::Unix, &[]);
    let poc = daemon.dir().join("poc.pem");
    daemon.ctident(
        Transport::Unix,
        &["export", "poc", "--out", poc.to_str().unwrap()],
    );
    daemon
}

fn trust(truster: &Daemon, trusted: &Daemon) {
    let poc = trusted.dir().join("poc.pem");
    truster.ctident(
        Transport::Unix,
        &["peer", "add", poc.to_str().unwrap(), "--yes"],
    );
}

fn cluster_args(etcd: &Etcd, join_wait: &str) -> Vec<String> {
    [
        "--cluster",
        CLUSTER,
        "--etcd",
        &etcd.endpoints(),
        "--join-wait",
        join_wait,
        "--etcd-timeout",
        "1000",
        "--cluster-stale-after",
        "6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Makes `daemon` a node of the cluster (it restarts with the cluster's arguments).
fn join(daemon: &mut Daemon, etcd: &Etcd) -> Result<(), String> {
    daemon.stop();
    let args = cluster_args(etcd, "15");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.set_args(&args);
    daemon.try_restart()
}

impl Cluster {
    /// Three devices that trust each other's owner, then a cluster of them.
    fn start() -> Cluster {
        let etcd = Etcd::start(3);
        let mut nodes: Vec<Daemon> = (0..3).map(|_| device_with_identity()).collect();
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    trust(&nodes[a], &nodes[b]);
                }
            }
        }
        let serials = nodes.iter().map(|n| n.serial(Transport::Unix)).collect();
        for node in &mut nodes {
            join(node, &etcd).unwrap_or_else(|log| panic!("a node did not join: {log}"));
        }
        Cluster {
            etcd,
            nodes,
            serials,
        }
    }

    /// The library over the three nodes (device i is node i).
    fn library(&self) -> Module {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.server_list(Transport::Unix))
            .collect();
        load(&list.join(" "))
    }
}

/// Slot 0 of node `device` (a global slot ID packs the device's place in the server list).
fn slot(module: &Module, device: u64) -> Slot {
    let wanted = device << 16;
    module
        .get_all_slots()
        .unwrap()
        .into_iter()
        .find(|s| s.id() == wanted)
        .unwrap_or_else(|| panic!("no slot {wanted:#x}"))
}

fn user_session(module: &Module, device: u64) -> Session {
    let session = module.open_rw_session(slot(module, device)).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    session
}

/// Initialises slot 0's token through node 0 (SO and user PINs).
fn init_token(module: &Module) {
    let so = AuthPin::new(SO_PIN.into());
    module
        .init_token(slot(module, 0), &so, "cluster token")
        .unwrap();
    let session = module.open_rw_session(slot(module, 0)).unwrap();
    session.login(UserType::So, Some(&so)).unwrap();
    session.init_pin(&AuthPin::new(USER_PIN.into())).unwrap();
}

fn find_by_label(session: &Session, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
}

fn private_data(session: &Session, label: &str, value: &[u8]) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap()
}

fn token_aes_key(session: &Session, label: &str) -> ObjectHandle {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .unwrap()
}

const IV: [u8; 16] = [7; 16];

fn encrypt(session: &Session, key: ObjectHandle, data: &[u8]) -> Vec<u8> {
    session
        .encrypt(&Mechanism::AesCbcPad(IV), key, data)
        .unwrap()
}

/// Whether any file under `dir` holds `needle`.
fn files_hold(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn three_nodes_serve_one_set_of_tokens_and_etcd_holds_only_ciphertext() {
    let _serial = serialise();
    let cluster = Cluster::start();
    let module = cluster.library();
    init_token(&module);

    // Written on node 0; read, used and destroyed on the others at their next call
    // (read-your-writes across nodes).
    let on_0 = user_session(&module, 0);
    private_data(&on_0, "secret-data", MARKER);
    let key = token_aes_key(&on_0, "shared-aes");
    let ciphertext = encrypt(&on_0, key, b"across the cluster");

    let on_1 = user_session(&module, 1);
    let found = find_by_label(&on_1, "secret-data");
    assert_eq!(found.len(), 1, "node 1 sees node 0's object");
    let value = on_1
        .get_attributes(found[0], &[AttributeType::Value])
        .unwrap();
    assert_eq!(value, vec![Attribute::Value(MARKER.to_vec())]);

    let on_2 = user_session(&module, 2);
    let key_on_2 = find_by_label(&on_2, "shared-aes");
    assert_eq!(key_on_2, vec![key], "a handle is the same on every node");
    let plain = on_2
        .decrypt(&Mechanism::AesCbcPad(IV), key_on_2[0], &ciphertext)
        .unwrap();
    assert_eq!(plain, b"across the cluster");

    on_2.destroy_object(key_on_2[0]).unwrap();
    assert!(
        find_by_label(&on_0, "shared-aes").is_empty(),
        "destroyed everywhere"
    );
    assert_eq!(
        rv(on_1.encrypt(&Mechanism::AesCbcPad(IV), key, b"x")),
        RvError::KeyHandleInvalid
    );

    // What etcd keeps on disk (its write-ahead log and database): never a value or a PIN in
    // the clear.
    for needle in [MARKER, USER_PIN.as_bytes(), SO_PIN.as_bytes()] {
        for dir in cluster.etcd.data_dirs() {
            let holders = files_hold(&dir, needle);
            assert!(
                holders.is_empty(),
                "{} is in the clear in {holders:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // ... but the values are there, sealed: the scan can see what etcd wrote.
    let names = cluster
        .etcd
        .data_dirs()
        .iter()
        .map(|d| files_hold(d, format!("/tessera/{CLUSTER}/state/object/").as_bytes()).len())
        .sum::<usize>();
    assert!(names > 0, "the scan reads etcd's files");
}

#[test]
fn a_pin_guessed_on_one_node_counts_on_every_node() {
    let _serial = serialise();
    let cluster = Cluster::start();
    let module = cluster.library();
    init_token(&module);
    let wrong = AuthPin::new("wrong-pin-0000".into());
    // Six guesses on each of the three nodes at once: the cluster allows ten.
    let results: Vec<RvError> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3u64)
            .map(|device| {
                let (module, wrong) = (&module, &wrong);
                scope.spawn(move || {
                    (0..6)
                        .map(|_| {
                            let session = module.open_rw_session(slot(module, device)).unwrap();
                            rv(session.login(UserType::User, Some(wrong)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let incorrect = results
        .iter()
        .filter(|r| **r == RvError::PinIncorrect)
        .count();
    let locked = results.iter().filter(|r| **r == RvError::PinLocked).count();
    assert_eq!(
        (incorrect, locked),
        (10, 8),
        "ten guesses checked in the whole cluster, the rest refused: {results:?}"
    );
    // The right PIN is refused on every node now.
    for device in 0..3 {
        let session = module.open_rw_session(slot(&module, device)).unwrap();
        assert_eq!(
            rv(session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))),
            RvError::PinLocked,
            "node {device}"
        );
    }
}

#[test]
fn only_devices_that_trust_each_other_share_the_cluster_key() {
    let _serial = serialise();
    let etcd = Etcd::start(1);
    let mut founder = device_with_identity();
    // A device the founder does not trust asks to join: no member answers.
    let mut stranger = device_with_identity();
    trust(&stranger, &founder);
    // A device the founder trusts that trusts no member refuses the key it is offered (a
    // grant from a device it does not know could come from anyone who can write to etcd).
    let mut wary = device_with_identity();
    trust(&founder, &wary);
    join(&mut founder, &etcd).expect("the founder starts");

    let short = |d: &mut Daemon| {
        d.stop();
        let args = cluster_args(&etcd, "3");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.set_args(&args);
        d.try_restart()
    };
    let log = short(&mut stranger).expect_err("an untrusted device is not admitted");
    assert!(log.contains("no member of cluster"), "{log}");
    let log = short(&mut wary).expect_err("a grant from an unknown device is refused");
    assert!(log.contains("does not trust"), "{log}");
    assert!(founder.log().contains("refused a device's request to join"));
    assert!(
        !stranger.log().contains("serving the cluster's tokens")
            && !wary.log().contains("serving the cluster's tokens")
    );
}

#[test]
fn faults_a_node_killed_an_etcd_member_killed_and_quorum_lost() {
    let _serial = serialise();
    let mut cluster = Cluster::start();
    init_token(&cluster.library());

    // Every node sees the others as healthy members.
    let status = cluster.nodes[2].admin(Transport::Unix, &[]);
    assert!(
        status.contains(&format!("{CLUSTER}, 3 members")),
        "{status}"
    );
    assert_eq!(status.matches(": healthy").count(), 3, "{status}");

    // A node killed misses writes and catches up before it serves again.
    let serial_1 = cluster.serials[1].clone();
    cluster.nodes[1].kill9();
    {
        let module = cluster.library_without(1);
        let on_0 = user_session(&module, 0);
        for i in 0..5 {
            private_data(&on_0, &format!("while-1-was-down-{i}"), b"x");
        }
    }
    // The others see that it is gone.
    assert!(tessera_testkit::wait_until(Duration::from_secs(15), || {
        cluster.nodes[0]
            .admin(Transport::Unix, &[])
            .lines()
            .any(|l| {
                l.starts_with(&format!("Member {serial_1} ")) && l.contains(": not heard from")
            })
    }));
    cluster.nodes[1].restart();
    let module = cluster.library();
    let on_1 = user_session(&module, 1);
    for i in 0..5 {
        assert_eq!(
            find_by_label(&on_1, &format!("while-1-was-down-{i}")).len(),
            1
        );
    }

    // One etcd member killed: nothing changes for applications.
    cluster.etcd.kill9(0);
    let on_0 = user_session(&module, 0);
    let key = token_aes_key(&on_0, "made-with-one-member-down");
    let on_2 = user_session(&module, 2);
    assert_eq!(find_by_label(&on_2, "made-with-one-member-down"), vec![key]);

    // Quorum lost: writes fail with CKR_DEVICE_ERROR within the etcd timeout; encryption with
    // an existing key goes on from the node's memory.
    cluster.etcd.kill9(1);
    let started = Instant::now();
    assert_eq!(
        rv(on_0.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(b"no quorum".to_vec()),
        ])),
        RvError::DeviceError
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let ciphertext = encrypt(&on_2, key, b"still signing");
    let plain = on_0
        .decrypt(&Mechanism::AesCbcPad(IV), key, &ciphertext)
        .unwrap();
    assert_eq!(plain, b"still signing");
    // Sessions, logins and searches go on from the nodes' memory for the stale limit (6 s
    // here, since etcd last answered), then are refused until the quorum is back.
    let lost = Instant::now();
    // (The application is logged in on node 2 already: a new session is too.)
    let on_2_again = module.open_rw_session(slot(&module, 2)).unwrap();
    assert_eq!(
        find_by_label(&on_2_again, "made-with-one-member-down"),
        vec![key]
    );
    assert!(
        lost.elapsed() < Duration::from_secs(3),
        "served from memory without waiting"
    );
    std::thread::sleep(Duration::from_secs(7).saturating_sub(started.elapsed()));
    assert_eq!(
        rv(module.open_rw_session(slot(&module, 2))),
        RvError::DeviceError,
        "tokens older than the stale limit are not served"
    );
    let ciphertext = encrypt(&on_2, key, b"keys found before still work");
    assert_eq!(
        on_0.decrypt(&Mechanism::AesCbcPad(IV), key, &ciphertext)
            .unwrap(),
        b"keys found before still work"
    );
    // The quorum back, the node serves again.
    cluster.etcd.restart(1);
    assert!(tessera_testkit::wait_until(Duration::from_secs(20), || {
        module.open_rw_session(slot(&module, 2)).is_ok()
    }));
}

impl Cluster {
    /// The library over the nodes but `skip` (a node that is down).
    fn library_without(&self, skip: usize) -> Module {
        let list: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == skip {
                    // Keeps the device numbers: a socket that nobody serves.
                    n.dir().join("down.sock").display().to_string()
                } else {
                    n.server_list(Transport::Unix)
                }
            })
            .collect();
        load(&list.join(" "))
    }
}

/// Sets environment items for the library while it lives (the tests that load the library
/// run one at a time).
struct Items(Vec<String>);

impl Items {
    fn set<N: AsRef<str>, V: AsRef<str>>(items: &[(N, V)]) -> Items {
        for (name, value) in items {
            std::env::set_var(name.as_ref(), value.as_ref());
        }
        Items(
            items
                .iter()
                .map(|(name, _)| name.as_ref().to_string())
                .collect(),
        )
    }
}

/// `count` sessions of the library's first virtual slot, the first logged in as the user
/// (which logs the application in on every node).
fn virtual_sessions(module: &Module, count: usize) -> (Slot, Vec<Session>) {
    let virtual_slot = module.get_slots_with_token().unwrap()[0];
    let sessions: Vec<Session> = (0..count)
        .map(|_| module.open_rw_session(virtual_slot).unwrap())
        .collect();
    sessions[0]
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    (virtual_slot, sessions)
}

impl Drop for Items {
    fn drop(&mut self) {
        for name in &self.0 {
            std::env::remove_var(name);
        }
    }
}

/// The sessions open on a node, as `ctconf` shows them.
fn open_sessions(node: &Daemon) -> u64 {
    let status = node.admin(Transport::Unix, &[]);
    status
        .lines()
        .find_map(|l| l.strip_prefix("Open Session Count"))
        .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
        .unwrap_or_else(|| panic!("no session count in {status}"))
}

#[test]
fn wld_spreads_sessions_over_the_nodes_and_leaves_a_failed_one_out() {
    let _serial = serialise();
    let mut cluster = Cluster::start();
    let serial_of_token = {
        let module = cluster.library();
        init_token(&module);
        let on_0 = user_session(&module, 0);
        token_aes_key(&on_0, "wld-key");
        // A token has one serial in the whole cluster.
        let serials: Vec<String> = (0..3)
            .map(|d| {
                module
                    .get_token_info(slot(&module, d))
                    .unwrap()
                    .serial_number()
                    .to_string()
            })
            .collect();
        assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
        serials[0].clone()
    };
    let before: Vec<u64> = cluster.nodes.iter().map(open_sessions).collect();
    let _items = Items::set(&[
        ("ET_PTKC_GENERAL_LIBRARY_MODE", "WLD"),
        (
            "ET_PTKC_WLD_SLOT_7",
            &format!("cluster token,{serial_of_token}"),
        ),
        ("ET_PTKC_WLD_SLOT_8", "no such token"),
    ]);
    let module = cluster.library();
    assert_eq!(
        module
            .get_slots_with_token()
            .unwrap()
            .iter()
            .map(|s| s.id())
            .collect::<Vec<_>>(),
        vec![7],
        "the virtual slots with a member"
    );
    assert_eq!(module.get_all_slots().unwrap().len(), 2);
    let virtual_slot = module.get_slots_with_token().unwrap()[0];

    // 30 sessions: 10 on each node.
    let sessions: Vec<Session> = (0..30)
        .map(|_| module.open_rw_session(virtual_slot).unwrap())
        .collect();
    let after: Vec<u64> = cluster.nodes.iter().map(open_sessions).collect();
    let added: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(added, vec![10, 10, 10], "sessions spread evenly");
    assert_eq!(
        sessions[0].get_session_info().unwrap().slot_id(),
        virtual_slot,
        "a session shows its virtual slot"
    );

    // One login reaches every node: every session uses the private key.
    sessions[0]
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    for session in &sessions {
        let key = find_by_label(session, "wld-key");
        assert_eq!(key.len(), 1);
        encrypt(session, key[0], b"spread");
    }

    // A node that fails is left out: new sessions go to the others.
    let before: Vec<u64> = [0, 2]
        .iter()
        .map(|i| open_sessions(&cluster.nodes[*i]))
        .collect();
    cluster.nodes[1].kill9();
    // WLD does not move sessions: the killed node's fail (the first call finds the device
    // gone, the others their connection's sessions closed), and the node is left out.
    let failed: Vec<RvError> = sessions
        .iter()
        .filter_map(|s| {
            s.find_objects(&[Attribute::Label(b"wld-key".to_vec())])
                .err()
                .map(|e| match e {
                    cryptoki::error::Error::Pkcs11(rv, _) => rv,
                    other => panic!("{other:?}"),
                })
        })
        .collect();
    assert_eq!(failed.len(), 10, "{failed:?}");
    assert!(
        failed.iter().all(|rv| matches!(
            rv,
            RvError::DeviceError | RvError::DeviceRemoved | RvError::SessionClosed
        )),
        "{failed:?}"
    );
    let more: Vec<Session> = (0..6)
        .map(|_| module.open_rw_session(virtual_slot).unwrap())
        .collect();
    let after: Vec<u64> = [0, 2]
        .iter()
        .map(|i| open_sessions(&cluster.nodes[*i]))
        .collect();
    assert_eq!(
        after.iter().sum::<u64>() - before.iter().sum::<u64>(),
        6,
        "every new session is on a live node"
    );
    for session in &more {
        let key = find_by_label(session, "wld-key");
        encrypt(session, key[0], b"still spread");
    }
}

#[test]
fn ha_moves_sessions_off_a_killed_node_and_the_application_sees_no_error() {
    let _serial = serialise();
    let mut cluster = Cluster::start();
    {
        let module = cluster.library();
        init_token(&module);
        let on_0 = user_session(&module, 0);
        token_aes_key(&on_0, "ha-key");
        for i in 0..3 {
            private_data(&on_0, "ha-data", format!("value {i}").as_bytes());
        }
    }
    let _items = Items::set(&[
        ("ET_PTKC_GENERAL_LIBRARY_MODE", "HA"),
        ("ET_PTKC_WLD_SLOT_1", "cluster token"),
        ("ET_PTKC_HA_RECOVER_WAIT", "10"),
    ]);
    let module = cluster.library();
    // The login (kept by the first session) is every session's.
    let (virtual_slot, _first) = virtual_sessions(&module, 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    let acknowledged = std::sync::Mutex::new(Vec::<(String, ObjectHandle)>::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..16 {
            let (errors, acknowledged, rounds, stop) = (&errors, &acknowledged, &rounds, &stop);
            let module = &module;
            scope.spawn(move || {
                let session = module.open_rw_session(virtual_slot).unwrap();
                let fail = |what: &str, e: cryptoki::error::Error| {
                    errors.lock().unwrap().push(format!("{what}: {e}"));
                };
                #[allow(non_upper_case_globals)]
                const Unexpected: cryptoki::error::Error = cryptoki::error::Error::NotSupported;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = match session.find_objects(&[Attribute::Label(b"ha-key".to_vec())]) {
                        Ok(found) if found.len() == 1 => found[0],
                        Ok(found) => {
                            return fail(&format!("find found {}", found.len()), Unexpected)
                        }
                        Err(e) => return fail("find", e),
                    };
                    // Single-part: the init travels with the call.
                    let single = match session.encrypt(&Mechanism::AesCbcPad(IV), key, &[7u8; 96]) {
                        Ok(c) => c,
                        Err(e) => return fail("encrypt", e),
                    };
                    // Multi-part: init, three updates, final (the journal's replay); the same
                    // ciphertext as in one part.
                    let multi = (|| -> Result<Vec<u8>, cryptoki::error::Error> {
                        let mut parts = Vec::new();
                        session.encrypt_init(&Mechanism::AesCbcPad(IV), key)?;
                        for _ in 0..3 {
                            parts.extend(session.encrypt_update(&[7u8; 32])?);
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        parts.extend(session.encrypt_final()?);
                        Ok(parts)
                    })();
                    match multi {
                        Ok(c) if c == single => {}
                        Ok(_) => return fail("multi-part differs from single-part", Unexpected),
                        Err(e) => return fail("multi-part encrypt", e),
                    }
                    // A search read a handle at a time (the search's replay).
                    let found = (|| -> Result<usize, cryptoki::error::Error> {
                        let one = std::num::NonZeroUsize::new(1).unwrap();
                        let mut n = 0;
                        for handle in session.iter_objects_with_cache_size(
                            &[Attribute::Label(b"ha-data".to_vec())],
                            one,
                        )? {
                            handle?;
                            n += 1;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Ok(n)
                    })();
                    match found {
                        Ok(3) => {}
                        Ok(n) => return fail(&format!("search found {n}"), Unexpected),
                        Err(e) => return fail("search", e),
                    }
                    // A token object: acknowledged, it must be there once.
                    let round = rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let label = format!("ha-made-{thread}-{round}");
                    match session.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(label.clone().into_bytes()),
                    ]) {
                        Ok(handle) => acknowledged.lock().unwrap().push((label, handle)),
                        Err(e) => return fail("create", e),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        let before = rounds.load(std::sync::atomic::Ordering::Relaxed);
        cluster.nodes[1].kill9();
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(before > 0, "the load ran before the kill");
    });
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "the application saw errors: {errors:?}");
    assert!(rounds.into_inner() > 16, "the load went on after the kill");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Every object acknowledged is there, once (none lost, none made twice).
    let acknowledged = acknowledged.into_inner().unwrap();
    let check = module.open_ro_session(virtual_slot).unwrap();
    for (label, handle) in &acknowledged {
        assert_eq!(
            find_by_label(&check, label),
            vec![*handle],
            "{label}: the acknowledged object, once"
        );
    }
    let all = check
        .find_objects(&[Attribute::Class(ObjectClass::DATA)])
        .unwrap()
        .len();
    assert_eq!(
        all,
        acknowledged.len() + 3,
        "no object beyond those acknowledged"
    );
}

/// A relay on loopback TCP to `node`'s socket that forwards every frame both ways, except
/// that the first request holding `cut` reaches the node and its reply does not come back:
/// the relay closes the client's connection instead (a node that dies after its commit,
/// before its answer). Returns the relay's address and whether it has cut.
fn cutting_relay(
    node: &Daemon,
    cut: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let socket = node.socket();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut_done = done.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut device) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let done = cut_done.clone();
            std::thread::spawn(move || {
                let frame = |stream: &mut dyn Read| -> Option<Vec<u8>> {
                    let mut header = [0u8; 4];
                    stream.read_exact(&mut header).ok()?;
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    stream.read_exact(&mut body).ok()?;
                    let mut whole = header.to_vec();
                    whole.extend(body);
                    Some(whole)
                };
                loop {
                    let Some(request) = frame(&mut client) else {
                        return;
                    };
                    if device.write_all(&request).is_err() {
                        return;
                    }
                    let Some(reply) = frame(&mut device) else {
                        return;
                    };
                    let holds = request.windows(cut.len()).any(|w| w == cut);
                    if holds && !done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        // Committed on the node; the answer is lost with the connection.
                        return;
                    }
                    if client.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, done)
}

#[test]
fn ha_sends_a_create_again_and_the_cluster_does_not_make_it_twice() {
    let _serial = serialise();
    let cluster = Cluster::start();
    init_token(&cluster.library());
    let (relay, cut) = cutting_relay(&cluster.nodes[1], b"made-once-1");
    let _items = Items::set(&[
        ("ET_PTKC_GENERAL_LIBRARY_MODE", "HA"),
        ("ET_PTKC_WLD_SLOT_1", "cluster token"),
    ]);
    // Device 1 is node 1 through the relay (TCP).
    let module = load(&format!(
        "{} {relay} {}",
        cluster.nodes[0].server_list(Transport::Unix),
        cluster.nodes[2].server_list(Transport::Unix)
    ));
    // One session on each node (the fewest sessions first).
    let (_, sessions) = virtual_sessions(&module, 3);
    let mut handles = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        // The session on node 1 creates "made-once-1": the node commits it, its answer is lost
        // with the connection, the session moves and the library sends the create again.
        handles.push(private_data(session, &format!("made-once-{i}"), b"v"));
    }
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the relay cut the create's answer"
    );
    for (i, handle) in handles.iter().enumerate() {
        let found = find_by_label(&sessions[0], &format!("made-once-{i}"));
        assert_eq!(
            found,
            vec![*handle],
            "made-once-{i}: one object, the one answered"
        );
    }
    assert!(
        cluster.nodes[0]
            .log()
            .contains("answered with the objects it made")
            || cluster.nodes[2]
                .log()
                .contains("answered with the objects it made")
    );
}

/// Runs `ctconf` against `node` with its PIN files; its exit status and what it printed.
fn ctconf(node: &Daemon, args: &[&str]) -> (bool, String) {
    let dir = node.dir();
    let output = std::process::Command::new(tessera_testkit::binary("ctconf"))
        .envs(node.trust_env())
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            node.server_list(Transport::Unix),
        )
        .args(args)
        .arg("--pin-file")
        .arg(dir.join("admin.pin"))
        .arg("--aso-pin-file")
        .arg(dir.join("aso.pin"))
        .arg("--admin-pin-file")
        .arg(dir.join("admin.pin"))
        .arg("--yes")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn administration_is_cluster_wide_and_a_tampered_node_leaves() {
    let _serial = serialise();
    let cluster = Cluster::start();
    // The Admin token is the cluster's: set up once, through node 0.
    let (ok, out) = ctconf(&cluster.nodes[0], &["-v"]);
    assert!(ok, "{out}");
    // Flags set on node 0 are every node's.
    let (ok, out) = ctconf(&cluster.nodes[0], &["-fc"]);
    assert!(ok, "{out}");
    for node in &cluster.nodes[1..] {
        assert!(
            tessera_testkit::wait_until(Duration::from_secs(10), || {
                ctconf(node, &["-v"]).1.contains("No Public Crypto")
            }),
            "the flag reached every node"
        );
    }
    assert!(cluster.nodes[2]
        .log()
        .contains("set on another node of the cluster"));
    // The cluster's slots are fixed.
    let (ok, out) = ctconf(&cluster.nodes[1], &["-c", "1"]);
    assert!(!ok && out.contains("CKR_FUNCTION_NOT_SUPPORTED"), "{out}");

    // A token initialised through node 1; then node 2 is tampered with.
    {
        let module = cluster.library();
        init_token(&module);
        let on_1 = user_session(&module, 1);
        private_data(&on_1, "survives a tamper", b"x");
    }
    let (ok, out) = ctconf(&cluster.nodes[2], &["--tamper"]);
    assert!(ok, "{out}");
    // Node 2 forgot the cluster: its tokens are blank and it writes nothing to the cluster
    // (even its blank Admin token's set-up goes nowhere)...
    let module = cluster.library();
    assert_eq!(
        rv(module.open_rw_session(slot(&module, 2))),
        RvError::DeviceError,
        "a tampered node serves no token of the cluster"
    );
    // ... while the cluster's tokens are intact on the others.
    let on_0 = user_session(&module, 0);
    assert_eq!(find_by_label(&on_0, "survives a tamper").len(), 1);
    let (ok, out) = ctconf(&cluster.nodes[0], &["-v"]);
    assert!(ok && out.contains("No Public Crypto"), "{out}");
}

/// A cluster with its Admin token set up and a token holding an object labelled `label`, made
/// through node 0; and node 2's serial, the member the test removes.
fn ready_to_remove_node_2(label: &str) -> (Cluster, String) {
    let cluster = Cluster::start();
    let (ok, out) = ctconf(&cluster.nodes[0], &["-v"]);
    assert!(ok, "{out}");
    {
        let module = cluster.library();
        init_token(&module);
        private_data(&user_session(&module, 0), label, MARKER);
    }
    let removed = cluster.serials[2].clone();
    (cluster, removed)
}

#[test]
fn a_removed_member_gets_no_later_key_and_is_never_admitted_again() {
    let _serial = serialise();
    let (mut cluster, removed) = ready_to_remove_node_2("before the rotation");
    let (ok, out) = ctconf(&cluster.nodes[0], &["--remove-member", &removed]);
    assert!(ok, "{out}");

    // Node 1 takes the new key; node 2 gets none and leaves the cluster.
    assert!(tessera_testkit::wait_until(Duration::from_secs(20), || {
        cluster.nodes[1]
            .log()
            .contains("took the cluster's new key")
    }));
    assert!(
        tessera_testkit::wait_until(Duration::from_secs(40), || {
            cluster.nodes[2].log().contains("it leaves the cluster")
        }),
        "{}",
        cluster.nodes[2].log()
    );
    assert!(cluster.nodes[0]
        .log()
        .contains(&format!("device {removed} was removed from the cluster")));

    // The others go on, on the new key: what was there and what is written now.
    let module = cluster.library();
    let on_1 = user_session(&module, 1);
    assert_eq!(find_by_label(&on_1, "before the rotation").len(), 1);
    private_data(&on_1, "after the rotation", b"y");
    let on_0 = user_session(&module, 0);
    assert_eq!(find_by_label(&on_0, "after the rotation").len(), 1);
    let status = ctconf(&cluster.nodes[0], &["-v"]).1;
    assert!(
        status.contains(&format!("{CLUSTER}, 2 members")),
        "{status}"
    );
    assert_eq!(status.matches("key epoch 1").count(), 2, "{status}");

    // The removed node serves none of the cluster's tokens (its own are blank).
    let session = module.open_rw_session(slot(&module, 2));
    let refused = match session {
        Err(_) => true,
        Ok(session) => session
            .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .is_err(),
    };
    assert!(
        refused,
        "the removed node does not serve the cluster's token"
    );
    drop(module);

    // Restarted, it is not admitted again, though the members still trust its identity.
    let log = cluster.nodes[2]
        .try_restart()
        .expect_err("a removed device is not admitted again");
    assert!(log.contains("no member of cluster"), "{log}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with `openssl`.
fn certificates(
    dir: &Path,
) -> (
    tessera_testkit::etcd::Tls,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test etcd CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject, ext) in [
        ("server", "/CN=127.0.0.1", "server.ext"),
        ("client", "/CN=tessera-node", "client.ext"),
    ] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
    (
        tessera_testkit::etcd::Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        },
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    )
}

#[test]
fn a_cluster_on_an_etcd_with_tls_and_client_certificates() {
    let _serial = serialise();
    let certs = tempfile::tempdir().unwrap();
    let (tls, client_cert, client_key) = certificates(certs.path());
    let etcd = Etcd::start_with(1, Some(tls.clone()));
    let endpoints = etcd.endpoints();
    assert!(endpoints.starts_with("https://"));
    let args = |cert: &Path, key: &Path| -> Vec<String> {
        [
            "--cluster",
            CLUSTER,
            "--etcd",
            &endpoints,
            "--etcd-timeout",
            "2000",
            "--etcd-ca",
            tls.ca.to_str().unwrap(),
            "--etcd-cert",
            cert.to_str().unwrap(),
            "--etcd-key",
            key.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // With the CA and a client certificate: the node founds the cluster over TLS and serves.
    let with_certificate = args(&client_cert, &client_key);
    let with_certificate: Vec<&str> = with_certificate.iter().map(String::as_str).collect();
    let node = Daemon::start_with(&with_certificate);
    let module = load(&node.server_list(Transport::Unix));
    init_token(&module);
    private_data(&user_session(&module, 0), "over tls", MARKER);
    drop(module);
    // A node whose certificate etcd's CA did not sign is refused by etcd: it does not start.
    let other = tempfile::tempdir().unwrap();
    let (_, stranger_cert, stranger_key) = certificates(other.path());
    let stranger = args(&stranger_cert, &stranger_key);
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    let log = match Daemon::start_prepared(None, |_| {}, &stranger) {
        Ok(_) => panic!("a node with a certificate of another CA reached etcd"),
        Err(log) => log,
    };
    assert!(log.contains("etcd is unavailable"), "{log}");
    // Without TLS the endpoints are refused for what they are.
    let plain: Vec<String> = [
        "--cluster",
        CLUSTER,
        "--etcd",
        &endpoints.replace("https", "http"),
        "--etcd-timeout",
        "2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    assert!(Daemon::start_prepared(None, |_| {}, &plain).is_err());
}

#[test]
fn a_rotation_cut_by_a_crash_is_finished_when_its_node_starts_again() {
    let _serial = serialise();
    let (mut cluster, removed) = ready_to_remove_node_2("across the crash");
    // The removal runs; node 0, which rotates, is killed in the middle of it.
    let asked = cluster.nodes[1].log().matches("asking to join").count();
    let dir = cluster.nodes[0].dir().to_path_buf();
    let list = cluster.nodes[0].server_list(Transport::Unix);
    let env = cluster.nodes[0].trust_env();
    let mut removal = std::process::Command::new(tessera_testkit::binary("ctconf"))
        .envs(env)
        .env("ET_HSM_NETCLIENT_SERVERLIST", list)
        .args(["--remove-member", &removed, "--yes", "--pin-file"])
        .arg(dir.join("admin.pin"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once node 1 asks for the new key (it asked once already, to join), node 0 has
    // announced it and waits for the members.
    assert!(tessera_testkit::wait_until(Duration::from_secs(20), || {
        cluster.nodes[1].log().matches("asking to join").count() > asked
    }));
    cluster.nodes[0].kill9();
    let _ = removal.wait();
    // Started again, node 0 finishes what it began: node 1 gets the new key, the removed
    // node gets none, and what was written before is there.
    cluster.nodes[0].restart();
    assert!(
        tessera_testkit::wait_until(Duration::from_secs(40), || {
            cluster.nodes[1]
                .log()
                .contains("took the cluster's new key")
        }),
        "node 0: {}\nnode 1: {}",
        cluster.nodes[0]
            .log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.nodes[1]
            .log()
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(tessera_testkit::wait_until(Duration::from_secs(40), || {
        cluster.nodes[2].log().contains("it leaves the cluster")
    }));
    let module = cluster.library();
    let on_1 = user_session(&module, 1);
    assert_eq!(find_by_label(&on_1, "across the crash").len(), 1);
    private_data(&on_1, "after the crash", b"z");
    let on_0 = user_session(&module, 0);
    assert_eq!(find_by_label(&on_0, "after the crash").len(), 1);
    assert!(cluster.nodes[0]
        .log()
        .contains("finishing the rotation this node began"));
    let status = ctconf(&cluster.nodes[0], &["-v"]).1;
    assert!(status.contains("key epoch 1"), "{status}");
}

#[test]
fn ha_over_secure_messaging_moves_a_session_into_a_new_channel() {
    let _serial = serialise();
    let mut cluster = Cluster::start();
    // The token and a key first; then the cluster's flags require full secure messaging.
    {
        let module = cluster.library();
        init_token(&module);
        token_aes_key(&user_session(&module, 0), "sm-key");
    }
    let (ok, out) = ctconf(&cluster.nodes[0], &["-v"]);
    assert!(ok, "{out}");
    let (ok, out) = ctconf(&cluster.nodes[0], &["-fnuNU"]);
    assert!(ok, "{out}");
    for node in &cluster.nodes {
        assert!(tessera_testkit::wait_until(Duration::from_secs(10), || {
            ctconf(node, &["-v"])
                .1
                .contains("Full Secure Message Encryption")
        }));
    }
    // One trust store (node 0's test directory) that trusts every node's identity.
    for node in &cluster.nodes {
        let out = std::process::Command::new(tessera_testkit::binary("ctident"))
            .envs(cluster.nodes[0].trust_env())
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                node.server_list(Transport::Unix),
            )
            .args(["trust", "add", "--from-device", "--yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _trust = Items::set(&cluster.nodes[0].trust_env());
    let _items = Items::set(&[
        ("ET_PTKC_GENERAL_LIBRARY_MODE", "HA"),
        ("ET_PTKC_WLD_SLOT_1", "cluster token"),
    ]);
    let module = cluster.library();
    let (_, sessions) = virtual_sessions(&module, 6);
    let key = find_by_label(&sessions[0], "sm-key")[0];
    let before: Vec<Vec<u8>> = sessions
        .iter()
        .map(|s| encrypt(s, key, b"sealed"))
        .collect();
    // A node dies: its sessions move, each into a channel to another node, and go on.
    cluster.nodes[1].kill9();
    for (session, expected) in sessions.iter().zip(&before) {
        assert_eq!(&encrypt(session, key, b"sealed"), expected);
    }
    // Every call went inside channels: the nodes refuse calls in the clear.
    for node in [&cluster.nodes[0], &cluster.nodes[2]] {
        assert!(
            !node.log().contains("policy-refusal"),
            "a call in the clear reached a node"
        );
    }
}

/// One request to etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`) on loopback: the
/// answer's body.
fn etcd_json(endpoint: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn an_older_value_put_back_in_etcd_undoes_nothing() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let _serial = serialise();
    let cluster = Cluster::start();
    let module = cluster.library();
    init_token(&module);
    let wrong = AuthPin::new("wrong-pin-0000".into());
    let guess = |device: u64| {
        let session = module.open_rw_session(slot(&module, device)).unwrap();
        rv(session.login(UserType::User, Some(&wrong)))
    };
    for _ in 0..3 {
        assert_eq!(guess(0), RvError::PinIncorrect);
    }
    // A writer of etcd (stolen etcd credentials, no cluster key) copies the token record as
    // it is after 3 wrong guesses ...
    let endpoint = cluster
        .etcd
        .endpoints()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let key = b64.encode(format!("/tessera/{CLUSTER}/state/token/{:020}", 0));
    let read = etcd_json(&endpoint, "/v3/kv/range", &format!("{{\"key\":\"{key}\"}}"));
    let value = read
        .split("\"value\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no value in {read}"))
        .to_string();
    for _ in 0..6 {
        assert_eq!(guess(1), RvError::PinIncorrect);
    }
    // ... and puts it back after 9, hoping for 7 more guesses.
    let put = etcd_json(
        &endpoint,
        "/v3/kv/put",
        &format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}"),
    );
    assert!(put.contains("header"), "{put}");
    std::thread::sleep(Duration::from_millis(500));
    let answers: Vec<RvError> = (0..6).map(|i| guess(i % 3)).collect();
    let checked = answers
        .iter()
        .filter(|a| **a == RvError::PinIncorrect)
        .count();
    assert!(
        checked <= 1,
        "the count went back: {checked} more guesses were checked ({answers:?})"
    );
    assert!(
        cluster
            .nodes
            .iter()
            .any(|n| n.log().contains("an older value was put back")),
        "a node says what it refused"
    );
    // The right PIN is still refused or, at most, what the honest count allows.
    let session = module.open_rw_session(slot(&module, 2)).unwrap();
    assert_ne!(
        rv(session.login(UserType::User, Some(&wrong))),
        RvError::PinIncorrect
    );
}
