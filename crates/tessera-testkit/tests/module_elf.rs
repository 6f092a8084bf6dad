//! The shipped `.so`: it exports both entry points of the spec and is marked NODELETE, so a host
//! that unloads it does not crash later on thread exit.

use std::process::Command;

use tessera_testkit::{pkcs11_module, tool};

#[test]
fn the_module_exports_both_entry_points_and_is_nodelete() {
    let module = pkcs11_module();
    let dynamic = Command::new(tool("readelf"))
        .arg("-d")
        .arg(&module)
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    let flags = dynamic
        .lines()
        .find(|l| l.contains("FLAGS_1"))
        .unwrap_or_default();
    assert!(flags.contains("NODELETE"), "no NODELETE flag:\n{dynamic}");
    let symbols = Command::new(tool("readelf"))
        .args(["--dyn-syms", "--wide"])
        .arg(&module)
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    for name in [
        "C_GetFunctionList",
        "C_GetInterface",
        "C_GetInterfaceList",
        "C_Initialize",
        "C_MessageEncryptInit",
    ] {
        assert!(
            symbols
                .lines()
                .any(|l| l.contains(" FUNC ") && l.split_whitespace().last() == Some(name)),
            "{name} is not exported"
        );
    }
}

#[test]
fn the_slot_count_is_chosen_at_creation_and_kept() {
    use std::time::Duration;
    use tessera_client::Device;
    use tessera_config::ServerAddress;
    use tessera_wire::{Call, Reply};
    let slots = |daemon: &tessera_testkit::Daemon| {
        let device = Device::new(
            ServerAddress::Unix(daemon.socket()),
            Duration::from_secs(3),
            Duration::from_secs(10),
        );
        match device.call(None, Call::DeviceInfo) {
            Ok((Reply::Device(info), _)) => (info.slot_count, info.serial),
            other => panic!("{other:?}"),
        }
    };
    let mut daemon = tessera_testkit::Daemon::start_with(&["--slots", "4"]);
    let (count, serial) = slots(&daemon);
    assert_eq!(count, 5, "four user slots and the Admin slot");
    daemon.restart();
    assert_eq!(
        slots(&daemon),
        (5, serial),
        "the device keeps its serial and slots"
    );
    let refused = Command::new(tessera_testkit::binary("tesserad"))
        .args(["--slots", "0", "--data-dir"])
        .arg(daemon.dir().join("other"))
        .arg("--listen")
        .arg(format!("unix:{}", daemon.dir().join("o.sock").display()))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1 to 64 user slots"));
}
