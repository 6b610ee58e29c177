//! The context of the `wasmwire:service/host` interface, one per instance — its sessions,
//! timers, the lifecycle calls its host calls queue, the outbox of what it sent, the chain
//! of the event in progress, its limits — and the imports that read and change them.
//!
//! Shaped like `wasmtime_wasi`'s `WasiCtx`/`WasiCtxView`: the store's `HostState` holds one
//! context per interface, and the linker reaches each through a view made by a getter
//! ([`HasService`]). The view also borrows the store's CPU clock, because an import that
//! waits (on another instance, a peer, later a disk) pauses it: waiting is not CPU time.
//! Another interface (the key-value store) is one more context and view beside this one;
//! the fuzzer's audit wraps this view from outside (`audit.rs`).

use super::alarms;
use super::bindings::wasmwire::service::{host, types};
use super::bindings::{Level, SessionInfo, WitError};
use super::clock::CallClock;
use super::directory::{
    Destination, Directory, Opener, Peers, RemoteConnect, RemoteRequest, RemoteTarget, reply_within,
};
use super::guest_log::LogBudget;
use super::instance::Outbox;
use super::instance::{CallError, Chain, Instance, PeerInfo, SessionId};
use super::session::{Route, SessionEnd, SessionTable};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::component::HasData;
use wasmwire_store::Transaction;
use wasmwire_wire::{PeerSel, ServiceAddr};

/// Longest `log` line kept, so a guest cannot flood the log with one call.
const MAX_LOG_LINE: usize = 8 << 10;

/// A timer set by the guest.
pub(crate) struct Timer {
    pub id: u32,
    pub period: Duration,
    pub next: Instant,
}

/// A lifecycle call the actor makes right after the current one, before the next mailbox
/// item: the guest cannot be re-entered while it is inside a host call.
pub(crate) enum Deferred {
    Connected(SessionInfo),
    Disconnected(SessionId),
}

/// What the `wasmwire:service/host` imports of one instance read and change.
pub struct ServiceCtx {
    pub(crate) name: Arc<str>,
    /// `None` in scratch stores (describe, inspect, fuzz): host calls that need the node fail.
    pub(crate) me: Option<(Arc<Instance>, Arc<Directory>)>,
    pub(crate) sessions: SessionTable,
    pub(crate) timers: Vec<Timer>,
    next_timer: u32,
    pub(crate) deferred: VecDeque<Deferred>,
    /// Messages sent during the current call, flushed by the driver after it.
    pub(crate) outbox: Outbox,
    /// The chain of the event in progress (empty for other calls).
    pub(crate) chain: Chain,
    /// Where the `send` import copies the kind and payload from guest memory (kept between
    /// sends: no allocation per message; see `engine::link_send`).
    pub(crate) scratch: Vec<u8>,
    max_timers: usize,
    /// Most sessions open at once, opened or accepted (`max_sessions`).
    max_sessions: u32,
    /// Largest message, parameters or reply it takes (`max_message`).
    pub(crate) max_message: u64,
    /// This instance's log rate limit, shared with its stdout/stderr.
    log_budget: Arc<LogBudget>,
    /// How this call changed the instance's alarm (`Some(None)`: removed it), told to the
    /// host's schedule once the call's writes are committed, forgotten if they are dropped.
    pub(crate) alarm_change: Option<Option<u64>>,
    /// The alarm whose `on-alarm` is running, while the guest has neither set nor
    /// cancelled its alarm in that call: it is deleted with the call's writes.
    pub(crate) firing: Option<u64>,
}

impl ServiceCtx {
    /// A context for instance `name` under `limits`, not yet part of a running host.
    pub(crate) fn new(
        name: Arc<str>,
        limits: &wasmwire_manifest::Limits,
        log_budget: Arc<LogBudget>,
    ) -> ServiceCtx {
        ServiceCtx {
            name,
            me: None,
            sessions: SessionTable::default(),
            timers: Vec::new(),
            next_timer: 1,
            deferred: VecDeque::new(),
            outbox: Outbox::default(),
            scratch: Vec::new(),
            chain: Chain::default(),
            max_timers: limits.max_timers as usize,
            max_sessions: limits.max_sessions,
            max_message: limits.max_message,
            log_budget,
            alarm_change: None,
            firing: None,
        }
    }

