//! Control messages (channel 0) and session headers: JSON objects with a `type` field, one
//! per frame. They are rare next to data frames, so readability and easy clients in other
//! languages matter more than bytes here. Receivers ignore fields they do not know (that is
//! how minor versions add fields); an unknown `type` is answered with an `error`, not a close.

use serde::{Deserialize, Serialize};

/// Which side of a connection a `hello` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A wasmwire host: it runs services and may be dialled back and handed out to peers.
    Host,
    /// A client such as the CLI: never dialled back, never handed out.
    Client,
}

impl Role {
    /// The word the protocol uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Client => "client",
        }
    }
}

/// The state of a service, as `list-services` and `stats` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// No instance, no memory: woken by the next message, session or request.
    #[default]
    Asleep,
    /// Instantiated and handling calls.
    Awake,
    /// Crashed past its restart limit; refuses work until the host restarts.
    Down,
    /// A keyed class: its keys have states of their own.
    Keyed,
    /// A state this host does not know (a newer peer's).
    #[serde(other)]
    Other,
}

impl ServiceState {
    /// The word the protocol uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Asleep => "asleep",
            ServiceState::Awake => "awake",
            ServiceState::Down => "down",
            ServiceState::Keyed => "keyed",
            ServiceState::Other => "other",
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The first message each way on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Host or client.
    pub role: Role,
    /// Major protocol version (also in the ALPN); must be equal on both sides.
    pub major: u32,
    /// Minor version; both sides use the lower one.
    pub minor: u32,
    /// Optional features; both sides use the ones both list.
    #[serde(default)]
    pub features: Vec<String>,
    /// Where this host accepts connections (`ip:port`); none for clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The services this host exposes to peers (at most 256 names).
    #[serde(default)]
    pub services: Vec<String>,
    /// A random number per connection and side: when one side dialled twice, both keep
    /// the connection whose dialler sent the higher nonce.
    #[serde(default)]
    pub nonce: u64,
}

/// Why a request or a session was refused: the wire form of the WIT `error` cases, plus
/// the broker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No service of that name on the answering host.
    NoSuchService,
    /// Not allowed: not exposed, not in `uses`, a limit, or not in `allow`.
    Denied,
    /// Over the receiver's `max_message`.
    TooLarge,
    /// The service or session closed before answering.
    Closed,
    /// No answer within the deadline.
    Timeout,
    /// The receiver's mailbox is full.
    Busy,
    /// The request would wait on itself.
    Cycle,
    /// Malformed: an undeclared event or kind, bad parameters.
    Invalid,
    /// The service is down or could not be woken.
    Unavailable,
    /// The callee's `on-event` returned an error.
    Failed,
    /// The message `type` is not one this host knows.
    UnknownType,
    /// Too many requests of this kind from this peer: slow down.
    RateLimited,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

/// One exposed service, as `list-services` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Instance name.
    pub name: String,
    /// Its channel.
    pub channel: u16,
    /// Message kinds it accepts.
    pub messages: Vec<String>,
    /// Events it answers.
    pub events: Vec<String>,
    /// `awake`, `asleep`, `down`, or `keyed` for a class.
    pub state: ServiceState,
    /// Sessions open to it now.
    pub sessions: u32,
    /// For a keyed class (state `keyed`): how many keys are live and awake, and some of
    /// the awake ones. Absent for a plain service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedEntry>,
}

/// What `list-services` says of a keyed class: counts, and at most 64 awake keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedEntry {
    /// Keys with an instance now (awake, or asleep and about to leave).
    pub live: u64,
    /// Keys awake now.
    pub awake: u64,
    /// The first awake keys, sorted (at most 64).
    pub awake_keys: Vec<String>,
    /// The class's `max_instances`.
    pub max_instances: u32,
}

/// Most awake keys `list-services` names per keyed class.
pub const MAX_LISTED_KEYS: usize = 64;

