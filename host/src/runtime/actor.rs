//! The instance actor: one tokio task per instance that owns its `Store` while it is awake
//! and makes every call into it, one at a time, in arrival order. It wakes the instance on
//! demand, puts it to sleep when idle, fires its timers, and handles its crashes.
//!
//! The loop polls, in this order (`biased`): control (shutdown is never stuck behind a busy
//! mailbox, as in lunatic's process loop: it refuses new work at once and then finishes what
//! was queued), the mailbox (taken in batches, so a burst costs
//! one wake-up), due timers, the idle deadline, and an autostart instance's restart.

use super::bindings::{Service, SessionInfo};
use super::instance::{
    CallError, Control, Envelope, Inbox, Instance, Kind, LifecycleEvent, PeerInfo, Registry,
    SessionId, Status,
};
use super::session::{Route, SessionEnd};
use super::state::{CpuDeadline, Deferred, HostState, MemoryLimit, new_store};
use super::stats::InstanceStats;
use super::supervisor::{Supervisor, Verdict};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::time::{Instant, sleep_until};
use wasmtime::Store;

/// Most envelopes taken from the mailbox per wake-up.
const BATCH: usize = 128;

/// The awake part: a live wasm instance and its store.
struct Awake {
    store: Store<HostState>,
    service: Service,
    /// The instance's counters, held here so that `guest_call!` reaches them directly.
    stats: Arc<InstanceStats>,
}

/// An error text from `on-event` is cut to this many bytes (it is for people, not data).
const MAX_ERROR_TEXT: usize = 4096;

/// Owns one instance's store and runs its lifecycle.
pub(crate) struct InstanceActor {
    me: Arc<Instance>,
    registry: Arc<Registry>,
    ticks: Arc<AtomicU64>,
    inbox: Inbox,
    awake: Option<Awake>,
    supervisor: Supervisor,
    last_activity: Instant,
    /// When to look whether the instance has been idle for `idle_timeout`.
    idle_check: Option<Instant>,
    /// It crashed since it last woke: the next wake is a restart.
    crashed: bool,
}

/// Runs an export call on `$a.service` with a fresh CPU budget, then flushes its outbox.
macro_rules! guest_call {
    ($a:expr, $method:ident $(, $arg:expr)*) => {{
        let a = &mut $a;
        InstanceStats::bump(&a.stats.calls);
        let first_deadline = a.store.data_mut().clock.start();
        a.store.set_epoch_deadline(first_deadline);
        let r = a.service.wasmwire_service_lifecycle().$method(&mut a.store $(, $arg)*).await;
        // What the call sent goes out now, in one batch per receiver wake-up.
        a.store.data_mut().outbox.flush();
        r
    }};
}

impl InstanceActor {
    pub(crate) fn new(
        me: Arc<Instance>,
        registry: Arc<Registry>,
        ticks: Arc<AtomicU64>,
        inbox: Inbox,
    ) -> Self {
        let l = &me.limits;
        let supervisor = Supervisor::new(l.max_restarts, l.restart_window, l.restart_backoff);
        InstanceActor {
            me,
            registry,
            ticks,
            inbox,
            awake: None,
            supervisor,
            last_activity: Instant::now(),
            idle_check: None,
            crashed: false,
        }
    }

