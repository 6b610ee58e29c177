//! Brokers driven as a virtual network: no sockets, virtual time, every control message
//! encoded and decoded through the real codec on its way. Tests read as scenarios: connect,
//! act, `drive`, assert on events.

// This whole file is test code (`mod tests` is `#[cfg(test)]` in `mod.rs`).
#[cfg(test)]
use super::*;
use std::sync::Arc;
use wasmwire_wire::control::decode_control;

struct Node {
    broker: Broker,
    events: Vec<Event>,
    addr: SocketAddr,
}

/// A virtual network of brokers. A connection has the same id on both sides.
struct Sim {
    nodes: Vec<Node>,
    /// conn -> (dialler index, acceptor index)
    links: HashMap<ConnId, (usize, usize)>,
    next_conn: ConnId,
    now: Instant,
    /// Learned dials are connected automatically when the address is in the network.
    auto_dial: bool,
    /// Nodes that do not answer (their transmits are dropped).
    mute: Vec<usize>,
    /// Nodes that answer every DHT query with hosts nobody can reach (see `lie`).
    liars: Vec<usize>,
    /// A dial to an address nobody listens at fails after this long (the driver's
    /// handshake time-out) rather than at once.
    hang_dials: Option<Duration>,
    /// Those dials, with when they fail.
    hung: Vec<(Instant, usize, DialTo)>,
    /// Liars name ids whose keys share this many leading bits with the key asked for
    /// (closer than any real host of a small network) rather than random ones.
    lie_near: u32,
    /// `find-service` queries each node sent.
    finds: Vec<usize>,
    /// Dials to these nodes wait (in `parked`) until `connect_parked`: a slow handshake.
    slow: Vec<usize>,
    /// Those dials: (dialler, target, dial).
    parked: Vec<(usize, usize, DialTo)>,
}

/// A new peer id, different from every other this test made. The broker never checks that
/// an id is a real key (TLS does, in `net`), so any 32 bytes do; a splitmix64 stream
/// spreads them like real keys. The stream is the test's own (each test runs on a thread
/// of its own): its ids, and so its network's shape, do not depend on which other tests
/// ran beside it.
fn new_id() -> PeerId {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    }
    let mut x = NEXT.with(|n| {
        let x = n.get();
        n.set(x + 1);
        x
    });
    let mut id = [0u8; 32];
    for chunk in id.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    PeerId(id)
}

fn ids(n: usize) -> Vec<PeerId> {
    let mut v: Vec<PeerId> = (0..n).map(|_| new_id()).collect();
    v.sort();
    v
}

/// What a lying host answers to a DHT query: twenty hosts with fresh ids (sharing `near`
/// leading bits with the key asked for) at addresses where nobody listens, as providers
/// too — and `None` for anything else.
fn lie(asked: &Control, near: u32) -> Option<Control> {
    let target = match asked {
        Control::FindNode { target, .. } => dht::Key::from_text(target)?,
        Control::FindService { service, .. } => dht::Key::of_service(service),
        _ => return None,
    };
    let close = |id: &PeerId| {
        let d = dht::Key::of_peer(id).distance(&target);
        let zeros: u32 = d
            .iter()
            .scan(true, |go, b| {
                let z = if *go { b.leading_zeros() } else { 0 };
                *go &= *b == 0;
                Some(z)
            })
            .sum();
        zeros >= near
    };
    let bogus = || -> Vec<PeerEntry> {
        (0..20)
            .map(|n| {
                let peer = std::iter::repeat_with(new_id).find(close).unwrap();
                PeerEntry {
                    peer: peer.to_string(),
                    addr: Some(format!("10.9.9.{n}:7400")),
                    connected: false,
                }
            })
            .collect()
    };
    match asked {
        Control::FindNode { id, .. } => Some(Control::Nodes {
            id: *id,
            peers: bogus(),
        }),
        Control::FindService { id, service } => Some(Control::Found {
            id: *id,
            service: service.clone(),
            peers: bogus(),
            closer: bogus(),
        }),
        _ => None,
    }
}

impl Sim {
    fn new(ids: &[PeerId], services: &[&[&str]], peers: &[Vec<PeerSpec>]) -> Sim {
        Sim::with_limits(ids, services, peers, BrokerLimits::default())
    }

    fn with_limits(
        ids: &[PeerId],
        services: &[&[&str]],
        peers: &[Vec<PeerSpec>],
        limits: BrokerLimits,
    ) -> Sim {
        let now = Instant::now();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 7400 + i).parse().unwrap();
                Node {
                    broker: Broker::new(
                        BrokerConfig {
                            me: *id,
                            role: Role::Host,
                            listen: Some(addr),
                            services: services
                                .get(i)
                                .map(|s| s.iter().map(|s| s.to_string()).collect())
                                .unwrap_or_default(),
                            allow: Arc::new(Allow::default()),
                            peers: peers.get(i).cloned().unwrap_or_default(),
                            limits: limits.clone(),
                            seed: 42 + i as u64,
                        },
                        now,
                    ),
                    events: Vec::new(),
                    addr,
                }
            })
            .collect();
        Sim {
            nodes,
            links: HashMap::new(),
            next_conn: 1,
            now,
            auto_dial: false,
            mute: Vec::new(),
            liars: Vec::new(),
            hang_dials: None,
            hung: Vec::new(),
            lie_near: 0,
            finds: vec![0; ids.len()],
            slow: Vec::new(),
            parked: Vec::new(),
        }
    }

    fn id(&self, i: usize) -> PeerId {
        self.nodes[i].broker.me()
    }

    /// `a` dials `b` (the handshake succeeds at once).
    fn connect(&mut self, a: usize, b: usize, dialled: Option<DialTo>) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.links.insert(conn, (a, b));
        let (ida, idb) = (self.id(a), self.id(b));
        let (addra, addrb) = (self.nodes[a].addr, self.nodes[b].addr);
        let now = self.now;
        let d = dialled.unwrap_or(DialTo::Learned {
            peer: idb,
            addr: addrb,
        });
        self.nodes[a]
            .broker
            .handle_connected(conn, idb, addrb, Some(d), now);
        self.nodes[b]
            .broker
            .handle_connected(conn, ida, addra, None, now);
        conn
    }

    fn other(&self, conn: ConnId, me: usize) -> Option<usize> {
        let &(a, b) = self.links.get(&conn)?;
        Some(if a == me { b } else { a })
    }

    /// Delivers everything until nothing moves.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some((conn, m)) = self.nodes[i].broker.poll_transmit() {
                    moved = true;
                    if matches!(m, Control::FindService { .. }) {
                        self.finds[i] += 1;
                    }
                    if self.mute.contains(&i) {
                        continue;
                    }
                    let Some(j) = self.other(conn, i) else {
                        continue;
                    };
                    // Through the real codec, as on the wire.
                    let bytes = serde_json::to_vec(&m).unwrap();
                    let now = self.now;
                    if self.liars.contains(&j)
                        && let Some(answer) = lie(&m, self.lie_near)
                    {
                        self.nodes[i].broker.handle_control(conn, answer, now);
                        continue;
                    }
                    match decode_control(&bytes) {
                        Ok(m) => self.nodes[j].broker.handle_control(conn, m, now),
                        Err(e) => self.nodes[j].broker.handle_undecodable(conn, e, now),
                    }
                }
                while let Some(e) = self.nodes[i].broker.poll_event() {
                    moved = true;
                    match &e {
                        // No sessions here: a released connection always goes.
                        Event::Close { conn, .. } | Event::Release { conn } => {
                            let conn = *conn;
                            let now = self.now;
                            if let Some(j) = self.other(conn, i) {
                                self.nodes[j].broker.handle_closed(conn, now);
                            }
                            self.nodes[i].broker.handle_closed(conn, now);
                            self.links.remove(&conn);
                        }
                        Event::Dial(DialTo::Learned { addr, .. }) if self.auto_dial => {
                            let target = self.nodes.iter().position(|n| n.addr == *addr);
                            let d = e.clone();
                            let Event::Dial(d) = d else { unreachable!() };
                            match target {
                                Some(t) if self.slow.contains(&t) => {
                                    self.parked.push((i, t, d));
                                }
                                Some(t) => {
                                    self.connect(i, t, Some(d));
                                }
                                // Nobody listens there: the dial fails (or hangs).
                                None if let Some(after) = self.hang_dials => {
                                    self.hung.push((self.now + after, i, d));
                                }
                                None => {
                                    let now = self.now;
                                    self.nodes[i].broker.handle_dial_failed(&d, now);
                                }
                            }
                        }
                        _ => {}
                    }
                    self.nodes[i].events.push(e);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The slow dials parked so far finish their handshakes.
    fn connect_parked(&mut self) {
        for (a, b, d) in std::mem::take(&mut self.parked) {
            self.connect(a, b, Some(d));
            self.drive();
        }
    }

    /// Advances virtual time by `d`, firing every timeout on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.broker.poll_timeout())
                .chain(self.hung.iter().map(|h| h.0))
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            let now = self.now;
            let (due, hung): (Vec<_>, Vec<_>) = self.hung.drain(..).partition(|h| h.0 <= now);
            self.hung = hung;
            for (_, i, dial) in due {
                self.nodes[i].broker.handle_dial_failed(&dial, now);
            }
            for n in &mut self.nodes {
                n.broker.handle_timeout(now);
            }
            self.drive();
        }
        self.now = end;
        let now = self.now;
        for n in &mut self.nodes {
            n.broker.handle_timeout(now);
        }
        self.drive();
    }

    fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.nodes[i].events)
    }

    /// The ready connections node `i` keeps.
    fn kept(&self, i: usize) -> Vec<ConnId> {
        self.nodes[i]
            .broker
            .ready_connections()
            .into_iter()
            .map(|(c, _, _)| c)
            .collect()
    }

    /// The dial node `i` asked for among its events (the others are dropped).
    fn dial_of(&mut self, i: usize) -> DialTo {
        self.take_events(i)
            .into_iter()
            .find_map(|e| match e {
                Event::Dial(d) => Some(d),
                _ => None,
            })
            .expect("a dial")
    }

    fn ready(&self, i: usize) -> Vec<PeerId> {
        self.nodes[i]
            .broker
            .ready_connections()
            .into_iter()
            .map(|(_, p, _)| p)
            .collect()
    }
}