    /// Makes this the context of `me`, a running instance of the host `directory` serves:
    /// its sessions are booked there, and its host calls reach other services.
    pub(crate) fn attach(&mut self, me: Arc<Instance>, directory: Arc<Directory>) {
        self.sessions = SessionTable::booked(me.clone(), directory.book().clone());
        self.me = Some((me, directory));
    }

    /// Whether one more session may open here: `max_sessions`, the same for the sessions
    /// the instance opens and those it accepts.
    pub(crate) fn session_room(&self) -> Result<(), CallError> {
        let max = self.max_sessions;
        if self.sessions.len() >= max as usize {
            return Err(CallError::Denied(format!(
                "{} has its limit of {max} sessions open",
                self.name
            )));
        }
        Ok(())
    }

    /// The call's writes are committed: the schedule learns of the alarm it set or
    /// removed, if it did.
    pub(crate) fn alarm_committed(&mut self) {
        if let Some(at) = self.alarm_change.take()
            && let Some((me, directory)) = &self.me
            && let Some(alarms) = directory.alarms()
        {
            alarms.changed(&me.name, at);
        }
    }

    /// `on-alarm` returned without setting or cancelling the alarm: the one that fired is
    /// deleted with the call's writes (if that write fails, it stays stored and fires
    /// again at the next start).
    pub(crate) fn alarm_fired(&mut self, txn: &mut Transaction) {
        if self.firing.take().is_none() {
            return;
        }
        match txn.put(alarms::bucket(), self.name.to_string(), None) {
            Ok(()) => self.alarm_change = Some(None),
            Err(e) => {
                tracing::warn!(instance = %self.name, error = %e, "a fired alarm could not be deleted: it fires again at the next start")
            }
        }
    }

    /// Why this instance may not set an alarm, if it may not.
    fn alarm_refusal(&self, txn: &Transaction) -> Option<WitError> {
        let Some((me, _)) = &self.me else {
            return Some(WitError::Unavailable("alarms need a running host".into()));
        };
        if !me.class.alarms() {
            return Some(WitError::Invalid(format!(
                "{} exports no on-alarm: build it for the world service-with-alarms (the SDK's Service::on_alarm)",
                self.name
            )));
        }
        if txn.database().is_none() {
            return Some(WitError::Unavailable(
                "this host keeps no data (set [host] data_dir)".into(),
            ));
        }
        if self.me.as_ref().is_some_and(|(_, d)| d.alarms().is_none()) {
            return Some(WitError::Unavailable(
                "this host could not read its stored alarms at start (see its log)".into(),
            ));
        }
        None
    }

    /// This instance and its directory, cloned for a call that awaits.
    fn node(&self) -> Result<(Arc<Instance>, Arc<Directory>), CallError> {
        self.me
            .as_ref()
            .map(|(i, r)| (i.clone(), r.clone()))
            .ok_or_else(|| CallError::Denied("not available outside a running host".into()))
    }
}

/// The `wasmwire:service/host` imports of one instance: its context, and the store's CPU
/// clock, paused while an import waits.
pub struct ServiceCtxView<'a> {
    /// The interface's context.
    pub ctx: &'a mut ServiceCtx,
    /// The store's CPU clock.
    pub clock: &'a mut CallClock,
    /// The call's writes: once it has any, what the call sends or closes is held until
    /// they are durable, and a `connect` or `request` makes them durable first.
    pub txn: &'a mut Transaction,
}

/// The linker's getter type for the `wasmwire:service` imports.
pub struct HasService;

impl HasData for HasService {
    type Data<'a> = ServiceCtxView<'a>;
}

