//! Iterative Kademlia lookups: find a host by id, find the providers of a service, and
//! publish this host's own services at the hosts closest to their keys. A lookup asks the
//! closest hosts it knows (α at once), merges what they answer, and stops when the goal is
//! found or the k closest have all answered. A host that is not connected is dialled for
//! the query, which waits for its hello (`queued`).

use super::*;
use dht::{ALPHA, FIRST_REPUBLISH, K, Key, REPUBLISH_EVERY};

/// Names one lookup for the life of a broker.
pub(crate) type LookupId = u64;

/// How long a lookup may take in all.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one query of a lookup may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Lookups running at once (more wait: `seek` refuses, the driver says so).
pub(crate) const MAX_LOOKUPS: usize = 32;

/// Candidates one lookup keeps (the closest; the rest are dropped).
const MAX_CANDIDATES: usize = 3 * K;

/// What a lookup is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Goal {
    /// A host by id: its address, so that it can be dialled.
    Peer(PeerId),
    /// Hosts that run a service, to dial one.
    Service(String),
    /// Hosts that run a service, only to know (`Broker::probe`).
    Probe(String),
    /// The hosts closest to a service's key, to store this host's record at.
    Publish(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Not,
    Waiting,
    Answered,
    Failed,
}

#[derive(Debug)]
struct Candidate {
    peer: PeerId,
    addr: SocketAddr,
    /// The lookup's round that found it (the first ones are round 1).
    round: u32,
    asked: Asked,
    /// Providers it named in its answer.
    named: usize,
    /// Who named it (`None`: this host's own table).
    via: Option<PeerId>,
}

/// One running lookup.
#[derive(Debug)]
pub(crate) struct Lookup {
    goal: Goal,
    target: Key,
    candidates: BTreeMap<[u8; 32], Candidate>,
    in_flight: usize,
    /// Providers heard of (a service lookup), not yet believed: one counts when this host
    /// connects to it and its hello lists the service (a host that lies about providers
    /// gains nothing), each with who named it.
    found: Vec<(PeerId, SocketAddr, PeerId)>,
    /// Providers dialled to check them, and those checked.
    trying: Vec<PeerId>,
    tried: HashSet<PeerId>,
    /// Hosts this lookup dialled itself (for a query or to check a provider).
    dialled: Vec<PeerId>,
    /// The deepest round asked.
    rounds: u32,
    started: Instant,
    deadline: Instant,
}

/// A lookup that finished, for the driver's figures and the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupDone {
    /// The service looked for (`None`: a host lookup or a publication).
    pub service: Option<String>,
    /// Whether it found what it looked for (for a publication: stored somewhere).
    pub found: bool,
    /// Rounds of queries it took.
    pub rounds: u32,
    /// How long it took.
    pub took: Duration,
    /// Providers its answers named (a service lookup): a lookup that failed having heard of
    /// some could not connect to any of them.
    pub heard: usize,
}

/// Where a service's record was stored the last time this host published it.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The closest hosts that answered (those that named k providers included).
    at: Vec<PeerId>,
    /// Whether they were mostly the same as the time before (or all named k providers):
    /// the publications between periods leave the service out.
    settled: bool,
}

/// A request that waits for a connection to a host being dialled for it.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) ask: Ask,
    pub(crate) purpose: Purpose,
}

impl Broker {
    /// Looks for hosts that run `service` in the DHT (for a request or session that no
    /// connected host can take). Providers found are dialled; the lookup ends when one is
    /// connected (the driver sees it in [`Broker::find`]) or none can be found. Returns
    /// whether a lookup runs for it now.
    pub fn seek(&mut self, service: &str, now: Instant) -> bool {
        let class = class_of(service).to_string();
        if self
            .lookups
            .values()
            .any(|l| l.goal == Goal::Service(class.clone()))
        {
            return true;
        }
        self.start_lookup(Goal::Service(class), now).is_some()
    }

