//! A misbehaving guest is contained to its own instance: every other instance keeps
//! answering during and after, and the bad one restarts on the next demand until its
//! restart limit.

use std::time::Duration;
use tokio::time::Instant;
use wasmwire::node::Node;
use wasmwire::runtime::instance::{CallError, LifecycleEvent, Status};
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{json, start, wait_for};

const HOST: &str = r#"
[[service]]
name = "bad"
component = "{guest:misbehave}"
channel = 1
call_timeout = "150ms"
memory = "16MiB"
restart_backoff = "10ms"

[[service]]
name = "wakeless"
component = "{guest:misbehave}"
channel = 2
options = { trap_wakeup = true }
restart_backoff = "10ms"

[[service]]
name = "fragile"
component = "{guest:misbehave}"
channel = 3
max_restarts = 2
restart_backoff = "10ms"

[[service]]
name = "witness"
component = "{service:counter}"
channel = 4
"#;

/// Runs `bad` while the witness is asked to count, and returns the bad call's result and
/// how many witness requests succeeded while it ran.
async fn while_witness_counts<T>(
    node: &Node,
    bad: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let witness = async {
        let mut ok = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            node.request("witness", "incr", "{}")
                .await
                .expect("the witness keeps answering");
            ok += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ok
    };
    tokio::join!(bad, witness)
}

/// After an attack: the witness still counts, `bad` restarts on the next demand, and the
/// host shuts down cleanly.
async fn the_neighbour_answers_and_bad_restarts(node: Node) {
    witness_still_answers(&node).await;
    assert_eq!(
        node.request("bad", "ok", "null").await.map(|r| json(&r)),
        Ok(serde_json::json!("fine"))
    );
    node.shutdown().await;
}

