//! Generated bindings for the `wasmwire:service` world. Nothing else in the crate calls
//! `bindgen!`; everything else uses these types.
//!
//! `connect` and `request` are async on the host side because they wait for another
//! instance; every other import answers at once, so it stays synchronous (cheaper per call).

wasmtime::component::bindgen!({
    path: "../../../wit",
    world: "service",
    imports: {
        "wasmwire:service/host.connect": async | trappable,
        "wasmwire:service/host.request": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use exports::wasmwire::service::lifecycle::Description;
pub use wasmwire::service::types::{Error as WitError, InstanceInfo, Level, SessionInfo};
