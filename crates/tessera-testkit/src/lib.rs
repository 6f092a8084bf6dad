//! Test kit: every test owns its daemon, socket and temporary directory.
//!
//! The binaries under test are the ones `cargo build --workspace` put next to the test
//! executable (`target/<profile>/tesserad`, `target/<profile>/libtessera_pkcs11.so`).
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod etcd;
pub mod relay;
pub mod sm;

/// How a client reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The local Unix socket.
    Unix,
    /// Loopback TCP.
    Tcp,
}

/// Both transports, for tests that run over each.
pub const TRANSPORTS: [Transport; 2] = [Transport::Unix, Transport::Tcp];

/// `target/<profile>`, found from the running test executable.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the executable has a path");
    // Test binaries live in target/<profile>/deps, tools (sm-bench) in target/<profile>.
    let dir = exe.parent().expect("the executable is in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The built PKCS#11 module.
pub fn pkcs11_module() -> PathBuf {
    let path = target_dir().join("libtessera_pkcs11.so");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A built binary of the workspace.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// An external tool that the suite needs; `.ci/run` installs it.
pub fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed; .ci/run installs it (apt-get install opensc / pkcs11-provider)"
    );
}

/// Compiles the C test program `tests/c/<name>.c` (a C application that dlopens the module)
/// into `dir`, once; panics with the compiler's message if it fails. Returns the program.
/// Linked with immediate binding (`-z now`, as hardened distribution builds are): with lazy
/// binding, the dynamic linker saves the CPU's vector registers on the stack at a program's
/// first call of each function, and they hold the last bytes any `memcpy` moved — which would
/// put an application's own data on its stack whatever a library does with its buffers.
pub fn compile_c(name: &str, dir: &Path) -> PathBuf {
    let program = dir.join(name);
    if program.exists() {
        return program;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let compiled = Command::new(tool("cc"))
        .args(["-O1", "-Wl,-z,now", "-o"])
        .arg(&program)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("the C compiler runs");
    assert!(
        compiled.status.success(),
        "{} does not compile: {}",
        source.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    program
}

/// Seconds one call of `op` takes on this thread: a few calls to warm up, then as many as run
/// in 0.3 s (at least 20). The benchmarks' in-process limits.
pub fn seconds_per_call(mut op: impl FnMut()) -> f64 {
    for _ in 0..5 {
        op();
    }
    let started = Instant::now();
    let mut count = 0u32;
    while count < 20 || started.elapsed() < Duration::from_millis(300) {
        op();
        count += 1;
    }
    started.elapsed().as_secs_f64() / f64::from(count)
}

/// Field `field` of `/proc/PID/stat`, numbered as proc(5) numbers them (3 the state, 10 the
/// minor faults, 14 and 15 the user and system time in ticks); `None` when the process is gone
/// or the field is not there. The command name (field 2) is in parentheses and may hold
/// spaces: the fields are counted after its closing one.
pub fn proc_stat_field(pid: u32, field: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name
        .split_whitespace()
        .nth(field.checked_sub(3)?)
        .map(str::to_string)
}

/// The `q` quantile (0 to 1) of sorted samples, nearest rank; `None` without samples. The
/// benchmarks' p50 and p99.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((sorted.len() as f64 * q) as usize).min(last)])
}

/// Polls `done` every 20 ms until it holds or `limit` has passed; whether it held. The tests'
/// bounded waits for something another process does.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free when asked.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A daemon owned by one test.
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// Extra arguments given at every start.
    extra: Vec<String>,
    /// A shell command line that ends with what runs tesserad (`sh -c '<launcher> "$@"' sh
    /// tesserad ARGS…`, for example `umask 022; exec` or `ulimit -c unlimited; exec`), if any.
    launcher: Option<String>,
    /// Whether the daemon logs at debug level (tests read its log), or at its own default
    /// (benchmarks: a debug line per connection is work an installed daemon does not do).
    debug_log: bool,
}

impl Daemon {
    /// Starts a daemon in a fresh directory (fast PIN KDF for tests).
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon with extra command-line arguments (`--kdf-iterations` among them
    /// replaces the tests' fast default).
    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_prepared(None, |_| {}, extra).unwrap_or_else(|log| panic!("{log}"))
    }