/// One open session, as `list-sessions` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// This end's session id.
    pub id: u64,
    /// The instance on this host that holds this end.
    pub service: String,
    /// The channel of the service that accepted the session.
    pub channel: u16,
    /// The other end: an instance or client name.
    pub other: String,
    /// The other end's own id for the session (absent for an in-process client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_id: Option<u64>,
    /// The other end's host, when remote.
    #[serde(default)]
    pub peer: Option<String>,
}

/// A peer, as `peers` and `found` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Its peer id.
    pub peer: String,
    /// Where it accepts connections, if known.
    #[serde(default)]
    pub addr: Option<String>,
    /// Whether the answering host has a connection to it now.
    #[serde(default)]
    pub connected: bool,
}

/// A host's figures at one moment, as `stats` answers them (`wasmwire top` shows them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    /// The answering host's peer id.
    pub host: String,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its manifest entries, in manifest order (at most [`MAX_STATS_INSTANCES`]).
    pub instances: Vec<InstanceFigures>,
    /// How many manifest entries there are in all.
    pub total_instances: u64,
    /// Its connections to other hosts and clients.
    pub peers: Vec<PeerFigures>,
    /// Handshakes refused (key not allowed, not the peer dialled, malformed).
    pub refused_handshakes: u64,
    /// Stalls the progress watchdog has seen (absent from older hosts: all zero).
    #[serde(default)]
    pub stalls: StallFigures,
    /// Tasks alive on the host's async runtimes now, its worker threads' (where the instance
    /// actors run) included (absent from older hosts: 0). A figure that must level off under
    /// steady load: the soak fails when it keeps growing.
    #[serde(default)]
    pub tasks: u64,
}

/// Stalls seen since the host started, by what the stalled party waited on: a session or
/// connection with data waiting that made no progress for the host's `stall_after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StallFigures {
    /// Opening a session stream, waiting for the peer's stream credit.
    pub stream_credit: u64,
    /// Writing a session's messages, the peer not reading.
    pub send_blocked: u64,
    /// Reading a session's messages, the receiving mailbox full.
    pub mailbox_full: u64,
    /// Writing control messages, the peer not reading.
    pub control_blocked: u64,
}

/// Most manifest entries a `stats` answer carries.
pub const MAX_STATS_INSTANCES: usize = 2048;

/// One manifest entry's figures; a keyed class's are the sums over its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFigures {
    /// Instance (or keyed class) name.
    pub name: String,
    /// `awake`, `asleep`, `down`, or `keyed` for a class.
    pub state: ServiceState,
    /// Instances awake now (0 or 1; for a class, its awake keys).
    pub awake: u64,
    /// Keys with an instance now (a class only; 0 otherwise).
    #[serde(default)]
    pub live: u64,
    /// Export calls made into the guest so far.
    pub calls: u64,
    /// Events answered with an error so far.
    pub errors: u64,
    /// Traps and limit hits so far.
    pub traps: u64,
    /// Wakes after a crash so far.
    pub restarts: u64,
    /// Wakes so far.
    pub wakes: u64,
    /// Sleeps so far.
    pub sleeps: u64,
    /// Messages and events waiting in the mailbox now.
    pub mailbox: u64,
    /// Bytes of linear memory held now.
    pub memory: u64,
    /// Sessions open now.
    pub sessions: u64,
}

/// One connection's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFigures {
    /// The peer's id.
    pub peer: String,
    /// `host` or `client`.
    pub role: Role,
    /// The address it is reached at.
    pub addr: String,
    /// QUIC's smoothed round-trip time, in microseconds.
    pub rtt_us: u64,
    /// Session messages received.
    pub messages_in: u64,
    /// Session messages sent.
    pub messages_out: u64,
    /// Control messages received.
    pub control_in: u64,
    /// Control messages sent.
    pub control_out: u64,
    /// UDP payload bytes received.
    pub bytes_in: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
}

/// What a `too-large` error was about: bytes sent, and the most the receiver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oversize {
    /// Bytes sent.
    pub size: u64,
    /// The receiver's `max_message`.
    pub limit: u64,
}

