//! Sessions as one end sees them: a table from this end's id to a `Route` to the other end.
//! A route is where messages for the other end go: another local instance's mailbox, a
//! client's channel, or a QUIC stream to another host; nothing above this module needs to
//! know which kind it talks to.

use super::Class;
use super::directory::{Registry, SessionRecord};
use super::instance::{CallError, Envelope, Instance, SessionId};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most messages waiting for a client to read them; past that the sender gets `busy`.
pub const CLIENT_QUEUE: usize = 1024;

/// The sending half of a session whose other end is on another host (a QUIC stream,
/// implemented by the network layer).
pub trait RemoteSink: Send + Sync {
    /// Queues one message, checked against the other end's declared kinds and size limit;
    /// `busy` when the stream's bounded queue is full.
    fn send(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError>;
    /// Ends the session from this side: what is queued is still written, then the stream
    /// is finished.
    fn close(&self);
    /// The other end's own id for this session.
    fn other_end(&self) -> SessionId;
}

/// What a client (not an instance) receives on its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The service sent a message.
    Message {
        /// Message kind.
        kind: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The service closed the session, or crashed.
    Closed,
}

/// Where messages for the other end of a session go.
#[derive(Clone)]
pub(crate) enum Route {
    /// An instance on this host, at its end `end`.
    Instance { to: Arc<Instance>, end: SessionId },
    /// A client of this host in the same process (a test, an embedding program). Its queue
    /// is bounded in messages and each message in bytes (`max_message`), so what a guest
    /// can park in host memory for a client that does not read is bounded too.
    Client {
        /// The client's queue.
        to: mpsc::Sender<ClientEvent>,
        /// The largest payload it takes.
        max_message: u64,
    },
    /// The other end is on another host, across a QUIC stream.
    Remote(Arc<dyn RemoteSink>),
}

impl Route {
    /// Checks a message against the receiver's declared kinds and size limit and reserves
    /// its place in the receiver's mailbox; the envelope goes into `outbox`, which the
    /// sending actor flushes in batches (one wake-up of the receiver per batch, not per
    /// message). Clients' routes deliver at once.
    #[inline]
    pub fn send(&self, kind: &str, payload: Vec<u8>, outbox: &mut Outbox) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let kind = check(to, kind, payload.len())?;
                to.reserve()?;
                outbox.push(
                    to,
                    Envelope::Message {
                        end: *end,
                        kind,
                        payload: payload.into(),
                    },
                );
                Ok(())
            }
            Route::Client { to, max_message } => {
                if payload.len() as u64 > *max_message {
                    return Err(CallError::TooLarge {
                        size: payload.len(),
                        limit: *max_message,
                    });
                }
                to.try_send(ClientEvent::Message {
                    kind: kind.to_string(),
                    payload,
                })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => CallError::Busy,
                    mpsc::error::TrySendError::Closed(_) => CallError::Closed,
                })
            }
            Route::Remote(sink) => sink.send(kind, payload),
        }
    }

    /// Like `send`, delivered at once (for clients, which have no actor to flush).
    pub fn send_now(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let kind = check(to, kind, payload.len())?;
                to.post(Envelope::Message {
                    end: *end,
                    kind,
                    payload: payload.into(),
                })
            }
            Route::Client { .. } | Route::Remote(_) => {
                self.send(kind, payload, &mut Outbox::default())
            }
        }
    }

    /// Tells the other end the session is closed.
    pub fn disconnect(&self) {
        match self {
            Route::Instance { to, end } => {
                let _ = to.post(Envelope::Disconnect { end: *end });
            }
            Route::Client { to, .. } => {
                if let Err(mpsc::error::TrySendError::Full(closed)) =
                    to.try_send(ClientEvent::Closed)
                {
                    // The close must not be lost to a full queue: it waits for room instead.
                    let to = to.clone();
                    tokio::spawn(async move {
                        let _ = to.send(closed).await;
                    });
                }
            }
            Route::Remote(sink) => sink.close(),
        }
    }
}

/// The receiver's number for a declared message kind, or why the message is refused.
#[inline]
fn check(to: &Instance, kind: &str, len: usize) -> Result<u16, CallError> {
    check_message(&to.class, to.limits.max_message, kind, len)
        .map_err(|r| r.message_error(&to.name, &to.class, kind))
}

/// Why a message or an event is refused before the guest: a value, made into the caller's
/// error (and its text) only by whoever reports it, so that a caller that only counts
/// refusals (the fuzzer) formats nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The receiver declares no such kind or event.
    Undeclared,
    /// Over the receiver's `max_message`.
    TooLarge {
        /// Bytes sent.
        size: usize,
        /// The receiver's limit.
        limit: u64,
    },
}

impl Refusal {
    /// The error a sender of message kind `kind` to the instance `name` gets.
    pub(crate) fn message_error(self, name: &str, class: &Class, kind: &str) -> CallError {
        match self {
            Refusal::Undeclared => CallError::Invalid(format!(
                "{name} does not accept message kind {kind:?}; it declares {:?}",
                class.messages
            )),
            Refusal::TooLarge { size, limit } => CallError::TooLarge { size, limit },
        }
    }