async fn witness_still_answers(node: &Node) {
    let before = json(&node.request("witness", "get", "null").await.unwrap())
        .as_i64()
        .unwrap();
    let after = json(&node.request("witness", "incr", "{}").await.unwrap())
        .as_i64()
        .unwrap();
    assert_eq!(after, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_by_the_cpu_deadline() {
    let node = start(HOST).await;
    let mut events = node.subscribe();
    let started = Instant::now();
    let (spin, witnessed) = while_witness_counts(&node, node.request("bad", "spin", "null")).await;
    match spin {
        Err(CallError::Unavailable(m)) => assert!(
            m.contains("bad crashed") && m.contains("cpu deadline exceeded"),
            "{m}"
        ),
        other => panic!("expected the spin to be stopped, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        started.elapsed()
    );
    assert!(
        witnessed >= 3,
        "witness answered only {witnessed} times meanwhile"
    );
    let crash = wait_for(&mut events, Duration::from_secs(1), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    assert!(
        matches!(crash, LifecycleEvent::Crashed { ref instance, export: "on-event", .. } if &**instance == "bad"),
        "{crash:?}"
    );
    the_neighbour_answers_and_bad_restarts(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_at_the_instance_limit() {
    let node = start(HOST).await;
    let (bomb, witnessed) = while_witness_counts(&node, node.request("bad", "bomb", "null")).await;
    match bomb {
        Err(CallError::Unavailable(m)) => {
            assert!(
                m.contains("memory limit exceeded") && m.contains("the limit is 16777216"),
                "{m}"
            )
        }
        other => panic!("expected the bomb to be stopped, got {other:?}"),
    }
    assert!(witnessed >= 1);
    the_neighbour_answers_and_bad_restarts(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_wakeup_keeps_the_instance_asleep_and_is_retried_on_demand() {
    let node = start(HOST).await;
    let mut events = node.subscribe();
    for _ in 0..2 {
        let (r, _) = while_witness_counts(&node, node.request("wakeless", "ok", "null")).await;
        match r {
            Err(CallError::Unavailable(m)) => assert!(
                m.contains("wakeless failed to wake") && m.contains("trap"),
                "{m}"
            ),
            other => panic!("expected a failed wakeup, got {other:?}"),
        }
        let crash = wait_for(&mut events, Duration::from_secs(1), |e| {
            matches!(e, LifecycleEvent::Crashed { .. })
        })
        .await;
        assert!(
            matches!(
                crash,
                LifecycleEvent::Crashed {
                    export: "wakeup",
                    ..
                }
            ),
            "{crash:?}"
        );
        assert_eq!(node.instance("wakeless").unwrap().status(), Status::Asleep);
    }
    witness_still_answers(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_on_message_closes_its_sessions_and_restarts_on_demand() {
    let node = start(HOST).await;
    let mut events = node.subscribe();
    let mut session = node.open_session("bad", "tester").await.unwrap();
    session.send("fine", vec![]).unwrap();
    session.send("boom", vec![]).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), session.events.recv())
        .await
        .expect("told of the crash");
    assert_eq!(closed, Some(ClientEvent::Closed));
    let crash = wait_for(&mut events, Duration::from_secs(1), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await;
    match crash {
        LifecycleEvent::Crashed {
            instance,
            export,
            cause,
        } => {
            // (`misbehave` is built with the SDK: it takes its messages in batches.)
            assert_eq!((&*instance, export), ("bad", "on-message-block"));
            assert!(cause.contains("trap"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    the_neighbour_answers_and_bad_restarts(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_hits_the_restart_limit_and_stays_down() {
    let node = start(HOST).await;
    let mut events = node.subscribe();
    // max_restarts = 2: the third crash within the window gives up.
    for i in 0..3 {
        let (r, _) = while_witness_counts(&node, node.request("fragile", "panic", "null")).await;
        assert!(
            matches!(&r, Err(CallError::Unavailable(m)) if m.contains("crashed")),
            "crash {i}: {r:?}"
        );
    }
    wait_for(&mut events, Duration::from_secs(2), |e| {
        *e == LifecycleEvent::Down("fragile".into())
    })
    .await;
    assert_eq!(node.instance("fragile").unwrap().status(), Status::Down);
    match node.request("fragile", "ok", "null").await {
        Err(CallError::Unavailable(m)) => assert!(m.contains("fragile is down"), "{m}"),
        other => panic!("expected down, got {other:?}"),
    }
    witness_still_answers(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_cut_to_the_rate_limit_and_the_neighbour_keeps_its_pace() {
    let node = wasmwire_tests::start(
        r#"
[host]
max_awake = 8
threads = 2
cache_dir = "{cache}"

[[service]]
name = "flooder"
component = "{guest:misbehave}"
channel = 1
call_timeout = "30s"
request_timeout = "120s"

[[service]]
name = "neighbour"
component = "{service:counter}"
channel = 2
"#
        .replace(
            "{cache}",
            &wasmwire_tests::root()
                .join("target/test-cache")
                .display()
                .to_string(),
        )
        .as_str(),
    )
    .await;
    async fn rate(node: &wasmwire::node::Node, n: u32) -> f64 {
        let started = std::time::Instant::now();
        for _ in 0..n {
            node.request("neighbour", "incr", "null").await.unwrap();
        }
        f64::from(n) / started.elapsed().as_secs_f64()
    }
    rate(&node, 200).await; // warm
    let quiet = rate(&node, 2000).await;
    let flooder = node.instance("flooder").unwrap().clone();
    let flooding = {
        let node_requests = async {
            let mut floods = 0;
            for event in ["logflood", "printflood"] {
                let r = node.request("flooder", event, "null").await;
                assert_eq!(r.as_deref(), Ok("\"flooded\""), "{event}");
                floods += 1;
            }
            floods
        };
        let measured = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            rate(&node, 2000).await
        };
        tokio::join!(node_requests, measured)
    };
    let (floods, loud) = flooding;
    assert_eq!(floods, 2);
    let dropped = flooder.dropped_log_lines();
    // 200 000 lines offered within seconds: all but a few hundred a second are dropped.
    let offered = 200_000u64;
    assert!(dropped > offered * 8 / 10, "{dropped} lines dropped");
    let ratio = loud / quiet;
    eprintln!(
        "log flood: {dropped} of {offered} lines dropped; neighbour {loud:.0} req/s during vs {quiet:.0} req/s before: ratio {ratio:.2}"
    );
    assert!(ratio > 0.1, "neighbour slowed to {ratio:.2} of its pace");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_overflow_is_a_trap_of_that_instance_only() {
    let node = start(HOST).await;
    let (r, witnessed) = while_witness_counts(&node, node.request("bad", "recurse", "null")).await;
    match r {
        Err(CallError::Unavailable(m)) => assert!(m.contains("bad crashed"), "{m}"),
        other => panic!("expected the overflow to be stopped, got {other:?}"),
    }
    assert!(witnessed >= 1);
    the_neighbour_answers_and_bad_restarts(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_giant_describe_is_refused_at_load_with_the_reason() {
    let m = wasmwire_tests::load_manifest(
        "[[service]]\nname = \"giant\"\ncomponent = \"{guest:giant}\"\nchannel = 1\n",
    );
    let e = match Node::start(&m).await {
        Ok(_) => panic!("a 300-kind describe must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("field `service[1].component`")
            && e.contains("it declares 300 message kinds; at most 256 are allowed"),
        "{e}"
    );
}

/// The number in a reply like `Ok("9999")`.
fn count(result: &str) -> u64 {
    result
        .trim_start_matches("Ok(\"")
        .trim_end_matches("\")")
        .parse()
        .unwrap_or(0)
}

/// Requests the witness answers per second over `window`.
async fn witness_rate(node: &Node, window: Duration) -> f64 {
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < window {
        node.request("witness", "incr", "null")
            .await
            .expect("the witness keeps answering");
        n += 1;
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_refused_or_stopped_while_the_neighbour_keeps_its_pace() {
    let _alone = wasmwire_tests::ALONE.lock().await;
    let node = start(&format!(
        "{HOST}\n[[service]]\nname = \"sleeper\"\ncomponent = \"{{guest:misbehave}}\"\nchannel = 5\noptions = {{ spin_sleep = true }}\ncall_timeout = \"150ms\"\n"
    ))
    .await;
    let window = Duration::from_millis(400);
    witness_rate(&node, window).await; // warm up
    // The flooder gets a session to flood, from a client that never reads.
    let _victim = node.open_session("bad", "victim").await.unwrap();
    let mut ratios = Vec::new();
    let rss_before = wasmwire_tests::rss();
    for attack in [
        "sendflood",
        "foreign",
        "connectloop",
        "timerstorm",
        "selfrequest",
        "bigreply",
        "bigsend",
        "biglog",
        "sleep",
        // Last: it grows memory to the limit in every call until the restart limit stops it.
        "bomb",
    ] {
        // A session of the instance as it is now: an earlier attack may have crashed it
        // (a CPU-heavy one past `call_timeout` on a loaded machine), which ends its sessions.
        let _fresh = match attack {
            "bigsend" => Some(node.open_session("bad", "victim2").await.unwrap()),
            _ => None,
        };
        let run = || async {
            if attack == "sleep" {
                node.wake("sleeper").await.unwrap();
                // `sleep` never returns: the CPU deadline stops it and the instance is dropped.
                let slept = node.sleep("sleeper").await;
                return format!("{slept:?}");
            }
            let started = Instant::now();
            let mut last = String::new();
            // Repeat the attack through the window, paced so that what is measured is the
            // guest's misbehaviour, not this test's own loop competing for 2 cores.
            while started.elapsed() < window {
                last = format!("{:?}", node.request("bad", attack, "null").await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            last
        };
        // Baseline and attack alternate, up to three rounds, and the best round counts: a
        // burst of other work on this shared machine (another test compiling a component
        // on every core) can stall one 400 ms window; a starving guest stalls all three.
        let (mut result, mut ratio) = (String::new(), 0.0);
        for _ in 0..3 {
            let quiet = witness_rate(&node, window).await;
            let (r, loud) = tokio::join!(run(), witness_rate(&node, window));
            let this = loud / quiet;
            eprintln!("{attack}: {r}; neighbour {loud:.0} vs {quiet:.0} req/s: ratio {this:.2}");
            if this > ratio {
                ratio = this;
            }
            result = r;
            if ratio > 0.1 {
                break;
            }
        }
        match attack {
            "sendflood" => assert!(result.starts_with("Ok(\"["), "{result}"),
            "foreign" => assert!(count(&result) >= 9_990, "{result}"),
            // Each refused connect is cheap, but not free: refused, or stopped by the CPU
            // deadline, both are contained.
            "connectloop" => assert!(
                result == "Ok(\"10000\")" || result.contains("cpu deadline exceeded"),
                "{result}"
            ),
            // At most `max_timers` (16) are set; every 0 ms one and the rest are refused.
            "timerstorm" => assert!(count(&result) >= 10_000 - 16, "{result}"),
            // Not in its own `uses`: denied (with itself in `uses` it is a `cycle`, see
            // sessions.rs); either way refused at once, never a deadlock.
            "selfrequest" => assert!(
                result.contains("may not use bad") || result.contains("request cycle"),
                "{result}"
            ),
            // 3 MiB across the boundary: the reply is over `max_message` (the caller gets
            // an error), the payload is refused at the receiver's limit, the log line cut.
            "bigreply" => assert!(result.contains("over its max_message"), "{result}"),
            // Refused on every session it has (as too large by the client's limit, whether
            // or not the client's queue is full).
            "bigsend" => assert!(count(&result) >= 1, "{result}"),
            "biglog" => assert!(result.contains("logged"), "{result}"),
            // Each call grows memory until the limit traps it; restarts until the restart
            // limit, then the instance is stopped and calls are refused with the reason.
            "bomb" => assert!(
                result.contains("crashed") || result.contains("stopped"),
                "{result}"
            ),
            _ => assert_eq!(result, "Ok(true)"),
        }
        ratios.push((attack, ratio));
        witness_still_answers(&node).await;
    }
    assert_eq!(node.instance("sleeper").unwrap().status(), Status::Asleep);
    // Host memory stays bounded: the 3 MiB strings were copied once each and dropped, the
    // bomb's 16 MiB instance memory went back to the pool.
    let grew = wasmwire_tests::rss().saturating_sub(rss_before) >> 20;
    eprintln!("host RSS grew {grew} MiB over the attacks");
    assert!(grew < 128, "host RSS grew {grew} MiB");
    // Never starved. (The ratios are printed; on this shared 2-core machine they swing
    // between about 0.2 and 3 from run to run, so a tighter bound would test the machine.)
    for (attack, ratio) in ratios {
        assert!(ratio > 0.1, "{attack}: the neighbour slowed to {ratio:.2}");
    }
    node.shutdown().await;
}
