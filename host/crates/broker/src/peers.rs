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

/// Connections a host asks for peers per exchange period, on average, however many it has.
const EXCHANGES_PER_PERIOD: usize = 8;

/// How long a host that answered `full` is not learned again.
pub(crate) const FULL_BACKOFF: Duration = Duration::from_secs(120);

/// The first period of a connection another host made to this one while it holds more
/// than its high-water mark: long enough to answer a newcomer's hello and first queries,
/// short enough that a seed's connections do not grow with the rate newcomers arrive at
/// (a full period would let a seed fill up with newcomers that are done with it).
const FIRST_PERIOD_PAST_HIGH_WATER: Duration = Duration::from_secs(5);

impl Broker {
    /// Connected hosts that said they expose `service`, nearest first (by connection age).
    pub fn find(&self, service: &str) -> Vec<PeerId> {
        self.providers
            .get(class_of(service))
            .map(|m| m.values().copied().collect())
            .unwrap_or_default()
    }

    /// The first connected host (by connection age) that exposes `service` and passes
    /// `pass`, without building a list.
    pub fn find_first(&self, service: &str, pass: impl Fn(&PeerId) -> bool) -> Option<PeerId> {
        self.providers
            .get(class_of(service))?
            .values()
            .find(|p| pass(p))
            .copied()
    }

    /// The hosts this host has a ready connection to, in no particular order.
    pub fn host_peers(&self) -> &[PeerId] {
        &self.host_list
    }

    /// Peers learned by exchange and not connected.
    pub fn learned_count(&self) -> usize {
        self.learned.len()
    }

    /// Ready connections to hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Ready connections to hosts, those released and not closed yet apart.
    pub(crate) fn held(&self) -> usize {
        self.hosts.len() - self.released
    }

    /// Lets `conn` go: the driver closes it unless sessions use it.
    pub(crate) fn release(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.released {
            return;
        }
        if self.hosts.get(&c.peer).is_some_and(|(k, _)| *k == conn) {
            c.released = true;
            self.released += 1;
        }
        self.events.push_back(Event::Release { conn });
    }

