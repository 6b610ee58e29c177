//! `ticker`: sets one timer at wakeup (`options = { every_ms = 1000 }`) and, on each tick,
//! sends a `tick` message with the tick count to every open session and logs it. The `ticks`
//! event returns how many ticks it has seen in this awake period.

use serde::{Deserialize, Serialize};
use wasmwire_guest::{Event, Level, Options, Reply, Service, SessionId, TimerId, export_service};

#[derive(Default)]
struct Ticker {
    ticks: u64,
}

#[derive(Deserialize)]
#[serde(default)]
struct TickerOptions {
    every_ms: u64,
}

impl Default for TickerOptions {
    fn default() -> Self {
        TickerOptions { every_ms: 1000 }
    }
}

#[derive(Serialize)]
struct Tick {
    n: u64,
}

impl Service for Ticker {
    const MESSAGES: &'static [&'static str] = &["tick"];
    const EVENTS: &'static [&'static str] = &["ticks"];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        let opts: TickerOptions = options.parse()?;
        wasmwire_guest::set_timer(opts.every_ms).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn sleep(&mut self) {
        wasmwire_guest::log(
            Level::Info,
            &format!("going to sleep after {} ticks", self.ticks),
        );
    }

    fn on_timer(&mut self, _timer: TimerId) {
        self.ticks += 1;
        let sessions = wasmwire_guest::sessions();
        wasmwire_guest::log(
            Level::Info,
            &format!("tick {} to {} session(s)", self.ticks, sessions.len()),
        );
        for s in sessions {
            let _ = wasmwire_guest::send_json(s.id, "tick", &Tick { n: self.ticks });
        }
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "ticks" => Reply::json(&self.ticks),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Ticker);
