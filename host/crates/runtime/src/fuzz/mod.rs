//! `wasmwire fuzz`: drives a service's exports through the real host runtime — the same
//! instance core the actor drives (`runtime::instance_core`: one call at a time with a
//! fresh CPU budget, `on-connect`/`on-disconnect` after the host calls that open or close
//! sessions, `max_sessions`, timers only while set, sleep only without sessions), the same
//! `HostState` and host imports, the same checks of kinds, events and sizes before the
//! guest (`session::check_message`, `session::check_event`) — with random but well-formed
//! sequences of steps ([`step`]), chosen by the generator (`generate.rs`).
//!
//! A run stops at the first finding: a trap, a limit hit (CPU deadline, memory), `wakeup`
//! failing, or a broken host-side rule (the guest sent on a session it was never given,
//! `describe` changed). The failing sequence is then shrunk — steps are removed while the
//! same kind of finding in the same export still happens — and written as a replay file.

mod generate;
pub mod step;

use crate::audit::Audit;
use crate::bindings::{ServicePre, WitError};
use crate::class::Class;
use crate::class::{Delivered, check_event, check_message, run_length};
use crate::engine::{Compiled, LoadError, Runtime, RuntimeConfig};
use crate::instance::{CallError, PeerInfo};
use crate::instance_core::describe_error;
use crate::instance_core::{Core, Crash, WakeError};
use crate::session::{ClientEvent, Route};
use crate::state::HostState;
use crate::state::{CpuDeadline, MemoryLimit};
use crate::stats::InstanceStats;
use generate::{Generator, View};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
pub use step::{Fault, Replay, Step};
use tokio::sync::mpsc;
use wasmwire_manifest::Limits;
use wasmwire_store::Database;

/// Why fuzzing could not start.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// The engine could not be built.
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The scratch database for a service that stores could not be made.
    #[error("cannot make a scratch data store for the runs: {0}")]
    Storage(String),
}

/// A loaded service component, ready to be fuzzed.
pub struct Target {
    runtime: Runtime,
    class: Arc<Class>,
    pre: ServicePre<HostState>,
    name: Arc<str>,
    /// Where the runs of a service that imports `wasi:keyvalue` keep their data.
    storage: Option<Scratch>,
}

/// The fuzzer's own data: a database in a temporary folder (commits not fsync'd: it is
/// thrown away), a fresh bucket per run, and the folder removed with the target.
struct Scratch {
    db: Option<Database>,
    dir: PathBuf,
    /// Buckets handed out so far.
    buckets: AtomicU64,
}

impl Scratch {
    fn open() -> Result<Scratch, FuzzError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasmwire-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let db = Database::open_scratch(&dir).map_err(|e| FuzzError::Storage(e.to_string()))?;
        Ok(Scratch {
            db: Some(db),
            dir,
            buckets: AtomicU64::new(0),
        })
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("open until dropped")
    }

    /// A bucket no run has used: each run starts with no data.
    fn fresh_bucket(&self) -> Arc<str> {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("i/fuzz-run-{n}"))
    }

    /// A digest of what `bucket` holds, as committed.
    fn digest(&self, bucket: &str) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher};
        let mut h = BuildHasherDefault::<DefaultHasher>::default().build_hasher();
        let db = self.db();
        let mut after: Option<String> = None;
        while let Ok(page) = db.keys(bucket, after.as_deref(), 1024) {
            let Some(last) = page.last().cloned() else {
                break;
            };
            for k in &page {
                h.write(k.as_bytes());
                h.write_u8(0xff);
                if let Ok(Some(v)) = db.get(bucket, k) {
                    h.write(&v);
                }
                h.write_u8(0xfe);
            }
            after = Some(last);
        }
        h.finish()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Closed first (the last handle: runs are over), then the folder goes.
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Target {
    /// Compiles and type-checks `path`, and asks its `describe`.
    pub async fn load(path: &Path, limits: &Limits) -> Result<Target, FuzzError> {
        let runtime = Runtime::audited(&RuntimeConfig {
            // Short-lived instances, one after another in each slot: kept pages save
            // the page faults of every run.
            keep_resident: 256 << 10,
            max_awake: max_jobs() as u32,
            max_memory: limits.memory,
            cache_dir: None,
        })
        .map_err(|e| FuzzError::Engine(format!("{e:#}")))?;
        let Compiled { class, pre } = runtime.load(path).await?;
        let name = path
            .file_stem()
            .map_or("service".into(), |s| s.to_string_lossy().into_owned());
        let storage = if class.stores {
            Some(Scratch::open()?)
        } else {
            None
        };
        Ok(Target {
            runtime,
            class,
            pre,
            name: Arc::from(name.as_str()),
            storage,
        })
    }

    /// Message kinds it declares.
    pub fn messages(&self) -> &[String] {
        &self.class.messages
    }

    /// Events it declares.
    pub fn events(&self) -> &[String] {
        &self.class.events
    }
}

