//! Durable state: the instance's own bucket of the standard `wasi:keyvalue` interfaces,
//! with values as JSON.
//!
//! What an export call writes is one transaction: visible to the same call at once, to
//! everyone once the call returns, and gone if the call traps. (A `connect` or `request`
//! after a write commits the writes before it first, so a later trap keeps those.) The host makes it durable
//! before anything the call caused — its reply, its messages — leaves, so a caller that has
//! the reply knows the write survives a crash of the host. The bucket outlives sleep,
//! crashes and restarts of the host; a keyed instance's is its key's own.
//!
//! ```ignore
//! let n: i64 = store::get("count")?.unwrap_or(0);
//! store::set("count", &(n + 1))?;
//! ```
//!
//! The raw interfaces are [`kv`], [`atomics`] and [`batch`] (what wit-bindgen generates
//! for `wasi:keyvalue@0.2.0-draft2`), for bytes instead of JSON.

use std::cell::RefCell;
use std::fmt;

pub use crate::bindings::wasi::keyvalue::store as kv;
pub use crate::bindings::wasi::keyvalue::{atomics, batch};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The host has no store here.
    NoSuchStore,
    /// The bucket is not this instance's to open.
    AccessDenied,
    /// A limit (key, value or call size), or storage itself, failed; the text says which.
    Other(String),
    /// The stored value is not the JSON of the type asked for.
    Json(String),
}

impl From<kv::Error> for StoreError {
    fn from(e: kv::Error) -> StoreError {
        match e {
            kv::Error::NoSuchStore => StoreError::NoSuchStore,
            kv::Error::AccessDenied => StoreError::AccessDenied,
            kv::Error::Other(s) => StoreError::Other(s),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NoSuchStore => f.write_str("no such store"),
            StoreError::AccessDenied => f.write_str("access denied"),
            StoreError::Other(s) => write!(f, "store: {s}"),
            StoreError::Json(s) => write!(f, "stored value: {s}"),
        }
    }
}

impl std::error::Error for StoreError {}

thread_local! {
    static OWN: RefCell<Option<kv::Bucket>> = const { RefCell::new(None) };
}

/// Runs `f` on the instance's own bucket, opened once per awake period.
pub fn with_bucket<R>(
    f: impl FnOnce(&kv::Bucket) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    OWN.with(|own| {
        let mut own = own.borrow_mut();
        if own.is_none() {
            *own = Some(kv::open("default")?);
        }
        f(own.as_ref().expect("opened above"))
    })
}

/// The value of `key` read as JSON; `None` if there is none.
pub fn get<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, StoreError> {
    with_bucket(|b| match b.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Json(format!("{key:?}: {e}"))),
    })
}

/// Sets `key` to `value` as JSON.
pub fn set<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Json(e.to_string()))?;
    with_bucket(|b| Ok(b.set(key, &bytes)?))
}

/// Deletes `key` (nothing happens if there is none).
pub fn delete(key: &str) -> Result<(), StoreError> {
    with_bucket(|b| Ok(b.delete(key)?))
}

/// Adds `delta` to the counter at `key` (0 if there is none) and returns the new value.
/// A counter is stored as 8 little-endian bytes, not JSON.
pub fn increment(key: &str, delta: i64) -> Result<i64, StoreError> {
    with_bucket(|b| Ok(atomics::increment(b, key, delta)?))
}

/// Every key of the bucket, in order.
pub fn keys() -> Result<Vec<String>, StoreError> {
    with_bucket(|b| {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = b.list_keys(cursor.as_deref())?;
            out.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    })
}
