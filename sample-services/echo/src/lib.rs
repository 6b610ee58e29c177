//! `echo`: sends every message back on the session it came from, and answers the `echo`
//! event with its own parameters. The smallest useful service: copy it to start yours.

use wasmwire_guest::{Event, Message, Reply, Service, SessionId, export_service};

#[derive(Default)]
struct Echo;

impl Service for Echo {
    const MESSAGES: &'static [&'static str] = &["echo"];
    const EVENTS: &'static [&'static str] = &["echo"];

    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        // A full mailbox on the other side answers `busy`; an echo is best-effort.
        let _ = wasmwire_guest::send(session, message.kind, message.payload);
    }

    fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
        // Parameters are JSON already: hand them back untouched.
        Reply(Ok(event.params.to_string()))
    }
}

export_service!(Echo);
