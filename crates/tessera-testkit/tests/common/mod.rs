//! Shared set-up for the suites that load the built `.so` through the `cryptoki` crate.
//!
//! The library's configuration is process-wide (like any PKCS#11 module), so tests that load
//! it run one at a time, each with its own daemon, and point the library at it through
//! `ET_HSM_NETCLIENT_SERVERLIST` before `C_Initialize`.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tessera_testkit::{pkcs11_module, Daemon, Transport};

pub const SO_PIN: &str = "so-pin-1234";
pub const USER_PIN: &str = "user-pin-1234";

static LIBRARY: Mutex<()> = Mutex::new(());

/// The loaded and initialised module, finalised when dropped (`cryptoki` 0.12 leaves
/// `C_Finalize` to the application; the module stays loaded, `-z nodelete`, so the next test's
/// `C_Initialize` needs it).
pub struct Module(Pkcs11);

impl std::ops::Deref for Module {
    type Target = Pkcs11;

    fn deref(&self) -> &Pkcs11 {
        &self.0
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.0.clone().finalize();
    }
}

/// One test's daemon and loaded library.
pub struct Fixture {
    pub daemon: Daemon,
    pub pkcs11: Module,
    pub slot: Slot,
    pub serial: MutexGuard<'static, ()>,
}

pub fn load(server_list: &str) -> Module {
    std::env::set_var("ET_HSM_NETCLIENT_SERVERLIST", server_list);
    let pkcs11 = Pkcs11::new(pkcs11_module()).expect("the module loads");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    Module(pkcs11)
}

/// Loads the library for `daemon` with this test's trust stores (for secure messaging).
pub fn load_secured(daemon: &Daemon, transport: Transport) -> Module {
    for (key, value) in daemon.trust_env() {
        std::env::set_var(key, value);
    }
    load(&daemon.server_list(transport))
}

pub fn serialise() -> MutexGuard<'static, ()> {
    LIBRARY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A daemon with slot 0 initialised (SO and user PINs set), reached over `transport`.
pub fn fixture(transport: Transport) -> Fixture {
    fixture_with(transport, &[])
}

/// A daemon whose device requires the secure-messaging `flags` (`"nuNU"`: full), slot 0
/// initialised, and the library loaded with its trust store, reached over `transport`.
pub fn secured_fixture(transport: Transport, flags: &str) -> Fixture {
    let serial = serialise();
    let daemon = Daemon::start();
    tessera_testkit::sm::prepare(&daemon, transport, flags);
    let pkcs11 = load_secured(&daemon, transport);
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    Fixture {
        daemon,
        pkcs11,
        slot,
        serial,
    }
}

/// [`fixture`] with a daemon started with extra command-line arguments.
pub fn fixture_with(transport: Transport, daemon_args: &[&str]) -> Fixture {
    let guard = serialise();
    let daemon = Daemon::start_with(daemon_args);
    let pkcs11 = load(&daemon.server_list(transport));
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let so_pin = AuthPin::new(SO_PIN.into());
    pkcs11.init_token(slot, &so_pin, "tessera test").unwrap();
    {
        let session = pkcs11.open_rw_session(slot).unwrap();
        session.login(UserType::So, Some(&so_pin)).unwrap();
        session.init_pin(&AuthPin::new(USER_PIN.into())).unwrap();
    }
    Fixture {
        daemon,
        pkcs11,
        slot,
        serial: guard,
    }
}

impl Fixture {
    /// A R/W session logged in as the user.
    pub fn user_session(&self) -> Session {
        user_session(&self.pkcs11, self.slot)
    }
}

/// A R/W session of `slot` logged in as the user ([`USER_PIN`]).
pub fn user_session(pkcs11: &Pkcs11, slot: Slot) -> Session {
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    session
}

/// A new AES-256 session key for encryption and decryption.
pub fn aes_key(session: &Session) -> Result<ObjectHandle, Error> {
    session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )
}

/// The `CKR_*` of a failed call.
pub fn rv<T: std::fmt::Debug>(result: Result<T, Error>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// The `CKA_VALUE` of a readable object.
pub fn value(session: &Session, key: ObjectHandle) -> Vec<u8> {
    match session
        .get_attributes(key, &[cryptoki::object::AttributeType::Value])
        .unwrap()
        .remove(0)
    {
        Attribute::Value(value) => value,
        other => panic!("{other:?}"),
    }
}

/// The template of a session generic secret whose value can be read (derived or encapsulated
/// keys the test compares).
pub fn readable_secret() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}
