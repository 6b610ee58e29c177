//! Keyed services: `room/lobby`, `room/42`, ... made on first demand from a client, another
//! service, another host; each with its own state; asleep and gone when idle; bounded by
//! `max_instances`; bad keys refused; `uses = ["room"]` covering every key; a component
//! built against the WIT before `self-info` still running.

use std::time::Duration;
use wasmwire::runtime::instance::{CallError, Status};
use wasmwire_tests::{addr_of, json, start, start_peer, wait_connected, wait_until};

const ROOMS: &str = r#"
[[service]]
name = "room"
component = "{service:spec}"
channel = 1
keyed = true
max_instances = 4
idle_timeout = "400ms"

[[service]]
name = "bot"
component = "{service:spec}"
channel = 2
uses = ["room"]

[[service]]
name = "stranger"
component = "{service:spec}"
channel = 3

[[service]]
name = "legacy"
component = "{guest:legacy}"
channel = 4
"#;

fn record(reply: &str) -> Vec<String> {
    serde_json::from_str(reply).expect("record is a list of strings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_on_demand_keep_their_own_state_and_leave_when_idle() {
    let node = start(ROOMS).await;
    assert!(node.live("room/a").is_none(), "nothing made before demand");

    // From a client: each key is its own instance, with its own state and identity.
    node.request("room/a", "append", r#"["only in a"]"#)
        .await
        .unwrap();
    let a = record(&node.request("room/a", "record", "null").await.unwrap());
    assert_eq!(a, ["wakeup {}", "event append", "> only in a"]);
    let b = record(&node.request("room/b", "record", "null").await.unwrap());
    assert_eq!(b, ["wakeup {}"], "room/b has its own state");
    let me = json(&node.request("room/a", "self", "null").await.unwrap());
    assert_eq!(
        me,
        serde_json::json!({"name": "room/a", "service": "room", "key": "a", "host": null})
    );
    assert_eq!(
        json(&node.request("room/b", "name", "null").await.unwrap()),
        "room/b"
    );
    let plain = json(&node.request("bot", "self", "null").await.unwrap());
    assert_eq!(plain["key"], serde_json::Value::Null);
    assert_eq!(plain["service"], "bot");

    // From another service: a request and a session, through `uses = ["room"]`.
    let ask = |service: &str| {
        serde_json::json!({"service": service, "event": "self", "params": null}).to_string()
    };
    let via_bot = json(
        &node
            .request("bot", "request", &ask("room/c"))
            .await
            .unwrap(),
    );
    assert_eq!(via_bot["name"], "room/c", "{via_bot}");
    let session = node
        .request("bot", "connect", r#"{"service": "room/d"}"#)
        .await
        .unwrap();
    assert!(json(&session).is_u64(), "{session}");
    let d = record(&node.request("room/d", "record", "null").await.unwrap());
    assert!(
        d[1].starts_with("connect ") && d[1].ends_with(" bot"),
        "{d:?}"
    );
    // Not in `uses`: refused with the fix.
    let denied = node
        .request("stranger", "request", &ask("room/a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, CallError::Failed(t) if t.contains("denied") && t.contains("uses")),
        "{denied:?}"
    );

    // The class is full (a, b, c, d live): a fifth key is refused with the reason.
    let full = node.request("room/e", "record", "null").await.unwrap_err();
    assert!(
        matches!(&full, CallError::Full(t) if t.contains("max_instances") && t.contains("\"e\"")),
        "{full:?}"
    );
    // Bad keys and a class named without a key: `invalid`, never a panic.
    for bad in [
        "room/",
        "room/a b",
        "room/ü",
        &format!("room/{}", "k".repeat(129)),
    ] {
        let e = node.request(bad, "record", "null").await.unwrap_err();
        assert!(
            matches!(&e, CallError::Invalid(t) if t.contains("key")),
            "{bad}: {e:?}"
        );
    }
    let e = node.request("room", "record", "null").await.unwrap_err();
    assert!(
        matches!(&e, CallError::Invalid(t) if t.contains("room/lobby")),
        "{e:?}"
    );
    let e = node.request("bot/x", "record", "null").await.unwrap_err();
    assert!(
        matches!(&e, CallError::NoSuchService(t) if t.contains("not keyed")),
        "{e:?}"
    );

    // Idle keys sleep and leave the table; the one with a session stays awake.
    let a = node.live("room/a").expect("room/a is live");
    wait_until(Duration::from_secs(10), "idle keys retire", || {
        let gone = ["room/a", "room/b", "room/c"]
            .iter()
            .all(|k| node.live(k).is_none());
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(a.status(), Status::Retired);
    let d = node.live("room/d").expect("room/d has a session");
    assert_eq!(d.status(), Status::Awake);
    // Made again on demand: fresh state, and room for new keys again.
    let again = record(&node.request("room/a", "record", "null").await.unwrap());
    assert_eq!(again, ["wakeup {}"], "a retired key starts afresh");
    node.request("room/e", "record", "null").await.unwrap();

    // A component built against wasmwire:service@0.1.0 (before self-info) runs unchanged.
    assert_eq!(
        json(&node.request("legacy", "name", "null").await.unwrap()),
        "legacy"
    );
    node.shutdown().await;
}

const EXPOSED_ROOMS: &str = r#"
[[service]]
name = "room"
component = "{service:spec}"
channel = 1
keyed = true
expose = true
idle_timeout = "300ms"
"#;

const ASKER: &str = r#"
[[service]]
name = "asker"
component = "{service:spec}"
channel = 1
uses = ["*/room"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_reached_from_another_host_and_listed_by_count() {
    let a = start_peer(&[], "", EXPOSED_ROOMS).await;
    let b = start_peer(&[addr_of(&a)], "", ASKER).await;
    let a_id = a.peer_id().unwrap();
    wait_connected(&b, a_id, Duration::from_secs(10)).await;

    // A request to a key on another host, by peer id and by `*`.
    let ask = |service: String| {
        serde_json::json!({"service": service, "event": "self", "params": null}).to_string()
    };
    let r = json(
        &b.request("asker", "request", &ask(format!("{a_id}/room/x")))
            .await
            .unwrap(),
    );
    assert_eq!(r["name"], "room/x", "{r}");
    assert_eq!(r["host"], a_id.to_string());
    let r = json(
        &b.request("asker", "request", &ask("*/room/y".into()))
            .await
            .unwrap(),
    );
    assert_eq!(r["key"], "y", "{r}");
    // A session to a key on another host keeps it awake.
    let connect = serde_json::json!({"service": "room/z", "peer": a_id.to_string()}).to_string();
    let s = b.request("asker", "connect", &connect).await.unwrap();
    assert!(json(&s).is_u64(), "{s}");
    let z = a.live("room/z").expect("room/z made by the remote connect");
    assert_eq!(z.status(), Status::Awake);

    // The listing names the class with counts and awake keys, not every key.
    let client = wasmwire_tests::client::client_of(&a).await;
    let entry = client
        .services()
        .await
        .into_iter()
        .find(|s| s.name == "room")
        .expect("room listed");
    assert_eq!(entry.state, wasmwire::wire::ServiceState::Keyed);
    let keyed = entry.keyed.expect("keyed counts");
    assert_eq!(keyed.max_instances, 100_000);
    assert!(
        keyed.awake >= 1 && keyed.awake_keys.contains(&"z".to_string()),
        "{keyed:?}"
    );
    client.close().await;

    // x and y go idle and leave; z has its session.
    wait_until(Duration::from_secs(10), "x and y retire", || {
        let gone = a.live("room/x").is_none() && a.live("room/y").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    assert!(a.live("room/z").is_some());
    b.shutdown().await;
    a.shutdown().await;
}
