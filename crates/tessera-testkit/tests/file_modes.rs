//! Another local user copying the store (to guess its PINs offline) or the device key.
//!
//! The daemon is started under umask 022, in a test directory that others can enter (as
//! `/var/lib` is), so that only the modes tesserad gives its own files stand between uid
//! 65534 (nobody, run with `setpriv`) and them. Needs root (CI runs as root).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use tessera_testkit::{binary, Daemon};

const NOBODY: u32 = 65534;

fn require_root() {
    assert_eq!(
        rustix_free_euid(),
        0,
        "this test needs root: it runs the attacker as uid {NOBODY} with setpriv (CI runs as root)"
    );
}

/// The effective uid, from /proc (no unsafe code in tests).
fn rustix_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Whether uid 65534 can read `path` (`cat` through `setpriv`); its error output otherwise.
fn nobody_reads(path: &Path) -> Result<(), String> {
    let output = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The test's directory as others can enter it (like `/var/lib`).
fn open_to_others(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn another_user_cannot_read_the_store_or_the_keys_under_umask_022() {
    require_root();
    let daemon = Daemon::start_prepared(Some("umask 022; exec"), open_to_others, &[]).unwrap();
    let data = daemon.data_dir();
    // The attacker can reach the test directory: the check below is the data directory's.
    assert!(nobody_reads(&daemon.dir().join("tesserad.log")).is_ok());
    assert_eq!(mode(&data), 0o700, "the data directory");
    for name in ["tessera.redb", "device.key", "tesserad.lock"] {
        let path = data.join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
        let refused = nobody_reads(&path).expect_err(&format!("uid {NOBODY} read {name}"));
        assert!(refused.contains("Permission denied"), "{name}: {refused}");
    }
    // The socket: the daemon's user only (connecting needs write permission).
    assert_eq!(mode(&daemon.socket()), 0o600, "the socket");
}

#[test]
fn wide_files_in_the_data_directory_are_tightened_at_start() {
    require_root();
    let mut daemon = Daemon::start_prepared(Some("umask 022; exec"), open_to_others, &[]).unwrap();
    daemon.stop();
    let store = daemon.data_dir().join("tessera.redb");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    daemon.restart();
    assert_eq!(mode(&store), 0o600);
    assert!(nobody_reads(&store).is_err());
    let log = daemon.log();
    assert!(
        log.contains("tightened a file of the data directory")
            && log.contains("was=0644")
            && log.contains("now=0600"),
        "{log}"
    );
}

/// Runs tesserad on `data` until it is ready or exits; its exit status and standard error.
fn start_on(base: &Path, data: &Path, extra: &[&str]) -> (bool, String) {
    let mut child = Command::new(binary("tesserad"))
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!(
            "unix:{}",
            base.join("sock/tesserad.sock").display()
        ))
        .args(["--kdf-iterations", "1000", "--exit-with-parent"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = base.join("sock/tesserad.sock");
    let exited = tessera_testkit::wait_until(std::time::Duration::from_secs(20), || {
        socket.exists() || child.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "tesserad neither served nor exited in 20 s");
    let served = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (served, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_data_directory_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (served, err) = start_on(base.path(), &data, &[]);
    assert!(!served, "tesserad served a data directory of mode 0755");
    assert!(
        err.contains(&format!("refusing the data directory {}", data.display()))
            && err.contains("mode 0755")
            && err.contains(&format!("chmod 700 {}", data.display())),
        "{err}"
    );
    // Nothing was created in it.
    assert!(!data.join("tessera.redb").exists());
    // Others are refused even with the group option.
    let (served, _) = start_on(base.path(), &data, &["--allow-group-access"]);
    assert!(!served, "--allow-group-access let others in");

    // The group: refused unless asked for, then served.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let (served, err) = start_on(base.path(), &data, &[]);
    assert!(!served && err.contains("--allow-group-access"), "{err}");
    let (served, err) = start_on(base.path(), &data, &["--allow-group-access"]);
    assert!(served, "refused with --allow-group-access: {err}");
    // The store stays the daemon's user's alone.
    assert_eq!(mode(&data.join("tessera.redb")), 0o600);
    assert_eq!(mode(&data), 0o2770, "the directory is not changed");
}
