//! The wire codec: how bytes on a QUIC stream become frames, control messages and session
//! messages, and back. Pure functions over buffers — no sockets, no clock — so that every
//! decoder can be unit-tested and fuzzed on its own. `docs/protocol.md` is the reference;
//! its examples are decoded by this module's tests.
//!
//! Every stream carries frames `[u32 length, big-endian][body]`. Decoding is two steps, as in
//! mini-redis: [`check`] says whether a whole frame is buffered (an incomplete frame is not an
//! error) and rejects a length past the stream's limit *before* anything is buffered for it;
//! [`split_frame`] then takes the frame off the buffer.
//! - The control stream (channel 0) carries JSON [`Control`] messages.
//! - A session stream starts with one JSON [`SessionHeader`] each way, then binary
//!   [`data`] frames.

pub mod addr;
pub mod control;
pub mod data;
pub mod peer_id;

pub use addr::{BadAddr, ChainEntry, LocalName, PeerSel, ServiceAddr, chain_has};
pub use peer_id::{BadPeerId, PeerId};

pub use control::{
    Control, ErrorCode, Hello, HostStats, InstanceFigures, KeyedEntry, Oversize, PeerEntry,
    PeerFigures, Role, ServiceEntry, ServiceState, SessionEntry, SessionHeader, StallFigures,
    Undecodable,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The ALPN protocol id: the protocol's major version. A peer that offers another major
/// version fails the TLS handshake (`no_application_protocol`).
pub const ALPN: &[u8] = b"wasmwire/1";

/// Major version of the protocol (in the ALPN).
pub const MAJOR: u32 = 1;

/// Minor version this build speaks; peers use the lower of both.
pub const MINOR: u32 = 0;

/// Optional features this build supports; peers use the ones both list.
pub const FEATURES: &[&str] = &["peer-exchange", "find-service"];

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// Largest control frame body: a `request` carries its parameters (up to 1 MiB) and a
/// little JSON around them.
pub const MAX_CONTROL_FRAME: usize = (1 << 20) + (64 << 10);

/// Largest session header frame body.
pub const MAX_HEADER_FRAME: usize = 64 << 10;

/// Why bytes could not be decoded. Each ends the stream (or, on the control stream, the
/// connection) with this text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix past the stream's limit.
    #[error("frame of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit on this stream.
        limit: usize,
    },
    /// A frame whose body is not what the stream expects.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes buffered.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
}

