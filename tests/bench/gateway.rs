//! `make bench`, the gateway: what an HTTP or WebSocket client gets, each figure beside a
//! bare server measured in the same run (the same hyper or tungstenite, the same client,
//! the same bytes), alternated in rounds, best of each.
//!
//! (r) requests per second to `echo` through `POST /v1/services/echo/events/echo` on 64
//!     kept-alive connections, and p50 / p99 latency, vs a bare hyper server that answers
//!     each request with its own body;
//! (s) WebSocket messages per second one way, a client to the bench guest's counting
//!     session (64-byte payloads in text envelopes), vs a bare tungstenite server that
//!     counts the frames.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use wasmwire_tests::bench::{pct, us};
use wasmwire_tests::http::{Http, websocket};
use wasmwire_tests::{env_or, json, start};

const ROUNDS: usize = 3;
const CONNECTIONS: usize = 64;

fn row(name: &str, value: String, baseline: String, ratio: String, target: &str) {
    println!("{name:<44} {value:>14} {baseline:>22} {ratio:>9}   {target}");
}

fn main() {
    wasmwire_tests::bench::on_two_threads(run());
}

/// The sink's count of messages. Its mailbox may be full of the flood being counted: a
/// `busy` answer is asked again.
async fn count(node: &wasmwire::node::Node) -> u64 {
    loop {
        match node.request("sink", "count", "null").await {
            Ok(reply) => return json(&reply).as_u64().expect("a count"),
            Err(wasmwire::runtime::instance::CallError::Busy) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => panic!("count: {e}"),
        }
    }
}

/// A loopback listener handing each connection to `serve` on a task of its own.
async fn listen<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// A bare hyper server: every request is answered with its own body.
async fn bare_http() -> SocketAddr {
    listen(|tcp| async move {
        let service =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                let mut r = hyper::Response::new(Full::new(body));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, hyper::Error>(r)
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// A bare tungstenite server: counts the frames of each socket and, at `n`, answers one.
async fn bare_ws(n: u64) -> SocketAddr {
    listen(move |tcp| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let mut count = 0u64;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Text(_) | Message::Binary(_)) {
                count += 1;
                if count == n {
                    let _ = ws.send(Message::text("done")).await;
                }
            }
        }
    })
    .await
}

/// 64 connections each sending `per` requests one after another: requests per second and
/// every latency, sorted.
async fn http_load(addr: SocketAddr, path: &str, per: usize) -> (f64, Vec<Duration>) {
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(Http::connect(addr).await);
    }
    let path = path.to_string();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    let a = c
                        .request(
                            "POST",
                            &path,
                            &[("content-type", "application/json")],
                            Bytes::from(format!("{{\"n\":{i}}}")),
                        )
                        .await;
                    assert_eq!(a.status, 200, "{a:?}");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// Sends `n` text-envelope frames of a 64-byte payload on one socket and waits until the
/// other end says it has them all: messages per second.
async fn ws_one_way<F, Fut>(mut ws: wasmwire_tests::http::Socket, n: u64, done: F) -> f64
where
    F: FnOnce(wasmwire_tests::http::Socket) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let frame = serde_json::json!({"kind": "data", "payload": "x".repeat(64)}).to_string();
    let started = Instant::now();
    for _ in 0..n {
        ws.feed(Message::text(frame.clone())).await.unwrap();
    }
    ws.flush().await.unwrap();
    done(ws).await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn run() {
    let per = env_or("BENCH_HTTP_PER_CONNECTION", 200usize);
    let ws_n = env_or("BENCH_WS_MESSAGES", 200_000u64);
    let node = start(
        "[host]\nmax_awake = 32\nhttp = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"echo\"\ncomponent = \"{service:echo}\"\nchannel = 2\nexpose = true\nmailbox = 4096\n\
         [[service]]\nname = \"sink\"\ncomponent = \"{guest:bench}\"\nchannel = 3\nexpose = true\nmailbox = 4096\n",
    )
    .await;
    let gateway = node.http_addr().unwrap();
    let bare = bare_http().await;
    let bare_socket = bare_ws(ws_n).await;
    let path = "/v1/services/echo/events/echo";
    // Warm both up: the echo instance awake, connections' first requests done.
    http_load(gateway, path, 5).await;
    http_load(bare, path, 5).await;

    println!(
        "{:<44} {:>14} {:>22} {:>9}   target",
        "gateway (best of 3 rounds)", "wasmwire", "baseline", "ratio"
    );
    let (mut ours, mut theirs) = ((0.0f64, Vec::new()), (0.0f64, Vec::new()));
    for _ in 0..ROUNDS {
        let r = http_load(gateway, path, per).await;
        if r.0 > ours.0 {
            ours = r;
        }
        let r = http_load(bare, path, per).await;
        if r.0 > theirs.0 {
            theirs = r;
        }
    }
    row(
        "(r) requests/s, 64 kept-alive connections",
        format!("{:.0}/s", ours.0),
        format!("{:.0}/s bare hyper", theirs.0),
        format!("{:.2}x", ours.0 / theirs.0),
        ">= 0.5x",
    );
    row(
        "    latency p50 / p99",
        format!("{} / {}", us(pct(&ours.1, 0.5)), us(pct(&ours.1, 0.99))),
        format!("{} / {}", us(pct(&theirs.1, 0.5)), us(pct(&theirs.1, 0.99))),
        String::new(),
        "",
    );

    let (mut ours, mut theirs) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        let before = count(&node).await;
        let ws = websocket(gateway, "/v1/services/sink/session")
            .await
            .unwrap();
        let rate = ws_one_way(ws, ws_n, |ws| async {
            // Held open until the sink has counted them all (closing would end the session).
            while count(&node).await < before + ws_n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(ws);
        })
        .await;
        ours = ours.max(rate);
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{bare_socket}/"),
            tokio::net::TcpStream::connect(bare_socket).await.unwrap(),
        )
        .await
        .unwrap();
        let rate = ws_one_way(ws, ws_n, |mut ws| async move {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Text(_)) {
                    break;
                }
            }
        })
        .await;
        theirs = theirs.max(rate);
    }
    row(
        "(s) WebSocket messages/s one way, 64 B",
        format!("{:.2} M/s", ours / 1e6),
        format!("{:.2} M/s bare tungstenite", theirs / 1e6),
        format!("{:.2}x", ours / theirs),
        "measured",
    );
    drop(node);
}
