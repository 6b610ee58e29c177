//! Data frames: one session message each, after the session headers.
//!
//! ```text
//! [u32 length][u8 kind length][kind, UTF-8][payload]
//! ```
//! `length` counts everything after itself, so it is `1 + kind length + payload length`.

use super::{FrameError, LEN_BYTES};
use bytes::{BufMut, BytesMut};

/// Longest message kind, in bytes.
pub const MAX_KIND: usize = 255;

/// The largest data frame body a receiver accepting `max_message` payload bytes allows.
pub fn frame_limit(max_message: u64) -> usize {
    (max_message as usize).saturating_add(1 + MAX_KIND)
}

/// Appends one data frame. The kind must be at most [`MAX_KIND`] bytes (callers check it
/// against the receiver's declared kinds first, which are that short).
#[inline]
pub fn put_message(out: &mut BytesMut, kind: &str, payload: &[u8]) -> Result<(), FrameError> {
    let k = kind.as_bytes();
    if k.len() > MAX_KIND {
        return Err(FrameError::Malformed(format!(
            "message kind of {} bytes is over {MAX_KIND}",
            k.len()
        )));
    }
    out.reserve(LEN_BYTES + 1 + k.len() + payload.len());
    out.put_u32((1 + k.len() + payload.len()) as u32);
    out.put_u8(k.len() as u8);
    out.put_slice(k);
    out.put_slice(payload);
    Ok(())
}

/// Splits a data frame body into its kind and payload.
#[inline]
pub fn parse_message(body: &[u8]) -> Result<(&str, &[u8]), FrameError> {
    let Some((&klen, rest)) = body.split_first() else {
        return Err(FrameError::Malformed("empty data frame".into()));
    };
    let klen = klen as usize;
    if rest.len() < klen {
        return Err(FrameError::Malformed(format!(
            "message kind of {klen} bytes in a frame of {}",
            body.len()
        )));
    }
    let (kind, payload) = rest.split_at(klen);
    let kind = std::str::from_utf8(kind)
        .map_err(|_| FrameError::Malformed("message kind is not UTF-8".into()))?;
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_frame;

    #[test]
    fn messages_round_trip() {
        let mut buf = BytesMut::new();
        put_message(&mut buf, "say", b"hello").unwrap();
        put_message(&mut buf, "", b"").unwrap();
        assert_eq!(&buf[..9], &[0, 0, 0, 9, 3, b's', b'a', b'y', b'h']);
        let f = split_frame(&mut buf, frame_limit(5)).unwrap().unwrap();
        assert_eq!(parse_message(&f).unwrap(), ("say", &b"hello"[..]));
        let f = split_frame(&mut buf, frame_limit(5)).unwrap().unwrap();
        assert_eq!(parse_message(&f).unwrap(), ("", &b""[..]));
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(parse_message(&[]).is_err());
        assert!(parse_message(&[5, b'a']).is_err());
        assert!(parse_message(&[2, 0xff, 0xfe]).is_err());
        let long = "k".repeat(256);
        assert!(put_message(&mut BytesMut::new(), &long, b"").is_err());
    }
}
