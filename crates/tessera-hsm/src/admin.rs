//! Device administration: status, first-time set-up of the Admin token, and the changes that
//! need the Administrator (flags, slots, token init, event log, clock, transport mode, tamper).
//! Also the device object through which applications read the security flags.

use tessera_core::{ck, flags, Rv, SecretBytes};
use tessera_store::{MasterKey, TokenRecord};
use tessera_wire::{AdminCommand, DeviceStatus, Event, Reply, SlotStatus};

use crate::object::Attributes;
use crate::{Hsm, Locked, Login, Object, MAX_PIN_LEN, MIN_PIN_LEN};

/// The handle of the device object every token shows (class `CKO_HW_FEATURE`).
pub const DEVICE_OBJECT: u64 = (1 << 40) - 1;
/// `CKA_HW_FEATURE_TYPE` of the device object.
pub const CKH_TESSERA_DEVICE: u64 = ck::CKH_VENDOR_DEFINED as u64 + 0x5453;
/// Vendor attribute of the device object: the security flags (`CK_ULONG`, the bits of
/// docs/reference.md).
pub const CKA_TESSERA_SECURITY_FLAGS: u64 = ck::CKA_VENDOR_DEFINED as u64 + 0x5453_0001;
/// Vendor attribute of the device object: the device serial number (bytes).
pub const CKA_TESSERA_SERIAL: u64 = ck::CKA_VENDOR_DEFINED as u64 + 0x5453_0002;
/// Most user slots a device may have.
pub const MAX_USER_SLOTS: u64 = 64;

fn pin_length(pin: &SecretBytes) -> Result<(), Rv> {
    if (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len()) {
        Ok(())
    } else {
        Err(Rv::PinLenRange)
    }
}

