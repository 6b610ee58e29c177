//! What the rest of the host holds of a service instance: its name, class and limits, its
//! mailbox, and its status. The `InstanceActor` on the other end of the mailbox owns the
//! wasm `Store`; everything here is shared and lock-free, because every message passes
//! through it.

use super::Class;
use super::session::Route;
use crate::manifest::Limits;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, mpsc, oneshot};

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
    /// Busy for another reason than a full mailbox (a keyed class at `max_instances`);
    /// guests see it as `busy`, clients and peers get the text.
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
pub type RemoteUse = (Option<Box<str>>, Box<str>);

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
/// hosts.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Instances of this host that wait, by name (a keyed instance is its key's name, so
    /// a key that slept and woke again is still the same waiter).
    pub local: Vec<Arc<str>>,
    /// Everyone that waits, as `PEERID/name`, when the chain came from another host (this
    /// host's own waiters included); empty for a chain that never left this host.
    pub remote: Vec<String>,
}

impl Chain {
    /// Whether the instance named `name` of this host is waiting.
    pub fn contains(&self, name: &str) -> bool {
        self.local.iter().any(|n| &**n == name)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.local.clear();
        self.remote.clear();
    }

    /// The chain as the wire carries it: every waiter as `PEERID/name`, this host's as `me`.
    pub fn to_wire(&self, me: &str) -> Vec<String> {
        let mut out = self.remote.clone();
        for name in &self.local {
            let entry = format!("{me}/{name}");
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    }

    /// A chain received from another host: this host's entries become local names.
    pub fn from_wire(wire: Vec<String>, me: &str) -> Chain {
        let local = wire
            .iter()
            .filter_map(|e| {
                let (peer, name) = e.split_once('/')?;
                (peer == me).then(|| Arc::from(name))
            })
            .collect();
        Chain {
            local,
            remote: wire,
        }
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

/// Waits up to `timeout` for an event's reply.
pub(crate) async fn reply_within(rx: ReplyRx, timeout: Duration) -> Result<String, CallError> {
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(CallError::Timeout),
        Ok(Err(_)) => Err(CallError::Closed),
        Ok(Ok(r)) => r,
    }
}

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
    sessions_open: AtomicU32,
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
    live: Mutex<HashMap<Box<str>, Arc<Instance>>>,
    /// Most keys live at once since the heap was last trimmed (see `heap`); changed only
    /// with `live` locked.
    peak: AtomicUsize,
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

/// The receiving ends an actor owns.
pub(crate) struct Inbox {
    pub mailbox: mpsc::UnboundedReceiver<Envelope>,
    pub control: mpsc::UnboundedReceiver<Control>,
}

impl Instance {
    /// Builds the shared part of an instance and the inbox its actor will own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        index: u32,
        channel: u16,
        class: Arc<Class>,
        limits: Limits,
        options_json: &str,
        autostart: bool,
        uses: Box<[(Box<str>, u32)]>,
        remote_uses: Box<[RemoteUse]>,
        expose: bool,
        kind: Kind,
        stats: Arc<super::stats::InstanceStats>,
    ) -> (Arc<Instance>, Inbox) {
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
            Kind::Key { .. } => self.name.split_once('/'),
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
        if let Some((_, key)) = self.name.split_once('/') {
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
        let Some(index) = self.class.event_index(event) else {
            return Err(CallError::Invalid(format!(
                "{} has no event {event:?}; it declares {:?}",
                self.name, self.class.events
            )));
        };
        if params_len as u64 > self.limits.max_message {
            return Err(CallError::TooLarge {
                size: params_len,
                limit: self.limits.max_message,
            });
        }
        Ok(index)
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
    pub(crate) fn remote_uses(&self, service: &str) -> Result<Option<Vec<&str>>, CallError> {
        // `*/room` covers every key of a keyed class: `room/42` is checked as `room`.
        let class = service.split_once('/').map_or(service, |(c, _)| c);
        let mut ids = Vec::new();
        for (peer, name) in self.remote_uses.iter() {
            if &**name != class {
                continue;
            }
            match peer {
                None => return Ok(None),
                Some(p) => ids.push(&**p),
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

/// Every instance of a host, by index and name, and the host-wide session counter.
pub struct Registry {
    instances: Vec<Arc<Instance>>,
    names: HashMap<Box<str>, u32>,
    next_session: AtomicU64,
    events: broadcast::Sender<LifecycleEvent>,
    book: Mutex<HashMap<SessionId, SessionRecord>>,
    peers: OnceLock<Arc<dyn Peers>>,
    spawner: OnceLock<Spawner>,
    /// Set when the host starts to stop: no new keys are made.
    closing: AtomicBool,
}

/// Where the actors of keyed instances made on demand run.
pub(crate) struct Spawner {
    /// The worker threads' runtimes; keys are spread over them by hash.
    pub workers: Vec<Handle>,
    /// The epoch tick counter every actor reads.
    pub ticks: Arc<AtomicU64>,
}

/// One open session end on this host, as introspection lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The instance holding this end.
    pub instance: Arc<str>,
    /// The other end: an instance or client name.
    pub other: Arc<str>,
    /// The other end's own id for the session, when it has one.
    pub other_id: Option<SessionId>,
    /// The other end's host, when remote.
    pub peer: Option<Arc<str>>,
    /// The channel of the accepting service.
    pub channel: u16,
}

/// The other end of a remote session as its opener gets it.
pub struct RemoteSession {
    /// Where this end's messages go.
    pub sink: Arc<dyn super::session::RemoteSink>,
    /// The host it is on.
    pub peer: Arc<str>,
    /// The accepting service's channel.
    pub channel: u16,
}

/// A future returned by a [`Peers`] call.
pub type PeersFuture<T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send>>;

/// Reaches services on other hosts. The network layer implements it; the runtime only
/// calls it, so the runtime never depends on the network.
pub trait Peers: Send + Sync {
    /// This host's peer id.
    fn me(&self) -> &str;

    /// Calls `event` on `service` on `peer` (a peer id, or `None` for any connected peer
    /// that runs it, among `allowed` if given).
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        peer: Option<String>,
        allowed: Option<Vec<String>>,
        service: String,
        event: String,
        params: String,
        timeout: Duration,
        chain: Vec<String>,
        caller: Arc<str>,
        session: Option<SessionId>,
    ) -> PeersFuture<String>;

    /// Opens a session from `(instance, end)` to `service` on `peer` (or any allowed peer
    /// that runs it); messages from the other end are delivered to that end.
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &self,
        peer: Option<String>,
        allowed: Option<Vec<String>>,
        service: String,
        from: Arc<Instance>,
        end: SessionId,
        timeout: Duration,
        chain: Vec<String>,
    ) -> PeersFuture<RemoteSession>;
}

impl Registry {
    pub(crate) fn new(instances: Vec<Arc<Instance>>) -> Registry {
        let names = instances
            .iter()
            .map(|i| (Box::from(&*i.name), i.index))
            .collect();
        Registry {
            instances,
            names,
            next_session: AtomicU64::new(1),
            events: broadcast::channel(1024).0,
            book: Mutex::new(HashMap::new()),
            peers: OnceLock::new(),
            spawner: OnceLock::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Tasks alive on the worker threads' runtimes (every instance actor is one).
    pub fn worker_tasks(&self) -> u64 {
        self.spawner.get().map_or(0, |s| {
            s.workers
                .iter()
                .map(|h| h.metrics().num_alive_tasks() as u64)
                .sum()
        })
    }

    /// The host is stopping: from now on no key of a keyed class is made (demand for one
    /// is refused with `closed`), so the instances being drained are all there are.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Where keyed instances' actors run (set once, when the worker threads start).
    pub(crate) fn set_spawner(&self, spawner: Spawner) {
        let _ = self.spawner.set(spawner);
    }

    /// The instance of a name: a plain instance, or `class/key` of a keyed class — made
    /// now, with the class's options and limits, if the key is not live. Refused with
    /// `invalid` for a bad key or a keyed class named without a key, and with `busy`
    /// when the class has `max_instances` keys live.
    pub fn resolve(self: &Arc<Self>, name: &str) -> Result<Arc<Instance>, CallError> {
        let (class_name, key) = match name.split_once('/') {
            Some((c, k)) => (c, Some(k)),
            None => (name, None),
        };
        let Some(entry) = self.by_name(class_name) else {
            return Err(CallError::NoSuchService(name.to_string()));
        };
        match (&entry.kind, key) {
            (Kind::Class(keyed), Some(key)) => self.key_of(entry, keyed, key),
            (Kind::Class(_), None) => Err(CallError::Invalid(format!(
                "{name} is keyed: name one of its instances, like {name}/lobby"
            ))),
            (_, None) => Ok(entry.clone()),
            (_, Some(_)) => Err(CallError::NoSuchService(format!(
                "{name}: {class_name} is not keyed (add `keyed = true` to it in the manifest)"
            ))),
        }
    }

    /// The live instance of a name, without making one (for introspection and tests).
    pub fn live(&self, name: &str) -> Option<Arc<Instance>> {
        match name.split_once('/') {
            None => self.by_name(name).cloned(),
            Some((class, key)) => {
                let keyed = self.by_name(class)?.keyed()?;
                keyed.live.lock().ok()?.get(key).cloned()
            }
        }
    }

    fn key_of(
        self: &Arc<Self>,
        class: &Arc<Instance>,
        keyed: &Keyed,
        key: &str,
    ) -> Result<Arc<Instance>, CallError> {
        let mut live = keyed
            .live
            .lock()
            .map_err(|_| CallError::Unavailable("the key table is poisoned".into()))?;
        if let Some(i) = live.get(key) {
            return Ok(i.clone());
        }
        check_key(&class.name, key)?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(CallError::Closed);
        }
        if live.len() >= keyed.max_instances as usize {
            return Err(CallError::Full(format!(
                "{} has its limit of {} live instances (max_instances); {key:?} waits until one sleeps",
                class.name, keyed.max_instances
            )));
        }
        let Some(spawner) = self.spawner.get() else {
            return Err(CallError::Unavailable("the host is not running".into()));
        };
        let (instance, inbox) = Instance::new(
            &format!("{}/{key}", class.name),
            u32::MAX,
            class.channel,
            class.class.clone(),
            class.limits.clone(),
            &class.options_json,
            false,
            class.uses.clone(),
            class.remote_uses.clone(),
            class.expose,
            Kind::Key { class: class.index },
            class.stats.clone(),
        );
        live.insert(Box::from(key), instance.clone());
        keyed.peak.fetch_max(live.len(), Ordering::Relaxed);
        drop(live);
        let worker = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(key);
            (h % spawner.workers.len().max(1) as u64) as usize
        };
        let actor = super::actor::InstanceActor::new(
            instance.clone(),
            self.clone(),
            spawner.ticks.clone(),
            inbox,
        );
        spawner.workers[worker].spawn(actor.run());
        Ok(instance)
    }

    /// Takes one place in `target`'s mailbox; when `target` is a keyed instance that just
    /// retired, in the mailbox of its key's new instance. Returns the instance that holds
    /// the place: deliver the envelope there.
    pub(crate) fn reserve_on(
        self: &Arc<Self>,
        target: &Arc<Instance>,
    ) -> Result<Arc<Instance>, CallError> {
        let mut t = target.clone();
        // A key retires at most once per idle period, so a retry or two always finds it.
        for _ in 0..16 {
            match t.reserve() {
                Ok(()) => return Ok(t),
                Err(_) if t.status() == Status::Retired => t = self.resolve(&t.name)?,
                Err(e) => return Err(e),
            }
        }
        Err(CallError::Busy)
    }

    /// Checks and queues an event for `target` (see `reserve_on`); the reply comes on the
    /// returned receiver. Every caller (a guest's `request`, a client, a peer) goes
    /// through here, so the checks are the same for all.
    pub(crate) fn post_event(
        self: &Arc<Self>,
        target: &Arc<Instance>,
        event: &str,
        params: String,
        caller: Option<SessionId>,
        chain: Chain,
    ) -> Result<ReplyRx, CallError> {
        let index = target.check_event(event, params.len())?;
        let target = self.reserve_on(target)?;
        let (reply, rx) = oneshot::channel();
        target.deliver(Envelope::Event {
            caller,
            event: index,
            params,
            chain,
            reply,
        });
        Ok(rx)
    }

    /// Connects this host to its peers (once).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// The peers, once the network is up.
    pub fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    /// Records a session end opening (once per session, not per message).
    pub(crate) fn session_opened(&self, id: SessionId, record: SessionRecord, on: &Instance) {
        on.sessions_open.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut book) = self.book.lock() {
            book.insert(id, record);
        }
    }

    /// Records a session end closing.
    pub(crate) fn session_closed(&self, id: SessionId, on: &Instance) {
        on.sessions_open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut book) = self.book.lock() {
            book.remove(&id);
        }
    }

    /// The open session end with this id.
    pub fn session(&self, id: SessionId) -> Option<SessionRecord> {
        self.book.lock().ok()?.get(&id).cloned()
    }

    /// Every open session end on this host (at most `max`), sorted by id, and how many
    /// there are in all.
    pub fn sessions(&self, max: usize) -> (Vec<(SessionId, SessionRecord)>, usize) {
        let Ok(book) = self.book.lock() else {
            return (Vec::new(), 0);
        };
        let mut v: Vec<_> = book.iter().map(|(id, r)| (*id, r.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        let total = v.len();
        v.truncate(max);
        (v, total)
    }

    /// Each manifest entry's figures, in manifest order (at most `max`), and how many
    /// entries there are. A keyed class's figures add up its live keys (its counters are
    /// shared by its keys already; awake keys, mailboxes and sessions are summed here).
    pub fn figures(&self, max: usize) -> (Vec<crate::wire::InstanceFigures>, usize) {
        let list = self
            .instances
            .iter()
            .take(max)
            .map(|i| {
                let mut out = crate::wire::InstanceFigures {
                    name: i.name.to_string(),
                    mailbox: i.queued() as u64,
                    sessions: u64::from(i.sessions_open()),
                    ..Default::default()
                };
                i.stats.read_into(&mut out);
                match i.keyed() {
                    Some(k) => {
                        out.state = "keyed".into();
                        for key in k.instances() {
                            out.live += 1;
                            out.awake += u64::from(key.status() == Status::Awake);
                            out.mailbox += key.queued() as u64;
                            out.sessions += u64::from(key.sessions_open());
                        }
                    }
                    None => {
                        let status = i.status();
                        out.awake = u64::from(status == Status::Awake);
                        out.state = status.as_str().into();
                    }
                }
                out
            })
            .collect();
        (list, self.instances.len())
    }

    /// All instances, in manifest order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instance at a registry index.
    pub fn get(&self, index: u32) -> &Arc<Instance> {
        &self.instances[index as usize]
    }

    /// The manifest entry of this name (a plain instance or a keyed class).
    pub fn by_name(&self, name: &str) -> Option<&Arc<Instance>> {
        self.names.get(name).map(|&i| &self.instances[i as usize])
    }

    /// A fresh session id.
    pub fn next_session(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Lifecycle changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, event: LifecycleEvent) {
        let _ = self.events.send(event);
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
