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
}
