//! The "Enable secure messaging" procedure of README.md and docs/secure-messaging.md, run as
//! written: the steps are read from the Markdown (the marker convention is in
//! `procedure_kit/markdown.rs` and in the docs' "How these steps are tested"), not copied, so
//! that an edited command in the docs is the command that runs.
//!
//! Each run has a fresh test-kit daemon and a sandbox: per host (`hsm`, and `client` for the
//! network device) a `HOME`, an `XDG_RUNTIME_DIR` and a working directory in a temporary
//! directory, and the system-level configuration file, trust store and known devices pointed
//! at temporary paths, so that the real `~/.config/tessera` and `/etc/tessera` are never read
//! or written. What the test substitutes is only what depends on the site: the values of the
//! variables the docs' `env` blocks set (the built binaries on `PATH`, the module in `M`, the
//! daemon's loopback address), and the daemon's data directory and TCP port. The PINs are typed
//! at the tools' prompts; `ctident trust add` is answered `yes` only if the fingerprint it shows
//! is the one the HSM host printed earlier, as the docs tell the operator.

mod procedure_kit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use procedure_kit::markdown::{self, Block, Kind};
use procedure_kit::terminal;
use tessera_testkit::{pkcs11_module, target_dir, Daemon};

const ASO_PIN: &str = "aso-pin-2468";
const ADMIN_PIN: &str = "admin-pin-1357";
const SO_PIN: &str = "so-pin-9753";

/// The prompts of the tools that the procedure meets, and what the operator types.
const PROMPTS: [&str; 8] = [
    "New ASO PIN:",
    "Confirm ASO PIN:",
    "New Administrator PIN:",
    "Confirm Administrator PIN:",
    "Administrator PIN:",
    "New token SO PIN:",
    "Confirm token SO PIN:",
    CONFIRM,
];

/// The question of `ctident trust add` (and other confirmations).
const CONFIRM: &str = "Type 'yes' to go on:";

/// How long one step may take (a P-521 key pair and PBKDF2 in a debug build, on a shared
/// machine).
const STEP_LIMIT: Duration = Duration::from_secs(180);

/// A step that did not do what its docs say.
#[derive(Debug)]
struct StepFailed {
    /// The marker's line in the Markdown file.
    line: usize,
    message: String,
    /// What the step printed, if it ran.
    screen: String,
}

impl StepFailed {
    /// A block that is wrong before anything runs.
    fn at(block: &Block, message: String) -> StepFailed {
        StepFailed {
            line: block.line,
            message,
            screen: String::new(),
        }
    }
}

/// One machine of the procedure: its runtime directory, working directory and environment
/// (its own `HOME` among the variables).
struct Host {
    runtime: PathBuf,
    work: PathBuf,
    env: Vec<(String, String)>,
}

/// A procedure that ran to its end, for the test's own checks afterwards.
struct Ran {
    _daemon: Daemon,
    sandbox: tempfile::TempDir,
}

impl Ran {
    /// The `.pem` files of a host's user trust store (the default path under its `HOME`).
    fn trusted(&self, host: &str) -> Vec<PathBuf> {
        let dir = self
            .sandbox
            .path()
            .join(host)
            .join("home/.config/tessera/trust");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|e| e == "pem"));
        found
    }

    fn work(&self, host: &str) -> PathBuf {
        self.sandbox.path().join(host).join("work")
    }
}

