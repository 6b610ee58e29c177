//! The runtime directory: the one place every entry point — a guest's import, a client, a
//! peer's request or session stream — goes through to find a service and reach it. It owns
//! the rules that must read the same for all of them:
//! - [`Directory::resolve`]: a name to its instance, a keyed class's key made on demand;
//! - [`Directory::route`]: where a call from an instance may go, on this host or another
//!   (its `uses`), and why not;
//! - [`Directory::open_session`]: one mailbox place and a fresh end for a new session, and
//!   [`PendingSession::accepted`]: its answer within a time-out, no dangling end;
//! - [`Directory::post_event`]: an event checked and queued, its reply awaited with
//!   [`reply_within`];
//! - the queries that net, metrics and the CLI answer with ([`Directory::list_services`],
//!   [`Directory::sessions`], [`Directory::figures`]).

use super::alarms::Alarms;
use super::instance::{
    CallError, Chain, Control, Envelope, Inbox, Instance, InstanceSpec, Keyed, Kind,
    LifecycleEvent, PeerInfo, ReplyRx, SessionId, Status, check_key,
};
use super::session::{Route, SessionBook, SessionRecord};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot};
use wasmwire_store::Database;
use wasmwire_wire::{
    KeyedEntry, LocalName, PeerId, PeerSel, ServiceAddr, ServiceEntry, ServiceState,
};

/// Waits up to `timeout` for an instance's answer (an event's reply, a session's
/// acceptance): `timeout` when none comes in time, `closed` when the instance dropped the
/// question (it crashed or stopped). The one place these two are told apart.
pub async fn reply_within<T>(
    rx: oneshot::Receiver<Result<T, CallError>>,
    timeout: Duration,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(CallError::Timeout),
        Ok(Err(_)) => Err(CallError::Closed),
        Ok(Ok(r)) => r,
    }
}

/// Tasks alive on the current tokio runtime (0 outside one); the instance actors run on the
/// worker threads' runtimes, counted by [`Directory::worker_tasks`].
pub fn alive_tasks() -> u64 {
    Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks() as u64)
}

/// Every instance of a host, by index and name, and the host-wide session counter.
pub struct Directory {
    instances: Vec<Arc<Instance>>,
    names: HashMap<Box<str>, u32>,
    next_session: AtomicU64,
    events: broadcast::Sender<LifecycleEvent>,
    book: Arc<SessionBook>,
    peers: OnceLock<Arc<dyn Peers>>,
    spawner: OnceLock<Spawner>,
    /// Set when the host starts to stop: no new keys are made.
    closing: AtomicBool,
    /// The host's data file, if a component imports `wasi:keyvalue`.
    database: Option<Database>,
    /// The host's alarms, if a component takes them and the host keeps data.
    alarms: Option<Arc<Alarms>>,
}

/// Where the actors of keyed instances made on demand run, and how one is made.
pub(crate) struct Spawner {
    /// The worker threads' runtimes; keys are spread over them by hash.
    pub workers: Vec<Handle>,
    /// The actor of a new key of the class at a directory index (`None` if that entry has
    /// no code to run). Made where the classes' code is known (`actor::key_starter`), so
    /// that the directory does not depend on the actor.
    pub start: Box<StartActor>,
}

/// Makes the actor of a new key: (class index, the key's instance, its inbox, the
/// directory) to the future that runs it.
pub(crate) type StartActor = dyn Fn(
        u32,
        Arc<Instance>,
        Inbox,
        Arc<Directory>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>
    + Send
    + Sync;

/// The other end of a remote session as its opener gets it.
pub struct RemoteSession {
    /// Where this end's messages go.
    pub sink: Arc<dyn super::session::RemoteSink>,
    /// The host it is on.
    pub peer: PeerId,
    /// The accepting service's channel.
    pub channel: u16,
}

/// A future returned by a [`Peers`] call.
pub type PeersFuture<T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send>>;

/// A service on other hosts, as [`Directory::route`] allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The host named (`*`: any connected host that runs the service).
    pub peer: PeerSel,
    /// The hosts `uses` allows for it (`None`: any).
    pub allowed: Option<Vec<PeerId>>,
    /// The service on that host: `name` or `class/key`.
    pub service: String,
}

/// A request to a service on another host.
pub struct RemoteRequest {
    /// Where it goes.
    pub target: RemoteTarget,
    /// The event.
    pub event: String,
    /// Its JSON parameters.
    pub params: String,
    /// How long the caller waits.
    pub timeout: Duration,
    /// The chain as the wire carries it (the caller included).
    pub chain: Vec<String>,
    /// The calling instance's name.
    pub caller: Arc<str>,
    /// The callee's end of a session the caller has with it, if any.
    pub session: Option<SessionId>,
}

