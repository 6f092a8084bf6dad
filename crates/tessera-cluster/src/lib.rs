//! A cluster of Tessera devices whose token state lives in etcd.
//!
//! Every device (node) keeps its own identity and its own store for itself; the tokens — their
//! records (labels, PIN records, failure counts) and their objects — live in etcd under one
//! prefix, `/tessera/<cluster>/`, each value sealed (AES-256-GCM, bound to its key's name)
//! under a key derived from the **cluster key**. Only devices admitted to the cluster hold that
//! key: the founding device makes it, and a device that joins receives it from a member that
//! trusts its identity certificate, over a key agreement both identities sign
//! ([`join`]).
//!
//! etcd does the consensus: every write is one transaction that etcd commits on a quorum
//! before the call returns, and writes that decide (a PIN failure count, an object that must
//! still exist) compare the revision they replace. Each node keeps the tokens in memory and a
//! watch keeps them current ([`store::ClusterStore`]).
//!
//! The etcd client is asynchronous; the node runs it on a small runtime of its own and the
//! engine's threads wait for its answers, so the engine stays synchronous.
#![forbid(unsafe_code)]

pub mod join;
pub mod keys;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_store::MasterKey;

pub use join::NodeIdentity;
pub use keys::ClusterKey;
pub use store::ClusterStore;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer in time or could not be reached (no quorum, wrong endpoints).
    #[error("etcd is unavailable ({0}); check the endpoints given with --etcd and that a quorum of etcd members runs")]
    Unavailable(String),
    /// Something in etcd does not open with this cluster key, or does not decode.
    #[error("{0}")]
    Refused(String),
    /// A bad argument (cluster name, endpoints).
    #[error("{0}")]
    Usage(String),
}

/// The slots of the cluster's tokens: fixed when the cluster is founded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The user tokens, in slot order.
    pub user_tokens: Vec<u64>,
    /// The Admin token.
    pub admin_token: u64,
}

/// The founding record: the layout and the token key, sealed under the cluster key (opening
/// it proves a key).
#[derive(Serialize, Deserialize)]
struct Founding {
    layout: Layout,
    founder: String,
    /// Seals public objects' secrets and peppers PIN records (through keys derived from it):
    /// fixed for the cluster's life, so that a rotation of the cluster key (which seals what
    /// etcd holds) need not open the tokens.
    token_key: tessera_core::SecretBytes,
}

/// The epoch record (`epoch`): the current epoch, the devices removed from the cluster (never
/// admitted again), and the first epoch whose values still open (those before are retired).
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct EpochRecord {
    /// The current epoch.
    pub epoch: u32,
    /// The serials of the devices removed.
    pub removed: Vec<String>,
    /// Values of epochs before this one no longer open.
    pub oldest: u32,
}

/// How a node proves itself to etcd and checks etcd: what etcd's own TLS and authentication
/// ask for in production (docs/cluster.md). All optional: the tests run etcd on loopback
/// without them.
#[derive(Default)]
pub struct EtcdSecurity {
    /// The CA certificates (PEM) that etcd's server certificate must chain to; with it the
    /// endpoints are `https://`.
    pub ca: Option<Vec<u8>>,
    /// This node's client certificate and key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, tessera_core::SecretBytes)>,
    /// An etcd user and its password, for etcd's authentication (`etcdctl auth enable`).
    pub user: Option<(String, tessera_core::SecretBytes)>,
}

/// One node's connection to the cluster's etcd.
pub struct Node {
    name: String,
    prefix: String,
    runtime: tokio::runtime::Runtime,
    client: etcd_client::Client,
    timeout: Duration,
}

/// The pause before a request that failed at the transport is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether an etcd error lets the request go again, to another member: for a read, any
/// failure of the transport or of the member (a member down or unreachable, no leader yet);
/// for a write (`write`), only the failures where etcd did not carry it out (no connection,
/// `Unavailable`): a write whose outcome is unknown (`Unknown`, `DeadlineExceeded`, a
/// connection lost on the way) is not sent again, as it may have been committed (a PIN guess
/// counted twice, an object made twice). The call fails instead (`CKR_DEVICE_ERROR`).
fn retryable(e: &etcd_client::Error, write: bool) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::IoError(_) => !write,
        // Unknown (2), DeadlineExceeded (4), Unavailable (14): gRPC's codes.
        etcd_client::Error::GRpcStatus(status) => match status.code() as i32 {
            14 => true,
            2 | 4 => !write,
            _ => false,
        },
        _ => false,
    }
}

