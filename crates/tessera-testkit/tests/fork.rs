//! C applications. Fork-awareness (the kind that forks): after `fork()` or the raw fork system
//! call (which runs no `pthread_atfork` handlers) the child gets `CKR_CRYPTOKI_NOT_INITIALIZED`
//! until it calls `C_Initialize`, then works on its own connection; the parent's session is
//! untouched. Attribute arrays (wrap and unwrap templates) as C passes them.

mod common;

use std::process::Command;

use tessera_testkit::{compile_c, pkcs11_module, Daemon, Transport};

#[test]
fn a_forked_child_initialises_its_own_state_and_the_parent_carries_on() {
    let _serial = common::serialise();
    let daemon = Daemon::start();
    // An initialised token, so that sessions can open.
    let pkcs11 = common::load(&daemon.server_list(Transport::Unix));
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    pkcs11
        .init_token(
            slot,
            &cryptoki::types::AuthPin::new(common::SO_PIN.into()),
            "fork",
        )
        .unwrap();
    drop(pkcs11);

    let program = compile_c("fork", daemon.dir());
    for transport in [Transport::Unix, Transport::Tcp] {
        let output = Command::new(&program)
            .arg(pkcs11_module())
            .env("ET_HSM_NETCLIENT_SERVERLIST", daemon.server_list(transport))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{transport:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in [
            "child of fork() ok",
            "child of the raw fork system call ok",
            "parent ok",
        ] {
            assert!(stdout.contains(line), "{line:?} missing: {stdout}");
        }
    }
}

/// Wrap and unwrap templates from a C application: a key outside the wrapping key's
/// `CKA_WRAP_TEMPLATE` is `CKR_KEY_NOT_WRAPPABLE`, the `CKA_UNWRAP_TEMPLATE` is imposed on
/// unwrapped keys (a contradicting template is `CKR_TEMPLATE_INCONSISTENT`), and the array
/// reads back through `C_GetAttributeValue`'s steps for arrays.
#[test]
fn a_c_application_uses_wrap_and_unwrap_templates() {
    let f = common::fixture(Transport::Unix);
    let program = compile_c("templates", f.daemon.dir());
    let output = Command::new(&program)
        .arg(pkcs11_module())
        .arg(f.slot.id().to_string())
        .arg(common::USER_PIN)
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            f.daemon.server_list(Transport::Unix),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("templates ok"),
        "{:?}: {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