/// A session to open with a service on another host.
pub struct RemoteConnect {
    /// Where it goes.
    pub target: RemoteTarget,
    /// The opening instance: its messages arrive at its end `end`.
    pub from: Arc<Instance>,
    /// The opener's end.
    pub end: SessionId,
    /// How long the opener waits for the answer.
    pub timeout: Duration,
    /// The chain as the wire carries it (the opener included).
    pub chain: Vec<String>,
}

/// Reaches services on other hosts. The network layer implements it; the runtime only
/// calls it, so the runtime never depends on the network.
pub trait Peers: Send + Sync {
    /// This host's peer id.
    fn id(&self) -> PeerId;

    /// Calls an event on a service of another host.
    fn request(&self, request: RemoteRequest) -> PeersFuture<String>;

    /// Opens a session with a service of another host; messages from the other end are
    /// delivered to the opener's end.
    fn connect(&self, connect: RemoteConnect) -> PeersFuture<RemoteSession>;
}

/// Where a call may go, as [`Directory::route`] decided.
pub enum Destination {
    /// An instance of this host.
    Local(Arc<Instance>),
    /// A service of another host, through the network.
    Remote(Arc<dyn Peers>, RemoteTarget),
}

/// Who opens a session, as the accepting instance will see it.
pub struct Opener {
    /// The opener's name (instance or client) and host.
    pub from: PeerInfo,
    /// Where the accepting end's messages go.
    pub back: Route,
    /// Who waits on the open.
    pub chain: Chain,
}

/// A session asked of an instance and not yet answered.
pub struct PendingSession {
    /// The instance asked (a keyed class's key may have been made again on the way).
    pub instance: Arc<Instance>,
    /// Its end of the session.
    pub end: SessionId,
    rx: oneshot::Receiver<Result<(), CallError>>,
}

impl PendingSession {
    /// Waits up to `timeout` for the instance to accept. An end that was not accepted in
    /// time is closed, so a late acceptance does not leave it dangling.
    pub async fn accepted(
        self,
        timeout: Duration,
    ) -> Result<(Arc<Instance>, SessionId), CallError> {
        match reply_within(self.rx, timeout).await {
            Ok(()) => Ok((self.instance, self.end)),
            Err(e) => {
                if e == CallError::Timeout {
                    let _ = self.instance.post(Envelope::Disconnect { end: self.end });
                }
                Err(e)
            }
        }
    }
}

impl Directory {
    pub(crate) fn new(
        instances: Vec<Arc<Instance>>,
        database: Option<Database>,
        alarms: Option<Arc<Alarms>>,
    ) -> Directory {
        let names = instances
            .iter()
            .map(|i| (Box::from(&*i.name), i.index))
            .collect();
        Directory {
            instances,
            names,
            next_session: AtomicU64::new(1),
            events: broadcast::channel(1024).0,
            book: Arc::default(),
            peers: OnceLock::new(),
            spawner: OnceLock::new(),
            closing: AtomicBool::new(false),
            database,
            alarms,
        }
    }

    /// The host's data file, if it has one.
    pub fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// The host's alarms, if it has any services that take them.
    pub fn alarms(&self) -> Option<&Arc<Alarms>> {
        self.alarms.as_ref()
    }

    /// Whether the host has started to stop.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
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
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(a) = &self.alarms {
            a.nudge();
        }
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
        let LocalName {
            class: class_name,
            key,
        } = LocalName::parse(name);
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
        match LocalName::parse(name) {
            LocalName { class, key: None } => self.by_name(class).cloned(),
            LocalName {
                class,
                key: Some(key),
            } => {
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
        let (instance, inbox) = Instance::new(InstanceSpec {
            name: &format!("{}/{key}", class.name),
            index: u32::MAX,
            channel: class.channel,
            class: class.class.clone(),
            limits: class.limits.clone(),
            options_json: &class.options_json,
            autostart: false,
            uses: class.uses.clone(),
            remote_uses: class.remote_uses.clone(),
            expose: class.expose,
            kind: Kind::Key { class: class.index },
            buckets: class.buckets.clone(),
            stats: class.stats.clone(),
        });
        let Some(actor) = (spawner.start)(class.index, instance.clone(), inbox, self.clone())
        else {
            return Err(CallError::Unavailable(format!(
                "{}: the class has no code to run",
                class.name
            )));
        };
        live.insert(Box::from(key), instance.clone());
        keyed.peak.fetch_max(live.len(), Ordering::Relaxed);
        drop(live);
        let worker = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(key);
            (h % spawner.workers.len().max(1) as u64) as usize
        };
        spawner.workers[worker].spawn(actor);
        Ok(instance)
    }

