//! A network of virtual hosts: real [`Broker`]s (the sans-IO channel-0 state machine) in
//! one process, connected by a virtual network with a fixed one-way latency, in virtual
//! time. Hosts join from a few seeds, exchange peers, leave and are replaced; a service
//! runs on a small share of them. What is measured is what a user would feel: how soon
//! every host can find the service (directly, or with one `find-service` to a connected
//! host), the control messages each host sends, and the sizes of the learned tables.
//!
//! No sockets: the addresses are 127.x.y.z placeholders that name virtual hosts, and
//! messages are handed over as values (the codec is fuzzed on its own).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::broker::{
    Allow, Broker, BrokerConfig, BrokerLimits, ConnId, DialTo, Event, Incoming, PeerSpec,
};
use wasmwire::wire::{Control, PeerId, Role};

/// The service a share of the hosts run.
pub const SERVICE: &str = "rare";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Hosts alive at once (seeds included).
    pub hosts: usize,
    /// Seed hosts every other host is configured with.
    pub seeds: usize,
    /// Share of hosts that run [`SERVICE`].
    pub service_share: f64,
    /// Hosts join at random times over this long at the start.
    pub join_over: Duration,
    /// Simulated time in all.
    pub duration: Duration,
    /// Share of the non-seed hosts that leave (and are replaced by new ones) per minute.
    pub churn_per_minute: f64,
    /// One-way latency between any two hosts.
    pub latency: Duration,
    /// How often the metrics are sampled.
    pub sample_every: Duration,
    /// Seeds ids, choices and the brokers' jitter.
    pub seed: u64,
    /// Connections a host holds at most (`BrokerLimits::max_connections`); a newcomer past
    /// that gets `full` with a sample of the host's peers.
    pub max_connections: usize,
}

/// One sample of the network.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Virtual time since the start.
    pub at: Duration,
    /// Hosts alive (seeds apart).
    pub alive: usize,
    /// Share of them that can find [`SERVICE`] directly or one hop away.
    pub reach: f64,
    /// Ready host connections per host (seeds apart): mean and max.
    pub conns: (f64, usize),
    /// Ready host connections of the busiest seed (every host keeps one to each seed).
    pub seed_conns: usize,
    /// Learned (not connected) peers per host: mean and max.
    pub learned: (f64, usize),
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The samples, in time order.
    pub samples: Vec<Sample>,
    /// Time after the last initial join until every alive host could find the service.
    pub full_reach_after: Option<Duration>,
    /// Control messages sent per alive host per minute, over the run.
    pub messages_per_host_minute: f64,
    /// Hosts that ran the service at the end.
    pub providers: usize,
    /// Wall time the simulation took.
    pub wall: Duration,
}

struct Host {
    broker: Broker,
    id: PeerId,
    addr: SocketAddr,
    provides: bool,
    timer: u64,
    /// Connections open (the real host refuses past `max_connections`).
    open: usize,
}

enum Ev {
    Deliver {
        conn: ConnId,
        to: usize,
        message: Control,
    },
    Connected {
        dialer: usize,
        target: usize,
        to: DialTo,
    },
    DialFailed {
        dialer: usize,
        to: DialTo,
    },
    Closed {
        conn: ConnId,
        at: usize,
    },
    Timer {
        host: usize,
        generation: u64,
    },
    Join,
    Leave,
}

/// SplitMix64: enough randomness for choices, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Net {
    config: SimConfig,
    start: Instant,
    now: Instant,
    rng: Rng,
    hosts: Vec<Option<Host>>,
    by_addr: HashMap<SocketAddr, usize>,
    by_id: HashMap<PeerId, usize>,
    conns: HashMap<ConnId, (usize, usize)>,
    next_conn: ConnId,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    events: HashMap<usize, Ev>,
    next_event: usize,
    sent: u64,
    host_time: Duration,
    seed_specs: Vec<PeerSpec>,
}

impl Net {
    fn at(&mut self, when: Instant, ev: Ev) {
        let n = self.next_event;
        self.next_event += 1;
        self.events.insert(n, ev);
        self.queue.push(Reverse((when, n as u64, n)));
    }

