//! Pages for small secrets: locked in RAM (`mlock`, so they are never written to swap) and left
//! out of core dumps (`MADV_DONTDUMP`).
//!
//! Every PIN and every key value fits in a slot of at most [`LARGEST`] bytes. Slots come in
//! power-of-two sizes carved out of 64 KiB anonymous mappings; a spent slot is wiped and kept for
//! the next secret of its size, so the mappings are made once and live as long as the process.
//! Locking may fail (`RLIMIT_MEMLOCK` too small): the slot is then still excluded from dumps,
//! and [`report`] says what could not be locked and why, for the daemon to warn about.
//!
//! Nothing here can deadlock a forked child. In the process that last held the pool, a thread
//! waits for it, up to a second (its holder is a live thread that only pushes, pops or maps
//! one chunk): a secret does not go to the heap because other threads were busy with theirs.
//! In a forked child, where a thread that held the pool at the fork no longer exists, the pool
//! is taken with a bounded number of `try_lock` attempts; a caller that does not get it there
//! (or a failed mapping anywhere) falls back to the heap, where the secret is still wiped when
//! dropped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use memmap2::{Advice, MmapMut, MmapOptions};
use zeroize::Zeroize;

/// Slot sizes, smallest first.
const CLASSES: [usize; 10] = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/// The largest secret kept in locked pages: an RSA-8192 private key in PKCS#8 is about 4.8 KiB.
pub const LARGEST: usize = CLASSES[CLASSES.len() - 1];

/// Bytes mapped at a time for one slot size.
const CHUNK: usize = 64 * 1024;

/// Attempts at the pool's lock in a forked child before falling back to the heap (and the
/// attempts that only yield, before a waiting thread sleeps between attempts).
const ATTEMPTS: usize = 64;

/// How long a thread of the process that last held the pool waits for it.
const WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One slot of locked memory, owned by one secret.
pub struct Slot(&'static mut [u8]);

impl Slot {
    /// The slot's bytes (its whole capacity).
    pub fn bytes(&self) -> &[u8] {
        self.0
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.0
    }

    /// How many bytes the slot holds.
    pub fn capacity(&self) -> usize {
        self.0.len()
    }
}

/// How much of the memory holding secrets is locked, and why the rest is not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Bytes mapped for secrets and locked in RAM.
    pub locked: usize,
    /// Bytes mapped for secrets that could not be locked.
    pub unlocked: usize,
    /// The first error from `mlock` or `madvise`, if any.
    pub error: Option<String>,
}

struct Pool {
    free: [Vec<&'static mut [u8]>; CLASSES.len()],
    report: Report,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: [const { Vec::new() }; CLASSES.len()],
    report: Report {
        locked: 0,
        unlocked: 0,
        error: None,
    },
});

/// The process that last held the pool (0: none yet). A thread of that process may wait for
/// the pool (up to [`WAIT`]); a forked child, whose copy of the lock may belong to a thread it
/// does not have, may not until it has held the pool itself.
static HOLDER: AtomicU32 = AtomicU32::new(0);

fn pool() -> Option<MutexGuard<'static, Pool>> {
    // Set at the first busy attempt: whether the pool's last holder is this process (then its
    // holder is a live thread that lets go after a push, a pop or a mapping, so waiting up to
    // [`WAIT`] never gives up on a live one; the deadline only matters when the pid merely
    // looks like this process's — a child in a new pid namespace, a recycled pid — and the
    // lock is a copy held by no one: a second per secret then, not a hang), and since when.
    let mut busy: Option<(bool, std::time::Instant)> = None;
    for attempt in 0.. {
        let pool = match POOL.try_lock() {
            Ok(pool) => pool,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let (this_process, started) = *busy.get_or_insert_with(|| {
                    let this_process = HOLDER.load(Ordering::Relaxed) == std::process::id();
                    (this_process, std::time::Instant::now())
                });
                if (this_process && started.elapsed() > WAIT)
                    || (!this_process && attempt >= ATTEMPTS)
                {
                    return None;
                }
                if attempt < ATTEMPTS {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                continue;
            }
        };
        HOLDER.store(std::process::id(), Ordering::Relaxed);
        return Some(pool);
    }
    None
}

fn class_of(capacity: usize) -> Option<usize> {
    CLASSES.iter().position(|&size| size >= capacity)
}

/// A slot of at least `capacity` bytes, or `None` when the secret is too large for one or no
/// locked memory could be had (the caller then uses the heap).
pub fn take(capacity: usize) -> Option<Slot> {
    let class = class_of(capacity)?;
    let mut pool = pool()?;
    if pool.free[class].is_empty() {
        pool.refill(class)?;
    }
    pool.free[class].pop().map(Slot)
}