    /// Whether a lookup for `service` is under way.
    pub fn seeking(&self, service: &str) -> bool {
        let class = class_of(service);
        self.lookups
            .values()
            .any(|l| matches!(&l.goal, Goal::Service(s) if s == class))
    }

    /// Looks for hosts that run `service` as [`Broker::seek`] does (a provider counts once
    /// connected), with nothing waiting on it: the outcome comes out of
    /// [`Broker::poll_lookup_done`] (the simulator measures reach this way), and the
    /// connections it made, the provider's too, are let go when it ends.
    pub fn probe(&mut self, service: &str, now: Instant) -> bool {
        let class = class_of(service).to_string();
        self.start_lookup(Goal::Probe(class), now).is_some()
    }

    /// The next finished lookup, for figures.
    pub fn poll_lookup_done(&mut self) -> Option<LookupDone> {
        self.lookups_done.pop_front()
    }

    /// Hosts in the DHT routing table.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Provider records this host keeps for others.
    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    /// Starts a lookup toward the goal's key from the closest hosts the table knows.
    pub(crate) fn start_lookup(&mut self, goal: Goal, now: Instant) -> Option<LookupId> {
        if self.lookups.len() >= MAX_LOOKUPS || self.config.role != Role::Host {
            return None;
        }
        let target = match &goal {
            Goal::Peer(p) => Key::of_peer(p),
            Goal::Service(s) | Goal::Probe(s) | Goal::Publish(s) => Key::of_service(s),
        };
        let mut candidates = BTreeMap::new();
        for e in self.table.closest(&target, K, None) {
            candidates.insert(
                e.key.distance(&target),
                Candidate {
                    peer: e.peer,
                    addr: e.addr,
                    round: 1,
                    asked: Asked::Not,
                    named: 0,
                    via: None,
                },
            );
        }
        let id = self.next_lookup;
        self.next_lookup += 1;
        let deadline = now + LOOKUP_TIMEOUT;
        self.timers.insert((deadline, Timer::Lookup(id)));
        self.lookups.insert(
            id,
            Lookup {
                goal,
                target,
                candidates,
                in_flight: 0,
                found: Vec::new(),
                trying: Vec::new(),
                tried: HashSet::new(),
                dialled: Vec::new(),
                rounds: 0,
                started: now,
                deadline,
            },
        );
        self.advance(id, now);
        Some(id)
    }