impl ServiceCtxView<'_> {
    /// Before an output that waits for an answer (`connect`, `request`): the call's writes
    /// so far are made durable and what it held goes out, so that the other side never
    /// acts on a write a crash could undo. A call that wrote nothing passes at once. A
    /// commit that fails traps the call, as it does at the call's end: the call cannot go
    /// on as one transaction with half of it gone.
    async fn durable_first(&mut self) -> wasmtime::Result<()> {
        if !self.txn.is_dirty() {
            return Ok(());
        }
        let commit = self.txn.commit();
        // Waiting for the disk is not CPU time.
        self.clock.pause();
        let r = commit.await;
        self.clock.resume();
        match r {
            Ok(()) => {
                self.ctx.alarm_committed();
                self.ctx.outbox.release();
                Ok(())
            }
            Err(e) => {
                self.ctx.alarm_change = None;
                self.ctx.outbox.discard_held();
                Err(wasmtime::Error::new(e))
            }
        }
    }

    /// Opens a session with what `addr` names, as the directory routes it.
    async fn connect_to(&mut self, addr: ServiceAddr) -> Result<SessionId, CallError> {
        let (me, directory) = self.ctx.node()?;
        let destination = directory.route(&me, &addr)?;
        self.ctx.session_room()?;
        match destination {
            Destination::Local(target) => self.connect_local(me, directory, target).await,
            Destination::Remote(peers, target) => {
                self.connect_remote(me, directory, peers, target).await
            }
        }
    }

    async fn connect_local(
        &mut self,
        me: Arc<Instance>,
        directory: Arc<Directory>,
        target: Arc<Instance>,
    ) -> Result<SessionId, CallError> {
        let chain = self.ctx.chain.onward(&me.name, &target.name)?;
        let mine = directory.next_session();
        self.ctx.outbox.flush();
        let opener = Opener {
            from: PeerInfo {
                service: me.name.clone(),
                peer: None,
            },
            back: Route::Instance {
                to: me.clone(),
                end: mine,
            },
            chain,
        };
        let pending = directory.open_session(&target, opener)?;
        // Waiting for the answer is not CPU time.
        self.clock.pause();
        let accepted = pending.accepted(me.limits.request_timeout).await;
        self.clock.resume();
        let (target, theirs) = accepted?;
        let channel = target.channel;
        let info = SessionInfo {
            id: mine,
            peer: None,
            service: target.name.to_string(),
            channel,
        };
        self.ctx.sessions.insert(
            mine,
            SessionEnd {
                service: target.name.clone(),
                route: Route::Instance {
                    to: target,
                    end: theirs,
                },
                peer: None,
                channel,
            },
        );
        self.ctx.deferred.push_back(Deferred::Connected(info));
        Ok(mine)
    }

    async fn connect_remote(
        &mut self,
        me: Arc<Instance>,
        directory: Arc<Directory>,
        peers: Arc<dyn Peers>,
        target: RemoteTarget,
    ) -> Result<SessionId, CallError> {
        let chain = self.ctx.chain.to_wire_from(&me.name, peers.id());
        let mine = directory.next_session();
        let service = target.service.clone();
        self.ctx.outbox.flush();
        self.clock.pause();
        let r = peers
            .connect(RemoteConnect {
                target,
                from: me.clone(),
                end: mine,
                timeout: me.limits.request_timeout,
                chain,
            })
            .await;
        self.clock.resume();
        let remote = r?;
        let info = SessionInfo {
            id: mine,
            peer: Some(remote.peer.to_string()),
            service: service.clone(),
            channel: remote.channel,
        };
        self.ctx.sessions.insert(
            mine,
            SessionEnd {
                route: Route::Remote(remote.sink),
                service: Arc::from(service),
                peer: Some(remote.peer),
                channel: remote.channel,
            },
        );
        self.ctx.deferred.push_back(Deferred::Connected(info));
        Ok(mine)
    }

    /// Calls `event` on what `addr` names, as the directory routes it.
    async fn request_to(
        &mut self,
        addr: ServiceAddr,
        event: &str,
        params: String,
    ) -> Result<String, CallError> {
        let (me, directory) = self.ctx.node()?;
        match directory.route(&me, &addr)? {
            Destination::Local(target) => {
                self.request_local(me, directory, target, event, params)
                    .await
            }
            Destination::Remote(peers, target) => {
                self.request_remote(me, peers, target, event, params).await
            }
        }
    }

    async fn request_local(
        &mut self,
        me: Arc<Instance>,
        directory: Arc<Directory>,
        target: Arc<Instance>,
        event: &str,
        params: String,
    ) -> Result<String, CallError> {
        let chain = self.ctx.chain.onward(&me.name, &target.name)?;
        // If this instance has a session with the target, the target sees the request as
        // coming from that session (its end of it).
        let caller = self.ctx.sessions.iter().find_map(|(_, s)| match &s.route {
            // The same instance, not just the same name: a key with a session never retires.
            Route::Instance { to, end } if Arc::ptr_eq(to, &target) => Some(*end),
            _ => None,
        });
        let rx = directory.post_event(&target, event, params, caller, chain)?;
        // Waiting for the answer is not CPU time.
        self.clock.pause();
        let r = reply_within(rx, me.limits.request_timeout).await;
        self.clock.resume();
        r
    }

    async fn request_remote(
        &mut self,
        me: Arc<Instance>,
        peers: Arc<dyn Peers>,
        target: RemoteTarget,
        event: &str,
        params: String,
    ) -> Result<String, CallError> {
        let chain = self.ctx.chain.to_wire_from(&me.name, peers.id());
        // A session this instance has with that very service on that very peer makes the
        // callee see the request as coming from that session.
        let session = target.peer.id().and_then(|p| {
            self.ctx.sessions.iter().find_map(|(_, s)| match &s.route {
                Route::Remote(sink) if s.peer == Some(p) && *s.service == *target.service => {
                    Some(sink.other_end())
                }
                _ => None,
            })
        });
        self.ctx.outbox.flush();
        self.clock.pause();
        let r = peers
            .request(RemoteRequest {
                target,
                event: event.to_string(),
                params,
                timeout: me.limits.request_timeout,
                chain,
                caller: me.name.clone(),
                session,
            })
            .await;
        self.clock.resume();
        r
    }
}

