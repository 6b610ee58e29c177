//! What a running host tells about itself: the Prometheus endpoint (`[host] metrics`),
//! scraped over real HTTP and read with a real Prometheus text parser, and the `stats`
//! answer on channel 0 that `wasmwire top` reads.

use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmwire::broker::Ask;
use wasmwire::wire::Control;
use wasmwire_tests::client::client_of;
use wasmwire_tests::start_peer;

const HOST: &str = r#"
[[service]]
name = "counter"
component = "{service:counter}"
channel = 3
expose = true

[[service]]
name = "echo"
component = "{service:echo}"
channel = 2
expose = true

[[service]]
name = "bad"
component = "{guest:misbehave}"
channel = 4
expose = true
restart_backoff = "10ms"
"#;

/// GETs `path` from `addr` and returns (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("answered in time")
        .expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape, by metric name and label set (`k=v,...` sorted).
fn samples(body: &str) -> HashMap<(String, String), f64> {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected value {other:?}"),
            };
            ((s.metric, labels.join(",")), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_parses_and_counts_the_calls_made() {
    let host = start_peer(&[], "metrics = \"127.0.0.1:0\"", HOST).await;
    let addr = host.metrics_addr().expect("metrics are on");
    for _ in 0..5 {
        host.request("counter", "incr", "{}").await.unwrap();
    }
    // A trap, contained and counted; the next call restarts the instance.
    assert!(host.request("bad", "panic", "null").await.is_err());
    host.request("bad", "ok", "null").await.unwrap();
    // A client on the network: its session messages and requests count for its link.
    let client = client_of(&host).await;
    let mut session = client
        .net
        .open_client_session(client.conn, "echo", "tester", 1 << 20)
        .await
        .unwrap();
    for i in 0..3 {
        session
            .send("echo", format!("ping {i}").into_bytes())
            .unwrap();
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), session.events.recv())
            .await
            .expect("echoed in time")
            .expect("a message");
    }

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let s = samples(&body);
    let at = |name: &str, labels: &str| -> f64 {
        *s.get(&(name.to_string(), labels.to_string()))
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in\n{body}"))
    };
    // Counters carry `_total` in the exposition; the parser keeps the name as written.
    let calls = at("wasmwire_instance_calls_total", "instance=counter");
    assert!(calls >= 6.0, "wakeup + 5 events, got {calls}");
    assert_eq!(at("wasmwire_instance_wakes_total", "instance=counter"), 1.0);
    assert_eq!(
        at("wasmwire_instance_errors_total", "instance=counter"),
        0.0
    );
    assert_eq!(at("wasmwire_instance_traps_total", "instance=bad"), 1.0);
    assert_eq!(at("wasmwire_instance_restarts_total", "instance=bad"), 1.0);
    assert!(at("wasmwire_instance_errors_total", "instance=bad") >= 1.0);
    assert_eq!(at("wasmwire_instance_awake", "instance=counter"), 1.0);
    assert!(at("wasmwire_instance_memory_bytes", "instance=counter") >= 65536.0);
    assert_eq!(
        at("wasmwire_instance_mailbox_depth", "instance=counter"),
        0.0
    );
    assert!(at("wasmwire_awake_instances", "") >= 3.0);
    let client_id = client.net.id().to_string();
    let link = format!("peer={client_id},role=client");
    assert_eq!(at("wasmwire_peer_messages_received_total", &link), 3.0);
    assert_eq!(at("wasmwire_peer_messages_sent_total", &link), 3.0);
    assert!(at("wasmwire_peer_control_received_total", &link) >= 1.0);
    assert!(at("wasmwire_peer_received_bytes_total", &link) > 0.0);
    assert!(at("wasmwire_peer_rtt_seconds", &link) > 0.0);
    assert_eq!(at("wasmwire_handshakes_refused_total", ""), 0.0);

    // Anything else gets a clear status, and the endpoint keeps serving.
    assert_eq!(get(addr, "/nope").await.0, "HTTP/1.1 404 Not Found");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\xff\xff\xff\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(get(addr, "/metrics").await.0, "HTTP/1.1 200 OK");

    session.close();
    client.close().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_channel_0_give_instances_and_links() {
    let host = start_peer(&[], "", HOST).await;
    host.request("counter", "incr", "{}").await.unwrap();
    let client = client_of(&host).await;
    let stats = match client
        .net
        .ask(client.conn, Ask::Stats, Duration::from_secs(10))
        .await
    {
        Ok(Control::Stats { stats, .. }) => stats,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats.host, host.peer_id().unwrap().to_string());
    assert_eq!(stats.total_instances, 3);
    let names: Vec<&str> = stats.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["counter", "echo", "bad"]);
    let counter = &stats.instances[0];
    assert_eq!((counter.state.as_str(), counter.awake), ("awake", 1));
    assert!(counter.calls >= 2, "{counter:?}");
    assert_eq!(stats.instances[1].state.as_str(), "asleep");
    let me = client.net.id().to_string();
    let link = stats
        .peers
        .iter()
        .find(|p| p.peer == me)
        .expect("the asking client is listed");
    assert_eq!(link.role, wasmwire::wire::Role::Client);
    assert!(link.rtt_us > 0 && link.control_in >= 1, "{link:?}");
    client.close().await;
    host.shutdown().await;
}
