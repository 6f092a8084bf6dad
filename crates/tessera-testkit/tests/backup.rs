//! Backup, restore and replication (issue 25), through the real `ctkmu`, `ctconf` and the
//! library: a token backed up under M-of-N shares and a passphrase, the device tampered, the
//! token restored, every kind of key doing what it did; every 3-subset of a 3-of-5 split
//! restores and no 2-subset does; altered, truncated and foreign files change nothing;
//! replication between two devices under full secure messaging, and a relay that alters or
//! replays the replica, or a device that is not trusted, gets nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, MlDsaParameterSetType,
    MlKemParameterSetType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use tessera_core::ck;
use tessera_testkit::{binary, sm, Daemon, Transport};
use tessera_wire::backup::BackupFile;
use tessera_wire::{Call, KeepCommand, Reply};

const BACKUP: u64 = tessera_core::attribute::CKA_TESSERA_BACKUP;
const PASSPHRASE: &str = "correct horse battery staple";

/// Runs a tool with `daemon`'s trust store against `servers`; its output.
fn tool(daemon: &Daemon, servers: &str, program: &str, args: &[&str]) -> Output {
    Command::new(binary(program))
        .envs(daemon.trust_env())
        .env("ET_HSM_NETCLIENT_SERVERLIST", servers)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `ctkmu` on device 0 of `daemon` with the SO PIN file; asserts success.
fn ctkmu(daemon: &Daemon, args: &[&str]) -> String {
    let output = ctkmu_may_fail(daemon, args);
    assert!(output.status.success(), "ctkmu {args:?}: {}", text(&output));
    text(&output)
}

/// `ctkmu` with the PIN its command needs: the user's for a backup, the SO's otherwise.
fn ctkmu_may_fail(daemon: &Daemon, args: &[&str]) -> Output {
    let so = so_pin_file(daemon);
    let user = daemon.dir().join("user.pin");
    std::fs::write(&user, format!("{}\n", sm::USER_PIN)).unwrap();
    let user = user.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    match args[0] {
        "show" => {}
        "backup" => all.extend(["--user-pin-file", &user]),
        _ => all.extend(["--so-pin-file", &so]),
    }
    tool(daemon, &daemon.server_list(Transport::Unix), "ctkmu", &all)
}

fn so_pin_file(daemon: &Daemon) -> String {
    let path = daemon.dir().join("so.pin");
    if !path.exists() {
        std::fs::write(&path, format!("{}\n", sm::SO_PIN)).unwrap();
    }
    path.display().to_string()
}

fn passphrase_file(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("passphrase-{}", text.len()));
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path.display().to_string()
}

/// Objects in the token of slot 0, as the device counts them.
fn objects_in_slot_0(daemon: &Daemon) -> u64 {
    let device = sm::secured(daemon, &daemon.server_list(Transport::Unix), &[]);
    match device.call(None, Call::DeviceStatus) {
        Ok((Reply::Status(status), _)) => status.slots[0].objects,
        other => panic!("status: {other:?}"),
    }
}

/// A token key template: on the token, private, labelled, and what `extra` adds.
fn key(label: &str, extra: &[Attribute]) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    template.extend_from_slice(extra);
    template
}

fn backup_allowed(yes: bool) -> Attribute {
    Attribute::VendorDefined((
        AttributeType::VendorDefined(BACKUP as _),
        vec![u8::from(yes)],
    ))
}

fn find(session: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Class(class),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "one {label} {class:?}");
    found[0]
}

fn found(session: &Session, label: &str) -> usize {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
        .len()
}

/// AES-GCM of [`MESSAGE`] under `key` with a fixed IV: the same key gives the same bytes.
fn gcm(session: &Session, key: ObjectHandle) -> Vec<u8> {
    let mut iv = [7u8; 12];
    let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, &[], 128.into()).unwrap();
    session
        .encrypt(&Mechanism::AesGcm(params), key, MESSAGE)
        .unwrap()
}

fn eddsa() -> Mechanism<'static> {
    use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
    Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}

fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

/// A session generic secret that computes HMACs: an encapsulated secret, compared by its MAC
/// (the device's flags may keep its value sensitive).
fn hmac_secret() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sign(true),
    ]
}

/// What the objects made by [`make`] did, to be done again by their restored copies.
struct Proofs {
    aes: Vec<u8>,
    hmac: Vec<u8>,
    rsa_signature: Vec<u8>,
    rsa_ciphertext: Vec<u8>,
    ec_signature: Vec<u8>,
    ed_signature: Vec<u8>,
    ml_dsa_signature: Vec<u8>,
    ml_kem_ciphertext: Vec<u8>,
    ml_kem_secret: Vec<u8>,
}

