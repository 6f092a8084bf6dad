//! The frame reader, every request and response decoder (one `Call` / `Reply` enum each)
//! and the finders of sealed records, given any bytes: refused or decoded, never a panic,
//! never an allocation past the frame cap (the length is checked before the body is
//! allocated); a sealed record found in a frame is the one the full decoder reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_wire::{finders_agree_with_decoders, read_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = read_frame(&mut &data[..]) {
        assert!(body.len() <= tessera_wire::MAX_FRAME_LEN);
        assert!(finders_agree_with_decoders(&body));
    }
    assert!(finders_agree_with_decoders(data));
});
