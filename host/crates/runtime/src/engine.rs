//! The engine and the loading of components: one `Engine` (component model, pooling
//! allocator, epoch interruption driven by one ticker thread), one `Linker` with WASI p2
//! (nothing granted) and the `wasmwire:service` imports, and components loaded into
//! [`Compiled`] — a compiled component, its `ServicePre` built once, and what its
//! `describe` declared.

use crate::audit::HasAudited;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::bindings::wasmwire::service::{host, types};
use crate::bindings::{ServiceIndices, ServicePre};
use crate::cache::{self, CacheOutcome};
use crate::class::{Block, Class, Delivered};
use crate::clock::TICK;
use crate::keyvalue::HasKeyValue;
use crate::service_ctx::HasService;
use crate::state::{self, HostState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmwire_manifest::{HostConfig, Manifest};

/// Why a component could not be loaded or checked.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The component file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component.
    #[error("{} is not a valid component: {reason}", path.display())]
    Compile {
        /// The component file.
        path: PathBuf,
        /// What wasmtime said.
        reason: String,
    },
    /// The component does not implement the `wasmwire:service` world.
    #[error("{} does not implement the wasmwire:service@0.1 world: {reason}", path.display())]
    WrongWorld {
        /// The component file.
        path: PathBuf,
        /// The missing or mismatched import or export.
        reason: String,
    },
    /// `describe` trapped or failed.
    #[error("{}: describe() failed: {reason}", path.display())]
    Describe {
        /// The component file.
        path: PathBuf,
        /// The trap or error.
        reason: String,
    },
}

/// The host interface's name, before its version.
const HOST_INTERFACE: &str = "wasmwire:service/host@0.1.";

/// The alarm interface's name, before its version (a component exports the version it was
/// built against).
const ALARM_INTERFACE: &str = "wasmwire:service/alarm@0.1.";

/// The batched-delivery interface's name, before its version (since 0.1.3; `on-message-block`
/// since 0.1.4).
const INBOX_INTERFACE: &str = "wasmwire:service/inbox@0.1.";

/// Most message kinds, and most events, a service may declare.
pub const MAX_DECLARED: usize = 256;

/// Longest kind or event name, in bytes (a kind's length is one byte on the wire).
pub const MAX_NAME: usize = 255;

