//! Admitting a device to the cluster: the cluster key, handed over under a key agreement that
//! both devices' identities sign.
//!
//! 1. The joining device makes an ephemeral X25519 key and writes a **request** to
//!    `join/<serial>`: its serial, its identity chain (PIC first), the public key and the time,
//!    signed by its PIK.
//! 2. A member that trusts the chain for that serial (`ctident peer add`: the device's PIC or
//!    the POC that signed it) and whose check of the signature passes makes its own ephemeral
//!    key, derives a transport key from the agreement (HKDF-SHA256 over the request and its
//!    answer) and writes a **grant** to `grant/<serial>`: its own serial and chain, its public
//!    key and the cluster key sealed under the transport key, all signed by its PIK.
//! 3. The joining device accepts the grant only from a member whose chain *it* trusts, checks
//!    the signature, opens the key, and proves it by opening the cluster's founding record.
//!
//! Requests and grants are public: they hold certificates, public keys, signatures and a
//! sealed key that only the holder of the joining device's ephemeral private key can open.
//! A relay (or anyone with write access to etcd) that swaps a public key breaks a signature;
//! a request from a device the members do not trust gets no answer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use tessera_store::MasterKey;

use crate::{ClusterError, ClusterKey, Node};

/// What a device of the cluster knows of itself and trusts (the engine answers).
pub trait NodeIdentity: Send + Sync {
    /// The device's serial number.
    fn serial(&self) -> String;
    /// The device's identity chain, PIC first (`None`: it has no identity yet).
    fn chain(&self) -> Option<Vec<Vec<u8>>>;
    /// The PIK's signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;
    /// The certificates of the devices it trusts (`ctident peer`).
    fn peers(&self) -> Vec<Vec<u8>>;
}

/// How far a request's time may be from a member's clock.
const FRESH: Duration = Duration::from_secs(600);

#[derive(Serialize, Deserialize, Clone)]
struct Request {
    serial: String,
    chain: Vec<Vec<u8>>,
    public: Vec<u8>,
    time: u64,
    signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Grant {
    /// The epoch of the key granted.
    epoch: u32,
    serial: String,
    chain: Vec<Vec<u8>>,
    public: Vec<u8>,
    sealed_key: Vec<u8>,
    signature: Vec<u8>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refused(what: impl std::fmt::Display) -> ClusterError {
    ClusterError::Refused(what.to_string())
}

/// What the joining device signs.
fn request_message(cluster: &str, serial: &str, public: &[u8], time: u64) -> Vec<u8> {
    let mut m = b"tessera cluster join v1\0".to_vec();
    for part in [cluster.as_bytes(), serial.as_bytes(), public] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&time.to_be_bytes());
    m
}

/// What the member signs: the whole request, then its answer.
fn grant_message(
    request: &[u8],
    epoch: u32,
    serial: &str,
    public: &[u8],
    sealed_key: &[u8],
) -> Vec<u8> {
    let mut m = b"tessera cluster grant v1\0".to_vec();
    m.extend_from_slice(&epoch.to_be_bytes());
    for part in [request, serial.as_bytes(), public, sealed_key] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

struct TransportKeyLen;

impl hkdf::KeyType for TransportKeyLen {
    fn len(&self) -> usize {
        32
    }
}

/// The transport key from the X25519 agreement, bound to the request and the member's key.
fn transport_key(
    private: EphemeralPrivateKey,
    peer_public: &[u8],
    request: &[u8],
    member_public: &[u8],
) -> Result<MasterKey, ClusterError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer_public),
        refused("key agreement failed (a malformed public key)"),
        |shared| {
            let mut salt = request.to_vec();
            salt.extend_from_slice(member_public);
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt);
            let info: &[&[u8]] = &[b"tessera cluster key transport v1"];
            let mut out = tessera_core::SecretBytes::from_slice(&[0u8; 32]);
            salt.extract(shared)
                .expand(info, TransportKeyLen)
                .and_then(|okm| okm.fill(out.expose_mut()))
                .map_err(|_| refused("key derivation failed"))?;
            MasterKey::from_secret(out).map_err(refused)
        },
    )
}

