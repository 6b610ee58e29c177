//! One export call's writes: read back by the same call (read-your-writes), committed or
//! dropped as one.

use super::{Database, StoreError, Usage};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What writes change in a bucket: keys and bytes (of keys and values) added, or taken
/// away when negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Keys added.
    pub keys: i64,
    /// Bytes added.
    pub bytes: i64,
}

impl std::ops::AddAssign for Change {
    fn add_assign(&mut self, o: Change) {
        self.keys += o.keys;
        self.bytes += o.bytes;
    }
}

/// The size a key and its value take: key and value bytes, `None` when absent.
fn size(key: &str, value: Option<usize>) -> Option<i64> {
    value.map(|v| (key.len() + v) as i64)
}

/// What replacing a stored `old` size by `new` changes.
fn change_of(old: Option<i64>, new: Option<i64>) -> Change {
    Change {
        keys: i64::from(new.is_some()) - i64::from(old.is_some()),
        bytes: new.unwrap_or(0) - old.unwrap_or(0),
    }
}

/// Writes not yet durable, by bucket and key: `Some(value)` to set, `None` to delete. A later
/// write of a key replaces the earlier one, so a write set holds each key once.
#[derive(Debug, Default)]
pub struct WriteSet {
    buckets: BTreeMap<Arc<str>, BTreeMap<String, Option<Vec<u8>>>>,
    len: usize,
    bytes: usize,
}

impl WriteSet {
    /// Keys written or deleted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets `key` in `bucket` to `value` (`None` deletes it).
    pub fn put(&mut self, bucket: &Arc<str>, key: String, value: Option<Vec<u8>>) {
        let keys = match self.buckets.get_mut(&**bucket) {
            Some(k) => k,
            None => self.buckets.entry(bucket.clone()).or_default(),
        };
        let add = key.len() + value.as_ref().map_or(0, Vec::len);
        match keys.get_mut(&key) {
            Some(old) => {
                self.bytes -= key.len() + old.as_ref().map_or(0, Vec::len);
                *old = value;
            }
            None => {
                keys.insert(key, value);
                self.len += 1;
            }
        }
        self.bytes += add;
    }

    /// What this write set says of `key`: `None` if it does not touch it, `Some(None)` if it
    /// deletes it.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Option<&[u8]>> {
        self.buckets.get(bucket)?.get(key).map(|v| v.as_deref())
    }

    /// Every write, by bucket then key.
    pub fn iter(&self) -> impl Iterator<Item = ((&str, &str), &Option<Vec<u8>>)> {
        self.buckets
            .iter()
            .flat_map(|(b, keys)| keys.iter().map(move |(k, v)| ((&**b, k.as_str()), v)))
    }

    /// The writes of `bucket` after key `after`, in order.
    fn after<'a>(
        &'a self,
        bucket: &str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Option<Vec<u8>>)> + 'a {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        self.buckets
            .get(bucket)
            .into_iter()
            .flat_map(move |keys| keys.range::<str, _>((lower, Bound::Unbounded)))
    }
}

/// One page of a bucket's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys in order.
    pub keys: Vec<String>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// The writes of the export call in progress, over the host's database (none in a scratch
/// store: every access then fails with [`StoreError::Closed`]).
#[derive(Default)]
pub struct Transaction {
    db: Option<Database>,
    writes: WriteSet,
    /// What this call's writes change, by bucket (for quotas).
    changes: HashMap<Arc<str>, Change>,
    /// Bytes of keys and values this export call has written, commits within it included
    /// (a call's bound holds across its `connect`/`request` commits).
    call_bytes: usize,
    /// Commits made with writes, all calls together.
    commits: u64,
    /// The next read or write fails with [`StoreError::Injected`] (set by the fuzzer).
    fault: std::sync::atomic::AtomicBool,
}

