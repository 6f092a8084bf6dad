//! Token life cycle and roles: `C_InitToken`, sessions, `C_Login`/`C_Logout`, `C_InitPIN`,
//! `C_SetPIN`, and the PIN retry counters.

use std::sync::Arc;

use tessera_core::ck;
use tessera_core::info::SessionInfo;
use tessera_core::{Rv, SecretBytes};
use tessera_store::{MasterKey, PinRecord, TokenRecord};
use tessera_wire::Reply;

use crate::locked::{lock, TokenCell};
use crate::{Hsm, Login, Session, MAX_PIN_FAILURES, MAX_PIN_LEN, MAX_SESSIONS, MIN_PIN_LEN};

fn check_pin_length(pin: &SecretBytes) -> Result<(), Rv> {
    if (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len()) {
        Ok(())
    } else {
        Err(Rv::PinLenRange)
    }
}

/// The count of wrong PINs of the SO (`so`) or the user of a token since its last right PIN.
fn failures(record: &TokenRecord, so: bool) -> u32 {
    if so {
        record.so_failures
    } else {
        record.user_failures
    }
}

/// The SO (`so`) or user PIN failure counter of a token record, to change.
fn failure_counter(record: &mut TokenRecord, so: bool) -> &mut u32 {
    if so {
        &mut record.so_failures
    } else {
        &mut record.user_failures
    }
}

/// A counted PIN guess being checked, of a token's SO (`so`) or user. However the check ends,
/// dropping this takes it out of the token's checks in flight and wakes the guesses waiting.
struct PinCheck {
    cell: Arc<TokenCell>,
    so: bool,
}

impl Drop for PinCheck {
    fn drop(&mut self) {
        if let Some(token) = lock(&self.cell.token).as_mut() {
            let checking = &mut token.checking[usize::from(self.so)];
            *checking = checking.saturating_sub(1);
        }
        self.cell.pin_checked.notify_all();
    }
}

impl Hsm {
    /// Changes a token's record with `change` and writes it, then keeps it. On a node of a
    /// cluster, a record changed meanwhile by another node is taken and changed again (the
    /// write compares the record it replaces).
    fn write_token(
        &self,
        token: &mut crate::Token,
        token_id: u64,
        change: impl Fn(&mut TokenRecord),
    ) -> Result<(), Rv> {
        for _ in 0..STALE_RETRIES {
            let mut record = token.record.clone();
            change(&mut record);
            match self.store_token(token_id, &record) {
                Ok(()) => {
                    token.record = record;
                    return Ok(());
                }
                Err(tessera_store::StoreError::Stale(_, newer)) => token.record = *newer,
                Err(e) => return Err(crate::store_failure(e)),
            }
        }
        Err(contended(token_id))
    }

    /// Checks a PIN against the SO (`so`) or user PIN record of a token.
    ///
    /// The guess is counted before it is checked. Under the token's lock it is refused
    /// (`CKR_PIN_LOCKED`, no KDF) when the count is full, else the count is raised and written
    /// to the store, and only then is the lock released for the KDF (slow on purpose). A right
    /// PIN puts the count back to 0; a wrong one leaves it, as it was counted already. Checking
    /// the count first and raising it after the KDF would split the check from its effect by a
    /// lock release: guesses sent at once would all pass the check before the first was
    /// counted. And as the count is durable before the KDF starts, no answer (nor a crash, nor
    /// a dropped connection) comes before the guess is on disk.
    fn verify_pin(&self, token_id: u64, so: bool, pin: &SecretBytes) -> Result<MasterKey, Rv> {
        let (record, ordinal, _check) = self.count_pin_guess(token_id, so)?;
        // `_check` ends after the count is settled below, then wakes the guesses waiting.
        match MasterKey::unwrap_peppered(&record, pin.expose(), self.pepper()) {
            // A right PIN ends the lockout cycle (the guesses counted in it, this one too, are
            // forgotten); if that cannot be written the login is refused and the count stays.
            Ok(key) => {
                self.set_pin_failures(token_id, so, 0)?;
                Ok(key)
            }
            Err(_) => {
                self.pin_failure_events(token_id, so, ordinal);
                Err(Rv::PinIncorrect)
            }
        }
    }

