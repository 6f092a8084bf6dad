//! Hostile input for every parser of configuration text: configuration files, server lists,
//! listen addresses and client access lists. None may panic, whatever the bytes; what parses
//! prints back to something that parses to the same value.

use proptest::prelude::*;
use tessera_config::access::{AccessEntry, ClientAccess};
use tessera_config::{listen, parse, ServerAddress};

/// Text drawn from the characters these formats use, plus anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[0-9a-fA-F:./\\[\\]=#\"\\n \\tanyunixtcp-]{0,64}").unwrap(),
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn configuration_files_never_panic(text in text()) {
        let _ = parse("hostile", &text);
    }

    #[test]
    fn server_addresses_never_panic(text in text()) {
        let _ = ServerAddress::parse(&text);
    }

    #[test]
    fn listen_addresses_never_panic_and_print_back(text in text()) {
        if let Ok(address) = listen::parse(&text) {
            prop_assert_eq!(listen::parse(&address.to_string()), Ok(address));
        }
    }

    #[test]
    fn access_lists_never_panic_and_print_back(text in text()) {
        let _ = ClientAccess::parse_in(std::path::Path::new("clients"), &text);
        if let Ok(entry) = AccessEntry::parse(&text) {
            prop_assert_eq!(AccessEntry::parse(&entry.to_string()), Ok(entry));
        }
    }

    #[test]
    fn access_entries_admit_their_own_network(a in any::<[u8; 4]>(), prefix in 0u8..=32) {
        let address = std::net::Ipv4Addr::from(a);
        let bits = u32::from(address);
        let kept = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let network = std::net::Ipv4Addr::from(bits & kept);
        let entry = AccessEntry::parse(&format!("{network}/{prefix}")).unwrap();
        prop_assert!(entry.admits(address.into()));
    }
}
