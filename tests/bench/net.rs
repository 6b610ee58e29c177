//! `make bench`, second part: the network as users feel it. Two hosts in this process on
//! 127.0.0.1 over real QUIC, each figure beside raw quinn measured in the same run — the
//! same TLS (raw ed25519 keys), the same transport settings (`net::transport_config`), one
//! stream, 64-byte payloads in 68-byte frames — alternated in rounds, best of each.
//!
//! (g) messages per second one way, guest on host A to guest on host B, one session, vs raw
//!     quinn with one `write_all` per frame and with batched writes;
//! (h) round trip of a 64-byte message to `echo` on host B from a client, p50 / p99, vs a
//!     raw quinn echo on one stream;
//! (i) a `request` from a guest on A to a guest on B, p50 / p99 (timed in the guest), vs the
//!     same raw quinn echo;
//! (j) 1 000 sessions over one connection, aggregate messages per second once they are open
//!     (the flooder times its 1 000 `connect`s, one round trip each, and they are taken
//!     off: raw quinn opens a stream without a round trip), vs raw quinn on 1 000 streams,
//!     one write per frame; and the same with the connects;
//!     (`BENCH_ONLY=g` runs (g) alone, for a profiler, and `BENCH_ONLY=g-ours` only its
//!     wasmwire rounds; `BENCH_DETAIL=1` prints each flood.)
//! (k) from spawning `wasmwire run` to the first remote call answered (compiled cache warm),
//!     vs spawning the same binary for `--version` plus a raw quinn handshake and one echo.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmwire::broker::Ask;
use wasmwire::manifest::{PeerSpec, Transport};
use wasmwire::net::identity::{self, Identity};
use wasmwire::net::{Net, NetConfig};
use wasmwire::node::Node;
use wasmwire::wire::{self, Control, Role};
use wasmwire_tests::bench::{pct, us};
use wasmwire_tests::{addr_of, free_port, json, peer_manifest, scratch_dir, start_peer};

const ROUNDS: usize = 3;
/// A 64-byte payload with a 4-byte length in front, about what a data frame of 64 B is.
const FRAME: usize = 68;

fn row(name: &str, value: String, baseline: String, ratio: String, target: &str) {
    println!("{name:<44} {value:>14} {baseline:>22} {ratio:>9}   {target}");
}

fn main() {
    wasmwire_tests::bench::on_two_threads(run());
}

/// What the raw quinn server counted.
#[derive(Default)]
struct Sink {
    bytes: AtomicU64,
}

impl Sink {
    async fn wait_for(&self, total: u64) {
        while self.bytes.load(Ordering::Relaxed) < total {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// A raw quinn server: on each stream, the first byte says `S` (count what arrives) or
/// `E` (echo each 68-byte frame).
struct Raw {
    addr: std::net::SocketAddr,
    client: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    conn: quinn::Connection,
    sink: Arc<Sink>,
    _server: quinn::Endpoint,
}

impl Raw {
    /// A fresh connection to the raw server.
    async fn connect(&self) -> quinn::Connection {
        self.client
            .connect_with(self.client_config.clone(), self.addr, "wasmwire")
            .unwrap()
            .await
            .unwrap()
    }
}

fn raw_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let transport = Arc::new(wasmwire::net::transport_config(&Transport::default()).unwrap());
    let server_id = Identity::generate().unwrap();
    let tls = identity::server_config(&server_id, Arc::new(Default::default())).unwrap();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    server.transport_config(transport.clone());
    let client_id = Identity::generate().unwrap();
    let tls =
        identity::client_config(&client_id, Arc::new(Default::default()), wire::ALPN).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    client.transport_config(transport);
    (server, client)
}

async fn raw_server() -> Raw {
    let (server_config, client_config) = raw_configs();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let sink = Arc::new(Sink::default());
    let (endpoint, counted) = (server.clone(), sink.clone());
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(raw_stream(send, recv, counted.clone()));
                }
            });
        }
    });
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client
        .connect_with(client_config.clone(), addr, "wasmwire")
        .unwrap()
        .await
        .unwrap();
    Raw {
        addr,
        client,
        client_config,
        conn,
        sink,
        _server: server,
    }
}