const MESSAGE: &[u8] = b"kept over time";
const DATA_MARKER: &[u8] = b"DATA-MARKER-backup-7f3e";
const AES_MARKER: &[u8] = b"AES-MARKER-backup-value-32-bytes";

/// One object of every kind Tessera holds, each used once; two keys that may not go into a
/// file (`kept-back-*`).
fn make(session: &Session) -> Proofs {
    let aes = session
        .create_object(&key(
            "aes",
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(AES_MARKER.to_vec()),
                Attribute::Encrypt(true),
                Attribute::Extractable(true),
            ],
        ))
        .unwrap();
    let hmac = session
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &key(
                "hmac",
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Sign(true),
                    Attribute::Extractable(false),
                    backup_allowed(true),
                ],
            ),
        )
        .unwrap();
    let (rsa_public, rsa_private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &key(
                "rsa",
                &[
                    Attribute::ModulusBits(2048.into()),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    Attribute::Encrypt(true),
                ],
            ),
            &key(
                "rsa",
                &[
                    Attribute::Sign(true),
                    Attribute::Decrypt(true),
                    Attribute::Extractable(false),
                    backup_allowed(true),
                ],
            ),
        )
        .unwrap();
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (_, ec_private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &key("ec", &[Attribute::EcParams(p256), Attribute::Verify(true)]),
            &key("ec", &[Attribute::Sign(true), Attribute::Extractable(true)]),
        )
        .unwrap();
    let ed25519 = vec![0x06, 0x03, 0x2b, 0x65, 0x70];
    let (_, ed_private) = session
        .generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &key(
                "ed",
                &[Attribute::EcParams(ed25519), Attribute::Verify(true)],
            ),
            &key("ed", &[Attribute::Sign(true), backup_allowed(true)]),
        )
        .unwrap();
    let (_, ml_dsa_private) = session
        .generate_key_pair(
            &Mechanism::MlDsaKeyPairGen,
            &key(
                "mldsa",
                &[Attribute::ParameterSet(
                    MlDsaParameterSetType::ML_DSA_65.into(),
                )],
            ),
            &key("mldsa", &[backup_allowed(true)]),
        )
        .unwrap();
    let (ml_kem_public, _) = session
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &key(
                "mlkem",
                &[Attribute::ParameterSet(
                    MlKemParameterSetType::ML_KEM_768.into(),
                )],
            ),
            &key("mlkem", &[backup_allowed(true)]),
        )
        .unwrap();
    session
        .create_object(&key(
            "data",
            &[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Value(DATA_MARKER.to_vec()),
                Attribute::Modifiable(false),
            ],
        ))
        .unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Label(b"cert".to_vec()),
            Attribute::Subject(b"subject".to_vec()),
            Attribute::Value(b"certificate value".to_vec()),
        ])
        .unwrap();
    // Not for a file: unextractable with no CKA_TESSERA_BACKUP, and extractable but barred.
    let kept_back = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &key(
                "kept-back-1",
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Extractable(false),
                    Attribute::Derive(true),
                ],
            ),
        )
        .unwrap();
    // A copy of it joined to one byte, asking to be backed up: it holds the kept-back value,
    // so it is kept back too.
    let one = [1u8];
    session
        .derive_key(
            &Mechanism::ConcatenateBaseAndData(
                cryptoki::mechanism::misc::KeyDerivationStringData::new(&one),
            ),
            kept_back,
            &key(
                "kept-back-3",
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    backup_allowed(true),
                ],
            ),
        )
        .unwrap();
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &key(
                "kept-back-2",
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Extractable(true),
                    backup_allowed(false),
                ],
            ),
        )
        .unwrap();
    // Only a trusted key wraps it: no file either; and that stays so.
    let trusted_only = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &key(
                "kept-back-4",
                &[
                    Attribute::ValueLen(32.into()),
                    Attribute::Extractable(true),
                    Attribute::WrapWithTrusted(true),
                ],
            ),
        )
        .unwrap();
    assert_eq!(
        common::rv(session.update_attributes(trusted_only, &[Attribute::WrapWithTrusted(false)])),
        cryptoki::error::RvError::AttributeReadOnly
    );
    // A key that may go into a file can leave the device: never "never extractable".
    match &session
        .get_attributes(
            hmac,
            &[
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
            ],
        )
        .unwrap()[..]
    {
        [Attribute::NeverExtractable(false), Attribute::AlwaysSensitive(false)] => {}
        other => panic!("a backup-able key says {other:?}"),
    }
    let (ml_kem_ciphertext, secret) = session
        .encapsulate_key(&Mechanism::MlKem, ml_kem_public, &hmac_secret())
        .unwrap();
    let hedged = Mechanism::MlDsa(cryptoki::mechanism::dsa::SignAdditionalContext::new(
        cryptoki::mechanism::dsa::HedgeType::Preferred,
        None,
    ));
    Proofs {
        aes: gcm(session, aes),
        hmac: session.sign(&Mechanism::Sha256Hmac, hmac, MESSAGE).unwrap(),
        rsa_signature: session
            .sign(&Mechanism::Sha256RsaPkcs, rsa_private, MESSAGE)
            .unwrap(),
        rsa_ciphertext: session.encrypt(&oaep(), rsa_public, MESSAGE).unwrap(),
        ec_signature: session
            .sign(&Mechanism::Ecdsa, ec_private, &[9; 32])
            .unwrap(),
        ed_signature: session.sign(&eddsa(), ed_private, MESSAGE).unwrap(),
        ml_dsa_signature: session.sign(&hedged, ml_dsa_private, MESSAGE).unwrap(),
        ml_kem_ciphertext,
        ml_kem_secret: session
            .sign(&Mechanism::Sha256Hmac, secret, MESSAGE)
            .unwrap(),
    }
}

