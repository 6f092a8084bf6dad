//! Keys and PINs of the daemon and of the application reaching a disk or another process
//! through a core file or `/proc/PID/mem`.
//!
//! The daemon: not dumpable and `RLIMIT_CORE` 0 unless `--allow-core-dumps` (a process of the
//! daemon's own user cannot read its memory; SIGABRT leaves no core file). The library: its host
//! application is not dumpable after `C_Initialize` unless `ET_PTKC_GENERAL_ALLOW_CORE_DUMPS`.
//! Some tests need root (CI runs as root): the daemon runs as uid 65534 there.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use tessera_testkit::{compile_c, pkcs11_module, Daemon};

const NOBODY: u32 = 65534;

/// The test directory handed to uid 65534, who runs the daemon in it.
fn for_nobody(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).expect("chown (needs root)");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const AS_NOBODY: &str = "exec setpriv --reuid=65534 --regid=65534 --clear-groups";

/// Whether uid 65534 can read the first readable mapping of process `pid`'s memory.
fn nobody_reads_memory(pid: u32) -> Result<(), String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start = maps
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.starts_with('r'))
        })
        .and_then(|l| l.split('-').next())
        .map(|s| u64::from_str_radix(s, 16).unwrap())
        .unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "dd"])
        .arg(format!("if=/proc/{pid}/mem"))
        .args(["bs=4096", "count=1", "iflag=skip_bytes", "of=/dev/null"])
        .arg(format!("skip={start}"))
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `Max core file size` of process `pid`: (soft, hard).
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line["Max core file size".len()..]
        .split_whitespace()
        .collect();
    (fields[0].to_string(), fields[1].to_string())
}

#[test]
fn the_daemon_is_not_dumpable_and_its_own_user_cannot_read_its_memory() {
    let launcher = format!("ulimit -c unlimited; {AS_NOBODY}");
    let daemon = Daemon::start_prepared(Some(&launcher), for_nobody, &[]).unwrap();
    let pid = daemon.pid().unwrap();
    // Not dumpable: /proc/PID belongs to root, and the daemon's own uid cannot read its memory.
    let refused = nobody_reads_memory(pid).expect_err("uid 65534 read the daemon's memory");
    assert!(refused.contains("Permission denied"), "{refused}");
    assert_eq!(core_limit(pid), ("0".into(), "0".into()));

    // Under `ulimit -c unlimited`, as a debugging session would be.
    let launcher = format!("ulimit -c unlimited; {AS_NOBODY}");
    let debug =
        Daemon::start_prepared(Some(&launcher), for_nobody, &["--allow-core-dumps"]).unwrap();
    let pid = debug.pid().unwrap();
    assert!(
        nobody_reads_memory(pid).is_ok(),
        "the override did not keep it dumpable"
    );
    assert_ne!(core_limit(pid).0, "0");
    assert!(
        debug
            .log()
            .contains("--allow-core-dumps: core dumps stay on"),
        "{}",
        debug.log()
    );
}

