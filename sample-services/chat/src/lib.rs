//! `chat`: a room. Every `say` message received on a session is broadcast, as a `said`
//! message naming the sender, to every other session in the room. The `members` event lists
//! who is connected; `join {service, peer?}` (event) makes this instance connect to another
//! room named in `uses` — on this host, or on another (`peer` a peer id, or `"*"` for any
//! peer that runs it) — so rooms can be chained across hosts. A room relays the `said`
//! messages it receives from a chained room to its other members, up to 8 hops (rooms
//! should form a tree; the hop limit stops a loop).
//!
//! With `options = { history = N }` the room keeps its last N messages in its durable
//! bucket — they outlive sleep and host restarts — and replays them, oldest first, to each
//! new member as `said` messages marked `"replay": true` (a room does not relay replays).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use wasmwire_guest::{
    Event, Message, Options, Reply, Service, Session, SessionId, export_service, store,
};

#[derive(Default)]
struct Chat {
    room: String,
    members: BTreeMap<SessionId, String>,
    /// How many messages it keeps for new members (0: none).
    history: usize,
}

#[derive(Deserialize)]
#[serde(default)]
struct ChatOptions {
    room: String,
    history: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            room: "lobby".into(),
            history: 0,
        }
    }
}

/// Where the kept messages are, in the room's bucket.
const HISTORY: &str = "history";

#[derive(Serialize, Deserialize)]
struct Said<'a> {
    room: Cow<'a, str>,
    from: Cow<'a, str>,
    text: Cow<'a, str>,
    /// Rooms crossed so far (left out when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    hops: u8,
    /// Sent from the history to a new member, not said just now.
    #[serde(default, skip_serializing_if = "is_false")]
    replay: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Chat {
    /// Keeps `said` as the newest of the last `history` messages.
    fn remember(&self, said: &Said<'_>) {
        if self.history == 0 {
            return;
        }
        let mut kept: Vec<Said<'static>> = store::get(HISTORY).ok().flatten().unwrap_or_default();
        kept.push(Said {
            room: Cow::Owned(said.room.to_string()),
            from: Cow::Owned(said.from.to_string()),
            text: Cow::Owned(said.text.to_string()),
            hops: said.hops,
            replay: false,
        });
        let extra = kept.len().saturating_sub(self.history);
        kept.drain(..extra);
        if let Err(e) = store::set(HISTORY, &kept) {
            wasmwire_guest::log(
                wasmwire_guest::Level::Warn,
                &format!("history not kept: {e}"),
            );
        }
    }

    /// Sends the kept messages to a new member, oldest first.
    fn replay(&self, session: SessionId) {
        if self.history == 0 {
            return;
        }
        let kept: Vec<Said<'static>> = store::get(HISTORY).ok().flatten().unwrap_or_default();
        for mut said in kept {
            said.replay = true;
            let _ = wasmwire_guest::send_json(session, "said", &said);
        }
    }
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
        let o = options.parse::<ChatOptions>()?;
        self.room = o.room;
        self.history = o.history;
        Ok(())
    }

    fn on_connect(&mut self, session: Session) {
        self.members.insert(session.id, session.service);
        self.replay(session.id);
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
            if said.hops >= MAX_HOPS || said.replay {
                return;
            }
            said.hops += 1;
            self.remember(&said);
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
            room: Cow::Borrowed(&self.room),
            from: Cow::Borrowed(from),
            text,
            hops: 0,
            replay: false,
        };
        self.remember(&said);
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
