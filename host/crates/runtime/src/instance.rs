//! What the rest of the host holds of a service instance: its name, class and limits, its
//! mailbox, and its status; and the routes that post into a mailbox (a session's other
//! end), which are here because an instance's mailbox carries them and they carry
//! instances. The `InstanceActor` on the other end of the mailbox owns the
//! wasm `Store`; everything here is shared and lock-free, because every message passes
//! through it.

pub use super::call::{CallError, Chain, PeerInfo, SessionId};
use super::class::{Class, check_event, check_message};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use wasmwire_manifest::Limits;
use wasmwire_wire::{LocalName, PeerId, ServiceState};

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
        self.wire().as_str()
    }

    /// The state the protocol gives.
    pub fn wire(self) -> ServiceState {
        match self {
            Status::Asleep | Status::Retired => ServiceState::Asleep,
            Status::Awake => ServiceState::Awake,
            Status::Down => ServiceState::Down,
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
    /// The instance's alarm set for `at` is due (`attempt` counts deliveries, from 1).
    Alarm { at: u64, attempt: u32 },
}

impl Envelope {
    /// How many places it takes in the mailbox bound (work a sender can be told to hold back).
    pub(crate) fn counted(&self) -> usize {
        match self {
            Envelope::Disconnect { .. } => 0,
            Envelope::Batch(list) => list.len(),
            _ => 1,
        }
    }
}

/// Where the reply to a posted event arrives.
pub type ReplyRx = oneshot::Receiver<Result<String, CallError>>;

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
    /// Its index in the directory.
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
    /// Services it may use: (name, directory index).
    pub(crate) uses: Box<[(Box<str>, u32)]>,
    /// Services on other hosts it may use: (peer id, or `None` for any peer; name).
    pub(crate) remote_uses: Box<[RemoteUse]>,
    /// Reachable from other hosts.
    pub expose: bool,
    /// A plain instance, a keyed class, or one key of a class.
    pub kind: Kind,
    /// The shared buckets it may open (a key's are its class's).
    pub buckets: Arc<[SharedBucket]>,
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

/// A shared bucket an instance may open, as its manifest entry lists it (`buckets`).
#[derive(Debug, Clone)]
pub struct SharedBucket {
    /// Its name, as the guest opens it.
    pub name: Box<str>,
    /// Its name in the host's data: `s/NAME` (an instance's own bucket is `i/INSTANCE`).
    pub id: Arc<str>,
    /// Whether the instance may write it (`read-write`), or only read it.
    pub writable: bool,
    /// Most bytes of keys and values it may hold.
    pub max_data: u64,
    /// Most keys it may hold.
    pub max_keys: u64,
}

/// What a directory entry is.
pub enum Kind {
    /// One instance, named in the manifest.
    Plain,
    /// A keyed class (`keyed = true`): it never runs itself; each key is an instance of
    /// its own, made on first demand and dropped when it sleeps.
    Class(Keyed),
    /// The instance of one key of the class at this directory index.
    Key {
        /// The class's directory index.
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
    /// Its index in the directory (`u32::MAX` for a key, which has none).
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
    /// Services it may use: (name, directory index).
    pub uses: Box<[(Box<str>, u32)]>,
    /// Services on other hosts it may use.
    pub remote_uses: Box<[RemoteUse]>,
    /// Reachable from other hosts.
    pub expose: bool,
    /// A plain instance, a keyed class, or one key of a class.
    pub kind: Kind,
    /// The shared buckets it may open.
    pub buckets: Arc<[SharedBucket]>,
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
            buckets,
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
            buckets,
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
    /// `keyed` is its class's table (the directory's `retire` finds it).
    pub(crate) fn retire_from(&self, keyed: &Keyed) -> bool {
        if !matches!(self.kind, Kind::Key { .. }) {
            return false;
        }
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
        check_event(&self.class, self.limits.max_message, event, params_len)
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
                // The caller looks the key up again (see `Directory::reserve_on`).
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

    /// Gives back `n` mailbox places: envelopes of a batch the actor took apart, as it
    /// handles them.
    #[inline]
    pub(crate) fn taken_places(&self, n: usize) {
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

    /// The directory index of a service in `uses`.
    pub(crate) fn uses(&self, service: &str) -> Option<u32> {
        self.uses
            .iter()
            .find(|(n, _)| &**n == service)
            .map(|(_, i)| *i)
    }
}

/// Most messages waiting for a client to read them; past that the sender gets `busy`.
pub const CLIENT_QUEUE: usize = 1024;

/// The sending half of a session whose other end is on another host (a QUIC stream,
/// implemented by the network layer).
pub trait RemoteSink: Send + Sync {
    /// Queues one message, checked against the other end's declared kinds and size limit;
    /// `busy` when the stream's bounded queue is full. `Ok(true)`: the first message since
    /// the last [`RemoteSink::flush`] — the sender must flush when its batch ends.
    fn send(&self, kind: &str, payload: &[u8]) -> Result<bool, CallError>;
    /// Hands what is queued to the transport (the sender's batch ended).
    fn flush(&self);
    /// Ends the session from this side: what is queued is still written, then the stream
    /// is finished.
    fn close(&self);
    /// The other end's own id for this session.
    fn other_end(&self) -> SessionId;
}

/// What a client (not an instance) receives on its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The service sent a message.
    Message {
        /// Message kind.
        kind: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The service closed the session, or crashed.
    Closed,
}

/// Where messages for the other end of a session go.
#[derive(Clone)]
pub enum Route {
    /// An instance on this host, at its end `end`.
    Instance { to: Arc<Instance>, end: SessionId },
    /// A client of this host in the same process (a test, an embedding program). Its queue
    /// is bounded in messages and each message in bytes (`max_message`), so what a guest
    /// can park in host memory for a client that does not read is bounded too.
    Client {
        /// The client's queue.
        to: mpsc::Sender<ClientEvent>,
        /// The largest payload it takes.
        max_message: u64,
    },
    /// The other end is on another host, across a QUIC stream.
    Remote(Arc<dyn RemoteSink>),
}

impl Route {
    /// Checks a message against the receiver's declared kinds and size limit and reserves
    /// its place in the receiver's mailbox; the envelope goes into `outbox`, which the
    /// sending actor flushes in batches (one wake-up of the receiver per batch, not per
    /// message). Clients' routes deliver at once.
    #[inline]
    pub(crate) fn send(
        &self,
        kind: &str,
        payload: &[u8],
        outbox: &mut Outbox,
    ) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let envelope = reserved(to, *end, kind, payload, &mut outbox.arena)?;
                outbox.push(to, envelope);
                Ok(())
            }
            Route::Client { to, max_message } => {
                fits(payload.len(), *max_message)?;
                to.try_send(ClientEvent::Message {
                    kind: kind.to_string(),
                    payload: payload.to_vec(),
                })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => CallError::Busy,
                    mpsc::error::TrySendError::Closed(_) => CallError::Closed,
                })
            }
            Route::Remote(sink) => {
                if sink.send(kind, payload)? {
                    outbox.remote(sink);
                }
                Ok(())
            }
        }
    }

    /// Like `send`, but held in `outbox` until the sending call's writes are durable. The
    /// checks that can be made now are made now (kind, size, and for an instance of this
    /// host its mailbox place), so the guest hears of them at `send`.
    pub(crate) fn hold(
        &self,
        kind: &str,
        payload: &[u8],
        outbox: &mut Outbox,
    ) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let envelope = reserved(to, *end, kind, payload, &mut outbox.arena)?;
                outbox.held.push(Held::Local(to.clone(), envelope));
                Ok(())
            }
            Route::Client { max_message, .. } => {
                fits(payload.len(), *max_message)?;
                outbox
                    .held
                    .push(Held::Send(self.clone(), Box::from(kind), payload.to_vec()));
                Ok(())
            }
            Route::Remote(_) => {
                outbox
                    .held
                    .push(Held::Send(self.clone(), Box::from(kind), payload.to_vec()));
                Ok(())
            }
        }
    }

    /// Like `send`, delivered at once (for clients, which have no actor to flush).
    pub fn send_now(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let kind = check(to, kind, payload.len())?;
                to.post(Envelope::Message {
                    end: *end,
                    kind,
                    payload: payload.into(),
                })
            }
            Route::Client { .. } | Route::Remote(_) => {
                let mut outbox = Outbox::default();
                self.send(kind, &payload, &mut outbox)?;
                outbox.flush();
                Ok(())
            }
        }
    }

    /// Tells the other end the session is closed.
    pub fn disconnect(&self) {
        match self {
            Route::Instance { to, end } => {
                let _ = to.post(Envelope::Disconnect { end: *end });
            }
            Route::Client { to, .. } => {
                if let Err(mpsc::error::TrySendError::Full(closed)) =
                    to.try_send(ClientEvent::Closed)
                {
                    // The close must not be lost to a full queue: it waits for room instead.
                    let to = to.clone();
                    tokio::spawn(async move {
                        let _ = to.send(closed).await;
                    });
                }
            }
            Route::Remote(sink) => sink.close(),
        }
    }
}