/// Checks that `chain` is trusted for `serial` by `anchors` and signed `message`.
fn check(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    serial: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), ClusterError> {
    tessera_identity::verify::verify_chain(chain, anchors, serial, now() as i64)
        .map_err(|r| refused(format!("device {serial}'s identity is not trusted: {r}")))?;
    let pic = chain.first().ok_or_else(|| refused("empty chain"))?;
    if !tessera_identity::verify::verify_with_certificate(pic, message, signature) {
        return Err(refused(format!(
            "device {serial}'s signature does not verify"
        )));
    }
    Ok(())
}

fn key_aad(cluster: &str, epoch: u32) -> Vec<u8> {
    format!("tessera cluster key of {cluster}, epoch {epoch}").into_bytes()
}

impl Node {
    /// Asks to join: writes a request and waits up to `wait` for a member's grant, telling
    /// `progress` what it waits for. Returns the cluster key, proven against the cluster.
    pub fn join(
        &self,
        me: &dyn NodeIdentity,
        wait: Duration,
        progress: &dyn Fn(&str),
    ) -> Result<ClusterKey, ClusterError> {
        let serial = me.serial();
        let chain = me.chain().ok_or_else(|| {
            ClusterError::Usage(format!(
                "device {serial} has no identity: a device joins a cluster with its PIC; give it \
                 one first (without --cluster: ctident gen-selfsigned all, or an owner's \
                 sign-device), and have a member trust it (ctident peer add)"
            ))
        })?;
        let random = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &random)
            .map_err(|_| refused("the random generator failed"))?;
        let public = private
            .compute_public_key()
            .map_err(|_| refused("key generation failed"))?
            .as_ref()
            .to_vec();
        let time = now();
        let message = request_message(&self.name, &serial, &public, time);
        let signature = me.sign(&message).map_err(refused)?;
        let request = Request {
            serial: serial.clone(),
            chain,
            public,
            time,
            signature,
        };
        let request_name = self.key(&format!("join/{serial}"));
        let grant_name = self.key(&format!("grant/{serial}"));
        let encoded = postcard::to_stdvec(&request).map_err(refused)?;
        // An old grant answered an older request: it is removed with the new request written.
        let (put_name, drop_name) = (request_name.clone(), grant_name.clone());
        self.txn(etcd_client::Txn::new().and_then([
            etcd_client::TxnOp::delete(drop_name, None),
            etcd_client::TxnOp::put(put_name, encoded, None),
        ]))?;
        progress(&format!(
            "asked to join cluster {} as device {serial}; waiting up to {} s for a member that \
             trusts this device's identity (on a member: ctident peer add <this device's PIC or POC>)",
            self.name,
            wait.as_secs()
        ));
        let deadline = Instant::now() + wait;
        let mut private = Some(private);
        loop {
            let lookup = grant_name.clone();
            let found = self.get(lookup, None)?;
            if let Some(kv) = found.kvs().first() {
                let grant: Grant = postcard::from_bytes(kv.value())
                    .map_err(|_| refused("a grant does not decode"))?;
                check(
                    &grant.chain,
                    &me.peers(),
                    &grant.serial,
                    &grant_message(
                        &message,
                        grant.epoch,
                        &grant.serial,
                        &grant.public,
                        &grant.sealed_key,
                    ),
                    &grant.signature,
                )
                .map_err(|e| {
                    refused(format!(
                        "a grant came from device {}, which this device does not trust: {e} \
                         (trust the members: ctident peer add <a member's PIC or POC>)",
                        grant.serial
                    ))
                })?;
                let private = private
                    .take()
                    .ok_or_else(|| refused("a grant came twice"))?;
                let transport = transport_key(private, &grant.public, &message, &grant.public)?;
                let key = MasterKey::opened_from(
                    &transport,
                    &key_aad(&self.name, grant.epoch),
                    &grant.sealed_key,
                )
                .map_err(|_| refused("the granted cluster key does not open"))?;
                let key = ClusterKey {
                    epoch: grant.epoch,
                    key,
                };
                self.layout(&key)?;
                let (r, g) = (request_name.clone(), grant_name.clone());
                let _ = self.txn(etcd_client::Txn::new().and_then([
                    etcd_client::TxnOp::delete(r, None),
                    etcd_client::TxnOp::delete(g, None),
                ]));
                return Ok(key);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Refused(format!(
                    "no member of cluster {} admitted device {serial} within {} s: on a member, \
                     trust this device (ctident peer add <its PIC or POC>), and here trust a \
                     member (ctident peer add <a member's PIC or POC>), then start again",
                    self.name,
                    wait.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A member's duty: answers the join requests in etcd from devices `me` trusts, with
    /// `key`. Returns the serials admitted; refusals are logged (and returned to the caller's
    /// log as `Err` per request).
    pub fn admit_pending(
        &self,
        me: &dyn NodeIdentity,
        key: &ClusterKey,
    ) -> Result<Vec<Result<String, ClusterError>>, ClusterError> {
        let prefix = self.key("join/");
        let found = self.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))?;
        let mut out = Vec::new();
        for kv in found.kvs() {
            let Ok(request) = postcard::from_bytes::<Request>(kv.value()) else {
                out.push(Err(refused("a join request does not decode")));
                continue;
            };
            let grant_name = self.key(&format!("grant/{}", request.serial));
            let lookup = grant_name.clone();
            let answered = self.get(lookup, None)?;
            if !answered.kvs().is_empty() {
                continue;
            }
            out.push(self.admit(me, key, &request, grant_name));
        }
        Ok(out)
    }

    fn admit(
        &self,
        me: &dyn NodeIdentity,
        key: &ClusterKey,
        request: &Request,
        grant_name: Vec<u8>,
    ) -> Result<String, ClusterError> {
        // A device removed from the cluster is never admitted again, whoever trusts it.
        if self.read_epoch(key)?.removed.contains(&request.serial) {
            return Err(refused(format!(
                "device {} was removed from the cluster: it is not admitted again",
                request.serial
            )));
        }
        let message = request_message(&self.name, &request.serial, &request.public, request.time);
        check(
            &request.chain,
            &me.peers(),
            &request.serial,
            &message,
            &request.signature,
        )?;
        if now().abs_diff(request.time) > FRESH.as_secs() {
            return Err(refused(format!(
                "device {}'s request is {} s away from this device's clock",
                request.serial,
                now().abs_diff(request.time)
            )));
        }
        let chain = me
            .chain()
            .ok_or_else(|| refused("this member has no identity to sign a grant with"))?;
        let random = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &random)
            .map_err(|_| refused("the random generator failed"))?;
        let public = private
            .compute_public_key()
            .map_err(|_| refused("key generation failed"))?
            .as_ref()
            .to_vec();
        let transport = transport_key(private, &request.public, &message, &public)?;
        let sealed_key = key
            .key
            .sealed_under(&transport, &key_aad(&self.name, key.epoch))
            .map_err(refused)?;
        let serial = me.serial();
        let signature = me
            .sign(&grant_message(
                &message,
                key.epoch,
                &serial,
                &public,
                &sealed_key,
            ))
            .map_err(refused)?;
        let grant = Grant {
            epoch: key.epoch,
            serial,
            chain,
            public,
            sealed_key,
            signature,
        };
        let encoded = postcard::to_stdvec(&grant).map_err(refused)?;
        self.txn(
            etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(grant_name, encoded, None)]),
        )?;
        Ok(request.serial.clone())
    }
}
