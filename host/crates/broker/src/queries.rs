//! Answers to what a peer asks on channel 0: `ping`, `get-peers` and `find-service`
//! (rate-limited per connection); other asks go to the driver as [`Incoming`].

use super::*;

impl Broker {
    pub(crate) fn on_ask(&mut self, conn: ConnId, message: Control, now: Instant) {
        let limits = &self.config.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let id = message.id();
        let reply = |m: Control| (conn, m);
        match message {
            Control::Ping { id } => self.transmits.push_back(reply(Control::Pong { id })),
            Control::GetPeers { id }
            | Control::FindService { id, .. }
            | Control::FindNode { id, .. }
            | Control::AddProvider { id, .. }
                if !c.bucket.take(limits.queries_per_second, now) =>
            {
                self.transmits.push_back(reply(Control::Error {
                    id,
                    code: ErrorCode::RateLimited,
                    reason: format!(
                        "at most {} peer queries a second",
                        limits.queries_per_second
                    ),
                    oversize: None,
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
                    self.exchange_sample(asker, max)
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
                let providers = self.providers.get(class_of(&service));
                // At most k in all: itself, then connected hosts, then records.
                let room = dht::K - peers.len();
                for p in providers.into_iter().flat_map(|m| m.values()).take(room) {
                    let addr = self.hosts.get(p).and_then(|(cid, _)| {
                        let c = self.conns.get(cid)?;
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
                let asker = self.conns.get(&conn).map(|c| c.peer);
                let key = dht::Key::of_service(class_of(&service));
                let from = self.next_random() as usize;
                for r in self.records.providers(&key, dht::K, from, now) {
                    if peers.len() >= dht::K {
                        break;
                    }
                    let peer = r.provider.to_string();
                    if !peers.iter().any(|p| p.peer == peer) {
                        peers.push(PeerEntry {
                            peer,
                            addr: Some(r.addr.to_string()),
                            connected: false,
                        });
                    }
                }
                let closer = self.closer(&key, asker.as_ref());
                self.transmits.push_back(reply(Control::Found {
                    id,
                    service,
                    peers,
                    closer,
                }));
            }
            Control::FindNode { id, target } => {
                let asker = c.peer;
                let Some(key) = dht::Key::from_text(&target) else {
                    self.transmits.push_back(reply(Control::Error {
                        id,
                        code: ErrorCode::Invalid,
                        reason: "find-node: the target is not a key (52 base32 characters)".into(),
                        oversize: None,
                    }));
                    return;
                };
                let peers = self.closer(&key, Some(&asker));
                self.transmits
                    .push_back(reply(Control::Nodes { id, peers }));
            }
            Control::AddProvider { id, service } => {
                // The record names the sender, at the address its connection advertises:
                // a host can store records only for itself.
                let provider = c.peer;
                let addr = match &c.state {
                    ConnState::Ready(a) if a.role == Role::Host => advertised(a.listen, c.remote),
                    _ => None,
                };
                let answer = match addr {
                    None => Err("add-provider: only a host that listens can provide"),
                    Some(_) if service.is_empty() || service.len() > 128 => {
                        Err("add-provider: a service name is 1 to 128 bytes")
                    }
                    Some(addr) => {
                        let key = dht::Key::of_service(class_of(&service));
                        self.records
                            .add(key, provider, addr, now)
                            .map_err(|e| match e {
                                dht::RecordRefused::Full => {
                                    "add-provider: this host keeps no more records"
                                }
                                dht::RecordRefused::TooMany => {
                                    "add-provider: that host has as many records here as one may"
                                }
                            })
                    }
                };
                self.transmits.push_back(reply(match answer {
                    Ok(()) => Control::Stored { id },
                    Err(reason) => Control::Error {
                        id,
                        code: ErrorCode::Busy,
                        reason: reason.into(),
                        oversize: None,
                    },
                }));
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
                        oversize: None,
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
                            oversize: None,
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

    /// The hosts of the routing table closest to `key` (at most k), as entries.
    fn closer(&self, key: &dht::Key, except: Option<&PeerId>) -> Vec<PeerEntry> {
        self.table
            .closest(key, dht::K, except)
            .into_iter()
            .map(|e| PeerEntry {
                peer: e.peer.to_string(),
                addr: Some(e.addr.to_string()),
                connected: self.hosts.contains_key(&e.peer),
            })
            .collect()
    }

    /// What a host at its connection cap sends instead of `hello` before it closes: a
    /// random sample of its hosts, so that the newcomer it refuses learns where to go.
    pub fn full_answer(&mut self) -> Control {
        let reason = format!(
            "{} connections open already",
            self.config.limits.max_connections
        );
        let peers = self.sample_hosts(None, self.config.limits.peers_per_answer);
        Control::Full { reason, peers }
    }

    /// What a host answers another's `get-peers` with: a quarter drawn from its
    /// connections, the rest from its routing table (hosts met, not failing), the
    /// connections again if the table has too few. Random, not the oldest connections:
    /// every host answering with the same first few would make those few the hubs
    /// everyone dials. Mostly the table: a seed's connections are mostly the newcomers of
    /// its last seconds, and a sample of them sent each newcomer to the ones just before
    /// it, while the table keeps long-lived hosts of every distance (`docs/scaling.md`).
    pub(crate) fn exchange_sample(&mut self, asker: PeerId, max: usize) -> Vec<PeerEntry> {
        let mut out = self.sample_hosts(Some(asker), max.div_ceil(4));
        let mut named: Vec<PeerId> = out.iter().filter_map(|p| p.peer.parse().ok()).collect();
        let n = self.table.len();
        let mut draws = 2 * max;
        while out.len() < max && draws > 0 && n > 0 {
            draws -= 1;
            let i = (self.next_random() % n as u64) as usize;
            let Some(e) = self.table.nth(i) else {
                break;
            };
            if e.peer == asker || !e.verified || e.failures > 0 || named.contains(&e.peer) {
                continue;
            }
            named.push(e.peer);
            out.push(PeerEntry {
                peer: e.peer.to_string(),
                addr: Some(e.addr.to_string()),
                connected: self.hosts.contains_key(&e.peer),
            });
        }
        // Too few in the table (a small network): the connections make up the rest.
        if out.len() < max {
            for p in self.sample_hosts(Some(asker), max) {
                if out.len() >= max {
                    break;
                }
                if !out.iter().any(|o| o.peer == p.peer) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Up to `max` ready hosts other than `except`, drawn at random — in time linear in
    /// `max`, not in the connections.
    pub(crate) fn sample_hosts(&mut self, except: Option<PeerId>, max: usize) -> Vec<PeerEntry> {
        let n = self.host_list.len();
        let skip = except.and_then(|p| self.hosts.get(&p)).map(|(_, pos)| *pos);
        let available = n - usize::from(skip.is_some());
        let m = available.min(max);
        let picked: Vec<usize> = if m * 2 >= available {
            // Most of them: a partial shuffle of every place (at most 2 · max of them).
            let mut all: Vec<usize> = (0..n).filter(|i| Some(*i) != skip).collect();
            for i in 0..m {
                let j = i + (self.next_random() % (all.len() - i) as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(m);
            all
        } else {
            // A few of many: draw places until `m` distinct ones (under two draws each).
            let mut picked = Vec::with_capacity(m);
            while picked.len() < m {
                let i = (self.next_random() % n as u64) as usize;
                if Some(i) != skip && !picked.contains(&i) {
                    picked.push(i);
                }
            }
            picked
        };
        picked
            .into_iter()
            .filter_map(|i| {
                let peer = self.host_list[i];
                let c = self.conns.get(&self.hosts.get(&peer)?.0)?;
                let ConnState::Ready(a) = &c.state else {
                    return None;
                };
                Some(PeerEntry {
                    peer: peer.to_string(),
                    addr: advertised(a.listen, c.remote).map(|a| a.to_string()),
                    connected: true,
                })
            })
            .collect()
    }
}