#[test]
fn hello_makes_both_sides_ready() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[&["chat"], &[]], &[]);
    let conn = sim.connect(0, 1, None);
    sim.drive();
    assert!(sim.take_events(0).contains(&Event::Ready {
        conn,
        peer: ids[1],
        role: Role::Host
    }));
    assert!(sim.take_events(1).contains(&Event::Ready {
        conn,
        peer: ids[0],
        role: Role::Host
    }));
    assert_eq!(sim.nodes[1].broker.find("chat"), vec![ids[0]]);
    assert!(sim.nodes[1].broker.find("nothing").is_empty());
}

#[test]
fn requests_are_answered_out_of_order_and_time_out() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    sim.drive();
    sim.take_events(0);
    sim.take_events(1);
    let now = sim.now;
    let ask = |n: u32| Ask::Request {
        service: "counter".into(),
        event: "incr".into(),
        params: n.to_string(),
        chain: vec![],
        caller: None,
        session: None,
    };
    let t1 = sim.nodes[0]
        .broker
        .request(conn, ask(1), Duration::from_secs(1), now)
        .unwrap();
    let t2 = sim.nodes[0]
        .broker
        .request(conn, ask(2), Duration::from_secs(1), now)
        .unwrap();
    let t3 = sim.nodes[0]
        .broker
        .request(conn, ask(3), Duration::from_secs(1), now)
        .unwrap();
    sim.drive();
    let incoming: Vec<(u64, String)> = sim
        .take_events(1)
        .into_iter()
        .filter_map(|e| match e {
            Event::Incoming {
                id,
                request: Incoming::Request { params, .. },
                ..
            } => Some((id, params)),
            _ => None,
        })
        .collect();
    assert_eq!(incoming.len(), 3);
    // Answer the second first, then the first; leave the third unanswered.
    let (id1, id2) = (incoming[0].0, incoming[1].0);
    sim.nodes[1].broker.answer(
        conn,
        id2,
        Ok(Control::Response {
            id: id2,
            result: "\"two\"".into(),
        }),
    );
    sim.nodes[1]
        .broker
        .answer(conn, id1, Err(Failure::new(ErrorCode::Failed, "no luck")));
    sim.drive();
    let answered = sim.take_events(0);
    assert_eq!(
        answered,
        vec![
            Event::Answered {
                token: t2,
                result: Ok(Control::Response {
                    id: t2,
                    result: "\"two\"".into()
                })
            },
            Event::Answered {
                token: t1,
                result: Err(Failure::new(ErrorCode::Failed, "no luck"))
            },
        ]
    );
    sim.advance(Duration::from_millis(999));
    assert!(sim.take_events(0).is_empty());
    sim.advance(Duration::from_millis(2));
    assert_eq!(
        sim.take_events(0),
        vec![Event::Answered {
            token: t3,
            result: Err(Failure::new(ErrorCode::Timeout, "no answer in time"))
        }]
    );
}

