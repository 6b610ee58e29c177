//! The HTTP and WebSocket gateway (`[host] http`), driven by a real HTTP client (hyper's)
//! and a real WebSocket client (tokio-tungstenite): calls, keyed calls, every error
//! mapping, sessions both ways, back-pressure both ways, tokens, origins, and hostile
//! inputs with a neighbour service still answering.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wasmwire::gateway::{Access, Gateway, Settings};
use wasmwire::metrics::Source;
use wasmwire::node::Node;
use wasmwire_tests::http::{self, Http, call, next_json, request, send_text, websocket};
use wasmwire_tests::{scratch_dir, start};

const SERVICES: &str = r#"
[[service]]
name = "echo"
component = "{service:echo}"
channel = 2
expose = true

[[service]]
name = "tally"
component = "{service:counter}"
channel = 3
expose = true
keyed = true

[[service]]
name = "hidden"
component = "{service:echo}"
channel = 4

[[service]]
name = "small"
component = "{service:echo}"
channel = 5
expose = true
max_message = "1KiB"

[[service]]
name = "solo"
component = "{service:echo}"
channel = 6
expose = true
max_sessions = 1

[[service]]
name = "bad"
component = "{guest:misbehave}"
channel = 7
expose = true
restart_backoff = "10ms"
call_timeout = "20s"   # a flood into the socket's buffers takes a while in a debug build

[[service]]
name = "broken"
component = "{guest:misbehave}"
channel = 8
expose = true
options = { trap_wakeup = true }
restart_backoff = "10ms"

[[service]]
name = "slowpoke"
component = "{guest:misbehave}"
channel = 9
expose = true
request_timeout = "300ms"
call_timeout = "1s"
restart_backoff = "10ms"

[[service]]
name = "jam"
component = "{guest:misbehave}"
channel = 10
expose = true
mailbox = 1
call_timeout = "2s"
restart_backoff = "10ms"

[[service]]
name = "lobby"
component = "{service:chat}"
channel = 11
expose = true
"#;

