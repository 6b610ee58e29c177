//! The per-instance host state inside each `Store`: WASI context (nothing granted), memory
//! limiter, CPU clock, sessions, timers — and the `wasmwire:service/host` imports that read
//! and change them.

use super::bindings::wasmwire::service::{host, types};
use super::bindings::{Level, SessionInfo, WitError};
use super::clock::{CallClock, Verdict};
use super::directory::{
    Destination, Opener, Peers, Registry, RemoteConnect, RemoteRequest, RemoteTarget, reply_within,
};
use super::guest_log::{GuestLog, Stream};
use super::instance::Outbox;
use super::instance::{CallError, Chain, Instance, PeerInfo, SessionId};
use super::session::{Route, SessionEnd, SessionTable};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmwire_wire::{PeerSel, ServiceAddr};

/// Longest `log` line kept, so a guest cannot flood the log with one call.
const MAX_LOG_LINE: usize = 8 << 10;

/// A call ran past the instance's CPU deadline (the error behind the trap).
#[derive(Debug, thiserror::Error)]
#[error("cpu deadline exceeded: a call may run {limit:?}")]
pub struct CpuDeadline {
    /// The instance's `call_timeout`.
    pub limit: Duration,
}

/// The guest tried to grow its memory past the instance's limit (the error behind the trap).
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: asked for {desired} bytes, the limit is {limit}")]
pub struct MemoryLimit {
    /// Bytes asked for.
    pub desired: usize,
    /// The instance's `memory`.
    pub limit: usize,
}

