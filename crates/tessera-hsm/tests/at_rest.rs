//! Secrets at rest (issue 17): every secret value sealed, the device key protected from
//! outside the data directory, PIN records peppered, rollback of the store detected, and a
//! format-1 data directory migrated with nothing lost.

mod common;

use common::{handle, login, ready, session};

use std::path::{Path, PathBuf};

use tessera_core::{ck, Attribute, Mechanism, Rv, Template};
use tessera_hsm::{DeviceKeyProtection, Hsm, HsmError, HsmOptions};
use tessera_store::{DeviceRecord, MasterKey, PinRecord, Store, StoredObject, TokenRecord};
use tessera_wire::{AttributeAnswer, Call, Reply};

fn options() -> HsmOptions {
    HsmOptions {
        user_slots: 2,
        kdf_iterations: 1000,
        ..HsmOptions::default()
    }
}

fn with_key_file(path: &Path) -> HsmOptions {
    HsmOptions {
        device_key: DeviceKeyProtection::KeyFile(path.to_path_buf()),
        ..options()
    }
}

fn get(hsm: &Hsm, client: u64, session: u64, object: u64, ty: ck::CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match hsm.handle(
        client,
        false,
        Call::GetAttributes {
            session,
            object,
            types: vec![ty as u64],
        },
    ) {
        Ok(Reply::Attributes(mut answers)) => match answers.remove(0) {
            AttributeAnswer::Value(v) => v,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

fn find(hsm: &Hsm, client: u64, session: u64, template: Template) -> Vec<u64> {
    hsm.handle(client, false, Call::FindObjectsInit { session, template })
        .unwrap();
    let found = match hsm.handle(client, false, Call::FindObjects { session, max: 100 }) {
        Ok(Reply::Handles(h)) => h,
        other => panic!("{other:?}"),
    };
    hsm.handle(client, false, Call::FindObjectsFinal { session })
        .unwrap();
    found
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The markers found in any file under `dir`, with the file.
fn markers_on_disk(dir: &Path, markers: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for (name, marker) in markers {
            if bytes.windows(marker.len()).any(|w| w == marker.as_slice()) {
                found.push(format!("{name} in {}", file.display()));
            }
        }
    }
    found
}

fn data(label: &str, value: &[u8], private: bool) -> Template {
    Template(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        Attribute::bytes(ck::CKA_VALUE, value),
    ])
}

fn certificate(label: &str, value: &[u8], private: bool) -> Template {
    Template(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
        Attribute::ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        Attribute::bytes(ck::CKA_SUBJECT, b"subject"),
        Attribute::bytes(ck::CKA_VALUE, value),
    ])
}

fn secret_key(value: &[u8], private: bool) -> Template {
    Template(vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bool(ck::CKA_SENSITIVE, false),
        Attribute::bytes(ck::CKA_VALUE, value),
    ])
}

fn key_pair(hsm: &Hsm, client: u64, session: u64, rsa: bool, private: bool) -> (u64, u64) {
    let (mechanism, public_template) = if rsa {
        (
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
            vec![
                Attribute::ulong(ck::CKA_MODULUS_BITS, 2048),
                Attribute::bool(ck::CKA_TOKEN, true),
            ],
        )
    } else {
        (
            ck::CKM_EC_KEY_PAIR_GEN,
            vec![
                Attribute::bytes(
                    ck::CKA_EC_PARAMS,
                    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                ),
                Attribute::bool(ck::CKA_TOKEN, true),
            ],
        )
    };
    let private_template = vec![
        Attribute::bool(ck::CKA_TOKEN, true),
        Attribute::bool(ck::CKA_PRIVATE, private),
        Attribute::bool(ck::CKA_SENSITIVE, false),
        Attribute::bool(ck::CKA_EXTRACTABLE, true),
    ];
    match hsm.handle(
        client,
        false,
        Call::GenerateKeyPair {
            session,
            mechanism: Mechanism::plain(mechanism as u64),
            public_template: Template(public_template),
            private_template: Template(private_template),
        },
    ) {
        Ok(Reply::HandlePair(public, private)) => (public, private),
        other => panic!("{other:?}"),
    }
}

