//! # wasmwire-store: the data services keep
//!
//! One crash-safe, transactional [fjall](https://docs.rs/fjall) database per host, in
//! `[host] data_dir`/`keyvalue/`. Why fjall: measured on this machine against redb (a
//! copy-on-write B-tree) in the same run, fsync'd commits of one write ran at 7 700–12 700
//! a second against redb's 3 800–4 700, commits of 64 writes at 210 000–260 000 writes a
//! second against 79 000–102 000, and a read took 290–330 ns against 650–750 (redb opens a
//! snapshot per read); both are pure Rust, lock their files against a second host, and
//! commit atomically (the numbers and the probe are in the README's "Durable state").
//!
//! - [`Database`]: the open database. Reads go straight to it. Writes go through
//!   [`Database::commit`], which hands a [`WriteSet`] to the one committer thread.
//! - The committer folds every write set waiting when it wakes into one atomic batch and
//!   one fsync of the journal (group commit), then answers each: durability costs one
//!   fsync per group, not per call.
//! - [`Transaction`]: the writes of one export call, read back by the same call
//!   (read-your-writes) and committed, or dropped, as one.
//!
//! Buckets are names; a value lives under the bucket's name (with its length before it)
//! followed by the key, so a bucket's keys are one ordered range and listing them is a
//! range scan that never strays into another bucket whose name starts the same way.

mod transaction;

pub use transaction::{Change, KeyPage, Transaction, WriteSet};

use fjall::{KeyspaceCreateOptions, PersistMode};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most write sets folded into one commit.
const MAX_GROUP: usize = 1024;

/// The database's folder under the data dir.
pub const FOLDER: &str = "keyvalue";

