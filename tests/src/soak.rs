//! The soak: three real host processes (`wasmwire run`) on loopback under mixed load for a
//! long time, one of them SIGKILLed and restarted every few minutes. It proves that nothing
//! leaks and nothing stops: every [`SoakConfig::sample_every`] each host's RSS, open file
//! descriptors and threads (from `/proc`) and its tasks, sessions and mailbox depths (from
//! `get-stats`) are sampled, and every message is accounted for at the end.
//!
//! The load, driven from this process over client connections (a fresh one after each
//! restart):
//! - chat sessions across hosts: on every host a `spec` instance `to-J` per other host opens
//!   a session to `node` on host J and sends numbered `note`s `I>J:K:SEQ` until a send
//!   fails, then opens a new one (as [`crate::chaos`] does);
//! - requests: `asker` on every host asks a random other host's `node` for its `name`;
//! - a keyed class `kv` (the counter) churning [`SoakConfig::keys`] keys, each asleep soon
//!   after its request;
//! - timers: `ticker` ticks every 100 ms, and its count must grow between two samples;
//! - a hostile client: one attack of the hostile-peer suite ([`crate::hostile`]) after
//!   another against the hosts that are never killed.
//!
//! Records are read with `take-record` every two seconds, so no instance's record grows
//! for the whole run. A message must arrive exactly once, in order within its session, or
//! its sender must have been told: a send refused with an error, `on-disconnect` on that
//! session, or the sending host killed. The run fails ([`SoakReport::failures`]) on an
//! unaccounted message, on a pair of live hosts that accepted no message for 10 s, on a
//! timer that stopped, on a stall the hosts' watchdogs counted, or on growth that does not
//! level off: RSS, descriptors or tasks of a host that was never killed at the end (the
//! median of the last three samples) more than 10% above their level after warm-up (the
//! median of the three samples from then), and more than a floor of noise (4 MiB, 4
//! descriptors, 8 tasks).

use crate::client::{TestClient, client_net};
use crate::ledger::{check_session, parse_text, splitmix};
use crate::process::HostProcess;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use wasmwire::broker::Ask;
use wasmwire::wire::{Control, HostStats, PeerId};

/// Hosts in the soak; the last one is the one killed and restarted.
pub const HOSTS: usize = 3;
/// The host killed and restarted.
const KILLED: usize = HOSTS - 1;
/// Allowed growth from the level after warm-up to the end.
const GROWTH: f64 = 1.10;
/// A pair of live hosts that accepted nothing for this long has stalled.
const STALL: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the load runs.
    pub length: Duration,
    /// From the start to the level every later sample is compared with.
    pub warm_up: Duration,
    /// Between two samples of every host.
    pub sample_every: Duration,
    /// Between two kills of the last host (none in the last [`SoakConfig::settle`]).
    pub kill_every: Duration,
    /// No kill this close to the end: the last restart must have settled.
    pub settle: Duration,
    /// Pause between two messages of one sender.
    pub send_every: Duration,
    /// Keys the keyed class churns through.
    pub keys: u64,
    /// Seeds every random choice.
    pub seed: u64,
}

impl SoakConfig {
    /// A run of `minutes`: warm-up a sixth of it (at least 40 s), a kill every five minutes
    /// (every minute in a run shorter than ten).
    pub fn minutes(minutes: f64) -> SoakConfig {
        let length = Duration::from_secs_f64(minutes * 60.0);
        SoakConfig {
            length,
            warm_up: (length / 6).max(Duration::from_secs(40)),
            sample_every: Duration::from_secs(10),
            kill_every: if minutes < 10.0 {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(300)
            },
            settle: Duration::from_secs(30),
            send_every: Duration::from_millis(10),
            keys: 5000,
            seed: 0x50a6,
        }
    }
}

/// One sample of one host.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds from the start of the load.
    pub at: f64,
    /// Which life of the host (0 before the first restart).
    pub life: u32,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads.
    pub threads: u64,
    /// Tasks alive on its async runtime.
    pub tasks: u64,
    /// Sessions open, every instance together.
    pub sessions: u64,
    /// Messages waiting in mailboxes, every instance together, and the deepest one.
    pub mailbox: (u64, u64),
    /// Stalls its watchdog has counted, every kind together.
    pub stalls: u64,
}