/// Creates one object of every class, private and public, and returns (marker name, marker,
/// handle, attribute) for every secret value.
fn every_class(
    hsm: &Hsm,
    client: u64,
    session: u64,
) -> Vec<(String, Vec<u8>, u64, ck::CK_ATTRIBUTE_TYPE)> {
    let mut out = Vec::new();
    for private in [true, false] {
        let tag = if private { "PRIVATE" } else { "PUBLIC" };
        let value = format!("MARKER-DATA-{tag}-0123456789").into_bytes();
        let h = handle(hsm.handle(
            client,
            false,
            Call::CreateObject {
                session,
                template: data("d", &value, private),
            },
        ));
        out.push((
            format!("{tag} data object's value"),
            value,
            h,
            ck::CKA_VALUE,
        ));
        let value = format!("MARKER-CERT-{tag}-0123456789").into_bytes();
        let h = handle(hsm.handle(
            client,
            false,
            Call::CreateObject {
                session,
                template: certificate("c", &value, private),
            },
        ));
        out.push((
            format!("{tag} certificate's value"),
            value,
            h,
            ck::CKA_VALUE,
        ));
        let mut value = format!("MARKER-AES-{tag}-").into_bytes();
        value.resize(32, b'k');
        let h = handle(hsm.handle(
            client,
            false,
            Call::CreateObject {
                session,
                template: secret_key(&value, private),
            },
        ));
        out.push((format!("{tag} secret key"), value, h, ck::CKA_VALUE));
        let (_, ec) = key_pair(hsm, client, session, false, private);
        let value = get(hsm, client, session, ec, ck::CKA_VALUE);
        out.push((format!("{tag} EC private key"), value, ec, ck::CKA_VALUE));
        let (_, rsa) = key_pair(hsm, client, session, true, private);
        for (name, ty) in [
            ("exponent", ck::CKA_PRIVATE_EXPONENT),
            ("prime", ck::CKA_PRIME_1),
        ] {
            let value = get(hsm, client, session, rsa, ty);
            out.push((format!("{tag} RSA private {name}"), value, rsa, ty));
        }
    }
    out
}

#[test]
fn every_secret_value_is_sealed_at_rest_and_reads_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let objects;
    {
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let (client, session) = ready(&hsm);
        objects = every_class(&hsm, client, session);
    }
    let markers: Vec<(String, Vec<u8>)> = objects
        .iter()
        .map(|(n, m, _, _)| (n.clone(), m.clone()))
        .collect();
    assert_eq!(markers_on_disk(dir.path(), &markers), Vec::<String>::new());

    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let client = hsm.connect();
    let session = session(&hsm, client);
    // Public objects read back without a login, private ones after it.
    for (name, marker, object, ty) in objects.iter().filter(|o| o.0.starts_with("PUBLIC")) {
        assert_eq!(&get(&hsm, client, session, *object, *ty), marker, "{name}");
    }
    login(&hsm, client, session, ck::CKU_USER, "user-pin").unwrap();
    for (name, marker, object, ty) in &objects {
        assert_eq!(&get(&hsm, client, session, *object, *ty), marker, "{name}");
    }
    // A sealed value still finds its object.
    let (_, marker, object, _) = objects
        .iter()
        .find(|o| o.0 == "PRIVATE certificate's value")
        .unwrap();
    let found = find(
        &hsm,
        client,
        session,
        Template(vec![Attribute::bytes(ck::CKA_VALUE, marker)]),
    );
    assert_eq!(found, vec![*object]);
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join("device-key")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in files(from) {
        std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
    }
}

