//! The sample services behave as their docs say, driven through client sessions.

use std::time::Duration;
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{json, start, wait_until};

async fn next(events: &mut tokio::sync::mpsc::Receiver<ClientEvent>) -> (String, Vec<u8>) {
    match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        Ok(Some(ClientEvent::Message { kind, payload })) => (kind, payload),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sends_messages_back_and_answers_its_event() {
    let node =
        start("[[service]]\nname = \"echo\"\ncomponent = \"{service:echo}\"\nchannel = 1\n").await;
    let mut s = node.open_session("echo", "tester").await.unwrap();
    s.send("echo", b"ping".to_vec()).unwrap();
    assert_eq!(
        next(&mut s.events).await,
        ("echo".to_string(), b"ping".to_vec())
    );
    assert_eq!(
        node.request("echo", "echo", r#"{"x":[1,2]}"#)
            .await
            .unwrap(),
        r#"{"x":[1,2]}"#
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_broadcasts_to_everyone_else_in_the_room() {
    let node = start(
        "[[service]]\nname = \"lobby\"\ncomponent = \"{service:chat}\"\nchannel = 1\noptions = { room = \"lobby\" }\n",
    )
    .await;
    let mut ann = node.open_session("lobby", "ann").await.unwrap();
    let mut ben = node.open_session("lobby", "ben").await.unwrap();
    let mut cid = node.open_session("lobby", "cid").await.unwrap();
    let members = json(&node.request("lobby", "members", "null").await.unwrap());
    assert_eq!(members, serde_json::json!(["ann", "ben", "cid"]));
    ann.send("say", b"hello all".to_vec()).unwrap();
    for s in [&mut ben, &mut cid] {
        let (kind, payload) = next(&mut s.events).await;
        assert_eq!(kind, "said");
        assert_eq!(
            json(std::str::from_utf8(&payload).unwrap()),
            serde_json::json!({"room": "lobby", "from": "ann", "text": "hello all"})
        );
    }
    assert!(
        ann.events.try_recv().is_err(),
        "the sender does not hear itself"
    );
    ben.close();
    // The close reaches the room as its `on-disconnect`, after the close returns: wait for
    // the room to say so rather than for a while.
    let want = serde_json::json!(["ann", "cid"]);
    wait_until(Duration::from_secs(10), "ben leaves the room", || async {
        let members = json(&node.request("lobby", "members", "null").await.unwrap());
        (members == want).then_some(())
    })
    .await;
    node.shutdown().await;
}

/// The samples' state outlives the instance: `counter` across a host restart, a key of a
/// keyed `counter` across its retirement, and `chat`'s last messages, replayed to a new
/// member after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_samples_keep_their_state_across_retirement_and_a_host_restart() {
    let data = wasmwire_tests::scratch_dir("samples-data");
    let manifest = wasmwire_tests::manifest_text(&format!(
        r#"[host]
cache_dir = {:?}
data_dir = {:?}

[[service]]
name = "counter"
component = "{{service:counter}}"
channel = 1
options = {{ start = 100 }}

[[service]]
name = "tally"
component = "{{service:counter}}"
channel = 2
keyed = true
idle_timeout = "200ms"

[[service]]
name = "lobby"
component = "{{service:chat}}"
channel = 3
options = {{ room = "lobby", history = 3 }}
"#,
        wasmwire_tests::root()
            .join("target/test-cache")
            .display()
            .to_string(),
        data.display().to_string()
    ));
    let said = |payload: &[u8]| json(std::str::from_utf8(payload).unwrap());

    let node = wasmwire_tests::start_text(&manifest).await;
    assert_eq!(ask(&node, "counter", "incr").await, 101);
    assert_eq!(ask(&node, "counter", "incr").await, 102);
    assert_eq!(ask(&node, "tally/a", "incr").await, 1);
    wait_until(Duration::from_secs(30), "tally/a to retire", || {
        let gone = node.directory().live("tally/a").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(
        ask(&node, "tally/a", "incr").await,
        2,
        "kept across retirement"
    );
    assert_eq!(ask(&node, "tally/b", "incr").await, 1, "each key its own");
    let ann = node.open_session("lobby", "ann").await.unwrap();
    for text in ["m1", "m2", "m3", "m4"] {
        ann.send("say", text.as_bytes().to_vec()).unwrap();
    }
    // A member who comes in later gets the last three, oldest first, marked as replays.
    let mut ben = node.open_session("lobby", "ben").await.unwrap();
    for text in ["m2", "m3", "m4"] {
        let (kind, payload) = next(&mut ben.events).await;
        assert_eq!(kind, "said");
        assert_eq!(
            said(&payload),
            serde_json::json!({"room": "lobby", "from": "ann", "text": text, "replay": true})
        );
    }
    drop((ann, ben));
    node.shutdown().await;

    // A second host on the same data finds it all.
    let node = wasmwire_tests::start_text(&manifest).await;
    assert_eq!(ask(&node, "counter", "get").await, 102);
    assert_eq!(ask(&node, "tally/a", "get").await, 2);
    let mut cid = node.open_session("lobby", "cid").await.unwrap();
    let (_, first) = next(&mut cid.events).await;
    assert_eq!(said(&first)["text"], "m2");
    node.shutdown().await;
}

async fn ask(node: &wasmwire::node::Node, service: &str, event: &str) -> serde_json::Value {
    json(&node.request(service, event, "null").await.unwrap())
}
