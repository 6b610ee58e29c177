//! The progress watchdog: a session stream or connection that has something waiting and
//! makes no progress for `[host] stall_after` is logged — once per stall, saying which side
//! waits on what — and counted (`wasmwire_stalls_total{kind}`, and `stalls` in `get-stats`).
//! When it moves again, that is logged too, with how long it stood.
//!
//! Why: a message system that stops without an error is the worst kind of failure, since
//! users cannot tell it from a slow peer. A slow receiver is not a bug — back-pressure is
//! meant to hold senders — but it must be visible.
//!
//! Cost: a wait that ends at its first poll (the usual case: the write had room, the
//! stream had credit) arms no timer; only a wait that really waits does.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use wasmwire_wire::StallFigures;

/// What a stalled party waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Opening a session stream: the peer has not granted stream credit.
    StreamCredit,
    /// Writing a session's queued messages: the peer does not read (flow control is shut).
    SendBlocked,
    /// Reading a session stream: the receiving instance's mailbox stays full.
    MailboxFull,
    /// Writing control messages (requests, answers) to a peer that does not read them.
    ControlBlocked,
}

impl Wait {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Wait::StreamCredit => "stream-credit",
            Wait::SendBlocked => "send-blocked",
            Wait::MailboxFull => "mailbox-full",
            Wait::ControlBlocked => "control-blocked",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Wait::StreamCredit => {
                "waiting for the peer to grant stream credit (it has as many sessions from us open as it allows)"
            }
            Wait::SendBlocked => {
                "messages queued, nothing written: the peer does not read this stream (its flow-control window is shut)"
            }
            Wait::MailboxFull => {
                "messages arrived, not delivered: the receiving instance's mailbox stays full (it is slow or stuck in a call)"
            }
            Wait::ControlBlocked => {
                "control messages queued, nothing written: the peer does not read its control stream"
            }
        }
    }
}

/// The host's stall counters and threshold, shared by every connection.
#[derive(Debug)]
pub struct Watchdog {
    after: Duration,
    counts: [AtomicU64; 4],
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog::new(wasmwire_manifest::Transport::default().stall_after)
    }
}

impl Watchdog {
    /// A watchdog that calls a wait of more than `after` a stall.
    pub fn new(after: Duration) -> Watchdog {
        Watchdog {
            after,
            counts: Default::default(),
        }
    }

    /// The threshold.
    pub fn after(&self) -> Duration {
        self.after
    }

    fn slot(&self, w: Wait) -> &AtomicU64 {
        &self.counts[w as usize]
    }

    /// Stalls seen so far, by what was waited on.
    pub fn figures(&self) -> StallFigures {
        let n = |w| self.slot(w).load(Ordering::Relaxed);
        StallFigures {
            stream_credit: n(Wait::StreamCredit),
            send_blocked: n(Wait::SendBlocked),
            mailbox_full: n(Wait::MailboxFull),
            control_blocked: n(Wait::ControlBlocked),
        }
    }

    /// Records a stall that began at `since` (logged once by the caller's choice of when).
    pub fn stalled(&self, wait: Wait, peer: &str, what: &str, since: Instant) {
        self.slot(wait).fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "wasmwire::net",
            %peer,
            waits_on = wait.label(),
            "{what} made no progress for {:?}: {}",
            since.elapsed(),
            wait.explain()
        );
    }

    /// Logs that a stall recorded with [`Watchdog::stalled`] is over.
    pub fn moving(&self, wait: Wait, peer: &str, what: &str, since: Instant) {
        tracing::info!(
            target: "wasmwire::net",
            %peer,
            waits_on = wait.label(),
            "{what} is moving again after {:?}",
            since.elapsed()
        );
    }

    /// Awaits `fut`; if it takes longer than the threshold, the stall is logged and counted
    /// (once), and its end logged when it comes. `peer` and `what` are asked for only then.
    pub async fn watch<F: Future>(
        &self,
        wait: Wait,
        fut: F,
        peer: impl FnOnce() -> String,
        what: &str,
    ) -> F::Output {
        let mut fut = pin!(fut);
        // Most waits end at once: those arm no timer.
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
        {
            return v;
        }
        let since = Instant::now();
        tokio::select! {
            biased;
            v = &mut fut => return v,
            _ = tokio::time::sleep(self.after) => {}
        }
        let peer = peer();
        self.stalled(wait, &peer, what, since);
        let v = fut.await;
        self.moving(wait, &peer, what, since);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_past_the_threshold_is_counted_once_and_a_quick_one_not_at_all() {
        let w = Watchdog::new(Duration::from_millis(500));
        assert_eq!(
            w.watch(Wait::SendBlocked, async { 7 }, String::new, "s")
                .await,
            7
        );
        w.watch(
            Wait::SendBlocked,
            tokio::time::sleep(Duration::from_millis(5)),
            String::new,
            "s",
        )
        .await;
        assert_eq!(w.figures(), StallFigures::default());
        w.watch(
            Wait::StreamCredit,
            tokio::time::sleep(Duration::from_millis(600)),
            || "peer".into(),
            "opening a session",
        )
        .await;
        let f = w.figures();
        assert_eq!((f.stream_credit, f.send_blocked), (1, 0));
    }
}
