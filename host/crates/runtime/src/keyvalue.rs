//! The context of the `wasi:keyvalue` interfaces (`store`, `atomics`, `batch`, version
//! 0.2.0-draft2, the one Spin and wasmCloud guests use), one per instance, and the imports
//! that read and write through the store's [`Transaction`].
//!
//! - `open("default")` and `open("")` give the instance's own bucket, named after the
//!   instance: a keyed instance's bucket is its key's, so `room/42` never sees `room/7`'s
//!   data. Any other name is `access-denied`, and the host says why in its log (once per
//!   instance).
//! - Reads see the call's own writes; writes go into the call's transaction, which the
//!   driver commits after the call — before anything the call caused leaves — or drops if
//!   the call trapped (`instance_core.rs`).
//! - Limits: a key is at most [`MAX_KEY`] bytes, a value [`MAX_VALUE`], one call's writes
//!   [`MAX_CALL_WRITES`]; past them a write fails with `other` saying which, and nothing of
//!   it is kept.
//! - `increment` keeps a counter as 8 little-endian bytes (an `i64`), as Spin does.

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::bindings::{BucketRef, CasRef};
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::ResourceTable;
use wasmwire_store::{StoreError, Transaction};

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
    /// The instance's own bucket.
    own: Arc<str>,
    /// Whether a refused `open` was logged already (once per instance is enough).
    told_denied: bool,
}

impl KeyValueCtx {
    /// The context of instance `name` (`room/42` for a key).
    pub(crate) fn new(name: &str) -> KeyValueCtx {
        KeyValueCtx {
            own: own_bucket(name),
            told_denied: false,
        }
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

impl KeyValueCtxView<'_> {
    fn bucket(&self, b: &Resource<BucketRef>) -> wasmtime::Result<Arc<str>> {
        Ok(self.table.get(b)?.name.clone())
    }

    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        self.txn.get(bucket, key).map_err(storage)
    }

    /// Checks that `more` bytes more fit in this call's writes.
    fn room(&self, more: usize) -> Result<(), Error> {
        let now = self.txn.writes().bytes();
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
        if !identifier.is_empty() && identifier != "default" {
            if !self.ctx.told_denied {
                self.ctx.told_denied = true;
                tracing::info!(
                    target: "wasmwire::store",
                    bucket = %self.ctx.own,
                    "open({identifier:?}) refused: an instance has its own bucket (\"default\"); shared buckets are not available yet"
                );
            }
            return Ok(Err(Error::AccessDenied));
        }
        let name = self.ctx.own.clone();
        Ok(Ok(self.table.push(BucketRef { name })?))
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
        let b = self.bucket(&bucket)?;
        let r = check_value(&key, &value)
            .and_then(|()| self.room(key.len() + value.len()))
            .and_then(|()| self.put(&b, key, Some(value)));
        Ok(r)
    }

    fn delete(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = self.bucket(&bucket)?;
        let r = check_key(&key)
            .and_then(|()| self.room(key.len()))
            .and_then(|()| self.put(&b, key, None));
        Ok(r)
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
        let b = self.bucket(&bucket)?;
        let r = (|| {
            let now = match KeyValueCtxView::get(self, &b, &key)? {
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
            self.room(key.len() + 8)?;
            self.put(&b, key, Some(next.to_le_bytes().to_vec()))?;
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
        if let Err(e) =
            check_value(&cas.key, &value).and_then(|()| self.room(cas.key.len() + value.len()))
        {
            return Ok(Err(atomics::CasError::StoreError(e)));
        }
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
            .put(&cas.bucket, cas.key, Some(value))
            .map_err(atomics::CasError::StoreError))
    }
}

impl atomics::HostCas for KeyValueCtxView<'_> {
    fn new(
        &mut self,
        bucket: Resource<BucketRef>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasRef>, Error>> {
        let b = self.bucket(&bucket)?;
        let current = match KeyValueCtxView::get(self, &b, &key) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(CasRef {
            bucket: b,
            key,
            current,
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
        let b = self.bucket(&bucket)?;
        // All checked before any is written: a refused batch leaves nothing behind.
        let mut bytes = 0;
        for (k, v) in &key_values {
            if let Err(e) = check_value(k, v) {
                return Ok(Err(e));
            }
            bytes += k.len() + v.len();
        }
        if let Err(e) = self.room(bytes) {
            return Ok(Err(e));
        }
        for (k, v) in key_values {
            if let Err(e) = self.put(&b, k, Some(v)) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    fn delete_many(
        &mut self,
        bucket: Resource<BucketRef>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let b = self.bucket(&bucket)?;
        let mut bytes = 0;
        for k in &keys {
            if let Err(e) = check_key(k) {
                return Ok(Err(e));
            }
            bytes += k.len();
        }
        if let Err(e) = self.room(bytes) {
            return Ok(Err(e));
        }
        for k in keys {
            if let Err(e) = self.put(&b, k, None) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}