    /// Asks the next candidates, or finishes the lookup.
    pub(crate) fn advance(&mut self, id: LookupId, now: Instant) {
        let Some(l) = self.lookups.get(&id) else {
            return;
        };
        let found = match &l.goal {
            // Found once a connected host runs it (its own hello says so).
            Goal::Service(s) | Goal::Probe(s) => self.find_first(s, |_| true).is_some(),
            Goal::Peer(p) => l.candidates.values().any(|c| c.peer == *p),
            Goal::Publish(_) => false,
        };
        // Done once the k closest that did not fail have all answered — or, for a service
        // nobody named a provider of yet, the 2k closest. Records are stored at the k
        // closest when their provider publishes, and in a growing network the k closest
        // are newer hosts by the time of a lookup; the hosts that hold the records are
        // then a little farther out, and only the provider may move its records.
        let reach = match &l.goal {
            Goal::Service(_) | Goal::Probe(_) if l.found.is_empty() => 2 * K,
            _ => K,
        };
        let settled = l
            .candidates
            .values()
            .filter(|c| c.asked != Asked::Failed)
            .take(reach)
            .all(|c| c.asked == Asked::Answered);
        // Providers from whoever has the fewest being checked go first: a host that names
        // many that do not answer delays only its own (each dial takes its time-out).
        let checking_via = |v: &PeerId| {
            l.trying
                .iter()
                .filter(|p| l.found.iter().any(|f| f.0 == **p && f.2 == *v))
                .count()
        };
        let mut untried: Vec<(PeerId, SocketAddr, PeerId)> = l
            .found
            .iter()
            .filter(|(p, _, _)| !l.tried.contains(p))
            .copied()
            .collect();
        untried.sort_by_key(|f| checking_via(&f.2));
        let checking = !l.trying.is_empty() || !untried.is_empty();
        if found || now >= l.deadline || (settled && l.in_flight == 0 && !checking) {
            return self.finish_lookup(id, found, now);
        }
        // Providers heard of are dialled, two at a time, to check them.
        let room = 2usize.saturating_sub(l.trying.len());
        for (peer, addr, _) in untried.into_iter().take(room) {
            let skip = self.has_conn(&peer) || !self.config.allow.permits(&peer);
            let Some(l) = self.lookups.get_mut(&id) else {
                return;
            };
            l.tried.insert(peer);
            if skip {
                // Connected (or being connected) and not listing it, or not allowed.
                continue;
            }
            l.trying.push(peer);
            if !matches!(l.goal, Goal::Probe(_)) {
                // Wanted now by a lookup that keeps what it finds.
                self.let_go.remove(&peer);
            }
            let dial = !self.dialling(&peer);
            if dial && let Some(l) = self.lookups.get_mut(&id) {
                l.dialled.push(peer);
            }
            self.verifying.entry(peer).or_default().push(id);
            if dial {
                self.dial_for_query(peer, addr);
            }
        }
        let Some(l) = self.lookups.get(&id) else {
            return;
        };
        let checking = !l.trying.is_empty();
        let mut next: Vec<(PeerId, SocketAddr, u32, Option<PeerId>)> = Vec::new();
        let mut in_flight = l.in_flight;
        // At most α − 1 queries in flight to hosts one answerer named while hosts others
        // named (or this host's table holds) are left to ask among the k closest: one
        // that answers with hosts that never answer a dial (each costs a handshake
        // time-out) holds up part of a lookup, not all of it. Then, if slots are left,
        // the closest whoever named them.
        let live = || l.candidates.values().filter(|c| c.asked != Asked::Failed);
        let load = |v: &PeerId, next: &[(PeerId, SocketAddr, u32, Option<PeerId>)]| {
            let waiting = live()
                .filter(|c| c.asked == Asked::Waiting && c.via.as_ref() == Some(v))
                .count();
            waiting + next.iter().filter(|n| n.3.as_ref() == Some(v)).count()
        };
        for capped in [true, false] {
            for c in live().take(reach) {
                if in_flight >= ALPHA {
                    break;
                }
                if c.asked != Asked::Not || next.iter().any(|n| n.0 == c.peer) {
                    continue;
                }
                if capped && c.via.is_some_and(|v| load(&v, &next) >= ALPHA - 1) {
                    continue;
                }
                next.push((c.peer, c.addr, c.round, c.via));
                in_flight += 1;
            }
        }
        if next.is_empty() && l.in_flight == 0 && !checking {
            return self.finish_lookup(id, found, now);
        }
        let ask = match &l.goal {
            Goal::Service(s) | Goal::Probe(s) | Goal::Publish(s) => Ask::FindService(s.clone()),
            Goal::Peer(_) => Ask::FindNode(l.target.to_text()),
        };
        // All marked asked before any is sent: a query that fails at once advances the
        // lookup, which must not pick these again.
        if let Some(l) = self.lookups.get_mut(&id) {
            for (peer, _, round, _) in &next {
                l.in_flight += 1;
                l.rounds = l.rounds.max(*round);
                if let Some(c) = l.candidates.values_mut().find(|c| c.peer == *peer) {
                    c.asked = Asked::Waiting;
                }
            }
        }
        for (peer, addr, _, _) in next {
            self.ask_host(peer, addr, ask.clone(), Purpose::Lookup(id, peer), now);
        }
    }

