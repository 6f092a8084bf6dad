//! The device identity (docs/ctident.md): the identity key and certificate (PIK/PIC), the owner key
//! and certificate (POK/POC), and the peers this device trusts. The private keys are generated
//! here, sealed under the device storage key, and never leave the daemon. The identity is kept
//! apart from the tokens, so a tamper leaves it in place; only the Administrator changes it.

use serde::{Deserialize, Serialize};
use tessera_core::Rv;
use tessera_identity::inspect::{fingerprint_id, CertificateInfo};
use tessera_identity::issue::{self, Curve};
use tessera_wire::{Identity, IdentityTarget, KeyState, Reply};
use zeroize::Zeroizing;

use crate::device::DeviceChange;
use crate::Hsm;

const RECORD_KEY: &str = "identity";

#[derive(Clone, Serialize, Deserialize)]
struct SealedKey {
    curve: Curve,
    sealed: Vec<u8>,
}

/// What the store keeps.
#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct IdentityRecord {
    pik: Option<SealedKey>,
    pic: Option<Vec<u8>>,
    chain: Vec<Vec<u8>>,
    pok: Option<SealedKey>,
    poc: Option<Vec<u8>>,
    /// The POC has signed a PIK (it is no longer pending).
    poc_signed: bool,
    peers: Vec<Vec<u8>>,
}

impl IdentityRecord {
    pub(crate) fn load(
        store: &tessera_store::Store,
    ) -> Result<IdentityRecord, tessera_store::StoreError> {
        match store.meta(RECORD_KEY)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|_| tessera_store::StoreError::Corrupt("identity".into())),
            None => Ok(IdentityRecord::default()),
        }
    }

    /// The PIC's SHA-256 fingerprint, when the device has a working identity.
    pub(crate) fn fingerprint(&self) -> Option<String> {
        self.pic
            .as_deref()
            .map(tessera_identity::inspect::fingerprint)
    }

    pub(crate) fn public(&self, serial: &str) -> Identity {
        let state = |key: &Option<SealedKey>, complete: bool| match key {
            None => KeyState::Absent,
            Some(_) if complete => KeyState::Ready,
            Some(_) => KeyState::Pending,
        };
        Identity {
            serial: serial.into(),
            pik: state(&self.pik, self.pic.is_some()),
            pik_curve: self.pik.as_ref().map(|k| k.curve.name().into()),
            pic: self.pic.clone(),
            chain: self.chain.clone(),
            pok: state(&self.pok, self.poc_signed),
            pok_curve: self.pok.as_ref().map(|k| k.curve.name().into()),
            poc: self.poc.clone(),
        }
    }
}

fn curve(name: &str) -> Result<Curve, Rv> {
    Curve::parse(name).ok_or(Rv::ArgumentsBad)
}

fn failed(e: impl std::fmt::Display) -> Rv {
    tracing::error!(error = %e, "identity operation failed");
    Rv::FunctionFailed
}

impl Hsm {
    fn seal_key(&self, curve: Curve, pkcs8: &[u8], role: &str) -> Result<SealedKey, Rv> {
        let aad = format!("tessera identity {role}");
        let sealed = self
            .device_key
            .seal(aad.as_bytes(), pkcs8)
            .map_err(failed)?;
        Ok(SealedKey { curve, sealed })
    }

    fn open_key(&self, key: &SealedKey, role: &str) -> Result<Zeroizing<Vec<u8>>, Rv> {
        let aad = format!("tessera identity {role}");
        let plain = self
            .device_key
            .open(aad.as_bytes(), &key.sealed)
            .map_err(|_| Rv::DeviceError)?;
        Ok(Zeroizing::new(plain.expose().to_vec()))
    }

    /// Stores the changed identity and publishes it; unstored, the device keeps the one it had.
    fn save_identity(
        &self,
        mut change: DeviceChange<'_>,
        record: IdentityRecord,
    ) -> Result<(), Rv> {
        let bytes = postcard::to_stdvec(&record).map_err(failed)?;
        self.store
            .put_meta(RECORD_KEY, &bytes)
            .map_err(crate::store_failure)?;
        change.identity = record;
        change.publish();
        Ok(())
    }

    pub(crate) fn identity(&self) -> Identity {
        self.device.now().identity.public(&self.serial)
    }