#[test]
fn an_aborted_daemon_leaves_no_core_file() {
    for (extra, dumps) in [(&[][..], false), (&["--allow-core-dumps"][..], true)] {
        let mut daemon =
            Daemon::start_prepared(Some("ulimit -c unlimited; exec"), |_| {}, extra).unwrap();
        let pid = daemon.pid().unwrap();
        assert!(Command::new("kill")
            .args(["-ABRT", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        let status = daemon.wait_exit();
        assert_eq!(status.signal(), Some(6), "{extra:?}: {status:?}");
        let cores: Vec<_> = std::fs::read_dir(daemon.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
            .collect();
        if dumps {
            // Where the kernel writes cores to the working directory (core_pattern `core`),
            // the override really dumps; elsewhere the exit status says it tried.
            let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
            if pattern.trim().starts_with("core") {
                assert!(
                    status.core_dumped() && !cores.is_empty(),
                    "{extra:?}: {status:?}"
                );
            }
        } else {
            assert!(!status.core_dumped(), "a core was dumped");
            assert!(cores.is_empty(), "core files: {cores:?}");
        }
        for core in cores {
            let _ = std::fs::remove_file(core.path());
        }
    }
}

/// The host's dumpable flag and soft core limit after `C_Initialize`, from `tests/c/dumpable.c`.
fn host_after_initialize(dir: &Path, allow: Option<&str>) -> String {
    let program = compile_c("dumpable", dir);
    let mut command = Command::new(&program);
    command
        .arg(pkcs11_module())
        .env("ET_HSM_NETCLIENT_SERVERLIST", dir.join("none.sock"))
        .env("ET_PTKC_GENERAL_LOG", dir.join("client.log"))
        .env_remove("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS");
    if let Some(allow) = allow {
        command.env("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS", allow);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_library_makes_its_host_not_dumpable_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let out = host_after_initialize(dir.path(), None);
    assert!(
        out.contains("before dumpable=1 core=nonzero")
            && out.contains("initialize=0x0")
            && out.contains("after dumpable=0 core=0"),
        "{out}"
    );
    let out = host_after_initialize(dir.path(), Some("YES"));
    assert!(
        out.contains("initialize=0x0") && out.contains("after dumpable=1 core=nonzero"),
        "{out}"
    );
    let log = std::fs::read_to_string(dir.path().join("client.log")).unwrap_or_default();
    assert!(
        log.contains(
            "ET_PTKC_GENERAL_ALLOW_CORE_DUMPS=YES: core dumps of this application stay on"
        ),
        "{log}"
    );
    // A value that is neither fails C_Initialize, naming the item.
    let program = compile_c("dumpable", dir.path());
    let output = Command::new(&program)
        .arg(pkcs11_module())
        .env("ET_HSM_NETCLIENT_SERVERLIST", dir.path().join("none.sock"))
        .env("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS", "maybe")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("initialize=0x6"), "{out}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS"),
        "{output:?}"
    );
}

/// The address range of a line of `/proc/PID/maps`, when its mapping is readable.
fn readable(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    if !perms.starts_with('r') {
        return None;
    }
    let (start, end) = range.split_once('-').expect("an address range");
    let hex = |address: &str| u64::from_str_radix(address, 16).expect("a hexadecimal address");
    Some((hex(start), hex(end)))
}

/// Whether process `pid` still has a readable mapping holding address `at` (its `/proc/PID/maps`
/// read again).
fn still_mapped(pid: u32, at: u64) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(readable)
        .any(|(start, end)| start <= at && at < end)
}

/// Where `markers` occur in the readable memory of process `pid` (read as root through
/// `/proc/PID/mem`, at most 8 GiB in all): (marker index, mapping line, count). A scan that
/// cannot read all of the process's anonymous memory (heap, stacks, allocator arenas) fails
/// rather than report what it read as clean: a mapping it could not read that is still there,
/// or more than the budget. A file's mapping that cannot be read past the file's end, or one
/// unmapped while the scan ran, is passed over.
fn scan(pid: u32, markers: &[&[u8]]) -> Vec<(usize, String, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    let mut budget: u64 = 8 << 30;
    let mut chunk = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let Some((start, end)) = readable(line) else {
            continue;
        };
        if line.contains("[vvar]") || line.contains("[vsyscall]") {
            continue;
        }
        let mut at = start;
        // Overlap between chunks so a marker across a boundary is seen.
        let mut carry: Vec<u8> = Vec::new();
        let mut counts = vec![0usize; markers.len()];
        // A mapping with a path is a file's (or `[vdso]`-like); `[heap]`, `[stack]` and the
        // nameless ones are anonymous memory, where a process keeps what it computed.
        let anonymous = match line.split_whitespace().nth(5) {
            None => true,
            Some(name) => {
                name == "[heap]" || name.starts_with("[stack") || name.starts_with("[anon")
            }
        };
        while at < end {
            assert!(
                budget > 0,
                "more than 8 GiB of readable memory in process {pid}: the scan is incomplete"
            );
            let len = ((end - at) as usize).min(chunk.len());
            let read = mem
                .seek(SeekFrom::Start(at))
                .and_then(|_| mem.read(&mut chunk[..len]));
            let n = match read {
                Ok(n) if n > 0 => n,
                failed => {
                    assert!(
                        !anonymous || !still_mapped(pid, at),
                        "could not read {line} at {at:#x} ({failed:?}): the scan would miss it"
                    );
                    break;
                }
            };
            let mut window = std::mem::take(&mut carry);
            window.extend_from_slice(&chunk[..n]);
            // The markers are ASCII, which lossy decoding keeps; std's optimised search
            // keeps a debug build's scan of a GiB of heap to a few seconds.
            let text = String::from_utf8_lossy(&window);
            for (i, marker) in markers.iter().enumerate() {
                let marker = std::str::from_utf8(marker).expect("ASCII markers");
                counts[i] += text.matches(marker).count();
            }
            carry = window[window.len().saturating_sub(63)..].to_vec();
            at += n as u64;
            budget = budget.saturating_sub(n as u64);
        }
        for (i, count) in counts.into_iter().enumerate() {
            if count > 0 {
                found.push((i, line.to_string(), count));
            }
        }
    }
    found
}

/// [`scan`] again until no marker is left, for at most 5 s (the daemon wipes and scrubs soon
/// after a call, but a loaded machine may take a while to run it): what is left then.
fn left_after_a_while(pid: u32, markers: &[&[u8]]) -> Vec<(usize, String, usize)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let found = scan(pid, markers);
        if found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
    }
}

