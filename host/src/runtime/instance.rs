//! What the rest of the host holds of a service instance: its name, class and limits, its
//! mailbox, and its status. The `InstanceActor` on the other end of the mailbox owns the
//! wasm `Store`; everything here is shared and lock-free, because every message passes
//! through it.

use super::Class;
use super::directory::Registry;
use super::session::Route;
use crate::manifest::Limits;
use crate::wire::{ChainEntry, LocalName, PeerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

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

/// A service on other hosts an instance may use: (peer id, or `None` for any peer; name).
pub type RemoteUse = (Option<PeerId>, Box<str>);

/// Where an instance is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No wasm instance, no memory.
    Asleep = 0,
    /// Instantiated and woken; handling calls.
    Awake = 1,
    /// Crashed past its restart limit; refuses all work until the host restarts.
    Down = 2,
    /// A keyed instance that went to sleep and left its class's table: its actor is gone,
    /// and demand for its key makes a new one.
    Retired = 3,
}

impl Status {
    /// How `list-services`, `stats` and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Asleep | Status::Retired => "asleep",
            Status::Awake => "awake",
            Status::Down => "down",
        }
    }
}

/// A lifecycle change, broadcast to whoever subscribes (tests, introspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// `wakeup` returned Ok.
    Woke(Arc<str>),
    /// `sleep` ran and the instance was dropped.
    Slept(Arc<str>),
    /// A call trapped or hit a limit; the instance was dropped.
    Crashed {
        /// The instance.
        instance: Arc<str>,
        /// The export that was running.
        export: &'static str,
        /// What happened, in one line.
        cause: String,
    },
    /// Past its restart limit: it stays down.
    Down(Arc<str>),
}

/// The remote end of a session as the accepting side sees it.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// Instance or client name at the other end.
    pub service: Arc<str>,
    /// Peer host id, for remote sessions.
    pub peer: Option<Arc<str>>,
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

