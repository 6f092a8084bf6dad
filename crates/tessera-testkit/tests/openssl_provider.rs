//! OpenSSL 3 with `pkcs11-provider` signs a file with a key addressed by a `pkcs11:` URI
//! (RFC 7512) through the built `.so`; plain `openssl` verifies the signature with the exported
//! public key.

use std::process::Command;

use tessera_testkit::{pkcs11_module, tool, Daemon, TRANSPORTS};

fn run(command: &mut Command, what: &str) -> Vec<u8> {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn openssl_signs_through_a_pkcs11_uri_and_plain_openssl_verifies() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let dir = daemon.dir();
        let servers = daemon.server_list(transport);
        let tool_run = |args: &[&str]| {
            run(
                Command::new(tool("pkcs11-tool"))
                    .arg("--module")
                    .arg(pkcs11_module())
                    .args(args)
                    .env("ET_HSM_NETCLIENT_SERVERLIST", &servers),
                "pkcs11-tool",
            )
        };
        tool_run(&[
            "--slot-index",
            "0",
            "--init-token",
            "--label",
            "ossl",
            "--so-pin",
            "87654321",
        ]);
        tool_run(&[
            "--token-label",
            "ossl",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            "87654321",
            "--init-pin",
            "--pin",
            "12345678",
        ]);
        tool_run(&[
            "--token-label",
            "ossl",
            "--login",
            "--pin",
            "12345678",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "0a",
            "--label",
            "ossl-ec",
            "--usage-sign",
        ]);
        tool_run(&[
            "--token-label",
            "ossl",
            "--login",
            "--pin",
            "12345678",
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "0b",
            "--label",
            "ossl-rsa",
            "--usage-sign",
        ]);

        let config = tessera_testkit::openssl_provider_config(dir);
        let data = dir.join("document.txt");
        std::fs::write(&data, b"signed by a key that never left the HSM\n").unwrap();
        for label in ["ossl-ec", "ossl-rsa"] {
            let signature = dir.join(format!("{label}.sig"));
            let public = dir.join(format!("{label}.pub.pem"));
            let with_provider = |args: &[&str]| {
                let mut command = Command::new(tool("openssl"));
                command
                    .args(args)
                    .env("OPENSSL_CONF", &config)
                    .env("ET_HSM_NETCLIENT_SERVERLIST", &servers);
                run(&mut command, &format!("openssl {args:?}"))
            };
            let private_uri = format!("pkcs11:token=ossl;object={label};type=private");
            let public_uri = format!("pkcs11:token=ossl;object={label};type=public");
            with_provider(&[
                "dgst",
                "-sha256",
                "-sign",
                &private_uri,
                "-out",
                signature.to_str().unwrap(),
                data.to_str().unwrap(),
            ]);
            with_provider(&[
                "pkey",
                "-pubin",
                "-in",
                &public_uri,
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ]);
            // Plain OpenSSL, without the provider or the HSM, verifies.
            let verified = run(
                Command::new(tool("openssl"))
                    .args([
                        "dgst",
                        "-sha256",
                        "-verify",
                        public.to_str().unwrap(),
                        "-signature",
                        signature.to_str().unwrap(),
                        data.to_str().unwrap(),
                    ])
                    .env_remove("OPENSSL_CONF"),
                "openssl dgst -verify",
            );
            assert!(
                String::from_utf8_lossy(&verified).contains("Verified OK"),
                "{transport:?} {label}"
            );
            // And a changed document does not.
            let changed = dir.join("changed.txt");
            std::fs::write(&changed, b"a different document\n").unwrap();
            let rejected = Command::new(tool("openssl"))
                .args([
                    "dgst",
                    "-sha256",
                    "-verify",
                    public.to_str().unwrap(),
                    "-signature",
                    signature.to_str().unwrap(),
                    changed.to_str().unwrap(),
                ])
                .env_remove("OPENSSL_CONF")
                .output()
                .unwrap();
            assert!(!rejected.status.success());
        }
    }
}