/// Workers a target can serve at once (each holds one instance at a time): the machine's
/// cores, and at least four.
fn max_jobs() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

/// How a fuzzing session runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Options handed to `wakeup`, as JSON text.
    pub options: String,
    /// Seeds everything: the same seed gives the same runs (for a deterministic guest).
    pub seed: u64,
    /// Stop after this many runs.
    pub runs: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Steps per run at most.
    pub max_steps: usize,
    /// The instance's limits.
    pub limits: Limits,
    /// Worker threads, each fuzzing its own instances. With one, the seed alone fixes
    /// every run; with more, each run still comes from the seed but what the generator has
    /// learned depends on which worker made it.
    pub jobs: usize,
}

/// What kind of problem a run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An export trapped (a panic, an unreachable, a bad access).
    Trap,
    /// An export ran past its CPU deadline.
    Cpu,
    /// An export grew memory past the limit.
    Memory,
    /// `wakeup` returned an error for the given options.
    Wakeup,
    /// A host-side rule was broken.
    Invariant,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Trap => "trap",
            Kind::Cpu => "cpu-deadline",
            Kind::Memory => "memory-limit",
            Kind::Wakeup => "wakeup-error",
            Kind::Invariant => "invariant",
        }
    }
}

/// A problem found, at step `step` of its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Index of the step during which it happened.
    pub step: usize,
    /// What kind of problem.
    pub kind: Kind,
    /// The export that was running (or the host call, for invariants).
    pub export: &'static str,
    /// What happened, in one line.
    pub cause: String,
}

impl Finding {
    fn same_as(&self, other: &Finding) -> bool {
        self.kind == other.kind && self.export == other.export
    }
}

/// A failing sequence, shrunk.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The finding, as the shrunk sequence reproduces it.
    pub finding: Finding,
    /// The seed of the run that found it.
    pub run_seed: u64,
    /// Steps in the sequence as found.
    pub found_steps: usize,
    /// The shrunk sequence.
    pub replay: Replay,
}

/// What a fuzzing session did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The session's seed.
    pub seed: u64,
    /// Runs made.
    pub runs: u64,
    /// Export calls made.
    pub calls: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Messages and events the host refused before the guest (undeclared, too large).
    pub refused: u64,
    /// Calls of `on-message` per declared kind.
    pub messages: Vec<(String, u64)>,
    /// Calls of `on-event` per declared event.
    pub events: Vec<(String, u64)>,
    /// The first problem found, shrunk.
    pub failure: Option<Failure>,
}

impl Report {
    /// Export calls per second.
    pub fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs one sequence against fresh instances of the target.
struct Harness<'t> {
    target: &'t Target,
    settings: &'t Settings,
    live: Option<Core>,
    out_tx: mpsc::Sender<ClientEvent>,
    out_rx: mpsc::Receiver<ClientEvent>,
    pending_fault: Option<Fault>,
    /// What the guest last wrote to stdout/stderr.
    output: crate::guest_log::Captured,
    /// Export calls made, counted by the core as the actor's are.
    stats: Arc<InstanceStats>,
    refused: u64,
    /// Whether to keep the refusals' reasons (see [`refusals`]).
    keep_refusals: bool,
    /// Why the host refused steps before the guest, each reason once (the first few).
    refusals: Vec<String>,
    messages: Vec<u64>,
    events: Vec<u64>,
    /// This run's own bucket, when the service stores (empty when the run starts).
    bucket: Option<Arc<str>>,
    /// Before the step in progress: the digest of the bucket and the commits the live
    /// instance had made, to check that a call that traps leaves no write behind.
    mark: Option<(u64, u64)>,
    /// Message steps a `batch` step still gathers.
    batch_left: u32,
    /// The messages gathered (session, kind, its index, payload), delivered as the actor
    /// hands a burst: through `on-message-block` or `on-messages`, in runs cut as the
    /// actor cuts them (`run_length`).
    batched: Vec<(u64, String, u16, Vec<u8>)>,
}

