//! The benchmark service: counts `data` messages, floods another instance with them, and
//! times request round trips from inside the guest.
//!
//! Events: `count` (messages received so far), `flood {service, n, size, peer?, sessions?}`
//! (connects to `service` — on host `peer` if given — `sessions` times (default 1) and
//! sends `n` messages of `size` bytes round-robin over those sessions, retrying while the
//! receiver is busy; returns `{busy, connect_us}`: the busy retries, and the microseconds
//! the connects took), `ping {service, n}` (makes `n` requests of `pong`
//! on `service`; returns the sorted round-trip times in nanoseconds), `pong` (answers 1).

use serde::Deserialize;
use std::time::Instant;
use wasmwire_guest::{Error, Event, Message, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct Bench {
    received: u64,
}

#[derive(Deserialize)]
struct Flood {
    service: String,
    n: u64,
    size: usize,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    sessions: Option<usize>,
}

#[derive(Deserialize)]
struct Ping {
    service: String,
    n: usize,
}

impl Service for Bench {
    const MESSAGES: &'static [&'static str] = &["data"];
    const EVENTS: &'static [&'static str] = &["count", "flood", "ping", "pong"];

    fn on_message(&mut self, _session: SessionId, _message: Message<'_>) {
        self.received += 1;
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "count" => Reply::json(&self.received),
            "pong" => Reply::json(&1),
            "flood" => {
                let f: Flood = match event.params() {
                    Ok(f) => f,
                    Err(e) => return Reply::error(e),
                };
                let mut sessions = Vec::new();
                let t = Instant::now();
                for _ in 0..f.sessions.unwrap_or(1).max(1) {
                    match wasmwire_guest::connect(f.peer.as_deref(), &f.service) {
                        Ok(s) => sessions.push(s),
                        Err(e) => return Reply::error(e.to_string()),
                    }
                }
                let connect_us = t.elapsed().as_micros() as u64;
                let payload = vec![7u8; f.size];
                let mut busy: u64 = 0;
                for i in 0..f.n {
                    let session = sessions[i as usize % sessions.len()];
                    loop {
                        match wasmwire_guest::send(session, "data", &payload) {
                            Ok(()) => break,
                            Err(Error::Busy) => busy += 1,
                            Err(e) => return Reply::error(e.to_string()),
                        }
                    }
                }
                for s in sessions {
                    wasmwire_guest::close(s);
                }
                Reply::json(&serde_json::json!({"busy": busy, "connect_us": connect_us}))
            }
            "ping" => {
                let p: Ping = match event.params() {
                    Ok(p) => p,
                    Err(e) => return Reply::error(e),
                };
                let mut times = Vec::with_capacity(p.n);
                for _ in 0..p.n {
                    let t = Instant::now();
                    if let Err(e) = wasmwire_guest::request(&p.service, "pong", "null") {
                        return Reply::error(e.to_string());
                    }
                    times.push(t.elapsed().as_nanos() as u64);
                }
                times.sort_unstable();
                Reply::json(&times)
            }
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Bench);
