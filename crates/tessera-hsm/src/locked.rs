//! The engine's locks. Each token is an aggregate behind a lock of its own ([`TokenCell`]: its
//! PINs and logins, its objects, its store record, the PIN guesses being checked), so that calls
//! on one token never wait for another token's work. The order, whenever more than one is held:
//! the device's change turn, then tokens by ascending id, then the sessions; the session-object
//! [`Ledger`] and the register of reported limits are leaves, held only for a count.
//!
//! A call fetches the tokens it needs ([`Hsm::tokens_of_session`], [`Hsm::tokens_of`],
//! [`Hsm::tokens_of_slot`], [`Hsm::all_tokens`]) into a [`Tokens`] on its own stack, then locks them
//! into a [`Locked`], which also takes the sessions, but only once the call looks at them, and
//! lets them go again before slow work ([`Locked::release_sessions`]). Holding a token keeps its
//! set of sessions fixed: a session is opened and closed only under its token's lock.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use tessera_core::Rv;

use crate::{device, sessions, Hsm, Session, Token};

/// Takes a lock, carrying on after a panic of another holder: every change is applied after its
/// checks, so what a lock guards stays consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One token behind its own lock; `None` once its slot was deleted (a call that fetched it
/// before then finds it gone, `CKR_SLOT_ID_INVALID`).
pub(crate) struct TokenCell {
    pub(crate) token: Mutex<Option<Token>>,
    /// Signalled when a PIN check of this token ends: a guess at a PIN whose count is full
    /// waits for the checks in flight, one of which may be the right PIN (see `verify_pin`).
    pub(crate) pin_checked: Condvar,
}

impl TokenCell {
    pub(crate) fn new(token: Token) -> Arc<TokenCell> {
        Arc::new(TokenCell {
            token: Mutex::new(Some(token)),
            pin_checked: Condvar::new(),
        })
    }
}

/// The device's tokens by id. The map itself changes only when the Administrator adds or
/// deletes slots; a call holds it only to fetch the cells it needs.
pub(crate) type TokenMap = RwLock<BTreeMap<u64, Arc<TokenCell>>>;

/// The tokens one call needs, fetched and not locked yet, by ascending id (the lock order).
pub(crate) struct Tokens(Vec<(u64, Arc<TokenCell>)>);