/// A control message. Requests carry an `id` chosen by the sender; the answer carries the
/// same `id`, and answers may come in any order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Control {
    /// First message each way.
    Hello(Hello),
    /// The request `id` failed.
    Error {
        /// The request answered.
        id: u64,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, in words.
        reason: String,
        /// With `too-large`: the sizes, so the caller's error keeps them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oversize: Option<Oversize>,
    },
    /// Asks for the exposed services.
    ListServices {
        /// Request id.
        id: u64,
    },
    /// Answers `list-services`.
    Services {
        /// Request id.
        id: u64,
        /// The exposed services.
        services: Vec<ServiceEntry>,
    },
    /// Asks for every open session on the host.
    ListSessions {
        /// Request id.
        id: u64,
    },
    /// Answers `list-sessions`.
    Sessions {
        /// Request id.
        id: u64,
        /// The open sessions (at most 2048).
        sessions: Vec<SessionEntry>,
        /// How many there are in all.
        total: u64,
    },
    /// Asks which known peers run a service.
    FindService {
        /// Request id.
        id: u64,
        /// Instance name.
        service: String,
    },
    /// Answers `find-service`.
    Found {
        /// Request id.
        id: u64,
        /// The service asked for.
        service: String,
        /// Peers that run it (the answering host itself included, if it does).
        peers: Vec<PeerEntry>,
        /// Hosts closer to the service's key than the answering host (at most 20): where
        /// an iterative lookup asks next (DHT, `docs/protocol.md` §5.6).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        closer: Vec<PeerEntry>,
    },
    /// Calls an event on an exposed service.
    Request {
        /// Request id.
        id: u64,
        /// Instance name.
        service: String,
        /// Event name.
        event: String,
        /// JSON parameters, as text.
        params: String,
        /// How long the caller waits, in milliseconds: the callee gives up after this.
        timeout_ms: u64,
        /// Who is waiting on this request, outermost first, as `PEERID/name`: a host that
        /// finds its target in the chain answers `cycle`.
        #[serde(default)]
        chain: Vec<String>,
        /// The calling instance or client name.
        #[serde(default)]
        caller: Option<String>,
        /// The callee's id of a session the caller has open with it: the callee's
        /// `on-event` then gets that session as its `caller`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// Answers `request`: the callee's JSON reply, as text.
    Response {
        /// Request id.
        id: u64,
        /// The reply.
        result: String,
    },
    /// Asks for connected peers (peer exchange).
    GetPeers {
        /// Request id.
        id: u64,
    },
    /// Answers `get-peers`.
    Peers {
        /// Request id.
        id: u64,
        /// Peers (at most 32 per answer to another host).
        peers: Vec<PeerEntry>,
    },
    /// Asks for the host's figures (`wasmwire top`).
    GetStats {
        /// Request id.
        id: u64,
    },
    /// Answers `get-stats`.
    Stats {
        /// Request id.
        id: u64,
        /// The figures.
        stats: HostStats,
    },
    /// Liveness and round-trip probe.
    Ping {
        /// Request id.
        id: u64,
    },
    /// Answers `ping`.
    Pong {
        /// Request id.
        id: u64,
    },
    /// Asks for the hosts the answerer knows closest to a key (Kademlia's FIND_NODE).
    FindNode {
        /// Request id.
        id: u64,
        /// The key, as 52 base32 characters (a host's key is the SHA-256 of its id).
        target: String,
    },
    /// Answers `find-node`: at most 20 hosts, closest to the key first.
    Nodes {
        /// Request id.
        id: u64,
        /// The hosts.
        peers: Vec<PeerEntry>,
    },
    /// Tells the answerer that the sender runs a service: a provider record, kept for an
    /// hour (the sender refreshes it every 30 minutes).
    AddProvider {
        /// Request id.
        id: u64,
        /// The service (a manifest name).
        service: String,
    },
    /// Answers `add-provider`: the record is stored.
    Stored {
        /// Request id.
        id: u64,
    },
    /// Sent instead of `hello` by a host at its connection cap, just before it closes: a
    /// refused newcomer still learns where to go.
    Full {
        /// Why (the cap).
        reason: String,
        /// A random sample of the hosts it is connected to (at most 32).
        peers: Vec<PeerEntry>,
    },
}

