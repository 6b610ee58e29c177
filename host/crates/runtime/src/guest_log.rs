//! Guest stdout and stderr, sent line by line to `tracing` under the instance's name.
//! A guest cannot flood the host's memory through them: a line is cut at `MAX_LINE` bytes.

use bytes::Bytes;
use std::sync::Arc;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; the rest of a longer line is logged as a further line.
const MAX_LINE: usize = 4096;

/// Which stream a guest wrote to.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Guest stdout, logged at info.
    Stdout,
    /// Guest stderr, logged at warn.
    Stderr,
}

/// A `StdoutStream` that logs through `tracing`.
#[derive(Clone)]
pub struct GuestLog {
    instance: Arc<str>,
    stream: Stream,
    /// Under the fuzzer: the last lines are kept here (and logged at debug only), so a
    /// finding can quote the guest's own panic message.
    capture: Option<Captured>,
    budget: Arc<LogBudget>,
}

/// Lines an instance may write per second — its `log` calls and its stdout/stderr lines
/// together — with a burst of twice that. Past it, lines are dropped and counted, and one
/// warning a second says how many: a guest cannot flood the host's log within its CPU budget.
pub const LOG_LINES_PER_SECOND: u32 = 200;

/// One instance's log budget (a token bucket), kept across its awake periods.
pub struct LogBudget {
    state: std::sync::Mutex<Bucket>,
    dropped: std::sync::atomic::AtomicU64,
}

struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    unreported: u64,
    reported: std::time::Instant,
}

impl Default for LogBudget {
    fn default() -> Self {
        let now = std::time::Instant::now();
        LogBudget {
            state: std::sync::Mutex::new(Bucket {
                tokens: f64::from(LOG_LINES_PER_SECOND * 2),
                at: now,
                unreported: 0,
                reported: now,
            }),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl LogBudget {
    /// Whether one more line may be logged now; counts it as dropped if not.
    pub fn admit(&self, instance: &str) -> bool {
        let Ok(mut b) = self.state.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        let rate = f64::from(LOG_LINES_PER_SECOND);
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate * 2.0);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b.unreported += 1;
        if now.duration_since(b.reported) >= std::time::Duration::from_secs(1) {
            let n = std::mem::take(&mut b.unreported);
            b.reported = now;
            tracing::warn!(
                target: "wasmwire::guest",
                instance,
                dropped = n,
                "log lines dropped: over {LOG_LINES_PER_SECOND} lines a second"
            );
        }
        false
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The last lines a guest wrote, newest last.
pub type Captured = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// Lines kept by a capture.
const CAPTURED_LINES: usize = 16;

impl GuestLog {
    /// A log sink for `instance`'s `stream`.
    pub fn new(instance: Arc<str>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        GuestLog {
            instance,
            stream,
            capture: None,
            budget,
        }
    }

    /// A stream whose lines go to `capture` (and to the log at debug level).
    pub fn captured(instance: Arc<str>, stream: Stream, capture: Captured) -> Self {
        GuestLog {
            instance,
            stream,
            capture: Some(capture),
            budget: Arc::default(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            sink: self.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

struct LineWriter {
    sink: GuestLog,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        let instance = &*self.sink.instance;
        if let Some(c) = &self.sink.capture {
            tracing::debug!(target: "wasmwire::guest", instance, "{text}");
            if let Ok(mut c) = c.lock() {
                if c.len() >= CAPTURED_LINES {
                    c.pop_front();
                }
                c.push_back(text.to_string());
            }
            self.line.clear();
            return;
        }
        if !self.sink.budget.admit(instance) {
            self.line.clear();
            return;
        }
        match self.sink.stream {
            Stream::Stdout => tracing::info!(target: "wasmwire::guest", instance, "{text}"),
            Stream::Stderr => tracing::warn!(target: "wasmwire::guest", instance, "{text}"),
        }
        self.line.clear();
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}