/// The restored objects do what the originals did.
fn check(session: &Session, proofs: &Proofs) {
    use ObjectClass as C;
    let aes = find(session, "aes", C::SECRET_KEY);
    assert_eq!(gcm(session, aes), proofs.aes);
    let hmac = find(session, "hmac", C::SECRET_KEY);
    assert_eq!(
        session.sign(&Mechanism::Sha256Hmac, hmac, MESSAGE).unwrap(),
        proofs.hmac
    );
    let rsa = find(session, "rsa", C::PRIVATE_KEY);
    assert_eq!(
        session
            .sign(&Mechanism::Sha256RsaPkcs, rsa, MESSAGE)
            .unwrap(),
        proofs.rsa_signature
    );
    assert_eq!(
        session
            .decrypt(&oaep(), rsa, &proofs.rsa_ciphertext)
            .unwrap(),
        MESSAGE
    );
    let ec = find(session, "ec", C::PUBLIC_KEY);
    session
        .verify(&Mechanism::Ecdsa, ec, &[9; 32], &proofs.ec_signature)
        .expect("the restored EC public key verifies the old signature");
    let ec_private = find(session, "ec", C::PRIVATE_KEY);
    let again = session
        .sign(&Mechanism::Ecdsa, ec_private, &[9; 32])
        .unwrap();
    session
        .verify(&Mechanism::Ecdsa, ec, &[9; 32], &again)
        .unwrap();
    let ed = find(session, "ed", C::PRIVATE_KEY);
    assert_eq!(
        session.sign(&eddsa(), ed, MESSAGE).unwrap(),
        proofs.ed_signature
    );
    let ml_dsa = find(session, "mldsa", C::PUBLIC_KEY);
    let hedged = Mechanism::MlDsa(cryptoki::mechanism::dsa::SignAdditionalContext::new(
        cryptoki::mechanism::dsa::HedgeType::Preferred,
        None,
    ));
    session
        .verify(&hedged, ml_dsa, MESSAGE, &proofs.ml_dsa_signature)
        .expect("the restored ML-DSA public key verifies the old signature");
    let ml_kem = find(session, "mlkem", C::PRIVATE_KEY);
    let secret = session
        .decapsulate_key(
            &Mechanism::MlKem,
            ml_kem,
            &hmac_secret(),
            &proofs.ml_kem_ciphertext,
        )
        .unwrap();
    assert_eq!(
        session
            .sign(&Mechanism::Sha256Hmac, secret, MESSAGE)
            .unwrap(),
        proofs.ml_kem_secret,
        "the restored ML-KEM key decapsulates the same secret"
    );
    let data = find(session, "data", C::DATA);
    assert_eq!(common::value(session, data), DATA_MARKER);
    // Non-modifiable attributes come back as they were.
    match session
        .get_attributes(data, &[AttributeType::Modifiable])
        .unwrap()
        .remove(0)
    {
        Attribute::Modifiable(false) => {}
        other => panic!("CKA_MODIFIABLE came back as {other:?}"),
    }
    let cert = find(session, "cert", C::CERTIFICATE);
    assert_eq!(common::value(session, cert), b"certificate value");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A daemon with full secure messaging (`nuNU`) and slot 0 initialised.
fn secured_daemon() -> Daemon {
    let daemon = Daemon::start();
    sm::prepare(&daemon, Transport::Unix, "nuNU");
    daemon
}

#[test]
fn a_token_backed_up_survives_a_tamper_and_its_keys_do_what_they_did() {
    let guard = common::serialise();
    let daemon = secured_daemon();
    let pkcs11 = common::load_secured(&daemon, Transport::Unix);
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let proofs = {
        let session = common::user_session(&pkcs11, slot);
        make(&session)
    };
    drop(pkcs11);
    let dir = daemon.dir();
    let shares = dir.join("shares");
    std::fs::create_dir(&shares).unwrap();
    let split = dir.join("split.tbk");
    let out = ctkmu(
        &daemon,
        &[
            "backup",
            "-s0",
            "--out",
            split.to_str().unwrap(),
            "--shares",
            "3/5",
            "--shares-dir",
            shares.to_str().unwrap(),
        ],
    );
    assert!(out.contains("Backed up 14 objects"), "{out}");
    assert!(
        out.contains("Left out (4)")
            && out.contains("kept-back-1")
            && out.contains("kept-back-2")
            && out.contains("kept-back-3")
            && out.contains("kept-back-4"),
        "{out}"
    );
    let sealed = dir.join("sealed.tbk");
    let passphrase = passphrase_file(dir, PASSPHRASE);
    ctkmu(
        &daemon,
        &[
            "backup",
            "-s0",
            "--out",
            sealed.to_str().unwrap(),
            "--passphrase",
            "--passphrase-file",
            &passphrase,
        ],
    );
    // The files hold no secret in the clear, and the manifest says what is inside.
    for file in [&split, &sealed] {
        let bytes = std::fs::read(file).unwrap();
        assert!(!contains(&bytes, DATA_MARKER) && !contains(&bytes, AES_MARKER));
        assert!(contains(&bytes, b"hmac"), "labels are in the manifest");
    }
    let shown = ctkmu(&daemon, &["show", split.to_str().unwrap()]);
    assert!(
        shown.contains("split into 5 shares, any 3 restore it")
            && shown.contains("objects       14"),
        "{shown}"
    );
    // The tamper erases the token; set the device up again, as after a real one.
    daemon.admin(Transport::Unix, &["--tamper", "--yes"]);
    daemon.admin(Transport::Unix, &["-fnuNU"]);
    sm::init_token(&daemon, Transport::Unix);
    assert_eq!(objects_in_slot_0(&daemon), 0);
    let share = |k: u8| {
        shares
            .join(format!("share-{k}-of-5.txt"))
            .display()
            .to_string()
    };
    let (two, four, five) = (share(2), share(4), share(5));
    let out = ctkmu(
        &daemon,
        &[
            "restore",
            "-s0",
            "--in",
            split.to_str().unwrap(),
            "--share-file",
            &two,
            "--share-file",
            &four,
            "--share-file",
            &five,
        ],
    );
    assert!(out.contains("Restored 14 objects"), "{out}");
    let pkcs11 = common::load_secured(&daemon, Transport::Unix);
    {
        let session = common::user_session(&pkcs11, slot);
        check(&session, &proofs);
        assert_eq!(
            found(&session, "kept-back-1")
                + found(&session, "kept-back-2")
                + found(&session, "kept-back-3")
                + found(&session, "kept-back-4"),
            0
        );
    }
    drop(pkcs11);
    // The passphrase backup restores the same objects a second time (fresh unique ids).
    let passphrase = passphrase_file(dir, PASSPHRASE);
    ctkmu(
        &daemon,
        &[
            "restore",
            "-s0",
            "--in",
            sealed.to_str().unwrap(),
            "--passphrase-file",
            &passphrase,
        ],
    );
    assert_eq!(objects_in_slot_0(&daemon), 28);
    let events = daemon.admin(Transport::Unix, &["-e"]);
    let fingerprint = BackupFile::fingerprint(&std::fs::read(&split).unwrap());
    for (kind, what) in [
        ("token-backup", "14 objects, 4 refused, under 3 of 5 shares"),
        ("token-backup", "under one custodian's passphrase"),
        ("token-restore", "14 objects from the backup"),
    ] {
        assert!(
            events.lines().any(|l| l.contains(kind) && l.contains(what)),
            "no {kind} event with {what:?}:\n{events}"
        );
    }
    assert!(
        events.contains(&fingerprint),
        "the file's fingerprint is logged:\n{events}"
    );
    drop(guard);
}

#[test]
fn every_three_of_five_shares_restore_and_no_two_do() {
    let daemon = secured_daemon();
    let dir = daemon.dir();
    // A small token: one data object.
    let device = sm::secured(&daemon, &daemon.server_list(Transport::Unix), &[]);
    let (session, g) = sm::user(&device);
    let template = data_template();
    sm::call(&device, g, Call::CreateObject { session, template });
    device.disconnect();
    let shares = dir.join("shares");
    std::fs::create_dir(&shares).unwrap();
    let file = dir.join("small.tbk");
    let file = file.to_str().unwrap();
    ctkmu(
        &daemon,
        &[
            "backup",
            "-s0",
            "--out",
            file,
            "--shares",
            "3/5",
            "--shares-dir",
            shares.to_str().unwrap(),
        ],
    );
    let share = |k: usize| {
        shares
            .join(format!("share-{k}-of-5.txt"))
            .display()
            .to_string()
    };
    let mut expected = 1;
    for mask in 1u32..32 {
        let chosen: Vec<String> = (1..=5)
            .filter(|k| mask & (1 << (k - 1)) != 0)
            .map(share)
            .collect();
        if chosen.len() != 2 && chosen.len() != 3 {
            continue;
        }
        let mut args = vec!["restore", "-s0", "--in", file];
        for path in &chosen {
            args.extend(["--share-file", path]);
        }
        let output = ctkmu_may_fail(&daemon, &args);
        if chosen.len() == 3 {
            assert!(output.status.success(), "{chosen:?}: {}", text(&output));
            expected += 1;
        } else {
            assert!(!output.status.success(), "two shares restored: {chosen:?}");
            assert!(
                text(&output).contains("needs 3 of its 5 shares; 2 given"),
                "{}",
                text(&output)
            );
        }
        assert_eq!(objects_in_slot_0(&daemon), expected, "after {chosen:?}");
    }
    assert_eq!(expected, 11);
    // Two shares sent to the device as if they were enough (the tool would refuse): the
    // device combines nothing below the threshold, and a third share of another backup is
    // refused before any combination.
    let device = sm::secured(&daemon, &daemon.server_list(Transport::Unix), &[]);
    let (session, g) = so_session(&device);
    let two: Vec<_> = [1, 2]
        .iter()
        .map(|k| sm::pin(std::fs::read_to_string(share(*k)).unwrap().trim()))
        .collect();
    let refused = device.call(
        Some(g),
        Call::Keep {
            session,
            command: KeepCommand::Restore {
                file: std::fs::read(file).unwrap(),
                unlock: tessera_wire::BackupUnlock::Shares(two),
            },
        },
    );
    assert_eq!(
        refused.err().map(|e| e.rv()),
        Some(ck::CKR_ARGUMENTS_BAD as u64)
    );
    assert_eq!(objects_in_slot_0(&daemon), expected);
}

/// A token data object holding [`DATA_MARKER`], as the wire carries its template.
fn data_template() -> tessera_core::Template {
    tessera_core::Template(vec![
        tessera_core::Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA as u64),
        tessera_core::Attribute::bool(ck::CKA_TOKEN, true),
        tessera_core::Attribute {
            ty: ck::CKA_VALUE as u64,
            value: DATA_MARKER.to_vec(),
        },
    ])
}