/// Every `type` a [`Control`] can have.
pub const CONTROL_TYPES: &[&str] = &[
    "hello",
    "error",
    "list-services",
    "services",
    "list-sessions",
    "sessions",
    "find-service",
    "found",
    "request",
    "response",
    "get-peers",
    "peers",
    "get-stats",
    "stats",
    "ping",
    "pong",
    "full",
    "find-node",
    "nodes",
    "add-provider",
    "stored",
];

impl Control {
    /// Its `type` on the wire, without encoding it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Control::Hello(_) => "hello",
            Control::Error { .. } => "error",
            Control::ListServices { .. } => "list-services",
            Control::Services { .. } => "services",
            Control::ListSessions { .. } => "list-sessions",
            Control::Sessions { .. } => "sessions",
            Control::FindService { .. } => "find-service",
            Control::Found { .. } => "found",
            Control::Request { .. } => "request",
            Control::Response { .. } => "response",
            Control::GetPeers { .. } => "get-peers",
            Control::Peers { .. } => "peers",
            Control::GetStats { .. } => "get-stats",
            Control::Stats { .. } => "stats",
            Control::Ping { .. } => "ping",
            Control::Pong { .. } => "pong",
            Control::Full { .. } => "full",
            Control::FindNode { .. } => "find-node",
            Control::Nodes { .. } => "nodes",
            Control::AddProvider { .. } => "add-provider",
            Control::Stored { .. } => "stored",
        }
    }

    /// The request id it carries (0 for `hello` and `full`).
    pub fn id(&self) -> u64 {
        match self {
            Control::Hello(_) | Control::Full { .. } => 0,
            Control::Error { id, .. }
            | Control::ListServices { id }
            | Control::Services { id, .. }
            | Control::ListSessions { id }
            | Control::Sessions { id, .. }
            | Control::FindService { id, .. }
            | Control::Found { id, .. }
            | Control::Request { id, .. }
            | Control::Response { id, .. }
            | Control::GetPeers { id }
            | Control::Peers { id, .. }
            | Control::GetStats { id }
            | Control::Stats { id, .. }
            | Control::Ping { id }
            | Control::Pong { id }
            | Control::FindNode { id, .. }
            | Control::Nodes { id, .. }
            | Control::AddProvider { id, .. }
            | Control::Stored { id } => *id,
        }
    }

    /// Whether it answers a request (rather than asking something).
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            Control::Error { .. }
                | Control::Services { .. }
                | Control::Sessions { .. }
                | Control::Found { .. }
                | Control::Response { .. }
                | Control::Peers { .. }
                | Control::Stats { .. }
                | Control::Pong { .. }
                | Control::Nodes { .. }
                | Control::Stored { .. }
        )
    }
}

/// Why a control frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    /// A well-formed message of a type this host does not know: answer with an `error`.
    #[error("unknown message type {kind:?}")]
    UnknownType {
        /// Its request id, if it had one.
        id: Option<u64>,
        /// Its type (cut to 64 bytes).
        kind: String,
    },
    /// Not a message at all: close the connection with this reason.
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// Decodes one control frame body.
pub fn decode_control(body: &[u8]) -> Result<Control, Undecodable> {
    decode_tagged(body, CONTROL_TYPES)
}

