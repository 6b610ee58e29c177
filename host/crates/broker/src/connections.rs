//! Connections and hello: version agreement, roles, one connection per pair of hosts (a
//! deterministic rule settles simultaneous dials), and what is known of each connection.

use super::*;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) peer: PeerId,
    /// We dialled it (rather than accepted it).
    pub(crate) dialled: bool,
    pub(crate) remote: SocketAddr,
    pub(crate) configured: Option<usize>,
    pub(crate) state: ConnState,
    pub(crate) bucket: Bucket,
    pub(crate) incoming: usize,
    pub(crate) pending: usize,
    pub(crate) next_exchange: Option<Instant>,
    pub(crate) opened: u64,
    /// The nonce we sent in our hello.
    pub(crate) my_nonce: u64,
    /// The nonce of whoever dialled it (known after hello).
    pub(crate) dialler_nonce: u64,
    /// It finished hello as a host (it stays true while the connection closes).
    pub(crate) host: bool,
    /// It is a ready host connection to a configured peer (counted in `bootstrap_ready`).
    pub(crate) bootstrap: bool,
    /// It was dialled for a lookup's query: released when idle and the host has more
    /// connections than it dials for.
    pub(crate) transient: bool,
    /// Released (`Event::Release`) as this host's connection to its peer, and not closed
    /// yet: counted in `Broker::released`.
    pub(crate) released: bool,
}

#[derive(Debug)]
pub(crate) enum ConnState {
    AwaitHello { deadline: Instant },
    Ready(Box<Agreed>),
    Closing,
}

/// What two sides agreed on in their hellos.
#[derive(Debug, Clone)]
pub(crate) struct Agreed {
    pub(crate) role: Role,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) services: Vec<String>,
}

/// A token bucket: `rate` per second, up to twice that at once.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) at: Option<Instant>,
}

impl Bucket {
    pub(crate) fn take(&mut self, rate: u32, now: Instant) -> bool {
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

impl Broker {
    /// The connection to use for `peer`: its ready connection to a host, if any.
    pub fn connection_to(&self, peer: &PeerId) -> Option<ConnId> {
        self.hosts.get(peer).map(|(conn, _)| *conn)
    }

    /// Whether `peer` has a connection in any state but closing (a dial is not needed).
    pub fn has_conn(&self, peer: &PeerId) -> bool {
        self.live.contains_key(peer)
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
        let mut transient = false;
        if let Some(DialTo::Learned { peer, .. }) = &dialled {
            // Connected: it is no longer a peer to dial.
            self.forget_learned(peer);
            transient = self.lookup_dials.remove(peer);
        }
        if dialled.is_none() {
            // A configured peer that shows up inbound is reachable: reset its back-off.
            let min = self.config.limits.backoff_min;
            for c in self.configured.iter_mut().filter(|c| c.peer == Some(peer)) {
                c.backoff = min;
            }
        }
        let deadline = now + self.config.limits.hello_timeout;
        if self.conns.contains_key(&conn) {
            // The driver names each connection once; a reused id ends the old one first.
            self.handle_closed(conn, now);
        }
        *self.live.entry(peer).or_default() += 1;
        self.timers.insert((deadline, Timer::Hello(conn)));
        self.conns.insert(
            conn,
            Conn {
                peer,
                dialled: dialled.is_some(),
                remote,
                configured,
                state: ConnState::AwaitHello { deadline },
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
                bootstrap: false,
                transient,
                released: false,
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
                            oversize: None,
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

    /// A connection ended (closed by either side or lost).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.retire(conn);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        // What waited for it and cannot get it now goes on without it.
        self.settle_peer(c.peer, now);
        if c.pending > 0 {
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
        if c.host && !self.configured.is_empty() && !self.bootstrapped() {
            // Below the bootstrap threshold again: the configured peers that were let go
            // are dialled again.
            for i in 0..self.configured.len() {
                if self.configured[i]
                    .peer
                    .is_none_or(|p| self.connection_to(&p).is_none())
                {
                    self.schedule_redial(i, now);
                }
            }
        }
        trim(&mut self.conns);
        trim(&mut self.hosts);
        trim(&mut self.live);
    }

    /// Closes a connection (the driver gets `Event::Close`).
    pub fn close(&mut self, conn: ConnId, reason: String, _now: Instant) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| !matches!(c.state, ConnState::Closing))
        {
            self.retire(conn);
            self.events.push_back(Event::Close { conn, reason });
        }
    }

    /// Takes `conn` out of every index and timer and marks it closing (once).
    pub(crate) fn retire(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(c.state, ConnState::Closing) {
            return;
        }
        if let ConnState::AwaitHello { deadline } = c.state {
            self.timers.remove(&(deadline, Timer::Hello(conn)));
        }
        if let Some(at) = c.next_exchange.take() {
            self.timers.remove(&(at, Timer::Exchange(conn)));
        }
        let peer = c.peer;
        if let Some(n) = self.live.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&peer);
            }
        }
        if c.bootstrap {
            c.bootstrap = false;
            self.bootstrap_ready -= 1;
        }
        if c.released {
            c.released = false;
            self.released -= 1;
        }
        if self.hosts.get(&peer).is_some_and(|(k, _)| *k == conn)
            && let Some((_, pos)) = self.hosts.remove(&peer)
        {
            self.host_list.swap_remove(pos);
            if let Some(moved) = self.host_list.get(pos)
                && let Some(entry) = self.hosts.get_mut(moved)
            {
                entry.1 = pos;
            }
            if let ConnState::Ready(a) = &c.state {
                for s in &a.services {
                    if let Some(m) = self.providers.get_mut(s) {
                        m.remove(&c.opened);
                        if m.is_empty() {
                            self.providers.remove(s);
                        }
                    }
                }
            }
        }
        c.state = ConnState::Closing;
    }

