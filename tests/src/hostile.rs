//! The hostile-peer attacks: a connection with a valid identity that writes what the real
//! client never would (truncated and oversized frames, garbage, floods, silent streams, a
//! reader that never reads, bogus peer lists). Used by the hostile-peer suite and the soak.

use crate::client::{WITHIN, raw_connection};
use bytes::BytesMut;
use serde_json::json;
use std::time::Duration;
use wasmwire::wire::{self, Control, ErrorCode, SessionHeader, control, data};

/// Every attack [`attack_once`] knows. Some name services the attacked host should have:
/// `echo` (exposed) and `secret` (not exposed).
pub const ATTACKS: &[&str] = &[
    "truncated-frame",
    "length-past-limit",
    "garbage-json",
    "unknown-type",
    "header-unknown-service",
    "header-unexposed-service",
    "data-before-header",
    "request-flood",
    "query-flood",
    "never-reads",
    "silent-streams",
    "bogus-peers",
];

fn frame_of(value: &serde_json::Value) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_json(&mut out, value);
    out
}

fn hello() -> BytesMut {
    frame_of(&json!({"type": "hello", "role": "client", "major": 1, "minor": 0}))
}

/// Reads control frames until `until` says stop or `within` passes; returns them.
async fn read_controls(
    recv: &mut quinn::RecvStream,
    within: Duration,
    mut until: impl FnMut(&[Control]) -> bool,
) -> Vec<Control> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        while let Ok(Some(f)) = wire::split_frame(&mut buf, wire::MAX_CONTROL_FRAME) {
            if let Ok(c) = control::decode_control(&f) {
                got.push(c);
            }
        }
        if until(&got) {
            return got;
        }
        match tokio::time::timeout_at(deadline, recv.read_chunk(64 << 10, true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            _ => return got,
        }
    }
}

/// The reason the host closed `conn` with (waits up to WITHIN).
async fn close_reason(conn: &quinn::Connection) -> String {
    match tokio::time::timeout(WITHIN, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(a)) => {
            String::from_utf8_lossy(&a.reason).into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// Opens a session stream, writes `first`, and returns what came back: the answering
/// header, or how the stream ended.
async fn session_answer(conn: &quinn::Connection, first: &[u8]) -> String {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return "no stream".into();
    };
    let _ = send.write_all(first).await;
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(f)) = wire::split_frame(&mut buf, wire::MAX_HEADER_FRAME) {
            return match control::decode_header(&f) {
                Ok(SessionHeader::Rejected { code, reason, .. }) => {
                    format!("rejected {code:?}: {reason}")
                }
                other => format!("{other:?}"),
            };
        }
        match tokio::time::timeout(WITHIN, recv.read_chunk(64 << 10, true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            Ok(Err(quinn::ReadError::Reset(code))) => return format!("reset {code}"),
            other => return format!("{other:?}"),
        }
    }
}

fn connect_header(service: &str) -> BytesMut {
    frame_of(
        &json!({"type": "connect", "service": service, "session": 1, "caller": "mallory", "max_message": 65536}),
    )
}

