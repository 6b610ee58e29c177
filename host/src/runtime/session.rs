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
    /// Delivers a message, checking the receiver's declared kinds and size limit first.
    #[inline]
    pub fn send(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError> {
        match self {
            Route::Instance { to, end } => {
                let Some(kind) = to.class.message_index(kind) else {
                    return Err(CallError::Invalid(format!(
                        "{} does not accept message kind {kind:?}; it declares {:?}",
                        to.name, to.class.messages
                    )));
                };
                if payload.len() as u64 > to.limits.max_message {
                    return Err(CallError::TooLarge {
                        size: payload.len(),
                        limit: to.limits.max_message,
                    });
                }
                to.post(Envelope::Message {
                    end: *end,
                    kind,
                    payload,
                })
            }
            Route::Client { to } => to
                .send(ClientEvent::Message {
                    kind: kind.to_string(),
                    payload,
                })
                .map_err(|_| CallError::Closed),
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
