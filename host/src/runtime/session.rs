//! Sessions as one end sees them: a table from this end's id to a `Route` to the other end.
//! A route is where messages for the other end go: another local instance's mailbox, or a
//! client's channel; a remote peer's stream becomes one more variant, and nothing above this
//! module needs to know which kind it talks to.

use super::instance::{CallError, Envelope, Instance, SessionId};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

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
    /// A client of this host (the CLI, a test, later a remote peer's proxy).
    Client {
        to: mpsc::UnboundedSender<ClientEvent>,
    },
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
                        payload,
                    },
                );
                Ok(())
            }
            Route::Client { to } => to
                .send(ClientEvent::Message {
                    kind: kind.to_string(),
                    payload,
                })
                .map_err(|_| CallError::Closed),
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
                    payload,
                })
            }
            Route::Client { .. } => self.send(kind, payload, &mut Outbox::default()),
        }
    }

    /// Tells the other end the session is closed.
    pub fn disconnect(&self) {
        match self {
            Route::Instance { to, end } => {
                let _ = to.post(Envelope::Disconnect { end: *end });
            }
            Route::Client { to } => {
                let _ = to.send(ClientEvent::Closed);
            }
        }
    }
}

/// The receiver's number for a declared message kind, or why the message is refused.
#[inline]
fn check(to: &Instance, kind: &str, len: usize) -> Result<u16, CallError> {
    let Some(index) = to.class.message_index(kind) else {
        return Err(CallError::Invalid(format!(
            "{} does not accept message kind {kind:?}; it declares {:?}",
            to.name, to.class.messages
        )));
    };
    if len as u64 > to.limits.max_message {
        return Err(CallError::TooLarge {
            size: len,
            limit: to.limits.max_message,
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

/// This instance's open sessions by id.
pub(crate) type SessionTable = HashMap<SessionId, SessionEnd, BuildHasherDefault<IdHasher>>;
