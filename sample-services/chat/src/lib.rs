//! `chat`: a room. Every `say` message received on a session is broadcast, as a `said`
//! message naming the sender, to every other session in the room. The `members` event lists
//! who is connected; `join {service, peer?}` (event) makes this instance connect to another
//! room named in `uses` — on this host, or on another (`peer` a peer id, or `"*"` for any
//! peer that runs it) — so rooms can be chained across hosts. A room relays the `said`
//! messages it receives from a chained room to its other members, up to 8 hops (rooms
//! should form a tree; the hop limit stops a loop).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmwire_guest::{Event, Message, Options, Reply, Service, Session, SessionId, export_service};

#[derive(Default)]
struct Chat {
    room: String,
    members: BTreeMap<SessionId, String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct ChatOptions {
    room: String,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            room: "lobby".into(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Said<'a> {
    room: &'a str,
    from: &'a str,
    text: &'a str,
    /// Rooms crossed so far (left out when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    hops: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Most rooms a `said` message crosses.
const MAX_HOPS: u8 = 8;

#[derive(Deserialize)]
struct Join {
    service: String,
    #[serde(default)]
    peer: Option<String>,
}

impl Service for Chat {
    const MESSAGES: &'static [&'static str] = &["say", "said"];
    const EVENTS: &'static [&'static str] = &["members", "join"];

    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        self.room = options.parse::<ChatOptions>()?.room;
        Ok(())
    }

    fn on_connect(&mut self, session: Session) {
        self.members.insert(session.id, session.service);
    }

    fn on_disconnect(&mut self, session: SessionId) {
        self.members.remove(&session);
    }

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        if message.kind == "said" {
            // Relayed from a chained room: pass it on to everyone else here.
            let Ok(mut said) = serde_json::from_slice::<Said<'_>>(message.payload) else {
                return;
            };
            if said.hops >= MAX_HOPS {
                return;
            }
            said.hops += 1;
            for &other in self.members.keys().filter(|&&id| id != session) {
                let _ = wasmwire_guest::send_json(other, "said", &said);
            }
            return;
        }
        let text = String::from_utf8_lossy(message.payload);
        let from = self
            .members
            .get(&session)
            .map(String::as_str)
            .unwrap_or("?");
        let said = Said {
            room: &self.room,
            from,
            text: &text,
            hops: 0,
        };
        for &other in self.members.keys().filter(|&&id| id != session) {
            let _ = wasmwire_guest::send_json(other, "said", &said);
        }
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        match event.name {
            "members" => Reply::json(&self.members.values().collect::<Vec<_>>()),
            "join" => match event.params::<Join>() {
                Ok(j) => wasmwire_guest::connect(j.peer.as_deref(), &j.service)
                    .map_err(|e| e.to_string())
                    .into(),
                Err(e) => Reply::error(e),
            },
            other => Reply::error(format!("unknown event {other}")),
        }
    }
}

export_service!(Chat);