    /// Starts a daemon for a benchmark: as [`Daemon::start_with`], but logging at the daemon's
    /// own default level (info), as an installed one does, not at the tests' debug level.
    pub fn start_for_benchmark(extra: &[&str]) -> Daemon {
        Daemon::start_for_benchmark_through(None, extra)
    }

    /// As [`Daemon::start_for_benchmark`], the daemon started through `launcher` (a shell
    /// command prefix, such as `exec valgrind --tool=callgrind`), if any.
    pub fn start_for_benchmark_through(launcher: Option<&str>, extra: &[&str]) -> Daemon {
        Daemon::start_configured(launcher, |_| {}, extra, false)
            .unwrap_or_else(|log| panic!("{log}"))
    }

    /// Starts a daemon through `launcher` (see [`Daemon`]'s field; `None`: directly) after
    /// `prepare` has run on the test's directory (where the data directory `data` is to be);
    /// `Err` is the daemon's log when it exits before it is ready. The daemon's working
    /// directory is always the test's directory (where a core file would go).
    pub fn start_prepared(
        launcher: Option<&str>,
        prepare: impl FnOnce(&Path),
        extra: &[&str],
    ) -> Result<Daemon, String> {
        Daemon::start_configured(launcher, prepare, extra, true)
    }

    fn start_configured(
        launcher: Option<&str>,
        prepare: impl FnOnce(&Path),
        extra: &[&str],
        debug_log: bool,
    ) -> Result<Daemon, String> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        prepare(dir.path());
        let mut daemon = Daemon {
            dir,
            child: None,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            launcher: launcher.map(str::to_string),
            debug_log,
        };
        // The free port may be taken by another test between its choice and the bind: then
        // another port.
        for _ in 0..5 {
            match daemon.try_spawn() {
                Ok(()) => return Ok(daemon),
                Err(log) if log.contains("cannot listen on tcp:") => daemon.port = free_port(),
                Err(log) => return Err(log),
            }
        }
        Err(format!(
            "no free loopback port for tesserad:\n{}",
            daemon.log()
        ))
    }

    /// The temporary directory of this test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The Unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("tesserad.sock")
    }

    /// The loopback TCP address.
    pub fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The value of `ET_HSM_NETCLIENT_SERVERLIST` that reaches this daemon.
    pub fn server_list(&self, transport: Transport) -> String {
        match transport {
            Transport::Unix => self.socket().display().to_string(),
            Transport::Tcp => self.tcp_address(),
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tesserad.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("{log}");
        }
    }

    /// Starts the daemon and waits until it is ready; `Err` is why it was not (with its log).
    fn try_spawn(&mut self) -> Result<(), String> {
        // Only a "ready" line written by this start counts.
        let seen = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tesserad.log"))
            .expect("a log file");
        let mut command = match &self.launcher {
            Some(launcher) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("{launcher} \"$@\""))
                    .arg("sh")
                    .arg(binary("tesserad"));
                sh
            }
            None => Command::new(binary("tesserad")),
        };
        let child = command
            .current_dir(self.dir.path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .arg("--listen")
            .arg(format!("tcp:{}", self.tcp_address()))
            // A fast PIN KDF, unless the test chose its own.
            .args(
                (!self.extra.iter().any(|a| a == "--kdf-iterations"))
                    .then_some(["--kdf-iterations", "1000"])
                    .into_iter()
                    .flatten(),
            )
            // No daemon outlives a test run that is killed before its `Drop` runs.
            .arg("--exit-with-parent")
            .args(&self.extra)
            .env("RUST_LOG", if self.debug_log { "debug" } else { "info" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tesserad starts");
        self.child = Some(child);
        // A daemon under a launcher may start slowly (valgrind: tens of seconds).
        let ready_within = Duration::from_secs(if self.launcher.is_some() { 120 } else { 20 });
        let deadline = Instant::now() + ready_within;
        while !self
            .log()
            .get(seen..)
            .unwrap_or_default()
            .contains("tesserad ready")
        {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "tesserad exited with {status} before it was ready:\n{}",
                        self.log()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tesserad was not ready in {} s:\n{}",
                    ready_within.as_secs(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's resident memory in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Limits the size of every file the running daemon writes (`prlimit --fsize`, the soft
    /// limit): a full disk, as the daemon's writes see it. `u64::MAX` lifts the limit.
    pub fn limit_file_size(&self, bytes: u64) {
        let pid = self.pid().expect("the daemon is running");
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            // The soft limit only: it can be lifted again without privileges.
            .arg(if bytes == u64::MAX {
                "--fsize=unlimited:".to_string()
            } else {
                format!("--fsize={bytes}:")
            })
            .status()
            .expect("prlimit runs");
        assert!(status.success(), "prlimit failed");
    }

    /// Waits for the daemon to exit (after a signal the test sent); its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        child.wait().expect("the daemon exits")
    }

    /// Kills the daemon with SIGKILL (`kill -9`) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
        child.wait().expect("the daemon exits")
    }

    /// Starts the daemon again, as [`Daemon::restart`]; `Err` is why it did not start (its log).
    pub fn try_restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            self.stop();
        }
        self.try_spawn()
    }

    /// Replaces the extra command-line arguments of the next starts (a device that becomes a
    /// node of a cluster, say).
    pub fn set_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the daemon again on the same directory, socket and port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }
}