/// Checks what `describe` declared: bounded lists of distinct, non-empty, short names.
fn check_names(what: &str, names: &[String]) -> Result<(), String> {
    if names.len() > MAX_DECLARED {
        return Err(format!(
            "it declares {} {what}; at most {MAX_DECLARED} are allowed",
            names.len()
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.len() > MAX_NAME {
            let shown: String = n.chars().take(40).collect();
            return Err(format!(
                "its {what} must be 1 to {MAX_NAME} bytes long; {shown:?}... is {}",
                n.len()
            ));
        }
        if names[..i].contains(n) {
            return Err(format!("it declares {what} {n:?} twice"));
        }
    }
    Ok(())
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances awake at once: the size of the instance pool.
    pub max_awake: u32,
    /// Largest memory limit of any instance (sizes the pool's memory slots).
    pub max_memory: u64,
    /// Bytes of a freed slot's linear memory kept resident (`[host] keep_resident`).
    pub keep_resident: u64,
    /// Folder for compiled components; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeConfig {
    /// Settings for a manifest: its `[host]` section, with memory slots as large as its
    /// largest `memory` limit.
    pub fn for_manifest(manifest: &Manifest) -> Self {
        let max_memory = manifest
            .services
            .iter()
            .map(|s| s.limits.memory)
            .max()
            .unwrap_or(64 << 20);
        RuntimeConfig::from_host(&manifest.host, max_memory)
    }

    /// Settings for a manifest's host section and its largest memory limit.
    pub fn from_host(host: &HostConfig, max_memory: u64) -> Self {
        RuntimeConfig {
            max_awake: host.max_awake,
            max_memory,
            keep_resident: host.keep_resident,
            cache_dir: Some(host.cache_dir.clone()),
        }
    }
}

/// A loaded component: what it declares, which every instance of it shares, and its
/// pre-linked code, which only its actors (and the fuzzer) instantiate. Kept apart so that
/// the instance handle, which every message passes, does not name the host state its code
/// runs with (the files of this module import one way only).
#[derive(Clone)]
pub struct Compiled {
    /// What it declares.
    pub class: Arc<Class>,
    /// Pre-linked, ready to instantiate.
    pub pre: ServicePre<HostState>,
}

/// The engine, linker and epoch ticker shared by every instance of a host.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    ticks: Arc<AtomicU64>,
    stop_ticker: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: &RuntimeConfig) -> wasmtime::Result<Runtime> {
        Runtime::with_imports(config, |linker| {
            types::add_to_linker::<_, HasService>(linker, HostState::service_view)?;
            host::add_to_linker::<_, HasService>(linker, HostState::service_view)?;
            link_send(linker)?;
            add_keyvalue(linker)
        })
    }

    /// The same, with the fuzzer's audit around the `wasmwire:service` imports.
    pub(crate) fn audited(config: &RuntimeConfig) -> wasmtime::Result<Runtime> {
        Runtime::with_imports(config, |linker| {
            types::add_to_linker::<_, HasAudited>(linker, HostState::audited_view)?;
            host::add_to_linker::<_, HasAudited>(linker, HostState::audited_view)?;
            add_keyvalue(linker)
        })
    }

    /// WASI (nothing granted) and the service imports `imports` adds, one per interface.
    fn with_imports(
        config: &RuntimeConfig,
        imports: fn(&mut Linker<HostState>) -> wasmtime::Result<()>,
    ) -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&engine_config(config))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        imports(&mut linker)?;

        let ticks = Arc::new(AtomicU64::new(0));
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            // One thread for the whole host: epochs are how a runaway call is stopped
            // without a timer per call.
            let engine = engine.clone();
            let ticks = ticks.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("wasmwire-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        ticks.fetch_add(1, Ordering::Relaxed);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::new)?;
        }
        Ok(Runtime {
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            ticks,
            stop_ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The tick counter advanced with the engine's epoch.
    pub fn ticks(&self) -> Arc<AtomicU64> {
        self.ticks.clone()
    }

    /// Compiles (or loads from the cache) a component and type-checks it against the world.
    pub fn compile(
        &self,
        path: &Path,
    ) -> Result<(Component, ServicePre<HostState>, CacheOutcome), LoadError> {
        let (component, outcome) = self.component(path)?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(wrong)?;
        let pre = ServicePre::new(instance_pre).map_err(wrong)?;
        Ok((component, pre, outcome))
    }

    /// Compiles (or loads from the cache) a component without checking its world.
    pub fn component(&self, path: &Path) -> Result<(Component, CacheOutcome), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        cache::load(&self.engine, self.cache_dir.as_deref(), &bytes).map_err(|e| {
            LoadError::Compile {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            }
        })
    }

    /// Loads a component and asks it what it accepts, on a throwaway instance.
    pub async fn load(&self, path: &Path) -> Result<Compiled, LoadError> {
        let (component, pre, cache) = self.compile(path)?;
        // Only a component that imports the key-value interfaces, or sets alarms, needs the
        // data file. (A component imports only the functions it calls.)
        let ty = component.component_type();
        let stores = ty.imports(&self.engine).any(|(name, item)| {
            name.starts_with("wasi:keyvalue/")
                || (name.starts_with(HOST_INTERFACE)
                    && matches!(&item.ty, ComponentItem::ComponentInstance(i)
                        if i.get_export(&self.engine, "set-alarm").is_some()))
        });
        // An optional export, in its interface of whichever 0.1.x version the component
        // was built against.
        let export = |interface: &str, func: &str| {
            ty.exports(&self.engine)
                .find(|(name, _)| name.starts_with(interface))
                .and_then(|(name, _)| {
                    let iface = component.get_export_index(None, name)?;
                    component.get_export_index(Some(&iface), func)
                })
        };
        let on_alarm = export(ALARM_INTERFACE, "on-alarm");
        // (From 0.1.3.)
        let on_messages = export(INBOX_INTERFACE, "on-messages");
        // (From 0.1.4.)
        let on_message_block = export(INBOX_INTERFACE, "on-message-block");
        let failed = |e: wasmtime::Error| LoadError::Describe {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let exports = ServiceIndices::new(pre.instance_pre()).map_err(failed)?;
        let mut store = self.scratch_store(Arc::from("describe"));
        let instance = pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(failed)?;
        if let Some(i) = &on_alarm {
            instance
                .get_typed_func::<(u64,), ()>(&mut store, i)
                .map_err(|e| failed(e.context("its on-alarm is not func(at-ms: u64)")))?;
        }
        if let Some(i) = &on_messages {
            instance
                .get_typed_func::<(&[Delivered<'_>],), (u32,)>(&mut store, i)
                .map_err(|e| {
                    failed(e.context("its on-messages is not func(batch: list<message>) -> u32"))
                })?;
        }
        if let Some(i) = &on_message_block {
            instance
                .get_typed_func::<(&Block,), (u32,)>(&mut store, i)
                .map_err(|e| {
                    failed(
                        e.context("its on-message-block is not func(block: message-block) -> u32"),
                    )
                })?;
        }
        let service = exports.load(&mut store, &instance).map_err(failed)?;
        let first_deadline = store.data_mut().clock.start();
        store.set_epoch_deadline(first_deadline);
        let d = service
            .wasmwire_service_lifecycle()
            .call_describe(&mut store)
            .await
            .map_err(failed)?;
        for (what, names) in [("message kinds", &d.messages), ("events", &d.events)] {
            check_names(what, names).map_err(|reason| LoadError::Describe {
                path: path.to_path_buf(),
                reason,
            })?;
        }
        Ok(Compiled {
            class: Arc::new(Class {
                path: path.to_path_buf(),
                messages: d.messages.into_boxed_slice(),
                events: d.events.into_boxed_slice(),
                cache,
                stores,
                on_alarm,
                on_messages,
                on_message_block,
                exports,
            }),
            pre,
        })
    }

    /// A store for one-off calls (describe, inspect) with default limits and no sessions.
    pub fn scratch_store(&self, name: Arc<str>) -> Store<HostState> {
        state::new_store(&self.engine, HostState::scratch(name, self.ticks.clone()))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The `wasi:keyvalue` interfaces, one context for the three.
fn add_keyvalue(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue_view)?;
    atomics::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue_view)?;
    batch::add_to_linker::<_, HasKeyValue>(linker, HostState::keyvalue_view)
}

/// Largest pool whose memory slots reserve 4 GiB each (bounds checks elided): 4 096
/// instances × 2 memories × 4 GiB is 32 TiB of address space.
pub const ELIDED_CHECKS_UP_TO: u32 = 4096;

fn engine_config(config: &RuntimeConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    let instances = config.max_awake.max(1);
    let max_memory = config.max_memory.max(1 << 20);
    // Each linear-memory slot of the pool is reserved up front (address space only,
    // `PROT_NONE`): by default 4 GiB plus a 32 MiB guard, which lets compiled code skip
    // bounds checks. Two slots per instance of a 10 000-instance pool would be 80 TiB, more
    // than the 47-bit address space leaves. So past `ELIDED_CHECKS_UP_TO` awake instances a
    // slot is only as large as the largest `memory` limit, and compiled code checks bounds
    // explicitly (the cost is in the README's "Scale" section).
    if instances > ELIDED_CHECKS_UP_TO {
        c.memory_reservation(max_memory);
    }
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasm32-wasip2 component holds a handful of core instances (the program, the
    // WASI adapter, shims); the limits below leave room for larger toolchains' output.
    pool.total_component_instances(instances + 1)
        .total_core_instances((instances + 1) * 16)
        .max_core_instances_per_component(16)
        .total_memories((instances + 1) * 2)
        .max_memories_per_component(2)
        .total_tables((instances + 1) * 4)
        .max_tables_per_component(4)
        .total_stacks(instances + 1)
        .max_memory_size(max_memory as usize)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        // What a freed slot keeps resident for the next instance in it. Kept pages make
        // the next wake cheaper (no page faults: bench (c) 8 instead of 19 µs, (l) 38 000
        // instead of 23 000 keys per second) but are never given back: after a burst the
        // host holds them for every slot the burst used. So a manifest with keyed classes
        // keeps none by default, others keep 256 KiB (`[host] keep_resident`).
        .linear_memory_keep_resident(config.keep_resident as usize)
        .table_keep_resident(config.keep_resident.min(16 << 10) as usize)
        .async_stack_keep_resident(64 << 10)
        // Where the kernel can say which pages a freed slot dirtied (Linux 6.7+), only
        // those are reset: a short-lived instance that touched a few pages costs a few
        // page copies, not a memset of `keep_resident` bytes, on every sleep.
        // wasmtime's default `max_unused_warm_slots` (100) stays: with 0 (always reuse the
        // most recently freed slot) bench (c)'s wake measured 11–12 µs instead of 6.5.
        .pagemap_scan(wasmtime::Enabled::Auto);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

/// The `host` interface the production linker's `send` shadows (see [`link_send`]); the
/// WIT package's version, which a unit test holds to `wit/service.wit`.
const SEND_INTERFACE: &str = "wasmwire:service/host@0.1.4";

/// A scratch buffer larger than this is let go after the send that grew it, so an instance
/// that once sent a large message does not keep that much for good.
const SCRATCH_KEPT: usize = 64 << 10;

/// Defines `host.send` again, reading the kind and payload where the guest has them: the
/// generated import lifts both into a fresh `String` and `Vec` per message, two
/// allocations on the hottest import. Here they are copied into one buffer the instance
/// keeps, and a message to another host is encoded from it straight into its stream's
/// queue; a message to a local instance still takes one allocation, its envelope's
/// payload. The fuzzer's linker keeps the generated import (its audit wraps it).
fn link_send(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::component::{WasmList, WasmStr};
    linker.allow_shadowing(true);
    linker.instance(SEND_INTERFACE)?.func_wrap(
        "send",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (session, kind, payload): (u64, WasmStr, WasmList<u8>)| {
            let mut scratch = std::mem::take(&mut store.data_mut().service.scratch);
            scratch.clear();
            let kind_len = {
                let kind = kind.to_str(&store)?;
                scratch.extend_from_slice(kind.as_bytes());
                kind.len()
            };
            scratch.extend_from_slice(payload.as_le_slice(&store));
            let (kind, payload) = scratch.split_at(kind_len);
            // Copied from a `str` a moment ago: valid UTF-8, checked again at small cost.
            let kind = std::str::from_utf8(kind)?;
            let sent = store
                .data_mut()
                .service_view()
                .send_slice(session, kind, payload);
            if scratch.capacity() <= SCRATCH_KEPT {
                store.data_mut().service.scratch = scratch;
            }
            Ok((sent,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `link_send` shadows the generated `send` only in the interface of the WIT package's
    /// own version: a version bump must move [`super::SEND_INTERFACE`] with it.
    #[test]
    fn the_shadowed_interface_is_the_wit_package_version() {
        let wit = include_str!("../../../../wit/service.wit");
        let version = wit
            .lines()
            .find_map(|l| l.strip_prefix("package wasmwire:service@"))
            .and_then(|v| v.strip_suffix(';'))
            .expect("a package line");
        assert_eq!(
            super::SEND_INTERFACE,
            format!("wasmwire:service/host@{version}")
        );
    }
}
