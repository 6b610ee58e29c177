//! The Python and JavaScript greeters (`sample-services/greeter-py` and `greeter-js`, built
//! from `wit/` alone by `make services` with componentize-py and ComponentizeJS) behave as a
//! Rust service does: they declare their kinds and events, keep state across the calls of
//! an awake instance and durable state in `wasi:keyvalue` across a crash and sleep (through
//! their own toolchains' bindings), answer a message on its session, and a trap in one is
//! contained to that instance while a neighbour keeps answering.

use std::time::Duration;
use wasmwire::node::Node;
use wasmwire::runtime::instance::{CallError, LifecycleEvent};
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{json, start, wait_for};

/// A host with the greeter on channel 1 and the Rust `echo` beside it as the neighbour.
/// The limits measured with `wasmwire run`: CPython starts at 12.4 MiB of linear memory,
/// the JS engine at 9.1 MiB and grows by about 1 KiB per call; 32 MiB leaves room for both.
fn host(greeter: &str) -> String {
    format!(
        r#"
[[service]]
name = "{greeter}"
component = "{{service:{greeter}}}"
channel = 1
memory = "32MiB"
options = {{ greeting = "Hi" }}
restart_backoff = "10ms"

[[service]]
name = "echo"
component = "{{service:echo}}"
channel = 2
"#
    )
}

async fn greet(node: &Node, greeter: &str, who: &str) -> serde_json::Value {
    let params = serde_json::json!({ "name": who }).to_string();
    match node.request(greeter, "greet", &params).await {
        Ok(reply) => json(&reply),
        Err(e) => panic!("{greeter} greet {who}: {e:?}"),
    }
}

async fn next(events: &mut tokio::sync::mpsc::Receiver<ClientEvent>) -> Option<ClientEvent> {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event within 5 s")
}

async fn greeter_behaves_like_a_rust_service(greeter: &str) {
    let node = start(&host(greeter)).await;
    let mut lifecycle = node.subscribe();

    // describe(), as the host read it at load.
    let class = &node.instance(greeter).expect("in the directory").class;
    let messages: Vec<&str> = class.messages.iter().map(String::as_str).collect();
    let events: Vec<&str> = class.events.iter().map(String::as_str).collect();
    assert_eq!(messages, ["hello"], "{greeter} messages");
    assert_eq!(events, ["greet", "stats", "crash"], "{greeter} events");
    assert!(
        matches!(
            node.request(greeter, "goodbye", "null").await,
            Err(CallError::Invalid(_))
        ),
        "an undeclared event is refused before the guest"
    );

    // State kept across calls of one awake instance; the option reached wakeup().
    assert_eq!(
        greet(&node, greeter, "ann").await,
        serde_json::json!({"text": "Hi, ann!", "count": 1, "total": 1})
    );
    assert_eq!(
        greet(&node, greeter, "bea").await,
        serde_json::json!({"text": "Hi, bea!", "count": 2, "total": 2})
    );
    assert_eq!(
        json(&node.request(greeter, "stats", "null").await.unwrap()),
        serde_json::json!({"count": 2})
    );

    // A message is answered on its own session.
    let mut session = node.open_session(greeter, "tester").await.unwrap();
    session.send("hello", b"cid".to_vec()).unwrap();
    assert_eq!(
        next(&mut session.events).await,
        Some(ClientEvent::Message {
            kind: "hello".into(),
            payload: b"Hi, cid!".to_vec()
        })
    );
    assert!(
        matches!(session.send("goodbye", vec![]), Err(CallError::Invalid(_))),
        "an undeclared kind is refused before the guest"
    );

    // `crash` traps (it does not return an error): the caller is told, the session closed,
    // the log names the export, and the neighbour never notices.
    match node.request(greeter, "crash", "null").await {
        Err(CallError::Unavailable(m)) => assert!(
            m.contains(&format!("{greeter} crashed")) && m.contains("unreachable"),
            "{m}"
        ),
        other => panic!("{greeter}: crash must trap, got {other:?}"),
    }
    match wait_for(&mut lifecycle, Duration::from_secs(2), |e| {
        matches!(e, LifecycleEvent::Crashed { .. })
    })
    .await
    {
        LifecycleEvent::Crashed {
            instance,
            export,
            cause,
        } => {
            assert_eq!((&*instance, export), (greeter, "on-event"));
            assert!(cause.contains("trap"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut session.events).await, Some(ClientEvent::Closed));
    assert_eq!(
        node.request("echo", "echo", r#"{"after":"crash"}"#)
            .await
            .unwrap(),
        r#"{"after":"crash"}"#
    );

    // Restarted on the next demand, from a fresh instance: the count starts over; the
    // total, kept with wasi:keyvalue, does not.
    assert_eq!(
        greet(&node, greeter, "dee").await,
        serde_json::json!({"text": "Hi, dee!", "count": 1, "total": 3})
    );

    // sleep() and a new awake period: a fresh instance again, and the total goes on.
    assert_eq!(node.sleep(greeter).await, Ok(true));
    assert_eq!(
        greet(&node, greeter, "eve").await,
        serde_json::json!({"text": "Hi, eve!", "count": 1, "total": 4})
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_greeter_behaves_like_a_rust_service() {
    greeter_behaves_like_a_rust_service("greeter-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_greeter_behaves_like_a_rust_service() {
    greeter_behaves_like_a_rust_service("greeter-js").await;
}
