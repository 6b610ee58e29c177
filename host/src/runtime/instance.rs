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
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
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
    /// Instances of this host that wait, by registry index.
    pub local: Vec<u32>,
    /// Everyone that waits, as `PEERID/name`, when the chain came from another host (this
    /// host's own waiters included); empty for a chain that never left this host.
    pub remote: Vec<String>,
}

impl Chain {
    /// Whether instance `index` of this host is waiting.
    pub fn contains(&self, index: u32) -> bool {
        self.local.contains(&index)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.local.clear();
        self.remote.clear();
    }

    /// The chain as the wire carries it: every waiter as `PEERID/name`, this host's as `me`.
    pub fn to_wire(&self, me: &str, registry: &Registry) -> Vec<String> {
        let mut out = self.remote.clone();
        for &i in &self.local {
            let entry = format!("{me}/{}", registry.get(i).name);
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    }

    /// A chain received from another host: this host's entries become local indexes.
    pub fn from_wire(wire: Vec<String>, me: &str, registry: &Registry) -> Chain {
        let local = wire
            .iter()
            .filter_map(|e| {
                let (peer, name) = e.split_once('/')?;
                (peer == me).then(|| registry.by_name(name).map(|i| i.index))?
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
        payload: Vec<u8>,
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
    /// Put the instance to sleep and stop the actor.
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
    sessions_open: AtomicU32,
    mailbox: mpsc::UnboundedSender<Envelope>,
    control: mpsc::UnboundedSender<Control>,
    queued: AtomicUsize,
    status: AtomicU8,
    last_wake_ns: AtomicU64,
    /// Its log rate limit, across awake periods.
    pub(crate) log_budget: Arc<super::guest_log::LogBudget>,
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
            sessions_open: AtomicU32::new(0),
            mailbox,
            control,
            queued: AtomicUsize::new(0),
            status: AtomicU8::new(Status::Asleep as u8),
            last_wake_ns: AtomicU64::new(0),
            log_budget: Arc::default(),
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
        match self.status.load(Ordering::Acquire) {
            1 => Status::Awake,
            2 => Status::Down,
            _ => Status::Asleep,
        }
    }

    pub(crate) fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::Release);
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

    /// Checks an event against what this instance declares and accepts, and queues it; the
    /// reply comes on the returned receiver. Every caller (a guest's `request`, a client, a
    /// peer) goes through here, so the checks are the same for all.
    pub(crate) fn post_event(
        &self,
        event: &str,
        params: String,
        caller: Option<SessionId>,
        chain: Chain,
    ) -> Result<ReplyRx, CallError> {
        let Some(index) = self.class.event_index(event) else {
            return Err(CallError::Invalid(format!(
                "{} has no event {event:?}; it declares {:?}",
                self.name, self.class.events
            )));
        };
        if params.len() as u64 > self.limits.max_message {
            return Err(CallError::TooLarge {
                size: params.len(),
                limit: self.limits.max_message,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.post(Envelope::Event {
            caller,
            event: index,
            params,
            chain,
            reply,
        })?;
        Ok(rx)
    }

    /// Takes one place in the mailbox for an envelope delivered later with `deliver`.
    #[inline]
    pub(crate) fn reserve(&self) -> Result<(), CallError> {
        if self.status() == Status::Down {
            return Err(self.down_error());
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limits.mailbox as usize {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Busy);
        }
        Ok(())
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
        let mut ids = Vec::new();
        for (peer, name) in self.remote_uses.iter() {
            if &**name != service {
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
    next_session: AtomicU64,
    events: broadcast::Sender<LifecycleEvent>,
    book: Mutex<HashMap<SessionId, SessionRecord>>,
    peers: OnceLock<Arc<dyn Peers>>,
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
        Registry {
            instances,
            next_session: AtomicU64::new(1),
            events: broadcast::channel(1024).0,
            book: Mutex::new(HashMap::new()),
            peers: OnceLock::new(),
        }
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

    /// All instances, in manifest order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instance at a registry index.
    pub fn get(&self, index: u32) -> &Arc<Instance> {
        &self.instances[index as usize]
    }

    /// The instance of this name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.iter().find(|i| &*i.name == name)
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