/// How long one etcd request may take before the call fails (`CKR_DEVICE_ERROR`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Connects to etcd for cluster `name` (letters, digits, `-`, `_`; it names the prefix).
    pub fn connect(
        name: &str,
        endpoints: &[String],
        timeout: Duration,
        security: &EtcdSecurity,
    ) -> Result<Arc<Node>, ClusterError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ClusterError::Usage(format!(
                "cluster name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if endpoints.is_empty() {
            return Err(ClusterError::Usage(
                "no etcd endpoint: give --etcd http://host:2379[,http://host2:2379...]".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Usage(format!("cannot start the cluster runtime: {e}")))?;
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        if security.ca.is_some() || security.identity.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &security.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((certificate, key)) = &security.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(certificate, key.expose()));
            }
            options = options.with_tls(tls);
            if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(ClusterError::Usage(format!(
                    "etcd endpoint {plain} is http:// but TLS is asked for (--etcd-ca, \
                     --etcd-cert): give https:// endpoints"
                )));
            }
        }
        if let Some((user, password)) = &security.user {
            // The etcd client keeps the password as a String of its own (it sends it to get
            // a token, and again when the token expires); this copy is wiped.
            let password = zeroize::Zeroizing::new(
                String::from_utf8(password.expose().to_vec())
                    .map_err(|_| ClusterError::Usage("the etcd password is not UTF-8".into()))?,
            );
            options = options.with_user(user.clone(), password.as_str());
        }
        let endpoints = endpoints.to_vec();
        let client = runtime
            .block_on(async move {
                tokio::time::timeout(
                    timeout,
                    etcd_client::Client::connect(endpoints, Some(options)),
                )
                .await
            })
            .map_err(|_| ClusterError::Unavailable("no endpoint answered".into()))?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(Arc::new(Node {
            name: name.to_string(),
            prefix: format!("/tessera/{name}/"),
            runtime,
            client,
            timeout,
        }))
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of `suffix` under the cluster's prefix.
    pub(crate) fn key(&self, suffix: &str) -> Vec<u8> {
        format!("{}{suffix}", self.prefix).into_bytes()
    }

    /// Runs one etcd request on the node's runtime and waits for it (from any thread, also one
    /// of another runtime), bounded by the node's timeout. A request that fails at the
    /// transport (a member that is down, a leader being elected) is sent again, to the next
    /// endpoint, until the timeout.
    pub(crate) fn call<T, F>(
        &self,
        write: bool,
        request: impl Fn(etcd_client::Client) -> F + Send + 'static,
    ) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let client = self.client.clone();
        let timeout = self.timeout;
        let (answer, wait) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let result = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, request(client.clone())).await {
                    Ok(Ok(value)) => break Ok(value),
                    Ok(Err(e))
                        if retryable(&e, write) && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Ok(Err(e)) => break Err(ClusterError::Unavailable(e.to_string())),
                    Err(_) => {
                        break Err(ClusterError::Unavailable(format!(
                            "no answer within {} ms",
                            timeout.as_millis()
                        )))
                    }
                }
            };
            let _ = answer.send(result);
        });
        wait.recv()
            .map_err(|_| ClusterError::Unavailable("the cluster runtime stopped".into()))?
    }

    /// A linearizable read of `key` (with `options`).
    pub(crate) fn get(
        &self,
        key: Vec<u8>,
        options: Option<etcd_client::GetOptions>,
    ) -> Result<etcd_client::GetResponse, ClusterError> {
        self.call(false, move |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
    }

    /// One transaction.
    pub(crate) fn txn(
        &self,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse, ClusterError> {
        self.call(true, move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    pub(crate) fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// Whether the cluster exists (its founding record is in etcd).
    pub fn is_founded(&self) -> Result<bool, ClusterError> {
        let key = self.key("founded");
        let found = self.get(key, None)?;
        Ok(!found.kvs().is_empty())
    }

    /// Founds the cluster with a new key and blank tokens in `layout`, unless another node
    /// founded it first (then `None`: join it).
    pub fn found(
        &self,
        layout: &Layout,
        founder: &str,
        flags: u64,
    ) -> Result<Option<ClusterKey>, ClusterError> {
        let new_key = || {
            MasterKey::generate()
                .map_err(|e| ClusterError::Refused(format!("cannot make a cluster key: {e}")))
        };
        let key = ClusterKey {
            epoch: 0,
            key: new_key()?,
        };
        let values = keys::Keyring::new(&key)?;
        let token_key = new_key()?;
        let founding = Founding {
            layout: layout.clone(),
            founder: founder.to_string(),
            token_key: token_key.export(),
        };
        let founded_key = self.key("founded");
        let mut puts = vec![etcd_client::TxnOp::put(
            founded_key.clone(),
            values.seal(&founded_key, &founding)?,
            None,
        )];
        let blank = tessera_store::TokenRecord::default();
        for token in layout
            .user_tokens
            .iter()
            .chain(std::iter::once(&layout.admin_token))
        {
            let name = self.key(&store::token_key(*token));
            puts.push(etcd_client::TxnOp::put(
                name.clone(),
                values.seal_versioned(&name, &blank, 1)?,
                None,
            ));
        }
        let flags_key = self.key(store::FLAGS);
        puts.push(etcd_client::TxnOp::put(
            flags_key.clone(),
            values.seal_versioned(&flags_key, &flags, 1)?,
            None,
        ));
        let head = self.key(store::HEAD);
        puts.push(etcd_client::TxnOp::put(
            head.clone(),
            values.seal(&head, &0u64)?,
            None,
        ));
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(
                founded_key,
                etcd_client::CompareOp::Equal,
                0,
            )])
            .and_then(puts);
        let done = self.txn(txn)?;
        Ok(done.succeeded().then_some(key))
    }

    /// Opens the founding record with `key`: the cluster's layout and token key, or a refusal
    /// when `key` is not this cluster's current key (a node removed from the cluster after a
    /// rotation).
    pub fn layout(&self, key: &ClusterKey) -> Result<(Layout, MasterKey), ClusterError> {
        let name = self.key("founded");
        let lookup = name.clone();
        let found = self.get(lookup, None)?;
        let kv = found.kvs().first().ok_or_else(|| {
            ClusterError::Refused(format!("cluster {} is not founded", self.name))
        })?;
        let founding: Founding =
            keys::Keyring::new(key)?
                .open(&name, kv.value())
                .map_err(|_| {
                    ClusterError::Refused(format!(
                        "this device's cluster key (epoch {}) does not open cluster {}'s records: \
                     the key was rotated since (this device must be admitted again, unless it \
                     was removed from the cluster)",
                        key.epoch, self.name
                    ))
                })?;
        let token_key = MasterKey::from_secret(founding.token_key)
            .map_err(|e| ClusterError::Refused(format!("the cluster's token key: {e}")))?;
        Ok((founding.layout, token_key))
    }

    /// [`Node::layout`] with whichever of `keys` the founding record is sealed under.
    pub fn layout_any(&self, keys: &[ClusterKey]) -> Result<(Layout, MasterKey), ClusterError> {
        let mut last = ClusterError::Refused("no cluster key kept".into());
        for key in keys {
            match self.layout(key) {
                Ok(found) => return Ok(found),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The epoch record as stored: its epoch (readable without a key) and the record sealed.
    pub fn epoch_record(&self) -> Result<Option<(u32, Vec<u8>)>, ClusterError> {
        let found = self.get(self.key(store::EPOCH), None)?;
        Ok(found
            .kvs()
            .first()
            .and_then(|kv| keys::epoch_of(kv.value()).map(|e| (e, kv.value().to_vec()))))
    }

    /// The epoch record, opened with `key` (the default record before any rotation).
    pub fn read_epoch(&self, key: &ClusterKey) -> Result<EpochRecord, ClusterError> {
        match self.epoch_record()? {
            None => Ok(EpochRecord::default()),
            Some((_, sealed)) => keys::Keyring::new(key)?.open(&self.key(store::EPOCH), &sealed),
        }
    }
}