/// The user-level trust store of this test's clients, and where the library reports.
impl Daemon {
    /// The trust store directory that this test's clients use.
    pub fn trust_dir(&self) -> PathBuf {
        self.dir.path().join("trust")
    }

    /// The known-devices file of this test's clients (`ET_PTKC_KNOWN_DEVICES_USER`).
    pub fn known_devices(&self) -> PathBuf {
        self.dir.path().join("known_devices")
    }

    /// The library's report file (`ET_PTKC_GENERAL_LOG`).
    pub fn client_log(&self) -> PathBuf {
        self.dir.path().join("client.log")
    }

    /// Environment for this test's clients: its own trust stores, known devices and report
    /// file.
    pub fn trust_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ET_PTKC_TRUSTSTORE_USER".into(),
                self.trust_dir().display().to_string(),
            ),
            (
                "ET_PTKC_TRUSTSTORE_SYSTEM".into(),
                self.dir.path().join("trust-system").display().to_string(),
            ),
            (
                "ET_PTKC_GENERAL_LOG".into(),
                self.client_log().display().to_string(),
            ),
            (
                "ET_PTKC_KNOWN_DEVICES_USER".into(),
                self.known_devices().display().to_string(),
            ),
            (
                "ET_PTKC_KNOWN_DEVICES_SYSTEM".into(),
                self.dir.path().join("known-system").display().to_string(),
            ),
        ]
    }

    /// Runs the real `ctident` with the Administrator PIN; panics unless it succeeds.
    pub fn ctident(&self, transport: Transport, args: &[&str]) -> String {
        let pin = self.dir().join("admin.pin");
        if !pin.exists() {
            self.admin(transport, &[]);
        }
        let pin_args = [OsStr::new("--pin-file"), pin.as_os_str()];
        self.run_tool("ctident", transport, args, &pin_args)
    }

    /// Runs an administration tool against this daemon with its trust store, asserting success;
    /// returns what it printed.
    fn run_tool(
        &self,
        program: &str,
        transport: Transport,
        args: &[&str],
        pin_args: &[&OsStr],
    ) -> String {
        let output = Command::new(binary(program))
            .envs(self.trust_env())
            .args(args)
            .args(pin_args)
            .env("ET_HSM_NETCLIENT_SERVERLIST", self.server_list(transport))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Gives the device an identity (a POC and a PIC signed by it) and puts the PIC in this
    /// test's trust store, then sets `flags` (e.g. `nuNU`).
    pub fn secure(&self, transport: Transport, flags: &str) {
        self.identify(transport, &[]);
        self.admin(transport, &[&format!("-f{flags}")]);
    }

    /// Gives the device a self-signed identity (`ctident gen-selfsigned all` with `options`,
    /// such as `--curve p521`) and trusts it.
    pub fn identify(&self, transport: Transport, options: &[&str]) {
        let generate: Vec<&str> = ["gen-selfsigned", "all"]
            .iter()
            .chain(options)
            .copied()
            .collect();
        self.ctident(transport, &generate);
        self.ctident(transport, &["trust", "add", "--from-device", "--yes"]);
    }
}

