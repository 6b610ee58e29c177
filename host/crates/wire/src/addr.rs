//! Service addresses: how a guest, a client, a peer and a request chain name a service. One
//! parser for all of them, so the rules below hold everywhere:
//! - `name` is a service of the host that reads it;
//! - `class/key` is one key of a keyed class of that host;
//! - `PEERID/name` and `PEERID/class/key` are on the host with that peer id, `*/name` and
//!   `*/class/key` on any connected host that runs it.
//!
//! A first segment that reads as a peer id (or `*`) names a host; anything else is a local
//! class. Instance names that read as peer ids are refused by the manifest, so no local
//! name is ever mistaken for a host.

use super::peer_id::{BadPeerId, PeerId};
use std::fmt;
use std::str::FromStr;

/// A service's name on its own host: an instance (`echo`) or one key of a keyed class
/// (`room/lobby`). Borrowed: reading one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalName<'a> {
    /// The manifest entry: the instance, or the keyed class.
    pub class: &'a str,
    /// The key, for a keyed class's instance.
    pub key: Option<&'a str>,
}

impl<'a> LocalName<'a> {
    /// Reads `name` or `class/key` (everything after the first `/` is the key).
    #[inline]
    pub fn parse(text: &'a str) -> LocalName<'a> {
        match text.split_once('/') {
            Some((class, key)) => LocalName {
                class,
                key: Some(key),
            },
            None => LocalName {
                class: text,
                key: None,
            },
        }
    }
}

impl fmt::Display for LocalName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(key) => write!(f, "{}/{key}", self.class),
            None => f.write_str(self.class),
        }
    }
}

/// Which host a remote address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerSel {
    /// `*`: any connected host that runs the service.
    Any,
    /// The host with this peer id.
    Id(PeerId),
}

impl PeerSel {
    /// The peer id, unless any host will do.
    pub fn id(self) -> Option<PeerId> {
        match self {
            PeerSel::Any => None,
            PeerSel::Id(id) => Some(id),
        }
    }

    /// Reads `*` or a peer id, allocating nothing.
    fn read(text: &str) -> Option<PeerSel> {
        if text == "*" {
            Some(PeerSel::Any)
        } else {
            PeerId::parse_text(text).map(PeerSel::Id)
        }
    }
}

impl FromStr for PeerSel {
    type Err = BadPeerId;

    fn from_str(text: &str) -> Result<PeerSel, BadPeerId> {
        match PeerSel::read(text) {
            Some(p) => Ok(p),
            // Put into words only when it is not one.
            None => text.parse::<PeerId>().map(PeerSel::Id),
        }
    }
}

impl fmt::Display for PeerSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSel::Any => f.write_str("*"),
            PeerSel::Id(id) => id.fmt(f),
        }
    }
}

/// Whether `text` reads as a host (a peer id or `*`) when it stands first in an address.
pub fn names_a_host(text: &str) -> bool {
    PeerSel::read(text).is_some()
}

/// Where a call goes: a service of this host, or of another host (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddr {
    /// The host, when it is another one (`None`: this host).
    pub peer: Option<PeerSel>,
    /// The service on that host: `name` or `class/key`.
    pub service: String,
}

impl ServiceAddr {
    /// The service's name on its host.
    pub fn name(&self) -> LocalName<'_> {
        LocalName::parse(&self.service)
    }
}

/// Text that is not a service address, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAddr {
    /// Empty, or an empty segment (`/echo`, `echo/`, `a//b`).
    #[error("{0:?} is not a service address: write name, class/key, PEERID/name or */name")]
    Shape(String),
}

impl TryFrom<String> for ServiceAddr {
    type Error = BadAddr;

    /// Reads an address the caller owns (a guest's `request` argument) without copying it.
    fn try_from(mut text: String) -> Result<ServiceAddr, BadAddr> {
        if text.is_empty() || text.split('/').any(str::is_empty) {
            return Err(BadAddr::Shape(text));
        }
        let peer = text
            .split_once('/')
            .and_then(|(first, _)| PeerSel::read(first));
        if peer.is_some() {
            let slash = text.find('/').unwrap_or(0);
            text.drain(..=slash);
        }
        Ok(ServiceAddr {
            peer,
            service: text,
        })
    }
}

impl FromStr for ServiceAddr {
    type Err = BadAddr;