/// Token `label` set up with the SO PIN `so` and the user PIN `user`, and a R/W session
/// logged in as its user.
fn user_session(
    pkcs11: &cryptoki::context::Pkcs11,
    slot: cryptoki::slot::Slot,
    label: &str,
    so: &cryptoki::types::AuthPin,
    user: &cryptoki::types::AuthPin,
) -> cryptoki::session::Session {
    use cryptoki::session::UserType;
    pkcs11.init_token(slot, so, label).unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session.login(UserType::So, Some(so)).unwrap();
    session.init_pin(user).unwrap();
    session.logout().unwrap();
    session.login(UserType::User, Some(user)).unwrap();
    session
}

/// An AES key of value `value` made in `session` (a token object or not), an encryption with
/// it, and its destruction.
fn encrypt_with_aes_marker(session: &cryptoki::session::Session, value: &[u8], token: bool) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let key = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Encrypt(true),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap();
    session
        .encrypt(&Mechanism::AesEcb, key, &[7u8; 32])
        .unwrap();
    session.destroy_object(key).unwrap();
}

/// A P-256 private key whose scalar is `scalar` (any 32 bytes below the group order are a
/// key) made in `session` (a token object or not), three ECDSA signatures with it, and its
/// destruction.
fn sign_with_ec_marker(session: &cryptoki::session::Session, scalar: &[u8], token: bool) {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    const P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    let key = session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Value(scalar.to_vec()),
        ])
        .unwrap();
    for _ in 0..3 {
        session.sign(&Mechanism::Ecdsa, key, &[9u8; 32]).unwrap();
    }
    session.destroy_object(key).unwrap();
}

/// A clear-mode workload with marker PINs and a marker key value; then nothing of them may be
/// left in the daemon's memory once the object is destroyed and the sessions logged out and
/// closed.
#[test]
fn no_pin_or_key_value_is_left_in_the_daemons_memory_after_the_session() {
    nothing_left_after_the_session(false);
}

/// The same workload through a full secure-messaging channel (`nuNU`): the PINs and the key
/// value arrive sealed and are opened in the daemon's frame buffers, which must be wiped too.
#[test]
fn no_pin_or_key_value_is_left_in_the_daemons_memory_after_a_session_on_a_channel() {
    nothing_left_after_the_session(true);
}

