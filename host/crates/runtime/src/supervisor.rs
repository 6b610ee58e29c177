//! Restart policy, as in Erlang/OTP: each crash within the window doubles the delay before
//! the next start; one crash more than `max_restarts` within the window and the instance
//! stays down.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start again on the next demand, not before `after` has passed.
    Restart { after: Duration },
    /// Too many crashes: stay down.
    GiveUp { crashes: usize },
}

/// Crash history of one instance.
#[derive(Debug)]
pub struct Supervisor {
    crashes: VecDeque<Instant>,
    max_restarts: u32,
    window: Duration,
    backoff: Duration,
    /// No start before this instant.
    pub not_before: Option<Instant>,
}

impl Supervisor {
    /// A supervisor with the instance's restart limits.
    pub fn new(max_restarts: u32, window: Duration, backoff: Duration) -> Self {
        Supervisor {
            crashes: VecDeque::new(),
            max_restarts,
            window,
            backoff,
            not_before: None,
        }
    }

    /// When the last crash leaves the window (`None`: no crash in it). A keyed instance
    /// keeps its actor, and so its crash history, until then.
    pub fn quiet_at(&self) -> Option<Instant> {
        self.crashes.back().map(|&t| t + self.window)
    }

    /// Records a crash at `now` and says what follows.
    pub fn crashed(&mut self, now: Instant) -> Verdict {
        while self
            .crashes
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.window)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len();
        if n > self.max_restarts as usize {
            return Verdict::GiveUp { crashes: n };
        }
        let after = self
            .backoff
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_BACKOFF);
        self.not_before = Some(now + after);
        Verdict::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_past_the_limit() {
        let mut s = Supervisor::new(3, Duration::from_secs(60), Duration::from_millis(100));
        let t = Instant::now();
        assert_eq!(
            s.crashed(t),
            Verdict::Restart {
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(
            s.crashed(t),
            Verdict::Restart {
                after: Duration::from_millis(200)
            }
        );
        assert_eq!(
            s.crashed(t),
            Verdict::Restart {
                after: Duration::from_millis(400)
            }
        );
        assert_eq!(s.crashed(t), Verdict::GiveUp { crashes: 4 });
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut s = Supervisor::new(1, Duration::from_secs(1), Duration::from_millis(10));
        let t = Instant::now();
        assert!(matches!(s.crashed(t), Verdict::Restart { .. }));
        assert!(matches!(
            s.crashed(t + Duration::from_secs(2)),
            Verdict::Restart { .. }
        ));
        assert!(matches!(
            s.crashed(t + Duration::from_millis(2100)),
            Verdict::GiveUp { .. }
        ));
    }
}
