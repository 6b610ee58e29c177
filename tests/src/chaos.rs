//! Faults between real hosts without `netem`: a UDP [`Relay`] in front of each host drops a
//! share of datagrams, delays them with jitter (which reorders them) and cuts chosen links on
//! command; [`run`] starts real hosts behind relays, each advertising its relay's address so
//! that every connection — dialled from configuration or learned by peer exchange — crosses
//! one, drives chat-like traffic and requests between them, and then checks every message.
//!
//! Traffic: on every host, one `spec` instance per other host (`to-J`) opens a session to the
//! `node` instance on host J and sends numbered `note` messages `I>J:K:SEQ` (K counts the
//! sessions of that pair); when a send fails or the session ends it opens a new one. An
//! `asker` instance on every host requests `name` of a random other host's `node`.
//! Afterwards each `node`'s record (every message and `on-disconnect`, in order) is matched
//! with what the senders were told: a message must arrive exactly once and in order within
//! its session, or its sender must have seen an error or `on-disconnect` on that session.

// Hosts are numbered, and the number indexes several tables at once (relays, nodes, ids,
// addresses): index loops read better here than zipped iterators.
#![allow(clippy::needless_range_loop)]

use crate::ledger::{check_session, parse_text, splitmix};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wasmwire::node::Node;
use wasmwire::wire::{PeerId, Role};

