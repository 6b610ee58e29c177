//! The DHT's tables (Kademlia): keys and their XOR distance, the k-buckets of hosts by
//! distance from this host, and the provider records this host keeps for others. Pure data
//! structures with time passed in; the lookups that use them are in `lookups`.

use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmwire_wire::PeerId;

/// Hosts per bucket, hosts per answer, and the hosts a record is stored at (Kademlia's k).
pub const K: usize = 20;

/// Queries one lookup has in flight at once (Kademlia's α).
pub const ALPHA: usize = 3;

/// How long a provider record is kept without a refresh.
pub const RECORD_TTL: Duration = Duration::from_secs(3600);

/// How often a host stores its provider records again, once its neighbourhood is settled.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(1800);

/// How soon a host stores its provider records again after the first time; the wait
/// doubles up to [`REPUBLISH_EVERY`], and until then only the services whose k closest
/// hosts changed since the time before go again. Those hosts change as a network grows,
/// and records are taken only from their provider, so only the provider can move them
/// to the new closest: early, while they change most.
pub const FIRST_REPUBLISH: Duration = Duration::from_secs(15);

/// A point of the DHT's key space: a host's is the SHA-256 of its id (an id is a public
/// key that TLS checks, so placing a host near a chosen key takes making key pairs until
/// one lands there), a service's the SHA-256 of its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The key of a host.
    pub fn of_peer(peer: &PeerId) -> Key {
        Key::hash(b"wasmwire/peer/", &peer.0)
    }

    /// The key of a service (a manifest name; a keyed class's, not one of its keys').
    pub fn of_service(name: &str) -> Key {
        Key::hash(b"wasmwire/service/", name.as_bytes())
    }

    fn hash(domain: &[u8], bytes: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update(domain);
        h.update(bytes);
        Key(h.finalize().into())
    }

    /// XOR distance to `other`, comparable as bytes.
    pub fn distance(&self, other: &Key) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// The bucket `other` falls in from here: the number of leading bits they share
    /// (`None` for the same key).
    pub fn bucket_of(&self, other: &Key) -> Option<usize> {
        let d = self.distance(other);
        let zeros: u32 = d
            .iter()
            .position(|b| *b != 0)
            .map(|i| i as u32 * 8 + d[i].leading_zeros())?;
        Some(zeros as usize)
    }

    /// As text, the same way a peer id is written (`find-node`'s `target`).
    pub fn to_text(&self) -> String {
        PeerId(self.0).to_string()
    }

    /// From text written by [`Key::to_text`].
    pub fn from_text(s: &str) -> Option<Key> {
        s.parse::<PeerId>().ok().map(|p| Key(p.0))
    }
}

/// A host in the routing table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its id.
    pub peer: PeerId,
    /// Its key.
    pub key: Key,
    /// Where it listens.
    pub addr: SocketAddr,
    /// When it was first heard of.
    pub first_seen: Instant,
    /// Dials or queries that failed since it last answered.
    pub failures: u8,
    /// It said hello itself (not only heard of from others).
    pub verified: bool,
}

/// The k-buckets: at most [`K`] hosts per distance class from this host. A full bucket
/// keeps its hosts and turns newcomers away unless one of its hosts has been failing, or
/// the newcomer said hello itself and the bucket holds hosts only heard of: long-lived
/// hosts stay (they are the likeliest to stay longer), hosts met beat hearsay, and a
/// flood of ids heard of cannot push out hosts met (Sybil care as far as it is cheap).
#[derive(Debug)]
pub struct Table {
    me: Key,
    buckets: Vec<Vec<Entry>>,
    /// Hosts in all buckets. (No index by id: a host's bucket follows from its key, and
    /// an index would double what a host of a large network spends on its table.)
    len: usize,
}

impl Table {
    /// An empty table around `me`.
    pub fn new(me: &PeerId) -> Table {
        Table {
            me: Key::of_peer(me),
            // Grown to the deepest bucket used (about log₂ N of the 256): a host of a
            // network of 100 000 keeps a few dozen, not 256 empty ones.
            buckets: Vec::new(),
            len: 0,
        }
    }

    /// This host's key.
    pub fn me(&self) -> Key {
        self.me
    }