impl From<CallError> for WitError {
    fn from(e: CallError) -> WitError {
        match e {
            CallError::NoSuchSession => WitError::NoSuchSession,
            CallError::NoSuchService(s) => WitError::NoSuchService(s),
            CallError::Denied(s) => WitError::Denied(s),
            CallError::TooLarge { .. } => WitError::TooLarge,
            CallError::Closed => WitError::Closed,
            CallError::Timeout => WitError::Timeout,
            CallError::Busy | CallError::Full(_) => WitError::Busy,
            CallError::Cycle => WitError::Cycle,
            CallError::Invalid(s) => WitError::Invalid(s),
            CallError::Unavailable(s) => WitError::Unavailable(s),
            CallError::Failed(s) => WitError::Failed(s),
        }
    }
}

impl types::Host for ServiceCtxView<'_> {}

impl ServiceCtxView<'_> {
    /// `send`, with the kind and payload borrowed.
    #[inline]
    pub(crate) fn send_slice(
        &mut self,
        session: SessionId,
        kind: &str,
        payload: &[u8],
    ) -> Result<(), WitError> {
        let Some(end) = self.ctx.sessions.get(&session) else {
            return Err(WitError::NoSuchSession);
        };
        let outbox = &mut self.ctx.outbox;
        let sent = if self.txn.is_dirty() {
            end.route.hold(kind, payload, outbox)
        } else {
            end.route.send(kind, payload, outbox)
        };
        sent.map_err(WitError::from)
    }
}

