//! Random but well-formed steps. Each step is chosen from the state the run is in (open
//! sessions, the guest's timers), and payloads are shaped like JSON the service has shown
//! — its options, its replies, the messages it sent — then mutated, mixed with small random
//! JSON and raw random bytes.

use super::step::{Fault, Step};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// JSON values seen so far, kept bounded.
const CORPUS: usize = 256;

/// Most message steps a generated `batch` gathers: past the `MAX_RUN` of one call, so that
/// a burst is split across calls too.
const MAX_BATCH: u32 = crate::class::MAX_RUN as u32 + 16;

/// Replies longer than this are not learned: parsing them costs more than their shape adds.
const LEARN_MAX: usize = 4096;

/// Once the corpus is full, one reply in this many is parsed to replace an entry. A
/// service's replies repeat (an echo returns what it was sent): parsing each would cost
/// more than the call that produced it.
const LEARN_FULL_ONE_IN: u32 = 32;

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
    /// Whether the host hands the service batches of messages (`on-messages`).
    pub batches: bool,
}

/// The step generator of one fuzzing session.
pub struct Generator {
    rng: Xoshiro256PlusPlus,
    corpus: Vec<Value>,
    /// The same values as text, for cheap byte-level mutations.
    texts: Vec<Vec<u8>>,
    /// Hashes of the texts already learned, so a repeated reply is not parsed again.
    learned: HashSet<u64>,
    /// Fixed keys: the same seed must make the same runs in every process.
    hasher: BuildHasherDefault<DefaultHasher>,
    /// Replies offered since the corpus filled.
    seen: u64,
    next_session: u64,
    /// How many of `Fault::ALL` it injects (the storage fault only for a service that
    /// stores).
    faults: usize,
}

impl Generator {
    /// A generator seeded with `seed`, knowing the options' shape and whether the
    /// service stores data (then it injects storage faults too).
    pub fn new(seed: u64, options: &str, stores: bool) -> Generator {
        let mut g = Generator {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            corpus: Vec::new(),
            texts: Vec::new(),
            learned: HashSet::new(),
            hasher: BuildHasherDefault::default(),
            seen: 0,
            next_session: 1,
            faults: if stores {
                Fault::ALL.len()
            } else {
                Fault::HOST_CALLS
            },
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
        let full = self.corpus.len() >= CORPUS;
        if bytes.len() > LEARN_MAX || bytes.is_empty() {
            return;
        }
        // Once full, one reply in LEARN_FULL_ONE_IN is looked at, counted (not drawn from
        // `rng`: learning must not shift the random choices of the steps that follow).
        if full {
            self.seen = self.seen.wrapping_add(1);
            if !self.seen.is_multiple_of(u64::from(LEARN_FULL_ONE_IN)) {
                return;
            }
        }
        // The length and both ends tell texts apart well enough for a corpus, and cost the
        // same for a 4 KiB reply as for a short one.
        let ends = (
            &bytes[..bytes.len().min(64)],
            &bytes[bytes.len().saturating_sub(64)..],
        );
        let hash = self.hasher.hash_one((bytes.len(), ends));
        if !self.learned.insert(hash) {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(bytes)
            && !v.is_null()
        {
            if full {
                let i = (hash >> 32) as usize % CORPUS;
                self.corpus[i] = v;
                self.texts[i] = bytes.to_vec();
            } else {
                self.corpus.push(v);
                self.texts.push(bytes.to_vec());
            }
        }
        if self.learned.len() > 16 * CORPUS {
            self.learned.clear();
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
                // A burst: the next few messages reach it in one call, as a host hands
                // what queued in a mailbox.
                20..24 if has_sessions && view.batches => Some(Step::Batch {
                    count: self.rng.random_range(2..=MAX_BATCH),
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
                90..95 => Some(Step::Fault(
                    Fault::ALL[self.rng.random_range(0..self.faults)],
                )),
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
            0..35 if !self.texts.is_empty() => self.tweaked(),
            0..55 => self.shaped().to_string().into_bytes(),
            55..80 => self.value(3).to_string().into_bytes(),
            _ => {
                let len = if self.rng.random_bool(0.05) {
                    self.rng.random_range(0..65_536)
                } else {
                    self.rng.random_range(0..64)
                };
                let mut bytes = vec![0; len];
                self.rng.fill_bytes(&mut bytes);
                bytes
            }
        }
    }

    fn params(&mut self) -> String {
        match self.rng.random_range(0..100u32) {
            // `tweaked` keeps UTF-8 text UTF-8 (it only touches ASCII bytes).
            0..35 if !self.texts.is_empty() => {
                String::from_utf8(self.tweaked()).unwrap_or_else(|_| "null".into())
            }
            0..60 => self.shaped().to_string(),
            60..75 => "null".into(),
            75..95 => self.value(3).to_string(),
            _ => self.word(),
        }
    }

    /// A text from the corpus with one to three byte-level changes, as byte fuzzers make
    /// them: a number swapped for an edge value, a byte for a JSON delimiter, a byte
    /// inserted or removed, the text cut short. Much cheaper than a structured mutation
    /// (no parse, no tree, no serializing), so most payloads are made this way. Only ASCII
    /// bytes are touched, so UTF-8 text stays UTF-8.
    fn tweaked(&mut self) -> Vec<u8> {
        const EDGES: [&[u8]; 10] = [
            b"0",
            b"-1",
            b"1",
            b"100",
            b"101",
            b"127",
            b"255",
            b"256",
            b"65536",
            b"9223372036854775807",
        ];
        const DELIMITERS: &[u8] = b"\"{}[],:-\\0e.tnfx ";
        let i = self.rng.random_range(0..self.texts.len());
        let mut t = self.texts[i].clone();
        for _ in 0..self.rng.random_range(1..=3) {
            if t.is_empty() {
                t.push(b'0');
                continue;
            }
            let at = self.rng.random_range(0..t.len());
            if !t[at].is_ascii() {
                continue;
            }
            match self.rng.random_range(0..8u32) {
                0..3 if t[at].is_ascii_digit() => {
                    let (mut a, mut b) = (at, at);
                    while a > 0 && (t[a - 1].is_ascii_digit() || t[a - 1] == b'-') {
                        a -= 1;
                    }
                    while b < t.len() && t[b].is_ascii_digit() {
                        b += 1;
                    }
                    let edge = EDGES[self.rng.random_range(0..EDGES.len())];
                    t.splice(a..b, edge.iter().copied());
                }
                0..5 => t[at] = DELIMITERS[self.rng.random_range(0..DELIMITERS.len())],
                5 => t.insert(at, DELIMITERS[self.rng.random_range(0..DELIMITERS.len())]),
                6 => {
                    t.remove(at);
                }
                _ => t.truncate(at),
            }
        }
        t
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
