//! Alarms (`set-alarm`, `on-alarm`): durable wake-ups. An alarm wakes a sleeping instance
//! and a retired key, fires after a host restart (a second host on the same data dir), is
//! replaced by the next `set-alarm` and removed by `cancel-alarm`; an `on-alarm` that traps
//! leaves it in place and it fires again; a trap in the call that set it drops it.

use std::path::Path;
use std::time::Duration;
use wasmwire::node::Node;
use wasmwire::runtime::instance::LifecycleEvent;
use wasmwire_tests::{ask, json, scratch_dir, start_on_data, wait_for, wait_until};

/// `durable` sleeps after 300 ms idle, and so does a key of `room` (then it retires).
const ALARMS: &str = r#"
[[service]]
name = "durable"
component = "{guest:durable}"
channel = 1
idle_timeout = "300ms"

[[service]]
name = "room"
component = "{guest:durable}"
channel = 2
keyed = true
idle_timeout = "300ms"

[[service]]
name = "steady"
component = "{guest:durable}"
channel = 3
"#;

/// Generous: an alarm is due within a few hundred ms, but a loaded machine may be slow.
const WITHIN: Duration = Duration::from_secs(30);

async fn start_on(data: &Path) -> Node {
    start_on_data(data, "", ALARMS).await
}

/// The alarm times `instance` has recorded in its bucket, read from the data file (asking
/// the instance would wake it, which is what the test watches for).
fn fired(node: &Node, instance: &str) -> Vec<u64> {
    list(node, instance, "fired")
}

/// When each `on-alarm` of `instance` was called (Unix ms, the guest's clock).
fn fired_when(node: &Node, instance: &str) -> Vec<u64> {
    list(node, instance, "fired-when")
}

fn list(node: &Node, instance: &str, key: &str) -> Vec<u64> {
    let db = node.directory().database().expect("a data file");
    db.get(&format!("i/{instance}"), key)
        .expect("read")
        .map(|v| serde_json::from_slice(&v).expect("a JSON list"))
        .unwrap_or_default()
}

fn traps(node: &Node, instance: &str) -> u64 {
    let i = node.directory().live(instance).expect("live");
    i.stats.traps.load(std::sync::atomic::Ordering::Relaxed)
}

