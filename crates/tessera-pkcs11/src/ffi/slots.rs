//! Slot and token management (PKCS#11 3.0 §5.5).

use cryptoki_sys::{
    CK_BBOOL, CK_FALSE, CK_MECHANISM_INFO, CK_MECHANISM_TYPE, CK_SLOT_ID, CK_SLOT_INFO,
    CK_TOKEN_INFO, CK_ULONG, CK_UTF8CHAR,
};
use tessera_wire::{Call, Reply};

use super::{bytes, convert, secret_copied, slice, Output, Place};
use crate::library::{self, expect_done, unexpected};

/// Length of a token label (`C_InitToken`).
const LABEL_LEN: CK_ULONG = 32;

entry_points! {
    /// `C_GetSlotList` (§5.5.1): asks every device for its slots, each time.
    fn C_GetSlotList(token_present: CK_BBOOL, slots: *mut CK_SLOT_ID, count: *mut CK_ULONG) {
        // SAFETY: pSlotList is NULL or holds *pulCount entries; pulCount is NULL or points to
        // a CK_ULONG (§5.5.1).
        let output = unsafe { Output::new(slots, count) }?;
        let ids: Vec<CK_SLOT_ID> = library::slot_list(token_present != CK_FALSE)?
            .into_iter()
            .map(|id| id as CK_SLOT_ID)
            .collect();
        output.deliver(&ids)
    }

    /// `C_GetSlotInfo` (§5.5.2).
    fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) {
        // SAFETY: pInfo is NULL or points to a CK_SLOT_INFO to fill (§5.5.2).
        let place = unsafe { Place::new(info) }?;
        let info = library::slot_info(slot as u64)?;
        place.set(convert::slot_info(&info));
        Ok(())
    }

    /// `C_GetTokenInfo` (§5.5.3).
    fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) {
        // SAFETY: pInfo is NULL or points to a CK_TOKEN_INFO to fill (§5.5.3).
        let place = unsafe { Place::new(info) }?;
        match library::slot_call(slot as u64, |slot| Call::TokenInfo { slot })? {
            Reply::Token(info) => {
                place.set(convert::token_info(&info));
                Ok(())
            }
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_GetMechanismList` (§5.5.5).
    fn C_GetMechanismList(
        slot: CK_SLOT_ID,
        mechanisms: *mut CK_MECHANISM_TYPE,
        count: *mut CK_ULONG,
    ) {
        // SAFETY: pMechanismList is NULL or holds *pulCount entries; pulCount is NULL or
        // points to a CK_ULONG (§5.5.5).
        let output = unsafe { Output::new(mechanisms, count) }?;
        match library::slot_call(slot as u64, |slot| Call::MechanismList { slot })? {
            Reply::Mechanisms(list) => {
                let list: Vec<CK_MECHANISM_TYPE> =
                    list.into_iter().map(|ty| ty as CK_MECHANISM_TYPE).collect();
                output.deliver(&list)
            }
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_GetMechanismInfo` (§5.5.6).
    fn C_GetMechanismInfo(
        slot: CK_SLOT_ID,
        mechanism: CK_MECHANISM_TYPE,
        info: *mut CK_MECHANISM_INFO,
    ) {
        // SAFETY: pInfo is NULL or points to a CK_MECHANISM_INFO to fill (§5.5.6).
        let place = unsafe { Place::new(info) }?;
        let request = |slot| Call::MechanismInfo {
            slot,
            mechanism: mechanism as u64,
        };
        match library::slot_call(slot as u64, request)? {
            Reply::Mechanism(info) => {
                place.set(convert::mechanism_info(&info));
                Ok(())
            }
            reply => Err(unexpected(&reply)),
        }
    }

    /// `C_InitToken` (§5.5.7): the label is 32 blank-padded bytes.
    fn C_InitToken(
        slot: CK_SLOT_ID,
        pin: *mut CK_UTF8CHAR,
        pin_len: CK_ULONG,
        label: *mut CK_UTF8CHAR,
    ) {
        // SAFETY: pPin is NULL or holds ulPinLen bytes (§5.5.7).
        let so_pin = secret_copied(unsafe { bytes(pin, pin_len) }?)?;
        if label.is_null() {
            return super::arguments_bad();
        }
        // SAFETY: a non-NULL pLabel points to 32 bytes (§5.5.7).
        let label = unsafe { slice(label as *const CK_UTF8CHAR, LABEL_LEN) }?.to_vec();
        expect_done(library::slot_call(slot as u64, |slot| Call::InitToken {
            slot,
            so_pin,
            label,
        })?)
    }
}