fn nothing_left_after_the_session(channel: bool) {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    const SO: &str = "SOPIN-marker-4f1c9e";
    const USER: &str = "USERPIN-marker-8a2d7b";
    const VALUE: &[u8; 32] = b"KEYVALUE-marker-0123456789abcdef";
    let _serial = common::serialise();
    let daemon = Daemon::start();
    let transport = tessera_testkit::Transport::Unix;
    let pkcs11 = if channel {
        daemon.secure(transport, "nuNU");
        common::load_secured(&daemon, transport)
    } else {
        common::load(&daemon.server_list(transport))
    };
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let so_pin = AuthPin::new(SO.into());
    if channel {
        // Under nuNU the token is set up with the administration tool, through the channel.
        let file = daemon.dir().join("so.pin");
        std::fs::write(&file, format!("{SO}\n")).unwrap();
        let file = file.display().to_string();
        daemon.admin(
            transport,
            &["-n0", "--label", "markers", "--so-pin-file", &file],
        );
        std::fs::remove_file(&file).unwrap();
    } else {
        pkcs11.init_token(slot, &so_pin, "markers").unwrap();
    }
    {
        let session = pkcs11.open_rw_session(slot).unwrap();
        session.login(UserType::So, Some(&so_pin)).unwrap();
        session.init_pin(&AuthPin::new(USER.into())).unwrap();
        session.logout().unwrap();
        session
            .login(UserType::User, Some(&AuthPin::new(USER.into())))
            .unwrap();
        for token in [false, true] {
            encrypt_with_aes_marker(&session, VALUE, token);
        }
        session.logout().unwrap();
    }
    // Last on the connection: a login and a logout (a short frame after the PIN's).
    {
        let session = pkcs11.open_ro_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::new(USER.into())))
            .unwrap();
        session.logout().unwrap();
    }
    drop(pkcs11); // C_Finalize: the connection ends
                  // The daemon sees the connection end (and scrubs) soon after: scanned until nothing is
                  // left, for at most 5 s (a loaded machine may take a while to run the daemon).
    let markers: [&[u8]; 3] = [SO.as_bytes(), USER.as_bytes(), VALUE];
    let found = left_after_a_while(daemon.pid().unwrap(), &markers);
    let names = ["the SO PIN", "the user PIN", "the key value"];
    let report: Vec<String> = found
        .iter()
        .map(|(i, region, count)| format!("{} x{count} in {region}", names[*i]))
        .collect();
    assert!(
        report.is_empty(),
        "left in the daemon's memory:\n{}",
        report.join("\n")
    );
}

/// What a call answered on the I/O thread leaves on that thread's stack is scrubbed once the
/// reply is on its way, not at once: an AES key and an EC key made, used and destroyed on a
/// connection that then stays open, the destruction the last call of all, must leave nothing
/// once the daemon goes idle (without busy polling, going idle is the only turn the thread
/// takes, and the scrub runs from the runtime's park hook, higher on the stack).
#[test]
fn no_key_value_is_left_in_the_daemons_memory_while_the_connection_stays_open() {
    use cryptoki::types::AuthPin;

    const VALUE: &[u8; 32] = b"KEYVALUE-marker-idle-0123456789a";
    const SCALAR: &[u8; 32] = b"ECSCALAR-marker-idle-0123456789a";
    let _serial = common::serialise();
    let daemon = Daemon::start_with(&["--busy-poll", "0"]);
    let pkcs11 = common::load(&daemon.server_list(tessera_testkit::Transport::Unix));
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let so_pin = AuthPin::new("so-pin-1234".into());
    let user_pin = AuthPin::new("user-pin-1234".into());
    let session = user_session(&pkcs11, slot, "idle", &so_pin, &user_pin);
    // An EC key's signatures go deeper into the stack (its encoding is parsed at every one);
    // then the AES key, whose destruction is the last call.
    sign_with_ec_marker(&session, SCALAR, false);
    encrypt_with_aes_marker(&session, VALUE, false);
    let found = left_after_a_while(daemon.pid().unwrap(), &[VALUE, SCALAR]);
    let report: Vec<String> = found
        .iter()
        .map(|(i, region, count)| {
            let name = ["the AES key value", "the EC private key"][*i];
            format!("{name} x{count} in {region}")
        })
        .collect();
    assert!(
        report.is_empty(),
        "left in the daemon's memory while the connection stays open:\n{}",
        report.join("\n")
    );
    // The same connection and session, open all along, still serve.
    assert_eq!(session.get_session_info().unwrap().slot_id(), slot);
    session.logout().unwrap();
}

