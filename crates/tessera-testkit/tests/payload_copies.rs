//! How many times a bulk call's payload is copied in user space, counted by a profiler: a C
//! application (`tests/c/bulk_calls.c`, which copies nothing itself) encrypts 1 MiB buffers with
//! AES-256-GCM through the real library, the library's process and the daemon each under
//! valgrind's DHAT in its copy mode (every `memcpy`, `memmove` and the like, with its size and
//! stack), without a channel and through full secure messaging. Each end's copies of the payload
//! are counted by kind and set against the number this build is known to make — a new copy on
//! the path fails the test, and so does one taken away without the count here (and the table of
//! them in docs/BENCHMARKS.md) following. Not seen here: the kernel's own copies into and out
//! of the socket; a copy made by a loop rather than `memcpy` (byte strings are encoded with
//! `memcpy` for this reason: `tessera_core::bytes::encode_into`); and, in the library's
//! process only, a buffer that grows by `realloc` (DHAT moves the bytes of the host's
//! allocator itself, unrecorded; the daemon's allocator copies with `memcpy`, which is seen).

mod common;

use std::path::Path;
use std::process::Command;

use tessera_testkit::{compile_c, pkcs11_module, sm, Daemon, Transport};

/// The payload of each call.
const SIZE: usize = 1 << 20;
/// Encryptions the application makes (then one decryption).
const CALLS: usize = 3;

/// One copy site: the payload's copies made there, and its stack (innermost first).
struct Site {
    copies: u64,
    frames: Vec<String>,
}

/// The copy sites of a DHAT copy profile that copied at least a payload's size in all, with
/// their bytes over the payload's size (rounded down) as the payload's copies: DHAT sums
/// whatever one stack copied, whether in one piece or in many small ones (a payload copied
/// through a small buffer counts too), and a site that copies a payload may also copy small
/// things (a handshake's messages, the replies that open a session and make the key: far less
/// than a megabyte in a run this short). Sites of small copies only that add up to megabytes
/// are left out by name ([`kind`]).
fn large_copies(profile: &Path) -> Vec<Site> {
    let text = std::fs::read_to_string(profile)
        .unwrap_or_else(|e| panic!("no DHAT profile {}: {e}", profile.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("DHAT's JSON");
    assert_eq!(json["mode"], "copy", "{}", profile.display());
    let table: Vec<String> = json["ftbl"]
        .as_array()
        .expect("a frame table")
        .iter()
        .map(|f| f.as_str().unwrap_or_default().to_string())
        .collect();
    json["pps"]
        .as_array()
        .expect("program points")
        .iter()
        .map(|point| Site {
            copies: point["tb"].as_u64().unwrap_or(0) / SIZE as u64,
            frames: point["fs"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .filter_map(|i| table.get(i.as_u64()? as usize).cloned())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .filter(|site| site.copies > 0)
        .collect()
}

/// The command line that runs a program under DHAT's copy profile, written to `out`.
fn dhat(out: &str) -> String {
    format!("valgrind --tool=dhat --mode=copy --num-callers=40 --read-inline-info=yes --dhat-out-file={out}")
}

/// Runs the application against a daemon that requires `flags` (none: no channel), both under
/// DHAT; the large copies of the library's process and of the daemon.
fn profile(flags: &str) -> (Vec<Site>, Vec<Site>) {
    let _serial = common::serialise();
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.is_ok_and(|v| v.status.success()),
        "this test counts copies with valgrind's DHAT: install valgrind (apt-get install valgrind)"
    );
    let launcher = format!("exec {}", dhat("daemon.dhat"));
    // A library under valgrind is slow to finish its handshake: more time than the default.
    let mut daemon = Daemon::start_prepared(Some(&launcher), |_| {}, &["--frame-timeout", "600"])
        .unwrap_or_else(|log| panic!("tesserad under valgrind: {log}"));
    sm::prepare(&daemon, Transport::Unix, flags);
    let dir = daemon.dir().to_path_buf();
    let program = compile_c("bulk_calls", &dir);
    let client = dir.join("client.dhat");
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {} \"$@\"",
            dhat(&client.display().to_string())
        ))
        .arg("sh")
        .arg(&program)
        .arg(pkcs11_module())
        .arg(sm::USER_PIN)
        .arg(CALLS.to_string())
        .arg(SIZE.to_string())
        .envs(daemon.trust_env())
        .env(
            "ET_HSM_NETCLIENT_SERVERLIST",
            daemon.server_list(Transport::Unix),
        )
        .output()
        .expect("valgrind runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            // The ciphertext and its 16-byte tag.
            && stdout.contains(&format!("encrypted=0x0 len={}", SIZE + 16))
            && stdout.contains("same=1"),
        "{output:?}"
    );
    daemon.stop();
    (
        large_copies(&client),
        large_copies(&dir.join("daemon.dhat")),
    )
}

/// What a copy site is, from the functions on its stack (named alike in a debug and a release
/// build: the copying functions are never inlined, and DHAT reads the inlined frames too).
/// `None`: not a copy of the payload — the store writing its pages (when the token is
/// initialised, not per call) or the PIN's key derivation (64 bytes per HMAC, megabytes in
/// all). aws-lc-rs's `open_in_place` moves the opened plaintext to the start of the buffer it
/// opened, which it already starts (our records and single-part decryptions are opened whole):
/// a `memmove` onto itself, from which glibc returns without a byte copied (0.01 µs against
/// 25 µs for a 1 MiB `memcpy` here); counted apart, as a kind of its own.
fn kind(site: &Site) -> Option<&'static str> {
    let has = |name: &str| site.frames.iter().any(|f| f.contains(name));
    let has_both = |a: &str, b: &str| site.frames.iter().any(|f| f.contains(a) && f.contains(b));
    if has("redb::") || has("PBKDF2") {
        return None;
    }
    Some(if has("bytes::try_copy") {
        "input copied into the call"
    } else if has("Extending") {
        "encoded into a frame or record"
    } else if has_both("Output<", "deliver") {
        "output copied to the application"
    } else if has("bytes::copy") {
        "decoded out of a frame or record"
    } else if has("open_within") {
        IN_PLACE
    } else {
        "unknown"
    })
}

/// Copies of the payload by kind, over the whole run (sorted by kind); panics with the stack
/// of a copy of no known kind.
fn tally(end: &str, sites: &[Site]) -> Vec<(&'static str, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for site in sites {
        let Some(kind) = kind(site) else { continue };
        assert_ne!(
            kind,
            "unknown",
            "{end}: {} copies of the payload from an unknown place:\n{}",
            site.copies,
            site.frames.join("\n")
        );
        *counts.entry(kind).or_insert(0) += site.copies;
    }
    counts.into_iter().collect()
}

