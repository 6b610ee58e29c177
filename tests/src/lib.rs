//! Helpers for the integration tests and benchmarks: where the built guests are, and a
//! way to start a real host from manifest text.

pub mod bench;
pub mod browser;
pub mod chaos;
pub mod client;
pub mod hostile;
pub mod http;
pub mod ledger;
pub mod process;
pub mod sim;
pub mod soak;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use wasmwire::manifest;
use wasmwire::node::Node;
use wasmwire::runtime::instance::LifecycleEvent;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A bare *synchronous* instance of the component at `wasm` — the default engine (no async
/// support, so no fibers; the default allocator), every import trapping — and its
/// `lifecycle` export functions `names`: what a plain wasmtime embedding pays for a call,
/// the baseline the benchmarks set the host's dispatch beside.
pub fn sync_exports<const N: usize>(
    wasm: &Path,
    names: [&str; N],
) -> (
    wasmtime::Store<()>,
    wasmtime::component::Instance,
    [wasmtime::component::ComponentExportIndex; N],
) {
    use wasmtime::component::{Component, Linker};
    let engine = wasmtime::Engine::default();
    let component = Component::from_file(&engine, wasm).unwrap();
    let mut linker: Linker<()> = Linker::new(&engine);
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = linker.instantiate(&mut store, &component).unwrap();
    // The version the component was built against: any 0.1.x.
    let lifecycle: String = component
        .component_type()
        .exports(&engine)
        .map(|(name, _)| name.to_string())
        .find(|name| name.starts_with("wasmwire:service/lifecycle@0.1."))
        .expect("lifecycle export");
    let iface = instance
        .get_export_index(&mut store, None, &lifecycle)
        .expect("lifecycle export");
    let indices = names.map(|name| {
        instance
            .get_export_index(&mut store, Some(&iface), name)
            .unwrap_or_else(|| panic!("{name} export"))
    });
    (store, instance, indices)
}

/// A sample service built by `make services`.
pub fn service(name: &str) -> PathBuf {
    let p = root().join("target/services").join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make services` (make test does)",
        p.display()
    );
    p
}

/// A test-only guest built by `make test-guests`.
pub fn test_guest(name: &str) -> PathBuf {
    let p = root()
        .join("target/test-guests")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make test-guests` (make test does)",
        p.display()
    );
    p
}

/// A fresh folder under `target/test-runs`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = root()
        .join("target/test-runs")
        .join(format!("{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Manifest text with `{service:NAME}` and `{guest:NAME}` replaced by component paths, and
/// a `[host]` section (a small pool, the shared compiled cache) prepended unless present.
pub fn manifest_text(body: &str) -> String {
    let mut text = body.to_string();
    while let Some(start) = text.find("{service:").or_else(|| text.find("{guest:")) {
        let end = start + text[start..].find('}').expect("closing brace");
        let (kind, name) = text[start + 1..end].split_once(':').expect("kind:name");
        let path = if kind == "service" {
            service(name)
        } else {
            test_guest(name)
        };
        text.replace_range(start..end + 1, &path.display().to_string());
    }
    if !text.contains("[host]") {
        let cache = root().join("target/test-cache");
        text = format!(
            "[host]\nmax_awake = 32\ncache_dir = {:?}\n\n{text}",
            cache.display().to_string()
        );
    }
    text
}

/// Writes manifest text to a scratch folder and loads it.
pub fn load_manifest(body: &str) -> manifest::Manifest {
    let dir = scratch_dir("manifest");
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, manifest_text(body)).expect("write manifest");
    match manifest::load(&path) {
        Ok(m) => m,
        Err(e) => panic!("test manifest is invalid:\n{e}"),
    }
}

/// Starts a real host from manifest text.
pub async fn start(body: &str) -> Node {
    match Node::start(&load_manifest(body)).await {
        Ok(n) => n,
        Err(e) => panic!("host did not start:\n{e}"),
    }
}

/// Waits for a lifecycle event matching `want`, failing after `within`.
pub async fn wait_for(
    events: &mut broadcast::Receiver<LifecycleEvent>,
    within: Duration,
    want: impl Fn(&LifecycleEvent) -> bool,
) -> LifecycleEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if want(&e) => return e,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("event stream ended: {e}"),
            Err(_) => panic!("no matching lifecycle event within {within:?}"),
        }
    }
}

