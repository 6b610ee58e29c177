//! One awake instance of a service — its `Store` and its exports — and the rules of calling
//! into it, which every driver keeps because they are written only here: the actor in a
//! running host, and `wasmwire fuzz`, which drives the same core with generated steps so
//! that it finds what the host would do.
//!
//! - Each export call gets a fresh CPU budget; what the call sent goes out right after it.
//! - Each export call is a transaction: its writes become durable after it returns and
//!   before anything it caused after its first write (messages, closes, its reply) leaves;
//!   a trap drops them.
//! - `on-connect`/`on-disconnect` for sessions a host call opened or closed come after that
//!   call, never inside it: [`Core::settle`] runs them.
//! - A session is accepted only below the instance's `max_sessions`
//!   ([`ServiceCtx::session_room`](super::service_ctx::ServiceCtx::session_room), the same rule its own `connect` meets).
//! - A message reaches the guest only on a session open at this end; an event's reply over
//!   `max_message` becomes an error for the caller.
//! - A timer fires only while set; the instance may sleep only without sessions.
//!
//! A call that traps or hits a limit returns a [`Crash`]: the instance cannot be entered
//! again, and the driver decides what follows (the actor's supervisor, the fuzzer's
//! finding).

use super::alarms::{self, BUCKET as ALARMS};
use super::bindings::{Description, Service, ServicePre, SessionInfo};
use super::class::{Block, Class, Delivered};
use super::instance::{CallError, Chain, PeerInfo, SessionId};
use super::service_ctx::Deferred;
use super::session::{Route, SessionEnd};
use super::state::{CpuDeadline, HostState, MemoryLimit, new_store};
use super::stats::InstanceStats;
use std::sync::Arc;
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime::component::{Func, TypedFunc};
use wasmwire_wire::PeerId;

/// An error text from `on-event` is cut to this many bytes (it is for people, not data).
const MAX_ERROR_TEXT: usize = 4096;

/// A call into the guest trapped or hit a limit: the instance is dead.
pub(crate) struct Crash {
    /// The export that was running.
    pub export: &'static str,
    /// The trap or limit.
    pub error: wasmtime::Error,
}

/// What became of an alarm delivered to an awake instance.
pub(crate) enum AlarmCall {
    /// `on-alarm` ran and returned; the alarm is gone (or replaced by the one it set).
    Called,
    /// The stored alarm no longer says that time (moved or cancelled since): nothing to do.
    Stale,
    /// The stored alarm could not be read: not called, to be tried again.
    Storage(String),
}

/// Why an instance could not be woken.
pub(crate) enum WakeError {
    /// No instance could be made (no free slot in the pool, most likely): not the guest's
    /// fault.
    Instantiate(wasmtime::Error),
    /// `wakeup` returned this error for the options it was given.
    Refused(String),
    /// `wakeup` trapped.
    Crash(Crash),
}

/// A live wasm instance of a service and its store.
pub(crate) struct Core {
    store: Store<HostState>,
    service: Service,
    /// Its `on-alarm`, when its class exports one.
    on_alarm: Option<TypedFunc<(u64,), ()>>,
    /// Its `on-messages`, when its class exports one (typed at each call: the batch's
    /// borrow lives only that long; checked once, when the class was loaded).
    on_messages: Option<Func>,
    /// Its `on-message-block`, when its class exports one (preferred to `on-messages`).
    on_message_block: Option<Func>,
    /// The instance's counters, held here so that every call reaches them directly.
    stats: Arc<InstanceStats>,
}

/// Runs an export call with a fresh CPU budget; then its writes are made durable and what
/// it sent goes out ([`Core::finish`]), or, if it trapped, its writes are dropped
/// ([`Core::abandon`]).
macro_rules! call {
    ($core:expr, $export:literal, $method:ident $(, $arg:expr)*) => {
        call!($core, $export, |c| c.service.wasmwire_service_lifecycle().$method(&mut c.store $(, $arg)*))
    };
    ($core:expr, $export:literal, |$c:ident| $call:expr) => {
        call!($core, $export, shares 1, |$c| $call)
    };
    // A call that delivers `shares` messages at once, allowed `call_timeout` for each.
    ($core:expr, $export:literal, shares $shares:expr, |$c:ident| $call:expr) => {{
        let $c = &mut $core;
        InstanceStats::bump(&$c.stats.calls);
        let first_deadline = $c.store.data_mut().clock.start_for($shares);
        $c.store.set_epoch_deadline(first_deadline);
        let r = $call.await;
        match r {
            Ok(v) => $c.finish().await.map(|()| v),
            Err(error) => {
                $c.abandon();
                Err(error)
            }
        }
        .map_err(|error| Crash { export: $export, error })
    }};
}