/// Why the data could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (locked, damaged, unreadable).
    #[error("cannot open the data in {path}: {reason}")]
    Open {
        /// Its folder.
        path: PathBuf,
        /// Why, and what to do about it.
        reason: String,
    },
    /// A read or a commit failed (a full disk, an I/O error).
    #[error("storage failed: {0}")]
    Io(String),
    /// The committer is gone (the host is stopping), or there is no database here.
    #[error("storage is closed")]
    Closed,
    /// The disk of the data dir has less free than `[host] data_reserve`: nothing written.
    #[error(
        "the disk of the data dir is full: {free} bytes free, and [host] data_reserve keeps {reserve}"
    )]
    Full {
        /// Bytes free when last measured.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// A fault `wasmwire fuzz` injected.
    #[error("storage failed: injected by the fuzzer")]
    Injected,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Where `key` of `bucket` lives: the bucket's length (2 bytes, big-endian), the bucket,
/// the key. Bucket names are instance names, far below 64 KiB.
fn encode(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The bucket and key of a stored key.
fn decode(stored: &[u8]) -> Option<(&str, &str)> {
    let n = u16::from_be_bytes([*stored.first()?, *stored.get(1)?]) as usize;
    let bucket = std::str::from_utf8(stored.get(2..2 + n)?).ok()?;
    let key = std::str::from_utf8(stored.get(2 + n..)?).ok()?;
    Some((bucket, key))
}

/// How much a bucket holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

impl Usage {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.keys.to_le_bytes());
        out[8..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Usage {
        let word = |r: std::ops::Range<usize>| {
            b.get(r)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Usage {
            keys: word(0..8),
            bytes: word(8..16),
        }
    }
}

/// Counters of the committer, read by metrics.
#[derive(Debug, Default)]
pub struct Figures {
    /// Commits (one per group).
    pub commits: AtomicU64,
    /// Write sets committed (one per export call that wrote).
    pub write_sets: AtomicU64,
    /// Keys written or deleted.
    pub writes: AtomicU64,
    /// Nanoseconds spent in commits, all together.
    pub commit_ns: AtomicU64,
    /// Commits that failed.
    pub failures: AtomicU64,
    /// Keys held, every bucket together (counted at open, then kept by the committer).
    pub keys: AtomicI64,
    /// Bytes of keys and values held, every bucket together.
    pub bytes: AtomicI64,
}

/// A write set and who waits for it to be durable.
struct Job {
    writes: WriteSet,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The host's durable data.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    /// Whether commits are fsync'd (always, but in a scratch database).
    sync: bool,
    /// Bytes free on the data dir's disk, measured at open, after each commit and every
    /// second (a write checks it: one load, no system call).
    free: Arc<AtomicU64>,
    /// Bytes a write must leave free (`[host] data_reserve`).
    reserve: AtomicU64,
    db: fjall::Database,
    data: fjall::Keyspace,
    /// Each bucket's [`Usage`], kept in the same batches as the writes that change it.
    usage: fjall::Keyspace,
    path: PathBuf,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<std::thread::JoinHandle<()>>,
    figures: Arc<Figures>,
}

impl Drop for Inner {
    /// Stops the committer after what it holds is written, and waits for it, so that the
    /// database is closed (and its lock released) when the last handle is gone.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl Database {
    /// Opens (or creates) the database in `dir/keyvalue` and starts its committer thread.
    /// One another host has open, or one that cannot be read, is refused with what to do.
    pub fn open(dir: &Path) -> Result<Database, StoreError> {
        Database::open_with(dir, true)
    }

    /// Opens a database whose commits are atomic but not fsync'd: for data thrown away
    /// afterwards (`wasmwire fuzz`'s buckets), where an fsync per call would only slow it.
    pub fn open_scratch(dir: &Path) -> Result<Database, StoreError> {
        Database::open_with(dir, false)
    }

    fn open_with(dir: &Path, sync: bool) -> Result<Database, StoreError> {
        let path = dir.join(FOLDER);
        let refused = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| refused(format!("cannot create {}: {e}", dir.display())))?;
        let db = fjall::Database::builder(&path)
            // Compaction and flushes in the background: two threads are plenty for the
            // write rates one host makes, and leave the cores to the services.
            .worker_threads(2)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => refused(
                    "another host has it open: give each host its own `[host] data_dir`".into(),
                ),
                other => refused(format!(
                    "{other}; nothing was changed: move the folder aside to start with no data, or restore it from a backup"
                )),
            })?;
        let data = db
            .keyspace("data", KeyspaceCreateOptions::default)
            .map_err(|e| refused(e.to_string()))?;
        let usage = db
            .keyspace("usage", KeyspaceCreateOptions::default)
            .map_err(|e| refused(e.to_string()))?;
        let figures = Arc::new(Figures::default());
        // What is held already: once, here; from now on the committer keeps the totals.
        for entry in usage.iter() {
            let (_, v) = entry.into_inner().map_err(|e| refused(e.to_string()))?;
            let u = Usage::decode(&v);
            figures.keys.fetch_add(u.keys as i64, Ordering::Relaxed);
            figures.bytes.fetch_add(u.bytes as i64, Ordering::Relaxed);
        }
        let free = Arc::new(AtomicU64::new(free_space(&path)));
        let (jobs, rx) = mpsc::channel();
        let committer = {
            let free = free.clone();
            let at = path.clone();
            let store = Keyspaces {
                db: db.clone(),
                data: data.clone(),
                usage: usage.clone(),
                sync,
            };
            let figures = figures.clone();
            std::thread::Builder::new()
                .name("wasmwire-commit".into())
                .spawn(move || committer(&store, &rx, &figures, &at, &free))
                .map_err(|e| refused(format!("cannot start the committer thread: {e}")))?
        };
        Ok(Database {
            inner: Arc::new(Inner {
                sync,
                free,
                reserve: AtomicU64::new(0),
                db,
                data,
                usage,
                path,
                jobs: Some(jobs),
                committer: Some(committer),
                figures,
            }),
        })
    }

    /// Keeps `bytes` free on the disk: from now on a write that finds less fails with
    /// [`StoreError::Full`] (and is not made); deletes always pass.
    pub fn set_reserve(&self, bytes: u64) {
        self.inner.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Why a write may not be made now: the disk is below the reserve.
    #[inline]
    pub fn room(&self) -> Result<(), StoreError> {
        let reserve = self.inner.reserve.load(Ordering::Relaxed);
        let free = self.inner.free.load(Ordering::Relaxed);
        if free < reserve {
            return Err(StoreError::Full { free, reserve });
        }
        Ok(())
    }

    /// The database's folder.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The committer's counters.
    pub fn figures(&self) -> &Arc<Figures> {
        &self.inner.figures
    }

    /// The value of `key` in `bucket`, as last committed.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .data
            .get(encode(bucket, key))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    /// Up to `limit` keys of `bucket` after `after` (from the first with `None`), in order.
    pub fn keys(
        &self,
        bucket: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let start = match after {
            Some(k) => Bound::Excluded(encode(bucket, k)),
            None => Bound::Included(encode(bucket, "")),
        };
        let mut out = Vec::new();
        for entry in self
            .inner
            .data
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let stored = entry.key().map_err(io)?;
            match decode(&stored) {
                Some((b, key)) if b == bucket => out.push(key.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// How much `bucket` holds, as last committed.
    pub fn usage(&self, bucket: &str) -> Result<Usage, StoreError> {
        Ok(self
            .inner
            .usage
            .get(bucket.as_bytes())
            .map_err(io)?
            .map_or_else(Usage::default, |v| Usage::decode(&v)))
    }

    /// Every shared bucket (`s/NAME`) ever written, with what it holds (zero once emptied).
    pub fn shared(&self) -> Result<Vec<(String, Usage)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.usage.prefix("s/") {
            let (k, v) = entry.into_inner().map_err(io)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), Usage::decode(&v)));
        }
        Ok(out)
    }

    /// Every bucket that holds anything, by name, with what it holds.
    pub fn buckets(&self) -> Result<Vec<(String, Usage)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.usage.iter() {
            let (k, v) = entry.into_inner().map_err(io)?;
            let usage = Usage::decode(&v);
            if usage.keys > 0 {
                out.push((String::from_utf8_lossy(&k).into_owned(), usage));
            }
        }
        Ok(out)
    }

    /// Deletes every key of `bucket` now (an operator's `wasmwire data delete`), durably;
    /// the number of keys deleted.
    pub fn clear(&self, bucket: &str) -> Result<u64, StoreError> {
        let mut writes = WriteSet::default();
        let name: Arc<str> = Arc::from(bucket);
        let mut after: Option<String> = None;
        loop {
            let keys = self.keys(bucket, after.as_deref(), 1024)?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for k in keys {
                writes.put(&name, k, None);
            }
            after = Some(last);
        }
        let n = writes.len() as u64;
        self.commit_blocking(writes)?;
        Ok(n)
    }

    /// Makes `writes` durable: resolves once they are fsync'd with the rest of their group,
    /// or failed together with it. Nothing of a failed write set is kept.
    pub fn commit(
        &self,
        writes: WriteSet,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self
            .inner
            .jobs
            .as_ref()
            .is_some_and(|j| j.send(Job { writes, done }).is_ok());
        async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Makes `writes` durable, waiting on this thread (tools and tests, not the host).
    pub fn commit_blocking(&self, writes: WriteSet) -> Result<(), StoreError> {
        let store = Keyspaces {
            db: self.inner.db.clone(),
            data: self.inner.data.clone(),
            usage: self.inner.usage.clone(),
            sync: self.inner.sync,
        };
        apply(&store, std::slice::from_ref(&writes)).map(|_| ())
    }
}

