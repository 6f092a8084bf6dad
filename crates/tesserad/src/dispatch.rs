//! Which call runs where: quick calls are answered on the connection's own task, the others
//! (PIN checks, disk writes, RSA, key generation, large data) on the blocking pool, where a
//! slow one holds up nothing else; large frames and records are decoded and opened there too.
//! And what a call leaves on the stack of the thread that ran it ([`after`]) is scrubbed: on
//! the blocking pool at once, on an I/O thread once its reply is on its way ([`pay_scrub`]).

use std::sync::{Arc, Mutex};

use tessera_hsm::Hsm;
use tessera_wire::{decode_request, Call, FrameError, Keys, RequestEnvelope, Work};
use tokio::sync::OwnedSemaphorePermit;

use crate::connection::outbox::{answer, Outbox};
use crate::secure::{self, Secure};

/// Data up to this size is handled on the I/O thread; larger runs on the blocking pool.
pub(crate) const SMALL: usize = 16 * 1024;

/// Templates and attribute lists up to this many entries are handled on the I/O thread; work
/// on longer ones (matching every object against every attribute) runs on the blocking pool.
const FEW: usize = 64;

/// Decodes a request frame: a large one on the blocking pool (decoding a template of 500 000
/// attributes takes tens of milliseconds, which the I/O thread spends on other connections).
/// The frame is handed back with the result, for the caller to wipe when it carried a secret.
pub(crate) async fn decode(body: Vec<u8>) -> (Vec<u8>, Result<RequestEnvelope, FrameError>) {
    decoding(body.len() <= SMALL, move || {
        let decoded = decode_request(&body);
        (body, decoded)
    })
    .await
}

/// Decodes a bulk call read in three parts (`tessera_wire::decode_request_split`), as
/// [`decode`] does a frame: on the blocking pool when what is around its data is large (a large
/// signature). The head and tail are handed back, for the caller to wipe when they carried a
/// secret.
pub(crate) async fn decode_split(
    head: Vec<u8>,
    payload: Vec<u8>,
    tail: Vec<u8>,
) -> ([Vec<u8>; 2], Result<RequestEnvelope, FrameError>) {
    decoding(head.len() + tail.len() <= SMALL, move || {
        let decoded = tessera_wire::decode_request_split(&head, payload, &tail);
        ([head, tail], decoded)
    })
    .await
}

/// Runs `decode` here when its input is `small`, else on the blocking pool; what it hands
/// back comes with its result (nothing, and an error, when the pool could not run it).
async fn decoding<T: Default + Send + 'static>(
    small: bool,
    decode: impl FnOnce() -> (T, Result<RequestEnvelope, FrameError>) + Send + 'static,
) -> (T, Result<RequestEnvelope, FrameError>) {
    if small {
        return decode();
    }
    tokio::task::spawn_blocking(decode)
        .await
        .unwrap_or_else(|_| {
            let failed = std::io::Error::other("decoding the request failed");
            (T::default(), Err(FrameError::Io(failed)))
        })
}

/// Whether a template is small enough to be handled on the I/O thread.
fn small_template(template: &tessera_core::Template) -> bool {
    template.0.len() <= FEW && template.iter().map(|a| a.value.len()).sum::<usize>() <= SMALL
}

/// Whether a call is answered at once, on the connection's own task: the light ones of the
/// call table (`tessera_wire::Traits::work`), and those whose work depends on their input when
/// that input is small. The others run on the blocking pool (PIN checks, disk writes, RSA, key
/// generation, large data), where a slow one holds up nothing else.
fn quick(hsm: &Hsm, client: u64, call: &Call, work: Work) -> bool {
    // On a node of a cluster, the calls that catch up with the cluster, or may answer from
    // it, wait for etcd: never on the I/O thread.
    if hsm.cluster_name().is_some()
        && matches!(
            call,
            Call::OpenSession { .. }
                | Call::TokenInfo { .. }
                | Call::FindObjectsInit { .. }
                | Call::FindObjectsFirst { .. }
                | Call::Once { .. }
                | Call::Login { .. }
                | Call::DeviceStatus
        )
    {
        return false;
    }
    match work {
        Work::Light => true,
        Work::Heavy => false,
        Work::ByInput => light_input(hsm, client, call),
    }
}

