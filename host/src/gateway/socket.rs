//! A WebSocket that is a session: each frame one message, its kind in a small envelope
//! (`docs/gateway.md`), `on-connect` when it opens and `on-disconnect` when it closes, as
//! for any session.
//!
//! Both directions are bounded. Into the service: a frame is read only once the mailbox
//! has a place for its message (while it is full, nothing more is read from the socket,
//! so TCP flow control holds the sender back). Out of the service: its messages wait in
//! the client queue ([`CLIENT_QUEUE`] of them, each at most `max_message`) and are
//! written as the socket takes them; when the browser stops reading, the queue fills and
//! the service's `send` returns `busy`.
//!
//! [`CLIENT_QUEUE`]: wasmwire_runtime::session::CLIENT_QUEUE

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use wasmwire_runtime::instance::CallError;
use wasmwire_runtime::session::{ClientEvent, Inbound};

/// How long closing a socket may take (the close frame written and flushed, the client's
/// answer read) before the connection is dropped without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages written between two flushes (and two looks at a close request).
const BATCH: usize = 256;

/// How often the gateway pings a socket (browsers answer pings on their own).
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// A socket that sends nothing — no message, no pong — for this long is closed: the
/// client is gone (a half-open connection) or stuck.
pub const SILENT_FOR: Duration = Duration::from_secs(75);

/// The first frame the gateway sends: the session is open.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The service's end of the session (as `list-sessions` shows it).
    pub session: u64,
    /// The service, as asked (`room/42`).
    pub service: String,
    /// Its channel.
    pub channel: u16,
    /// The message kinds it accepts.
    pub messages: Vec<String>,
    /// The largest payload it accepts.
    pub max_message: u64,
}

/// A text frame's envelope: a message whose payload is UTF-8 text.
#[derive(Debug, Serialize, Deserialize)]
struct TextEnvelope<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Cow<'a, str>,
}

/// What a frame from the client carries.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// A message.
    Message(Cow<'a, str>, Bytes),
    /// Nothing for the service (a ping, a pong).
    Nothing,
    /// The client closed.
    Close,
}

/// Reads a client frame: a text frame is `{"kind": K, "payload": TEXT}`, a binary frame is
/// one byte of kind length, the kind, then the payload as raw bytes.
pub fn decode(frame: &Message) -> Result<ClientFrame<'_>, String> {
    match frame {
        Message::Text(text) => {
            let env: TextEnvelope<'_> = serde_json::from_str(text.as_str()).map_err(|e| {
                format!("a text frame must be {{\"kind\": ..., \"payload\": ...}}: {e}")
            })?;
            let payload = Bytes::copy_from_slice(env.payload.as_bytes());
            Ok(ClientFrame::Message(env.kind, payload))
        }
        Message::Binary(data) => {
            let len = *data.first().ok_or("an empty binary frame")? as usize;
            let kind = data
                .get(1..1 + len)
                .ok_or("a binary frame shorter than its kind")?;
            let kind = std::str::from_utf8(kind).map_err(|_| "a kind that is not UTF-8")?;
            Ok(ClientFrame::Message(
                Cow::Borrowed(kind),
                data.slice(1 + len..),
            ))
        }
        Message::Close(_) => Ok(ClientFrame::Close),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(ClientFrame::Nothing),
    }
}

/// A service's message as a frame: text when the payload is UTF-8, binary otherwise.
pub fn encode(kind: &str, payload: Vec<u8>) -> Message {
    match String::from_utf8(payload) {
        Ok(text) => {
            let env = TextEnvelope {
                kind: Cow::Borrowed(kind),
                payload: Cow::Owned(text),
            };
            // Serializing strings cannot fail.
            Message::text(serde_json::to_string(&env).unwrap_or_default())
        }
        Err(e) => {
            let payload = e.into_bytes();
            let mut frame = Vec::with_capacity(1 + kind.len() + payload.len());
            // Kinds are at most 64 bytes (the WIT contract).
            frame.push(kind.len().min(255) as u8);
            frame.extend_from_slice(&kind.as_bytes()[..kind.len().min(255)]);
            frame.extend_from_slice(&payload);
            Message::binary(frame)
        }
    }
}

