//! `counter`: a number that lives while the instance is awake. `incr` adds `by` (default 1)
//! and returns the new value, `get` returns it. The start value comes from the options
//! (`options = { start = 10 }`), so two instances of this one component count apart.

use serde::Deserialize;
use wasmwire_guest::{Event, Options, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct Counter {
    value: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CounterOptions {
    start: i64,
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
        self.value = options.parse::<CounterOptions>()?.start;
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
                self.value += by;
                Reply::json(&self.value)
            }
            "get" => Reply::json(&self.value),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Counter);
