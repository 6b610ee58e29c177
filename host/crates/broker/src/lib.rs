//! The channel-0 broker as a state machine, like `quinn-proto`: no sockets, no clock, no
//! runtime. The driver (`net`) feeds it what happened — a connection came up
//! ([`Broker::handle_connected`]), a control message arrived ([`Broker::handle_control`]), a
//! connection or a dial was lost, time passed ([`Broker::handle_timeout`]) — and gives it
//! commands ([`Broker::request`], [`Broker::answer`]). It says what to do through its
//! outputs: control messages to write ([`Broker::poll_transmit`]), things for the driver to
//! act on ([`Broker::poll_event`]: answer a request with the host's services, dial a peer,
//! close a connection) and when to call it again ([`Broker::poll_timeout`]).
//!
//! Poll order after any input: `poll_transmit` until `None`, then `poll_event` until `None`,
//! then `poll_timeout`.
//!
//! What it owns: the hello exchange and version agreement; request ids, their deadlines and
//! the matching of answers (which may come in any order); one connection per pair of hosts
//! (a deterministic rule settles simultaneous dials); the peer table — configured peers
//! re-dialled with jittered, capped exponential back-off, peers learned by exchange in a
//! bounded table — and `get-peers`/`find-service` answers, rate-limited per connection.
//! One file per concern: `config`, `connections` (and hello), `requests` (and deadlines),
//! `peers` (the peer table), `queries` (answers to what peers ask); this file holds the
//! broker's state, its inputs' dispatch and its outputs.

/// The manifest name a service name is found under: `room` for a keyed instance `room/42`
/// (hosts list keyed classes, not their keys).
fn class_of(service: &str) -> &str {
    wire::LocalName::parse(service).class
}

mod config;
mod connections;
pub mod dht;
mod lookups;
mod peers;
mod queries;
mod requests;
#[cfg(test)]
mod tests;

pub use config::{Allow, BrokerConfig, BrokerLimits};
use connections::{Conn, ConnState, advertised};
pub use lookups::LookupDone;
use lookups::{Goal, Lookup, LookupId, Queued};
use peers::{Configured, Learned};
use requests::{Pending, Purpose};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
pub use wasmwire_manifest::PeerSpec;
use wasmwire_wire::{
    self as wire, Control, ErrorCode, Hello, Oversize, PeerEntry, PeerId, Role, Undecodable,
};

/// Names one connection for the life of a host.
pub type ConnId = u64;

/// What the driver should dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTo {
    /// Configured peer number `index`: resolve `spec.addr` and dial every address.
    Configured {
        /// Its place in `BrokerConfig::peers`.
        index: usize,
        /// The peer.
        spec: PeerSpec,
    },
    /// An address given on the command line (not re-dialled).
    Direct(SocketAddr),
    /// A peer learned by exchange.
    Learned {
        /// Its id (the dial must check it).
        peer: PeerId,
        /// Where it said it listens.
        addr: SocketAddr,
    },
}

/// A request from a peer that needs the host's services to answer: the driver answers it
/// with [`Broker::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `list-services`.
    ListServices,
    /// `list-sessions`.
    ListSessions,
    /// `get-stats`.
    Stats,
    /// `request`.
    Request {
        /// Instance name.
        service: String,
        /// Event name.
        event: String,
        /// JSON text.
        params: String,
        /// How long the caller waits.
        timeout: Duration,
        /// Who waits on it, as `PEERID/name`.
        chain: Vec<String>,
        /// The calling instance or client.
        caller: Option<String>,
        /// The callee's id of the caller's session with it, if any.
        session: Option<u64>,
    },
}

/// A request this host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// `list-services`.
    ListServices,
    /// `list-sessions`.
    ListSessions,
    /// `get-stats`.
    Stats,
    /// `find-service`.
    FindService(String),
    /// `request`.
    Request {
        /// Instance name.
        service: String,
        /// Event name.
        event: String,
        /// JSON text.
        params: String,
        /// Who waits on it, as `PEERID/name`.
        chain: Vec<String>,
        /// The calling instance or client.
        caller: Option<String>,
        /// The callee's id of the caller's session with it, if any.
        session: Option<u64>,
    },
    /// `get-peers`.
    GetPeers,
    /// `ping`.
    Ping,
    /// `find-node` toward a key (as text).
    FindNode(String),
    /// `add-provider` for one of this host's services.
    AddProvider(String),
}