/// Work for an instance, in arrival order.
pub(crate) enum Envelope {
    /// Open a session whose other end is `back`.
    Connect {
        end: SessionId,
        from: PeerInfo,
        back: Route,
        chain: Chain,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// A message of the receiver's declared kind number `kind`.
    Message {
        end: SessionId,
        kind: u16,
        /// `Bytes`, so that a message read from a peer's stream is a slice of the frame it
        /// came in, not a copy; a local send hands over its `Vec` without copying.
        payload: bytes::Bytes,
    },
    /// The other end closed.
    Disconnect { end: SessionId },
    /// Messages from one sender's call, in order: one channel operation and one receiver
    /// wake-up for many messages. Each counts against the mailbox.
    Batch(Vec<Envelope>),
    /// An event of the receiver's declared event number `event`.
    Event {
        caller: Option<SessionId>,
        event: u16,
        params: String,
        chain: Chain,
        reply: oneshot::Sender<Result<String, CallError>>,
    },
}

impl CallError {
    /// Whether the caller should wait and ask again (`busy`, whatever the reason).
    pub fn is_busy(&self) -> bool {
        matches!(self, CallError::Busy | CallError::Full(_))
    }
}

impl Envelope {
    /// How many places it takes in the mailbox bound (work a sender can be told to hold back).
    fn counted(&self) -> usize {
        match self {
            Envelope::Disconnect { .. } => 0,
            Envelope::Batch(list) => list.len(),
            _ => 1,
        }
    }
}

/// Where the reply to a posted event arrives.
pub(crate) type ReplyRx = oneshot::Receiver<Result<String, CallError>>;

/// Orders handled before any mailbox work (a busy mailbox never delays shutdown).
pub(crate) enum Control {
    /// Refuse new work, finish what the mailbox holds, put the instance to sleep and stop
    /// the actor.
    Shutdown { done: oneshot::Sender<()> },
    /// Wake now (if asleep) and report.
    Wake {
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// Put to sleep now (if awake and without sessions) and report whether it slept.
    Sleep { reply: oneshot::Sender<bool> },
}

/// A service instance as shared by the host: identity, class, limits, mailbox and status.
pub struct Instance {
    /// The instance name.
    pub name: Arc<str>,
    /// Its index in the registry.
    pub index: u32,
    /// The channel it listens on.
    pub channel: u16,
    /// The component it runs.
    pub class: Arc<Class>,
    /// Its limits.
    pub limits: Limits,
    /// Its options as JSON, handed to `wakeup`.
    pub options_json: Arc<str>,
    /// Woken at start and kept awake.
    pub autostart: bool,
    /// Services it may use: (name, registry index).
    pub(crate) uses: Box<[(Box<str>, u32)]>,
    /// Services on other hosts it may use: (peer id, or `None` for any peer; name).
    pub(crate) remote_uses: Box<[RemoteUse]>,
    /// Reachable from other hosts.
    pub expose: bool,
    /// A plain instance, a keyed class, or one key of a class.
    pub kind: Kind,
    pub(super) sessions_open: AtomicU32,
    mailbox: mpsc::UnboundedSender<Envelope>,
    control: mpsc::UnboundedSender<Control>,
    queued: AtomicUsize,
    /// Set when the host starts to stop: new work is refused with `closed` while the
    /// actor finishes what its mailbox holds.
    closing: AtomicBool,
    status: AtomicU8,
    last_wake_ns: AtomicU64,
    /// Its log rate limit, across awake periods.
    pub(crate) log_budget: Arc<super::guest_log::LogBudget>,
    /// What it has done (shared by the keys of a keyed class with their class).
    pub stats: Arc<super::stats::InstanceStats>,
}

/// What a registry entry is.
pub enum Kind {
    /// One instance, named in the manifest.
    Plain,
    /// A keyed class (`keyed = true`): it never runs itself; each key is an instance of
    /// its own, made on first demand and dropped when it sleeps.
    Class(Keyed),
    /// The instance of one key of the class at this registry index.
    Key {
        /// The class's registry index.
        class: u32,
    },
}

/// The live keys of a keyed class. A key that sleeps leaves this table (and its actor
/// ends), so a class with a hundred thousand keys used once costs nothing once they sleep.
pub struct Keyed {
    /// Most keys live (awake, or asleep but not yet retired, or down) at once.
    pub max_instances: u32,
    pub(super) live: Mutex<HashMap<Box<str>, Arc<Instance>>>,
    /// Most keys live at once since the heap was last trimmed (see `heap`); changed only
    /// with `live` locked.
    pub(super) peak: AtomicUsize,
}

impl Keyed {
    /// An empty table for a class of at most `max_instances` live keys.
    pub fn new(max_instances: u32) -> Keyed {
        Keyed {
            max_instances,
            live: Mutex::new(HashMap::new()),
            peak: AtomicUsize::new(0),
        }
    }

    /// Keys live now.
    pub fn live(&self) -> usize {
        self.live.lock().map_or(0, |l| l.len())
    }

    /// Up to `max` live keys that are awake, sorted, and how many are awake in all.
    pub fn awake(&self, max: usize) -> (Vec<String>, usize) {
        let Ok(live) = self.live.lock() else {
            return (Vec::new(), 0);
        };
        let mut keys: Vec<&str> = live
            .iter()
            .filter(|(_, i)| i.status() == Status::Awake)
            .map(|(k, _)| &**k)
            .collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.truncate(max);
        (keys.into_iter().map(str::to_string).collect(), n)
    }