    /// A new host (with `id`, or a random one), configured with the seeds as its peers.
    fn new_host(&mut self, id: Option<PeerId>) -> usize {
        let index = self.hosts.len();
        let id = id.unwrap_or_else(|| random_id(&mut self.rng));
        let addr = addr_of(index);
        let is_seed = index < self.config.seeds;
        // Every `period`-th host runs the service: the share is exact, never zero.
        let period = (1.0 / self.config.service_share.max(1e-6)).round().max(1.0) as usize;
        let provides = !is_seed && (index - self.config.seeds) % period == period / 2;
        let mut services = vec!["base".to_string()];
        if provides {
            services.push(SERVICE.to_string());
        }
        let peers = self
            .seed_specs
            .iter()
            .filter(|s| s.expected != Some(id))
            .cloned()
            .collect();
        let broker = Broker::new(
            BrokerConfig {
                me: id,
                role: Role::Host,
                listen: Some(addr),
                services,
                allow: Arc::new(Allow::default()),
                peers,
                limits: BrokerLimits {
                    max_connections: self.config.max_connections,
                    ..BrokerLimits::default()
                },
                seed: self.rng.next(),
            },
            self.now,
        );
        self.hosts.push(Some(Host {
            broker,
            id,
            addr,
            provides,
            timer: 0,
            open: 0,
        }));
        self.by_addr.insert(addr, index);
        self.by_id.insert(id, index);
        index
    }

