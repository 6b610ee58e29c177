//! # wasmwire: a host for sandboxed WebAssembly services
//!
//! wasmwire runs services — `wasm32-wasip2` components exporting the `wasmwire:service`
//! world (`wit/`) — each in its own wasmtime sandbox with its own limits, wakes them on
//! demand, puts them to sleep when idle, restarts them when they crash, and connects them
//! with sessions (messages) and requests (events).
//!
//! ## Layout
//! Dependencies point down only.
//! - [`cli`]: the `wasmwire` command line.
//! - [`node`]: a running host — loads the components of a manifest, starts one actor per
//!   instance, serves client requests and sessions, shuts down cleanly.
//! - [`runtime`]: the wasmtime side — engine, compiled-component cache, generated bindings
//!   (`runtime::bindings`, the only `bindgen!`), per-instance host state and imports,
//!   sessions and routes, the instance actor, the restart policy.
//! - [`workers`]: the worker threads that run instance actors, and where each instance runs.
//! - [`manifest`]: the TOML manifest — schema, validation, errors with file, line and field.

pub mod broker;
pub mod cli;
pub mod fuzz;
pub mod manifest;
pub mod net;
pub mod node;
pub mod runtime;
pub mod wire;
pub mod workers;