/// The kind [`kind`] gives aws-lc-rs's in-place opens.
const IN_PLACE: &str = "opened in place (moved onto itself)";

/// Counts both ends' copies with a daemon that requires `flags`, prints them and checks them
/// against `library` and `daemon` (kind, copies over the run's three encryptions and one
/// decryption), and the in-place opens against `opened` (library, daemon): the opens of a whole
/// buffer there are, at most — a release build's optimiser drops the `memmove` where it sees
/// that the plaintext starts the buffer, a debug build keeps every one, and one more would be
/// an open that does shift its plaintext: a copy.
fn check(flags: &str, library: &[(&str, u64)], daemon: &[(&str, u64)], opened: (u64, u64)) {
    let (client_sites, daemon_sites) = profile(flags);
    let (client, device) = (
        tally("library", &client_sites),
        tally("daemon", &daemon_sites),
    );
    eprintln!("flags {flags:?}, {CALLS} encryptions and a decryption of {SIZE} bytes:");
    for (end, counts) in [("library", &client), ("daemon", &device)] {
        for (kind, copies) in counts.iter() {
            eprintln!("  {end:<8} {kind:<36} {copies}");
        }
    }
    let copies = |list: &[(&str, u64)]| {
        let mut list: Vec<(String, u64)> = list
            .iter()
            .filter(|(k, _)| *k != IN_PLACE)
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        list.sort();
        list
    };
    let in_place = |list: &[(&str, u64)]| {
        list.iter()
            .find(|(k, _)| *k == IN_PLACE)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(copies(&client), copies(library), "the library's copies");
    assert_eq!(copies(&device), copies(daemon), "the daemon's copies");
    assert!(
        in_place(&client) <= opened.0 && in_place(&device) <= opened.1,
        "more in-place opens than whole buffers opened: {} and {}, at most {opened:?}",
        in_place(&client),
        in_place(&device)
    );
}

/// Without a channel, an encryption's payload is copied twice, both in the library (the
/// application's input into the call, the ciphertext into the application's buffer): the
/// library writes the frame around the input (a vectored write); the daemon reads the call's
/// head first and its data into a buffer of its own, which becomes the call's
/// (`tessera_wire::split_request_head`), and writes the result behind its reply frame's head;
/// the library reads the reply's bytes, a decryption's plaintext too, into a buffer of their
/// own in the same way (`split_response_head`).
#[test]
fn a_bulk_call_without_a_channel_copies_its_payload_twice() {
    let calls = CALLS as u64 + 1;
    check(
        "",
        &[
            ("input copied into the call", calls),
            ("output copied to the application", calls),
        ],
        &[],
        // The decryption's AES-GCM, opened where it lies.
        (0, 1),
    );
}

/// Through full secure messaging a bulk payload travels first in its record's message
/// (`tessera_wire::seal_message`): the library seals the call in its own copy of the input, the
/// daemon reads the record into a buffer of its own and opens it there, the payload becomes the
/// call's data, the single-part AES-GCM works in it, the reply is sealed in it, and the library
/// reads and opens the reply the same way — so an encryption's payload is copied twice, both
/// in the library (into the call, and the result into the application's buffer), and never in
/// the daemon, as without a channel.
#[test]
fn a_bulk_call_through_the_channel_copies_its_payload_twice() {
    let calls = CALLS as u64 + 1;
    check(
        "nuNU",
        &[
            ("input copied into the call", calls),
            ("output copied to the application", calls),
        ],
        &[],
        // Each reply's record; each request's record and the decryption's AES-GCM.
        (calls, calls + 1),
    );
}
