//! Hosts on 127.0.0.1 talking over real QUIC with real components: remote requests and
//! sessions, exposure and `uses` across hosts, cross-host cycles, `connect` to any peer,
//! peer exchange, one connection per pair of hosts.

use serde_json::json;
use std::time::{Duration, Instant};
use wasmwire::runtime::instance::CallError;
use wasmwire::runtime::session::ClientEvent;
use wasmwire_tests::{addr_of, json, start_peer, wait_connected, wait_until};

use wasmwire_tests::client::{WITHIN, client_net, client_of, raw_connection};

/// Host B: an exposed counter and an unexposed one.
const COUNTERS: &str = r#"
[[service]]
name = "counter"
component = "{service:counter}"
channel = 3
expose = true
options = { start = 100 }

[[service]]
name = "secret"
component = "{service:counter}"
channel = 4
"#;

fn spec(name: &str, uses: &str, expose: bool) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncomponent = \"{{service:spec}}\"\nchannel = 1\nuses = [{uses}]\nexpose = {expose}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_requests_reach_exposed_services_only_and_obey_uses() {
    let b = start_peer(
        &[],
        "",
        &format!(
            "{COUNTERS}{}",
            spec("bob", "", true).replace("channel = 1", "channel = 5")
        ),
    )
    .await;
    let b_id = b.peer_id().unwrap();
    let a = start_peer(
        &[addr_of(&b)],
        "",
        &format!(
            "{}{}",
            spec("alice", r#""*/counter", "*/secret", "*/bob""#, false),
            spec("mallory", "", false).replace("channel = 1", "channel = 2")
        ),
    )
    .await;
    wait_connected(&a, b_id, WITHIN).await;

    let ask =
        |service: String| json!({"service": service, "event": "incr", "params": null}).to_string();
    // By peer id and by "*": the same counter, counting up.
    let r = a
        .request("alice", "request", &ask(format!("{b_id}/counter")))
        .await;
    assert_eq!(r.map(|r| json(&r)), Ok(json!(101)));
    let r = a
        .request("alice", "request", &ask("*/counter".into()))
        .await;
    assert_eq!(r.map(|r| json(&r)), Ok(json!(102)));
    // Not exposed: no peer offers it.
    let r = a.request("alice", "request", &ask("*/secret".into())).await;
    assert!(
        matches!(&r, Err(CallError::Failed(m)) if m.contains("no peer exposes") && m.contains("secret")),
        "{r:?}"
    );
    let r = a
        .request("alice", "request", &ask(format!("{b_id}/secret")))
        .await;
    assert!(
        matches!(&r, Err(CallError::Failed(m)) if m.contains("no such service")),
        "{r:?}"
    );
    // Not in `uses`: denied before anything crosses the network.
    let r = a
        .request("mallory", "request", &ask(format!("{b_id}/counter")))
        .await;
    assert!(
        matches!(&r, Err(CallError::Failed(m)) if m.contains("denied") && m.contains("uses")),
        "{r:?}"
    );
    // A request from the other end of a remote session names that session as its caller.
    let ask_caller = json!({"service": format!("{b_id}/bob"), "event": "caller", "params": null});
    let r = a.request("alice", "request", &ask_caller.to_string()).await;
    assert_eq!(r.map(|r| json(&r)), Ok(json!(null)));
    a.request(
        "alice",
        "connect",
        &json!({"service": "bob", "peer": b_id.to_string()}).to_string(),
    )
    .await
    .unwrap();
    let bob_end = b
        .directory()
        .sessions(10)
        .0
        .into_iter()
        .find(|(_, r)| &*r.instance == "bob" && &*r.other == "alice")
        .map(|(id, _)| id)
        .unwrap();
    let r = a.request("alice", "request", &ask_caller.to_string()).await;
    assert_eq!(r.map(|r| json(&r)), Ok(json!(bob_end)));
    // A client sees only the exposed services in list-services.
    let client = client_of(&b).await;
    let listed = client.list().await;
    assert_eq!(
        listed,
        vec![
            ("counter".to_string(), "awake".to_string()),
            ("bob".to_string(), "awake".to_string())
        ]
    );
    client.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

const ROOM: &str = r#"
[[service]]
name = "room"
component = "{service:chat}"
channel = 2
expose = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_from_a_reaches_the_rooms_on_b_and_c() {
    let b = start_peer(
        &[],
        "",
        &ROOM.replace("room\"\n", "room\"\noptions = { room = \"b\" }\n"),
    )
    .await;
    let c = start_peer(&[], "", ROOM).await;
    let (b_id, c_id) = (b.peer_id().unwrap(), c.peer_id().unwrap());
    let a = start_peer(
        &[addr_of(&b), addr_of(&c)],
        "",
        r#"
[[service]]
name = "hub"
component = "{service:chat}"
channel = 2
uses = ["*/room"]
options = { room = "hub" }
"#,
    )
    .await;
    wait_connected(&a, b_id, WITHIN).await;
    wait_connected(&a, c_id, WITHIN).await;
    // The hub on A joins the room on B and the room on C: two remote sessions.
    for id in [b_id, c_id] {
        let r = a
            .request(
                "hub",
                "join",
                &json!({"service": "room", "peer": id.to_string()}).to_string(),
            )
            .await;
        assert!(r.is_ok(), "{r:?}");
    }
    // Someone in each remote room listens; someone on A speaks in the hub.
    let mut on_b = b.open_session("room", "bea").await.unwrap();
    let mut on_c = c.open_session("room", "cy").await.unwrap();
    let members = json(&b.request("room", "members", "null").await.unwrap());
    assert_eq!(members, json!(["hub", "bea"]));
    let ann = a.open_session("hub", "ann").await.unwrap();
    ann.send("say", b"hello from A".to_vec()).unwrap();
    for (host, s) in [("B", &mut on_b), ("C", &mut on_c)] {
        match tokio::time::timeout(WITHIN, s.events.recv()).await {
            Ok(Some(ClientEvent::Message { kind, payload })) => {
                assert_eq!(kind, "said");
                assert_eq!(
                    json(std::str::from_utf8(&payload).unwrap()),
                    json!({"room": "hub", "from": "ann", "text": "hello from A", "hops": 1}),
                    "on {host}"
                );
            }
            other => panic!("on {host}: {other:?}"),
        }
    }
    // The session on B knows its other end is the hub on A.
    let sessions = b.directory().sessions(100).0;
    assert!(
        sessions
            .iter()
            .any(|(_, r)| &*r.other == "hub" && r.peer == a.peer_id()),
        "{sessions:?}"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// A session end writes its stream itself, and an acceptor's end can send before its answer
/// is written (the room replays its history from `on-connect`): what it sent follows the
/// answer on the wire, in order, and a refused session gets its answer all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_acceptor_sends_from_on_connect_follows_its_answer_across_hosts() {
    let b = start_peer(
        &[],
        "",
        r#"
[[service]]
name = "lobby"
component = "{service:chat}"
channel = 3
expose = true
max_sessions = 2
options = { room = "lobby", history = 3 }
"#,
    )
    .await;
    let mut ann = b.open_session("lobby", "ann").await.unwrap();
    for text in ["m1", "m2", "m3", "m4"] {
        ann.send("say", text.as_bytes().to_vec()).unwrap();
    }
    let said = |e: Option<ClientEvent>| match e {
        Some(ClientEvent::Message { kind, payload }) if kind == "said" => {
            json(std::str::from_utf8(&payload).unwrap())["text"].clone()
        }
        other => panic!("{other:?}"),
    };
    let client = client_of(&b).await;
    let mut cy = client
        .net
        .open_client_session(client.conn, "lobby", "cy", 1 << 20)
        .await
        .expect("the room accepts a remote member");
    for text in ["m2", "m3", "m4"] {
        let e = tokio::time::timeout(WITHIN, cy.events.recv())
            .await
            .unwrap();
        assert_eq!(said(e), json!(text));
    }
    // Live messages follow the replay, in order, and the member's own reach the room.
    ann.send("say", b"m5".to_vec()).unwrap();
    let e = tokio::time::timeout(WITHIN, cy.events.recv())
        .await
        .unwrap();
    assert_eq!(said(e), json!("m5"));
    cy.send("say", b"from cy".to_vec()).unwrap();
    let e = tokio::time::timeout(WITHIN, ann.events.recv())
        .await
        .unwrap();
    assert_eq!(said(e), json!("from cy"));
    // `max_sessions = 2`: ann and cy are in; a third member from afar is refused, with the
    // reason, on a stream the refusal finishes.
    let refused = client
        .net
        .open_client_session(client.conn, "lobby", "dee", 1 << 20)
        .await
        .map(|_| ());
    match refused {
        Err(CallError::Denied(m)) if m.contains("limit of 2 sessions") => {}
        other => panic!("a third member past max_sessions = 2: {other:?}"),
    }
    drop((ann, cy));
    client.close().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cycle_across_hosts_fails_with_cycle_at_once() {
    let b = start_peer(&[], "", &spec("bob", r#""*/alice""#, true)).await;
    let a = start_peer(&[addr_of(&b)], "", &spec("alice", r#""*/bob""#, true)).await;
    let (a_id, b_id) = (a.peer_id().unwrap(), b.peer_id().unwrap());
    wait_connected(&a, b_id, WITHIN).await;
    wait_connected(&b, a_id, WITHIN).await;
    // alice (A) asks bob (B) to ask alice (A): A refuses the second hop with `cycle`.
    let inner = json!({"service": format!("{a_id}/alice"), "event": "name", "params": null});
    let outer = json!({"service": format!("{b_id}/bob"), "event": "request", "params": inner});
    let started = Instant::now();
    let r = a.request("alice", "request", &outer.to_string()).await;
    assert!(
        matches!(&r, Err(CallError::Failed(m)) if m.contains("request cycle")),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    a.shutdown().await;
    b.shutdown().await;
}

const ECHO: &str = r#"
[[service]]
name = "echo"
component = "{service:echo}"
channel = 5
expose = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_and_connect_to_any_peer_that_runs_a_service() {
    // A knows only B; B knows C; only C runs echo.
    let c = start_peer(&[], "", ECHO).await;
    let b = start_peer(&[addr_of(&c)], "", "").await;
    let a = start_peer(&[addr_of(&b)], "", &spec("alice", r#""*/echo""#, false)).await;
    let c_id = c.peer_id().unwrap();
    // A learns C through B and connects to it.
    wait_connected(&a, c_id, WITHIN).await;
    let peers = a.net().unwrap().peers().await;
    assert!(
        peers
            .iter()
            .any(|p| p.peer == c_id.to_string() && p.connected),
        "{peers:?}"
    );
    // connect(some("*"), "echo") finds the one host that runs it.
    let end = a
        .request("alice", "connect", r#"{"service": "echo", "peer": "*"}"#)
        .await
        .map(|r| json(&r));
    let end = end.unwrap_or_else(|e| panic!("{e:?}")).as_u64().unwrap();
    let sessions = json(&a.request("alice", "sessions", "null").await.unwrap());
    assert_eq!(sessions, json!([[end, "echo", c_id.to_string()]]));
    // It is a real session: C's echo has it open, with alice on A at the other end.
    let on_c = c.directory().sessions(10).0;
    assert_eq!(on_c.len(), 1, "{on_c:?}");
    assert_eq!(&*on_c[0].1.other, "alice");
    // Closing it closes both ends.
    a.request("alice", "close", &json!({"session": end}).to_string())
        .await
        .unwrap();
    wait_until(WITHIN, "C's end closed", || {
        let n = c.directory().sessions(10).1;
        async move { (n == 0).then_some(()) }
    })
    .await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_end_with_exactly_one_connection() {
    let (pa, pb) = (wasmwire_tests::free_port(), wasmwire_tests::free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let dir = wasmwire_tests::scratch_dir("simultaneous");
    let mut nodes = Vec::new();
    for (me, other) in [(pa, pb), (pb, pa)] {
        let text = wasmwire_tests::peer_manifest(&addr(me), &[addr(other)], "", "");
        let path = dir.join(format!("{me}.toml"));
        std::fs::write(&path, text).unwrap();
        let m = wasmwire::manifest::load(&path).unwrap();
        nodes.push(wasmwire::node::Node::start(&m).await.unwrap());
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_connected(a, b.peer_id().unwrap(), WITHIN).await;
    wait_connected(b, a.peer_id().unwrap(), WITHIN).await;
    // Let any second connection settle, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_a = a.net().unwrap().connections().await;
    let on_b = b.net().unwrap().connections().await;
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ids_alpn_and_hello_mismatches_end_the_connection() {
    use wasmwire::net::identity::Identity;
    let b = start_peer(&[], "", COUNTERS).await;
    let addr = addr_of(&b);
    // A dial pinned to another id is refused by the dialler's verifier.
    let other = Identity::generate().unwrap().id;
    let net = client_net(Identity::generate().unwrap(), wasmwire::wire::ALPN);
    let pinned: wasmwire::manifest::PeerSpec = format!("{addr}#{other}").parse().unwrap();
    let r = net.dial(&pinned).await;
    assert!(r.is_err(), "{r:?}");
    // Pinned to the right id: fine.
    let right: wasmwire::manifest::PeerSpec =
        format!("{addr}#{}", b.peer_id().unwrap()).parse().unwrap();
    assert!(net.dial(&right).await.is_ok());
    net.shutdown(Duration::from_millis(100)).await;
    // Another major version in the ALPN: no handshake.
    let net = client_net(Identity::generate().unwrap(), b"wasmwire/2");
    let r = net.dial(&addr.parse().unwrap()).await;
    assert!(
        matches!(&r, Err(e) if e.contains("no_application_protocol") || e.contains("protocol")),
        "{r:?}"
    );
    net.shutdown(Duration::from_millis(100)).await;
    // Right ALPN, wrong hello: the host closes with the reason.
    let reason = raw_hello(
        &addr,
        r#"{"type":"hello","role":"client","major":2,"minor":0}"#,
    )
    .await;
    assert!(reason.contains("major version 2"), "{reason}");
    let reason = raw_hello(&addr, r#"{"type":"ping","id":1}"#).await;
    assert!(reason.contains("expected hello first"), "{reason}");
    let reason = raw_hello(&addr, "this is not json").await;
    assert!(reason.contains("malformed control message"), "{reason}");
    // The host is unharmed.
    let client = client_of(&b).await;
    assert_eq!(
        client.list().await.len(),
        1,
        "only counter is exposed on this B"
    );
    client.close().await;
    b.shutdown().await;
}

/// A raw QUIC connection to `addr` with a fresh valid identity and the right ALPN, for
/// writing bytes the real client never would.
/// Opens a raw connection with a valid identity, writes `first` as the first control frame
/// and returns the reason the host closed the connection with.
async fn raw_hello(addr: &str, first: &str) -> String {
    let (endpoint, conn) = raw_connection(addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut frame = bytes::BytesMut::new();
    wasmwire::wire::put_frame(&mut frame, first.as_bytes());
    send.write_all(&frame).await.unwrap();
    let reason = match tokio::time::timeout(WITHIN, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(a)) => {
            String::from_utf8_lossy(&a.reason).into_owned()
        }
        other => format!("{other:?}"),
    };
    endpoint.close(0u32.into(), b"");
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_receiver_makes_its_sender_busy_with_bounded_memory() {
    let _alone = wasmwire_tests::ALONE.lock().await;
    let b = start_peer(
        &[],
        "",
        "[[service]]\nname = \"sink\"\ncomponent = \"{guest:misbehave}\"\nchannel = 2\nexpose = true\nmailbox = 16\n",
    )
    .await;
    let b_id = b.peer_id().unwrap();
    let a = start_peer(&[addr_of(&b)], "", &spec("alice", r#""*/sink""#, false)).await;
    wait_connected(&a, b_id, WITHIN).await;
    let end = json(
        &a.request(
            "alice",
            "connect",
            &json!({"service": "sink", "peer": b_id.to_string()}).to_string(),
        )
        .await
        .unwrap(),
    )
    .as_u64()
    .unwrap();
    let before = wasmwire_tests::rss();
    let mut sent_total = 0;
    // Each round tries to push 40 MiB of 4 KiB messages at a receiver that takes 5 ms each.
    for _ in 0..10 {
        let r = json(
            &a.request(
                "alice",
                "flood",
                &json!({"session": end, "kind": "slow", "count": 10_000, "size": 4096}).to_string(),
            )
            .await
            .unwrap(),
        );
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent < 10_000, "{r}");
        assert_eq!(r["error"], json!("busy: mailbox full"), "{r}");
        sent_total += sent;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = wasmwire_tests::rss().saturating_sub(before);
    eprintln!(
        "slow receiver: {sent_total} of 100000 messages (4 KiB) accepted before busy, RSS grew {} KiB",
        grown >> 10
    );
    // 400 MiB were offered; what was accepted is bounded by the queues and QUIC windows.
    assert!(sent_total < 20_000, "{sent_total}");
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_whose_header_never_completes_is_reset() {
    let b = start_peer(&[], "", ECHO).await;
    let (endpoint, conn) = raw_connection(&addr_of(&b)).await;
    let (mut control, _control_in) = conn.open_bi().await.unwrap();
    let mut frame = bytes::BytesMut::new();
    wasmwire::wire::put_json(
        &mut frame,
        &serde_json::json!({"type": "hello", "role": "client", "major": 1, "minor": 0}),
    );
    control.write_all(&frame).await.unwrap();
    // A session stream with half a length prefix, then nothing.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(WITHIN, recv.read_chunk(1024, true)).await;
    assert!(
        matches!(r, Ok(Err(quinn::ReadError::Reset(code))) if code == quinn::VarInt::from_u32(2)),
        "{r:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    // The connection itself lives on.
    assert!(conn.close_reason().is_none());
    endpoint.close(0u32.into(), b"");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_are_dialled_and_allow_gates_outgoing_dials() {
    let b = start_peer(&[], "", ECHO).await;
    let port = b.local_addr().unwrap().port();
    // `localhost` resolves to one or more addresses; each is dialled, one answers.
    let a = start_peer(&[format!("localhost:{port}")], "", "").await;
    wait_connected(&a, b.peer_id().unwrap(), WITHIN).await;
    // A host whose `allow` does not list B never connects to it, though it dials it.
    let stranger = wasmwire::net::identity::Identity::generate().unwrap().id;
    let c = start_peer(&[addr_of(&b)], &format!("allow = [\"{stranger}\"]"), "").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.net().unwrap().connections().await.is_empty());
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
