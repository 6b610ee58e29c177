//! The guest interface: arbitrary call sequences into the sample services, through the host
//! runtime exactly as `wasmwire fuzz` drives them (same limits, host imports and actor
//! rules). Any finding — a trap, a limit hit, a broken host-side rule — is a crash here: the
//! samples must have none. Needs `make services` first (the `.wasm` files are read from
//! `target/services/`).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use wasmwire::fuzz::{self, Fault, Settings, Step, Target};

/// The samples with the options `wasmwire.toml` gives them.
const SAMPLES: [(&str, &str); 5] = [
    ("echo", "{}"),
    ("counter", r#"{"start":100}"#),
    ("chat", r#"{"room":"lobby"}"#),
    ("ticker", r#"{"every_ms":1000}"#),
    ("spec", "{}"),
];

struct Loaded {
    runtime: tokio::runtime::Runtime,
    targets: Vec<(Target, Settings)>,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/services");
        let targets = SAMPLES
            .iter()
            .map(|(name, options)| {
                let path = dir.join(format!("{name}.wasm"));
                let settings = Settings {
                    options: options.to_string(),
                    seed: 0,
                    runs: Some(1),
                    duration: None,
                    max_steps: 64,
                    limits: Default::default(),
                    jobs: 1,
                };
                let target = runtime
                    .block_on(Target::load(&path, &settings.limits))
                    .unwrap_or_else(|e| {
                        panic!("{}: {e} (run `make services` first)", path.display())
                    });
                (target, settings)
            })
            .collect();
        Loaded { runtime, targets }
    })
}

fn name(u: &mut Unstructured<'_>, declared: &[String]) -> Result<String> {
    if !declared.is_empty() && u.ratio(15, 16)? {
        return Ok(u.choose(declared)?.clone());
    }
    u.arbitrary()
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    // JSON most of the time (what services parse), anything else sometimes.
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => format!("{}", u.arbitrary::<i64>()?),
        2 => format!(
            r#"{{"text":{:?},"n":{}}}"#,
            u.arbitrary::<String>()?,
            u.arbitrary::<i32>()?
        ),
        _ => format!(
            r#"{{"room":{:?},"name":{:?}}}"#,
            u.arbitrary::<String>()?,
            u.arbitrary::<String>()?
        ),
    })
}

fn step(u: &mut Unstructured<'_>, target: &Target) -> Result<Step> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Step::Connect {
            id: u.int_in_range(1..=8)?,
            caller: u.arbitrary()?,
        },
        1 => Step::Disconnect {
            id: u.int_in_range(1..=8)?,
        },
        2 | 3 => Step::Message {
            id: u.int_in_range(1..=8)?,
            kind: name(u, target.messages())?,
            payload: if u.arbitrary()? {
                text(u)?.into_bytes()
            } else {
                u.arbitrary()?
            },
        },
        4 | 5 => Step::Event {
            name: name(u, target.events())?,
            params: text(u)?,
        },
        6 => Step::Timer {
            id: u.int_in_range(0..=16)?,
        },
        7 => Step::Fault(*u.choose(&Fault::ALL)?),
        8 => {
            if u.arbitrary()? {
                Step::Sleep
            } else {
                Step::Wake
            }
        }
        _ => {
            if u.arbitrary()? {
                Step::Batch {
                    count: u.int_in_range(2..=24)?,
                }
            } else {
                Step::Describe
            }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let loaded = loaded();
    let mut u = Unstructured::new(data);
    let Ok(which) = u.choose_index(loaded.targets.len()) else {
        return;
    };
    let (target, settings) = &loaded.targets[which];
    let mut steps = Vec::new();
    while steps.len() < settings.max_steps {
        match step(&mut u, target) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    let (finding, _calls) = loaded
        .runtime
        .block_on(fuzz::replay(target, settings, &steps));
    if let Some(f) = finding {
        let replay = fuzz::Replay {
            options: settings.options.clone(),
            steps,
        };
        panic!(
            "{} in {} at step {}: {}\n{}",
            f.kind.name(),
            f.export,
            f.step + 1,
            f.cause,
            replay.to_text(&[])
        );
    }
});
