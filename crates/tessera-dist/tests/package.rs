//! The Debian package, installed, upgraded, removed and purged in a throw-away root with
//! `dpkg --root` (maintainer scripts run chrootless with DPKG_ROOT, as Debian's own
//! DPKG_ROOT support does): the account and the data directory with their modes, the daemon
//! started from the installed files as the unit starts it (as the `tessera` user), reached by a
//! member of the `tessera` group and refused to anyone else, p11-kit finding the library by
//! the packaged module file (`p11-kit list-modules`, `p11tool --list-tokens` without
//! `--provider`, OpenSSL's pkcs11-provider through the p11-kit proxy signing by URI alone),
//! the device kept across an upgrade and a removal, erased by a purge; and the units clean
//! under `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tessera_testkit::{target_dir, tool, wait_until, OPENSSL_PROVIDER};

/// The unit's account, as the package's sysusers file creates it in a fresh root.
fn account(root: &Path) -> (u32, u32) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("the root's passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("tessera:"))
        .unwrap_or_else(|| panic!("no tessera account in the root's passwd:\n{passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[6], "/usr/sbin/nologin", "{line}");
    assert_eq!(fields[5], "/var/lib/tessera", "{line}");
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Builds the package at `version` from this build's binaries.
fn package(out: &Path, version: &str) -> PathBuf {
    let output = run(Command::new(env!("CARGO_BIN_EXE_tessera-dist"))
        .args([
            "deb",
            "--compression",
            "none",
            "--version",
            version,
            "--binaries",
        ])
        .arg(target_dir())
        .arg("--out")
        .arg(out));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let path = PathBuf::from(stdout.lines().last().expect("the package's path").trim());
    assert!(path.is_file(), "{stdout}");
    path
}

fn dpkg(root: &Path, args: &[&str], package: Option<&Path>) -> String {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args);
    if let Some(package) = package {
        command.arg(package);
    }
    text(run(&mut command))
}

fn status(root: &Path) -> String {
    text(
        Command::new("dpkg-query")
            .arg(format!("--root={}", root.display()))
            .args(["-W", "-f", "${Status} ${Version}", "tessera"])
            .output()
            .unwrap(),
    )
}

/// The installed daemon, started with a unit's own `ExecStart` and `Environment` (paths moved
/// into the root) as the unit's user and group, in a network namespace of its own (the
/// appliance binds 0.0.0.0:12396 by default; the local socket is reached through the file
/// system); killed on drop.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Service {
    fn start(root: &Path, name: &str) -> Service {
        let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(name))
            .expect("the unit");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit's ExecStart");
        let (uid, gid) = account(root);
        let run_dir = root.join("run/tessera");
        // What RuntimeDirectory= and RuntimeDirectoryMode= make.
        let run_mode = unit
            .lines()
            .find_map(|l| l.strip_prefix("RuntimeDirectoryMode="))
            .map(|m| u32::from_str_radix(m, 8).expect("an octal mode"))
            .expect("the unit's RuntimeDirectoryMode");
        std::fs::create_dir_all(&run_dir).unwrap();
        chown_mode(&run_dir, uid, gid, run_mode);
        let mut argv: Vec<String> = Vec::new();
        for word in exec.split_whitespace() {
            match word {
                "$TESSERAD_OPTS" => argv
                    .extend(["--kdf-iterations", "1000", "--exit-with-parent"].map(String::from)),
                word if word.starts_with('/') => argv.push(format!("{}{word}", root.display())),
                word => argv.push(word.replace("unix:/", &format!("unix:{}/", root.display()))),
            }
        }
        let environment: Vec<(String, String)> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|e| e.split_once('='))
            .map(|(name, value)| match value.starts_with('/') {
                true => (name.to_string(), format!("{}{value}", root.display())),
                false => (name.to_string(), value.to_string()),
            })
            .collect();
        let child = Command::new(tool("unshare"))
            .arg("--net")
            .arg(tool("setpriv"))
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .args(&argv)
            .env("HOME", root.join("var/lib/tessera"))
            .env_remove("XDG_RUNTIME_DIR")
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("../tesserad.log")).unwrap())
            .spawn()
            .expect("the installed tesserad starts");
        let socket = run_dir.join("tesserad.sock");
        let mut service = Service { child, socket };
        assert!(
            wait_until(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&service.socket).is_ok()
            }),
            "the installed tesserad did not serve {}:\n{}",
            service.socket.display(),
            std::fs::read_to_string(root.join("../tesserad.log")).unwrap_or_default()
        );
        assert!(service.child.try_wait().unwrap().is_none());
        service
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chown_mode(path: &Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// This build's multiarch triplet.
fn multiarch() -> &'static str {
    tessera_dist::deb::architecture().unwrap().1
}

