//! Hostile input on the wire: malformed, truncated, oversized and wrong-version frames close
//! that connection with a logged reason; the daemon and other clients carry on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tessera_client::Device;
use tessera_config::ServerAddress;
use tessera_testkit::{wait_until, Daemon};
use tessera_wire::{Call, Reply};

fn good_client(daemon: &Daemon) -> Device {
    Device::new(
        ServerAddress::Unix(daemon.socket()),
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
}

fn device_info(device: &Device) -> String {
    match device.call(None, Call::DeviceInfo) {
        Ok((Reply::Device(info), _)) => info.serial,
        other => panic!("device info failed: {other:?}"),
    }
}

/// Sends bytes, then expects the daemon to close the connection (read returns 0).
fn send_and_expect_close(daemon: &Daemon, bytes: &[u8], half_close: bool) {
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buffer = [0u8; 64];
    let read = stream
        .read(&mut buffer)
        .expect("the daemon closes rather than hangs");
    assert_eq!(read, 0, "the daemon answered garbage instead of closing");
}

fn wait_for_log(daemon: &Daemon, needle: &str) {
    assert!(
        wait_until(Duration::from_secs(2), || daemon.log().contains(needle)),
        "the log never said {needle:?}:\n{}",
        daemon.log()
    );
}

#[test]
fn garbage_frames_close_only_their_connection() {
    let daemon = Daemon::start();
    let bystander = good_client(&daemon);
    let serial = device_info(&bystander);

    // Oversized: a length over the limit is refused before any allocation.
    send_and_expect_close(&daemon, &u32::MAX.to_be_bytes(), false);
    wait_for_log(&daemon, "over the limit");

    // Empty frame.
    send_and_expect_close(&daemon, &[0, 0, 0, 0], false);
    wait_for_log(&daemon, "empty frame");

    // Malformed body: a valid length and envelope header (this version, a message in the
    // clear, no channel), then bytes that are no message.
    let mut malformed = 28u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&tessera_wire::PROTOCOL_VERSION.to_be_bytes());
    malformed.extend_from_slice(&[0; tessera_wire::ENVELOPE_HEADER_LEN - 2]);
    malformed.extend_from_slice(&[0xFF; 8]);
    send_and_expect_close(&daemon, &malformed, false);
    wait_for_log(&daemon, "malformed envelope");

    // An envelope header that is cut short.
    let mut short = 6u32.to_be_bytes().to_vec();
    short.extend_from_slice(&tessera_wire::PROTOCOL_VERSION.to_be_bytes());
    short.extend_from_slice(&[0; 4]);
    send_and_expect_close(&daemon, &short, false);
    wait_for_log(&daemon, "shorter than its header");

    // Wrong protocol version (the first two bytes of the envelope header).
    send_and_expect_close(&daemon, &[0, 0, 0, 3, 0, 9, 1], false);
    wait_for_log(&daemon, "protocol version 9");

    // Truncated: the header promises 100 bytes, 10 arrive, then the client stops sending.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    send_and_expect_close(&daemon, &truncated, true);

    // A burst of pseudo-random garbage from several connections.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut stream = UnixStream::connect(daemon.socket()).unwrap();
        let _ = stream.write_all(&bytes);
        drop(stream);
    }

    // The bystander's connection and new clients still work.
    assert_eq!(device_info(&bystander), serial);
    assert_eq!(device_info(&good_client(&daemon)), serial);
    assert!(daemon.log().contains("closing connection"));
}

#[test]
fn a_second_daemon_on_the_same_directory_refuses_with_a_clear_message() {
    let daemon = Daemon::start();
    let output = std::process::Command::new(tessera_testkit::binary("tesserad"))
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .arg("--listen")
        .arg(format!(
            "unix:{}",
            daemon.dir().join("other.sock").display()
        ))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("in use by another tesserad"), "{message}");
    // The first daemon is unharmed.
    let serial = device_info(&good_client(&daemon));
    assert_eq!(serial.len(), 10);
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let mut daemon = Daemon::start();
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!daemon.socket().exists());
    assert!(daemon.log().contains("shutting down"));
    daemon.restart();
    assert_eq!(device_info(&good_client(&daemon)).len(), 10);
}

#[test]
fn the_connection_limit_refuses_extra_clients_and_logs_it() {
    let daemon = Daemon::start_with(&["--max-connections", "1"]);
    let first = good_client(&daemon);
    device_info(&first);
    let second = good_client(&daemon);
    assert!(second.call(None, Call::DeviceInfo).is_err());
    wait_for_log(&daemon, "connection limit");
    first.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    device_info(&good_client(&daemon));
}