    fn from_str(text: &str) -> Result<ServiceAddr, BadAddr> {
        ServiceAddr::try_from(text.to_string())
    }
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer {
            Some(peer) => write!(f, "{peer}/{}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

/// Serde as the text form (`Display` and `FromStr`), for the address types of this module.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(ServiceAddr);
serde_as_text!(ChainEntry);

/// One waiter of a request chain as the wire carries it: `PEERID/name`, the name being an
/// instance or a keyed class's key on that host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// The host the waiter is on.
    pub peer: PeerId,
    /// Its name there.
    pub name: String,
}

impl ChainEntry {
    /// Whether this is the instance `name` of the host `peer`.
    #[inline]
    pub fn is(&self, peer: &PeerId, name: &str) -> bool {
        self.peer == *peer && self.name == name
    }
}

impl FromStr for ChainEntry {
    type Err = BadAddr;

    fn from_str(text: &str) -> Result<ChainEntry, BadAddr> {
        let bad = || BadAddr::Shape(text.to_string());
        let (peer, name) = text.split_once('/').ok_or_else(bad)?;
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return Err(bad());
        }
        Ok(ChainEntry {
            peer: PeerId::parse_text(peer).ok_or_else(bad)?,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ChainEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.peer, self.name)
    }
}

/// Whether a chain as the wire carries it names the instance `name` of the host `peer`.
/// Allocates nothing: the broker runs it on every request from a peer.
pub fn chain_has(chain: &[String], peer: &PeerId, name: &str) -> bool {
    chain.iter().any(|e| {
        e.split_once('/')
            .is_some_and(|(p, n)| n == name && PeerId::parse_text(p) == Some(*peer))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    #[test]
    fn local_names_split_at_the_first_slash() {
        assert_eq!(
            LocalName::parse("echo"),
            LocalName {
                class: "echo",
                key: None
            }
        );
        let n = LocalName::parse("room/a/b");
        assert_eq!((n.class, n.key), ("room", Some("a/b")));
        assert_eq!(n.to_string(), "room/a/b");
    }

    #[test]
    fn an_address_names_a_host_only_with_a_peer_id_or_a_star() {
        let p = id(9);
        let cases = [
            ("echo", None, "echo"),
            ("room/lobby", None, "room/lobby"),
            ("*/echo", Some(PeerSel::Any), "echo"),
            ("*/room/lobby", Some(PeerSel::Any), "room/lobby"),
            (&*format!("{p}/echo"), Some(PeerSel::Id(p)), "echo"),
            (&*format!("{p}/room/7"), Some(PeerSel::Id(p)), "room/7"),
            // One character short of a peer id: a local class with a key.
            (&*format!("{}/echo", &p.to_string()[1..]), None, ""),
        ];
        for (text, peer, service) in cases {
            let a: ServiceAddr = text.parse().unwrap();
            assert_eq!(a.peer, peer, "{text}");
            if peer.is_some() {
                assert_eq!(a.service, service, "{text}");
            } else {
                assert_eq!(a.service, text);
            }
            assert_eq!(a.to_string(), text, "round trip");
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<ServiceAddr>(&json).unwrap(), a);
        }
        for bad in ["", "/echo", "echo/", "*/", "a//b"] {
            assert!(bad.parse::<ServiceAddr>().is_err(), "{bad:?}");
        }
        assert!(names_a_host("*") && names_a_host(&p.to_string()));
        assert!(!names_a_host("echo"));
    }

    #[test]
    fn chain_entries_need_a_peer_id_and_a_name() {
        let p = id(3);
        let e: ChainEntry = format!("{p}/room/lobby").parse().unwrap();
        assert!(e.is(&p, "room/lobby") && !e.is(&id(4), "room/lobby"));
        assert_eq!(e.to_string(), format!("{p}/room/lobby"));
        for bad in [
            "echo",
            "*/echo",
            "abc/echo",
            &format!("{p}/"),
            &format!("{p}//x"),
        ] {
            assert!(bad.parse::<ChainEntry>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<ChainEntry>(&json).unwrap(), e);
        let wire = vec!["junk".to_string(), e.to_string()];
        assert!(chain_has(&wire, &p, "room/lobby"));
        assert!(!chain_has(&wire, &p, "room") && !chain_has(&wire, &id(4), "room/lobby"));
    }
}