impl Core {
    /// Instantiates `pre` with `state` and calls `wakeup(options)`. What `wakeup` queued
    /// (`on-connect` of a session it opened) is the driver's to [`Core::settle`] next, so
    /// that a trap there is a crash of an awake instance, not a failed wake.
    pub(crate) async fn wake(
        pre: &ServicePre<HostState>,
        class: &Class,
        state: HostState,
        stats: Arc<InstanceStats>,
        options: &str,
    ) -> Result<Core, WakeError> {
        let mut store = new_store(pre.engine(), state);
        let instance = pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(WakeError::Instantiate)?;
        let service = class
            .exports
            .load(&mut store, &instance)
            .map_err(WakeError::Instantiate)?;
        let on_alarm = match &class.on_alarm {
            Some(i) => Some(
                instance
                    .get_typed_func::<(u64,), ()>(&mut store, i)
                    .map_err(WakeError::Instantiate)?,
            ),
            None => None,
        };
        // A batch export the class has, found in this instance (typed at each call).
        let mut batch_export = |index: &Option<_>, name: &str| {
            index
                .as_ref()
                .map(|i| {
                    instance
                        .get_func(&mut store, i)
                        .ok_or_else(|| wasmtime::format_err!("{name} is missing"))
                        .map_err(WakeError::Instantiate)
                })
                .transpose()
        };
        let on_messages = batch_export(&class.on_messages, "on-messages")?;
        let on_message_block = batch_export(&class.on_message_block, "on-message-block")?;
        let mut core = Core {
            store,
            service,
            on_alarm,
            on_messages,
            on_message_block,
            stats,
        };
        match call!(core, "wakeup", call_wakeup, options) {
            Ok(Ok(())) => Ok(core),
            Ok(Err(text)) => Err(WakeError::Refused(text)),
            Err(crash) => Err(WakeError::Crash(crash)),
        }
    }

    /// After a call returned: its writes made durable (shared with other instances' in one
    /// commit), then what it sent released, in one batch per receiver wake-up. A call that
    /// wrote nothing goes straight to the release. A commit that fails is a crash: the
    /// writes are gone, and what the call held never leaves.
    async fn finish(&mut self) -> Result<(), wasmtime::Error> {
        let state = self.store.data_mut();
        if state.service.firing.is_some() {
            state.service.alarm_fired(&mut state.txn);
        }
        state.txn.end_call();
        if state.txn.is_dirty() {
            let commit = state.txn.commit();
            if let Err(e) = commit.await {
                let service = &mut self.store.data_mut().service;
                service.alarm_change = None;
                service.outbox.discard_held();
                service.outbox.end_call();
                return Err(wasmtime::Error::new(e));
            }
            self.store.data_mut().service.alarm_committed();
        }
        let outbox = &mut self.store.data_mut().service.outbox;
        outbox.release();
        outbox.end_call();
        Ok(())
    }

    /// After a call trapped: its writes dropped, what it held after them dropped; what it
    /// sent before its first write goes out, as before there were writes.
    fn abandon(&mut self) {
        let state = self.store.data_mut();
        state.txn.rollback();
        state.txn.end_call();
        state.service.alarm_change = None;
        state.service.firing = None;
        state.service.outbox.discard_held();
        state.service.outbox.end_call();
    }

    /// The host state inside the store.
    pub(crate) fn state(&self) -> &HostState {
        self.store.data()
    }

    /// The host state inside the store, to change.
    pub(crate) fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Whether it may go to sleep now: it has no open session.
    pub(crate) fn may_sleep(&self) -> bool {
        self.state().service.sessions.is_empty()
    }

    /// Runs the `on-connect`/`on-disconnect` calls that host calls queued, in order.
    pub(crate) async fn settle(&mut self) -> Result<(), Crash> {
        while let Some(d) = self.store.data_mut().service.deferred.pop_front() {
            match d {
                Deferred::Connected(info) => call!(*self, "on-connect", call_on_connect, &info)?,
                Deferred::Disconnected(id) => {
                    call!(*self, "on-disconnect", call_on_disconnect, id)?
                }
            }
        }
        Ok(())
    }

