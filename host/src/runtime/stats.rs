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
    /// Export calls made into the guest (`on-event`, `on-message`, `on-timer`,
    /// `on-connect`, `on-disconnect`, `wakeup`, `sleep`).
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

    /// A consistent-enough copy (each counter read once, relaxed).
    pub fn read(&self) -> Figures {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Figures {
            calls: r(&self.calls),
            errors: r(&self.errors),
            traps: r(&self.traps),
            restarts: r(&self.restarts),
            wakes: r(&self.wakes),
            sleeps: r(&self.sleeps),
            memory: r(&self.memory),
        }
    }
}

/// The counters of an [`InstanceStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// See [`InstanceStats::calls`].
    pub calls: u64,
    /// See [`InstanceStats::errors`].
    pub errors: u64,
    /// See [`InstanceStats::traps`].
    pub traps: u64,
    /// See [`InstanceStats::restarts`].
    pub restarts: u64,
    /// See [`InstanceStats::wakes`].
    pub wakes: u64,
    /// See [`InstanceStats::sleeps`].
    pub sleeps: u64,
    /// See [`InstanceStats::memory`].
    pub memory: u64,
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
        let f = s.read();
        assert_eq!((f.calls, f.traps, f.errors, f.memory), (2, 1, 0, 65536));
    }
}
