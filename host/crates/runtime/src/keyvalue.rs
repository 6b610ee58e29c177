//! The context of the `wasi:keyvalue` interfaces (`store`, `atomics`, `batch`, version
//! 0.2.0-draft2, the one Spin and wasmCloud guests use), one per instance, and the imports
//! that read and write through the store's [`Transaction`].
//!
//! - `open("default")` and `open("")` give the instance's own bucket, named after the
//!   instance: a keyed instance's bucket is its key's, so `room/42` never sees `room/7`'s
//!   data. A shared bucket opens by its name if the instance's manifest entry lists it in
//!   `buckets` (read-only or read-write); any other name, or a write to a read-only bucket,
//!   is `access-denied`, and the host says why in its log (once per instance).
//! - Quotas: a write that would take a bucket past its `max_keys` or `max_data` fails with
//!   `other` saying which, and is not made; a write that shrinks a bucket always passes.
//! - Reads see the call's own writes; writes go into the call's transaction, which the
//!   driver commits after the call — before anything the call caused leaves — or drops if
//!   the call trapped (`instance_core.rs`).
//! - Limits: a key is at most [`MAX_KEY`] bytes, a value [`MAX_VALUE`], one call's writes
//!   [`MAX_CALL_WRITES`]; past them a write fails with `other` saying which, and nothing of
//!   it is kept.
//! - `increment` keeps a counter as 8 little-endian bytes (an `i64`), as Spin does.

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::bindings::{BucketRef, CasRef};
use super::instance::SharedBucket;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::ResourceTable;
use wasmwire_store::{Change, StoreError, Transaction};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most bytes of keys and values one export call may write.
pub const MAX_CALL_WRITES: usize = 32 << 20;
/// Keys per `list-keys` page.
const PAGE: usize = 1000;

type Error = store::Error;

/// What the `wasi:keyvalue` imports of one instance need beside the transaction.
pub struct KeyValueCtx {
    /// The instance's name, for the log.
    instance: Arc<str>,
    /// The instance's own bucket, named on its first `open` (most wakes open none).
    own: Option<Arc<str>>,
    /// Its quotas: bytes, keys.
    own_quota: (u64, u64),
    /// The shared buckets it may open.
    shared: Arc<[SharedBucket]>,
    /// Whether a refusal was logged already (once per instance is enough).
    told_denied: bool,
}

impl KeyValueCtx {
    /// The context of instance `name` (`room/42` for a key) under `limits`, with no shared
    /// buckets.
    pub(crate) fn new(name: &Arc<str>, limits: &wasmwire_manifest::Limits) -> KeyValueCtx {
        KeyValueCtx {
            instance: name.clone(),
            own: None,
            own_quota: (limits.max_data, limits.max_keys),
            shared: Arc::from([]),
            told_denied: false,
        }
    }

    /// The instance's own bucket.
    fn own(&mut self) -> Arc<str> {
        self.own
            .get_or_insert_with(|| own_bucket(&self.instance))
            .clone()
    }

    /// Makes `bucket` the instance's own (the fuzzer gives each run a fresh one).
    pub(crate) fn own_is(&mut self, bucket: Arc<str>) {
        self.own = Some(bucket);
    }

    /// Lets the instance open these shared buckets.
    pub(crate) fn share(&mut self, buckets: Arc<[SharedBucket]>) {
        self.shared = buckets;
    }

    /// Says once, in the host's log, why an access was refused.
    fn denied(&mut self, why: std::fmt::Arguments<'_>) -> Error {
        if !self.told_denied {
            self.told_denied = true;
            tracing::info!(target: "wasmwire::store", instance = %self.instance, "{why} (said once per instance)");
        }
        Error::AccessDenied
    }
}

/// A bucket's name for people: `ledger` for a shared one, `its own bucket` for the
/// instance's.
fn label(bucket: &str) -> String {
    match bucket.strip_prefix("s/") {
        Some(name) => format!("bucket {name:?}"),
        None => "its own bucket".into(),
    }
}

/// The bucket an instance gets from `open("default")`.
pub fn own_bucket(instance: &str) -> Arc<str> {
    Arc::from(format!("i/{instance}"))
}

/// The `wasi:keyvalue` imports of one instance: its context, the store's resource table,
/// and the transaction of the call in progress.
pub struct KeyValueCtxView<'a> {
    /// The interface's context.
    pub ctx: &'a mut KeyValueCtx,
    /// Where `bucket` and `cas` handles live.
    pub table: &'a mut ResourceTable,
    /// The call's writes.
    pub txn: &'a mut Transaction,
}

/// The linker's getter type for the `wasi:keyvalue` imports.
pub struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueCtxView<'a>;
}

