//! Secure-messaging clients for the suites and the benchmarks: a device client with a daemon's
//! trust store, token set-up under any flags, and the calls every scenario makes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_client::{Device, SecureSettings};
use tessera_config::{Config, ServerAddress};
use tessera_core::{ck, SecretBytes};
use tessera_wire::{Call, Reply};

use crate::{Daemon, Transport};

/// The SO PIN of slot 0 after [`init_token`].
pub const SO_PIN: &str = "token-so-pin";
/// The user PIN of slot 0 after [`init_token`].
pub const USER_PIN: &str = "user-pin-1234";

/// Sets the flags (with an identity, unless `flags` is empty), then initialises slot 0 with
/// ctconf (which works under every flag) and sets the user PIN.
pub fn prepare(daemon: &Daemon, transport: Transport, flags: &str) {
    if flags.is_empty() {
        daemon.admin(transport, &[]);
    } else {
        daemon.secure(transport, flags);
    }
    init_token(daemon, transport);
}

/// Initialises slot 0 (SO PIN [`SO_PIN`]) and sets the user PIN ([`USER_PIN`]).
pub fn init_token(daemon: &Daemon, transport: Transport) {
    std::fs::write(daemon.dir().join("so.pin"), format!("{SO_PIN}\n")).expect("a PIN file");
    let so = daemon.dir().join("so.pin").display().to_string();
    daemon.admin(transport, &["-n0", "--label", "sm", "--so-pin-file", &so]);
    let device = secured(daemon, &daemon.server_list(transport), &[]);
    let (session, g) = open(&device);
    let so_login = Call::Login {
        session,
        user_type: ck::CKU_SO as u64,
        pin: pin(SO_PIN),
    };
    call(&device, g, so_login);
    let user_pin = Call::InitPin {
        session,
        pin: pin(USER_PIN),
    };
    call(&device, g, user_pin);
    device.disconnect();
}

/// The library's secure-messaging settings with `daemon`'s trust store and extra
/// configuration items.
pub fn settings(daemon: &Daemon, extra: &[(&str, &str)]) -> Arc<SecureSettings> {
    Arc::new(own_settings(daemon, extra))
}

/// As [`settings`], with handshakes that offer no ML-KEM, as a library of the classical
/// protocol's do.
pub fn classical_settings(daemon: &Daemon, extra: &[(&str, &str)]) -> Arc<SecureSettings> {
    Arc::new(own_settings(daemon, extra).classical())
}

fn own_settings(daemon: &Daemon, extra: &[(&str, &str)]) -> SecureSettings {
    let mut environment: HashMap<String, String> = daemon.trust_env().into_iter().collect();
    for (k, v) in extra {
        environment.insert(k.to_string(), v.to_string());
    }
    SecureSettings::from_config(Config::from_levels(
        environment,
        HashMap::new(),
        HashMap::new(),
    ))
    .expect("valid secure-messaging settings")
}

/// A client with secure messaging, `daemon`'s trust store and extra configuration items.
pub fn secured(daemon: &Daemon, server: &str, extra: &[(&str, &str)]) -> Device {
    let address = ServerAddress::parse(server).expect("a server address");
    Device::new(address, Duration::from_secs(3), Duration::from_secs(3))
        .with_security(settings(daemon, extra))
}

/// A PIN as the wire carries it.
pub fn pin(text: &str) -> SecretBytes {
    SecretBytes::from_slice(text.as_bytes())
}

/// A call that must succeed; its reply.
pub fn call(device: &Device, generation: u64, request: Call) -> Reply {
    match device.call(Some(generation), request) {
        Ok((reply, _)) => reply,
        Err(e) => panic!("call failed: {e} (0x{:08X})", e.rv()),
    }
}

/// A R/W session: (handle, generation).
pub fn open(device: &Device) -> (u64, u64) {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    match device.call(None, Call::OpenSession { slot: 0, flags }) {
        Ok((Reply::Handle(h), g)) => (h, g),
        other => panic!("open session: {other:?}"),
    }
}

/// A user session.
pub fn user(device: &Device) -> (u64, u64) {
    let (session, g) = open(device);
    let login = Call::Login {
        session,
        user_type: ck::CKU_USER as u64,
        pin: pin(USER_PIN),
    };
    call(device, g, login);
    (session, g)
}
