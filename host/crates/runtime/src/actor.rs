//! The instance actor: one tokio task per instance that owns its `Store` while it is awake
//! and makes every call into it, one at a time, in arrival order. It wakes the instance on
//! demand, puts it to sleep when idle, fires its timers, and handles its crashes.
//!
//! The loop polls, in this order (`biased`): control (shutdown is never stuck behind a busy
//! mailbox, as in lunatic's process loop: it refuses new work at once and then finishes what
//! was queued), the mailbox (taken in batches, so a burst costs
//! one wake-up), due timers, the idle deadline, and an autostart instance's restart.

use super::alarms::Due;
use super::bindings::ServicePre;
use super::class::{Delivered, run_length};
use super::directory::{Directory, StartActor};
use super::instance::{
    CallError, Control, Envelope, Inbox, Instance, Kind, LifecycleEvent, Status,
};
use super::instance_core::{AlarmCall, Core, Crash, WakeError, describe_error as describe};
use super::state::HostState;
use super::stats::InstanceStats;
use super::supervisor::{Supervisor, Verdict};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::time::{Instant, sleep_until};

/// Most envelopes taken from the mailbox per wake-up.
const BATCH: usize = 128;

/// Owns one instance's store and runs its lifecycle.
pub(crate) struct InstanceActor {
    me: Arc<Instance>,
    /// Its class's code.
    pre: ServicePre<HostState>,
    directory: Arc<Directory>,
    ticks: Arc<AtomicU64>,
    inbox: Inbox,
    /// The live instance, while it is awake.
    awake: Option<Core>,
    supervisor: Supervisor,
    last_activity: Instant,
    /// When to look whether the instance has been idle for `idle_timeout`.
    idle_check: Option<Instant>,
    /// It crashed since it last woke: the next wake is a restart.
    crashed: bool,
    /// A batch taken from the mailbox, flattened (only for a class that batches), each
    /// envelope with the mailbox places it holds until handled; kept for its room while
    /// small, and given back when the instance sleeps.
    flat: VecDeque<(usize, Envelope)>,
    /// Room for the messages of one `on-messages` call, kept between calls (empty).
    run: Vec<Delivered<'static>>,
    /// The kinds' indices of `run`, kept the same way.
    kinds: Vec<u16>,
}

/// How the directory starts the actor of a key it makes: with the code of the key's class,
/// found by the class's directory index.
pub(crate) fn key_starter(
    pres: std::collections::HashMap<u32, ServicePre<HostState>>,
    ticks: Arc<AtomicU64>,
) -> Box<StartActor> {
    Box::new(move |class, instance, inbox, directory| {
        let pre = pres.get(&class)?.clone();
        let actor = InstanceActor::new(instance, pre, directory, ticks.clone(), inbox);
        Some(Box::pin(actor.run()))
    })
}