fn storage(e: StoreError) -> Error {
    match e {
        StoreError::Closed => Error::Other(
            "this host has no data store here (it is stopping, or this is a scratch instance)"
                .into(),
        ),
        other => Error::Other(other.to_string()),
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY {
        return Err(Error::Other(format!(
            "a key is at most {MAX_KEY} bytes; this one is {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(key: &str, value: &[u8]) -> Result<(), Error> {
    check_key(key)?;
    if value.len() > MAX_VALUE {
        return Err(Error::Other(format!(
            "a value is at most {MAX_VALUE} bytes; the one for {key:?} is {}",
            value.len()
        )));
    }
    Ok(())
}

/// A bucket as a write sees it: its name and quotas, if it may be written.
struct Writable {
    name: Arc<str>,
    max_data: u64,
    max_keys: u64,
}

impl KeyValueCtxView<'_> {
    fn bucket(&self, b: &Resource<BucketRef>) -> wasmtime::Result<Arc<str>> {
        Ok(self.table.get(b)?.name.clone())
    }

    /// The bucket behind `b` for a write, or `access-denied` if it is read-only here.
    fn writable(&mut self, b: &Resource<BucketRef>) -> wasmtime::Result<Result<Writable, Error>> {
        let r = self.table.get(b)?;
        if !r.writable {
            let name = r.name.clone();
            return Ok(Err(self.ctx.denied(format_args!(
                "a write to {} refused: it is read-only for this service (`buckets = {{ {} = \"read-write\" }}` allows writes)",
                label(&name),
                name.strip_prefix("s/").unwrap_or(&name)
            ))));
        }
        Ok(Ok(Writable {
            name: r.name.clone(),
            max_data: r.max_data,
            max_keys: r.max_keys,
        }))
    }

    /// The bucket of a compare-and-swap handle for its write, if it may be written.
    fn cas_bucket(&self, cas: &CasRef) -> Option<Writable> {
        cas.writable.then(|| Writable {
            name: cas.bucket.clone(),
            max_data: cas.max_data,
            max_keys: cas.max_keys,
        })
    }

    /// Checks that writes changing the bucket by `change` keep it within its quotas.
    fn within_quota(&self, b: &Writable, change: Change) -> Result<(), Error> {
        if change.keys <= 0 && change.bytes <= 0 {
            return Ok(());
        }
        let now = self.txn.usage(&b.name).map_err(storage)?;
        let keys = now.keys.saturating_add_signed(change.keys);
        let bytes = now.bytes.saturating_add_signed(change.bytes);
        if change.keys > 0 && keys > b.max_keys {
            return Err(Error::Other(format!(
                "{} is full: it may hold {} keys (max_keys), and this write would make {keys}",
                label(&b.name),
                b.max_keys
            )));
        }
        if change.bytes > 0 && bytes > b.max_data {
            return Err(Error::Other(format!(
                "{} is full: it may hold {} bytes of keys and values (max_data), and this write would make {bytes}",
                label(&b.name),
                b.max_data
            )));
        }
        Ok(())
    }

    /// Writes `(key, value)` pairs (`None` deletes) as one: all are checked — sizes, room in
    /// the call, the bucket's quotas — before any is made.
    fn write_all(
        &mut self,
        b: &Writable,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), Error> {
        let mut bytes = 0;
        for (k, v) in &writes {
            match v {
                Some(v) => check_value(k, v)?,
                None => check_key(k)?,
            }
            bytes += k.len() + v.as_ref().map_or(0, Vec::len);
        }
        self.room(bytes)?;
        // A key written twice in one batch counts at its last value.
        let mut last: BTreeMap<&str, Option<usize>> = BTreeMap::new();
        for (k, v) in &writes {
            last.insert(k, v.as_ref().map(Vec::len));
        }
        let mut change = Change::default();
        for (k, len) in last {
            change += self.txn.change(&b.name, k, len).map_err(storage)?;
        }
        self.within_quota(b, change)?;
        for (k, v) in writes {
            self.put(&b.name, k, v)?;
        }
        Ok(())
    }

    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        self.txn.get(bucket, key).map_err(storage)
    }

    /// Checks that `more` bytes more fit in this call's writes.
    fn room(&self, more: usize) -> Result<(), Error> {
        let now = self.txn.call_bytes();
        if now + more > MAX_CALL_WRITES {
            return Err(Error::Other(format!(
                "one call may write at most {MAX_CALL_WRITES} bytes; this one has {now} and asks for {more} more"
            )));
        }
        Ok(())
    }

    fn put(&mut self, bucket: &Arc<str>, key: String, value: Option<Vec<u8>>) -> Result<(), Error> {
        self.txn.put(bucket, key, value).map_err(storage)
    }
}

impl store::Host for KeyValueCtxView<'_> {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<BucketRef>, Error>> {
        if self.txn.database().is_none() {
            return Ok(Err(storage(StoreError::Closed)));
        }
        let bucket = if identifier.is_empty() || identifier == "default" {
            BucketRef {
                name: self.ctx.own(),
                writable: true,
                max_data: self.ctx.own_quota.0,
                max_keys: self.ctx.own_quota.1,
            }
        } else {
            match self.ctx.shared.iter().find(|b| *b.name == *identifier) {
                Some(b) => BucketRef {
                    name: b.id.clone(),
                    writable: b.writable,
                    max_data: b.max_data,
                    max_keys: b.max_keys,
                },
                None => {
                    return Ok(Err(self.ctx.denied(format_args!(
                        "open({identifier:?}) refused: an instance has its own bucket (\"default\") and the shared buckets its manifest entry lists in `buckets`"
                    ))));
                }
            }
        };
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for KeyValueCtxView<'_> {
    fn get(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let b = self.bucket(&bucket)?;
        Ok(KeyValueCtxView::get(self, &b, &key))
    }

    fn set(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = match self.writable(&bucket)? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.write_all(&b, vec![(key, Some(value))]))
    }

    fn delete(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = match self.writable(&bucket)? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.write_all(&b, vec![(key, None)]))
    }

    fn exists(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let b = self.bucket(&bucket)?;
        Ok(KeyValueCtxView::get(self, &b, &key).map(|v| v.is_some()))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<BucketRef>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, Error>> {
        let b = self.bucket(&bucket)?;
        let r = self
            .txn
            .keys(&b, cursor.as_deref(), PAGE)
            .map_err(storage)
            .map(|page| store::KeyResponse {
                cursor: if page.more {
                    page.keys.last().cloned()
                } else {
                    None
                },
                keys: page.keys,
            });
        Ok(r)
    }

    fn drop(&mut self, bucket: Resource<BucketRef>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueCtxView<'_> {
    fn increment(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let b = match self.writable(&bucket)? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let r = (|| {
            let now = match KeyValueCtxView::get(self, &b.name, &key)? {
                None => 0,
                Some(v) => i64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                    Error::Other(format!(
                        "{key:?} holds {} bytes, not a counter (8 little-endian bytes)",
                        v.len()
                    ))
                })?),
            };
            let next = now
                .checked_add(delta)
                .ok_or_else(|| Error::Other(format!("{key:?} would overflow: {now} + {delta}")))?;
            self.write_all(&b, vec![(key, Some(next.to_le_bytes().to_vec()))])?;
            Ok(next)
        })();
        Ok(r)
    }

    fn swap(
        &mut self,
        cas: Resource<CasRef>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        let Some(b) = self.cas_bucket(&cas) else {
            return Ok(Err(atomics::CasError::StoreError(self.ctx.denied(
                format_args!(
                    "a swap in {} refused: it is read-only for this service",
                    label(&cas.bucket)
                ),
            ))));
        };
        let now = match KeyValueCtxView::get(self, &cas.bucket, &cas.key) {
            Ok(v) => v,
            Err(e) => return Ok(Err(atomics::CasError::StoreError(e))),
        };
        if now != cas.current {
            let again = self.table.push(CasRef {
                current: now,
                ..cas
            })?;
            return Ok(Err(atomics::CasError::CasFailed(again)));
        }
        Ok(self
            .write_all(&b, vec![(cas.key, Some(value))])
            .map_err(atomics::CasError::StoreError))
    }
}

