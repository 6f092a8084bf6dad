//! MACs as signatures with secret keys: HMAC-SHA-256/384/512 (and `_GENERAL` with a shorter
//! length) and AES-CMAC (and `CMAC_GENERAL`).

use aws_lc_rs::{cmac, hmac};
use subtle::ConstantTimeEq;
use tessera_core::{ck, Mechanism, MechanismParameter, Rv};

use crate::object::Attributes;

enum Context {
    Hmac(Box<hmac::Context>),
    Cmac(Box<cmac::Context>),
}

/// A running MAC computation.
pub(crate) struct Mac {
    context: Context,
    length: usize,
}

/// Whether a mechanism is a MAC this module serves.
pub(crate) fn is_mac(mechanism: u64) -> bool {
    matches!(
        mechanism as ck::CK_MECHANISM_TYPE,
        ck::CKM_SHA256_HMAC
            | ck::CKM_SHA384_HMAC
            | ck::CKM_SHA512_HMAC
            | ck::CKM_SHA256_HMAC_GENERAL
            | ck::CKM_SHA384_HMAC_GENERAL
            | ck::CKM_SHA512_HMAC_GENERAL
            | ck::CKM_AES_CMAC
            | ck::CKM_AES_CMAC_GENERAL
    )
}

impl Mac {
    pub(crate) fn new(mechanism: &Mechanism, key: &Attributes) -> Result<Mac, Rv> {
        let m = mechanism.ty as ck::CK_MECHANISM_TYPE;
        let (full, general) = match m {
            ck::CKM_SHA256_HMAC | ck::CKM_SHA256_HMAC_GENERAL => {
                (32, m == ck::CKM_SHA256_HMAC_GENERAL)
            }
            ck::CKM_SHA384_HMAC | ck::CKM_SHA384_HMAC_GENERAL => {
                (48, m == ck::CKM_SHA384_HMAC_GENERAL)
            }
            ck::CKM_SHA512_HMAC | ck::CKM_SHA512_HMAC_GENERAL => {
                (64, m == ck::CKM_SHA512_HMAC_GENERAL)
            }
            ck::CKM_AES_CMAC | ck::CKM_AES_CMAC_GENERAL => (16, m == ck::CKM_AES_CMAC_GENERAL),
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
        let context = if matches!(m, ck::CKM_AES_CMAC | ck::CKM_AES_CMAC_GENERAL) {
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
        } else {
            let generic = [
                ck::CKK_GENERIC_SECRET,
                ck::CKK_SHA256_HMAC,
                ck::CKK_SHA384_HMAC,
                ck::CKK_SHA512_HMAC,
            ];
            if !generic.iter().any(|t| *t as u64 == key.key_type()) {
                return Err(Rv::KeyTypeInconsistent);
            }
            let algorithm = match full {
                32 => hmac::HMAC_SHA256,
                48 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            Context::Hmac(Box::new(hmac::Context::with_key(&hmac::Key::new(algorithm, value))))
        };
        Ok(Mac { context, length })
    }

    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), Rv> {
        match &mut self.context {
            Context::Hmac(c) => c.update(data),
            Context::Cmac(c) => c.update(data).map_err(|_| Rv::FunctionFailed)?,
        }
        Ok(())
    }

    fn tag(self) -> Result<Vec<u8>, Rv> {
        let mut tag = match self.context {
            Context::Hmac(c) => c.sign().as_ref().to_vec(),
            Context::Cmac(c) => c.sign().map_err(|_| Rv::FunctionFailed)?.as_ref().to_vec(),
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