/// The committer thread: each wake-up takes every write set waiting (up to [`MAX_GROUP`])
/// and commits them as one batch, so the fsync is shared.
fn committer(
    store: &Keyspaces,
    rx: &mpsc::Receiver<Job>,
    figures: &Figures,
    path: &Path,
    free: &AtomicU64,
) {
    let mut group: Vec<Job> = Vec::with_capacity(64);
    let mut sets: Vec<WriteSet> = Vec::with_capacity(64);
    loop {
        let first = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Other processes fill disks too.
                free.store(free_space(path), Ordering::Relaxed);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let mut dones = Vec::with_capacity(group.len());
        let mut writes = 0u64;
        for job in group.drain(..) {
            writes += job.writes.len() as u64;
            sets.push(job.writes);
            dones.push(job.done);
        }
        let result = apply(store, &sets);
        figures
            .commit_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match &result {
            Ok(change) => {
                figures.keys.fetch_add(change.keys, Ordering::Relaxed);
                figures.bytes.fetch_add(change.bytes, Ordering::Relaxed);
                figures.commits.fetch_add(1, Ordering::Relaxed);
                figures
                    .write_sets
                    .fetch_add(sets.len() as u64, Ordering::Relaxed);
                figures.writes.fetch_add(writes, Ordering::Relaxed);
            }
            Err(e) => {
                figures.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "wasmwire::store", "a commit of {} write sets failed: {e}", sets.len());
            }
        }
        sets.clear();
        let result = result.map(|_| ());
        for done in dones {
            let _ = done.send(result.clone());
        }
        // After the answers: the measurement is for the next writes, not these.
        free.store(free_space(path), Ordering::Relaxed);
    }
}