/// The error a host call returns for an injected fault (`None`: the storage fault, which
/// a read or write of the data returns instead).
fn wit_error(f: Fault) -> Option<WitError> {
    Some(match f {
        Fault::Busy => WitError::Busy,
        Fault::Closed => WitError::Closed,
        Fault::Timeout => WitError::Timeout,
        Fault::Denied => WitError::Denied("injected by the fuzzer".into()),
        Fault::Store => return None,
    })
}

fn classify(error: &wasmtime::Error) -> Kind {
    if error.downcast_ref::<CpuDeadline>().is_some() {
        Kind::Cpu
    } else if error.downcast_ref::<MemoryLimit>().is_some() {
        Kind::Memory
    } else {
        Kind::Trap
    }
}

/// Most distinct refusal reasons a harness keeps.
const MAX_REFUSALS: usize = 16;

impl<'t> Harness<'t> {
    fn new(target: &'t Target, settings: &'t Settings) -> Harness<'t> {
        let (out_tx, out_rx) = mpsc::channel(crate::session::CLIENT_QUEUE);
        Harness {
            target,
            settings,
            live: None,
            out_tx,
            out_rx,
            pending_fault: None,
            output: Default::default(),
            stats: Arc::default(),
            refused: 0,
            keep_refusals: false,
            refusals: Vec::new(),
            messages: vec![0; target.class.messages.len()],
            events: vec![0; target.class.events.len()],
            bucket: target.storage.as_ref().map(Scratch::fresh_bucket),
            mark: None,
            batch_left: 0,
            batched: Vec::new(),
        }
    }

    /// Delivers the messages a `batch` step gathered, as the actor does: runs of at most
    /// `MAX_RUN` to [`Core::deliver`], what the calls queued settled after each, the rest
    /// handed again; dropped when the instance is gone (its sessions with it).
    async fn flush(&mut self) -> Result<(), Finding> {
        self.batch_left = 0;
        let batched = std::mem::take(&mut self.batched);
        let mut from = 0;
        while from < batched.len() {
            let Some(l) = self.live.as_mut() else {
                break;
            };
            let rest = &batched[from..];
            let n = run_length(
                rest.iter().map(|(.., payload)| payload.len()),
                self.target.class.max_run(),
            );
            let run: Vec<Delivered<'_>> = rest[..n]
                .iter()
                .map(|(session, kind, _, payload)| Delivered {
                    session: *session,
                    kind,
                    payload,
                })
                .collect();
            let kinds: Vec<u16> = rest[..n].iter().map(|&(_, _, index, _)| index).collect();
            let r = l.deliver(&run, &kinds).await;
            from += self.check(r)?;
            self.settle().await?;
        }
        Ok(())
    }

    /// Notes what the bucket holds before a step, if an instance is live and stores.
    fn mark(&mut self) {
        self.mark = match (&self.target.storage, &self.bucket, &self.live) {
            (Some(s), Some(b), Some(l)) => Some((s.digest(b), l.state().txn.commits())),
            _ => None,
        };
    }

    /// After a call trapped: what it wrote must be gone (unless a `connect` or `request`
    /// committed part of it first, which is allowed).
    fn trapped_writes_gone(&self) -> Result<(), Finding> {
        let (Some((before, commits)), Some(s), Some(b), Some(l)) =
            (self.mark, &self.target.storage, &self.bucket, &self.live)
        else {
            return Ok(());
        };
        if l.state().txn.commits() != commits || s.digest(b) == before {
            return Ok(());
        }
        Err(Finding {
            step: 0,
            kind: Kind::Invariant,
            export: "keyvalue",
            cause: "a call that trapped left writes behind: the next call would see them".into(),
        })
    }

    /// Export calls made so far.
    fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::Relaxed)
    }

    /// The host refused a step before the guest saw it, for this reason (made into text
    /// only when the reasons are kept: fuzzing itself only counts them). Messages and
    /// events refused are counted in `refused`; a session over `max_sessions` is not.
    fn refuse(&mut self, counted: bool, why: impl FnOnce() -> CallError) {
        self.refused += u64::from(counted);
        if !self.keep_refusals || self.refusals.len() >= MAX_REFUSALS {
            return;
        }
        let why = why().to_string();
        if !self.refusals.contains(&why) {
            self.refusals.push(why);
        }
    }

    fn crashed(&mut self, crash: Crash) -> Finding {
        if let Err(broken) = self.trapped_writes_gone() {
            self.live = None;
            return broken;
        }
        let Crash { export, error } = crash;
        // After a trap the instance cannot be entered again: drop it, as the host does.
        self.live = None;
        let mut cause = describe_error(&error);
        // A Rust guest prints "panicked at FILE:LINE:COL:" and then its message.
        if let Ok(lines) = self.output.lock()
            && let Some(i) = lines.iter().rposition(|l| l.contains("panicked at"))
        {
            let said: Vec<&str> = lines
                .iter()
                .skip(i)
                .take(2)
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect();
            cause = format!("{cause}; the guest said: {}", said.join(" "));
        }
        Finding {
            step: 0,
            kind: classify(&error),
            export,
            cause,
        }
    }

    /// The open sessions (sorted: the map's order is random) and timers, into buffers
    /// reused for every step.
    fn view_ids(&self, sessions: &mut Vec<u64>, timers: &mut Vec<u32>) {
        sessions.clear();
        timers.clear();
        if let Some(l) = &self.live {
            sessions.extend(l.state().service.sessions.iter().map(|(id, _)| *id));
            sessions.sort_unstable();
            timers.extend(l.state().service.timers.iter().map(|t| t.id));
        }
    }

    async fn wake(&mut self) -> Result<(), Finding> {
        if self.live.is_some() {
            return Ok(());
        }
        let t = self.target;
        let pending = self.pending_fault.take();
        let mut state = HostState::audited(
            t.name.clone(),
            t.runtime.ticks(),
            &self.settings.limits,
            Audit {
                fault: pending.and_then(wit_error),
                ..Audit::default()
            },
            self.output.clone(),
            t.storage
                .as_ref()
                .zip(self.bucket.clone())
                .map(|(s, b)| (s.db().clone(), b)),
        );
        if pending == Some(Fault::Store) {
            state.txn.inject_fault();
        }
        let options = &self.settings.options;
        match Core::wake(&t.pre, &t.class, state, self.stats.clone(), options).await {
            Ok(core) => {
                self.live = Some(core);
                self.settle().await?;
                // The step that woke it calls into it next: what the bucket holds now is
                // what a trap in that call must leave.
                if t.storage.is_some() {
                    self.mark();
                }
                Ok(())
            }
            Err(WakeError::Instantiate(e)) => Err(Finding {
                step: 0,
                kind: classify(&e),
                export: "instantiate",
                cause: describe_error(&e),
            }),
            Err(WakeError::Refused(text)) => Err(Finding {
                step: 0,
                kind: Kind::Wakeup,
                export: "wakeup",
                cause: format!("wakeup returned an error: {text}"),
            }),
            Err(WakeError::Crash(crash)) => Err(self.crashed(crash)),
        }
    }

    /// After a call: the `on-connect`/`on-disconnect` calls it queued, then the host-side
    /// rules.
    async fn settle(&mut self) -> Result<(), Finding> {
        if let Some(l) = self.live.as_mut()
            && let Err(crash) = l.settle().await
        {
            return Err(self.crashed(crash));
        }
        self.audit()
    }

    /// The first host-side rule the guest broke, if any.
    fn audit(&mut self) -> Result<(), Finding> {
        if let Some(l) = self.live.as_mut()
            && let Some(a) = l.state_mut().audit.as_mut()
            && let Some(v) = a.violations.first().cloned()
        {
            return Err(Finding {
                step: 0,
                kind: Kind::Invariant,
                export: "send",
                cause: v,
            });
        }
        Ok(())
    }

    /// What a call into the live instance returned, a crash made a finding.
    fn check<T>(&mut self, r: Result<T, Crash>) -> Result<T, Finding> {
        r.map_err(|crash| self.crashed(crash))
    }

    fn drain(&mut self, generator: &mut Option<&mut Generator>) {
        while let Ok(e) = self.out_rx.try_recv() {
            if let (ClientEvent::Message { payload, .. }, Some(g)) = (e, generator.as_mut()) {
                g.learn(&payload);
            }
        }
    }

    async fn apply(
        &mut self,
        step: &Step,
        generator: &mut Option<&mut Generator>,
    ) -> Result<(), Finding> {
        let (target, settings) = (self.target, self.settings);
        let class = &target.class;
        let limits = &settings.limits;
        if target.storage.is_some() {
            self.mark();
        }
        // A batch gathers the message steps after it; any other step delivers it first.
        if !self.batched.is_empty() && !matches!(step, Step::Message { .. }) {
            self.flush().await?;
        }
        match step {
            Step::Batch { count } => {
                // Only a class the actor hands batches to gets them.
                if class.batches() {
                    self.batch_left = *count;
                }
            }
            Step::Wake => self.wake().await?,
            Step::Sleep => {
                if let Some(l) = self.live.as_mut()
                    && l.may_sleep()
                {
                    let r = l.sleep().await;
                    self.check(r)?;
                    self.live = None;
                }
            }
            Step::Connect { id, caller } => {
                self.wake().await?;
                let Some(l) = self.live.as_mut() else {
                    return Ok(());
                };
                if l.state().service.sessions.contains_key(id) {
                    return Ok(());
                }
                let from = PeerInfo {
                    service: Arc::from(caller.as_str()),
                    peer: None,
                };
                let back = Route::Client {
                    to: self.out_tx.clone(),
                    max_message: limits.max_message,
                };
                let info = match l.accept(*id, from, back, 1) {
                    Ok(info) => info,
                    Err(why) => {
                        self.refuse(false, || why);
                        return Ok(());
                    }
                };
                if let Some(a) = l.state_mut().audit.as_mut() {
                    a.given.insert(*id);
                }
                let r = l.connected(&info, Default::default()).await;
                self.check(r)?;
                self.settle().await?;
            }
            Step::Disconnect { id } => {
                if let Some(l) = self.live.as_mut() {
                    let r = l.disconnected(*id).await;
                    self.check(r)?;
                    self.settle().await?;
                }
            }
            Step::Message { id, kind, payload } => {
                // The host checks kind and size at the sender; the guest never sees these.
                let index = match check_message(class, limits.max_message, kind, payload.len()) {
                    Ok(index) => index,
                    Err(why) => {
                        self.refuse(true, || why.message_error(&target.name, class, kind));
                        return Ok(());
                    }
                };
                if let Some(l) = self.live.as_mut()
                    && l.state().service.sessions.contains_key(id)
                {
                    self.messages[index as usize] += 1;
                    if self.batch_left > 0 {
                        self.batched
                            .push((*id, kind.clone(), index, payload.clone()));
                        self.batch_left -= 1;
                        if self.batch_left == 0 {
                            self.flush().await?;
                        }
                    } else {
                        let r = l.message(*id, kind, payload).await;
                        self.check(r)?;
                        self.settle().await?;
                    }
                }
            }
            Step::Event { name, params } => {
                let index = match check_event(class, limits.max_message, name, params.len()) {
                    Ok(index) => index,
                    Err(why) => {
                        self.refuse(true, || why.event_error(&target.name, class, name));
                        return Ok(());
                    }
                };
                self.wake().await?;
                self.events[index as usize] += 1;
                if let Some(l) = self.live.as_mut() {
                    let r = l.event(None, name, params, Default::default()).await;
                    if let Ok(reply) = self.check(r)?
                        && let Some(g) = generator.as_mut()
                    {
                        g.learn(reply.as_bytes());
                    }
                }
                self.settle().await?;
            }
            Step::Timer { id } => {
                if let Some(l) = self.live.as_mut() {
                    let r = l.timer(*id).await;
                    if self.check(r)? {
                        self.settle().await?;
                    }
                }
            }
            Step::Fault(f) => match self.live.as_mut() {
                Some(l) => match wit_error(*f) {
                    Some(e) => {
                        if let Some(a) = l.state_mut().audit.as_mut() {
                            a.fault = Some(e);
                        }
                    }
                    None => l.state_mut().txn.inject_fault(),
                },
                None => self.pending_fault = Some(*f),
            },
            Step::Describe => {
                if let Some(l) = self.live.as_mut() {
                    let r = l.describe().await;
                    let d = self.check(r)?;
                    if d.messages[..] != class.messages[..] || d.events[..] != class.events[..] {
                        return Err(Finding {
                            step: 0,
                            kind: Kind::Invariant,
                            export: "describe",
                            cause: format!(
                                "describe changed: it first declared messages {:?} and events {:?}, now {:?} and {:?}",
                                class.messages, class.events, d.messages, d.events
                            ),
                        });
                    }
                }
            }
        }
        self.drain(generator);
        Ok(())
    }

    /// Ends a run as a host ends an instance's life: `sleep()` if it is awake.
    async fn finish(&mut self) -> Result<(), Finding> {
        self.flush().await?;
        if let Some(mut l) = self.live.take() {
            let r = l.sleep().await;
            self.check(r)?;
        }
        Ok(())
    }
}