/// Why one of our requests got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// As a code.
    pub code: ErrorCode,
    /// In words.
    pub reason: String,
    /// With `too-large`: the sizes.
    pub oversize: Option<Oversize>,
}

impl Failure {
    /// A failure with a code and a reason.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
            oversize: None,
        }
    }
}

/// Something for the driver to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The hello exchange finished: the connection carries sessions and requests now.
    Ready {
        /// The connection.
        conn: ConnId,
        /// Who is at the other end.
        peer: PeerId,
        /// Host or client.
        role: Role,
    },
    /// A peer asks something only the host's services can answer.
    Incoming {
        /// The connection.
        conn: ConnId,
        /// Its request id, for `answer`.
        id: u64,
        /// Who asks.
        peer: PeerId,
        /// What.
        request: Incoming,
    },
    /// One of our requests finished.
    Answered {
        /// The token `request` returned.
        token: u64,
        /// The answer, or why there is none.
        result: Result<Control, Failure>,
    },
    /// Close this connection, saying why.
    Close {
        /// The connection.
        conn: ConnId,
        /// The reason, for both logs.
        reason: String,
    },
    /// Dial a peer; report the outcome with `handle_connected` or `handle_dial_failed`.
    Dial(DialTo),
    /// A connection is no longer needed: a bootstrap (configured) peer's once this host has
    /// enough others, one made for a lookup's query, or one another host made once this
    /// host holds more than its high-water mark. Close it if no session uses it (report it
    /// with `handle_closed`); the peer is dialled again when needed.
    Release {
        /// The connection.
        conn: ConnId,
    },
}

/// The channel-0 state machine of one host.
///
/// Nothing an input does walks every connection or every learned peer: timers sit in
/// ordered sets, and the ready host connections are indexed by peer, by service and in a
/// list to sample from, so a seed with a thousand connections answers as cheaply as a host
/// with three.
pub struct Broker {
    config: BrokerConfig,
    conns: HashMap<ConnId, Conn>,
    /// The ready host connection to each peer (there is one: see `keep_one`) and the
    /// peer's place in `host_list`.
    hosts: HashMap<PeerId, (ConnId, usize)>,
    /// The peers of `hosts`, in a list to draw random samples from.
    host_list: Vec<PeerId>,
    /// Ready host connections to configured peers (see `Conn::bootstrap`).
    bootstrap_ready: usize,
    /// Connections per peer in any state but closing (a dial to it is not needed).
    live: HashMap<PeerId, u32>,
    /// The ready hosts that expose each service, by connection age.
    providers: HashMap<String, BTreeMap<u64, PeerId>>,
    /// Hello deadlines and peer-exchange times of connections.
    timers: BTreeSet<(Instant, Timer)>,
    configured: Vec<Configured>,
    learned: HashMap<PeerId, Learned>,
    /// When each learned peer that is not being dialled may be dialled.
    learned_due: BTreeSet<(Instant, PeerId)>,
    /// Hosts that answered `full`, and until when they are not learned again (at most
    /// `max_learned` of them).
    full_until: HashMap<PeerId, Instant>,
    dials: usize,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// The DHT's k-buckets.
    table: dht::Table,
    /// Provider records kept for others.
    records: dht::Records,
    lookups: HashMap<LookupId, Lookup>,
    next_lookup: LookupId,
    lookups_done: VecDeque<LookupDone>,
    /// Requests waiting for a connection to a host being dialled for them.
    queued: HashMap<PeerId, Vec<Queued>>,
    /// Hosts being dialled for a lookup's query.
    lookup_dials: HashSet<PeerId>,
    /// Hosts `reach` looks up by id (they are dialled when found).
    reaching: HashSet<PeerId>,
    /// Hosts a finished probe was still dialling: let go as soon as they are ready.
    let_go: HashSet<PeerId>,
    /// Providers being dialled to check them, and the lookups that wait on each.
    verifying: HashMap<PeerId, Vec<LookupId>>,
    /// This host's services are being published (the first time is scheduled at hello).
    publishing: bool,
    /// The service the next publication starts with.
    publish_from: usize,
    /// The wait the next publication schedules after itself ([`dht::FIRST_REPUBLISH`],
    /// doubling up to [`dht::REPUBLISH_EVERY`]).
    publish_every: Duration,
    /// Where each service's record went the last time.
    placements: HashMap<String, lookups::Placement>,
    next_token: u64,
    opened: u64,
    /// Host connections released (`Event::Release`) and not closed yet: no longer
    /// counted as held, so that releases decided together do not overshoot.
    released: usize,
    transmits: VecDeque<(ConnId, Control)>,
    events: VecDeque<Event>,
    rng: u64,
}