/// Bytes free (to an unprivileged writer) on the disk that holds `path`; `u64::MAX` when
/// it cannot be measured, so that a failed measurement never refuses writes.
fn free_space(path: &Path) -> u64 {
    match rustix::fs::statvfs(path) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(_) => u64::MAX,
    }
}

/// The database and its keyspaces, as the committer writes them.
struct Keyspaces {
    db: fjall::Database,
    data: fjall::Keyspace,
    usage: fjall::Keyspace,
    /// fsync each batch's journal (see [`Database::open_scratch`] for when not).
    sync: bool,
}

/// Writes `sets` in order as one atomic batch, with the usage of every bucket they change
/// (so usage and data never disagree, whatever moment a crash picks). The journal is
/// fsync'd before the batch becomes visible to any reader: no one reads a write that a
/// power cut could still take back, and a batch whose fsync fails is never seen (fjall
/// then refuses further writes until the host restarts and recovers).
fn apply(store: &Keyspaces, sets: &[WriteSet]) -> Result<Change, StoreError> {
    let mut batch = store
        .db
        .batch()
        .durability(store.sync.then_some(PersistMode::SyncAll));
    // The size each key has after the writes so far in this group (a key may be written by
    // several sets), and each bucket's change.
    let mut sizes: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
    let mut changes: HashMap<&str, Change> = HashMap::new();
    for set in sets {
        for ((bucket, key), value) in set.iter() {
            let stored = encode(bucket, key);
            let old = match sizes.get(&stored) {
                Some(s) => *s,
                None => store
                    .data
                    .get(&stored)
                    .map_err(io)?
                    .map(|v| (key.len() + v.len()) as i64),
            };
            let new = value.as_ref().map(|v| (key.len() + v.len()) as i64);
            *changes.entry(bucket).or_default() += Change {
                keys: i64::from(new.is_some()) - i64::from(old.is_some()),
                bytes: new.unwrap_or(0) - old.unwrap_or(0),
            };
            match value {
                Some(v) => batch.insert(&store.data, stored.clone(), v.as_slice()),
                None => batch.remove(&store.data, stored.clone()),
            }
            sizes.insert(stored, new);
        }
    }
    let mut total = Change::default();
    for (bucket, c) in changes {
        if c == Change::default() {
            continue;
        }
        total += c;
        let was = store
            .usage
            .get(bucket.as_bytes())
            .map_err(io)?
            .map_or_else(Usage::default, |v| Usage::decode(&v));
        let now = Usage {
            keys: was.keys.saturating_add_signed(c.keys),
            bytes: was.bytes.saturating_add_signed(c.bytes),
        };
        batch.insert(&store.usage, bucket.as_bytes(), now.encode().as_slice());
    }
    batch.commit().map_err(io)?;
    Ok(total)
}

#[cfg(test)]
mod tests;