    /// Sends `ask` to `peer`: at once if connected, else once a dial to `addr` is ready.
    pub(crate) fn ask_host(
        &mut self,
        peer: PeerId,
        addr: SocketAddr,
        ask: Ask,
        purpose: Purpose,
        now: Instant,
    ) {
        if let Some(conn) = self.connection_to(&peer) {
            if self
                .send_request(conn, ask, QUERY_TIMEOUT, now, purpose.clone())
                .is_err()
            {
                self.query_failed(purpose, now);
            }
            return;
        }
        if peer == self.config.me || !self.config.allow.permits(&peer) {
            return self.query_failed(purpose, now);
        }
        let lookup = match &purpose {
            Purpose::Lookup(id, _) => Some(*id),
            _ => None,
        };
        self.queued
            .entry(peer)
            .or_default()
            .push(Queued { ask, purpose });
        if !self.has_conn(&peer) && !self.dialling(&peer) {
            if let Some(l) = lookup.and_then(|id| self.lookups.get_mut(&id)) {
                l.dialled.push(peer);
            }
            self.dial_for_query(peer, addr);
        }
    }

    /// Dials `peer` at `addr` for something waiting on it (a query, a request by id, a
    /// service found): the connection counts as made for a query (see `Conn::transient`).
    pub(crate) fn dial_for_query(&mut self, peer: PeerId, addr: SocketAddr) {
        self.lookup_dials.insert(peer);
        self.events
            .push_back(Event::Dial(DialTo::Learned { peer, addr }));
    }

    /// `peer` is ready: what waited for it goes out.
    pub(crate) fn flush_queued(&mut self, peer: PeerId, conn: ConnId, now: Instant) {
        for q in self.queued.remove(&peer).unwrap_or_default() {
            if self
                .send_request(conn, q.ask, QUERY_TIMEOUT, now, q.purpose.clone())
                .is_err()
            {
                self.query_failed(q.purpose, now);
            }
        }
    }

    /// `peer` could not be reached: what waited for it fails.
    pub(crate) fn fail_queued(&mut self, peer: PeerId, now: Instant) {
        for q in self.queued.remove(&peer).unwrap_or_default() {
            self.lookup_query_failed(q.purpose, now);
        }
    }

    /// `peer` is neither connected nor being dialled: what waited for it (queries, checks
    /// of it as a provider) goes on without it. Every path that ends a dial or a
    /// connection calls this, so nothing waits for a host nobody is reaching.
    pub(crate) fn settle_peer(&mut self, peer: PeerId, now: Instant) {
        if self.has_conn(&peer) || self.dialling(&peer) {
            return;
        }
        self.let_go.remove(&peer);
        if self.queued.contains_key(&peer) {
            self.fail_queued(peer, now);
        }
        if self.verifying.contains_key(&peer) {
            self.provider_checked(peer, now);
        }
    }

    /// A lookup's query got no answer from a connected host: counted against it.
    pub(crate) fn query_failed(&mut self, purpose: Purpose, now: Instant) {
        if let Purpose::Lookup(_, peer) = &purpose {
            self.table.failed(peer);
        }
        self.lookup_query_failed(purpose, now);
    }

    /// A lookup's query came to nothing (the failure is counted where it happened).
    fn lookup_query_failed(&mut self, purpose: Purpose, now: Instant) {
        if let Purpose::Lookup(id, peer) = purpose {
            if let Some(l) = self.lookups.get_mut(&id) {
                l.in_flight = l.in_flight.saturating_sub(1);
                if let Some(c) = l.candidates.values_mut().find(|c| c.peer == peer) {
                    c.asked = Asked::Failed;
                }
            }
            self.advance(id, now);
        }
    }

