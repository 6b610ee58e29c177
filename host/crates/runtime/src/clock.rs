//! The CPU clock behind `call_timeout`: how much CPU the call in progress has used, counted
//! from the guest thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), never from wall time.
//!
//! Why not wall time: on a busy machine (a build beside the host, another tenant, a
//! container's CPU quota) a guest thread that is not even scheduled would be charged, and
//! healthy calls would die with `cpu deadline exceeded`. Why not a clock read per call: the
//! thread CPU clock is a system call (no vDSO fast path), as dear as a whole message
//! dispatch. So the clock is read only where time is already being spent — in the epoch
//! callback, which runs on the guest's thread once per tick of a long call, after each
//! yield, after each awaited host call (`request`, `connect`), and before one when the
//! stretch it ends began with a reading.
//!
//! A call is a run of *segments*: stretches of guest execution on one thread, each begun
//! at the call's start, after a yield, after an awaited host call, or at a tick. A segment
//! whose starting reading is known (same thread) is charged exactly its thread CPU time.
//! The first segment of a call has no starting reading (that would be a clock read per
//! call): it is charged the wall ticks it took, at most [`SLICE`] — a short call that never
//! sees a tick is charged nothing, which costs nothing, and a long one is off by at most
//! one slice. A segment that moved threads between readings (only possible outside the
//! host's pinned worker threads, e.g. in tests) is charged the same way.
//!
//! Why the segment after an awaited call is not charged the same way, saving its two clock
//! reads (measured: `make bench` (e), a `request` round trip, 3.7 → 3.1 µs): a guest could
//! then place the epoch ticks inside its waits (they are 1 ms apart, and a guest can read
//! the time) and compute between them uncharged, in as many segments as it makes
//! requests; and on a busy machine the stretches between requests would be charged the
//! time they were not scheduled — which is what this clock exists to avoid.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Ticks of guest execution between two yields to the async executor: a long call gives
/// its worker thread back this often, so one busy instance cannot hold up the others queued
/// on the same thread.
pub(crate) const SLICE: u64 = 2;

/// Nanoseconds of one epoch tick.
/// How often the epoch ticker advances: the granularity of CPU deadlines.
pub const TICK: Duration = Duration::from_millis(1);

const TICK_NS: u64 = TICK.as_nanos() as u64;

/// This thread's CPU time in nanoseconds.
#[inline]
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

thread_local! {
    /// A number for this thread (never 0), to tell whether two readings came from one thread.
    static THREAD_TAG: Cell<u64> = const { Cell::new(0) };
}

fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    THREAD_TAG.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

/// Where the current segment began: a thread CPU reading (and which thread took it), or
/// only the tick. Shared with the yield future, which cannot borrow the store.
#[derive(Default)]
struct Mark {
    /// The thread of `cpu`; 0 when the segment has no reading.
    thread: AtomicU64,
    cpu: AtomicU64,
    /// The epoch tick when the segment began (the bound of a segment with no reading).
    tick: AtomicU64,
}

