//! The thin async driver of the wire protocol: one quinn endpoint that listens and dials,
//! host identity and its verifiers (`identity`), session streams (`session`), and the
//! tasks that move bytes between QUIC streams, the channel-0 [`Broker`] and the runtime.
//!
//! One task owns the broker and is fed through one bounded channel ([`Input`]): connection
//! tasks report connections, control frames and closes; callers ask for requests and for a
//! connection to open a session on. After each input the task drains the broker's outputs:
//! control messages go to each connection's writer task, events become dials, closes and
//! answers. Incoming requests that need the services run in tasks of their own and come
//! back as answers, so a slow service never holds up channel 0.

mod frames;
pub mod identity;
pub mod log_gate;
pub mod session;
pub mod watchdog;

use bytes::BytesMut;
use frames::{FrameReader, ReadError};
use identity::{ANY_PEER, Allow, Identity};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use wasmwire_broker::{
    Ask, Broker, BrokerConfig, BrokerLimits, ConnId, DialTo, Event, Failure, Incoming,
};
use wasmwire_manifest::{PeerSpec, Transport};
use wasmwire_runtime::directory::{
    Directory, Peers, PeersFuture, RemoteConnect, RemoteRequest, RemoteSession, RemoteTarget,
    alive_tasks, reply_within,
};
use wasmwire_runtime::instance::{CallError, Chain, SessionId};
use wasmwire_runtime::session::{ClientEvent, Inbound};
use wasmwire_wire::{self as wire, Control, ErrorCode, Oversize, PeerId, Role, SessionHeader};

/// Control messages waiting to be written on one connection at most; a peer that does not
/// read its control stream is closed rather than buffered for.
const CONTROL_QUEUE: usize = 1024;

/// Places one connection may hold in the broker task's input queue (which every connection
/// shares): however fast a peer writes, at most this many of its control messages wait
/// there, so another connection's message waits behind at most this many of each busy
/// peer's.
const INPUT_SHARE: usize = 32;

/// Connections a host keeps open at once by default (hosts and clients together,
/// `BrokerLimits::max_connections`); past that a newcomer gets `full` and is closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// Newcomers being turned away with `full` at once, past the connection cap; past this
/// many more, a newcomer is closed with no answer (so a flood of dials costs bounded work).
const MAX_REFUSING: usize = 64;

/// How long a full host waits for a refused newcomer to read its `full` and close.
const REFUSE_LINGER: Duration = Duration::from_secs(2);

/// One of the `max_connections` places (or, for `refusing`, one of the [`MAX_REFUSING`]),
/// given back when dropped.
struct ConnectionSlot(Arc<Shared>, bool);

impl ConnectionSlot {
    fn take(shared: &Arc<Shared>) -> Option<ConnectionSlot> {
        Self::take_of(shared, false)
    }

