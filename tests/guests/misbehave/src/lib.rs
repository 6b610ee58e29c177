//! A service that misbehaves on demand, for the containment tests.
//!
//! Events: `ok` (answers "fine"), `spin` (loops forever), `bomb` (allocates until the
//! memory limit stops it), `panic` (traps), `wakeups` (how many times this instance woke),
//! `logflood` (100 000 `log` calls), `printflood` (100 000 lines on stderr) and `recurse`
//! (recursion without end: a stack overflow).
//! Messages: `boom` traps in `on-message`, `fine` is ignored, `slow` takes 5 ms.
//! Options: `{ "trap_wakeup": true }` makes `wakeup` trap.

use serde::Deserialize;
use wasmwire_guest::{Event, Message, Options, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct Misbehave;

#[derive(Deserialize, Default)]
#[serde(default)]
struct MisbehaveOptions {
    trap_wakeup: bool,
}

impl Service for Misbehave {
    const MESSAGES: &'static [&'static str] = &["boom", "fine", "slow"];
    const EVENTS: &'static [&'static str] = &[
        "ok",
        "spin",
        "bomb",
        "panic",
        "logflood",
        "printflood",
        "recurse",
    ];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        if options.parse::<MisbehaveOptions>()?.trap_wakeup {
            panic!("told to trap in wakeup");
        }
        Ok(())
    }

    fn on_message(&mut self, _session: SessionId, message: Message<'_>) {
        if message.kind == "boom" {
            panic!("told to trap in on-message");
        }
        if message.kind == "slow" {
            // A slow receiver: busy for 5 ms per message, well inside its call_timeout.
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(5) {
                std::hint::spin_loop();
            }
        }
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "ok" => Reply::json("fine"),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    chunk[0] = 1; // touch it, so it is really used
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            "panic" => panic!("told to panic"),
            "recurse" => Reply::json(&deeper(std::hint::black_box(1))),
            "logflood" => {
                for i in 0..100_000 {
                    wasmwire_guest::log(wasmwire_guest::Level::Info, &format!("flood {i}"));
                }
                Reply::json("flooded")
            }
            "printflood" => {
                for i in 0..100_000 {
                    eprintln!("flood {i}");
                }
                Reply::json("flooded")
            }
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

/// Recursion that never ends (the frame is kept alive so it cannot become a loop).
#[allow(unconditional_recursion)] // the point: a stack overflow
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    deeper(frame[0].wrapping_add(1)).wrapping_add(frame[15])
}

export_service!(Misbehave);