/// The WebSocket settings of a session whose service accepts `max_message` bytes: a frame
/// may carry that much payload and no more — escaped as a JSON string, six bytes for each
/// control character at worst (`\u001f`) — and what waits to be written is bounded too.
pub fn config(max_message: u64) -> WebSocketConfig {
    let most = (max_message as usize)
        .saturating_mul(6)
        .saturating_add(4096);
    WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(16 << 10)
        .max_write_buffer_size(most.saturating_add(64 << 10))
        .max_message_size(Some(most))
        .max_frame_size(Some(most))
}

/// A close frame with a reason (cut to the 123 bytes a close frame has room for).
fn close(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    }
}

/// Runs a session over an upgraded connection until either end closes it, the client
/// falls silent for [`SILENT_FOR`], or the gateway stops (`stopped`).
pub async fn run(
    ws: WebSocketStream<TokioIo<Upgraded>>,
    mut inbound: Inbound,
    events: mpsc::Receiver<ClientEvent>,
    accepted: Accepted,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = oneshot::channel();
    let hello = Message::text(serde_json::json!({ "accepted": accepted }).to_string());
    let mut writer = tokio::spawn(write_loop(sink, events, hello, close_rx));
    let reason = tokio::select! {
        r = read_loop(&mut stream, &mut inbound) => Some(r),
        // The writer ended first: the service closed the session (its close frame is
        // sent), or the socket could not be written. Either way the session is over.
        _ = &mut writer => None,
        _ = stopped.changed() => Some(Some(close(CloseCode::Away, "the host is stopping"))),
    };
    // The close to send is handed to the writer before the service hears of the end, so
    // that the writer, seeing the service's side close, sends this reason and not its own.
    let writer_done = reason.is_none();
    match reason {
        Some(Some(frame)) => {
            let _ = close_tx.send(frame);
        }
        Some(None) => drop(close_tx),
        None => {}
    }
    // The service sees `on-disconnect` now, whatever the socket is doing.
    drop(inbound);
    if writer_done {
        // Give the client a moment to answer the close frame, then let it go.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        return;
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Reads frames into the session until the client closes (`None`) or sends what must close
/// it (the close frame to send).
async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocketStream<TokioIo<Upgraded>>>,
    inbound: &mut Inbound,
) -> Option<CloseFrame> {
    loop {
        let first = match tokio::time::timeout(SILENT_FOR, stream.next()).await {
            Ok(next) => next?,
            Err(_) => {
                let why = format!("nothing from the client for {}s", SILENT_FOR.as_secs());
                return Some(close(CloseCode::Away, &why));
            }
        };
        if let Err(end) = take(first, inbound).await {
            return end;
        }
        // What has already arrived goes to the service as one batch.
        while let Some(Some(next)) = stream.next().now_or_never() {
            if let Err(end) = take(next, inbound).await {
                inbound.flush();
                return end;
            }
        }
        inbound.flush();
    }
}

/// Delivers one frame; `Err` ends the session (with a close frame to send, or none).
async fn take(
    frame: Result<Message, tungstenite::Error>,
    inbound: &mut Inbound,
) -> Result<(), Option<CloseFrame>> {
    let frame = match frame {
        Ok(f) => f,
        Err(tungstenite::Error::Capacity(e)) => {
            return Err(Some(close(CloseCode::Size, &format!("too large: {e}"))));
        }
        Err(tungstenite::Error::Protocol(e)) => {
            return Err(Some(close(CloseCode::Protocol, &e.to_string())));
        }
        Err(tungstenite::Error::Utf8(e)) => {
            let why = format!("a text frame that is not UTF-8: {e}");
            return Err(Some(close(CloseCode::Invalid, &why)));
        }
        Err(_) => return Err(None),
    };
    let (kind, payload) = match decode(&frame) {
        Ok(ClientFrame::Message(kind, payload)) => (kind, payload),
        Ok(ClientFrame::Nothing) => return Ok(()),
        Ok(ClientFrame::Close) => return Err(None),
        Err(e) => return Err(Some(close(CloseCode::Invalid, &e))),
    };
    let kind = match inbound.admit(&kind, payload.len()) {
        Ok(k) => k,
        Err(e @ CallError::TooLarge { .. }) => {
            return Err(Some(close(CloseCode::Size, &e.to_string())));
        }
        Err(e) => return Err(Some(close(CloseCode::Policy, &e.to_string()))),
    };
    reserve(inbound).await?;
    inbound.push(kind, payload);
    Ok(())
}

/// Takes a place in the mailbox, waiting while it is full — and reading nothing more
/// from the socket meanwhile, which is the back-pressure. The wait backs off to 20 ms: the
/// mailbox says nothing when room returns.
async fn reserve(inbound: &mut Inbound) -> Result<(), Option<CloseFrame>> {
    let mut pause = Duration::from_micros(200);
    loop {
        match inbound.reserve() {
            Ok(()) => return Ok(()),
            Err(CallError::Busy) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(Some(close(CloseCode::Away, &e.to_string()))),
        }
    }
}

type Sink = futures_util::stream::SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>;

/// Writes the service's messages to the socket, a batch per flush, until the service
/// closes the session or the reader asks for a close.
async fn write_loop(
    mut sink: Sink,
    mut events: mpsc::Receiver<ClientEvent>,
    hello: Message,
    mut close_rx: oneshot::Receiver<CloseFrame>,
) {
    if sink.send(hello).await.is_err() {
        return;
    }
    let start = tokio::time::Instant::now() + PING_EVERY;
    let mut ping = tokio::time::interval_at(start, PING_EVERY);
    loop {
        let event = tokio::select! {
            biased;
            frame = &mut close_rx => {
                // The reader ended: with a reason to give, or because the client closed
                // (then the reply to its close frame is already queued: flush it).
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    match frame {
                        Ok(frame) => sink.send(Message::Close(Some(frame))).await,
                        Err(_) => sink.flush().await,
                    }
                })
                .await;
                return;
            }
            e = events.recv() => e,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut next = event;
        // A batch is cut at BATCH messages, so that a service that sends without pause
        // cannot keep the writer from a close it was asked for.
        let mut batch = 0;
        loop {
            match next {
                Some(ClientEvent::Message { kind, payload }) => {
                    if sink.feed(encode(&kind, payload)).await.is_err() {
                        return;
                    }
                }
                Some(ClientEvent::Closed) | None => {
                    // A close the reader asked for (its reason) wins over the service's.
                    let frame = close_rx.try_recv().unwrap_or_else(|_| {
                        close(CloseCode::Normal, "the service closed the session")
                    });
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                            .await;
                    return;
                }
            }
            batch += 1;
            if batch == BATCH {
                break;
            }
            match events.try_recv() {
                Ok(e) => next = Some(e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => next = None,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let m = encode("said", b"{\"text\":\"hi\"}".to_vec());
        assert!(matches!(m, Message::Text(_)));
        assert_eq!(
            decode(&m).unwrap(),
            ClientFrame::Message("said".into(), Bytes::from_static(b"{\"text\":\"hi\"}"))
        );
        let b = encode("blob", vec![0xff, 0, 1]);
        assert!(matches!(b, Message::Binary(_)));
        assert_eq!(
            decode(&b).unwrap(),
            ClientFrame::Message("blob".into(), Bytes::from_static(&[0xff, 0, 1]))
        );
        let no_payload = Message::text(r#"{"kind":"ping"}"#);
        assert_eq!(
            decode(&no_payload).unwrap(),
            ClientFrame::Message("ping".into(), Bytes::new())
        );
    }

    #[test]
    fn bad_frames_say_why() {
        for bad in [
            Message::text("not json"),
            Message::text(r#"{"payload":"x"}"#),
            Message::text(
                r#"{"kind":"a","payload":"x","more":1}"#.replace(",\"more\":1", ",\"kind\":2"),
            ),
            Message::binary(Vec::<u8>::new()),
            Message::binary(vec![5, b'a']),
            Message::binary(vec![1, 0xff]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(100);
        assert!(close(CloseCode::Policy, &long).reason.len() <= 123);
    }
}
