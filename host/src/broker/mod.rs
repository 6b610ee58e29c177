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

/// The manifest name a service name is found under: `room` for a keyed instance `room/42`
/// (hosts list keyed classes, not their keys).
fn class_of(service: &str) -> &str {
    wire::LocalName::parse(service).class
}

#[cfg(test)]
mod tests;

pub use crate::manifest::PeerSpec;
use crate::wire::{self, Control, ErrorCode, Hello, PeerEntry, PeerId, Role, Undecodable};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names one connection for the life of a host.
pub type ConnId = u64;

/// Bounds and periods of the broker.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// How long a new connection may take to send its `hello`.
    pub hello_timeout: Duration,
    /// Peers learned by exchange that are kept at most.
    pub max_learned: usize,
    /// Host connections past which learned peers are no longer dialled.
    pub max_peers: usize,
    /// Dials of learned peers under way at once.
    pub max_dials: usize,
    /// Peers in one `peers` answer to a host.
    pub peers_per_answer: usize,
    /// How often connected hosts are asked for their peers.
    pub exchange_every: Duration,
    /// `get-peers` and `find-service` answered per second per connection (and twice that in
    /// a burst); past that the answer is `rate-limited`.
    pub queries_per_second: u32,
    /// Requests from one connection being answered at once; past that, `busy`.
    pub max_incoming: usize,
    /// Our requests on one connection waiting for answers at once.
    pub max_pending: usize,
    /// First delay before re-dialling a lost peer; doubles per failure.
    pub backoff_min: Duration,
    /// Longest delay before re-dialling.
    pub backoff_max: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            hello_timeout: Duration::from_secs(5),
            max_learned: 256,
            max_peers: 64,
            max_dials: 4,
            peers_per_answer: 32,
            exchange_every: Duration::from_secs(30),
            queries_per_second: 20,
            max_incoming: 256,
            max_pending: 4096,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What a broker is told at start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This host's id.
    pub me: PeerId,
    /// Host, or client (the CLI).
    pub role: Role,
    /// Where this host accepts connections.
    pub listen: Option<SocketAddr>,
    /// The services this host exposes.
    pub services: Vec<String>,
    /// Who may connect, be dialled, or be learned.
    pub allow: Arc<Allow>,
    /// Configured peers (`[host] peers`), dialled at start and after loss.
    pub peers: Vec<PeerSpec>,
    /// Bounds and periods.
    pub limits: BrokerLimits,
    /// Seeds the back-off jitter (tests pass a fixed one).
    pub seed: u64,
}

/// Who may connect: the `allow` list (empty: anyone), and how many handshakes the key
/// checks refused (the TLS verifiers that consult the list count them here).
#[derive(Debug, Default)]
pub struct Allow {
    ids: HashSet<PeerId>,
    refused: std::sync::atomic::AtomicU64,
}

impl Allow {
    /// An allow list of these ids; empty allows every peer.
    pub fn new(ids: impl IntoIterator<Item = PeerId>) -> Allow {
        Allow {
            ids: ids.into_iter().collect(),
            refused: Default::default(),
        }
    }

    /// Whether `peer` may connect.
    pub fn permits(&self, peer: &PeerId) -> bool {
        self.ids.is_empty() || self.ids.contains(peer)
    }

    /// Counts one refused handshake.
    pub fn count_refusal(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Handshakes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

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
}

/// Why one of our requests got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// As a code.
    pub code: ErrorCode,
    /// In words.
    pub reason: String,
}

impl Failure {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
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
}

#[derive(Debug)]
struct Conn {
    peer: PeerId,
    /// We dialled it (rather than accepted it).
    dialled: bool,
    remote: SocketAddr,
    configured: Option<usize>,
    state: ConnState,
    bucket: Bucket,
    incoming: usize,
    pending: usize,
    next_exchange: Option<Instant>,
    opened: u64,
    /// The nonce we sent in our hello.
    my_nonce: u64,
    /// The nonce of whoever dialled it (known after hello).
    dialler_nonce: u64,
    /// It finished hello as a host (it stays true while the connection closes).
    host: bool,
}

#[derive(Debug)]
enum ConnState {
    AwaitHello { deadline: Instant },
    Ready(Box<Agreed>),
    Closing,
}

/// What two sides agreed on in their hellos.
#[derive(Debug, Clone)]
struct Agreed {
    role: Role,
    listen: Option<SocketAddr>,
    services: Vec<String>,
}