impl Hsm {
    fn token_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<TokenCell>>> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The map of tokens, to add or remove one (the Administrator, under the device's turn).
    pub(crate) fn token_map_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<TokenCell>>> {
        self.tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One token's cell (`CKR_SLOT_ID_INVALID` when there is none of that id).
    pub(crate) fn cell(&self, token_id: u64) -> Result<Arc<TokenCell>, Rv> {
        self.token_map()
            .get(&token_id)
            .cloned()
            .ok_or(Rv::SlotIdInvalid)
    }

    /// The token of one token id.
    pub(crate) fn tokens_of(&self, token_id: u64) -> Result<Tokens, Rv> {
        Ok(Tokens(vec![(token_id, self.cell(token_id)?)]))
    }

    /// The token a session of `client` is open on (`CKR_SESSION_HANDLE_INVALID` when the
    /// client has no such session). The sessions are looked at and let go before the token is
    /// locked (the lock order); a session never changes its token.
    pub(crate) fn tokens_of_session(&self, client: u64, session: u64) -> Result<Tokens, Rv> {
        let token_id = self.sessions().get(client, session)?.token_id;
        self.tokens_of(token_id)
    }

    /// The token of a slot. The caller looks the slot up again once it holds the token
    /// ([`Locked::slot_token`]): a slot deleted meanwhile shifts the slots after it.
    pub(crate) fn tokens_of_slot(&self, slot: u64) -> Result<Tokens, Rv> {
        self.tokens_of(self.device.now().slot_token(slot)?)
    }

    /// Every token.
    pub(crate) fn all_tokens(&self) -> Tokens {
        Tokens(
            self.token_map()
                .iter()
                .map(|(id, cell)| (*id, cell.clone()))
                .collect(),
        )
    }
}

impl Tokens {
    /// Each token on its own, for work done a token at a time.
    pub(crate) fn one_by_one(self) -> impl Iterator<Item = Tokens> {
        self.0.into_iter().map(|entry| Tokens(vec![entry]))
    }

    /// Locks the tokens (by ascending id), then reads the device: a change of the device that
    /// touches tokens is published while it holds them, so the two match.
    pub(crate) fn lock<'t>(&'t self, hsm: &'t Hsm) -> Locked<'t> {
        let tokens = (self.0.iter())
            .map(|(id, cell)| (*id, lock(&cell.token)))
            .collect();
        Locked {
            device: hsm.device.now(),
            tokens,
            sessions_lock: &hsm.sessions,
            sessions: OnceCell::new(),
        }
    }
}

/// The tokens a call holds, and the sessions once it looks at them, with the device as it was
/// when the tokens were taken.
pub(crate) struct Locked<'t> {
    pub(crate) device: Arc<device::DeviceView>,
    tokens: Vec<(u64, MutexGuard<'t, Option<Token>>)>,
    sessions_lock: &'t Mutex<sessions::Sessions>,
    sessions: OnceCell<MutexGuard<'t, sessions::Sessions>>,
}

impl<'t> Locked<'t> {
    /// The place of token `token_id` if this call holds it (`None` in it: its slot was
    /// deleted).
    fn place(&self, token_id: u64) -> Option<&Option<Token>> {
        let found = self.tokens.iter().find(|(id, _)| *id == token_id);
        found.map(|(_, token)| &**token)
    }

    fn place_mut(&mut self, token_id: u64) -> Option<&mut Option<Token>> {
        let found = self.tokens.iter_mut().find(|(id, _)| *id == token_id);
        found.map(|(_, token)| &mut **token)
    }

    /// A token this call holds (`CKR_SLOT_ID_INVALID` when its slot was deleted meanwhile).
    pub(crate) fn token(&self, token_id: u64) -> Result<&Token, Rv> {
        let place = self.place(token_id).ok_or_else(|| not_held(token_id))?;
        place.as_ref().ok_or(Rv::SlotIdInvalid)
    }

    pub(crate) fn token_mut(&mut self, token_id: u64) -> Result<&mut Token, Rv> {
        let place = self.place_mut(token_id).ok_or_else(|| not_held(token_id))?;
        place.as_mut().ok_or(Rv::SlotIdInvalid)
    }

    /// The token of a slot, if this call holds it (`CKR_SLOT_ID_INVALID` when the slot now
    /// names another token: a slot before it was deleted since the token was fetched).
    pub(crate) fn slot_token(&self, slot: u64) -> Result<u64, Rv> {
        let token_id = self.device.slot_token(slot)?;
        self.place(token_id)
            .map(|_| token_id)
            .ok_or(Rv::SlotIdInvalid)
    }

    /// A token this call holds, `None` if it holds none of that id: for the calls that fetched
    /// every token and read a device that has one more (a slot added since the fetch, which
    /// they leave out as if they had come a moment earlier).
    pub(crate) fn held(&self, token_id: u64) -> Option<&Token> {
        self.place(token_id).and_then(Option::as_ref)
    }

    /// Every token this call holds, with its id.
    pub(crate) fn tokens_mut(&mut self) -> impl Iterator<Item = (u64, &mut Token)> + use<'_, 't> {
        (self.tokens.iter_mut()).filter_map(|(id, token)| token.as_mut().map(|t| (*id, t)))
    }

    /// Puts `token` in place of the token of that id (a tamper), or takes it away (`None`: its
    /// slot is deleted).
    pub(crate) fn set_token(&mut self, token_id: u64, token: Option<Token>) -> Result<(), Rv> {
        let place = self.place_mut(token_id).ok_or_else(|| not_held(token_id))?;
        *place = token;
        Ok(())
    }

    /// The sessions, locked now if this call had not looked at them yet.
    pub(crate) fn sessions(&self) -> &sessions::Sessions {
        self.sessions.get_or_init(|| lock(self.sessions_lock))
    }

    pub(crate) fn sessions_mut(&mut self) -> &mut sessions::Sessions {
        if self.sessions.get().is_none() {
            let _ = self.sessions.set(lock(self.sessions_lock));
        }
        match self.sessions.get_mut() {
            Some(sessions) => sessions,
            // Set just above.
            None => unreachable!("the sessions were just locked"),
        }
    }

    /// Lets the sessions go before slow work (a store write, a key derivation), so that calls
    /// on other tokens go on meanwhile; looking at them again locks them again. The tokens
    /// held keep their sessions: none is opened or closed on them meanwhile.
    pub(crate) fn release_sessions(&mut self) {
        self.sessions.take();
    }

    pub(crate) fn session(&self, client: u64, handle: u64) -> Result<&Session, Rv> {
        self.sessions().get(client, handle)
    }

    pub(crate) fn session_mut(&mut self, client: u64, handle: u64) -> Result<&mut Session, Rv> {
        self.sessions_mut().get_mut(client, handle)
    }

    /// A change of the device, published: what is read from here on is the new value.
    pub(crate) fn publish(&mut self, change: device::DeviceChange<'_>) {
        self.device = change.publish();
    }
}

/// A token a call did not fetch: a bug of the engine's (tests fail on it), refused in a release
/// build rather than taking the device down.
fn not_held(token_id: u64) -> Rv {
    debug_assert!(false, "token {token_id} was used without being locked");
    Rv::GeneralError
}

/// Bytes of session objects, by the client that holds them and in all, with what the calls
/// under way have reserved: the limits on session-object memory are checked here, across
/// tokens, with no token's lock needed. Kept in step by each token's object set.
#[derive(Default)]
pub(crate) struct Ledger {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Held by objects, by client.
    held: HashMap<u64, u64>,
    /// Reserved by calls that are making an object, by client.
    reserved: HashMap<u64, u64>,
    /// Both, all clients.
    total: u64,
}

fn add(map: &mut HashMap<u64, u64>, client: u64, bytes: u64) {
    *map.entry(client).or_default() += bytes;
}

fn sub(map: &mut HashMap<u64, u64>, client: u64, bytes: u64) {
    if let Some(count) = map.get_mut(&client) {
        *count = count.saturating_sub(bytes);
        if *count == 0 {
            map.remove(&client);
        }
    }
}

/// Which limit a reservation would pass.
pub(crate) enum OverLimit {
    Client,
    Device,
}

impl Ledger {
    /// An object of `client`'s now holds (`add`) or no longer holds `bytes`.
    pub(crate) fn count(&self, client: u64, bytes: u64, add_them: bool) {
        let mut counts = lock(&self.counts);
        if add_them {
            add(&mut counts.held, client, bytes);
            counts.total += bytes;
        } else {
            sub(&mut counts.held, client, bytes);
            counts.total = counts.total.saturating_sub(bytes);
        }
    }

    /// Reserves `bytes` for a session object of `client` that replaces one of `replaced`
    /// bytes (0 for a new one), within `per_client` and `device` bytes; the reservation ends
    /// when the returned value is dropped, after the object is counted.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        client: u64,
        bytes: u64,
        replaced: u64,
        per_client: u64,
        device: u64,
    ) -> Result<Reservation, OverLimit> {
        let mut counts = lock(&self.counts);
        let mine = counts.held.get(&client).copied().unwrap_or(0)
            + counts.reserved.get(&client).copied().unwrap_or(0);
        // The object replaced still counts until its successor does: only the growth is
        // checked against the device and reserved.
        let growth = bytes.saturating_sub(replaced);
        if mine.saturating_sub(replaced) + bytes > per_client {
            return Err(OverLimit::Client);
        }
        if counts.total + growth > device {
            return Err(OverLimit::Device);
        }
        add(&mut counts.reserved, client, growth);
        counts.total += growth;
        Ok(Reservation {
            ledger: self.clone(),
            client,
            bytes: growth,
        })
    }
}

/// Bytes reserved for a session object being made (see [`Ledger::reserve`]).
pub(crate) struct Reservation {
    ledger: Arc<Ledger>,
    client: u64,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut counts = lock(&self.ledger.counts);
        sub(&mut counts.reserved, self.client, self.bytes);
        counts.total = counts.total.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use tessera_core::SecretBytes;
    use tessera_wire::{Call, Reply};