impl Mark {
    fn read(&self, ticks: &AtomicU64) {
        self.thread.store(thread_tag(), Ordering::Relaxed);
        self.cpu.store(thread_cpu_ns(), Ordering::Relaxed);
        self.tick
            .store(ticks.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// CPU nanoseconds of the segment up to now, without starting another: a clock read
    /// only when the segment began with one.
    fn charge(&self, ticks: &AtomicU64) -> u64 {
        if self.thread.load(Ordering::Relaxed) == thread_tag() {
            thread_cpu_ns().saturating_sub(self.cpu.load(Ordering::Relaxed))
        } else {
            ticks
                .load(Ordering::Relaxed)
                .saturating_sub(self.tick.load(Ordering::Relaxed))
                .min(SLICE)
                * TICK_NS
        }
    }

    /// CPU nanoseconds of the segment up to now; starts the next segment here.
    fn take(&self, ticks: &AtomicU64) -> u64 {
        let now_tick = ticks.load(Ordering::Relaxed);
        let cpu = thread_cpu_ns();
        let me = thread_tag();
        let used = if self.thread.load(Ordering::Relaxed) == me {
            cpu.saturating_sub(self.cpu.load(Ordering::Relaxed))
        } else {
            now_tick
                .saturating_sub(self.tick.load(Ordering::Relaxed))
                .min(SLICE)
                * TICK_NS
        };
        self.thread.store(me, Ordering::Relaxed);
        self.cpu.store(cpu, Ordering::Relaxed);
        self.tick.store(now_tick, Ordering::Relaxed);
        used
    }
}

/// CPU time of the call in progress (see the module doc for how it is counted).
pub(crate) struct CallClock {
    ticks: Arc<AtomicU64>,
    mark: Arc<Mark>,
    /// CPU nanoseconds charged to the call so far.
    used: u64,
    /// The instance's `call_timeout` in nanoseconds.
    limit_ns: u64,
    /// The instance's `call_timeout`.
    limit_time: Duration,
    /// What the call in progress may use: `call_timeout` for each message it delivers
    /// (one, except for a batch).
    budget_ns: u64,
    /// How many `call_timeout`s the call in progress has.
    shares: u32,
}

/// What the epoch callback should do next.
pub(crate) enum Verdict {
    /// The call has used its budget: stop it.
    Exceeded,
    /// Yield, then run this many more ticks before looking again.
    Yield(u64),
}

impl CallClock {
    /// A clock for calls allowed `limit` of CPU each, reading the host's epoch `ticks`.
    pub fn new(ticks: Arc<AtomicU64>, limit: Duration) -> Self {
        CallClock {
            ticks,
            mark: Arc::default(),
            used: 0,
            limit_ns: (limit.as_nanos() as u64).max(1),
            limit_time: limit,
            budget_ns: (limit.as_nanos() as u64).max(1),
            shares: 1,
        }
    }

    /// Marks the start of a guest call (no clock read); returns the first epoch deadline.
    #[inline]
    pub fn start(&mut self) -> u64 {
        self.start_for(1)
    }

    /// Marks the start of a call that delivers `shares` messages at once, allowed
    /// `call_timeout` for each: a batch must not kill a guest that would have handled the
    /// same messages one call each.
    #[inline]
    pub fn start_for(&mut self, shares: u32) -> u64 {
        let shares = shares.max(1);
        self.shares = shares;
        self.budget_ns = self.limit_ns.saturating_mul(u64::from(shares));
        self.used = 0;
        self.mark.thread.store(0, Ordering::Relaxed);
        self.mark
            .tick
            .store(self.ticks.load(Ordering::Relaxed), Ordering::Relaxed);
        self.ticks_left()
    }

    /// CPU charged to the call in progress so far.
    #[cfg(test)]
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used)
    }

    fn ticks_left(&self) -> u64 {
        self.budget_ns
            .saturating_sub(self.used)
            .div_ceil(TICK_NS)
            .clamp(1, SLICE)
    }

    /// The epoch deadline came (on the guest's thread): charge the segment, then stop the
    /// call or let it yield and run on.
    pub fn tick(&mut self) -> Verdict {
        self.used += self.mark.take(&self.ticks);
        if self.used >= self.budget_ns {
            Verdict::Exceeded
        } else {
            Verdict::Yield(self.ticks_left())
        }
    }

    /// What the call in progress was allowed: `call_timeout`, times the messages of a batch.
    pub fn budget(&self) -> Duration {
        self.limit_time.saturating_mul(self.shares)
    }

    /// The guest is about to wait in a host call: charge what it computed until now (the
    /// wait is not charged: [`CallClock::resume`] starts the next segment).
    pub fn pause(&mut self) {
        self.used += self.mark.charge(&self.ticks);
    }

    /// The wait is over: the guest computes again from here, on this thread.
    pub fn resume(&mut self) {
        self.mark.read(&self.ticks);
    }

