//! `make sim`: the broker network simulation (`wasmwire_tests::sim`) at growing sizes,
//! printed as the table in `docs/scaling.md`. `SIM_HOSTS=100,1000` picks the sizes,
//! `SIM_MINUTES` the simulated time (default 6), `SIM_CHURN` the share of hosts replaced
//! per minute (default 0.02).

use std::time::Duration;
use wasmwire_tests::env_or;
use wasmwire_tests::sim::{SimConfig, run};

fn main() {
    let sizes: Vec<usize> = std::env::var("SIM_HOSTS")
        .unwrap_or_else(|_| "100,1000,2000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let minutes: u64 = env_or("SIM_MINUTES", 6);
    let churn: f64 = env_or("SIM_CHURN", 0.02);
    println!(
        "| hosts | run it | full reach after | reach at end | control msgs / host / min | connections mean / max | busiest seed | learned mean / max | wall |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for hosts in sizes {
        let r = run(SimConfig {
            hosts,
            seeds: 3,
            service_share: 0.01,
            join_over: Duration::from_secs(60),
            duration: Duration::from_secs(minutes * 60),
            churn_per_minute: churn,
            latency: Duration::from_millis(20),
            sample_every: Duration::from_secs(5),
            seed: 7,
            max_connections: 1024,
        });
        let last = r.samples.last().cloned();
        println!(
            "| {hosts} | {} | {} | {} | {:.0} | {} | {} | {} | {:.1} s |",
            r.providers,
            r.full_reach_after
                .map_or("never".to_string(), |d| format!("{} s", d.as_secs())),
            last.as_ref()
                .map_or("-".into(), |s| format!("{:.1}%", s.reach * 100.0)),
            r.messages_per_host_minute,
            last.as_ref()
                .map_or("-".into(), |s| format!("{:.1} / {}", s.conns.0, s.conns.1)),
            last.as_ref().map_or(0, |s| s.seed_conns),
            last.as_ref().map_or("-".into(), |s| format!(
                "{:.1} / {}",
                s.learned.0, s.learned.1
            )),
            r.wall.as_secs_f64(),
        );
    }
}
