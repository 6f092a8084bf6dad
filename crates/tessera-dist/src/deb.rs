//! The Debian package `tessera`: the daemon and the tools, the PKCS#11 library in the multiarch
//! PKCS#11 directory with its p11-kit module file, man pages, shell completions, the systemd
//! units, the `tessera` account (sysusers) and its data directory (made by the postinst), and
//! the system client configuration. Laid out in a folder and built with `dpkg-deb`, so that a machine
//! with Debian's tools needs nothing else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{man_pages, programs, write_completions};

/// What to package and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory of the built binaries (`target/release`).
    pub binaries: PathBuf,
    /// The Debian version, for example `0.1.0-1`.
    pub version: String,
    /// Where the package (and its staging folder) are written.
    pub out: PathBuf,
    /// dpkg-deb's compression: `xz` (Debian's default), `gzip` or `none`.
    pub compression: String,
}

/// Files of the package besides the programs, the library, the man pages and the completions:
/// (path in the package, content, mode).
const FILES: [(&str, &str, u32); 6] = [
    (
        "usr/lib/systemd/system/tessera.service",
        include_str!("../../../packaging/debian/tessera.service"),
        0o644,
    ),
    (
        "usr/lib/systemd/system/tessera-appliance.service",
        include_str!("../../../packaging/debian/tessera-appliance.service"),
        0o644,
    ),
    (
        "usr/lib/sysusers.d/tessera.conf",
        include_str!("../../../packaging/debian/sysusers.conf"),
        0o644,
    ),
    (
        "usr/share/p11-kit/modules/tessera.module",
        include_str!("../../../packaging/debian/tessera.module"),
        0o644,
    ),
    (
        "etc/default/et_hsm",
        include_str!("../../../packaging/debian/et_hsm"),
        0o644,
    ),
    (
        "etc/default/tesserad",
        include_str!("../../../packaging/debian/tesserad.default"),
        0o644,
    ),
];

/// The maintainer scripts.
const SCRIPTS: [(&str, &str); 3] = [
    (
        "postinst",
        include_str!("../../../packaging/debian/postinst"),
    ),
    ("prerm", include_str!("../../../packaging/debian/prerm")),
    ("postrm", include_str!("../../../packaging/debian/postrm")),
];

const COPYRIGHT: &str = include_str!("../../../packaging/debian/copyright");

/// The library's file name.
pub const LIBRARY: &str = "libtessera_pkcs11.so";

/// The Debian architecture and the multiarch triplet of this build.
pub fn architecture() -> Result<(&'static str, &'static str), String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("amd64", "x86_64-linux-gnu")),
        "aarch64" => Ok(("arm64", "aarch64-linux-gnu")),
        other => Err(format!(
            "no Debian architecture known for {other}: add it to tessera-dist's deb::architecture"
        )),
    }
}

/// Checks a Debian version: a digit first, then letters, digits and `.+~-` (Debian policy
/// 5.6.12), so that dpkg-deb does not refuse it half-way.
pub fn check_version(version: &str) -> Result<(), String> {
    let good = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c));
    if good {
        Ok(())
    } else {
        Err(format!(
            "{version:?} is not a Debian version: start with a digit and use only letters, \
             digits and . + ~ - (for example 0.1.0-1)"
        ))
    }
}

/// The path of the package that [`build`] makes.
pub fn package_path(options: &Options) -> Result<PathBuf, String> {
    let (arch, _) = architecture()?;
    Ok(options
        .out
        .join(format!("tessera_{}_{arch}.deb", options.version)))
}

