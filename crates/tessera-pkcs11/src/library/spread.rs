//! Work Load Distribution and High Availability (`ET_PTKC_GENERAL_LIBRARY_MODE=WLD|HA`): the
//! application sees virtual slots (`ET_PTKC_WLD_SLOT_<n>=<label>[,<serial>]`), each over the
//! tokens of that label (and serial) on every device of the server list — the nodes of a
//! cluster, or devices whose tokens are kept alike.
//!
//! - A session opens on the member with the fewest of this application's sessions; a member
//!   that fails with a device or connection error is left out for `ET_PTKC_HA_RECOVER_DELAY`,
//!   and the session opens on the next.
//! - A login on a virtual slot reaches every member: the library opens a *keeper* session on
//!   each other member and logs in there with the same PIN (kept no longer than the call), so
//!   that a session opened there later is logged in, as PKCS#11 says of a token's sessions.
//!   A logout ends them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys as ck;
use tessera_client::{ClientError, Device};
use tessera_config::{LibraryMode, WldSlot};
use tessera_core::{Rv, SecretBytes};
use tessera_wire::{Call, Reply};

use super::{failure, probe, with, DeviceSlots, Library};
use crate::CkResult;

/// A session that holds a login on one member for the application.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keeper {
    pub remote: u64,
    pub generation: u64,
}

/// The virtual slots and what the library knows of their members.
pub struct Spread {
    pub(super) mode: LibraryMode,
    pub(super) slots: Vec<WldSlot>,
    /// By virtual slot number: the members found (device number, the device's slot).
    pub(super) members: HashMap<u64, Vec<(usize, u64)>>,
    /// Devices left out after a failure, and since when.
    pub(super) dropped: HashMap<usize, Instant>,
    pub(super) recover_delay: Duration,
    /// How long an HA call waits for a member to take its session over.
    pub(super) recover_wait: Duration,
    /// Logins held on members: by (virtual slot, device).
    pub(super) keepers: HashMap<(u64, usize), Keeper>,
}

impl Spread {
    /// The spread of `slots` in `mode` (WLD or HA).
    pub fn new(
        mode: LibraryMode,
        slots: Vec<WldSlot>,
        recover_delay: Duration,
        recover_wait: Duration,
    ) -> Spread {
        Spread {
            mode,
            slots,
            members: HashMap::new(),
            dropped: HashMap::new(),
            recover_delay,
            recover_wait,
            keepers: HashMap::new(),
        }
    }

    fn slot(&self, number: u64) -> Option<&WldSlot> {
        self.slots.iter().find(|s| s.number == number)
    }

    /// Whether `device` is left out now (a device whose delay is over is tried again).
    fn is_dropped(&self, device: usize) -> bool {
        self.dropped
            .get(&device)
            .is_some_and(|since| since.elapsed() < self.recover_delay)
    }

