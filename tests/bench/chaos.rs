//! `make chaos`: the chaos run of `wasmwire_tests::chaos` at a larger size than the test —
//! more hosts, more loss, longer, a link cut every 15 s — printed as a table.
//! `CHAOS_HOSTS` (default 5), `CHAOS_SECONDS` (120), `CHAOS_LOSS` (0.10),
//! `CHAOS_DELAY_MS` (30, plus up to as much again in jitter), `CHAOS_SEED` (1).

use std::time::Duration;
use wasmwire_tests::chaos::{ChaosConfig, Cut, Faults, run, table};
use wasmwire_tests::env_or;

fn main() {
    let hosts: usize = env_or("CHAOS_HOSTS", 5).max(2);
    let seconds: u64 = env_or("CHAOS_SECONDS", 120).max(20);
    let loss: f64 = env_or("CHAOS_LOSS", 0.10);
    let delay = Duration::from_millis(env_or("CHAOS_DELAY_MS", 30));
    let mut seed: u64 = env_or("CHAOS_SEED", 1);
    // A cut every 15 s, each 10 s long, on links picked at random (a link may be cut again).
    let mut cuts = Vec::new();
    let mut at = 10;
    while at + 10 < seconds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = (seed >> 33) as usize % hosts;
        let b = (a + 1 + (seed >> 13) as usize % (hosts - 1)) % hosts;
        cuts.push(Cut {
            a: a.min(b),
            b: a.max(b),
            at: Duration::from_secs(at),
            length: Duration::from_secs(10),
        });
        at += 15;
    }
    let config = ChaosConfig {
        hosts,
        faults: Faults {
            loss,
            delay,
            jitter: delay,
        },
        cuts,
        traffic: Duration::from_secs(seconds),
        settle: Duration::from_secs(3),
        send_every: Duration::from_millis(20),
        ask_every: Duration::from_millis(50),
        request_timeout: Duration::from_secs(2),
        peer_timeout: Duration::from_millis(1500),
        seed,
    };
    let report = wasmwire_tests::block_on(run(config.clone()));
    print!("{}", table(&config, &report));
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