async fn raw_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, sink: Arc<Sink>) {
    let mut mode = [0u8; 1];
    if recv.read_exact(&mut mode).await.is_ok() {
        raw_serve(&mut send, &mut recv, mode[0], &sink).await;
    }
    // Finish our side too, so the stream is done and frees its slot for the next round.
    let _ = send.finish();
}

async fn raw_serve(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    mode: u8,
    sink: &Sink,
) {
    match mode {
        b'S' => {
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                sink.bytes
                    .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
        }
        _ => {
            let mut frame = [0u8; FRAME];
            while recv.read_exact(&mut frame).await.is_ok() {
                if send.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn frame() -> Vec<u8> {
    let mut f = (64u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[7u8; 64]);
    f
}

/// Raw quinn, one way on `streams` streams, round-robin: seconds for `n` frames, written one
/// `write_all` each, or `batch` frames a write.
async fn raw_one_way(raw: &Raw, n: usize, streams: usize, batch: usize) -> f64 {
    // Each run on a fresh connection, as each wasmwire round starts with fresh streams.
    let conn = raw.connect().await;
    let mut sends = Vec::new();
    for _ in 0..streams {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"S").await.unwrap();
        sends.push((send, recv));
    }
    let chunk: Vec<u8> = frame().repeat(batch);
    let target = raw.sink.bytes.load(Ordering::Relaxed) + (n * FRAME) as u64;
    let t = Instant::now();
    let mut written = 0;
    let mut i = 0;
    while written < n {
        let (send, _) = &mut sends[i % streams];
        send.write_all(&chunk).await.unwrap();
        written += batch;
        i += 1;
    }
    raw.sink.wait_for(target).await;
    let s = t.elapsed().as_secs_f64();
    for (mut send, _) in sends {
        let _ = send.finish();
    }
    conn.close(0u32.into(), b"done");
    s
}

/// Raw quinn echo round trips of one 68-byte frame on one stream, sorted.
async fn raw_echo(raw: &Raw, n: usize) -> Vec<Duration> {
    let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
    send.write_all(b"E").await.unwrap();
    let f = frame();
    let mut back = [0u8; FRAME];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        send.write_all(&f).await.unwrap();
        recv.read_exact(&mut back).await.unwrap();
        times.push(t.elapsed());
    }
    let _ = send.finish();
    times.sort();
    times
}

/// wasmwire, one way: the flooder on A sends `n` 64-byte messages to the sink on B over
/// `sessions` sessions; seconds until the sink has handled them all. A round in which the
/// sink stops counting for 10 s fails the bench, with what each side looked like.
async fn flood(
    a: &Arc<Node>,
    b: &Node,
    b_id: &str,
    n: u64,
    sessions: usize,
) -> wasmwire_tests::Flooded {
    match wasmwire_tests::flood(a, b, b_id, n, sessions, Duration::from_secs(10)).await {
        Ok(f) => f,
        Err(stall) => panic!("{stall}"),
    }
}

fn client_net() -> Net {
    Net::start(
        NetConfig {
            role: Role::Client,
            listen: None,
            advertise: None,
            identity: Identity::generate().unwrap(),
            allow: vec![],
            peers: vec![],
            transport: Transport::default(),
            limits: Default::default(),
            alpn: wire::ALPN.to_vec(),
            resolver: None,
        },
        None,
    )
    .unwrap()
}

async fn run() {
    println!(
        "{:<44} {:>14} {:>22} {:>9}   target",
        "network benchmark", "wasmwire", "raw quinn", "ratio"
    );
    let raw = raw_server().await;
    let b = start_peer(
        &[],
        "",
        r#"
[[service]]
name = "sink"
component = "{guest:bench}"
channel = 1
expose = true
mailbox = 1048576
max_sessions = 2048
call_timeout = "60s"

[[service]]
name = "ponger"
component = "{guest:bench}"
channel = 2
expose = true

[[service]]
name = "echo"
component = "{service:echo}"
channel = 3
expose = true
"#,
    )
    .await;
    let b_id = b.peer_id().unwrap().to_string();
    let a = Arc::new(
        start_peer(
            &[addr_of(&b)],
            "",
            r#"
[[service]]
name = "flooder"
component = "{guest:bench}"
channel = 1
uses = ["*/sink"]
call_timeout = "60s"
request_timeout = "60s"

[[service]]
name = "pinger"
component = "{guest:bench}"
channel = 2
uses = ["*/ponger"]
call_timeout = "60s"
request_timeout = "60s"
"#,
        )
        .await,
    );
    wasmwire_tests::wait_connected(&a, b.peer_id().unwrap(), Duration::from_secs(10)).await;

    // (g) one way, one session / one stream.
    let n = 500_000u64;
    let (mut ours, mut per_frame, mut batched) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let only_ours = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "g-ours");
    for _ in 0..ROUNDS {
        if !only_ours {
            per_frame = per_frame.min(raw_one_way(&raw, n as usize, 1, 1).await);
            batched = batched.min(raw_one_way(&raw, n as usize, 1, 1024).await);
        }
        ours = ours.min(flood(&a, &b, &b_id, n, 1).await.took.as_secs_f64());
    }
    let rate = |s: f64| n as f64 / s / 1e6;
    row(
        "(g) one way 64 B, guest A -> guest B",
        format!("{:.2} M/s", rate(ours)),
        format!("{:.2} M/s per write", rate(per_frame)),
        format!("{:.2}x", rate(ours) / rate(per_frame)),
        ">= 3 M/s",
    );
    row(
        "    same, vs raw quinn batched writes",
        String::new(),
        format!("{:.2} M/s batched", rate(batched)),
        format!("{:.2}x", rate(ours) / rate(batched)),
        "",
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v.starts_with('g')) {
        return; // for a profiler: (g) alone
    }

    // (h) echo round trip from a client, and the raw echo it is measured against.
    let client = client_net();
    let (conn, _) = client
        .dial(&PeerSpec {
            addr: addr_of(&b),
            expected: None,
        })
        .await
        .unwrap();
    let mut echo = client
        .open_client_session(conn, "echo", "bench", 1 << 20)
        .await
        .unwrap();
    let payload = vec![7u8; 64];
    let trips = 10_000;
    let (mut ours_echo, mut raw_trips) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let r = raw_echo(&raw, trips).await;
        if round == 0 || pct(&r, 0.5) < pct(&raw_trips, 0.5) {
            raw_trips = r;
        }
        let mut times = Vec::with_capacity(trips);
        for _ in 0..trips {
            let t = Instant::now();
            echo.send("echo", payload.clone()).unwrap();
            match echo.events.recv().await {
                Some(wasmwire::runtime::session::ClientEvent::Message { .. }) => {}
                other => panic!("echo answered {other:?}"),
            }
            times.push(t.elapsed());
        }
        times.sort();
        if round == 0 || pct(&times, 0.5) < pct(&ours_echo, 0.5) {
            ours_echo = times;
        }
    }
    echo.close();
    row(
        "(h) echo round trip 64 B p50",
        us(pct(&ours_echo, 0.5)),
        us(pct(&raw_trips, 0.5)),
        format!(
            "{:.2}x",
            pct(&ours_echo, 0.5).as_secs_f64() / pct(&raw_trips, 0.5).as_secs_f64()
        ),
        "<= 1.2x",
    );
    row(
        "    p99",
        us(pct(&ours_echo, 0.99)),
        us(pct(&raw_trips, 0.99)),
        format!(
            "{:.2}x",
            pct(&ours_echo, 0.99).as_secs_f64() / pct(&raw_trips, 0.99).as_secs_f64()
        ),
        "",
    );

    // (i) remote request round trip, timed inside the guest.
    let mut best: Vec<u64> = Vec::new();
    for _ in 0..ROUNDS {
        let params =
            serde_json::json!({"service": format!("{b_id}/ponger"), "n": 5000}).to_string();
        let times: Vec<u64> =
            serde_json::from_value(json(&a.request("pinger", "ping", &params).await.unwrap()))
                .unwrap();
        if best.is_empty() || times[times.len() / 2] < best[best.len() / 2] {
            best = times;
        }
    }
    let p = |q: f64| Duration::from_nanos(best[((best.len() - 1) as f64 * q) as usize]);
    row(
        "(i) remote request round trip p50",
        us(p(0.5)),
        us(pct(&raw_trips, 0.5)),
        format!(
            "{:.2}x",
            p(0.5).as_secs_f64() / pct(&raw_trips, 0.5).as_secs_f64()
        ),
        "",
    );
    row(
        "    p99",
        us(p(0.99)),
        us(pct(&raw_trips, 0.99)),
        format!(
            "{:.2}x",
            p(0.99).as_secs_f64() / pct(&raw_trips, 0.99).as_secs_f64()
        ),
        "",
    );

    // (j) 1 000 sessions over one connection.
    let n = 200_000u64;
    let (mut ours, mut sending, mut raw_many) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut connects = Duration::MAX;
    for _ in 0..ROUNDS {
        raw_many = raw_many.min(raw_one_way(&raw, n as usize, 1000, 1).await);
        let f = flood(&a, &b, &b_id, n, 1000).await;
        ours = ours.min(f.took.as_secs_f64());
        sending = sending.min(f.took.saturating_sub(f.connects).as_secs_f64());
        connects = connects.min(f.connects);
    }
    let rate = |s: f64| n as f64 / s / 1e6;
    row(
        "(j) 1 000 sessions, aggregate one way",
        format!("{:.2} M/s", rate(sending)),
        format!("{:.2} M/s 1000 streams", rate(raw_many)),
        format!("{:.2}x", rate(sending) / rate(raw_many)),
        ">= 0.5x",
    );
    row(
        "    with the 1 000 connects (one at a time)",
        format!("{:.2} M/s", rate(ours)),
        format!("connects {:.0} ms", connects.as_secs_f64() * 1e3),
        format!("{:.2}x", rate(ours) / rate(raw_many)),
        "",
    );

    // (k) from `wasmwire run` to the first remote call answered.
    let (ours, baseline) = startup(&raw).await;
    row(
        "(k) `wasmwire run` to first remote answer",
        format!("{:.1} ms", ours * 1e3),
        format!("{:.1} ms spawn+handshake", baseline * 1e3),
        format!("{:.2}x", ours / baseline),
        "",
    );

    client.shutdown(Duration::from_secs(1)).await;
    if let Ok(a) = Arc::try_unwrap(a) {
        a.shutdown().await;
    }
    b.shutdown().await;
}

