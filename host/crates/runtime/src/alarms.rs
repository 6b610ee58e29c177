//! Alarms: each instance's one durable wake-up time (`set-alarm`), kept in the host's data
//! (bucket [`BUCKET`], key = instance name, value = the time in Unix milliseconds) and
//! fired by one task per host (`start::fire_alarms`), which wakes the instance — a
//! sleeping or retired key too — and queues an `Envelope::Alarm` for it.
//!
//! - The data is the truth: an alarm is written in the call's transaction, so a trap drops
//!   it, and it outlives sleep and host restarts. [`Schedule`] is what the host knows of
//!   it in memory: loaded from the data at start, then told of each alarm change once the
//!   call that made it is committed (`handle_set`/`handle_cancel`).
//! - [`Schedule`] is a pure state machine (time passed in, like `quinn-proto`): the driver
//!   asks `poll_due(now)` and sleeps until `next_deadline()`.
//! - When the envelope reaches the instance, the actor checks the stored alarm still says
//!   that time (a call in between may have moved or cancelled it), deletes it in the
//!   `on-alarm` call's transaction and calls `on-alarm`. A trap puts it back (rollback),
//!   and the schedule tries again after 1, 2, 4… seconds, [`MAX_ATTEMPTS`] times in all.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use wasmwire_store::{Database, StoreError};

/// The host's bucket of alarms (the `h/` prefix is the host's own: no guest bucket
/// name can reach it).
pub const BUCKET: &str = "h/alarms";

/// [`BUCKET`], as the name a write takes.
pub fn bucket() -> &'static Arc<str> {
    static NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(BUCKET));
    &NAME
}

/// Calls of `on-alarm` for one alarm before the host gives up on it (with a log line; it
/// stays in the data, so a host restart tries again).
pub const MAX_ATTEMPTS: u32 = 6;

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An alarm's stored value: its time, 8 bytes little-endian.
pub fn encode(at: u64) -> Vec<u8> {
    at.to_le_bytes().to_vec()
}

/// The time of a stored alarm value (`None` if it is not 8 bytes).
pub fn decode(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.try_into().ok()?))
}

/// An alarm that is due: deliver `on-alarm(at)` to `name`; `attempt` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The instance.
    pub name: Arc<str>,
    /// The time the alarm was set for (what `on-alarm` is told).
    pub at: u64,
    /// Which try this is.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When to deliver it (its time, or a retry's).
    fire: u64,
    at: u64,
    attempt: u32,
}

/// Every alarm the host knows of, by when it fires: inputs `handle_*`, outputs `poll_due`
/// and `next_deadline`, time passed in.
#[derive(Debug, Default)]
pub struct Schedule {
    order: BTreeSet<(u64, Arc<str>)>,
    by_name: HashMap<Arc<str>, Entry>,
}

impl Schedule {
    /// `name`'s alarm is now `at` (replacing any it had).
    pub fn handle_set(&mut self, name: Arc<str>, at: u64) {
        self.put(
            name,
            Entry {
                fire: at,
                at,
                attempt: 1,
            },
        );
    }

    /// `name` has no alarm now.
    pub fn handle_cancel(&mut self, name: &str) {
        if let Some((name, e)) = self.by_name.remove_entry(name) {
            self.order.remove(&(e.fire, name));
        }
    }

    /// The delivery of `due` failed at `now` (the call trapped, or the instance could not
    /// be woken): it is tried again after 1, 2, 4… s, unless `name` has been given a new
    /// alarm meanwhile or it has had [`MAX_ATTEMPTS`]. Returns whether it will be retried.
    pub fn handle_failed(&mut self, due: Due, now: u64) -> bool {
        if self.by_name.contains_key(&due.name) || due.attempt >= MAX_ATTEMPTS {
            return false;
        }
        let backoff = 1000u64 << (due.attempt - 1).min(16);
        self.put(
            due.name,
            Entry {
                fire: now.saturating_add(backoff),
                at: due.at,
                attempt: due.attempt + 1,
            },
        );
        true
    }

    /// The delivery of `due` was put off (the instance's mailbox was full: not the guest's
    /// fault, so no attempt is counted): tried again at `later`, unless `name` has a new
    /// alarm.
    pub fn handle_later(&mut self, due: Due, later: u64) {
        if self.by_name.contains_key(&due.name) {
            return;
        }
        self.put(
            due.name,
            Entry {
                fire: later,
                at: due.at,
                attempt: due.attempt,
            },
        );
    }

    /// Takes the next alarm due at `now`, if any.
    pub fn poll_due(&mut self, now: u64) -> Option<Due> {
        let (fire, _) = self.order.first()?;
        if *fire > now {
            return None;
        }
        let (_, name) = self.order.pop_first()?;
        let e = self.by_name.remove(&name)?;
        Some(Due {
            name,
            at: e.at,
            attempt: e.attempt,
        })
    }

    /// When the next alarm fires.
    pub fn next_deadline(&self) -> Option<u64> {
        self.order.first().map(|(t, _)| *t)
    }

    /// How many alarms it holds.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn put(&mut self, name: Arc<str>, e: Entry) {
        self.handle_cancel(&name);
        self.order.insert((e.fire, name.clone()));
        self.by_name.insert(name, e);
    }
}

/// The host's alarms: the schedule, and the signal that wakes the driver when it changes.
#[derive(Default)]
pub struct Alarms {
    schedule: Mutex<Schedule>,
    changed: Notify,
}