    pub(crate) fn generate_identity(
        &self,
        target: IdentityTarget,
        curve_name: &str,
        replace: bool,
    ) -> Result<Reply, Rv> {
        let curve = curve(curve_name)?;
        let change = self.device.change();
        let current = &change.identity;
        let exists = match target {
            IdentityTarget::All => current.pik.is_some() || current.pok.is_some(),
            IdentityTarget::Pic => current.pik.is_some(),
            IdentityTarget::Poc => current.pok.is_some(),
        };
        if exists && !replace {
            return Err(Rv::IdentityExists);
        }
        let mut record = change.identity.clone();
        if matches!(target, IdentityTarget::All | IdentityTarget::Poc) {
            let pok = issue::generate_key(curve).map_err(failed)?;
            record.poc = Some(issue::owner_certificate(&pok, curve, &self.serial).map_err(failed)?);
            record.pok = Some(self.seal_key(curve, &pok, "pok")?);
            record.poc_signed = false;
        }
        if matches!(target, IdentityTarget::All | IdentityTarget::Pic) {
            let pik = issue::generate_key(curve).map_err(failed)?;
            if target == IdentityTarget::All {
                let pok_key = record.pok.as_ref().ok_or(Rv::GeneralError)?;
                let pok = self.open_key(pok_key, "pok")?;
                let poc = record.poc.clone().ok_or(Rv::GeneralError)?;
                let request = issue::identity_request(&pik, curve, &self.serial).map_err(failed)?;
                let (pic, _) =
                    issue::sign_request(&request, &pok, pok_key.curve, &poc).map_err(failed)?;
                record.pic = Some(pic);
                record.chain = vec![poc];
                record.poc_signed = true;
            } else {
                record.pic =
                    Some(issue::self_signed_identity(&pik, curve, &self.serial).map_err(failed)?);
                record.chain = Vec::new();
            }
            record.pik = Some(self.seal_key(curve, &pik, "pik")?);
        }
        self.save_identity(change, record)?;
        let detail = format!(
            "{target:?} on {}{}",
            curve.name(),
            if replace { ", replacing" } else { "" }
        );
        self.event("Administrator", "identity-generated", detail);
        Ok(Reply::Done)
    }

    pub(crate) fn pik_request(&self, curve_name: &str, replace: bool) -> Result<Reply, Rv> {
        let curve = curve(curve_name)?;
        let change = self.device.change();
        if change.identity.pic.is_some() && !replace {
            return Err(Rv::IdentityExists);
        }
        // A pending PIK (request made, PIC not yet imported) is reused: asking twice gives a
        // request for the same key.
        let reuse = change.identity.pic.is_none() && !replace && change.identity.pik.is_some();
        let (pik, pik_curve) = if reuse {
            let key = change.identity.pik.as_ref().ok_or(Rv::GeneralError)?;
            (self.open_key(key, "pik")?, key.curve)
        } else {
            let pik = issue::generate_key(curve).map_err(failed)?;
            let mut record = change.identity.clone();
            record.pik = Some(self.seal_key(curve, &pik, "pik")?);
            record.pic = None;
            record.chain = Vec::new();
            self.save_identity(change, record)?;
            (pik, curve)
        };
        let request = issue::identity_request(&pik, pik_curve, &self.serial).map_err(failed)?;
        self.event(
            "Administrator",
            "pik-request",
            format!("PIK on {} pending", pik_curve.name()),
        );
        Ok(Reply::Bytes(request))
    }

    pub(crate) fn sign_identity_request(&self, request: &[u8]) -> Result<Reply, Rv> {
        let change = self.device.change();
        let (Some(pok_key), Some(poc)) =
            (change.identity.pok.as_ref(), change.identity.poc.clone())
        else {
            return Err(Rv::OwnerKeyRequired);
        };
        let pok = self.open_key(pok_key, "pok")?;
        let (pic, serial) =
            issue::sign_request(request, &pok, pok_key.curve, &poc).map_err(|e| {
                tracing::warn!(error = %e, "refused an identity request");
                Rv::DataInvalid
            })?;
        if !change.identity.poc_signed {
            let mut record = change.identity.clone();
            record.poc_signed = true;
            self.save_identity(change, record)?;
        }
        self.event(
            "Administrator",
            "pik-signed",
            format!("PIC for device {serial}"),
        );
        Ok(Reply::Bytes(pic))
    }