/// An EC private key is encoded (RFC 5915) for every check and every signature: that encoding,
/// and the parts it is built from, must be wiped too. The scalar is a marker (any 32 bytes
/// below the order of P-256 are a key); nothing of it may be left once the key is destroyed.
#[test]
fn no_private_key_encoding_is_left_in_the_daemons_memory_after_signing() {
    use cryptoki::types::AuthPin;

    const SCALAR: &[u8; 32] = b"ECSCALAR-marker-0123456789abcdef";
    let _serial = common::serialise();
    let daemon = Daemon::start();
    let pkcs11 = common::load(&daemon.server_list(tessera_testkit::Transport::Unix));
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let so_pin = AuthPin::new("so-pin-1234".into());
    let user_pin = AuthPin::new("user-pin-1234".into());
    {
        let session = user_session(&pkcs11, slot, "ec markers", &so_pin, &user_pin);
        for token in [false, true] {
            sign_with_ec_marker(&session, SCALAR, token);
        }
        session.logout().unwrap();
    }
    drop(pkcs11); // C_Finalize: the connection ends
    let found = left_after_a_while(daemon.pid().unwrap(), &[SCALAR]);
    let report: Vec<String> = found
        .iter()
        .map(|(_, region, count)| format!("the EC private key x{count} in {region}"))
        .collect();
    assert!(
        report.is_empty(),
        "left in the daemon's memory:\n{}",
        report.join("\n")
    );
}

/// The `VmFlags` of the mapping of process `pid` that starts at the start of `maps_line`.
fn vm_flags(pid: u32, maps_line: &str) -> String {
    let start = maps_line.split_whitespace().next().unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return flags.trim().to_string();
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|r| r.contains('-'))
        {
            inside = line.split_whitespace().next() == Some(start);
        }
    }
    String::new()
}

/// While an application holds a key, the daemon holds its value: then only in pages that are
/// locked in RAM (never written to swap) and left out of core dumps, whatever a scan of the
/// daemon's memory finds. The PIN is not held at all after the login.
#[test]
fn a_key_in_use_is_held_only_in_locked_memory_left_out_of_dumps() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::types::AuthPin;

    const SO: &str = "SOPIN-marker-77c1d0";
    const USER: &str = "USERPIN-marker-3e9b51";
    const VALUE: &[u8; 32] = b"KEYVALUE-marker-held-0123456789a";
    let _serial = common::serialise();
    let daemon = Daemon::start();
    let pid = daemon.pid().unwrap();
    let pkcs11 = common::load(&daemon.server_list(tessera_testkit::Transport::Unix));
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let so_pin = AuthPin::new(SO.into());
    let session = user_session(&pkcs11, slot, "held", &so_pin, &AuthPin::new(USER.into()));
    let mut keys = Vec::new();
    for token in [false, true] {
        let key = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(token),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Value(VALUE.to_vec()),
            ])
            .unwrap();
        let iv = [3u8; 16];
        let cipher = session
            .encrypt(&Mechanism::AesCbcPad(iv), key, b"some plaintext")
            .unwrap();
        session
            .decrypt(&Mechanism::AesCbcPad(iv), key, &cipher)
            .unwrap();
        keys.push(key);
    }

    // Frames and stacks are wiped soon after each call: scanned until only held copies are
    // left, for at most 5 s.
    let markers: [&[u8]; 3] = [SO.as_bytes(), USER.as_bytes(), VALUE];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let exposed = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let exposed: Vec<String> = scan(pid, &markers)
            .into_iter()
            .filter_map(|(i, region, count)| {
                let flags = vm_flags(pid, &region);
                let protected = |f| flags.split(' ').any(|x| x == f);
                let held = i == 2 && protected("lo") && protected("dd");
                let name = ["the SO PIN", "the user PIN", "the key value"][i];
                (!held).then(|| format!("{name} x{count} in {region} (VmFlags: {flags})"))
            })
            .collect();
        if exposed.is_empty() || std::time::Instant::now() >= deadline {
            break exposed;
        }
    };
    assert!(
        exposed.is_empty(),
        "outside locked, non-dumpable memory of the daemon:\n{}",
        exposed.join("\n")
    );
    for key in keys {
        session.destroy_object(key).unwrap();
    }
}

