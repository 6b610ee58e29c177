//! What a broker is set up with: its limits, its configuration, the allow list.

use super::PeerSpec;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use wasmwire_wire::{PeerId, Role};

/// Bounds and periods of the broker.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// Connections (hosts and clients) a host holds at once; past that a newcomer gets
    /// `full` with a sample of peers instead of `hello`.
    pub max_connections: usize,
    /// How long a new connection may take to send its `hello`.
    pub hello_timeout: Duration,
    /// Peers learned by exchange that are kept at most.
    pub max_learned: usize,
    /// Host connections past which learned peers are no longer dialled.
    pub max_peers: usize,
    /// Connections to hosts other than the configured ones at which configured peers stop
    /// being dialled: they are bootstrap peers, dialled again when the host falls below.
    pub bootstrap_until: usize,
    /// Host connections past which the idle ones other hosts made to this one are closed,
    /// each at its next exchange after a first period of use: how many hosts a popular
    /// host (a seed, a provider) keeps does not grow with the network (they dial again
    /// when they need it).
    pub high_water: usize,
    /// Dials of learned peers under way at once.
    pub max_dials: usize,
    /// Peers in one `peers` answer to a host.
    pub peers_per_answer: usize,
    /// How often connected hosts are asked for their peers.
    pub exchange_every: Duration,
    /// `get-peers` and `find-service` answered per second per connection (and twice that in
    /// a burst); past that the answer is `rate-limited`.
    pub queries_per_second: u32,
    /// Requests from one connection being answered at once; past that, `busy`.
    pub max_incoming: usize,
    /// Our requests on one connection waiting for answers at once.
    pub max_pending: usize,
    /// First delay before re-dialling a lost peer; doubles per failure.
    pub backoff_min: Duration,
    /// Longest delay before re-dialling.
    pub backoff_max: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_connections: 1024,
            hello_timeout: Duration::from_secs(5),
            max_learned: 256,
            max_peers: 64,
            bootstrap_until: 8,
            high_water: 128,
            max_dials: 4,
            peers_per_answer: 32,
            exchange_every: Duration::from_secs(30),
            queries_per_second: 20,
            max_incoming: 256,
            max_pending: 4096,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What a broker is told at start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This host's id.
    pub me: PeerId,
    /// Host, or client (the CLI).
    pub role: Role,
    /// Where this host accepts connections.
    pub listen: Option<SocketAddr>,
    /// The services this host exposes.
    pub services: Vec<String>,
    /// Who may connect, be dialled, or be learned.
    pub allow: Arc<Allow>,
    /// Configured peers (`[host] peers`): bootstrap peers, dialled at start and after a
    /// loss while the host has too few other connections.
    pub peers: Vec<PeerSpec>,
    /// Bounds and periods.
    pub limits: BrokerLimits,
    /// Seeds the back-off jitter (tests pass a fixed one).
    pub seed: u64,
}

/// Who may connect: the `allow` list (empty: anyone), and how many handshakes the key
/// checks refused (the TLS verifiers that consult the list count them here).
#[derive(Debug, Default)]
pub struct Allow {
    ids: HashSet<PeerId>,
    refused: std::sync::atomic::AtomicU64,
}

impl Allow {
    /// An allow list of these ids; empty allows every peer.
    pub fn new(ids: impl IntoIterator<Item = PeerId>) -> Allow {
        Allow {
            ids: ids.into_iter().collect(),
            refused: Default::default(),
        }
    }

    /// Whether `peer` may connect.
    pub fn permits(&self, peer: &PeerId) -> bool {
        self.ids.is_empty() || self.ids.contains(peer)
    }

    /// Counts one refused handshake.
    pub fn count_refusal(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Handshakes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}
