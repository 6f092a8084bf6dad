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

use aws_lc_rs::agreement::EphemeralPrivateKey;
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

/// A member's answer to one device's request: its serial, and whether it was admitted.
pub type Answer = (String, Result<(), ClusterError>);

/// How one request for the key ended.
enum Attempt {
    Admitted(ClusterKey),
    /// A grant came that does not hold: why.
    Refused(String),
    TimedOut,
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

/// A fresh X25519 key pair for one exchange: the private key and the public key's bytes.
fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), ClusterError> {
    tessera_store::agreement::ephemeral().map_err(refused)
}

/// The transport key from the X25519 agreement, bound to the request and the member's key.
fn transport_key(
    private: EphemeralPrivateKey,
    peer_public: &[u8],
    request: &[u8],
    member_public: &[u8],
) -> Result<MasterKey, ClusterError> {
    tessera_store::agreement::transport_key(
        private,
        peer_public,
        request,
        member_public,
        b"tessera cluster key transport v1",
    )
    .map_err(refused)
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
    ///
    /// A grant that does not hold (from a device this one does not trust, a key that does not
    /// open the cluster's records, a device removed from the cluster) is refused and removed,
    /// and a new request made: whoever can write to etcd cannot end the wait with a forgery.
    pub fn join(
        &self,
        me: &dyn NodeIdentity,
        wait: Duration,
        progress: &dyn Fn(&str),
    ) -> Result<ClusterKey, ClusterError> {
        let serial = me.serial();
        let deadline = Instant::now() + wait;
        progress(&format!(
            "asking to join cluster {} as device {serial}; waiting up to {} s for a member that \
             trusts this device's identity (on a member: ctident peer add <this device's PIC or POC>)",
            self.name,
            wait.as_secs()
        ));
        let mut last_refusal: Option<String> = None;
        loop {
            match self.join_once(me, deadline)? {
                Attempt::Admitted(key) => return Ok(key),
                Attempt::Refused(why) => {
                    progress(&format!("refused a grant: {why}"));
                    last_refusal = Some(why);
                }
                Attempt::TimedOut => {
                    let refusal = last_refusal
                        .map(|why| format!(" (the last grant was refused: {why})"))
                        .unwrap_or_default();
                    return Err(ClusterError::Refused(format!(
                        "no member of cluster {} admitted device {serial} within {} s{refusal}: \
                         on a member, trust this device (ctident peer add <its PIC or POC>), and \
                         here trust a member (ctident peer add <a member's PIC or POC>), then \
                         start again",
                        self.name,
                        wait.as_secs()
                    )));
                }
            }
        }
    }

    /// One request, and the wait for its grant until `deadline`.
    fn join_once(&self, me: &dyn NodeIdentity, deadline: Instant) -> Result<Attempt, ClusterError> {
        let serial = me.serial();
        let chain = me.chain().ok_or_else(|| {
            ClusterError::Usage(format!(
                "device {serial} has no identity: a device joins a cluster with its PIC; give it \
                 one first (without --cluster: ctident gen-selfsigned all, or an owner's \
                 sign-device), and have a member trust it (ctident peer add)"
            ))
        })?;
        let (private, public) = ephemeral()?;
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
        self.txn(etcd_client::Txn::new().and_then([
            etcd_client::TxnOp::delete(grant_name.clone(), None),
            etcd_client::TxnOp::put(request_name.clone(), encoded, None),
        ]))?;
        // Only the grant read, not one written since.
        let forget = |kv: &etcd_client::KeyValue| self.delete_if_unchanged(kv);
        loop {
            let found = self.get(grant_name.clone(), None)?;
            if let Some(kv) = found.kvs().first() {
                let Ok(grant) = postcard::from_bytes::<Grant>(kv.value()) else {
                    forget(kv);
                    return Ok(Attempt::Refused("a grant does not decode".into()));
                };
                let signed = grant_message(
                    &message,
                    grant.epoch,
                    &grant.serial,
                    &grant.public,
                    &grant.sealed_key,
                );
                if let Err(e) = check(
                    &grant.chain,
                    &me.peers(),
                    &grant.serial,
                    &signed,
                    &grant.signature,
                ) {
                    forget(kv);
                    return Ok(Attempt::Refused(format!(
                        "a grant came from device {}, which this device does not trust: {e} \
                         (trust the members: ctident peer add <a member's PIC or POC>)",
                        grant.serial
                    )));
                }
                let transport = transport_key(private, &grant.public, &message, &grant.public)?;
                let opened = MasterKey::opened_from(
                    &transport,
                    &key_aad(&self.name, grant.epoch),
                    &grant.sealed_key,
                );
                let Ok(key) = opened else {
                    forget(kv);
                    return Ok(Attempt::Refused(
                        "the granted cluster key does not open".into(),
                    ));
                };
                let key = ClusterKey {
                    epoch: grant.epoch,
                    key,
                };
                // The key must open the cluster as it is now, and the granting device must
                // still be a member.
                let current = self.layout(&key).and_then(|_| self.read_epoch(&key));
                match current {
                    Ok(record) if !record.removed.contains(&grant.serial) => {}
                    Ok(_) => {
                        forget(kv);
                        return Ok(Attempt::Refused(format!(
                            "a grant came from device {}, removed from the cluster",
                            grant.serial
                        )));
                    }
                    Err(e) => {
                        forget(kv);
                        return Ok(Attempt::Refused(format!(
                            "the key granted by device {} does not open the cluster: {e}",
                            grant.serial
                        )));
                    }
                }
                let _ = self.txn(etcd_client::Txn::new().and_then([
                    etcd_client::TxnOp::delete(request_name.clone(), None),
                    etcd_client::TxnOp::delete(grant_name.clone(), None),
                ]));
                return Ok(Attempt::Admitted(key));
            }
            if Instant::now() >= deadline {
                let _ = self.txn(
                    etcd_client::Txn::new()
                        .and_then([etcd_client::TxnOp::delete(request_name.clone(), None)]),
                );
                return Ok(Attempt::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Deletes what `kv` read, unless it was written again since.
    fn delete_if_unchanged(&self, kv: &etcd_client::KeyValue) {
        let _ = self.txn(
            etcd_client::Txn::new()
                .when([etcd_client::Compare::mod_revision(
                    kv.key().to_vec(),
                    etcd_client::CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([etcd_client::TxnOp::delete(kv.key().to_vec(), None)]),
        );
    }

    /// A member's duty: answers the join requests in etcd from devices `me` trusts, with
    /// `key`. Returns the serials admitted; refusals are logged (and returned to the caller's
    /// log as `Err` per request).
    pub fn admit_pending(
        &self,
        me: &dyn NodeIdentity,
        key: &ClusterKey,
    ) -> Result<Vec<Answer>, ClusterError> {
        let prefix = self.key("join/");
        let found = self.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))?;
        let mut out = Vec::new();
        for kv in found.kvs() {
            let decoded = postcard::from_bytes::<Request>(kv.value());
            let stale = decoded
                .as_ref()
                .map_or(true, |r| now().abs_diff(r.time) > FRESH.as_secs());
            if stale {
                // A request nobody answered in time (its device gave up) or that does not
                // decode: removed, once, by whichever member sees it.
                self.delete_if_unchanged(kv);
                continue;
            }
            let Ok(request) = decoded else { continue };
            let grant_name = self.key(&format!("grant/{}", request.serial));
            let answered = self.get(grant_name.clone(), None)?;
            if !answered.kvs().is_empty() {
                continue;
            }
            let outcome = self.admit(me, key, &request, kv, grant_name);
            out.push((request.serial.clone(), outcome));
        }
        Ok(out)
    }

    fn admit(
        &self,
        me: &dyn NodeIdentity,
        key: &ClusterKey,
        request: &Request,
        read: &etcd_client::KeyValue,
        grant_name: Vec<u8>,
    ) -> Result<(), ClusterError> {
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
        let chain = me
            .chain()
            .ok_or_else(|| refused("this member has no identity to sign a grant with"))?;
        let (private, public) = ephemeral()?;
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
        // Only for the request read (not a newer one of the device), and only if no member
        // answered it meanwhile.
        self.txn(
            etcd_client::Txn::new()
                .when([
                    etcd_client::Compare::mod_revision(
                        read.key().to_vec(),
                        etcd_client::CompareOp::Equal,
                        read.mod_revision(),
                    ),
                    etcd_client::Compare::create_revision(
                        grant_name.clone(),
                        etcd_client::CompareOp::Equal,
                        0,
                    ),
                ])
                .and_then([etcd_client::TxnOp::put(grant_name, encoded, None)]),
        )?;
        Ok(())
    }
}