    /// A lookup's query was answered: its hosts (and providers) are merged in.
    pub(crate) fn query_answered(
        &mut self,
        id: LookupId,
        from: PeerId,
        answer: Control,
        now: Instant,
    ) {
        self.table.answered(&from);
        let (hosts, providers) = match answer {
            Control::Nodes { peers, .. } => (peers, Vec::new()),
            Control::Found { peers, closer, .. } => (closer, peers),
            _ => (Vec::new(), Vec::new()),
        };
        let me = self.config.me;
        let mut heard = Vec::new();
        for e in hosts.iter().chain(&providers).take(2 * K) {
            if let (Ok(peer), Some(Ok(addr))) = (
                e.peer.parse::<PeerId>(),
                e.addr.as_deref().map(str::parse::<SocketAddr>),
            ) && peer != me
                && addr.port() != 0
                && !addr.ip().is_unspecified()
                && self.config.allow.permits(&peer)
            {
                heard.push((peer, addr));
            }
        }
        for &(peer, addr) in &heard {
            self.table.observe(peer, addr, false, now);
        }
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        l.in_flight = l.in_flight.saturating_sub(1);
        let mut round = 1;
        if let Some(c) = l.candidates.values_mut().find(|c| c.peer == from) {
            c.asked = Asked::Answered;
            c.named = providers.len();
            round = c.round + 1;
        }
        // A host this lookup dialled only to ask it goes as soon as it answered when the
        // lookup will not need it again: a probe's (providers are checked on connections
        // of their own), and a publication's that names k providers already (no record
        // is stored there). The hosts closest to the key of a service every host runs
        // are asked by every newcomer; kept, they would each hold a connection from
        // every newcomer of their last few seconds (see `docs/scaling.md`). Not while
        // something else waits for it: a provider check, a reach, another lookup that
        // has yet to ask it.
        let done_with = match l.goal {
            Goal::Probe(_) => true,
            Goal::Publish(_) => providers.len() >= K,
            Goal::Service(_) | Goal::Peer(_) => false,
        } && l.dialled.contains(&from);
        if done_with && !self.wanted_beside(id, &from) {
            self.let_go.insert(from);
            if let Some(conn) = self.connection_to(&from) {
                self.let_go_if_idle(conn);
            }
        }
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        let providers: HashSet<PeerId> = providers
            .iter()
            .filter_map(|e| e.peer.parse().ok())
            .collect();
        for (peer, addr) in heard {
            let wants = matches!(l.goal, Goal::Service(_) | Goal::Probe(_));
            if wants
                && providers.contains(&peer)
                && l.found.len() < 64
                && !l.found.iter().any(|f| f.0 == peer)
            {
                l.found.push((peer, addr, from));
            }
            let d = Key::of_peer(&peer).distance(&l.target);
            l.candidates.entry(d).or_insert(Candidate {
                peer,
                addr,
                round,
                asked: Asked::Not,
                named: 0,
                via: Some(from),
            });
        }
        // (The farthest go, failed or not: keeping farther live hosts in place of closer
        // ones that failed lets lookups wander down long chains — past the rounds bound
        // in the simulation at 3 000 hosts.)
        while l.candidates.len() > MAX_CANDIDATES {
            l.candidates.pop_last();
        }
        self.advance(id, now);
    }

