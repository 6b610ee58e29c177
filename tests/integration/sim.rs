//! The broker network simulation at a small size (the table in `docs/scaling.md` comes
//! from `make sim`): 60 virtual hosts joining from 3 seeds over a minute, 2% replaced per
//! minute, a service on 5% of them. Every host must be able to find it within a few
//! minutes, and the tables stay within their bounds.

use std::time::Duration;
use wasmwire_tests::sim::{SimConfig, run};

#[test]
fn sixty_virtual_hosts_all_find_a_rare_service() {
    let r = run(SimConfig {
        hosts: 60,
        seeds: 3,
        service_share: 0.05,
        join_over: Duration::from_secs(60),
        duration: Duration::from_secs(150),
        churn_per_minute: 0.02,
        latency: Duration::from_millis(20),
        sample_every: Duration::from_secs(5),
        seed: 7,
        max_connections: 1024,
    });
    let last = r.samples.last().expect("samples");
    eprintln!(
        "60 hosts: {} run the service; full reach after {:?}; at the end {:.0}% reach, {:.0} msgs/host/min, connections {:.1}/{} (seeds {}), learned {:.1}/{} ({:?} wall)",
        r.providers,
        r.full_reach_after,
        last.reach * 100.0,
        r.messages_per_host_minute,
        last.conns.0,
        last.conns.1,
        last.seed_conns,
        last.learned.0,
        last.learned.1,
        r.wall
    );
    assert!(r.providers >= 1);
    assert!(
        r.full_reach_after
            .is_some_and(|d| d < Duration::from_secs(120)),
        "{:?}",
        r.full_reach_after
    );
    assert!(last.reach >= 0.95, "{:.2}", last.reach);
    assert!(
        last.seed_conns >= 55,
        "sixty hosts all dial each other (64 learned peers at most), seeds too: {}",
        last.seed_conns
    );
    assert!(
        last.learned.1 <= 256,
        "learned table bounded: {}",
        last.learned.1
    );
    assert!(last.alive >= 54);
}

/// The same network with hosts that hold at most 20 connections: the seeds fill up, turn
/// newcomers away with `full` and a sample of their peers, and every host still finds the
/// service through the hosts it learned that way.
#[test]
fn hosts_turned_away_by_full_seeds_join_through_the_sample() {
    let r = run(SimConfig {
        hosts: 60,
        seeds: 3,
        service_share: 0.05,
        join_over: Duration::from_secs(60),
        duration: Duration::from_secs(150),
        churn_per_minute: 0.02,
        latency: Duration::from_millis(20),
        sample_every: Duration::from_secs(5),
        seed: 7,
        max_connections: 20,
    });
    let last = r.samples.last().expect("samples");
    eprintln!(
        "60 hosts, cap 20: full reach after {:?}; at the end {:.0}% reach, {:.0} msgs/host/min, connections {:.1}/{} (seeds {})",
        r.full_reach_after,
        last.reach * 100.0,
        r.messages_per_host_minute,
        last.conns.0,
        last.conns.1,
        last.seed_conns,
    );
    assert!(last.seed_conns <= 20, "the cap holds: {}", last.seed_conns);
    assert!(last.conns.1 <= 20, "the cap holds: {}", last.conns.1);
    assert!(last.reach >= 0.95, "{:.2}", last.reach);
    assert!(last.alive >= 54);
}