    /// The members of virtual slot `number` that are not left out.
    pub(super) fn live_members(&self, number: u64) -> Vec<(usize, u64)> {
        self.members
            .get(&number)
            .map(|members| {
                members
                    .iter()
                    .copied()
                    .filter(|(device, _)| !self.is_dropped(*device))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Leaves `device` out, after a device or connection error.
    pub(super) fn drop_device(&mut self, device: usize) {
        if self.dropped.insert(device, Instant::now()).is_none() {
            tracing::warn!(
                device,
                delay_s = self.recover_delay.as_secs(),
                "a device of the virtual slots failed: left out until the recovery delay is over"
            );
        }
        // Its keepers stay listed: a logout still ends them there if the device is back.
    }
}

/// Whether an error is the device's or its connection's (the member is left out), rather
/// than an answer about the call.
pub(super) fn device_failed(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unreachable { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::BadReply { .. }
    ) || error.rv() == Rv::DeviceError.code()
        || error.rv() == Rv::DeviceRemoved.code()
}

/// Finds the members of every virtual slot: asks each device that is not left out for its
/// slots and their tokens' labels and serials.
fn discover(
    devices: &[Arc<Device>],
    slots: &[WldSlot],
    left_out: &[usize],
) -> HashMap<u64, Vec<(usize, u64)>> {
    let mut members: HashMap<u64, Vec<(usize, u64)>> = HashMap::new();
    for (number, device) in devices.iter().enumerate() {
        if left_out.contains(&number) {
            continue;
        }
        let DeviceSlots::Up(count) = probe(number, device) else {
            continue;
        };
        for local in 0..count {
            let Ok((Reply::Token(info), _)) = device.call(None, Call::TokenInfo { slot: local })
            else {
                continue;
            };
            let label = info.label.trim_end();
            let serial = info.serial.trim_end();
            for slot in slots {
                let matches = slot.label == label
                    && slot.serial.as_deref().is_none_or(|wanted| wanted == serial);
                if matches {
                    members
                        .entry(slot.number)
                        .or_default()
                        .push((number, local));
                }
            }
        }
    }
    members
}

/// Looks for the members again (at `C_GetSlotList`, and when a virtual slot has none left).
pub(super) fn refresh() -> CkResult {
    // What it asks about, taken under the lock; the asking is done outside it.
    let (devices, slots, left_out) = with(|library| {
        let spread = library.spread.as_ref().ok_or(Rv::GeneralError.code())?;
        let left_out: Vec<usize> = (0..library.devices.len())
            .filter(|d| spread.is_dropped(*d))
            .collect();
        Ok((library.devices.clone(), spread.slots.clone(), left_out))
    })?;
    let members = discover(&devices, &slots, &left_out);
    with(|library| {
        if let Some(spread) = library.spread.as_mut() {
            spread.members = members;
        }
        Ok(())
    })
}

/// `C_GetSlotList` of the virtual slots: with `token_present`, those with a member.
pub(super) fn slot_list(token_present: bool) -> CkResult<Vec<u64>> {
    refresh()?;
    with(|library| {
        let spread = library.spread.as_ref().ok_or(Rv::GeneralError.code())?;
        Ok(spread
            .slots
            .iter()
            .filter(|slot| !token_present || !spread.live_members(slot.number).is_empty())
            .map(|slot| slot.number)
            .collect())
    })
}

impl Library {
    /// This application's sessions on `device` (keepers not counted).
    fn sessions_on(&self, device: usize) -> usize {
        self.sessions
            .values()
            .filter(|s| s.id.device == device)
            .count()
    }
}

/// The member a call on virtual slot `raw` goes to (looking for members again if it has
/// none left): device number, device, the device's slot.
pub(super) fn member(raw: u64) -> CkResult<Option<(usize, Arc<Device>, u64)>> {
    member_except(raw, usize::MAX)
}

/// The least loaded live member of virtual slot `raw` other than device `except` (HA moves a
/// session off `except`, which may still count as live: its connection was lost).
pub(super) fn member_except(
    raw: u64,
    except: usize,
) -> CkResult<Option<(usize, Arc<Device>, u64)>> {
    let pick = |library: &mut Library| -> CkResult<Option<(usize, Arc<Device>, u64)>> {
        let spread = library.spread.as_ref().ok_or(Rv::GeneralError.code())?;
        spread.slot(raw).ok_or(Rv::SlotIdInvalid.code())?;
        let best = spread
            .live_members(raw)
            .into_iter()
            .filter(|(device, _)| *device != except)
            .min_by_key(|(device, _)| (library.sessions_on(*device), *device));
        Ok(best.and_then(|(number, local)| {
            library
                .devices
                .get(number)
                .map(|device| (number, Arc::clone(device), local))
        }))
    };
    if let Some(found) = with(pick)? {
        return Ok(Some(found));
    }
    refresh()?;
    with(pick)
}

/// Leaves device `number` out (a device or connection error), if the library spreads.
pub(super) fn drop_device(number: usize) {
    let _ = with(|library| {
        if let Some(spread) = library.spread.as_mut() {
            spread.drop_device(number);
        }
        Ok(())
    });
}

/// After a login on session `handle` of virtual slot `raw` on device `on`: the same login on
/// every other live member, through a keeper session (kept until the logout). A member that
/// fails is left out; one that refuses the PIN (it is not the same token) is left out too.
pub(super) fn spread_login(raw: u64, on: usize, user_type: u64, pin: &SecretBytes) -> CkResult {
    let (members, devices) = with(|library| {
        let spread = library.spread.as_ref().ok_or(Rv::GeneralError.code())?;
        Ok((spread.live_members(raw), library.devices.clone()))
    })?;
    for (number, local) in members.into_iter().filter(|(d, _)| *d != on) {
        let Some(device) = devices.get(number) else {
            continue;
        };
        let keeper = with(|library| {
            Ok(library
                .spread
                .as_ref()
                .and_then(|s| s.keepers.get(&(raw, number)).copied()))
        })?;
        let keeper = match keeper {
            Some(keeper) => keeper,
            None => {
                // An SO login needs a read-write session (PKCS#11: no read-only session may
                // be open then); a user login works in either.
                let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
                match device.call(None, Call::OpenSession { slot: local, flags }) {
                    Ok((Reply::Handle(remote), generation)) => Keeper { remote, generation },
                    Ok(_) => continue,
                    Err(error) => {
                        if device_failed(&error) {
                            drop_device(number);
                        }
                        continue;
                    }
                }
            }
        };
        let call = Call::Login {
            session: keeper.remote,
            user_type,
            pin: pin.duplicate(),
        };
        match device.call(Some(keeper.generation), call) {
            Ok(_) => {}
            Err(ClientError::Returned(code)) if code == Rv::UserAlreadyLoggedIn.code() => {}
            Err(error) => {
                tracing::warn!(device = number, error = %error, "a member of a virtual slot refused the login: left out");
                let _ = device.call(
                    Some(keeper.generation),
                    Call::CloseSession {
                        session: keeper.remote,
                    },
                );
                drop_device(number);
                continue;
            }
        }
        with(|library| {
            if let Some(spread) = library.spread.as_mut() {
                spread.keepers.insert((raw, number), keeper);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// After a logout on virtual slot `raw`: logs out of the keepers and closes them.
pub(super) fn spread_logout(raw: u64) {
    let keepers = with(|library| {
        let Some(spread) = library.spread.as_mut() else {
            return Ok(Vec::new());
        };
        let mine: Vec<(usize, Keeper)> = spread
            .keepers
            .iter()
            .filter(|((slot, _), _)| *slot == raw)
            .map(|((_, device), keeper)| (*device, *keeper))
            .collect();
        spread.keepers.retain(|(slot, _), _| *slot != raw);
        Ok(mine
            .into_iter()
            .filter_map(|(number, keeper)| {
                library.devices.get(number).map(|d| (Arc::clone(d), keeper))
            })
            .collect())
    })
    .unwrap_or_default();
    for (device, keeper) in keepers {
        let _ = device.call(
            Some(keeper.generation),
            Call::Logout {
                session: keeper.remote,
            },
        );
        let _ = device.call(
            Some(keeper.generation),
            Call::CloseSession {
                session: keeper.remote,
            },
        );
    }
}

/// The failure of a call to a member: the member is left out when it is the device's.
pub(super) fn member_failure(number: usize, error: ClientError) -> u64 {
    if device_failed(&error) {
        drop_device(number);
    }
    failure(error)
}