/// The application's user of the test (no such account is needed).
const APP_UID: u32 = 4242;

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

/// The client side of the test: the installed library and the packaged configuration, with
/// the paths moved into the root, and a home whose p11-kit user configuration holds the
/// packaged module file.
struct Client {
    gid: u32,
    home: PathBuf,
    library: PathBuf,
    env: Vec<(String, String)>,
}

impl Client {
    fn new(root: &Path, home: PathBuf) -> Client {
        let (uid, gid) = account(root);
        let module = std::fs::read_to_string(root.join("usr/share/p11-kit/modules/tessera.module"))
            .expect("the packaged p11-kit module file");
        // The packaged file names the library by its file name: p11-kit loads it from its
        // module directory, where the package put it (Debian's p11-kit looks in
        // /usr/lib/<multiarch>/pkcs11).
        let (_, multiarch) = tessera_dist::deb::architecture().unwrap();
        assert!(
            module.lines().any(|l| l == "module: libtessera_pkcs11.so"),
            "{module}"
        );
        let library = root
            .join("usr/lib")
            .join(multiarch)
            .join("pkcs11/libtessera_pkcs11.so");
        assert!(library.is_file());
        // In the test the same file goes to the user's p11-kit configuration, naming the
        // installed library by its path in the root (the system's p11-kit directory is not
        // the test's to write).
        let config = home.join(".config/pkcs11/modules");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("tessera.module"),
            module.replace(
                "module: libtessera_pkcs11.so",
                &format!("module: {}", library.display()),
            ),
        )
        .unwrap();
        // The packaged client configuration, with the socket moved into the root.
        let et_hsm = std::fs::read_to_string(root.join("etc/default/et_hsm")).unwrap();
        let mut env = vec![("HOME".to_string(), home.display().to_string())];
        for line in et_hsm
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
        {
            let (name, value) = line.split_once('=').unwrap();
            let value = match name {
                "ET_HSM_NETCLIENT_SERVERLIST" => format!("{}{value}", root.display()),
                // The test's host has no tessera account: its uid.
                "ET_HSM_NETCLIENT_SERVER_USER" => uid.to_string(),
                _ => value.to_string(),
            };
            env.push((name.to_string(), value));
        }
        assert_eq!(env.len(), 3, "{et_hsm}");
        chown_tree(&home, APP_UID);
        Client {
            gid,
            home,
            library,
            env,
        }
    }

    /// `program` run as an application's user (uid 4242, not root: p11-kit reads no user
    /// configuration for root) with the given supplementary groups.
    fn command_in(&self, groups: &str, program: &str) -> Command {
        let mut command = Command::new(tool("setpriv"));
        command
            .args([
                &format!("--reuid={APP_UID}"),
                &format!("--regid={APP_UID}"),
                groups,
            ])
            .arg(tool(program));
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.env("TESSERA_USER_CONFIG", self.home.join("none"));
        command.env("TESSERA_SYSTEM_CONFIG", self.home.join("none"));
        command
    }

    /// `program` run by a member of the tessera group.
    fn command(&self, program: &str) -> Command {
        self.command_in(&format!("--groups={}", self.gid), program)
    }

    fn pkcs11_tool(&self, args: &[&str]) -> String {
        text(run(self
            .command("pkcs11-tool")
            .arg("--module")
            .arg(&self.library)
            .args(args)))
    }
}

