//! One step of a fuzzing sequence, and the replay file: readable text, one step a line,
//! every argument a JSON value (so names and payloads may hold any character).
//!
//! ```text
//! # comments start with '#'
//! options "{\"room\":\"lobby\"}"
//! connect 1 "fuzz-1"
//! message 1 "say" "hello"
//! message 1 "say" {"hex":"00ff"}
//! event "members" "null"
//! fault "busy"
//! timer 1
//! disconnect 1
//! sleep
//! wake
//! describe
//! ```

use serde_json::Value;
use std::fmt;

/// What the fuzzer asks of the host, as the host's own callers would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Wake the instance now (it also wakes on demand, as in a host).
    Wake,
    /// Put the instance to sleep (only when it has no sessions, as in a host).
    Sleep,
    /// A client opens session `id` under the name `caller`.
    Connect {
        /// The session id the host hands the guest.
        id: u64,
        /// The other end's name.
        caller: String,
    },
    /// The other end closes session `id`.
    Disconnect {
        /// The session.
        id: u64,
    },
    /// A message on session `id` (refused by the host if the kind is undeclared).
    Message {
        /// The session.
        id: u64,
        /// The message kind.
        kind: String,
        /// The payload.
        payload: Vec<u8>,
    },
    /// An event with JSON parameters (refused if undeclared).
    Event {
        /// The event name.
        name: String,
        /// The parameters, as text.
        params: String,
    },
    /// Timer `id` fires (if the guest set it).
    Timer {
        /// The timer.
        id: u32,
    },
    /// The next `send`, `connect` or `request` the guest makes fails with this error.
    Fault(Fault),
    /// Ask `describe` again: it must not change.
    Describe,
    /// The next `count` message steps reach the guest together, in calls of
    /// `on-messages`, as a host hands it what queued in its mailbox (only a service the
    /// host hands batches to; any other step delivers what was gathered first).
    Batch {
        /// How many message steps it gathers.
        count: u32,
    },
}

/// An error injected into a host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `busy`.
    Busy,
    /// `closed`.
    Closed,
    /// `timeout`.
    Timeout,
    /// `denied`.
    Denied,
    /// A storage error: the next read or write of `wasi:keyvalue` that reaches the
    /// database fails (`other("storage failed: …")`).
    Store,
}

impl Fault {
    /// Every fault: the host-call errors first, then the storage one (made only for a
    /// service that imports `wasi:keyvalue`).
    pub const ALL: [Fault; 5] = [
        Fault::Busy,
        Fault::Closed,
        Fault::Timeout,
        Fault::Denied,
        Fault::Store,
    ];

    /// How many of [`Fault::ALL`] are errors of host calls.
    pub const HOST_CALLS: usize = 4;

    fn name(self) -> &'static str {
        match self {
            Fault::Busy => "busy",
            Fault::Closed => "closed",
            Fault::Timeout => "timeout",
            Fault::Denied => "denied",
            Fault::Store => "store",
        }
    }
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn payload_text(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => json(s),
        Err(_) => {
            let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
            format!("{{\"hex\":\"{hex}\"}}")
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Wake => f.write_str("wake"),
            Step::Sleep => f.write_str("sleep"),
            Step::Connect { id, caller } => write!(f, "connect {id} {}", json(caller)),
            Step::Disconnect { id } => write!(f, "disconnect {id}"),
            Step::Message { id, kind, payload } => {
                write!(f, "message {id} {} {}", json(kind), payload_text(payload))
            }
            Step::Event { name, params } => write!(f, "event {} {}", json(name), json(params)),
            Step::Timer { id } => write!(f, "timer {id}"),
            Step::Fault(k) => write!(f, "fault {}", json(k.name())),
            Step::Describe => f.write_str("describe"),
            Step::Batch { count } => write!(f, "batch {count}"),
        }
    }
}

