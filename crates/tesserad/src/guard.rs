//! Defences against hostile network peers: a cap on connections per address, and a limit on
//! failed or abandoned secure-messaging handshakes per address.
//!
//! A handshake costs the device a signature with its identity key, so a peer that starts
//! handshakes and never finishes them, or fails them, spends the device's time. After
//! `failure_limit` such handshakes within `window`, the address's handshakes are refused with
//! `CKR_TESSERA_HANDSHAKE_RATE_LIMITED` until `window` has passed without new failures. The
//! log says so once when an address is blocked and once, with the count of refusals, when the
//! block ends: a flood never becomes a flood of log lines. Local-socket peers are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits for network peers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections one address may hold at once.
    pub connections_per_peer: usize,
    /// Failed or abandoned handshakes within `window` before the address is blocked.
    pub failure_limit: u32,
    /// The counting window, and how long a block lasts.
    pub window: Duration,
}

#[derive(Default)]
struct Peer {
    connections: usize,
    /// Connections refused since the address reached its cap (`None`: below the cap).
    capped: Option<u64>,
    failures: Vec<Instant>,
    blocked_until: Option<Instant>,
    refused: u64,
}

/// The per-address state.
pub struct Guard {
    limits: Limits,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

/// A connection slot of one address, given back on drop.
pub struct Slot {
    guard: Arc<Guard>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut peers = self.guard.lock();
            if let Some(peer) = peers.get_mut(&ip) {
                peer.connections = peer.connections.saturating_sub(1);
                if let Some(refused) = peer.capped.take() {
                    tracing::info!(peer = %ip, refused, "this address is below its connection cap again ({refused} refused meanwhile)");
                }
                if peer.connections == 0 && peer.failures.is_empty() && peer.blocked_until.is_none()
                {
                    peers.remove(&ip);
                }
            }
        }
    }
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard {
            limits,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection slot for `ip` (`None`: a local socket, never limited), or `None` when the
    /// address holds as many connections as it may.
    pub fn connect(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        if let Some(ip) = ip {
            let mut peers = self.lock();
            let peer = peers.entry(ip).or_default();
            if peer.connections >= self.limits.connections_per_peer {
                match peer.capped.as_mut() {
                    Some(refused) => *refused += 1,
                    None => {
                        tracing::warn!(
                            peer = %ip,
                            cap = self.limits.connections_per_peer,
                            "this address holds as many connections as one may: its new connections are refused"
                        );
                        peer.capped = Some(1);
                    }
                }
                return None;
            }
            peer.connections += 1;
        }
        Some(Slot {
            guard: self.clone(),
            ip,
        })
    }

    /// Whether `ip` may start a handshake now.
    pub fn may_handshake(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let now = Instant::now();
        let mut peers = self.lock();
        let Some(peer) = peers.get_mut(&ip) else {
            return true;
        };
        match peer.blocked_until {
            Some(until) if now < until => {
                peer.refused += 1;
                false
            }
            Some(_) => {
                tracing::warn!(
                    peer = %ip,
                    refused = peer.refused,
                    "handshakes accepted again from this address after its block ({} refused)",
                    peer.refused
                );
                peer.blocked_until = None;
                peer.refused = 0;
                peer.failures.clear();
                true
            }
            None => true,
        }
    }

    /// Records a failed or abandoned handshake from `ip`.
    pub fn failed(&self, ip: Option<IpAddr>, why: &str) {
        let Some(ip) = ip else { return };
        let now = Instant::now();
        let window = self.limits.window;
        let mut peers = self.lock();
        let peer = peers.entry(ip).or_default();
        peer.failures.retain(|t| now.duration_since(*t) < window);
        peer.failures.push(now);
        if peer.blocked_until.is_none() && peer.failures.len() as u32 >= self.limits.failure_limit {
            peer.blocked_until = Some(now + window);
            tracing::warn!(
                peer = %ip,
                failures = peer.failures.len(),
                last = why,
                "too many failed or abandoned handshakes from this address: its handshakes are refused for {} s",
                window.as_secs()
            );
        } else if let Some(until) = peer.blocked_until.as_mut() {
            // Failing while blocked keeps the block going.
            *until = now + window;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: u32, window_ms: u64) -> Arc<Guard> {
        Arc::new(Guard::new(Limits {
            connections_per_peer: 2,
            failure_limit: limit,
            window: Duration::from_millis(window_ms),
        }))
    }

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let g = guard(3, 1000);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = g.connect(Some(ip)).unwrap();
        let _b = g.connect(Some(ip)).unwrap();
        assert!(g.connect(Some(ip)).is_none());
        assert!(g.connect(Some("192.0.2.2".parse().unwrap())).is_some());
        assert!(g.connect(None).is_some(), "local sockets are not limited");
        drop(a);
        assert!(g.connect(Some(ip)).is_some());
    }

    #[test]
    fn failures_block_an_address_for_a_window_and_then_it_may_try_again() {
        let g = guard(3, 200);
        let ip = Some("192.0.2.9".parse().unwrap());
        let other = Some("192.0.2.10".parse().unwrap());
        for _ in 0..2 {
            g.failed(ip, "test");
        }
        assert!(g.may_handshake(ip));
        g.failed(ip, "test");
        assert!(!g.may_handshake(ip));
        assert!(
            g.may_handshake(other),
            "only the failing address is blocked"
        );
        assert!(g.may_handshake(None));
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.may_handshake(ip));
    }
}