/// What a connection's timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Its hello must have come.
    Hello(ConnId),
    /// Ask it for its peers.
    Exchange(ConnId),
    /// A lookup's time is up.
    Lookup(LookupId),
    /// Publish this host's services again.
    Publish,
}

impl Broker {
    /// A broker that will dial its configured peers on the first `handle_timeout`.
    pub fn new(config: BrokerConfig, now: Instant) -> Broker {
        let configured = config
            .peers
            .iter()
            .map(|spec| Configured {
                spec: spec.clone(),
                peer: spec.expected,
                backoff: config.limits.backoff_min,
                next: Some(now),
                dialling: false,
            })
            .collect();
        let rng = config.seed | 1;
        let table = dht::Table::new(&config.me);
        Broker {
            config,
            conns: HashMap::new(),
            hosts: HashMap::new(),
            host_list: Vec::new(),
            bootstrap_ready: 0,
            live: HashMap::new(),
            providers: HashMap::new(),
            timers: BTreeSet::new(),
            configured,
            learned: HashMap::new(),
            learned_due: BTreeSet::new(),
            full_until: HashMap::new(),
            dials: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            table,
            records: dht::Records::default(),
            lookups: HashMap::new(),
            next_lookup: 1,
            lookups_done: VecDeque::new(),
            queued: HashMap::new(),
            lookup_dials: HashSet::new(),
            reaching: HashSet::new(),
            let_go: HashSet::new(),
            verifying: HashMap::new(),
            publishing: false,
            publish_from: 0,
            publish_every: dht::FIRST_REPUBLISH,
            placements: HashMap::new(),
            next_token: 1,
            opened: 0,
            released: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
        }
    }

    /// This host's id.
    pub fn me(&self) -> PeerId {
        self.config.me
    }