/// What one run saw, and every broken promise.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Each host's samples, in order.
    pub samples: Vec<Vec<Sample>>,
    /// Sends accepted, every sender together.
    pub sent: u64,
    /// Of those, delivered exactly once and in order.
    pub delivered: u64,
    /// Accepted, not delivered, and the sender was told.
    pub lost_with_notice: u64,
    /// Sends refused at once (the sender knew).
    pub refused: u64,
    /// Sessions opened.
    pub sessions: u64,
    /// Requests answered and failed.
    pub requests: (u64, u64),
    /// The longest request.
    pub longest_request: Duration,
    /// Keyed requests answered and refused.
    pub keyed: (u64, u64),
    /// Attacks made by the hostile client.
    pub attacks: u64,
    /// Kills (and restarts) of the last host.
    pub restarts: u32,
    /// How long the load ran.
    pub ran_for: Duration,
    /// The warm-up growth is measured from.
    pub warm_up: Duration,
    /// Every broken promise, in words.
    pub failures: Vec<String>,
}

fn manifest_body(me: usize, keys_awake: u32) -> String {
    let mut body = format!(
        "[[service]]\nname = \"node\"\ncomponent = \"{{service:spec}}\"\nchannel = 1\nexpose = true\n\
         idle_timeout = \"1h\"\nmax_sessions = 4096\n\n\
         [[service]]\nname = \"asker\"\ncomponent = \"{{service:spec}}\"\nchannel = 2\n\
         expose = true\nuses = [\"*/node\"]\nrequest_timeout = \"3s\"\nidle_timeout = \"1h\"\n\n\
         [[service]]\nname = \"kv\"\ncomponent = \"{{service:counter}}\"\nchannel = 3\n\
         expose = true\nkeyed = true\nmax_instances = {keys_awake}\nidle_timeout = \"300ms\"\n\n\
         [[service]]\nname = \"ticker\"\ncomponent = \"{{service:ticker}}\"\nchannel = 4\n\
         expose = true\nidle_timeout = \"1h\"\noptions = {{ every_ms = 100 }}\n\n\
         [[service]]\nname = \"echo\"\ncomponent = \"{{service:echo}}\"\nchannel = 5\nexpose = true\n\n\
         [[service]]\nname = \"secret\"\ncomponent = \"{{service:counter}}\"\nchannel = 6\n\n"
    );
    for other in (0..HOSTS).filter(|o| *o != me) {
        let _ = write!(
            body,
            "[[service]]\nname = \"to-{other}\"\ncomponent = \"{{service:spec}}\"\nchannel = {}\n\
             expose = true\nuses = [\"*/node\"]\nrequest_timeout = \"3s\"\nidle_timeout = \"1h\"\n\n",
            10 + other
        );
    }
    body
}

/// What the harness shares with its loops about each host.
struct Hosts {
    addrs: Vec<SocketAddr>,
    /// Each host's life: bumped at each restart.
    lives: Vec<AtomicU32>,
    /// Whether each host is down (between its kill and its restart).
    down: Vec<AtomicBool>,
    /// When each host was last killed (ms from the start; 0 never).
    killed_at: Vec<AtomicU64>,
    start: Instant,
    stop: AtomicBool,
}