/// Without `CAP_IPC_LOCK` and with `RLIMIT_MEMLOCK` 0 the daemon cannot lock the pages for
/// secrets: it still serves, and says so at start with the limit and how to raise it.
#[test]
fn a_daemon_that_cannot_lock_memory_says_so_and_how_to_fix_it() {
    let _serial = common::serialise();
    let launcher =
        "exec prlimit --memlock=0:0 setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock";
    let daemon = Daemon::start_prepared(Some(launcher), |_| {}, &[]).unwrap();
    let pkcs11 = common::load(&daemon.server_list(tessera_testkit::Transport::Unix));
    assert!(!pkcs11.get_slots_with_token().unwrap().is_empty());
    let log = daemon.log();
    assert!(
        log.contains("cannot lock the memory that holds PINs and key values")
            && log.contains("rlimit_memlock=0 KiB")
            && log.contains("LimitMEMLOCK="),
        "{log}"
    );
}

/// The C application `decrypt_wipe` (`tests/c`) started on the ciphertext in `file`, with the
/// key labelled `bulk` in `dir`'s daemon, once it has decrypted it: the process, its input and
/// its output. It is dumpable, so that this test (its user) may read its memory, and it must
/// hold at least `blocks` copies of `marker` (the plaintext it made: the scan must see them).
fn decrypted(
    dir: &Path,
    file: &Path,
    marker: &[u8],
    blocks: usize,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let program = compile_c("decrypt_wipe", dir);
    let mut host = Command::new(&program)
        .arg(pkcs11_module())
        .args([common::USER_PIN, "bulk"])
        .arg(file)
        .env("ET_PTKC_GENERAL_ALLOW_CORE_DUMPS", "YES")
        .env("ET_PTKC_GENERAL_LOG", dir.join("host.log"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = host.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(host.stdout.take().unwrap());
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    let len = std::fs::metadata(file).unwrap().len();
    assert_eq!(line.trim(), format!("decrypted=0x0 len={len}"));
    let held = scan(host.id(), &[marker]);
    let copies: usize = held.iter().map(|(_, _, count)| count).sum();
    assert!(
        copies >= blocks,
        "the application's output holds the plaintext, and the scan must see it: {held:?}"
    );
    (host, input, output)
}

/// A 1 MiB (and a 20 KiB) decryption through the library, in a C application: once the application has wiped
/// its output, no copy of the plaintext may be left in the library's memory — the reply's
/// frame, the opened record, the decoded reply and the output buffer held a secret and are
/// wiped as they are spent, even those the library keeps for the next bulk call. In the clear
/// and through a channel (`nuNU`). The plaintext is a marker, encrypted beforehand by the
/// test; the application is scanned while its own copy is still there (the marker must be
/// found: the scan sees the heap), then after it wiped it.
#[test]
fn a_decryptions_plaintext_is_not_left_in_the_librarys_memory() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use std::io::{BufRead, Write};

    const MARKER: &[u8; 32] = b"PLAINTEXT-marker-7d41c2e9b0a5f38";
    // 1 MiB, and 20 KiB: a reply a little longer than the library's 16 KiB read buffer, whose
    // first fill holds most of it and a shorter refill the rest.
    for (channel, blocks) in [(false, 32 * 1024), (true, 32 * 1024), (false, 640)] {
        let fixture = if channel {
            common::secured_fixture(tessera_testkit::Transport::Unix, "nuNU")
        } else {
            common::fixture(tessera_testkit::Transport::Unix)
        };
        let dir = fixture.daemon.dir().to_path_buf();
        let session = fixture.user_session();
        let key = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Label(b"bulk".to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Value(vec![0x5a; 32]),
            ])
            .unwrap();
        let plaintext = MARKER.repeat(blocks);
        let ciphertext = session
            .encrypt(&Mechanism::AesEcb, key, &plaintext)
            .unwrap();
        drop(plaintext);
        let file = dir.join("ciphertext");
        std::fs::write(&file, &ciphertext).unwrap();

        let (mut host, mut input, mut output) = decrypted(&dir, &file, MARKER, blocks);
        writeln!(input, "wipe").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "wiped");
        let left = scan(host.id(), &[MARKER]);
        writeln!(input, "end").unwrap();
        assert!(host.wait().unwrap().success());
        assert!(
            left.is_empty(),
            "a decryption's plaintext was left in the library's memory (channel: {channel}, {} bytes): {left:?}",
            blocks * 32
        );
    }
}

