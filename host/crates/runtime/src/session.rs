//! Sessions as one end sees them: a table from this end's id to a [`Route`] to the other
//! end (another local instance's mailbox, a client's channel, or a QUIC stream to another
//! host: nothing above needs to know which), and the host's book of every open session end.

use super::call::{CallError, SessionId};
pub use super::instance::{CLIENT_QUEUE, ClientEvent, RemoteSink, Route};
use super::instance::{Envelope, Instance, check};
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use wasmwire_wire::PeerId;

/// One open session end on this host, as introspection lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The instance holding this end.
    pub instance: Arc<str>,
    /// The other end: an instance or client name.
    pub other: Arc<str>,
    /// The other end's own id for the session, when it has one.
    pub other_id: Option<SessionId>,
    /// The other end's host, when remote.
    pub peer: Option<PeerId>,
    /// The channel of the accepting service.
    pub channel: u16,
}

/// Every open session end on this host, by id: what `list-sessions` answers. Each session
/// table enters its opens and closes here — once per session, never per message.
#[derive(Default)]
pub struct SessionBook(Mutex<HashMap<SessionId, SessionRecord>>);

impl SessionBook {
    /// Records a session end opening on the instance `on`.
    pub(crate) fn opened(&self, id: SessionId, record: SessionRecord, on: &Instance) {
        on.sessions_open.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut book) = self.0.lock() {
            book.insert(id, record);
        }
    }

    /// Records a session end closing on the instance `on`.
    pub(crate) fn closed(&self, id: SessionId, on: &Instance) {
        on.sessions_open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut book) = self.0.lock() {
            book.remove(&id);
        }
    }

    /// The open session end with this id.
    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    /// Every open session end (at most `max`), sorted by id, and how many there are in all.
    pub fn list(&self, max: usize) -> (Vec<(SessionId, SessionRecord)>, usize) {
        let Ok(book) = self.0.lock() else {
            return (Vec::new(), 0);
        };
        let mut v: Vec<_> = book.iter().map(|(id, r)| (*id, r.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        let total = v.len();
        v.truncate(max);
        (v, total)
    }
}

/// One open session as this end sees it.
pub(crate) struct SessionEnd {
    /// Where the other end is.
    pub route: Route,
    /// The other end's instance or client name.
    pub service: Arc<str>,
    /// Peer host id, for remote sessions.
    pub peer: Option<PeerId>,
    /// The channel of the accepting service.
    pub channel: u16,
}

/// Hashes session ids (already unique integers) with one multiply instead of SipHash:
/// this lookup runs once per message sent.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// This instance's open sessions by id. Every open and close is also entered in the host's
/// session book (for `list-sessions`) — once per session, never per message.
#[derive(Default)]
pub(crate) struct SessionTable {
    map: HashMap<SessionId, SessionEnd, BuildHasherDefault<IdHasher>>,
    book: Option<(Arc<Instance>, Arc<SessionBook>)>,
}

impl SessionTable {
    /// A table that books its sessions under `me` in `book`.
    pub fn booked(me: Arc<Instance>, book: Arc<SessionBook>) -> SessionTable {
        SessionTable {
            map: HashMap::default(),
            book: Some((me, book)),
        }
    }

    /// Opens a session end.
    pub fn insert(&mut self, id: SessionId, end: SessionEnd) {
        if let Some((me, book)) = &self.book {
            let other_id = match &end.route {
                Route::Instance { end, .. } => Some(*end),
                Route::Remote(sink) => Some(sink.other_end()),
                Route::Client { .. } => None,
            };
            let record = SessionRecord {
                instance: me.name.clone(),
                other: end.service.clone(),
                other_id,
                peer: end.peer,
                channel: end.channel,
            };
            book.opened(id, record, me);
        }
        if let Some(old) = self.map.insert(id, end)
            && let Some((me, book)) = &self.book
        {
            // Ids are never reused, so this does not happen; keep the book right if it does.
            drop(old);
            book.closed(id, me);
        }
    }

    /// Closes a session end, returning it.
    pub fn remove(&mut self, id: &SessionId) -> Option<SessionEnd> {
        let end = self.map.remove(id)?;
        if let Some((me, book)) = &self.book {
            book.closed(*id, me);
        }
        Some(end)
    }

    /// Closes every session end, returning them.
    pub fn drain(&mut self) -> Vec<(SessionId, SessionEnd)> {
        let ends: Vec<_> = self.map.drain().collect();
        if let Some((me, book)) = &self.book {
            for (id, _) in &ends {
                book.closed(*id, me);
            }
        }
        ends
    }

    /// The end with this id.
    #[inline]
    pub fn get(&self, id: &SessionId) -> Option<&SessionEnd> {
        self.map.get(id)
    }

    /// Whether this end is open.
    #[inline]
    pub fn contains_key(&self, id: &SessionId) -> bool {
        self.map.contains_key(id)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every open end.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &SessionEnd)> {
        self.map.iter()
    }
}

/// An instance's end of a session whose messages come from outside the host (a peer's
/// stream). The reader asks [`Inbound::admit`] for each message (the rule every sender
/// asks), takes a mailbox place for it — waiting, when the mailbox is full, as suits its
/// transport — and queues it; queued messages reach the instance as one batch per
/// [`Inbound::flush`]. Dropping it hands over what it holds and tells the instance the
/// session ended: places once taken are always delivered, so an instance never waits on a
/// place nobody fills.
pub struct Inbound {
    to: Arc<Instance>,
    end: SessionId,
    pending: Vec<Envelope>,
}

impl Inbound {
    /// The end `end` of a session on `to`.
    pub fn new(to: Arc<Instance>, end: SessionId) -> Inbound {
        Inbound {
            to,
            end,
            pending: Vec::new(),
        }
    }

    /// The instance holding this end.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.to
    }

    /// The number of the declared message kind `kind`, or why a message of `len` bytes is
    /// refused.
    #[inline]
    pub fn admit(&self, kind: &str, len: usize) -> Result<u16, CallError> {
        check(&self.to, kind, len)
    }

    /// Takes a mailbox place for one more message. When the mailbox is full, what is queued
    /// is handed over first (the instance can only make room by taking it) and the answer
    /// is `busy`: wait and ask again.
    #[inline]
    pub fn reserve(&mut self) -> Result<(), CallError> {
        match self.to.reserve() {
            Err(CallError::Busy) => {
                self.flush();
                Err(CallError::Busy)
            }
            r => r,
        }
    }

    /// Queues a message of declared kind number `kind` whose place was reserved.
    #[inline]
    pub fn push(&mut self, kind: u16, payload: Bytes) {
        self.pending.push(Envelope::Message {
            end: self.end,
            kind,
            payload,
        });
    }

    /// Hands the queued messages to the instance, as one batch.
    pub fn flush(&mut self) {
        if self.pending.len() > 1 {
            self.to
                .deliver(Envelope::Batch(std::mem::take(&mut self.pending)));
        } else if let Some(one) = self.pending.pop() {
            self.to.deliver(one);
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.flush();
        let _ = self.to.post(Envelope::Disconnect { end: self.end });
    }
}