    fn finish_lookup(&mut self, id: LookupId, found: bool, now: Instant) {
        let Some(l) = self.lookups.remove(&id) else {
            return;
        };
        self.timers.remove(&(l.deadline, Timer::Lookup(id)));
        // What it still had waiting goes with it.
        self.queued.retain(|_, list| {
            list.retain(|q| !matches!(q.purpose, Purpose::Lookup(i, _) if i == id));
            !list.is_empty()
        });
        for p in &l.trying {
            if let Some(ids) = self.verifying.get_mut(p) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.verifying.remove(p);
                }
            }
        }
        let service = match &l.goal {
            Goal::Service(s) | Goal::Probe(s) => Some(s.clone()),
            _ => None,
        };
        // The goal's own end first: a publication's stores go out on the connections its
        // queries made, before those are let go (they go once the stores are answered).
        let mut stored = false;
        match &l.goal {
            Goal::Peer(p) => {
                let p = *p;
                let wanted = self.reaching.remove(&p);
                if let Some(c) = l.candidates.values().find(|c| c.peer == p)
                    && wanted
                    && !self.has_conn(&p)
                    && !self.dialling(&p)
                {
                    self.dial_for_query(p, c.addr);
                }
                self.settle_peer(p, now);
            }
            Goal::Service(_) | Goal::Probe(_) => {}
            Goal::Publish(s) => {
                // Stored at the k closest that answered — but not at one that named k
                // providers already: a common service needs no more records there, and
                // without this rule every host running it would store at the same k hosts,
                // which would carry the whole network. (A host that lies about providers
                // only spares itself a record.)
                let answered: Vec<&Candidate> = l
                    .candidates
                    .values()
                    .filter(|c| c.asked == Asked::Answered)
                    .take(K)
                    .collect();
                let closest: Vec<(PeerId, SocketAddr)> = answered
                    .iter()
                    .filter(|c| c.named < K)
                    .map(|c| (c.peer, c.addr))
                    .collect();
                stored = !closest.is_empty();
                // Settled once the closest hosts are mostly those of the last time (or
                // all name k providers already): the early publications stop for it.
                let at: Vec<PeerId> = answered.iter().map(|c| c.peer).collect();
                let p = self.placements.entry(s.clone()).or_default();
                let same = at.iter().filter(|x| p.at.contains(x)).count();
                let common = !at.is_empty() && closest.is_empty();
                // (Against the longer list: a lookup that heard from a few only is no
                // sign that nothing moved.)
                let of = at.len().max(p.at.len());
                p.settled = common || (!at.is_empty() && same * 4 >= of * 3);
                p.at = at;
                for (peer, addr) in closest {
                    let ask = Ask::AddProvider(s.clone());
                    self.ask_host(peer, addr, ask, Purpose::Store, now);
                }
            }
        }
        // The connections it made only for its queries go now; a provider found stays
        // for a request that waits for it, not for a probe (nothing waits: a provider
        // that every host probes would otherwise hold a connection from each).
        let keep = match &l.goal {
            Goal::Service(s) => Some(s.as_str()),
            _ => None,
        };
        let mut made: Vec<ConnId> = l
            .candidates
            .values()
            .filter(|c| c.asked != Asked::Not)
            .filter_map(|c| self.connection_to(&c.peer))
            .collect();
        let probe = matches!(l.goal, Goal::Probe(_));
        if probe {
            made.extend(l.tried.iter().filter_map(|p| self.connection_to(p)));
        }
        let keep = keep.map(str::to_string);
        if probe || matches!(l.goal, Goal::Publish(_)) {
            // Nothing waits on a probe or a publication: what it dialled goes however few
            // connections the host holds. (A newcomer below its dial limit would keep
            // them, and the few hosts that run a service every newcomer checks — or that
            // are closest to the key of one every host runs, which each newcomer
            // publishes — would fill up.)
            // A dial still under way (another provider, slower than the one that
            // answered) goes once it is ready, and a connection with a query of ours
            // still on it once that is answered.
            let mut dialled: Vec<ConnId> = Vec::new();
            for p in &l.dialled {
                if self.has_conn(p) || self.dialling(p) {
                    self.let_go.insert(*p);
                    dialled.extend(self.connection_to(p));
                }
            }
            for conn in dialled {
                self.let_go_if_idle(conn);
            }
        }
        for conn in made {
            self.release_if_done(conn, keep.as_deref());
        }
        self.lookups_done.push_back(LookupDone {
            service,
            found: found || stored,
            rounds: l.rounds,
            took: now.saturating_duration_since(l.started),
            heard: l.found.len(),
        });
        // Only the latest few are kept for a driver that never reads them.
        while self.lookups_done.len() > 1024 {
            self.lookups_done.pop_front();
        }
    }

    /// Whether something other than lookup `id` waits for `peer`: a provider check, a
    /// reach, another lookup that has yet to ask it or hear from it (at most
    /// `MAX_LOOKUPS` × `MAX_CANDIDATES` looked at).
    fn wanted_beside(&self, id: LookupId, peer: &PeerId) -> bool {
        self.verifying.contains_key(peer)
            || self.reaching.contains(peer)
            || self.lookups.iter().any(|(other, o)| {
                *other != id
                    && o.candidates
                        .values()
                        .any(|c| c.peer == *peer && matches!(c.asked, Asked::Not | Asked::Waiting))
            })
    }

    /// Releases `conn` if it was made only for queries, none is under way on it, and the
    /// host has more connections than it dials for — unless its host runs `keep` (a
    /// service just looked for). Done as soon as a lookup ends: the hosts closest to a
    /// sought key would otherwise hold a connection from every host that looked it up in
    /// the last exchange period.
    pub(crate) fn release_if_done(&mut self, conn: ConnId, keep: Option<&str>) {
        if self.held() > self.dial_limit() {
            self.release_if_idle(conn, keep);
        }
    }

    /// Releases `conn` if it was made only for queries and none is under way on it —
    /// unless its host runs `keep`.
    fn release_if_idle(&mut self, conn: ConnId, keep: Option<&str>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ConnState::Ready(a) = &c.state else {
            return;
        };
        let runs = keep.is_some_and(|s| a.services.iter().any(|x| x == s));
        let idle = c.transient && c.pending == 0 && c.incoming == 0;
        if idle && !runs {
            self.release(conn);
        }
    }

    /// Lets `conn` go if a probe that ended dialled its host and no request either way is
    /// under way on it any more (else a later call does: when it becomes ready, and when
    /// a request on it ends).
    pub(crate) fn let_go_if_idle(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let busy = c.pending > 0 || c.incoming > 0 || !matches!(c.state, ConnState::Ready(_));
        if busy || !self.let_go.remove(&c.peer) {
            return;
        }
        self.release_if_idle(conn, None);
    }

    /// A provider being checked connected (or could not be): the lookups that wait on it
    /// go on.
    pub(crate) fn provider_checked(&mut self, peer: PeerId, now: Instant) {
        for id in self.verifying.remove(&peer).unwrap_or_default() {
            if let Some(l) = self.lookups.get_mut(&id) {
                l.trying.retain(|p| *p != peer);
            }
            self.advance(id, now);
        }
    }

    /// Publishes this host's services (each at the k hosts closest to its key) and, the
    /// first time and then every period, looks up its own key — which makes the hosts
    /// closest to it connect to it and put it in their tables, as a Kademlia node joins;
    /// then schedules the next time. Between periods, only services not settled go.
    pub(crate) fn publish(&mut self, now: Instant) {
        let every = if self.hosts.is_empty() {
            // Nobody to store at yet (or any more): soon again, and then as a newcomer.
            self.publish_every = FIRST_REPUBLISH;
            self.placements.clear();
            Duration::from_secs(5)
        } else {
            // Its own key only the first time and then every period: the early
            // publications below are for records, which must follow the closest hosts.
            let every = self.publish_every;
            // (The first wait is the shortest and the period the longest: neither comes
            // between.)
            let all = every <= FIRST_REPUBLISH || every >= REPUBLISH_EVERY;
            if all {
                let me = self.config.me;
                self.start_lookup(Goal::Peer(me), now);
            }
            // Every service the first time and then every period; in between, those whose
            // closest hosts still change. At most half the lookup slots, so that
            // requests' lookups still run; the services past that go first next time.
            let services = self.config.services.len();
            let due: Vec<String> = (0..services)
                .map(|i| &self.config.services[(self.publish_from + i) % services])
                .filter(|s| all || !self.placements.get(*s).is_some_and(|p| p.settled))
                .take(MAX_LOOKUPS / 2)
                .cloned()
                .collect();
            if all {
                self.publish_from = (self.publish_from + due.len()) % services.max(1);
            }
            for s in due {
                self.start_lookup(Goal::Publish(s), now);
            }
            if services == 0 {
                // Nothing to move: its own key once a period is all.
                self.publish_every = REPUBLISH_EVERY;
                REPUBLISH_EVERY
            } else {
                self.publish_every = (every * 2).min(REPUBLISH_EVERY);
                every
            }
        };
        self.timers.insert((now + every, Timer::Publish));
    }
}