/// What a relay does to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Share of datagrams dropped (0.0–1.0), each way.
    pub loss: f64,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`; datagrams overtake each other.
    pub jitter: Duration,
}

/// Counts of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams passed on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped by `loss`.
    pub lost: AtomicU64,
    /// Datagrams dropped because their link was cut.
    pub cut: AtomicU64,
}

/// A datagram waiting out its delay.
struct Delayed {
    due: Instant,
    order: u64,
    via: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

struct RelayShared {
    faults: Faults,
    /// Client addresses whose link through this relay is cut (both ways).
    cut: Mutex<HashSet<SocketAddr>>,
    rng: Mutex<u64>,
    order: AtomicU64,
    stats: RelayStats,
    delayed: mpsc::UnboundedSender<Delayed>,
}

impl RelayShared {
    /// Drops, or schedules after the delay, one datagram of the link of `client`.
    fn pass(&self, client: SocketAddr, via: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8]) {
        if self.cut.lock().is_ok_and(|c| c.contains(&client)) {
            self.stats.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (roll, jitter) = {
            let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (splitmix(&mut s), splitmix(&mut s))
        };
        if (roll >> 11) as f64 / (1u64 << 53) as f64 <= self.faults.loss {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let jitter_ns = self.faults.jitter.as_nanos() as u64;
        let extra = if jitter_ns == 0 {
            0
        } else {
            jitter % jitter_ns
        };
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let _ = self.delayed.send(Delayed {
            due: Instant::now() + self.faults.delay + Duration::from_nanos(extra),
            order: self.order.fetch_add(1, Ordering::Relaxed),
            via: via.clone(),
            to,
            bytes: bytes.to_vec(),
        });
    }
}

/// A lossy UDP relay in front of one host: clients send to [`Relay::addr`]; each client gets
/// its own upstream socket to the host, so the host sees one address per client and the
/// relay knows which link every datagram belongs to.
pub struct Relay {
    front: Arc<UdpSocket>,
    shared: Arc<RelayShared>,
    tasks: Vec<JoinHandle<()>>,
    delayed: Option<mpsc::UnboundedReceiver<Delayed>>,
}

impl Relay {
    /// Binds the front socket on 127.0.0.1 (so its address can be advertised before the host
    /// behind it starts).
    pub async fn bind(faults: Faults, seed: u64) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Relay {
            front,
            shared: Arc::new(RelayShared {
                faults,
                cut: Mutex::new(HashSet::new()),
                rng: Mutex::new(seed),
                order: AtomicU64::new(0),
                stats: RelayStats::default(),
                delayed: tx,
            }),
            tasks: Vec::new(),
            delayed: Some(rx),
        })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.front
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Counts so far.
    pub fn stats(&self) -> &RelayStats {
        &self.shared.stats
    }

    /// Starts relaying to the host at `target`.
    pub fn start(&mut self, target: SocketAddr) {
        if let Some(rx) = self.delayed.take() {
            self.tasks.push(tokio::spawn(deliver(rx)));
        }
        let (front, shared) = (self.front.clone(), self.shared.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut back = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                let up = match upstream.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        let s = Arc::new(s);
                        upstream.insert(client, s.clone());
                        back.push(AbortOnDrop(tokio::spawn(relay_back(
                            s.clone(),
                            target,
                            client,
                            front.clone(),
                            shared.clone(),
                        ))));
                        s
                    }
                };
                shared.pass(client, &up, target, &buf[..n]);
            }
        }));
    }

    /// Cuts (or restores) the link between the client at `client` and the host behind.
    pub fn cut(&self, client: SocketAddr, cut: bool) {
        set_cut(&self.shared, client, cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The host's answers to one client, back through the front socket.
async fn relay_back(
    up: Arc<UdpSocket>,
    target: SocketAddr,
    client: SocketAddr,
    front: Arc<UdpSocket>,
    shared: Arc<RelayShared>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = up.recv_from(&mut buf).await {
        if from == target {
            shared.pass(client, &front, client, &buf[..n]);
        }
    }
}

/// Sends each delayed datagram when it is due, in due order.
async fn deliver(mut rx: mpsc::UnboundedReceiver<Delayed>) {
    let mut heap: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse(d)| d.due);
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => heap.push(Reverse(d)),
                None => return,
            },
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
                    if let Some(Reverse(d)) = heap.pop() {
                        let _ = d.via.send_to(&d.bytes, d.to).await;
                    }
                }
            }
        }
    }
}

/// One link cut for a while: hosts `a` and `b` (indices) lose each other at `at` (from the
/// start of traffic) for `length`.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    /// One host.
    pub a: usize,
    /// The other.
    pub b: usize,
    /// When, from the start of traffic.
    pub at: Duration,
    /// How long.
    pub length: Duration,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Hosts, each behind its own relay; host `i` dials hosts `0..i`.
    pub hosts: usize,
    /// What every relay does to every datagram.
    pub faults: Faults,
    /// Links cut during the run.
    pub cuts: Vec<Cut>,
    /// How long traffic runs at least (it runs on until every cut link has reconnected, and
    /// `settle` after that).
    pub traffic: Duration,
    /// Traffic goes on this long after the last reconnection.
    pub settle: Duration,
    /// Pause between two messages of one sender.
    pub send_every: Duration,
    /// Pause between two requests of one asker.
    pub ask_every: Duration,
    /// Every instance's `request_timeout` (the deadline of its requests and connects).
    pub request_timeout: Duration,
    /// QUIC `peer_timeout` of every host (the idle timeout).
    pub peer_timeout: Duration,
    /// Seeds the relays' randomness and the askers' choices.
    pub seed: u64,
}

/// One direction of one pair of hosts: what host `from`'s sender to host `to` did.
#[derive(Debug, Default, Clone)]
pub struct PairReport {
    /// Sender host.
    pub from: usize,
    /// Receiver host.
    pub to: usize,
    /// Sessions opened.
    pub sessions: usize,
    /// Connect attempts that failed (while the link was down).
    pub connect_failures: usize,
    /// Sends the sender was told succeeded.
    pub sent: u64,
    /// Of those, delivered (exactly once, in order).
    pub delivered: u64,
    /// Sends refused with an error (the sender knew at once).
    pub refused: u64,
    /// Accepted sends lost with their session, whose sender saw `on-disconnect` or an error.
    pub lost_with_notice: u64,
    /// Sessions whose sender saw `on-disconnect`.
    pub sender_disconnects: usize,
    /// Sessions whose receiver saw `on-disconnect`.
    pub receiver_disconnects: usize,
}

/// One cut, as the hosts lived it.
#[derive(Debug, Clone)]
pub struct CutReport {
    /// The cut.
    pub cut: Cut,
    /// From the cut to the first failed send on a session over the link (both directions;
    /// the later of the two), if any session was open.
    pub detected: Option<Duration>,
    /// From the end of the cut until both hosts had a connection again.
    pub reconnected: Option<Duration>,
}

/// What happened, and every broken promise.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Each ordered pair of hosts.
    pub pairs: Vec<PairReport>,
    /// Each cut.
    pub cuts: Vec<CutReport>,
    /// Requests answered.
    pub requests_ok: u64,
    /// Requests that failed (timeout, closed, no peer).
    pub requests_failed: u64,
    /// The longest any request took.
    pub longest_request: Duration,
    /// Request durations, sorted (for percentiles).
    pub request_times: Vec<Duration>,
    /// Datagrams forwarded, lost and cut by all relays.
    pub datagrams: (u64, u64, u64),
    /// Messages duplicated, reordered, lost without notice, or requests past their deadline.
    pub violations: Vec<String>,
    /// How long the traffic ran.
    pub ran_for: Duration,
}

/// One session as its sender lived it.
#[derive(Debug)]
struct SentSession {
    k: u64,
    id: u64,
    ok: Vec<u64>,
    refused: Option<(u64, Instant, String)>,
}

#[derive(Debug, Default)]
struct PairLog {
    sessions: Vec<SentSession>,
    connect_failures: usize,
}

fn manifest_body(hosts: usize, me: usize, config: &ChaosConfig) -> String {
    let rt = format!("{}ms", config.request_timeout.as_millis());
    let mut body = format!(
        "[[service]]\nname = \"node\"\ncomponent = \"{{service:spec}}\"\nchannel = 1\nexpose = true\n\
         idle_timeout = \"1h\"\nmax_sessions = 4096\n\n\
         [[service]]\nname = \"asker\"\ncomponent = \"{{service:spec}}\"\nchannel = 2\n\
         uses = [\"*/node\"]\nrequest_timeout = \"{rt}\"\n\n"
    );
    for other in (0..hosts).filter(|o| *o != me) {
        body.push_str(&format!(
            "[[service]]\nname = \"to-{other}\"\ncomponent = \"{{service:spec}}\"\nchannel = {}\n\
             uses = [\"*/node\"]\nrequest_timeout = \"{rt}\"\nidle_timeout = \"1h\"\n\n",
            10 + other
        ));
    }
    body
}

async fn start_host(
    listen_advertise: SocketAddr,
    peers: &[String],
    body: &str,
    pt: Duration,
) -> Node {
    let extra = format!(
        "advertise = \"{listen_advertise}\"\npeer_timeout = \"{}ms\"",
        pt.as_millis()
    );
    crate::start_peer(peers, &extra, body).await
}

async fn connected(node: &Node, peer: PeerId) -> bool {
    match node.net() {
        Some(net) => net
            .connections()
            .await
            .iter()
            .any(|(_, p, r)| *p == peer && *r == Role::Host),
        None => false,
    }
}

/// Runs hosts behind relays with traffic and cuts, and checks every message.
pub async fn run(config: ChaosConfig) -> ChaosReport {
    let n = config.hosts;
    let mut relays = Vec::new();
    for i in 0..n {
        relays.push(
            Relay::bind(config.faults, config.seed ^ (i as u64 + 1))
                .await
                .expect("bind a relay"),
        );
    }
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for i in 0..n {
        let peers: Vec<String> = relays[..i].iter().map(|r| r.addr().to_string()).collect();
        let node = start_host(
            relays[i].addr(),
            &peers,
            &manifest_body(n, i, &config),
            config.peer_timeout,
        )
        .await;
        relays[i].start(node.local_addr().expect("the host listens"));
        nodes.push(Arc::new(node));
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer_id().expect("an id")).collect();
    let reals: Vec<SocketAddr> = nodes
        .iter()
        .map(|n| n.local_addr().expect("addr"))
        .collect();
    // Every host connected to every other before traffic starts.
    let full = Instant::now() + Duration::from_secs(30);
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            while !connected(&nodes[i], ids[j]).await {
                assert!(
                    Instant::now() < full,
                    "host {i} never connected to host {j}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Senders.
    let mut senders = Vec::new();
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let (node, peer, stop) = (nodes[i].clone(), ids[j], stop.clone());
            let every = config.send_every;
            senders.push((
                (i, j),
                tokio::spawn(send_loop(node, i, j, peer, every, stop)),
            ));
        }
    }
    // Askers.
    let mut askers = Vec::new();
    for i in 0..n {
        let (node, stop) = (nodes[i].clone(), stop.clone());
        let others: Vec<PeerId> = (0..n).filter(|j| *j != i).map(|j| ids[j]).collect();
        let (every, seed) = (config.ask_every, config.seed ^ (0x5eed + i as u64));
        askers.push(tokio::spawn(ask_loop(node, others, every, seed, stop)));
    }
    // Cuts, and a watch on each cut link.
    let mut cut_tasks = Vec::new();
    for cut in &config.cuts {
        let (a, b) = (cut.a, cut.b);
        let fronts = (relays[a].shared.clone(), relays[b].shared.clone());
        let (ra, rb) = (reals[a], reals[b]);
        let (na, nb) = (nodes[a].clone(), nodes[b].clone());
        let (ia, ib) = (ids[a], ids[b]);
        let cut = *cut;
        cut_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + cut.at).await;
            set_cut(&fronts.0, rb, true);
            set_cut(&fronts.1, ra, true);
            tokio::time::sleep(cut.length).await;
            set_cut(&fronts.0, rb, false);
            set_cut(&fronts.1, ra, false);
            let healed = Instant::now();
            let limit = healed + Duration::from_secs(30);
            while Instant::now() < limit {
                if connected(&na, ib).await && connected(&nb, ia).await {
                    return Some(healed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }));
    }
    tokio::time::sleep(config.traffic).await;
    let mut reconnected = Vec::new();
    for t in cut_tasks {
        reconnected.push(t.await.ok().flatten());
    }
    tokio::time::sleep(config.settle).await;
    stop.store(true, Ordering::Relaxed);
    let ran_for = start.elapsed();
    let mut logs = HashMap::new();
    for ((i, j), t) in senders {
        logs.insert((i, j), t.await.unwrap_or_default());
    }
    let mut request_times = Vec::new();
    let (mut requests_ok, mut requests_failed) = (0, 0);
    for t in askers {
        let (ok, failed, times) = t.await.unwrap_or_default();
        requests_ok += ok;
        requests_failed += failed;
        request_times.extend(times);
    }
    request_times.sort();
    // Let the last messages land (retransmissions included) before reading the records.
    tokio::time::sleep(Duration::from_millis(1500) + config.faults.delay * 4).await;

    let mut report = ChaosReport {
        requests_ok,
        requests_failed,
        longest_request: request_times.last().copied().unwrap_or_default(),
        request_times,
        ran_for,
        ..Default::default()
    };
    let deadline_slack = config.request_timeout + Duration::from_secs(1);
    if report.longest_request > deadline_slack {
        report.violations.push(format!(
            "a request took {:?}, past its deadline {:?}",
            report.longest_request, config.request_timeout
        ));
    }
    // Receivers' records: per (from, to, k) the receiver-side session, its seqs, and whether
    // it saw on-disconnect.
    let mut received: HashMap<(usize, usize, u64), (u64, Vec<u64>)> = HashMap::new();
    let mut receiver_disconnected: HashMap<usize, HashSet<u64>> = HashMap::new();
    for j in 0..n {
        for line in record(&nodes[j], "node").await {
            if let Some(rest) = line.strip_prefix("message ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(sid), Some("note"), Some(text)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Some((i, to, k, seq)) = parse_text(text) else {
                    report
                        .violations
                        .push(format!("host {j} got a garbled message {text:?}"));
                    continue;
                };
                if to != j {
                    report
                        .violations
                        .push(format!("host {j} got {text:?}, meant for host {to}"));
                }
                let sid: u64 = sid.parse().unwrap_or(0);
                let e = received.entry((i, to, k)).or_insert((sid, Vec::new()));
                if e.0 != sid {
                    report
                        .violations
                        .push(format!("{i}>{to} session {k} arrived on two sessions"));
                }
                e.1.push(seq);
            } else if let Some(sid) = line.strip_prefix("disconnect ") {
                receiver_disconnected
                    .entry(j)
                    .or_default()
                    .insert(sid.parse().unwrap_or(0));
            }
        }
    }
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let empty = PairLog::default();
            let log = logs.get(&(i, j)).unwrap_or(&empty);
            let sender_disconnected: HashSet<u64> = record(&nodes[i], &format!("to-{j}"))
                .await
                .iter()
                .filter_map(|l| l.strip_prefix("disconnect ")?.parse().ok())
                .collect();
            let mut p = PairReport {
                from: i,
                to: j,
                sessions: log.sessions.len(),
                connect_failures: log.connect_failures,
                ..Default::default()
            };
            for s in &log.sessions {
                let (rid, got) = received.remove(&(i, j, s.k)).unwrap_or_default();
                let noticed = s.refused.is_some() || sender_disconnected.contains(&s.id);
                p.sent += s.ok.len() as u64;
                p.refused += u64::from(s.refused.is_some());
                p.sender_disconnects += usize::from(sender_disconnected.contains(&s.id));
                p.receiver_disconnects += usize::from(
                    !got.is_empty()
                        && receiver_disconnected
                            .get(&j)
                            .is_some_and(|d| d.contains(&rid)),
                );
                let check = check_session(&format!("{i}>{j} session {}", s.k), &s.ok, &got);
                report.violations.extend(check.problems);
                let missing = check.missing;
                p.delivered += check.delivered;
                if !missing.is_empty() && !noticed {
                    report.violations.push(format!(
                        "{i}>{j} session {}: {} accepted messages lost and the sender saw no error \
                         and no on-disconnect",
                        s.k,
                        missing.len()
                    ));
                }
                p.lost_with_notice += missing.len() as u64 * u64::from(noticed);
            }
            report.pairs.push(p);
        }
    }
    for k in received.keys().take(3) {
        report.violations.push(format!(
            "messages of {k:?} arrived from a session no sender opened"
        ));
    }
    // Detection: the first refused send after the cut began, each way; the later of the two.
    for (cut, reconnected) in config.cuts.iter().zip(reconnected) {
        let began = start + cut.at;
        let mut detected = None::<Duration>;
        for (x, y) in [(cut.a, cut.b), (cut.b, cut.a)] {
            let first = logs.get(&(x, y)).and_then(|l| {
                l.sessions
                    .iter()
                    .filter_map(|s| s.refused.as_ref().map(|r| r.1))
                    .filter(|t| *t >= began)
                    .min()
            });
            if let Some(t) = first {
                let t = t - began;
                detected = Some(detected.map_or(t, |d| d.max(t)));
            }
        }
        report.cuts.push(CutReport {
            cut: *cut,
            detected,
            reconnected,
        });
    }
    let mut datagrams = (0, 0, 0);
    for r in &relays {
        datagrams.0 += r.stats().forwarded.load(Ordering::Relaxed);
        datagrams.1 += r.stats().lost.load(Ordering::Relaxed);
        datagrams.2 += r.stats().cut.load(Ordering::Relaxed);
    }
    report.datagrams = datagrams;
    for node in nodes {
        if let Ok(node) = Arc::try_unwrap(node) {
            node.shutdown().await;
        }
    }
    drop(relays);
    report
}

fn set_cut(relay: &RelayShared, client: SocketAddr, cut: bool) {
    let mut c = relay.cut.lock().unwrap_or_else(|e| e.into_inner());
    if cut {
        c.insert(client);
    } else {
        c.remove(&client);
    }
}

/// An instance's record (the `spec` sample's `record` event).
async fn record(node: &Node, instance: &str) -> Vec<String> {
    match node.request(instance, "record", "null").await {
        Ok(r) => serde_json::from_str(&r).unwrap_or_default(),
        Err(e) => panic!("record of {instance}: {e}"),
    }
}

/// Host `from`'s sender to host `to`: opens a session to `node` there, sends numbered
/// messages until a send fails, opens a new one, until told to stop.
async fn send_loop(
    node: Arc<Node>,
    from: usize,
    to: usize,
    peer: PeerId,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> PairLog {
    let me = format!("to-{to}");
    let open = json!({"service": "node", "peer": peer.to_string()}).to_string();
    let mut log = PairLog::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id: u64 = match node.request(&me, "connect", &open).await {
            Ok(r) => match serde_json::from_str(&r) {
                Ok(id) => id,
                Err(_) => panic!("connect answered {r:?}"),
            },
            Err(_) => {
                log.connect_failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let k = log.sessions.len() as u64 + 1;
        let mut s = SentSession {
            k,
            id,
            ok: Vec::new(),
            refused: None,
        };
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let text = format!("{from}>{to}:{k}:{seq}");
            let send = json!({"session": id, "kind": "note", "text": text});
            match node.request(&me, "send", &send.to_string()).await {
                Ok(_) => s.ok.push(seq),
                Err(e) => {
                    s.refused = Some((seq, Instant::now(), e.to_string()));
                    break;
                }
            }
            tokio::time::sleep(every).await;
        }
        log.sessions.push(s);
    }
    log
}

/// A host's asker: requests `name` of a random other host's `node`, one at a time.
async fn ask_loop(
    node: Arc<Node>,
    others: Vec<PeerId>,
    every: Duration,
    mut seed: u64,
    stop: Arc<AtomicBool>,
) -> (u64, u64, Vec<Duration>) {
    let (mut ok, mut failed, mut times) = (0, 0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let peer = others[(splitmix(&mut seed) % others.len() as u64) as usize];
        let ask = json!({"service": format!("{peer}/node"), "event": "name", "params": null});
        let began = Instant::now();
        let r = node.request("asker", "request", &ask.to_string()).await;
        times.push(began.elapsed());
        if r.is_ok() {
            ok += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(every).await;
    }
    (ok, failed, times)
}

/// The report as a table, a row per ordered pair of hosts, then the cuts and the requests.
pub fn table(config: &ChaosConfig, r: &ChaosReport) -> String {
    let mut out = String::new();
    let f = config.faults;
    out.push_str(&format!(
        "{} hosts, loss {:.0}%, delay {:?} + up to {:?} jitter, {} cut(s), traffic {:.1}s\n\n",
        config.hosts,
        f.loss * 100.0,
        f.delay,
        f.jitter,
        config.cuts.len(),
        r.ran_for.as_secs_f64()
    ));
    out.push_str(
        "| link | sessions | connect failures | sent (accepted) | delivered | refused at send \
         | lost, sender told | on-disconnect sender / receiver |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.pairs {
        out.push_str(&format!(
            "| {}→{} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            p.from,
            p.to,
            p.sessions,
            p.connect_failures,
            p.sent,
            p.delivered,
            p.refused,
            p.lost_with_notice,
            p.sender_disconnects,
            p.receiver_disconnects
        ));
    }
    out.push_str(
        "\n| cut | at | for | detected after | reconnected after |\n|---|---:|---:|---:|---:|\n",
    );
    for c in &r.cuts {
        out.push_str(&format!(
            "| {}–{} | {:.1}s | {:.1}s | {} | {} |\n",
            c.cut.a,
            c.cut.b,
            c.cut.at.as_secs_f64(),
            c.cut.length.as_secs_f64(),
            c.detected
                .map_or("—".into(), |d| format!("{:.2}s", d.as_secs_f64())),
            c.reconnected
                .map_or("never".into(), |d| format!("{:.2}s", d.as_secs_f64())),
        ));
    }
    let t = &r.request_times;
    let pct = |q: f64| {
        t.get(((t.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    out.push_str(&format!(
        "\nrequests: {} answered, {} failed; p50 {:.1} ms, p99 {:.1} ms, longest {:.1} ms \
         (deadline {:?})\n",
        r.requests_ok,
        r.requests_failed,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        r.longest_request.as_secs_f64() * 1e3,
        config.request_timeout
    ));
    out.push_str(&format!(
        "datagrams: {} forwarded, {} lost, {} dropped by cuts\n",
        r.datagrams.0, r.datagrams.1, r.datagrams.2
    ));
    if r.violations.is_empty() {
        out.push_str("violations: none\n");
    } else {
        out.push_str(&format!("violations: {}\n", r.violations.len()));
        for v in &r.violations {
            out.push_str(&format!("  {v}\n"));
        }
    }
    out
}