fn repository_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The marked blocks of `file` that belong to `procedure`.
fn procedure_blocks(file: &str, procedure: &str) -> Vec<Block> {
    let blocks = markdown::blocks(&repository_file(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mine: Vec<Block> = blocks
        .into_iter()
        .filter(|b| b.in_procedure(procedure))
        .collect();
    assert!(
        mine.iter().filter(|b| b.kind == Kind::Run).count() >= 2,
        "{file} has no {procedure} procedure (marked steps) to run"
    );
    mine
}

/// Runs the `procedure` steps of `file`, after `edit` (which a test uses to put the steps in
/// another order).
fn run_procedure(
    file: &str,
    procedure: &str,
    edit: impl FnOnce(&mut Vec<Block>),
) -> Result<Ran, StepFailed> {
    let mut blocks = procedure_blocks(file, procedure);
    edit(&mut blocks);
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let system = sandbox.path().join("system");
    std::fs::create_dir(&system).unwrap();
    // For a local device the client is the HSM host.
    let host_of = |name: &str| if procedure == "local" { "hsm" } else { name }.to_string();
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    for name in ["hsm", "client"].map(host_of) {
        if !hosts.contains_key(&name) {
            hosts.insert(name.clone(), new_host(sandbox.path(), &name, &system));
        }
    }

    // The daemon: the test kit's, with the documented command's sockets and options.
    let daemon_lines: Vec<&Block> = blocks.iter().filter(|b| b.kind == Kind::Daemon).collect();
    let [daemon_line] = daemon_lines[..] else {
        panic!("{file}: the {procedure} procedure needs exactly one daemon block");
    };
    let extra = daemon_arguments(daemon_line, &hosts["hsm"], procedure == "network")?;
    let daemon = Daemon::start_with(&extra.iter().map(String::as_str).collect::<Vec<_>>());

    // The site's values, for the variables the env blocks set on each host.
    for block in blocks.iter().filter(|b| b.kind == Kind::Env) {
        let names = markdown::assignments(&block.text).map_err(|e| StepFailed::at(block, e))?;
        for host in block.hosts.iter().map(|h| host_of(h)) {
            let host = hosts.get_mut(&host).expect("a host of this procedure");
            for name in &names {
                let value = site_value(name, procedure, &daemon, host).ok_or_else(|| {
                    StepFailed::at(
                        block,
                        format!(
                            "the docs set {name}, which the test cannot give a value (it gives \
                             PATH, M, ET_HSM_NETCLIENT_SERVERLIST): teach site_value"
                        ),
                    )
                })?;
                host.env.retain(|(k, _)| k != name);
                host.env.push((name.clone(), value));
            }
        }
    }

    let mut fingerprint: Option<String> = None;
    for (index, block) in blocks.iter().filter(|b| b.kind == Kind::Run).enumerate() {
        let mut on: Vec<String> = block.hosts.iter().map(|h| host_of(h)).collect();
        on.dedup();
        for name in on {
            let script = sandbox.path().join(format!("step-{index}-{name}.sh"));
            std::fs::write(&script, &block.text).unwrap();
            let screen = run_step(&script, &hosts[&name], fingerprint.as_deref())
                .and_then(|screen| {
                    let check = block.expect.as_deref().unwrap_or_default();
                    markdown::check(&screen, check).map_err(|e| (e, screen.clone()))?;
                    Ok(screen)
                })
                .map_err(|(message, screen)| StepFailed {
                    line: block.line,
                    message: format!(
                        "{file} line {}, on the {name} host:\n{}\n{message}; the screen:\n{screen}\n\
                         the daemon's log ends:\n{}",
                        block.line,
                        block.text,
                        tail(&daemon.log(), 15)
                    ),
                    screen,
                })?;
            // What the HSM host shows is the operator's reference for the fingerprint.
            if name == "hsm" {
                if let Some(shown) = pic_fingerprint(&screen) {
                    fingerprint = Some(shown);
                }
            }
        }
    }
    Ok(Ran {
        _daemon: daemon,
        sandbox,
    })
}

/// Runs one step's script on `host`'s terminal, answering the prompts; its screen, or why it
/// failed with the screen so far.
fn run_step(
    script: &Path,
    host: &Host,
    fingerprint: Option<&str>,
) -> Result<String, (String, String)> {
    let (mut refusal, mut compared) = (None, 0);
    let screen = terminal::run(
        script,
        &host.work,
        &host.env,
        &PROMPTS,
        |prompt, screen| {
            compared += usize::from(prompt == CONFIRM);
            answer(prompt, screen, fingerprint, &mut refusal)
        },
        STEP_LIMIT,
    )
    .map_err(|e| (e, String::new()))?;
    if let Some(refusal) = refusal {
        return Err((refusal, screen.text));
    }
    if !screen.status.success() {
        return Err((format!("it failed ({})", screen.status), screen.text));
    }
    // Trust is given after the operator compared the fingerprint, never blindly.
    let text = std::fs::read_to_string(script).unwrap_or_default();
    let trusts = text.matches("ctident trust add").count();
    if compared < trusts {
        return Err((
            format!(
                "ctident trust add did not ask to confirm ({compared} of {trusts}): the docs \
                 must not skip the comparison of the fingerprint (--yes)"
            ),
            screen.text,
        ));
    }
    Ok(screen.text)
}

fn new_host(sandbox: &Path, name: &str, system: &Path) -> Host {
    use std::os::unix::fs::PermissionsExt;
    let root = sandbox.join(name);
    let (home, runtime, work) = (root.join("home"), root.join("run"), root.join("work"));
    for dir in [&home, &runtime, &work] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let path = |p: &Path| p.display().to_string();
    let env = vec![
        ("HOME".into(), path(&home)),
        ("XDG_RUNTIME_DIR".into(), path(&runtime)),
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("TERM".into(), "dumb".into()),
        // The system level, which the docs leave at its default, is the sandbox's.
        ("TESSERA_SYSTEM_CONFIG".into(), path(&system.join("et_hsm"))),
        (
            "ET_PTKC_TRUSTSTORE_SYSTEM".into(),
            path(&system.join("trust")),
        ),
        (
            "ET_PTKC_KNOWN_DEVICES_SYSTEM".into(),
            path(&system.join("known_devices")),
        ),
    ];
    Host { runtime, work, env }
}

/// The test's value for a variable that the docs' env blocks set.
fn site_value(name: &str, procedure: &str, daemon: &Daemon, host: &Host) -> Option<String> {
    match name {
        "PATH" => Some(format!("{}:/usr/bin:/bin", target_dir().display())),
        "M" => Some(pkcs11_module().display().to_string()),
        "ET_HSM_NETCLIENT_SERVERLIST" if procedure == "network" => Some(daemon.tcp_address()),
        "ET_HSM_NETCLIENT_SERVERLIST" => Some(default_socket(host).display().to_string()),
        _ => None,
    }
}

/// Where tesserad and the library put the socket when none is named.
fn default_socket(host: &Host) -> PathBuf {
    host.runtime.join("tessera/tesserad.sock")
}

/// The test kit's extra arguments for the documented daemon command: its `unix:` sockets and
/// its other options; its `tcp:` addresses are the kit's own loopback port, and its data
/// directory the kit's. A command without a `unix:` address gets the default socket, as
/// tesserad does (`--listen tcp:...` serves beside the default socket; a `unix:` address
/// replaces it).
fn daemon_arguments(block: &Block, hsm: &Host, network: bool) -> Result<Vec<String>, StepFailed> {
    let failed = |message: String| StepFailed::at(block, message);
    // The command as written, expanded by the shell on the HSM host; `tesserad` only prints
    // its arguments.
    let script = format!(
        "tesserad() {{ echo tesserad; for a; do printf '%s\\n' \"$a\"; done; }}\n{}",
        block.text
    );
    let output = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .env_clear()
        .envs(hsm.env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "the daemon's line fails in sh: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let words: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if words.first().map(String::as_str) != Some("tesserad") {
        return Err(failed("the daemon's block does not run tesserad".into()));
    }
    let (mut extra, mut sockets, mut tcp) = (Vec::new(), 0, false);
    let mut words = words.into_iter().skip(1);
    while let Some(word) = words.next() {
        let (option, value) = match word.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (word.clone(), None),
        };
        match option.as_str() {
            "--listen" | "--data-dir" => {
                let value = value.or_else(|| words.next()).ok_or_else(|| {
                    failed(format!("{option} without a value in the daemon's line"))
                })?;
                if option == "--data-dir" {
                    continue;
                }
                if let Some(path) = value.strip_prefix("unix:") {
                    sockets += 1;
                    extra.extend(["--listen".to_string(), format!("unix:{path}")]);
                } else if value.starts_with("tcp:") {
                    tcp = true;
                } else {
                    return Err(failed(format!("unknown --listen address {value}")));
                }
            }
            _ => extra.push(word),
        }
    }
    if sockets == 0 {
        extra.extend([
            "--listen".to_string(),
            format!("unix:{}", default_socket(hsm).display()),
        ]);
    }
    if network != tcp {
        return Err(failed(format!(
            "the daemon's line {} TCP, for a {} device",
            if tcp {
                "listens on"
            } else {
                "does not listen on"
            },
            if network { "network" } else { "local" }
        )));
    }
    Ok(extra)
}

/// What the operator types at `prompt`. The trust question is answered `yes` only when the
/// screen shows the fingerprint that the HSM host printed; otherwise `no`, and `refusal` says
/// why.
fn answer(
    prompt: &str,
    screen: &str,
    fingerprint: Option<&str>,
    refusal: &mut Option<String>,
) -> String {
    let typed = match prompt {
        "New ASO PIN:" | "Confirm ASO PIN:" => ASO_PIN,
        "New token SO PIN:" | "Confirm token SO PIN:" => SO_PIN,
        CONFIRM => match fingerprint {
            Some(fp) if screen.contains(&format!("SHA-256 {fp}")) => "yes",
            Some(fp) => {
                *refusal = Some(format!(
                    "the certificate to trust does not show the fingerprint {fp} that the HSM host printed"
                ));
                "no"
            }
            None => {
                *refusal = Some(
                    "asked to trust before the HSM host printed the fingerprint to compare \
                     (`PIC SHA-256 …`)"
                        .into(),
                );
                "no"
            }
        },
        _ => ADMIN_PIN,
    };
    typed.to_string()
}

/// The PIC fingerprint in `Identity : present, PIC SHA-256 AA:BB:…`.
fn pic_fingerprint(screen: &str) -> Option<String> {
    let at = screen.rfind("PIC SHA-256 ")? + "PIC SHA-256 ".len();
    let fingerprint: String = screen[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
        .collect();
    (fingerprint.len() == 95).then_some(fingerprint)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Names, sizes and modification times under the real `~/.config/tessera` of the user running
/// the tests.
fn real_config_snapshot() -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn walk(dir: &Path, found: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                found.push((path.clone(), meta.len(), meta.modified().ok()));
                if meta.is_dir() {
                    walk(&path, found);
                }
            }
        }
    }
    let mut found = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        walk(&Path::new(&home).join(".config/tessera"), &mut found);
    }
    found.sort();
    found
}