    /// Carries out everything host `h` has to say, and re-arms its timer.
    fn drain(&mut self, h: usize) {
        let now = self.now;
        let latency = self.config.latency;
        let Some(host) = self.hosts[h].as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some((conn, message)) = host.broker.poll_transmit() {
            out.push((conn, message));
        }
        let mut events = Vec::new();
        while let Some(e) = host.broker.poll_event() {
            events.push(e);
        }
        host.timer += 1;
        let generation = host.timer;
        let timeout = host.broker.poll_timeout();
        self.sent += out.len() as u64;
        for (conn, message) in out {
            if let Some(&(a, b)) = self.conns.get(&conn) {
                let to = if a == h { b } else { a };
                self.at(now + latency, Ev::Deliver { conn, to, message });
            }
        }
        let mut answers = Vec::new();
        for e in events {
            match e {
                Event::Dial(to) => {
                    let addr = match &to {
                        DialTo::Configured { spec, .. } => spec.addr.parse().ok(),
                        DialTo::Learned { addr, .. } => Some(*addr),
                        DialTo::Direct(a) => Some(*a),
                    };
                    match addr.and_then(|a| self.by_addr.get(&a).copied()) {
                        Some(target) if self.hosts[target].is_some() => {
                            // A QUIC handshake: one round trip.
                            self.at(
                                now + latency * 2,
                                Ev::Connected {
                                    dialer: h,
                                    target,
                                    to,
                                },
                            )
                        }
                        // Nobody there: the dial times out.
                        _ => self.at(
                            now + Duration::from_secs(2),
                            Ev::DialFailed { dialer: h, to },
                        ),
                    }
                }
                Event::Close { conn, .. } => {
                    if let Some((a, b)) = self.conns.remove(&conn) {
                        self.at(now, Ev::Closed { conn, at: a });
                        self.at(now + latency, Ev::Closed { conn, at: b });
                    }
                }
                Event::Incoming {
                    conn, id, request, ..
                } => {
                    let answer = match request {
                        Incoming::ListServices => Control::Services {
                            id,
                            services: vec![],
                        },
                        Incoming::ListSessions => Control::Sessions {
                            id,
                            sessions: vec![],
                            total: 0,
                        },
                        Incoming::Stats => Control::Stats {
                            id,
                            stats: Default::default(),
                        },
                        Incoming::Request { .. } => Control::Response {
                            id,
                            result: "null".into(),
                        },
                    };
                    answers.push((conn, id, answer));
                }
                Event::Release { conn } => {
                    // Nothing runs sessions here: a released bootstrap peer always goes.
                    if let Some((a, b)) = self.conns.remove(&conn) {
                        self.at(now, Ev::Closed { conn, at: a });
                        self.at(now + latency, Ev::Closed { conn, at: b });
                    }
                }
                Event::Ready { .. } | Event::Answered { .. } => {}
            }
        }
        if !answers.is_empty() {
            if let Some(host) = self.hosts[h].as_mut() {
                for (conn, id, answer) in answers {
                    host.broker.answer(conn, id, Ok(answer));
                }
            }
            return self.drain(h);
        }
        if let Some(t) = timeout {
            self.at(
                t.max(now),
                Ev::Timer {
                    host: h,
                    generation,
                },
            );
        }
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { conn, to, message } => {
                if let Some(host) = self.hosts[to].as_mut() {
                    host.broker.handle_control(conn, message, now);
                    self.drain(to);
                }
            }
            Ev::Connected { dialer, target, to } => {
                let alive = self.hosts[dialer].is_some() && self.hosts[target].is_some();
                if !alive {
                    if let Some(d) = self.hosts[dialer].as_mut() {
                        d.broker.handle_dial_failed(&to, now);
                        self.drain(dialer);
                    }
                    return;
                }
                let conn = self.next_conn;
                self.next_conn += 1;
                if self.hosts[target]
                    .as_ref()
                    .is_some_and(|t| t.open >= self.config.max_connections)
                {
                    return self.refuse(conn, dialer, target, to);
                }
                self.conns.insert(conn, (dialer, target));
                let (Some((t_id, t_addr)), Some((d_id, d_addr))) = (
                    self.hosts[target].as_ref().map(|t| (t.id, t.addr)),
                    self.hosts[dialer].as_ref().map(|d| (d.id, d.addr)),
                ) else {
                    return;
                };
                if let Some(d) = self.hosts[dialer].as_mut() {
                    d.open += 1;
                    d.broker.handle_connected(conn, t_id, t_addr, Some(to), now);
                }
                if let Some(t) = self.hosts[target].as_mut() {
                    t.open += 1;
                    t.broker.handle_connected(conn, d_id, d_addr, None, now);
                }
                self.drain(dialer);
                self.drain(target);
            }
            Ev::DialFailed { dialer, to } => {
                if let Some(d) = self.hosts[dialer].as_mut() {
                    d.broker.handle_dial_failed(&to, now);
                    self.drain(dialer);
                }
            }
            Ev::Closed { conn, at } => {
                if let Some(host) = self.hosts[at].as_mut() {
                    host.open = host.open.saturating_sub(1);
                    host.broker.handle_closed(conn, now);
                    self.drain(at);
                }
            }
            Ev::Timer { host, generation } => {
                if let Some(x) = self.hosts[host].as_mut()
                    && x.timer == generation
                {
                    x.broker.handle_timeout(now);
                    self.drain(host);
                }
            }
            Ev::Join => {
                let h = self.new_host(None);
                if let Some(x) = self.hosts[h].as_mut() {
                    x.broker.handle_timeout(now);
                }
                self.drain(h);
            }
            Ev::Leave => {
                let candidates: Vec<usize> = (self.config.seeds..self.hosts.len())
                    .filter(|&i| self.hosts[i].is_some())
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let h = candidates[self.rng.below(candidates.len())];
                if let Some(x) = self.hosts[h].take() {
                    self.by_addr.remove(&x.addr);
                    self.by_id.remove(&x.id);
                }
                // Its peers notice after their idle timeout (5 s).
                let gone: Vec<(ConnId, usize)> = self
                    .conns
                    .iter()
                    .filter_map(|(c, (a, b))| match (*a == h, *b == h) {
                        (true, _) => Some((*c, *b)),
                        (_, true) => Some((*c, *a)),
                        _ => None,
                    })
                    .collect();
                for (conn, other) in gone {
                    self.conns.remove(&conn);
                    self.at(now + Duration::from_secs(5), Ev::Closed { conn, at: other });
                }
            }
        }
    }

    /// A full host turns the dialler away: its `full` (a sample of its peers) arrives in
    /// place of `hello`, and the connection closes.
    fn refuse(&mut self, conn: ConnId, dialer: usize, target: usize, to: DialTo) {
        let now = self.now;
        let Some(t) = self.hosts[target].as_mut() else {
            return;
        };
        let (t_id, t_addr) = (t.id, t.addr);
        let full = t.broker.full_answer();
        self.sent += 1;
        if let Some(d) = self.hosts[dialer].as_mut() {
            d.broker.handle_connected(conn, t_id, t_addr, Some(to), now);
            d.broker.handle_control(conn, full, now);
            d.broker.handle_closed(conn, now);
            // The hello it wrote and the close it asked for go nowhere: `conns` has no
            // entry for this connection.
            self.drain(dialer);
        }
    }

    fn sample(&self) -> Sample {
        let seeds = self.config.seeds;
        let seed_conns = self.hosts[..seeds.min(self.hosts.len())]
            .iter()
            .flatten()
            .map(|h| h.broker.host_count())
            .max()
            .unwrap_or(0);
        let alive: Vec<&Host> = self.hosts.iter().skip(seeds).flatten().collect();
        let mut reached = 0;
        let (mut conns_sum, mut conns_max, mut learned_sum, mut learned_max) = (0, 0, 0, 0);
        for h in &alive {
            let hosts = h.broker.host_peers();
            let knows = |n: &Host| n.provides || n.broker.find_first(SERVICE, |_| true).is_some();
            let direct = knows(h);
            let one_hop = || {
                hosts.iter().any(|p| {
                    self.by_id
                        .get(p)
                        .and_then(|&i| self.hosts[i].as_ref())
                        .is_some_and(knows)
                })
            };
            if direct || one_hop() {
                reached += 1;
            }
            let learned = h.broker.learned_count();
            conns_sum += hosts.len();
            conns_max = conns_max.max(hosts.len());
            learned_sum += learned;
            learned_max = learned_max.max(learned);
        }
        let n = alive.len().max(1) as f64;
        Sample {
            at: self.now - self.start,
            alive: alive.len(),
            reach: reached as f64 / n,
            conns: (conns_sum as f64 / n, conns_max),
            seed_conns,
            learned: (learned_sum as f64 / n, learned_max),
        }
    }
}