impl Drop for Harness<'_> {
    /// The run's bucket is emptied after it: the scratch data stays as small as one run's.
    fn drop(&mut self) {
        self.live = None;
        if let (Some(s), Some(b)) = (&self.target.storage, &self.bucket) {
            let _ = s.db().clear(b);
        }
    }
}

/// Runs `steps` once on fresh instances; returns the first finding and the calls made.
pub async fn replay(
    target: &Target,
    settings: &Settings,
    steps: &[Step],
) -> (Option<Finding>, u64) {
    let (finding, h) = run_steps(target, settings, steps, false).await;
    (finding, h.calls())
}

/// Runs `steps` once on fresh instances; returns why the host refused steps before the
/// guest saw them — each reason once, in the words a client or guest would get.
pub async fn refusals(target: &Target, settings: &Settings, steps: &[Step]) -> Vec<String> {
    std::mem::take(&mut run_steps(target, settings, steps, true).await.1.refusals)
}

async fn run_steps<'t>(
    target: &'t Target,
    settings: &'t Settings,
    steps: &[Step],
    keep_refusals: bool,
) -> (Option<Finding>, Harness<'t>) {
    let mut h = Harness::new(target, settings);
    h.keep_refusals = keep_refusals;
    let mut none = None;
    for (i, s) in steps.iter().enumerate() {
        if let Err(mut f) = h.apply(s, &mut none).await {
            f.step = i;
            return (Some(f), h);
        }
    }
    let r = h.finish().await.err().map(|mut f| {
        f.step = steps.len();
        f
    });
    (r, h)
}