/// Best of rounds, seconds: a host process started to a `request` answered over QUIC; and
/// the baseline, a process spawned and exited plus a fresh raw quinn handshake and echo.
async fn startup(raw: &Raw) -> (f64, f64) {
    let bin = wasmwire_tests::wasmwire_bin();
    let port = free_port();
    let dir = scratch_dir("bench-startup");
    let manifest = dir.join("wasmwire.toml");
    std::fs::write(
        &manifest,
        peer_manifest(
            &format!("127.0.0.1:{port}"),
            &[],
            "",
            // In memory: this measures the call across hosts, not the disk.
            "[[service]]\nname = \"counter\"\ncomponent = \"{service:counter}\"\nchannel = 1\nexpose = true\noptions = { durable = false }\n",
        ),
    )
    .unwrap();
    let client = client_net();
    let spec = PeerSpec {
        addr: format!("127.0.0.1:{port}"),
        expected: None,
    };
    let (mut ours, mut baseline) = (f64::INFINITY, f64::INFINITY);
    // Round 0 fills the compiled cache and is not counted.
    for round in 0..=ROUNDS {
        let t = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .arg("run")
            .arg(&manifest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let conn = loop {
            if let Ok(Ok((conn, _))) =
                tokio::time::timeout(Duration::from_millis(50), client.dial(&spec)).await
            {
                break conn;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the host never answered"
            );
        };
        let answer = client
            .ask(
                conn,
                Ask::Request {
                    service: "counter".into(),
                    event: "incr".into(),
                    params: "null".into(),
                    chain: Vec::new(),
                    caller: Some("bench".into()),
                    session: None,
                },
                Duration::from_secs(10),
            )
            .await;
        let took = t.elapsed().as_secs_f64();
        assert!(matches!(answer, Ok(Control::Response { .. })), "{answer:?}");
        let _ = child.kill();
        let _ = child.wait();
        if round > 0 {
            ours = ours.min(took);
        }

        let t = Instant::now();
        let status = std::process::Command::new(&bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let conn = raw.connect().await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"E").await.unwrap();
        send.write_all(&frame()).await.unwrap();
        let mut back = [0u8; FRAME];
        recv.read_exact(&mut back).await.unwrap();
        let took = t.elapsed().as_secs_f64();
        conn.close(0u32.into(), b"");
        if round > 0 {
            baseline = baseline.min(took);
        }
    }
    client.shutdown(Duration::from_secs(1)).await;
    (ours, baseline)
}