impl atomics::HostCas for KeyValueCtxView<'_> {
    fn new(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasRef>, Error>> {
        let r = self.table.get(&bucket)?;
        let (b, writable, max_data, max_keys) =
            (r.name.clone(), r.writable, r.max_data, r.max_keys);
        let current = match KeyValueCtxView::get(self, &b, &key) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(CasRef {
            bucket: b,
            key,
            current,
            writable,
            max_data,
            max_keys,
        })?))
    }

    fn current(
        &mut self,
        cas: Resource<CasRef>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    fn drop(&mut self, cas: Resource<CasRef>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueCtxView<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<BucketRef>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let b = self.bucket(&bucket)?;
        let r = keys
            .into_iter()
            .map(|k| Ok(KeyValueCtxView::get(self, &b, &k)?.map(|v| (k, v))))
            .collect();
        Ok(r)
    }

    fn set_many(
        &mut self,
        bucket: Resource<BucketRef>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = match self.writable(&bucket)? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let writes = key_values.into_iter().map(|(k, v)| (k, Some(v))).collect();
        Ok(self.write_all(&b, writes))
    }

    fn delete_many(
        &mut self,
        bucket: Resource<BucketRef>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = match self.writable(&bucket)? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let writes = keys.into_iter().map(|k| (k, None)).collect();
        Ok(self.write_all(&b, writes))
    }
}