    /// A future that yields to the executor once; the segment after it starts with a
    /// reading taken on the thread that resumes the guest.
    pub fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mark = self.mark.clone();
        let ticks = self.ticks.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            mark.read(&ticks);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin_cpu(d: Duration) {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < d.as_nanos() as u64 {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_segment_with_a_reading_is_charged_its_cpu_not_its_sleep() {
        let ticks = Arc::new(AtomicU64::new(0));
        let mut clock = CallClock::new(ticks.clone(), Duration::from_millis(100));
        clock.start();
        // A tick gives the segment after it a reading.
        assert!(matches!(clock.tick(), Verdict::Yield(_)));
        // Asleep for 50 ms and 50 ticks of wall time: none of it is CPU.
        std::thread::sleep(Duration::from_millis(50));
        ticks.fetch_add(50, Ordering::Relaxed);
        spin_cpu(Duration::from_millis(5));
        assert!(matches!(clock.tick(), Verdict::Yield(_)));
        let used = clock.used();
        assert!(
            used >= Duration::from_millis(5) && used < Duration::from_millis(40),
            "charged {used:?}"
        );
    }

    #[test]
    fn a_call_past_its_budget_is_exceeded() {
        let ticks = Arc::new(AtomicU64::new(0));
        let mut clock = CallClock::new(ticks, Duration::from_millis(10));
        clock.start();
        assert!(matches!(clock.tick(), Verdict::Yield(_)));
        spin_cpu(Duration::from_millis(12));
        assert!(matches!(clock.tick(), Verdict::Exceeded));
    }

    #[test]
    fn a_batch_may_use_call_timeout_for_each_message_and_no_more() {
        let ticks = Arc::new(AtomicU64::new(0));
        let mut clock = CallClock::new(ticks, Duration::from_millis(10));
        clock.start_for(3);
        assert!(matches!(clock.tick(), Verdict::Yield(_)));
        spin_cpu(Duration::from_millis(12));
        assert!(
            matches!(clock.tick(), Verdict::Yield(_)),
            "within 3 x 10 ms"
        );
        spin_cpu(Duration::from_millis(20));
        assert!(matches!(clock.tick(), Verdict::Exceeded));
        assert_eq!(clock.budget(), Duration::from_millis(30));
        // The next call of one message has one share again.
        clock.start();
        assert_eq!(clock.budget(), Duration::from_millis(10));
    }

    #[test]
    fn the_first_segment_is_charged_at_most_one_slice_of_wall_ticks() {
        let ticks = Arc::new(AtomicU64::new(0));
        let mut clock = CallClock::new(ticks.clone(), Duration::from_millis(100));
        clock.start();
        ticks.fetch_add(40, Ordering::Relaxed);
        assert!(matches!(clock.tick(), Verdict::Yield(_)));
        assert_eq!(clock.used(), Duration::from_nanos(SLICE * TICK_NS));
        // A wait is not charged: pause charges until now, resume starts a new segment.
        clock.pause();
        std::thread::sleep(Duration::from_millis(30));
        ticks.fetch_add(30, Ordering::Relaxed);
        clock.resume();
        clock.pause();
        assert!(
            clock.used() < Duration::from_millis(10),
            "{:?}",
            clock.used()
        );
        // The segment after a wait starts with a reading: charged its CPU, however many
        // ticks pass in it (none of them can be placed in a wait to go uncharged).
        let before = clock.used();
        clock.resume();
        ticks.fetch_add(40, Ordering::Relaxed);
        spin_cpu(Duration::from_millis(3));
        clock.pause();
        let charged = clock.used() - before;
        assert!(
            charged >= Duration::from_millis(3) && charged < Duration::from_millis(30),
            "{charged:?}"
        );
        // A call's first segment, ended by a wait: its ticks, with no clock read.
        clock.start();
        ticks.fetch_add(1, Ordering::Relaxed);
        clock.pause();
        assert_eq!(clock.used(), Duration::from_nanos(TICK_NS));
    }
}