/// A message for end `end` of `to`, checked (kind, size) and with its mailbox place taken;
/// its payload copied into `arena`.
#[inline]
fn reserved(
    to: &Instance,
    end: SessionId,
    kind: &str,
    payload: &[u8],
    arena: &mut Arena,
) -> Result<Envelope, CallError> {
    let kind = check(to, kind, payload.len())?;
    to.reserve()?;
    Ok(Envelope::Message {
        end,
        kind,
        payload: copy_into(arena, std::ptr::from_ref(to) as usize, payload),
    })
}

/// Bytes of the buffer a sender's payloads are copied into, shared by the messages to one
/// receiver that fit. The receiver handles them in order, so the buffer is let go when it
/// has handled the last of them; a mailbox holds at most one buffer's unused room more
/// than its messages.
const ARENA: usize = 2048;

/// `payload`, for the instance at address `receiver`, copied into `arena` (a fresh buffer
/// when it has no room left or was another receiver's): one allocation for a run of small
/// payloads instead of one each, and, where they are handled, a reference count dropped
/// instead of a free.
#[inline]
fn copy_into(arena: &mut Arena, receiver: usize, payload: &[u8]) -> Bytes {
    if !arena.started {
        arena.started = true;
        return Bytes::copy_from_slice(payload);
    }
    if arena.receiver != receiver {
        arena.receiver = receiver;
        arena.room = BytesMut::new();
    }
    if arena.room.capacity() < payload.len() {
        arena.room = BytesMut::with_capacity(payload.len().max(ARENA));
    }
    arena.room.extend_from_slice(payload);
    arena.room.split().freeze()
}