/// For the calls whose work depends on their input: whether this input keeps it light. An
/// operation's calls depend on its mechanism too (RSA is heavy), and the calls after its init
/// on what it gathered: the device's session says.
fn light_input(hsm: &Hsm, client: u64, call: &Call) -> bool {
    match call {
        Call::OperationInit { mechanism, .. } => !tessera_hsm::uses_rsa(mechanism.ty),
        Call::OperationSingle {
            session,
            operation,
            data,
            ..
        }
        | Call::OperationUpdate {
            session,
            operation,
            data,
        } => hsm.light_operation(client, *session, *operation, data.len(), SMALL),
        Call::OperationFinal {
            session, operation, ..
        } => hsm.light_operation(client, *session, *operation, 0, SMALL),
        Call::GetAttributes { types, .. } => types.len() <= FEW,
        Call::FindObjectsInit { template, .. } | Call::FindObjectsFirst { template, .. } => {
            small_template(template)
        }
        Call::GenerateRandom { len, .. } => *len as usize <= SMALL,
        // Session objects live in memory only; token objects are written to disk.
        Call::GenerateKey { template, .. } | Call::CreateObject { template, .. } => {
            !matches!(template.bool(tessera_core::ck::CKA_TOKEN), Ok(Some(true)))
                && small_template(template)
        }
        Call::DestroyObject { object, .. } => *object >= tessera_hsm::SESSION_OBJECT_BASE,
        Call::OperationOnce {
            mechanism, data, ..
        } => data.len() <= SMALL && !tessera_hsm::uses_rsa(mechanism.ty),
        _ => false,
    }
}

/// Counts an answered request in the metrics; `started` is `None` when they are off.
fn count(
    traits: &tessera_wire::Traits,
    result: &Result<tessera_wire::Reply, tessera_core::Rv>,
    started: Option<std::time::Instant>,
) {
    if let Some(started) = started {
        let outcome = result.as_ref().map(|_| ()).map_err(|rv| rv.code());
        crate::metrics::request(traits, outcome, started.elapsed());
    }
}

/// One request to answer, in the clear or inside a channel.
pub(crate) struct Job<'a> {
    pub(crate) hsm: &'a Arc<Hsm>,
    pub(crate) channel: Option<&'a Arc<Mutex<Secure>>>,
    pub(crate) out: &'a Outbox,
    pub(crate) client: u64,
    pub(crate) id: u64,
}

impl Job<'_> {
    /// Answers a quick request at once; runs any other on the blocking pool, where a slow one
    /// holds up nothing else and its reply is sealed and queued (large ones off the I/O thread).
    pub(crate) fn run(self, request: Call, slot: OwnedSemaphorePermit) {
        // From here (the request decoded, or its record opened) to its result, the wait for
        // the worker pool included.
        let started = crate::metrics::start();
        let protected = self.channel.is_some();
        let traits = request.traits();
        let keys = traits.keys;
        if quick(self.hsm, self.client, &request, traits.work) {
            let result = self.hsm.handle(self.client, protected, request);
            count(&traits, &result, started);
            let secret_reply = matches!(&result, Ok(reply) if reply.carries_secret());
            answer(self.out, self.channel.map(|c| &**c), self.id, result, slot);
            after(keys, secret_reply, Thread::Io);
            return;
        }
        // The I/O thread decoded this request (a PIN or key value passed through its stack) or
        // may hold the marks of key use that this call ends: it scrubs its own stack too.
        if matches!(keys, Keys::Brings | Keys::Ends) {
            after(keys, false, Thread::Io);
        }
        let (hsm, channel, out) = (self.hsm.clone(), self.channel.cloned(), self.out.clone());
        let (client, id) = (self.client, self.id);
        tokio::task::spawn_blocking(move || {
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                hsm.handle(client, protected, request)
            }));
            let result = handled.unwrap_or_else(|_| {
                tracing::error!(client, "request handler failed");
                Err(tessera_core::Rv::GeneralError)
            });
            count(&traits, &result, started);
            let secret_reply = matches!(&result, Ok(reply) if reply.carries_secret());
            answer(&out, channel.as_deref(), id, result, slot);
            after(keys, secret_reply, Thread::Pool);
        });
    }
}

/// Requests being handled by the I/O threads now, all connections together (a request counts
/// from its reading until it is answered or handed to the pool).
static HANDLING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One request counted in [`HANDLING`] while it lives.
pub(crate) struct Handling(());

impl Handling {
    /// Counts a request that the I/O thread starts handling.
    pub(crate) fn enter() -> Handling {
        HANDLING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Handling(())
    }