    /// A device of two user slots, each initialised, with a read-write session on each.
    fn two_tokens(dir: &std::path::Path) -> (Arc<Hsm>, u64, [u64; 2]) {
        let options = crate::HsmOptions {
            user_slots: 2,
            kdf_iterations: 1000,
            ..Default::default()
        };
        let hsm = Arc::new(Hsm::open(dir, &options).unwrap());
        let client = hsm.connect();
        let flags =
            (tessera_core::ck::CKF_SERIAL_SESSION | tessera_core::ck::CKF_RW_SESSION) as u64;
        let mut sessions = [0; 2];
        for slot in 0..2 {
            let init = Call::InitToken {
                slot,
                so_pin: SecretBytes::from_slice(b"so-pin"),
                label: b"t".to_vec(),
            };
            hsm.handle(client, true, init).unwrap();
            let Ok(Reply::Handle(session)) =
                hsm.handle(client, true, Call::OpenSession { slot, flags })
            else {
                panic!("no session")
            };
            sessions[slot as usize] = session;
        }
        (hsm, client, sessions)
    }

    /// Creates a session data object in `session` on another thread; whether it was made
    /// within `wait`, and the thread.
    fn create_meanwhile(
        hsm: &Arc<Hsm>,
        client: u64,
        session: u64,
        wait: Duration,
    ) -> (bool, std::thread::JoinHandle<Result<Reply, Rv>>) {
        let worker = {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                use tessera_core::{ck, Attribute};
                let template = tessera_core::Template(vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_DATA as u64),
                    Attribute::bytes(ck::CKA_VALUE, b"made meanwhile"),
                ]);
                hsm.handle(client, true, Call::CreateObject { session, template })
            })
        };
        let deadline = Instant::now() + wait;
        while !worker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (worker.is_finished(), worker)
    }

    #[test]
    fn a_token_held_by_a_slow_call_holds_up_only_its_own_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (hsm, client, [first, second]) = two_tokens(dir.path());
        // The first token held, as a slow call on it (a PIN's key derivation, a store write)
        // holds it, its sessions looked at.
        let tokens = hsm.tokens_of_session(client, first).unwrap();
        let held = tokens.lock(&hsm);
        held.session(client, first).unwrap();
        let mut held = held;
        held.release_sessions();
        // A call on the second token goes through meanwhile ...
        let (finished, worker) = create_meanwhile(&hsm, client, second, Duration::from_secs(10));
        assert!(finished, "a call on another token waited for the held one");
        assert!(matches!(worker.join().unwrap(), Ok(Reply::Handle(_))));
        // ... and one on the held token waits for it, then goes through.
        let (finished, worker) = create_meanwhile(&hsm, client, first, Duration::from_millis(300));
        assert!(
            !finished,
            "a call on the held token did not wait for its lock"
        );
        drop(held);
        assert!(matches!(worker.join().unwrap(), Ok(Reply::Handle(_))));
    }

    #[test]
    fn the_ledger_counts_objects_and_reservations_against_both_limits() {
        let ledger = Arc::new(Ledger::default());
        ledger.count(1, 600, true);
        // Client 1 holds 600 of its 1 000: 400 more fit, 401 do not.
        let held = ledger.reserve(1, 400, 0, 1000, 10_000).ok().unwrap();
        assert!(matches!(
            ledger.reserve(1, 1, 0, 1000, 10_000),
            Err(OverLimit::Client)
        ));
        // Another client is not affected by client 1's limit, only by the device's.
        assert!(matches!(
            ledger.reserve(2, 9_001, 0, 10_000, 10_000),
            Err(OverLimit::Device)
        ));
        let other = ledger.reserve(2, 8_000, 0, 10_000, 10_000).ok().unwrap();
        drop((held, other));
        // A replacement counts only what it adds, and reserves only that: two same-size
        // replacements at once fit at the limit (client 1 holds 600 + 400 of its 1 000) ...
        ledger.count(1, 400, true);
        let first = ledger.reserve(1, 600, 600, 1000, 10_000).ok().unwrap();
        let second = ledger.reserve(1, 400, 400, 1000, 10_000);
        assert!(
            second.is_ok(),
            "a same-size replacement at the limit was refused"
        );
        // ... and one that grows does not.
        assert!(matches!(
            ledger.reserve(1, 401, 400, 1000, 10_000),
            Err(OverLimit::Client)
        ));
        drop((first, second));
        ledger.count(1, 400, false);
        ledger.count(1, 600, false);
        assert_eq!(lock(&ledger.counts).total, 0);
        assert!(lock(&ledger.counts).held.is_empty());
        assert!(lock(&ledger.counts).reserved.is_empty());
    }
}