#[test]
fn a_request_cycle_across_three_hosts_is_refused_at_once() {
    // A/lobby -> B/relay -> C/relay2 -> A/lobby: A sees itself in the chain.
    let ids = ids(3);
    let mut sim = Sim::new(&ids, &[&["lobby"], &["relay"], &["relay2"]], &[]);
    let ab = sim.connect(0, 1, None);
    let bc = sim.connect(1, 2, None);
    let ca = sim.connect(2, 0, None);
    sim.drive();
    for i in 0..3 {
        sim.take_events(i);
    }
    let now = sim.now;
    let a = format!("{}/lobby", ids[0]);
    let b = format!("{}/relay", ids[1]);
    let c = format!("{}/relay2", ids[2]);
    sim.nodes[0]
        .broker
        .request(
            ab,
            Ask::Request {
                service: "relay".into(),
                event: "go".into(),
                params: "null".into(),
                chain: vec![a.clone()],
                caller: Some("lobby".into()),
                session: None,
            },
            Duration::from_secs(5),
            now,
        )
        .unwrap();
    sim.drive();
    let chain = match &sim.take_events(1)[..] {
        [
            Event::Incoming {
                request: Incoming::Request { chain, .. },
                ..
            },
        ] => chain.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(chain, vec![a.clone()]);
    // B's relay asks C with the chain extended; C's relay2 asks A's lobby.
    sim.nodes[1]
        .broker
        .request(
            bc,
            Ask::Request {
                service: "relay2".into(),
                event: "go".into(),
                params: "null".into(),
                chain: vec![a.clone(), b.clone()],
                caller: Some("relay".into()),
                session: None,
            },
            Duration::from_secs(5),
            now,
        )
        .unwrap();
    sim.drive();
    assert!(matches!(&sim.take_events(2)[..], [Event::Incoming { .. }]));
    let t = sim.nodes[2]
        .broker
        .request(
            ca,
            Ask::Request {
                service: "lobby".into(),
                event: "go".into(),
                params: "null".into(),
                chain: vec![a, b, c],
                caller: Some("relay2".into()),
                session: None,
            },
            Duration::from_secs(5),
            now,
        )
        .unwrap();
    sim.drive();
    // A never hands it to its service: it answers `cycle` itself, at once.
    assert!(sim.take_events(0).is_empty());
    match &sim.take_events(2)[..] {
        [
            Event::Answered {
                token,
                result: Err(f),
            },
        ] => {
            assert_eq!(*token, t);
            assert_eq!(f.code, ErrorCode::Cycle);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn peer_exchange_lets_a_learn_c_through_b_and_dial_it() {
    let ids = ids(3);
    let mut sim = Sim::new(&ids, &[&[], &[], &["chat"]], &[]);
    sim.auto_dial = true;
    sim.connect(1, 2, None);
    sim.drive();
    sim.connect(0, 1, None);
    sim.drive();
    // A asked B for its peers on hello, learned C, dialled it, and is now connected.
    let a_events = sim.take_events(0);
    assert!(
        a_events.iter().any(|e| matches!(e,
            Event::Dial(DialTo::Learned { peer, addr }) if *peer == ids[2] && *addr == sim.nodes[2].addr)),
        "{a_events:?}"
    );
    let mut ready = sim.ready(0);
    ready.sort();
    assert_eq!(ready, vec![ids[1], ids[2]]);
    assert_eq!(sim.nodes[0].broker.find("chat"), vec![ids[2]]);
}

#[test]
fn simultaneous_dials_keep_exactly_one_connection_on_both_sides() {
    let ids = ids(2);
    for first in [0, 1] {
        let mut sim = Sim::new(&ids, &[], &[]);
        let x = sim.connect(first, 1 - first, None);
        let y = sim.connect(1 - first, first, None);
        sim.drive();
        let (kept0, kept1) = (sim.kept(0), sim.kept(1));
        assert_eq!(kept0.len(), 1, "{kept0:?}");
        assert_eq!(kept0, kept1, "both sides keep the same connection");
        // The lower id (node 0, ids are sorted) dialled the survivor.
        let survivor = kept0[0];
        let dialler = sim.links[&survivor].0;
        assert_eq!(dialler, 0);
        assert!(survivor == x || survivor == y);
    }
}

#[test]
fn configured_peers_are_redialled_with_capped_jittered_backoff() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[vec!["127.0.0.1:7401".parse().unwrap()]]);
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let now = sim.now;
        sim.nodes[0].broker.handle_timeout(now);
        let d = match sim.nodes[0].broker.poll_event() {
            Some(Event::Dial(d)) => d,
            other => panic!("{other:?}"),
        };
        sim.nodes[0].broker.handle_dial_failed(&d, now);
        let next = sim.nodes[0].broker.poll_timeout().unwrap();
        gaps.push(next - now);
        sim.now = next;
    }
    let limits = BrokerLimits::default();
    for (i, g) in gaps.iter().enumerate() {
        let full = (limits.backoff_min * (1 << i.min(10))).min(limits.backoff_max);
        assert!(*g >= full / 2 && *g <= full, "gap {i}: {g:?} vs {full:?}");
    }
    assert!(gaps.last().unwrap() <= &limits.backoff_max);
}

#[test]
fn a_lost_peer_is_redialled_and_backoff_resets_when_it_returns() {
    let ids = ids(2);
    let spec = PeerSpec {
        addr: "127.0.0.1:7401".into(),
        expected: Some(ids[1]),
    };
    let mut sim = Sim::new(&ids, &[], &[vec![spec.clone()]]);
    sim.advance(Duration::from_millis(1));
    let dial = sim.dial_of(0);
    let conn = sim.connect(0, 1, Some(dial));
    sim.drive();
    assert_eq!(sim.ready(0), vec![ids[1]]);
    sim.take_events(0);
    // The link dies.
    let now = sim.now;
    sim.nodes[0].broker.handle_closed(conn, now);
    sim.nodes[1].broker.handle_closed(conn, now);
    sim.links.remove(&conn);
    sim.advance(Duration::from_secs(1));
    assert!(
        sim.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Dial(DialTo::Configured { index: 0, .. }))),
        "re-dialled after loss"
    );
}

#[test]
fn peer_queries_are_rate_limited_and_unknown_types_answered() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    sim.drive();
    sim.take_events(0);
    let now = sim.now;
    let mut tokens = Vec::new();
    for _ in 0..100 {
        tokens.push(
            sim.nodes[0]
                .broker
                .request(
                    conn,
                    Ask::FindService("x".into()),
                    Duration::from_secs(1),
                    now,
                )
                .unwrap(),
        );
    }
    sim.drive();
    let answers = sim.take_events(0);
    let limited = answers
        .iter()
        .filter(|e| matches!(e, Event::Answered { result: Err(f), .. } if f.code == ErrorCode::RateLimited))
        .count();
    // The exchange on hello used one query too; the burst allows 40.
    assert!((55..=61).contains(&limited), "{limited}");
    // An unknown type gets an error answer, not a close.
    sim.nodes[1].broker.handle_undecodable(
        conn,
        Undecodable::UnknownType {
            id: Some(77),
            kind: "teleport".into(),
        },
        now,
    );
    assert!(matches!(
        sim.nodes[1].broker.poll_transmit(),
        Some((c, Control::Error { id: 77, code: ErrorCode::UnknownType, .. })) if c == conn
    ));
    // Garbage closes the connection with a reason.
    sim.nodes[1]
        .broker
        .handle_undecodable(conn, Undecodable::Malformed("junk".into()), now);
    assert!(matches!(
        sim.nodes[1].broker.poll_event(),
        Some(Event::Close { reason, .. }) if reason.contains("junk")
    ));
}

#[test]
fn hello_problems_close_the_connection_with_a_reason() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[]);
    // Node 1 never says hello: node 0 closes after the hello timeout.
    sim.mute.push(1);
    sim.connect(0, 1, None);
    sim.drive();
    sim.advance(Duration::from_secs(6));
    assert!(
        sim.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Close { reason, .. } if reason == "no hello in time"))
    );
    // A wrong major version.
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    let now = sim.now;
    sim.nodes[0].broker.handle_control(
        conn,
        Control::Hello(Hello {
            role: Role::Host,
            major: 2,
            minor: 0,
            features: vec![],
            listen: None,
            services: vec![],
            nonce: 0,
        }),
        now,
    );
    assert!(matches!(
        sim.nodes[0].broker.poll_event(),
        Some(Event::Close { reason, .. }) if reason.contains("major version 2")
    ));
    // Anything before hello.
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    sim.nodes[0]
        .broker
        .handle_control(conn, Control::Ping { id: 1 }, now);
    assert!(matches!(
        sim.nodes[0].broker.poll_event(),
        Some(Event::Close { reason, .. }) if reason.contains("expected hello first, got ping")
    ));
}

