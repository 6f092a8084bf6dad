//! MACs as signatures with secret keys: HMAC-SHA-1/224/256/384/512 (and `_GENERAL` with a shorter
//! length) and AES-CMAC (and `CMAC_GENERAL`); HMAC-MD5 and triple-DES CMAC from the legacy
//! module.

use super::legacy;
use super::Key;
use aws_lc_rs::{cmac, hmac};
use subtle::ConstantTimeEq;
use tessera_core::{ck, Mechanism, MechanismParameter, Rv};

enum Context {
    Hmac(Box<hmac::Context>),
    Cmac(Box<cmac::Context>),
    HmacMd5(legacy::HmacMd5),
    Des3Cmac(legacy::Des3Cmac),
}

/// A running MAC computation.
pub(crate) struct Mac {
    context: Context,
    length: usize,
}

/// The key types an HMAC accepts: a generic secret, or one typed for any HMAC.
pub(crate) const HMAC_KEY_TYPES: [ck::CK_KEY_TYPE; 6] = [
    ck::CKK_GENERIC_SECRET,
    ck::CKK_SHA_1_HMAC,
    ck::CKK_SHA224_HMAC,
    ck::CKK_SHA256_HMAC,
    ck::CKK_SHA384_HMAC,
    ck::CKK_SHA512_HMAC,
];

/// An HMAC mechanism's algorithm, its full length, and whether it is the `_GENERAL` form.
fn hmac_of(mechanism: ck::CK_MECHANISM_TYPE) -> Option<(hmac::Algorithm, usize, bool)> {
    Some(match mechanism {
        ck::CKM_SHA_1_HMAC => (hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, 20, false),
        ck::CKM_SHA_1_HMAC_GENERAL => (hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, 20, true),
        ck::CKM_SHA224_HMAC => (hmac::HMAC_SHA224, 28, false),
        ck::CKM_SHA224_HMAC_GENERAL => (hmac::HMAC_SHA224, 28, true),
        ck::CKM_SHA256_HMAC => (hmac::HMAC_SHA256, 32, false),
        ck::CKM_SHA256_HMAC_GENERAL => (hmac::HMAC_SHA256, 32, true),
        ck::CKM_SHA384_HMAC => (hmac::HMAC_SHA384, 48, false),
        ck::CKM_SHA384_HMAC_GENERAL => (hmac::HMAC_SHA384, 48, true),
        ck::CKM_SHA512_HMAC => (hmac::HMAC_SHA512, 64, false),
        ck::CKM_SHA512_HMAC_GENERAL => (hmac::HMAC_SHA512, 64, true),
        _ => return None,
    })
}

/// The full output length of a MAC mechanism that takes no parameter (HMAC, AES-CMAC), as a
/// PRF: `None` for the `_GENERAL` forms and everything else.
pub(crate) fn prf_length(mechanism: u64) -> Option<usize> {
    match hmac_of(mechanism as ck::CK_MECHANISM_TYPE) {
        Some((_, full, false)) => Some(full),
        Some(_) => None,
        None => (mechanism == ck::CKM_AES_CMAC as u64).then_some(16),
    }
}

/// Whether a mechanism is a MAC this module serves.
pub(crate) fn is_mac(mechanism: u64) -> bool {
    let m = mechanism as ck::CK_MECHANISM_TYPE;
    hmac_of(m).is_some()
        || matches!(
            m,
            ck::CKM_AES_CMAC | ck::CKM_AES_CMAC_GENERAL | ck::CKM_MD5_HMAC | ck::CKM_DES3_CMAC
        )
}

impl Mac {
    pub(crate) fn new(mechanism: &Mechanism, key: &dyn Key) -> Result<Mac, Rv> {
        let m = mechanism.ty as ck::CK_MECHANISM_TYPE;
        let hmac = hmac_of(m);
        let (full, general) = match (m, hmac) {
            (_, Some((_, full, general))) => (full, general),
            (ck::CKM_AES_CMAC | ck::CKM_AES_CMAC_GENERAL, None) => {
                (16, m == ck::CKM_AES_CMAC_GENERAL)
            }
            (ck::CKM_MD5_HMAC, None) => (legacy::MD5_LEN, false),
            (ck::CKM_DES3_CMAC, None) => (legacy::DES_BLOCK, false),
            _ => return Err(Rv::MechanismInvalid),
        };
        let length = match (&mechanism.parameter, general) {
            (MechanismParameter::MacLength(n), true) if (1..=full as u64).contains(n) => {
                *n as usize
            }
            (MechanismParameter::None, false) => full,
            _ => return Err(Rv::MechanismParamInvalid),
        };
        if key.class() != ck::CKO_SECRET_KEY as u64 {
            return Err(Rv::KeyTypeInconsistent);
        }
        let value = key.get(ck::CKA_VALUE).ok_or(Rv::KeyTypeInconsistent)?;
        let context = if m == ck::CKM_MD5_HMAC {
            if !HMAC_KEY_TYPES.iter().any(|t| *t as u64 == key.key_type()) {
                return Err(Rv::KeyTypeInconsistent);
            }
            Context::HmacMd5(legacy::HmacMd5::new(value)?)
        } else if m == ck::CKM_DES3_CMAC {
            if !super::is_des3(key) {
                return Err(Rv::KeyTypeInconsistent);
            }
            Context::Des3Cmac(legacy::Des3Cmac::new(value)?)
        } else if let Some((algorithm, _, _)) = hmac {
            if !HMAC_KEY_TYPES.iter().any(|t| *t as u64 == key.key_type()) {
                return Err(Rv::KeyTypeInconsistent);
            }
            Context::Hmac(Box::new(hmac::Context::with_key(&hmac::Key::new(
                algorithm, value,
            ))))
        } else {
            if key.key_type() != ck::CKK_AES as u64 {
                return Err(Rv::KeyTypeInconsistent);
            }
            let algorithm = match value.len() {
                16 => cmac::AES_128,
                24 => cmac::AES_192,
                32 => cmac::AES_256,
                _ => return Err(Rv::KeyTypeInconsistent),
            };
            let key = cmac::Key::new(algorithm, value).map_err(|_| Rv::KeyTypeInconsistent)?;
            Context::Cmac(Box::new(cmac::Context::with_key(&key)))
        };
        Ok(Mac { context, length })
    }

    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), Rv> {
        match &mut self.context {
            Context::Hmac(c) => c.update(data),
            Context::Cmac(c) => c.update(data).map_err(|_| Rv::FunctionFailed)?,
            Context::HmacMd5(c) => c.update(data),
            Context::Des3Cmac(c) => c.update(data),
        }
        Ok(())
    }

    fn tag(self) -> Result<Vec<u8>, Rv> {
        let mut tag = match self.context {
            Context::Hmac(c) => c.sign().as_ref().to_vec(),
            Context::Cmac(c) => c.sign().map_err(|_| Rv::FunctionFailed)?.as_ref().to_vec(),
            Context::HmacMd5(c) => c.finish()?,
            Context::Des3Cmac(c) => c.finish()?,
        };
        tag.truncate(self.length);
        Ok(tag)
    }

    pub(crate) fn sign(self) -> Result<Vec<u8>, Rv> {
        self.tag()
    }

    /// Compares in constant time.
    pub(crate) fn verify(self, signature: &[u8]) -> Result<(), Rv> {
        let length = self.length;
        if signature.len() != length {
            return Err(Rv::SignatureLenRange);
        }
        let tag = self.tag()?;
        if bool::from(tag.as_slice().ct_eq(signature)) {
            Ok(())
        } else {
            Err(Rv::SignatureInvalid)
        }
    }
}
