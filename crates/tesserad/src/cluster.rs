//! `--cluster NAME --etcd URLS`: the device becomes a node of a cluster before it serves.
//!
//! A node that kept the cluster's key (it joined before) opens the cluster with it; the first
//! node of a cluster founds it; any other asks to join and waits for a member to admit it
//! (`tessera_cluster::join`). Then the engine takes the cluster's tokens, and a thread answers
//! the join requests of other devices for as long as the node runs.

use std::sync::Arc;
use std::time::Duration;

use tessera_cluster::{ClusterKey, ClusterStore, Layout, Node, NodeIdentity};
use tessera_hsm::Hsm;

/// The files of `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user` and
/// `--etcd-password-file`.
pub struct EtcdFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
}

impl EtcdFiles {
    /// Reads the files, naming the one that cannot be read.
    fn read(&self) -> Result<tessera_cluster::EtcdSecurity, String> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let ca = self
            .ca
            .as_deref()
            .map(|p| read(p, "the etcd CA certificate (--etcd-ca)"))
            .transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read(cert, "the etcd client certificate (--etcd-cert)")?,
                tessera_core::SecretBytes::new(read(key, "the etcd client key (--etcd-key)")?),
            )),
            _ => None,
        };
        let user = match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                let mut all = tessera_core::SecretBytes::new(read(
                    file,
                    "the etcd password file (--etcd-password-file)",
                )?);
                let end = all
                    .expose()
                    .iter()
                    .position(|b| *b == b'\n')
                    .unwrap_or(all.len());
                all.truncate(end);
                if all.expose().last() == Some(&b'\r') {
                    all.truncate(end - 1);
                }
                Some((user.clone(), all))
            }
            _ => None,
        };
        Ok(tessera_cluster::EtcdSecurity { ca, identity, user })
    }
}

/// What the command line asks of the cluster.
pub struct ClusterConfig {
    pub name: String,
    /// TLS and authentication to etcd.
    pub security: EtcdFiles,
    pub endpoints: Vec<String>,
    /// How long a joining device waits for a member's grant (`--join-wait`).
    pub join_wait: Duration,
    /// How long one etcd request may take (`--etcd-timeout`).
    pub timeout: Duration,
    /// How old the node's tokens may be and still be served while etcd cannot be reached
    /// (`--cluster-stale-after`).
    pub stale_after: Duration,
}

/// The engine, as the cluster's admission sees it.
struct Identity(Arc<Hsm>);

impl NodeIdentity for Identity {
    fn serial(&self) -> String {
        self.0.serial().to_string()
    }
    fn chain(&self) -> Option<Vec<Vec<u8>>> {
        self.0.node_chain()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.node_sign(message)
    }
    fn peers(&self) -> Vec<Vec<u8>> {
        self.0.node_peers()
    }
}