/// A token bucket: `rate` per second, up to twice that at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let cap = f64::from(rate) * 2.0;
        let elapsed = self
            .at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(cap);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Configured {
    spec: PeerSpec,
    /// The id seen the last time it answered (or the one written after `#`).
    peer: Option<PeerId>,
    backoff: Duration,
    next: Option<Instant>,
    dialling: bool,
}

#[derive(Debug)]
struct Learned {
    addr: SocketAddr,
    failures: u32,
    next: Instant,
    dialling: bool,
}

#[derive(Debug)]
struct Pending {
    conn: ConnId,
    deadline: Instant,
    internal: bool,
}

/// The channel-0 state machine of one host.
pub struct Broker {
    config: BrokerConfig,
    conns: HashMap<ConnId, Conn>,
    configured: Vec<Configured>,
    learned: HashMap<PeerId, Learned>,
    dials: usize,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    next_token: u64,
    opened: u64,
    transmits: VecDeque<(ConnId, Control)>,
    events: VecDeque<Event>,
    rng: u64,
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
        Broker {
            config,
            conns: HashMap::new(),
            configured,
            learned: HashMap::new(),
            dials: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_token: 1,
            opened: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
        }
    }

    /// This host's id.
    pub fn me(&self) -> PeerId {
        self.config.me
    }

    // ---- getters ----

    /// The connection to use for `peer`: its ready connection to a host, if any.
    pub fn connection_to(&self, peer: &PeerId) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer == *peer && c.role() == Some(Role::Host))
            .max_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id)
    }

    /// Whether `peer` has a connection in any state but closing (a dial is not needed).
    fn has_conn(&self, peer: &PeerId) -> bool {
        self.conns
            .values()
            .any(|c| c.peer == *peer && !matches!(c.state, ConnState::Closing))
    }

    /// Connected hosts that said they expose `service`, nearest first (by connection age).
    pub fn find(&self, service: &str) -> Vec<PeerId> {
        let mut found: Vec<(u64, PeerId)> = self
            .conns
            .values()
            .filter_map(|c| match &c.state {
                ConnState::Ready(a)
                    if a.role == Role::Host
                        && a.services.iter().any(|s| s == class_of(service)) =>
                {
                    Some((c.opened, c.peer))
                }
                _ => None,
            })
            .collect();
        found.sort();
        found.dedup_by_key(|(_, p)| *p);
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Connected hosts, then learned ones, as `peers` lists them.
    pub fn peer_list(
        &self,
        include_learned: bool,
        exclude: Option<PeerId>,
        max: usize,
    ) -> Vec<PeerEntry> {
        let mut out: Vec<PeerEntry> = Vec::new();
        let mut seen = HashSet::new();
        let mut conns: Vec<&Conn> = self.conns.values().collect();
        conns.sort_by_key(|c| c.opened);
        for c in conns {
            let ConnState::Ready(a) = &c.state else {
                continue;
            };
            if a.role != Role::Host || Some(c.peer) == exclude || !seen.insert(c.peer) {
                continue;
            }
            out.push(PeerEntry {
                peer: c.peer.to_string(),
                addr: advertised(a.listen, c.remote).map(|a| a.to_string()),
                connected: true,
            });
        }
        if include_learned {
            let mut learned: Vec<(&PeerId, &Learned)> = self.learned.iter().collect();
            learned.sort_by_key(|(p, _)| **p);
            for (p, l) in learned {
                if Some(*p) != exclude && seen.insert(*p) {
                    out.push(PeerEntry {
                        peer: p.to_string(),
                        addr: Some(l.addr.to_string()),
                        connected: false,
                    });
                }
            }
        }
        out.truncate(max);
        out
    }

    /// Ready connections (any role), for tests and introspection.
    pub fn ready_connections(&self) -> Vec<(ConnId, PeerId, Role)> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter_map(|(id, c)| c.role().map(|r| (*id, c.peer, r)))
            .collect();
        v.sort();
        v
    }

    // ---- inputs ----

    /// A connection finished its TLS handshake with `peer` (already checked against
    /// `allow`). `dialled` says whether we dialled it, and for which configured peer.
    pub fn handle_connected(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        remote: SocketAddr,
        dialled: Option<DialTo>,
        now: Instant,
    ) {
        self.opened += 1;
        let configured = match &dialled {
            Some(DialTo::Configured { index, .. }) => Some(*index),
            _ => None,
        };
        if let Some(d) = &dialled {
            self.dial_finished(d);
        }
        let nonce = self.next_random();
        if let Some(DialTo::Learned { peer, .. }) = &dialled {
            // Connected: it is no longer a peer to dial.
            self.learned.remove(peer);
        }
        if dialled.is_none() {
            // A configured peer that shows up inbound is reachable: reset its back-off.
            let min = self.config.limits.backoff_min;
            for c in self.configured.iter_mut().filter(|c| c.peer == Some(peer)) {
                c.backoff = min;
            }
        }
        self.conns.insert(
            conn,
            Conn {
                peer,
                dialled: dialled.is_some(),
                remote,
                configured,
                state: ConnState::AwaitHello {
                    deadline: now + self.config.limits.hello_timeout,
                },
                bucket: Bucket {
                    tokens: f64::from(self.config.limits.queries_per_second) * 2.0,
                    at: None,
                },
                incoming: 0,
                pending: 0,
                next_exchange: None,
                opened: self.opened,
                my_nonce: nonce,
                dialler_nonce: 0,
                host: false,
            },
        );
        let hello = Hello {
            role: self.config.role,
            major: wire::MAJOR,
            minor: wire::MINOR,
            features: wire::FEATURES.iter().map(|f| f.to_string()).collect(),
            listen: self.config.listen.map(|a| a.to_string()),
            services: self.config.services.clone(),
            nonce,
        };
        self.transmits.push_back((conn, Control::Hello(hello)));
    }

    /// A dial produced no connection.
    pub fn handle_dial_failed(&mut self, to: &DialTo, now: Instant) {
        self.dial_finished(to);
        match to {
            DialTo::Configured { index, .. } => self.schedule_redial(*index, now),
            DialTo::Learned { peer, .. } => self.learned_failed(*peer, now),
            DialTo::Direct(_) => {}
        }
    }

    /// A control frame that could not be decoded arrived on `conn`.
    pub fn handle_undecodable(&mut self, conn: ConnId, error: Undecodable, now: Instant) {
        match error {
            Undecodable::UnknownType { id, kind } => {
                // Only a peer past its hello may ask things; before it, nothing is known.
                if matches!(
                    self.conns.get(&conn).map(|c| &c.state),
                    Some(ConnState::Ready(_))
                ) {
                    self.transmits.push_back((
                        conn,
                        Control::Error {
                            id: id.unwrap_or(0),
                            code: ErrorCode::UnknownType,
                            reason: format!("unknown message type {kind:?}"),
                        },
                    ));
                } else {
                    self.close(
                        conn,
                        format!("expected hello, got unknown type {kind:?}"),
                        now,
                    );
                }
            }
            Undecodable::Malformed(reason) => {
                self.close(conn, format!("malformed control message: {reason}"), now)
            }
        }
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

    /// A connection ended (closed by either side or lost).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(t, _)| *t)
            .collect();
        for token in failed {
            self.finish(
                token,
                Err(Failure::new(ErrorCode::Closed, "the connection closed")),
                now,
            );
        }
        if c.host && self.connection_to(&c.peer).is_none() {
            let lost: Vec<usize> = self
                .configured
                .iter()
                .enumerate()
                .filter(|(i, t)| t.peer == Some(c.peer) || c.configured == Some(*i))
                .map(|(i, _)| i)
                .collect();
            for i in lost {
                self.schedule_redial(i, now);
            }
        } else if let Some(i) = c.configured
            && self.configured[i]
                .peer
                .is_none_or(|p| self.connection_to(&p).is_none())
        {
            self.schedule_redial(i, now);
        }
    }

    /// Time passed: hello and request deadlines, peer exchange, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, ConnState::AwaitHello { deadline } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            self.close(conn, "no hello in time".into(), now);
        }
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
        let exchange: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.next_exchange.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in exchange {
            self.exchange(conn, now);
        }
        for i in 0..self.configured.len() {
            let t = &self.configured[i];
            if t.dialling || !t.next.is_some_and(|at| at <= now) {
                continue;
            }
            let peer = t.peer;
            self.configured[i].next = None;
            if peer.is_some_and(|p| self.has_conn(&p) || !self.config.allow.permits(&p)) {
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

    // ---- commands ----

    /// Sends a request on `conn`; its answer comes back as `Event::Answered` with the
    /// returned token, or a failure after `timeout`.
    pub fn request(
        &mut self,
        conn: ConnId,
        ask: Ask,
        timeout: Duration,
        now: Instant,
    ) -> Result<u64, Failure> {
        self.send_request(conn, ask, timeout, now, false)
    }

    /// Answers an `Event::Incoming`.
    pub fn answer(&mut self, conn: ConnId, id: u64, answer: Result<Control, Failure>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.incoming = c.incoming.saturating_sub(1);
        let message = match answer {
            Ok(m) => m,
            Err(f) => Control::Error {
                id,
                code: f.code,
                reason: f.reason,
            },
        };
        self.transmits.push_back((conn, message));
    }

    /// Fails one of our requests the driver could not send (its frame was too large); its
    /// `Event::Answered` carries `failure`.
    pub fn fail(&mut self, token: u64, failure: Failure, now: Instant) {
        self.finish(token, Err(failure), now);
    }

    /// Closes a connection (the driver gets `Event::Close`).
    pub fn close(&mut self, conn: ConnId, reason: String, _now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !matches!(c.state, ConnState::Closing)
        {
            c.state = ConnState::Closing;
            self.events.push_back(Event::Close { conn, reason });
        }
    }

    // ---- outputs ----

    /// The next control message to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Control)> {
        self.transmits.pop_front()
    }

    /// The next thing to act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = self.conns.values().filter_map(|c| match c.state {
            ConnState::AwaitHello { deadline } => Some(deadline),
            _ => c.next_exchange,
        });
        let configured = self
            .configured
            .iter()
            .filter(|t| !t.dialling)
            .filter_map(|t| t.next);
        // Learned peers are due only while they may be dialled at all; otherwise a due entry
        // would make the driver wake up at once, over and over.
        let may_dial = self.dials < self.config.limits.max_dials
            && self.host_count() < self.config.limits.max_peers;
        let learned = self
            .learned
            .values()
            .filter(|l| !l.dialling)
            .map(|l| l.next)
            .min()
            .filter(|_| may_dial);
        hello
            .chain(configured)
            .chain(learned)
            .chain(self.deadlines.first().map(|(t, _)| *t))
            .min()
    }

    // ---- internals ----

    fn send_request(
        &mut self,
        conn: ConnId,
        ask: Ask,
        timeout: Duration,
        now: Instant,
        internal: bool,
    ) -> Result<u64, Failure> {
        let max = self.config.limits.max_pending;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(Failure::new(ErrorCode::Closed, "no such connection"));
        };
        if c.role().is_none() {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "the connection is not ready",
            ));
        }
        if c.pending >= max {
            return Err(Failure::new(
                ErrorCode::Busy,
                format!("{max} requests to this peer are waiting already"),
            ));
        }
        c.pending += 1;
        let id = self.next_token;
        self.next_token += 1;
        let message = match ask {
            Ask::ListServices => Control::ListServices { id },
            Ask::ListSessions => Control::ListSessions { id },
            Ask::Stats => Control::GetStats { id },
            Ask::FindService(service) => Control::FindService { id, service },
            Ask::Request {
                service,
                event,
                params,
                chain,
                caller,
                session,
            } => Control::Request {
                id,
                service,
                event,
                params,
                timeout_ms: timeout.as_millis() as u64,
                chain,
                caller,
                session,
            },
            Ask::GetPeers => Control::GetPeers { id },
            Ask::Ping => Control::Ping { id },
        };
        let deadline = now + timeout;
        self.pending.insert(
            id,
            Pending {
                conn,
                deadline,
                internal,
            },
        );
        self.deadlines.insert((deadline, id));
        self.transmits.push_back((conn, message));
        Ok(id)
    }

    fn finish(&mut self, token: u64, result: Result<Control, Failure>, now: Instant) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, token));
        if let Some(c) = self.conns.get_mut(&p.conn) {
            c.pending = c.pending.saturating_sub(1);
        }
        if p.internal {
            if let Ok(Control::Peers { peers, .. }) = result {
                self.learn(p.conn, peers, now);
            }
        } else {
            self.events.push_back(Event::Answered { token, result });
        }
    }

    fn on_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
        let me = self.config.role;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let refuse = if hello.major != wire::MAJOR {
            Some(format!(
                "hello mismatch: the peer speaks major version {}, this host speaks {}",
                hello.major,
                wire::MAJOR
            ))
        } else if c.dialled && hello.role != Role::Host {
            Some("hello mismatch: a dialled peer must be a host".to_string())
        } else if me == Role::Client && hello.role == Role::Client {
            Some("hello mismatch: two clients cannot talk".to_string())
        } else if hello.services.len() > 256 || hello.services.iter().any(|s| s.len() > 128) {
            Some("hello lists more than 256 services or an over-long name".to_string())
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.close(conn, reason, now);
            return;
        }
        let features = hello
            .features
            .into_iter()
            .filter(|f| wire::FEATURES.contains(&f.as_str()))
            .collect::<Vec<_>>();
        let listen = hello.listen.and_then(|l| l.parse::<SocketAddr>().ok());
        let exchange = hello.role == Role::Host
            && me == Role::Host
            && features.iter().any(|f| f == "peer-exchange");
        c.state = ConnState::Ready(Box::new(Agreed {
            role: hello.role,
            listen,
            services: if hello.role == Role::Host {
                hello.services
            } else {
                Vec::new()
            },
        }));
        c.next_exchange = exchange.then_some(now);
        c.dialler_nonce = if c.dialled { c.my_nonce } else { hello.nonce };
        c.host = hello.role == Role::Host;
        let (peer, role) = (c.peer, hello.role);
        if let Some(i) = c.configured {
            self.configured[i].peer = Some(peer);
            self.configured[i].backoff = self.config.limits.backoff_min;
        }
        self.learned.remove(&peer);
        if role == Role::Host && !self.keep_one(conn, now) {
            return;
        }
        self.events.push_back(Event::Ready { conn, peer, role });
        if exchange {
            self.exchange(conn, now);
        }
    }

    /// One connection per pair of hosts: when `conn` becomes ready beside another ready
    /// connection to the same host, both hosts keep the one dialled by the lower peer id;
    /// if one side dialled both, the one whose dialler sent the higher hello nonce. Both
    /// sides know the same facts, so they always keep the same one. Returns whether `conn`
    /// is kept.
    fn keep_one(&mut self, conn: ConnId, now: Instant) -> bool {
        let me = self.config.me;
        let Some(new) = self.conns.get(&conn) else {
            return false;
        };
        let peer = new.peer;
        let lower = me.min(peer);
        let key = |c: &Conn| {
            let dialler = if c.dialled { me } else { peer };
            (dialler == lower, c.dialler_nonce, dialler)
        };
        let other = self
            .conns
            .iter()
            .find(|(id, c)| **id != conn && c.peer == peer && c.role() == Some(Role::Host))
            .map(|(id, c)| (*id, key(c)));
        let Some((old, old_key)) = other else {
            return true;
        };
        let new_key = key(new);
        let keep_new = (new_key.0, new_key.1) > (old_key.0, old_key.1);
        let (drop, kept) = if keep_new {
            (old, new_key)
        } else {
            (conn, old_key)
        };
        self.close(
            drop,
            format!(
                "duplicate connection: keeping the one dialled by {}",
                kept.2
            ),
            now,
        );
        keep_new
    }

    fn on_answer(&mut self, conn: ConnId, message: Control, now: Instant) {
        let id = message.id();
        // Answers to requests we no longer wait for (timed out) are dropped; so are answers
        // on the wrong connection, which a peer cannot use to answer for another.
        if self.pending.get(&id).is_some_and(|p| p.conn == conn) {
            let result = match message {
                Control::Error { code, reason, .. } => Err(Failure { code, reason }),
                m => Ok(m),
            };
            self.finish(id, result, now);
        }
    }

    fn on_ask(&mut self, conn: ConnId, message: Control, now: Instant) {
        let limits = &self.config.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let id = message.id();
        let reply = |m: Control| (conn, m);
        match message {
            Control::Ping { id } => self.transmits.push_back(reply(Control::Pong { id })),
            Control::GetPeers { id } | Control::FindService { id, .. }
                if !c.bucket.take(limits.queries_per_second, now) =>
            {
                self.transmits.push_back(reply(Control::Error {
                    id,
                    code: ErrorCode::RateLimited,
                    reason: format!(
                        "at most {} peer queries a second",
                        limits.queries_per_second
                    ),
                }));
            }
            Control::GetPeers { id } => {
                let asker = c.peer;
                let client = c.role() == Some(Role::Client);
                let max = if client {
                    1024
                } else {
                    limits.peers_per_answer
                };
                let peers = if client {
                    self.peer_list(true, Some(asker), max)
                } else {
                    // A random sample, not the oldest connections: every host answering
                    // with the same first few would make those few the hubs everyone dials
                    // (found by the network simulation, `make sim`).
                    let mut all: Vec<(PeerId, u64, Option<SocketAddr>)> = self
                        .conns
                        .values()
                        .filter_map(|c| match &c.state {
                            ConnState::Ready(a) if a.role == Role::Host && c.peer != asker => {
                                Some((c.peer, c.opened, advertised(a.listen, c.remote)))
                            }
                            _ => None,
                        })
                        .collect();
                    // One ready host connection per peer (the tie-break keeps one), so no
                    // dedup; sorted by age only so that the sample depends on the seed alone.
                    all.sort_unstable_by_key(|(_, opened, _)| *opened);
                    let n = all.len().min(max);
                    for i in 0..n {
                        let j = i + (self.next_random() % (all.len() - i) as u64) as usize;
                        all.swap(i, j);
                    }
                    all.truncate(n);
                    all.into_iter()
                        .map(|(p, _, addr)| PeerEntry {
                            peer: p.to_string(),
                            addr: addr.map(|a| a.to_string()),
                            connected: true,
                        })
                        .collect()
                };
                self.transmits
                    .push_back(reply(Control::Peers { id, peers }));
            }
            Control::FindService { id, service } => {
                let mut peers = Vec::new();
                if self.config.services.iter().any(|s| s == class_of(&service)) {
                    peers.push(PeerEntry {
                        peer: self.config.me.to_string(),
                        addr: self.config.listen.map(|a| a.to_string()),
                        connected: true,
                    });
                }
                for p in self.find(&service).into_iter().take(32) {
                    let addr = self.connection_to(&p).and_then(|cid| {
                        let c = &self.conns[&cid];
                        match &c.state {
                            ConnState::Ready(a) => advertised(a.listen, c.remote),
                            _ => None,
                        }
                    });
                    peers.push(PeerEntry {
                        peer: p.to_string(),
                        addr: addr.map(|a| a.to_string()),
                        connected: true,
                    });
                }
                self.transmits
                    .push_back(reply(Control::Found { id, service, peers }));
            }
            m @ (Control::ListServices { .. }
            | Control::ListSessions { .. }
            | Control::GetStats { .. }
            | Control::Request { .. }) => {
                if c.incoming >= limits.max_incoming {
                    let max = limits.max_incoming;
                    self.transmits.push_back(reply(Control::Error {
                        id,
                        code: ErrorCode::Busy,
                        reason: format!("{max} requests from this peer are being answered already"),
                    }));
                    return;
                }
                if let Control::Request { service, .. } = &m {
                    // The broker sees the whole chain: a request that would wait on itself
                    // is refused here, at once, instead of timing out somewhere.
                    if let Control::Request { chain, .. } = &m
                        && wire::chain_has(chain, &self.config.me, service)
                    {
                        let me = self.config.me;
                        self.transmits.push_back(reply(Control::Error {
                            id,
                            code: ErrorCode::Cycle,
                            reason: format!(
                                "request cycle: {me}/{service} is already waiting on this request"
                            ),
                        }));
                        return;
                    }
                }
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                c.incoming += 1;
                let request = match m {
                    Control::ListServices { .. } => Incoming::ListServices,
                    Control::ListSessions { .. } => Incoming::ListSessions,
                    Control::GetStats { .. } => Incoming::Stats,
                    Control::Request {
                        service,
                        event,
                        params,
                        timeout_ms,
                        chain,
                        caller,
                        session,
                        ..
                    } => Incoming::Request {
                        service,
                        event,
                        params,
                        timeout: Duration::from_millis(timeout_ms.min(3_600_000)),
                        chain,
                        caller,
                        session,
                    },
                    _ => return,
                };
                let peer = c.peer;
                self.events.push_back(Event::Incoming {
                    conn,
                    id,
                    peer,
                    request,
                });
            }
            // Hello and answers are handled before this point.
            _ => {}
        }
    }

    fn exchange(&mut self, conn: ConnId, now: Instant) {
        let every = self.config.limits.exchange_every;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.next_exchange = Some(now + every);
        let _ = self.send_request(conn, Ask::GetPeers, Duration::from_secs(5), now, true);
    }

    /// Takes in a `peers` answer: bounded, allowed, not ourselves, not connected already.
    fn learn(&mut self, from: ConnId, peers: Vec<PeerEntry>, now: Instant) {
        let Some(from_peer) = self.conns.get(&from).map(|c| c.peer) else {
            return;
        };
        for e in peers.into_iter().take(self.config.limits.peers_per_answer) {
            if self.learned.len() >= self.config.limits.max_learned {
                break;
            }
            let (Ok(peer), Some(Ok(addr))) = (
                e.peer.parse::<PeerId>(),
                e.addr.as_deref().map(str::parse::<SocketAddr>),
            ) else {
                continue;
            };
            if peer == self.config.me
                || peer == from_peer
                || !self.config.allow.permits(&peer)
                || self.has_conn(&peer)
                || self.learned.contains_key(&peer)
                || addr.port() == 0
                || addr.ip().is_unspecified()
            {
                continue;
            }
            self.learned.insert(
                peer,
                Learned {
                    addr,
                    failures: 0,
                    next: now,
                    dialling: false,
                },
            );
        }
        self.dial_learned(now);
    }

    fn host_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.role() == Some(Role::Host))
            .count()
    }

    fn dial_learned(&mut self, now: Instant) {
        if self.host_count() >= self.config.limits.max_peers {
            return;
        }
        let mut due: Vec<(Instant, PeerId)> = self
            .learned
            .iter()
            .filter(|(_, l)| !l.dialling && l.next <= now)
            .map(|(p, l)| (l.next, *p))
            .collect();
        due.sort();
        for (_, peer) in due {
            if self.dials >= self.config.limits.max_dials {
                break;
            }
            if self.has_conn(&peer) {
                self.learned.remove(&peer);
                continue;
            }
            let Some(l) = self.learned.get_mut(&peer) else {
                continue;
            };
            l.dialling = true;
            self.dials += 1;
            let addr = l.addr;
            self.events
                .push_back(Event::Dial(DialTo::Learned { peer, addr }));
        }
    }

    fn dial_finished(&mut self, to: &DialTo) {
        match to {
            DialTo::Configured { index, .. } => {
                if let Some(t) = self.configured.get_mut(*index) {
                    t.dialling = false;
                }
            }
            DialTo::Learned { peer, .. } => {
                if let Some(l) = self.learned.get_mut(peer)
                    && l.dialling
                {
                    l.dialling = false;
                    self.dials = self.dials.saturating_sub(1);
                }
            }
            DialTo::Direct(_) => {}
        }
    }

    fn learned_failed(&mut self, peer: PeerId, now: Instant) {
        let min = self.config.limits.backoff_min;
        let Some(l) = self.learned.get_mut(&peer) else {
            return;
        };
        l.failures += 1;
        if l.failures >= 3 {
            // An address that failed three times is forgotten: bogus answers cannot keep the
            // dialler busy.
            self.learned.remove(&peer);
            return;
        }
        l.next = now + min * (1 << l.failures);
    }

    fn schedule_redial(&mut self, index: usize, now: Instant) {
        let max = self.config.limits.backoff_max;
        let jitter = self.jitter();
        let Some(t) = self.configured.get_mut(index) else {
            return;
        };
        if t.dialling || t.next.is_some() {
            return;
        }
        // Jitter in [0.5, 1.0) of the back-off keeps two hosts that lost each other from
        // re-dialling in lock-step.
        let delay = t.backoff.mul_f64(0.5 + jitter * 0.5);
        t.next = Some(now + delay);
        t.backoff = (t.backoff * 2).min(max);
    }

    fn jitter(&mut self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to spread re-dials and break ties; no secret depends on it.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl Conn {
    fn role(&self) -> Option<Role> {
        match &self.state {
            ConnState::Ready(a) => Some(a.role),
            _ => None,
        }
    }
}

/// Where a peer can be dialled: its advertised listen address, with an unspecified IP
/// (`0.0.0.0`) replaced by the one it connected from.
fn advertised(listen: Option<SocketAddr>, remote: SocketAddr) -> Option<SocketAddr> {
    let mut a = listen?;
    if a.ip().is_unspecified() {
        a.set_ip(remote.ip());
    }
    Some(a)
}