fn random_id(rng: &mut Rng) -> PeerId {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    PeerId(bytes)
}

/// The placeholder address of host number `index` (a loopback address; nothing listens).
fn addr_of(index: usize) -> SocketAddr {
    SocketAddr::from((
        [127, (index >> 16) as u8, (index >> 8) as u8, index as u8],
        7400,
    ))
}

/// Runs the simulation described by `config`.
pub fn run(config: SimConfig) -> SimReport {
    let wall = Instant::now();
    let start = Instant::now();
    let mut net = Net {
        rng: Rng(config.seed),
        start,
        now: start,
        hosts: Vec::new(),
        by_addr: HashMap::new(),
        by_id: HashMap::new(),
        conns: HashMap::new(),
        next_conn: 1,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        next_event: 0,
        sent: 0,
        host_time: Duration::ZERO,
        seed_specs: Vec::new(),
        config: config.clone(),
    };
    // Seeds first, all at once: their ids and addresses are every other host's peers.
    let seed_ids: Vec<PeerId> = (0..config.seeds).map(|_| random_id(&mut net.rng)).collect();
    net.seed_specs = seed_ids
        .iter()
        .enumerate()
        .map(|(i, id)| PeerSpec {
            addr: addr_of(i).to_string(),
            expected: Some(*id),
        })
        .collect();
    for id in seed_ids {
        let h = net.new_host(Some(id));
        net.drain(h);
    }
    for _ in config.seeds..config.hosts {
        let offset =
            Duration::from_millis(net.rng.below(config.join_over.as_millis() as usize) as u64);
        net.at(start + offset, Ev::Join);
    }
    // Churn: leaves and joins spread over the run after the initial joins.
    let minutes = config.duration.as_secs_f64() / 60.0;
    let churn = ((config.hosts - config.seeds) as f64 * config.churn_per_minute * minutes) as usize;
    let churn_span = config
        .duration
        .saturating_sub(config.join_over)
        .as_millis()
        .max(1) as usize;
    for _ in 0..churn {
        let t = start + config.join_over + Duration::from_millis(net.rng.below(churn_span) as u64);
        net.at(t, Ev::Leave);
        net.at(t + Duration::from_millis(1), Ev::Join);
    }
    let end = start + config.duration;
    let mut samples = Vec::new();
    let mut next_sample = start + config.sample_every;
    let mut last = start;
    while let Some(Reverse((when, _, n))) = net.queue.pop() {
        if when > end {
            break;
        }
        while next_sample <= when {
            net.now = next_sample;
            samples.push(net.sample());
            next_sample += config.sample_every;
        }
        let alive = net.hosts.iter().flatten().count() as u32;
        net.host_time += (when - last) * alive;
        last = when;
        net.now = when;
        if let Some(ev) = net.events.remove(&n) {
            net.apply(ev);
        }
    }
    while next_sample <= end {
        net.now = next_sample;
        samples.push(net.sample());
        next_sample += config.sample_every;
    }
    let full_reach_after = samples
        .iter()
        .find(|s| s.at >= config.join_over && s.reach >= 1.0)
        .map(|s| s.at - config.join_over);
    let host_minutes = net.host_time.as_secs_f64() / 60.0;
    SimReport {
        samples,
        full_reach_after,
        messages_per_host_minute: net.sent as f64 / host_minutes.max(1e-9),
        providers: net.hosts.iter().flatten().filter(|h| h.provides).count(),
        wall: wall.elapsed(),
    }
}