    /// Sends a control order to the instance of a name and waits for its answer, looking
    /// a keyed instance up again if it retired in between.
    async fn order<T>(
        self: &Arc<Self>,
        service: &str,
        make: impl Fn(oneshot::Sender<T>) -> Control,
    ) -> Result<T, CallError> {
        for _ in 0..16 {
            let target = self.resolve(service)?;
            let (reply, rx) = oneshot::channel();
            if target.control(make(reply))
                && let Ok(r) = rx.await
            {
                return Ok(r);
            }
            if !matches!(target.kind, Kind::Key { .. }) {
                return Err(CallError::Closed);
            }
        }
        Err(CallError::Closed)
    }

    /// Wakes the instance of a name now (if it is asleep) and waits until it is awake.
    pub async fn wake(self: &Arc<Self>, service: &str) -> Result<(), CallError> {
        self.order(service, |reply| Control::Wake { reply }).await?
    }

    /// Puts the instance of a name to sleep now if it is awake and has no sessions; says
    /// whether it did.
    pub async fn sleep(self: &Arc<Self>, service: &str) -> Result<bool, CallError> {
        self.order(service, |reply| Control::Sleep { reply }).await
    }

    /// Stops every instance: from now on no key is made and every instance refuses new
    /// work (`closed`: a local or remote caller knows), finishes what its mailbox already
    /// holds, and is put to sleep (its sessions closed, so each other end sees
    /// `on-disconnect`). Returns the names of those still busy at `deadline` (a guest in a
    /// long call), which are left where they are.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> Vec<Arc<str>> {
        // No new keys from here on: the instances listed below are all there will be.
        self.close();
        let mut all = Vec::new();
        for entry in self.instances() {
            let keys = entry.keyed().map(Keyed::instances).unwrap_or_default();
            all.push(entry.clone());
            all.extend(keys);
        }
        // Every instance refuses new work now, before any actor reads its order: one busy
        // in a long call must not go on taking work its drain will never reach.
        for instance in &all {
            instance.close_admission();
        }
        let mut waits = Vec::new();
        for instance in &all {
            let (done, rx) = oneshot::channel();
            if instance.control(Control::Shutdown { done }) {
                waits.push((instance.name.clone(), rx));
            }
        }
        let mut late = Vec::new();
        for (name, w) in waits {
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                late.push(name);
            }
        }
        late
    }

    /// Takes a keyed instance that is asleep out of its class's table if nothing waits for
    /// it (see [`Instance::retire_from`]); the actor asks, and ends if it was retired.
    pub(crate) fn retire(&self, instance: &Instance) -> bool {
        let Kind::Key { class } = instance.kind else {
            return false;
        };
        self.get(class)
            .keyed()
            .is_some_and(|keyed| instance.retire_from(keyed))
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
    pub fn post_event(
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

    /// Where the instances' session tables enter every open and close.
    pub(crate) fn book(&self) -> &Arc<SessionBook> {
        &self.book
    }

    /// The open session end with this id.
    pub fn session(&self, id: SessionId) -> Option<SessionRecord> {
        self.book.get(id)
    }

    /// Every open session end on this host (at most `max`), sorted by id, and how many
    /// there are in all.
    pub fn sessions(&self, max: usize) -> (Vec<(SessionId, SessionRecord)>, usize) {
        self.book.list(max)
    }

    /// Each manifest entry's figures, in manifest order (at most `max`), and how many
    /// entries there are. A keyed class's figures add up its live keys (its counters are
    /// shared by its keys already; awake keys, mailboxes and sessions are summed here).
    pub fn figures(&self, max: usize) -> (Vec<wasmwire_wire::InstanceFigures>, usize) {
        let list = self
            .instances
            .iter()
            .take(max)
            .map(|i| {
                let mut out = wasmwire_wire::InstanceFigures {
                    name: i.name.to_string(),
                    mailbox: i.queued() as u64,
                    sessions: u64::from(i.sessions_open()),
                    ..Default::default()
                };
                i.stats.read_into(&mut out);
                match i.keyed() {
                    Some(k) => {
                        out.state = ServiceState::Keyed;
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
                        out.state = status.wire();
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

    /// The instance at a directory index.
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

impl Directory {
    /// Where a call from `me` to `addr` may go: an instance of this host that `me` may use,
    /// or a service of another host that its remote `uses` allow — with the error the
    /// caller should see otherwise. `uses = ["room"]` covers every key of a keyed class, and
    /// an address naming this host's own peer id is local.
    pub fn route(
        self: &Arc<Self>,
        me: &Instance,
        addr: &ServiceAddr,
    ) -> Result<Destination, CallError> {
        let Some(peer) = addr.peer else {
            return self.local_use(me, &addr.service).map(Destination::Local);
        };
        let Some(peers) = self.peers() else {
            return Err(CallError::Unavailable(format!(
                "cannot reach {addr}: this host has no network (set `[host] listen`)"
            )));
        };
        if peer == PeerSel::Id(peers.id()) {
            return self.local_use(me, &addr.service).map(Destination::Local);
        }
        let service = &addr.service;
        let allowed = me.remote_uses(service)?;
        if let (PeerSel::Id(p), Some(ids)) = (peer, &allowed)
            && !ids.contains(&p)
        {
            return Err(CallError::Denied(format!(
                "{} may not use {service} on {p}: add \"{p}/{service}\" to `uses` of {} in the manifest",
                me.name, me.name
            )));
        }
        Ok(Destination::Remote(
            peers.clone(),
            RemoteTarget {
                peer,
                allowed,
                service: service.clone(),
            },
        ))
    }

    /// The instance of this host named `service`, if `me` may use it.
    fn local_use(
        self: &Arc<Self>,
        me: &Instance,
        service: &str,
    ) -> Result<Arc<Instance>, CallError> {
        let name = LocalName::parse(service);
        if me.uses(name.class).is_some() {
            return self.resolve(service);
        }
        if self.by_name(name.class).is_some() {
            return Err(CallError::Denied(format!(
                "{} may not use {}: add it to `uses` of {} in the manifest",
                me.name, name.class, me.name
            )));
        }
        Err(CallError::NoSuchService(match name.key {
            // `x/y` whose `x` is no service here: most likely a mistyped peer id.
            Some(_) if !wasmwire_wire::addr::names_a_host(name.class) => format!(
                "{service} ({} is neither a service of this host nor a peer id)",
                name.class
            ),
            _ => service.to_string(),
        }))
    }

    /// Asks `target` to open a session whose other end is `opener`: a fresh id for its end
    /// and one place in its mailbox (see `reserve_on`). Every session on this host is
    /// opened here — by a guest's `connect`, a client, a peer's session stream — and
    /// answered through [`PendingSession::accepted`].
    pub fn open_session(
        self: &Arc<Self>,
        target: &Arc<Instance>,
        opener: Opener,
    ) -> Result<PendingSession, CallError> {
        let end = self.next_session();
        let instance = self.reserve_on(target)?;
        let (reply, rx) = oneshot::channel();
        instance.deliver(Envelope::Connect {
            end,
            from: opener.from,
            back: opener.back,
            chain: opener.chain,
            reply,
        });
        Ok(PendingSession { instance, end, rx })
    }

    /// The instance a peer or a remote client may reach by this name: exposed, and for a
    /// keyed class's key, made on demand.
    pub fn exposed(self: &Arc<Self>, service: &str) -> Result<Arc<Instance>, CallError> {
        let class = LocalName::parse(service).class;
        if !self.by_name(class).is_some_and(|i| i.expose) {
            return Err(CallError::NoSuchService(format!(
                "no exposed service named {service:?} on this host"
            )));
        }
        self.resolve(service)
    }

    /// The host's figures as far as the runtime knows them — its instances and its tasks —
    /// for `get-stats` and the metrics; the network adds its own (peers, stalls).
    pub fn host_stats(&self, uptime: Duration) -> wasmwire_wire::HostStats {
        let (instances, total) = self.figures(wasmwire_wire::control::MAX_STATS_INSTANCES);
        wasmwire_wire::HostStats {
            uptime_ms: uptime.as_millis() as u64,
            instances,
            total_instances: total as u64,
            tasks: alive_tasks() + self.worker_tasks(),
            ..Default::default()
        }
    }

    /// The exposed services, as `list-services` answers.
    pub fn list_services(&self) -> Vec<ServiceEntry> {
        self.instances
            .iter()
            .filter(|i| i.expose)
            .map(|i| {
                let keyed = i.keyed().map(|k| {
                    let (awake_keys, awake) = k.awake(wasmwire_wire::control::MAX_LISTED_KEYS);
                    KeyedEntry {
                        live: k.live() as u64,
                        awake: awake as u64,
                        awake_keys,
                        max_instances: k.max_instances,
                    }
                });
                ServiceEntry {
                    name: i.name.to_string(),
                    channel: i.channel,
                    messages: i.class.messages.to_vec(),
                    events: i.class.events.to_vec(),
                    state: match keyed {
                        Some(_) => ServiceState::Keyed,
                        None => i.status().wire(),
                    },
                    sessions: i.sessions_open(),
                    keyed,
                }
            })
            .collect()
    }

    /// Every open session end on this host (at most `max`), as `list-sessions` answers,
    /// and how many there are in all.
    pub fn list_sessions(&self, max: usize) -> (Vec<wasmwire_wire::SessionEntry>, usize) {
        let (list, total) = self.sessions(max);
        let list = list
            .into_iter()
            .map(|(id, r)| wasmwire_wire::SessionEntry {
                id,
                service: r.instance.to_string(),
                channel: r.channel,
                other: r.other.to_string(),
                other_id: r.other_id,
                peer: r.peer.map(|p| p.to_string()),
            })
            .collect();
        (list, total)
    }
}
