//! `counter`: a number kept in the instance's own durable bucket, so it survives sleep, a
//! crash and a host restart (each `incr` is one write, durable before its reply). `incr`
//! adds `by` (default 1) and returns the new value, `get` returns it. The start value comes
//! from the options (`options = { start = 10 }`), so two instances of this one component
//! count apart; as a keyed class (`keyed = true`) each key counts on its own, and its count
//! outlives the key's retirement. `durable = false` keeps the number in memory only (it
//! starts again from `start` at every wake).

use serde::Deserialize;
use wasmwire_guest::{Event, Options, Reply, Service, SessionId, export_service, store};

/// Where the number is kept in the instance's bucket.
const KEY: &str = "value";

#[derive(Default)]
struct Counter {
    /// The number, once read (from the bucket, or `start` when there is none yet).
    value: Option<i64>,
    start: i64,
    durable: bool,
}

impl Counter {
    /// The number, read from the bucket on first use: a storage error fails that call
    /// (the caller is told, and the next call tries again), not the wake.
    fn value(&mut self) -> Result<i64, String> {
        if let Some(v) = self.value {
            return Ok(v);
        }
        let v = if self.durable {
            store::get(KEY)
                .map_err(|e| format!("cannot read the count: {e}"))?
                .unwrap_or(self.start)
        } else {
            self.start
        };
        self.value = Some(v);
        Ok(v)
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct CounterOptions {
    start: i64,
    durable: bool,
}

impl Default for CounterOptions {
    fn default() -> Self {
        CounterOptions {
            start: 0,
            durable: true,
        }
    }
}

#[derive(Deserialize)]
struct Incr {
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

impl Service for Counter {
    const EVENTS: &'static [&'static str] = &["incr", "get"];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        let o = options.parse::<CounterOptions>()?;
        self.durable = o.durable;
        self.start = o.start;
        Ok(())
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "incr" => {
                // `null` or `{}` both mean "add one".
                let by = if event.params.trim() == "null" {
                    1
                } else {
                    event.params::<Incr>().map(|i| i.by).unwrap_or(1)
                };
                let value = match self.value() {
                    Ok(v) => v + by,
                    Err(e) => return Reply::error(e),
                };
                if self.durable
                    && let Err(e) = store::set(KEY, &value)
                {
                    return Reply::error(format!("cannot keep the count: {e}"));
                }
                self.value = Some(value);
                Reply::json(&value)
            }
            "get" => self.value().into(),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Counter);
