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
}

/// The last lines a guest wrote, newest last.
pub type Captured = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// Lines kept by a capture.
const CAPTURED_LINES: usize = 16;

impl GuestLog {
    /// A log sink for `instance`'s `stream`.
    pub fn new(instance: Arc<str>, stream: Stream) -> Self {
        GuestLog {
            instance,
            stream,
            capture: None,
        }
    }

    /// A stream whose lines go to `capture` (and to the log at debug level).
    pub fn captured(instance: Arc<str>, stream: Stream, capture: Captured) -> Self {
        GuestLog {
            instance,
            stream,
            capture: Some(capture),
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