impl Hosts {
    fn new(addrs: Vec<SocketAddr>) -> Hosts {
        Hosts {
            lives: addrs.iter().map(|_| AtomicU32::new(0)).collect(),
            down: addrs.iter().map(|_| AtomicBool::new(false)).collect(),
            killed_at: addrs.iter().map(|_| AtomicU64::new(0)).collect(),
            addrs,
            start: Instant::now(),
            stop: AtomicBool::new(false),
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether host `h` was up for the whole of the last `window`.
    fn up_for(&self, h: usize, window: Duration) -> bool {
        let killed = self.killed_at[h].load(Ordering::Relaxed);
        !self.down[h].load(Ordering::Relaxed)
            && (killed == 0 || self.ms().saturating_sub(killed) > window.as_millis() as u64)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A client connection to one host that dials again after the host restarts.
struct Link {
    host: usize,
    hosts: Arc<Hosts>,
    client: Option<(TestClient, u32)>,
}

impl Link {
    fn new(host: usize, hosts: &Arc<Hosts>) -> Link {
        Link {
            host,
            hosts: hosts.clone(),
            client: None,
        }
    }

    /// The life of the host this link is connected to, dialling if needed.
    async fn connect(&mut self) -> Result<u32, String> {
        if let Some((_, life)) = &self.client {
            return Ok(*life);
        }
        let life = self.hosts.lives[self.host].load(Ordering::Relaxed);
        let net = client_net(
            wasmwire::net::identity::Identity::generate().map_err(|e| e.to_string())?,
            wasmwire::wire::ALPN,
        );
        let spec = self.hosts.addrs[self.host].to_string().parse()?;
        match tokio::time::timeout(Duration::from_secs(5), net.dial(&spec)).await {
            Ok(Ok((conn, _))) => {
                self.client = Some((TestClient { net, conn }, life));
                Ok(life)
            }
            Ok(Err(e)) => {
                net.shutdown(Duration::ZERO).await;
                Err(format!("cannot dial host {}: {e}", self.host))
            }
            Err(_) => {
                net.shutdown(Duration::ZERO).await;
                Err(format!("cannot dial host {}: no answer in 5 s", self.host))
            }
        }
    }

    /// Requests `event` of `service`; the answer, or the error in words. A connection that
    /// has gone is dropped, to be dialled again at the next call.
    async fn ask(&mut self, service: &str, event: &str, params: String) -> Result<String, String> {
        self.connect().await?;
        let Some((client, _)) = &self.client else {
            return Err("not connected".into());
        };
        let ask = Ask::Request {
            service: service.into(),
            event: event.into(),
            params,
            chain: vec![],
            caller: None,
            session: None,
        };
        let answer = client
            .net
            .ask(client.conn, ask, Duration::from_secs(30))
            .await;
        match answer {
            Ok(Control::Response { result, .. }) => Ok(result),
            Ok(other) => Err(format!("answered {other:?}")),
            Err(f) => {
                self.drop_if_gone().await;
                Err(format!("{:?}: {}", f.code, f.reason))
            }
        }
    }

    /// The host's figures.
    async fn stats(&mut self) -> Option<HostStats> {
        self.connect().await.ok()?;
        let (client, _) = self.client.as_ref()?;
        match client
            .net
            .ask(client.conn, Ask::Stats, Duration::from_secs(30))
            .await
        {
            Ok(Control::Stats { stats, .. }) => Some(stats),
            _ => {
                self.drop_if_gone().await;
                None
            }
        }
    }

    async fn drop_if_gone(&mut self) {
        let gone = match &self.client {
            Some((c, _)) => !c.net.connections().await.iter().any(|x| x.0 == c.conn),
            None => false,
        };
        if gone && let Some((c, _)) = self.client.take() {
            c.net.shutdown(Duration::ZERO).await;
        }
    }

    async fn close(mut self) {
        if let Some((c, _)) = self.client.take() {
            c.net.shutdown(Duration::from_millis(100)).await;
        }
    }
}

/// One session as its sender lived it.
#[derive(Debug)]
struct SentSession {
    k: u64,
    life: u32,
    id: u64,
    ok: Vec<u64>,
    refused: bool,
    /// The seq of the send whose request failed: it may still have gone (the host can die,
    /// or the answer be late, after the guest sent it), so it may arrive or not.
    maybe: Option<u64>,
}

/// Host `from`'s sender to host `to`.
async fn send_loop(
    hosts: Arc<Hosts>,
    from: usize,
    to: usize,
    peer: PeerId,
    every: Duration,
    last_ok: Arc<AtomicU64>,
) -> (Vec<SentSession>, u64) {
    let mut link = Link::new(from, &hosts);
    let me = format!("to-{to}");
    let open = json!({"service": "node", "peer": peer.to_string()}).to_string();
    let (mut sessions, mut refused_connects) = (Vec::new(), 0u64);
    let mut seq = 0u64;
    while !hosts.stopped() {
        let life = match link.connect().await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let id: u64 = match link.ask(&me, "connect", open.clone()).await {
            Ok(r) => serde_json::from_str(&r).unwrap_or_else(|_| panic!("connect said {r:?}")),
            Err(_) => {
                refused_connects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let k = sessions.len() as u64 + 1;
        let mut s = SentSession {
            k,
            life,
            id,
            ok: Vec::new(),
            refused: false,
            maybe: None,
        };
        while !hosts.stopped() {
            seq += 1;
            let send =
                json!({"session": id, "kind": "note", "text": format!("{from}>{to}:{k}:{seq}")});
            match link.ask(&me, "send", send.to_string()).await {
                Ok(_) => {
                    s.ok.push(seq);
                    last_ok.store(hosts.ms(), Ordering::Relaxed);
                }
                Err(_) => {
                    s.refused = true;
                    s.maybe = Some(seq);
                    break;
                }
            }
            tokio::time::sleep(every).await;
        }
        sessions.push(s);
    }
    link.close().await;
    (sessions, refused_connects)
}

/// A receiver-side session: (the receiving host's life, its session id).
type Arrival = (u32, u64);

/// What the records of every host said, read as the run goes.
#[derive(Default)]
struct Records {
    /// Per (from, to, k): (receiver life, receiver session id) of each arrival, and its seq.
    received: HashMap<(usize, usize, u64), Vec<(Arrival, u64)>>,
    /// (host, life, session id) of every `on-disconnect` any `spec` instance saw.
    disconnected: HashSet<(usize, u32, u64)>,
    /// Lines that are not what any sender sends.
    garbled: Vec<String>,
}

/// Takes the records of every `spec` instance on `host` into `records`.
async fn drain(link: &mut Link, host: usize, records: &Mutex<Records>) {
    let Ok(life) = link.connect().await else {
        return;
    };
    let mut instances = vec!["node".to_string(), "asker".to_string()];
    instances.extend((0..HOSTS).filter(|o| *o != host).map(|o| format!("to-{o}")));
    for instance in instances {
        let Ok(reply) = link.ask(&instance, "take-record", "null".into()).await else {
            continue;
        };
        let lines: Vec<String> = serde_json::from_str(&reply).unwrap_or_default();
        let mut r = records.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            if let Some(sid) = line.strip_prefix("disconnect ") {
                r.disconnected
                    .insert((host, life, sid.parse().unwrap_or(0)));
            } else if let Some(rest) = line.strip_prefix("message ")
                && instance == "node"
            {
                let mut parts = rest.splitn(3, ' ');
                let (Some(sid), Some("note"), Some(text)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                match parse_text(text) {
                    Some((i, to, k, seq)) if to == host => {
                        let sid = sid.parse().unwrap_or(0);
                        r.received
                            .entry((i, to, k))
                            .or_default()
                            .push(((life, sid), seq));
                    }
                    _ => r.garbled.push(format!("host {host} got {text:?}")),
                }
            }
        }
    }
}

/// Reads every host's records every two seconds until the run stops; returns its links for
/// the last read.
async fn drain_loop(hosts: Arc<Hosts>, records: Arc<Mutex<Records>>) -> Vec<Link> {
    let mut links: Vec<Link> = (0..HOSTS).map(|h| Link::new(h, &hosts)).collect();
    while !hosts.stopped() {
        for (h, link) in links.iter_mut().enumerate() {
            if !hosts.down[h].load(Ordering::Relaxed) {
                drain(link, h, &records).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    links
}

/// `asker` on `host` asks random other hosts' `node` for its name.
async fn ask_loop(
    hosts: Arc<Hosts>,
    host: usize,
    peers: Vec<PeerId>,
    mut seed: u64,
) -> (u64, u64, Duration) {
    let mut link = Link::new(host, &hosts);
    let (mut ok, mut failed, mut longest) = (0, 0, Duration::ZERO);
    while !hosts.stopped() {
        let peer = peers[(splitmix(&mut seed) % peers.len() as u64) as usize];
        let ask = json!({"service": format!("{peer}/node"), "event": "name", "params": null});
        let began = Instant::now();
        let up = hosts.up_for(host, Duration::ZERO);
        match link.ask("asker", "request", ask.to_string()).await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        // A request to a host being killed may wait out its connection's timeout.
        if up && hosts.up_for(host, Duration::ZERO) {
            longest = longest.max(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    link.close().await;
    (ok, failed, longest)
}

/// Requests of random keys of `kv` on `host`.
async fn keyed_loop(hosts: Arc<Hosts>, host: usize, keys: u64, mut seed: u64) -> (u64, u64) {
    let mut link = Link::new(host, &hosts);
    let (mut ok, mut refused) = (0, 0);
    while !hosts.stopped() {
        let key = splitmix(&mut seed) % keys;
        match link.ask(&format!("kv/k{key}"), "incr", "null".into()).await {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.close().await;
    (ok, refused)
}

/// One attack of the hostile-peer suite after another against the hosts never killed.
async fn hostile_loop(hosts: Arc<Hosts>) -> u64 {
    let mut n = 0u64;
    while !hosts.stopped() {
        let attack = crate::hostile::ATTACKS[n as usize % crate::hostile::ATTACKS.len()];
        let addr = hosts.addrs[n as usize % KILLED].to_string();
        // An attack unwraps what it expects of the host; a panic here is the attacker's
        // (a handshake slow on a loaded machine), and the hosts' health is what is checked.
        let made = tokio::spawn(async move { crate::hostile::attack_once(attack, &addr).await });
        let _ = tokio::time::timeout(Duration::from_secs(60), made).await;
        n += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    n
}

/// A host's RSS (bytes) and threads from `/proc/PID/status`, and its open descriptors.
fn proc_figures(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:")? * 1024, field("Threads:")?, fds))
}

/// Waits until every host answers and is connected to every other, and wakes each ticker;
/// returns the hosts' ids.
async fn wait_up(hosts: Arc<Hosts>) -> Vec<PeerId> {
    let mut ids = Vec::new();
    for h in 0..HOSTS {
        let mut link = Link::new(h, &hosts);
        let deadline = Instant::now() + Duration::from_secs(120);
        let stats = loop {
            if let Some(s) = link.stats().await
                && s.peers
                    .iter()
                    .filter(|p| p.role == wasmwire::wire::Role::Host)
                    .count()
                    >= HOSTS - 1
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "soak host {h} not up and connected to the others within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ids.push(
            stats
                .host
                .parse()
                .unwrap_or_else(|_| panic!("host {h} has no id")),
        );
        let _ = link.ask("ticker", "ticks", "null".into()).await;
        link.close().await;
    }
    ids
}

/// Runs the soak and checks it.
pub async fn run(config: SoakConfig) -> SoakReport {
    let dir = crate::scratch_dir("soak");
    let addrs: Vec<SocketAddr> = (0..HOSTS)
        .map(|_| format!("127.0.0.1:{}", crate::free_port()).parse().unwrap())
        .collect();
    let mut procs = Vec::new();
    for i in 0..HOSTS {
        let peers: Vec<String> = addrs[..i].iter().map(|a| a.to_string()).collect();
        // 32 keys awake at most, in a pool of 128 (the peer manifest's 32 is too small for
        // the other services beside them).
        let text = crate::peer_manifest(
            &addrs[i].to_string(),
            &peers,
            "max_awake = 128",
            &manifest_body(i, 32),
        );
        let manifest = dir.join(format!("host-{i}.toml"));
        std::fs::write(&manifest, text).expect("write a manifest");
        let p = HostProcess::start(&manifest, &dir.join(format!("host-{i}.log")));
        procs.push(p);
    }
    let ids = wait_up(Arc::new(Hosts::new(addrs.clone()))).await;
    let hosts = Arc::new(Hosts::new(addrs));
    let mut samplers: Vec<Link> = (0..HOSTS).map(|h| Link::new(h, &hosts)).collect();
    let records = Arc::new(Mutex::new(Records::default()));
    let mut last_oks = HashMap::new();
    let mut senders = Vec::new();
    for i in 0..HOSTS {
        for j in (0..HOSTS).filter(|j| *j != i) {
            let last_ok = Arc::new(AtomicU64::new(0));
            last_oks.insert((i, j), last_ok.clone());
            senders.push((
                (i, j),
                tokio::spawn(send_loop(
                    hosts.clone(),
                    i,
                    j,
                    ids[j],
                    config.send_every,
                    last_ok,
                )),
            ));
        }
    }
    let drains = tokio::spawn(drain_loop(hosts.clone(), records.clone()));
    let askers: Vec<_> = (0..HOSTS)
        .map(|i| {
            let peers = (0..HOSTS).filter(|j| *j != i).map(|j| ids[j]).collect();
            tokio::spawn(ask_loop(
                hosts.clone(),
                i,
                peers,
                config.seed ^ (i as u64 + 1),
            ))
        })
        .collect();
    let keyed: Vec<_> = (0..HOSTS)
        .map(|i| {
            tokio::spawn(keyed_loop(
                hosts.clone(),
                i,
                config.keys,
                config.seed ^ (0x4b ^ i as u64),
            ))
        })
        .collect();
    let hostile = tokio::spawn(hostile_loop(hosts.clone()));

    let mut report = SoakReport {
        samples: vec![Vec::new(); HOSTS],
        warm_up: config.warm_up,
        ..Default::default()
    };
    let mut ticks: Vec<Option<(u32, u64)>> = vec![None; HOSTS];
    let mut next_sample = Duration::ZERO;
    let mut next_kill = config.kill_every;
    let last_kill = config.length.saturating_sub(config.settle);
    loop {
        let now = hosts.start.elapsed();
        if now >= config.length {
            break;
        }
        if now >= next_kill && now < last_kill {
            next_kill += config.kill_every;
            // SIGKILL: no shutdown, no goodbye; the others find out from silence.
            hosts.down[KILLED].store(true, Ordering::Relaxed);
            hosts.killed_at[KILLED].store(hosts.ms().max(1), Ordering::Relaxed);
            procs[KILLED].kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            hosts.lives[KILLED].fetch_add(1, Ordering::Relaxed);
            procs[KILLED].spawn();
            report.restarts += 1;
            hosts.down[KILLED].store(false, Ordering::Relaxed);
            eprintln!(
                "soak: host {KILLED} killed and restarted at {:.0}s",
                now.as_secs_f64()
            );
        }
        if now >= next_sample {
            next_sample += config.sample_every;
            for h in 0..HOSTS {
                let Some(pid) = procs[h].pid() else { continue };
                let Some((rss, threads, fds)) = proc_figures(pid) else {
                    continue;
                };
                let Some(stats) = samplers[h].stats().await else {
                    continue;
                };
                let life = hosts.lives[h].load(Ordering::Relaxed);
                let st = stats.stalls;
                let sample = Sample {
                    at: now.as_secs_f64(),
                    life,
                    rss,
                    fds,
                    threads,
                    tasks: stats.tasks,
                    sessions: stats.instances.iter().map(|i| i.sessions).sum(),
                    mailbox: (
                        stats.instances.iter().map(|i| i.mailbox).sum(),
                        stats.instances.iter().map(|i| i.mailbox).max().unwrap_or(0),
                    ),
                    stalls: st.stream_credit
                        + st.send_blocked
                        + st.mailbox_full
                        + st.control_blocked,
                };
                report.samples[h].push(sample);
                // Timers keep ticking.
                if let Ok(t) = samplers[h].ask("ticker", "ticks", "null".into()).await {
                    let t: u64 = serde_json::from_str(&t).unwrap_or(0);
                    if let Some((l, before)) = ticks[h]
                        && l == life
                        && t <= before
                        && hosts.up_for(h, config.sample_every * 2)
                    {
                        report.failures.push(format!(
                            "host {h}: the ticker stopped at {t} ticks ({:.0}s)",
                            now.as_secs_f64()
                        ));
                    }
                    ticks[h] = Some((life, t));
                }
            }
            // Every pair of live hosts keeps accepting messages.
            for (&(i, j), last) in &last_oks {
                let idle = hosts.ms().saturating_sub(last.load(Ordering::Relaxed));
                let window = STALL + Duration::from_secs(10);
                if Duration::from_millis(idle) > STALL
                    && hosts.up_for(i, window)
                    && hosts.up_for(j, window)
                    && now > window
                {
                    report.failures.push(format!(
                        "{i}>{j}: no message accepted for {:.1}s ({:.0}s into the run)",
                        idle as f64 / 1e3,
                        now.as_secs_f64()
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.ran_for = hosts.start.elapsed();
    hosts.stop.store(true, Ordering::Relaxed);

    let mut logs = HashMap::new();
    for ((i, j), t) in senders {
        let (sessions, _) = t.await.expect("a sender");
        logs.insert((i, j), sessions);
    }
    for t in askers {
        let (ok, failed, longest) = t.await.expect("an asker");
        report.requests.0 += ok;
        report.requests.1 += failed;
        report.longest_request = report.longest_request.max(longest);
    }
    for t in keyed {
        let (ok, refused) = t.await.expect("a keyed loop");
        report.keyed.0 += ok;
        report.keyed.1 += refused;
    }
    report.attacks = hostile.await.unwrap_or(0);
    // One last read, once every sender has returned and its last messages had time to land.
    let mut links = drains.await.expect("the drain loop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (h, link) in links.iter_mut().enumerate() {
        drain(link, h, &records).await;
    }
    for l in links {
        l.close().await;
    }
    for l in samplers {
        l.close().await;
    }

    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    account(&mut report, &hosts, logs, records);
    check_growth(&mut report);
    if report.longest_request > Duration::from_secs(5) {
        report.failures.push(format!(
            "a request took {:?}, past its 3 s deadline",
            report.longest_request
        ));
    }
    for (h, samples) in report.samples.iter().enumerate() {
        if let Some(s) = samples.iter().find(|s| s.stalls > 0) {
            report.failures.push(format!(
                "host {h}: its watchdog counted {} stall(s) by {:.0}s (see {})",
                s.stalls,
                s.at,
                procs[h].log.display()
            ));
        }
    }
    drop(procs);
    report
}

/// Matches every accepted send with what the receivers recorded.
fn account(
    report: &mut SoakReport,
    hosts: &Hosts,
    logs: HashMap<(usize, usize), Vec<SentSession>>,
    mut records: Records,
) {
    report
        .failures
        .extend(records.garbled.iter().take(3).cloned());
    let last_life = hosts.lives[KILLED].load(Ordering::Relaxed);
    for ((i, j), sessions) in logs {
        for s in sessions {
            report.sessions += 1;
            report.sent += s.ok.len() as u64;
            report.refused += u64::from(s.refused);
            let arrivals = records.received.remove(&(i, j, s.k)).unwrap_or_default();
            let on: HashSet<Arrival> = arrivals.iter().map(|a| a.0).collect();
            if on.len() > 1 {
                report.failures.push(format!(
                    "{i}>{j} session {}: arrived on {} sessions",
                    s.k,
                    on.len()
                ));
            }
            let got: Vec<u64> = arrivals
                .iter()
                .map(|a| a.1)
                .filter(|seq| Some(*seq) != s.maybe)
                .collect();
            let check = check_session(&format!("{i}>{j} session {}", s.k), &s.ok, &got);
            report.failures.extend(check.problems);
            report.delivered += check.delivered;
            let missing = check.missing;
            if missing.is_empty() {
                continue;
            }
            // Told: a later send refused, `on-disconnect` on the sender's side, or the
            // sending host killed in this session's life (the driver that asked lost its
            // connection). A session of the host's last life has no such excuse.
            let told = s.refused
                || records.disconnected.contains(&(i, s.life, s.id))
                || (i == KILLED && s.life < last_life);
            if told {
                report.lost_with_notice += missing.len() as u64;
            } else {
                report.failures.push(format!(
                    "{i}>{j} session {}: {} accepted messages lost and the sender was not told \
                     (first {})",
                    s.k,
                    missing.len(),
                    missing[0]
                ));
            }
        }
    }
    for k in records.received.keys().take(3) {
        report.failures.push(format!(
            "messages of {k:?} arrived from a session no sender opened"
        ));
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// RSS, descriptors and tasks of the hosts never killed level off after warm-up.
fn check_growth(report: &mut SoakReport) {
    for h in 0..KILLED {
        let samples = &report.samples[h];
        let warm_up = report.warm_up.as_secs_f64();
        let Some(after) = samples.iter().position(|s| s.at >= warm_up) else {
            report
                .failures
                .push(format!("host {h}: no sample after warm-up"));
            continue;
        };
        let level = &samples[after..(after + 3).min(samples.len())];
        let end = &samples[samples.len().saturating_sub(3)..];
        // Each figure also has a floor of growth below which it is noise, not a leak: a
        // hostile attack in flight holds a few tasks and descriptors, an allocator a few
        // pages. Above both the floor and 10%, the figure did not level off.
        for (what, f, floor) in [
            ("RSS", (|s: &Sample| s.rss) as fn(&Sample) -> u64, 4 << 20),
            ("descriptors", |s| s.fds, 4),
            ("tasks", |s| s.tasks, 8),
        ] {
            let (l, e) = (
                median(level.iter().map(f).collect()),
                median(end.iter().map(f).collect()),
            );
            if e as f64 > l as f64 * GROWTH && e > l + floor {
                report.failures.push(format!(
                    "host {h}: {what} grew from {l} after warm-up to {e} at the end (over 10% \
                     and over {floor})"
                ));
            }
        }
    }
}

/// The report: each host's samples at the start, after warm-up and at the end, then what
/// every message and request came to, then the failures.
pub fn table(config: &SoakConfig, r: &SoakReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{HOSTS} hosts for {:.0}s (warm-up {:.0}s, a sample every {:.0}s); host {KILLED} \
         SIGKILLed and restarted {} time(s)\n",
        r.ran_for.as_secs_f64(),
        config.warm_up.as_secs_f64(),
        config.sample_every.as_secs_f64(),
        r.restarts
    );
    out.push_str(
        "| host | sample | at | life | RSS MiB | fds | threads | tasks | sessions | mailbox (all / deepest) | stalls |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let warm_up = config.warm_up.as_secs_f64();
    for (h, samples) in r.samples.iter().enumerate() {
        let picks = [
            ("start", samples.first()),
            ("after warm-up", samples.iter().find(|s| s.at >= warm_up)),
            ("end", samples.last()),
        ];
        for (what, s) in picks {
            let Some(s) = s else { continue };
            let _ = writeln!(
                out,
                "| {h} | {what} | {:.0}s | {} | {:.1} | {} | {} | {} | {} | {} / {} | {} |",
                s.at,
                s.life,
                s.rss as f64 / (1 << 20) as f64,
                s.fds,
                s.threads,
                s.tasks,
                s.sessions,
                s.mailbox.0,
                s.mailbox.1,
                s.stalls
            );
        }
    }
    let _ = writeln!(
        out,
        "\nmessages: {} sent (accepted), {} delivered once in order, {} lost with the sender told, \
         {} refused at send; {} sessions",
        r.sent, r.delivered, r.lost_with_notice, r.refused, r.sessions
    );
    let _ = writeln!(
        out,
        "requests: {} answered, {} failed, longest {:.0} ms; keyed: {} answered, {} refused; \
         hostile attacks: {}",
        r.requests.0,
        r.requests.1,
        r.longest_request.as_secs_f64() * 1e3,
        r.keyed.0,
        r.keyed.1,
        r.attacks
    );
    if r.failures.is_empty() {
        out.push_str("failures: none\n");
    } else {
        let _ = writeln!(out, "failures: {}", r.failures.len());
        for f in &r.failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}
