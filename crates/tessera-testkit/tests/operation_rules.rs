//! A call that fails ends its operation (PKCS#11 3.0 §5.2: "A call to C_EncryptUpdate which
//! results in an error terminates the current encryption operation"; C_Encrypt "always
//! terminates the active encryption operation unless it returns CKR_BUFFER_TOO_SMALL or is a
//! successful call ... to determine the length of the buffer needed"), also when the library
//! refused it before it reached the device: the next `C_*Init` starts a new operation instead
//! of getting `CKR_OPERATION_ACTIVE`. And a key that always authenticates is used after its
//! context-specific login. A C application makes the calls, as one would.

mod common;

use std::process::Command;

use tessera_testkit::{compile_c, pkcs11_module, Transport};

/// Runs the C application `program` (in `tests/c`) with the module, the user PIN and `args`
/// against a fresh daemon with an initialised token; its output lines.
fn run_c(program: &str, args: &[&str]) -> Vec<String> {
    let f = common::fixture(Transport::Unix);
    let dir = f.daemon.dir().to_path_buf();
    let compiled = compile_c(program, &dir);
    let output = Command::new(&compiled)
        .arg(pkcs11_module())
        .arg(common::USER_PIN)
        .args(args)
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            f.daemon.server_list(Transport::Unix),
        )
        .env("ET_PTKC_GENERAL_LOG", dir.join(format!("{program}.log")))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_call_refused_for_its_arguments_ends_its_operation() {
    let lines = run_c("operation_rules", &["failed"]);
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
    assert_eq!(lines, expected);
}

/// A key with `CKA_ALWAYS_AUTHENTICATE` (PKCS#11 3.0 §4.9: "the user has to supply the PIN for
/// each use (sign or decrypt) with the key") signs after `C_SignInit`,
/// `C_Login(CKU_CONTEXT_SPECIFIC)`, `C_Sign` — the library held the init for the next call, so
/// the device saw the login before the operation existed — and not without that login.
#[test]
fn a_key_that_always_authenticates_signs_after_a_context_specific_login() {
    let lines = run_c("always_authenticate", &[]);
    let expected = [
        "setup=0x0",
        "init=0x0",
        "context_login=0x0",
        "sign=0x0",
        "init_again=0x0",
        // CKR_USER_NOT_LOGGED_IN: this use had no login of its own.
        "sign_without_login=0x101",
    ];
    assert_eq!(lines, expected);
}

/// Single-part and multi-part calls of one operation do not mix (PKCS#11 3.0 §5.8: C_Encrypt
/// "cannot be used to terminate a multi-part operation, and must be called after C_EncryptInit
/// without intervening C_EncryptUpdate calls"): `C_Encrypt` after an update is
/// `CKR_OPERATION_ACTIVE` and the multi-part operation goes on; an update or final call after a
/// `C_Encrypt` length query is `CKR_OPERATION_ACTIVE` and the `C_Encrypt` that follows gets its
/// output.
#[test]
fn single_part_and_multi_part_calls_do_not_mix() {
    let lines = run_c("operation_rules", &["mixed"]);
    let expected = [
        "setup=0x0",
        "multi_init=0x0",
        "multi_update=0x0",
        "multi_encrypt=0x90",
        "multi_encrypt_query=0x90",
        "multi_final=0x0",
        "single_init=0x0",
        "single_query=0x0 len=16",
        "single_update=0x90",
        "single_final=0x90",
        "single_encrypt=0x0 len=16",
        "init_after=0x0",
        "encrypt_after=0x0",
    ];
    assert_eq!(lines, expected);
}

/// Every error the standard lists for an init is returned by that init (PKCS#11 3.0 §5.8
/// C_EncryptInit: "CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID, CKR_KEY_SIZE_RANGE,
/// CKR_KEY_TYPE_INCONSISTENT, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID,
/// CKR_OPERATION_ACTIVE, ..."; likewise §5.9–5.12 for decrypt, digest, sign and verify), on
/// first use and on repeated use: an init accepted before is accepted again only with a
/// parameter of the same shape and while nothing this application did changed the key. A key
/// another application changed is caught by the device at the call that carries the init:
/// nothing is encrypted, and the next init is judged again.
#[test]
fn each_init_returns_its_own_errors() {
    let lines = run_c("operation_rules", &["inits"]);
    let expected = [
        "setup=0x0",
        // CKR_MECHANISM_INVALID (0x70), CKR_KEY_TYPE_INCONSISTENT (0x63),
        // CKR_MECHANISM_PARAM_INVALID (0x71), CKR_KEY_HANDLE_INVALID (0x60),
        // CKR_KEY_FUNCTION_NOT_PERMITTED (0x68).
        "unknown_mechanism=0x70",
        "unknown_digest=0x70",
        "wrong_key_type=0x63",
        "short_iv=0x71",
        "no_such_key=0x60",
        "not_permitted=0x68",
        "cbc_init=0x0",
        "cbc_encrypt=0x0",
        "cbc_again=0x0",
        // CKR_OPERATION_ACTIVE: the held init is an active operation.
        "cbc_init_while_active=0x90",
        "cbc_again_encrypt=0x0",
        "cbc_short_again=0x71",
        "digest_again=0x70",
        "held_before_forbid=0x0",
        "forbid=0x0",
        "held_encrypt_after_forbid=0x0",
        "after_forbid=0x68",
        "allow=0x0",
        "after_allow=0x0",
        "after_allow_encrypt=0x0",
        "destroy=0x0",
        "after_destroy=0x60",
        "token_key=0x0",
        "token_init=0x0",
        "token_encrypt=0x0",
        "other_forbids=0",
        "stale_init=0x0",
        "stale_encrypt=0x68",
        "stale_output_untouched=1",
        "judged_again=0x68",
        "cleanup=0x0",
    ];
    assert_eq!(lines, expected);
}
