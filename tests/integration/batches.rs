//! Batched delivery: a component that exports `on-message-block` (WIT 0.1.4, the SDK's) or
//! only `on-messages` (0.1.3) gets the messages waiting in its mailbox in one call, one
//! built against 0.1.0 gets one `on-message` each, and all see the same stream in the same
//! order. A batch stops at a message whose
//! handling closed a session, and a trap in the middle of one drops what was not handled
//! with the sessions, never delivering it twice.

use std::sync::atomic::Ordering;
use std::time::Duration;
use wasmwire::node::{ClientSession, Node};
use wasmwire::runtime::instance::{CallError, LifecycleEvent};
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{json, start, wait_for};

const HOST: &str = r#"
[[service]]
name = "batched"
component = "{guest:misbehave}"
channel = 1

[[service]]
name = "single"
component = "{guest:legacy}"
channel = 2

[[service]]
name = "bad"
component = "{guest:misbehave}"
channel = 3
restart_backoff = "10ms"

[[service]]
name = "list"
component = "{guest:batch013}"
channel = 4

[[service]]
name = "small"
component = "{guest:misbehave}"
channel = 5
memory = "16MiB"
"#;

/// Messages each receiver is sent.
const NOTES: u64 = 2000;

/// Export calls made into `name` so far.
fn calls(node: &Node, name: &str) -> u64 {
    node.instance(name)
        .unwrap()
        .stats
        .calls
        .load(Ordering::Relaxed)
}

/// Sends a message, waiting while the receiver's mailbox is full (`busy`), as a sender
/// must. (A client is told nothing when room comes back: it backs off and tries again, so
/// the sleep is the behaviour, and however long a busy machine makes it, the send lands.)
async fn send_waiting(session: &ClientSession, kind: &str, payload: Vec<u8>) {
    loop {
        match session.send(kind, payload.clone()) {
            Err(CallError::Busy) => tokio::time::sleep(Duration::from_millis(1)).await,
            other => return other.unwrap(),
        }
    }
}

/// Sends note `n` ([`send_waiting`]).
async fn send_note(session: &ClientSession, n: u64) {
    send_waiting(session, "note", n.to_string().into_bytes()).await;
}

/// The notes a session's client was sent back, until the session closed.
async fn until_closed(mut events: tokio::sync::mpsc::Receiver<ClientEvent>) -> Vec<u64> {
    let mut back = Vec::new();
    while let Some(ClientEvent::Message { payload, .. }) =
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("closed in time")
    {
        back.push(String::from_utf8(payload).unwrap().parse().unwrap());
    }
    back
}

