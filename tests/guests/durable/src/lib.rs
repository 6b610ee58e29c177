//! `durable`: keeps what it is told in its own `wasi:keyvalue` bucket, for the tests of
//! durable state. Events: `set {key, value, bucket?}`, `get {key, bucket?}` (the value or
//! `null`; `bucket` names a shared bucket instead of the instance's own), `incr
//! {key, by}` (an atomic counter), `keys`, `open {name}` (opens a bucket by name: `opened`
//! or the error), `set-and-trap {key, value}` (writes, then panics: the write must vanish),
//! `wakes` (how many times it has woken, kept across sleeps), `big {key_bytes,
//! value_bytes}` (writes a key and value of those sizes, for the limits), `dump` (every
//! JSON value by key), `ping` (no storage at all). A `note` message is appended
//! to the `notes` list and answered with a `noted` message holding the count.
//!
//! Alarms: `alarm-in {ms}` sets the alarm `ms` from now (`at`, or the error), `alarm` is
//! when it is due (or `null`), `cancel-alarm`, `fired` lists the times `on-alarm` was
//! called for (kept in the bucket, with `fired-when`: when each call came), and `trap-alarms` makes `on-alarm` trap until the
//! instance has woken once more (the trap rolls back, so the alarm fires again);
//! `alarm-and-trap {ms}` sets an alarm and panics (the alarm must vanish);
//! `alarm-repeat {ms, times}` sets one, and each `on-alarm` sets the next, `times` more.
//!
//! For the fuzzer's tests: `expect-empty` panics if the bucket holds a key other than
//! `wakes`, `must-incr` panics if a storage call fails.

use serde::Deserialize;
use wasmwire_guest::store::{self, kv};
use wasmwire_guest::{Event, Message, Options, Reply, Service, SessionId, export_service, send};

#[derive(Default)]
struct Durable;

#[derive(Deserialize)]
struct Set {
    key: String,
    value: serde_json::Value,
    /// A shared bucket to write instead of the instance's own.
    bucket: Option<String>,
}

#[derive(Deserialize)]
struct Key {
    key: String,
    bucket: Option<String>,
}