/// Whether `buf` starts with a whole frame: `Ok(Some(body_len))` if so, `Ok(None)` if more
/// bytes are needed, an error if the announced length is over `limit`.
#[inline]
pub fn check(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    if buf.len() - LEN_BYTES < len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Takes the next whole frame's body off the front of `buf`, if one is there.
#[inline]
pub fn split_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, FrameError> {
    match check(buf, limit)? {
        None => Ok(None),
        Some(len) => {
            buf.advance(LEN_BYTES);
            Ok(Some(buf.split_to(len).freeze()))
        }
    }
}

/// The bytes of the bodies under `below` bytes of the whole frames at the start of `buf`
/// (lengths only: the frames are not checked).
pub fn whole_frames_below(buf: &[u8], below: usize) -> usize {
    let (mut at, mut sum) = (0, 0);
    while let Some(p) = buf.get(at..at + LEN_BYTES) {
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if buf.len() - at - LEN_BYTES < len {
            break;
        }
        if len < below {
            sum += len;
        }
        at += LEN_BYTES + len;
    }
    sum
}

/// What is left in `buf` when its stream ended: nothing, or a truncation error.
pub fn at_end(buf: &[u8]) -> Result<(), FrameError> {
    if buf.is_empty() {
        return Ok(());
    }
    let need = match buf.get(..LEN_BYTES) {
        Some(p) => LEN_BYTES + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
        None => LEN_BYTES,
    };
    Err(FrameError::Truncated {
        have: buf.len(),
        need,
    })
}

/// Appends one frame holding `body`.
pub fn put_frame(out: &mut BytesMut, body: &[u8]) {
    out.reserve(LEN_BYTES + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(body);
}

/// Appends one frame holding a JSON value (a control message or a session header).
pub fn put_json<T: serde::Serialize>(out: &mut BytesMut, value: &T) {
    let start = out.len();
    out.put_u32(0);
    // Writing JSON into a Vec-backed writer cannot fail for these plain types.
    let mut w = out.writer();
    let _ = serde_json::to_writer(&mut w, value);
    let out = w.into_inner();
    let len = (out.len() - start - LEN_BYTES) as u32;
    out[start..start + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_waits_for_whole_frames_and_rejects_long_prefixes_early() {
        assert_eq!(check(&[], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0, 3, b'a'], 10), Ok(None));
        assert_eq!(check(&[0, 0, 0, 3, b'a', b'b', b'c'], 10), Ok(Some(3)));
        // Only the prefix is needed to refuse: nothing past it is buffered.
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0xff], 10),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                limit: 10
            })
        );
    }

    #[test]
    fn whole_frames_below_counts_small_whole_bodies_only() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, b"one");
        put_frame(&mut buf, &[7; 40]);
        put_frame(&mut buf, b"three");
        assert_eq!(
            whole_frames_below(&buf, 10),
            3 + 5,
            "the 40-byte body is over"
        );
        assert_eq!(whole_frames_below(&buf, 100), 3 + 40 + 5);
        // A frame not all read yet is not counted, nor anything after it.
        buf.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(whole_frames_below(&buf, 100), 48);
        assert_eq!(whole_frames_below(&buf[..5], 100), 0);
        assert_eq!(whole_frames_below(&[], 100), 0);
    }

    #[test]
    fn split_takes_every_frame_a_read_returned() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, b"one");
        put_frame(&mut buf, b"");
        put_frame(&mut buf, b"three");
        buf.extend_from_slice(&[0, 0]);
        let mut got = Vec::new();
        while let Some(f) = split_frame(&mut buf, 100).unwrap() {
            got.push(f);
        }
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        assert_eq!(
            at_end(&buf),
            Err(FrameError::Truncated { have: 2, need: 4 })
        );
        buf.extend_from_slice(&[0, 9, 1]);
        assert_eq!(
            at_end(&buf),
            Err(FrameError::Truncated { have: 5, need: 13 })
        );
        assert_eq!(at_end(&[]), Ok(()));
    }

    /// The fenced blocks of `lang` in a Markdown text.
    fn blocks<'a>(doc: &'a str, lang: &str) -> Vec<&'a str> {
        let open = format!("```{lang}\n");
        let mut out = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find(&open) {
            let body = &rest[start + open.len()..];
            let end = body.find("```").unwrap_or(body.len());
            out.push(body[..end].trim());
            rest = &body[end..];
        }
        out
    }

    /// Every field an example shows comes back when it is decoded and encoded again: none
    /// is misspelled (receivers ignore unknown fields, so a typo would pass unnoticed).
    fn shown_fields_are_real(example: &str, encoded: serde_json::Value) {
        let shown: serde_json::Value = serde_json::from_str(example).unwrap();
        for (k, v) in shown.as_object().unwrap() {
            assert_eq!(encoded.get(k), Some(v), "field {k} of {example}");
        }
    }

    #[test]
    fn protocol_examples_decode() {
        let doc = include_str!("../../../../docs/protocol.md");
        let examples = blocks(doc, "json");
        assert!(examples.len() >= 20, "{}", examples.len());
        let mut types = std::collections::BTreeSet::new();
        for e in examples {
            let body = e.as_bytes();
            match control::decode_control(body) {
                Ok(m) => {
                    let encoded = serde_json::to_value(&m).unwrap();
                    // `type_name` says what the encoder writes, for every type shown.
                    assert_eq!(encoded["type"], m.type_name(), "{e}");
                    types.insert(m.type_name());
                    shown_fields_are_real(e, encoded);
                }
                Err(Undecodable::UnknownType { kind, .. }) if kind == "teleport" => {}
                Err(_) => {
                    let h = control::decode_header(body)
                        .unwrap_or_else(|err| panic!("{e}\ndecodes as neither: {err}"));
                    shown_fields_are_real(e, serde_json::to_value(&h).unwrap());
                }
            }
        }
        // The protocol shows every type, and the decoder knows each one by name.
        let known: std::collections::BTreeSet<&str> =
            control::CONTROL_TYPES.iter().copied().collect();
        assert_eq!(types, known);
        let hex = blocks(doc, "hex");
        let bytes: Vec<u8> = hex[0]
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = split_frame(&mut buf, data::frame_limit(5))
            .unwrap()
            .unwrap();
        assert_eq!(data::parse_message(&frame).unwrap(), ("say", &b"hello"[..]));
        assert!(buf.is_empty());
        let spki = blocks(doc, "text")
            .into_iter()
            .find(|b| b.starts_with("30 2a"))
            .unwrap();
        let prefix: Vec<u8> = spki
            .split_whitespace()
            .take_while(|t| *t != "||")
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(prefix, PeerId([0; 32]).spki()[..12]);
        assert!(doc.contains(&format!("`{}`", std::str::from_utf8(ALPN).unwrap())));
    }

    #[test]
    fn json_frames_carry_their_length() {
        let mut buf = BytesMut::new();
        put_json(&mut buf, &serde_json::json!({"a": 1}));
        let body = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&body[..], br#"{"a":1}"#);
        assert!(buf.is_empty());
    }
}