#[test]
fn learned_peers_are_bounded_and_bogus_ones_forgotten() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    sim.drive();
    sim.take_events(0);
    let now = sim.now;
    // Node 1 answers a get-peers with 1000 entries, most bogus.
    let t = sim.nodes[0]
        .broker
        .send_request(
            conn,
            Ask::GetPeers,
            Duration::from_secs(1),
            now,
            Purpose::Exchange,
        )
        .unwrap();
    let mut peers = Vec::new();
    for i in 0..1000u32 {
        let id = new_id();
        peers.push(PeerEntry {
            peer: if i % 3 == 0 {
                "junk".into()
            } else {
                id.to_string()
            },
            addr: Some(format!("127.0.0.{}:{}", i % 200 + 1, 1000 + i)),
            connected: true,
        });
    }
    sim.nodes[0]
        .broker
        .handle_control(conn, Control::Peers { id: t, peers }, now);
    let learned = sim.nodes[0].broker.learned.len();
    assert!(
        learned <= BrokerLimits::default().peers_per_answer,
        "{learned}"
    );
    // Every dial fails: after three failures each entry is forgotten.
    for _ in 0..200 {
        let now = sim.now;
        sim.nodes[0].broker.handle_timeout(now);
        while let Some(e) = sim.nodes[0].broker.poll_event() {
            if let Event::Dial(d) = e {
                assert!(sim.nodes[0].broker.dials <= BrokerLimits::default().max_dials);
                sim.nodes[0].broker.handle_dial_failed(&d, now);
            }
        }
        while sim.nodes[0].broker.poll_transmit().is_some() {}
        sim.now += Duration::from_millis(500);
    }
    assert_eq!(sim.nodes[0].broker.learned.len(), 0);
}

#[test]
fn a_double_dial_from_one_side_keeps_the_same_connection_on_both_sides() {
    let ids = ids(2);
    for dialler in [0, 1] {
        for _ in 0..20 {
            let mut sim = Sim::new(&ids, &[], &[]);
            sim.connect(dialler, 1 - dialler, None);
            sim.connect(dialler, 1 - dialler, None);
            sim.drive();
            let (kept0, kept1) = (sim.kept(0), sim.kept(1));
            assert_eq!(kept0.len(), 1, "{kept0:?}");
            assert_eq!(kept0, kept1);
        }
    }
}

#[test]
fn requests_waiting_on_a_lost_connection_fail_with_closed() {
    let ids = ids(2);
    let mut sim = Sim::new(&ids, &[], &[]);
    let conn = sim.connect(0, 1, None);
    sim.drive();
    sim.take_events(0);
    let now = sim.now;
    let t = sim.nodes[0]
        .broker
        .request(conn, Ask::Ping, Duration::from_secs(5), now)
        .unwrap();
    sim.nodes[0].broker.handle_closed(conn, now);
    assert_eq!(
        sim.nodes[0].broker.poll_event(),
        Some(Event::Answered {
            token: t,
            result: Err(Failure::new(ErrorCode::Closed, "the connection closed"))
        })
    );
    // And nothing fires for it later.
    sim.advance(Duration::from_secs(10));
    assert!(
        !sim.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Answered { .. }))
    );
}

#[test]
fn at_max_peers_learned_peers_wait_without_waking_the_driver() {
    let ids = ids(3);
    let mut sim = Sim::new(&ids, &[], &[]);
    sim.nodes[0].broker.config.limits.max_peers = 1;
    sim.connect(1, 2, None);
    sim.drive();
    sim.connect(0, 1, None);
    sim.drive();
    // Node 0 learned node 2 from node 1 but may not dial it: nothing is due now.
    assert_eq!(sim.nodes[0].broker.learned.len(), 1);
    assert!(
        !sim.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Dial(_)))
    );
    let next = sim.nodes[0].broker.poll_timeout().unwrap();
    assert!(next > sim.now, "a due timeout would spin the driver");
}

/// Closes `conn` on both sides, as a lost link.
fn lose(sim: &mut Sim, conn: ConnId) {
    let now = sim.now;
    let (a, b) = sim.links.remove(&conn).unwrap();
    sim.nodes[a].broker.handle_closed(conn, now);
    sim.nodes[b].broker.handle_closed(conn, now);
    sim.drive();
}

fn configured_dials(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Dial(DialTo::Configured { .. })))
        .count()
}

#[test]
fn configured_peers_are_bootstrap_peers_dialled_only_while_few_others() {
    // Node 0 is configured with node 1; nodes 2..=9 are eight other hosts.
    let ids = ids(10);
    let spec = PeerSpec {
        addr: "127.0.0.1:7401".into(),
        expected: Some(ids[1]),
    };
    let mut sim = Sim::new(&ids, &[], &[vec![spec]]);
    sim.advance(Duration::from_millis(1));
    let dial = sim.dial_of(0);
    let boot = sim.connect(0, 1, Some(dial));
    sim.drive();
    let others: Vec<ConnId> = (2..10).map(|i| sim.connect(i, 0, None)).collect();
    sim.drive();
    // With eight others, the bootstrap peer is let go (and closed: nothing uses it) and
    // not dialled again.
    assert_eq!(sim.nodes[0].broker.host_count(), 8);
    assert!(
        sim.nodes[0].broker.connection_to(&ids[1]).is_none(),
        "{boot}"
    );
    sim.take_events(0);
    sim.advance(Duration::from_secs(30));
    assert_eq!(configured_dials(&sim.take_events(0)), 0);
    // Seven others: it is.
    lose(&mut sim, others[0]);
    sim.advance(Duration::from_secs(1));
    assert_eq!(configured_dials(&sim.take_events(0)), 1);
}

