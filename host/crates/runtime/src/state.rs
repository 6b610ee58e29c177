//! The host state inside each `Store`: the WASI context (nothing granted), the memory
//! limiter, the CPU clock, the transaction of the call in progress, and one context per
//! imported interface ([`ServiceCtx`] for `wasmwire:service/host`, [`KeyValueCtx`] for
//! `wasi:keyvalue`); and the store built around it, with its limiter and CPU
//! deadline installed.

use super::audit::{Audit, Audited};
use super::clock::{CallClock, Verdict};
use super::directory::Directory;
use super::guest_log::{GuestLog, Stream};
use super::instance::Instance;
use super::keyvalue::{KeyValueCtx, KeyValueCtxView};
use super::service_ctx::{ServiceCtx, ServiceCtxView};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmwire_store::Transaction;

/// A call ran past the instance's CPU deadline (the error behind the trap).
#[derive(Debug, thiserror::Error)]
#[error("cpu deadline exceeded: a call may run {limit:?}")]
pub struct CpuDeadline {
    /// The instance's `call_timeout` (times the messages of a batch).
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

/// Everything the host keeps per instance, inside its `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    /// The CPU clock of the call in progress (`call_timeout`).
    pub(crate) clock: CallClock,
    /// The writes of the export call in progress: read back by the call, committed by the
    /// driver after it (`instance_core.rs`), dropped if it trapped. Every interface that
    /// writes, or must not let an output out before the writes are durable, sees it.
    pub(crate) txn: Transaction,
    /// The `wasmwire:service/host` context.
    pub(crate) service: ServiceCtx,
    /// The `wasi:keyvalue` context.
    pub(crate) keyvalue: KeyValueCtx,
    /// Set only under `wasmwire fuzz`, whose linker wraps the imports to check what the
    /// guest asks and inject errors (`audit.rs`); the production imports never read it.
    pub(crate) audit: Option<Box<Audit>>,
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
            clock: CallClock::new(ticks, limits.call_timeout),
            txn: Transaction::default(),
            keyvalue: KeyValueCtx::new(&name, limits),
            service: ServiceCtx::new(name, limits, budget),
            audit: None,
        }
    }

    /// State for a real instance of the node.
    pub(crate) fn new(
        me: Arc<Instance>,
        directory: Arc<Directory>,
        ticks: Arc<AtomicU64>,
    ) -> HostState {
        let mut s = HostState::base(
            me.name.clone(),
            ticks,
            &me.limits,
            None,
            me.log_budget.clone(),
        );
        s.limiter.stats = Some(me.stats.clone());
        s.txn = Transaction::new(directory.database().cloned());
        s.keyvalue.share(me.buckets.clone());
        s.service.attach(me, directory);
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
    /// no other services, its output captured, and `audit` for the audited imports.
    /// `storage` is the database its key-value imports reach and the bucket that is its
    /// own (a fresh one per run).
    pub(crate) fn audited(
        name: Arc<str>,
        ticks: Arc<AtomicU64>,
        limits: &wasmwire_manifest::Limits,
        audit: Audit,
        capture: super::guest_log::Captured,
        storage: Option<(wasmwire_store::Database, Arc<str>)>,
    ) -> HostState {
        let mut s = HostState::base(name, ticks, limits, Some(capture), Arc::default());
        s.audit = Some(Box::new(audit));
        if let Some((db, bucket)) = storage {
            s.txn = Transaction::new(Some(db));
            s.keyvalue.own_is(bucket);
        }
        s
    }

    /// The `wasmwire:service/host` imports' view: the getter the linker calls per import.
    pub(crate) fn service_view(&mut self) -> ServiceCtxView<'_> {
        ServiceCtxView {
            ctx: &mut self.service,
            clock: &mut self.clock,
            txn: &mut self.txn,
        }
    }

    /// The `wasi:keyvalue` imports' view.
    pub(crate) fn keyvalue_view(&mut self) -> KeyValueCtxView<'_> {
        KeyValueCtxView {
            ctx: &mut self.keyvalue,
            table: &mut self.table,
            txn: &mut self.txn,
        }
    }

    /// The same imports with the fuzzer's audit around them: the getter of its linker.
    pub(crate) fn audited_view(&mut self) -> Audited<'_> {
        Audited {
            imports: ServiceCtxView {
                ctx: &mut self.service,
                clock: &mut self.clock,
                txn: &mut self.txn,
            },
            audit: self.audit.as_deref_mut(),
        }
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
                limit: clock.budget(),
            })),
            // Still within budget: give the worker thread back for a moment, then run
            // another slice. What the call sent so far leaves now, not when it ends.
            Verdict::Yield(ticks) => {
                let clock = clock.yield_now();
                ctx.data_mut().service.outbox.flush();
                Ok(UpdateDeadline::YieldCustom(ticks, clock))
            }
        }
    });
    store.set_epoch_deadline(u64::MAX / 2);
    store
}
