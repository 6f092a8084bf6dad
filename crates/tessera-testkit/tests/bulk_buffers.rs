//! Bulk calls through full secure messaging (`nuNU`) do not fault in fresh memory each time:
//! the library keeps its spent 1 MiB buffers (`tessera_core::bytes`) instead of handing them
//! back to the host's allocator, which may return them to the system and fault them in again,
//! page by page, on the next call. With glibc that happened once small calls had shaped the
//! heap (p11-bench: 1 MiB AES-GCM through a channel halved after any other operation).
//!
//! Counted, not timed: the minor page faults of this process (the application, with the library
//! loaded in it) over 1 MiB encryptions and decryptions, read from `/proc/self/stat`.

mod common;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use tessera_testkit::Transport;

/// Minor page faults of this process so far (`minflt`, field 10 of `/proc/self/stat`).
fn minor_faults() -> u64 {
    tessera_testkit::proc_stat_field(std::process::id(), 10)
        .expect("this process's stat")
        .parse()
        .unwrap()
}

#[test]
fn one_mib_calls_through_the_channel_reuse_their_buffers() {
    let f = common::secured_fixture(Transport::Unix, "nuNU");
    let session = f.user_session();
    let key = common::aes_key(&session).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let round = || {
        let mut iv = [9u8; 12];
        let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into()).unwrap());
        let sealed = session.encrypt(&gcm, key, &data).unwrap();
        assert_eq!(session.decrypt(&gcm, key, &sealed).unwrap(), data);
    };
    // Small calls first (they left glibc's heap in the shape that made it trim), then a few
    // bulk rounds to fill the library's pool.
    for _ in 0..2000 {
        session.generate_random_vec(32).unwrap();
    }
    for _ in 0..4 {
        round();
    }
    const ROUNDS: u64 = 20;
    let before = minor_faults();
    for _ in 0..ROUNDS {
        round();
    }
    let per_round = (minor_faults() - before) / ROUNDS;
    // A round moves about 8 MiB through the library (two 1 MiB calls, each with its input
    // copy, sealed record, frames, opened plaintext and output): 2 048 pages if all of it were
    // fresh. Kept buffers fault nothing; what is left is the application's own buffers and
    // noise.
    assert!(
        per_round < 300,
        "{per_round} minor page faults per 1 MiB encrypt-and-decrypt round: the bulk buffers are \
         not being reused"
    );
}