    /// Takes a ready host connection into the indexes: by peer, in the list to sample
    /// from, and under each service it exposes.
    pub(crate) fn enter_ready(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Configured: dialled for a configured entry (a name may stand for many hosts), or
        // a configured peer's id.
        c.bootstrap =
            c.configured.is_some() || self.configured.iter().any(|t| t.peer == Some(c.peer));
        self.bootstrap_ready += usize::from(c.bootstrap);
        let ConnState::Ready(a) = &c.state else {
            return;
        };
        for s in &a.services {
            self.providers
                .entry(s.clone())
                .or_default()
                .insert(c.opened, c.peer);
        }
        self.hosts.insert(c.peer, (conn, self.host_list.len()));
        self.host_list.push(c.peer);
    }

    /// Whether this host has enough connections to hosts other than its configured ones
    /// (`BrokerLimits::bootstrap_until`) that configured peers need not be dialled.
    pub(crate) fn bootstrapped(&self) -> bool {
        self.hosts.len().saturating_sub(self.bootstrap_ready) >= self.config.limits.bootstrap_until
    }

    pub(crate) fn on_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
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
        if let ConnState::AwaitHello { deadline } = c.state {
            self.timers.remove(&(deadline, Timer::Hello(conn)));
        }
        c.state = ConnState::Ready(Box::new(Agreed {
            role: hello.role,
            listen,
            services: if hello.role == Role::Host {
                hello.services
            } else {
                Vec::new()
            },
        }));
        c.dialler_nonce = if c.dialled { c.my_nonce } else { hello.nonce };
        c.host = hello.role == Role::Host;
        let (peer, role) = (c.peer, hello.role);
        if let Some(i) = c.configured {
            self.configured[i].peer = Some(peer);
            self.configured[i].backoff = self.config.limits.backoff_min;
        }
        self.forget_learned(&peer);
        if role == Role::Host {
            if !self.keep_one(conn, now) {
                return;
            }
            self.enter_ready(conn);
            if let Some(c) = self.conns.get(&conn)
                && let ConnState::Ready(a) = &c.state
                && let Some(addr) = advertised(a.listen, c.remote)
            {
                // Said by the host itself, over its own connection: a live entry.
                self.table.observe(peer, addr, true, now);
            }
            self.flush_queued(peer, conn, now);
            if self.verifying.contains_key(&peer) {
                self.provider_checked(peer, now);
            }
            if !self.publishing && me == Role::Host {
                // Joining the DHT (and the first publication) waits for the first
                // exchanges to fill the table.
                self.publishing = true;
                self.timers
                    .insert((now + Duration::from_secs(2), Timer::Publish));
            }
        }
        self.events.push_back(Event::Ready { conn, peer, role });
        if exchange {
            self.exchange(conn, now, true);
        }
        if role == Role::Host {
            self.release_bootstraps();
        }
        // Dialled for a probe that ended meanwhile: nothing waits for it.
        self.let_go_if_idle(conn);
    }

    /// One connection per pair of hosts: when `conn` becomes ready beside another ready
    /// connection to the same host, both hosts keep the one dialled by the lower peer id;
    /// if one side dialled both, the one whose dialler sent the higher hello nonce. Both
    /// sides know the same facts, so they always keep the same one. Returns whether `conn`
    /// is kept.
    pub(crate) fn keep_one(&mut self, conn: ConnId, now: Instant) -> bool {
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
            .hosts
            .get(&peer)
            .filter(|(id, _)| *id != conn)
            .and_then(|(id, _)| Some((*id, key(self.conns.get(id)?))));
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
}

impl Conn {
    pub(crate) fn role(&self) -> Option<Role> {
        match &self.state {
            ConnState::Ready(a) => Some(a.role),
            _ => None,
        }
    }
}

/// Where a peer can be dialled: its advertised listen address, with an unspecified IP
/// (`0.0.0.0`) replaced by the one it connected from.
pub(crate) fn advertised(listen: Option<SocketAddr>, remote: SocketAddr) -> Option<SocketAddr> {
    let mut a = listen?;
    if a.ip().is_unspecified() {
        a.set_ip(remote.ip());
    }
    Some(a)
}