impl Alarms {
    /// Reads every stored alarm from `db` (the host's start).
    pub fn load(db: &Database) -> Result<Alarms, StoreError> {
        let mut schedule = Schedule::default();
        let mut after: Option<String> = None;
        loop {
            let page = db.keys(BUCKET, after.as_deref(), 1024)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for name in page {
                if let Some(at) = db.get(BUCKET, &name)?.as_deref().and_then(decode) {
                    schedule.handle_set(Arc::from(name), at);
                }
            }
            after = Some(last);
        }
        Ok(Alarms {
            schedule: Mutex::new(schedule),
            changed: Notify::new(),
        })
    }

    /// A committed call changed `name`'s alarm to `at` (`None`: removed it).
    pub fn changed(&self, name: &Arc<str>, at: Option<u64>) {
        if let Ok(mut s) = self.schedule.lock() {
            match at {
                Some(at) => s.handle_set(name.clone(), at),
                None => s.handle_cancel(name),
            }
        }
        self.changed.notify_one();
    }

    /// The delivery of `due` failed (see [`Schedule::handle_failed`]); logged.
    pub fn failed(&self, due: Due, why: &str) {
        let name = due.name.clone();
        let attempt = due.attempt;
        let retried = self
            .schedule
            .lock()
            .is_ok_and(|mut s| s.handle_failed(due, now_ms()));
        if retried {
            tracing::warn!(instance = %name, attempt, %why, "alarm failed; it will be tried again");
        } else if attempt >= MAX_ATTEMPTS {
            tracing::error!(instance = %name, attempts = attempt, %why, "alarm failed too often: dropped until the host restarts (it stays in the data)");
        }
        self.changed.notify_one();
    }

    /// Takes every alarm due at `now`; returns them and when the next one is due.
    pub fn take_due(&self, now: u64) -> (Vec<Due>, Option<u64>) {
        let Ok(mut s) = self.schedule.lock() else {
            return (Vec::new(), None);
        };
        let due = std::iter::from_fn(|| s.poll_due(now)).collect();
        (due, s.next_deadline())
    }

    /// The delivery of `due` was put off until `later` (see [`Schedule::handle_later`]):
    /// not the guest's doing (a full mailbox, no free slot), so no try is counted.
    pub fn later(&self, due: Due, later: u64) {
        if let Ok(mut s) = self.schedule.lock() {
            s.handle_later(due, later);
        }
        self.changed.notify_one();
    }

    /// Waits until the schedule changes (or [`Alarms::nudge`]).
    pub async fn changed_signal(&self) {
        self.changed.notified().await
    }

    /// How many alarms are scheduled.
    pub fn len(&self) -> usize {
        self.schedule.lock().map_or(0, |s| s.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the driver (the host is stopping, or the schedule changed).
    pub fn nudge(&self) {
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(s: &mut Schedule, now: u64) -> Vec<(String, u64, u32)> {
        std::iter::from_fn(|| s.poll_due(now))
            .map(|d| (d.name.to_string(), d.at, d.attempt))
            .collect()
    }

    #[test]
    fn fires_in_time_order_once() {
        let mut s = Schedule::default();
        s.handle_set("b".into(), 200);
        s.handle_set("a".into(), 100);
        s.handle_set("c".into(), 300);
        assert_eq!(s.next_deadline(), Some(100));
        assert!(due(&mut s, 99).is_empty());
        assert_eq!(
            due(&mut s, 250),
            vec![("a".into(), 100, 1), ("b".into(), 200, 1)]
        );
        assert_eq!(s.next_deadline(), Some(300));
        assert!(due(&mut s, 250).is_empty(), "a fired alarm is gone");
    }

    #[test]
    fn set_replaces_and_cancel_removes() {
        let mut s = Schedule::default();
        s.handle_set("a".into(), 100);
        s.handle_set("a".into(), 500);
        assert_eq!(s.len(), 1);
        assert!(due(&mut s, 400).is_empty());
        s.handle_cancel("a");
        assert!(s.is_empty());
        assert_eq!(s.next_deadline(), None);
        assert!(due(&mut s, 1000).is_empty());
    }

    #[test]
    fn failure_backs_off_then_gives_up() {
        let mut s = Schedule::default();
        s.handle_set("a".into(), 100);
        let mut now = 100;
        let mut gaps = Vec::new();
        loop {
            let d = s.poll_due(now).expect("due");
            assert_eq!(d.at, 100, "a retry is still the alarm it was");
            if !s.handle_failed(d, now) {
                break;
            }
            let next = s.next_deadline().unwrap();
            gaps.push(next - now);
            now = next;
        }
        assert_eq!(gaps, vec![1000, 2000, 4000, 8000, 16000]);
        assert_eq!(gaps.len() as u32 + 1, MAX_ATTEMPTS);
        assert!(s.is_empty());
    }

    #[test]
    fn a_new_alarm_wins_over_a_retry() {
        let mut s = Schedule::default();
        s.handle_set("a".into(), 100);
        let d = s.poll_due(100).unwrap();
        // The guest set a new alarm before the failed one was reported.
        s.handle_set("a".into(), 5000);
        assert!(!s.handle_failed(d.clone(), 100));
        s.handle_later(d, 200);
        assert_eq!(s.next_deadline(), Some(5000));
    }

    #[test]
    fn stored_values_round_trip() {
        assert_eq!(decode(&encode(1_700_000_000_123)), Some(1_700_000_000_123));
        assert_eq!(decode(b"short"), None);
    }
}
