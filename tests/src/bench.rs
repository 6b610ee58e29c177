//! What the benchmarks (`tests/bench/`) share: their runtime and their latency figures.

use std::future::Future;
use std::time::Duration;

/// Runs a benchmark's `run` on two worker threads: the machine `make bench` is sized for,
/// and what a 2-core host gets.
pub fn on_two_threads<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// The `q` quantile (0 to 1) of sorted durations.
pub fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// Microseconds, one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}
