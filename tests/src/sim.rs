//! A network of virtual hosts: real [`Broker`]s (the sans-IO channel-0 state machine) in
//! one process, connected by a virtual network with latency, jitter and loss, in virtual
//! time. Hosts join from a few seeds, exchange peers, join the DHT, leave and are
//! replaced; one service runs on a share of them (1%), another on a fixed few (10). What
//! is measured is what a user would feel: how soon a new host finds each service through
//! the DHT (a real lookup, `Broker::probe`), whether every host still finds them at the
//! end, the lookups' rounds and times, the control messages each host sends, and the
//! connections and tables each holds.
//!
//! No sockets: the addresses are 127.x.y.z placeholders that name virtual hosts, and
//! messages are handed over as values (the codec is fuzzed on its own).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::broker::{
    Allow, Broker, BrokerConfig, BrokerLimits, ConnId, DialTo, Event, Incoming, LookupDone,
    PeerSpec,
};
use wasmwire::wire::{Control, PeerId, Role};

/// The service a share of the hosts run.
pub const SERVICE: &str = "rare";

/// The service a fixed few hosts run (`SimConfig::few`).
pub const FEW: &str = "few";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Hosts alive at once (seeds included).
    pub hosts: usize,
    /// Seed hosts every other host is configured with.
    pub seeds: usize,
    /// Share of hosts that run [`SERVICE`].
    pub service_share: f64,
    /// Hosts that run [`FEW`] (a host that leaves hands it to the next one to join).
    pub few: usize,
    /// Share of control messages lost on the way.
    pub loss: f64,
    /// Each message's latency is `latency` plus up to this much more.
    pub jitter: Duration,
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
    /// Host connections past which learned peers are not dialled (`BrokerLimits::max_peers`,
    /// 64 by default; fewer make each host, and the 100 000-host run, lighter). Hosts keep
    /// four times as many learned peers (`max_learned`) and shed connections others made
    /// past twice as many (`high_water`).
    pub max_peers: usize,
    /// A partition into two halves: when it starts and how long it lasts. Every host is
    /// on one side (the [`FEW`] hosts all on the first); while it lasts nothing crosses
    /// (messages are lost, dials time out, connections across close on their idle
    /// timeout). When it heals, every host of the second side looks [`FEW`] up until it
    /// finds it (`SimReport::healed`).
    pub partition: Option<(Duration, Duration)>,
    /// Prints a line to stderr at each sample (virtual time, wall time, hosts, connections),
    /// so that a long run shows how far it is.
    pub progress: bool,
}

impl Default for SimConfig {
    /// 1 000 hosts from 3 seeds over a minute, 1% run [`SERVICE`] and 10 run [`FEW`],
    /// 20 ms ± 10 ms latency, 1% loss, 2% churn a minute, 6 minutes, no partition.
    fn default() -> Self {
        SimConfig {
            hosts: 1000,
            seeds: 3,
            service_share: 0.01,
            few: 10,
            loss: 0.01,
            jitter: Duration::from_millis(10),
            join_over: Duration::from_secs(60),
            duration: Duration::from_secs(360),
            churn_per_minute: 0.02,
            latency: Duration::from_millis(20),
            sample_every: Duration::from_secs(30),
            seed: 7,
            max_connections: 1024,
            max_peers: 64,
            partition: None,
            progress: false,
        }
    }
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
    /// Ready host connections of the busiest seed.
    pub seed_conns: usize,
    /// Ready host connections of the busiest host.
    pub busiest: usize,
    /// Hosts (seeds apart) with no host connection at all.
    pub isolated: usize,
    /// Hosts in the DHT routing table per host: mean.
    pub table: f64,
    /// Provider records kept by the host that keeps most.
    pub records: usize,
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
    /// Per service ([`SERVICE`], [`FEW`]): the share of hosts that found it through the
    /// DHT within 30 s of joining (of those that joined 30 s or more before the end).
    pub found_in_30s: [f64; 2],
    /// Per service: the share of hosts whose lookup at the end (see `run`) found it.
    pub reach_at_end: [f64; 2],
    /// Per service: the lookups at the end that failed, and of those, how many heard of
    /// no provider at all (the rest heard of some and could not connect to one).
    pub missed_at_end: [(usize, usize); 2],
    /// Seconds from joining to finding [`SERVICE`]: p50, p99, max.
    pub find_time: [f64; 3],
    /// Rounds of the lookups that found a service: p50, p99, max.
    pub rounds: [u32; 3],
    /// Seconds a lookup that found a service took: p50, p99.
    pub lookup_time: [f64; 2],
    /// Resident memory of the simulation per host (brokers, network, queue), in KiB.
    pub memory_per_host_kib: f64,
    /// Control messages sent per alive host per minute, over the run.
    pub messages_per_host_minute: f64,
    /// Hosts that ran the service at the end.
    pub providers: usize,
    /// Wall time the simulation took.
    pub wall: Duration,
    /// After the partition healed (`SimConfig::partition`): the share of the second
    /// side's hosts there then (and 60 s on) that found [`FEW`] within 60 s, and the
    /// seconds the slowest took (`f64::INFINITY` if one never did).
    pub healed: Option<(f64, f64)>,
}

