//! Generated bindings for the `wasmwire:service` world. Nothing else in the crate calls
//! `bindgen!`; everything else uses these types.
//!
//! The world imports `wasi:keyvalue` too (`wit/deps/keyvalue`); its resources are the host
//! types [`BucketRef`] and [`CasRef`].
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
    with: {
        "wasi:keyvalue/store.bucket": BucketRef,
        "wasi:keyvalue/atomics.cas": CasRef,
    },
});

/// What a guest's `wasi:keyvalue` bucket handle stands for: the bucket it opened, and what
/// the instance may do with it.
pub struct BucketRef {
    /// The bucket's name in the host's data (`i/INSTANCE` or `s/NAME`).
    pub name: std::sync::Arc<str>,
    /// Whether the instance may write it.
    pub writable: bool,
    /// Most bytes of keys and values it may hold.
    pub max_data: u64,
    /// Most keys it may hold.
    pub max_keys: u64,
}

/// What a guest's compare-and-swap handle stands for: a key and the value seen there.
pub struct CasRef {
    /// The bucket.
    pub bucket: std::sync::Arc<str>,
    /// The key.
    pub key: String,
    /// Its value when the handle was made (or last failed a swap).
    pub current: Option<Vec<u8>>,
    /// Whether the instance may write the bucket.
    pub writable: bool,
    /// The bucket's byte quota.
    pub max_data: u64,
    /// The bucket's key quota.
    pub max_keys: u64,
}

pub use exports::wasmwire::service::lifecycle::Description;
pub use wasmwire::service::types::{Error as WitError, InstanceInfo, Level, SessionInfo};