/// Whether a payload of `len` bytes fits a client's `max_message`.
#[inline]
fn fits(len: usize, max_message: u64) -> Result<(), CallError> {
    if len as u64 > max_message {
        return Err(CallError::TooLarge {
            size: len,
            limit: max_message,
        });
    }
    Ok(())
}

/// The receiver's number for a declared message kind, or why the message is refused.
#[inline]
pub(crate) fn check(to: &Instance, kind: &str, len: usize) -> Result<u16, CallError> {
    check_message(&to.class, to.limits.max_message, kind, len)
        .map_err(|r| r.message_error(&to.name, &to.class, kind))
}

/// Most envelopes an outbox holds before it flushes by itself.
const OUTBOX_BATCH: usize = 64;

/// Messages an instance sent during the current call, not yet handed to their receivers.
/// Their mailbox places are already reserved, so `busy` is still reported at `send`. They
/// leave when a batch fills, before a `request`, `connect` or `close`, each time a long
/// call yields its thread (every 2 ms), and when the call ends.
///
/// What a call causes after its first write is *held* (the output gate): it leaves only
/// when the call's writes are durable ([`Outbox::release`]), or never if they are not
/// ([`Outbox::discard_held`]). So no one hears of a write that a crash could still undo.
#[derive(Default)]
pub(crate) struct Outbox {
    to: Option<Arc<Instance>>,
    pending: Vec<Envelope>,
    held: Vec<Held>,
    /// Streams to other hosts this call queued messages on, to flush when it ends.
    remotes: Vec<Arc<dyn RemoteSink>>,
    /// Where payloads for this host's instances are copied ([`copy_into`]); let go when
    /// the call ends, so an idle instance pins no buffer.
    arena: Arena,
}

/// The buffer a call's payloads for this host's instances are copied into: shared only by
/// messages to one receiver, so a message pins no buffer of another mailbox's.
#[derive(Default)]
pub(crate) struct Arena {
    /// What is left of the current buffer.
    room: BytesMut,
    /// The receiver whose messages are in it (its address; 0 for none).
    receiver: usize,
    /// Whether this call copied a payload already: the first gets an allocation of its
    /// own, of its size (most calls send one message, or none).
    started: bool,
}

/// An output of the current call held until its writes are durable.
pub(crate) enum Held {
    /// A message for an instance of this host, its mailbox place taken already.
    Local(Arc<Instance>, Envelope),
    /// A message for a client or another host, checked, sent when released (a full queue
    /// then drops it: the guest was told it was sent).
    Send(Route, Box<str>, Vec<u8>),
    /// A session the call closed: its other end is told when released (or when the held
    /// outputs are discarded: the session is closed either way).
    Disconnect(Route),
}