impl InstanceActor {
    pub(crate) fn new(
        me: Arc<Instance>,
        pre: ServicePre<HostState>,
        directory: Arc<Directory>,
        ticks: Arc<AtomicU64>,
        inbox: Inbox,
    ) -> Self {
        let l = &me.limits;
        let supervisor = Supervisor::new(l.max_restarts, l.restart_window, l.restart_backoff);
        InstanceActor {
            me,
            pre,
            directory,
            ticks,
            inbox,
            awake: None,
            supervisor,
            last_activity: Instant::now(),
            idle_check: None,
            crashed: false,
            flat: VecDeque::new(),
            run: Vec::new(),
            kinds: Vec::new(),
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
                        let idle = self.awake.as_ref().is_some_and(Core::may_sleep);
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
                    if self.me.class.batches() {
                        self.take_batched(&mut batch).await;
                    } else {
                        for envelope in batch.drain(..) {
                            self.take(envelope).await;
                        }
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

    /// Handles a batch taken from the mailbox for a class that exports `on-messages`: each
    /// run of messages (as [`run_length`] cuts it) goes to the guest in one call, everything else
    /// one at a time as [`Self::take`] would, all in arrival order.
    async fn take_batched(&mut self, batch: &mut Vec<Envelope>) {
        let mut flat = std::mem::take(&mut self.flat);
        for envelope in batch.drain(..) {
            // Each envelope keeps its mailbox place until it is handled, as in `take`: a
            // sender cannot refill the mailbox while the batch is still being worked off.
            match envelope {
                Envelope::Batch(list) => flat.extend(list.into_iter().map(|e| (1, e))),
                envelope => flat.push_back((envelope.counted(), envelope)),
            }
        }
        while let Some((_, first)) = flat.front() {
            if !matches!(first, Envelope::Message { .. }) {
                let Some((places, envelope)) = flat.pop_front() else {
                    break;
                };
                self.me.taken_places(places);
                self.handle(envelope).await;
                self.run_deferred().await;
                continue;
            }
            let messages = flat.make_contiguous();
            let end = run_length(
                messages.iter().map_while(|(_, e)| match e {
                    Envelope::Message { payload, .. } => Some(payload.len()),
                    _ => None,
                }),
                self.me.class.max_run(),
            );
            let done = self.deliver(&messages[..end]).await;
            let places = flat.drain(..done).map(|(places, _)| places).sum();
            self.me.taken_places(places);
            self.run_deferred().await;
        }
        // Room for a usual batch is kept; a burst's (batches of batches: up to 8 192
        // envelopes) is given back, or 10 000 awake keys would each hold one.
        if flat.capacity() <= BATCH / 2 {
            self.flat = flat;
        }
    }

    /// Hands a run of messages to `on-message-block` or `on-messages` ([`Core::deliver`]); returns how many of
    /// the run are done with (all of them when the instance is not awake, or crashed: their
    /// sessions are closed with it).
    async fn deliver(&mut self, messages: &[(usize, Envelope)]) -> usize {
        let Some(a) = self.awake.as_mut() else {
            return messages.len();
        };
        let class = &self.me.class;
        let mut run = recycle(std::mem::take(&mut self.run));
        for (_, envelope) in messages {
            if let Envelope::Message { end, kind, payload } = envelope {
                run.push(Delivered {
                    session: *end,
                    kind: &class.messages[*kind as usize],
                    payload,
                });
                self.kinds.push(*kind);
            }
        }
        let result = a.deliver(&run, &self.kinds).await;
        let given = run.len();
        run.clear();
        self.kinds.clear();
        self.run = recycle(run);
        match result {
            Ok(done) => done,
            Err(crash) => {
                let cause = self.crash(crash).await;
                tracing::warn!(instance = %self.me.name, messages = given, %cause, "a batch of messages crashed the instance; those not yet handled are dropped with its sessions");
                messages.len()
            }
        }
    }

    /// The earliest of: the next timer, the idle check, an autostart instance's restart.
    fn next_deadline(&mut self) -> Option<Instant> {
        let timer = self.awake.as_ref().and_then(Core::next_timer);
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
            Some(a) => !self.me.autostart && a.may_sleep() && self.me.queued() == 0,
            None => false,
        }
    }

    /// Handles what is due; true when the actor should end (a keyed instance retired).
    async fn on_alarm(&mut self) -> bool {
        let now = Instant::now();
        if self
            .awake
            .as_ref()
            .and_then(Core::next_timer)
            .is_some_and(|t| t <= now)
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
            && self.directory.retire(&self.me)
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
                let kind = &self.me.class.messages[kind as usize];
                if let Err(crash) = a.message(end, kind, &payload).await {
                    self.crash(crash).await;
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
                let name = &self.me.class.events[event as usize];
                match a.event(caller, name, &params, chain).await {
                    Ok(answer) => {
                        let _ = reply.send(answer);
                    }
                    Err(crash) => {
                        InstanceStats::bump(&self.me.stats.errors);
                        let cause = self.crash(crash).await;
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
                let info = match a.accept(end, from, back, self.me.channel) {
                    Ok(info) => info,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                if reply.send(Ok(())).is_err() {
                    // The opener gave up waiting; it already sent us a disconnect.
                }
                if let Err(crash) = a.connected(&info, chain).await {
                    self.crash(crash).await;
                }
            }
            Envelope::Disconnect { end } => {
                let Some(a) = self.awake.as_mut() else { return };
                if let Err(crash) = a.disconnected(end).await {
                    self.crash(crash).await;
                }
            }
            Envelope::Alarm { at, attempt } => Box::pin(self.alarm(at, attempt)).await,
        }
    }

    /// Wakes the instance (a key that had retired is a new actor here) and calls
    /// `on-alarm`; a failure is told to the host's alarms, which try again later (without
    /// counting a try when it was not the guest's doing).
    async fn alarm(&mut self, at: u64, attempt: u32) {
        let me = self.me.clone();
        let due = || Due {
            name: me.name.clone(),
            at,
            attempt,
        };
        let Some(alarms) = self.directory.alarms().cloned() else {
            return;
        };
        let traps = self
            .me
            .stats
            .traps
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.ensure_awake().await {
            // No free slot in the pool is not the guest's fault; a crash in this `wakeup`,
            // or an instance that is down, is.
            let crashed_now = self
                .me
                .stats
                .traps
                .load(std::sync::atomic::Ordering::Relaxed)
                != traps;
            if crashed_now || self.me.status() == Status::Down {
                alarms.failed(due(), &e.to_string());
            } else {
                alarms.later(due(), super::alarms::now_ms() + 1000);
            }
            return;
        }
        let Some(a) = self.awake.as_mut() else { return };
        match a.alarm(at).await {
            Ok(AlarmCall::Called) => self.last_activity = Instant::now(),
            Ok(AlarmCall::Stale) => {}
            Ok(AlarmCall::Storage(why)) => alarms.failed(due(), &why),
            Err(crash) => {
                let cause = self.crash(crash).await;
                alarms.failed(due(), &cause);
            }
        }
    }

    /// Delivers the `on-connect`/`on-disconnect` calls a host call queued for this instance.
    async fn run_deferred(&mut self) {
        let Some(a) = self.awake.as_mut() else { return };
        if let Err(crash) = a.settle().await {
            self.crash(crash).await;
        }
    }

    async fn fire_timers(&mut self) {
        let due = match self.awake.as_mut() {
            Some(a) => a.due_timers(Instant::now()),
            None => return,
        };
        for id in due {
            // A timer cancelled by an earlier tick in this round is not called.
            let Some(a) = self.awake.as_mut() else { return };
            if let Err(crash) = a.timer(id).await {
                self.crash(crash).await;
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
        let state = HostState::new(self.me.clone(), self.directory.clone(), self.ticks.clone());
        let woke = Core::wake(
            &self.pre,
            &self.me.class,
            state,
            self.me.stats.clone(),
            &self.me.options_json,
        )
        .await;
        let crash = match woke {
            Ok(core) => {
                self.awake = Some(core);
                None
            }
            Err(WakeError::Instantiate(e)) => {
                // Not the guest's fault (no free slot in the pool, most likely): no crash.
                tracing::warn!(instance = %self.me.name, error = %e, "cannot instantiate");
                return Err(CallError::Unavailable(format!(
                    "cannot instantiate {}: {e}",
                    self.me.name
                )));
            }
            Err(WakeError::Refused(text)) => Some(Crash {
                export: "wakeup",
                error: wasmtime::Error::msg(format!("wakeup returned an error: {text}")),
            }),
            Err(WakeError::Crash(crash)) => Some(crash),
        };
        if let Some(crash) = crash {
            let cause = self.crash(crash).await;
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
        self.directory
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
        if let Err(crash) = a.sleep().await {
            tracing::error!(instance = %self.me.name, export = "sleep", cause = %describe(&crash.error), "trapped while going to sleep");
        }
        // The room kept for batches goes with the instance.
        self.flat = VecDeque::new();
        self.run = Vec::new();
        self.kinds = Vec::new();
        // A sleeping instance has no sessions; any left (shutdown) are closed for the other end.
        a.close_sessions();
        drop(a);
        InstanceStats::bump(&self.me.stats.sleeps);
        self.me.set_status(Status::Asleep);
        tracing::info!(instance = %self.me.name, reason, "asleep");
        self.directory
            .publish(LifecycleEvent::Slept(self.me.name.clone()));
    }

    /// Drops a crashed instance, closes its sessions for the other ends, logs the cause and
    /// applies the restart policy. Returns the one-line cause.
    async fn crash(&mut self, crash: Crash) -> String {
        let Crash { export, error } = crash;
        let cause = describe(&error);
        InstanceStats::bump(&self.me.stats.traps);
        self.crashed = true;
        if let Some(mut a) = self.awake.take() {
            a.close_sessions();
        }
        tracing::error!(instance = %self.me.name, export, %cause, "instance crashed; its sessions are closed");
        tracing::debug!(instance = %self.me.name, details = ?error, "crash details");
        self.directory.publish(LifecycleEvent::Crashed {
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
                self.directory
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
                Envelope::Alarm { at, attempt } => {
                    // Tried again later (if it has tries left): the instance may be up by then.
                    if let Some(alarms) = self.directory.alarms() {
                        let name = self.me.name.clone();
                        alarms.failed(Due { name, at, attempt }, &e.to_string());
                    }
                }
                Envelope::Message { .. } | Envelope::Disconnect { .. } | Envelope::Batch(_) => {}
            }
        }
    }
}

/// The room of an empty list of borrowed messages, for borrows of another lifetime: the
/// same allocation (collecting into a vector of a type of the same size reuses it), so a
/// batch allocates nothing once the actor has made one.
fn recycle<'a, 'b>(list: Vec<Delivered<'a>>) -> Vec<Delivered<'b>> {
    debug_assert!(list.is_empty());
    list.into_iter()
        .map(|d| Delivered {
            session: d.session,
            kind: "",
            payload: &[],
        })
        .collect()
}
