//! `batch013`: a service built against `wasmwire:service@0.1.3` (the WIT as it was before
//! `on-message-block`, kept in `wit/`), without the SDK's wrappers: it takes batches
//! through `on-messages`, a list of records. The host implements 0.1.4 and prefers
//! `on-message-block`; this guest proves a 0.1.3 batch component still gets its batches.
//! Message `note` keeps its payload, `slow` spins 5 ms (so notes pile up behind it), event
//! `notes` answers the notes in order and `batches` how many `on-messages` calls there were.

mod bindings {
    wasmwire_guest::__private::wit_bindgen::generate!({
        path: "wit",
        world: "service-with-batches",
        generate_all,
        runtime_path: "wasmwire_guest::__private::wit_bindgen::rt",
    });
}

use bindings::exports::wasmwire::service::alarm;
use bindings::exports::wasmwire::service::inbox::{self, Message};
use bindings::exports::wasmwire::service::lifecycle::{Description, Guest, SessionInfo};

struct Batch013;

thread_local! {
    /// The `note` payloads (numbers), in arrival order.
    static NOTES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// `on-messages` calls so far.
    static BATCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// One message, as `on-message` would take it.
fn handle(kind: &str, payload: &[u8]) {
    match kind {
        "note" => NOTES.with(|n| {
            n.borrow_mut()
                .push(String::from_utf8_lossy(payload).into_owned())
        }),
        "slow" => {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(5) {}
        }
        _ => {}
    }
}

impl Guest for Batch013 {
    fn describe() -> Description {
        Description {
            messages: vec!["note".into(), "slow".into()],
            events: vec!["notes".into(), "batches".into()],
        }
    }

    fn wakeup(_options: String) -> Result<(), String> {
        Ok(())
    }

    fn sleep() {}

    fn on_connect(_session: SessionInfo) {}

    fn on_disconnect(_session: u64) {}

    fn on_message(_session: u64, kind: String, payload: Vec<u8>) {
        handle(&kind, &payload);
    }

    fn on_event(_caller: Option<u64>, name: String, _params: String) -> Result<String, String> {
        match name.as_str() {
            "notes" => Ok(NOTES.with(|n| format!("[{}]", n.borrow().join(",")))),
            "batches" => Ok(BATCHES.with(|b| b.get()).to_string()),
            other => Err(format!("no event {other}")),
        }
    }

    fn on_timer(_timer: u32) {}
}

impl alarm::Guest for Batch013 {
    fn on_alarm(_at_ms: u64) {}
}

impl inbox::Guest for Batch013 {
    fn on_messages(batch: Vec<Message>) -> u32 {
        BATCHES.with(|b| b.set(b.get() + 1));
        for m in &batch {
            handle(&m.kind, &m.payload);
        }
        batch.len() as u32
    }
}

bindings::export!(Batch013 with_types_in bindings);