fn so_session(device: &tessera_client::Device) -> (u64, u64) {
    let (session, g) = sm::open(device);
    sm::call(
        device,
        g,
        Call::Login {
            session,
            user_type: ck::CKU_SO as u64,
            pin: sm::pin(sm::SO_PIN),
        },
    );
    (session, g)
}

#[test]
fn altered_truncated_and_foreign_files_and_wrong_secrets_change_nothing() {
    let daemon = secured_daemon();
    let dir = daemon.dir();
    let device = sm::secured(&daemon, &daemon.server_list(Transport::Unix), &[]);
    let (session, g) = sm::user(&device);
    for _ in 0..2 {
        let template = data_template();
        sm::call(&device, g, Call::CreateObject { session, template });
    }
    device.disconnect();
    let file = dir.join("good.tbk");
    let passphrase = passphrase_file(dir, PASSPHRASE);
    ctkmu(
        &daemon,
        &[
            "backup",
            "-s0",
            "--out",
            file.to_str().unwrap(),
            "--passphrase",
            "--passphrase-file",
            &passphrase,
        ],
    );
    let good = std::fs::read(&file).unwrap();
    let header_len = BackupFile::parse(&good).unwrap().authenticated.len();
    let try_restore = |bytes: &[u8], secret: &str| -> String {
        let path = dir.join("try.tbk");
        std::fs::write(&path, bytes).unwrap();
        let output = ctkmu_may_fail(
            &daemon,
            &[
                "restore",
                "-s0",
                "--in",
                path.to_str().unwrap(),
                "--passphrase-file",
                secret,
            ],
        );
        assert!(!output.status.success(), "restored: {}", text(&output));
        assert_eq!(
            objects_in_slot_0(&daemon),
            2,
            "a refused restore changed the token"
        );
        text(&output)
    };
    let wrong = passphrase_file(dir, "not the passphrase at all");
    assert!(try_restore(&good, &wrong).contains("wrong passphrase"));
    // A byte changed in the header (the label, the manifest), in the sealed objects, at the end.
    for at in [20, header_len - 5, header_len + 20, good.len() - 1] {
        let mut altered = good.clone();
        altered[at] ^= 0x01;
        let said = try_restore(&altered, &passphrase);
        assert!(
            said.contains("altered")
                || said.contains("damaged")
                || said.contains("wrong passphrase"),
            "byte {at}: {said}"
        );
    }
    for cut in [0, 7, 30, header_len, header_len + 10, good.len() - 1] {
        let said = try_restore(&good[..cut], &passphrase);
        assert!(
            said.contains("truncated")
                || said.contains("not a Tessera backup")
                || said.contains("altered"),
            "cut {cut}: {said}"
        );
    }
    // A custodian opens the file with the passphrase, changes an object, seals it again under
    // the same key and keeps the device's signature: the signature covers the sealed part.
    let parsed = BackupFile::parse(&good).unwrap();
    let tessera_wire::backup::Lock::Passphrase {
        salt,
        iterations,
        wrapped,
    } = parsed.header.lock.clone()
    else {
        panic!("a passphrase backup")
    };
    let record = tessera_store::PinRecord {
        salt,
        iterations,
        wrapped,
    };
    let key = tessera_store::MasterKey::unwrap(&record, PASSPHRASE.as_bytes()).unwrap();
    let mut payload = key
        .open(&parsed.authenticated, &parsed.sealed)
        .unwrap()
        .expose()
        .to_vec();
    let at = payload
        .windows(DATA_MARKER.len())
        .position(|w| w == DATA_MARKER)
        .expect("the custodian sees the object's value");
    payload[at] ^= 0x20;
    let resealed = key.seal(&parsed.authenticated, &payload).unwrap();
    let forged = BackupFile::encode(&parsed.authenticated, &parsed.signature, &resealed);
    assert!(try_restore(&forged, &passphrase).contains("signature"));
    // A file of another token type (its model rewritten; the seal is checked after).
    let mut parsed = BackupFile::parse(&good).unwrap();
    parsed.header.token_model = "Tessera Admin".into();
    let foreign = BackupFile::encode(
        &BackupFile::authenticated(&parsed.header),
        &parsed.signature,
        &parsed.sealed,
    );
    assert!(try_restore(&foreign, &passphrase).contains("another token type"));
    // The right file and passphrase restore, all or nothing.
    ctkmu(
        &daemon,
        &[
            "restore",
            "-s0",
            "--in",
            file.to_str().unwrap(),
            "--passphrase-file",
            &passphrase,
        ],
    );
    assert_eq!(objects_in_slot_0(&daemon), 4);
    // A file that another device wrote is restored only once this device trusts that one: a
    // custodian who can open a file cannot make one that a device takes.
    let other = secured_daemon();
    {
        let device = sm::secured(&other, &other.server_list(Transport::Unix), &[]);
        let (session, g) = sm::user(&device);
        let template = data_template();
        sm::call(&device, g, Call::CreateObject { session, template });
        device.disconnect();
    }
    let foreign = other.dir().join("other.tbk");
    ctkmu(
        &other,
        &[
            "backup",
            "-s0",
            "--out",
            foreign.to_str().unwrap(),
            "--passphrase",
            "--passphrase-file",
            &passphrase,
        ],
    );
    let refused = ctkmu_may_fail(
        &daemon,
        &[
            "restore",
            "-s0",
            "--in",
            foreign.to_str().unwrap(),
            "--passphrase-file",
            &passphrase,
        ],
    );
    assert!(
        !refused.status.success()
            && text(&refused).contains("does not trust the device that wrote this"),
        "{}",
        text(&refused)
    );
    assert_eq!(objects_in_slot_0(&daemon), 4);
    let events = daemon.admin(Transport::Unix, &["-e"]);
    assert!(events.contains("restore-refused"), "{events}");
    daemon.trust_peer(&other);
    ctkmu(
        &daemon,
        &[
            "restore",
            "-s0",
            "--in",
            foreign.to_str().unwrap(),
            "--passphrase-file",
            &passphrase,
        ],
    );
    assert_eq!(objects_in_slot_0(&daemon), 5);
}

