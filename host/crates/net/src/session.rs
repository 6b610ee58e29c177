//! Sessions as QUIC streams: one bidirectional stream per session. The opener writes a
//! `connect` header, the acceptor answers `accepted` or `rejected`, then both sides write
//! data frames until one finishes its side.
//!
//! Each direction is bounded end to end: a session end's `send` encodes the message into
//! its stream's queue at once (full: `busy`), and the sending actor hands the queue to
//! quinn itself when its batch ends — on its own thread, with no task in between. Only
//! when quinn refuses (flow control: the receiver does not read) does a writer task take
//! over, wait for room and write the rest; the receiver reads only while the target
//! mailbox has room. Nothing buffers without bound.

use super::frames::{FrameReader, ReadError};
use super::watchdog::Wait;
use super::{Traffic, failure_of};
use bytes::{Buf, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use wasmwire_broker::Failure;
use wasmwire_runtime::directory::{Directory, Opener};
use wasmwire_runtime::instance::{CallError, Chain, PeerInfo, SessionId};
use wasmwire_runtime::session::{ClientEvent, Inbound, RemoteSink, Route};
use wasmwire_wire::{self as wire, FrameError, SessionHeader, data};

/// Bytes of encoded frames a stream's send queue holds at most; a message that would take
/// it past this gets `busy` (a queue that is empty takes any one message under
/// `max_message`). Past what quinn already buffers (its send window), so only a stream
/// whose receiver does not keep up fills it.
pub const QUEUE_BYTES: usize = 64 << 10;

/// The same bound for an acceptor's session end before its answer is written (what it sends
/// from `on-connect`, a room's history say): none of it can go to quinn yet, so it may
/// queue what an answered stream could have handed to quinn at once (the default stream
/// window) on top.
pub const QUEUE_BYTES_UNANSWERED: usize = QUEUE_BYTES + (1 << 20);

/// A send that leaves at least this many bytes queued hands them to quinn at once, without
/// waiting for the end of the sender's batch.
const WRITE_AT: usize = 16 << 10;

/// How long the acceptor waits for a session header before it resets the stream.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Stream reset and stop codes (QUIC application error codes on a session stream).
pub mod codes {
    /// A frame was malformed, too large, or of an undeclared kind.
    pub const MALFORMED: u32 = 1;
    /// No session header within [`super::HEADER_TIMEOUT`].
    pub const HEADER_TIMEOUT: u32 = 2;
    /// The session end on this side is gone.
    pub const GONE: u32 = 3;
}

/// What the sending side and the writer task share.
struct Shared {
    /// The other end's declared message kinds; `None` for a client, which accepts any.
    kinds: Option<Box<[String]>>,
    stream: Mutex<Stream>,
    /// Wakes the writer task: quinn refused a write, or the end closed.
    wake: Notify,
    traffic: Arc<Traffic>,
}

/// One stream's send side: the quinn stream and the frames it has not taken yet.
struct Stream {
    send: SendStream,
    /// Encoded frames not yet handed to quinn, oldest first.
    queue: BytesMut,
    /// Messages queued since they were last counted in [`Traffic::messages_out`].
    uncounted: u64,
    /// Whether the sender was told to flush this sink (it remembers it until it does).
    flagged: bool,
    /// quinn refused a write: the writer task waits for room and writes the rest. The
    /// sending side does not write meanwhile (its poll would replace the writer's waker).
    blocked: bool,
    /// Closed by this side, or failed: sends get `closed`.
    closing: bool,
    /// The stream may carry data: the acceptor's answer is queued in front of it (an
    /// acceptor's session end can send before the answer is written).
    answered: bool,
}

impl Stream {
    /// Hands quinn as much of the queue as it takes now. `Pending`: it took less than all
    /// (and will wake `cx`). `Err`: the stream is gone; the queue is dropped.
    fn write(&mut self, traffic: &Traffic, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.uncounted > 0 {
            traffic
                .messages_out
                .fetch_add(std::mem::take(&mut self.uncounted), Ordering::Relaxed);
        }
        while !self.queue.is_empty() {
            let polled = std::pin::pin!(self.send.write(&self.queue)).poll(cx);
            match polled {
                Poll::Ready(Ok(n)) => self.queue.advance(n),
                Poll::Ready(Err(_)) => {
                    self.closing = true;
                    self.queue = BytesMut::new();
                    return Poll::Ready(Err(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Shared {
    /// The sending side's write: what quinn takes without waiting; the rest is left to the
    /// writer task, woken for it.
    fn write_now(&self, st: &mut Stream) {
        if st.blocked || !st.answered || st.queue.is_empty() {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match st.write(&self.traffic, &mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(())) => self.wake.notify_one(),
            Poll::Pending => {
                st.blocked = true;
                self.wake.notify_one();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stream> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent stream.
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half of a session whose other end is on another host.
pub(crate) struct StreamSink {
    shared: Arc<Shared>,
    max_message: u64,
    other: Arc<str>,
    other_end: SessionId,
}

/// The writer task's half: driven by [`write_loop`].
pub(crate) struct Outgoing {
    shared: Arc<Shared>,
}

impl StreamSink {
    /// A sink writing to `send` for an other end (`other`, whose own id for the session is
    /// `other_end`) that accepts `kinds` (all kinds if `None`) of at most `max_message`
    /// bytes; [`write_loop`] must drive the returned [`Outgoing`]. An acceptor's sink
    /// (`answered` false) holds what is sent until [`Outgoing::answer`].
    pub fn new(
        send: SendStream,
        answered: bool,
        traffic: Arc<Traffic>,
        kinds: Option<Vec<String>>,
        max_message: u64,
        other: Arc<str>,
        other_end: SessionId,
    ) -> (Arc<StreamSink>, Outgoing) {
        let shared = Arc::new(Shared {
            kinds: kinds.map(Vec::into_boxed_slice),
            stream: Mutex::new(Stream {
                send,
                queue: BytesMut::new(),
                uncounted: 0,
                flagged: false,
                blocked: false,
                closing: false,
                answered,
            }),
            wake: Notify::new(),
            traffic,
        });
        (
            Arc::new(StreamSink {
                shared: shared.clone(),
                max_message,
                other,
                other_end,
            }),
            Outgoing { shared },
        )
    }

    /// The kind as the frame carries it, checked against what the other end declared.
    #[inline]
    fn kind<'a>(&'a self, kind: &'a str) -> Result<&'a str, CallError> {
        match &self.shared.kinds {
            Some(kinds) => match kinds.iter().find(|k| *k == kind) {
                Some(k) => Ok(k),
                None => Err(CallError::Invalid(format!(
                    "{} does not accept message kind {kind:?}; it declares {kinds:?}",
                    self.other
                ))),
            },
            None if kind.len() > data::MAX_KIND => Err(CallError::Invalid(format!(
                "message kind of {} bytes is over {}",
                kind.len(),
                data::MAX_KIND
            ))),
            None => Ok(kind),
        }
    }
}

impl RemoteSink for StreamSink {
    #[inline]
    fn send(&self, kind: &str, payload: &[u8]) -> Result<bool, CallError> {
        let kind = self.kind(kind)?;
        if payload.len() as u64 > self.max_message {
            return Err(CallError::TooLarge {
                size: payload.len(),
                limit: self.max_message,
            });
        }
        let mut st = self.shared.lock();
        if st.closing {
            return Err(CallError::Closed);
        }
        let frame = wire::LEN_BYTES + 1 + kind.len() + payload.len();
        let bound = if st.answered {
            QUEUE_BYTES
        } else {
            QUEUE_BYTES_UNANSWERED
        };
        if !st.queue.is_empty() && st.queue.len() + frame > bound {
            // Full only because nothing was written yet: write, then look again.
            self.shared.write_now(&mut st);
            if st.closing {
                return Err(CallError::Closed);
            }
            if st.queue.len() + frame > bound && !st.queue.is_empty() {
                return Err(CallError::Busy);
            }
        }
        // Kinds and sizes were checked above; a frame that cannot be encoded is not sent.
        data::put_message(&mut st.queue, kind, payload)
            .map_err(|e| CallError::Invalid(e.to_string()))?;
        st.uncounted += 1;
        if st.queue.len() >= WRITE_AT {
            self.shared.write_now(&mut st);
        }
        Ok(!std::mem::replace(&mut st.flagged, true))
    }

    fn flush(&self) {
        let mut st = self.shared.lock();
        st.flagged = false;
        self.shared.write_now(&mut st);
    }

    fn other_end(&self) -> SessionId {
        self.other_end
    }

    fn close(&self) {
        let mut st = self.shared.lock();
        if !st.closing {
            st.closing = true;
            // `notify_one` keeps a permit if the writer is not waiting yet: the close is
            // never missed.
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        // The session end is gone: what it queued is still written, then the stream ends.
        self.close();
    }
}

impl Outgoing {
    /// Queues the acceptor's answer in front of what its session end sent meanwhile and
    /// lets the stream carry it all; a rejection drops that and ends the stream after it.
    /// Written at once as far as quinn takes it; [`write_loop`] writes the rest and
    /// finishes a refused stream.
    pub fn answer(&self, header: &SessionHeader) {
        let mut st = self.shared.lock();
        let mut out = BytesMut::new();
        wire::put_json(&mut out, header);
        if matches!(header, SessionHeader::Accepted { .. }) {
            out.extend_from_slice(&st.queue);
        } else {
            st.closing = true;
            st.uncounted = 0;
        }
        st.queue = out;
        st.answered = true;
        // Written from here, at once; what quinn does not take, the writer task writes.
        self.shared.write_now(&mut st);
        if st.closing {
            self.shared.wake.notify_one();
        }
    }
}

/// The writer task of one stream: each time it is woken, writes what the sending side
/// could not (waiting for quinn's room); once the end is closed and the queue is empty,
/// finishes the stream.
pub(crate) async fn write_loop(out: Outgoing) {
    let shared = out.shared;
    let traffic = shared.traffic.clone();
    loop {
        shared.wake.notified().await;
        let drained = std::future::poll_fn(|cx| {
            let mut st = shared.lock();
            let polled = st.write(&traffic, cx);
            st.blocked = polled.is_pending();
            polled.map(|r| r.map(|()| st.closing))
        });
        let written = traffic.watchdog.watch(
            Wait::SendBlocked,
            drained,
            || traffic.peer.to_string(),
            "a session stream",
        );
        match written.await {
            Ok(false) => {}
            Ok(true) => break,
            Err(()) => return,
        }
    }
    let _ = shared.lock().send.finish();
}

/// Where the messages read from a stream go.
pub(crate) enum Deliver {
    /// A local instance, at its session end.
    Instance(Inbound),
    /// A client in this process (the CLI).
    Client(mpsc::Sender<ClientEvent>),
}

/// Reads a session stream's data frames and delivers them, in order, until the stream
/// ends; then tells the receiving end the session is closed. `buf` holds bytes already
/// read past the header; a payload over `max_message` ends the stream.
pub(crate) async fn read_loop(
    mut frames: FrameReader,
    max_message: u64,
    mut to: Deliver,
    traffic: Arc<Traffic>,
) {
    frames.set_limit(data::frame_limit(max_message));
    if let Err(e) = read_frames(&mut frames, max_message, &mut to, &traffic).await {
        tracing::debug!(target: "wasmwire::net", error = %e, "session stream ended with an error");
        frames.stop(codes::MALFORMED);
    }
    match to {
        // Dropping the end delivers what it holds and tells the instance the session ended.
        Deliver::Instance(inbound) => drop(inbound),
        Deliver::Client(tx) => {
            let _ = tx.send(ClientEvent::Closed).await;
        }
    }
}

/// Why a session stream stopped being read.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Refused(String),
}

async fn read_frames(
    frames: &mut FrameReader,
    max_message: u64,
    to: &mut Deliver,
    traffic: &Traffic,
) -> Result<(), StreamError> {
    // The small payloads of one read are copied into one allocation of exactly their size
    // (one allocation per read, not per message, and never shared with another read's), so
    // what a waiting message holds is what was read with it; see `SLICE_AT`.
    let mut arena = BytesMut::new();
    loop {
        if matches!(to, Deliver::Instance(_)) {
            arena = BytesMut::with_capacity(frames.buffered_below(SLICE_AT));
        }
        let mut read = Counted(&traffic.messages_in, 0);
        while let Some(frame) = frames.buffered()? {
            let (kind, payload) = data::parse_message(&frame)?;
            read.1 += 1;
            if payload.len() as u64 > max_message {
                return Err(StreamError::Refused(format!(
                    "a payload of {} bytes is over max_message ({max_message})",
                    payload.len()
                )));
            }
            match to {
                Deliver::Instance(inbound) => {
                    let kind = inbound
                        .admit(kind, payload.len())
                        .map_err(|e| StreamError::Refused(e.to_string()))?;
                    reserve(inbound, traffic).await?;
                    // A large payload is a slice of the frame (which shares `buf`'s memory),
                    // not a copy; see `SLICE_AT`.
                    inbound.push(
                        kind,
                        if payload.len() >= SLICE_AT {
                            frame.slice_ref(payload)
                        } else {
                            arena.extend_from_slice(payload);
                            arena.split().freeze()
                        },
                    );
                }
                Deliver::Client(tx) => {
                    let event = ClientEvent::Message {
                        kind: kind.to_string(),
                        payload: payload.to_vec(),
                    };
                    if tx.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        drop(read);
        if let Deliver::Instance(inbound) = to {
            inbound.flush();
        }
        if !frames.fill().await? {
            return Ok(());
        }
    }
}

/// Frames read, added to a connection's count when a read's batch is done, however it ends
/// (one atomic add per read, not per frame).
struct Counted<'a>(&'a std::sync::atomic::AtomicU64, u64);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, Ordering::Relaxed);
    }
}

/// Payloads at least this large are delivered as a slice of the frame they came in; smaller
/// ones are copied (into one allocation per read), so that a small message waiting in a
/// mailbox does not hold its stream's whole read buffer (64 KiB or more) — a thousand
/// sessions each with one message waiting would hold that much each.
const SLICE_AT: usize = 16 << 10;

/// Takes a place in the instance's mailbox, waiting while it is full: while this waits,
/// nothing more is read from the stream, so QUIC flow control holds the sender back.
async fn reserve(to: &mut Inbound, traffic: &Traffic) -> Result<(), StreamError> {
    let mut pause = Duration::from_micros(200);
    // When the mailbox was first found full, and whether the watchdog was told.
    let mut full: Option<(std::time::Instant, bool)> = None;
    let what = |to: &Inbound| format!("a session stream into {}", to.instance().name);
    loop {
        match to.reserve() {
            Ok(()) => {
                if let Some((since, true)) = full {
                    traffic
                        .watchdog
                        .moving(Wait::MailboxFull, &traffic.peer, &what(to), since);
                }
                return Ok(());
            }
            Err(CallError::Busy) => {
                let (since, told) = full.get_or_insert_with(|| (std::time::Instant::now(), false));
                if !*told && since.elapsed() >= traffic.watchdog.after() {
                    traffic
                        .watchdog
                        .stalled(Wait::MailboxFull, &traffic.peer, &what(to), *since);
                    *told = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(StreamError::Refused(e.to_string())),
        }
    }
}

/// Reads a session stream's header frame (at most [`wire::MAX_HEADER_FRAME`] bytes); what
/// comes after it stays in `frames`.
pub(crate) async fn read_header(frames: &mut FrameReader) -> Result<SessionHeader, String> {
    match frames.read_frame().await {
        Ok(Some(frame)) => wire::control::decode_header(&frame).map_err(|e| e.to_string()),
        Ok(None) => Err("stream ended before its header".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn write_header(send: &mut SendStream, header: &SessionHeader) -> Result<(), String> {
    let mut out = BytesMut::new();
    wire::put_json(&mut out, header);
    send.write_all(&out).await.map_err(|e| e.to_string())
}

/// What the acceptor said yes with.
pub(crate) struct Accepted {
    /// The acceptor's session id.
    pub session: u64,
    /// Kinds the acceptor accepts.
    pub messages: Vec<String>,
    /// Largest payload the acceptor accepts.
    pub max_message: u64,
    /// The acceptor's channel.
    pub channel: u16,
}

/// Opens a session stream on `connection`: writes `header`, waits for the answer.
pub(crate) async fn open(
    connection: &quinn::Connection,
    header: SessionHeader,
    traffic: &Traffic,
) -> Result<(SendStream, FrameReader, Accepted), CallError> {
    let stream = traffic.watchdog.watch(
        Wait::StreamCredit,
        connection.open_bi(),
        || traffic.peer.to_string(),
        "opening a session",
    );
    let (mut send, recv) = stream
        .await
        .map_err(|e| CallError::Unavailable(format!("cannot open a stream: {e}")))?;
    write_header(&mut send, &header)
        .await
        .map_err(|e| CallError::Unavailable(format!("cannot write the session header: {e}")))?;
    let mut frames = FrameReader::new(recv, wire::MAX_HEADER_FRAME);
    match read_header(&mut frames).await {
        Ok(SessionHeader::Accepted { messages, .. })
            if messages.len() > MAX_KINDS || messages.iter().any(|k| k.len() > data::MAX_KIND) =>
        {
            Err(CallError::Invalid(format!(
                "the acceptor declares more than {MAX_KINDS} kinds or one over {} bytes",
                data::MAX_KIND
            )))
        }
        Ok(SessionHeader::Accepted {
            session,
            messages,
            max_message,
            channel,
        }) => Ok((
            send,
            frames,
            Accepted {
                session,
                messages,
                max_message,
                channel,
            },
        )),
        Ok(SessionHeader::Rejected {
            code,
            reason,
            oversize,
        }) => Err(super::call_error_of(Failure {
            code,
            reason,
            oversize,
        })),
        Ok(SessionHeader::Connect { .. }) => Err(CallError::Invalid(
            "the peer answered a connect with a connect".into(),
        )),
        Err(e) => Err(CallError::Closed).inspect_err(|_| {
            tracing::debug!(target: "wasmwire::net", error = %e, "no session answer");
        }),
    }
}

/// Most kinds an opener may declare, and longest caller name, in a `connect` header.
const MAX_KINDS: usize = 256;
const MAX_CALLER: usize = 128;

/// One session stream a peer has open to this host, counted in its connection's
/// `sessions_in` for as long as this lives.
pub(crate) struct Held(Arc<Traffic>);

impl Held {
    /// Counts one more stream on the connection of `traffic`.
    pub fn take(traffic: Arc<Traffic>) -> Held {
        traffic.sessions_in.fetch_add(1, Ordering::Relaxed);
        Held(traffic)
    }

    /// Streams the peer has open now, this one included.
    pub fn count(&self) -> u64 {
        self.0.sessions_in.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.sessions_in.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refuses a session stream opened past the host's `max_streams`: `busy`, with the limit,
/// at once (the opener is told, not left waiting).
pub(crate) async fn refuse(mut send: SendStream, recv: RecvStream, held: Held, max: u64) {
    let e = CallError::Full(format!(
        "this peer already has {max} sessions open to this host (its max_streams)"
    ));
    reject(&mut send, e).await;
    drop(recv);
    drop(held);
}

/// Serves a session stream a peer opened: reads its header (resetting the stream if none
/// comes in time), opens the session with the exposed service it names, answers, then
/// moves messages both ways.
pub(crate) async fn accept(
    mut send: SendStream,
    recv: RecvStream,
    peer: wire::PeerId,
    me: wire::PeerId,
    directory: Arc<Directory>,
    traffic: Arc<Traffic>,
    held: Held,
) {
    // Counted until both halves of the stream are done, whichever way this returns.
    let _held = held;
    let mut frames = FrameReader::new(recv, wire::MAX_HEADER_FRAME);
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut frames)).await {
        Err(_) => {
            tracing::info!(target: "wasmwire::net", %peer, "session stream reset: no header within {HEADER_TIMEOUT:?}");
            let _ = send.reset(VarInt::from_u32(codes::HEADER_TIMEOUT));
            frames.stop(codes::HEADER_TIMEOUT);
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(target: "wasmwire::net", %peer, "session stream reset: {e}");
            let _ = send.reset(VarInt::from_u32(codes::MALFORMED));
            frames.stop(codes::MALFORMED);
            return;
        }
        Ok(Ok(h)) => h,
    };
    let SessionHeader::Connect {
        service,
        session: opener_end,
        caller,
        chain,
        messages,
        max_message,
    } = header
    else {
        reject(
            &mut send,
            CallError::Invalid("a session must start with connect".into()),
        )
        .await;
        return;
    };
    if caller.is_empty()
        || caller.len() > MAX_CALLER
        || messages
            .as_ref()
            .is_some_and(|m| m.len() > MAX_KINDS || m.iter().any(|k| k.len() > data::MAX_KIND))
    {
        let e = CallError::Invalid(format!(
            "the caller name must be 1 to {MAX_CALLER} bytes and at most {MAX_KINDS} kinds of at most {} bytes",
            data::MAX_KIND
        ));
        reject(&mut send, e).await;
        return;
    }
    let instance = match directory.exposed(&service) {
        Ok(i) => i,
        Err(e) => {
            reject(&mut send, e).await;
            return;
        }
    };
    let chain = Chain::from_wire(chain, me);
    if chain.contains(&service) {
        reject(&mut send, CallError::Cycle).await;
        return;
    }
    let (sink, outgoing) = StreamSink::new(
        send,
        false,
        traffic.clone(),
        messages,
        max_message,
        Arc::from(caller.as_str()),
        opener_end,
    );
    let opener = Opener {
        from: PeerInfo {
            service: Arc::from(caller.as_str()),
            peer: Some(Arc::new(peer)),
        },
        back: Route::Remote(sink),
        chain,
    };
    let timeout = instance.limits.request_timeout;
    let answer = match directory.open_session(&instance, opener) {
        Ok(pending) => pending.accepted(timeout).await,
        Err(e) => Err(e),
    };
    let (instance, end) = match answer {
        Ok(accepted) => accepted,
        Err(e) => {
            let f = failure_of(e);
            outgoing.answer(&SessionHeader::Rejected {
                code: f.code,
                reason: f.reason,
                oversize: f.oversize,
            });
            write_loop(outgoing).await;
            return;
        }
    };
    let accepted = SessionHeader::Accepted {
        session: end,
        messages: instance.class.messages.to_vec(),
        max_message: instance.limits.max_message,
        channel: instance.channel,
    };
    let max = instance.limits.max_message;
    // From here on, dropping this end tells the instance the session ended.
    let inbound = Inbound::new(instance, end);
    outgoing.answer(&accepted);
    let writer = tokio::spawn(write_loop(outgoing));
    let to = Deliver::Instance(inbound);
    read_loop(frames, max, to, traffic).await;
    // The stream is the peer's to count against `max_streams` until both halves are done.
    let _ = writer.await;
}

async fn reject(send: &mut SendStream, e: CallError) {
    let f = failure_of(e);
    let _ = write_header(
        send,
        &SessionHeader::Rejected {
            code: f.code,
            reason: f.reason,
            oversize: f.oversize,
        },
    )
    .await;
    let _ = send.finish();
}
