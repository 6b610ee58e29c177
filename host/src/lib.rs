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
//! - [`fuzz`]: `wasmwire fuzz` — drives a service's exports through the runtime with
//!   generated step sequences on worker threads, shrinks a failure, reads and writes replay
//!   files.
//! - [`metrics`]: the Prometheus endpoint — the host's figures encoded per scrape.
//! - [`node`]: a running host — loads the components of a manifest, starts one actor per
//!   instance, serves client requests and sessions, starts the network, shuts down cleanly.
//! - [`net`]: the QUIC side — one quinn endpoint, TLS with raw public keys, the task that
//!   drives the broker, session streams between hosts.
//! - [`broker`]: the channel-0 state machine, sans-IO (inputs `handle_*`, outputs `poll_*`,
//!   time passed in): hellos, requests and answers, peer exchange, one connection per pair.
//! - [`wire`]: the codecs — frames, control messages and session headers, data frames,
//!   peer ids. Pure functions, fuzzed by the targets in `tests/fuzz/`.
//! - [`scaffold`]: `wasmwire new` — a service's folder in Rust, Python or JavaScript.
//! - [`top`]: `wasmwire top` — a live terminal view drawn from a host's `stats` answers.
//! - [`runtime`]: the wasmtime side — engine, compiled-component cache, generated bindings
//!   (`runtime::bindings`, the only `bindgen!`), per-instance host state and imports,
//!   sessions and routes, the instance actor, the restart policy.
//! - [`workers`]: the worker threads that run instance actors, and where each instance runs.
//! - [`manifest`]: the TOML manifest — schema, validation, errors with file, line and field.

pub mod broker;
pub mod cli;
pub mod fuzz;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod node;
pub mod runtime;
pub mod scaffold;
pub mod top;
pub mod wire;
pub mod workers;
