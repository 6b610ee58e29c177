//! Random but well-formed steps. Each step is chosen from the state the run is in (open
//! sessions, the guest's timers), and payloads are shaped like JSON the service has shown
//! — its options, its replies, the messages it sent — then mutated, mixed with small random
//! JSON and raw random bytes.

use super::step::{Fault, Step};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value};

/// JSON values seen so far, kept bounded.
const CORPUS: usize = 256;

/// What the generator may look at when choosing the next step.
pub struct View<'a> {
    /// Whether the instance is awake.
    pub awake: bool,
    /// Open session ids.
    pub sessions: &'a [u64],
    /// The guest's timer ids.
    pub timers: &'a [u32],
    /// Declared message kinds.
    pub messages: &'a [String],
    /// Declared events.
    pub events: &'a [String],
}

/// The step generator of one fuzzing session.
pub struct Generator {
    rng: Xoshiro256PlusPlus,
    corpus: Vec<Value>,
    next_session: u64,
}

impl Generator {
    /// A generator seeded with `seed`, knowing the options' shape.
    pub fn new(seed: u64, options: &str) -> Generator {
        let mut g = Generator {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            corpus: Vec::new(),
            next_session: 1,
        };
        g.learn(options.as_bytes());
        g
    }

    /// Starts a new run: session ids count from 1 again.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        self.next_session = 1;
    }

    /// Remembers a JSON value the service showed (a reply, a message it sent).
    pub fn learn(&mut self, bytes: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes)
            && !v.is_null()
        {
            if self.corpus.len() >= CORPUS {
                let i = self.rng.random_range(0..CORPUS);
                self.corpus[i] = v;
            } else if !self.corpus.contains(&v) {
                self.corpus.push(v);
            }
        }
    }

    /// The next step for a run in state `view`.
    pub fn step(&mut self, view: &View<'_>) -> Step {
        loop {
            let roll = self.rng.random_range(0..100u32);
            let has_sessions = !view.sessions.is_empty();
            let step = match roll {
                0..12 => Some(self.connect()),
                12..20 if has_sessions => Some(Step::Disconnect {
                    id: self.pick(view.sessions),
                }),
                20..52 if has_sessions => Some(Step::Message {
                    id: self.pick(view.sessions),
                    kind: self.name(view.messages),
                    payload: self.payload(),
                }),
                52..84 => Some(Step::Event {
                    name: self.name(view.events),
                    params: self.params(),
                }),
                84..90 if !view.timers.is_empty() => Some(Step::Timer {
                    id: self.pick(view.timers),
                }),
                90..95 => Some(Step::Fault(Fault::ALL[self.rng.random_range(0..4)])),
                95..97 if view.awake && !has_sessions => Some(Step::Sleep),
                97..99 => Some(Step::Wake),
                99 => Some(Step::Describe),
                _ => None,
            };
            if let Some(s) = step {
                return s;
            }
        }
    }

    fn connect(&mut self) -> Step {
        let id = self.next_session;
        self.next_session += 1;
        Step::Connect {
            id,
            caller: format!("fuzz-{id}"),
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    /// A declared name most of the time, a random one (which the host must refuse) else.
    fn name(&mut self, declared: &[String]) -> String {
        if !declared.is_empty() && self.rng.random_bool(0.92) {
            return declared[self.rng.random_range(0..declared.len())].clone();
        }
        self.word()
    }

    fn word(&mut self) -> String {
        let len = self.rng.random_range(0..12);
        (0..len)
            .map(|_| (b'a' + self.rng.random_range(0..26u8)) as char)
            .collect()
    }

    fn payload(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..100u32) {
            0..55 => self.shaped().to_string().into_bytes(),
            55..80 => self.value(3).to_string().into_bytes(),
            _ => {
                let len = if self.rng.random_bool(0.05) {
                    self.rng.random_range(0..65_536)
                } else {
                    self.rng.random_range(0..64)
                };
                (0..len).map(|_| self.rng.random::<u8>()).collect()
            }
        }
    }

    fn params(&mut self) -> String {
        match self.rng.random_range(0..100u32) {
            0..60 => self.shaped().to_string(),
            60..75 => "null".into(),
            75..95 => self.value(3).to_string(),
            _ => self.word(),
        }
    }

    /// A value from the corpus, mutated.
    fn shaped(&mut self) -> Value {
        if self.corpus.is_empty() {
            return self.value(2);
        }
        let i = self.rng.random_range(0..self.corpus.len());
        let v = self.corpus[i].clone();
        self.mutate(v, 0)
    }

    fn mutate(&mut self, v: Value, depth: u32) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    if self.rng.random_bool(0.05) {
                        continue; // drop a field
                    }
                    let v = self.mutate(v, depth + 1);
                    out.insert(k, v);
                }
                if self.rng.random_bool(0.05) {
                    let k = self.word();
                    let v = self.value(1);
                    out.insert(k, v);
                }
                Value::Object(out)
            }
            Value::Array(a) if depth < 4 => {
                Value::Array(a.into_iter().map(|v| self.mutate(v, depth + 1)).collect())
            }
            Value::Number(_) if self.rng.random_bool(0.6) => self.number(),
            Value::String(_) if self.rng.random_bool(0.4) => Value::String(self.text()),
            Value::Bool(b) if self.rng.random_bool(0.3) => Value::Bool(!b),
            other if self.rng.random_bool(0.03) => {
                let _ = other;
                self.value(1)
            }
            other => other,
        }
    }

    fn number(&mut self) -> Value {
        const EDGES: [i64; 12] = [0, 1, -1, 2, 100, 101, 127, 128, 255, 256, 1000, i64::MAX];
        match self.rng.random_range(0..4u32) {
            0 => Value::from(EDGES[self.rng.random_range(0..EDGES.len())]),
            1 => Value::from(self.rng.random_range(0..1_000i64)),
            2 => Value::from(self.rng.random::<i64>()),
            _ => serde_json::Number::from_f64(self.rng.random::<f64>() * 1e6)
                .map_or(Value::Null, Value::Number),
        }
    }

    fn text(&mut self) -> String {
        match self.rng.random_range(0..10u32) {
            0 => String::new(),
            1 => "x".repeat(self.rng.random_range(256..4096)),
            2 => "\u{0}\u{fffd}é\"\\".into(),
            _ => self.word(),
        }
    }

    fn value(&mut self, depth: u32) -> Value {
        let top = if depth == 0 { 4 } else { 6 };
        match self.rng.random_range(0..top) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.random()),
            2 => self.number(),
            3 => Value::String(self.text()),
            4 => {
                let n = self.rng.random_range(0..4);
                Value::Array((0..n).map(|_| self.value(depth - 1)).collect())
            }
            _ => {
                let n = self.rng.random_range(0..4);
                let mut m = Map::new();
                for _ in 0..n {
                    let k = self.word();
                    let v = self.value(depth - 1);
                    m.insert(k, v);
                }
                Value::Object(m)
            }
        }
    }
}