/// Trust between test devices (their identities made by [`Daemon::identify`]).
impl Daemon {
    /// This device's owner certificate, exported once to its test directory.
    fn owner_certificate(&self) -> PathBuf {
        let poc = self.dir().join("owner-poc.pem");
        if !poc.exists() {
            self.ctident(
                Transport::Unix,
                &[
                    "export",
                    "poc",
                    "--out",
                    poc.to_str().expect("a UTF-8 path"),
                ],
            );
        }
        poc
    }

    /// Makes this device trust `other` as a peer (HSM to HSM: `ctident peer add` of its owner
    /// certificate).
    pub fn trust_peer(&self, other: &Daemon) {
        let poc = other.owner_certificate();
        let poc = poc.to_str().expect("a UTF-8 path");
        self.ctident(Transport::Unix, &["peer", "add", poc, "--yes"]);
    }

    /// Makes this test's clients trust `other`'s identity too (its owner certificate in this
    /// test's trust store), so that one client reaches both devices under secure messaging.
    pub fn clients_trust(&self, other: &Daemon) {
        let poc = other.owner_certificate();
        let output = Command::new(binary("ctident"))
            .envs(self.trust_env())
            .args(["trust", "add", poc.to_str().expect("a UTF-8 path"), "--yes"])
            .stdin(Stdio::null())
            .output()
            .expect("ctident runs");
        assert!(
            output.status.success(),
            "ctident trust add: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The Administrator PIN that [`Daemon::admin`] sets up.
pub const ADMIN_PIN: &str = "admin-pin-1234";

impl Daemon {
    /// Runs the real `ctconf` against this daemon with the Administrator PIN file, setting up
    /// the Admin token first if needed; panics unless it succeeds. Returns standard output.
    pub fn admin(&self, transport: Transport, args: &[&str]) -> String {
        let pin = self.dir().join("admin.pin");
        if !pin.exists() {
            std::fs::write(&pin, format!("{ADMIN_PIN}\n")).expect("a PIN file");
            std::fs::write(self.dir().join("aso.pin"), "aso-pin-1234\n").expect("a PIN file");
        }
        let aso = self.dir().join("aso.pin");
        let pin_args = [
            OsStr::new("--pin-file"),
            pin.as_os_str(),
            OsStr::new("--aso-pin-file"),
            aso.as_os_str(),
            OsStr::new("--admin-pin-file"),
            pin.as_os_str(),
        ];
        self.run_tool("ctconf", transport, args, &pin_args)
    }

    /// The device's serial number, as `ctconf` shows it.
    pub fn serial(&self, transport: Transport) -> String {
        self.admin(transport, &[])
            .lines()
            .find(|l| l.starts_with("Serial Number"))
            .and_then(|l| l.split(": ").nth(1))
            .expect("ctconf shows the serial number")
            .trim()
            .to_string()
    }
}

/// OpenSSL's pkcs11-provider (Debian's path).
pub const OPENSSL_PROVIDER: &str = "/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so";

/// Writes `dir/openssl.cnf`, which loads the default provider and pkcs11-provider over this
/// build's PKCS#11 module with the user PIN 12345678, and returns its path.
pub fn openssl_provider_config(dir: &Path) -> PathBuf {
    assert!(
        Path::new(OPENSSL_PROVIDER).exists(),
        "{OPENSSL_PROVIDER} is missing; .ci/run installs pkcs11-provider"
    );
    let config = dir.join("openssl.cnf");
    std::fs::write(
        &config,
        format!(
            "openssl_conf = openssl_init\n\
             [openssl_init]\nproviders = provider_sect\n\
             [provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\
             [default_sect]\nactivate = 1\n\
             [pkcs11_sect]\nmodule = {OPENSSL_PROVIDER}\npkcs11-module-path = {}\n\
             pkcs11-module-token-pin = 12345678\nactivate = 1\n",
            pkcs11_module().display()
        ),
    )
    .expect("an OpenSSL configuration");
    config
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
