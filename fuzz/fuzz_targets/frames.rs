//! The frame reader and every request and response decoder (one `Request` / `Reply` enum
//! each), given any bytes: refused or decoded, never a panic, never an allocation past the
//! frame cap (the length is checked before the body is allocated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_wire::{decode_request, decode_response, read_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = read_frame(&mut &data[..]) {
        assert!(body.len() <= tessera_wire::MAX_FRAME_LEN);
        let _ = decode_request(&body);
        let _ = decode_response(&body);
    }
    let _ = decode_request(data);
    let _ = decode_response(data);
});