fn run_as_documented(file: &str, procedure: &str) -> Ran {
    let before = real_config_snapshot();
    let ran = run_procedure(file, procedure, |_| {})
        .unwrap_or_else(|failed| panic!("{}", failed.message));
    assert_eq!(
        before,
        real_config_snapshot(),
        "the procedure touched the real ~/.config/tessera"
    );
    ran
}

#[test]
fn the_readme_steps_enable_secure_messaging_on_a_local_device() {
    let ran = run_as_documented("README.md", "local");
    assert_eq!(ran.trusted("hsm").len(), 1, "the sandbox's trust store");
}

#[test]
fn the_documented_steps_enable_secure_messaging_on_a_local_device() {
    let ran = run_as_documented("docs/secure-messaging.md", "local");
    assert_eq!(ran.trusted("hsm").len(), 1, "the sandbox's trust store");
    assert_eq!(
        std::fs::metadata(ran.work("hsm").join("random.bin"))
            .map(|m| m.len())
            .ok(),
        Some(16),
        "the application's call through the channel"
    );
}

#[test]
fn the_documented_steps_enable_secure_messaging_on_a_network_device() {
    let ran = run_as_documented("docs/secure-messaging.md", "network");
    // Each machine trusts the device in its own store.
    assert_eq!(ran.trusted("hsm").len(), 1);
    assert_eq!(ran.trusted("client").len(), 1);
    assert_eq!(
        std::fs::metadata(ran.work("client").join("random.bin"))
            .map(|m| m.len())
            .ok(),
        Some(16),
        "the application's call through the channel"
    );
}