impl Hsm {
    /// Records a security event stamped with the device clock (written with the next batch,
    /// or on disk when this returns, as the kind asks: see the event log).
    pub(crate) fn event(&self, role: &str, kind: &str, detail: String) {
        if kind == "pin-locked" {
            self.pin_lockouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.events
            .record(&self.store, self.clock(), role, kind, detail);
    }

    /// Rebuilds the device object of every token the call holds (after the flags change).
    pub(crate) fn refresh_device_objects(&self, state: &mut Locked<'_>, flags: u64) {
        let mut attributes = Attributes::default();
        attributes.set_ulong(ck::CKA_CLASS, ck::CKO_HW_FEATURE as u64);
        attributes.set_ulong(ck::CKA_HW_FEATURE_TYPE, CKH_TESSERA_DEVICE);
        attributes.set_flag(ck::CKA_TOKEN, true);
        attributes.set_flag(ck::CKA_PRIVATE, false);
        attributes.set_flag(ck::CKA_MODIFIABLE, false);
        attributes.set_flag(ck::CKA_COPYABLE, false);
        attributes.set_flag(ck::CKA_DESTROYABLE, false);
        attributes.set(ck::CKA_LABEL as u64, b"Tessera device".to_vec());
        attributes.set(CKA_TESSERA_SECURITY_FLAGS, flags.to_le_bytes().to_vec());
        attributes.set(CKA_TESSERA_SERIAL, self.serial.as_bytes().to_vec());
        for (_, token) in state.tokens_mut() {
            let object = Object::new(attributes.clone(), None, None);
            token.objects.insert(DEVICE_OBJECT, object);
        }
    }

    pub(crate) fn device_status(&self) -> DeviceStatus {
        self.events.flush(&self.store);
        let info = self.device_info();
        // Asked of etcd before any token is held: no token waits for the cluster's answer.
        let cluster = self.cluster_status();
        let tokens = self.all_tokens();
        let state = tokens.lock(self);
        let slots = state
            .device
            .user_tokens
            .iter()
            .enumerate()
            .filter_map(|(slot, id)| {
                // A slot added since the tokens were fetched is left out (see `held`).
                let token = state.held(*id)?;
                Some(SlotStatus {
                    slot: slot as u64,
                    label: String::from_utf8_lossy(&token.record.label)
                        .trim_end()
                        .to_string(),
                    initialized: token.record.so_pin.is_some(),
                    user_pin: token.record.user_pin.is_some(),
                    sessions: state.sessions().on_token(*id).count() as u64,
                    objects: token
                        .objects
                        .keys()
                        .filter(|h| **h != DEVICE_OBJECT)
                        .count() as u64,
                })
            })
            .collect();
        let admin_ready = state
            .held(state.device.admin_token)
            .is_some_and(|t| t.record.so_pin.is_some() && t.record.user_pin.is_some());
        DeviceStatus {
            info,
            clock: self.clock(),
            flags: state.device.flags,
            transport_mode: state.device.transport_mode,
            sessions: state.sessions().len() as u64,
            admin_ready,
            identity: state.device.identity.fingerprint().is_some(),
            identity_fingerprint: state.device.identity.fingerprint(),
            events: self.store.events().map(|e| e.len() as u64).unwrap_or(0),
            cluster,
            slots,
            requests: self.requests.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// First-time set-up: the ASO PIN (Admin token SO) and the Administrator PIN (its user).
    pub(crate) fn admin_setup(
        &self,
        aso_pin: &SecretBytes,
        admin_pin: &SecretBytes,
    ) -> Result<Reply, Rv> {
        pin_length(aso_pin)?;
        pin_length(admin_pin)?;
        let master = MasterKey::generate().map_err(|_| Rv::FunctionFailed)?;
        let so_pin = Some(
            master
                .wrap_peppered(aso_pin.expose(), self.kdf_iterations, self.pepper())
                .map_err(|_| Rv::FunctionFailed)?,
        );
        let user_pin = Some(
            master
                .wrap_peppered(admin_pin.expose(), self.kdf_iterations, self.pepper())
                .map_err(|_| Rv::FunctionFailed)?,
        );
        let mut label = b"Admin Token".to_vec();
        label.resize(32, b' ');
        let record = TokenRecord {
            label,
            so_pin,
            user_pin,
            so_failures: 0,
            user_failures: 0,
        };
        let tokens = self.tokens_of(self.device.now().admin_token)?;
        let mut state = tokens.lock(self);
        let admin = state.device.admin_token;
        if state.token(admin)?.record.so_pin.is_some() {
            return Err(Rv::AdminAlreadySetUp);
        }
        self.store_reset_token(admin, &record)
            .map_err(crate::store_failure)?;
        state.token_mut(admin)?.record = record;
        self.event(
            "ASO",
            "admin-setup",
            "ASO and Administrator PINs set".into(),
        );
        Ok(Reply::Done)
    }

    /// A change by the Administrator: `session` must be on the Admin slot, logged in as its user.
    pub(crate) fn admin(
        &self,
        client: u64,
        session: u64,
        command: AdminCommand,
    ) -> Result<Reply, Rv> {
        {
            let tokens = self.tokens_of_session(client, session)?;
            let state = tokens.lock(self);
            let current = state.session(client, session)?;
            if !state.device.is_admin(current.token_id) {
                return Err(Rv::AccessDenied);
            }
            if state.token(current.token_id)?.login_of(client) != Some(Login::User) {
                return Err(Rv::UserNotLoggedIn);
            }
        }
        match command {
            AdminCommand::SetFlags(bits) => self.set_flags(bits, client),
            AdminCommand::InitToken {
                slot,
                label,
                so_pin,
            } => self.admin_init_token(slot, &label, &so_pin),
            AdminCommand::AddSlots(count) => self.add_slots(count),
            AdminCommand::DeleteSlot(slot) => self.delete_slot(slot),
            AdminCommand::Events => {
                let time = self.clock();
                self.events.count_channels(&self.store, time, true);
                let (events, verification) = self
                    .events
                    .read(&self.store)
                    .map_err(crate::store_failure)?;
                let events_for_check = events.clone();
                let shown = events
                    .into_iter()
                    .map(|e| Event {
                        sequence: e.sequence,
                        time: e.time,
                        role: e.role,
                        kind: e.kind,
                        detail: e.detail,
                    })
                    .collect();
                let mut checked = vec![format!(
                    "chain: every entry's MAC and its link to the one before (device key protection: {})",
                    self.protection
                )];
                let mut problem = verification.problem;
                match crate::rollback::check(
                    self.store.generation().map_err(crate::store_failure)?,
                    &events_for_check,
                    &self.witness.recorded(),
                    self.witness.path(),
                ) {
                    Ok(lines) => checked.extend(lines),
                    Err(rollback) => {
                        problem.get_or_insert(rollback);
                    }
                }
                Ok(Reply::Events(shown, problem, checked))
            }
            AdminCommand::PurgeEvents => {
                self.events
                    .purge(&self.store, self.clock(), "Administrator")
                    .map_err(crate::store_failure)?;
                Ok(Reply::Done)
            }
            AdminCommand::SetClock(time) => {
                let mut change = self.device.change();
                let before = self.clock();
                change.record.clock_offset = time as i64 - crate::time::now() as i64;
                self.store
                    .update_device(&change.record, &[], &[], &[])
                    .map_err(crate::store_failure)?;
                change.publish();
                let detail = format!(
                    "from {} to {}",
                    tessera_core::time::clock(before),
                    tessera_core::time::clock(time)
                );
                self.event("Administrator", "clock-changed", detail);
                Ok(Reply::Done)
            }
            AdminCommand::SetTransportMode(mode) => {
                if mode > 2 {
                    return Err(Rv::ArgumentsBad);
                }
                let mut change = self.device.change();
                let before = change.transport_mode;
                change.record.transport_mode = mode;
                self.store
                    .update_device(&change.record, &[], &[], &[])
                    .map_err(crate::store_failure)?;
                change.publish();
                self.event(
                    "Administrator",
                    "transport-mode-changed",
                    format!("{before} -> {mode}"),
                );
                Ok(Reply::Done)
            }
            AdminCommand::Tamper => self.tamper("Administrator", "software tamper command"),
            AdminCommand::GenerateIdentity {
                target,
                curve,
                replace,
            } => self.generate_identity(target, &curve, replace),
            AdminCommand::PikRequest { curve, replace } => self.pik_request(&curve, replace),
            AdminCommand::SignRequest(request) => self.sign_identity_request(&request),
            AdminCommand::ImportPic { pic, chain } => self.import_pic(&pic, chain),
            AdminCommand::AddPeer(certificate) => self.add_peer(&certificate),
            AdminCommand::RemovePeer(prefix) => self.remove_peer(&prefix),
            AdminCommand::Peers => Ok(self.peers()),
            AdminCommand::RemoveMember(serial) => self.remove_member(&serial),
            AdminCommand::Channels => Ok(self.channel_list()),
            AdminCommand::TerminateChannels(which) => {
                let count = self.terminate_channels(which, "terminated by the Administrator");
                if which.is_some() && count == 0 {
                    return Err(Rv::ArgumentsBad);
                }
                self.event(
                    "Administrator",
                    "channels-terminated",
                    format!("{count} channel(s)"),
                );
                Ok(Reply::Number(count as u64))
            }
        }
    }

    fn set_flags(&self, bits: u64, client: u64) -> Result<Reply, Rv> {
        let known = flags::FLAGS.iter().fold(0, |all, f| all | f.bit);
        if bits & !known != 0 {
            return Err(Rv::ArgumentsBad);
        }
        let change = self.device.change();
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        let before = change.flags;
        if before & flags::MODE_LOCKED != 0 {
            self.event(
                "Administrator",
                "flags-change-refused",
                "Mode Locked".into(),
            );
            return Err(Rv::ModeLocked);
        }
        if bits & flags::NEED_IDENTITY != 0 && change.identity.fingerprint().is_none() {
            return Err(Rv::IdentityRequired);
        }
        let mut change = change;
        // On a node of a cluster the flags are the cluster's: written there first, over the
        // flags this decision was made on (a change made meanwhile on another node is taken,
        // and this one decided again on it).
        match self.store_flags(bits) {
            Ok(()) => {}
            Err(tessera_store::StoreError::StaleFlags(newer)) => {
                drop(state);
                drop(tokens);
                drop(change);
                self.take_flags(newer, "set on another node of the cluster", || true);
                return self.set_flags(bits, client);
            }
            Err(e) => return Err(crate::store_failure(e)),
        }
        change.record.flags = bits;
        self.store
            .update_device(&change.record, &[], &[], &[])
            .map_err(crate::store_failure)?;
        state.publish(change);
        self.refresh_device_objects(&mut state, bits);
        let detail = format!("{:?} -> {:?}", flags::letters(before), flags::letters(bits));
        self.event("Administrator", "flags-changed", detail);
        drop(state);
        self.after_flags_changed(bits, Some(client));
        Ok(Reply::Done)
    }

    /// What follows a change of the flags: the channels end, as they were agreed under the old
    /// policy (the Administrator's own carries on: `except`), and sessions opened in the clear
    /// when a channel is now required.
    pub(crate) fn after_flags_changed(&self, bits: u64, except: Option<u64>) {
        // Channels were agreed under the old policy (the Administrator's own carries on).
        self.terminate_channels_except(None, except, "the security flags changed");
        // Sessions opened in the clear end too when a channel is now required: a library
        // must not go on to send a PIN on one (its connection is closed with a notice).
        if tessera_channel::Policy::from_device_flags(bits).requires_channel() {
            let ended = self.end_clear_sessions();
            self.event(
                "Administrator",
                "clear-sessions-ended",
                format!(
                    "{ended} {} opened without a channel, and their connections",
                    if ended == 1 { "session" } else { "sessions" }
                ),
            );
        }
    }

    fn admin_init_token(&self, slot: u64, label: &[u8], so_pin: &SecretBytes) -> Result<Reply, Rv> {
        pin_length(so_pin)?;
        if label.len() > 32 {
            return Err(Rv::ArgumentsBad);
        }
        let token_id = {
            let device = self.device.now();
            let token_id = device.slot_token(slot)?;
            if device.is_admin(token_id) {
                return Err(Rv::SlotIdInvalid);
            }
            token_id
        };
        self.reset_token(token_id, so_pin, label, "Administrator")
    }

    fn add_slots(&self, count: u64) -> Result<Reply, Rv> {
        self.slots_are_fixed()?;
        let mut change = self.device.change();
        let total = change.user_tokens.len() as u64 + count;
        if count == 0 || total > MAX_USER_SLOTS {
            return Err(Rv::ArgumentsBad);
        }
        let blank = TokenRecord::default();
        let device = &mut change.record;
        let new: Vec<u64> = (device.next_token..device.next_token + count).collect();
        device.next_token += count;
        device.user_tokens.extend(&new);
        let put: Vec<(u64, &TokenRecord)> = new.iter().map(|t| (*t, &blank)).collect();
        self.store
            .update_device(device, &put, &new, &[])
            .map_err(crate::store_failure)?;
        let mut map = self.token_map_mut();
        for token_id in &new {
            let token = crate::Token::blank(&self.ledger);
            map.insert(*token_id, crate::locked::TokenCell::new(token));
        }
        drop(map);
        // The new tokens are held while the change is published (no call can use them
        // before), and get their device object.
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        let flags = change.flags;
        state.publish(change);
        self.refresh_device_objects(&mut state, flags);
        self.event(
            "Administrator",
            "slots-added",
            format!("{count} added, {total} user slots"),
        );
        Ok(Reply::Done)
    }

    fn delete_slot(&self, slot: u64) -> Result<Reply, Rv> {
        self.slots_are_fixed()?;
        let mut change = self.device.change();
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        let token_id = state.device.slot_token(slot)?;
        if state.device.is_admin(token_id) {
            return Err(Rv::SlotIdInvalid);
        }
        if change.user_tokens.len() == 1 {
            return Err(Rv::ArgumentsBad);
        }
        if state.sessions().on_token(token_id).next().is_some() {
            return Err(Rv::SessionExists);
        }
        change.record.user_tokens.retain(|t| *t != token_id);
        self.store
            .update_device(&change.record, &[], &[], &[token_id])
            .map_err(crate::store_failure)?;
        // A call that fetched the token before finds it gone once it gets its lock.
        state.set_token(token_id, None)?;
        self.token_map_mut().remove(&token_id);
        state.publish(change);
        let left = state.device.user_tokens.len();
        self.event(
            "Administrator",
            "slot-deleted",
            format!("slot {slot} deleted, {left} user slots"),
        );
        Ok(Reply::Done)
    }

    /// A cluster's slots are fixed when it is founded (every node has them):
    /// `CKR_FUNCTION_NOT_SUPPORTED` on a node.
    fn slots_are_fixed(&self) -> Result<(), Rv> {
        match self.cluster_name() {
            Some(name) => {
                tracing::warn!(cluster = %name, "slots cannot be added or deleted on a node of a cluster");
                self.event(
                    "Administrator",
                    "slots-change-refused",
                    format!("a node of cluster {name}: the cluster's slots are fixed"),
                );
                Err(Rv::FunctionNotSupported)
            }
            None => Ok(()),
        }
    }

    /// What a hardware tamper does: every token (the Admin token too) loses its objects and
    /// PINs, the flags return to Default Mode (Mode Locked cleared), every session ends.
    /// Identity keys and certificates are kept.
    pub(crate) fn tamper(&self, role: &str, cause: &str) -> Result<Reply, Rv> {
        // A node of a cluster leaves it first: the blank tokens below are this node's only.
        self.leave_cluster_at_tamper();
        let mut change = self.device.change();
        let tokens = self.all_tokens();
        let mut state = tokens.lock(self);
        change.record.flags = 0;
        let all: Vec<u64> = state.device.slot_tokens().collect();
        let blank = TokenRecord::default();
        let put: Vec<(u64, &TokenRecord)> = all.iter().map(|t| (*t, &blank)).collect();
        self.store
            .update_device(&change.record, &put, &all, &[])
            .map_err(crate::store_failure)?;
        state.sessions_mut().clear();
        for token_id in &all {
            let mut blank = crate::Token::blank(&self.ledger);
            // PIN checks still running end on the new token: their count goes on.
            blank.checking = state.token(*token_id).map_or([0, 0], |t| t.checking);
            state.set_token(*token_id, Some(blank))?;
        }
        state.publish(change);
        self.refresh_device_objects(&mut state, 0);
        crate::crypto::forget_parsed_keys();
        self.event(role, "tamper", cause.into());
        drop(state);
        self.terminate_channels(None, "tamper");
        Ok(Reply::Done)
    }
}