impl host::Host for ServiceCtxView<'_> {
    fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_LOG_LINE {
            message.truncate(message.floor_char_boundary(MAX_LOG_LINE));
        }
        let instance = &*self.ctx.name;
        if !self.ctx.log_budget.admit(instance) {
            return Ok(());
        }
        match level {
            Level::Trace => tracing::trace!(target: "wasmwire::guest", instance, "{message}"),
            Level::Debug => tracing::debug!(target: "wasmwire::guest", instance, "{message}"),
            Level::Info => tracing::info!(target: "wasmwire::guest", instance, "{message}"),
            Level::Warn => tracing::warn!(target: "wasmwire::guest", instance, "{message}"),
            Level::Error => tracing::error!(target: "wasmwire::guest", instance, "{message}"),
        }
        Ok(())
    }

    fn send(
        &mut self,
        session: SessionId,
        kind: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.send_slice(session, &kind, &payload))
    }

    fn close(&mut self, session: SessionId) -> wasmtime::Result<()> {
        if let Some(end) = self.ctx.sessions.remove(&session) {
            if self.txn.is_dirty() {
                self.ctx.outbox.hold_disconnect(end.route);
            } else {
                // Messages sent before the close must reach the other end before it.
                self.ctx.outbox.flush();
                end.route.disconnect();
            }
            self.ctx.deferred.push_back(Deferred::Disconnected(session));
        }
        Ok(())
    }

    fn sessions(&mut self) -> wasmtime::Result<Vec<SessionInfo>> {
        Ok(self
            .ctx
            .sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: *id,
                peer: s.peer.map(|p| p.to_string()),
                service: s.service.to_string(),
                channel: s.channel,
            })
            .collect())
    }

    async fn connect(
        &mut self,
        peer: Option<String>,
        service: String,
    ) -> wasmtime::Result<Result<SessionId, WitError>> {
        self.durable_first().await?;
        let r = match peer.map(|p| p.parse::<PeerSel>()).transpose() {
            Ok(peer) => self.connect_to(ServiceAddr { peer, service }).await,
            Err(e) => Err(CallError::Invalid(e.to_string())),
        };
        Ok(r.map_err(WitError::from))
    }

    async fn request(
        &mut self,
        service: String,
        event: String,
        params: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        self.durable_first().await?;
        // `PEERID/name` or `*/name` is a service on another host; a bare name or
        // `class/KEY` is local (see `wire::addr`).
        let r = match ServiceAddr::try_from(service) {
            Ok(addr) => self.request_to(addr, &event, params).await,
            Err(e) => Err(CallError::Invalid(e.to_string())),
        };
        Ok(r.map_err(WitError::from))
    }

    fn set_timer(&mut self, every_ms: u64) -> wasmtime::Result<Result<u32, WitError>> {
        if every_ms == 0 {
            return Ok(Err(WitError::Invalid(
                "a timer period must be at least 1 ms".into(),
            )));
        }
        let max = self.ctx.max_timers;
        if self.ctx.timers.len() >= max {
            return Ok(Err(WitError::Denied(format!(
                "{} has its limit of {max} timers",
                self.ctx.name
            ))));
        }
        let id = self.ctx.next_timer;
        self.ctx.next_timer += 1;
        let period = Duration::from_millis(every_ms);
        self.ctx.timers.push(Timer {
            id,
            period,
            next: Instant::now() + period,
        });
        Ok(Ok(id))
    }

    fn cancel_timer(&mut self, timer: u32) -> wasmtime::Result<()> {
        self.ctx.timers.retain(|t| t.id != timer);
        Ok(())
    }

    fn instance_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.ctx.name.to_string())
    }

    fn self_info(&mut self) -> wasmtime::Result<super::bindings::InstanceInfo> {
        let (service, key) = match self.ctx.me.as_ref().and_then(|(i, _)| i.key()) {
            Some((class, key)) => (class.to_string(), Some(key.to_string())),
            None => (self.ctx.name.to_string(), None),
        };
        let host = self
            .ctx
            .me
            .as_ref()
            .and_then(|(_, r)| r.peers())
            .map(|p| p.id().to_string());
        Ok(super::bindings::InstanceInfo {
            name: self.ctx.name.to_string(),
            service,
            key,
            host,
        })
    }

    fn set_alarm(&mut self, at_ms: u64) -> wasmtime::Result<Result<(), WitError>> {
        if let Some(e) = self.ctx.alarm_refusal(self.txn) {
            return Ok(Err(e));
        }
        let key = self.ctx.name.to_string();
        if let Err(e) = self
            .txn
            .put(alarms::bucket(), key, Some(alarms::encode(at_ms)))
        {
            return Ok(Err(WitError::Unavailable(format!(
                "cannot store the alarm: {e}"
            ))));
        }
        self.ctx.firing = None;
        self.ctx.alarm_change = Some(Some(at_ms));
        Ok(Ok(()))
    }

    fn cancel_alarm(&mut self) -> wasmtime::Result<()> {
        if self.ctx.alarm_refusal(self.txn).is_some() {
            return Ok(());
        }
        let key = self.ctx.name.to_string();
        // A cancel that cannot be recorded must not pass for one: the call traps (its
        // writes dropped), as when a commit fails.
        let stored = self
            .txn
            .get(alarms::BUCKET, &key)
            .map_err(wasmtime::Error::new)?;
        self.ctx.firing = None;
        // Nothing to remove when there is no alarm: no write, so the call stays free.
        if stored.is_some() {
            self.txn
                .put(alarms::bucket(), key, None)
                .map_err(wasmtime::Error::new)?;
            self.ctx.alarm_change = Some(None);
        }
        Ok(())
    }

    fn alarm(&mut self) -> wasmtime::Result<Option<u64>> {
        // The alarm whose `on-alarm` is running is gone already, as far as the guest knows.
        if self.ctx.me.is_none() || self.ctx.firing.is_some() || self.txn.database().is_none() {
            return Ok(None);
        }
        let stored = self
            .txn
            .get(alarms::BUCKET, &self.ctx.name)
            .map_err(wasmtime::Error::new)?;
        Ok(stored.as_deref().and_then(alarms::decode))
    }
}