/// The order is what keeps the Administrator in: with the flags set before the HSM host trusts
/// the device, the documented flags step does not pass (today its `ctconf -v` cannot build a
/// channel; once `ctconf -f` checks trust first, the flags are refused). This also shows that
/// a failing step fails the test.
#[test]
fn flags_before_trust_fail_at_the_flags_step() {
    let is_trust = |b: &Block| b.kind == Kind::Run && b.text.contains("ctident trust add");
    let is_flags = |b: &Block| b.kind == Kind::Run && b.text.contains("ctconf -f");
    let flags_line = procedure_blocks("docs/secure-messaging.md", "local")
        .into_iter()
        .find(is_flags)
        .expect("a flags step")
        .line;
    let failed = run_procedure("docs/secure-messaging.md", "local", |blocks| {
        let trust = blocks.iter().position(is_trust).expect("a trust step");
        let trust = blocks.remove(trust);
        let flags = blocks.iter().position(is_flags).expect("a flags step");
        blocks.insert(flags + 1, trust);
    })
    .err()
    .expect("the steps in the wrong order fail");
    assert_eq!(failed.line, flags_line, "{}", failed.message);
    // The Administrator's own ctconf is the one that cannot reach the device.
    assert!(failed.screen.contains("trust"), "{}", failed.message);
}
