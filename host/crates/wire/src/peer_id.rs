//! Peer ids: how the protocol names a host. A peer id is the host's 32-byte ed25519 public
//! key in RFC 4648 base32, lowercase, without padding: 52 characters, valid as a DNS label.

use data_encoding::{DecodeKind, Encoding, Specification};
use std::fmt;
use std::sync::LazyLock;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// RFC 4648 base32 in lowercase, without padding, refusing set bits past the key (so each
/// id has exactly one spelling).
static BASE32: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.check_trailing_bits = true;
    // Cannot fail: 32 distinct ASCII symbols and no padding make a valid base32.
    spec.encoding().expect("a valid base32 specification")
});

/// Text that is not a peer id, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPeerId(pub String);

/// A host's public identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    /// The peer id of a raw public key "certificate" (an ed25519 SubjectPublicKeyInfo).
    pub fn from_spki(spki: &[u8]) -> Option<PeerId> {
        let key = spki.strip_prefix(&SPKI_PREFIX[..])?;
        Some(PeerId(key.try_into().ok()?))
    }

    /// The SubjectPublicKeyInfo DER of this key.
    pub fn spki(&self) -> Vec<u8> {
        let mut v = SPKI_PREFIX.to_vec();
        v.extend_from_slice(&self.0);
        v
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 52];
        BASE32.encode_mut(&self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// Why text is not a peer id, before it is put into words.
enum Bad {
    Length(usize),
    Char(u8),
    TrailingBits,
}

impl PeerId {
    /// The peer id this text spells, if it spells one; allocates nothing, so it can tell a
    /// host from a service name on every call (see `wire::addr`).
    pub fn parse_text(s: &str) -> Option<PeerId> {
        decode(s).ok()
    }
}

fn decode(s: &str) -> Result<PeerId, Bad> {
    if s.len() != 52 {
        return Err(Bad::Length(s.len()));
    }
    let mut out = [0u8; 32];
    BASE32
        .decode_mut(s.as_bytes(), &mut out)
        .map_err(|e| match e.error.kind {
            DecodeKind::Symbol => Bad::Char(s.as_bytes()[e.error.position]),
            DecodeKind::Trailing => Bad::TrailingBits,
            _ => Bad::Length(s.len()),
        })?;
    Ok(PeerId(out))
}

impl std::str::FromStr for PeerId {
    type Err = BadPeerId;

    fn from_str(s: &str) -> Result<PeerId, BadPeerId> {
        decode(s).map_err(|why| {
            let why = match why {
                Bad::Length(n) => {
                    format!("a peer id has 52 characters, this has {n} (`wasmwire id` prints one)")
                }
                Bad::Char(c) => {
                    format!("{:?} is not a base32 character (a-z, 2-7)", c as char)
                }
                Bad::TrailingBits => "its last character has bits set past the key".into(),
            };
            BadPeerId(format!("{s:?} is not a peer id: {why}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_round_trip_and_refuse_lookalikes() {
        let id = PeerId([7; 32]);
        let id = PeerId(std::array::from_fn(|i| id.0[i].wrapping_mul(i as u8 + 1)));
        let text = id.to_string();
        assert_eq!(text.len(), 52);
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert!("short".parse::<PeerId>().is_err());
        assert!(text.to_uppercase().parse::<PeerId>().is_err());
        // The last character carries one bit: anything past it is refused, so each id has
        // exactly one spelling.
        let mut other = text.clone();
        other.pop();
        other.push('7');
        assert!(other.parse::<PeerId>().is_err());
        assert_eq!(PeerId([0; 32]).to_string(), "a".repeat(52));
    }
}
