//! OpenSC `pkcs11-tool` drives the built `.so` against a daemon of the test's own, over the Unix
//! socket and over loopback TCP; the keys it makes survive a daemon restart.

use std::path::Path;
use std::process::{Command, Output};

use tessera_testkit::{pkcs11_module, tool, Daemon, Transport, TRANSPORTS};

struct Tool<'a> {
    daemon: &'a Daemon,
    transport: Transport,
}

impl Tool<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let output = Command::new(tool("pkcs11-tool"))
            .arg("--module")
            .arg(pkcs11_module())
            .args(args)
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                self.daemon.server_list(self.transport),
            )
            .output()
            .expect("pkcs11-tool runs");
        output
    }

    /// Runs and requires success; returns standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "pkcs11-tool {args:?} failed ({:?}):\n{stdout}\n{}\ndaemon log tail:\n{}",
            self.transport,
            String::from_utf8_lossy(&output.stderr),
            self.daemon
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        stdout
    }

    fn user(&self, args: &[&str]) -> String {
        let mut all = vec!["--token-label", "tool-test", "--login", "--pin", "12345678"];
        all.extend_from_slice(args);
        self.ok(&all)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pkcs11_tool_initialises_generates_signs_encrypts_and_keys_survive_a_restart() {
    for transport in TRANSPORTS {
        let mut daemon = Daemon::start();
        let dir = daemon.dir().to_path_buf();
        let data = dir.join("data.txt");
        std::fs::write(&data, b"Tessera signs this with pkcs11-tool.\n").unwrap();
        {
            let t = Tool {
                daemon: &daemon,
                transport,
            };
            let slots = t.ok(&["--list-slots"]);
            assert!(slots.contains("Tessera"), "{slots}");
            t.ok(&[
                "--slot-index",
                "0",
                "--init-token",
                "--label",
                "tool-test",
                "--so-pin",
                "87654321",
            ]);
            t.ok(&[
                "--token-label",
                "tool-test",
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                "87654321",
                "--init-pin",
                "--pin",
                "12345678",
            ]);
            t.user(&[
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--id",
                "01",
                "--label",
                "ec-key",
                "--usage-sign",
            ]);
            t.user(&[
                "--keypairgen",
                "--key-type",
                "rsa:2048",
                "--id",
                "02",
                "--label",
                "rsa-key",
                "--usage-sign",
                "--usage-decrypt",
            ]);
            t.user(&[
                "--keypairgen",
                "--key-type",
                "EC:edwards25519",
                "--id",
                "04",
                "--label",
                "ed25519-key",
            ]);
            t.user(&[
                "--keygen",
                "--key-type",
                "AES:32",
                "--id",
                "03",
                "--label",
                "aes-key",
                "--usage-decrypt",
            ]);
            // The tool's own self-test runs to its end: digests (MD5 included), RSA-X-509,
            // RSA-PKCS (raw input) and hashing signatures, verification, OAEP decryption.
            let selftest = t.user(&["--test"]);
            assert!(selftest.contains("No errors"), "{selftest}");
            for passed in ["MD5: OK", "RSA-X-509: OK", "RSA-PKCS: OK"] {
                assert!(
                    selftest.contains(passed),
                    "{passed} missing from:\n{selftest}"
                );
            }
            // Threads that initialise the library concurrently (CKF_OS_LOCKING_OK), list slots
            // and ask for its info; the tool waits 30 s for them, so over one transport only.
            if transport == Transport::Unix {
                let output = t.run(&[
                    "--test-threads",
                    "ILGISLGI",
                    "--test-threads",
                    "ILGISLGI",
                    "--test-threads",
                    "ILSLGI",
                ]);
                // The tool reports its threads on stderr.
                let threads = String::from_utf8_lossy(&output.stderr).to_string()
                    + &String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success()
                        && threads.contains("all threads have ended with CKR_OK"),
                    "{threads}"
                );
            }
            // A forked child initialises its own library state and works (fork-awareness).
            let forked = t.ok(&["--test-fork"]);
            assert!(forked.contains("forked child"), "{forked}");
            let mechanisms = t.ok(&["--token-label", "tool-test", "--list-mechanisms"]);
            assert!(
                mechanisms.contains("AES-GCM") && mechanisms.contains("ECDSA-SHA256"),
                "{mechanisms}"
            );
            let objects = t.user(&["--list-objects"]);
            for label in ["ec-key", "rsa-key", "aes-key"] {
                assert!(objects.contains(label), "{label} missing from:\n{objects}");
            }
        }
        // The keys are still there and usable after the daemon restarts.
        daemon.restart();
        let t = Tool {
            daemon: &daemon,
            transport,
        };
        let objects = t.user(&["--list-objects"]);
        assert!(
            objects.contains("ec-key")
                && objects.contains("rsa-key")
                && objects.contains("aes-key"),
            "{objects}"
        );
        for (id, mechanism) in [
            ("01", "ECDSA-SHA256"),
            ("02", "SHA256-RSA-PKCS"),
            ("02", "SHA256-RSA-PKCS-PSS"),
            ("04", "EDDSA"),
        ] {
            let signature = dir.join(format!("sig-{id}-{mechanism}"));
            t.user(&[
                "--sign",
                "--id",
                id,
                "-m",
                mechanism,
                "--input-file",
                path(&data),
                "--output-file",
                path(&signature),
            ]);
            let verified = t.user(&[
                "--verify",
                "--id",
                id,
                "-m",
                mechanism,
                "--input-file",
                path(&data),
                "--signature-file",
                path(&signature),
            ]);
            assert!(verified.contains("Signature is valid"), "{verified}");
            // A changed message does not verify.
            let other = dir.join("other.txt");
            std::fs::write(&other, b"something else").unwrap();
            let mut args = vec!["--token-label", "tool-test", "--login", "--pin", "12345678"];
            args.extend_from_slice(&[
                "--verify",
                "--id",
                id,
                "-m",
                mechanism,
                "--input-file",
                path(&other),
                "--signature-file",
                path(&signature),
            ]);
            let rejected = t.run(&args);
            let text = String::from_utf8_lossy(&rejected.stdout).to_string()
                + &String::from_utf8_lossy(&rejected.stderr);
            assert!(!text.contains("Signature is valid"), "{text}");
        }
        let encrypted = dir.join("data.enc");
        let decrypted = dir.join("data.dec");
        let iv = "000102030405060708090a0b0c0d0e0f";
        t.user(&[
            "--encrypt",
            "--id",
            "03",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            iv,
            "--input-file",
            path(&data),
            "--output-file",
            path(&encrypted),
        ]);
        t.user(&[
            "--decrypt",
            "--id",
            "03",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            iv,
            "--input-file",
            path(&encrypted),
            "--output-file",
            path(&decrypted),
        ]);
        assert_ne!(
            std::fs::read(&encrypted).unwrap(),
            std::fs::read(&data).unwrap()
        );
        assert_eq!(
            std::fs::read(&decrypted).unwrap(),
            std::fs::read(&data).unwrap()
        );
        // RSA-OAEP: OpenSSL encrypts to the public key read off the token, the token decrypts.
        let public = dir.join("rsa-pub.der");
        t.user(&[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            "02",
            "--output-file",
            path(&public),
        ]);
        let sealed = dir.join("data.oaep");
        let openssl = Command::new(tool("openssl"))
            .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
            .arg(&public)
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
                "-in",
            ])
            .arg(&data)
            .arg("-out")
            .arg(&sealed)
            .output()
            .unwrap();
        assert!(openssl.status.success(), "{openssl:?}");
        let opened = dir.join("data.opened");
        t.user(&[
            "--decrypt",
            "--id",
            "02",
            "-m",
            "RSA-PKCS-OAEP",
            "--hash-algorithm",
            "SHA256",
            "--mgf",
            "MGF1-SHA256",
            "--input-file",
            path(&sealed),
            "--output-file",
            path(&opened),
        ]);
        assert_eq!(
            std::fs::read(&opened).unwrap(),
            std::fs::read(&data).unwrap()
        );
        // OpenSC's own EC self-test: generate, sign, verify, change attributes, delete.
        let ec_test = t.user(&[
            "--session-rw",
            "--test-ec",
            "--id",
            "0e",
            "--key-type",
            "EC:prime256v1",
        ]);
        assert!(ec_test.contains("==> OK"), "{ec_test}");
        let random = t.ok(&["--token-label", "tool-test", "--generate-random", "32"]);
        assert!(!random.is_empty());
    }
}
