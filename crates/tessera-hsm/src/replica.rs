//! Replication of a token to a peer device: the product's token replication, between devices
//! that trust each other's identity (`ctident peer add`).
//!
//! 1. The **receiving** device's token SO asks for a request: the device makes an ephemeral
//!    X25519 key (kept in memory for ten minutes, for this token) and answers its serial, its
//!    identity chain, the token's serial and model, the public key, the time and a random
//!    nonce, signed by its identity key (PIK).
//! 2. The **sending** device's token SO hands it the request. The sender checks that the
//!    requester's chain is trusted for its serial by the sender's peers, the signature, the
//!    time and the model; makes its own ephemeral key; derives a transport key from the
//!    agreement (HKDF-SHA256 over the request and its own public key); seals every object of
//!    the token under it; and signs the request, its own public key and the sealed objects.
//! 3. The receiver takes the replica only if its sender's chain is trusted by *its* peers, the
//!    signature holds, and it answers a request the receiver made for this token; it opens the
//!    objects and stores them all in one transaction.
//!
//! Between the devices travel certificates, public keys, signatures and objects sealed under a
//! key only the two devices hold: the tool that carries them (over each device's own secure
//! channel) never sees a key in the clear, and a relay that changes a byte breaks a signature
//! or the seal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::agreement::EphemeralPrivateKey;
use serde::{Deserialize, Serialize};
use tessera_core::{Rv, SecretBytes};
use tessera_store::agreement::AgreementError;
use tessera_store::MasterKey;
use tessera_wire::Reply;

use crate::keep::Carried;
use crate::{Hsm, Login};

/// How long a request waits for its replica.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// How far a request's time may be from the sender's clock.
const FRESH: u64 = 600;
/// Most requests waiting at once on the device.
const MAX_PENDING: usize = 64;
/// Most requests waiting at once for one token (its oldest is dropped for a new one).
const MAX_PENDING_PER_TOKEN: usize = 4;

/// A request waiting for its replica.
pub(crate) struct Pending {
    nonce: [u8; 16],
    token_id: u64,
    private: EphemeralPrivateKey,
    made: Instant,
}

/// The requests this device waits on.
#[derive(Default)]
pub(crate) struct Requests(Mutex<Vec<Pending>>);

