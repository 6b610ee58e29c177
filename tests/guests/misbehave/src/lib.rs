//! A service that misbehaves on demand, for the containment tests.
//!
//! Events: `ok` (answers "fine"), `spin` (loops forever), `bomb` (allocates until the
//! memory limit stops it), `panic` (traps), `wakeups` (how many times this instance woke),
//! `logflood` (100 000 `log` calls), `printflood` (100 000 lines on stderr) and `recurse`
//! (recursion without end: a stack overflow), `sendflood` (sends on every session until
//! refused), `foreign` (`send` and `close` on 10 000 session ids it does not own),
//! `connectloop` (10 000 `connect`s), `timerstorm` (10 000 `set-timer`s, a third of 0 ms),
//! `selfrequest` (a `request` to itself), `bigreply` (a 3 MiB reply), `bigsend` (a 3 MiB
//! payload on every session), `biglog` (one 3 MiB log line), `work` (`{"rounds": N}`: a fixed
//! amount of computing, N × 100 000 steps, the same CPU time however busy the machine is).
//! Messages: `boom` traps in `on-message`, `fine` is ignored, `slow` takes 5 ms, `note`
//! keeps its payload (a number; `notes` answers them in arrival order) and sends it back,
//! `bye` closes its session. Built with the SDK, it takes messages in batches.
//! Options: `{ "trap_wakeup": true }` makes `wakeup` trap; `{ "spin_sleep": true }` makes
//! `sleep` never return.

use serde::Deserialize;
use wasmwire_guest::{Event, Message, Options, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct Misbehave {
    spin_sleep: bool,
    /// The `note` payloads, in arrival order.
    notes: Vec<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MisbehaveOptions {
    trap_wakeup: bool,
    spin_sleep: bool,
}

impl Service for Misbehave {
    const MESSAGES: &'static [&'static str] = &["boom", "fine", "slow", "note", "bye"];
    const EVENTS: &'static [&'static str] = &[
        "ok",
        "spin",
        "bomb",
        "panic",
        "logflood",
        "printflood",
        "recurse",
        "sendflood",
        "foreign",
        "connectloop",
        "timerstorm",
        "selfrequest",
        "bigreply",
        "bigsend",
        "biglog",
        "work",
        "notes",
    ];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        let o = options.parse::<MisbehaveOptions>()?;
        if o.trap_wakeup {
            panic!("told to trap in wakeup");
        }
        self.spin_sleep = o.spin_sleep;
        Ok(())
    }

    fn sleep(&mut self) {
        if self.spin_sleep {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
    }

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        if message.kind == "note" {
            let n = std::str::from_utf8(message.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            self.notes.push(n);
            let _ = wasmwire_guest::send(session, "note", message.payload);
        }
        if message.kind == "bye" {
            wasmwire_guest::close(session);
        }
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
            "notes" => Reply::json(&self.notes),
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
            "sendflood" => {
                let (mut sent, mut refused) = (0u64, 0u64);
                for s in wasmwire_guest::sessions() {
                    for _ in 0..1_000_000 {
                        match wasmwire_guest::send(s.id, "fine", b"x") {
                            Ok(()) => sent += 1,
                            Err(_) => {
                                refused += 1;
                                break;
                            }
                        }
                    }
                }
                Reply::json(&(sent, refused))
            }
            "foreign" => {
                let mine: Vec<SessionId> = wasmwire_guest::sessions()
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                let mut refused = 0u64;
                for id in (0..10_000u64).filter(|id| !mine.contains(id)) {
                    if wasmwire_guest::send(id, "fine", b"x").is_err() {
                        refused += 1;
                    }
                    wasmwire_guest::close(id);
                }
                Reply::json(&refused)
            }
            "connectloop" => {
                let refused = (0..10_000)
                    .filter(|_| wasmwire_guest::connect(None, "witness").is_err())
                    .count();
                Reply::json(&refused)
            }
            "timerstorm" => {
                let refused = (0..10_000u64)
                    .filter(|i| wasmwire_guest::set_timer(i % 3).is_err())
                    .count();
                Reply::json(&refused)
            }
            "selfrequest" => {
                match wasmwire_guest::request(&wasmwire_guest::instance_name(), "ok", "null") {
                    Ok(r) => Reply::json(&r),
                    Err(e) => Reply::json(&e.to_string()),
                }
            }
            "bigreply" => Reply::json(&"x".repeat(BIG)),
            "bigsend" => {
                let payload = vec![b'x'; BIG];
                let refused = wasmwire_guest::sessions()
                    .iter()
                    .filter(|s| wasmwire_guest::send(s.id, "fine", &payload).is_err())
                    .count();
                Reply::json(&refused)
            }
            "biglog" => {
                wasmwire_guest::log(wasmwire_guest::Level::Info, &"x".repeat(BIG));
                Reply::json("logged")
            }
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
            "work" => {
                #[derive(Deserialize)]
                struct Work {
                    rounds: u64,
                }
                let rounds = match event.params::<Work>() {
                    Ok(w) => w.rounds,
                    Err(e) => return Reply::error(e),
                };
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for _ in 0..rounds * 100_000 {
                    x = std::hint::black_box(x ^ (x << 13) ^ (x >> 7) ^ (x << 17));
                }
                Reply::json(&x)
            }
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

/// Bytes of the huge strings and payloads handed to the host.
const BIG: usize = 3 << 20;

/// Recursion that never ends (the frame is kept alive so it cannot become a loop).
#[allow(unconditional_recursion)] // the point: a stack overflow
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    deeper(frame[0].wrapping_add(1)).wrapping_add(frame[15])
}

export_service!(Misbehave);