impl Transaction {
    /// A transaction over `db`, with nothing written.
    pub fn new(db: Option<Database>) -> Transaction {
        Transaction {
            db,
            writes: WriteSet::default(),
            changes: HashMap::new(),
            call_bytes: 0,
            commits: 0,
            fault: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes the next read of the database (a `get` of a key this call did not write, a
    /// `put`'s quota check, a listing) fail with [`StoreError::Injected`] (the fuzzer's
    /// storage fault).
    pub fn inject_fault(&mut self) {
        *self.fault.get_mut() = true;
    }

    /// Commits made with writes so far (a call that wrote and then opened a `connect` or
    /// `request` commits before it).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// An injected fault, once.
    #[inline]
    fn faulted(&self) -> Result<(), StoreError> {
        if self.fault.load(std::sync::atomic::Ordering::Relaxed) {
            self.fault
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::Injected);
        }
        Ok(())
    }

    /// Bytes of keys and values this export call has written so far.
    pub fn call_bytes(&self) -> usize {
        self.call_bytes
    }

    /// The export call is over: the next one starts its count of bytes from zero.
    pub fn end_call(&mut self) {
        self.call_bytes = 0;
    }

    /// How `bucket` would stand once this call's writes are committed: keys and bytes.
    pub fn usage(&self, bucket: &str) -> Result<Usage, StoreError> {
        let committed = self.db()?.usage(bucket)?;
        let c = self.changes.get(bucket).copied().unwrap_or_default();
        Ok(Usage {
            keys: committed.keys.saturating_add_signed(c.keys),
            bytes: committed.bytes.saturating_add_signed(c.bytes),
        })
    }

    /// What writing a value of `value_len` bytes to `key` (`None`: deleting it) would change
    /// in `bucket`, from where this call left it.
    pub fn change(
        &self,
        bucket: &str,
        key: &str,
        value_len: Option<usize>,
    ) -> Result<Change, StoreError> {
        let now = match self.writes.get(bucket, key) {
            Some(v) => size(key, v.map(<[u8]>::len)),
            None => size(key, self.db()?.get(bucket, key)?.map(|v| v.len())),
        };
        Ok(change_of(now, size(key, value_len)))
    }

    /// The database, if the host has one.
    pub fn database(&self) -> Option<&Database> {
        self.db.as_ref()
    }

    /// The database, for a read (an injected fault fails the next one).
    fn db(&self) -> Result<&Database, StoreError> {
        self.faulted()?;
        self.db.as_ref().ok_or(StoreError::Closed)
    }

    /// Whether this call wrote anything not yet durable.
    #[inline]
    pub fn is_dirty(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The writes so far.
    pub fn writes(&self) -> &WriteSet {
        &self.writes
    }

    /// The value of `key`: this call's own write if it made one, else the committed value.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(bucket, key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.db()?.get(bucket, key),
        }
    }

    /// Sets (or with `None` deletes) `key`, visible to this call at once and to others once
    /// committed.
    pub fn put(
        &mut self,
        bucket: &Arc<str>,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        if value.is_some() {
            self.db()?.room()?;
        }
        let c = self.change(bucket, &key, value.as_ref().map(Vec::len))?;
        match self.changes.get_mut(&**bucket) {
            Some(total) => *total += c,
            None => {
                self.changes.insert(bucket.clone(), c);
            }
        }
        self.call_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.writes.put(bucket, key, value);
        Ok(())
    }

    /// Up to `limit` keys of `bucket` after `after`, this call's writes included.
    pub fn keys(
        &self,
        bucket: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let deletes = self
            .writes
            .after(bucket, after)
            .filter(|(_, v)| v.is_none())
            .count();
        // Enough committed keys that, after this call's deletes, one more than a page is
        // left whenever more exist: then `more` is exact.
        let want = limit + deletes + 1;
        let committed = self.db()?.keys(bucket, after, want)?;
        let horizon = (committed.len() == want)
            .then(|| committed.last().cloned())
            .flatten();
        let mut merged: BTreeMap<String, bool> = committed.into_iter().map(|k| (k, true)).collect();
        for (k, v) in self.writes.after(bucket, after) {
            if horizon.as_deref().is_some_and(|h| k.as_str() > h) {
                break;
            }
            merged.insert(k.clone(), v.is_some());
        }
        let mut keys: Vec<String> = merged
            .into_iter()
            .filter_map(|(k, live)| live.then_some(k))
            .collect();
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok(KeyPage { keys, more })
    }

    /// Takes this call's writes, leaving it clean.
    pub fn take(&mut self) -> WriteSet {
        self.changes.clear();
        std::mem::take(&mut self.writes)
    }

    /// Drops this call's writes: none of them will ever be seen.
    pub fn rollback(&mut self) {
        self.changes.clear();
        self.writes = WriteSet::default();
    }

    /// Makes this call's writes durable; resolves at once when it wrote nothing.
    pub fn commit(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + use<> {
        let writes = self.take();
        let pending = match &self.db {
            Some(db) if !writes.is_empty() => {
                self.commits += 1;
                Some(db.commit(writes))
            }
            _ => None,
        };
        async move {
            match pending {
                Some(p) => p.await,
                None => Ok(()),
            }
        }
    }
}
