//! Another local user standing in for the daemon on its Unix socket, to collect a PIN.
//!
//! The attacker is uid 65534 (nobody), run with `setpriv`; these tests therefore need root (CI
//! runs as root) and fail, saying so, without it. The daemon must refuse a socket directory
//! that it does not own or that others can write, and must not replace what another user put
//! at its socket path; the library must refuse a socket served by another user, or in a
//! directory others can write, before it sends a single byte — and accept it when
//! `ET_HSM_NETCLIENT_SERVER_USER` names that user (which shows that the refusals are the check
//! and nothing else).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_core::secret::SecretBytes;
use tessera_core::Rv;
use tessera_testkit::{binary, pkcs11_module, wait_until};
use tessera_wire::Call;

const NOBODY: u32 = 65534;
/// The PIN the application logs in with: it must never reach the impostor.
const MARKER_PIN: &str = "marker-pin-7Qx9";
const CKU_USER: u64 = 1;

fn need_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(
        uid, 0,
        "this test needs root: it runs the attacker as uid {NOBODY} with setpriv (CI runs as root)"
    );
}

/// `setpriv` running a program as `uid` (and the same gid), without supplementary groups.
fn as_user(uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program);
    command
}

/// A temporary directory that other users can enter (not list or write).
fn base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// The attacker (uid 65534) makes `dir`, open to everyone (mode 0777), before the daemon.
fn attacker_mkdir(dir: &Path) {
    let made = as_user(NOBODY, "mkdir")
        .arg("-m0777")
        .arg(dir)
        .status()
        .unwrap();
    assert!(
        made.success(),
        "the attacker could not make {}",
        dir.display()
    );
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A private directory of uid 65534, as the attacker would make for itself.
fn attackers_den(base: &Path) -> PathBuf {
    let den = base.join("den");
    std::fs::create_dir(&den).unwrap();
    std::os::unix::fs::chown(&den, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&den, 0o700);
    den
}

/// The impostor: `socket-recorder` listening on a socket and keeping all it receives.
struct Impostor {
    child: Child,
    _stdin: ChildStdin,
    record: PathBuf,
}

impl Impostor {
    fn start(mut command: Command, socket: &Path, record: &Path) -> Impostor {
        let mut child = command
            .arg(socket)
            .arg(record)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("socket-recorder starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "socket-recorder did not start");
        let stdin = child.stdin.take().unwrap();
        Impostor {
            child,
            _stdin: stdin,
            record: record.to_path_buf(),
        }
    }

    /// Run by uid 65534.
    fn as_nobody(socket: &Path, record: &Path) -> Impostor {
        Impostor::start(as_user(NOBODY, binary("socket-recorder")), socket, record)
    }

    /// Run by this process's user (root).
    fn as_self(socket: &Path, record: &Path) -> Impostor {
        Impostor::start(Command::new(binary("socket-recorder")), socket, record)
    }

    fn received(&self) -> Vec<u8> {
        std::fs::read(&self.record).unwrap()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tesserad with `command`'s settings, expecting it to give up at once: its exit status
/// (`None`: it was still running after 10 s, and was killed) and standard error.
fn run_daemon(mut command: Command, base: &Path) -> (Option<ExitStatus>, String) {
    let stderr = base.join("tesserad.stderr");
    let mut child = command
        .args(["--kdf-iterations", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("tesserad starts");
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (status, std::fs::read_to_string(&stderr).unwrap_or_default())
}

fn assert_refused_directory(status: Option<ExitStatus>, stderr: &str, dir: &Path) {
    assert!(
        status.is_some_and(|s| !s.success()),
        "tesserad must exit with an error, got {status:?}:\n{stderr}"
    );
    for needle in [
        dir.display().to_string(),
        format!("owner uid {NOBODY}"),
        "mode 0777".to_string(),
        "another --listen path".to_string(),
    ] {
        assert!(
            stderr.contains(&needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "tesserad bound something: {left:?}");
}

#[test]
fn the_daemon_refuses_a_default_socket_directory_that_another_user_made() {
    need_root();
    let base = base();
    // $XDG_RUNTIME_DIR, shared like /tmp: the attacker makes tessera/ in it first.
    let runtime = base.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    chmod(&runtime, 0o1777);
    let dir = runtime.join("tessera");
    attacker_mkdir(&dir);
    let mut command = Command::new(binary("tesserad"));
    command
        .arg("--data-dir")
        .arg(base.path().join("data"))
        .env("XDG_RUNTIME_DIR", &runtime);
    let (status, stderr) = run_daemon(command, base.path());
    assert_refused_directory(status, &stderr, &dir);
    // Refused before the data directory was touched.
    assert!(!base.path().join("data").exists());
}

/// The literal default without `XDG_RUNTIME_DIR`, `/tmp/tessera-<uid>/`. The daemon runs as a
/// uid of its own (3000000000 + this test's process id): the path of no real user, and of no
/// other run of this test, so that the test neither meets nor disturbs anyone's socket.
#[test]
fn the_daemon_refuses_the_tmp_default_directory_that_another_user_made() {
    need_root();
    let base = base();
    let uid = 3_000_000_000 + std::process::id();
    let dir = PathBuf::from(format!("/tmp/tessera-{uid}"));
    let _ = std::fs::remove_dir_all(&dir);
    attacker_mkdir(&dir);
    // A data directory it may use: only the socket directory is wrong.
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
    let mut command = as_user(uid, binary("tesserad"));
    command
        .arg("--data-dir")
        .arg(&data)
        .env_remove("XDG_RUNTIME_DIR");
    let (status, stderr) = run_daemon(command, base.path());
    let outcome = std::panic::catch_unwind(|| assert_refused_directory(status, &stderr, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_daemon_does_not_replace_what_it_did_not_put_at_its_socket_path() {
    need_root();
    let base = base();
    let dir = base.path().join("private");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    let socket = dir.join("tesserad.sock");
    let listen = format!("unix:{}", socket.display());
    // A regular file.
    std::fs::write(&socket, "not a socket").unwrap();
    let mut command = Command::new(binary("tesserad"));
    command
        .arg("--data-dir")
        .arg(base.path().join("data"))
        .args(["--listen", &listen]);
    let (status, stderr) = run_daemon(command, base.path());
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(stderr.contains("a regular file"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
    // A socket of another user.
    std::fs::remove_file(&socket).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::os::unix::fs::lchown(&socket, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut command = Command::new(binary("tesserad"));
    command
        .arg("--data-dir")
        .arg(base.path().join("data"))
        .args(["--listen", &listen]);
    let (status, stderr) = run_daemon(command, base.path());
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(
        stderr.contains(&format!("a socket of uid {NOBODY}")),
        "{stderr}"
    );
    assert_eq!(std::fs::symlink_metadata(&socket).unwrap().uid(), NOBODY);
    drop(theirs);
}

/// The library's settings for one test: its log, short timeouts, and the server user.
fn library_env(log: &Path, server_user: Option<&str>) {
    std::env::set_var("ET_PTKC_GENERAL_LOG", log);
    std::env::set_var("ET_HSM_NETCLIENT_CONNECT_TIMEOUT", "2");
    std::env::set_var("ET_HSM_NETCLIENT_REPLY_TIMEOUT", "2");
    match server_user {
        Some(user) => std::env::set_var("ET_HSM_NETCLIENT_SERVER_USER", user),
        None => std::env::remove_var("ET_HSM_NETCLIENT_SERVER_USER"),
    }
}

/// `C_Login`'s request with the marker PIN, straight through the client library (the
/// application cannot get a session from a refused device; see below).
fn login_with_marker(socket: &Path) -> Result<(), u64> {
    let device = Device::new(
        ServerAddress::Unix(socket.to_path_buf()),
        Duration::from_secs(2),
        Duration::from_secs(2),
    );
    device
        .call(
            None,
            Call::Login {
                session: 1,
                user_type: CKU_USER,
                pin: SecretBytes::from_slice(MARKER_PIN.as_bytes()),
            },
        )
        .map(|_| ())
        .map_err(|e| e.rv())
}

#[test]
fn the_library_refuses_another_users_socket_before_it_sends_a_byte() {
    need_root();
    let _serial = common::serialise();
    let base = base();
    let den = attackers_den(base.path());
    let socket = den.join("tesserad.sock");
    let impostor = Impostor::as_nobody(&socket, &den.join("record"));
    let log = base.path().join("library.log");
    library_env(&log, None);

    // The application: the device is unreachable, so its slot shows no token.
    let pkcs11 = common::load(&socket.display().to_string());
    let slots = pkcs11.get_all_slots().unwrap();
    assert_eq!(slots.len(), 1);
    assert!(pkcs11.get_slots_with_token().unwrap().is_empty());
    assert_eq!(
        common::rv(pkcs11.open_rw_session(slots[0])),
        RvError::TokenNotPresent
    );
    drop(pkcs11);
    // The login itself (a device without secure-messaging settings logs too).
    assert_eq!(login_with_marker(&socket), Err(Rv::DeviceRemoved.code()));

    std::thread::sleep(Duration::from_millis(200));
    assert!(
        impostor.received().is_empty(),
        "bytes reached the impostor: {:?}",
        String::from_utf8_lossy(&impostor.received())
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "nothing in the library's log");
    for line in &lines {
        for needle in [
            "refused the local socket",
            &socket.display().to_string(),
            "runs as uid 65534",
            "ET_HSM_NETCLIENT_SERVER_USER=65534",
        ] {
            assert!(line.contains(needle), "{needle:?} missing from {line:?}");
        }
    }
    assert!(!log.contains(MARKER_PIN));
}

#[test]
fn the_library_refuses_a_socket_in_a_directory_others_can_write() {
    need_root();
    let _serial = common::serialise();
    let base = base();
    // Like /tmp: root's, sticky, world-writable; the listener is this very user's.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let socket = shared.join("t.sock");
    let impostor = Impostor::as_self(&socket, &base.path().join("record"));
    let log = base.path().join("library.log");
    library_env(&log, None);

    assert_eq!(login_with_marker(&socket), Err(Rv::DeviceRemoved.code()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(impostor.received().is_empty(), "bytes reached the socket");
    let log = std::fs::read_to_string(&log).unwrap();
    for needle in [
        format!("its directory {}", shared.display()),
        "mode 1777".to_string(),
        "can be written by group or others".to_string(),
        "chmod 0700".to_string(),
    ] {
        assert!(log.contains(&needle), "{needle:?} missing from {log:?}");
    }
}

#[test]
fn the_library_accepts_the_server_user_it_is_told_of() {
    need_root();
    let _serial = common::serialise();
    let base = base();
    let den = attackers_den(base.path());
    let socket = den.join("tesserad.sock");
    let impostor = Impostor::as_nobody(&socket, &den.join("record"));
    let log = base.path().join("library.log");
    library_env(&log, Some("nobody"));

    // The application's first request reaches the listener...
    let pkcs11 = common::load(&socket.display().to_string());
    let _ = pkcs11.get_all_slots();
    drop(pkcs11);
    assert!(
        wait_until(Duration::from_secs(5), || !impostor.received().is_empty()),
        "the library sent nothing to the server user's socket"
    );
    // ... and so would the PIN: what the refusals above prevent.
    let _ = login_with_marker(&socket);
    let marker = MARKER_PIN.as_bytes();
    assert!(
        wait_until(Duration::from_secs(5), || impostor
            .received()
            .windows(marker.len())
            .any(|w| w == marker)),
        "the login did not reach the listener"
    );
    std::env::remove_var("ET_HSM_NETCLIENT_SERVER_USER");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("refused the local socket"), "{log}");
}

#[test]
fn an_unknown_server_user_fails_c_initialize() {
    let _serial = common::serialise();
    std::env::set_var("ET_HSM_NETCLIENT_SERVER_USER", "no-such-tessera-user");
    let pkcs11 = Pkcs11::new(pkcs11_module()).expect("the module loads");
    let outcome = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    std::env::remove_var("ET_HSM_NETCLIENT_SERVER_USER");
    assert!(
        matches!(
            outcome,
            Err(cryptoki::error::Error::Pkcs11(RvError::FunctionFailed, _))
        ),
        "{outcome:?}"
    );
}