    fn take_of(shared: &Arc<Shared>, refusing: bool) -> Option<ConnectionSlot> {
        let (count, max) = if refusing {
            (&shared.refusing, MAX_REFUSING)
        } else {
            (&shared.open, shared.max_connections)
        };
        let n = count.fetch_add(1, Ordering::AcqRel);
        if n >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(shared.clone(), refusing))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let count = if self.1 {
            &self.0.refusing
        } else {
            &self.0.open
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// QUIC application close codes.
pub mod close_codes {
    /// A normal end: the host is shutting down, a client is done, a bootstrap peer is
    /// released.
    pub const SHUTDOWN: u32 = 0;
    /// The broker closed the connection: the reason says why.
    pub const PROTOCOL: u32 = 1;
    /// The peer is this host itself.
    pub const SELF: u32 = 2;
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TLS settings could not be built.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The QUIC settings were refused.
    #[error("quic: {0}")]
    Quic(String),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a network endpoint is started with.
pub struct NetConfig {
    /// Host or client.
    pub role: Role,
    /// Where to listen (hosts); clients bind an ephemeral port.
    pub listen: Option<SocketAddr>,
    /// The address peers are told to dial instead of the one bound (hosts).
    pub advertise: Option<SocketAddr>,
    /// The key.
    pub identity: Identity,
    /// Peers allowed (empty: any).
    pub allow: Vec<PeerId>,
    /// Configured peers.
    pub peers: Vec<PeerSpec>,
    /// QUIC settings.
    pub transport: Transport,
    /// Broker bounds.
    pub limits: BrokerLimits,
    /// The ALPN to offer (tests change it to check a mismatch is refused).
    pub alpn: Vec<u8>,
    /// How a configured peer's `name:port` becomes addresses; `None`: the system's
    /// resolver (DNS, `/etc/hosts`). Tests give a table here.
    pub resolver: Option<Resolver>,
}

/// A name resolver: every address a `name:port` stands for (a headless Kubernetes
/// Service's name stands for one address per pod, and each is dialled as a peer).
pub type Resolver = Arc<dyn Fn(&str) -> Result<Vec<SocketAddr>, String> + Send + Sync>;

/// What crossed one connection, counted by the tasks that read and write its streams (one
/// relaxed add per frame or per written batch; read by the metrics endpoint and `stats`).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Session messages received.
    pub messages_in: AtomicU64,
    /// Session messages sent.
    pub messages_out: AtomicU64,
    /// Control messages (requests, answers, peer exchange) received.
    pub control_in: AtomicU64,
    /// Control messages sent.
    pub control_out: AtomicU64,
    /// Session streams the peer has open to this host now (being accepted, open, or being
    /// refused): held at `max_streams` by the acceptor, see [`quic_stream_limit`].
    pub sessions_in: AtomicU64,
    /// Session streams this host opened on the connection and still reads.
    pub sessions_out: AtomicU64,
    /// The peer's id, for the watchdog's log lines.
    pub peer: Arc<str>,
    /// The host's progress watchdog.
    pub watchdog: Arc<watchdog::Watchdog>,
}

/// What the broker keeps of the network, as [`Net::tables`] reports it: each bounded
/// however the network behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFigures {
    /// Hosts in the DHT routing table.
    pub table: usize,
    /// Provider records kept for other hosts.
    pub records: usize,
    /// Peers learned by exchange, not connected.
    pub learned: usize,
}

/// One ready connection's figures, as [`Net::links`] reports them.
#[derive(Debug, Clone)]
pub struct LinkFigures {
    /// The peer's id.
    pub peer: PeerId,
    /// A host or a client (the CLI).
    pub role: Role,
    /// The address it is reached at.
    pub remote: SocketAddr,
    /// QUIC's smoothed round-trip time.
    pub rtt: Duration,
    /// UDP payload bytes received and sent on the connection (QUIC's own count).
    pub bytes_in: u64,
    /// See `bytes_in`.
    pub bytes_out: u64,
    /// Session messages received.
    pub messages_in: u64,
    /// Session messages sent.
    pub messages_out: u64,
    /// Control messages received.
    pub control_in: u64,
    /// Control messages sent.
    pub control_out: u64,
}

/// The inputs of the broker task.
enum Input {
    Connected {
        conn: ConnId,
        connection: quinn::Connection,
        peer: PeerId,
        dialled: Option<DialTo>,
        control: mpsc::Sender<bytes::Bytes>,
        window: Arc<tokio::sync::Semaphore>,
        traffic: Arc<Traffic>,
    },
    Control {
        conn: ConnId,
        message: Result<Control, wire::Undecodable>,
        /// The connection's place in this queue, given back when this input is dropped
        /// (handled, or thrown away with its connection): see [`read_control`].
        place: tokio::sync::OwnedSemaphorePermit,
    },
    Closed {
        conn: ConnId,
        reason: String,
    },
    DialFailed(DialTo),
    Answer {
        conn: ConnId,
        id: u64,
        answer: Result<Control, Failure>,
    },
    Ask {
        target: Target,
        ask: Ask,
        timeout: Duration,
        reply: oneshot::Sender<Result<Control, Failure>>,
    },
    Pick {
        target: Target,
        reply: oneshot::Sender<Result<Picked, Failure>>,
    },
    WaitReady {
        conn: ConnId,
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<wire::PeerEntry>>,
    },
    /// The `full` a refused newcomer gets.
    Full {
        reply: oneshot::Sender<Control>,
    },
    Connections {
        reply: oneshot::Sender<Vec<(ConnId, PeerId, Role)>>,
    },
    Links {
        reply: oneshot::Sender<Vec<LinkFigures>>,
    },
    Tables {
        reply: oneshot::Sender<TableFigures>,
    },
}

/// The connection a session goes on, and where its messages are counted.
type Picked = (PeerId, quinn::Connection, Arc<Traffic>);

/// Which connection a request or session goes on.
#[derive(Debug, Clone)]
enum Target {
    Conn(ConnId),
    Peer(PeerId),
    /// Any connected host that exposes `service`, among `allowed` if given.
    Any {
        service: String,
        allowed: Option<Vec<PeerId>>,
    },
}

struct Shared {
    me: PeerId,
    me_text: Arc<str>,
    role: Role,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    input: mpsc::Sender<Input>,
    directory: Option<Arc<Directory>>,
    next_conn: AtomicU64,
    /// Connections open now (see `MAX_CONNECTIONS`).
    open: std::sync::atomic::AtomicUsize,
    /// Connections most open at once (`BrokerLimits::max_connections`).
    max_connections: usize,
    /// Newcomers being answered `full` now (see [`MAX_REFUSING`]).
    refusing: std::sync::atomic::AtomicUsize,
    handshake_timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// Requests one peer may have waiting for answers (`BrokerLimits::max_incoming`).
    window: usize,
    /// The allow list, which also counts refused handshakes.
    allow: Arc<Allow>,
    /// When the endpoint started (for `stats`' uptime).
    started: Instant,
    resolver: Option<Resolver>,
    /// Sessions one peer may have open to this host at once (`[host] max_streams`).
    max_sessions: u64,
    /// Stalls of every connection and session: logged once each, counted.
    watchdog: Arc<watchdog::Watchdog>,
    /// Addresses that turned out to be this host (a DNS name that lists every pod lists
    /// this one too): skipped by later dials of configured entries.
    own_addrs: std::sync::Mutex<std::collections::HashSet<SocketAddr>>,
}

/// A running network endpoint: a host's (listening, dialling its peers, serving its exposed
/// services) or a client's (dialling only).
#[derive(Clone)]
pub struct Net {
    shared: Arc<Shared>,
    stop: Arc<watch::Sender<bool>>,
}

impl Net {
    /// Starts the endpoint and the broker task on the current tokio runtime. A host passes
    /// its directory, which serves requests and sessions from peers.
    pub fn start(config: NetConfig, directory: Option<Arc<Directory>>) -> Result<Net, NetError> {
        let allow = Arc::new(Allow::new(config.allow.iter().copied()));
        let transport = Arc::new(transport_config(&config.transport)?);
        let mut tls = identity::client_config(&config.identity, allow.clone(), &config.alpn)?;
        tls.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| NetError::Quic(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        client_config.transport_config(transport.clone());

        let bind = config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let endpoint = if config.role == Role::Host {
            let tls = identity::server_config(&config.identity, allow.clone())?;
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
                .map_err(|e| NetError::Quic(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            server.transport_config(transport);
            quinn::Endpoint::server(server, bind)
        } else {
            quinn::Endpoint::client(bind)
        }
        .map_err(|source| NetError::Bind { addr: bind, source })?;
        let listen = match (config.role, endpoint.local_addr()) {
            (Role::Host, Ok(a)) => Some(config.advertise.unwrap_or(a)),
            _ => None,
        };
        let services = directory
            .as_ref()
            .map(|r| {
                r.instances()
                    .iter()
                    .filter(|i| i.expose)
                    .map(|i| i.name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let me = config.identity.id;
        let now = Instant::now();
        let window = config.limits.max_incoming.max(1);
        let max_connections = config.limits.max_connections;
        let broker = Broker::new(
            BrokerConfig {
                me,
                role: config.role,
                listen,
                services,
                allow: allow.clone(),
                peers: config.peers,
                limits: config.limits,
                seed: os_seed(),
            },
            now,
        );
        let (input, rx) = mpsc::channel(1024);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            me,
            me_text: Arc::from(me.to_string()),
            role: config.role,
            endpoint,
            client_config,
            input,
            directory,
            next_conn: AtomicU64::new(1),
            open: std::sync::atomic::AtomicUsize::new(0),
            max_connections,
            refusing: std::sync::atomic::AtomicUsize::new(0),
            handshake_timeout: config.transport.peer_timeout.max(Duration::from_secs(2)),
            runtime: tokio::runtime::Handle::current(),
            window,
            allow,
            started: Instant::now(),
            resolver: config.resolver,
            own_addrs: Default::default(),
            max_sessions: u64::from(config.transport.max_streams),
            watchdog: Arc::new(watchdog::Watchdog::new(config.transport.stall_after)),
        });
        tokio::spawn(drive(shared.clone(), broker, rx, stopped.clone()));
        if config.role == Role::Host {
            tokio::spawn(accept_loop(shared.clone(), stopped));
        }
        Ok(Net {
            shared,
            stop: Arc::new(stop),
        })
    }

    /// This endpoint's peer id.
    pub fn id(&self) -> PeerId {
        self.shared.me
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addr().ok()
    }

    /// Dials `spec` (every address it resolves to, first success wins) and waits for the
    /// hello exchange; returns the connection and the peer's id.
    pub async fn dial(&self, spec: &PeerSpec) -> Result<(ConnId, PeerId), String> {
        let addrs = resolve(&self.shared, &spec.addr).await?;
        let mut last = String::from("no address");
        for addr in addrs {
            match connect(&self.shared, addr, spec.expected).await {
                Ok(connection) => {
                    let (conn, ready) = oneshot::channel();
                    let shared = self.shared.clone();
                    tokio::spawn(run_connection(
                        shared,
                        connection,
                        Some(DialTo::Direct(addr)),
                        Some(conn),
                    ));
                    let conn = ready
                        .await
                        .map_err(|_| "the connection failed at once".to_string())?;
                    let (reply, rx) = oneshot::channel();
                    self.send(Input::WaitReady { conn, reply }).await?;
                    let peer = rx.await.map_err(|_| "the host stopped".to_string())??;
                    return Ok((conn, peer));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    async fn send(&self, input: Input) -> Result<(), String> {
        self.shared
            .input
            .send(input)
            .await
            .map_err(|_| "the network is shut down".to_string())
    }

    /// Sends a request to the host `peer`, dialling it first if it is not connected but
    /// known (configured or learned), and waits for its answer.
    pub async fn ask_peer(
        &self,
        peer: PeerId,
        ask: Ask,
        timeout: Duration,
    ) -> Result<Control, Failure> {
        ask_on(&self.shared, Target::Peer(peer), ask, timeout).await
    }

    /// Sends a request on a connection and waits for its answer.
    pub async fn ask(&self, conn: ConnId, ask: Ask, timeout: Duration) -> Result<Control, Failure> {
        ask_on(&self.shared, Target::Conn(conn), ask, timeout).await
    }

    /// Connected and learned peers, as this host sees them.
    pub async fn peers(&self) -> Vec<wire::PeerEntry> {
        let (reply, rx) = oneshot::channel();
        if self.send(Input::Peers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Every ready connection's peer, round-trip time and traffic.
    pub async fn links(&self) -> Vec<LinkFigures> {
        let (reply, rx) = oneshot::channel();
        if self.send(Input::Links { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The sizes of what the broker keeps of the network.
    pub async fn tables(&self) -> TableFigures {
        let (reply, rx) = oneshot::channel();
        if self.send(Input::Tables { reply }).await.is_err() {
            return TableFigures::default();
        }
        rx.await.unwrap_or_default()
    }

    /// This host's figures: its instances' (if it runs any) and its connections'.
    pub async fn stats(&self) -> wire::HostStats {
        host_stats(&self.shared).await
    }

    /// Handshakes refused so far (a key not in `allow`, not the peer dialled, malformed).
    pub fn refused_handshakes(&self) -> u64 {
        self.shared.allow.refused()
    }

    /// Ready connections: id, peer and its role.
    pub async fn connections(&self) -> Vec<(ConnId, PeerId, Role)> {
        let (reply, rx) = oneshot::channel();
        if self.send(Input::Connections { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Opens a session from a client on `conn` to `service`; the client reads what the
    /// service sends from the returned receiver.
    pub async fn open_client_session(
        &self,
        conn: ConnId,
        service: &str,
        caller: &str,
        max_message: u64,
    ) -> Result<ClientStream, CallError> {
        let (_, connection, traffic) = pick(&self.shared, Target::Conn(conn)).await?;
        let header = SessionHeader::Connect {
            service: service.to_string(),
            session: 0,
            caller: caller.to_string(),
            chain: Vec::new(),
            messages: None,
            max_message,
        };
        let (send, frames, accepted) = session::open(&connection, header, &traffic).await?;
        let (sink, outgoing) = session::StreamSink::new(
            send,
            true,
            traffic.clone(),
            Some(accepted.messages.clone()),
            accepted.max_message,
            Arc::from(service),
            accepted.session,
        );
        tokio::spawn(session::write_loop(outgoing));
        let (tx, events) = mpsc::channel(wasmwire_runtime::session::CLIENT_QUEUE);
        tokio::spawn(session::read_loop(
            frames,
            max_message,
            session::Deliver::Client(tx),
            traffic,
        ));
        Ok(ClientStream {
            sink: Some(sink),
            events,
            messages: accepted.messages,
            session: accepted.session,
        })
    }

    /// Closes every connection with a reason (peers learn at once, not at their idle
    /// timeout) and waits up to `within` for the peers to acknowledge.
    pub async fn shutdown(&self, within: Duration) {
        // Close first, then stop the tasks: stopping them finishes the control streams, and
        // a peer must see the close with its reason, not a bare end of stream.
        let reason: &[u8] = match self.shared.role {
            Role::Host => b"host shutting down",
            Role::Client => b"client done",
        };
        self.shared
            .endpoint
            .close(close_codes::SHUTDOWN.into(), reason);
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(within, self.shared.endpoint.wait_idle()).await;
    }
}

/// A client's session with a service on a host.
pub struct ClientStream {
    sink: Option<Arc<session::StreamSink>>,
    /// What the service sends, then `Closed`.
    pub events: mpsc::Receiver<ClientEvent>,
    /// Message kinds the service accepts.
    pub messages: Vec<String>,
    /// The service's session id.
    pub session: u64,
}

impl ClientStream {
    /// Sends a message of a kind the service declared.
    pub fn send(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError> {
        use wasmwire_runtime::session::RemoteSink;
        match &self.sink {
            Some(s) => {
                // A client has no actor to end a batch: each message is handed over at once.
                s.send(kind, &payload)?;
                s.flush();
                Ok(())
            }
            None => Err(CallError::Closed),
        }
    }

    /// Ends the session from this side (what was sent still arrives).
    pub fn close(&mut self) {
        use wasmwire_runtime::session::RemoteSink;
        if let Some(s) = self.sink.take() {
            s.close();
        }
    }
}

/// The quinn transport settings of every wasmwire connection (benchmarks use them for
/// their raw-quinn baselines, so both sides of a ratio run with the same windows).
pub fn transport_config(t: &Transport) -> Result<quinn::TransportConfig, NetError> {
    let mut c = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(t.peer_timeout).map_err(|e| NetError::Quic(e.to_string()))?;
    let window = |n: u64| quinn::VarInt::from_u64(n).map_err(|e| NetError::Quic(e.to_string()));
    c.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(t.keep_alive))
        .stream_receive_window(window(t.stream_window)?)
        .receive_window(window(t.connection_window)?)
        .send_window(t.connection_window)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(quic_stream_limit(t.max_streams)))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Ok(c)
}

/// The QUIC limit on concurrent bidirectional streams a host advertises so that a peer can
/// always open `max_streams` sessions and the control stream.
///
/// Why not `max_streams` itself: quinn announces stream credit (MAX_STREAMS) only once more
/// than an eighth of the limit has been freed since the last announcement, and it neither
/// sends nor heeds STREAMS_BLOCKED. Up to `limit / 8` freed streams can so stay unannounced
/// for as long as no other stream closes, and a peer that opens many sessions right after
/// many closed waits in `open_bi` for credit that never comes — bench (j)'s stall: 1 000
/// sessions reopened under a limit of 1 024 stopped at 935. With this limit the credit a
/// peer can be short of is always above `max_streams + 1`; the acceptor holds peers to
/// `max_streams` itself, and refuses past it with `busy` instead of leaving them waiting.
pub fn quic_stream_limit(max_streams: u32) -> u32 {
    let want = u64::from(max_streams) + 1 + STREAM_SLACK;
    // Smallest q with q - q / 8 >= want.
    let mut q = want + want / 7;
    while q - q / 8 < want {
        q += 1;
    }
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// Streams past `max_streams` a peer may have in flight while the acceptor refuses them.
const STREAM_SLACK: u64 = 16;

/// Most addresses one configured peer entry expands to.
const MAX_ADDRESSES: usize = 64;

async fn resolve(shared: &Shared, addr: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match &shared.resolver {
        Some(r) => r(addr)?.into_iter().take(MAX_ADDRESSES).collect(),
        None => tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .take(MAX_ADDRESSES)
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{addr} resolves to no address"));
    }
    Ok(addrs)
}

async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    expected: Option<PeerId>,
) -> Result<quinn::Connection, String> {
    let name = expected.map_or_else(|| ANY_PEER.to_string(), |p| p.to_string());
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &name)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(shared.handshake_timeout, connecting).await {
        Err(_) => Err("no answer in time".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(c)) => Ok(c),
    }
}

async fn accept_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = stopped.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(shared.handshake_timeout, incoming).await {
                Ok(Ok(connection)) => run_connection(shared, connection, None, None).await,
                // Through the refused-handshake gate: a remote party can cause these at will.
                Ok(Err(e)) => {
                    if let Some(held_back) = identity::HANDSHAKE_LOG.admit() {
                        tracing::warn!(target: "wasmwire::net", %remote, held_back, "handshake failed: {e}")
                    }
                }
                Err(_) => {
                    if let Some(held_back) = identity::HANDSHAKE_LOG.admit() {
                        tracing::warn!(target: "wasmwire::net", %remote, held_back, "handshake did not finish in time")
                    }
                }
            }
        });
    }
}

/// Turns a newcomer away from a full host: `full` (a sample of this host's peers) on the
/// control stream it opens, in place of `hello`, then a short wait for it to read that and
/// close (the caller closes after at most [`REFUSE_LINGER`]).
async fn refuse(shared: &Shared, connection: &quinn::Connection) {
    // All of it within the linger: a refusing place is held for at most that long, even
    // when the broker task is slow to answer.
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        let (reply, rx) = oneshot::channel();
        if shared.input.send(Input::Full { reply }).await.is_err() {
            return;
        }
        let Ok(full) = rx.await else {
            return;
        };
        let mut frame = BytesMut::new();
        wire::put_json(&mut frame, &full);
        let Ok((mut send, _recv)) = connection.accept_bi().await else {
            return;
        };
        if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
            // Done when the newcomer has read it all (or closed the connection).
            let _ = send.stopped().await;
            connection.closed().await;
        }
    })
    .await;
}

/// Runs one connection: the control stream's reader and writer, the acceptor of session
/// streams, and the report of its end.
async fn run_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    dialled: Option<DialTo>,
    started: Option<oneshot::Sender<ConnId>>,
) {
    let remote = connection.remote_address();
    // A dial that ends before the broker hears of the connection is reported as failed, so
    // the peer is dialled again later.
    let failed = |dialled: Option<DialTo>| {
        let input = shared.input.clone();
        async move {
            if let Some(to) = dialled {
                let _ = input.send(Input::DialFailed(to)).await;
            }
        }
    };
    let Some(peer) = identity::peer_of(connection.peer_identity()) else {
        connection.close(close_codes::PROTOCOL.into(), b"no peer identity");
        failed(dialled).await;
        return;
    };
    if peer == shared.me {
        connection.close(close_codes::SELF.into(), b"that is this host");
        tracing::debug!(target: "wasmwire::net", %remote, "dialled this host itself; closed");
        failed(dialled).await;
        return;
    }
    let Some(_slot) = ConnectionSlot::take(&shared) else {
        let max = shared.max_connections;
        tracing::warn!(target: "wasmwire::net", %peer, %remote, "refused: {max} connections open already");
        if dialled.is_none()
            && let Some(_place) = ConnectionSlot::take_of(&shared, true)
        {
            refuse(&shared, &connection).await;
        }
        connection.close(close_codes::PROTOCOL.into(), b"too many connections");
        failed(dialled).await;
        return;
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let stream = if dialled.is_some() {
        connection.open_bi().await.map_err(|e| e.to_string())
    } else {
        match tokio::time::timeout(shared.handshake_timeout, connection.accept_bi()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no control stream in time".into()),
        }
    };
    let (send, recv) = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(target: "wasmwire::net", %peer, %remote, "connection ended before its control stream: {e}");
            connection.close(close_codes::PROTOCOL.into(), b"no control stream");
            failed(dialled).await;
            return;
        }
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let window = Arc::new(tokio::sync::Semaphore::new(shared.window));
    let share = Arc::new(tokio::sync::Semaphore::new(INPUT_SHARE));
    let traffic = Arc::new(Traffic {
        peer: Arc::from(peer.to_string()),
        watchdog: shared.watchdog.clone(),
        ..Traffic::default()
    });
    let connected = Input::Connected {
        conn,
        connection: connection.clone(),
        peer,
        dialled,
        control,
        window: window.clone(),
        traffic: traffic.clone(),
    };
    if shared.input.send(connected).await.is_err() {
        return;
    }
    if let Some(started) = started {
        let _ = started.send(conn);
    }
    tokio::spawn(write_control(send, control_rx, traffic.clone()));
    tokio::spawn(read_control(
        recv,
        conn,
        shared.input.clone(),
        connection.clone(),
        (window, share),
        traffic.clone(),
    ));
    // Sessions are served only once hello has settled who the peer is.
    let streams = tokio::spawn({
        let (shared, connection) = (shared.clone(), connection.clone());
        async move {
            let (reply, rx) = oneshot::channel();
            if shared
                .input
                .send(Input::WaitReady { conn, reply })
                .await
                .is_ok()
                && let Ok(Ok(_)) = rx.await
            {
                accept_sessions(shared, connection, peer, traffic).await;
            }
        }
    });
    let reason = connection.closed().await;
    streams.abort();
    let reason = match reason {
        quinn::ConnectionError::ApplicationClosed(a) => {
            format!("closed by the peer: {}", String::from_utf8_lossy(&a.reason))
        }
        quinn::ConnectionError::LocallyClosed => "closed by this host".into(),
        quinn::ConnectionError::TimedOut => "the peer stopped answering (idle timeout)".into(),
        other => other.to_string(),
    };
    let _ = shared.input.send(Input::Closed { conn, reason }).await;
}

async fn write_control(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<bytes::Bytes>,
    traffic: Arc<Traffic>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut buf = BytesMut::with_capacity(4 << 10);
    while rx.recv_many(&mut batch, 64).await > 0 {
        for frame in batch.drain(..) {
            buf.extend_from_slice(&frame);
        }
        let written = traffic.watchdog.watch(
            watchdog::Wait::ControlBlocked,
            send.write_all(&buf),
            || traffic.peer.to_string(),
            "the control stream",
        );
        if written.await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = send.finish();
}

/// Reads a connection's control stream and hands each message to the broker task.
///
/// A peer's requests are admitted through its window: once `window` requests wait for
/// answers, this reader stops reading until one is answered, so a peer that asks faster
/// than it is answered is slowed by QUIC flow control on its own stream — it cannot fill
/// the broker task's queue, which every connection shares.
///
/// Every message, a request or not, also takes one of the connection's [`INPUT_SHARE`]
/// places in that queue. The place travels with the message and is given back when the
/// message is dropped — handled, or thrown away because its connection is gone — so no
/// path can lose one and leave this reader waiting for ever. A peer that writes as
/// fast as it can (answers, hellos, frames of unknown types — none of which take a window
/// permit) holds at most that many places, and when the queue is full tokio serves the
/// blocked readers in the order they came: each connection gets its turn, round-robin.
async fn read_control(
    recv: quinn::RecvStream,
    conn: ConnId,
    input: mpsc::Sender<Input>,
    connection: quinn::Connection,
    (window, share): (Arc<tokio::sync::Semaphore>, Arc<tokio::sync::Semaphore>),
    traffic: Arc<Traffic>,
) {
    let mut frames = FrameReader::new(recv, wire::MAX_CONTROL_FRAME);
    loop {
        loop {
            let message = match frames.buffered() {
                Ok(None) => break,
                Ok(Some(frame)) => wire::control::decode_control(&frame),
                Err(e) => Err(wire::Undecodable::Malformed(e.to_string())),
            };
            // Everything the broker answers takes a permit; `carry_out` returns it when
            // the answer is written.
            let asks = match &message {
                Ok(m) => !m.is_answer() && !matches!(m, Control::Hello(_) | Control::Full { .. }),
                Err(wire::Undecodable::UnknownType { id, .. }) => id.is_some(),
                Err(wire::Undecodable::Malformed(_)) => false,
            };
            if asks {
                match window.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            let Ok(place) = share.clone().acquire_owned().await else {
                return;
            };
            traffic.control_in.fetch_add(1, Ordering::Relaxed);
            let stop = matches!(message, Err(wire::Undecodable::Malformed(_)));
            let control = Input::Control {
                conn,
                message,
                place,
            };
            if input.send(control).await.is_err() || stop {
                return;
            }
        }
        match frames.fill().await {
            Ok(true) => {}
            // A clean end: the peer is going away. Close normally, without alarm.
            Ok(false) => {
                connection.close(close_codes::SHUTDOWN.into(), b"control stream ended");
                return;
            }
            Err(ReadError::Frame(e)) => {
                let message = Err(wire::Undecodable::Malformed(e.to_string()));
                if let Ok(place) = share.clone().acquire_owned().await {
                    let _ = input
                        .send(Input::Control {
                            conn,
                            message,
                            place,
                        })
                        .await;
                }
                return;
            }
            Err(ReadError::Stream(_)) => return, // the connection is closing; its end is reported once
        }
    }
}

async fn accept_sessions(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    peer: PeerId,
    traffic: Arc<Traffic>,
) {
    loop {
        let Ok((mut send, mut recv)) = connection.accept_bi().await else {
            return;
        };
        let Some(directory) = shared.directory.clone() else {
            // A client serves no sessions.
            let _ = send.reset(quinn::VarInt::from_u32(session::codes::GONE));
            let _ = recv.stop(quinn::VarInt::from_u32(session::codes::GONE));
            continue;
        };
        let held = session::Held::take(traffic.clone());
        if held.count() > shared.max_sessions {
            tokio::spawn(session::refuse(send, recv, held, shared.max_sessions));
            continue;
        }
        tokio::spawn(session::accept(
            send,
            recv,
            peer,
            shared.me,
            directory,
            traffic.clone(),
            held,
        ));
    }
}

/// Waiters on the broker task.
#[derive(Default)]
struct Waiters {
    asks: HashMap<u64, oneshot::Sender<Result<Control, Failure>>>,
    ready: HashMap<ConnId, Vec<oneshot::Sender<Result<PeerId, String>>>>,
    /// Requests and session picks waiting for a host to be found or dialled for them
    /// (see [`Parked`]).
    parked: Vec<(Target, Parked)>,
}

/// A request or session pick whose target is not connected yet: `PEERID/...` for a host
/// that is known (configured or learned) or being looked up in the DHT, or `*/name` for a
/// service no connected host runs, being looked up. It waits while that goes on, goes out
/// once a connection can take it, and fails when the search or the dial does.
enum Parked {
    Ask {
        ask: Ask,
        timeout: Duration,
        since: Instant,
        reply: oneshot::Sender<Result<Control, Failure>>,
    },
    Pick {
        reply: oneshot::Sender<Result<Picked, Failure>>,
    },
}

struct Link {
    connection: quinn::Connection,
    /// Why the broker closed it, if it did (quinn reports only "locally closed").
    closing: Option<String>,
    /// Encoded control frames for the connection's writer task.
    control: mpsc::Sender<bytes::Bytes>,
    peer: PeerId,
    /// The peer's request window: its control reader takes a permit per request, each
    /// answer written gives one back.
    window: Arc<tokio::sync::Semaphore>,
    traffic: Arc<Traffic>,
}

/// The broker task: feeds the broker and carries out what it says.
async fn drive(
    shared: Arc<Shared>,
    mut broker: Broker,
    mut rx: mpsc::Receiver<Input>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut links: HashMap<ConnId, Link> = HashMap::new();
    let mut ready: HashMap<ConnId, Role> = HashMap::new();
    let mut waiters = Waiters::default();
    broker.handle_timeout(Instant::now());
    loop {
        carry_out(&shared, &mut broker, &mut links, &mut ready, &mut waiters);
        let deadline = broker.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped.changed() => return,
            input = rx.recv() => match input {
                None => return,
                Some(i) => handle(&mut broker, &mut links, &mut ready, &mut waiters, i),
            },
            _ = sleep => broker.handle_timeout(Instant::now()),
        }
    }
}

fn handle(
    broker: &mut Broker,
    links: &mut HashMap<ConnId, Link>,
    ready: &mut HashMap<ConnId, Role>,
    waiters: &mut Waiters,
    input: Input,
) {
    let now = Instant::now();
    match input {
        Input::Connected {
            conn,
            connection,
            peer,
            dialled,
            control,
            window,
            traffic,
        } => {
            let remote = connection.remote_address();
            links.insert(
                conn,
                Link {
                    connection,
                    closing: None,
                    control,
                    peer,
                    window,
                    traffic,
                },
            );
            broker.handle_connected(conn, peer, remote, dialled, now);
        }
        Input::Control {
            conn,
            message,
            place,
        } => {
            // The place is given back now: the broker has taken the message.
            drop(place);
            match message {
                Ok(m) => broker.handle_control(conn, m, now),
                Err(e) => broker.handle_undecodable(conn, e, now),
            }
        }
        Input::Closed { conn, mut reason } => {
            if let Some(link) = links.remove(&conn) {
                if let Some(why) = link.closing {
                    // Say why this host closed it ("the peer is full: ..."), not only that
                    // it did.
                    reason = format!("closed by this host: {why}");
                }
                // A reader still working through what it had buffered may wait for a
                // request permit no answer will ever give back: let it end.
                link.window.close();
                match ready.remove(&conn) {
                    Some(Role::Host) => {
                        tracing::info!(target: "wasmwire::net", peer = %link.peer, "peer disconnected: {reason}")
                    }
                    Some(Role::Client) => {
                        tracing::debug!(target: "wasmwire::net", peer = %link.peer, "client disconnected: {reason}")
                    }
                    None => {
                        tracing::info!(target: "wasmwire::net", peer = %link.peer, "connection ended before hello: {reason}")
                    }
                }
            }
            for w in waiters.ready.remove(&conn).unwrap_or_default() {
                let _ = w.send(Err(reason.clone()));
            }
            broker.handle_closed(conn, now);
        }
        Input::DialFailed(to) => broker.handle_dial_failed(&to, now),
        Input::Answer { conn, id, answer } => broker.answer(conn, id, answer),
        Input::Ask {
            target,
            ask,
            timeout,
            reply,
        } if search(broker, &target, now) => {
            let parked = Parked::Ask {
                ask,
                timeout,
                since: now,
                reply,
            };
            waiters.parked.push((target, parked));
        }
        Input::Pick { target, reply } if search(broker, &target, now) => {
            waiters.parked.push((target, Parked::Pick { reply }));
        }
        Input::Ask {
            target,
            ask,
            timeout,
            reply,
        } => match resolve_target(broker, &target) {
            Err(f) => {
                let _ = reply.send(Err(f));
            }
            Ok(conn) => match broker.request(conn, ask, timeout, now) {
                Ok(token) => {
                    waiters.asks.insert(token, reply);
                }
                Err(f) => {
                    let _ = reply.send(Err(f));
                }
            },
        },
        Input::Pick { target, reply } => {
            let r = resolve_target(broker, &target).and_then(|conn| picked(links, conn));
            let _ = reply.send(r);
        }
        Input::WaitReady { conn, reply } => {
            if ready.contains_key(&conn) {
                let peer = links.get(&conn).map(|l| l.peer);
                let _ = reply.send(peer.ok_or_else(|| "the connection closed".to_string()));
            } else if links.contains_key(&conn) {
                waiters.ready.entry(conn).or_default().push(reply);
            } else {
                let _ = reply.send(Err("the connection closed before hello".into()));
            }
        }
        Input::Peers { reply } => {
            let _ = reply.send(broker.peer_list(true, None, 1024));
        }
        Input::Full { reply } => {
            let _ = reply.send(broker.full_answer());
        }
        Input::Connections { reply } => {
            let _ = reply.send(broker.ready_connections());
        }
        Input::Tables { reply } => {
            let _ = reply.send(TableFigures {
                table: broker.table_len(),
                records: broker.records_len(),
                learned: broker.learned_count(),
            });
        }
        Input::Links { reply } => {
            let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let figures = links
                .iter()
                .filter_map(|(conn, l)| {
                    let role = *ready.get(conn)?;
                    let stats = l.connection.stats();
                    Some(LinkFigures {
                        peer: l.peer,
                        role,
                        remote: l.connection.remote_address(),
                        rtt: l.connection.rtt(),
                        bytes_in: stats.udp_rx.bytes,
                        bytes_out: stats.udp_tx.bytes,
                        messages_in: r(&l.traffic.messages_in),
                        messages_out: r(&l.traffic.messages_out),
                        control_in: r(&l.traffic.control_in),
                        control_out: r(&l.traffic.control_out),
                    })
                })
                .collect();
            let _ = reply.send(figures);
        }
    }
}

/// The connection's peer and handles, for opening a session on it.
fn picked(links: &HashMap<ConnId, Link>, conn: ConnId) -> Result<Picked, Failure> {
    links
        .get(&conn)
        .map(|l| (l.peer, l.connection.clone(), l.traffic.clone()))
        .ok_or_else(|| Failure {
            code: ErrorCode::Closed,
            reason: "the connection closed".into(),
            oversize: None,
        })
}

/// Whether `target` is not connected but being searched for (a dial, or a DHT lookup,
/// started here if need be): the request waits for it.
fn search(broker: &mut Broker, target: &Target, now: Instant) -> bool {
    match target {
        Target::Peer(p) => broker.connection_to(p).is_none() && broker.reach(*p, now),
        Target::Any { service, allowed } => {
            let allowed = |p: &PeerId| allowed.as_ref().is_none_or(|a| a.contains(p));
            broker.find_first(service, allowed).is_none() && broker.seek(service, now)
        }
        Target::Conn(_) => false,
    }
}

/// Whether the search for `target` goes on.
fn searching(broker: &Broker, target: &Target) -> bool {
    match target {
        Target::Peer(p) => broker.has_conn(p) || broker.dialling(p),
        Target::Any { service, .. } => broker.seeking(service),
        Target::Conn(_) => false,
    }
}

/// Sends what waited for targets that a connection can take now, and fails what waited
/// for targets no longer searched for. Returns whether it did anything.
fn settle_parked(
    broker: &mut Broker,
    links: &HashMap<ConnId, Link>,
    waiters: &mut Waiters,
) -> bool {
    let now = Instant::now();
    let mut moved = false;
    let mut i = 0;
    while i < waiters.parked.len() {
        // The caller gave up (its own time-out): forget it. A request past its time-out
        // fails as it would on a connection.
        let gone = match &waiters.parked[i].1 {
            Parked::Ask {
                reply,
                timeout,
                since,
                ..
            } => reply.is_closed() || now.saturating_duration_since(*since) >= *timeout,
            Parked::Pick { reply } => reply.is_closed(),
        };
        let resolved = resolve_target(broker, &waiters.parked[i].0);
        if !gone && resolved.is_err() && searching(broker, &waiters.parked[i].0) {
            i += 1;
            continue;
        }
        moved = true;
        let (_, parked) = waiters.parked.swap_remove(i);
        let conn = match resolved {
            Ok(conn) => conn,
            Err(failure) => {
                match parked {
                    Parked::Ask { reply, .. } => drop(reply.send(Err(failure))),
                    Parked::Pick { reply } => drop(reply.send(Err(failure))),
                }
                continue;
            }
        };
        match parked {
            Parked::Ask {
                ask,
                timeout,
                since,
                reply,
            } => {
                let left = timeout.saturating_sub(now.saturating_duration_since(since));
                let sent = if left.is_zero() {
                    Err(Failure::new(ErrorCode::Timeout, "no answer in time"))
                } else {
                    broker.request(conn, ask, left, now)
                };
                match sent {
                    Ok(token) => {
                        waiters.asks.insert(token, reply);
                    }
                    Err(f) => drop(reply.send(Err(f))),
                }
            }
            Parked::Pick { reply } => drop(reply.send(picked(links, conn))),
        }
    }
    moved
}

fn resolve_target(broker: &Broker, target: &Target) -> Result<ConnId, Failure> {
    let unavailable = |reason: String| Failure {
        code: ErrorCode::Unavailable,
        reason,
        oversize: None,
    };
    match target {
        Target::Conn(c) => Ok(*c),
        Target::Peer(p) => broker
            .connection_to(p)
            .ok_or_else(|| {
                unavailable(format!(
                    "peer {p} is not connected and could not be reached (not found in the DHT, or its dial failed)"
                ))
            }),
        Target::Any { service, allowed } => broker
            .find_first(service, |p| allowed.as_ref().is_none_or(|a| a.contains(p)))
            .and_then(|p| broker.connection_to(&p))
            .ok_or_else(|| {
                unavailable(format!(
                    "no peer{} exposes {service} (none connected, none found in the DHT)",
                    if allowed.is_some() {
                        " allowed by `uses`"
                    } else {
                        ""
                    }
                ))
            }),
    }
}

/// Drains the broker's outputs.
fn carry_out(
    shared: &Arc<Shared>,
    broker: &mut Broker,
    links: &mut HashMap<ConnId, Link>,
    ready: &mut HashMap<ConnId, Role>,
    waiters: &mut Waiters,
) {
    loop {
        let mut moved = false;
        while let Some((conn, message)) = broker.poll_transmit() {
            moved = true;
            let Some(link) = links.get(&conn) else {
                continue;
            };
            // Encoded here, once: a frame the peer would refuse as too large never leaves;
            // that one request or answer fails instead of the whole connection.
            let mut frame = BytesMut::new();
            wire::put_json(&mut frame, &message);
            if frame.len() - wire::LEN_BYTES > wire::MAX_CONTROL_FRAME {
                let size = frame.len() - wire::LEN_BYTES;
                let failure = Failure {
                    code: ErrorCode::TooLarge,
                    reason: format!(
                        "a control message of {size} bytes is over the limit of {}",
                        wire::MAX_CONTROL_FRAME
                    ),
                    oversize: Some(Oversize {
                        size: size as u64,
                        limit: wire::MAX_CONTROL_FRAME as u64,
                    }),
                };
                if !message.is_answer() {
                    broker.fail(message.id(), failure, Instant::now());
                    continue;
                }
                frame.clear();
                let error = Control::Error {
                    id: message.id(),
                    code: failure.code,
                    reason: failure.reason,
                    oversize: failure.oversize,
                };
                wire::put_json(&mut frame, &error);
            }
            if message.is_answer() && link.window.available_permits() < shared.window {
                link.window.add_permits(1);
            }
            link.traffic.control_out.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::error::TrySendError::Full(_)) = link.control.try_send(frame.freeze()) {
                broker.close(
                    conn,
                    "the peer does not read its control stream".into(),
                    Instant::now(),
                );
            }
        }
        while let Some(event) = broker.poll_event() {
            moved = true;
            match event {
                Event::Ready { conn, peer, role } => {
                    ready.insert(conn, role);
                    match role {
                        Role::Host => {
                            tracing::info!(target: "wasmwire::net", %peer, "peer connected")
                        }
                        Role::Client => {
                            tracing::debug!(target: "wasmwire::net", %peer, "client connected")
                        }
                    }
                    for w in waiters.ready.remove(&conn).unwrap_or_default() {
                        let _ = w.send(Ok(peer));
                    }
                }
                Event::Incoming {
                    conn,
                    id,
                    peer,
                    request,
                } => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let answer = answer(&shared, id, peer, request).await;
                        let _ = shared.input.send(Input::Answer { conn, id, answer }).await;
                    });
                }
                Event::Answered { token, result } => {
                    if let Some(w) = waiters.asks.remove(&token) {
                        let _ = w.send(result);
                    }
                }
                Event::Release { conn } => {
                    if let Some(link) = links.get_mut(&conn) {
                        let t = &link.traffic;
                        let sessions = t.sessions_in.load(Ordering::Relaxed)
                            + t.sessions_out.load(Ordering::Relaxed);
                        if sessions == 0 {
                            let reason = "released: this host has enough other peers";
                            // (Debug: a busy seed lets connections go every period.)
                            tracing::debug!(target: "wasmwire::net", peer = %link.peer, "{reason}");
                            link.connection
                                .close(close_codes::SHUTDOWN.into(), reason.as_bytes());
                            link.closing = Some(reason.into());
                            broker.close(conn, reason.into(), Instant::now());
                        }
                    }
                }
                Event::Close { conn, reason } => {
                    if let Some(link) = links.get_mut(&conn)
                        && link.closing.is_none()
                    {
                        tracing::warn!(target: "wasmwire::net", peer = %link.peer, "closing connection: {reason}");
                        link.connection
                            .close(close_codes::PROTOCOL.into(), reason.as_bytes());
                        link.closing = Some(reason);
                    }
                }
                Event::Dial(to) => {
                    let shared = shared.clone();
                    tokio::spawn(dial(shared, to));
                }
            }
        }
        // What waits for a host dialled on demand goes once nothing else moves (it may
        // have just become ready, or its dial failed).
        if !moved && (waiters.parked.is_empty() || !settle_parked(broker, links, waiters)) {
            return;
        }
    }
}

async fn dial(shared: Arc<Shared>, to: DialTo) {
    let (addrs, expected) = match &to {
        DialTo::Configured { spec, .. } => (resolve(&shared, &spec.addr).await, spec.expected),
        DialTo::Learned { peer, addr } => (Ok(vec![*addr]), Some(*peer)),
        DialTo::Direct(addr) => (Ok(vec![*addr]), None),
    };
    let mut connected = false;
    match addrs {
        Err(e) => tracing::warn!(target: "wasmwire::net", "cannot dial: {e}"),
        Ok(addrs) => {
            for addr in addrs {
                if shared.own_addrs.lock().is_ok_and(|own| own.contains(&addr)) {
                    continue;
                }
                match connect(&shared, addr, expected).await {
                    Ok(connection)
                        if identity::peer_of(connection.peer_identity()) == Some(shared.me) =>
                    {
                        // One of this host's own addresses: remembered, so that it is not
                        // dialled (and handshaken with) again at every re-dial.
                        connection.close(close_codes::SELF.into(), b"that is this host");
                        tracing::debug!(target: "wasmwire::net", %addr, "an address of this host; skipped from now on");
                        if let Ok(mut own) = shared.own_addrs.lock() {
                            own.insert(addr);
                        }
                    }
                    Ok(connection) => {
                        connected = true;
                        tokio::spawn(run_connection(
                            shared.clone(),
                            connection,
                            Some(to.clone()),
                            None,
                        ));
                    }
                    Err(e) => tracing::info!(target: "wasmwire::net", %addr, "dial failed: {e}"),
                }
            }
        }
    }
    if !connected {
        let _ = shared.input.send(Input::DialFailed(to)).await;
    }
}

async fn host_stats(shared: &Shared) -> wire::HostStats {
    let uptime = shared.started.elapsed();
    let mut stats = match &shared.directory {
        Some(r) => r.host_stats(uptime),
        None => wire::HostStats {
            uptime_ms: uptime.as_millis() as u64,
            tasks: alive_tasks(),
            ..Default::default()
        },
    };
    let (reply, rx) = oneshot::channel();
    let links = match shared.input.send(Input::Links { reply }).await {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut peers: Vec<wire::PeerFigures> = links
        .into_iter()
        .map(|l| wire::PeerFigures {
            peer: l.peer.to_string(),
            role: l.role,
            addr: l.remote.to_string(),
            rtt_us: l.rtt.as_micros() as u64,
            messages_in: l.messages_in,
            messages_out: l.messages_out,
            control_in: l.control_in,
            control_out: l.control_out,
            bytes_in: l.bytes_in,
            bytes_out: l.bytes_out,
        })
        .collect();
    peers.sort_by(|a, b| (&a.role, &a.peer).cmp(&(&b.role, &b.peer)));
    stats.host = shared.me_text.to_string();
    stats.peers = peers;
    stats.refused_handshakes = shared.allow.refused();
    stats.stalls = shared.watchdog.figures();
    stats
}

/// Answers a request that needs this host's services.
async fn answer(
    shared: &Shared,
    id: u64,
    peer: PeerId,
    request: Incoming,
) -> Result<Control, Failure> {
    let Some(directory) = &shared.directory else {
        return Err(failure_of(CallError::Unavailable(
            "a client runs no services".into(),
        )));
    };
    match request {
        Incoming::ListServices => Ok(Control::Services {
            id,
            services: directory.list_services(),
        }),
        Incoming::Stats => Ok(Control::Stats {
            id,
            stats: host_stats(shared).await,
        }),
        Incoming::ListSessions => {
            let (sessions, total) = directory.list_sessions(2048);
            Ok(Control::Sessions {
                id,
                sessions,
                total: total as u64,
            })
        }
        Incoming::Request {
            service,
            event,
            params,
            timeout,
            chain,
            caller,
            session,
        } => {
            // The session counts only if it really is this caller's, from this peer, with
            // this service: a peer cannot pose as another session's other end.
            let session = session.filter(|s| {
                directory.session(*s).is_some_and(|r| {
                    *r.instance == *service
                        && Some(&*r.other) == caller.as_deref()
                        && r.peer == Some(peer)
                })
            });
            let result = request_local(
                shared, directory, &service, &event, params, timeout, chain, session,
            )
            .await;
            result
                .map(|result| Control::Response { id, result })
                .map_err(failure_of)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn request_local(
    shared: &Shared,
    directory: &Arc<Directory>,
    service: &str,
    event: &str,
    params: String,
    timeout: Duration,
    chain: Vec<String>,
    caller: Option<SessionId>,
) -> Result<String, CallError> {
    let target = directory.exposed(service)?;
    let chain = Chain::from_wire(chain, shared.me);
    let rx = directory.post_event(&target, event, params, caller, chain)?;
    reply_within(rx, timeout).await
}

async fn ask_on(
    shared: &Shared,
    target: Target,
    ask: Ask,
    timeout: Duration,
) -> Result<Control, Failure> {
    let (reply, rx) = oneshot::channel();
    let closed = || Failure {
        code: ErrorCode::Closed,
        reason: "the network is shut down".into(),
        oversize: None,
    };
    shared
        .input
        .send(Input::Ask {
            target,
            ask,
            timeout,
            reply,
        })
        .await
        .map_err(|_| closed())?;
    // The broker times its requests out itself; this bound is for one that waits for a
    // host being dialled on demand, whose dial may take longer than the caller waits.
    match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
        Ok(r) => r.map_err(|_| closed())?,
        Err(_) => Err(Failure::new(ErrorCode::Timeout, "no answer in time")),
    }
}

async fn pick(shared: &Shared, target: Target) -> Result<Picked, CallError> {
    let (reply, rx) = oneshot::channel();
    shared
        .input
        .send(Input::Pick { target, reply })
        .await
        .map_err(|_| CallError::Closed)?;
    match rx.await {
        Err(_) => Err(CallError::Closed),
        Ok(r) => r.map_err(call_error_of),
    }
}

/// A seed for the broker's generator (re-dial jitter, hello nonces) from the operating
/// system, so that they differ on every start of the same key (quinn-proto seeds its
/// endpoint the same way unless a test passes one).
fn os_seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No generator in the OS (never seen on Linux): the wall clock still differs
        // between starts.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(bytes)
}

/// The broker's target for a service on another host that the directory routed.
fn target_of(to: RemoteTarget) -> Target {
    match to.peer.id() {
        Some(p) => Target::Peer(p),
        None => Target::Any {
            service: to.service,
            allowed: to.allowed,
        },
    }
}

impl Peers for Net {
    fn id(&self) -> PeerId {
        self.shared.me
    }

    fn request(&self, r: RemoteRequest) -> PeersFuture<String> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let timeout = r.timeout;
            let ask = Ask::Request {
                service: r.target.service.clone(),
                event: r.event,
                params: r.params,
                chain: r.chain,
                caller: Some(r.caller.to_string()),
                session: r.session,
            };
            // The answer comes from the broker task (running on the host's main runtime);
            // this future only waits for it.
            match ask_on(&shared, target_of(r.target), ask, timeout).await {
                Ok(Control::Response { result, .. }) => Ok(result),
                Ok(other) => Err(CallError::Invalid(format!(
                    "the peer answered a request with {}",
                    other.type_name()
                ))),
                Err(f) => Err(call_error_of(f)),
            }
        })
    }

    fn connect(&self, c: RemoteConnect) -> PeersFuture<RemoteSession> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let RemoteConnect {
                target,
                from,
                end,
                timeout,
                chain,
            } = c;
            let service = target.service.clone();
            let open = async {
                let (peer, connection, traffic) = pick(&shared, target_of(target)).await?;
                let header = SessionHeader::Connect {
                    service: service.clone(),
                    session: end,
                    caller: from.name.to_string(),
                    chain,
                    messages: Some(from.class.messages.to_vec()),
                    max_message: from.limits.max_message,
                };
                let (send, frames, accepted) = session::open(&connection, header, &traffic).await?;
                Ok::<_, CallError>((peer, send, frames, accepted, traffic))
            };
            let (peer, send, frames, accepted, traffic) = tokio::time::timeout(timeout, open)
                .await
                .map_err(|_| CallError::Timeout)??;
            let (sink, outgoing) = session::StreamSink::new(
                send,
                true,
                traffic.clone(),
                Some(accepted.messages),
                accepted.max_message,
                Arc::from(service.as_str()),
                accepted.session,
            );
            let max_message = from.limits.max_message;
            // Stream tasks run on the host's main runtime, not on the instance's worker.
            shared.runtime.spawn(session::write_loop(outgoing));
            // Counted while read, so that a connection carrying it is not released.
            traffic.sessions_out.fetch_add(1, Ordering::Relaxed);
            shared.runtime.spawn(async move {
                let read = session::read_loop(
                    frames,
                    max_message,
                    session::Deliver::Instance(Inbound::new(from, end)),
                    traffic.clone(),
                );
                read.await;
                traffic.sessions_out.fetch_sub(1, Ordering::Relaxed);
            });
            Ok(RemoteSession {
                sink,
                peer,
                channel: accepted.channel,
            })
        })
    }
}

