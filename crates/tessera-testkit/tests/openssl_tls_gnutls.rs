//! OpenSSL 3 through `pkcs11-provider` with keys on the HSM: Ed25519 signatures, RSA-OAEP
//! decryption, and a TLS 1.3 handshake (`s_server` with its private key on the HSM, `s_client`
//! verifying it); GnuTLS `p11tool --list-all` and a self-signed certificate made by `certtool`
//! with a `pkcs11:` key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tessera_testkit::{pkcs11_module, tool, Daemon, Transport, TRANSPORTS};

struct Setup<'a> {
    daemon: &'a Daemon,
    transport: Transport,
    config: PathBuf,
}

impl Setup<'_> {
    fn new(daemon: &Daemon, transport: Transport) -> Setup<'_> {
        let setup = Setup {
            daemon,
            transport,
            config: tessera_testkit::openssl_provider_config(daemon.dir()),
        };
        setup.tool(&[
            "--slot-index",
            "0",
            "--init-token",
            "--label",
            "tls",
            "--so-pin",
            "87654321",
        ]);
        setup.tool(&[
            "--token-label",
            "tls",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            "87654321",
            "--init-pin",
            "--pin",
            "12345678",
        ]);
        setup
    }

    fn path(&self, name: &str) -> String {
        self.daemon.dir().join(name).display().to_string()
    }

    fn run(&self, program: &str, args: &[&str], provider: bool) -> String {
        let mut command = Command::new(tool(program));
        command
            .args(args)
            .env(
                "ET_HSM_NETCLIENT_SERVERLIST",
                self.daemon.server_list(self.transport),
            )
            .env("GNUTLS_PIN", "12345678");
        if provider {
            command.env("OPENSSL_CONF", &self.config);
        } else {
            command.env_remove("OPENSSL_CONF");
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{program} {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn tool(&self, args: &[&str]) -> String {
        let module = pkcs11_module().display().to_string();
        let mut all = vec!["--module", module.as_str()];
        all.extend_from_slice(args);
        self.run("pkcs11-tool", &all, false)
    }

    fn keypair(&self, key_type: &str, label: &str, usage: &str) {
        self.tool(&[
            "--token-label",
            "tls",
            "--login",
            "--pin",
            "12345678",
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            label,
            usage,
        ]);
    }
}

fn uri(label: &str, kind: &str) -> String {
    format!("pkcs11:token=tls;object={label};type={kind}")
}

#[test]
fn openssl_ed25519_oaep_and_tls13_with_keys_on_the_hsm() {
    for transport in TRANSPORTS {
        let daemon = Daemon::start();
        let s = Setup::new(&daemon, transport);
        std::fs::write(daemon.dir().join("message.txt"), b"signed on the HSM\n").unwrap();

        // Ed25519: signed through the provider, verified by plain OpenSSL.
        s.keypair("EC:edwards25519", "ed", "--usage-sign");
        s.run(
            "openssl",
            &[
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                &uri("ed", "private"),
                "-in",
                &s.path("message.txt"),
                "-out",
                &s.path("ed.sig"),
            ],
            true,
        );
        s.run(
            "openssl",
            &[
                "pkey",
                "-pubin",
                "-in",
                &uri("ed", "public"),
                "-pubout",
                "-out",
                &s.path("ed.pub"),
            ],
            true,
        );
        let verified = s.run(
            "openssl",
            &[
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                &s.path("ed.pub"),
                "-rawin",
                "-in",
                &s.path("message.txt"),
                "-sigfile",
                &s.path("ed.sig"),
            ],
            false,
        );
        assert!(verified.contains("Verified Successfully"), "{verified}");

        // RSA-OAEP: encrypted by plain OpenSSL, decrypted on the HSM.
        s.keypair("rsa:2048", "rsa", "--usage-decrypt");
        s.run(
            "openssl",
            &[
                "pkey",
                "-pubin",
                "-in",
                &uri("rsa", "public"),
                "-pubout",
                "-out",
                &s.path("rsa.pub"),
            ],
            true,
        );
        let oaep = [
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ];
        let mut encrypt = vec!["pkeyutl", "-encrypt", "-pubin", "-inkey"];
        let public = s.path("rsa.pub");
        let (input, sealed) = (s.path("message.txt"), s.path("message.enc"));
        encrypt.extend_from_slice(&[public.as_str()]);
        encrypt.extend_from_slice(&oaep);
        encrypt.extend_from_slice(&["-in", input.as_str(), "-out", sealed.as_str()]);
        s.run("openssl", &encrypt, false);
        let private = uri("rsa", "private");
        let mut decrypt = vec!["pkeyutl", "-decrypt", "-inkey", private.as_str()];
        decrypt.extend_from_slice(&oaep);
        decrypt.extend_from_slice(&["-in", sealed.as_str()]);
        assert_eq!(s.run("openssl", &decrypt, true), "signed on the HSM\n");

        // TLS 1.3: the server's key never leaves the HSM; the client verifies the server.
        s.keypair("EC:prime256v1", "server", "--usage-sign");
        s.run(
            "openssl",
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                &uri("server", "private"),
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
                "-out",
                &s.path("server.pem"),
            ],
            true,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new(tool("openssl"))
            .args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-key",
                &uri("server", "private"),
                "-cert",
                &s.path("server.pem"),
                "-tls1_3",
                "-www",
                "-naccept",
                "1",
            ])
            .env("OPENSSL_CONF", &s.config)
            .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut client_output = String::new();
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let client = Command::new(tool("openssl"))
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-CAfile",
                    &s.path("server.pem"),
                    "-verify_return_error",
                    "-tls1_3",
                ])
                .env_remove("OPENSSL_CONF")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            client_output = String::from_utf8_lossy(&client.stdout).into_owned();
            if client_output.contains("TLSv1.3") {
                break;
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            client_output.contains("Verification: OK") && client_output.contains("TLSv1.3"),
            "{client_output}"
        );
    }
}

#[test]
fn gnutls_lists_objects_and_certtool_signs_with_a_pkcs11_key() {
    let daemon = Daemon::start();
    let transport = Transport::Unix;
    let s = Setup::new(&daemon, transport);
    s.keypair("EC:prime256v1", "gnutls", "--usage-sign");
    let module = pkcs11_module().display().to_string();
    let provider = format!("--provider={module}");
    let listed = s.run(
        "p11tool",
        &[&provider, "--login", "--list-all", "pkcs11:token=tls"],
        false,
    );
    assert!(
        listed.contains("object=gnutls;type=private")
            && listed.contains("object=gnutls;type=public"),
        "{listed}"
    );
    let template = daemon.dir().join("cert.cfg");
    std::fs::write(
        &template,
        "cn = tessera gnutls\nexpiration_days = 1\nsigning_key\n",
    )
    .unwrap();
    let key = uri("gnutls", "private");
    let certificate = s.path("gnutls.pem");
    s.run(
        "certtool",
        &[
            &provider,
            "--generate-self-signed",
            "--load-privkey",
            &key,
            "--template",
            template.to_str().unwrap(),
            "--outfile",
            &certificate,
        ],
        false,
    );
    // Plain OpenSSL verifies the self-signature made on the HSM.
    let verified = s.run(
        "openssl",
        &["verify", "-CAfile", &certificate, &certificate],
        false,
    );
    assert!(verified.contains("OK"), "{verified}");
    let _ = Path::new(&certificate);
}
