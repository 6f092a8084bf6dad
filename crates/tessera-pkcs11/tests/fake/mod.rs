//! A scripted device for the library's tests: a Unix socket that speaks the wire protocol with
//! canned answers, and a log of the requests it got. It checks no keys and keeps no state; the
//! answers are shaped so that a test can tell what the library sent and delivered:
//!
//! - encryption XORs the data with `0xFF` (a single-part one appends a 16-byte tag of `0xA5`);
//!   decryption undoes it (and checks the tag);
//! - a signature is `sig:` then the data; verification checks that;
//! - random bytes are `0x5A`;
//! - wrapped keys are `wrapped <key> #<n>`, `n` counting the `WrapKey` requests;
//! - new objects get handles 100, 101, ...

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki_sys as ck;
use tessera_core::info::{DeviceInfo, Version};
use tessera_core::SecretBytes;
use tessera_wire::{
    decode_request, encode_response, read_frame, Call, Message, Operation, Reply, Response,
    ResponseEnvelope, PROTOCOL_VERSION,
};

/// The tag of a single-part encryption.
pub const TAG: [u8; 16] = [0xA5; 16];

/// A running fake device.
pub struct FakeDevice {
    /// Its socket.
    pub path: PathBuf,
    log: Arc<Mutex<Vec<Call>>>,
}

impl FakeDevice {
    /// Starts a device on a fresh socket (`name` keeps the test files apart).
    pub fn start(name: &str) -> FakeDevice {
        let dir =
            std::env::temp_dir().join(format!("tessera-pkcs11-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("device.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            let counters = Arc::new(Counters::default());
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&shared);
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || serve(stream, &log, &counters));
            }
        });
        FakeDevice { path, log }
    }

    /// Points the library's configuration at this device (and at no configuration file).
    pub fn configure(&self) {
        std::env::set_var(tessera_config::SERVER_LIST, &self.path);
        std::env::set_var("TESSERA_USER_CONFIG", "/nonexistent/tessera/user");
        std::env::set_var("TESSERA_SYSTEM_CONFIG", "/nonexistent/tessera/system");
    }

    /// The requests received since the last call.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The length of random data for which the fake device answers with a handle.
pub const WRONG_SHAPE: u64 = 13;

#[derive(Default)]
struct Counters {
    wraps: AtomicU64,
    objects: AtomicU64,
}

fn serve(mut stream: UnixStream, log: &Mutex<Vec<Call>>, counters: &Counters) {
    loop {
        let Ok(body) = read_frame(&mut stream) else {
            return;
        };
        let envelope = decode_request(&body).unwrap();
        // The fake device speaks in the clear only.
        let Message::Call(call) = envelope.message else {
            panic!("the fake device got a secure-messaging message");
        };
        let result = answer(&call, counters);
        let frame = encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: envelope.id,
            channel: None,
            result: result.map(Response::Reply),
        });
        // Logged before the answer leaves, so the log is complete when the call returns.
        log.lock().unwrap().push(call);
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

fn flip(data: &[u8]) -> Vec<u8> {
    data.iter().map(|byte| byte ^ 0xFF).collect()
}

fn signature(data: &[u8]) -> Vec<u8> {
    let mut signature = b"sig:".to_vec();
    signature.extend_from_slice(data);
    signature
}

fn answer(request: &Call, counters: &Counters) -> Result<Reply, u64> {
    if let Call::OperationOnce {
        session,
        operation,
        data,
        signature,
        ..
    } = request
    {
        // Init and single-part call in one: the call's answer.
        let single = Call::OperationSingle {
            session: *session,
            operation: *operation,
            data: data.clone(),
            signature: signature.clone(),
        };
        return answer(&single, counters);
    }
    Ok(match request {
        Call::FindObjectsFirst { max, .. } => Reply::Found {
            handles: (1..=(*max).min(2)).collect(),
            exhausted: *max >= 2,
        },
        Call::FindObjects { .. } => Reply::Handles(Vec::new()),
        Call::OperationFinal { .. } => Reply::Bytes(b"final".to_vec()),
        Call::DeviceInfo => Reply::Device(DeviceInfo {
            serial: "1".into(),
            model: "fake".into(),
            manufacturer: "Tessera".into(),
            firmware: Version { major: 1, minor: 0 },
            hardware: Version { major: 1, minor: 0 },
            slot_count: 1,
            channel_required: false,
        }),
        Call::OpenSession { .. } => Reply::Handle(7),
        Call::OperationUpdate {
            operation: Operation::Encrypt | Operation::Decrypt,
            data,
            ..
        } => Reply::Bytes(flip(data)),
        Call::OperationSingle {
            operation: Operation::Encrypt,
            data,
            ..
        } => {
            let mut sealed = flip(data);
            sealed.extend_from_slice(&TAG);
            Reply::Bytes(sealed)
        }
        Call::OperationSingle {
            operation: Operation::Decrypt,
            data,
            ..
        } => {
            let Some(ciphertext) = data.strip_suffix(&TAG) else {
                return Err(ck::CKR_ENCRYPTED_DATA_INVALID as u64);
            };
            Reply::Secret(SecretBytes::new(flip(ciphertext)))
        }
        Call::OperationSingle {
            operation: Operation::Sign,
            data,
            ..
        } => Reply::Bytes(signature(data)),
        Call::OperationSingle {
            operation: Operation::Verify,
            data,
            signature: given,
            ..
        } => {
            if *given != signature(data) {
                return Err(ck::CKR_SIGNATURE_INVALID as u64);
            }
            Reply::Verified
        }
        // A device that answers with the wrong shape of reply (for the library's check).
        Call::GenerateRandom {
            len: WRONG_SHAPE, ..
        } => Reply::Handle(1),
        Call::GenerateRandom { len, .. } => Reply::Bytes(vec![0x5A; *len as usize]),
        Call::WrapKey { key, .. } => {
            let n = counters.wraps.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::Bytes(format!("wrapped {key} #{n}").into_bytes())
        }
        Call::GenerateKey { .. }
        | Call::UnwrapKey { .. }
        | Call::DeriveKey { .. }
        | Call::CreateObject { .. } => {
            Reply::Handle(100 + counters.objects.fetch_add(1, Ordering::SeqCst))
        }
        Call::OperationInit { .. }
        | Call::OperationUpdate { .. }
        | Call::DigestKey { .. }
        | Call::SessionCancel { .. }
        | Call::Login { .. }
        | Call::Logout { .. }
        | Call::DestroyObject { .. }
        | Call::CloseSession { .. }
        | Call::CloseAllSessions { .. }
        | Call::FindObjectsFinal { .. } => Reply::Done,
        _ => return Err(ck::CKR_FUNCTION_NOT_SUPPORTED as u64),
    })
}