/// One round of `attack` against the host at `addr`; returns what the attacker saw.
pub async fn attack_once(attack: &str, addr: &str) -> String {
    let (endpoint, conn) = raw_connection(addr).await;
    let (mut control, mut control_in) = conn.open_bi().await.unwrap();
    let mut out = hello();
    let seen = match attack {
        "truncated-frame" => {
            out.extend_from_slice(&100u32.to_be_bytes());
            out.extend_from_slice(b"{\"type\":");
            let _ = control.write_all(&out).await;
            let _ = control.finish();
            close_reason(&conn).await
        }
        "length-past-limit" => {
            out.extend_from_slice(&u32::MAX.to_be_bytes());
            let _ = control.write_all(&out).await;
            close_reason(&conn).await
        }
        "garbage-json" => {
            wire::put_frame(&mut out, b"{\"type\": \"request\", \"id\": [[[");
            let _ = control.write_all(&out).await;
            close_reason(&conn).await
        }
        "unknown-type" => {
            out.extend_from_slice(&frame_of(&json!({"type": "frobnicate", "id": 5})));
            let _ = control.write_all(&out).await;
            let got = read_controls(&mut control_in, WITHIN, |g| {
                g.iter().any(|c| matches!(c, Control::Error { .. }))
            })
            .await;
            format!("{:?}", got.last())
        }
        "header-unknown-service" | "header-unexposed-service" | "data-before-header" => {
            let _ = control.write_all(&out).await;
            let first = match attack {
                "header-unknown-service" => connect_header("nothing"),
                "header-unexposed-service" => connect_header("secret"),
                _ => {
                    let mut f = BytesMut::new();
                    data::put_message(&mut f, "echo", b"hello before the header").unwrap();
                    f
                }
            };
            session_answer(&conn, &first).await
        }
        "silent-streams" => {
            // 1 000 session streams that each send one byte of a length prefix, then nothing.
            let _ = control.write_all(&out).await;
            let mut streams = Vec::new();
            for _ in 0..1000 {
                match conn.open_bi().await {
                    Ok((mut s, r)) => {
                        let _ = s.write_all(&[0]).await;
                        streams.push((s, r));
                    }
                    Err(e) => return format!("could not open: {e}"),
                }
            }
            // The host resets each after its header timeout (5 s): wait for the first.
            let (_, r) = &mut streams[0];
            let ended = tokio::time::timeout(WITHIN, r.read_chunk(1024, true)).await;
            format!("{} streams; first: {ended:?}", streams.len())
        }
        "request-flood" => {
            for id in 1..=2000u64 {
                out.extend_from_slice(&frame_of(&json!({"type": "request", "id": id, "service": "echo", "event": "echo", "params": "null", "timeout_ms": 5000})));
            }
            let _ = control.write_all(&out).await;
            let answers = |g: &[Control]| g.iter().filter(|c| c.is_answer()).count();
            let got = read_controls(&mut control_in, WITHIN, |g| answers(g) >= 2000).await;
            let busy = got
                .iter()
                .filter(|c| {
                    matches!(
                        c,
                        Control::Error {
                            code: ErrorCode::Busy,
                            ..
                        }
                    )
                })
                .count();
            let answered = got
                .iter()
                .filter(|c| matches!(c, Control::Response { .. }))
                .count();
            format!("{answered} answered, {busy} busy")
        }
        "query-flood" => {
            for id in 1..=500u64 {
                let q = if id % 2 == 0 {
                    json!({"type": "get-peers", "id": id})
                } else {
                    json!({"type": "find-service", "id": id, "service": "echo"})
                };
                out.extend_from_slice(&frame_of(&q));
            }
            let _ = control.write_all(&out).await;
            let got = read_controls(&mut control_in, WITHIN, |g| {
                g.iter().filter(|c| c.is_answer()).count() >= 500
            })
            .await;
            let limited = got
                .iter()
                .filter(|c| {
                    matches!(
                        c,
                        Control::Error {
                            code: ErrorCode::RateLimited,
                            ..
                        }
                    )
                })
                .count();
            format!("{limited} rate-limited")
        }
        "never-reads" => {
            // A session to echo, 4 MiB of messages sent, the echoes never read.
            let _ = control.write_all(&out).await;
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            let mut f = connect_header("echo");
            let payload = vec![b'x'; 4096];
            for _ in 0..1024 {
                data::put_message(&mut f, "echo", &payload).unwrap();
            }
            let r = tokio::time::timeout(Duration::from_secs(2), send.write_all(&f)).await;
            format!("wrote: {}", r.is_ok())
        }
        "bogus-peers" => {
            // A "host" whose peer-exchange answer is full of peers that do not exist:
            // unreachable, unroutable, unparsable addresses under fresh ids.
            let hello = json!({"type": "hello", "role": "host", "major": 1, "minor": 0,
                               "features": ["peer-exchange"], "listen": "127.0.0.1:9"});
            let _ = control.write_all(&frame_of(&hello)).await;
            let got = read_controls(&mut control_in, WITHIN, |g| {
                g.iter().any(|c| matches!(c, Control::GetPeers { .. }))
            })
            .await;
            let Some(id) = got.iter().find_map(|c| match c {
                Control::GetPeers { id } => Some(*id),
                _ => None,
            }) else {
                return "no get-peers".into();
            };
            let peers: Vec<serde_json::Value> = (0..32)
                .map(|i| {
                    let peer = wasmwire::net::identity::Identity::generate().unwrap().id;
                    let addr =
                        ["127.0.0.1:9", "192.0.2.1:7400", "not an address", "[::1]:1"][i % 4];
                    json!({"peer": peer.to_string(), "addr": addr, "connected": true})
                })
                .collect();
            let answer = json!({"type": "peers", "id": id, "peers": peers});
            let _ = control.write_all(&frame_of(&answer)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            format!("answered get-peers {id} with 32 bogus peers")
        }
        other => panic!("unknown attack {other}"),
    };
    endpoint.close(0u32.into(), b"");
    seen
}

/// A chatty peer: says hello, then writes `frames` control frames of an unknown type and
/// without an id — none takes a request-window permit — as fast as QUIC lets it, reading
/// the host's answers as they come (so it is never closed for not reading). Returns how
/// many answers it read within `within`, and whether its connection was still open.
pub async fn chatter(addr: &str, frames: usize, within: Duration) -> (usize, bool) {
    let (endpoint, conn) = raw_connection(addr).await;
    let (mut control, mut control_in) = conn.open_bi().await.unwrap();
    let mut out = hello();
    let one = frame_of(&json!({"type": "chatter"}));
    for _ in 0..frames {
        out.extend_from_slice(&one);
    }
    let write = async {
        let _ = control.write_all(&out).await;
    };
    let answers = |g: &[Control]| {
        g.iter()
            .filter(|c| {
                matches!(
                    c,
                    Control::Error {
                        code: ErrorCode::UnknownType,
                        ..
                    }
                )
            })
            .count()
    };
    let read = read_controls(&mut control_in, within, |g| answers(g) >= frames);
    let ((), got) = tokio::join!(write, read);
    let open = conn.close_reason().is_none();
    endpoint.close(0u32.into(), b"");
    (answers(&got), open)
}

/// How a lying host answers the DHT queries a host sends it ([`lying_host`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Every `find-node` and `find-service` is answered with 20 hosts that do not exist
    /// (fresh ids at addresses where nothing answers), named as providers too.
    Unreachable,
    /// Every answer names 20 fresh ids whose keys share 12 leading bits with whatever was
    /// asked for (closer than any real host of a small network), all at this liar's own
    /// address, where nothing listens: a peer claiming to be close to every key.
    Closest,
}