    pub(crate) fn import_pic(&self, pic: &[u8], chain: Vec<Vec<u8>>) -> Result<Reply, Rv> {
        let change = self.device.change();
        let key = change
            .identity
            .pik
            .as_ref()
            .ok_or(Rv::CertificateMismatch)?;
        let pik = self.open_key(key, "pik")?;
        let expected = issue::public_key(&pik, key.curve).map_err(failed)?;
        let info = CertificateInfo::parse(pic).map_err(|_| Rv::DataInvalid)?;
        if info.public_key != expected
            || info.serial_number.as_deref() != Some(self.serial.as_str())
        {
            return Err(Rv::CertificateMismatch);
        }
        let mut presented = vec![pic.to_vec()];
        presented.extend(chain.iter().cloned());
        let anchors = if chain.is_empty() {
            vec![pic.to_vec()]
        } else {
            chain.clone()
        };
        let now = crate::time::now() as i64;
        tessera_identity::verify_chain(&presented, &anchors, &self.serial, now).map_err(
            |refusal| {
                tracing::warn!(%refusal, "refused a PIC");
                Rv::CertNotValidated
            },
        )?;
        let mut record = change.identity.clone();
        record.pic = Some(pic.to_vec());
        record.chain = chain;
        self.save_identity(change, record)?;
        self.event("Administrator", "pic-imported", info.fingerprint);
        Ok(Reply::Done)
    }

    pub(crate) fn add_peer(&self, certificate: &[u8]) -> Result<Reply, Rv> {
        let info = CertificateInfo::parse(certificate).map_err(|_| Rv::DataInvalid)?;
        let change = self.device.change();
        if !change.identity.peers.iter().any(|p| p == certificate) {
            let mut record = change.identity.clone();
            record.peers.push(certificate.to_vec());
            self.save_identity(change, record)?;
        }
        self.event(
            "Administrator",
            "peer-added",
            format!("{} {}", info.subject, info.fingerprint),
        );
        Ok(Reply::Done)
    }

    pub(crate) fn remove_peer(&self, prefix: &str) -> Result<Reply, Rv> {
        let wanted = prefix.replace(':', "").to_ascii_lowercase();
        let change = self.device.change();
        let matching: Vec<usize> = change
            .identity
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| wanted.len() >= 4 && fingerprint_id(p).starts_with(&wanted))
            .map(|(i, _)| i)
            .collect();
        let [index] = matching.as_slice() else {
            return Err(Rv::ArgumentsBad);
        };
        let mut record = change.identity.clone();
        let removed = record.peers.remove(*index);
        self.save_identity(change, record)?;
        self.event(
            "Administrator",
            "peer-removed",
            tessera_identity::inspect::fingerprint(&removed),
        );
        Ok(Reply::Done)
    }

    /// The PIC followed by its issuer chain.
    pub(crate) fn identity_chain(&self) -> Result<Vec<Vec<u8>>, Rv> {
        let device = self.device.now();
        let pic = device.identity.pic.clone().ok_or(Rv::NoSessionKeys)?;
        let mut chain = vec![pic];
        chain.extend(device.identity.chain.iter().cloned());
        Ok(chain)
    }

    /// The PIK's signature over `message`.
    ///
    /// The PIK is unsealed and parsed once and kept (as long as the stored key is the same), and
    /// the signature is made outside every lock: handshakes neither wait for each other here
    /// nor hold up the other calls.
    pub(crate) fn identity_signature(&self, message: &[u8]) -> Result<Vec<u8>, Rv> {
        let pik = self
            .device
            .now()
            .identity
            .pik
            .clone()
            .ok_or(Rv::NoSessionKeys)?;
        let cached = {
            let cache = crate::locked::lock(&self.pik_cache);
            cache
                .as_ref()
                .filter(|(for_sealed, _)| *for_sealed == pik.sealed)
                .map(|(_, key)| key.clone())
        };
        let key = match cached {
            Some(key) => key,
            None => {
                let pkcs8 = self.open_key(&pik, "pik")?;
                let key =
                    std::sync::Arc::new(issue::signing_key(&pkcs8, pik.curve).map_err(failed)?);
                *crate::locked::lock(&self.pik_cache) = Some((pik.sealed, key.clone()));
                key
            }
        };
        issue::sign_with(&key, message).map_err(failed)
    }

    pub(crate) fn peers(&self) -> Reply {
        Reply::Certificates(self.peer_certificates())
    }

    /// The certificates of the devices this device trusts (`ctident peer`).
    pub(crate) fn peer_certificates(&self) -> Vec<Vec<u8>> {
        self.device.now().identity.peers.clone()
    }
}