/// Enforces the instance's memory limit, turning a refused growth into a clear trap, and
/// keeps the instance's memory figure (growth is rare: a few times per wake at most).
pub(crate) struct Limiter {
    memory: usize,
    /// Bytes of linear memory this store has grown to, all memories together.
    held: u64,
    /// Where `held` is added up across instances (and given back when the store drops).
    stats: Option<Arc<super::stats::InstanceStats>>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(wasmtime::Error::new(MemoryLimit {
                desired,
                limit: self.memory,
            }));
        }
        let grown = desired.saturating_sub(current) as u64;
        self.held += grown;
        if let Some(s) = &self.stats {
            s.memory.fetch_add(grown, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(s) = &self.stats {
            s.memory.fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

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

/// Everything the host keeps per instance, inside its `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    pub(crate) name: Arc<str>,
    /// `None` in scratch stores (describe, inspect): host calls that need the node fail.
    pub(crate) me: Option<(Arc<Instance>, Arc<Registry>)>,
    pub(crate) sessions: SessionTable,
    pub(crate) timers: Vec<Timer>,
    next_timer: u32,
    pub(crate) deferred: VecDeque<Deferred>,
    /// Messages sent during the current call, flushed by the actor after it.
    pub(crate) outbox: Outbox,
    /// The chain of the event in progress (empty for other calls).
    pub(crate) chain: Chain,
    pub(crate) clock: CallClock,
    max_timers: usize,
    /// Most sessions open at once, opened or accepted (`max_sessions`).
    max_sessions: u32,
    /// Largest message, parameters or reply it takes (`max_message`).
    pub(crate) max_message: u64,
    /// This instance's log rate limit, shared with its stdout/stderr.
    log_budget: Arc<super::guest_log::LogBudget>,
    /// Set only under `wasmwire fuzz`: checks what the guest asks of the host and injects
    /// errors. `None` in a real host, where it costs one branch per host call.
    pub(crate) audit: Option<Box<Audit>>,
}

/// What a fuzzing run watches in host calls, and the error it injects into the next one.
#[derive(Default)]
pub struct Audit {
    /// Every session id the host handed this instance.
    pub given: std::collections::HashSet<SessionId>,
    /// Broken host-side rules, in the order seen.
    pub violations: Vec<String>,
    /// The error the next `send`, `connect` or `request` returns instead of its own answer.
    pub fault: Option<WitError>,
}

impl HostState {
    fn base(
        name: Arc<str>,
        ticks: Arc<AtomicU64>,
        limits: &wasmwire_manifest::Limits,
        capture: Option<super::guest_log::Captured>,
        budget: Arc<super::guest_log::LogBudget>,
    ) -> HostState {
        // Nothing granted: no preopened folders, no environment, no arguments, no network.
        // Output goes to the log under the instance's name; clocks and randomness stay.
        let (stdout, stderr) = match capture {
            None => (
                GuestLog::new(name.clone(), Stream::Stdout, budget.clone()),
                GuestLog::new(name.clone(), Stream::Stderr, budget.clone()),
            ),
            Some(c) => (
                GuestLog::captured(name.clone(), Stream::Stdout, c.clone()),
                GuestLog::captured(name.clone(), Stream::Stderr, c),
            ),
        };
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory: limits.memory as usize,
                held: 0,
                stats: None,
            },
            name,
            me: None,
            sessions: SessionTable::default(),
            timers: Vec::new(),
            next_timer: 1,
            deferred: VecDeque::new(),
            outbox: Outbox::default(),
            chain: Chain::default(),
            clock: CallClock::new(ticks, limits.call_timeout),
            max_timers: limits.max_timers as usize,
            max_sessions: limits.max_sessions,
            max_message: limits.max_message,
            audit: None,
            log_budget: budget,
        }
    }

    /// State for a real instance of the node.
    pub(crate) fn new(
        me: Arc<Instance>,
        registry: Arc<Registry>,
        ticks: Arc<AtomicU64>,
    ) -> HostState {
        let mut s = HostState::base(
            me.name.clone(),
            ticks,
            &me.limits,
            None,
            me.log_budget.clone(),
        );
        s.sessions = SessionTable::booked(me.clone(), registry.book().clone());
        s.limiter.stats = Some(me.stats.clone());
        s.me = Some((me, registry));
        s
    }

    /// State for a throwaway instance with default limits (describe, inspect, fuzz).
    pub fn scratch(name: Arc<str>, ticks: Arc<AtomicU64>) -> HostState {
        HostState::base(
            name,
            ticks,
            &wasmwire_manifest::Limits::default(),
            None,
            Arc::default(),
        )
    }

    /// State for an instance driven by the fuzzer: `limits` as a manifest would give them,
    /// no other services, and an audit of every host call.
    pub(crate) fn audited(
        name: Arc<str>,
        ticks: Arc<AtomicU64>,
        limits: &wasmwire_manifest::Limits,
        audit: Audit,
        capture: super::guest_log::Captured,
    ) -> HostState {
        let mut s = HostState::base(name, ticks, limits, Some(capture), Arc::default());
        s.audit = Some(Box::new(audit));
        s
    }

    /// An injected error for this host call, if the fuzzer wants one.
    #[inline]
    fn injected(&mut self) -> Option<WitError> {
        self.audit.as_mut()?.fault.take()
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

    /// This instance and its directory, cloned for a call that awaits.
    fn node(&self) -> Result<(Arc<Instance>, Arc<Registry>), CallError> {
        self.me
            .as_ref()
            .map(|(i, r)| (i.clone(), r.clone()))
            .ok_or_else(|| CallError::Denied("not available outside a running host".into()))
    }

    /// Opens a session with what `addr` names, as the directory routes it.
    async fn connect_to(&mut self, addr: ServiceAddr) -> Result<SessionId, CallError> {
        let (me, registry) = self.node()?;
        let destination = registry.route(&me, &addr)?;
        self.session_room()?;
        match destination {
            Destination::Local(target) => self.connect_local(me, registry, target).await,
            Destination::Remote(peers, target) => {
                self.connect_remote(me, registry, peers, target).await
            }
        }
    }

    async fn connect_local(
        &mut self,
        me: Arc<Instance>,
        registry: Arc<Registry>,
        target: Arc<Instance>,
    ) -> Result<SessionId, CallError> {
        let chain = self.chain.onward(&me.name, &target.name)?;
        let mine = registry.next_session();
        self.outbox.flush();
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
        let pending = registry.open_session(&target, opener)?;
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
        self.sessions.insert(
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
        self.deferred.push_back(Deferred::Connected(info));
        Ok(mine)
    }

    async fn connect_remote(
        &mut self,
        me: Arc<Instance>,
        registry: Arc<Registry>,
        peers: Arc<dyn Peers>,
        target: RemoteTarget,
    ) -> Result<SessionId, CallError> {
        let chain = self.chain.to_wire_from(&me.name, peers.id());
        let mine = registry.next_session();
        let service = target.service.clone();
        self.outbox.flush();
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
        self.sessions.insert(
            mine,
            SessionEnd {
                route: Route::Remote(remote.sink),
                service: Arc::from(service),
                peer: Some(remote.peer),
                channel: remote.channel,
            },
        );
        self.deferred.push_back(Deferred::Connected(info));
        Ok(mine)
    }

    /// Calls `event` on what `addr` names, as the directory routes it.
    async fn request_to(
        &mut self,
        addr: ServiceAddr,
        event: &str,
        params: String,
    ) -> Result<String, CallError> {
        let (me, registry) = self.node()?;
        match registry.route(&me, &addr)? {
            Destination::Local(target) => {
                self.request_local(me, registry, target, event, params)
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
        registry: Arc<Registry>,
        target: Arc<Instance>,
        event: &str,
        params: String,
    ) -> Result<String, CallError> {
        let chain = self.chain.onward(&me.name, &target.name)?;
        // If this instance has a session with the target, the target sees the request as
        // coming from that session (its end of it).
        let caller = self.sessions.iter().find_map(|(_, s)| match &s.route {
            // The same instance, not just the same name: a key with a session never retires.
            Route::Instance { to, end } if Arc::ptr_eq(to, &target) => Some(*end),
            _ => None,
        });
        let rx = registry.post_event(&target, event, params, caller, chain)?;
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
        let chain = self.chain.to_wire_from(&me.name, peers.id());
        // A session this instance has with that very service on that very peer makes the
        // callee see the request as coming from that session.
        let session = target.peer.id().and_then(|p| {
            self.sessions.iter().find_map(|(_, s)| match &s.route {
                Route::Remote(sink) if s.peer == Some(p) && *s.service == *target.service => {
                    Some(sink.other_end())
                }
                _ => None,
            })
        });
        self.outbox.flush();
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

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A store for `state` with its memory limiter and CPU-deadline callback installed.
pub(crate) fn new_store(engine: &Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let clock = &mut ctx.data_mut().clock;
        match clock.tick() {
            Verdict::Exceeded => Err(wasmtime::Error::new(CpuDeadline {
                limit: clock.limit_time,
            })),
            // Still within budget: give the worker thread back for a moment, then run
            // another slice.
            Verdict::Yield(ticks) => Ok(UpdateDeadline::YieldCustom(ticks, clock.yield_now())),
        }
    });
    store.set_epoch_deadline(u64::MAX / 2);
    store
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

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_LOG_LINE {
            message.truncate(message.floor_char_boundary(MAX_LOG_LINE));
        }
        let instance = &*self.name;
        if !self.log_budget.admit(instance) {
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
        if let Some(audit) = &mut self.audit {
            if !audit.given.contains(&session) {
                audit.violations.push(format!(
                    "the guest sent a {kind:?} message on session {session}, which it was never given"
                ));
            }
            if let Some(e) = self.injected() {
                return Ok(Err(e));
            }
        }
        let Some(end) = self.sessions.get(&session) else {
            return Ok(Err(WitError::NoSuchSession));
        };
        Ok(end
            .route
            .send(&kind, payload, &mut self.outbox)
            .map_err(WitError::from))
    }

    fn close(&mut self, session: SessionId) -> wasmtime::Result<()> {
        if let Some(end) = self.sessions.remove(&session) {
            // Messages sent before the close must reach the other end before it.
            self.outbox.flush();
            end.route.disconnect();
            self.deferred.push_back(Deferred::Disconnected(session));
        }
        Ok(())
    }

    fn sessions(&mut self) -> wasmtime::Result<Vec<SessionInfo>> {
        Ok(self
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
        if let Some(e) = self.injected() {
            return Ok(Err(e));
        }
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
        if let Some(e) = self.injected() {
            return Ok(Err(e));
        }
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
        let max = self.max_timers;
        if self.timers.len() >= max {
            return Ok(Err(WitError::Denied(format!(
                "{} has its limit of {max} timers",
                self.name
            ))));
        }
        let id = self.next_timer;
        self.next_timer += 1;
        let period = Duration::from_millis(every_ms);
        self.timers.push(Timer {
            id,
            period,
            next: Instant::now() + period,
        });
        Ok(Ok(id))
    }

    fn cancel_timer(&mut self, timer: u32) -> wasmtime::Result<()> {
        self.timers.retain(|t| t.id != timer);
        Ok(())
    }

    fn instance_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.name.to_string())
    }

    fn self_info(&mut self) -> wasmtime::Result<super::bindings::InstanceInfo> {
        let (service, key) = match self.me.as_ref().and_then(|(i, _)| i.key()) {
            Some((class, key)) => (class.to_string(), Some(key.to_string())),
            None => (self.name.to_string(), None),
        };
        let host = self
            .me
            .as_ref()
            .and_then(|(_, r)| r.peers())
            .map(|p| p.id().to_string());
        Ok(super::bindings::InstanceInfo {
            name: self.name.to_string(),
            service,
            key,
            host,
        })
    }
}