/// Wipes a slot and keeps it for the next secret of its size.
pub fn give(slot: Slot) {
    slot.0.zeroize();
    let Some(class) = class_of(slot.capacity()) else {
        return;
    };
    // Without the pool's lock (a forked child) the wiped slot is left unused.
    if let Some(mut pool) = pool() {
        pool.free[class].push(slot.0);
    }
}

/// What the memory holding secrets is like so far. Takes one slot first, so that a process
/// that has not yet held a secret learns now whether locking works.
pub fn report() -> Report {
    if let Some(slot) = take(1) {
        give(slot);
    }
    // No pool (a forked child whose copy of it stayed busy): nothing known, said as nothing
    // locked; the daemon asks once at start, before any other thread uses it.
    pool().map(|pool| pool.report.clone()).unwrap_or_default()
}

impl Pool {
    /// Maps, locks and marks one more chunk of slots of size `CLASSES[class]`.
    fn refill(&mut self, class: usize) -> Option<()> {
        let map: MmapMut = MmapOptions::new().len(CHUNK).map_anon().ok()?;
        let dump = map.advise(Advice::DontDump);
        let lock = map.lock();
        match (&lock, &dump) {
            (Ok(()), _) => self.report.locked += CHUNK,
            (Err(_), _) => self.report.unlocked += CHUNK,
        }
        if self.report.error.is_none() {
            self.report.error = match (lock, dump) {
                (Err(e), _) => Some(format!("mlock: {e}")),
                (_, Err(e)) => Some(format!("madvise(MADV_DONTDUMP): {e}")),
                _ => None,
            };
        }
        // The chunk lives as long as the process: its slots are handed out and taken back.
        let chunk: &'static mut MmapMut = Box::leak(Box::new(map));
        let slots = chunk.chunks_exact_mut(CLASSES[class]);
        self.free[class].extend(slots);
        Some(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping in `/proc/self/smaps` that holds `address`.
    pub(crate) fn vm_flags(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if inside {
                    return flags.trim().to_owned();
                }
                continue;
            }
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((start, end)) = range {
                let parse = |hex| usize::from_str_radix(hex, 16);
                if let (Ok(start), Ok(end)) = (parse(start), parse(end)) {
                    inside = (start..end).contains(&address);
                }
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    #[test]
    fn slots_are_locked_and_left_out_of_core_dumps() {
        let slot = take(20).expect("a slot");
        assert_eq!(slot.capacity(), 32);
        let flags = vm_flags(slot.bytes().as_ptr() as usize);
        let report = report();
        assert!(
            flags.split(' ').any(|f| f == "dd"),
            "not MADV_DONTDUMP: {flags}"
        );
        assert!(
            flags.split(' ').any(|f| f == "lo"),
            "not locked: {flags} ({report:?}; RLIMIT_MEMLOCK too small for this test?)"
        );
        assert!(
            report.locked >= CHUNK && report.error.is_none(),
            "{report:?}"
        );
        give(slot);
    }

    #[test]
    fn a_spent_slot_is_wiped_before_reuse() {
        let mut slot = take(1000).expect("a slot");
        slot.bytes_mut().fill(0xA5);
        let address = slot.bytes().as_ptr();
        give(slot);
        // Another test may take the same slot meanwhile; any slot handed out is clean.
        let again = take(1000).expect("a slot");
        assert!(
            again.bytes().iter().all(|&b| b == 0),
            "slot at {address:?} not wiped"
        );
        give(again);
    }

    #[test]
    fn a_secret_waits_for_a_busy_pool_rather_than_going_to_the_heap() {
        give(take(20).expect("a slot"));
        let busy = pool().expect("the pool");
        let (started, waiting) = std::sync::mpsc::channel();
        let taker = std::thread::spawn(move || {
            started.send(()).expect("send");
            let slot = take(20);
            let flags = slot.as_ref().map(|s| vm_flags(s.bytes().as_ptr() as usize));
            if let Some(slot) = slot {
                give(slot);
            }
            flags
        });
        waiting.recv().expect("the taker started");
        // Far longer than 64 yields: the taker must still be waiting when the pool is free.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!taker.is_finished(), "take() gave up on a busy pool");
        drop(busy);
        let flags = taker
            .join()
            .expect("join")
            .expect("a locked slot, not the heap");
        assert!(flags.split(' ').any(|f| f == "dd"), "not a slot: {flags}");
    }

    #[test]
    fn too_large_secrets_get_no_slot() {
        give(take(LARGEST).expect("a slot of the largest size"));
        assert!(take(LARGEST + 1).is_none());
    }
}