/// Parses a JSON reply.
pub fn json(reply: &str) -> serde_json::Value {
    serde_json::from_str(reply).unwrap_or_else(|e| panic!("reply {reply:?} is not JSON: {e}"))
}

/// A free UDP port on 127.0.0.1 (free when asked; tests that need a port known before the
/// host starts use it).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP socket")
}

/// Manifest text for a host on the network: listens on `listen`, has its own key in a
/// scratch folder (or `key`), dials `peers`, and notices a dead peer within 1.5 s. `extra`
/// adds `[host]` fields; one of the defaults written here (`max_awake`, `keep_alive`,
/// `peer_timeout`) given in `extra` replaces the default.
pub fn peer_manifest(listen: &str, peers: &[String], extra: &str, body: &str) -> String {
    peer_manifest_with_key(listen, peers, extra, body).0
}

/// Like [`peer_manifest`], also returning where the host's key will be.
pub fn peer_manifest_with_key(
    listen: &str,
    peers: &[String],
    extra: &str,
    body: &str,
) -> (String, PathBuf) {
    let dir = scratch_dir("peer");
    let cache = root().join("target/test-cache");
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let mut defaults = String::new();
    // Each host its own data dir: manifests written side by side would otherwise share
    // `.wasmwire/data`, which only one host may hold.
    let data = format!("{:?}", dir.join("data").display().to_string());
    for (field, value) in [
        ("max_awake", "32"),
        ("keep_alive", "\"250ms\""),
        ("peer_timeout", "\"1500ms\""),
        ("data_dir", data.as_str()),
    ] {
        let given = extra
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == field));
        if !given {
            defaults.push_str(&format!("{field} = {value}\n"));
        }
    }
    let head = format!(
        "[host]\ncache_dir = {:?}\nlisten = {listen:?}\nidentity = {:?}\npeers = [{}]\n\
         {defaults}{extra}\n\n",
        cache.display().to_string(),
        dir.join("host.key").display().to_string(),
        peers.join(", ")
    );
    (
        manifest_text(&format!("{head}{body}")),
        dir.join("host.key"),
    )
}

/// The `wasmwire` binary built beside the test binary (`make test` builds it first).
pub fn wasmwire_bin() -> PathBuf {
    // The test binary lives in target/<profile>/deps; the host binary one folder up.
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("wasmwire");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`make test` does: cargo build -p wasmwire)",
        bin.display()
    );
    bin
}

/// An environment variable parsed as `T`, or `default` when it is unset or unparsable (the
/// knobs of `make sim`, `make chaos`).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` to completion on a fresh multi-threaded runtime (the `main` of a benchmark).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Taken by the tests that measure this whole test process (its resident memory, a good
/// client's rate against a quiet baseline) or load it heavily (thousands of sockets): the
/// integration tests share one process, so run side by side such a test is another's
/// noise — a filtered run that put the descriptor-exhaustion test beside the hostile-peer
/// suite saw the latter's host "grow" 268 MiB. They take turns.
pub static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The resident set size of this process, in bytes.
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Starts a host on the network (see [`peer_manifest`]) on 127.0.0.1 with any free port.
pub async fn start_peer(peers: &[String], extra: &str, body: &str) -> Node {
    start_text(&peer_manifest("127.0.0.1:0", peers, extra, body)).await
}

/// Starts a host from complete manifest text (placeholders already replaced), written to
/// a scratch folder so that relative paths and diagnostics behave as for a user's file.
pub async fn start_text(text: &str) -> Node {
    let dir = scratch_dir("peer-manifest");
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, text).expect("write manifest");
    let m = match manifest::load(&path) {
        Ok(m) => m,
        Err(e) => panic!("test manifest is invalid:\n{e}"),
    };
    match Node::start(&m).await {
        Ok(n) => n,
        Err(e) => panic!("host did not start:\n{e}"),
    }
}