    /// Every live instance (for shutdown).
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.live
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Longest key of a keyed instance, in bytes.
pub const MAX_KEY: usize = 128;

/// Checks a key: 1 to 128 bytes of ASCII letters, digits and `-_.:@+=`.
pub fn check_key(class: &str, key: &str) -> Result<(), CallError> {
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"-_.:@+=".contains(&c);
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(ok) {
        let shown: String = key.chars().take(40).collect();
        return Err(CallError::Invalid(format!(
            "bad key {shown:?} for {class}: a key is 1 to {MAX_KEY} ASCII letters, digits or -_.:@+= (like {class}/lobby)"
        )));
    }
    Ok(())
}

/// What an instance is made of: the manifest's entry (or, for a key, its class's).
pub(crate) struct InstanceSpec<'a> {
    /// The instance name (`class/key` for a key).
    pub name: &'a str,
    /// Its index in the registry (`u32::MAX` for a key, which has none).
    pub index: u32,
    /// The channel it listens on.
    pub channel: u16,
    /// The component it runs.
    pub class: Arc<Class>,
    /// Its limits.
    pub limits: Limits,
    /// Its options as JSON, handed to `wakeup`.
    pub options_json: &'a str,
    /// Woken at start and kept awake.
    pub autostart: bool,
    /// Services it may use: (name, registry index).
    pub uses: Box<[(Box<str>, u32)]>,
    /// Services on other hosts it may use.
    pub remote_uses: Box<[RemoteUse]>,
    /// Reachable from other hosts.
    pub expose: bool,
    /// A plain instance, a keyed class, or one key of a class.
    pub kind: Kind,
    /// Where its figures are counted (a key shares its class's).
    pub stats: Arc<super::stats::InstanceStats>,
}

/// The receiving ends an actor owns.
pub(crate) struct Inbox {
    pub mailbox: mpsc::UnboundedReceiver<Envelope>,
    pub control: mpsc::UnboundedReceiver<Control>,
}

impl Instance {
    /// Builds the shared part of an instance and the inbox its actor will own.
    pub(crate) fn new(spec: InstanceSpec<'_>) -> (Arc<Instance>, Inbox) {
        let InstanceSpec {
            name,
            index,
            channel,
            class,
            limits,
            options_json,
            autostart,
            uses,
            remote_uses,
            expose,
            kind,
            stats,
        } = spec;
        // The mailbox is unbounded as a channel but bounded by `queued`: messages and events
        // count, disconnects do not, so closing a session can never fail for lack of room.
        let (mailbox, mailbox_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let instance = Arc::new(Instance {
            name: Arc::from(name),
            index,
            channel,
            class,
            limits,
            options_json: Arc::from(options_json),
            autostart,
            uses,
            remote_uses,
            expose,
            kind,
            sessions_open: AtomicU32::new(0),
            mailbox,
            control,
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            status: AtomicU8::new(Status::Asleep as u8),
            last_wake_ns: AtomicU64::new(0),
            log_budget: Arc::default(),
            stats,
        });
        (
            instance,
            Inbox {
                mailbox: mailbox_rx,
                control: control_rx,
            },
        )
    }

    /// Where it is in its lifecycle.
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::SeqCst) {
            1 => Status::Awake,
            2 => Status::Down,
            3 => Status::Retired,
            _ => Status::Asleep,
        }
    }

