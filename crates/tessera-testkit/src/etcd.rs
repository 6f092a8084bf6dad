//! A real etcd cluster for one test: members of Debian's `etcd` (package `etcd-server`) on
//! loopback ports, in the test's temporary directory, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of its own.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Client TLS: the server certificate and key, and the CA that client certificates must
    /// chain to (`--client-cert-auth`).
    tls: Option<Tls>,
}

/// The files of an etcd that serves its clients over TLS and asks them for a certificate.
#[derive(Clone)]
pub struct Tls {
    /// The CA (PEM) of the server's and the clients' certificates.
    pub ca: PathBuf,
    /// The server's certificate (PEM, for 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The etcd server binary.
pub fn binary() -> PathBuf {
    PathBuf::from(std::env::var("TESSERA_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into()))
}

impl Etcd {
    /// Starts `count` members and waits until the cluster answers (a leader is elected).
    pub fn start(count: usize) -> Etcd {
        Etcd::start_with(count, None)
    }

    /// Starts `count` members; with `tls`, clients reach them over TLS with a certificate.
    pub fn start_with(count: usize, tls: Option<Tls>) -> Etcd {
        assert!(
            binary().exists(),
            "etcd is not installed at {} (Debian package etcd-server; .ci/run installs it)",
            binary().display()
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                child: None,
            })
            .collect();
        let mut etcd = Etcd { dir, members, tls };
        for i in 0..count {
            etcd.spawn(i);
        }
        etcd.wait_ready(Duration::from_secs(30));
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn member_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(&self.members[index].name)
    }

    fn spawn(&mut self, index: usize) {
        let cluster = self.initial_cluster();
        let data = self.member_dir(index);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[index].name)),
            )
            .expect("a log file");
        let m = &self.members[index];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls_args: Vec<String> = match &self.tls {
            Some(tls) => vec![
                "--cert-file".into(),
                tls.cert.display().to_string(),
                "--key-file".into(),
                tls.key.display().to_string(),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                tls.ca.display().to_string(),
            ],
            None => Vec::new(),
        };
        let child = Command::new(binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", m.client_port))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", m.client_port))
            .args(tls_args)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-cluster")
            .arg(cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("tessera-test")
            // Quicker elections than the defaults, for a loopback cluster.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[index].child = Some(child);
    }

    /// Waits until a write through the cluster's HTTP gateway succeeds on every running
    /// member (a leader is elected and the members agree).
    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let ready = || match &self.tls {
                // Over TLS, the member's log says when it serves its clients.
                Some(_) => {
                    self.log(&m.name)
                        .contains("serving client traffic securely")
                        || self.log(&m.name).contains("ready to serve client requests")
                }
                None => health(m.client_port),
            };
            while !ready() {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} was not healthy in {} s: {}",
                    m.name,
                    limit.as_secs(),
                    self.log(&m.name)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// A member's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The client endpoints of all members, comma-separated (for `tesserad --etcd`).
    pub fn endpoints(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `index` with SIGKILL.
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data and waits until it is healthy.
    pub fn restart(&mut self, index: usize) {
        self.kill9(index);
        // A restarted member finds its data directory and ignores the initial cluster flags.
        self.spawn(index);
        self.wait_ready(Duration::from_secs(30));
    }

    /// The members' data directories (to scan what etcd keeps on disk).
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        (0..self.members.len())
            .map(|i| self.member_dir(i))
            .collect()
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether the member on `port` reports itself healthy (`GET /health`: a leader and a
/// committed read).
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"") || answer.contains("\"health\": \"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