/// Removes steps from a failing sequence while it still fails the same way.
pub async fn shrink(
    target: &Target,
    settings: &Settings,
    steps: Vec<Step>,
    finding: &Finding,
) -> (Vec<Step>, Finding) {
    let mut cur = steps;
    cur.truncate(finding.step + 1);
    let mut best = finding.clone();
    let mut chunk = cur.len().div_ceil(2).max(1);
    let mut tries = 0;
    loop {
        let mut removed = false;
        let mut i = 0;
        while i < cur.len() && tries < 2000 {
            tries += 1;
            let mut candidate = cur.clone();
            candidate.drain(i..(i + chunk).min(cur.len()));
            match replay(target, settings, &candidate).await.0 {
                Some(f) if f.same_as(finding) => {
                    candidate.truncate(f.step + 1);
                    cur = candidate;
                    best = f;
                    removed = true;
                }
                _ => i += chunk,
            }
        }
        if tries >= 2000 || (chunk == 1 && !removed) {
            break;
        }
        if !removed {
            chunk = chunk.div_ceil(2);
        }
    }
    (cur, best)
}

/// Progress of a fuzzing session, for a display.
pub struct Progress<'a> {
    /// Runs so far.
    pub runs: u64,
    /// Export calls so far.
    pub calls: u64,
    /// Time so far.
    pub elapsed: Duration,
    /// Declared kinds reached (called at least once) so far, of all.
    pub kinds: (usize, usize),
    /// Declared events reached so far, of all.
    pub events: (usize, usize),
    /// The target.
    pub target: &'a Target,
}

