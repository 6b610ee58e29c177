//! Integration tests: real hosts running real components built from `sample-services/`
//! and `tests/guests/`. One test binary (one link of wasmtime) with a module per topic.

mod alarms;
mod batches;
mod cache;
mod chaos;
mod cli;
mod containment;
mod deploy;
mod discovery;
mod durable;
mod exhaustion;
mod fuzz;
mod gateway;
mod hostile_peers;
mod keyed;
mod layering;
mod lifecycle;
mod liveness;
mod manifests;
mod observe;
mod peers;
mod polyglot;
mod samples;
mod scaffold;
mod sessions;
mod shutdown;
mod sim;
mod soak;
