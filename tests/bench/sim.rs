//! `make sim`: the broker network simulation (`wasmwire_tests::sim`) at growing sizes,
//! printed as the table in `docs/scaling.md`. `SIM_HOSTS=100,1000` picks the sizes,
//! `SIM_MINUTES` the simulated time (default 6; `SIM_MINUTES_BIG` for sizes past 20 000,
//! default 3), `SIM_CHURN` the share of hosts replaced per minute (default 0.02),
//! `SIM_LOSS` the share of control messages lost (default 0.01), `SIM_MAX_PEERS` the
//! connections past which hosts dial no learned peers (default 64; `SIM_MAX_PEERS_BIG` for
//! sizes past 20 000, default 16, so that 100 000 hosts fit in memory). Runs of 5 minutes
//! or more split the network in two halves for a minute from a quarter of the way in
//! (`SIM_PARTITION=0` leaves it whole) and measure how soon it heals. `SIM_PROGRESS=1`
//! prints a line to stderr every 30 simulated seconds (always on past 20 000 hosts).
//! `SIM_JOIN_SECONDS` is how long the first hosts take to join (default 60: at 10 000
//! hosts, 6 makes the join as dense as 100 000 hosts joining in a minute).

use std::time::Duration;
use wasmwire_tests::env_or;
use wasmwire_tests::sim::{SimConfig, run};

fn main() {
    let sizes: Vec<usize> = std::env::var("SIM_HOSTS")
        .unwrap_or_else(|_| "100,1000,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let minutes: u64 = env_or("SIM_MINUTES", 6);
    let minutes_big: u64 = env_or("SIM_MINUTES_BIG", 3);
    let churn: f64 = env_or("SIM_CHURN", 0.02);
    let loss: f64 = env_or("SIM_LOSS", 0.01);
    let max_peers: usize = env_or("SIM_MAX_PEERS", 64);
    let max_peers_big: usize = env_or("SIM_MAX_PEERS_BIG", 16);
    let partition: u8 = env_or("SIM_PARTITION", 1);
    let progress: u8 = env_or("SIM_PROGRESS", 0);
    let join_seconds: u64 = env_or("SIM_JOIN_SECONDS", 60);
    println!(
        "| hosts | minutes | max peers | found in 30 s (1% / 10 hosts) | reach at end (1% / 10) | find time p50 / p99 / max | rounds p50 / p99 / max (bound) | lookup p50 / p99 | control msgs / host / min | connections mean / max | busiest host | busiest seed | table mean | records max | healed in 60 s / slowest | memory / host | wall |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for hosts in sizes {
        let (minutes, max_peers) = if hosts > 20_000 {
            (minutes_big, max_peers_big)
        } else {
            (minutes, max_peers)
        };
        let duration = Duration::from_secs(minutes * 60);
        let split_at = (duration / 4).max(Duration::from_secs(90));
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let r = run(SimConfig {
            hosts,
            loss,
            duration,
            churn_per_minute: churn,
            max_peers,
            join_over: Duration::from_secs(join_seconds),
            // The long runs say how far they are.
            progress: progress > 0 || hosts > 20_000,
            partition: (partition > 0 && minutes >= 5)
                .then_some((split_at, Duration::from_secs(60))),
            ..SimConfig::default()
        });
        let healed = r.healed.map_or("–".to_string(), |(share, slowest)| {
            format!("{} / {slowest:.1} s", pct(share))
        });
        let last = r.samples.last().cloned().expect("samples");
        let bound = ((hosts as f64).log2() / 20f64.log2()).ceil() as u32 + 2;
        println!(
            "| {hosts} | {minutes} | {max_peers} | {} / {} | {} / {} | {:.2} / {:.2} / {:.1} s | {} / {} / {} ({bound}) | {:.2} / {:.2} s | {:.0} | {:.1} / {} | {} | {} | {:.0} | {} | {healed} | {:.0} KiB | {:.1} s |",
            pct(r.found_in_30s[0]),
            pct(r.found_in_30s[1]),
            pct(r.reach_at_end[0]),
            pct(r.reach_at_end[1]),
            r.find_time[0],
            r.find_time[1],
            r.find_time[2],
            r.rounds[0],
            r.rounds[1],
            r.rounds[2],
            r.lookup_time[0],
            r.lookup_time[1],
            r.messages_per_host_minute,
            last.conns.0,
            last.conns.1,
            last.busiest,
            last.seed_conns,
            last.table,
            last.records,
            r.memory_per_host_kib,
            r.wall.as_secs_f64(),
        );
        // Why the last lookups that failed did (on stderr: the table stays a table).
        for (name, (missed, unheard)) in ["1%", "10 hosts"].iter().zip(r.missed_at_end) {
            if missed > 0 {
                eprintln!(
                    "sim: {hosts} hosts, service on {name}: {missed} of the last lookups failed, {unheard} of them hearing of no provider (the rest could not connect to one)"
                );
            }
        }
    }
}