/// The first frame each way on a session stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SessionHeader {
    /// From the opener: which service, and who is asking.
    Connect {
        /// The service (instance name) to open a session with.
        service: String,
        /// The opener's own id for this session.
        session: u64,
        /// The opening instance or client name.
        caller: String,
        /// As in `request`: who is waiting on this connect.
        #[serde(default)]
        chain: Vec<String>,
        /// Message kinds the opener accepts; absent for a client, which accepts any.
        #[serde(default)]
        messages: Option<Vec<String>>,
        /// Largest message payload the opener accepts.
        max_message: u64,
    },
    /// From the acceptor: the session is open.
    Accepted {
        /// The acceptor's own id for this session.
        session: u64,
        /// Message kinds the acceptor accepts.
        messages: Vec<String>,
        /// Largest message payload the acceptor accepts.
        max_message: u64,
        /// The acceptor's channel.
        channel: u16,
    },
    /// From the acceptor: no session; the stream ends after this frame.
    Rejected {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, in words.
        reason: String,
        /// With `too-large`: the sizes, so the opener's error keeps them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oversize: Option<Oversize>,
    },
}

/// Decodes a session header frame body.
pub fn decode_header(body: &[u8]) -> Result<SessionHeader, Undecodable> {
    decode_tagged(body, &["connect", "accepted", "rejected"])
}

fn decode_tagged<T: serde::de::DeserializeOwned>(
    body: &[u8],
    known: &[&str],
) -> Result<T, Undecodable> {
    match serde_json::from_slice::<T>(body) {
        Ok(m) => Ok(m),
        Err(e) => {
            #[derive(Deserialize)]
            struct Probe {
                #[serde(rename = "type")]
                kind: String,
                #[serde(default)]
                id: Option<u64>,
            }
            match serde_json::from_slice::<Probe>(body) {
                Ok(p) if !known.contains(&p.kind.as_str()) => {
                    let mut kind = p.kind;
                    if kind.len() > 64 {
                        kind.truncate(kind.floor_char_boundary(64));
                    }
                    Err(Undecodable::UnknownType { id: p.id, kind })
                }
                _ => Err(Undecodable::Malformed(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_kebab_case_types() {
        let m = Control::Request {
            id: 7,
            service: "counter".into(),
            event: "incr".into(),
            params: r#"{"by":2}"#.into(),
            timeout_ms: 5000,
            chain: vec!["abc/lobby".into()],
            caller: Some("lobby".into()),
            session: Some(5),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"type":"request","id":7,"#), "{text}");
        assert_eq!(decode_control(text.as_bytes()), Ok(m));
        let e = Control::Error {
            id: 3,
            code: ErrorCode::NoSuchService,
            reason: "x".into(),
            oversize: None,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"type":"error","id":3,"code":"no-such-service","reason":"x"}"#
        );
    }

    #[test]
    fn unknown_types_are_told_apart_from_garbage() {
        assert_eq!(
            decode_control(br#"{"type":"teleport","id":9,"to":"mars"}"#),
            Err(Undecodable::UnknownType {
                id: Some(9),
                kind: "teleport".into()
            })
        );
        for garbage in [
            &b"not json"[..],
            b"{}",
            b"[1,2]",
            br#"{"type":"ping"}"#,
            br#"{"type":"request","id":1}"#,
            br#"{"type":5,"id":1}"#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(decode_control(garbage), Err(Undecodable::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[test]
    fn unknown_fields_and_error_codes_are_tolerated() {
        assert_eq!(
            decode_control(br#"{"type":"ping","id":1,"new-field":true}"#),
            Ok(Control::Ping { id: 1 })
        );
        assert_eq!(
            decode_control(br#"{"type":"error","id":1,"code":"from-the-future","reason":""}"#),
            Ok(Control::Error {
                id: 1,
                code: ErrorCode::Other,
                reason: String::new(),
                oversize: None,
            })
        );
    }

    #[test]
    fn headers_decode() {
        let h = decode_header(
            br#"{"type":"connect","service":"chat","session":4,"caller":"cli","max_message":1024}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            SessionHeader::Connect {
                service: "chat".into(),
                session: 4,
                caller: "cli".into(),
                chain: vec![],
                messages: None,
                max_message: 1024
            }
        );
        assert!(matches!(
            decode_header(br#"{"type":"hello"}"#),
            Err(Undecodable::UnknownType { .. })
        ));
    }
}
