//! # wasmwire: a host for sandboxed WebAssembly services
//!
//! wasmwire runs services — `wasm32-wasip2` components exporting the `wasmwire:service`
//! world (`wit/`) — each in its own wasmtime sandbox with its own limits, wakes them on
//! demand, puts them to sleep when idle, restarts them when they crash, and connects them
//! with sessions (messages) and requests (events).
//!
//! ## Layout
//! One crate per layer, so that an import the wrong way does not compile. From the top:
//! - the `wasmwire` binary (`src/main.rs`, one file per command under `src/commands/`):
//!   the command line, the only user of `anyhow`.
//! - this library: [`node`] — a running host: loads the components of a manifest, starts
//!   one actor per instance, serves client requests and sessions, starts the network, shuts
//!   down cleanly — [`gateway`], the HTTP and WebSocket gateway (hyper), and [`metrics`], the
//!   figures it serves at `/metrics`. It re-exports the crates
//!   below under their short names.
//! - [`net`] (`wasmwire-net`): the QUIC side — one quinn endpoint, TLS with raw public keys,
//!   the task that drives the broker, session streams between hosts. An adapter: what a
//!   peer may ask of this host is the runtime directory's to answer.
//! - [`runtime`] (`wasmwire-runtime`): the wasmtime side — engine, compiled-component
//!   cache, generated bindings, the runtime directory every entry point goes through, the
//!   instance core driven by the instance actor and by [`fuzz`], the restart policy, the
//!   worker threads.
//! - [`broker`] (`wasmwire-broker`): the channel-0 state machine, sans-IO (inputs
//!   `handle_*`, outputs `poll_*`, time passed in).
//! - [`store`] (`wasmwire-store`): the durable data of `wasi:keyvalue` — one redb file,
//!   transactions per call, group commits.
//! - [`manifest`] (`wasmwire-manifest`): the TOML manifest — schema, validation, errors
//!   with file, line and field.
//! - [`wire`] (`wasmwire-wire`): the codecs — frames, control messages and session headers,
//!   data frames, peer ids, service addresses. Pure functions, fuzzed by `tests/fuzz/`.

pub use wasmwire_broker as broker;
pub use wasmwire_manifest as manifest;
pub use wasmwire_net as net;
pub use wasmwire_runtime as runtime;
pub use wasmwire_runtime::{fuzz, workers};
pub use wasmwire_store as store;
pub use wasmwire_wire as wire;

pub mod gateway;
pub mod metrics;
pub mod node;
