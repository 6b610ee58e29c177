//! # wasmwire-runtime: the wasmtime side of a wasmwire host
//!
//! Everything that runs a guest. The files import one way only; from the bottom:
//! - leaves: [`bindings`] (the only `bindgen!`), [`alarms`] (the schedule of durable
//!   wake-ups), `cache` (compiled components on disk),
//!   [`clock`] (CPU deadlines), `guest_log`, [`heap`], [`stats`], [`supervisor`] (the
//!   restart policy);
//! - [`call`]: session ids, the error every entry point returns, the chain of waiters;
//! - [`class`]: what a component declares, and the one rule a message or event must pass;
//! - [`instance`]: the handle every message passes (mailbox, status, limits) and the routes
//!   that post into a mailbox;
//! - [`session`]: an instance's table of open sessions, and the host's book of them;
//! - [`directory`]: every entry point's rules — resolve, route, open a session, post an
//!   event, answer within a time-out, the host's queries;
//! - `service_ctx`: the context of the `wasmwire:service/host` interface and the imports
//!   a guest calls; `audit`: the fuzzer's wrapper around them;
//! - `keyvalue`: the context of the `wasi:keyvalue` interfaces and their imports, over
//!   the call's transaction;
//! - `state`: the host state of one store, one context per interface;
//! - `instance_core`: an awake instance and the rules of calling into it;
//! - [`engine`]: the engine, the linker, and the loading of components;
//! - `actor` (production) and [`fuzz`] (generated steps): the two drivers of the core;
//! - [`workers`] and [`start`]: the worker threads, and a manifest's instances started on
//!   them, with the task that fires their alarms.

pub(crate) mod actor;
pub mod alarms;
pub(crate) mod audit;
pub mod bindings;
mod cache;
pub mod call;
pub mod class;
pub mod clock;
pub mod directory;
pub mod engine;
pub mod fuzz;
pub(crate) mod guest_log;
pub mod heap;
pub mod instance;
pub(crate) mod instance_core;
pub(crate) mod keyvalue;
pub(crate) mod service_ctx;
pub mod session;
pub mod start;
pub(crate) mod state;
pub mod stats;
pub mod supervisor;
pub mod workers;

pub use cache::CacheOutcome;
pub use class::Class;
pub use clock::TICK;
pub use engine::{
    Compiled, ELIDED_CHECKS_UP_TO, LoadError, MAX_DECLARED, MAX_NAME, Runtime, RuntimeConfig,
};
pub use instance_core::describe_error;
pub use state::{CpuDeadline, HostState, MemoryLimit};