/// `host:port` of a host's listener.
pub fn addr_of(node: &Node) -> String {
    node.local_addr().expect("the host listens").to_string()
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `within`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` has a ready connection to a host with id `peer`.
pub async fn wait_connected(node: &Node, peer: wasmwire::wire::PeerId, within: Duration) {
    let net = node.net().expect("a network").clone();
    wait_until(within, "peer connected", || {
        let net = net.clone();
        async move {
            net.connections()
                .await
                .iter()
                .any(|(_, p, r)| *p == peer && *r == wasmwire::wire::Role::Host)
                .then_some(())
        }
    })
    .await
}

/// Threads that keep every core busy until dropped: the noisy neighbour of the liveness
/// tests (a build beside the host, another tenant).
pub struct Busy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    /// `per_core` spinning threads for each core of the machine.
    pub fn start(per_core: usize) -> Busy {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..cores * per_core)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("busy-{i}"))
                    .spawn(move || {
                        let mut x = 1u64;
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..10_000 {
                                x = std::hint::black_box(x.wrapping_mul(6364136223846793005));
                            }
                        }
                    })
                    .expect("spawn a busy thread")
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The sink's count of `data` messages (the bench guest's `count` event).
pub async fn sink_count(node: &Node, sink: &str) -> u64 {
    json(&node.request(sink, "count", "null").await.expect("count"))
        .as_u64()
        .expect("a count")
}

/// A flood that stopped moving: what each side looked like when it was given up.
#[derive(Debug)]
pub struct Stall {
    /// Messages the sink had counted of the flood.
    pub delivered: u64,
    /// Messages in the flood.
    pub n: u64,
    /// Sessions the flood was spread over.
    pub sessions: usize,
    /// Whether the flooder's call had returned.
    pub returned: bool,
    /// Sessions open on the flooder's host and on the sink's.
    pub open: (usize, usize),
    /// What each host's progress watchdog had counted (flooder's, sink's).
    pub stalls: (wasmwire::wire::StallFigures, wasmwire::wire::StallFigures),
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stalled: the sink stopped at {} of {} over {} session(s); the flood {}; \
             sessions open on A {}, on B {}; watchdog on A {:?}, on B {:?}",
            self.delivered,
            self.n,
            self.sessions,
            if self.returned {
                "returned"
            } else {
                "was still sending"
            },
            self.open.0,
            self.open.1,
            self.stalls.0,
            self.stalls.1
        )
    }
}

/// How a flood went: from the request to the sink's last message, and how much of that the
/// flooder spent opening its sessions (timed in the guest).
#[derive(Debug, Clone, Copy)]
pub struct Flooded {
    /// From the request until the sink had every message.
    pub took: Duration,
    /// The flooder's `connect`s, one after the other, before it sent anything.
    pub connects: Duration,
}

/// The flooder (bench guest) on `a` sends `n` 64-byte messages to `sink` on `b` (peer id
/// `b_id`) over `sessions` sessions; returns how long until the sink had them all, or the
/// stall if the sink's count did not move for `patience`.
pub async fn flood(
    a: &std::sync::Arc<Node>,
    b: &Node,
    b_id: &str,
    n: u64,
    sessions: usize,
    patience: Duration,
) -> Result<Flooded, Stall> {
    let start = sink_count(b, "sink").await;
    let params = serde_json::json!({
        "service": "sink", "peer": b_id, "n": n, "size": 64, "sessions": sessions
    })
    .to_string();
    let t = std::time::Instant::now();
    let sender = a.clone();
    let sent = tokio::spawn(async move { sender.request("flooder", "flood", &params).await });
    let (mut last, mut moved) = (start, std::time::Instant::now());
    loop {
        let now = sink_count(b, "sink").await;
        if now >= start + n {
            break;
        }
        if now != last {
            (last, moved) = (now, std::time::Instant::now());
        }
        if moved.elapsed() > patience {
            return Err(Stall {
                delivered: now - start,
                n,
                sessions,
                returned: sent.is_finished(),
                open: (
                    a.directory().sessions(1 << 16).0.len(),
                    b.directory().sessions(1 << 16).0.len(),
                ),
                stalls: (watchdog(a).await, watchdog(b).await),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t.elapsed();
    match sent.await {
        Ok(Ok(r)) => {
            if std::env::var_os("BENCH_DETAIL").is_some() {
                println!("detail: {sessions} session(s), {n} messages in {took:?}: {r}");
            }
            let connect_us = json(&r)["connect_us"].as_u64().unwrap_or(0);
            Ok(Flooded {
                took,
                connects: Duration::from_micros(connect_us),
            })
        }
        Ok(Err(e)) => panic!("the flood failed: {e}"),
        Err(e) => panic!("the flood task failed: {e}"),
    }
}

/// What `node`'s progress watchdog has counted (zeros for a host without a network).
async fn watchdog(node: &Node) -> wasmwire::wire::StallFigures {
    match node.net() {
        Some(net) => net.stats().await.stalls,
        None => Default::default(),
    }
}

/// The sink host (B) and flooder host (A) of the flood scenarios: `sink` on B takes up to
/// 2 048 sessions and a deep mailbox; `flooder` on A may use any peer's `sink`.
pub async fn flood_pair(sink_extra: &str) -> (Node, std::sync::Arc<Node>) {
    let b = start_peer(
        &[],
        "",
        &format!(
            r#"
[[service]]
name = "sink"
component = "{{guest:bench}}"
channel = 1
expose = true
mailbox = 1048576
max_sessions = 2048
call_timeout = "60s"
{sink_extra}
"#
        ),
    )
    .await;
    let a = start_peer(
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
"#,
    )
    .await;
    wait_connected(&a, b.peer_id().expect("an id"), Duration::from_secs(10)).await;
    (b, std::sync::Arc::new(a))
}

/// Starts a host on the data dir `data` with `host` lines added to `[host]` and the services
/// of `body` (`{guest:…}`/`{service:…}` resolved): a second host can start on the same data.
pub async fn start_on_data(data: &Path, host: &str, body: &str) -> Node {
    let text = format!(
        "[host]\ncache_dir = {:?}\ndata_dir = {:?}\n{host}\n\n{body}",
        root().join("target/test-cache").display().to_string(),
        data.display().to_string()
    );
    start_text(&manifest_text(&text)).await
}

/// Calls `event` on `service` and parses the JSON reply; panics (naming the call) on an error.
pub async fn ask(node: &Node, service: &str, event: &str, params: &str) -> serde_json::Value {
    json(
        &node
            .request(service, event, params)
            .await
            .unwrap_or_else(|e| panic!("{service} {event} {params}: {e}")),
    )
}

/// A host (a bare [`Net`]: the broker and QUIC, no runtime) with no services on a free loopback port, configured with `peers`.
pub fn bare_host(
    peers: &[std::net::SocketAddr],
    limits: wasmwire::broker::BrokerLimits,
) -> wasmwire::net::Net {
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    wasmwire::net::Net::start(
        wasmwire::net::NetConfig {
            role: wasmwire::wire::Role::Host,
            listen: Some(listen),
            advertise: None,
            identity: wasmwire::net::identity::Identity::generate().unwrap(),
            allow: vec![],
            peers: peers
                .iter()
                .map(|a| wasmwire::broker::PeerSpec {
                    addr: a.to_string(),
                    expected: None,
                })
                .collect(),
            transport: Default::default(),
            limits,
            alpn: wasmwire::wire::ALPN.to_vec(),
            resolver: None,
        },
        None,
    )
    .unwrap()
}

/// The hosts `net` has ready connections to.
pub async fn hosts_of(net: &wasmwire::net::Net) -> Vec<wasmwire::wire::PeerId> {
    net.connections()
        .await
        .into_iter()
        .filter(|(_, _, r)| *r == wasmwire::wire::Role::Host)
        .map(|(_, p, _)| p)
        .collect()
}

/// Waits (up to 20 s) until `net` has a ready connection to the host `peer`.
pub async fn wait_linked(net: &wasmwire::net::Net, peer: wasmwire::wire::PeerId, what: &str) {
    wait_until(Duration::from_secs(20), what, || async move {
        hosts_of(net).await.contains(&peer).then_some(())
    })
    .await;
}

/// Limits of a host that keeps no learned peers (so peer exchange tells it nothing) and
/// dials none: only the DHT can tell it where others are.
pub fn dht_only() -> wasmwire::broker::BrokerLimits {
    wasmwire::broker::BrokerLimits {
        max_learned: 0,
        max_peers: 1,
        ..Default::default()
    }
}

/// Sends `event` with `params` to `service` on whichever host runs it (`*/service`) from
/// `net`, as a service's request would go (a lookup runs if no connected host runs it);
/// the answer, or `None` if it failed.
pub async fn request_any(
    net: &wasmwire::net::Net,
    service: &str,
    event: &str,
    params: &str,
) -> Option<String> {
    use wasmwire::runtime::directory::{Peers, RemoteRequest, RemoteTarget};
    let request = RemoteRequest {
        target: RemoteTarget {
            peer: wasmwire::wire::PeerSel::Any,
            allowed: None,
            service: service.into(),
        },
        event: event.into(),
        params: params.into(),
        timeout: Duration::from_secs(20),
        chain: vec![],
        caller: "test".into(),
        session: None,
    };
    net.request(request).await.ok()
}
