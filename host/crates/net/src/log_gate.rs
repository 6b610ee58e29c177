//! A gate for log lines that a remote party can cause at will (a scan of bad identities, a
//! flood of failed handshakes): a few lines per window, then silence, then one line saying
//! how many were left out — so an attacker cannot flood the host's log, and the operator
//! still learns that it happened and how much.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets through at most `lines` per `window`; counts the rest.
pub struct LogGate {
    lines: u32,
    window: Duration,
    state: Mutex<GateState>,
}

struct GateState {
    started: Option<Instant>,
    passed: u32,
    held_back: u64,
}

impl LogGate {
    /// A gate of `lines` per `window`.
    pub const fn new(lines: u32, window: Duration) -> LogGate {
        LogGate {
            lines,
            window,
            state: Mutex::new(GateState {
                started: None,
                passed: 0,
                held_back: 0,
            }),
        }
    }

    /// Whether one more line may be written now; `Some(n)` with the lines held back since
    /// the last one written (to be said in it), `None` to stay silent.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.started
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            s.started = Some(now);
            s.passed = 0;
        }
        if s.passed < self.lines {
            s.passed += 1;
            Some(std::mem::take(&mut s.held_back))
        } else {
            s.held_back += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_lines_a_window_stays_silent_then_says_how_many_it_held_back() {
        let gate = LogGate::new(3, Duration::from_secs(10));
        let t = Instant::now();
        let first: Vec<_> = (0..1000).map(|_| gate.admit_at(t)).collect();
        assert_eq!(first.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(gate.admit_at(t + Duration::from_secs(11)), Some(997));
        assert_eq!(gate.admit_at(t + Duration::from_secs(11)), Some(0));
    }
}