fn open_error(dir: &Path, options: &HsmOptions) -> String {
    match Hsm::open(dir, options) {
        Ok(_) => panic!("{} opened with {:?}", dir.display(), options.device_key),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_copied_data_directory_does_not_open_without_its_external_key_file() {
    let secrets = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let key = key_file(secrets.path());
    std::fs::create_dir_all(&data_dir).unwrap();
    {
        let hsm = Hsm::open(&data_dir, &with_key_file(&key)).unwrap();
        ready(&hsm);
    }
    assert!(key.exists(), "the key file was created at set-up");
    // The thief's copy, without the key file.
    let stolen = dir.path().join("stolen");
    copy_dir(&data_dir, &stolen);
    let error = open_error(&stolen, &options());
    assert!(error.contains("--device-key-file"), "{error}");
    assert!(error.contains("external key file"), "{error}");
    let elsewhere = tempfile::tempdir().unwrap();
    let error = open_error(&stolen, &with_key_file(&key_file(elsewhere.path())));
    assert!(
        error.contains("No such file"),
        "a missing key file is not created for an existing device: {error}"
    );
    std::fs::write(key_file(elsewhere.path()), [7u8; 32]).unwrap();
    std::fs::set_permissions(
        key_file(elsewhere.path()),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let error = open_error(&stolen, &with_key_file(&key_file(elsewhere.path())));
    assert!(error.contains("does not open"), "{error}");
    // The rightful owner opens it, with the PINs.
    let hsm = Hsm::open(&data_dir, &with_key_file(&key)).unwrap();
    let client = hsm.connect();
    let session = session(&hsm, client);
    login(&hsm, client, session, ck::CKU_USER, "user-pin").unwrap();
}

#[test]
fn a_key_file_others_can_read_or_inside_the_data_directory_is_refused() {
    let secrets = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(secrets.path());
    std::fs::write(&key, [1u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let error = open_error(dir.path(), &with_key_file(&key));
    assert!(error.contains("chmod 600"), "{error}");
    let error = open_error(dir.path(), &with_key_file(&dir.path().join("key")));
    assert!(error.contains("outside the data directory"), "{error}");
}

#[test]
fn a_passphrase_or_a_systemd_credential_protects_the_device_key() {
    // Passphrase.
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let passphrase = secrets.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(
        &passphrase,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let by_passphrase = HsmOptions {
        device_key: DeviceKeyProtection::PassphraseFile(passphrase.clone()),
        ..options()
    };
    drop(Hsm::open(dir.path(), &by_passphrase).unwrap());
    let error = open_error(dir.path(), &options());
    assert!(error.contains("passphrase"), "{error}");
    std::fs::write(&passphrase, "wrong horse battery staple\n").unwrap();
    let error = open_error(dir.path(), &by_passphrase);
    assert!(error.contains("does not open"), "{error}");
    std::fs::write(&passphrase, "correct horse battery staple").unwrap();
    drop(Hsm::open(dir.path(), &by_passphrase).unwrap());

    // A systemd credential: $CREDENTIALS_DIRECTORY/NAME. An embedded device moves to it.
    let dir = tempfile::tempdir().unwrap();
    drop(Hsm::open(dir.path(), &options()).unwrap());
    let credentials = tempfile::tempdir().unwrap();
    let credential = credentials.path().join("tessera-device-key");
    std::fs::write(&credential, [9u8; 32]).unwrap();
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    std::env::set_var("CREDENTIALS_DIRECTORY", credentials.path());
    let by_credential = HsmOptions {
        device_key: DeviceKeyProtection::Credential("tessera-device-key".into()),
        ..options()
    };
    drop(Hsm::open(dir.path(), &by_credential).unwrap());
    let error = open_error(dir.path(), &options());
    assert!(
        error.contains("--device-key-credential tessera-device-key"),
        "{error}"
    );
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(&credential, [8u8; 32]).unwrap();
    let error = open_error(dir.path(), &by_credential);
    assert!(error.contains("does not open"), "{error}");
    std::fs::write(&credential, [9u8; 32]).unwrap();
    drop(Hsm::open(dir.path(), &by_credential).unwrap());
}

#[test]
fn the_store_file_alone_cannot_check_a_pin_guess() {
    let dir = tempfile::tempdir().unwrap();
    let _ = ready(&Hsm::open(dir.path(), &options()).unwrap());
    let store = Store::open(&dir.path().join("tessera.redb")).unwrap();
    let (_, record) = store
        .tokens()
        .unwrap()
        .into_iter()
        .find(|(t, _)| *t == 0)
        .unwrap();
    // The right PIN, without the pepper (which is not in the store): no answer either way.
    assert!(MasterKey::unwrap(record.user_pin.as_ref().unwrap(), b"user-pin").is_err());
    assert!(MasterKey::unwrap(record.so_pin.as_ref().unwrap(), b"so-pin").is_err());
}

fn user_failures(dir: &Path) -> u32 {
    let store = Store::open(&dir.join("tessera.redb")).unwrap();
    store
        .tokens()
        .unwrap()
        .into_iter()
        .find(|(t, _)| *t == 0)
        .unwrap()
        .1
        .user_failures
}

#[test]
fn a_rolled_back_store_is_refused_with_an_event_and_accepted_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("tessera.redb");
    let old_copy = dir.path().join("old.redb.copy");
    {
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let (client, session) = ready(&hsm);
        hsm.handle(client, false, Call::Logout { session }).unwrap();
        assert_eq!(
            login(&hsm, client, session, ck::CKU_USER, "wrong").unwrap_err(),
            Rv::PinIncorrect
        );
    }
    std::fs::copy(&store_file, &old_copy).unwrap();
    {
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let client = hsm.connect();
        let session = session(&hsm, client);
        for _ in 0..tessera_hsm::MAX_PIN_FAILURES {
            let _ = login(&hsm, client, session, ck::CKU_USER, "wrong");
        }
        assert_eq!(
            login(&hsm, client, session, ck::CKU_USER, "user-pin").unwrap_err(),
            Rv::PinLocked
        );
    }
    assert_eq!(user_failures(dir.path()), tessera_hsm::MAX_PIN_FAILURES);
    std::fs::copy(&old_copy, &store_file).unwrap();
    for _ in 0..2 {
        let error = match Hsm::open(dir.path(), &options()) {
            Err(e @ HsmError::Rollback(_)) => e.to_string(),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a rolled-back store was served"),
        };
        assert!(error.contains("older than the state recorded"), "{error}");
        assert!(error.contains("--accept-rollback"), "{error}");
    }
    {
        let store = Store::open(&store_file).unwrap();
        let events = store.events().unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "rollback-refused")
                .count(),
            2
        );
    }
    assert_eq!(
        user_failures(dir.path()),
        1,
        "the old store is left as it was"
    );
    let accepted = HsmOptions {
        accept_rollback: true,
        ..options()
    };
    drop(Hsm::open(dir.path(), &accepted).unwrap());
    drop(Hsm::open(dir.path(), &options()).unwrap());
    // Removing the state file does not switch the check off.
    std::fs::remove_file(dir.path().join("device.state")).unwrap();
    let error = open_error(dir.path(), &options());
    assert!(error.contains("is missing"), "{error}");
}

#[test]
fn a_replaced_event_log_is_refused_even_at_the_same_generation() {
    // Two stores that forked: the store is put back from a copy, then moves on by as many
    // writes as the original did, but its events are not the recorded ones.
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("tessera.redb");
    let copy = dir.path().join("copy");
    let _ = ready(&Hsm::open(dir.path(), &options()).unwrap());
    std::fs::copy(&store_file, &copy).unwrap();
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let client = hsm.connect();
    let session = session(&hsm, client);
    let _ = login(&hsm, client, session, ck::CKU_SO, "x");
    drop(hsm);
    let original = Store::open(&store_file).unwrap().generation().unwrap();
    std::fs::copy(&copy, &store_file).unwrap();
    let store = Store::open(&store_file).unwrap();
    while store.generation().unwrap() < original {
        store
            .append_event(
                &tessera_store::EventRecord {
                    sequence: 1,
                    time: 0,
                    role: "Device".into(),
                    kind: "forged".into(),
                    detail: String::new(),
                    previous: vec![],
                    mac: vec![0; 32],
                },
                10,
                true,
            )
            .unwrap();
    }
    drop(store);
    let error = open_error(dir.path(), &options());
    assert!(error.contains("event log"), "{error}");
}

// ---- Migration from format 1 ----

const OLD_DEVICE_KEY_SECRET: &[u8] = b"tessera device key";

fn old_aad(token: u64, id: u64) -> Vec<u8> {
    format!("tessera object {token}/{id}").into_bytes()
}

/// Writes a data directory as the format-1 code did, through the store API: device.key wrapped
/// under the embedded constant (a bare PIN record), PIN records not peppered, no format record,
/// data objects' values in the clear, key values sealed.
fn old_format_directory(dir: &Path) {
    let device_key = MasterKey::generate().unwrap();
    let record = device_key.wrap(OLD_DEVICE_KEY_SECRET, 1).unwrap();
    std::fs::write(
        dir.join("device.key"),
        postcard::to_stdvec(&record).unwrap(),
    )
    .unwrap();
    let store = Store::open(&dir.join("tessera.redb")).unwrap();
    let device = DeviceRecord {
        serial: "1234567890".into(),
        model: "Tessera HSM".into(),
        created: 1,
        user_tokens: vec![0, 1],
        admin_token: 2,
        next_token: 3,
        flags: 0,
        transport_mode: 0,
        clock_offset: 0,
    };
    let tmk = MasterKey::generate().unwrap();
    let mut label = b"old".to_vec();
    label.resize(32, b' ');
    let token = TokenRecord {
        label,
        so_pin: Some(tmk.wrap(b"old-so-pin", 1000).unwrap()),
        user_pin: Some(tmk.wrap(b"old-user-pin", 1000).unwrap()),
        so_failures: 0,
        user_failures: 1,
    };
    let blank = TokenRecord::default();
    store
        .update_device(&device, &[(0, &token), (1, &blank), (2, &blank)], &[], &[])
        .unwrap();
    let object = |private: bool, value: &[u8]| StoredObject {
        public: Template(vec![
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, private),
            Attribute::bool(ck::CKA_MODIFIABLE, true),
            Attribute::bytes(ck::CKA_LABEL, b"old data"),
            Attribute::bytes(ck::CKA_VALUE, value),
        ]),
        sealed: None,
    };
    store
        .insert_object(0, |_| Ok(object(true, b"OLD-PRIVATE-DATA-MARKER")))
        .unwrap();
    store
        .insert_object(0, |_| Ok(object(false, b"OLD-PUBLIC-DATA-MARKER")))
        .unwrap();
    store
        .insert_object(0, |id| {
            let secret = Template(vec![Attribute::bytes(
                ck::CKA_VALUE,
                b"OLD-AES-KEY-MARKER-0123456789abc",
            )]);
            Ok(StoredObject {
                public: Template(vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    Attribute::bool(ck::CKA_TOKEN, true),
                    Attribute::bool(ck::CKA_PRIVATE, true),
                    Attribute::bool(ck::CKA_SENSITIVE, false),
                    Attribute::bool(ck::CKA_EXTRACTABLE, true),
                    Attribute::bytes(ck::CKA_LABEL, b"old key"),
                ]),
                sealed: Some(
                    tmk.seal(&old_aad(0, id), &postcard::to_stdvec(&secret).unwrap())
                        .unwrap(),
                ),
            })
        })
        .unwrap();
    assert_eq!(store.format().unwrap(), 1);
}

fn stored_clear_values(dir: &Path) -> usize {
    let store = Store::open(&dir.join("tessera.redb")).unwrap();
    store
        .objects(0)
        .unwrap()
        .iter()
        .filter(|(_, o)| o.public.iter().any(|a| a.ty == ck::CKA_VALUE as u64))
        .count()
}

#[test]
fn a_format_1_directory_is_migrated_at_first_start_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    old_format_directory(dir.path());
    assert_eq!(stored_clear_values(dir.path()), 2);
    {
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let client = hsm.connect();
        let session = session(&hsm, client);
        // The public object's value was sealed at the first start; the private one waits for
        // the token master key.
        drop(hsm);
        assert_eq!(stored_clear_values(dir.path()), 1);
        let hsm = Hsm::open(dir.path(), &options()).unwrap();
        let client2 = hsm.connect();
        let session2 = self::session(&hsm, client2);
        let _ = (client, session);
        let public = find(
            &hsm,
            client2,
            session2,
            Template(vec![Attribute::bytes(ck::CKA_LABEL, b"old data")]),
        );
        assert_eq!(public.len(), 1);
        assert_eq!(
            get(&hsm, client2, session2, public[0], ck::CKA_VALUE),
            b"OLD-PUBLIC-DATA-MARKER"
        );
        login(&hsm, client2, session2, ck::CKU_USER, "old-user-pin").unwrap();
        let all = find(
            &hsm,
            client2,
            session2,
            Template(vec![Attribute::bytes(ck::CKA_LABEL, b"old data")]),
        );
        assert_eq!(all.len(), 2);
        let mut values: Vec<Vec<u8>> = all
            .iter()
            .map(|h| get(&hsm, client2, session2, *h, ck::CKA_VALUE))
            .collect();
        values.sort();
        assert_eq!(
            values,
            vec![
                b"OLD-PRIVATE-DATA-MARKER".to_vec(),
                b"OLD-PUBLIC-DATA-MARKER".to_vec()
            ]
        );
        let key = find(
            &hsm,
            client2,
            session2,
            Template(vec![Attribute::bytes(ck::CKA_LABEL, b"old key")]),
        );
        assert_eq!(
            get(&hsm, client2, session2, key[0], ck::CKA_VALUE),
            b"OLD-AES-KEY-MARKER-0123456789abc"
        );
        hsm.handle(client2, false, Call::Logout { session: session2 })
            .unwrap();
        login(&hsm, client2, session2, ck::CKU_SO, "old-so-pin").unwrap();
    }
    // After migration: format 2, peppered PIN records, no value in the clear, a new device.key.
    assert_eq!(stored_clear_values(dir.path()), 0);
    let store = Store::open(&dir.path().join("tessera.redb")).unwrap();
    assert_eq!(store.format().unwrap(), 2);
    let (_, token) = store
        .tokens()
        .unwrap()
        .into_iter()
        .find(|(t, _)| *t == 0)
        .unwrap();
    assert_eq!(token.user_failures, 0, "the right PIN reset the count");
    assert!(MasterKey::unwrap(token.user_pin.as_ref().unwrap(), b"old-user-pin").is_err());
    drop(store);
    let key_bytes = std::fs::read(dir.path().join("device.key")).unwrap();
    assert!(key_bytes.starts_with(b"TESSERA DEVICE KEY v2\n"));
    assert!(
        postcard::from_bytes::<PinRecord>(&key_bytes).map_or(true, |r| MasterKey::unwrap(
            &r,
            OLD_DEVICE_KEY_SECRET
        )
        .is_err())
    );
    assert!(dir.path().join("device.state").exists());
    // And it opens again as format 2, with the same PINs.
    let hsm = Hsm::open(dir.path(), &options()).unwrap();
    let client = hsm.connect();
    let session = session(&hsm, client);
    login(&hsm, client, session, ck::CKU_USER, "old-user-pin").unwrap();
}