/// A replay file: the options `wakeup` gets, and the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The options, as JSON text.
    pub options: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Replay {
    /// The file's text, with `comment` lines first.
    pub fn to_text(&self, comment: &[String]) -> String {
        let mut out = String::new();
        for c in comment {
            out.push_str(&format!("# {c}\n"));
        }
        out.push_str(&format!("options {}\n", json(&self.options)));
        for s in &self.steps {
            out.push_str(&format!("{s}\n"));
        }
        out
    }

    /// Reads a replay file's text; errors name the line.
    pub fn parse(text: &str) -> Result<Replay, String> {
        let mut options = "{}".to_string();
        let mut steps = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |e: String| format!("line {}: {e}: {line}", n + 1);
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let args: Vec<Value> = serde_json::Deserializer::from_str(rest)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .map_err(|e| at(format!("bad argument ({e})")))?;
            let text_arg = |i: usize| -> Result<String, String> {
                args.get(i)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| at(format!("argument {} must be a JSON string", i + 1)))
            };
            let num_arg = |i: usize| -> Result<u64, String> {
                args.get(i)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| at(format!("argument {} must be a number", i + 1)))
            };
            let step = match word {
                "options" => {
                    options = text_arg(0)?;
                    continue;
                }
                "wake" => Step::Wake,
                "sleep" => Step::Sleep,
                "describe" => Step::Describe,
                "connect" => Step::Connect {
                    id: num_arg(0)?,
                    caller: text_arg(1)?,
                },
                "disconnect" => Step::Disconnect { id: num_arg(0)? },
                "batch" => Step::Batch {
                    count: u32::try_from(num_arg(0)?)
                        .map_err(|_| at("batch count too large".into()))?,
                },
                "timer" => Step::Timer {
                    id: u32::try_from(num_arg(0)?).map_err(|_| at("timer id too large".into()))?,
                },
                "event" => Step::Event {
                    name: text_arg(0)?,
                    params: text_arg(1)?,
                },
                "message" => {
                    let payload = match args.get(2) {
                        Some(Value::String(s)) => s.clone().into_bytes(),
                        Some(Value::Object(o)) => {
                            let hex = o.get("hex").and_then(Value::as_str).unwrap_or("");
                            decode_hex(hex).ok_or_else(|| at("bad hex payload".into()))?
                        }
                        _ => {
                            return Err(at("argument 3 must be a string or {\"hex\": ...}".into()));
                        }
                    };
                    Step::Message {
                        id: num_arg(0)?,
                        kind: text_arg(1)?,
                        payload,
                    }
                }
                "fault" => {
                    let name = text_arg(0)?;
                    let f = Fault::ALL
                        .into_iter()
                        .find(|f| f.name() == name)
                        .ok_or_else(|| at(format!("unknown fault {name:?}")))?;
                    Step::Fault(f)
                }
                other => return Err(at(format!("unknown step {other:?}"))),
            };
            steps.push(step);
        }
        Ok(Replay { options, steps })
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_files_round_trip_every_step() {
        let r = Replay {
            options: r#"{"room":"a b"}"#.into(),
            steps: vec![
                Step::Wake,
                Step::Connect {
                    id: 1,
                    caller: "fuzz \"1\"".into(),
                },
                Step::Message {
                    id: 1,
                    kind: "say".into(),
                    payload: b"hello\nworld".to_vec(),
                },
                Step::Message {
                    id: 1,
                    kind: "\u{1}odd kind".into(),
                    payload: vec![0, 255, 7],
                },
                Step::Event {
                    name: "incr".into(),
                    params: r#"{"by": 2}"#.into(),
                },
                Step::Fault(Fault::Timeout),
                Step::Timer { id: 3 },
                Step::Batch { count: 2 },
                Step::Disconnect { id: 1 },
                Step::Describe,
                Step::Sleep,
            ],
        };
        let text = r.to_text(&["seed 42".into()]);
        assert!(text.starts_with("# seed 42\noptions "), "{text}");
        assert_eq!(text.lines().count(), 13, "one step a line:\n{text}");
        assert_eq!(Replay::parse(&text), Ok(r));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = Replay::parse("wake\nmessage one \"say\" \"x\"\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(
            Replay::parse("teleport 1")
                .unwrap_err()
                .contains("unknown step")
        );
        assert!(Replay::parse("message 1 \"k\" {\"hex\":\"zz\"}").is_err());
    }
}