/// A 1 MiB decryption's plaintext is not left in the daemon's memory once the reply is written:
/// in the clear the daemon writes it behind its reply frame's head (not copied into the frame)
/// and wipes it there once written; through a channel it is sealed in its record. The
/// ciphertext is made in this process (AES-256-ECB, aws-lc-rs, the key's value known to the
/// test), so the plaintext never reaches the daemon but as the decryption's result; the
/// application is scanned first (it must hold the plaintext: the decryption made it), the
/// daemon after the application has ended. The daemon's allocator is told never to give freed
/// memory back (`MIMALLOC_PURGE_DELAY=-1`): a 1 MiB buffer freed unwiped would otherwise be
/// returned to the system, zeroed, within about a second, and the scan find nothing.
#[test]
fn a_bulk_decryptions_plaintext_is_not_left_in_the_daemons_memory() {
    use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use std::io::Write;
    use tessera_testkit::Transport;

    const MARKER: &[u8; 32] = b"DAEMON-PLAINTEXT-4f0e9a17c2b8d65";
    const KEY: [u8; 32] = [0x3c; 32];
    const BLOCKS: usize = 32 * 1024;
    for flags in ["", "nuNU"] {
        let _serial = common::serialise();
        let daemon =
            Daemon::start_prepared(Some("export MIMALLOC_PURGE_DELAY=-1; exec"), |_| {}, &[])
                .unwrap_or_else(|log| panic!("{log}"));
        tessera_testkit::sm::prepare(&daemon, Transport::Unix, flags);
        let pkcs11 = common::load_secured(&daemon, Transport::Unix);
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let dir = daemon.dir().to_path_buf();
        let session = common::user_session(&pkcs11, slot);
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Label(b"bulk".to_vec()),
                Attribute::Decrypt(true),
                Attribute::Value(KEY.to_vec()),
            ])
            .unwrap();
        let mut ciphertext = MARKER.repeat(BLOCKS);
        EncryptingKey::ecb(UnboundCipherKey::new(&AES_256, &KEY).unwrap())
            .unwrap()
            .encrypt(&mut ciphertext)
            .unwrap();
        let file = dir.join("ciphertext");
        std::fs::write(&file, &ciphertext).unwrap();
        let pid = daemon.pid().unwrap();

        let (mut host, mut input, _output) = decrypted(&dir, &file, MARKER, BLOCKS);
        writeln!(input, "wipe").unwrap();
        writeln!(input, "end").unwrap();
        assert!(host.wait().unwrap().success());
        let left = left_after_a_while(pid, &[MARKER]);
        assert!(
            left.is_empty(),
            "a decryption's plaintext was left in the daemon's memory (flags {flags:?}): {left:?}"
        );
    }
}