#[test]
fn a_full_host_answers_with_a_sample_and_the_newcomer_learns_it_and_closes() {
    // Node 0 is full with 60 hosts; node 61 is the newcomer it turns away.
    let ids = ids(62);
    let mut sim = Sim::new(&ids, &[], &[]);
    for i in 1..=60 {
        sim.connect(i, 0, None);
    }
    sim.drive();
    for i in 0..62 {
        sim.take_events(i);
    }
    let full = sim.nodes[0].broker.full_answer();
    let Control::Full { reason, peers } = &full else {
        panic!("{full:?}")
    };
    assert!(reason.contains("1024 connections"), "{reason}");
    assert_eq!(peers.len(), 32);
    let distinct: HashSet<&str> = peers.iter().map(|p| p.peer.as_str()).collect();
    assert_eq!(distinct.len(), 32, "a sample has no repeats");
    // The newcomer dialled node 0; the `full` comes through the codec in place of hello.
    let conn = 999;
    let now = sim.now;
    let to = DialTo::Learned {
        peer: ids[0],
        addr: sim.nodes[0].addr,
    };
    let newcomer = &mut sim.nodes[61].broker;
    newcomer.handle_connected(
        conn,
        ids[0],
        "127.0.0.1:7400".parse().unwrap(),
        Some(to),
        now,
    );
    let bytes = serde_json::to_vec(&full).unwrap();
    newcomer.handle_control(conn, decode_control(&bytes).unwrap(), now);
    let mut dials = 0;
    let mut closed = None;
    while let Some(e) = newcomer.poll_event() {
        match e {
            Event::Dial(DialTo::Learned { peer, .. }) => {
                assert!(distinct.contains(peer.to_string().as_str()));
                dials += 1;
            }
            Event::Close { conn: c, reason } => closed = Some((c, reason)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        dials,
        BrokerLimits::default().max_dials,
        "it dials what it learned"
    );
    let (c, reason) = closed.expect("the newcomer closes too");
    assert_eq!(c, conn);
    assert!(reason.starts_with("the peer is full"), "{reason}");
    assert_eq!(newcomer.learned_count(), 32);
    // A `full` after hello is no way to close someone else's connection for them: ignored.
    let c1 = sim
        .links
        .iter()
        .find(|(_, (a, _))| *a == 1)
        .map(|(c, _)| *c)
        .unwrap();
    let now = sim.now;
    sim.nodes[1].broker.handle_control(c1, full, now);
    assert!(sim.nodes[1].broker.poll_event().is_none());
}

#[test]
fn peer_samples_never_list_the_asker_and_the_indexes_follow_closes() {
    let ids = ids(50);
    let services: Vec<&[&str]> = (0..50)
        .map(|i| if i % 2 == 0 { &["even"][..] } else { &[][..] })
        .collect();
    let mut sim = Sim::new(&ids, &services, &[]);
    let conns: Vec<ConnId> = (1..50).map(|i| sim.connect(i, 0, None)).collect();
    sim.drive();
    let hub = &mut sim.nodes[0].broker;
    for _ in 0..20 {
        for (few, asker) in [(5, ids[3]), (40, ids[7])] {
            let sample = hub.sample_hosts(Some(asker), few);
            assert_eq!(sample.len(), few);
            let distinct: HashSet<&str> = sample.iter().map(|p| p.peer.as_str()).collect();
            assert_eq!(distinct.len(), few);
            assert!(!distinct.contains(asker.to_string().as_str()));
        }
    }
    assert_eq!(hub.find("even").len(), 24);
    // Close half; every index follows.
    for (i, c) in conns.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let _ = i;
        lose(&mut sim, *c);
    }
    let hub = &mut sim.nodes[0].broker;
    assert_eq!(hub.host_count(), 25);
    // Nodes 2, 4, ... were connections 1, 3, ...: closed.
    assert!(hub.find("even").is_empty());
    assert!(hub.connection_to(&ids[2]).is_none());
    assert_eq!(hub.connection_to(&ids[1]), Some(conns[0]));
    let sample = hub.sample_hosts(None, 100);
    assert_eq!(sample.len(), 25);
    assert!(sample.iter().all(|p| p.peer != ids[2].to_string()));
    // One comes back.
    sim.connect(2, 0, None);
    sim.drive();
    assert_eq!(sim.nodes[0].broker.find("even"), vec![ids[2]]);
}

#[test]
fn a_configured_peer_that_answered_full_waits_out_its_backoff() {
    let ids = ids(2);
    // Written without an id: the `full` connection's key names it.
    let mut sim = Sim::new(&ids, &[], &[vec!["127.0.0.1:7401".parse().unwrap()]]);
    sim.advance(Duration::from_millis(1));
    let dial = sim.dial_of(0);
    let (conn, now) = (77, sim.now);
    let full = sim.nodes[1].broker.full_answer();
    let b = &mut sim.nodes[0].broker;
    b.handle_connected(
        conn,
        ids[1],
        "127.0.0.1:7401".parse().unwrap(),
        Some(dial),
        now,
    );
    b.handle_control(conn, full, now);
    b.handle_closed(conn, now);
    while b.poll_event().is_some() {}
    sim.advance(peers::FULL_BACKOFF - Duration::from_secs(1));
    assert_eq!(configured_dials(&sim.take_events(0)), 0);
    sim.advance(Duration::from_secs(2));
    assert_eq!(configured_dials(&sim.take_events(0)), 1);
    // A `full` on a connection it did not dial is a protocol error, not a sample.
    let now = sim.now;
    let b = &mut sim.nodes[0].broker;
    b.handle_connected(78, ids[1], "127.0.0.1:7401".parse().unwrap(), None, now);
    b.handle_control(
        78,
        Control::Full {
            reason: "x".into(),
            peers: vec![],
        },
        now,
    );
    let closed = std::iter::from_fn(|| b.poll_event()).find_map(|e| match e {
        Event::Close { reason, .. } => Some(reason),
        _ => None,
    });
    assert_eq!(closed.as_deref(), Some("expected hello first, got full"));
}

#[test]
fn an_idle_bootstrap_peer_is_released_once_enough_others_carry_the_host() {
    let ids = ids(10);
    let spec = PeerSpec {
        addr: "127.0.0.1:7401".into(),
        expected: Some(ids[1]),
    };
    let mut sim = Sim::new(&ids, &[], &[vec![spec]]);
    sim.advance(Duration::from_millis(1));
    let dial = sim.dial_of(0);
    let boot = sim.connect(0, 1, Some(dial));
    sim.drive();
    let every = BrokerLimits::default().exchange_every;
    let released = |events: Vec<Event>| {
        events
            .iter()
            .any(|e| matches!(e, Event::Release { conn } if *conn == boot))
    };
    // Seven others: kept.
    for i in 2..9 {
        sim.connect(i, 0, None);
    }
    sim.drive();
    sim.advance(every);
    assert!(!released(sim.take_events(0)));
    // Eight, with a request under way on it: kept while the request runs, let go once it
    // has ended.
    let now = sim.now;
    sim.nodes[0]
        .broker
        .request(boot, Ask::Ping, every * 2, now)
        .unwrap();
    sim.mute.push(1);
    sim.connect(9, 0, None);
    sim.drive();
    sim.advance(every);
    assert!(!released(sim.take_events(0)), "a request is under way");
    sim.advance(every * 2);
    let events = sim.take_events(0);
    assert!(released(events.clone()), "the request timed out");
    assert!(
        events.iter().any(|e| matches!(e, Event::Answered { .. })),
        "{events:?}"
    );
}

#[test]
fn a_newcomer_lets_its_seed_go_as_soon_as_enough_others_carry_it() {
    // Node 0 is configured with node 1 (its seed); nodes 2..=9 connect to it one by one.
    // Returns whether the seed was let go in the same step as the eighth, no time passing.
    let released_with_the_eighth = |max_peers: usize| {
        let ids = ids(10);
        let spec = PeerSpec {
            addr: "127.0.0.1:7401".into(),
            expected: Some(ids[1]),
        };
        let limits = BrokerLimits {
            max_peers,
            ..BrokerLimits::default()
        };
        let mut sim = Sim::with_limits(&ids, &[], &[vec![spec]], limits);
        sim.advance(Duration::from_millis(1));
        let dial = sim.dial_of(0);
        let boot = sim.connect(0, 1, Some(dial));
        sim.drive();
        for i in 2..9 {
            sim.connect(i, 0, None);
        }
        sim.drive();
        let events = sim.take_events(0);
        assert!(!events.iter().any(|e| matches!(e, Event::Release { .. })));
        let before = sim.now;
        sim.connect(9, 0, None);
        sim.drive();
        assert_eq!(sim.now, before);
        sim.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Release { conn } if *conn == boot))
    };
    // The eighth other host lets the seed go at once, whatever the host dials for.
    assert!(released_with_the_eighth(8));
    assert!(released_with_the_eighth(64));
}