async fn wait_fired(node: &Node, instance: &str, at: u64) -> Vec<u64> {
    wait_until(
        WITHIN,
        &format!("{instance}'s alarm for {at} to fire"),
        || {
            let f = fired(node, instance);
            async move { f.contains(&at).then_some(f) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_wakes_a_sleeping_instance_and_a_retired_key() {
    let data = scratch_dir("alarms-wake");
    let node = start_on(&data).await;
    let mut events = node.directory().subscribe();

    // A plain instance, put to sleep before its alarm is due.
    let at = ask(&node, "durable", "alarm-in", r#"{"ms":600}"#).await;
    let at = at.as_u64().expect("the alarm's time");
    assert_eq!(ask(&node, "durable", "alarm", "null").await, at);
    assert!(node.sleep("durable").await.expect("sleeps"));
    wait_for(&mut events, WITHIN, |e| {
        *e == LifecycleEvent::Woke("durable".into())
    })
    .await;
    assert_eq!(wait_fired(&node, "durable", at).await, vec![at]);
    assert!(fired_when(&node, "durable")[0] >= at, "never early");
    // Fired once: the alarm is gone, and on-alarm set no other.
    assert_eq!(ask(&node, "durable", "alarm", "null").await, json("null"));

    // A key that goes to sleep and retires (it leaves its class's table) before the alarm.
    let at = ask(&node, "room/7", "alarm-in", r#"{"ms":1500}"#).await;
    let at = at.as_u64().expect("the alarm's time");
    wait_until(WITHIN, "room/7 to retire", || {
        let gone = node.directory().live("room/7").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(
        fired(&node, "room/7").is_empty(),
        "not before it is due (it was set {at})"
    );
    assert_eq!(wait_fired(&node, "room/7", at).await, vec![at]);
    // Its own bucket only: room/8 has nothing.
    assert!(fired(&node, "room/8").is_empty());
    // And once each: after another alarm's worth of time, no second call.
    let later = ask(&node, "steady", "alarm-in", r#"{"ms":300}"#).await;
    wait_fired(&node, "steady", later.as_u64().unwrap()).await;
    assert_eq!(fired(&node, "durable"), vec![fired(&node, "durable")[0]]);
    assert_eq!(fired(&node, "room/7").len(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_fires_after_a_host_restart() {
    let data = scratch_dir("alarms-restart");
    let node = start_on(&data).await;
    // One due while the host is down, one due after it is back.
    let early = ask(&node, "room/1", "alarm-in", r#"{"ms":3000}"#).await;
    let late = ask(&node, "steady", "alarm-in", r#"{"ms":5000}"#).await;
    node.shutdown().await;
    let early = early.as_u64().unwrap();
    let late = late.as_u64().unwrap();
    // The behaviour under test is an alarm that falls due while no host runs: the wait is
    // for the wall clock to pass its time (nothing else could signal it), not for an event.
    let now = wasmwire::runtime::alarms::now_ms();
    tokio::time::sleep(Duration::from_millis(early.saturating_sub(now) + 200)).await;

    let restarted = wasmwire::runtime::alarms::now_ms();
    let node = start_on(&data).await;
    assert_eq!(wait_fired(&node, "room/1", early).await, vec![early]);
    assert!(
        fired_when(&node, "room/1")[0] >= restarted,
        "fired by the second host"
    );
    assert_eq!(wait_fired(&node, "steady", late).await, vec![late]);
    assert!(fired_when(&node, "steady")[0] >= late, "never early");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_replaces_cancel_removes_and_a_trap_undoes_either() {
    let data = scratch_dir("alarms-set");
    let node = start_on(&data).await;

    // A call that sets an alarm and traps set nothing.
    let trapped = node
        .request("steady", "alarm-and-trap", r#"{"ms":100}"#)
        .await;
    assert!(trapped.is_err(), "{trapped:?}");
    assert_eq!(ask(&node, "steady", "alarm", "null").await, json("null"));

    // A later set replaces an earlier alarm: only the last one fires, though the one it
    // replaced was due first.
    ask(&node, "steady", "alarm-in", r#"{"ms":200}"#).await;
    let first = ask(&node, "steady", "alarm-in", r#"{"ms":700}"#).await;
    let first = first.as_u64().unwrap();
    assert_eq!(wait_fired(&node, "steady", first).await, vec![first]);

    // A cancelled alarm never fires: the next one, later than it, is the only one seen.
    let cancelled = ask(&node, "steady", "alarm-in", r#"{"ms":100}"#).await;
    ask(&node, "steady", "cancel-alarm", "null").await;
    assert_eq!(ask(&node, "steady", "alarm", "null").await, json("null"));
    let next = ask(&node, "steady", "alarm-in", r#"{"ms":400}"#).await;
    let next = next.as_u64().unwrap();
    assert_eq!(wait_fired(&node, "steady", next).await, vec![first, next]);
    assert!(!fired(&node, "steady").contains(&cancelled.as_u64().unwrap()));

    // An on-alarm that sets the next alarm (after a request that committed its first
    // write): that one is kept and fires in turn, twice, then there is none.
    ask(&node, "durable", "alarm-repeat", r#"{"ms":150,"times":2}"#).await;
    let three = wait_until(WITHIN, "three alarms in a row", || {
        let f = fired(&node, "durable");
        async move { (f.len() == 3).then_some(f) }
    })
    .await;
    assert!(three.windows(2).all(|w| w[0] < w[1]), "{three:?}");
    assert_eq!(ask(&node, "durable", "alarm", "null").await, json("null"));

    // An on-alarm that traps: its writes and the alarm's removal roll back, so the alarm
    // fires again (after a second) and the retry records it once.
    let traps_before = traps(&node, "steady");
    ask(&node, "steady", "trap-alarms", "null").await;
    let at = ask(&node, "steady", "alarm-in", r#"{"ms":100}"#).await;
    let at = at.as_u64().unwrap();
    assert_eq!(wait_fired(&node, "steady", at).await, vec![first, next, at]);
    let traps = traps(&node, "steady");
    assert_eq!(traps, traps_before + 1, "the first on-alarm trapped once");
    node.shutdown().await;
}
