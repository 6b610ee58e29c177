//! Data frames on arbitrary bytes: framing never panics or over-reads, whatever is parsed
//! encodes back to the same bytes, and a frame over the limit is refused from its prefix.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmwire::wire::{self, FrameError, data};

fuzz_target!(|input: &[u8]| {
    let Some((&l, stream)) = input.split_first() else {
        return;
    };
    // A limit from tiny to roomy, so both "too large" and "whole" paths are reached.
    let limit = data::frame_limit(u64::from(l) * 16);
    let mut buf = BytesMut::from(stream);
    let mut seen = 0usize;
    loop {
        let before = buf.len();
        match wire::check(&buf, limit) {
            Err(FrameError::TooLarge { len, limit: at }) => {
                assert!(len > at);
                return;
            }
            Err(e) => panic!("check only refuses frames as too large, got {e}"),
            Ok(None) => {
                assert!(wire::at_end(&buf).is_err() || buf.is_empty());
                break;
            }
            Ok(Some(len)) => {
                assert!(len <= limit);
                let body = match wire::split_frame(&mut buf, limit) {
                    Ok(Some(b)) => b,
                    other => panic!("check said a frame of {len} is whole, split said {other:?}"),
                };
                assert_eq!(body.len(), len);
                assert_eq!(buf.len(), before - wire::LEN_BYTES - len);
                seen += 1;
                if let Ok((kind, payload)) = data::parse_message(&body) {
                    let mut out = BytesMut::new();
                    data::put_message(&mut out, kind, payload).expect("a parsed kind fits");
                    assert_eq!(
                        &out[wire::LEN_BYTES..],
                        &body[..],
                        "re-encoding changed the frame"
                    );
                    assert_eq!(wire::check(&out, limit).ok().flatten(), Some(len));
                }
            }
        }
    }
    let _ = seen;
});
