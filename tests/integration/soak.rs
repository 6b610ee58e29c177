//! The soak of `make soak` for two minutes (`wasmwire_tests::soak`): three host processes
//! under mixed load, one SIGKILLed and restarted, every message accounted for, nothing
//! growing after warm-up, nothing stalled.

use wasmwire_tests::soak::{SoakConfig, run, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_under_mixed_load_and_a_kill_lose_nothing_unannounced_and_level_off() {
    let config = SoakConfig::minutes(2.0);
    let report = run(config.clone()).await;
    let table = table(&config, &report);
    eprintln!("{table}");
    assert!(report.failures.is_empty(), "{table}");
    assert_eq!(report.restarts, 1, "{table}");
    assert!(report.delivered > 1000, "{table}");
    assert!(report.requests.0 > 100 && report.keyed.0 > 100, "{table}");
    assert!(report.attacks > 0, "{table}");
}