/// What `name` answers to `notes`, as numbers.
async fn notes(node: &Node, name: &str) -> Vec<u64> {
    let reply = node.request(name, "notes", "null").await.unwrap();
    serde_json::from_value(json(&reply)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_list_and_0_1_0_guests_get_the_same_stream_in_order() {
    let node = start(HOST).await;
    let batched = node.open_session("batched", "tester").await.unwrap();
    let single = node.open_session("single", "tester").await.unwrap();
    let list = node.open_session("list", "tester").await.unwrap();
    // (A request queues behind the `on-connect` calls: the counts start after them.)
    for name in ["batched", "single", "list"] {
        assert!(notes(&node, name).await.is_empty());
    }
    let (b0, s0, l0) = (
        calls(&node, "batched"),
        calls(&node, "single"),
        calls(&node, "list"),
    );
    // Ten `slow` keep `batched` and `list` busy for 50 ms while the notes pile up behind
    // them.
    const SLOW: u64 = 10;
    for _ in 0..SLOW {
        batched.send("slow", vec![]).unwrap();
        list.send("slow", vec![]).unwrap();
    }
    for n in 0..NOTES {
        send_note(&batched, n).await;
        send_note(&single, n).await;
        send_note(&list, n).await;
    }
    let want: Vec<u64> = (0..NOTES).collect();
    // Every note exactly once and in order, at all three (a request queues behind the
    // notes).
    for name in ["batched", "single", "list"] {
        assert_eq!(notes(&node, name).await, want, "{name}");
    }
    // One call per message for the 0.1.0 guest (and one for `notes`); fewer for the batch
    // guests, which were handed what queued behind `slow` together. (How many fewer
    // depends on how far the sender got ahead, which a busy machine decides.)
    let (b, s, l) = (
        calls(&node, "batched") - b0,
        calls(&node, "single") - s0,
        calls(&node, "list") - l0,
    );
    assert_eq!(s, NOTES + 1, "the 0.1.0 guest: one on-message per message");
    for (name, calls) in [("on-message-block", b), ("on-messages", l)] {
        assert!(
            calls < SLOW + NOTES + 1,
            "the {name} guest made {calls} calls for {SLOW} + {NOTES} messages"
        );
        eprintln!("the {name} guest made {calls} calls for {SLOW} + {NOTES} messages");
    }
    // The 0.1.3 guest counted its `on-messages` calls itself: its batches came that way.
    let batches: u64 = json(&node.request("list", "batches", "null").await.unwrap())
        .as_u64()
        .unwrap();
    assert!(
        batches > 0 && batches < l,
        "{batches} on-messages calls of {l}"
    );
    // It sent each note back as it handled it, all before it answered `notes`. The
    // client's queue holds 1 024: a note sent back past that is refused `busy` (the guest
    // ignores it), so the client has a prefix, in order.
    let mut back = Vec::new();
    let mut events = batched.events;
    while let Ok(event) = events.try_recv() {
        match event {
            ClientEvent::Message { kind, payload } if kind == "note" => {
                back.push(String::from_utf8(payload).unwrap().parse::<u64>().unwrap());
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!back.is_empty());
    assert_eq!(back, want[..back.len()]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_where_a_message_closed_its_session() {
    let node = start(HOST).await;
    let session = node.open_session("batched", "tester").await.unwrap();
    session.send("slow", vec![]).unwrap();
    for n in 0..5u64 {
        session.send("note", n.to_string().into_bytes()).unwrap();
    }
    // `bye` closes the session: the notes after it are on a closed session and never
    // reach the guest, as they would not one call at a time.
    session.send("bye", vec![]).unwrap();
    for n in 5..10u64 {
        // Refused once the close is through, queued (then dropped) before.
        let _ = session.send("note", n.to_string().into_bytes());
    }
    let back = until_closed(session.events).await;
    assert_eq!(
        back,
        [0, 1, 2, 3, 4],
        "the five notes before bye, sent back"
    );
    assert_eq!(notes(&node, "batched").await, vec![0, 1, 2, 3, 4]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_the_middle_of_a_batch_drops_the_rest_and_delivers_nothing_twice() {
    let node = start(HOST).await;
    let mut lifecycle = node.subscribe();
    let session = node.open_session("bad", "tester").await.unwrap();
    let calls_before = calls(&node, "bad");
    session.send("slow", vec![]).unwrap();
    for n in 0..10u64 {
        session.send("note", n.to_string().into_bytes()).unwrap();
    }
    session.send("boom", vec![]).unwrap();
    for n in 10..20u64 {
        session.send("note", n.to_string().into_bytes()).unwrap();
    }
    // The crash is in `on-message-block`: the notes and `boom` came in one batch.
    wait_for(&mut lifecycle, Duration::from_secs(10), |e| {
        matches!(
            e,
            LifecycleEvent::Crashed {
                export: "on-message-block",
                ..
            }
        )
    })
    .await;
    // The notes handled before the trap were sent back once each, then the session closed:
    // none after the trap, none twice.
    let back = until_closed(session.events).await;
    assert_eq!(back, (0..10).collect::<Vec<_>>());
    assert!(
        calls(&node, "bad") - calls_before < 12,
        "the notes went in batches"
    );
    // Restarted on demand, with nothing delivered again.
    assert_eq!(notes(&node, "bad").await, Vec::<u64>::new());
    node.shutdown().await;
}

/// A burst of large messages is cut into runs the guest can hold: 48 messages of 1 MiB
/// queued behind slow ones reach a guest with 16 MiB of memory one at a time (256 KiB of
/// payload a call past its first message), not as one 48 MiB batch that would hit its
/// memory limit and crash it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_messages_is_cut_into_runs_the_guest_can_hold() {
    let node = start(HOST).await;
    let session = node.open_session("small", "tester").await.unwrap();
    assert!(notes(&node, "small").await.is_empty());
    let calls_before = calls(&node, "small");
    let traps = || {
        node.instance("small")
            .unwrap()
            .stats
            .traps
            .load(Ordering::Relaxed)
    };
    for _ in 0..4 {
        session.send("slow", vec![]).unwrap();
    }
    const BIG: u64 = 48;
    for _ in 0..BIG {
        send_waiting(&session, "fine", vec![0; 1 << 20]).await;
    }
    send_note(&session, 7).await;
    // Alive, with every message handled in order, and never trapped.
    assert_eq!(notes(&node, "small").await, vec![7]);
    assert_eq!(traps(), 0);
    let calls = calls(&node, "small") - calls_before;
    assert!(
        calls > BIG,
        "{calls} calls for 4 + {BIG} + 1 messages: 1 MiB each goes alone"
    );
    node.shutdown().await;
}