/// Forty hosts in a line (each connected to the next only, and dialling no learned peer
/// past its first connection): nobody knows more than a few others, yet the DHT finds a
/// service one host runs and a host by its id from the other end.
fn line(n: usize, services: &[&[&str]]) -> (Vec<PeerId>, Sim) {
    let ids = ids(n);
    let limits = BrokerLimits {
        max_peers: 1,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&ids, services, &[], limits);
    sim.auto_dial = true;
    for i in 0..n - 1 {
        sim.connect(i, i + 1, None);
        sim.drive();
    }
    (ids, sim)
}

#[test]
fn the_dht_finds_a_service_one_host_in_forty_runs() {
    let mut services: Vec<&[&str]> = vec![&[]; 40];
    services[39] = &["rare"];
    let (ids, mut sim) = line(40, &services);
    // The provider publishes its record (2 s after its first hello) at the hosts closest
    // to the service's key.
    sim.advance(Duration::from_secs(10));
    let stored: usize = sim.nodes.iter().map(|n| n.broker.records_len()).sum();
    assert!(stored >= 5, "records stored: {stored}");
    // Connections made for the joins' queries are let go at the next exchanges.
    sim.advance(Duration::from_secs(70));
    // A host not connected to the provider seeks it: the lookup finds the record and
    // dials the provider.
    let s = (0..39)
        .find(|i| sim.nodes[*i].broker.find("rare").is_empty())
        .expect("a host the provider is not connected to");
    for i in 0..40 {
        while sim.nodes[i].broker.poll_lookup_done().is_some() {}
    }
    let now = sim.now;
    assert!(sim.nodes[s].broker.seek("rare", now));
    assert!(sim.nodes[s].broker.seeking("rare"));
    sim.drive();
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.nodes[s].broker.find("rare"), vec![ids[39]]);
    let done: Vec<LookupDone> =
        std::iter::from_fn(|| sim.nodes[s].broker.poll_lookup_done()).collect();
    let seek = done
        .iter()
        .find(|d| d.service.is_some())
        .expect("the service lookup finished");
    assert!(seek.found, "{seek:?}");
    assert!(seek.rounds <= 6, "{seek:?}");
    assert!(!sim.nodes[s].broker.seeking("rare"));
    // A service nobody runs: the lookup ends, found nothing, and says so.
    let now = sim.now;
    assert!(sim.nodes[s].broker.seek("nothing", now));
    sim.drive();
    sim.advance(Duration::from_secs(35));
    assert!(!sim.nodes[s].broker.seeking("nothing"));
    let done: Vec<LookupDone> =
        std::iter::from_fn(|| sim.nodes[s].broker.poll_lookup_done()).collect();
    assert!(
        done.iter()
            .any(|d| d.service.as_deref() == Some("nothing") && !d.found),
        "{done:?}"
    );
}

#[test]
fn the_dht_finds_a_host_by_id_and_reach_dials_it() {
    let (ids, mut sim) = line(40, &[]);
    // The hosts join the DHT (a lookup of their own key), then let the connections made
    // for its queries go.
    sim.advance(Duration::from_secs(70));
    let far = *ids
        .iter()
        .rev()
        .find(|p| sim.nodes[0].broker.connection_to(p).is_none() && **p != ids[0])
        .expect("a host node 0 is not connected to");
    assert!(!sim.nodes[0].broker.has_conn(&far));
    let now = sim.now;
    assert!(sim.nodes[0].broker.reach(far, now), "a lookup starts");
    assert!(sim.nodes[0].broker.dialling(&far));
    sim.drive();
    sim.advance(Duration::from_secs(5));
    assert!(
        sim.nodes[0].broker.connection_to(&far).is_some(),
        "found by id and dialled"
    );
    // An id nobody has: the lookup ends, and the wait with it.
    let nobody = new_id();
    let now = sim.now;
    assert!(sim.nodes[0].broker.reach(nobody, now));
    sim.drive();
    sim.advance(Duration::from_secs(35));
    assert!(!sim.nodes[0].broker.dialling(&nobody));
}

#[test]
fn lookups_succeed_past_hosts_that_lie_and_a_flood_of_records_stays_bounded() {
    let mut services: Vec<&[&str]> = vec![&[]; 40];
    services[39] = &["rare"];
    let (ids, mut sim) = line(40, &services);
    // Three hosts answer every lookup with twenty hosts (and providers) nobody can reach.
    sim.liars = vec![5, 17, 28];
    sim.advance(Duration::from_secs(70));
    let s = (0..39)
        .find(|i| !sim.liars.contains(i) && sim.nodes[*i].broker.find("rare").is_empty())
        .expect("a host the provider is not connected to");
    for i in 0..40 {
        while sim.nodes[i].broker.poll_lookup_done().is_some() {}
    }
    let now = sim.now;
    assert!(sim.nodes[s].broker.seek("rare", now));
    sim.drive();
    sim.advance(Duration::from_secs(5));
    // (Connected to the provider; an idle connection made for a lookup goes later.)
    assert_eq!(
        sim.nodes[s].broker.find("rare"),
        vec![ids[39]],
        "found past the liars"
    );
    let done: Vec<LookupDone> =
        std::iter::from_fn(|| sim.nodes[s].broker.poll_lookup_done()).collect();
    assert!(
        done.iter().any(|d| d.found && d.service.is_some()),
        "{done:?}"
    );
    for n in &sim.nodes {
        assert!(n.broker.learned_count() <= BrokerLimits::default().max_learned);
        assert!(n.broker.table_len() <= 256 * dht::K);
    }
    // One host floods another with provider records for a thousand services: 64 are kept.
    // (On their connection, if the joins made one; else on a new one.)
    let conn = match sim.nodes[31].broker.connection_to(&ids[30]) {
        Some(c) => c,
        None => {
            let c = sim.connect(30, 31, None);
            sim.drive();
            c
        }
    };
    let now = sim.now;
    let before = sim.nodes[31].broker.records_len();
    for n in 0..1000 {
        let id = 100_000 + n;
        let m = Control::AddProvider {
            id,
            service: format!("s{n}"),
        };
        sim.now = now + Duration::from_millis(100 * n);
        let at = sim.now;
        sim.nodes[31].broker.handle_control(conn, m, at);
    }
    let kept = sim.nodes[31].broker.records_len() - before;
    assert!(kept <= dht::MAX_RECORDS_PER_PROVIDER, "{kept} records kept");
    assert!(kept >= 32, "the first ones are stored: {kept}");
}

#[test]
fn past_its_high_water_mark_a_host_lets_idle_connections_others_made_go() {
    let ids = ids(8);
    let limits = BrokerLimits {
        high_water: 3,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&ids, &[], &[], limits);
    // Node 0 dials two hosts; five others dial it.
    let mine = [sim.connect(0, 1, None), sim.connect(0, 2, None)];
    for i in 3..8 {
        sim.connect(i, 0, None);
    }
    sim.drive();
    assert_eq!(sim.nodes[0].broker.host_count(), 7);
    // A connection just made gets a first period of use: a short one, past the mark, for
    // those others made (a seed must not fill up with newcomers done with it).
    let every = BrokerLimits::default().exchange_every;
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.nodes[0].broker.host_count(), 7);
    sim.advance(Duration::from_secs(5));
    assert!(
        sim.nodes[0].broker.host_count() < 7,
        "let go within seconds"
    );
    // At their exchanges, the idle ones others made go until it holds 3; its own stay.
    sim.advance(every * 2);
    assert_eq!(sim.nodes[0].broker.host_count(), 3);
    let kept = sim.kept(0);
    assert!(mine.iter().all(|c| kept.contains(c)), "{kept:?}");
}

