//! Resource exhaustion: a host process held to 256 file descriptors (`ulimit -n 256`) with
//! 1 000 clients connected and more metric scrapers than it has descriptors. QUIC takes one
//! UDP socket for every connection, so the clients cost the host no descriptors; the
//! scrapers (TCP) do, and the host must refuse those it cannot hold with a reason, keep
//! serving the connections it has, and recover when the scrapers leave.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmwire_tests::process::HostProcess;
use wasmwire_tests::{free_port, peer_manifest, scratch_dir, wait_until};

use wasmwire_tests::client::{TestClient, client_net};

/// The host's descriptor limit.
const FDS: u32 = 256;
/// Clients connected at once: several times the host's descriptors.
const CLIENTS: usize = 1000;
/// Idle scrapers held open: more than the host has descriptors.
const SCRAPERS: usize = 400;

const SERVICES: &str = r#"
[[service]]
name = "echo"
component = "{service:echo}"
channel = 2
expose = true
"#;

/// This test process holds a socket per client and per scraper: lift its own soft limit
/// to the hard one (a CI shell's soft limit is often 1 024). Returns the limit it has.
fn lift_own_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current
}

/// Connects `n` clients, twenty at a time (a debug build beside other work handshakes slowly).
async fn connect(addr: &str, n: usize) -> Vec<TestClient> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(20);
        let mut dials = Vec::with_capacity(batch);
        for _ in 0..batch {
            let spec = addr.parse().unwrap();
            dials.push(tokio::spawn(async move {
                let net = client_net(
                    wasmwire::net::identity::Identity::generate().unwrap(),
                    wasmwire::wire::ALPN,
                );
                let (conn, _) = net.dial(&spec).await.expect("a client connects");
                TestClient { net, conn }
            }));
        }
        for d in dials {
            clients.push(d.await.unwrap());
        }
    }
    clients
}

/// Closes every client at once (each waits a little for its close to be sent).
async fn close(clients: impl IntoIterator<Item = TestClient>) {
    let closing: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(c.close()))
        .collect();
    for c in closing {
        c.await.unwrap();
    }
}

/// Every client asks the host for its services and is answered.
async fn all_answered(clients: &[TestClient]) {
    for (i, c) in clients.iter().enumerate() {
        let services = c.services().await;
        assert!(
            services.iter().any(|s| s.name == "echo"),
            "client {i}: {services:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_out_of_descriptors_refuses_scrapes_with_a_reason_keeps_its_clients_and_recovers() {
    let _alone = wasmwire_tests::ALONE.lock().await;
    let own = lift_own_fd_limit();
    let needed = (CLIENTS + SCRAPERS + 256) as u64;
    assert!(
        own.is_none_or(|n| n >= needed),
        "this test holds a socket per client and per scraper: it needs {needed} descriptors \
         and may have only {own:?} (raise the hard limit: ulimit -Hn)"
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = scratch_dir("exhaustion");
    let manifest = dir.join("wasmwire.toml");
    std::fs::write(
        &manifest,
        // A generous handshake bound (it is `peer_timeout`): a thousand handshakes in a
        // debug build beside other tests are slow, and slowness is not what this tests.
        peer_manifest(
            &addr,
            &[],
            &format!("metrics = \"{metrics}\"\npeer_timeout = \"30s\""),
            SERVICES,
        ),
    )
    .unwrap();
    let host = HostProcess::start_with(&manifest, &dir.join("host.log"), Some(FDS));
    host.wait_listening().await;

    // A thousand clients on a host with 256 descriptors: QUIC needs none of them.
    let t = std::time::Instant::now();
    let clients = connect(&addr, CLIENTS).await;
    all_answered(&clients).await;
    eprintln!(
        "{CLIENTS} clients connected and answered in {:?}",
        t.elapsed()
    );

    // More idle scrapers than descriptors, topped up as the host closes idle ones.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let pressure = tokio::spawn(async move {
        let mut held: Vec<tokio::net::TcpStream> = Vec::new();
        loop {
            held.retain(|s| {
                let mut b = [0u8; 1];
                // Closed by the host (its head timeout) when a read says end of stream.
                !matches!(s.try_read(&mut b), Ok(0))
            });
            while held.len() < SCRAPERS {
                match tokio::net::TcpStream::connect(metrics).await {
                    Ok(s) => held.push(s),
                    Err(_) => break,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    wait_until(
        Duration::from_secs(60),
        "the host to say it is out of descriptors",
        || {
            let said = host.log_text().contains("cannot accept an HTTP connection");
            async move { said.then_some(()) }
        },
    )
    .await;
    assert!(
        host.log_text().contains("Too many open files"),
        "the reason is named: {}",
        host.log_text()
    );

    // Out of descriptors, it still serves every connection it has, and takes new clients.
    all_answered(&clients).await;
    let more = connect(&addr, 10).await;
    all_answered(&more).await;

    // The scrapers leave: scrapes are answered again.
    stop.send(true).unwrap();
    pressure.await.unwrap();
    wait_until(
        Duration::from_secs(60),
        "a scrape answered again",
        || async move {
            let mut s = tokio::net::TcpStream::connect(metrics).await.ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
                .await
                .ok()?
                .ok()?;
            text.starts_with("HTTP/1.1 200 OK").then_some(())
        },
    )
    .await;
    close(clients.into_iter().chain(more)).await;
    // And clients that come after the others left are served.
    let after = connect(&addr, 10).await;
    all_answered(&after).await;
    close(after).await;
    drop(host);
}
