//! The broker network simulation at a small size (the table in `docs/scaling.md` comes
//! from `make sim`): virtual hosts joining from 3 seeds over a minute, 2% replaced per
//! minute, 1% of control messages lost. The simulation runs in virtual time and is
//! deterministic for its seed, so these hold on a loaded machine as on an idle one.

use std::time::Duration;
use wasmwire_tests::sim::{SimConfig, run};

/// 150 hosts; one service on 2% of them, another on 2 hosts only. Every host finds both
/// through the DHT soon after joining, and again at the end; lookups take few rounds;
/// connections and tables stay within their bounds.
#[test]
fn a_small_network_finds_rare_services_through_the_dht() {
    // Seconds of both cores' time: a test that measures a pace must not run beside it.
    let _alone = wasmwire_tests::ALONE.blocking_lock();
    let r = run(SimConfig {
        hosts: 150,
        service_share: 0.02,
        few: 2,
        duration: Duration::from_secs(150),
        sample_every: Duration::from_secs(5),
        ..SimConfig::default()
    });
    let last = r.samples.last().expect("samples");
    eprintln!(
        "150 hosts: found within 30 s {:?}, at the end {:?}, rounds {:?}, find time {:?} s, {:.0} msgs/host/min, busiest {} ({:?} wall)",
        r.found_in_30s,
        r.reach_at_end,
        r.rounds,
        r.find_time,
        r.messages_per_host_minute,
        last.busiest,
        r.wall
    );
    assert!(r.providers >= 2);
    for (i, name) in ["2%", "2 hosts"].iter().enumerate() {
        // (1% of messages are lost: a host whose first queries are lost may take longer.)
        assert!(
            r.found_in_30s[i] >= 0.98,
            "{name}: {:.3} found within 30 s of joining",
            r.found_in_30s[i]
        );
        assert_eq!(r.reach_at_end[i], 1.0, "{name}: reach at the end");
    }
    // ⌈log₂ 150 / log₂ 20⌉ + 2 = 4.
    assert!(r.rounds[2] <= 4, "rounds {:?}", r.rounds);
    assert!(last.busiest <= 1024);
    assert!(
        last.learned.1 <= 256,
        "learned table bounded: {}",
        last.learned.1
    );
    assert!(last.alive >= 140);
}

/// Hosts that hold at most 20 connections: the seeds fill up, turn newcomers away with
/// `full` and a sample of their peers, and every host still joins the network through the
/// hosts it learned that way. (The services run on the first hosts to join, which fill up
/// too: a host that cannot connect to a provider does not count it found, so reach is not
/// what this checks.)
#[test]
fn hosts_turned_away_by_full_seeds_join_through_the_sample() {
    let _alone = wasmwire_tests::ALONE.blocking_lock();
    let r = run(SimConfig {
        hosts: 60,
        service_share: 0.05,
        few: 3,
        loss: 0.0,
        jitter: Duration::ZERO,
        duration: Duration::from_secs(150),
        sample_every: Duration::from_secs(5),
        max_connections: 20,
        ..SimConfig::default()
    });
    let last = r.samples.last().expect("samples");
    eprintln!(
        "60 hosts, cap 20: reach at end {:?}, {:.0} msgs/host/min, connections {:.1}/{} (seeds {})",
        r.reach_at_end, r.messages_per_host_minute, last.conns.0, last.conns.1, last.seed_conns,
    );
    assert!(last.busiest <= 20, "the cap holds: {}", last.busiest);
    assert_eq!(last.isolated, 0, "every host joined");
    assert!(last.conns.0 >= 10.0, "{:?}", last.conns);
    assert!(last.alive >= 54);
}

/// 200 hosts split in two halves for 40 s (the few hosts that run one service all on one
/// side): when it heals, every host on the other side finds that service again within
/// 60 s (and before the last lookups, from 155 s on).
#[test]
fn after_a_partition_heals_every_host_finds_the_other_side_within_a_minute() {
    let _alone = wasmwire_tests::ALONE.blocking_lock();
    let r = run(SimConfig {
        hosts: 200,
        few: 3,
        duration: Duration::from_secs(300),
        sample_every: Duration::from_secs(10),
        partition: Some((Duration::from_secs(70), Duration::from_secs(40))),
        ..SimConfig::default()
    });
    eprintln!(
        "200 hosts, split 70-110 s: healed {:?}, found within 30 s {:?}, at the end {:?} ({:?} wall)",
        r.healed, r.found_in_30s, r.reach_at_end, r.wall
    );
    let (share, slowest) = r.healed.expect("the partition healed 60 s before the end");
    assert_eq!(
        share, 1.0,
        "found the other side within 60 s (slowest {slowest} s)"
    );
    assert_eq!(r.reach_at_end, [1.0, 1.0]);
}
