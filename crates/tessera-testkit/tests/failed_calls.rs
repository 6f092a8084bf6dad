//! A call that fails ends its operation (PKCS#11 3.0 §5.2: "A call to C_EncryptUpdate which
//! results in an error terminates the current encryption operation"; C_Encrypt "always
//! terminates the active encryption operation unless it returns CKR_BUFFER_TOO_SMALL or is a
//! successful call ... to determine the length of the buffer needed"), also when the library
//! refused it before it reached the device: the next `C_*Init` starts a new operation instead
//! of getting `CKR_OPERATION_ACTIVE`. A C application makes the calls, as one would.

mod common;

use std::process::Command;

use tessera_testkit::{compile_c, pkcs11_module, Transport};

#[test]
fn a_call_refused_for_its_arguments_ends_its_operation() {
    let f = common::fixture(Transport::Unix);
    let dir = f.daemon.dir().to_path_buf();
    let program = compile_c("failed_call", &dir);
    let output = Command::new(&program)
        .arg(pkcs11_module())
        .arg(common::USER_PIN)
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            f.daemon.server_list(Transport::Unix),
        )
        .env("ET_PTKC_GENERAL_LOG", dir.join("failed_call.log"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = [
        "setup=0x0",
        // The init the library held for the next call; C_Encrypt without its length pointer.
        "held_init=0x0",
        "held_encrypt_null_len=0x7",
        "held_init_again=0x0",
        "held_encrypt=0x0",
        // An operation the device runs; an update with a length no frame can carry.
        "live_init=0x0",
        "live_update=0x0",
        "live_update_huge=0x21",
        "live_init_again=0x0",
        "live_encrypt=0x0",
        // A digest with a length no frame can carry.
        "digest_init=0x0",
        "digest_huge=0x21",
        "digest_init_again=0x0",
        "digest=0x0",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected, "{stdout}");
}