#[test]
fn a_whole_device_put_back_serves_only_by_the_explicit_act_which_is_logged() {
    let mut daemon = secured_daemon();
    daemon.stop();
    let store = daemon.data_dir().join("tessera.redb");
    let copy = daemon.dir().join("disk-backup.redb");
    std::fs::copy(&store, &copy).unwrap();
    daemon.restart();
    // Work after the copy: the store moves on.
    daemon.admin(Transport::Unix, &["-c1"]);
    daemon.stop();
    // The disk is lost; the copy is put back. Without the act, it is refused.
    std::fs::copy(&copy, &store).unwrap();
    let log = daemon.try_restart().expect_err("an old copy was served");
    assert!(log.contains("older than the state recorded"), "{log}");
    // The Administrator's act: serve it, re-anchor, log it.
    daemon.set_args(&["--accept-rollback"]);
    daemon.restart();
    daemon.stop();
    daemon.set_args(&[]);
    daemon.restart();
    let events = daemon.admin(Transport::Unix, &["-e"]);
    assert!(events.contains("rollback-accepted"), "{events}");
    assert!(events.contains("Event log integrity: OK"), "{events}");
    // The anchor moved to the restored store: an older copy than that is refused again.
    daemon.stop();
    let older = daemon.dir().join("older.redb");
    std::fs::copy(&store, &older).unwrap();
    daemon.restart();
    daemon.admin(Transport::Unix, &["-c1"]);
    daemon.stop();
    std::fs::copy(&older, &store).unwrap();
    let log = daemon
        .try_restart()
        .expect_err("an old copy was served after the re-anchor");
    assert!(log.contains("older than the state recorded"), "{log}");
}