    /// Calls `on-alarm(at)` if the instance's stored alarm still says `at` (a call since it
    /// was queued may have moved or cancelled it). The alarm is deleted with the call's
    /// writes when it returns — unless it set or cancelled the alarm itself — so a trap
    /// leaves it in place, even after a `connect` or `request` committed part of the call.
    pub(crate) async fn alarm(&mut self, at: u64) -> Result<AlarmCall, Crash> {
        let Some(on_alarm) = self.on_alarm else {
            return Ok(AlarmCall::Stale);
        };
        let state = self.store.data_mut();
        let stored = match state.txn.get(ALARMS, &state.service.name) {
            Ok(v) => v.as_deref().and_then(alarms::decode),
            Err(e) => return Ok(AlarmCall::Storage(e.to_string())),
        };
        if stored != Some(at) {
            return Ok(AlarmCall::Stale);
        }
        state.service.firing = Some(at);
        call!(*self, "on-alarm", |c| on_alarm
            .call_async(&mut c.store, (at,)))?;
        Ok(AlarmCall::Called)
    }

    /// Opens this end of a session whose other end is `from`, reached through `back`; the
    /// guest hears of it with [`Core::connected`].
    pub(crate) fn accept(
        &mut self,
        end: SessionId,
        from: PeerInfo,
        back: Route,
        channel: u16,
    ) -> Result<SessionInfo, CallError> {
        let state = &mut self.store.data_mut().service;
        state.session_room()?;
        let PeerInfo { service, peer } = from;
        let info = SessionInfo {
            id: end,
            peer: peer.as_deref().map(PeerId::to_string),
            service: service.to_string(),
            channel,
        };
        state.sessions.insert(
            end,
            SessionEnd {
                route: back,
                service,
                peer: peer.as_deref().copied(),
                channel,
            },
        );
        Ok(info)
    }

    /// `on-connect` for a session accepted, with the chain of whoever waits on the open.
    pub(crate) async fn connected(
        &mut self,
        info: &SessionInfo,
        chain: Chain,
    ) -> Result<(), Crash> {
        self.store.data_mut().service.chain = chain;
        let r = call!(*self, "on-connect", call_on_connect, info);
        self.store.data_mut().service.chain.clear();
        r
    }

    /// The message of declared kind number `kind` on this end `end`; a message for a session
    /// not open here (closed, or of an earlier life) is dropped: `Ok(false)`.
    pub(crate) async fn message(
        &mut self,
        end: SessionId,
        kind: &str,
        payload: &[u8],
    ) -> Result<bool, Crash> {
        if !self.state().service.sessions.contains_key(&end) {
            return Ok(false);
        }
        call!(*self, "on-message", call_on_message, end, kind, payload)?;
        Ok(true)
    }

    /// Whether session `end` is open at this end: a message for one that is not (closed,
    /// or of an earlier life) is dropped before the guest.
    #[inline]
    pub(crate) fn is_open(&self, end: SessionId) -> bool {
        self.state().service.sessions.contains_key(&end)
    }