#[test]
fn the_package_installs_upgrades_and_purges_in_a_throwaway_root() {
    let work = tempfile::tempdir().unwrap();
    let version_1 = package(&work.path().join("v1"), "0.1.0-1");
    let version_2 = package(&work.path().join("v2"), "0.1.0-2");
    let contents = text(run(Command::new("dpkg-deb").arg("-c").arg(&version_1)));
    for path in [
        "./usr/sbin/tesserad",
        "./usr/bin/ctconf",
        "./usr/bin/ctident",
        "./usr/bin/ctkmu",
        "./usr/bin/psesh",
        "./usr/share/p11-kit/modules/tessera.module",
        "./usr/lib/systemd/system/tessera.service",
        "./usr/lib/systemd/system/tessera-appliance.service",
        "./usr/share/man/man8/tesserad.8.gz",
        "./usr/share/man/man1/ctident-trust-add.1.gz",
        "./usr/share/bash-completion/completions/ctconf",
        "./usr/share/zsh/vendor-completions/_ctident",
        "./usr/share/fish/vendor_completions.d/psesh.fish",
    ] {
        assert!(
            contents.contains(path),
            "{path} is not in the package:\n{contents}"
        );
    }
    let library = format!("./usr/lib/{}/pkcs11/libtessera_pkcs11.so", multiarch());
    assert!(contents.contains(&library), "{contents}");
    assert!(
        !contents.contains("bench"),
        "the bench binaries stay out of the package:\n{contents}"
    );

    // A throw-away root with an empty dpkg database; other users must be able to reach in
    // (the daemon runs as the package's account).
    let root = work.path().join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    chown_mode(work.path(), 0, 0, 0o755);
    chown_mode(&root, 0, 0, 0o755);

    dpkg(&root, &["--install"], Some(&version_1));
    assert_eq!(status(&root), "install ok installed 0.1.0-1");
    let (uid, gid) = account(&root);
    assert_ne!(uid, 0);
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("tessera:x:{gid}:"))),
        "{group}"
    );
    let data = root.join("var/lib/tessera");
    assert_eq!(
        mode_and_owner(&data),
        (0o700, uid, gid),
        "the data directory"
    );
    assert!(text(run(
        Command::new(root.join("usr/sbin/tesserad")).arg("--version")
    ))
    .starts_with("tesserad "));

    // The daemon as the unit runs it; a token made through the installed library.
    let service = Service::start(&root, "tessera.service");
    let home = work.path().join("home");
    let client = Client::new(&root, home.clone());
    client.pkcs11_tool(&[
        "--slot-index",
        "0",
        "--init-token",
        "--label",
        "pkgtest",
        "--so-pin",
        "87654321",
    ]);
    client.pkcs11_tool(&[
        "--token-label",
        "pkgtest",
        "--login",
        "--login-type",
        "so",
        "--so-pin",
        "87654321",
        "--init-pin",
        "--pin",
        "12345678",
    ]);
    client.pkcs11_tool(&[
        "--token-label",
        "pkgtest",
        "--login",
        "--pin",
        "12345678",
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "0b",
        "--label",
        "pkg-ec",
        "--usage-sign",
    ]);
    // The store is the daemon's alone, in the directory the package made.
    assert_eq!(mode_and_owner(&data.join("tessera.redb")).0, 0o600);
    assert_eq!(mode_and_owner(&data.join("tessera.redb")).1, uid);

    // Who may use the device: the tessera group (the socket is 0660 in a 0750 directory).
    let as_user = |groups: &str| {
        let mut command = client.command_in(groups, "pkcs11-tool");
        command
            .arg("--module")
            .arg(&client.library)
            .arg("--list-token-slots");
        text(command.output().unwrap())
    };
    let member = as_user(&format!("--groups={gid}"));
    assert!(
        member.contains("pkgtest"),
        "a member of the tessera group:\n{member}"
    );
    let stranger = as_user("--clear-groups");
    assert!(
        !stranger.contains("pkgtest"),
        "a user outside the tessera group reached the device:\n{stranger}"
    );

    // p11-kit: the module is listed, p11tool (no --provider) shows the token, and OpenSSL's
    // pkcs11-provider through its default p11-kit proxy signs by URI alone.
    let modules = text(run(client.command("p11-kit").arg("list-modules")));
    assert!(
        modules
            .lines()
            .any(|l| l.trim() == "tessera:" || l.starts_with("tessera:")),
        "{modules}"
    );
    assert!(modules.contains("pkgtest"), "{modules}");
    let tokens = text(run(client.command("p11tool").arg("--list-tokens")));
    assert!(tokens.contains("pkgtest"), "{tokens}");
    let openssl_cnf = home.join("openssl.cnf");
    std::fs::write(
        &openssl_cnf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n\
             [provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\
             [default_sect]\nactivate = 1\n\
             [pkcs11_sect]\nmodule = {OPENSSL_PROVIDER}\npkcs11-module-token-pin = 12345678\n\
             activate = 1\n"
        ),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&openssl_cnf)
        .unwrap()
        .contains("pkcs11-module-path"));
    let message = home.join("message");
    std::fs::write(&message, b"signed through p11-kit").unwrap();
    let signature = home.join("message.sig");
    let public = home.join("public.pem");
    chown_tree(&home, APP_UID);
    let openssl = |args: &[&str]| {
        text(run(client
            .command("openssl")
            .env("OPENSSL_CONF", &openssl_cnf)
            .args(args)))
    };
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        "pkcs11:token=pkgtest;object=pkg-ec;type=public",
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        "pkcs11:token=pkgtest;object=pkg-ec;type=private",
        "-out",
        signature.to_str().unwrap(),
        message.to_str().unwrap(),
    ]);
    // Plain OpenSSL, without the provider, verifies.
    let verified = text(run(Command::new(tool("openssl"))
        .env("OPENSSL_CONF", "/dev/null")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&public)
        .arg("-signature")
        .arg(&signature)
        .arg(&message)));
    assert!(verified.contains("Verified OK"), "{verified}");
    service.stop();

    // An upgrade keeps the device: the token and its key are there after it.
    dpkg(&root, &["--install"], Some(&version_2));
    assert_eq!(status(&root), "install ok installed 0.1.0-2");
    assert_eq!(account(&root), (uid, gid), "the account is kept");
    let service = Service::start(&root, "tessera.service");
    let objects = client.pkcs11_tool(&["--token-label", "pkgtest", "--list-objects"]);
    assert!(objects.contains("pkg-ec"), "after the upgrade:\n{objects}");
    service.stop();

    // The appliance unit serves the same device on the socket /etc/default/et_hsm names.
    let appliance = Service::start(&root, "tessera-appliance.service");
    let objects = client.pkcs11_tool(&["--token-label", "pkgtest", "--list-objects"]);
    assert!(
        objects.contains("pkg-ec"),
        "through the appliance:\n{objects}"
    );
    assert!(data.join("appliance").is_dir());
    appliance.stop();

    // A removal keeps the device and the configuration; a purge erases both.
    dpkg(&root, &["--remove", "tessera"], None);
    assert!(!root.join("usr/sbin/tesserad").exists());
    assert!(!root
        .join(format!(
            "usr/lib/{}/pkcs11/libtessera_pkcs11.so",
            multiarch()
        ))
        .exists());
    assert!(
        data.join("tessera.redb").is_file(),
        "a removal keeps the device"
    );
    assert!(
        root.join("etc/default/et_hsm").is_file(),
        "a removal keeps the conffiles"
    );
    dpkg(&root, &["--purge", "tessera"], None);
    assert!(!data.exists(), "a purge erases the device");
    assert!(!root.join("etc/default/et_hsm").exists());
    assert!(!status(&root).contains("installed"), "{}", status(&root));
}