/// Lays the package out under `out` and builds it with `dpkg-deb`; `step` is told each step.
/// Returns the package's path.
pub fn build(options: &Options, mut step: impl FnMut(&str)) -> Result<PathBuf, String> {
    check_version(&options.version)?;
    if !["xz", "gzip", "none"].contains(&options.compression.as_str()) {
        return Err(format!(
            "compression {:?}: give xz, gzip or none",
            options.compression
        ));
    }
    let (arch, multiarch) = architecture()?;
    let programs = programs();
    let built = |name: &str| -> Result<PathBuf, String> {
        let path = options.binaries.join(name);
        match path.is_file() {
            true => Ok(path),
            false => Err(format!(
                "{} is missing: build first (`cargo build --release --workspace`), or name the \
                 directory of the built binaries with --binaries",
                path.display()
            )),
        }
    };
    for program in &programs {
        built(program.name)?;
    }
    built(LIBRARY)?;

    let staging = options
        .out
        .join(format!("tessera_{}_{arch}", options.version));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| format!("cannot clear {}: {e}", staging.display()))?;
    }
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    step("programs and the PKCS#11 library");
    for program in &programs {
        install(
            &built(program.name)?,
            &staging.join(program.dir).join(program.name),
            0o755,
        )?;
    }
    let library = staging
        .join("usr/lib")
        .join(multiarch)
        .join("pkcs11")
        .join(LIBRARY);
    install(&built(LIBRARY)?, &library, 0o644)?;
    // Without their debugging sections (as dh_strip does): a tenth of the size.
    step("strip --strip-debug");
    let mut strip = Command::new("strip");
    strip.arg("--strip-debug").arg(&library);
    for program in &programs {
        strip.arg(staging.join(program.dir).join(program.name));
    }
    run(&mut strip)?;

    step("man pages");
    for program in &programs {
        let dir = staging.join(format!("usr/share/man/man{}", program.section));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (file, text) in man_pages(program).map_err(io(&dir))? {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(io(&path))?;
            run(Command::new("gzip").arg("-9nf").arg(&path))?;
        }
    }

    step("shell completions");
    write_completions(&staging).map_err(io(&staging))?;

    step("systemd units, account, data directory, p11-kit module, configuration");
    for (path, text, mode) in FILES {
        write(&staging.join(path), text.as_bytes(), mode)?;
    }
    write(
        &staging.join("usr/share/doc/tessera/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;

    // Whatever the umask of the build: directories 0755, files 0644, programs and scripts 0755
    // (dpkg-deb refuses a control directory that others cannot read).
    normalize_modes(&staging).map_err(io(&staging))?;

    step("control files");
    let control = staging.join("DEBIAN");
    for (name, text) in SCRIPTS {
        write(&control.join(name), text.as_bytes(), 0o755)?;
    }
    let conffiles: String = FILES
        .iter()
        .filter(|(path, _, _)| path.starts_with("etc/"))
        .map(|(path, _, _)| format!("/{path}\n"))
        .collect();
    write(&control.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    let size_kib = tree_size(&staging).map_err(io(&staging))?.div_ceil(1024);
    let glibc = glibc_needed(
        programs
            .iter()
            .map(|p| staging.join(p.dir).join(p.name))
            .chain([library.clone()]),
    )?;
    let text = format!(
        "Package: tessera\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: Tessera authors <tessera@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6 (>= {glibc}), libgcc-s1, systemd | adduser\n\
         Recommends: p11-kit\n\
         Suggests: opensc, gnutls-bin\n\
         Section: admin\n\
         Priority: optional\n\
         Description: HSM service with a PKCS#11 library and a trusted channel\n \
         Tessera is a hardware security module in software: a daemon (tesserad) that keeps\n \
         keys in tokens and serves them over a local socket or the network, inside a\n \
         secure-messaging channel proven by the device's identity certificate, and a\n \
         PKCS#11 library that applications load (registered with p11-kit).\n \
         .\n \
         Also the administration tools ctconf, ctident and ctkmu (backup, restore and\n replication of tokens), and the appliance shell psesh.\n",
        version = options.version,
    );
    write(&control.join("control"), text.as_bytes(), 0o644)?;

    normalize_modes(&control).map_err(io(&control))?;

    step("dpkg-deb --build");
    let package = package_path(options)?;
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg(format!("-Z{}", options.compression))
        .arg("--build")
        .arg(&staging)
        .arg(&package))?;
    Ok(package)
}

/// The newest glibc symbol version the binaries need (`GLIBC_2.34` → `2.34`), for the
/// package's dependency on libc6: read from their dynamic symbol tables with `objdump -T`.
fn glibc_needed(binaries: impl Iterator<Item = PathBuf>) -> Result<String, String> {
    let mut newest: Vec<u32> = vec![2, 17];
    for binary in binaries {
        let output = Command::new("objdump")
            .arg("-T")
            .arg(&binary)
            .output()
            .map_err(|e| format!("cannot run objdump (binutils): {e}"))?;
        if !output.status.success() {
            return Err(format!("objdump -T {} failed", binary.display()));
        }
        for word in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let Some(version) = word.strip_prefix("(GLIBC_").or(word.strip_prefix("GLIBC_")) else {
                continue;
            };
            let parsed: Option<Vec<u32>> = version
                .trim_end_matches(')')
                .split('.')
                .map(|part| part.parse().ok())
                .collect();
            if let Some(parsed) = parsed {
                newest = newest.max(parsed);
            }
        }
    }
    Ok(newest
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

fn normalize_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            normalize_modes(&entry.path())?;
        } else {
            let mode = match meta.permissions().mode() & 0o100 {
                0 => 0o644,
                _ => 0o755,
            };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    // Whatever the umask took off.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)
}

fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += match meta.is_dir() {
            true => tree_size(&entry.path())?,
            false => meta.len(),
        };
    }
    Ok(total)
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_version_is_refused_with_what_a_version_is() {
        for good in ["0.1.0-1", "1.2+b3~rc1"] {
            assert_eq!(check_version(good), Ok(()));
        }
        for bad in ["", "v0.1.0", "0.1 0", "0.1.0_1", "0.1.0-1/x"] {
            let refused = check_version(bad).unwrap_err();
            assert!(refused.contains("start with a digit"), "{bad}: {refused}");
        }
    }

    #[test]
    fn missing_binaries_and_a_bad_compression_are_named_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            binaries: dir.path().join("nowhere"),
            version: "0.1.0-1".into(),
            out: dir.path().join("out"),
            compression: "xz".into(),
        };
        let refused = build(&options, |_| {}).unwrap_err();
        assert!(refused.contains("tesserad is missing"), "{refused}");
        assert!(
            refused.contains("cargo build --release --workspace"),
            "{refused}"
        );
        let refused = build(
            &Options {
                compression: "lzma".into(),
                ..options.clone()
            },
            |_| {},
        )
        .unwrap_err();
        assert!(refused.contains("give xz, gzip or none"), "{refused}");
        assert!(!options.out.exists(), "nothing written");
    }
}
