//! The configuration-item parser, server and listen addresses and the client access list,
//! given any text: read or refused with a message, never a panic; what is read prints back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_config::access::{AccessEntry, ClientAccess};
use tessera_config::{listen, parse, ServerAddress};

fuzz_target!(|text: &str| {
    let _ = parse("fuzz", text);
    let _ = ServerAddress::parse(text);
    let _ = ClientAccess::parse_in(std::path::Path::new("fuzz"), text);
    if let Ok(address) = listen::parse(text) {
        assert_eq!(listen::parse(&address.to_string()), Ok(address));
    }
    if let Ok(entry) = AccessEntry::parse(text) {
        assert_eq!(AccessEntry::parse(&entry.to_string()), Ok(entry));
    }
});
