//! A service with a planted bug, for the fuzzer's own tests. It traps only after three
//! steps in this order: a client connects, sends a `set` message whose `level` is over 100,
//! and then calls the `check` event. Everything else works: `status` answers the level
//! (`{"level": n}`), `note` messages are ignored, options `{"level": n}` set the start.

use serde::{Deserialize, Serialize};
use wasmwire_guest::{Event, Message, Options, Reply, Service, Session, SessionId, export_service};

#[derive(Default)]
struct Planted {
    level: i64,
    sessions: usize,
    armed: bool,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(default)]
struct Level {
    level: i64,
}

impl Service for Planted {
    const MESSAGES: &'static [&'static str] = &["set", "note"];
    const EVENTS: &'static [&'static str] = &["status", "check"];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        self.level = options.parse::<Level>()?.level;
        Ok(())
    }

    fn on_connect(&mut self, _session: Session) {
        self.sessions += 1;
    }

    fn on_disconnect(&mut self, _session: SessionId) {
        self.sessions = self.sessions.saturating_sub(1);
    }

    fn on_message(&mut self, _session: SessionId, message: Message<'_>) {
        if message.kind != "set" {
            return;
        }
        if let Ok(l) = message.json::<Level>() {
            self.level = l.level;
            if l.level > 100 {
                self.armed = true;
            }
        }
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "status" => Reply::json(&Level { level: self.level }),
            "check" if self.armed => {
                panic!(
                    "planted bug: checked after a level of {} was set",
                    self.level
                )
            }
            "check" => Reply::ok(),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Planted);