/// A host of [`SERVICES`] with its gateway on a free loopback port.
async fn host(extra_host: &str) -> (Node, SocketAddr) {
    let cache = wasmwire_tests::root().join("target/test-cache");
    let body = format!(
        "[host]\nmax_awake = 32\ncache_dir = {:?}\nhttp = \"127.0.0.1:0\"\n{extra_host}\n{SERVICES}",
        cache.display().to_string()
    );
    let node = start(&body).await;
    let addr = node.http_addr().expect("the gateway runs");
    (node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keyed_calls_and_the_service_list() {
    let (_node, addr) = host("").await;
    let a = call(addr, "echo", "echo", r#"{"x": [1, 2]}"#).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json(), serde_json::json!({"x": [1, 2]}));
    assert_eq!(a.headers["content-type"], "application/json");
    // No body: the parameters are `null`.
    let a = request(addr, "POST", "/v1/services/echo/events/echo", &[], "").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "null"));

    // Keys of a keyed class count on their own, whether the slash is written or escaped.
    for _ in 0..3 {
        assert_eq!(call(addr, "tally/anna", "incr", "null").await.status, 200);
    }
    let anna = call(addr, "tally%2Fanna", "get", "null").await;
    let bob = call(addr, "tally/bob", "get", "null").await;
    assert_eq!(anna.status, 200, "{anna:?}");
    assert_ne!(anna.body, bob.body, "keys count apart: {anna:?} {bob:?}");

    // A kept-alive connection takes many requests.
    let mut c = Http::connect(addr).await;
    for i in 0..50 {
        let a = c
            .request("POST", "/v1/services/echo/events/echo", &[], i.to_string())
            .await;
        assert_eq!(a.body, i.to_string());
    }

    let list = request(addr, "GET", "/v1/services", &[], "").await;
    assert_eq!(list.status, 200);
    let names: Vec<String> = list
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"echo".to_string()) && names.contains(&"tally".to_string()));
    assert!(!names.contains(&"hidden".to_string()), "{names:?}");

    // The Prometheus figures are on the same server.
    let m = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(
        m.body.contains("wasmwire_instance_calls_total"),
        "{}",
        &m.body[..m.body.len().min(400)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_maps_to_its_status() {
    let (_node, addr) = host("").await;
    let expect = |a: &http::Answer, status: u16, error: &str| {
        assert_eq!(a.status.as_u16(), status, "{a:?}");
        assert_eq!(a.error(), error, "{a:?}");
        assert!(a.json()["message"].is_string(), "{a:?}");
    };
    expect(
        &call(addr, "nope", "echo", "1").await,
        404,
        "no-such-service",
    );
    // Not exposed reads as absent, as it does to a peer.
    expect(
        &call(addr, "hidden", "echo", "1").await,
        404,
        "no-such-service",
    );
    expect(&call(addr, "echo", "undeclared", "1").await, 422, "invalid");
    let big = format!("\"{}\"", "x".repeat(2000));
    expect(&call(addr, "small", "echo", &big).await, 413, "too-large");
    expect(
        &call(addr, "broken", "ok", "null").await,
        503,
        "unavailable",
    );
    // `failed` carries the guest's own text.
    let failed = call(addr, "bad", "work", r#"{"no": 1}"#).await;
    expect(&failed, 500, "failed");
    assert!(
        failed.json()["message"]
            .as_str()
            .unwrap()
            .contains("rounds"),
        "{failed:?}"
    );
    expect(
        &call(addr, "slowpoke", "spin", "null").await,
        504,
        "timeout",
    );
    // An event named like a route still routes to the event.
    expect(&call(addr, "echo", "session", "null").await, 422, "invalid");

    // A second session past `max_sessions = 1` is denied, before any upgrade.
    let _first = websocket(addr, "/v1/services/solo/session")
        .await
        .expect("first");
    let (status, body) = websocket(addr, "/v1/services/solo/session")
        .await
        .map(|_| ())
        .expect_err("a second session is refused");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"denied\""), "{body}");

    // A full mailbox is `busy`, with when to come back: while `jam` spins (2 s of CPU),
    // three calls at once find its one mailbox place taken. Until the spin has begun they
    // may all be answered, so batches go until one is refused.
    let spin = tokio::spawn(call(addr, "jam", "spin", "null"));
    let mut busy = None;
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let tries: Vec<_> = (0..3)
            .map(|_| tokio::spawn(call(addr, "jam", "ok", "null")))
            .collect();
        for t in tries {
            let a = t.await.unwrap();
            seen.push(a.status.as_u16());
            if a.status == 429 {
                busy = Some(a);
            }
        }
        if busy.is_some() || spin.is_finished() {
            break;
        }
    }
    let busy = busy.unwrap_or_else(|| {
        panic!(
            "no request past a full mailbox was refused: {seen:?}, the spin: {:?}",
            spin.is_finished()
        )
    });
    expect(&busy, 429, "busy");
    assert_eq!(busy.headers["retry-after"], "1");
    let _ = spin.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_a_session_both_ways() {
    let (node, addr) = host("").await;
    let mut ws = websocket(addr, "/v1/services/echo/session?name=ann")
        .await
        .expect("a session");
    let hello = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("accepted");
    assert_eq!(hello["accepted"]["service"], "echo");
    assert_eq!(hello["accepted"]["messages"], serde_json::json!(["echo"]));
    // The service's end is a session like any other: listed, with the client's name.
    let end = hello["accepted"]["session"].as_u64().unwrap();
    let (sessions, _) = node.directory().list_sessions(100);
    let s = sessions
        .iter()
        .find(|s| s.id == end)
        .expect("the session is listed");
    assert_eq!((s.service.as_str(), s.other.as_str()), ("echo", "ann"));

    for i in 0..100 {
        send_text(&mut ws, "echo", &format!("hello {i}")).await;
    }
    for i in 0..100 {
        let m = next_json(&mut ws, Duration::from_secs(10))
            .await
            .expect("an echo");
        assert_eq!(m["kind"], "echo");
        assert_eq!(m["payload"], format!("hello {i}"));
    }
    // Binary frames carry raw bytes: one byte of kind length, the kind, the payload.
    let mut frame = vec![4u8];
    frame.extend_from_slice(b"echo");
    frame.extend_from_slice(&[0xff, 0x00, 0x01]);
    ws.send(Message::binary(frame.clone())).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(frame));

    // An undeclared kind closes the socket with the reason, and the service sees the end.
    send_text(&mut ws, "shout", "x").await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(c))) => break c.expect("a close frame with a reason"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("shout"), "{close:?}");
    wasmwire_tests::wait_until(Duration::from_secs(10), "the session to close", || async {
        (node
            .directory()
            .list_sessions(100)
            .0
            .iter()
            .all(|s| s.id != end))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_members_on_websockets_and_a_host_client_see_each_other() {
    let (node, addr) = host("").await;
    let mut ann = websocket(addr, "/v1/services/lobby/session?name=ann")
        .await
        .unwrap();
    let mut bob = websocket(addr, "/v1/services/lobby/session?name=bob")
        .await
        .unwrap();
    next_json(&mut ann, Duration::from_secs(10))
        .await
        .expect("accepted");
    next_json(&mut bob, Duration::from_secs(10))
        .await
        .expect("accepted");
    let mut cli = node
        .open_session("lobby", "cli")
        .await
        .expect("a client session");
    let members = call(addr, "lobby", "members", "null").await.json();
    let mut members: Vec<String> = serde_json::from_value(members).unwrap();
    members.sort();
    assert_eq!(members, ["ann", "bob", "cli"]);

    send_text(&mut ann, "say", "hi from ann").await;
    let said = next_json(&mut bob, Duration::from_secs(10)).await.unwrap();
    assert_eq!(said["kind"], "said");
    let text: serde_json::Value = serde_json::from_str(said["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (text["from"].as_str(), text["text"].as_str()),
        (Some("ann"), Some("hi from ann"))
    );
    let got = tokio::time::timeout(Duration::from_secs(10), cli.events.recv())
        .await
        .unwrap();
    assert!(
        matches!(got, Some(wasmwire::runtime::session::ClientEvent::Message { ref kind, .. }) if kind == "said")
    );

    cli.send("say", b"hi from cli".to_vec()).unwrap();
    for ws in [&mut ann, &mut bob] {
        let said = next_json(ws, Duration::from_secs(10)).await.unwrap();
        assert!(
            said["payload"].as_str().unwrap().contains("hi from cli"),
            "{said}"
        );
    }
    // A socket that goes is a member that leaves.
    drop(bob);
    wasmwire_tests::wait_until(Duration::from_secs(10), "bob to leave", || async {
        let m = call(addr, "lobby", "members", "null").await.json();
        (!m.to_string().contains("bob")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_makes_the_service_s_sends_busy() {
    let (_node, addr) = host("").await;
    // Opened, then never read again.
    let mut ws = websocket(addr, "/v1/services/bad/session").await.unwrap();
    next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("accepted");
    // The service sends one-byte messages until one is refused: what the host holds for
    // the socket is bounded (the client queue and the socket's buffers), so it is soon.
    // Flood after flood, the socket's kernel buffers fill and then only what the gateway
    // holds is taken: the client queue (1 024) and a little in the socket's write buffer.
    let mut sent = 0;
    let mut last = u64::MAX;
    for _ in 0..100 {
        let a = call(addr, "bad", "sendflood", "null").await;
        assert_eq!(a.status, 200, "{a:?}");
        let (n, refused): (u64, u64) = serde_json::from_value(a.json()).unwrap();
        assert_eq!(refused, 1, "sent {n}");
        sent += n;
        last = n;
        if n < 100 {
            break;
        }
    }
    assert!(
        last < 100,
        "the floods were still taken after {sent} messages"
    );
    assert!(
        sent < 2_000_000,
        "{sent} messages were taken with nobody reading"
    );
    // The messages taken are all there once the client reads.
    let mut read = 0u64;
    while read < sent {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(_))) => read += 1,
            Some(Ok(_)) => {}
            other => panic!("the socket ended after {read} of {sent}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_stops_the_gateway_reading_the_socket() {
    let (_node, addr) = host("").await;
    let ws = websocket(addr, "/v1/services/jam/session").await.unwrap();
    let (mut tx, mut rx) = ws.split();
    next_json_of(&mut rx).await;
    // `jam` has a mailbox of 1 and each `slow` message takes it 5 ms: at most 200 a second
    // get in. Once the socket's buffers are full, the client's sends can only go as fast
    // as that — if the gateway kept reading into memory, they would go at wire speed.
    let payload = "x".repeat(1 << 10);
    let frame = serde_json::json!({"kind": "slow", "payload": payload}).to_string();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        loop {
            if tx.send(Message::text(frame.clone())).await.is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Until the buffers are full the sends go fast: wait for two seconds in a row in which
    // fewer than 1 000 frames (1 MiB) went, which only a held-back sender shows.
    let count = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut held_back = false;
    while started.elapsed() < Duration::from_secs(60) {
        let before = count();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if count() - before < 1000 {
            held_back = true;
            break;
        }
    }
    assert!(
        held_back,
        "the client sent {} frames in {:?} with the service taking 200 a second",
        count(),
        started.elapsed()
    );
    // Far fewer than would fit in memory unchecked: socket buffers and one waiting frame.
    assert!(count() < 64 << 10, "{} frames went in", count());
    // The neighbours answer meanwhile.
    assert_eq!(call(addr, "echo", "echo", "1").await.status, 200);
    writer.abort();
}

/// The `accepted` frame of a split socket.
async fn next_json_of(
    rx: &mut futures_util::stream::SplitStream<http::Socket>,
) -> serde_json::Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

/// The close frame a socket ends with (skipping what comes before it).
async fn close_of(ws: &mut http::Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(Message::Close(Some(c)))) => return (u16::from(c.code), c.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_close_with_a_reason_whoever_ends_them() {
    let (_node, addr) = host("").await;
    // The service closes the session (`bye`): a normal close.
    let mut ws = websocket(addr, "/v1/services/bad/session").await.unwrap();
    next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("accepted");
    send_text(&mut ws, "bye", "").await;
    assert_eq!(close_of(&mut ws).await.0, 1000);
    // Frames that are not the envelope: 1007 (invalid data), with the reason.
    for frame in [
        Message::text("not json"),
        Message::binary(vec![9u8, b'x']),
        Message::text(r#"{"kind": "echo", "payload": 5}"#),
    ] {
        let mut ws = websocket(addr, "/v1/services/echo/session").await.unwrap();
        next_json(&mut ws, Duration::from_secs(10))
            .await
            .expect("accepted");
        ws.send(frame).await.unwrap();
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, 1007, "{reason}");
        assert!(!reason.is_empty());
    }
    // A payload over `max_message` (1 KiB here): 1009.
    let mut ws = websocket(addr, "/v1/services/small/session").await.unwrap();
    next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("accepted");
    send_text(&mut ws, "echo", &"x".repeat(4096)).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");
    assert_eq!(call(addr, "echo", "echo", "2").await.body, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_origins_are_checked() {
    let digest = wasmwire::gateway::digest_text("let-me-in");
    let dir = scratch_dir("gateway-tokens");
    let file = dir.join("tokens");
    std::fs::write(&file, "# rotated monthly\nfrom-a-file\n").unwrap();
    let (_node, addr) = host(&format!(
        "http_tokens = [\"{digest}\"]\nhttp_tokens_file = {:?}\nhttp_origins = [\"https://chat.example\"]",
        file.display().to_string()
    ))
    .await;
    let path = "/v1/services/echo/events/echo";
    let refused = request(addr, "POST", path, &[], "1").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = request(addr, "POST", path, &[("authorization", "Bearer nope")], "1").await;
    assert_eq!(wrong.status, 401);
    for token in ["let-me-in", "from-a-file"] {
        let auth = format!("Bearer {token}");
        let ok = request(addr, "POST", path, &[("authorization", &auth)], "1").await;
        assert_eq!(ok.status, 200, "{token}: {ok:?}");
    }
    assert_eq!(request(addr, "GET", "/metrics", &[], "").await.status, 401);
    // A browser cannot set headers on a WebSocket: the token rides in the query.
    assert_eq!(
        websocket(addr, "/v1/services/echo/session")
            .await
            .map(|_| ())
            .unwrap_err()
            .0,
        401
    );
    websocket(addr, "/v1/services/echo/session?access_token=let-me-in")
        .await
        .expect("admitted");
    // Only there: elsewhere a token belongs in the header, not in an address.
    let in_query = request(
        addr,
        "POST",
        &format!("{path}?access_token=let-me-in"),
        &[],
        "1",
    )
    .await;
    assert_eq!(in_query.status, 401);

    // CORS: a listed origin is answered with its headers; another is refused outright.
    let auth = ("authorization", "Bearer let-me-in");
    let listed = request(
        addr,
        "POST",
        path,
        &[auth, ("origin", "https://chat.example")],
        "1",
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.headers["access-control-allow-origin"],
        "https://chat.example"
    );
    let other = request(
        addr,
        "POST",
        path,
        &[auth, ("origin", "https://evil.example")],
        "1",
    )
    .await;
    assert_eq!(other.status, 403, "{other:?}");
    let pre = request(
        addr,
        "OPTIONS",
        path,
        &[
            ("origin", "https://chat.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert!(
        pre.headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
}

#[test]
fn a_gateway_beyond_loopback_needs_tokens() {
    let text = wasmwire_tests::manifest_text("[host]\nhttp = \"0.0.0.0:8080\"\n");
    let dir = scratch_dir("gateway-open");
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, text).unwrap();
    let e = wasmwire::manifest::load(&path)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("host.http") && e.contains("http_tokens"), "{e}");
}

/// A folder with a 12 MiB file (more than socket buffers hold) and a hidden one.
fn big_file_dir() -> std::path::PathBuf {
    let dir = scratch_dir("gateway-big");
    std::fs::write(dir.join("big.bin"), vec![7u8; 12 << 20]).unwrap();
    std::fs::write(dir.join(".secret"), "hidden").unwrap();
    dir
}

/// A gateway on `node`'s services with short timeouts, so that slow clients are cut in
/// a test's time.
async fn quick_gateway(node: &Node) -> Gateway {
    let mut settings = Settings::gateway(&wasmwire::manifest::HttpConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![],
        tokens_file: None,
        origins: vec![],
        static_dir: None,
        tls: None,
    })
    .unwrap();
    settings.access = Access::default();
    settings.head_timeout = Duration::from_millis(500);
    settings.body_timeout = Duration::from_millis(500);
    settings.write_timeout = Duration::from_millis(500);
    settings.static_dir = Some(big_file_dir());
    Gateway::start(settings, Source::new(node.directory().clone(), None))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_status_and_nothing_is_held_open() {
    let (node, _) = host("").await;
    let gateway = quick_gateway(&node).await;
    let addr = gateway.local_addr();
    let bad = call(addr, "echo", "echo", "{not json").await;
    assert_eq!(
        (bad.status.as_u16(), bad.error().as_str()),
        (400, "bad-json")
    );
    let wrong = request(addr, "GET", "/v1/services/echo/events/echo", &[], "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "POST");
    assert_eq!(
        request(addr, "DELETE", "/v1/services", &[], "")
            .await
            .status,
        405
    );
    assert_eq!(
        request(addr, "GET", "/v1/nothing", &[], "").await.status,
        404
    );
    assert_eq!(
        request(addr, "GET", "/v1/services/a/b/c/session", &[], "")
            .await
            .status,
        400
    );
    let plain = request(addr, "GET", "/v1/services/echo/session", &[], "").await;
    assert_eq!(plain.status, 426);
    // A body past the service's max_message, declared or not (chunked).
    // (Raw, so the client does not write the body the gateway refuses to read.)
    let (answer, _) = http::raw(
        addr,
        b"POST /v1/services/small/events/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Length: 2097152\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/services/small/events/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..4 {
        let chunk = format!("400\r\n{}\r\n", "1".repeat(1024));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A name rebound to 127.0.0.1 (DNS rebinding) is not this gateway's, with no tokens.
    let rebound = request(
        addr,
        "GET",
        "/v1/services",
        &[("host", "evil.example:8080")],
        "",
    )
    .await;
    assert_eq!(
        (rebound.status.as_u16(), rebound.error().as_str()),
        (403, "host")
    );
    // Hidden files are not served.
    assert_eq!(request(addr, "GET", "/.secret", &[], "").await.status, 404);
    // A client that asks for a large file and never reads it is cut at the write bound.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // The stall being modelled: a client that reads nothing for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), stuck.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "the stalled response was never cut");
    assert!(
        got.len() < 12 << 20,
        "all {} bytes came: the write was not cut",
        got.len()
    );
    // Headers past the bound.
    let long = "a".repeat(64 << 10);
    let head = format!("GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {long}\r\n\r\n");
    let (answer, _) = http::raw(addr, head.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(100)]
    );
    // Garbage.
    let (answer, closed) = http::raw(
        addr,
        b"\xff\xfe\xfd garbage\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "a garbage request left the connection open");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // Slowloris: a head sent a byte at a time, a body that never comes, a connection kept
    // alive and idle — each closed after its bound (here half a second).
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed_slow = async {
        for b in b"GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = [0u8; 64];
        matches!(slow.read(&mut buf).await, Ok(0) | Err(_))
    };
    let cut = tokio::time::timeout(Duration::from_secs(30), closed_slow).await;
    assert!(matches!(cut, Ok(true)), "a slow head was not cut");
    assert!(started.elapsed() < Duration::from_secs(20));

    let (answer, _) = http::raw(
        addr,
        b"POST /v1/services/echo/events/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n1",
        Duration::from_secs(30),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let (answer, ended) = http::raw(
        addr,
        b"GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        Duration::from_secs(30),
    )
    .await;
    assert!(ended, "an idle kept-alive connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Through it all, the neighbour answers.
    assert_eq!(call(addr, "echo", "echo", "7").await.body, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_with_their_types() {
    let dir = scratch_dir("gateway-static");
    std::fs::write(dir.join("index.html"), "<!doctype html><p>hi</p>").unwrap();
    std::fs::write(dir.join("app.js"), "console.log(1)").unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    // A link that leads out of the folder is not followed.
    let outside = scratch_dir("gateway-outside");
    std::fs::write(outside.join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("link.txt")).unwrap();
    let (_node, addr) = host(&format!("http_static = {:?}", dir.display().to_string())).await;
    assert_eq!(request(addr, "GET", "/link.txt", &[], "").await.status, 404);
    let index = request(addr, "GET", "/", &[], "").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
    assert!(index.body.contains("hi"));
    let js = request(addr, "GET", "/app.js", &[], "").await;
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(
        request(addr, "GET", "/missing.css", &[], "").await.status,
        404
    );
    assert_eq!(request(addr, "GET", "/sub", &[], "").await.status, 404);
    assert_eq!(
        request(addr, "GET", "/%2e%2e/%2e%2e/etc/passwd", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        request(addr, "POST", "/index.html", &[], "").await.status,
        405
    );
}

#[test]
fn every_documented_route_exists_and_every_route_is_documented() {
    let doc = std::fs::read_to_string(wasmwire_tests::root().join("docs/gateway.md")).unwrap();
    // The OpenAPI block's paths: lines `  /path:` under `paths:`, then `    method:`.
    let api = doc
        .split("```yaml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/gateway.md has an OpenAPI block in ```yaml");
    let mut documented = Vec::new();
    let mut path = None;
    for line in api.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent == 2 && t.starts_with('/') && t.ends_with(':') {
            path = Some(t.trim_end_matches(':').to_string());
        } else if indent == 4
            && let Some(p) = &path
            && let Some(m) = ["get:", "post:", "put:", "delete:", "patch:"]
                .iter()
                .find(|m| t == **m)
        {
            documented.push((m.trim_end_matches(':').to_uppercase(), p.clone()));
        } else if indent == 0 && !t.is_empty() {
            path = None;
        }
    }
    let mut served: Vec<(String, String)> = wasmwire::gateway::routes::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(
        documented, served,
        "docs/gateway.md and the gateway's routes differ"
    );
}

/// Waits for a line of the CLI member's output that contains `text`.
async fn cli_sees(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, text: &str) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("the CLI member got a message in time")
            .expect("the CLI member is running");
        if line.contains(text) {
            return;
        }
    }
}

/// `examples/chat-web` in a real headless Chromium: two pages and a `wasmwire send`
/// member in the same room see each other's messages; a screenshot of the first page is
/// saved to `target/screenshots/chat-web.png`. Skipped, saying so, where no browser could
/// be installed (`make browser`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_and_a_cli_member_chat() {
    use std::io::{BufRead, Write};
    let Some(chromium) = wasmwire_tests::browser::find() else {
        eprintln!(
            "SKIPPED: no Chromium (`make browser` installs Debian's chromium package; or set CHROMIUM=/path)"
        );
        return;
    };
    let page_dir = wasmwire_tests::root().join("examples/chat-web");
    let text = wasmwire_tests::peer_manifest(
        "127.0.0.1:0",
        &[],
        &format!(
            "http = \"127.0.0.1:0\"\nhttp_static = {:?}",
            page_dir.display().to_string()
        ),
        "[[service]]\nname = \"lobby\"\ncomponent = \"{service:chat}\"\nchannel = 4\nexpose = true\n",
    );
    let node = wasmwire_tests::start_text(&text).await;
    let http = node.http_addr().unwrap();
    let quic = wasmwire_tests::addr_of(&node);

    let mut browser =
        wasmwire_tests::browser::Browser::launch(&chromium, &scratch_dir("chromium")).await;
    let ann = browser.open(&format!("http://{http}/?name=ann")).await;
    let bob = browser.open(&format!("http://{http}/?name=bob")).await;
    let joined = "document.querySelector('#status').dataset.state === 'connected'";
    browser
        .wait_for(&ann, joined, Duration::from_secs(60))
        .await;
    browser
        .wait_for(&bob, joined, Duration::from_secs(60))
        .await;

    // The CLI member: every stdin line is a `say`, every message it gets a stdout line.
    let mut cli = std::process::Command::new(wasmwire_tests::wasmwire_bin())
        .args(["send", &quic, "lobby", "say", "-", "--name", "cli"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start wasmwire send");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = cli.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut cli_in = cli.stdin.take().unwrap();
    let members_include = |who: &str| {
        format!(
            "[...document.querySelectorAll('#members li')].some(li => li.textContent === '{who}')"
        )
    };
    browser
        .wait_for(&ann, &members_include("cli"), Duration::from_secs(60))
        .await;

    let say = |text: &str| {
        format!(
            "(() => {{ const t = document.querySelector('#text'); t.value = {text:?}; \
             document.querySelector('#send').click(); return true; }})()"
        )
    };
    let shows =
        |text: &str| format!("document.querySelector('#messages').innerText.includes({text:?})");

    browser.eval(&ann, &say("hello from ann")).await;
    browser
        .wait_for(&bob, &shows("hello from ann"), Duration::from_secs(30))
        .await;
    cli_sees(&mut lines, "hello from ann").await;

    browser.eval(&bob, &say("hello from bob")).await;
    browser
        .wait_for(&ann, &shows("hello from bob"), Duration::from_secs(30))
        .await;
    cli_sees(&mut lines, "hello from bob").await;

    writeln!(cli_in, "hello from the terminal").unwrap();
    cli_in.flush().unwrap();
    for page in [&ann, &bob] {
        browser
            .wait_for(
                page,
                &shows("hello from the terminal"),
                Duration::from_secs(30),
            )
            .await;
    }
    for who in ["ann", "bob", "cli"] {
        browser
            .wait_for(&ann, &members_include(who), Duration::from_secs(30))
            .await;
    }
    let shot = wasmwire_tests::root().join("target/screenshots/chat-web.png");
    browser.screenshot(&ann, &shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    let _ = cli.kill();
    let _ = cli.wait();
}

/// HTTPS with `http_cert`/`http_key` (a self-signed pair for `localhost`, in
/// `tests/fixtures/tls/`), checked by a client that trusts only that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_with_the_configured_certificate() {
    use http_body_util::BodyExt;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let dir = wasmwire_tests::root().join("tests/fixtures/tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (_node, addr) = host(&format!(
        "http_cert = {:?}\nhttp_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake with the configured certificate");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/services/echo/events/echo")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"[1,2]",
        )))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"[1,2]");

    // Plain HTTP on the HTTPS port gets no answer, and the port keeps serving.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "plain HTTP on the HTTPS port was left open");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    let again = connector
        .connect(
            ServerName::try_from("localhost").unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await;
    assert!(again.is_ok(), "the HTTPS port stopped serving");
}

/// A WebSocket whose client reads nothing while the service sends is closed at the write
/// bound, and the service sees its session end; a gateway that stops closes its sockets
/// with "the host is stopping", and their services see the ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_and_stopped_sockets_end_their_sessions() {
    let (node, _) = host("").await;
    let gateway = quick_gateway(&node).await;
    let addr = gateway.local_addr();
    let sessions_of = |service: &str| {
        let (list, _) = node.directory().list_sessions(1000);
        list.iter().filter(|s| s.service == service).count()
    };
    let mut stuck = websocket(addr, "/v1/services/bad/session").await.unwrap();
    next_json(&mut stuck, Duration::from_secs(10))
        .await
        .expect("accepted");
    // The service floods the socket, flood after flood, until the socket's buffers are
    // full and the writer is stuck; the client reads none of it. Half a second later the
    // socket is closed, and the next flood finds no session.
    let started = Instant::now();
    let mut floods = 0;
    while sessions_of("bad") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stuck socket's session did not end after {floods} floods"
        );
        let a = call(addr, "bad", "sendflood", "null").await;
        assert_eq!(a.status, 200, "{a:?}");
        floods += 1;
    }

    let mut open = websocket(addr, "/v1/services/echo/session").await.unwrap();
    next_json(&mut open, Duration::from_secs(10))
        .await
        .expect("accepted");
    assert_eq!(sessions_of("echo"), 1);
    drop(gateway);
    let (code, reason) = close_of(&mut open).await;
    assert_eq!((code, reason.as_str()), (1001, "the host is stopping"));
    wasmwire_tests::wait_until(
        Duration::from_secs(10),
        "the echo session to end",
        || async { (sessions_of("echo") == 0).then_some(()) },
    )
    .await;
    drop(stuck);
}