    /// Hosts in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `peer` is in the table.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    /// The entry of `peer`, if it is in the table.
    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let (b, i) = self.position(peer)?;
        Some(&self.buckets[b][i])
    }

    /// Where `peer` is: its bucket and its place in it.
    fn position(&self, peer: &PeerId) -> Option<(usize, usize)> {
        let b = self.me.bucket_of(&Key::of_peer(peer))?;
        let i = self.buckets.get(b)?.iter().position(|e| e.peer == *peer)?;
        Some((b, i))
    }

    /// Heard of `peer` at `addr`. `live`: it is connected and said so itself (its address
    /// then replaces a hearsay one, and its failures are forgiven); otherwise hearsay,
    /// which never changes a known host's address. Returns whether it is in the table.
    pub fn observe(&mut self, peer: PeerId, addr: SocketAddr, live: bool, now: Instant) -> bool {
        let key = Key::of_peer(&peer);
        let Some(b) = self.me.bucket_of(&key) else {
            return false;
        };
        if self.buckets.len() <= b {
            self.buckets.resize_with(b + 1, Vec::new);
        }
        let bucket = &mut self.buckets[b];
        if let Some(e) = bucket.iter_mut().find(|e| e.peer == peer) {
            if live {
                e.addr = addr;
                e.failures = 0;
                e.verified = true;
            }
            return true;
        }
        let entry = Entry {
            peer,
            key,
            addr,
            first_seen: now,
            failures: 0,
            verified: live,
        };
        let failing = (0..bucket.len())
            .filter(|i| bucket[*i].failures > 0)
            .max_by_key(|i| bucket[*i].failures);
        // A host met replaces the newest of those only heard of.
        let hearsay = || {
            (0..bucket.len())
                .filter(|i| !bucket[*i].verified)
                .max_by_key(|i| bucket[*i].first_seen)
        };
        if bucket.len() < K {
            // Grown by doubling up to K exactly (not past it: a host of a large network
            // keeps dozens of full buckets).
            if bucket.len() == bucket.capacity() {
                bucket.reserve_exact(bucket.len().max(4).min(K - bucket.len()));
            }
            bucket.push(entry);
            self.len += 1;
        } else if let Some(out) = failing.or_else(|| if live { hearsay() } else { None }) {
            // A newcomer never pushes out a working host met.
            bucket[out] = entry;
        } else {
            return false;
        }
        true
    }

    /// A dial or a query to `peer` failed: three in a row and it is dropped.
    pub fn failed(&mut self, peer: &PeerId) {
        let Some((b, i)) = self.position(peer) else {
            return;
        };
        let bucket = &mut self.buckets[b];
        bucket[i].failures += 1;
        if bucket[i].failures >= 3 {
            bucket.remove(i);
            self.len -= 1;
        }
    }

    /// `peer` answered: its failures are forgiven.
    pub fn answered(&mut self, peer: &PeerId) {
        if let Some((b, i)) = self.position(peer) {
            self.buckets[b][i].failures = 0;
        }
    }

    /// The `i`-th host of the table (in bucket order), for drawing samples: walks the
    /// buckets (about log₂ N of them), not the hosts.
    pub fn nth(&self, mut i: usize) -> Option<&Entry> {
        for b in &self.buckets {
            if i < b.len() {
                return b.get(i);
            }
            i -= b.len();
        }
        None
    }

    /// At most `n` hosts closest to `target`, closest first, `except` left out. Walks the
    /// table (k · log₂ N hosts: a few hundred), never the connections.
    pub fn closest(&self, target: &Key, n: usize, except: Option<&PeerId>) -> Vec<&Entry> {
        let mut all: Vec<(&Entry, [u8; 32])> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| Some(&e.peer) != except)
            .map(|e| (e, e.key.distance(target)))
            .collect();
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(n - 1, |a, b| a.1.cmp(&b.1));
        all.truncate(n);
        all.sort_unstable_by_key(|a| a.1);
        all.into_iter().map(|(e, _)| e).collect()
    }
}

/// One provider record: `provider` runs the service and listens at `addr`.
#[derive(Debug, Clone)]
pub struct Record {
    /// The host that runs it.
    pub provider: PeerId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// When the record goes unless refreshed.
    pub expires: Instant,
}

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRefused {
    /// This host keeps no more records.
    Full,
    /// That provider has as many records here as one may.
    TooMany,
}

/// The provider records this host keeps for others, bounded in all and per provider, each
/// gone an hour after its last refresh.
#[derive(Debug, Default)]
pub struct Records {
    by_key: HashMap<Key, Vec<Record>>,
    per_provider: HashMap<PeerId, usize>,
    expiries: BTreeSet<(Instant, Key, PeerId)>,
    total: usize,
}

/// Records a host keeps at most.
pub const MAX_RECORDS: usize = 8192;

/// Records one provider may have at one host (services it runs that hash near that host).
pub const MAX_RECORDS_PER_PROVIDER: usize = 64;

/// Providers kept per key (the first ones stay; refreshes keep them).
pub const MAX_PROVIDERS_PER_KEY: usize = 64;