    /// The error a caller of event `event` on the instance `name` gets.
    pub(crate) fn event_error(self, name: &str, class: &Class, event: &str) -> CallError {
        match self {
            Refusal::Undeclared => CallError::Invalid(format!(
                "{name} has no event {event:?}; it declares {:?}",
                class.events
            )),
            Refusal::TooLarge { size, limit } => CallError::TooLarge { size, limit },
        }
    }
}

/// The number of message kind `kind` among those `class` declares, or why a message of
/// `len` bytes (to an instance taking at most `max_message`) is refused. Checked before the
/// guest, by the sender: every sender and the fuzzer ask here.
#[inline]
pub(crate) fn check_message(
    class: &Class,
    max_message: u64,
    kind: &str,
    len: usize,
) -> Result<u16, Refusal> {
    admit(class.message_index(kind), max_message, len)
}

/// The number of event `event` among those `class` declares, or why a call of it with
/// `len` bytes of parameters (to an instance taking at most `max_message`) is refused.
/// Checked before the guest: every caller and the fuzzer ask here.
#[inline]
pub(crate) fn check_event(
    class: &Class,
    max_message: u64,
    event: &str,
    len: usize,
) -> Result<u16, Refusal> {
    admit(class.event_index(event), max_message, len)
}

/// The one rule for both: declared, and at most `max_message` bytes.
#[inline]
fn admit(index: Option<u16>, max_message: u64, len: usize) -> Result<u16, Refusal> {
    let index = index.ok_or(Refusal::Undeclared)?;
    if len as u64 > max_message {
        return Err(Refusal::TooLarge {
            size: len,
            limit: max_message,
        });
    }
    Ok(index)
}

/// Most envelopes an outbox holds before it flushes by itself.
const OUTBOX_BATCH: usize = 64;

/// Messages an instance sent during the current call, not yet handed to their receivers.
/// Their mailbox places are already reserved, so `busy` is still reported at `send`.
#[derive(Default)]
pub(crate) struct Outbox {
    to: Option<Arc<Instance>>,
    pending: Vec<Envelope>,
}

impl Outbox {
    #[inline]
    fn push(&mut self, to: &Arc<Instance>, envelope: Envelope) {
        // One batch per run of messages to the same receiver keeps every session in order.
        if self.to.as_ref().is_some_and(|t| !Arc::ptr_eq(t, to)) {
            self.flush();
        }
        if self.to.is_none() {
            self.to = Some(to.clone());
        }
        self.pending.push(envelope);
        if self.pending.len() >= OUTBOX_BATCH {
            self.flush();
        }
    }

    /// Hands the pending messages to their receiver as one batch.
    #[inline]
    pub fn flush(&mut self) {
        let Some(to) = self.to.take() else { return };
        match self.pending.len() {
            0 => {}
            1 => to.deliver(self.pending.pop().expect("one pending envelope")),
            _ => to.deliver(Envelope::Batch(std::mem::replace(
                &mut self.pending,
                Vec::with_capacity(OUTBOX_BATCH),
            ))),
        }
    }
}

/// One open session as this end sees it.
pub(crate) struct SessionEnd {
    /// Where the other end is.
    pub route: Route,
    /// The other end's instance or client name.
    pub service: Arc<str>,
    /// Peer host id, for remote sessions.
    pub peer: Option<Arc<str>>,
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
    book: Option<(Arc<Instance>, Arc<Registry>)>,
}

impl SessionTable {
    /// A table that books its sessions under `me` in `registry`.
    pub fn booked(me: Arc<Instance>, registry: Arc<Registry>) -> SessionTable {
        SessionTable {
            map: HashMap::default(),
            book: Some((me, registry)),
        }
    }

    /// Opens a session end.
    pub fn insert(&mut self, id: SessionId, end: SessionEnd) {
        if let Some((me, registry)) = &self.book {
            let other_id = match &end.route {
                Route::Instance { end, .. } => Some(*end),
                Route::Remote(sink) => Some(sink.other_end()),
                Route::Client { .. } => None,
            };
            let record = SessionRecord {
                instance: me.name.clone(),
                other: end.service.clone(),
                other_id,
                peer: end.peer.clone(),
                channel: end.channel,
            };
            registry.session_opened(id, record, me);
        }
        if let Some(old) = self.map.insert(id, end)
            && let Some((me, registry)) = &self.book
        {
            // Ids are never reused, so this does not happen; keep the book right if it does.
            drop(old);
            registry.session_closed(id, me);
        }
    }

    /// Closes a session end, returning it.
    pub fn remove(&mut self, id: &SessionId) -> Option<SessionEnd> {
        let end = self.map.remove(id)?;
        if let Some((me, registry)) = &self.book {
            registry.session_closed(*id, me);
        }
        Some(end)
    }

    /// Closes every session end, returning them.
    pub fn drain(&mut self) -> Vec<(SessionId, SessionEnd)> {
        let ends: Vec<_> = self.map.drain().collect();
        if let Some((me, registry)) = &self.book {
            for (id, _) in &ends {
                registry.session_closed(*id, me);
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