/// Runs `f` on the shared bucket `name`, or on the instance's own.
fn in_bucket<R>(
    name: Option<&str>,
    f: impl FnOnce(&kv::Bucket) -> Result<R, store::StoreError>,
) -> Result<R, String> {
    match name {
        None => store::with_bucket(f),
        Some(n) => kv::open(n)
            .map_err(store::StoreError::from)
            .and_then(|b| f(&b)),
    }
    .map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct Incr {
    key: String,
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
struct Big {
    key_bytes: usize,
    value_bytes: usize,
}

#[derive(Deserialize)]
struct In {
    ms: u64,
}

/// `alarm-repeat`: an alarm every `ms`, `times` more after the first, each set by the
/// `on-alarm` of the one before.
#[derive(Deserialize, serde::Serialize)]
struct Repeat {
    ms: u64,
    times: u32,
}

/// How many times this instance has woken (its `wakes` counter).
fn wakes() -> i64 {
    match store::with_bucket(|b| Ok(b.get("wakes")?)) {
        Ok(Some(b)) if b.len() == 8 => i64::from_le_bytes(b.try_into().expect("8 bytes")),
        _ => 0,
    }
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

impl Service for Durable {
    const MESSAGES: &'static [&'static str] = &["note"];
    const EVENTS: &'static [&'static str] = &[
        "set",
        "get",
        "incr",
        "keys",
        "open",
        "set-and-trap",
        "wakes",
        "big",
        "dump",
        "ping",
        "alarm-in",
        "alarm",
        "cancel-alarm",
        "fired",
        "trap-alarms",
        "alarm-and-trap",
        "expect-empty",
        "must-incr",
        "alarm-repeat",
    ];

    fn on_alarm(&mut self, at_ms: u64) {
        // A write, then a request (refused: "nobody" is not in `uses`), which commits the
        // write first: a trap after it must still leave the alarm to fire again.
        let _ = store::increment("alarm-calls", 1);
        let _ = wasmwire_guest::request("nobody", "ping", "null");
        let trap_below: Option<i64> = store::get("trap-below-wakes").ok().flatten();
        if trap_below.is_some_and(|t| wakes() < t) {
            panic!("on-alarm told to trap");
        }
        // `alarm-repeat`: set the next one from here (after the request above committed).
        if let Ok(Some(mut r)) = store::get::<Repeat>("repeat")
            && r.times > 0
        {
            r.times -= 1;
            let _ = store::set("repeat", &r);
            let _ = wasmwire_guest::set_alarm(wasmwire_guest::now_ms() + r.ms);
        }
        let mut fired: Vec<u64> = store::get("fired").ok().flatten().unwrap_or_default();
        fired.push(at_ms);
        let _ = store::set("fired", &fired);
        // When it was called, beside what for: an alarm is never early.
        let mut when: Vec<u64> = store::get("fired-when").ok().flatten().unwrap_or_default();
        when.push(wasmwire_guest::now_ms());
        let _ = store::set("fired-when", &when);
    }

    fn wakeup(&mut self, _options: Options<'_>) -> Result<(), String> {
        // Counted if it can be (a full disk refuses the write; the service still runs).
        if let Err(e) = store::increment("wakes", 1) {
            wasmwire_guest::log(
                wasmwire_guest::Level::Warn,
                &format!("wakes not counted: {e}"),
            );
        }
        Ok(())
    }

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        let mut notes: Vec<String> = store::get("notes").ok().flatten().unwrap_or_default();
        notes.push(String::from_utf8_lossy(message.payload).into_owned());
        if store::set("notes", &notes).is_ok() {
            let _ = send(session, "noted", notes.len().to_string().as_bytes());
        }
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "set" => event
                .params::<Set>()
                .and_then(|s| {
                    let bytes = serde_json::to_vec(&s.value).map_err(|e| e.to_string())?;
                    in_bucket(s.bucket.as_deref(), |b| Ok(b.set(&s.key, &bytes)?))
                })
                .map(|()| "ok")
                .into(),
            "get" => event
                .params::<Key>()
                .and_then(|k| {
                    let bytes = in_bucket(k.bucket.as_deref(), |b| Ok(b.get(&k.key)?))?;
                    match bytes {
                        None => Ok(serde_json::Value::Null),
                        Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
                    }
                })
                .into(),
            "incr" => event
                .params::<Incr>()
                .and_then(|i| store::increment(&i.key, i.by).map_err(|e| e.to_string()))
                .into(),
            "keys" => store::keys().into(),
            "open" => event
                .params::<Name>()
                .map(|n| match kv::open(&n.name) {
                    Ok(_) => "opened".to_string(),
                    Err(e) => format!("{:?}", store::StoreError::from(e)),
                })
                .into(),
            "set-and-trap" => {
                if let Ok(s) = event.params::<Set>() {
                    let _ = store::set(&s.key, &s.value);
                }
                panic!("set-and-trap: trapping after a write");
            }
            "wakes" => {
                let n = store::with_bucket(|b| Ok(b.get("wakes")?));
                match n {
                    Ok(Some(b)) if b.len() == 8 => {
                        Reply::json(&i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    }
                    Ok(_) => Reply::json(&0),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            "big" => event
                .params::<Big>()
                .and_then(|b| {
                    let key = "k".repeat(b.key_bytes);
                    store::with_bucket(|bucket| Ok(bucket.set(&key, &vec![7; b.value_bytes])?))
                        .map_err(|e| e.to_string())
                })
                .map(|()| "ok")
                .into(),
            "dump" => {
                // Every JSON value of the bucket (the `wakes` counter is bytes, not JSON).
                let dump = store::keys().and_then(|keys| {
                    let mut out = serde_json::Map::new();
                    for k in keys.into_iter().filter(|k| k != "wakes") {
                        if let Some(v) = store::get::<serde_json::Value>(&k)? {
                            out.insert(k, v);
                        }
                    }
                    Ok(out)
                });
                dump.into()
            }
            "alarm-in" => event
                .params::<In>()
                .and_then(|i| {
                    let at = wasmwire_guest::now_ms() + i.ms;
                    wasmwire_guest::set_alarm(at)
                        .map(|()| at)
                        .map_err(|e| e.to_string())
                })
                .into(),
            "alarm" => Reply::json(&wasmwire_guest::alarm()),
            "alarm-repeat" => event
                .params::<Repeat>()
                .and_then(|r| {
                    store::set("repeat", &r).map_err(|e| e.to_string())?;
                    wasmwire_guest::set_alarm(wasmwire_guest::now_ms() + r.ms)
                        .map_err(|e| e.to_string())
                })
                .map(|()| "ok")
                .into(),
            // For the fuzzer: a run's bucket starts empty (but for this instance's own
            // `wakes`), and a storage error is a panic, so that the run reports it.
            "expect-empty" => {
                let keys = store::keys().unwrap_or_default();
                assert!(
                    keys.iter().all(|k| k == "wakes"),
                    "expect-empty: the bucket holds {keys:?}"
                );
                Reply::json("empty")
            }
            "must-incr" => match store::increment("must", 1) {
                Ok(n) => Reply::json(&n),
                Err(e) => panic!("must-incr: {e}"),
            },
            "alarm-and-trap" => {
                if let Ok(i) = event.params::<In>() {
                    let _ = wasmwire_guest::set_alarm(wasmwire_guest::now_ms() + i.ms);
                }
                panic!("alarm-and-trap: trapping after set-alarm");
            }
            "cancel-alarm" => {
                wasmwire_guest::cancel_alarm();
                Reply::json("ok")
            }
            "fired" => store::get::<Vec<u64>>("fired")
                .map(Option::unwrap_or_default)
                .map_err(|e| e.to_string())
                .into(),
            "trap-alarms" => store::set("trap-below-wakes", &(wakes() + 1))
                .map(|()| "ok")
                .map_err(|e| e.to_string())
                .into(),
            // The same round trip with no storage: the baseline of a `get`.
            "ping" => Reply::json("pong"),
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Durable);