/// Forty hosts in a line that know each other; then every fourth starts lying (ids
/// sharing `near` leading bits with the key asked for, at addresses where a dial fails
/// after `hang`); a host the provider is not connected to seeks `rare`. Whether it found
/// the provider within `within`.
fn seek_past_liars(near: u32, hang: Duration, within: Duration) -> bool {
    let mut services: Vec<&[&str]> = vec![&[]; 40];
    services[39] = &["rare"];
    let (ids, mut sim) = line(40, &services);
    sim.advance(Duration::from_secs(70));
    sim.liars = (0..40).filter(|i| i % 4 == 1).collect();
    sim.lie_near = near;
    sim.hang_dials = Some(hang);
    let s = (0..39)
        .find(|i| !sim.liars.contains(i) && sim.nodes[*i].broker.find("rare").is_empty())
        .expect("a host the provider is not connected to");
    let now = sim.now;
    assert!(sim.nodes[s].broker.seek("rare", now));
    sim.drive();
    sim.advance(within);
    sim.nodes[s].broker.find("rare") == vec![ids[39]]
}

#[test]
fn liars_whose_hosts_never_answer_a_dial_hold_up_some_queries_never_the_lookup() {
    // Without limits, the α queries and both provider checks would all wait on dials
    // that never end until the lookup's 30 s ran out.
    let hour = Duration::from_secs(3600);
    assert!(seek_past_liars(0, hour, Duration::from_secs(10)));
}

#[test]
fn a_liar_that_names_the_hosts_closest_to_every_key_holds_up_a_lookup_for_a_while_only() {
    // Twenty ids closer to the key than any real host in each answer, each a dial that
    // fails after 5 s: found within the lookup's 30 s all the same.
    let five = Duration::from_secs(5);
    assert!(seek_past_liars(10, five, Duration::from_secs(29)));
}

#[test]
fn records_follow_the_closest_hosts_as_the_network_grows() {
    let n = 60;
    let ids = ids(n);
    let mut services: Vec<&[&str]> = vec![&[]; n];
    services[0] = &["rare"];
    let limits = BrokerLimits {
        max_peers: 1,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&ids, &services, &[], limits);
    sim.auto_dial = true;
    // The provider and nine others: it publishes at all of them.
    for i in 0..9 {
        sim.connect(i, i + 1, None);
        sim.drive();
    }
    sim.advance(Duration::from_secs(10));
    let early: usize = sim.nodes.iter().map(|n| n.broker.records_len()).sum();
    assert!((1..=9).contains(&early), "records stored: {early}");
    // Fifty more join, each through the one before it: most of the k hosts closest to
    // the key are newcomers now, and only the provider can store its record there.
    for i in 10..n {
        sim.connect(i, i - 1, None);
        sim.drive();
    }
    sim.advance(Duration::from_secs(120));
    let key = dht::Key::of_service("rare");
    let mut closest: Vec<usize> = (1..n).collect();
    closest.sort_by_key(|i| dht::Key::of_peer(&ids[*i]).distance(&key));
    let holding = closest[..dht::K]
        .iter()
        .filter(|i| sim.nodes[**i].broker.records_len() > 0)
        .count();
    assert!(
        holding >= dht::K * 3 / 4,
        "{holding} of the {} hosts closest to the key hold the record",
        dht::K
    );
}

#[test]
fn once_its_closest_hosts_settle_a_record_is_stored_again_only_each_period() {
    let mut services: Vec<&[&str]> = vec![&[]; 30];
    services[0] = &["rare"];
    let (_, mut sim) = line(30, &services);
    // Published at joining (2 s after the first hello) and again 15 s later (the first
    // time, nothing to compare with), then while the closest hosts change.
    sim.advance(Duration::from_secs(5));
    let first = sim.finds[0];
    assert!(first > 0, "published");
    sim.advance(Duration::from_secs(15));
    assert!(sim.finds[0] > first, "published again 15 s later");
    sim.advance(Duration::from_secs(280));
    let early = sim.finds[0];
    // Nothing changes in this network: no early publication after that ...
    sim.advance(Duration::from_secs(25 * 60));
    assert_eq!(sim.finds[0], early, "published again before the period");
    // ... until the period comes round.
    sim.advance(Duration::from_secs(10 * 60));
    assert!(sim.finds[0] > early, "published again at the period");
}

/// A line of `n - 1` hosts whose last `providers` run `rare`, 70 s old, with room for 16
/// connections each and no learned peers (only lookups dial), and a newcomer (the last
/// id) joined at its first host: far below its dial limit.
fn probe_line(n: usize, providers: usize) -> (Sim, Vec<PeerId>, usize) {
    let ids = ids(n);
    let newcomer = n - 1;
    let mut services: Vec<&[&str]> = vec![&[]; n];
    for s in &mut services[newcomer - providers..newcomer] {
        *s = &["rare"];
    }
    let limits = BrokerLimits {
        max_peers: 16,
        max_learned: 0,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&ids, &services, &[], limits);
    sim.auto_dial = true;
    for i in 0..newcomer - 1 {
        sim.connect(i, i + 1, None);
        sim.drive();
    }
    sim.advance(Duration::from_secs(70));
    sim.connect(newcomer, 0, None);
    sim.drive();
    (sim, ids, newcomer)
}

/// Whether `host`'s lookups that ended since the last call include one that found `rare`.
fn found_rare(sim: &mut Sim, host: usize) -> bool {
    let done: Vec<LookupDone> =
        std::iter::from_fn(|| sim.nodes[host].broker.poll_lookup_done()).collect();
    done.iter()
        .any(|d| d.service.as_deref() == Some("rare") && d.found)
}

#[test]
fn a_probe_lets_go_of_what_it_dialled_however_few_connections_the_host_holds() {
    let (mut sim, ids, newcomer) = probe_line(30, 1);
    let provider = newcomer - 1;
    assert!(!sim.ready(newcomer).contains(&ids[provider]));
    let now = sim.now;
    assert!(sim.nodes[newcomer].broker.probe("rare", now));
    sim.drive();
    assert!(found_rare(&mut sim, newcomer));
    // Found, checked by connecting — and let go: nothing waits on a probe.
    assert!(
        !sim.ready(newcomer).contains(&ids[provider]),
        "the provider is let go"
    );
}

#[test]
fn a_probe_lets_go_of_a_provider_whose_dial_finishes_after_it_ended() {
    let (mut sim, ids, newcomer) = probe_line(30, 2);
    let (first, second) = (newcomer - 2, newcomer - 1);
    // Both providers' handshakes are slow: the newcomer dials both to check them, and the
    // probe ends when the first is ready.
    sim.slow = vec![first, second];
    let now = sim.now;
    assert!(sim.nodes[newcomer].broker.probe("rare", now));
    sim.drive();
    let parked: Vec<usize> = sim.parked.iter().map(|p| p.1).collect();
    assert!(
        parked.contains(&first) && parked.contains(&second),
        "both providers are being dialled: {parked:?}"
    );
    let mut rest = std::mem::take(&mut sim.parked);
    let last = rest.pop().unwrap();
    sim.parked = rest;
    sim.connect_parked();
    assert!(found_rare(&mut sim, newcomer));
    // The other is ready after the probe ended, with nothing waiting for it: let go at
    // once, as the one that answered was.
    sim.parked = vec![last];
    sim.connect_parked();
    let ready = sim.ready(newcomer);
    assert!(!ready.contains(&ids[first]), "{ready:?}");
    assert!(!ready.contains(&ids[second]), "{ready:?}");
}