    /// Lets the configured peers this host dialled go, when nothing is under way on them,
    /// as soon as enough other hosts carry it (`bootstrapped`) — not at their next
    /// exchange: a seed would otherwise hold a connection from every newcomer of its last
    /// few seconds, as many as newcomers arrive (see `docs/scaling.md`). Called when a
    /// host connection becomes ready and after a request on a configured peer's
    /// connection is answered (not after answering one: the answer could be cut off).
    pub(crate) fn release_bootstraps(&mut self) {
        if self.bootstrap_ready == 0 || !self.bootstrapped() {
            return;
        }
        for i in 0..self.configured.len() {
            let Some(peer) = self.configured[i].peer else {
                continue;
            };
            let Some(&(conn, _)) = self.hosts.get(&peer) else {
                continue;
            };
            // Only a connection dialled for the configured entry: one the seed made (a
            // query, a learned dial) is the seed's to let go, and one this host made to
            // it as a learned peer (seeds are in everyone's samples) waits for its
            // exchange — let go at once, the next sample would have it dialled again.
            let idle = self.conns.get(&conn).is_some_and(|c| {
                c.bootstrap
                    && c.configured.is_some()
                    && !c.released
                    && c.pending == 0
                    && c.incoming == 0
            });
            if idle {
                self.release(conn);
            }
        }
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
        let mut conns: Vec<&Conn> = self
            .hosts
            .values()
            .filter_map(|(conn, _)| self.conns.get(conn))
            .collect();
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
            DialTo::Configured { index, .. } => {
                self.schedule_redial(*index, now);
                if let Some(p) = self.configured.get(*index).and_then(|t| t.peer) {
                    self.settle_peer(p, now);
                }
            }
            DialTo::Learned { peer, .. } => {
                self.table.failed(peer);
                self.learned_failed(*peer, now);
                self.lookup_dials.remove(peer);
                self.settle_peer(*peer, now);
            }
            DialTo::Direct(_) => {}
        }
    }

    /// Asks `conn` for its peers (`first`: on hello), and schedules the next exchange.
    pub(crate) fn exchange(&mut self, conn: ConnId, now: Instant, first: bool) {
        let every = self.config.limits.exchange_every;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.role().is_none() {
            return;
        }
        if let Some(at) = c.next_exchange.take() {
            self.timers.remove(&(at, Timer::Exchange(conn)));
        }
        // Released a period ago and still open: the driver keeps it for its sessions.
        let kept = std::mem::take(&mut c.released);
        self.released -= usize::from(kept);
        let inbound = c.host && !c.dialled && !c.bootstrap;
        let every = if first && inbound && self.held() > self.config.limits.high_water {
            FIRST_PERIOD_PAST_HIGH_WATER.min(every)
        } else {
            every
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.next_exchange = Some(now + every);
        self.timers.insert((now + every, Timer::Exchange(conn)));
        if first && c.transient {
            // Made for one query: no exchange unless it stays.
            return;
        }
        // A bootstrap peer with nothing under way is let go once enough other hosts carry
        // this one, and so is a connection made for a query once the host has more than
        // it dials for, and one another host made to this one once this one holds more
        // than its high-water mark (the driver keeps any of them if sessions use it; the
        // next exchange asks again). Never on hello: a connection just made gets a period
        // of use — a short one (`FIRST_PERIOD_PAST_HIGH_WATER`) when it is another host's
        // and this one holds more than its high-water mark.
        let idle = !first && c.pending == 0 && c.incoming == 0;
        let (bootstrap, transient) = (c.bootstrap, c.transient);
        let n = self.held();
        if idle
            && ((bootstrap && self.bootstrapped())
                || (transient && n > self.dial_limit())
                || (inbound && n > self.config.limits.high_water))
        {
            self.release(conn);
            return;
        }
        // Asking every connection every period would make a host's exchange traffic grow
        // with its connections; past 8, each is asked with the chance that makes it 8 a
        // period on average (the DHT, not exchange, finds the rest).
        if !first
            && n > EXCHANGES_PER_PERIOD
            && self.next_random() % n as u64 >= EXCHANGES_PER_PERIOD as u64
        {
            return;
        }
        let _ = self.send_request(
            conn,
            Ask::GetPeers,
            Duration::from_secs(5),
            now,
            Purpose::Exchange,
        );
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
            if addr.port() != 0
                && !addr.ip().is_unspecified()
                && peer != self.config.me
                && self.config.allow.permits(&peer)
            {
                self.table.observe(peer, addr, false, now);
            }
            if peer == self.config.me
                || peer == from_peer
                || self.full_until.get(&peer).is_some_and(|t| *t > now)
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
            self.learned_due.insert((now, peer));
        }
        self.dial_learned(now);
    }

    pub(crate) fn dial_learned(&mut self, now: Instant) {
        if self.host_count() >= self.dial_limit() {
            return;
        }
        while self.dials < self.config.limits.max_dials {
            let Some(&(at, peer)) = self.learned_due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.learned_due.pop_first();
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

    /// Host connections past which learned peers are not dialled: `max_peers`, and never
    /// more than half the connection cap, so every host keeps room for newcomers to dial
    /// it (hosts that all dial up to their cap fill each other and turn everyone away).
    pub(crate) fn dial_limit(&self) -> usize {
        let l = &self.config.limits;
        l.max_peers.min(l.max_connections / 2)
    }

    /// Remembers that `peer` answered `full`, so that samples naming it do not send this
    /// host back to it for [`FULL_BACKOFF`].
    pub(crate) fn note_full(&mut self, peer: PeerId, now: Instant) {
        if self.full_until.len() >= self.config.limits.max_learned {
            self.full_until.retain(|_, t| *t > now);
        }
        if self.full_until.len() < self.config.limits.max_learned {
            self.full_until.insert(peer, now + FULL_BACKOFF);
        }
    }

    /// Drops a learned peer (it connected, or is not worth dialling) and its due time.
    pub(crate) fn forget_learned(&mut self, peer: &PeerId) {
        if let Some(l) = self.learned.remove(peer) {
            if l.dialling {
                self.dials = self.dials.saturating_sub(1);
            } else {
                self.learned_due.remove(&(l.next, *peer));
            }
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
            self.forget_learned(&peer);
            return;
        }
        if !l.dialling {
            self.learned_due.remove(&(l.next, peer));
        }
        l.next = now + min * (1 << l.failures);
        if !l.dialling {
            self.learned_due.insert((l.next, peer));
        }
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

impl Broker {
    /// Makes sure `peer` is connected or being dialled: dials it now if this host knows
    /// where it listens (a configured peer seen once, or a learned one), whatever the
    /// limits on dialling learned peers (someone is waiting for it). Returns whether a
    /// connection is there or on its way; `false`: no connection and no known address.
    pub fn reach(&mut self, peer: PeerId, now: Instant) -> bool {
        // Wanted: not let go when a probe's dial to it finishes.
        self.let_go.remove(&peer);
        if self.has_conn(&peer) || self.dialling(&peer) {
            return true;
        }
        if peer == self.config.me || !self.config.allow.permits(&peer) {
            return false;
        }
        if let Some(i) = self.configured.iter().position(|t| t.peer == Some(peer)) {
            let t = &mut self.configured[i];
            t.dialling = true;
            t.next = None;
            let spec = t.spec.clone();
            self.events
                .push_back(Event::Dial(DialTo::Configured { index: i, spec }));
            return true;
        }
        let Some(l) = self.learned.get_mut(&peer) else {
            // Nobody told this host where it is: the DHT may know (it is dialled when
            // the lookup finds it).
            if let Some(e) = self.table.get(&peer) {
                let addr = e.addr;
                self.dial_for_query(peer, addr);
                return true;
            }
            // Marked before the lookup starts: one that ends at once (nobody to ask)
            // finds the mark and clears it.
            self.reaching.insert(peer);
            if self.start_lookup(Goal::Peer(peer), now).is_none() {
                self.reaching.remove(&peer);
                return false;
            }
            return self.dialling(&peer) || self.has_conn(&peer);
        };
        self.learned_due.remove(&(l.next, peer));
        l.dialling = true;
        self.dials += 1;
        let addr = l.addr;
        self.events
            .push_back(Event::Dial(DialTo::Learned { peer, addr }));
        true
    }

    /// Whether a dial to `peer` is under way.
    pub fn dialling(&self, peer: &PeerId) -> bool {
        self.reaching.contains(peer)
            || self.lookup_dials.contains(peer)
            || self.learned.get(peer).is_some_and(|l| l.dialling)
            || self
                .configured
                .iter()
                .any(|t| t.dialling && t.peer == Some(*peer))
    }
}
