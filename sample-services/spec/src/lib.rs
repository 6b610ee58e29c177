//! `spec`: the seed design's spec service. It records every lifecycle call it receives, in
//! order, and returns the record on the `record` event, so tests can assert the exact
//! sequence the host drives; `take-record` returns it and starts a new one (so a long run
//! can read it in parts without the instance's memory growing). The record is kept per wasm instance: it starts empty at each
//! wakeup (a fresh instance) and is gone after sleep.
//! Other events let a test make it act: `connect {service, peer?}`, `send {session, kind,
//! text}`, `flood {session, kind, count, size}` (sends until the first error; returns how many
//! went and that error), `close {session}`, `request {service, event, params}`,
//! `timer {every_ms}`, `sessions` (a list of `[id, service, peer]`), `caller` (the session
//! the event arrived on, as `on-event` saw it, or null), `name` and `self` (what
//! `instance-name` and `self-info` say).
//! With `options = { report_to = "other" }` it hands its record to `other`'s `append`
//! event from `sleep`, so the end of an awake period can be asserted too.

use serde::Deserialize;
use std::cell::RefCell;
use wasmwire_guest::{
    Event, Message, Options, Reply, Service, Session, SessionId, TimerId, export_service,
};

thread_local! {
    /// Lives as long as the wasm instance: one awake period (and its sleep) per instance.
    static RECORD: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn note(line: String) {
    RECORD.with(|r| r.borrow_mut().push(line));
}

/// The largest payload `flood` makes.
const MAX_FLOOD_SIZE: usize = 1 << 20;

#[derive(Default)]
struct Spec {
    /// Where to send the record when put to sleep (option `report_to`, a service in `uses`).
    report_to: Option<String>,
    /// Every session id the host ever gave this instance (in `on-connect`). `send` and
    /// `flood` act only on these: an id taken from a caller's parameters is never trusted
    /// (`wasmwire fuzz` found that it was — a caller could make this service send on a
    /// session it had never seen).
    given: std::collections::HashSet<SessionId>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SpecOptions {
    report_to: Option<String>,
}

#[derive(Deserialize)]
struct ConnectTo {
    service: String,
    #[serde(default)]
    peer: Option<String>,
}

#[derive(Deserialize)]
struct FloodOn {
    session: SessionId,
    kind: String,
    count: u64,
    size: usize,
}

#[derive(Deserialize)]
struct SendOn {
    session: SessionId,
    kind: String,
    text: String,
}

#[derive(Deserialize)]
struct CloseOn {
    session: SessionId,
}

#[derive(Deserialize)]
struct RequestOf {
    service: String,
    event: String,
    params: serde_json::Value,
}

#[derive(Deserialize)]
struct TimerEvery {
    every_ms: u64,
}

impl Service for Spec {
    const MESSAGES: &'static [&'static str] = &["note"];
    const EVENTS: &'static [&'static str] = &[
        "record",
        "take-record",
        "append",
        "connect",
        "send",
        "flood",
        "close",
        "request",
        "timer",
        "sessions",
        "name",
        "self",
        "caller",
    ];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        note(format!("wakeup {}", options.0));
        self.report_to = options.parse::<SpecOptions>()?.report_to;
        Ok(())
    }

    fn sleep(&mut self) {
        note("sleep".into());
        // The instance is dropped right after this call, and its record with it: hand the
        // record to another instance so a test can still read the whole awake period.
        if let Some(to) = &self.report_to {
            let record = RECORD.with(|r| r.borrow().clone());
            let _ = wasmwire_guest::request_json::<_, serde_json::Value>(to, "append", &record);
        }
    }

    fn on_connect(&mut self, session: Session) {
        self.given.insert(session.id);
        note(format!("connect {} {}", session.id, session.service));
    }

    fn on_disconnect(&mut self, session: SessionId) {
        note(format!("disconnect {session}"));
    }

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        note(format!(
            "message {session} {} {}",
            message.kind,
            String::from_utf8_lossy(message.payload)
        ));
    }

    fn on_timer(&mut self, timer: TimerId) {
        note(format!("timer {timer}"));
    }

    fn on_event(&mut self, caller: Option<SessionId>, event: Event<'_>) -> Reply {
        if event.name != "record" && event.name != "take-record" {
            note(format!("event {}", event.name));
        }
        match event.name {
            "record" => RECORD.with(|r| Reply::json(&*r.borrow())),
            "take-record" => RECORD.with(|r| Reply::json(&std::mem::take(&mut *r.borrow_mut()))),
            "append" => match event.params::<Vec<String>>() {
                Ok(lines) => {
                    lines.into_iter().for_each(|l| note(format!("> {l}")));
                    Reply::ok()
                }
                Err(e) => Reply::error(e),
            },
            "connect" => match event.params::<ConnectTo>() {
                Ok(c) => wasmwire_guest::connect(c.peer.as_deref(), &c.service)
                    .map_err(|e| e.to_string())
                    .into(),
                Err(e) => Reply::error(e),
            },
            "send" => match event.params::<SendOn>() {
                Ok(s) if !self.given.contains(&s.session) => {
                    Reply::error(format!("session {} was never mine", s.session))
                }
                Ok(s) => wasmwire_guest::send(s.session, &s.kind, s.text.as_bytes())
                    .map(|()| true)
                    .map_err(|e| e.to_string())
                    .into(),
                Err(e) => Reply::error(e),
            },
            "flood" => match event.params::<FloodOn>() {
                Ok(f) if !self.given.contains(&f.session) => {
                    Reply::error(format!("session {} was never mine", f.session))
                }
                // Bounded, so a caller cannot make it allocate without end.
                Ok(f) if f.size > MAX_FLOOD_SIZE => {
                    Reply::error(format!("size {} is over {MAX_FLOOD_SIZE}", f.size))
                }
                Ok(f) => {
                    let payload = vec![b'x'; f.size];
                    let mut sent = 0u64;
                    let mut error = None;
                    while sent < f.count {
                        match wasmwire_guest::send(f.session, &f.kind, &payload) {
                            Ok(()) => sent += 1,
                            Err(e) => {
                                error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    Reply::json(&serde_json::json!({ "sent": sent, "error": error }))
                }
                Err(e) => Reply::error(e),
            },
            "close" => match event.params::<CloseOn>() {
                Ok(c) => {
                    wasmwire_guest::close(c.session);
                    Reply::ok()
                }
                Err(e) => Reply::error(e),
            },
            "request" => match event.params::<RequestOf>() {
                Ok(r) => wasmwire_guest::request(&r.service, &r.event, &r.params.to_string())
                    .map(|reply| {
                        serde_json::from_str::<serde_json::Value>(&reply).unwrap_or_default()
                    })
                    .map_err(|e| e.to_string())
                    .into(),
                Err(e) => Reply::error(e),
            },
            "timer" => match event.params::<TimerEvery>() {
                Ok(t) => wasmwire_guest::set_timer(t.every_ms)
                    .map_err(|e| e.to_string())
                    .into(),
                Err(e) => Reply::error(e),
            },
            "sessions" => {
                let list: Vec<(SessionId, String, Option<String>)> = wasmwire_guest::sessions()
                    .into_iter()
                    .map(|s| (s.id, s.service, s.peer))
                    .collect();
                Reply::json(&list)
            }
            "name" => Reply::json(&wasmwire_guest::instance_name()),
            "self" => {
                let me = wasmwire_guest::self_info();
                Reply::json(&serde_json::json!({
                    "name": me.name,
                    "service": me.service,
                    "key": me.key,
                    "host": me.host,
                }))
            }
            "caller" => Reply::json(&caller),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Spec);