/// The case the 10 000-host simulation found: the provider published while the network was
/// small, and newcomers closer to the key joined since, so the k hosts closest to the key
/// hold no record while hosts a little farther out do. A lookup that has heard of no
/// provider asks on to the 2k closest before it gives up, and finds it.
#[test]
fn a_lookup_that_heard_of_no_provider_asks_on_past_the_k_closest() {
    let key = dht::Key::of_service("rare");
    let mut pool = ids(31);
    pool.sort_by_key(|p| dht::Key::of_peer(p).distance(&key));
    // The first ten hosts (the provider last) rank 21st to 30th closest to the key; the
    // twenty that join later rank 1st to 20th; the seeker ranks 31st.
    let mut order: Vec<PeerId> = pool[dht::K..dht::K + 10].to_vec();
    order.extend_from_slice(&pool[..dht::K]);
    order.push(pool[dht::K + 10]);
    let (provider, seeker) = (9, order.len() - 1);
    let mut services: Vec<&[&str]> = vec![&[]; order.len()];
    services[provider] = &["rare"];
    let limits = BrokerLimits {
        max_peers: 1,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&order, &services, &[], limits);
    sim.auto_dial = true;
    for i in 0..provider {
        sim.connect(i, i + 1, None);
        sim.drive();
    }
    // Published at 2, 17 and 47 s after joining, at the hosts there were; next at 107 s.
    sim.advance(Duration::from_secs(50));
    let held: usize = sim.nodes.iter().map(|n| n.broker.records_len()).sum();
    assert!(held >= 5, "records stored: {held}");
    // Twenty newcomers closer to the key join, one through the other, then the seeker.
    sim.connect(provider + 1, 0, None);
    sim.drive();
    for i in provider + 2..order.len() {
        sim.connect(i, i - 1, None);
        sim.drive();
    }
    sim.advance(Duration::from_secs(5));
    let newcomers_holding = (provider + 1..seeker)
        .filter(|i| sim.nodes[*i].broker.records_len() > 0)
        .count();
    assert_eq!(newcomers_holding, 0, "the k closest hold no record yet");
    for i in 0..order.len() {
        while sim.nodes[i].broker.poll_lookup_done().is_some() {}
    }
    assert!(sim.nodes[seeker].broker.find("rare").is_empty());
    let now = sim.now;
    assert!(sim.nodes[seeker].broker.seek("rare", now));
    sim.drive();
    sim.advance(Duration::from_secs(20));
    let done: Vec<LookupDone> =
        std::iter::from_fn(|| sim.nodes[seeker].broker.poll_lookup_done()).collect();
    let seek = done
        .iter()
        .find(|d| d.service.as_deref() == Some("rare"))
        .expect("the lookup ended");
    assert!(seek.found, "{seek:?}");
}

/// The hosts of `ids` ranked by distance to `key`, closest first.
fn ranked(ids: &[PeerId], key: &dht::Key) -> Vec<PeerId> {
    let mut v = ids.to_vec();
    v.sort_by_key(|p| dht::Key::of_peer(p).distance(key));
    v
}

#[test]
fn a_publication_lets_go_of_the_hosts_it_asked_that_need_no_record() {
    // Sixty hosts around a hub, all running `base` and published long ago (the hosts
    // closest to its key name 20 providers); a newcomer that runs it too joins through the
    // hub, far below its dial limit of 64.
    let n = 62;
    let ids = ids(n);
    let (hub, newcomer) = (0, n - 1);
    let services: Vec<&[&str]> = vec![&["base"]; n];
    let limits = BrokerLimits {
        max_learned: 0,
        ..BrokerLimits::default()
    };
    let mut sim = Sim::with_limits(&ids, &services, &[], limits);
    sim.auto_dial = true;
    for i in 1..newcomer {
        sim.connect(i, hub, None);
    }
    sim.drive();
    sim.advance(Duration::from_secs(70));
    let finds = sim.finds[newcomer];
    sim.connect(newcomer, hub, None);
    sim.drive();
    for _ in 0..10 {
        sim.advance(Duration::from_secs(1));
    }
    assert!(
        sim.finds[newcomer] >= finds + 3,
        "the publication asked hosts"
    );
    // The hosts closest to the key that its own lookup (of its own key) did not need too:
    // asked, named 20 providers, let go.
    let near_base = ranked(&ids, &dht::Key::of_service("base"));
    let near_me = ranked(&ids, &dht::Key::of_peer(&ids[newcomer]));
    let only_base: Vec<PeerId> = near_base[..20]
        .iter()
        .filter(|p| !near_me[..40].contains(p) && **p != ids[hub])
        .copied()
        .collect();
    assert!(!only_base.is_empty());
    let ready = sim.ready(newcomer);
    let kept: Vec<&PeerId> = only_base.iter().filter(|p| ready.contains(p)).collect();
    assert!(kept.is_empty(), "kept {kept:?} of {only_base:?}");
    assert!(ready.contains(&ids[hub]));
}

#[test]
fn get_peers_answers_mostly_from_the_routing_table() {
    // The hub met 40 hosts (its table holds them) and is still connected to 8.
    let met = ids(41);
    let mut sim = Sim::new(&met, &[], &[]);
    let conns: Vec<ConnId> = (1..41).map(|i| sim.connect(i, 0, None)).collect();
    sim.drive();
    for c in &conns[8..] {
        lose(&mut sim, *c);
    }
    let hub = &mut sim.nodes[0].broker;
    assert_eq!(hub.host_count(), 8);
    let connected: HashSet<String> = hub.host_peers().iter().map(|p| p.to_string()).collect();
    let asker = met[1];
    for _ in 0..20 {
        let sample = hub.exchange_sample(asker, 32);
        let distinct: HashSet<&str> = sample.iter().map(|p| p.peer.as_str()).collect();
        assert_eq!(distinct.len(), sample.len(), "{sample:?}");
        assert!(!distinct.contains(asker.to_string().as_str()));
        assert!(
            !distinct.contains(met[0].to_string().as_str()),
            "never itself"
        );
        assert!(
            sample
                .iter()
                .all(|p| p.connected == connected.contains(&p.peer)),
            "{sample:?}"
        );
        let away = sample.iter().filter(|p| !p.connected).count();
        assert!(
            away >= 8,
            "hosts it is not connected to: {away} of {}",
            sample.len()
        );
        assert!(sample.iter().all(|p| p.addr.is_some()));
    }
    // A small table: the connections make up the rest.
    let few = ids(6);
    let mut sim = Sim::new(&few, &[], &[]);
    for i in 1..6 {
        sim.connect(i, 0, None);
    }
    sim.drive();
    assert_eq!(sim.nodes[0].broker.exchange_sample(few[1], 32).len(), 4);
}