#[derive(Serialize, Deserialize)]
struct Request {
    serial: String,
    chain: Vec<Vec<u8>>,
    token_serial: String,
    token_model: String,
    public: Vec<u8>,
    time: u64,
    nonce: [u8; 16],
    signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Replica {
    /// The request it answers, as received.
    request: Vec<u8>,
    serial: String,
    chain: Vec<Vec<u8>>,
    token_serial: String,
    token_label: String,
    objects: u64,
    public: Vec<u8>,
    sealed: Vec<u8>,
    signature: Vec<u8>,
}

/// Length-prefixed parts after a domain label: what a signature covers.
fn message(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = label.to_vec();
    for part in parts {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

fn request_message(r: &Request) -> Vec<u8> {
    message(
        b"tessera replica request v1\0",
        &[
            r.serial.as_bytes(),
            r.token_serial.as_bytes(),
            r.token_model.as_bytes(),
            &r.public,
            &r.time.to_be_bytes(),
            &r.nonce,
        ],
    )
}

fn replica_message(r: &Replica) -> Vec<u8> {
    message(
        b"tessera replica v1\0",
        &[
            &r.request,
            r.serial.as_bytes(),
            r.token_serial.as_bytes(),
            r.token_label.as_bytes(),
            &r.objects.to_be_bytes(),
            &r.public,
            &r.sealed,
        ],
    )
}

/// The transport key of one replica, bound to the request and the sender's public key.
fn transport_key(
    private: EphemeralPrivateKey,
    peer_public: &[u8],
    request: &[u8],
    sender_public: &[u8],
) -> Result<MasterKey, Rv> {
    tessera_store::agreement::transport_key(
        private,
        peer_public,
        request,
        sender_public,
        b"tessera token replica v1",
    )
    .map_err(agreement_failure)
}

fn agreement_failure(e: AgreementError) -> Rv {
    match e {
        AgreementError::PublicKey => Rv::DataInvalid,
        AgreementError::Failed => Rv::FunctionFailed,
    }
}

fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), Rv> {
    tessera_store::agreement::ephemeral().map_err(agreement_failure)
}

impl Hsm {
    /// Whether `chain` is trusted for `serial` by this device's peers and signed `message`;
    /// a refusal is an event, and `CKR_CERT_NOT_VALIDATED` or `CKR_SIGNATURE_INVALID`.
    fn check_peer(
        &self,
        chain: &[Vec<u8>],
        serial: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Rv> {
        let peers = self.peer_certificates();
        if let Err(refusal) =
            tessera_identity::verify::verify_chain(chain, &peers, serial, self.clock() as i64)
        {
            self.event(
                "SO",
                "replica-refused",
                format!(
                    "device {serial:?} is not a trusted peer: {:?}",
                    refusal.to_string()
                ),
            );
            return Err(Rv::CertNotValidated);
        }
        let pic = chain.first().ok_or(Rv::CertNotValidated)?;
        if !tessera_identity::verify::verify_with_certificate(pic, message, signature) {
            self.event(
                "SO",
                "replica-refused",
                format!("device {serial:?}: its signature does not verify"),
            );
            return Err(Rv::SignatureInvalid);
        }
        Ok(())
    }

    pub(crate) fn replica_request(&self, client: u64, session: u64) -> Result<Reply, Rv> {
        let token_id = self.logged_in_token(client, session, Login::So, true)?;
        let chain = self.identity_chain()?;
        let (private, public) = ephemeral()?;
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Rv::FunctionFailed)?;
        let mut request = Request {
            serial: self.serial.clone(),
            chain,
            token_serial: self.token_serial(token_id),
            token_model: crate::device::MODEL.into(),
            public,
            time: self.clock(),
            nonce,
            signature: Vec::new(),
        };
        request.signature = self.identity_signature(&request_message(&request))?;
        let bytes = postcard::to_stdvec(&request).map_err(|_| Rv::GeneralError)?;
        let mut pending = crate::locked::lock(&self.replicas.0);
        pending.retain(|p| p.made.elapsed() < PENDING_FOR);
        // A token's SO drops its own oldest request, never another token's.
        let of_token = pending.iter().filter(|p| p.token_id == token_id).count();
        if of_token >= MAX_PENDING_PER_TOKEN {
            if let Some(oldest) = pending.iter().position(|p| p.token_id == token_id) {
                pending.remove(oldest);
            }
        } else if pending.len() >= MAX_PENDING {
            return Err(Rv::SessionCount);
        }
        pending.push(Pending {
            nonce,
            token_id,
            private,
            made: Instant::now(),
        });
        Ok(Reply::Bytes(bytes))
    }

    pub(crate) fn replicate(&self, client: u64, session: u64, bytes: &[u8]) -> Result<Reply, Rv> {
        // Who asks comes first: nothing of the request is worked on for anyone but the SO.
        self.logged_in_token(client, session, Login::So, false)?;
        let request: Request = postcard::from_bytes(bytes).map_err(|_| Rv::DataInvalid)?;
        if request.serial == self.serial {
            // A device does not replicate to itself (its own identity would vouch for it).
            return Err(Rv::DataInvalid);
        }
        self.check_peer(
            &request.chain,
            &request.serial,
            &request_message(&request),
            &request.signature,
        )?;
        if self.clock().abs_diff(request.time) > FRESH {
            return Err(Rv::DataInvalid);
        }
        if request.token_model != crate::device::MODEL {
            return Err(Rv::TokenNotRecognized);
        }
        let taken = self.take_out(client, session, false)?;
        let (private, public) = ephemeral()?;
        let key = transport_key(private, &request.public, bytes, &public)?;
        let payload = SecretBytes::encode(&taken.carried).map_err(|_| Rv::GeneralError)?;
        let mut replica = Replica {
            request: bytes.to_vec(),
            serial: self.serial.clone(),
            chain: self.identity_chain()?,
            token_serial: taken.serial.clone(),
            token_label: taken.label.clone(),
            objects: taken.carried.len() as u64,
            public,
            sealed: Vec::new(),
            signature: Vec::new(),
        };
        replica.sealed = key
            .seal(b"tessera token replica v1", payload.expose())
            .map_err(|_| Rv::FunctionFailed)?;
        replica.signature = self.identity_signature(&replica_message(&replica))?;
        self.event(
            "SO",
            "token-replicated",
            format!(
                "token {} ({:?}): {} objects sealed for token {} of device {}",
                taken.serial, taken.label, replica.objects, request.token_serial, request.serial
            ),
        );
        postcard::to_stdvec(&replica)
            .map(Reply::Bytes)
            .map_err(|_| Rv::GeneralError)
    }

    pub(crate) fn accept_replica(
        &self,
        client: u64,
        session: u64,
        bytes: &[u8],
    ) -> Result<Reply, Rv> {
        let token_id = self.logged_in_token(client, session, Login::So, true)?;
        let replica: Replica = postcard::from_bytes(bytes).map_err(|_| Rv::DataInvalid)?;
        let request: Request =
            postcard::from_bytes(&replica.request).map_err(|_| Rv::DataInvalid)?;
        if replica.serial == self.serial {
            return Err(Rv::DataInvalid);
        }
        self.check_peer(
            &replica.chain,
            &replica.serial,
            &replica_message(&replica),
            &replica.signature,
        )?;
        // Only an answer to a request this device made, for this token, in the last ten
        // minutes; taken out, so a replica is taken once.
        let pending = {
            let mut pending = crate::locked::lock(&self.replicas.0);
            pending.retain(|p| p.made.elapsed() < PENDING_FOR);
            let at = pending
                .iter()
                .position(|p| p.nonce == request.nonce && p.token_id == token_id)
                .ok_or(Rv::DataInvalid)?;
            pending.remove(at)
        };
        if request.serial != self.serial {
            return Err(Rv::DataInvalid);
        }
        let key = transport_key(
            pending.private,
            &replica.public,
            &replica.request,
            &replica.public,
        )?;
        let payload = key
            .open(b"tessera token replica v1", &replica.sealed)
            .map_err(|_| Rv::EncryptedDataInvalid)?;
        let carried: Vec<Carried> =
            postcard::from_bytes(payload.expose()).map_err(|_| Rv::EncryptedDataInvalid)?;
        if carried.len() as u64 != replica.objects {
            return Err(Rv::EncryptedDataInvalid);
        }
        let objects = carried.iter().map(Carried::attributes).collect();
        let (_, serial, count) = self.put_in(client, session, objects)?;
        self.event(
            "SO",
            "token-replica-taken",
            format!(
                "token {serial}: {count} objects from token {} ({:?}) of device {}",
                replica.token_serial, replica.token_label, replica.serial
            ),
        );
        Ok(Reply::Number(count))
    }
}