#[test]
fn the_units_are_clean_under_systemd_analyze_verify() {
    let work = tempfile::tempdir().unwrap();
    let package = package(&work.path().join("deb"), "0.1.0-1");
    let root = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&package).arg(&root));
    // The units they depend on (sysinit.target and the rest) are the host's.
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if Path::new(host).join("sysinit.target").exists() {
            // Copied (systemd refuses symlinked mounts and slices), never over the package's.
            run(Command::new("cp")
                .args(["-a", "--no-clobber", "--no-dereference"])
                .arg(format!("{host}/."))
                .arg(root.join("usr/lib/systemd/system")));
            break;
        }
    }
    let verify = |unit: &str| {
        Command::new(tool("systemd-analyze"))
            .arg(format!("--root={}", root.display()))
            .arg("verify")
            .arg(format!("/usr/lib/systemd/system/{unit}"))
            // `man tesserad(8)` (Documentation=) finds the packaged pages.
            .env("MANPATH", root.join("usr/share/man"))
            .output()
            .unwrap()
    };
    for unit in ["tessera.service", "tessera-appliance.service"] {
        let output = verify(unit);
        assert!(
            output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
            "systemd-analyze verify {unit}:\n{}",
            text(output)
        );
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).unwrap();
        for hardening in [
            "CapabilityBoundingSet=\n",
            "LimitCORE=0\n",
            "MemoryDenyWriteExecute=yes\n",
            "SystemCallFilter=@system-service\n",
            "LockPersonality=yes\n",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
            "NoNewPrivileges=yes\n",
            "User=tessera\n",
        ] {
            assert!(text.contains(hardening), "{unit} lacks {hardening:?}");
        }
    }
    // The check has teeth: a misspelt setting is reported.
    let unit = root.join("usr/lib/systemd/system/tessera.service");
    let good = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, good.replace("ProtectSystem=", "ProtectSytem=")).unwrap();
    let output = verify("tessera.service");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ProtectSytem"),
        "{}",
        text(output)
    );
}