    /// A control message arrived on `conn`.
    pub fn handle_control(&mut self, conn: ConnId, message: Control, now: Instant) {
        let ready = match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closing) => return,
            Some(ConnState::AwaitHello { .. }) => false,
            Some(ConnState::Ready(_)) => true,
        };
        match (ready, message) {
            (false, Control::Hello(hello)) => self.on_hello(conn, hello, now),
            (false, Control::Full { reason, peers })
                if self.conns.get(&conn).is_some_and(|c| c.dialled) =>
            {
                // A full host's sample is learned like peer exchange (by hosts: a client
                // learns no peers), then both close; the full host itself is not learned
                // or dialled again for a while (its sample names the hosts it is
                // connected to, which may be as full).
                if self.config.role == Role::Host {
                    if let Some(c) = self.conns.get(&conn) {
                        let (peer, configured) = (c.peer, c.configured);
                        // The key is the TLS handshake's: a configured entry written without
                        // one learns it here, so its back-off can see the `full`.
                        if let Some(t) = configured.and_then(|i| self.configured.get_mut(i)) {
                            t.peer.get_or_insert(peer);
                        }
                        self.note_full(peer, now);
                    }
                    self.learn(conn, peers, now);
                }
                let reason = format!("the peer is full: {}", cut(&reason, 200));
                self.close(conn, reason, now);
            }
            (false, other) => {
                let reason = format!("expected hello first, got {}", other.type_name());
                self.close(conn, reason, now);
            }
            (true, Control::Hello(_)) => {
                self.close(conn, "a second hello on one connection".into(), now)
            }
            (true, m) if m.is_answer() => self.on_answer(conn, m, now),
            (true, m) => self.on_ask(conn, m, now),
        }
    }

    /// Time passed: hello and request deadlines, peer exchange, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The due ones are taken out first: an exchange puts its next time back in, and
        // with a zero period that would be due at once, for ever.
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            due.push(timer);
        }
        for timer in due {
            match timer {
                Timer::Hello(conn) => {
                    if matches!(
                        self.conns.get(&conn).map(|c| &c.state),
                        Some(ConnState::AwaitHello { .. })
                    ) {
                        self.close(conn, "no hello in time".into(), now);
                    }
                }
                Timer::Exchange(conn) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.next_exchange = None;
                        self.exchange(conn, now, false);
                    }
                }
                Timer::Lookup(id) => self.advance(id, now),
                Timer::Publish => self.publish(now),
            }
        }
        self.records.expire(now);
        while let Some(&(at, token)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if self.pending.contains_key(&token) {
                self.finish(
                    token,
                    Err(Failure::new(ErrorCode::Timeout, "no answer in time")),
                    now,
                );
            }
        }
        let bootstrapped = self.bootstrapped();
        for i in 0..self.configured.len() {
            let t = &self.configured[i];
            if t.dialling || !t.next.is_some_and(|at| at <= now) {
                continue;
            }
            let peer = t.peer;
            self.configured[i].next = None;
            // A configured peer that answered `full` waits out its back-off.
            if let Some(until) = peer.and_then(|p| self.full_until.get(&p))
                && *until > now
            {
                self.configured[i].next = Some(*until);
                continue;
            }
            // Enough other hosts: a configured peer is a bootstrap peer, dialled again only
            // when this host falls below that (`handle_closed`).
            if bootstrapped
                || peer.is_some_and(|p| self.has_conn(&p) || !self.config.allow.permits(&p))
            {
                continue;
            }
            let t = &mut self.configured[i];
            t.dialling = true;
            let spec = t.spec.clone();
            self.events
                .push_back(Event::Dial(DialTo::Configured { index: i, spec }));
        }
        self.dial_learned(now);
    }

    /// The next control message to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Control)> {
        let next = self.transmits.pop_front();
        if next.is_none() && self.transmits.capacity() > 4 * DRAINED_ROOM {
            // A big burst is over: its room goes back (see `trim`). (Smaller ones keep
            // theirs, so that the usual bursts do not reallocate each time.)
            self.transmits.shrink_to(DRAINED_ROOM);
        }
        next
    }

    /// The next thing to act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let next = self.events.pop_front();
        if next.is_none() && self.events.capacity() > 4 * DRAINED_ROOM {
            self.events.shrink_to(DRAINED_ROOM);
        }
        next
    }

    /// When `handle_timeout` must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let configured = self
            .configured
            .iter()
            .filter(|t| !t.dialling)
            .filter_map(|t| t.next);
        // Learned peers are due only while they may be dialled at all; otherwise a due entry
        // would make the driver wake up at once, over and over.
        let may_dial =
            self.dials < self.config.limits.max_dials && self.host_count() < self.dial_limit();
        let learned = self
            .learned_due
            .first()
            .map(|(t, _)| *t)
            .filter(|_| may_dial);
        configured
            .chain(learned)
            .chain(self.timers.first().map(|(t, _)| *t))
            .chain(self.deadlines.first().map(|(t, _)| *t))
            .min()
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Room a drained output queue keeps.
const DRAINED_ROOM: usize = 8;

/// Gives back the room a map grew to at a peak once it holds under a quarter of that: a
/// host that once held many connections (a seed while the network forms, a host under a
/// flash crowd) does not keep their room for good. Amortised: a shrink halves the room at
/// least, and only after as many removals.
fn trim<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}
