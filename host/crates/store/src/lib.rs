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

pub use transaction::{KeyPage, Transaction, WriteSet};

use fjall::{KeyspaceCreateOptions, PersistMode};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    db: fjall::Database,
    data: fjall::Keyspace,
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
        let figures = Arc::new(Figures::default());
        let (jobs, rx) = mpsc::channel();
        let committer = {
            let db = db.clone();
            let data = data.clone();
            let figures = figures.clone();
            std::thread::Builder::new()
                .name("wasmwire-commit".into())
                .spawn(move || committer(&db, &data, &rx, &figures))
                .map_err(|e| refused(format!("cannot start the committer thread: {e}")))?
        };
        Ok(Database {
            inner: Arc::new(Inner {
                db,
                data,
                path,
                jobs: Some(jobs),
                committer: Some(committer),
                figures,
            }),
        })
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

    /// Every bucket with its number of keys and bytes of values (for operators).
    pub fn buckets(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for entry in self.inner.data.iter() {
            let (k, v) = entry.into_inner().map_err(io)?;
            let Some((b, _)) = decode(&k) else { continue };
            match out.last_mut() {
                Some(last) if last.0 == b => {
                    last.1 += 1;
                    last.2 += v.len() as u64;
                }
                _ => out.push((b.to_string(), 1, v.len() as u64)),
            }
        }
        Ok(out)
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
        apply(
            &self.inner.db,
            &self.inner.data,
            std::slice::from_ref(&writes),
        )
    }
}

/// The committer thread: each wake-up takes every write set waiting (up to [`MAX_GROUP`])
/// and commits them as one batch, so the fsync is shared.
fn committer(
    db: &fjall::Database,
    data: &fjall::Keyspace,
    rx: &mpsc::Receiver<Job>,
    figures: &Figures,
) {
    let mut group: Vec<Job> = Vec::with_capacity(64);
    let mut sets: Vec<WriteSet> = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
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
        let result = apply(db, data, &sets);
        figures
            .commit_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
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
        for done in dones {
            let _ = done.send(result.clone());
        }
    }
}

/// Writes `sets` in order as one atomic batch and fsyncs the journal.
fn apply(
    db: &fjall::Database,
    data: &fjall::Keyspace,
    sets: &[WriteSet],
) -> Result<(), StoreError> {
    let mut batch = db.batch();
    for set in sets {
        for ((bucket, key), value) in set.iter() {
            match value {
                Some(v) => batch.insert(data, encode(bucket, key), v.as_slice()),
                None => batch.remove(data, encode(bucket, key)),
            }
        }
    }
    batch.commit().map_err(io)?;
    db.persist(PersistMode::SyncAll).map_err(io)
}

#[cfg(test)]
mod tests;
