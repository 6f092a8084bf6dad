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
    decode_request, encode_response, read_frame, Operation, Reply, Request, ResponseEnvelope,
    PROTOCOL_VERSION,
};

/// The tag of a single-part encryption.
pub const TAG: [u8; 16] = [0xA5; 16];

/// A running fake device.
pub struct FakeDevice {
    /// Its socket.
    pub path: PathBuf,
    log: Arc<Mutex<Vec<Request>>>,
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
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

#[derive(Default)]
struct Counters {
    wraps: AtomicU64,
    objects: AtomicU64,
}

fn serve(mut stream: UnixStream, log: &Mutex<Vec<Request>>, counters: &Counters) {
    loop {
        let Ok(body) = read_frame(&mut stream) else {
            return;
        };
        let envelope = decode_request(&body).unwrap();
        let result = answer(&envelope.request, counters);
        let frame = encode_response(&ResponseEnvelope {
            version: PROTOCOL_VERSION,
            id: envelope.id,
            channel: None,
            result,
        });
        // Logged before the answer leaves, so the log is complete when the call returns.
        log.lock().unwrap().push(envelope.request);
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

fn answer(request: &Request, counters: &Counters) -> Result<Reply, u64> {
    if let Request::OperationOnce {
        session,
        operation,
        data,
        signature,
        ..
    } = request
    {
        // Init and single-part call in one: the call's answer.
        let single = Request::OperationSingle {
            session: *session,
            operation: *operation,
            data: data.clone(),
            signature: signature.clone(),
        };
        return answer(&single, counters);
    }
    Ok(match request {
        Request::FindObjectsFirst { max, .. } => Reply::Found {
            handles: (1..=(*max).min(2)).collect(),
            exhausted: *max >= 2,
        },
        Request::FindObjects { .. } => Reply::Handles(Vec::new()),
        Request::OperationFinal { .. } => Reply::Bytes(b"final".to_vec()),
        Request::DeviceInfo => Reply::Device(DeviceInfo {
            serial: "1".into(),
            model: "fake".into(),
            manufacturer: "Tessera".into(),
            firmware: Version { major: 1, minor: 0 },
            hardware: Version { major: 1, minor: 0 },
            slot_count: 1,
            channel_required: false,
        }),
        Request::OpenSession { .. } => Reply::Handle(7),
        Request::OperationUpdate {
            operation: Operation::Encrypt | Operation::Decrypt,
            data,
            ..
        } => Reply::Bytes(flip(data)),
        Request::OperationSingle {
            operation: Operation::Encrypt,
            data,
            ..
        } => {
            let mut sealed = flip(data);
            sealed.extend_from_slice(&TAG);
            Reply::Bytes(sealed)
        }
        Request::OperationSingle {
            operation: Operation::Decrypt,
            data,
            ..
        } => {
            let Some(ciphertext) = data.strip_suffix(&TAG) else {
                return Err(ck::CKR_ENCRYPTED_DATA_INVALID as u64);
            };
            Reply::Secret(SecretBytes::new(flip(ciphertext)))
        }
        Request::OperationSingle {
            operation: Operation::Sign,
            data,
            ..
        } => Reply::Bytes(signature(data)),
        Request::OperationSingle {
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
        Request::GenerateRandom { len, .. } => Reply::Bytes(vec![0x5A; *len as usize]),
        Request::WrapKey { key, .. } => {
            let n = counters.wraps.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::Bytes(format!("wrapped {key} #{n}").into_bytes())
        }
        Request::GenerateKey { .. }
        | Request::UnwrapKey { .. }
        | Request::DeriveKey { .. }
        | Request::CreateObject { .. } => {
            Reply::Handle(100 + counters.objects.fetch_add(1, Ordering::SeqCst))
        }
        Request::OperationInit { .. }
        | Request::OperationUpdate { .. }
        | Request::DigestKey { .. }
        | Request::SessionCancel { .. }
        | Request::Login { .. }
        | Request::Logout { .. }
        | Request::CloseSession { .. }
        | Request::CloseAllSessions { .. }
        | Request::FindObjectsFinal { .. } => Reply::Done,
        _ => return Err(ck::CKR_FUNCTION_NOT_SUPPORTED as u64),
    })
}