/// Counters the workers add to after each run, read by the progress display.
struct Shared {
    next_run: AtomicU64,
    stop: AtomicBool,
    runs: AtomicU64,
    calls: AtomicU64,
    refused: AtomicU64,
    messages: Vec<AtomicU64>,
    events: Vec<AtomicU64>,
}

impl Shared {
    fn reached(v: &[AtomicU64]) -> (usize, usize) {
        let n = v.iter().filter(|c| c.load(Ordering::Relaxed) > 0).count();
        (n, v.len())
    }

    fn counts(names: &[String], v: &[AtomicU64]) -> Vec<(String, u64)> {
        names
            .iter()
            .zip(v)
            .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The seed of run `index` of a session seeded with `seed` (SplitMix64): the same for
/// whichever worker makes the run.
fn run_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fuzzes `target` until the runs or the time run out, or a problem is found, on
/// `settings.jobs` worker threads (each with its own single-threaded async runtime and its
/// own instances). Blocks the calling thread, which calls `progress` about four times a
/// second.
pub fn fuzz(
    target: &Target,
    settings: &Settings,
    mut progress: impl FnMut(&Progress<'_>),
) -> Report {
    let started = Instant::now();
    let jobs = settings.jobs.clamp(1, max_jobs());
    let shared = Shared {
        next_run: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        runs: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        messages: target
            .class
            .messages
            .iter()
            .map(|_| AtomicU64::new(0))
            .collect(),
        events: target
            .class
            .events
            .iter()
            .map(|_| AtomicU64::new(0))
            .collect(),
    };
    let failure = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|w| {
                let shared = &shared;
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    rt.block_on(worker(target, settings, w as u64, shared, started))
                })
            })
            .collect();
        let mut last_progress = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
            if last_progress.elapsed() >= Duration::from_millis(250) {
                last_progress = Instant::now();
                progress(&Progress {
                    runs: shared.runs.load(Ordering::Relaxed),
                    calls: shared.calls.load(Ordering::Relaxed),
                    elapsed: started.elapsed(),
                    kinds: Shared::reached(&shared.messages),
                    events: Shared::reached(&shared.events),
                    target,
                });
            }
        }
        // The first worker to find a problem stops the others; it alone reports it.
        workers
            .into_iter()
            .filter_map(|w| w.join().ok().flatten())
            .next()
    });
    Report {
        seed: settings.seed,
        runs: shared.runs.load(Ordering::Relaxed),
        calls: shared.calls.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        refused: shared.refused.load(Ordering::Relaxed),
        messages: Shared::counts(&target.class.messages, &shared.messages),
        events: Shared::counts(&target.class.events, &shared.events),
        failure,
    }
}