/// Fresh ids, none of them a real host's: SplitMix64 from a seed.
struct FakeIds(u64);

impl FakeIds {
    fn next(&mut self) -> wasmwire::wire::PeerId {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        wasmwire::wire::PeerId(bytes)
    }

    /// A fresh id whose key shares at least 12 leading bits with `target` (about 4 096
    /// hashes).
    fn near(&mut self, target: &wasmwire::broker::dht::Key) -> wasmwire::wire::PeerId {
        use wasmwire::broker::dht::Key;
        loop {
            let id = self.next();
            let d = Key::of_peer(&id).distance(target);
            if d[0] == 0 && d[1] < 0x10 {
                return id;
            }
        }
    }
}

/// A host that lies in the DHT: dials `addr`, says hello as a host that listens at
/// `listen` (nothing does), and answers every query the host sends it as `lie` says
/// (`get-peers` with nothing, `ping` with `pong`) until `within` passes or the host
/// closes the connection, counting the lookup queries it answered in `answered`.
pub async fn lying_host(
    addr: &str,
    listen: &str,
    lie: Lie,
    within: Duration,
    answered: &std::sync::atomic::AtomicUsize,
) {
    use wasmwire::broker::dht::Key;
    let (endpoint, conn) = raw_connection(addr).await;
    let (mut control, mut control_in) = conn.open_bi().await.unwrap();
    let hello = json!({"type": "hello", "role": "host", "major": 1, "minor": 0,
                       "features": ["peer-exchange", "find-service"], "listen": listen,
                       "nonce": 7});
    let _ = control.write_all(&frame_of(&hello)).await;
    let mut ids = FakeIds(0x5eed ^ u64::from(std::process::id()));
    let unreachable = ["192.0.2.1:7400", "127.0.0.1:9", "198.51.100.7:7400"];
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        while let Ok(Some(f)) = wire::split_frame(&mut buf, wire::MAX_CONTROL_FRAME) {
            let Ok(asked) = control::decode_control(&f) else {
                continue;
            };
            let target = match &asked {
                Control::FindNode { target, .. } => Key::from_text(target),
                Control::FindService { service, .. } => Some(Key::of_service(service)),
                _ => None,
            };
            let fakes: Vec<serde_json::Value> = match (lie, target) {
                (_, None) => Vec::new(),
                (Lie::Unreachable, Some(_)) => (0..20)
                    .map(|i| json!({"peer": ids.next().to_string(), "addr": unreachable[i % 3], "connected": true}))
                    .collect(),
                (Lie::Closest, Some(t)) => (0..20)
                    .map(|_| json!({"peer": ids.near(&t).to_string(), "addr": listen, "connected": true}))
                    .collect(),
            };
            let answer = match asked {
                Control::FindNode { id, .. } => json!({"type": "nodes", "id": id, "peers": fakes}),
                Control::FindService { id, service } => {
                    let peers = if lie == Lie::Unreachable {
                        fakes.clone()
                    } else {
                        vec![]
                    };
                    json!({"type": "found", "id": id, "service": service, "peers": peers, "closer": fakes})
                }
                Control::GetPeers { id } => json!({"type": "peers", "id": id, "peers": []}),
                Control::Ping { id } => json!({"type": "pong", "id": id}),
                _ => continue,
            };
            if target.is_some() {
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if control.write_all(&frame_of(&answer)).await.is_err() {
                return;
            }
        }
        match tokio::time::timeout_at(deadline, control_in.read_chunk(64 << 10, true)).await {
            Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
            _ => break,
        }
    }
    endpoint.close(0u32.into(), b"");
}

