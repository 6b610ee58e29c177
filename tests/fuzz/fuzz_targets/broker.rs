//! The channel-0 broker (sans-IO) under an arbitrary script of connections, hellos, control
//! messages (built and raw), closes, dial failures, requests, answers and time. Whatever
//! the script, the broker never panics, everything it sends encodes and decodes back,
//! and it keeps at most one ready host connection per peer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::broker::{
    Allow, Ask, Broker, BrokerConfig, BrokerLimits, ConnId, DialTo, Event, Failure, PeerSpec,
};
use wasmwire::wire::control::{
    Control, ErrorCode, Hello, Oversize, PeerEntry, Role, ServiceEntry, decode_control,
};
use wasmwire::wire::{self, PeerId};

const ME: PeerId = PeerId([7; 32]);
const SERVICES: [&str; 3] = ["echo", "chat", "x"];
const CODES: [ErrorCode; 4] = [
    ErrorCode::Busy,
    ErrorCode::Closed,
    ErrorCode::RateLimited,
    ErrorCode::Other,
];

fn peer(i: u8) -> PeerId {
    // Some below ME (they dial), some above (we dial): both sides of the tie-break.
    PeerId([(i % 6) * 3; 32])
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400 + u16::from(i % 8)))
}

#[derive(Debug, Arbitrary)]
enum Built {
    Hello {
        host: bool,
        major: u8,
        minor: u8,
        listen: Option<u8>,
        services: Vec<u8>,
        nonce: u8,
    },
    GetPeers {
        id: u8,
    },
    Peers {
        id: u8,
        peers: Vec<(u8, Option<u8>, bool)>,
        garbage: Option<String>,
    },
    FindService {
        id: u8,
        service: u8,
    },
    Found {
        id: u8,
        peers: Vec<(u8, Option<u8>)>,
    },
    ListServices {
        id: u8,
    },
    Services {
        id: u8,
        n: u8,
    },
    ListSessions {
        id: u8,
    },
    Request {
        id: u8,
        service: u8,
        chain: Vec<u8>,
        me_in_chain: bool,
        timeout_ms: u16,
    },
    Response {
        id: u8,
    },
    Error {
        id: u8,
        code: u8,
        reason: String,
        oversize: Option<(u32, u32)>,
    },
    Ping {
        id: u8,
    },
    Pong {
        id: u8,
    },
    Full {
        peers: Vec<(u8, Option<u8>)>,
    },
    FindNode {
        id: u8,
        target: Option<u8>,
    },
    Nodes {
        id: u8,
        peers: Vec<(u8, Option<u8>)>,
    },
    AddProvider {
        id: u8,
        service: u8,
    },
    Stored {
        id: u8,
    },
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// This host is full: its `full` answer must encode and list only its ready hosts.
    FullAnswer,
    /// Something asks for a host by id (a dial, or a DHT lookup).
    Reach {
        peer: u8,
    },
    /// Something asks for a service no connected host runs (a DHT lookup).
    Seek {
        service: u8,
        probe: bool,
    },
    Connect {
        conn: u8,
        peer: u8,
        dialled: Option<u8>,
    },
    Send {
        conn: u8,
        message: Built,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    Closed {
        conn: u8,
    },
    DialFailed {
        pick: u8,
    },
    Advance {
        ms: u16,
    },
    Ask {
        conn: u8,
        what: u8,
        timeout_ms: u16,
    },
    Answer {
        pick: u8,
        fail: bool,
    },
    Close {
        conn: u8,
    },
}

fn entry(p: u8, a: Option<u8>, connected: bool) -> PeerEntry {
    PeerEntry {
        peer: peer(p).to_string(),
        addr: a.map(|a| addr(a).to_string()),
        connected,
    }
}

fn build(m: Built) -> Control {
    let id = |i: u8| u64::from(i);
    match m {
        Built::Hello {
            host,
            major,
            minor,
            listen,
            services,
            nonce,
        } => Control::Hello(Hello {
            role: if host { Role::Host } else { Role::Client },
            major: u32::from(major % 3),
            minor: u32::from(minor % 3),
            features: vec!["peer-exchange".into()],
            listen: listen.map(|a| addr(a).to_string()),
            services: services
                .iter()
                .map(|s| SERVICES[*s as usize % 3].into())
                .collect(),
            nonce: u64::from(nonce),
        }),
        Built::GetPeers { id: i } => Control::GetPeers { id: id(i) },
        Built::Peers {
            id: i,
            peers,
            garbage,
        } => {
            let mut peers: Vec<PeerEntry> =
                peers.into_iter().map(|(p, a, c)| entry(p, a, c)).collect();
            if let Some(g) = garbage {
                peers.push(PeerEntry {
                    peer: g.clone(),
                    addr: Some(g),
                    connected: false,
                });
            }
            Control::Peers { id: id(i), peers }
        }
        Built::FindService { id: i, service } => Control::FindService {
            id: id(i),
            service: SERVICES[service as usize % 3].into(),
        },
        Built::Found { id: i, peers } => Control::Found {
            id: id(i),
            service: "echo".into(),
            closer: peers
                .iter()
                .map(|(p, a)| entry(p.wrapping_add(1), *a, false))
                .collect(),
            peers: peers.into_iter().map(|(p, a)| entry(p, a, false)).collect(),
        },
        Built::ListServices { id: i } => Control::ListServices { id: id(i) },
        Built::Services { id: i, n } => Control::Services {
            id: id(i),
            services: (0..n % 4)
                .map(|k| ServiceEntry {
                    name: SERVICES[k as usize % 3].into(),
                    channel: u16::from(k),
                    messages: vec![],
                    events: vec![],
                    state: wasmwire::wire::ServiceState::Awake,
                    sessions: 0,
                    keyed: None,
                })
                .collect(),
        },
        Built::ListSessions { id: i } => Control::ListSessions { id: id(i) },
        Built::Request {
            id: i,
            service,
            chain,
            me_in_chain,
            timeout_ms,
        } => {
            let mut chain: Vec<String> =
                chain.iter().map(|p| format!("{}/svc", peer(*p))).collect();
            if me_in_chain {
                chain.push(format!("{ME}/svc"));
            }
            Control::Request {
                id: id(i),
                service: SERVICES[service as usize % 3].into(),
                event: "e".into(),
                params: "null".into(),
                timeout_ms: u64::from(timeout_ms),
                chain,
                caller: None,
                session: None,
            }
        }
        Built::Response { id: i } => Control::Response {
            id: id(i),
            result: "1".into(),
        },
        Built::Error {
            id: i,
            code,
            reason,
            oversize,
        } => Control::Error {
            id: id(i),
            code: CODES[code as usize % CODES.len()],
            reason,
            oversize: oversize.map(|(size, limit)| Oversize {
                size: size.into(),
                limit: limit.into(),
            }),
        },
        Built::Ping { id: i } => Control::Ping { id: id(i) },
        Built::Pong { id: i } => Control::Pong { id: id(i) },
        Built::FindNode { id: i, target } => Control::FindNode {
            id: id(i),
            // A real key, or text that is not one.
            target: target.map_or_else(|| "not-a-key".into(), |p| peer(p).to_string()),
        },
        Built::Nodes { id: i, peers } => Control::Nodes {
            id: id(i),
            peers: peers.into_iter().map(|(p, a)| entry(p, a, false)).collect(),
        },
        Built::AddProvider { id: i, service } => Control::AddProvider {
            id: id(i),
            service: SERVICES[service as usize % 3].into(),
        },
        Built::Stored { id: i } => Control::Stored { id: id(i) },
        Built::Full { peers } => Control::Full {
            reason: "full".into(),
            peers: peers.into_iter().map(|(p, a)| entry(p, a, true)).collect(),
        },
    }
}

fn ask(what: u8) -> Ask {
    match what % 8 {
        0 => Ask::ListServices,
        1 => Ask::ListSessions,
        2 => Ask::FindService("echo".into()),
        3 => Ask::GetPeers,
        4 => Ask::Ping,
        5 => Ask::FindNode(peer(what).to_string()),
        6 => Ask::AddProvider("echo".into()),
        _ => Ask::Request {
            service: "echo".into(),
            event: "e".into(),
            params: "null".into(),
            chain: vec![],
            caller: None,
            session: None,
        },
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let mut broker = Broker::new(
        BrokerConfig {
            me: ME,
            role: Role::Host,
            listen: Some(addr(0)),
            services: vec!["echo".into()],
            allow: Arc::new(Allow::default()),
            peers: vec![
                PeerSpec {
                    addr: addr(1).to_string(),
                    expected: Some(peer(1)),
                },
                PeerSpec {
                    addr: addr(2).to_string(),
                    expected: None,
                },
            ],
            limits: BrokerLimits {
                max_learned: 8,
                max_peers: 4,
                ..BrokerLimits::default()
            },
            seed: 1,
        },
        now,
    );
    let mut open: HashSet<ConnId> = HashSet::new();
    let mut dials: Vec<DialTo> = Vec::new();
    let mut incoming: Vec<(ConnId, u64)> = Vec::new();
    for op in ops.into_iter().take(256) {
        let advanced = matches!(op, Op::Advance { .. });
        match op {
            Op::Connect {
                conn,
                peer: p,
                dialled,
            } => {
                let conn = ConnId::from(conn % 8);
                if open.insert(conn) {
                    let dialled = dialled.and_then(|d| {
                        (!dials.is_empty()).then(|| dials.remove(d as usize % dials.len()))
                    });
                    // A dial checks the id it expects at the handshake: only that peer
                    // can be at the other end.
                    let who = match &dialled {
                        Some(DialTo::Learned { peer, .. }) => *peer,
                        Some(DialTo::Configured { spec, .. }) => spec.expected.unwrap_or(peer(p)),
                        _ => peer(p),
                    };
                    broker.handle_connected(conn, who, addr(p), dialled, now);
                }
            }
            Op::Send { conn, message } => {
                broker.handle_control(ConnId::from(conn % 8), build(message), now)
            }
            Op::Raw { conn, bytes } => match decode_control(&bytes) {
                Ok(m) => broker.handle_control(ConnId::from(conn % 8), m, now),
                Err(e) => broker.handle_undecodable(ConnId::from(conn % 8), e, now),
            },
            Op::Closed { conn } => {
                let conn = ConnId::from(conn % 8);
                open.remove(&conn);
                incoming.retain(|(c, _)| *c != conn);
                broker.handle_closed(conn, now);
            }
            Op::DialFailed { pick } => {
                if !dials.is_empty() {
                    let d = dials.remove(pick as usize % dials.len());
                    broker.handle_dial_failed(&d, now);
                }
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(ms));
                broker.handle_timeout(now);
            }
            Op::Ask {
                conn,
                what,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(u64::from(timeout_ms));
                let _ = broker.request(ConnId::from(conn % 8), ask(what), timeout, now);
            }
            Op::Answer { pick, fail } => {
                if !incoming.is_empty() {
                    let (conn, id) = incoming.remove(pick as usize % incoming.len());
                    let answer = if fail {
                        Err(Failure::new(ErrorCode::Busy, "busy"))
                    } else {
                        Ok(Control::Response {
                            id,
                            result: "2".into(),
                        })
                    };
                    broker.answer(conn, id, answer);
                }
            }
            Op::Close { conn } => broker.close(ConnId::from(conn % 8), "fuzz".into(), now),
            Op::Reach { peer: p } => {
                broker.reach(peer(p), now);
            }
            Op::Seek { service, probe } => {
                let service = SERVICES[service as usize % 3];
                if probe {
                    broker.probe(service, now);
                } else {
                    broker.seek(service, now);
                }
            }
            Op::FullAnswer => {
                let Control::Full { peers, .. } = broker.full_answer() else {
                    panic!("full_answer is a `full`");
                };
                let ready: HashSet<String> = broker
                    .ready_connections()
                    .into_iter()
                    .filter(|(_, _, r)| *r == Role::Host)
                    .map(|(_, p, _)| p.to_string())
                    .collect();
                let listed: HashSet<String> = peers.iter().map(|e| e.peer.clone()).collect();
                assert_eq!(listed.len(), peers.len(), "a sample has no repeats");
                assert!(listed.is_subset(&ready), "{listed:?} not all in {ready:?}");
            }
        }
        while let Some((_, message)) = broker.poll_transmit() {
            let mut out = BytesMut::new();
            wire::put_json(&mut out, &message);
            let body = &out[wire::LEN_BYTES..];
            let back = decode_control(body)
                .unwrap_or_else(|e| panic!("the broker sent {message:?}, which decodes as {e}"));
            assert_eq!(back, message);
        }
        while let Some(e) = broker.poll_event() {
            match e {
                Event::Dial(d) => dials.push(d),
                Event::Incoming { conn, id, .. } => incoming.push((conn, id)),
                _ => {}
            }
        }
        if advanced && let Some(t) = broker.poll_timeout() {
            // Right after `handle_timeout(now)` nothing may be due: a deadline at or
            // before `now` would wake the driver again and again (a busy loop).
            assert!(
                t > now,
                "due {:?} before now right after handle_timeout",
                now - t
            );
        }
        let mut hosts = HashSet::new();
        for (conn, p, role) in broker.ready_connections() {
            if role == Role::Host {
                assert!(hosts.insert(p), "two ready host connections to {p}");
                // The indexes agree with the connections.
                assert_eq!(broker.connection_to(&p), Some(conn));
            }
        }
        assert_eq!(broker.host_count(), hosts.len());
        for s in SERVICES {
            assert!(broker.find(s).iter().all(|p| hosts.contains(p)));
        }
        assert!(broker.learned_count() <= 8);
        while broker.poll_lookup_done().is_some() {}
        // Dials the script never settles fail, so the broker's count of dials under way
        // stays true and it keeps dialling.
        if dials.len() > 64 {
            for d in dials.split_off(64) {
                broker.handle_dial_failed(&d, now);
            }
        }
        incoming.truncate(512);
    }
});
