//! The README's network example, run as written: `tesserad --listen tcp:...` serves the network
//! in addition to the default local socket, so `ctconf` without a server list still finds the
//! device, and a network client finds the same device. A `unix:` address replaces the default
//! socket (the operator chose where the local socket is).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tessera_testkit::{binary, wait_until};

/// The daemon's arguments in the README's "serve the network too" command, with `port` for
/// 12396 (another test or daemon may hold that one).
fn readme_network_arguments(port: u16) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let at = readme
        .find("./target/release/tesserad --listen")
        .expect("the README shows how to serve the network");
    let command = readme[at..].split('`').next().unwrap();
    command
        .split_whitespace()
        .skip(1)
        .map(|arg| arg.replace("12396", &port.to_string()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Started {
    child: Child,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tesserad in `dir` with `args` and the runtime directory `dir/run` (where the default
/// socket goes); waits until it is ready.
fn start(dir: &Path, args: &[String]) -> Started {
    let log = dir.join("tesserad.log");
    let child = Command::new(binary("tesserad"))
        .args(args)
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--kdf-iterations", "1000", "--exit-with-parent"])
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Started { child };
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("tesserad ready")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    started
}

/// `ctconf` as an operator on this machine runs it: no configuration but `servers` (unset:
/// the default socket, under `dir/run`).
fn ctconf(dir: &Path, servers: Option<&str>) -> Output {
    let mut command = Command::new(binary("ctconf"));
    command
        .env_remove("ET_HSM_NETCLIENT_SERVERLIST")
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("TESSERA_USER_CONFIG", dir.join("none"))
        .env("TESSERA_SYSTEM_CONFIG", dir.join("none"))
        .env("ET_PTKC_GENERAL_LOG", dir.join("client.log"))
        .stdin(Stdio::null());
    if let Some(servers) = servers {
        command.env("ET_HSM_NETCLIENT_SERVERLIST", servers);
    }
    command.output().unwrap()
}

fn serial(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Serial Number"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim_start_matches([' ', ':'])
        .to_string()
}

#[test]
fn the_readme_network_example_keeps_the_default_local_socket() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let port = free_port();
    let args = readme_network_arguments(port);
    assert!(
        args.iter().all(|a| !a.starts_with("unix:")),
        "the README example names a unix socket: {args:?}"
    );
    let _daemon = start(dir.path(), &args);
    assert!(dir.path().join("run/tessera/tesserad.sock").exists());
    let local = serial(&ctconf(dir.path(), None));
    let network = serial(&ctconf(dir.path(), Some(&format!("127.0.0.1:{port}"))));
    assert_eq!(local, network);
}

#[test]
fn a_unix_address_replaces_the_default_socket() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    std::fs::create_dir(dir.path().join("own")).unwrap();
    let own = dir.path().join("own/t.sock");
    let port = free_port();
    let _daemon = start(
        dir.path(),
        &[
            format!("--listen=unix:{}", own.display()),
            format!("--listen=tcp:127.0.0.1:{port}"),
        ],
    );
    assert!(own.exists());
    assert!(!dir.path().join("run/tessera/tesserad.sock").exists());
    let out = ctconf(dir.path(), Some(own.to_str().unwrap()));
    serial(&out);
}
