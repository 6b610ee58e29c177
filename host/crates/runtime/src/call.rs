//! What a call between services carries and how it fails: session ids, the call error
//! every entry point returns, who answers a session, and the chain of waiters that refuses
//! request cycles on this host and across hosts.

use std::sync::Arc;
use wasmwire_wire::{ChainEntry, PeerId};

/// Names one end of a session; allocated from a host-wide counter, never reused in a run.
pub type SessionId = u64;

/// Why a call to a service failed: what `send`, `connect` and `request` return, to guests
/// (as the WIT `error`) and to Rust callers alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The session id is not open on this end.
    #[error("no such session")]
    NoSuchSession,
    /// No service of this name.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// Not allowed (not in `uses`, or a limit on open sessions or timers).
    #[error("denied: {0}")]
    Denied(String),
    /// The payload or parameters exceed the receiver's `max_message`.
    #[error("too large: {size} bytes, the receiver accepts at most {limit}")]
    TooLarge {
        /// Bytes sent.
        size: usize,
        /// The receiver's limit.
        limit: u64,
    },
    /// The other end closed, or crashed, before answering.
    #[error("closed")]
    Closed,
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
    /// The receiver's mailbox is full.
    #[error("busy: mailbox full")]
    Busy,
    /// Busy for the reason given: a limit (a keyed class at `max_instances`, a peer's
    /// `max_streams`) or, from another host, its full mailbox. Guests see it as `busy`,
    /// clients and peers get the text.
    #[error("busy: {0}")]
    Full(String),
    /// The request would wait on itself.
    #[error("request cycle")]
    Cycle,
    /// Malformed: an undeclared message kind or event, a bad argument.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The service is down or could not be woken.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The callee's `on-event` returned this error.
    #[error("failed: {0}")]
    Failed(String),
}

/// The remote end of a session as the accepting side sees it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Instance or client name at the other end.
    pub service: Arc<str>,
    /// Peer host id, for remote sessions. Behind a pointer: this rides in every
    /// `Envelope::Connect`, and a 32-byte id inline would make every envelope — each
    /// message's — 24 bytes larger.
    pub peer: Option<Arc<PeerId>>,
}

/// Who is waiting on a request or connect: used to refuse cycles, on this host and across
/// hosts. A guest's `request` or `connect` and a peer's session stream ask
/// [`Chain::contains`]; a peer's request is refused by the broker, which sees the chain as
/// the wire carries it (`wire::chain_has`, the same rule).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Instances of this host that wait, by name (a keyed instance is its key's name, so
    /// a key that slept and woke again is still the same waiter).
    pub local: Vec<Arc<str>>,
    /// Everyone that waits, when the chain came from another host (this host's own
    /// waiters included); empty for a chain that never left this host.
    pub remote: Vec<ChainEntry>,
}

impl Chain {
    /// Whether the instance named `name` of this host is waiting.
    pub fn contains(&self, name: &str) -> bool {
        self.local.iter().any(|n| &**n == name)
    }

    /// The chain a call from the instance `me` to the instance `target` (both of this host)
    /// carries, or `cycle` if `target` is `me` or already waits in it.
    pub fn onward(&self, me: &Arc<str>, target: &str) -> Result<Chain, CallError> {
        if **me == *target || self.contains(target) {
            return Err(CallError::Cycle);
        }
        let mut chain = self.clone();
        chain.local.push(me.clone());
        Ok(chain)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.local.clear();
        self.remote.clear();
    }

    /// The chain as the wire carries it: every waiter as `PEERID/name`, this host's under
    /// `me`.
    pub fn to_wire(&self, me: PeerId) -> Vec<String> {
        let mut out: Vec<String> = self.remote.iter().map(ChainEntry::to_string).collect();
        for name in &self.local {
            if !self.remote.iter().any(|e| e.is(&me, name)) {
                out.push(
                    ChainEntry {
                        peer: me,
                        name: name.to_string(),
                    }
                    .to_string(),
                );
            }
        }
        out
    }

    /// The chain a call from the instance `me` to another host carries, as the wire
    /// carries it.
    pub fn to_wire_from(&self, me: &Arc<str>, host: PeerId) -> Vec<String> {
        let mut chain = self.clone();
        chain.local.push(me.clone());
        chain.to_wire(host)
    }

    /// A chain received from another host: this host's entries become local names. An
    /// entry that is not `PEERID/name` names nobody that could wait here, and is dropped.
    pub fn from_wire(wire: Vec<String>, me: PeerId) -> Chain {
        let remote: Vec<ChainEntry> = wire.iter().filter_map(|e| e.parse().ok()).collect();
        let local = remote
            .iter()
            .filter(|e| e.peer == me)
            .map(|e| Arc::from(e.name.as_str()))
            .collect();
        Chain { local, remote }
    }
}

impl CallError {
    /// Whether the caller should wait and ask again (`busy`, whatever the reason).
    pub fn is_busy(&self) -> bool {
        matches!(self, CallError::Busy | CallError::Full(_))
    }
}