    pub(crate) fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::SeqCst);
    }

    /// The class and key of a keyed instance (`room`, `42` for `room/42`).
    pub fn key(&self) -> Option<(&str, &str)> {
        match self.kind {
            Kind::Key { .. } => {
                let n = LocalName::parse(&self.name);
                Some((n.class, n.key?))
            }
            _ => None,
        }
    }

    /// The live keys, if this is a keyed class.
    pub fn keyed(&self) -> Option<&Keyed> {
        match &self.kind {
            Kind::Class(k) => Some(k),
            _ => None,
        }
    }

    /// Leaves the class's table if nothing waits for this keyed instance: the actor calls
    /// it when the instance is asleep. Whoever reserves a place (see `reserve`) at the
    /// same moment either is seen here (and the instance stays) or sees `Retired` (and
    /// looks the key up again): both sides write first and read second, in `SeqCst`.
    pub(crate) fn try_retire(&self, registry: &Registry) -> bool {
        let Kind::Key { class } = self.kind else {
            return false;
        };
        let Some(keyed) = registry.get(class).keyed() else {
            return false;
        };
        let Ok(mut live) = keyed.live.lock() else {
            return false;
        };
        self.set_status(Status::Retired);
        if self.queued.load(Ordering::SeqCst) > 0 || self.sessions_open() > 0 {
            self.set_status(Status::Asleep);
            return false;
        }
        if let Some((_, key)) = self.key() {
            live.remove(key);
        }
        let peak = keyed.peak.load(Ordering::Relaxed);
        if super::heap::receded(peak, live.len()) {
            keyed.peak.store(live.len(), Ordering::Relaxed);
            drop(live);
            super::heap::give_back();
        }
        true
    }

    /// How long the last wake took inside the actor (instantiate + `wakeup`), in nanoseconds.
    pub fn last_wake_ns(&self) -> u64 {
        self.last_wake_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn set_last_wake(&self, d: std::time::Duration) {
        self.last_wake_ns
            .store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Log lines dropped so far for going over the log rate limit.
    pub fn dropped_log_lines(&self) -> u64 {
        self.log_budget.dropped()
    }

    /// Messages and events waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues work, refusing it with `busy` when the mailbox is full.
    #[inline]
    pub(crate) fn post(&self, envelope: Envelope) -> Result<(), CallError> {
        if envelope.counted() > 0 {
            self.reserve()?;
        }
        self.mailbox.send(envelope).map_err(|_| CallError::Closed)
    }

    /// Checks an event against what this instance declares and accepts: its number.
    pub(crate) fn check_event(&self, event: &str, params_len: usize) -> Result<u16, CallError> {
        super::session::check_event(&self.class, self.limits.max_message, event, params_len)
            .map_err(|r| r.event_error(&self.name, &self.class, event))
    }

    /// Takes one place in the mailbox for an envelope delivered later with `deliver`.
    #[inline]
    pub(crate) fn reserve(&self) -> Result<(), CallError> {
        // Closing first: a host that is stopping answers `closed`, which no caller
        // retries, even while the mailbox it is draining is still full.
        if self.closing.load(Ordering::Relaxed) {
            return Err(CallError::Closed);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.limits.mailbox as usize {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(CallError::Busy);
        }
        if self.closing.load(Ordering::SeqCst) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(CallError::Closed);
        }
        match self.status() {
            Status::Down => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(self.down_error())
            }
            Status::Retired => {
                // The caller looks the key up again (see `Registry::reserve_on`).
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(CallError::Closed)
            }
            _ => Ok(()),
        }
    }

    /// Delivers an envelope whose place was reserved (or that is not counted).
    #[inline]
    pub(crate) fn deliver(&self, envelope: Envelope) {
        // Fails only when the actor is gone (host shutting down): nothing left to tell.
        let _ = self.mailbox.send(envelope);
    }

    /// Called by the actor for each counted envelope it takes.
    #[inline]
    pub(crate) fn taken(&self, envelope: &Envelope) {
        let n = envelope.counted();
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Refuses new work from now on (the host is stopping); what was queued stays.
    pub(crate) fn close_admission(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    pub(crate) fn control(&self, c: Control) -> bool {
        self.control.send(c).is_ok()
    }

    pub(crate) fn down_error(&self) -> CallError {
        CallError::Unavailable(format!(
            "{} is down: it crashed more than {} times within {:?}",
            self.name, self.limits.max_restarts, self.limits.restart_window
        ))
    }

    /// Sessions open on this instance now.
    pub fn sessions_open(&self) -> u32 {
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// Which peers this instance may reach `service` on: `Ok(None)` for any peer,
    /// `Ok(Some(ids))` for those only, an error naming the fix if none.
    pub(crate) fn remote_uses(&self, service: &str) -> Result<Option<Vec<PeerId>>, CallError> {
        // `*/room` covers every key of a keyed class: `room/42` is checked as `room`.
        let class = LocalName::parse(service).class;
        let mut ids = Vec::new();
        for (peer, name) in self.remote_uses.iter() {
            if &**name != class {
                continue;
            }
            match peer {
                None => return Ok(None),
                Some(p) => ids.push(*p),
            }
        }
        if ids.is_empty() {
            return Err(CallError::Denied(format!(
                "{} may not use {service} on other hosts: add \"*/{service}\" or \"PEERID/{service}\" to `uses` of {} in the manifest",
                self.name, self.name
            )));
        }
        Ok(Some(ids))
    }

    /// The registry index of a service in `uses`.
    pub(crate) fn uses(&self, service: &str) -> Option<u32> {
        self.uses
            .iter()
            .find(|(n, _)| &**n == service)
            .map(|(_, i)| *i)
    }
}

#[cfg(test)]
mod size_tests {
    /// Every instance's mailbox allocates its first block of 32 envelopes when it is made
    /// (3.7 KiB at 120 bytes each): an envelope that grows makes every instance bigger.
    #[test]
    fn envelope_stays_small() {
        assert!(
            size_of::<super::Envelope>() <= 120,
            "{}",
            size_of::<super::Envelope>()
        );
        assert!(size_of::<super::Control>() <= 16);
    }
}