impl Outbox {
    #[inline]
    fn push(&mut self, to: &Arc<Instance>, envelope: Envelope) {
        // One batch per run of messages to the same receiver keeps every session in order.
        if self.to.as_ref().is_some_and(|t| !Arc::ptr_eq(t, to)) {
            self.flush();
        }
        if self.to.is_none() {
            self.to = Some(to.clone());
        }
        self.pending.push(envelope);
        if self.pending.len() >= OUTBOX_BATCH {
            self.flush();
        }
    }

    /// Remembers a stream to another host to flush: its first message since its last flush.
    /// (One entry per stream, so at most one per open session; a stream whose queue grows
    /// past a write's worth writes it by itself.)
    #[inline]
    fn remote(&mut self, sink: &Arc<dyn RemoteSink>) {
        self.remotes.push(sink.clone());
    }

    /// Holds a session's close until the call's writes are durable.
    pub(crate) fn hold_disconnect(&mut self, route: Route) {
        self.held.push(Held::Disconnect(route));
    }

    /// The call's writes are durable (or it wrote nothing): what it sent goes out, in the
    /// order it was sent.
    #[inline]
    pub(crate) fn release(&mut self) {
        self.flush();
        if self.held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.held);
        for h in held.drain(..) {
            match h {
                Held::Local(to, envelope) => self.push(&to, envelope),
                Held::Send(route, kind, payload) => {
                    if let Err(e) = route.send(&kind, &payload, self) {
                        tracing::debug!(
                            "a {kind:?} message held until its call's writes were durable was dropped: {e}"
                        );
                    }
                }
                Held::Disconnect(route) => {
                    self.flush();
                    route.disconnect();
                }
            }
        }
        self.held = held;
        self.flush();
    }

    /// The call ended (after [`Outbox::release`] or [`Outbox::discard_held`]): its
    /// payload buffer is let go (the messages in it keep it until they are handled).
    #[inline]
    pub(crate) fn end_call(&mut self) {
        self.arena = Arena::default();
    }

    /// The call's writes are lost (it trapped, or the commit failed): what it sent before
    /// its first write goes out (first, so that a close held after it cannot overtake it);
    /// what it held never leaves, except the closes of its sessions.
    pub(crate) fn discard_held(&mut self) {
        self.flush();
        for h in self.held.drain(..) {
            match h {
                // Gives back the mailbox place the message took.
                Held::Local(to, envelope) => to.taken(&envelope),
                Held::Send(..) => {}
                Held::Disconnect(route) => route.disconnect(),
            }
        }
    }

    /// Hands the pending messages to their receiver as one batch, and what was queued on
    /// streams to other hosts to the transport.
    #[inline]
    pub fn flush(&mut self) {
        for sink in self.remotes.drain(..) {
            sink.flush();
        }
        let Some(to) = self.to.take() else { return };
        match self.pending.len() {
            0 => {}
            1 => to.deliver(self.pending.pop().expect("one pending envelope")),
            _ => to.deliver(Envelope::Batch(std::mem::replace(
                &mut self.pending,
                Vec::with_capacity(OUTBOX_BATCH),
            ))),
        }
    }
}

#[cfg(test)]
mod arena_tests {
    use super::{ARENA, Arena, copy_into};

    #[test]
    fn payloads_after_a_calls_first_share_a_buffer_until_it_is_full() {
        let mut arena = Arena::default();
        let first = copy_into(&mut arena, 1, b"one");
        let a = copy_into(&mut arena, 1, &[1; 64]);
        let b = copy_into(&mut arena, 1, &[2; 64]);
        // The second and third are side by side in one buffer.
        assert_eq!(a.as_ptr().wrapping_add(64), b.as_ptr());
        // One larger than the room left gets a buffer of its size; the next, a new one.
        let big = copy_into(&mut arena, 1, &[3; ARENA]);
        let c = copy_into(&mut arena, 1, &[4; 8]);
        assert_ne!(big.as_ptr().wrapping_add(ARENA), c.as_ptr());
        assert_ne!(b.as_ptr().wrapping_add(64), c.as_ptr());
        // Another receiver's message goes in a buffer of its own.
        let d = copy_into(&mut arena, 2, &[5; 8]);
        assert_ne!(c.as_ptr().wrapping_add(8), d.as_ptr());
        let e = copy_into(&mut arena, 2, &[6; 8]);
        assert_eq!(d.as_ptr().wrapping_add(8), e.as_ptr());
        // Each keeps its bytes however the others come and go.
        drop(a);
        drop(big);
        assert_eq!(
            (&*first, &*b, &*c),
            (&b"one"[..], &[2; 64][..], &[4; 8][..])
        );
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
