//! Chaos between three real hosts: every datagram crosses a lossy relay (5% loss, 20 ms
//! delay, jitter that reorders), and one link is cut for 10 s. Every message must arrive
//! exactly once and in order within its session, or its sender must have seen an error or
//! `on-disconnect`; the cut is noticed within the idle timeout, the hosts reconnect after
//! it, and no request waits past its deadline. `make chaos` runs a longer, harsher version.

use std::time::Duration;
use wasmwire_tests::chaos::{ChaosConfig, Cut, Faults, run, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_through_loss_delay_reordering_and_a_cut() {
    let config = ChaosConfig {
        hosts: 3,
        faults: Faults {
            loss: 0.05,
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
        },
        cuts: vec![Cut {
            a: 0,
            b: 1,
            at: Duration::from_secs(3),
            length: Duration::from_secs(10),
        }],
        traffic: Duration::from_secs(13),
        settle: Duration::from_secs(3),
        send_every: Duration::from_millis(20),
        ask_every: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        peer_timeout: Duration::from_millis(1500),
        seed: 9,
    };
    let r = run(config.clone()).await;
    let shown = table(&config, &r);
    println!("{shown}");
    assert!(r.violations.is_empty(), "{shown}");

    let cut = &r.cuts[0];
    let detected = cut.detected.expect("senders over the cut link saw it");
    assert!(
        detected <= config.peer_timeout + Duration::from_secs(1),
        "the cut was noticed after {detected:?}\n{shown}"
    );
    let reconnected = cut
        .reconnected
        .expect("the hosts reconnected after the cut");
    assert!(reconnected <= Duration::from_secs(12), "{shown}");
    for p in &r.pairs {
        let over_cut = (p.from, p.to) == (0, 1) || (p.from, p.to) == (1, 0);
        assert!(
            p.delivered > 50,
            "{}→{}: too little traffic\n{shown}",
            p.from,
            p.to
        );
        if over_cut {
            // The session over the cut link ended at both ends, and a new one carried on.
            assert!(p.sessions >= 2, "{}→{}\n{shown}", p.from, p.to);
            assert!(p.sender_disconnects >= 1, "{}→{}\n{shown}", p.from, p.to);
            assert!(p.receiver_disconnects >= 1, "{}→{}\n{shown}", p.from, p.to);
        } else {
            // Loss and reordering alone cost (almost) nothing. On a loaded 2-core machine
            // running the whole suite, an uncut connection can still miss its 1.5 s idle
            // timer once (seen in 1 of ~20 runs: 3 messages lost, senders told); what must
            // hold is that nothing is lost silently (the violations above) and little is
            // lost at all.
            assert!(p.sessions <= 2, "{}→{}\n{shown}", p.from, p.to);
            assert!(
                p.refused + p.lost_with_notice <= p.sent / 20,
                "{}→{}\n{shown}",
                p.from,
                p.to
            );
        }
    }
    assert!(r.requests_ok > 50, "{shown}");
    assert!(
        r.longest_request <= config.request_timeout + Duration::from_secs(1),
        "{shown}"
    );
    assert!(
        r.datagrams.1 > 0 && r.datagrams.2 > 0,
        "the relays dropped nothing: {shown}"
    );
}