/// Two devices with identities that trust each other as peers, each requiring full secure
/// messaging, slot 0 initialised on both; the client trust store of the first trusts both.
fn two_peers() -> (Daemon, Daemon, String) {
    let a = secured_daemon();
    let b = secured_daemon();
    a.trust_peer(&b);
    b.trust_peer(&a);
    a.clients_trust(&b);
    let servers = format!(
        "{} {}",
        a.server_list(Transport::Unix),
        b.server_list(Transport::Unix)
    );
    (a, b, servers)
}

#[test]
fn a_token_replicates_to_a_trusted_peer_under_full_secure_messaging() {
    let guard = common::serialise();
    let (a, b, servers) = two_peers();
    let so = so_pin_file(&a);
    let b_so = so_pin_file(&b);
    let pkcs11 = common::load_secured(&a, Transport::Unix);
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let proofs = {
        let session = common::user_session(&pkcs11, slot);
        make(&session)
    };
    drop(pkcs11);
    let output = tool(
        &a,
        &servers,
        "ctkmu",
        &[
            "replicate",
            "-s0",
            "--to-device",
            "1",
            "--to-slot",
            "0",
            "--so-pin-file",
            &so,
            "--to-so-pin-file",
            &b_so,
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    // Every object, those that may not go into a file included.
    assert!(
        text(&output).contains("Replicated 18 objects"),
        "{}",
        text(&output)
    );
    assert_eq!(objects_in_slot_0(&b), 18);
    let pkcs11 = common::load_secured(&b, Transport::Unix);
    {
        let session = common::user_session(&pkcs11, slot);
        check(&session, &proofs);
        assert_eq!(found(&session, "kept-back-1"), 1);
    }
    drop(pkcs11);
    let events_a = a.admin(Transport::Unix, &["-e"]);
    assert!(events_a.contains("token-replicated"), "{events_a}");
    let events_b = b.admin(Transport::Unix, &["-e"]);
    assert!(events_b.contains("token-replica-taken"), "{events_b}");
    drop(guard);
}

#[test]
fn a_relay_that_alters_or_replays_a_replica_and_an_untrusted_device_get_nothing() {
    let (a, b, _) = two_peers();
    let device = |d: &Daemon| sm::secured(d, &d.server_list(Transport::Unix), &[]);
    {
        let user = device(&a);
        let (session, g) = sm::user(&user);
        let template = data_template();
        sm::call(&user, g, Call::CreateObject { session, template });
        user.disconnect();
    }
    let (to, from) = (device(&b), device(&a));
    let (to_session, to_g) = so_session(&to);
    let (from_session, from_g) = so_session(&from);
    let keep = |device: &tessera_client::Device, g, session, command| {
        device
            .call(Some(g), Call::Keep { session, command })
            .map(|(reply, _)| reply)
            .map_err(|e| e.rv())
    };
    let bytes = |reply: Result<Reply, u64>| match reply {
        Ok(Reply::Bytes(b)) => b,
        other => panic!("{other:?}"),
    };
    // The token's user is not its SO: no restore, no replica, no request — refused before
    // anything sent is looked at (a restore naming a billion PBKDF2 iterations costs nothing).
    // The SO is not the user: no backup of the user's keys.
    {
        let user = device(&a);
        let (session, g) = sm::user(&user);
        let costly = tessera_wire::backup::Header {
            format: tessera_wire::backup::FORMAT,
            id: [1; 16],
            device_serial: "1".into(),
            token_label: String::new(),
            token_serial: String::new(),
            token_model: "Tessera HSM".into(),
            created: 0,
            manifest: vec![],
            lock: tessera_wire::backup::Lock::Passphrase {
                salt: vec![0; 16],
                iterations: u32::MAX,
                wrapped: vec![0; 60],
            },
            key_check: vec![],
            chain: vec![],
        };
        let file = BackupFile::encode(&BackupFile::authenticated(&costly), &[0; 8], &[0; 64]);
        for command in [
            KeepCommand::Restore {
                file,
                unlock: tessera_wire::BackupUnlock::Passphrase(sm::pin("a long passphrase")),
            },
            KeepCommand::ReplicaRequest,
            KeepCommand::Replicate { request: vec![1] },
            KeepCommand::AcceptReplica { replica: vec![1] },
        ] {
            let started = std::time::Instant::now();
            assert_eq!(
                keep(&user, g, session, command).err(),
                Some(ck::CKR_USER_NOT_LOGGED_IN as u64)
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        user.disconnect();
        let backup = KeepCommand::Backup {
            lock: tessera_wire::BackupLock::Shares {
                threshold: 2,
                count: 3,
            },
        };
        assert_eq!(
            keep(&from, from_g, from_session, backup).err(),
            Some(ck::CKR_USER_NOT_LOGGED_IN as u64)
        );
    }
    let request = bytes(keep(&to, to_g, to_session, KeepCommand::ReplicaRequest));
    let replica = bytes(keep(
        &from,
        from_g,
        from_session,
        KeepCommand::Replicate {
            request: request.clone(),
        },
    ));
    // A device does not answer its own request (its own identity would vouch for it).
    let own = keep(
        &to,
        to_g,
        to_session,
        KeepCommand::Replicate {
            request: request.clone(),
        },
    );
    assert_eq!(own.err(), Some(ck::CKR_DATA_INVALID as u64));
    // The relay flips one byte anywhere: a signature or the seal breaks.
    for at in [10, replica.len() / 2, replica.len() - 10] {
        let mut altered = replica.clone();
        altered[at] ^= 0x40;
        let refused = keep(
            &to,
            to_g,
            to_session,
            KeepCommand::AcceptReplica { replica: altered },
        );
        assert!(refused.is_err(), "an altered replica was taken (byte {at})");
    }
    assert_eq!(objects_in_slot_0(&b), 0);
    // The real one is taken once; its replay is refused.
    let taken = keep(
        &to,
        to_g,
        to_session,
        KeepCommand::AcceptReplica {
            replica: replica.clone(),
        },
    );
    assert!(matches!(taken, Ok(Reply::Number(1))), "{taken:?}");
    let replay = keep(
        &to,
        to_g,
        to_session,
        KeepCommand::AcceptReplica { replica },
    );
    assert_eq!(replay.err(), Some(ck::CKR_DATA_INVALID as u64));
    assert_eq!(objects_in_slot_0(&b), 1);
    // A device a no longer trusts gets nothing from it, and b takes nothing from a device it
    // no longer trusts.
    let peers = a.ctident(Transport::Unix, &["peer", "list"]);
    let fingerprint = peers
        .lines()
        .find_map(|l| l.trim().strip_prefix("SHA-256 "))
        .unwrap_or_else(|| panic!("a fingerprint in {peers}"))
        .replace(':', "");
    a.ctident(
        Transport::Unix,
        &["peer", "remove", &fingerprint[..16], "--yes"],
    );
    let request = bytes(keep(&to, to_g, to_session, KeepCommand::ReplicaRequest));
    let refused = keep(
        &from,
        from_g,
        from_session,
        KeepCommand::Replicate { request },
    );
    assert_eq!(
        refused.err(),
        Some(tessera_core::Rv::CertNotValidated.code())
    );
    let events = a.admin(Transport::Unix, &["-e"]);
    assert!(events.contains("replica-refused"), "{events}");
    assert_eq!(objects_in_slot_0(&b), 1);
}