/// How often a member looks for join requests.
const ADMIT_EVERY: Duration = Duration::from_millis(500);
/// How often a member reports itself.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often a member removes the records of old requests (`Call::Once`).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Makes `hsm` a node of the cluster: found, open with the kept key, or join.
pub fn join(hsm: &Arc<Hsm>, config: &ClusterConfig) -> Result<(), String> {
    let security = config.security.read()?;
    let node = Node::connect(&config.name, &config.endpoints, config.timeout, &security)
        .map_err(|e| format!("cluster {}: {e}", config.name))?;
    drop(security);
    let (user_tokens, admin_token) = hsm.slot_layout();
    let identity = Identity(hsm.clone());
    let kept: Vec<ClusterKey> = hsm
        .cluster_keys(&config.name)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(epoch, key)| ClusterKey { epoch, key })
        .collect();
    let keys: Vec<ClusterKey> = match kept.iter().map(|k| k.epoch).max() {
        Some(epoch) => {
            if node.layout_any(&kept).is_ok() {
                tracing::info!(cluster = %config.name, epoch, "opening the cluster with the key this node kept");
                kept
            } else {
                // The key was rotated while this node was down: admitted again (unless it
                // was removed meanwhile).
                tracing::info!(cluster = %config.name, epoch, "the cluster key was rotated since this node kept it: asking to be admitted again");
                vec![join_as_new(&node, &identity, config)?]
            }
        }
        None if !node.is_founded().map_err(|e| e.to_string())? => {
            let layout = Layout {
                user_tokens: user_tokens.clone(),
                admin_token,
            };
            match node
                .found(&layout, hsm.serial(), hsm.flags())
                .map_err(|e| e.to_string())?
            {
                Some(key) => {
                    tracing::info!(cluster = %config.name, slots = user_tokens.len(), "founded the cluster: its tokens are blank");
                    hsm.cluster_event("cluster-founded", format!("cluster {}", config.name));
                    vec![key]
                }
                None => vec![join_as_new(&node, &identity, config)?],
            }
        }
        None => vec![join_as_new(&node, &identity, config)?],
    };
    let (layout, token_key) = node.layout_any(&keys).map_err(|e| e.to_string())?;
    let kept: Vec<(u32, &tessera_store::MasterKey)> =
        keys.iter().map(|k| (k.epoch, &k.key)).collect();
    hsm.keep_cluster_keys(&config.name, &kept)
        .map_err(|e| e.to_string())?;
    let store = ClusterStore::new(node.clone(), hsm.serial(), &keys, config.stale_after)
        .map_err(|e| e.to_string())?;
    let keeper_hsm = Arc::downgrade(hsm);
    let keeper_name = config.name.clone();
    store.set_keeper(Box::new(move |keys| {
        let hsm = keeper_hsm.upgrade().ok_or("the device is closing")?;
        let kept: Vec<(u32, &tessera_store::MasterKey)> =
            keys.iter().map(|k| (k.epoch, &k.key)).collect();
        hsm.keep_cluster_keys(&keeper_name, &kept)
            .map_err(|e| e.to_string())
    }));
    hsm.join_cluster(
        &config.name,
        store.clone(),
        &token_key,
        &layout.user_tokens,
        layout.admin_token,
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(cluster = %config.name, serial = %hsm.serial(), "serving the cluster's tokens");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = store.heartbeat(hsm.serial(), since) {
        tracing::warn!(error = %e, "cannot report this node as a member");
    }
    // A rotation this node began and did not finish (it stopped in the middle) is finished
    // now, beside the member thread (which admits the members to the new key meanwhile).
    let resuming = store.clone();
    let _ = std::thread::Builder::new()
        .name("cluster-resume".into())
        .spawn(move || match resuming.resume_rotation() {
            Ok(Some(epoch)) => tracing::info!(epoch, "finished the rotation this node began"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot finish the rotation this node began"),
        });
    let weak = Arc::downgrade(hsm);
    let join_wait = config.join_wait;
    std::thread::Builder::new()
        .name("cluster-member".into())
        .spawn(move || member_loop(node, store, weak, since, join_wait))
        .map_err(|e| format!("cannot start the cluster member thread: {e}"))?;
    Ok(())
}

fn join_as_new(
    node: &Node,
    identity: &Identity,
    config: &ClusterConfig,
) -> Result<ClusterKey, String> {
    let key = node
        .join(identity, config.join_wait, &|message| {
            tracing::info!("{message}")
        })
        .map_err(|e| format!("cluster {}: {e}", config.name))?;
    identity
        .0
        .cluster_event("cluster-admitted", format!("cluster {}", config.name));
    Ok(key)
}

/// A member's duties, for as long as the engine lives: reports itself every second (its
/// health in `ctconf`), and answers join requests from trusted devices, recording refusals
/// once each.
fn member_loop(
    node: Arc<Node>,
    store: Arc<ClusterStore>,
    hsm: std::sync::Weak<Hsm>,
    since: u64,
    join_wait: Duration,
) {
    let mut refused = std::collections::HashSet::new();
    let mut reported = std::time::Instant::now();
    let mut swept = std::time::Instant::now();
    loop {
        std::thread::sleep(ADMIT_EVERY);
        let Some(hsm) = hsm.upgrade() else { return };
        // A node that stopped serving the cluster (a tamper, or not admitted to a new key)
        // admits nobody, reports nothing and asks for nothing more.
        if hsm.cluster_detached() {
            tracing::warn!("this node stopped serving its cluster: the member thread ends");
            return;
        }
        // A rotation: this node asks for the new key as a joining device does. A node that
        // no member admits (it was removed) leaves the cluster.
        match store.sync_epoch() {
            Ok(true) => {
                let identity = Identity(hsm.clone());
                let name = node.name().to_string();
                match node.join(&identity, join_wait, &|message| tracing::info!("{message}")) {
                    Ok(key) => {
                        let installed = store
                            .install(&key)
                            .and_then(|()| store.sync_epoch().map(drop))
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                hsm.keep_cluster_keys(&name, &[(key.epoch, &key.key)])
                                    .map_err(|e| e.to_string())
                            });
                        match installed {
                            Ok(()) => {
                                tracing::info!(epoch = key.epoch, "took the cluster's new key");
                                hsm.cluster_event(
                                    "cluster-rekeyed",
                                    format!("cluster {name}, key epoch {}", key.epoch),
                                );
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot take the cluster's new key")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "no member gave this node the cluster's new key: it leaves the cluster (it stops serving it; restart it to ask again)");
                        hsm.suspend_cluster(&format!(
                            "cluster {name}: not admitted to the rotated key (removed from the cluster?): {e}"
                        ));
                        return;
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the cluster's epoch"),
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = std::time::Instant::now();
            if let Err(e) = store.heartbeat(hsm.serial(), since) {
                tracing::debug!(error = %e, "cannot report this node as a member");
            }
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = std::time::Instant::now();
            match store.forget_old_requests() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "removed the records of old requests"),
                Err(e) => tracing::debug!(error = %e, "cannot remove the records of old requests"),
            }
        }
        let identity = Identity(hsm.clone());
        match node.admit_pending(&identity, &store.current_key()) {
            Ok(answers) => {
                for (serial, answer) in answers {
                    match answer {
                        Ok(()) => {
                            refused.remove(&serial);
                            tracing::info!(serial = %serial, "admitted a device to the cluster");
                            hsm.cluster_event("cluster-admit", format!("device {serial}"));
                        }
                        // Once per device (its requests come every quarter second), in a set
                        // that cannot grow past the devices that ask.
                        Err(e) if refused.len() < 1024 && refused.insert(serial.clone()) => {
                            let reason = e.to_string();
                            tracing::warn!(serial = %serial, reason = %reason, "refused a device's request to join the cluster");
                            hsm.cluster_event("cluster-refused", reason);
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot look for join requests"),
        }
    }
}