/// A flood of provider records from `identities` fresh hosts (a Sybil attack), each
/// saying hello as a host at an address where nothing listens and sending `add-provider`
/// for `service` and then for 63 other names. Returns how many the host stored and how
/// many it refused (`busy`, `rate-limited`).
pub async fn record_flood(addr: &str, identities: usize, service: &str) -> (usize, usize) {
    let (mut stored, mut refused) = (0, 0);
    for n in 0..identities {
        let (endpoint, conn) = raw_connection(addr).await;
        let Ok((mut control, mut control_in)) = conn.open_bi().await else {
            continue;
        };
        let listen = format!("192.0.2.{}:{}", 1 + n % 250, 7400 + n / 250);
        let mut out = frame_of(
            &json!({"type": "hello", "role": "host", "major": 1, "minor": 0,
                                       "features": ["peer-exchange", "find-service"],
                                       "listen": listen, "nonce": n}),
        );
        for i in 0..64u64 {
            let name = if i == 0 {
                service.to_string()
            } else {
                format!("{service}-{i}")
            };
            out.extend_from_slice(&frame_of(
                &json!({"type": "add-provider", "id": i + 1, "service": name}),
            ));
        }
        let _ = control.write_all(&out).await;
        let got = read_controls(&mut control_in, Duration::from_secs(5), |g| {
            g.iter().filter(|c| c.is_answer()).count() >= 64
        })
        .await;
        stored += got
            .iter()
            .filter(|c| matches!(c, Control::Stored { .. }))
            .count();
        refused += got
            .iter()
            .filter(|c| matches!(c, Control::Error { .. }))
            .count();
        endpoint.close(0u32.into(), b"");
    }
    (stored, refused)
}
