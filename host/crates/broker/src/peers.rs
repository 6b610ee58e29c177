//! The peer table: configured peers re-dialled with jittered, capped exponential back-off,
//! peers learned by exchange in a bounded table, and the lookups over it.

use super::*;

#[derive(Debug)]
pub(crate) struct Configured {
    pub(crate) spec: PeerSpec,
    /// The id seen the last time it answered (or the one written after `#`).
    pub(crate) peer: Option<PeerId>,
    pub(crate) backoff: Duration,
    pub(crate) next: Option<Instant>,
    pub(crate) dialling: bool,
}

#[derive(Debug)]
pub(crate) struct Learned {
    pub(crate) addr: SocketAddr,
    pub(crate) failures: u32,
    pub(crate) next: Instant,
    pub(crate) dialling: bool,
}

impl Broker {
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

    /// A dial produced no connection.
    pub fn handle_dial_failed(&mut self, to: &DialTo, now: Instant) {
        self.dial_finished(to);
        match to {
            DialTo::Configured { index, .. } => self.schedule_redial(*index, now),
            DialTo::Learned { peer, .. } => self.learned_failed(*peer, now),
            DialTo::Direct(_) => {}
        }
    }

    pub(crate) fn exchange(&mut self, conn: ConnId, now: Instant) {
        let every = self.config.limits.exchange_every;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.next_exchange = Some(now + every);
        let _ = self.send_request(conn, Ask::GetPeers, Duration::from_secs(5), now, true);
    }

    /// Takes in a `peers` answer: bounded, allowed, not ourselves, not connected already.
    pub(crate) fn learn(&mut self, from: ConnId, peers: Vec<PeerEntry>, now: Instant) {
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

    pub(crate) fn host_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.role() == Some(Role::Host))
            .count()
    }

    pub(crate) fn dial_learned(&mut self, now: Instant) {
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

    pub(crate) fn dial_finished(&mut self, to: &DialTo) {
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

    pub(crate) fn learned_failed(&mut self, peer: PeerId, now: Instant) {
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

    pub(crate) fn schedule_redial(&mut self, index: usize, now: Instant) {
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

    pub(crate) fn jitter(&mut self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn next_random(&mut self) -> u64 {
        // xorshift64: enough to spread re-dials and break ties; no secret depends on it.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}