    /// Whether this is the only request being handled: then slow work for it (a handshake's
    /// signature) may run on the I/O thread, sparing two thread hand-offs, as no other
    /// connection waits for that thread. Alone it does not tell load apart for work that runs
    /// there: with one I/O thread, such work is always the only request being handled when it
    /// comes (a handshake also asks that no other handshake be underway).
    pub(crate) fn alone(&self) -> bool {
        HANDLING.load(std::sync::atomic::Ordering::Relaxed) == 1
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        HANDLING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `work` on the connection's channel state on the blocking pool and waits for it, so that
/// the I/O thread serves other connections meanwhile (a panic answers CKR_GENERAL_ERROR).
pub(crate) async fn off_thread<T: Send + 'static>(
    secure: &Arc<Mutex<Secure>>,
    work: impl FnOnce(&mut Secure) -> Result<T, u64> + Send + 'static,
) -> Result<T, u64> {
    let secure = secure.clone();
    tokio::task::spawn_blocking(move || work(&mut secure::lock(&secure)))
        .await
        .unwrap_or(Err(tessera_core::Rv::GeneralError.code()))
}

/// Runs `work` on the connection's channel state: on the blocking pool when it is `large`
/// (see [`off_thread`]), else at once on the I/O thread.
pub(crate) async fn on_channel<T: Send + 'static>(
    secure: &Arc<Mutex<Secure>>,
    large: bool,
    work: impl FnOnce(&mut Secure) -> Result<T, u64> + Send + 'static,
) -> Result<T, u64> {
    if large {
        off_thread(secure, work).await
    } else {
        work(&mut secure::lock(secure))
    }
}

thread_local! {
    /// Keys were used on this thread since its stack was last scrubbed.
    static KEYS_ON_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This I/O thread owes its stack a scrub ([`pay_scrub`]).
    static SCRUB_OWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The thread that ran a call: its scrub is done at once on the blocking pool, whose reply is
/// already on its way; on an I/O thread the reply is written by the connection's writer task,
/// which runs on this thread only after the call's task yields, so the scrub waits for it.
#[derive(Clone, Copy)]
pub(crate) enum Thread {
    Io,
    Pool,
}

/// What a call left on the stack of the thread that ran it is overwritten ([`scrub_stack`], a
/// memset of [`SCRUBBED_STACK`]: microseconds and the caches' contents, so not after every
/// call), by what the call does with keys (`tessera_wire::Keys`, its row in the call table) and
/// whether its reply carried a secret: a call that brought a PIN or key value is scrubbed as
/// soon as it is answered; one that used or made keys marks the stack; the end of a use
/// (logout, destroy, session close) scrubs a marked stack.
fn after(keys: Keys, secret_reply: bool, thread: Thread) {
    let marked = KEYS_ON_STACK.with(|k| k.get());
    let scrub = match keys {
        Keys::Brings => true,
        Keys::Ends => marked,
        Keys::Uses | Keys::None => secret_reply,
    };
    if scrub {
        KEYS_ON_STACK.with(|k| k.set(false));
        scrub_after(thread);
    } else if keys == Keys::Uses {
        KEYS_ON_STACK.with(|k| k.set(true));
    }
}

/// Scrubs this thread's stack if a call it answered owes it: called by an I/O thread once the
/// reply has had its turn to be written, in the poll for the next request and before it handles
/// another request (at about the depth the call ran from). A 64 KiB memset on the path between
/// a reply and its writing was a tenth of a small call's time.
pub(crate) fn pay_scrub() {
    if SCRUB_OWED.with(|o| o.replace(false)) {
        scrub_stack();
    }
}

/// [`pay_scrub`] from the runtime's park hook, when the I/O thread goes idle: the hook runs
/// higher on the stack than the connection's task did (the scheduler's frames and the
/// task's polls lie between them), so it overwrites twice as deep.
pub(crate) fn pay_scrub_when_idle() {
    if SCRUB_OWED.with(|o| o.replace(false)) {
        scrub_stack_deep();
    }
}

/// Key material was handled on this thread (a call's, or the channel's own: a handshake's
/// signature and key agreements, the key confirmation, a rekey): on the blocking pool it
/// scrubs at once, on the I/O thread it owes the scrub ([`pay_scrub`]).
pub(crate) fn scrub_after(thread: Thread) {
    match thread {
        Thread::Pool => scrub_stack(),
        Thread::Io => SCRUB_OWED.with(|o| o.set(true)),
    }
}

/// How much of the stack below the caller [`scrub_stack`] overwrites: deeper than the engine's
/// calls go on it (the memory scan of `tests/secrets_in_memory.rs` finds no marker with it).
/// 32 KiB was just enough for the debug build until HashML-DSA's paths deepened the operation
/// calls' frames; 64 KiB leaves room (a memset of about 3 us, paid only by calls that bring a
/// secret, return one, or end a key's use).
const SCRUBBED_STACK: usize = 64 * 1024;

/// Overwrites the stack below the caller with zeros: what a call that handled a PIN or a key
/// left in the frames of the functions it ran (key schedules, copies made on the way) is
/// overwritten before the thread serves anything else.
#[inline(never)]
pub(crate) fn scrub_stack() {
    let mut area = [0u8; SCRUBBED_STACK];
    // The compiler must write the zeros: the area escapes.
    std::hint::black_box(&mut area);
}

/// [`scrub_stack`] twice as deep, for a caller higher on the stack than the call it scrubs
/// after.
#[inline(never)]
fn scrub_stack_deep() {
    let mut area = [0u8; 2 * SCRUBBED_STACK];
    std::hint::black_box(&mut area);
}