    /// Counts one guess at a PIN, durably, before it is checked: returns the PIN record to
    /// check it against, the guess's place in the count (1 to `MAX_PIN_FAILURES`) and the
    /// check in flight. Refused (`CKR_PIN_LOCKED`) when `MAX_PIN_FAILURES` guesses were counted
    /// since the last right PIN and none of them is still being checked, and refused when the
    /// count cannot be written: a guess that is not on disk is not checked.
    fn count_pin_guess(&self, token_id: u64, so: bool) -> Result<(PinRecord, u32, PinCheck), Rv> {
        let cell = self.cell(token_id)?;
        let mut held = lock(&cell.token);
        // On a node of a cluster the count is written only over the record it was decided on:
        // a guess counted meanwhile on another node makes this one decide again on the newer
        // count, so that the cluster as a whole allows `MAX_PIN_FAILURES` guesses.
        for _ in 0..STALE_RETRIES {
            loop {
                let token = held.as_ref().ok_or(Rv::SlotIdInvalid)?;
                if failures(&token.record, so) < MAX_PIN_FAILURES {
                    break;
                }
                if token.checking[usize::from(so)] == 0 {
                    drop(held);
                    let device = self.device.now();
                    let (role, slot) = (device.role(token_id, so), device.slot_of(token_id));
                    self.event(role, "login-refused", format!("slot {slot}, PIN locked"));
                    return Err(Rv::PinLocked);
                }
                // The count is full, but a guess still being checked may be the right PIN,
                // which ends the cycle: wait for the answers rather than refuse a right PIN
                // (say, one of many applications logging in at once) for guesses not known to
                // be wrong. No guess is counted while the count is full, so this waits one KDF
                // at most.
                held = cell
                    .pin_checked
                    .wait(held)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            let token = held.as_mut().ok_or(Rv::SlotIdInvalid)?;
            let pin_record = if so {
                &token.record.so_pin
            } else {
                &token.record.user_pin
            };
            let pin_record = match pin_record {
                Some(pin_record) => pin_record.clone(),
                None if so => return Err(Rv::TokenNotRecognized),
                None => return Err(Rv::UserPinNotInitialized),
            };
            let ordinal = failures(&token.record, so) + 1;
            // Written before the state changes: a failed write leaves the count as it was.
            let mut record = token.record.clone();
            *failure_counter(&mut record, so) = ordinal;
            match self.store_token(token_id, &record) {
                Ok(()) => {}
                Err(tessera_store::StoreError::Stale(_, newer)) => {
                    token.record = *newer;
                    continue;
                }
                Err(e) => return Err(crate::store_failure(e)),
            }
            token.record = record;
            token.checking[usize::from(so)] += 1;
            drop(held);
            return Ok((pin_record, ordinal, PinCheck { cell, so }));
        }
        Err(contended(token_id))
    }

    /// Sets a PIN's failure count and writes it.
    fn set_pin_failures(&self, token_id: u64, so: bool, failures: u32) -> Result<(), Rv> {
        let tokens = self.tokens_of(token_id)?;
        let mut state = tokens.lock(self);
        let token = state.token_mut(token_id)?;
        self.write_token(token, token_id, |record| {
            *failure_counter(record, so) = failures;
        })
    }

    /// Logs a wrong PIN that was the `ordinal`-th guess counted, and the lock when it was the
    /// last one allowed (unless a right PIN checked meanwhile has put the count back to 0).
    fn pin_failure_events(&self, token_id: u64, so: bool, ordinal: u32) {
        let Ok(tokens) = self.tokens_of(token_id) else {
            return;
        };
        let state = tokens.lock(self);
        let role = state.device.role(token_id, so);
        let slot = state.device.slot_of(token_id);
        let locked = state
            .token(token_id)
            .is_ok_and(|token| failures(&token.record, so) >= MAX_PIN_FAILURES);
        self.event(
            role,
            "login-failure",
            format!("slot {slot}, {ordinal} consecutive"),
        );
        if ordinal == MAX_PIN_FAILURES && locked {
            self.event(role, "pin-locked", format!("slot {slot}"));
        }
    }

    pub(crate) fn init_token(
        &self,
        slot: u64,
        so_pin: &SecretBytes,
        label: &[u8],
    ) -> Result<Reply, Rv> {
        let token_id = {
            let device = self.device.now();
            let token_id = device.slot_token(slot)?;
            // The Admin token is set up by `ctconf`; under No Clear PINs a plain C_InitToken
            // would carry the SO PIN in the clear, so only the admin path may initialise.
            if device.is_admin(token_id) || device.flags & tessera_core::flags::NO_CLEAR_PINS != 0 {
                return Err(Rv::AccessDenied);
            }
            token_id
        };
        check_pin_length(so_pin)?;
        if label.len() > 32 {
            return Err(Rv::ArgumentsBad);
        }
        {
            let tokens = self.tokens_of(token_id)?;
            let state = tokens.lock(self);
            if state.sessions().on_token(token_id).next().is_some() {
                return Err(Rv::SessionExists);
            }
            if state.token(token_id)?.record.so_pin.is_none() {
                drop(state);
                return self.reset_token(token_id, so_pin, label, "SO");
            }
        }
        // A token that was initialised before may only be re-initialised with its SO PIN.
        self.verify_pin(token_id, true, so_pin)?;
        self.reset_token(token_id, so_pin, label, "SO")
    }

    pub(crate) fn reset_token(
        &self,
        token_id: u64,
        so_pin: &SecretBytes,
        label: &[u8],
        role: &str,
    ) -> Result<Reply, Rv> {
        let master = MasterKey::generate().map_err(|_| Rv::FunctionFailed)?;
        let so_record = master
            .wrap_peppered(so_pin.expose(), self.kdf_iterations, self.pepper())
            .map_err(|_| Rv::FunctionFailed)?;
        let mut label = label.to_vec();
        label.resize(32, b' ');
        let record = TokenRecord {
            label,
            so_pin: Some(so_record),
            user_pin: None,
            so_failures: 0,
            user_failures: 0,
        };
        let tokens = self.tokens_of(token_id)?;
        let mut state = tokens.lock(self);
        state.token(token_id)?;
        if state.sessions().on_token(token_id).next().is_some() {
            return Err(Rv::SessionExists);
        }
        state.release_sessions();
        self.store_reset_token(token_id, &record).map_err(|e| {
            tracing::error!(token_id, error = %e, "cannot reset the token");
            Rv::DeviceError
        })?;
        let token = state.token_mut(token_id)?;
        token.record = record;
        token.objects.clear();
        token.logins.clear();
        token.master = None;
        let flags = state.device.flags;
        self.refresh_device_objects(&mut state, flags);
        let slot = state.device.slot_of(token_id);
        self.event(role, "token-initialised", format!("slot {slot}"));
        Ok(Reply::Done)
    }

    pub(crate) fn open_session(&self, client: u64, slot: u64, flags: u64) -> Result<Reply, Rv> {
        let token_id = self.device.now().slot_token(slot)?;
        if flags & ck::CKF_SERIAL_SESSION as u64 == 0 {
            return Err(Rv::SessionParallelNotSupported);
        }
        let read_write = flags & ck::CKF_RW_SESSION as u64 != 0;
        let tokens = self.tokens_of(token_id)?;
        let mut state = tokens.lock(self);
        // Looked up again with the token held: a slot deleted meanwhile shifts the others.
        let token_id = state.slot_token(slot)?;
        if state.token(token_id)?.record.so_pin.is_none() {
            return Err(Rv::TokenNotRecognized);
        }
        if !read_write && state.token(token_id)?.login_of(client) == Some(Login::So) {
            return Err(Rv::SessionReadWriteSoExists);
        }
        if state.sessions().len() as u64 >= MAX_SESSIONS {
            return Err(Rv::SessionCount);
        }
        let held = state.sessions().held_by(client);
        if held >= self.limits.sessions_per_client {
            return Err(self.limit_reached(client, "sessions per connection", Rv::SessionCount));
        }
        let handle = state
            .sessions_mut()
            .open(Session::new(client, token_id, read_write));
        Ok(Reply::Handle(handle))
    }

    pub(crate) fn session_info(&self, client: u64, handle: u64) -> Result<SessionInfo, Rv> {
        let tokens = self.tokens_of_session(client, handle)?;
        let state = tokens.lock(self);
        let session = state.session(client, handle)?;
        let login = state.token(session.token_id)?.login_of(client);
        let state_code = match (login, session.read_write) {
            (Some(Login::So), _) => ck::CKS_RW_SO_FUNCTIONS,
            (Some(Login::User), true) => ck::CKS_RW_USER_FUNCTIONS,
            (Some(Login::User), false) => ck::CKS_RO_USER_FUNCTIONS,
            (None, true) => ck::CKS_RW_PUBLIC_SESSION,
            (None, false) => ck::CKS_RO_PUBLIC_SESSION,
        };
        let mut flags = ck::CKF_SERIAL_SESSION;
        if session.read_write {
            flags |= ck::CKF_RW_SESSION;
        }
        Ok(SessionInfo {
            slot: state.device.slot_of(session.token_id),
            state: state_code as u64,
            flags: flags as u64,
            device_error: 0,
        })
    }

    pub(crate) fn login(
        &self,
        client: u64,
        handle: u64,
        user_type: u64,
        pin: &SecretBytes,
    ) -> Result<Reply, Rv> {
        let token_id = {
            let tokens = self.tokens_of_session(client, handle)?;
            let state = tokens.lock(self);
            let session = state.session(client, handle)?;
            let token_id = session.token_id;
            let token = state.token(token_id)?;
            let current = token.login_of(client);
            match user_type as ck::CK_USER_TYPE {
                ck::CKU_SO => {
                    match current {
                        Some(Login::So) => return Err(Rv::UserAlreadyLoggedIn),
                        Some(Login::User) => return Err(Rv::UserAnotherAlreadyLoggedIn),
                        None => {}
                    }
                    let read_only = (state.sessions().on_token(token_id))
                        .any(|s| s.client == client && !s.read_write);
                    if read_only {
                        return Err(Rv::SessionReadOnlyExists);
                    }
                }
                ck::CKU_USER => match current {
                    Some(Login::User) => return Err(Rv::UserAlreadyLoggedIn),
                    Some(Login::So) => return Err(Rv::UserAnotherAlreadyLoggedIn),
                    None => {}
                },
                ck::CKU_CONTEXT_SPECIFIC => {
                    if current != Some(Login::User) {
                        return Err(Rv::UserNotLoggedIn);
                    }
                }
                _ => return Err(Rv::UserTypeInvalid),
            }
            token_id
        };
        let so = user_type == ck::CKU_SO as u64;
        let master = self.verify_pin(token_id, so, pin)?;
        if user_type == ck::CKU_CONTEXT_SPECIFIC as u64 {
            // The waiting operation may go on (v3.0 §5.11, CKA_ALWAYS_AUTHENTICATE).
            self.sessions().get_mut(client, handle)?.authenticate.pop();
            return Ok(Reply::Done);
        }
        let tokens = self.tokens_of(token_id)?;
        let mut state = tokens.lock(self);
        let token = state.token_mut(token_id)?;
        token
            .logins
            .insert(client, if so { Login::So } else { Login::User });
        token.master.get_or_insert(master);
        self.reseal_private_objects(&mut state, token_id);
        Ok(Reply::Done)
    }

    pub(crate) fn logout(&self, client: u64, handle: u64) -> Result<Reply, Rv> {
        let tokens = self.tokens_of_session(client, handle)?;
        let mut state = tokens.lock(self);
        let token_id = state.session(client, handle)?.token_id;
        let token = state.token_mut(token_id)?;
        if token.login_of(client).is_none() {
            return Err(Rv::UserNotLoggedIn);
        }
        token.logout(client);
        // Operations on private keys cannot outlive the login.
        for session in state.sessions_mut().of_client_on(client, token_id) {
            session.operations.clear();
            session.find = None;
        }
        Ok(Reply::Done)
    }

    pub(crate) fn init_pin(
        &self,
        client: u64,
        handle: u64,
        pin: &SecretBytes,
    ) -> Result<Reply, Rv> {
        check_pin_length(pin)?;
        let tokens = self.tokens_of_session(client, handle)?;
        let mut state = tokens.lock(self);
        let session = state.session(client, handle)?;
        let (token_id, read_write) = (session.token_id, session.read_write);
        // The key derivation below is slow on purpose: other tokens' calls go on meanwhile.
        state.release_sessions();
        let token = state.token_mut(token_id)?;
        if token.login_of(client) != Some(Login::So) || !read_write {
            return Err(Rv::UserNotLoggedIn);
        }
        let master = token.master.as_ref().ok_or(Rv::UserNotLoggedIn)?;
        let pin_record = master
            .wrap_peppered(pin.expose(), self.kdf_iterations, self.pepper())
            .map_err(|_| Rv::FunctionFailed)?;
        self.write_token(token, token_id, |record| {
            record.user_pin = Some(pin_record.clone());
            record.user_failures = 0;
        })?;
        Ok(Reply::Done)
    }

    pub(crate) fn set_pin(
        &self,
        client: u64,
        handle: u64,
        old: &SecretBytes,
        new: &SecretBytes,
    ) -> Result<Reply, Rv> {
        check_pin_length(new)?;
        let (token_id, so) = {
            let tokens = self.tokens_of_session(client, handle)?;
            let state = tokens.lock(self);
            let session = state.session(client, handle)?;
            if !session.read_write {
                return Err(Rv::SessionReadOnly);
            }
            let so = state.token(session.token_id)?.login_of(client) == Some(Login::So);
            (session.token_id, so)
        };
        let master = self.verify_pin(token_id, so, old)?;
        let record = master
            .wrap_peppered(new.expose(), self.kdf_iterations, self.pepper())
            .map_err(|_| Rv::FunctionFailed)?;
        let tokens = self.tokens_of(token_id)?;
        let mut state = tokens.lock(self);
        let token = state.token_mut(token_id)?;
        let pin_record = record;
        self.write_token(token, token_id, |record| {
            if so {
                record.so_pin = Some(pin_record.clone());
            } else {
                record.user_pin = Some(pin_record.clone());
            }
        })?;
        Ok(Reply::Done)
    }
}

/// How often a write of a token record is decided again after another node changed it.
const STALE_RETRIES: u32 = 64;

fn contended(token_id: u64) -> Rv {
    tracing::error!(
        token_id,
        "a token record changed on other nodes at every one of {STALE_RETRIES} tries"
    );
    Rv::DeviceError
}
