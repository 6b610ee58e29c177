//! Local sessions and requests between instances, declared dependencies, refused message
//! kinds and request cycles.

use std::time::Duration;
use tokio::time::Instant;
use wasmwire::runtime::instance::CallError;
use wasmwire_tests::{json, start};

const PAIR: &str = r#"
[[service]]
name = "alice"
component = "{service:spec}"
channel = 1
uses = ["bob", "alice"]

[[service]]
name = "bob"
component = "{service:spec}"
channel = 2
uses = ["alice"]

[[service]]
name = "carol"
component = "{service:spec}"
channel = 3
"#;

fn lines(reply: &str) -> Vec<String> {
    serde_json::from_str(reply).expect("record is a list of strings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_connect_carry_messages_and_close_on_both_sides() {
    let node = start(PAIR).await;
    let a_end = json(
        &node
            .request("alice", "connect", r#"{"service": "bob"}"#)
            .await
            .unwrap(),
    )
    .as_u64()
    .unwrap();
    let sent = node
        .request(
            "alice",
            "send",
            &format!(r#"{{"session": {a_end}, "kind": "note", "text": "hi bob"}}"#),
        )
        .await;
    assert_eq!(sent.map(|r| json(&r)), Ok(serde_json::json!(true)));
    let bob = lines(&node.request("bob", "record", "null").await.unwrap());
    assert_eq!(bob.len(), 3, "{bob:?}");
    assert_eq!(bob[0], "wakeup {}");
    let b_end: u64 = bob[1]
        .strip_prefix("connect ")
        .and_then(|r| r.strip_suffix(" alice"))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(a_end, b_end, "each end has its own id");
    assert_eq!(bob[2], format!("message {b_end} note hi bob"));

    node.request("alice", "close", &format!(r#"{{"session": {a_end}}}"#))
        .await
        .unwrap();
    let alice = lines(&node.request("alice", "record", "null").await.unwrap());
    assert_eq!(
        alice[1..],
        [
            "event connect".to_string(),
            format!("connect {a_end} bob"),
            "event send".to_string(),
            "event close".to_string(),
            format!("disconnect {a_end}"),
        ]
    );
    let bob = lines(&node.request("bob", "record", "null").await.unwrap());
    assert_eq!(bob.last().unwrap(), &format!("disconnect {b_end}"));

    // Sending on the closed session fails cleanly.
    let again = node
        .request(
            "alice",
            "send",
            &format!(r#"{{"session": {a_end}, "kind": "note", "text": "x"}}"#),
        )
        .await;
    assert!(
        matches!(&again, Err(CallError::Failed(m)) if m.contains("no such session")),
        "{again:?}"
    );

    // A request returns the callee's reply.
    let name = node
        .request(
            "alice",
            "request",
            r#"{"service": "bob", "event": "name", "params": null}"#,
        )
        .await;
    assert_eq!(name.map(|r| json(&r)), Ok(serde_json::json!("bob")));

    // Session ids are never reused.
    let second = json(
        &node
            .request("alice", "connect", r#"{"service": "bob"}"#)
            .await
            .unwrap(),
    )
    .as_u64()
    .unwrap();
    assert!(second > a_end.max(b_end));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_message_kinds_are_refused_before_the_guest() {
    let node = start(PAIR).await;
    let end = json(
        &node
            .request("alice", "connect", r#"{"service": "bob"}"#)
            .await
            .unwrap(),
    )
    .as_u64()
    .unwrap();
    let refused = node
        .request(
            "alice",
            "send",
            &format!(r#"{{"session": {end}, "kind": "bogus", "text": "x"}}"#),
        )
        .await;
    match refused {
        Err(CallError::Failed(m)) => assert!(
            m.contains("does not accept message kind \\\"bogus\\\"") || m.contains("bogus"),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let bob = lines(&node.request("bob", "record", "null").await.unwrap());
    assert!(
        bob.iter().all(|l| !l.starts_with("message")),
        "bob saw it: {bob:?}"
    );

    // Clients are held to the same rule.
    let session = node.open_session("bob", "tester").await.unwrap();
    match session.send("bogus", vec![1]) {
        Err(CallError::Invalid(m)) => assert!(
            m.contains("bob does not accept message kind \"bogus\"") && m.contains("note"),
            "{m}"
        ),
        other => panic!("expected invalid, got {other:?}"),
    }
    // And to the event list.
    assert!(
        matches!(node.request("bob", "nope", "null").await, Err(CallError::Invalid(m)) if m.contains("has no event"))
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_outside_uses_are_denied_with_the_reason() {
    let node = start(PAIR).await;
    let denied = node
        .request(
            "carol",
            "request",
            r#"{"service": "bob", "event": "name", "params": null}"#,
        )
        .await;
    match denied {
        Err(CallError::Failed(m)) => {
            assert!(
                m.contains("denied") && m.contains("carol may not use bob") && m.contains("uses"),
                "{m}"
            )
        }
        other => panic!("expected denied, got {other:?}"),
    }
    let connect = node
        .request("carol", "connect", r#"{"service": "alice"}"#)
        .await;
    assert!(
        matches!(&connect, Err(CallError::Failed(m)) if m.contains("denied")),
        "{connect:?}"
    );
    let unknown = node
        .request("alice", "connect", r#"{"service": "nobody"}"#)
        .await;
    assert!(
        matches!(&unknown, Err(CallError::Failed(m)) if m.contains("no such service")),
        "{unknown:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cycles_fail_fast_instead_of_deadlocking() {
    let node = start(PAIR).await;
    let started = Instant::now();
    // alice -> bob -> alice
    let cycle = node
        .request(
            "alice",
            "request",
            r#"{"service": "bob", "event": "request", "params": {"service": "alice", "event": "name", "params": null}}"#,
        )
        .await;
    assert!(
        matches!(&cycle, Err(CallError::Failed(m)) if m.contains("cycle")),
        "{cycle:?}"
    );
    // alice -> alice
    let direct = node
        .request(
            "alice",
            "request",
            r#"{"service": "alice", "event": "name", "params": null}"#,
        )
        .await;
    assert!(
        matches!(&direct, Err(CallError::Failed(m)) if m.contains("cycle")),
        "{direct:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // Both are still healthy.
    assert_eq!(
        node.request("bob", "name", "null").await.map(|r| json(&r)),
        Ok(serde_json::json!("bob"))
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_the_other_end_of_a_session_names_that_session_as_caller() {
    let node = start(PAIR).await;
    let ask_caller = r#"{"service": "bob", "event": "caller", "params": null}"#;
    // No session yet: no caller.
    let r = node.request("alice", "request", ask_caller).await;
    assert_eq!(r.map(|r| json(&r)), Ok(serde_json::json!(null)));
    let a_end = json(
        &node
            .request("alice", "connect", r#"{"service": "bob"}"#)
            .await
            .unwrap(),
    )
    .as_u64()
    .unwrap();
    let bob = lines(&node.request("bob", "record", "null").await.unwrap());
    let b_end: u64 = bob
        .iter()
        .find_map(|l| l.strip_prefix("connect ")?.strip_suffix(" alice"))
        .unwrap_or_else(|| panic!("{bob:?}"))
        .parse()
        .unwrap();
    // Now bob sees alice's request as coming from its end of their session.
    let r = node.request("alice", "request", ask_caller).await;
    assert_eq!(r.map(|r| json(&r)), Ok(serde_json::json!(b_end)));
    node.request("alice", "close", &format!(r#"{{"session": {a_end}}}"#))
        .await
        .unwrap();
    let r = node.request("alice", "request", ask_caller).await;
    assert_eq!(r.map(|r| json(&r)), Ok(serde_json::json!(null)));
    node.shutdown().await;
}
