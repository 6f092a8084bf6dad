//! The library against a daemon that closes idle connections without sessions
//! (`--idle-timeout`, issue 17 point 6): an application that waits longer than the timeout
//! between sessionless calls is served again (the library reconnects), and its sessions keep
//! their connection however long it waits. Over both transports.

mod common;

use std::time::Duration;

use common::fixture_with;
use tessera_testkit::TRANSPORTS;

#[test]
fn the_library_outlives_the_idle_timeout_and_sessions_keep_their_connection() {
    for transport in TRANSPORTS {
        let f = fixture_with(transport, &["--idle-timeout", "1"]);
        f.pkcs11.get_token_info(f.slot).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        // The connection was closed meanwhile; the next call is served anyway.
        f.pkcs11.get_token_info(f.slot).unwrap();
        let session = f.user_session();
        std::thread::sleep(Duration::from_millis(2500));
        session.get_session_info().unwrap();
        session.generate_random_vec(16).unwrap();
        assert!(
            f.daemon
                .log()
                .contains("idle connections without sessions closed"),
            "{transport:?}: {}",
            f.daemon.log()
        );
    }
}