/// The wire form of a call error.
pub fn failure_of(e: CallError) -> Failure {
    let (code, reason) = match e {
        CallError::NoSuchSession => (ErrorCode::Invalid, "no such session".to_string()),
        CallError::NoSuchService(s) => (ErrorCode::NoSuchService, s),
        CallError::Denied(s) => (ErrorCode::Denied, s),
        e @ CallError::TooLarge { size, limit } => {
            return Failure {
                code: ErrorCode::TooLarge,
                reason: e.to_string(),
                oversize: Some(Oversize {
                    size: size as u64,
                    limit,
                }),
            };
        }
        CallError::Closed => (ErrorCode::Closed, "closed".into()),
        CallError::Timeout => (ErrorCode::Timeout, "timed out".into()),
        CallError::Busy => (ErrorCode::Busy, "mailbox full".into()),
        CallError::Full(s) => (ErrorCode::Busy, s),
        CallError::Cycle => (ErrorCode::Cycle, "request cycle".into()),
        CallError::Invalid(s) => (ErrorCode::Invalid, s),
        CallError::Unavailable(s) => (ErrorCode::Unavailable, s),
        CallError::Failed(s) => (ErrorCode::Failed, s),
    };
    Failure::new(code, reason)
}

/// The call error a guest or client sees for a wire error. A peer's `busy` is `Full` with
/// the peer's reason (its mailbox, or a limit it names): which one is for people to read,
/// and both say "wait and ask again". A `too-large` keeps the sizes the peer sent (a peer
/// of an older version sends none: then they read 0).
pub fn call_error_of(f: Failure) -> CallError {
    let Failure {
        code,
        reason,
        oversize,
    } = f;
    match code {
        ErrorCode::NoSuchService => CallError::NoSuchService(reason),
        ErrorCode::Denied => CallError::Denied(reason),
        ErrorCode::TooLarge => {
            let o = oversize.unwrap_or(Oversize { size: 0, limit: 0 });
            CallError::TooLarge {
                size: usize::try_from(o.size).unwrap_or(usize::MAX),
                limit: o.limit,
            }
        }
        ErrorCode::Closed => CallError::Closed,
        ErrorCode::Timeout => CallError::Timeout,
        ErrorCode::Busy => CallError::Full(reason),
        ErrorCode::RateLimited => CallError::Busy,
        ErrorCode::Cycle => CallError::Cycle,
        ErrorCode::Invalid | ErrorCode::UnknownType => CallError::Invalid(reason),
        ErrorCode::Unavailable | ErrorCode::Other => CallError::Unavailable(reason),
        ErrorCode::Failed => CallError::Failed(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call error through its wire form and back, as a peer's answer carries it.
    fn across(e: CallError) -> CallError {
        let f = failure_of(e);
        let error = Control::Error {
            id: 9,
            code: f.code,
            reason: f.reason,
            oversize: f.oversize,
        };
        let text = serde_json::to_vec(&error).unwrap();
        match wire::control::decode_control(&text).unwrap() {
            Control::Error {
                code,
                reason,
                oversize,
                ..
            } => call_error_of(Failure {
                code,
                reason,
                oversize,
            }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn call_errors_cross_the_wire_with_their_sizes_and_reasons() {
        let big = CallError::TooLarge {
            size: 70_000,
            limit: 65_536,
        };
        assert_eq!(across(big.clone()), big);
        assert_eq!(
            across(big).to_string(),
            "too large: 70000 bytes, the receiver accepts at most 65536"
        );
        // A peer's busy keeps its reason, whatever it was.
        assert_eq!(
            across(CallError::Busy),
            CallError::Full("mailbox full".into())
        );
        assert_eq!(
            across(CallError::Full(
                "room has its limit of 8 live instances".into()
            )),
            CallError::Full("room has its limit of 8 live instances".into())
        );
        assert_eq!(
            across(CallError::NoSuchService("nothing".into())),
            CallError::NoSuchService("nothing".into())
        );
        // A peer of an older version sends no sizes: still too large, sizes unknown.
        let old = br#"{"type":"error","id":9,"code":"too-large","reason":"too large"}"#;
        let Control::Error {
            code,
            reason,
            oversize,
            ..
        } = wire::control::decode_control(old).unwrap()
        else {
            panic!("not an error");
        };
        assert!(matches!(
            call_error_of(Failure {
                code,
                reason,
                oversize
            }),
            CallError::TooLarge { .. }
        ));
    }
}
