//! Multi-part streams: every `C_EncryptUpdate` / `C_DecryptUpdate` of AES-ECB, CBC and CBC-PAD
//! (and CTR, in tests/mechanisms.rs) returns the output of the whole blocks it has (PKCS#11 3.0 §5.8: "C_EncryptUpdate ...
//! continues a multiple-part encryption operation, processing another data part"), and a
//! multi-part operation has no size cap: 4 GiB in 1 MiB parts runs with flat memory in the
//! daemon and in the application. AES-GCM gathers its input (a decryption releases no plaintext
//! before the tag is checked), as docs/pkcs11.md says.

mod common;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use tessera_testkit::Transport;

/// A process's peak resident memory in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Encrypts (or decrypts) `data` in parts of the given sizes, cycled; the output of each
/// update, then the final call's.
fn in_parts(
    session: &Session,
    mechanism: &Mechanism,
    key: ObjectHandle,
    encrypt: bool,
    data: &[u8],
    sizes: &[usize],
) -> Vec<Vec<u8>> {
    if encrypt {
        session.encrypt_init(mechanism, key).unwrap();
    } else {
        session.decrypt_init(mechanism, key).unwrap();
    }
    let mut outputs = Vec::new();
    let mut rest = data;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at((*size).min(rest.len()));
        outputs.push(if encrypt {
            session.encrypt_update(part).unwrap()
        } else {
            session.decrypt_update(part).unwrap()
        });
        rest = tail;
    }
    outputs.push(if encrypt {
        session.encrypt_final().unwrap()
    } else {
        session.decrypt_final().unwrap()
    });
    outputs
}

#[test]
fn updates_return_their_blocks_and_match_the_single_part_call() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let key = common::aes_key(&session).unwrap();
    let iv = [9u8; 16];
    let data: Vec<u8> = (0..1008u32).map(|i| (i * 7) as u8).collect();
    let sizes = [1, 15, 16, 17, 100, 3];
    let mechanisms = [
        ("ECB", Mechanism::AesEcb),
        ("CBC", Mechanism::AesCbc(iv)),
        ("CBC-PAD", Mechanism::AesCbcPad(iv)),
    ];
    for (name, mechanism) in &mechanisms {
        let whole = session.encrypt(mechanism, key, &data).unwrap();
        let parts = in_parts(&session, mechanism, key, true, &data, &sizes);
        // Each update returns every whole block it has: after 1 byte none, after 16 one, ...
        let lengths: Vec<usize> = parts.iter().map(Vec::len).collect();
        let mut fed = 0;
        for (i, size) in sizes.iter().cycle().take(parts.len() - 1).enumerate() {
            let before = fed / 16;
            fed = (fed + size).min(data.len());
            assert_eq!(lengths[i], (fed / 16 - before) * 16, "{name}: update {i}");
        }
        assert_eq!(
            parts.concat(),
            whole,
            "{name}: parts give what the whole gives"
        );
        // Decrypted in parts: CBC-PAD keeps the last block (it may be the padding) until the
        // final call, which strips the padding.
        let decrypted = in_parts(&session, mechanism, key, false, &whole, &sizes);
        assert_eq!(decrypted.concat(), data, "{name}: decrypted in parts");
        if *name == "CBC-PAD" {
            assert_eq!(
                decrypted.last().unwrap().len(),
                0,
                "1008 bytes: a whole pad block"
            );
        }
    }
    // CTR (which cryptoki 0.10 cannot name) in parts: tests/mechanisms.rs, through the wire.
    // GCM gathers its input: its updates return nothing, its final call everything.
    let mut gcm_iv = [3u8; 12];
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut gcm_iv, b"", 128.into()).unwrap());
    let parts = in_parts(&session, &gcm, key, true, &data, &[100]);
    assert!(parts[..parts.len() - 1].iter().all(Vec::is_empty));
    assert_eq!(parts.last().unwrap().len(), data.len() + 16);
}

/// 4 GiB through one CBC encryption in 1 MiB parts: each update returns its 1 MiB, and neither
/// the daemon's nor this application's peak memory grows after the first parts (the daemon
/// refused more than 8 MiB in one multi-part operation before, gathering it all).
#[test]
fn four_gib_in_one_mib_parts_keep_memory_flat() {
    const PART: usize = 1 << 20;
    const PARTS: usize = 4096;
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let key = common::aes_key(&session).unwrap();
    let cbc = Mechanism::AesCbc([0u8; 16]);
    let part: Vec<u8> = (0..PART).map(|i| (i % 251) as u8).collect();
    let daemon = f.daemon.pid().unwrap();
    let me = std::process::id();
    let first = session.encrypt(&cbc, key, &part).unwrap();
    session.encrypt_init(&cbc, key).unwrap();
    let mut peaks = None;
    for i in 0..PARTS {
        let out = session.encrypt_update(&part).unwrap();
        assert_eq!(out.len(), PART, "part {i}");
        if i == 0 {
            assert_eq!(
                out, first,
                "the stream starts where the single-part call does"
            );
        }
        if i == 63 {
            peaks = Some((peak_kib(daemon), peak_kib(me)));
        }
    }
    assert!(session.encrypt_final().unwrap().is_empty());
    let (daemon_before, me_before) = peaks.unwrap();
    let (daemon_after, me_after) = (peak_kib(daemon), peak_kib(me));
    assert!(
        daemon_after <= daemon_before + 16 * 1024,
        "the daemon's peak grew from {daemon_before} KiB to {daemon_after} KiB"
    );
    assert!(
        me_after <= me_before + 16 * 1024,
        "the application's peak grew from {me_before} KiB to {me_after} KiB"
    );
}

/// A bulk ciphertext in the clear leaves the daemon in two writes (its frame's start, then the
/// payload behind it, not copied into the frame): what arrives is the whole reply, byte for
/// byte, and the connection's next replies follow it intact. (Batching of small replies with
/// a split one is not exercised here: these calls are one at a time.)
#[test]
fn a_bulk_reply_written_in_two_parts_arrives_whole() {
    let f = common::fixture(Transport::Unix);
    let session = f.user_session();
    let key = common::aes_key(&session).unwrap();
    let data: Vec<u8> = (0..(1u32 << 20) + 5).map(|i| (i % 253) as u8).collect();
    let mut iv = [5u8; 12];
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, b"aad", 128.into()).unwrap());
    let sealed = session.encrypt(&gcm, key, &data).unwrap();
    assert_eq!(sealed.len(), data.len() + 16);
    // A small call after it on the same connection.
    let random = session.generate_random_vec(32).unwrap();
    assert_eq!(random.len(), 32);
    assert_eq!(
        session.encrypt(&gcm, key, &data).unwrap(),
        sealed,
        "the same key, nonce and data give the same ciphertext"
    );
    assert_eq!(session.decrypt(&gcm, key, &sealed).unwrap(), data);
    // Just above and below the size at which a reply is split.
    for len in [64 * 1024 - 17, 64 * 1024 - 16, 64 * 1024] {
        let sealed = session.encrypt(&gcm, key, &data[..len]).unwrap();
        assert_eq!(session.decrypt(&gcm, key, &sealed).unwrap(), &data[..len]);
    }
}
