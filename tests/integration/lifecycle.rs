//! Waking, sleeping, options and timers.

use std::time::Duration;
use tokio::time::{Instant, sleep};
use wasmwire::runtime::instance::{LifecycleEvent, Status};
use wasmwire_tests::{json, start, wait_for, wait_until};

fn lines(reply: &str) -> Vec<String> {
    serde_json::from_str(reply).expect("record is a list of strings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_calls_arrive_in_order_through_sleep() {
    let node = start(
        r#"
[[service]]
name = "subject"
component = "{service:spec}"
channel = 1
options = { report_to = "recorder", colour = "red" }
uses = ["recorder"]
idle_timeout = "150ms"

[[service]]
name = "recorder"
component = "{service:spec}"
channel = 2
autostart = true
"#,
    )
    .await;
    let mut events = node.subscribe();
    let mut session = node
        .open_session("subject", "tester")
        .await
        .expect("session opens");
    session
        .send("note", b"hello".to_vec())
        .expect("declared kind is accepted");
    let record = lines(&node.request("subject", "record", "null").await.unwrap());
    let id = session.end;
    assert_eq!(
        record,
        vec![
            r#"wakeup {"colour":"red","report_to":"recorder"}"#.to_string(),
            format!("connect {id} tester"),
            format!("message {id} note hello"),
        ]
    );
    session
        .events
        .try_recv()
        .expect_err("spec sends nothing back");
    let closing = session.end;
    session.close();
    wait_for(&mut events, Duration::from_secs(5), |e| {
        *e == LifecycleEvent::Slept("subject".into())
    })
    .await;
    assert_eq!(node.instance("subject").unwrap().status(), Status::Asleep);

    // The subject handed its whole record to the recorder from inside sleep().
    let reported = lines(&node.request("recorder", "record", "null").await.unwrap());
    assert_eq!(
        reported,
        vec![
            "wakeup {}".to_string(),
            "event append".to_string(),
            r#"> wakeup {"colour":"red","report_to":"recorder"}"#.to_string(),
            format!("> connect {id} tester"),
            format!("> message {id} note hello"),
            format!("> disconnect {closing}"),
            "> sleep".to_string(),
        ]
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_on_demand_and_sleeps_after_idle_timeout() {
    let node = start(
        r#"
[[service]]
name = "counter"
component = "{service:counter}"
channel = 1
options = { start = 5 }
idle_timeout = "500ms"
"#,
    )
    .await;
    let mut events = node.subscribe();
    let counter = node.instance("counter").unwrap().clone();
    sleep(Duration::from_millis(50)).await;
    assert_eq!(
        counter.status(),
        Status::Asleep,
        "not woken before it is needed"
    );

    assert_eq!(
        json(&node.request("counter", "incr", "{}").await.unwrap()),
        6
    );
    assert_eq!(counter.status(), Status::Awake);
    wait_for(&mut events, Duration::from_secs(1), |e| {
        *e == LifecycleEvent::Woke("counter".into())
    })
    .await;

    // Keep it busy for longer than idle_timeout: it must stay awake.
    for _ in 0..12 {
        sleep(Duration::from_millis(60)).await;
        node.request("counter", "incr", "{}").await.unwrap();
    }
    assert_eq!(counter.status(), Status::Awake);
    assert_eq!(
        json(&node.request("counter", "get", "null").await.unwrap()),
        18
    );

    let idle_from = Instant::now();
    wait_for(&mut events, Duration::from_secs(5), |e| {
        *e == LifecycleEvent::Slept("counter".into())
    })
    .await;
    let slept_after = idle_from.elapsed();
    assert!(
        slept_after >= Duration::from_millis(150),
        "slept after only {slept_after:?}"
    );
    assert_eq!(counter.status(), Status::Asleep);

    // A new awake period is a fresh instance, but the count lives in its durable bucket:
    // it survived the sleep.
    assert_eq!(
        json(&node.request("counter", "get", "null").await.unwrap()),
        18
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_component_keep_their_own_options_and_state() {
    let node = start(
        r#"
[[service]]
name = "small"
component = "{service:counter}"
channel = 1
options = { start = 10 }

[[service]]
name = "large"
component = "{service:counter}"
channel = 2
options = { start = 1000 }
"#,
    )
    .await;
    assert_eq!(
        json(&node.request("small", "incr", "{}").await.unwrap()),
        11
    );
    assert_eq!(
        json(&node.request("large", "incr", r#"{"by": 5}"#).await.unwrap()),
        1005
    );
    assert_eq!(
        json(&node.request("small", "incr", "{}").await.unwrap()),
        12
    );
    assert_eq!(
        json(&node.request("large", "get", "null").await.unwrap()),
        1005
    );
    assert_eq!(node.cache_outcomes().len(), 1, "one component, loaded once");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_only_while_awake_and_never_pile_up() {
    let node = start(
        r#"
[[service]]
name = "clock"
component = "{service:spec}"
channel = 1
uses = ["slow"]
idle_timeout = "400ms"
request_timeout = "5s"

[[service]]
name = "slow"
component = "{guest:misbehave}"
channel = 2
call_timeout = "300ms"
"#,
    )
    .await;
    let mut events = node.subscribe();
    let timer = json(
        &node
            .request("clock", "timer", r#"{"every_ms": 10}"#)
            .await
            .unwrap(),
    );
    assert_eq!(timer, 1);
    // Ticks keep coming, and never faster than one per period: wait for five (a loaded
    // machine may take longer than 50 ms), then bound them by the time that passed.
    let set = Instant::now();
    let ticks = wait_until(Duration::from_secs(10), "five ticks", || async {
        let record = lines(&node.request("clock", "record", "null").await.unwrap());
        let ticks = record.iter().filter(|l| *l == "timer 1").count();
        (ticks >= 5).then_some(ticks)
    })
    .await;
    let most = set.elapsed().as_millis() as usize / 10 + 1;
    assert!(
        ticks <= most,
        "{ticks} ticks of a 10 ms timer within {:?}",
        set.elapsed()
    );

    // Keep the instance busy for ~300ms (it waits on a service that spins until its CPU
    // deadline): thirty ticks fall due meanwhile; one is delivered after (a few more if the
    // machine is slow to fetch the record), never the thirty.
    let busy = node
        .request(
            "clock",
            "request",
            r#"{"service": "slow", "event": "spin", "params": null}"#,
        )
        .await;
    assert!(busy.is_err(), "the spinning callee is stopped: {busy:?}");
    let record = lines(&node.request("clock", "record", "null").await.unwrap());
    let after = record
        .iter()
        .position(|l| l == "event request")
        .expect("request recorded");
    let late = record[after..].iter().filter(|l| *l == "timer 1").count();
    assert!(
        late <= 2,
        "ticks piled up while busy: {late} delivered late: {:?}",
        &record[after..]
    );

    // Timers do not keep an instance awake, and do not wake a sleeping one.
    wait_for(&mut events, Duration::from_secs(5), |e| {
        *e == LifecycleEvent::Slept("clock".into())
    })
    .await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(node.instance("clock").unwrap().status(), Status::Asleep);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_puts_awake_instances_to_sleep() {
    let node = start(
        r#"
[[service]]
name = "ticker"
component = "{service:ticker}"
channel = 1
options = { every_ms = 20 }
autostart = true
"#,
    )
    .await;
    let mut events = node.subscribe();
    let mut session = node.open_session("ticker", "tester").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), session.events.recv())
        .await
        .expect("a tick arrives");
    match first {
        Some(wasmwire::runtime::session::ClientEvent::Message { kind, payload }) => {
            assert_eq!(kind, "tick");
            assert!(
                json(std::str::from_utf8(&payload).unwrap())["n"]
                    .as_u64()
                    .unwrap()
                    >= 1
            );
        }
        other => panic!("expected a tick, got {other:?}"),
    }
    let directory = node.directory().clone();
    node.shutdown().await;
    let mut slept = false;
    while let Ok(e) = events.try_recv() {
        slept |= e == LifecycleEvent::Slept("ticker".into());
    }
    assert!(slept, "sleep() ran at shutdown");
    assert_eq!(
        directory.by_name("ticker").unwrap().status(),
        Status::Asleep
    );
}
