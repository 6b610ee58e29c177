//! What an instance has done, counted where it happens: plain relaxed atomics that the
//! actor bumps (no lookup, no lock, no allocation per call) and that the metrics endpoint
//! and the `stats` control answer read when asked.
//!
//! The keys of a keyed class share their class's counters: a class may have a hundred
//! thousand keys over a run, and figures per key would be as many series that each live a
//! few seconds. The class's figures are the sum over its keys.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one instance, or of every key of a keyed class.
#[derive(Debug, Default)]
pub struct InstanceStats {
    /// Export calls made into the guest (`on-event`, `on-message`, `on-messages` — one
    /// for a whole batch —, `on-timer`, `on-alarm`, `on-connect`, `on-disconnect`,
    /// `wakeup`, `sleep`).
    pub calls: AtomicU64,
    /// Events answered with an error: the guest's own, a reply over `max_message`, a crash
    /// or an instance that could not wake.
    pub errors: AtomicU64,
    /// Calls that trapped, hit a limit or ran out of time (each one a crash).
    pub traps: AtomicU64,
    /// Wakes after a crash.
    pub restarts: AtomicU64,
    /// Wakes (instantiate + `wakeup`) that succeeded.
    pub wakes: AtomicU64,
    /// Times it went to sleep (idle, on demand, or at shutdown).
    pub sleeps: AtomicU64,
    /// Bytes of linear memory its live instances hold now.
    pub memory: AtomicU64,
}

impl InstanceStats {
    /// Adds one to a counter.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the counters into `out` (each read once, relaxed); the levels an instance
    /// does not count itself (state, mailbox, sessions) are the caller's.
    pub fn read_into(&self, out: &mut wasmwire_wire::InstanceFigures) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.calls = r(&self.calls);
        out.errors = r(&self.errors);
        out.traps = r(&self.traps);
        out.restarts = r(&self.restarts);
        out.wakes = r(&self.wakes);
        out.sleeps = r(&self.sleeps);
        out.memory = r(&self.memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back() {
        let s = InstanceStats::default();
        InstanceStats::bump(&s.calls);
        InstanceStats::bump(&s.calls);
        InstanceStats::bump(&s.traps);
        s.memory.fetch_add(65536, Ordering::Relaxed);
        let mut f = wasmwire_wire::InstanceFigures::default();
        s.read_into(&mut f);
        assert_eq!((f.calls, f.traps, f.errors, f.memory), (2, 1, 0, 65536));
    }
}
