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