struct Host {
    broker: Broker,
    id: PeerId,
    addr: SocketAddr,
    /// Runs [`SERVICE`], [`FEW`].
    runs: [bool; 2],
    /// When its one queued wake-up is due.
    wake: Option<Instant>,
    /// Connections open (the real host refuses past `max_connections`).
    open: usize,
    /// Its connections, as the network knows them.
    conns: Vec<ConnId>,
    joined: Instant,
    /// When it first found each service through the DHT.
    found_at: [Option<Instant>; 2],
    /// What its lookup of each service at the end said.
    found_at_end: [Option<bool>; 2],
    /// When its last lookups started (what they found is `found_at_end`).
    final_from: Option<Instant>,
    /// Its side of the partition (0 or 1).
    side: u8,
    /// The partition healed while it was there: when it found [`FEW`] again.
    healed: Option<Option<Instant>>,
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
        at: Instant,
    },
    Join,
    Leave,
    /// Host `host` looks each service it has not found yet up in the DHT.
    Probe {
        host: usize,
        id: PeerId,
    },
    /// The last lookups.
    FinalProbe {
        host: usize,
        id: PeerId,
    },
    /// Schedules every host's last lookups.
    FinalPhase,
    /// The network splits in two.
    Split,
    /// The two sides can reach each other again.
    Heal,
    /// Host `host` (on the second side) looks [`FEW`] up after the partition healed.
    HealProbe {
        host: usize,
        id: PeerId,
    },
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
    /// Hosts there now.
    alive: u32,
    /// Over how long the last lookups are spread.
    final_window: Duration,
    /// Services ([`SERVICE`], [`FEW`]) hosts that left leave to the next ones to join.
    to_hand: [usize; 2],
    /// Rounds and seconds of the lookups that found a service.
    lookups_found: Vec<(u32, f64)>,
    /// [`SimReport::missed_at_end`].
    missed_at_end: [(usize, usize); 2],
    /// Nothing crosses between the sides now.
    split: bool,
    /// When the partition healed.
    healed_at: Option<Instant>,
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
        // The first hosts to join run the services (a service is there before the hosts
        // that look for it): the share is exact and never zero, the few exactly few.
        let initial = self.config.hosts - self.config.seeds;
        let shared = ((initial as f64 * self.config.service_share).round() as usize).max(1);
        let n = index.wrapping_sub(self.config.seeds);
        let mut provides = !is_seed && n < shared;
        let mut few = !is_seed && n >= shared && n < shared + self.config.few;
        // A newcomer takes over a service from a host that left (so that the share and
        // the few stay what they are through the churn).
        if !is_seed && index - self.config.seeds >= initial {
            if self.to_hand[0] > 0 {
                self.to_hand[0] -= 1;
                provides = true;
            }
            if self.to_hand[1] > 0 {
                self.to_hand[1] -= 1;
                few = true;
            }
        }
        // Every host runs a common service too (the DHT must not let it load a few hosts).
        let mut services = vec!["base".to_string()];
        if provides {
            services.push(SERVICE.to_string());
        }
        if few {
            services.push(FEW.to_string());
        }
        // Seeds alternate sides; the few are on the first (so that the second side cannot
        // find them while split); the rest at random.
        let side = if is_seed {
            (index % 2) as u8
        } else if few {
            0
        } else {
            (self.rng.next() % 2) as u8
        };
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
                    max_peers: self.config.max_peers,
                    high_water: self.config.max_peers * 2,
                    // (256 at the default 64 peers; fewer peers, fewer kept to dial.)
                    max_learned: self.config.max_peers * 4,
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
            runs: [provides, few],
            wake: None,
            open: 0,
            conns: Vec::new(),
            joined: self.now,
            found_at: [None; 2],
            found_at_end: [None; 2],
            final_from: None,
            side,
            healed: None,
        }));
        self.by_addr.insert(addr, index);
        self.by_id.insert(id, index);
        self.alive += 1;
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
        let mut done = Vec::new();
        while let Some(d) = host.broker.poll_lookup_done() {
            done.push(d);
        }
        let timeout = host.broker.poll_timeout();
        self.sent += out.len() as u64;
        for (conn, message) in out {
            if let Some(&(a, b)) = self.conns.get(&conn) {
                if self.config.loss > 0.0
                    && (self.rng.next() % 1_000_000) as f64 / 1e6 < self.config.loss
                {
                    continue;
                }
                let to = if a == h { b } else { a };
                if self.apart(a, b) {
                    continue;
                }
                let at = now + latency + self.jitter();
                self.at(at, Ev::Deliver { conn, to, message });
            }
        }
        for d in done {
            self.lookup_done(h, d);
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
                    let full = self.hosts[h]
                        .as_ref()
                        .is_some_and(|x| x.open >= self.config.max_connections);
                    match addr.and_then(|a| self.by_addr.get(&a).copied()) {
                        // A host at its cap refuses its own dials at once, as `net` does.
                        _ if full => self.at(now, Ev::DialFailed { dialer: h, to }),
                        Some(target) if self.hosts[target].is_some() && !self.apart(h, target) => {
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
                Event::Close { conn, .. } => self.disconnect(conn),
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
                // Nothing runs sessions here: a released connection always goes.
                Event::Release { conn } => self.disconnect(conn),
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
        // One wake-up queued per host: a new one only when it is due sooner (a later
        // one would be a stale event in the queue for every message a host handles).
        if let Some(t) = timeout.map(|t| t.max(now))
            && let Some(x) = self.hosts[h].as_mut()
            && x.wake.is_none_or(|w| t < w)
        {
            x.wake = Some(t);
            self.at(t, Ev::Timer { host: h, at: t });
        }
    }

    /// Whether hosts `a` and `b` are on different sides of a partition in force.
    fn apart(&self, a: usize, b: usize) -> bool {
        self.split
            && match (&self.hosts[a], &self.hosts[b]) {
                (Some(x), Some(y)) => x.side != y.side,
                _ => false,
            }
    }

    /// Closes `conn` on both sides (the other side hears of it after the latency).
    fn disconnect(&mut self, conn: ConnId) {
        let now = self.now;
        if let Some((a, b)) = self.conns.remove(&conn) {
            self.at(now, Ev::Closed { conn, at: a });
            self.at(now + self.config.latency, Ev::Closed { conn, at: b });
        }
    }

    fn jitter(&mut self) -> Duration {
        let j = self.config.jitter.as_micros() as usize;
        if j == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.rng.below(j) as u64)
    }

    /// A lookup of host `h` finished: if it was a probe of a service, the figures.
    fn lookup_done(&mut self, h: usize, d: LookupDone) {
        let now = self.now;
        let which = match d.service.as_deref() {
            Some(SERVICE) => 0,
            Some(FEW) => 1,
            _ => return,
        };
        if d.found {
            self.lookups_found.push((d.rounds, d.took.as_secs_f64()));
        }
        let Some(host) = self.hosts[h].as_mut() else {
            return;
        };
        // (Only the last lookups themselves count at the end: not one that started before.)
        if host.final_from.is_some_and(|t| now - d.took >= t) {
            host.found_at_end[which] = Some(d.found);
            if !d.found {
                let m = &mut self.missed_at_end[which];
                m.0 += 1;
                m.1 += usize::from(d.heard == 0);
            }
        } else if d.found {
            host.found_at[which].get_or_insert(now);
        }
        if which == 1
            && d.found
            && let Some(healed @ None) = host.healed.as_mut()
        {
            *healed = Some(now);
        }
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { conn, to, message } => {
                // Lost if the network split while it was on its way.
                let from = self
                    .conns
                    .get(&conn)
                    .map(|&(a, b)| if a == to { b } else { a });
                if from.is_some_and(|f| self.apart(f, to)) {
                    return;
                }
                if let Some(host) = self.hosts[to].as_mut() {
                    host.broker.handle_control(conn, message, now);
                    self.drain(to);
                }
            }
            Ev::Connected { dialer, target, to } => {
                let alive = self.hosts[dialer].is_some()
                    && self.hosts[target].is_some()
                    && !self.apart(dialer, target);
                // A dialler that reached its cap while dialling gives the connection up.
                let full = self.hosts[dialer]
                    .as_ref()
                    .is_some_and(|d| d.open >= self.config.max_connections);
                if !alive || full {
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
                    d.conns.push(conn);
                    d.broker.handle_connected(conn, t_id, t_addr, Some(to), now);
                }
                if let Some(t) = self.hosts[target].as_mut() {
                    t.open += 1;
                    t.conns.push(conn);
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
                if let Some(host) = self.hosts[at].as_mut()
                    && let Some(i) = host.conns.iter().position(|c| *c == conn)
                {
                    host.conns.swap_remove(i);
                    host.open = host.open.saturating_sub(1);
                    host.broker.handle_closed(conn, now);
                    self.drain(at);
                }
            }
            Ev::Timer { host, at } => {
                if let Some(x) = self.hosts[host].as_mut()
                    && x.wake == Some(at)
                {
                    x.wake = None;
                    x.broker.handle_timeout(now);
                    self.drain(host);
                }
            }
            Ev::Join => {
                let h = self.new_host(None);
                let id = self.hosts[h].as_ref().map(|x| x.id);
                if let Some(x) = self.hosts[h].as_mut() {
                    x.broker.handle_timeout(now);
                }
                self.drain(h);
                // It looks the services up once its first exchanges are done.
                if let Some(id) = id {
                    self.at(now + Duration::from_secs(3), Ev::Probe { host: h, id });
                }
            }
            Ev::Probe { host, id } => {
                let Some(x) = self.hosts[host].as_mut().filter(|x| x.id == id) else {
                    return;
                };
                if x.final_from.is_some() {
                    return;
                }
                let mut asked = false;
                for (i, name) in [SERVICE, FEW].into_iter().enumerate() {
                    if x.runs[i] {
                        x.found_at[i].get_or_insert(now);
                    } else if x.found_at[i].is_none() {
                        asked |= x.broker.probe(name, now);
                    }
                }
                self.drain(host);
                let missing = self.hosts[host]
                    .as_ref()
                    .is_some_and(|x| x.found_at.iter().any(Option::is_none));
                if missing || !asked {
                    self.at(now + Duration::from_secs(5), Ev::Probe { host, id });
                }
            }
            Ev::FinalPhase => {
                let there: Vec<(usize, PeerId)> = self
                    .hosts
                    .iter()
                    .enumerate()
                    .skip(self.config.seeds)
                    .filter_map(|(i, h)| h.as_ref().map(|h| (i, h.id)))
                    .collect();
                let window = self.final_window.as_millis().max(1) as usize;
                for (host, id) in there {
                    let offset = Duration::from_millis(self.rng.below(window) as u64);
                    self.at(now + offset, Ev::FinalProbe { host, id });
                }
            }
            Ev::FinalProbe { host, id } => {
                let Some(x) = self.hosts[host].as_mut().filter(|x| x.id == id) else {
                    return;
                };
                x.final_from = Some(now);
                for (i, name) in [SERVICE, FEW].into_iter().enumerate() {
                    if x.runs[i] {
                        x.found_at_end[i] = Some(true);
                    } else {
                        x.broker.probe(name, now);
                    }
                }
                self.drain(host);
            }
            Ev::Split => {
                self.split = true;
                // Connections across close on both sides after their idle timeout (5 s).
                let mut across: Vec<(ConnId, usize, usize)> = self
                    .conns
                    .iter()
                    .filter(|(_, (a, b))| self.apart(*a, *b))
                    .map(|(c, (a, b))| (*c, *a, *b))
                    .collect();
                // (In a fixed order: the run is deterministic for its seed.)
                across.sort_unstable();
                for (conn, a, b) in across {
                    self.conns.remove(&conn);
                    self.at(now + Duration::from_secs(5), Ev::Closed { conn, at: a });
                    self.at(now + Duration::from_secs(5), Ev::Closed { conn, at: b });
                }
            }
            Ev::Heal => {
                self.split = false;
                self.healed_at = Some(now);
                let second: Vec<(usize, PeerId)> = self
                    .hosts
                    .iter()
                    .enumerate()
                    .skip(self.config.seeds)
                    .filter_map(|(i, h)| h.as_ref().filter(|h| h.side == 1).map(|h| (i, h.id)))
                    .collect();
                // Spread over 5 s, as hosts would notice at different times (all at once
                // would be a flash crowd at the few, which measures their connection cap).
                for (host, id) in second {
                    if let Some(x) = self.hosts[host].as_mut() {
                        x.healed = Some(None);
                    }
                    let offset = Duration::from_millis(self.rng.below(5000) as u64);
                    self.at(now + offset, Ev::HealProbe { host, id });
                }
            }
            Ev::HealProbe { host, id } => {
                let Some(x) = self.hosts[host].as_mut().filter(|x| x.id == id) else {
                    return;
                };
                if x.healed != Some(None) {
                    return;
                }
                x.broker.probe(FEW, now);
                self.drain(host);
                self.at(now + Duration::from_secs(10), Ev::HealProbe { host, id });
            }
            Ev::Leave => {
                // A random non-seed host that is still there (most are: tries are few).
                let span = self.hosts.len() - self.config.seeds;
                let Some(h) = (0..64)
                    .map(|_| self.config.seeds + self.rng.below(span))
                    .find(|&i| self.hosts[i].is_some())
                else {
                    return;
                };
                let Some(x) = self.hosts[h].take() else {
                    return;
                };
                self.by_addr.remove(&x.addr);
                self.by_id.remove(&x.id);
                self.alive -= 1;
                for i in 0..2 {
                    self.to_hand[i] += usize::from(x.runs[i]);
                }
                // Its peers notice after their idle timeout (5 s).
                for conn in x.conns {
                    if let Some((a, b)) = self.conns.remove(&conn) {
                        let other = if a == h { b } else { a };
                        self.at(now + Duration::from_secs(5), Ev::Closed { conn, at: other });
                    }
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
        let (mut table_sum, mut records, mut isolated) = (0, 0, 0);
        let busiest = self
            .hosts
            .iter()
            .flatten()
            .map(|h| h.broker.host_count())
            .max()
            .unwrap_or(0);
        for h in &alive {
            let hosts = h.broker.host_peers();
            let knows = |n: &Host| n.runs[0] || n.broker.find_first(SERVICE, |_| true).is_some();
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
            isolated += usize::from(hosts.is_empty());
            conns_sum += hosts.len();
            conns_max = conns_max.max(hosts.len());
            learned_sum += learned;
            learned_max = learned_max.max(learned);
            table_sum += h.broker.table_len();
            records = records.max(h.broker.records_len());
        }
        let n = alive.len().max(1) as f64;
        Sample {
            at: self.now - self.start,
            alive: alive.len(),
            reach: reached as f64 / n,
            conns: (conns_sum as f64 / n, conns_max),
            seed_conns,
            busiest,
            isolated,
            table: table_sum as f64 / n,
            records,
            learned: (learned_sum as f64 / n, learned_max),
        }
    }
}

/// The value at quantile `q` of sorted `v` (the default if empty).
fn pick<T: Copy + Default>(v: &[T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// This process's resident memory, in KiB (0 where `/proc` is missing).
fn resident_kib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4.0)
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
        to_hand: [0; 2],
        lookups_found: Vec::new(),
        missed_at_end: [(0, 0); 2],
        alive: 0,
        final_window: Duration::ZERO,
        split: false,
        healed_at: None,
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
    if let Some((from, lasts)) = config.partition {
        net.at(start + from, Ev::Split);
        net.at(start + from + lasts, Ev::Heal);
    }
    // The last lookups: every host there then, each at a random time over the last third
    // of the run (two minutes at most), ending 45 s before the end so that each has time
    // to finish. (All at once would be a flash crowd at the few hosts that run the rare
    // service, which measures their connection cap rather than the DHT.)
    let window = (config.duration / 3).min(Duration::from_secs(120));
    let final_at = end
        .checked_sub(Duration::from_secs(45) + window)
        .unwrap_or(start);
    net.final_window = window;
    net.at(final_at, Ev::FinalPhase);
    let mut samples = Vec::new();
    let mut next_sample = start + config.sample_every;
    let mut last = start;
    while let Some(Reverse((when, _, n))) = net.queue.pop() {
        if when > end {
            break;
        }
        while next_sample <= when {
            net.now = next_sample;
            let s = net.sample();
            if config.progress {
                eprintln!(
                    "sim: {} hosts, {} s of {} s simulated in {:.0} s, {} alive, connections {:.1} / {}, table {:.0}",
                    config.hosts,
                    s.at.as_secs(),
                    config.duration.as_secs(),
                    wall.elapsed().as_secs_f64(),
                    s.alive,
                    s.conns.0,
                    s.conns.1,
                    s.table,
                );
            }
            samples.push(s);
            next_sample += config.sample_every;
        }
        net.host_time += (when - last) * net.alive;
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
    let alive: Vec<&Host> = net.hosts.iter().skip(config.seeds).flatten().collect();
    let share = |hits: usize, of: usize| hits as f64 / of.max(1) as f64;
    // A host that joined while the network was split (or just before) cannot find what
    // runs only on the other side until it heals: `healed` measures that, and the figures
    // of finding after joining leave it out.
    let cut_off = |h: &Host| {
        config.partition.is_some_and(|(from, lasts)| {
            let joined = h.joined - start;
            joined + Duration::from_secs(30) >= from && joined <= from + lasts
        })
    };
    let mut found_in_30s = [0.0; 2];
    let mut reach_at_end = [0.0; 2];
    for (i, (f30, end_share)) in found_in_30s
        .iter_mut()
        .zip(reach_at_end.iter_mut())
        .enumerate()
    {
        let old: Vec<&&Host> = alive
            .iter()
            .filter(|h| end.saturating_duration_since(h.joined) >= Duration::from_secs(30))
            .filter(|h| !cut_off(h))
            .collect();
        let in_time = old
            .iter()
            .filter(|h| h.found_at[i].is_some_and(|t| t - h.joined <= Duration::from_secs(30)))
            .count();
        *f30 = share(in_time, old.len());
        let asked: Vec<bool> = alive.iter().filter_map(|h| h.found_at_end[i]).collect();
        *end_share = share(asked.iter().filter(|f| **f).count(), asked.len());
    }
    let mut times: Vec<f64> = alive
        .iter()
        .filter(|h| !cut_off(h))
        .filter_map(|h| h.found_at[0].map(|t| (t - h.joined).as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    let mut rounds: Vec<u32> = net.lookups_found.iter().map(|(r, _)| *r).collect();
    rounds.sort_unstable();
    let mut took: Vec<f64> = net.lookups_found.iter().map(|(_, t)| *t).collect();
    took.sort_by(f64::total_cmp);
    let memory_per_host_kib = resident_kib() / net.hosts.len().max(1) as f64;
    let healed = net
        .healed_at
        .filter(|at| end.saturating_duration_since(*at) >= Duration::from_secs(60))
        .map(|at| {
            let took: Vec<f64> = alive
                .iter()
                .filter_map(|h| h.healed)
                .map(|t| t.map_or(f64::INFINITY, |t| (t - at).as_secs_f64()))
                .collect();
            let in_time = took.iter().filter(|t| **t <= 60.0).count();
            let slowest = took.iter().copied().fold(0.0, f64::max);
            (share(in_time, took.len()), slowest)
        });
    SimReport {
        samples,
        full_reach_after,
        found_in_30s,
        reach_at_end,
        missed_at_end: net.missed_at_end,
        find_time: [
            pick(&times, 0.5),
            pick(&times, 0.99),
            times.last().copied().unwrap_or(0.0),
        ],
        rounds: [
            pick(&rounds, 0.5),
            pick(&rounds, 0.99),
            rounds.last().copied().unwrap_or(0),
        ],
        lookup_time: [pick(&took, 0.5), pick(&took, 0.99)],
        memory_per_host_kib,
        messages_per_host_minute: net.sent as f64 / host_minutes.max(1e-9),
        providers: alive.iter().filter(|h| h.runs[0]).count(),
        wall: wall.elapsed(),
        healed,
    }
}
