//! The on-disk cache of compiled components, so a second start does not recompile.
//!
//! A cached file is named by the SHA-256 of the component's bytes and a hash of the engine's
//! compilation settings (which include wasmtime's version): a new wasmtime, other settings,
//! or a changed component all miss. Files are written to a temporary name and renamed, so a
//! crash mid-write never leaves a half file under a real name.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheOutcome {
    /// Loaded from the cache folder without compiling.
    Hit,
    /// Compiled now (and stored, if a cache folder is set).
    Compiled,
}

/// Feeds `Hash` output into SHA-256, so the key is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file name for `bytes` compiled by `engine`.
fn key(engine: &Engine, bytes: &[u8]) -> String {
    let component = Sha256::digest(bytes);
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let settings = h.0.finalize();
    format!("{}-{}.cwasm", hex(&component[..16]), hex(&settings[..8]))
}

/// Loads `bytes` as a component, from the cache when possible.
pub fn load(
    engine: &Engine,
    dir: Option<&Path>,
    bytes: &[u8],
) -> wasmtime::Result<(Component, CacheOutcome)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, CacheOutcome::Compiled));
    };
    let file = dir.join(key(engine, bytes));
    // Read into memory rather than mapped (`deserialize_file`): a mapped file's pages stay
    // backed by the file, and memory images of instances are mapped from them, so a cache
    // file truncated or rewritten in place while the host runs (by hand, by another
    // program) would kill the host with SIGBUS at the next touch of such a page — and with
    // `keep_resident = 0` every wake touches them afresh (seen in the cache test).
    if let Ok(compiled) = std::fs::read(&file) {
        // SAFETY: the file is in the host's own cache folder and was written by
        // `precompile_component` below for this engine's settings (its name says so);
        // wasmtime still checks its header and version before using it.
        match unsafe { Component::deserialize(engine, &compiled) } {
            Ok(c) => return Ok((c, CacheOutcome::Hit)),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cache entry")
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    if let Err(e) = store(dir, &file, &compiled) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the component cache; continuing without it");
    }
    // SAFETY: `compiled` was produced just now by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, CacheOutcome::Compiled))
}

fn store(dir: &Path, file: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Unique per process and call: tests start several hosts at once in one process.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, file)
}
