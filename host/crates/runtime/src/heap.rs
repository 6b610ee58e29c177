//! Giving the malloc heap's free pages back to the system after a burst of keyed instances
//! recedes.
//!
//! An awake instance holds about 25 KiB of heap (wasmtime's store and instance data, its
//! actor task and mailbox). When thousands of keys retire, glibc keeps the freed chunks in
//! its arenas and RSS stays at the burst's height (bench (l): +10 MiB after 100 000 keys,
//! and the host's RSS never came back). `malloc_trim` returns every whole free page of
//! every arena. It walks the arenas under their locks, so it runs rarely and off the
//! instances' threads: when a class's live keys fall to a quarter of their peak since the
//! last trim, and that peak was at least [`BURST`] keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Smallest peak of live keys whose receding is worth a trim.
pub(crate) const BURST: usize = 256;

static TRIMMING: AtomicBool = AtomicBool::new(false);
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// Whether live keys that peaked at `peak` since the last trim and are `live` now have
/// receded enough to trim.
pub(crate) fn receded(peak: usize, live: usize) -> bool {
    peak >= BURST && live <= peak / 4
}

/// Returns the heap's free pages to the system, on a thread of its own; nothing if a trim
/// is under way already.
pub(crate) fn give_back() {
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("wasmwire-trim".into())
        .spawn(|| {
            trim();
            TRIMS.fetch_add(1, Ordering::Relaxed);
            TRIMMING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        TRIMMING.store(false, Ordering::Release);
    }
}

/// Trims finished so far, and whether one is under way (for benchmarks and tests).
pub fn trims() -> (u64, bool) {
    (
        TRIMS.load(Ordering::Relaxed),
        TRIMMING.load(Ordering::Acquire),
    )
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's `malloc_trim` takes no pointers and may be called from any thread at
    // any time; it locks each arena while it releases that arena's free pages.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_burst_recedes() {
        assert!(!receded(BURST - 1, 0), "too small a peak to bother");
        assert!(!receded(1000, 251), "still above a quarter of the peak");
        assert!(receded(1000, 250));
        assert!(receded(BURST, 0));
    }

    #[test]
    fn give_back_runs_once_at_a_time_and_finishes() {
        let (before, _) = trims();
        give_back();
        give_back();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while trims().1 || trims().0 == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the trim never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(trims().0 > before);
    }
}
