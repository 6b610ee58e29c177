//! Control messages and session headers on arbitrary bytes: decoding never panics, tells an
//! unknown `type` from garbage, and whatever decodes encodes back to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmwire::wire::{self, Undecodable, control};

fn round_trip<T: serde::Serialize + PartialEq + std::fmt::Debug>(
    value: &T,
    decode: fn(&[u8]) -> Result<T, Undecodable>,
) {
    let mut out = BytesMut::new();
    wire::put_json(&mut out, value);
    let len = wire::check(&out, usize::MAX)
        .ok()
        .flatten()
        .expect("a whole frame");
    let again = decode(&out[wire::LEN_BYTES..wire::LEN_BYTES + len])
        .unwrap_or_else(|e| panic!("{value:?} encoded to something that does not decode: {e}"));
    assert_eq!(&again, value, "a round trip changed the message");
}

fuzz_target!(|body: &[u8]| {
    match control::decode_control(body) {
        Ok(c) => {
            round_trip(&c, control::decode_control);
            // What `id` and `is_answer` say must not depend on anything but the message.
            let _ = (c.id(), c.is_answer());
        }
        Err(Undecodable::UnknownType { kind, .. }) => {
            assert!(kind.len() <= 64, "an unknown type is echoed back in full");
            assert!(!control::CONTROL_TYPES.contains(&kind.as_str()));
        }
        Err(Undecodable::Malformed(reason)) => assert!(!reason.is_empty()),
    }
    if let Ok(h) = control::decode_header(body) {
        round_trip(&h, control::decode_header);
    }
});