impl Records {
    /// Stores (or refreshes) that `provider` at `addr` runs the service of `key`.
    pub fn add(
        &mut self,
        key: Key,
        provider: PeerId,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<(), RecordRefused> {
        self.expire(now);
        let expires = now + RECORD_TTL;
        let list = self.by_key.entry(key).or_default();
        if let Some(r) = list.iter_mut().find(|r| r.provider == provider) {
            self.expiries.remove(&(r.expires, key, provider));
            r.expires = expires;
            r.addr = addr;
            self.expiries.insert((expires, key, provider));
            return Ok(());
        }
        if self.total >= MAX_RECORDS || list.len() >= MAX_PROVIDERS_PER_KEY {
            if list.is_empty() {
                self.by_key.remove(&key);
            }
            return Err(RecordRefused::Full);
        }
        let n = self.per_provider.entry(provider).or_default();
        if *n >= MAX_RECORDS_PER_PROVIDER {
            if list.is_empty() {
                self.by_key.remove(&key);
            }
            return Err(RecordRefused::TooMany);
        }
        *n += 1;
        list.push(Record {
            provider,
            addr,
            expires,
        });
        self.expiries.insert((expires, key, provider));
        self.total += 1;
        Ok(())
    }

    /// The live providers of `key`, at most `n`: the oldest `n / 2` (records are kept in
    /// the order they were first stored) taken in turn with as many of the others, both
    /// from places `from` picks. The oldest are always named however many newcomers store
    /// records after them (a flood of fresh ids cannot crowd a long-lived provider out of
    /// the answers), the rest spreads the answers over every provider kept, and the
    /// rotation spreads the first dials over the oldest.
    pub fn providers(&self, key: &Key, n: usize, from: usize, now: Instant) -> Vec<&Record> {
        let Some(list) = self.by_key.get(key) else {
            return Vec::new();
        };
        let live = |r: &&Record| r.expires > now;
        let (old, rest) = list.split_at((n / 2).min(list.len()));
        fn rotated(part: &[Record], from: usize) -> impl Iterator<Item = &Record> {
            let (a, b) = part.split_at(from % part.len().max(1));
            b.iter().chain(a)
        }
        let mut old = rotated(old, from).filter(live);
        let mut rest = rotated(rest, from).filter(live);
        let mut named = Vec::with_capacity(n.min(list.len()));
        while named.len() < n {
            let (a, b) = (old.next(), rest.next());
            if a.is_none() && b.is_none() {
                break;
            }
            named.extend(a);
            if named.len() < n {
                named.extend(b);
            }
        }
        named
    }

    /// Records kept now.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Drops the records whose time is up.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, key, provider)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(list) = self.by_key.get_mut(&key) {
                list.retain(|r| r.provider != provider);
                if list.is_empty() {
                    self.by_key.remove(&key);
                }
            }
            if let Some(n) = self.per_provider.get_mut(&provider) {
                *n -= 1;
                if *n == 0 {
                    self.per_provider.remove(&provider);
                }
            }
            self.total -= 1;
        }
    }

    /// When the next record expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(t, _, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> PeerId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        PeerId(b)
    }

    fn addr(n: u32) -> SocketAddr {
        SocketAddr::from(([127, 0, (n >> 8) as u8, n as u8], 7400))
    }

    /// Ids whose keys fall in bucket `b` of `me`.
    fn in_bucket(me: &PeerId, b: usize, n: usize) -> Vec<PeerId> {
        let k = Key::of_peer(me);
        (1..200_000)
            .map(id)
            .filter(|p| k.bucket_of(&Key::of_peer(p)) == Some(b))
            .take(n)
            .collect()
    }

    #[test]
    fn keys_and_distances() {
        let a = Key::of_peer(&id(1));
        assert_eq!(a.bucket_of(&a), None);
        assert_eq!(a.distance(&a), [0; 32]);
        let b = Key::of_peer(&id(2));
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(Key::from_text(&a.to_text()), Some(a));
        assert_eq!(Key::from_text("nope"), None);
        assert_ne!(Key::of_service("chat"), Key::of_service("chats"));
        assert_ne!(Key::of_service("x").0, Key::of_peer(&id(0)).0);
    }

    #[test]
    fn a_full_bucket_keeps_its_working_hosts_and_replaces_failing_ones() {
        let me = id(0);
        let mut t = Table::new(&me);
        let now = Instant::now();
        let ids = in_bucket(&me, 1, K + 2);
        assert_eq!(ids.len(), K + 2);
        for (i, p) in ids[..K].iter().enumerate() {
            assert!(t.observe(*p, addr(i as u32), false, now));
        }
        // Full of working hosts heard of: one heard of is turned away, one met gets in.
        assert!(!t.observe(ids[K], addr(99), false, now));
        assert!(!t.contains(&ids[K]));
        assert!(t.observe(ids[K], addr(99), true, now));
        assert!(t.contains(&ids[K]));
        assert_eq!(t.len(), K);
        // Full of hosts met: even one met is turned away.
        for (i, p) in ids[..K].iter().enumerate() {
            t.observe(*p, addr(i as u32), true, now);
        }
        let newcomer = in_bucket(&me, 1, K + 3)[K + 2];
        assert!(!t.observe(newcomer, addr(97), true, now));
        // One fails: the next newcomer takes its place.
        t.failed(&ids[3]);
        assert!(t.observe(ids[K + 1], addr(98), false, now));
        assert!(!t.contains(&ids[3]));
        assert_eq!(t.len(), K);
        // Hearsay never moves a known host; the host itself does.
        assert!(t.observe(ids[0], addr(500), false, now));
        assert_eq!(t.get(&ids[0]).unwrap().addr, addr(0));
        assert!(t.observe(ids[0], addr(501), true, now));
        assert_eq!(t.get(&ids[0]).unwrap().addr, addr(501));
        // Three failures in a row and a host is gone; an answer forgives.
        t.failed(&ids[1]);
        t.failed(&ids[1]);
        t.answered(&ids[1]);
        t.failed(&ids[1]);
        assert!(t.contains(&ids[1]));
        t.failed(&ids[1]);
        t.failed(&ids[1]);
        assert!(!t.contains(&ids[1]));
        // Itself is never in its table.
        assert!(!t.observe(me, addr(1), true, now));
    }

    #[test]
    fn closest_sorts_by_distance_and_leaves_out_who_asks() {
        let me = id(0);
        let mut t = Table::new(&me);
        let now = Instant::now();
        for n in 1..300 {
            t.observe(id(n), addr(n), false, now);
        }
        let target = Key::of_service("chat");
        let got = t.closest(&target, K, Some(&id(5)));
        assert_eq!(got.len(), K);
        assert!(got.iter().all(|e| e.peer != id(5)));
        for w in got.windows(2) {
            assert!(w[0].key.distance(&target) < w[1].key.distance(&target));
        }
        // Nothing closer was left out.
        let worst = got.last().unwrap().key.distance(&target);
        let closer = (1..300)
            .map(id)
            .filter(|p| t.contains(p) && *p != id(5))
            .filter(|p| Key::of_peer(p).distance(&target) < worst)
            .count();
        assert_eq!(closer, K - 1);
    }

    #[test]
    fn records_are_bounded_refreshed_and_expire() {
        let mut r = Records::default();
        let now = Instant::now();
        let key = Key::of_service("chat");
        r.add(key, id(1), addr(1), now).unwrap();
        r.add(key, id(1), addr(2), now + Duration::from_secs(10))
            .unwrap();
        assert_eq!(r.len(), 1, "a refresh is not a second record");
        assert_eq!(r.providers(&key, 10, 7, now)[0].addr, addr(2));
        // One provider, many services: capped.
        for n in 0..MAX_RECORDS_PER_PROVIDER as u32 + 5 {
            let k = Key::of_service(&format!("s{n}"));
            let res = r.add(k, id(2), addr(2), now);
            assert_eq!(res.is_ok(), n < MAX_RECORDS_PER_PROVIDER as u32, "{n}");
        }
        // Many providers, one service: capped.
        let hot = Key::of_service("hot");
        for n in 0..MAX_PROVIDERS_PER_KEY as u32 + 5 {
            let res = r.add(hot, id(1000 + n), addr(3), now);
            assert_eq!(res.is_ok(), n < MAX_PROVIDERS_PER_KEY as u32, "{n}");
        }
        let total = 1 + MAX_RECORDS_PER_PROVIDER + MAX_PROVIDERS_PER_KEY;
        assert_eq!(r.len(), total);
        // An hour later, all but the refreshed one are gone.
        r.expire(now + RECORD_TTL + Duration::from_secs(1));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.providers(&key, 10, 0, now + RECORD_TTL + Duration::from_secs(1))
                .len(),
            1
        );
        r.expire(now + RECORD_TTL + Duration::from_secs(11));
        assert!(r.is_empty());
        assert!(r.providers(&hot, 10, 3, now).is_empty());
    }

    #[test]
    fn answers_name_the_oldest_providers_however_many_came_after() {
        let mut r = Records::default();
        let now = Instant::now();
        let key = Key::of_service("chat");
        // Two long-lived providers, then 60 fresh ids (a Sybil flood) store records.
        for n in 0..62u32 {
            r.add(
                key,
                id(n),
                addr(n),
                now + Duration::from_millis(u64::from(n)),
            )
            .unwrap();
        }
        let mut rest = std::collections::HashSet::new();
        for from in 0..200 {
            let named: Vec<PeerId> = r
                .providers(&key, K, from, now)
                .iter()
                .map(|x| x.provider)
                .collect();
            assert_eq!(named.len(), K);
            assert!(named.contains(&id(0)) && named.contains(&id(1)), "{from}");
            rest.extend(named);
        }
        // The random half spreads the answers over every provider kept.
        assert_eq!(rest.len(), 62);
    }
}
