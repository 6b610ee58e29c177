//! Requests and their deadlines: ids, the request window, and the matching of answers
//! (which may come in any order).

use super::*;

#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) conn: ConnId,
    pub(crate) deadline: Instant,
    pub(crate) purpose: Purpose,
}

/// Who a request's answer goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The driver: `Event::Answered`.
    Caller,
    /// Peer exchange: the peers are learned.
    Exchange,
    /// A lookup's query to a host.
    Lookup(LookupId, PeerId),
    /// Storing a provider record (the answer is not needed).
    Store,
}

impl Broker {
    /// Sends a request on `conn`; its answer comes back as `Event::Answered` with the
    /// returned token, or a failure after `timeout`.
    pub fn request(
        &mut self,
        conn: ConnId,
        ask: Ask,
        timeout: Duration,
        now: Instant,
    ) -> Result<u64, Failure> {
        self.send_request(conn, ask, timeout, now, Purpose::Caller)
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
                oversize: f.oversize,
            },
        };
        self.transmits.push_back((conn, message));
        if !self.let_go.is_empty() {
            self.let_go_if_idle(conn);
        }
    }

    /// Fails one of our requests the driver could not send (its frame was too large); its
    /// `Event::Answered` carries `failure`.
    pub fn fail(&mut self, token: u64, failure: Failure, now: Instant) {
        self.finish(token, Err(failure), now);
    }

    pub(crate) fn send_request(
        &mut self,
        conn: ConnId,
        ask: Ask,
        timeout: Duration,
        now: Instant,
        purpose: Purpose,
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
            Ask::FindNode(target) => Control::FindNode { id, target },
            Ask::AddProvider(service) => Control::AddProvider { id, service },
        };
        let deadline = now + timeout;
        self.pending.insert(
            id,
            Pending {
                conn,
                deadline,
                purpose,
            },
        );
        self.deadlines.insert((deadline, id));
        self.transmits.push_back((conn, message));
        Ok(id)
    }

    pub(crate) fn finish(&mut self, token: u64, result: Result<Control, Failure>, now: Instant) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, token));
        trim(&mut self.pending);
        let mut bootstrap = false;
        if let Some(c) = self.conns.get_mut(&p.conn) {
            c.pending = c.pending.saturating_sub(1);
            bootstrap = c.bootstrap;
        }
        if p.purpose == Purpose::Store {
            self.release_if_done(p.conn, None);
        }
        let conn = p.conn;
        match (p.purpose, result) {
            (Purpose::Caller, result) => self.events.push_back(Event::Answered { token, result }),
            (Purpose::Exchange, Ok(Control::Peers { peers, .. })) => self.learn(p.conn, peers, now),
            (Purpose::Exchange | Purpose::Store, _) => {}
            (Purpose::Lookup(id, peer), Ok(answer)) => self.query_answered(id, peer, answer, now),
            (purpose @ Purpose::Lookup(..), Err(_)) => self.query_failed(purpose, now),
        }
        // After the answer is taken in: what it starts may use the connection.
        if !self.let_go.is_empty() {
            self.let_go_if_idle(conn);
        }
        if bootstrap {
            self.release_bootstraps();
        }
    }

    pub(crate) fn on_answer(&mut self, conn: ConnId, message: Control, now: Instant) {
        let id = message.id();
        // Answers to requests we no longer wait for (timed out) are dropped; so are answers
        // on the wrong connection, which a peer cannot use to answer for another.
        if self.pending.get(&id).is_some_and(|p| p.conn == conn) {
            let result = match message {
                Control::Error {
                    code,
                    reason,
                    oversize,
                    ..
                } => Err(Failure {
                    code,
                    reason,
                    oversize,
                }),
                m => Ok(m),
            };
            self.finish(id, result, now);
        }
    }
}
