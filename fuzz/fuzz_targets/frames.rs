//! The frame reader, every request and response decoder (one `Request` / `Reply` enum each)
//! and the finders of sealed records, given any bytes: refused or decoded, never a panic,
//! never an allocation past the frame cap (the length is checked before the body is
//! allocated); a sealed record found in a frame is the one the full decoder reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_wire::{
    decode_request, decode_response, find_sealed_request, find_sealed_response, read_frame,
    Reply, Request,
};

/// Decodes `body` every way a peer's frame is decoded; a record the finders find must be
/// the record the decoders read.
fn check(body: &[u8]) {
    let request = decode_request(body);
    if let Some(found) = find_sealed_request(body) {
        let Ok(tessera_wire::RequestEnvelope {
            id,
            channel: Some(channel),
            request: Request::Protected(record),
            ..
        }) = request
        else {
            panic!("found a sealed request the decoder does not read");
        };
        assert_eq!((found.id, found.channel, found.header), (id, channel, record.header));
        assert_eq!(&body[found.body], &record.body[..]);
        assert_eq!(&body[found.mac], &record.mac[..]);
    }
    let response = decode_response(body);
    if let Some(found) = find_sealed_response(body) {
        let Ok(tessera_wire::ResponseEnvelope {
            id,
            channel: Some(channel),
            result: Ok(Reply::Protected(record)),
            ..
        }) = response
        else {
            panic!("found a sealed reply the decoder does not read");
        };
        assert_eq!((found.id, found.channel, found.header), (id, channel, record.header));
        assert_eq!(&body[found.body], &record.body[..]);
        assert_eq!(&body[found.mac], &record.mac[..]);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = read_frame(&mut &data[..]) {
        assert!(body.len() <= tessera_wire::MAX_FRAME_LEN);
        check(&body);
    }
    check(data);
});