    /// Runs until shutdown (or until every sender is gone).
    pub(crate) async fn run(mut self) {
        if self.me.autostart {
            let _ = self.ensure_awake().await;
        }
        // Grows to the largest batch this actor has taken: reserving `BATCH` envelopes up
        // front would hold 15 KiB in every awake instance, most of which never see a burst.
        let mut batch = Vec::new();
        // One timer for timers, idle and restart deadlines, re-armed only when the earliest
        // deadline moves: registering a timer per loop would cost more than a message.
        let alarm = sleep_until(Instant::now());
        tokio::pin!(alarm);
        let mut armed: Option<Instant> = None;
        loop {
            self.run_deferred().await;
            let due = self.next_deadline();
            if due != armed {
                if let Some(t) = due {
                    alarm.as_mut().reset(t);
                }
                armed = due;
            }
            tokio::select! {
                biased;
                c = self.inbox.control.recv() => match c {
                    Some(Control::Shutdown { done }) => {
                        // Refuse new work, then finish what was accepted: every message
                        // queued is delivered and every request queued answered before the
                        // instance sleeps (`Node::shutdown` bounds how long this may take).
                        self.me.close_admission();
                        while let Ok(envelope) = self.inbox.mailbox.try_recv() {
                            self.take(envelope).await;
                        }
                        self.put_to_sleep("shutdown").await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Control::Wake { reply }) => {
                        let _ = reply.send(self.ensure_awake().await);
                    }
                    Some(Control::Sleep { reply }) => {
                        let idle = self.awake.as_ref().is_some_and(|a| a.store.data().sessions.is_empty());
                        if idle {
                            self.put_to_sleep("asked").await;
                        }
                        let _ = reply.send(idle);
                    }
                    None => return,
                },
                n = self.inbox.mailbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    for envelope in batch.drain(..) {
                        self.take(envelope).await;
                    }
                    self.last_activity = Instant::now();
                }
                _ = &mut alarm, if armed.is_some() => {
                    armed = None;
                    if self.on_alarm().await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one envelope taken from the mailbox (each of a batch in turn).
    async fn take(&mut self, envelope: Envelope) {
        self.me.taken(&envelope);
        if let Envelope::Batch(list) = envelope {
            for envelope in list {
                self.handle(envelope).await;
                self.run_deferred().await;
            }
        } else {
            self.handle(envelope).await;
            self.run_deferred().await;
        }
    }

    /// The earliest of: the next timer, the idle check, an autostart instance's restart.
    fn next_deadline(&mut self) -> Option<Instant> {
        let timer = self
            .awake
            .as_ref()
            .and_then(|a| a.store.data().timers.iter().map(|t| t.next).min());
        // The idle check is armed from the last activity and left alone while work
        // continues; when it fires it looks again (see `on_alarm`).
        if self.idle_eligible() {
            self.idle_check
                .get_or_insert(self.last_activity + self.me.limits.idle_timeout);
        } else {
            self.idle_check = None;
        }
        [
            timer,
            self.idle_check,
            self.restart_deadline(),
            self.retire_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When an asleep keyed instance leaves its class's table and its actor ends: once it
    /// has been idle for `idle_timeout` (at once after an idle sleep; a key made by a
    /// lookup that never sent anything waits that long too) and its last crash has left
    /// the restart window, so that back-off and `max_restarts` hold for keys as well. A
    /// key that is down stays, and counts against `max_instances`.
    fn retire_deadline(&self) -> Option<Instant> {
        if !matches!(self.me.kind, Kind::Key { .. })
            || self.awake.is_some()
            || self.me.status() == Status::Down
        {
            return None;
        }
        let idle = self.last_activity + self.me.limits.idle_timeout;
        Some(self.supervisor.quiet_at().map_or(idle, |q| q.max(idle)))
    }

    /// Whether the instance is one that sleeps when idle and has nothing keeping it awake.
    fn idle_eligible(&self) -> bool {
        match &self.awake {
            Some(a) => {
                !self.me.autostart && a.store.data().sessions.is_empty() && self.me.queued() == 0
            }
            None => false,
        }
    }

    /// Handles what is due; true when the actor should end (a keyed instance retired).
    async fn on_alarm(&mut self) -> bool {
        let now = Instant::now();
        if self
            .awake
            .as_ref()
            .is_some_and(|a| a.store.data().timers.iter().any(|t| t.next <= now))
        {
            self.fire_timers().await;
        }
        if self.idle_check.is_some_and(|t| t <= now) {
            self.idle_check = None;
            if self.idle_eligible() && now >= self.last_activity + self.me.limits.idle_timeout {
                self.put_to_sleep("idle").await;
            }
        }
        if self.restart_deadline().is_some_and(|t| t <= now) {
            let _ = self.ensure_awake().await;
        }
        self.retire_deadline().is_some_and(|t| t <= now)
            && self.inbox.mailbox.is_empty()
            && self.me.try_retire(&self.registry)
    }

    /// When a crashed autostart instance starts again by itself.
    fn restart_deadline(&self) -> Option<Instant> {
        if !self.me.autostart || self.awake.is_some() || self.me.status() == Status::Down {
            return None;
        }
        Some(self.supervisor.not_before.unwrap_or_else(Instant::now))
    }

    async fn handle(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Batch(list) => {
                // Batches are flattened by the run loop; one arriving here is handled the same.
                for envelope in list {
                    Box::pin(self.handle(envelope)).await;
                }
            }
            Envelope::Message { end, kind, payload } => {
                // Messages only exist on open sessions, and sessions only while awake: a
                // message for a closed session (or a crashed instance) is dropped.
                let Some(a) = self.awake.as_mut() else { return };
                if !a.store.data().sessions.contains_key(&end) {
                    return;
                }
                let kind = &self.me.class.messages[kind as usize];
                if let Err(e) = guest_call!(*a, call_on_message, end, kind, &payload) {
                    self.crash("on-message", e).await;
                }
            }
            Envelope::Event {
                caller,
                event,
                params,
                chain,
                reply,
            } => {
                if let Err(e) = self.ensure_awake().await {
                    InstanceStats::bump(&self.me.stats.errors);
                    let _ = reply.send(Err(e));
                    return;
                }
                let Some(a) = self.awake.as_mut() else { return };
                a.store.data_mut().chain = chain;
                let name = &self.me.class.events[event as usize];
                let result = guest_call!(*a, call_on_event, caller, name, &params);
                a.store.data_mut().chain.clear();
                if !matches!(result, Ok(Ok(ref json)) if json.len() as u64 <= self.me.limits.max_message)
                {
                    InstanceStats::bump(&self.me.stats.errors);
                }
                // A reply is a message back: bounded by the same `max_message`, so a
                // guest cannot push its whole memory onto the caller (or the wire).
                let max = self.me.limits.max_message;
                match result {
                    Ok(Ok(json)) if json.len() as u64 > max => {
                        tracing::warn!(
                            instance = %self.me.name,
                            "on-event {name} replied {} bytes, over max_message ({max}); the caller gets an error",
                            json.len()
                        );
                        let _ = reply.send(Err(CallError::Failed(format!(
                            "{} replied {} bytes to {name}, over its max_message of {max}",
                            self.me.name,
                            json.len()
                        ))));
                    }
                    Ok(Ok(json)) => {
                        let _ = reply.send(Ok(json));
                    }
                    Ok(Err(mut text)) => {
                        if text.len() > MAX_ERROR_TEXT {
                            let n = text.len();
                            let mut cut = MAX_ERROR_TEXT;
                            while !text.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            text.truncate(cut);
                            text.push_str(&format!("… ({n} bytes in all)"));
                        }
                        let _ = reply.send(Err(CallError::Failed(text)));
                    }
                    Err(e) => {
                        let cause = self.crash("on-event", e).await;
                        let _ = reply.send(Err(CallError::Unavailable(format!(
                            "{} crashed: {cause}",
                            self.me.name
                        ))));
                    }
                }
            }
            Envelope::Connect {
                end,
                from,
                back,
                chain,
                reply,
            } => {
                if let Err(e) = self.ensure_awake().await {
                    let _ = reply.send(Err(e));
                    return;
                }
                let Some(a) = self.awake.as_mut() else { return };
                let max = self.me.limits.max_sessions as usize;
                if a.store.data().sessions.len() >= max {
                    let _ = reply.send(Err(CallError::Denied(format!(
                        "{} has its limit of {max} sessions open",
                        self.me.name
                    ))));
                    return;
                }
                let PeerInfo { service, peer } = from;
                let info = SessionInfo {
                    id: end,
                    peer: peer.as_deref().map(str::to_string),
                    service: service.to_string(),
                    channel: self.me.channel,
                };
                a.store.data_mut().sessions.insert(
                    end,
                    SessionEnd {
                        route: back,
                        service,
                        peer,
                        channel: self.me.channel,
                    },
                );
                if reply.send(Ok(())).is_err() {
                    // The opener gave up waiting; it already sent us a disconnect.
                }
                a.store.data_mut().chain = chain;
                let r = guest_call!(*a, call_on_connect, &info);
                a.store.data_mut().chain.clear();
                if let Err(e) = r {
                    self.crash("on-connect", e).await;
                }
            }
            Envelope::Disconnect { end } => {
                let Some(a) = self.awake.as_mut() else { return };
                if a.store.data_mut().sessions.remove(&end).is_none() {
                    return;
                }
                if let Err(e) = guest_call!(*a, call_on_disconnect, end) {
                    self.crash("on-disconnect", e).await;
                }
            }
        }
    }

    /// Delivers the `on-connect`/`on-disconnect` calls a host call queued for this instance.
    async fn run_deferred(&mut self) {
        loop {
            let Some(a) = self.awake.as_mut() else { return };
            let Some(d) = a.store.data_mut().deferred.pop_front() else {
                return;
            };
            let (export, r) = match d {
                Deferred::Connected(info) => {
                    ("on-connect", guest_call!(*a, call_on_connect, &info))
                }
                Deferred::Disconnected(id) => {
                    ("on-disconnect", guest_call!(*a, call_on_disconnect, id))
                }
            };
            if let Err(e) = r {
                self.crash(export, e).await;
            }
        }
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = match self.awake.as_mut() {
            Some(a) => a
                .store
                .data_mut()
                .timers
                .iter_mut()
                .filter(|t| t.next <= now)
                .map(|t| {
                    // Ticks missed while the instance was busy are skipped, not queued.
                    t.next = now + t.period;
                    t.id
                })
                .collect(),
            None => return,
        };
        for id in due {
            let Some(a) = self.awake.as_mut() else { return };
            if !a.store.data().timers.iter().any(|t| t.id == id) {
                continue; // cancelled by an earlier tick in this round
            }
            if let Err(e) = guest_call!(*a, call_on_timer, id) {
                self.crash("on-timer", e).await;
                return;
            }
            self.run_deferred().await;
        }
    }

    /// Wakes the instance if it is asleep (see [`Self::wake`]).
    async fn ensure_awake(&mut self) -> Result<(), CallError> {
        if self.awake.is_some() {
            return Ok(());
        }
        // Boxed, like `put_to_sleep`'s body: the instantiate and `wakeup` futures are
        // large and cold, and inline they would sit in every actor's task for its life
        // (the task is allocated at the size of its largest await).
        Box::pin(self.wake()).await
    }

    /// Instantiates from the pre-linked component, then calls `wakeup(options)`. Waits out
    /// a restart back-off first.
    async fn wake(&mut self) -> Result<(), CallError> {
        if self.me.status() == Status::Down {
            return Err(self.me.down_error());
        }
        if let Some(t) = self.supervisor.not_before.take() {
            sleep_until(t).await;
        }
        let started = std::time::Instant::now();
        let state = HostState::new(self.me.clone(), self.registry.clone(), self.ticks.clone());
        let mut store = new_store(self.me.class.pre.engine(), state);
        let service = match self.me.class.pre.instantiate_async(&mut store).await {
            Ok(s) => s,
            Err(e) => {
                // Not the guest's fault (no free slot in the pool, most likely): no crash.
                tracing::warn!(instance = %self.me.name, error = %e, "cannot instantiate");
                return Err(CallError::Unavailable(format!(
                    "cannot instantiate {}: {e}",
                    self.me.name
                )));
            }
        };
        let mut a = Awake {
            store,
            service,
            stats: self.me.stats.clone(),
        };
        let options = self.me.options_json.clone();
        let r = guest_call!(a, call_wakeup, &options);
        self.awake = Some(a);
        let failure = match r {
            Ok(Ok(())) => None,
            Ok(Err(text)) => Some(wasmtime::Error::msg(format!(
                "wakeup returned an error: {text}"
            ))),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            let cause = self.crash("wakeup", e).await;
            return Err(CallError::Unavailable(format!(
                "{} failed to wake: {cause}",
                self.me.name
            )));
        }
        self.me.set_last_wake(started.elapsed());
        InstanceStats::bump(&self.me.stats.wakes);
        if std::mem::take(&mut self.crashed) {
            InstanceStats::bump(&self.me.stats.restarts);
        }
        self.me.set_status(Status::Awake);
        self.last_activity = Instant::now();
        tracing::info!(instance = %self.me.name, "awake");
        self.registry
            .publish(LifecycleEvent::Woke(self.me.name.clone()));
        Ok(())
    }

    /// Calls `sleep()` and drops the instance.
    async fn put_to_sleep(&mut self, reason: &'static str) {
        if self.awake.is_some() {
            Box::pin(self.sleep(reason)).await;
        }
    }

    /// [`Self::put_to_sleep`]'s body, boxed there (cold).
    async fn sleep(&mut self, reason: &'static str) {
        let Some(mut a) = self.awake.take() else {
            return;
        };
        if let Err(e) = guest_call!(a, call_sleep) {
            tracing::error!(instance = %self.me.name, export = "sleep", cause = %describe(&e), "trapped while going to sleep");
        }
        // A sleeping instance has no sessions; any left (shutdown) are closed for the other end.
        for (_, end) in a.store.data_mut().sessions.drain() {
            end.route.disconnect();
        }
        drop(a);
        InstanceStats::bump(&self.me.stats.sleeps);
        self.me.set_status(Status::Asleep);
        tracing::info!(instance = %self.me.name, reason, "asleep");
        self.registry
            .publish(LifecycleEvent::Slept(self.me.name.clone()));
    }

    /// Drops a crashed instance, closes its sessions for the other ends, logs the cause and
    /// applies the restart policy. Returns the one-line cause.
    async fn crash(&mut self, export: &'static str, error: wasmtime::Error) -> String {
        let cause = describe(&error);
        InstanceStats::bump(&self.me.stats.traps);
        self.crashed = true;
        if let Some(mut a) = self.awake.take() {
            for (_, end) in a.store.data_mut().sessions.drain() {
                end.route.disconnect();
            }
        }
        tracing::error!(instance = %self.me.name, export, %cause, "instance crashed; its sessions are closed");
        tracing::debug!(instance = %self.me.name, details = ?error, "crash details");
        self.registry.publish(LifecycleEvent::Crashed {
            instance: self.me.name.clone(),
            export,
            cause: cause.clone(),
        });
        match self.supervisor.crashed(Instant::now()) {
            Verdict::Restart { after } => {
                self.me.set_status(Status::Asleep);
                tracing::info!(instance = %self.me.name, ?after, "will restart on next demand");
            }
            Verdict::GiveUp { crashes } => {
                self.me.set_status(Status::Down);
                tracing::error!(
                    instance = %self.me.name,
                    crashes,
                    window = ?self.me.limits.restart_window,
                    "instance is down: it crashed too often and will not be restarted"
                );
                self.registry
                    .publish(LifecycleEvent::Down(self.me.name.clone()));
                self.refuse_queued();
            }
        }
        cause
    }

    /// Answers everything waiting in the mailbox of a down instance.
    fn refuse_queued(&mut self) {
        while let Ok(envelope) = self.inbox.mailbox.try_recv() {
            self.me.taken(&envelope);
            let e = self.me.down_error();
            match envelope {
                Envelope::Event { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Envelope::Connect { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Envelope::Message { .. } | Envelope::Disconnect { .. } | Envelope::Batch(_) => {}
            }
        }
    }
}

/// One line saying why a call failed: the limit hit, or the trap and where it happened.
pub fn describe(error: &wasmtime::Error) -> String {
    if let Some(d) = error.downcast_ref::<CpuDeadline>() {
        return d.to_string();
    }
    if let Some(m) = error.downcast_ref::<MemoryLimit>() {
        return m.to_string();
    }
    let mut s = match error.downcast_ref::<wasmtime::Trap>() {
        Some(t) => format!("trap: {t}"),
        None => error.to_string(),
    };
    if let Some(bt) = error.downcast_ref::<wasmtime::WasmBacktrace>()
        && let Some(f) = bt.frames().iter().find_map(|f| f.func_name())
    {
        s.push_str(&format!(" (in {f})"));
    }
    s
}

/// Opens a session from a client to `instance`; the client hears from it on `to`. Returns
/// the instance that accepted (a keyed instance may have been made again in between) and
/// its end.
pub(crate) async fn open_client_session(
    instance: &Arc<Instance>,
    registry: &Arc<Registry>,
    client: &str,
    to: tokio::sync::mpsc::Sender<super::session::ClientEvent>,
) -> Result<(Arc<Instance>, SessionId), CallError> {
    let end = registry.next_session();
    let (reply, rx) = tokio::sync::oneshot::channel();
    let instance = registry.reserve_on(instance)?;
    instance.deliver(Envelope::Connect {
        end,
        from: PeerInfo {
            service: Arc::from(client),
            peer: None,
        },
        // A client takes what the service itself would take.
        back: Route::Client {
            to,
            max_message: instance.limits.max_message,
        },
        chain: Default::default(),
        reply,
    });
    match tokio::time::timeout(instance.limits.request_timeout, rx).await {
        Err(_) => {
            let _ = instance.post(Envelope::Disconnect { end });
            Err(CallError::Timeout)
        }
        Ok(Err(_)) => Err(CallError::Closed),
        Ok(Ok(r)) => r.map(|()| (instance, end)),
    }
}