/// One worker: claims run numbers until the runs or the time run out or any worker found a
/// problem; returns the problem it found, shrunk.
async fn worker(
    target: &Target,
    settings: &Settings,
    w: u64,
    shared: &Shared,
    started: Instant,
) -> Option<Failure> {
    let mut generator = Generator::new(settings.seed ^ w, &settings.options, target.class.stores);
    let max_steps = settings.max_steps.max(1);
    let (mut sessions, mut timers) = (Vec::new(), Vec::new());
    let mut steps = Vec::with_capacity(max_steps);
    loop {
        if shared.stop.load(Ordering::Relaxed)
            || settings.duration.is_some_and(|d| started.elapsed() >= d)
        {
            return None;
        }
        let index = shared.next_run.fetch_add(1, Ordering::Relaxed);
        if settings.runs.is_some_and(|r| index >= r) {
            return None;
        }
        let run_seed = run_seed(settings.seed, index);
        generator.reseed(run_seed);
        let length = 1 + (run_seed % max_steps as u64) as usize;
        let mut h = Harness::new(target, settings);
        steps.clear();
        let mut found = None;
        for i in 0..length {
            h.view_ids(&mut sessions, &mut timers);
            let view = View {
                awake: h.live.is_some(),
                sessions: &sessions,
                timers: &timers,
                messages: &target.class.messages,
                events: &target.class.events,
                batches: target.class.batches(),
            };
            let step = generator.step(&view);
            steps.push(step);
            let mut g = Some(&mut generator);
            if let Err(mut f) = h.apply(&steps[i], &mut g).await {
                f.step = i;
                found = Some(f);
                break;
            }
        }
        if found.is_none()
            && let Err(mut f) = h.finish().await
        {
            f.step = steps.len();
            found = Some(f);
        }
        shared.runs.fetch_add(1, Ordering::Relaxed);
        shared.calls.fetch_add(h.calls(), Ordering::Relaxed);
        shared.refused.fetch_add(h.refused, Ordering::Relaxed);
        for (c, n) in shared.messages.iter().zip(&h.messages) {
            c.fetch_add(*n, Ordering::Relaxed);
        }
        for (c, n) in shared.events.iter().zip(&h.events) {
            c.fetch_add(*n, Ordering::Relaxed);
        }
        if let Some(f) = found {
            if shared.stop.swap(true, Ordering::Relaxed) {
                return None; // another worker found one first
            }
            let found_steps = f.step + 1;
            let (steps, finding) = shrink(target, settings, std::mem::take(&mut steps), &f).await;
            return Some(Failure {
                finding,
                run_seed,
                found_steps,
                replay: Replay {
                    options: settings.options.clone(),
                    steps,
                },
            });
        }
    }
}