    /// Hands the messages of `run` (in arrival order, cut by `class::run_length`; `kinds[i]` the
    /// index of message `i`'s kind) up to the first on a session not open here to
    /// `on-message-block` or `on-messages`; returns how many of `run` are done with: those
    /// the guest handled, or the first alone, dropped, when it is on a session not open
    /// here (as [`Core::message`] drops it). The driver settles what the call queued and
    /// hands the rest again.
    pub(crate) async fn deliver(
        &mut self,
        run: &[Delivered<'_>],
        kinds: &[u16],
    ) -> Result<usize, Crash> {
        let open = run.iter().take_while(|m| self.is_open(m.session)).count();
        if open == 0 {
            return Ok(run.len().min(1));
        }
        self.messages(&run[..open], kinds).await
    }

    /// Hands `batch` (messages on sessions open here, in order; not empty) to
    /// `on-message-block`, or else `on-messages`, in one call, allowed `call_timeout` for
    /// each; returns how many the guest handled (at least one: a guest that says none
    /// handled the first, which it was given).
    async fn messages(&mut self, batch: &[Delivered<'_>], kinds: &[u16]) -> Result<usize, Crash> {
        let shares = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let (taken,) = if let Some(func) = self.on_message_block {
            // SAFETY: `Runtime::load` checked that the class's `on-message-block` has this
            // type, and this instance is of that class.
            let typed = unsafe { TypedFunc::<(&Block,), (u32,)>::new_unchecked(func) };
            let block = Block::of(batch, kinds);
            call!(*self, "on-message-block", shares shares, |c| typed
                .call_async(&mut c.store, (&block,)))?
        } else if let Some(func) = self.on_messages {
            // SAFETY: as above, for `on-messages`.
            let typed = unsafe { TypedFunc::<(&[Delivered<'_>],), (u32,)>::new_unchecked(func) };
            call!(*self, "on-messages", shares shares, |c| typed
                .call_async(&mut c.store, (batch,)))?
        } else {
            // (The actor batches only for a class that exports one of them.)
            return Ok(batch.len());
        };
        Ok((taken as usize).clamp(1, batch.len()))
    }

    /// The event `name` with its parameters, and the reply its caller gets: the guest's,
    /// or an error when the guest failed it or replied more than `max_message`.
    pub(crate) async fn event(
        &mut self,
        caller: Option<SessionId>,
        name: &str,
        params: &str,
        chain: Chain,
    ) -> Result<Result<String, CallError>, Crash> {
        self.store.data_mut().service.chain = chain;
        let result = call!(*self, "on-event", call_on_event, caller, name, params);
        self.store.data_mut().service.chain.clear();
        let me = &self.state().service.name;
        // A reply is a message back: bounded by the same `max_message`, so a guest cannot
        // push its whole memory onto the caller (or the wire).
        let max = self.state().service.max_message;
        let reply = match result? {
            Ok(json) if json.len() as u64 > max => {
                // Said once per reply in a host; a fuzzing run (audited) reports findings,
                // not log lines.
                if self.state().audit.is_none() {
                    tracing::warn!(
                        instance = %me,
                        "on-event {name} replied {} bytes, over max_message ({max}); the caller gets an error",
                        json.len()
                    );
                }
                Err(CallError::Failed(format!(
                    "{me} replied {} bytes to {name}, over its max_message of {max}",
                    json.len()
                )))
            }
            Ok(json) => Ok(json),
            Err(mut text) => {
                if text.len() > MAX_ERROR_TEXT {
                    let n = text.len();
                    text.truncate(text.floor_char_boundary(MAX_ERROR_TEXT));
                    text.push_str(&format!("… ({n} bytes in all)"));
                }
                Err(CallError::Failed(text))
            }
        };
        if reply.is_err() {
            InstanceStats::bump(&self.stats.errors);
        }
        Ok(reply)
    }

    /// The other end closed session `end`: `on-disconnect`, if it was open here.
    pub(crate) async fn disconnected(&mut self, end: SessionId) -> Result<(), Crash> {
        if self
            .store
            .data_mut()
            .service
            .sessions
            .remove(&end)
            .is_none()
        {
            return Ok(());
        }
        call!(*self, "on-disconnect", call_on_disconnect, end)
    }

    /// The timers due at `now`, each moved to its next period (ticks missed while the
    /// instance was busy are skipped, not queued).
    pub(crate) fn due_timers(&mut self, now: Instant) -> Vec<u32> {
        self.store
            .data_mut()
            .service
            .timers
            .iter_mut()
            .filter(|t| t.next <= now)
            .map(|t| {
                t.next = now + t.period;
                t.id
            })
            .collect()
    }

    /// When the next timer is due.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.state().service.timers.iter().map(|t| t.next).min()
    }

    /// `on-timer` for timer `id`, if it is still set: `Ok(false)` if it is not.
    pub(crate) async fn timer(&mut self, id: u32) -> Result<bool, Crash> {
        if !self.state().service.timers.iter().any(|t| t.id == id) {
            return Ok(false);
        }
        call!(*self, "on-timer", call_on_timer, id)?;
        Ok(true)
    }

    /// `describe` again.
    pub(crate) async fn describe(&mut self) -> Result<Description, Crash> {
        call!(*self, "describe", call_describe)
    }

    /// `sleep()`.
    pub(crate) async fn sleep(&mut self) -> Result<(), Crash> {
        call!(*self, "sleep", call_sleep)
    }

    /// Closes every session for its other end (the instance is going to sleep or crashed).
    pub(crate) fn close_sessions(&mut self) {
        for (_, end) in self.store.data_mut().service.sessions.drain() {
            end.route.disconnect();
        }
    }
}

impl Drop for Core {
    /// An instance that is gone — asleep, crashed, or never fully awake — has no sessions:
    /// every one still open is closed for its other end, whichever way the core is dropped.
    fn drop(&mut self) {
        self.close_sessions();
    }
}

/// One line saying why a call failed: the limit hit, or the trap and where it happened.
pub fn describe_error(error: &wasmtime::Error) -> String {
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
