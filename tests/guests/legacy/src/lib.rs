//! `legacy`: a service built against `wasmwire:service@0.1.0` (the WIT as it was before
//! `self-info`, kept in `wit/`), without the SDK's wrappers. The host implements 0.1.4;
//! this guest proves a component built before the bump still loads and runs. Message
//! `note` keeps its payload, event `notes` answers them (one `on-message` each: it has no
//! `on-messages`).

mod bindings {
    wasmwire_guest::__private::wit_bindgen::generate!({
        path: "wit",
        world: "service",
        runtime_path: "wasmwire_guest::__private::wit_bindgen::rt",
    });
}

use bindings::exports::wasmwire::service::lifecycle::{Description, Guest, SessionInfo};
use bindings::wasmwire::service::host;

struct Legacy;

thread_local! {
    /// The `note` payloads (numbers), in arrival order.
    static NOTES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Guest for Legacy {
    fn describe() -> Description {
        Description {
            messages: vec!["note".into()],
            events: vec!["name".into(), "notes".into()],
        }
    }

    fn wakeup(_options: String) -> Result<(), String> {
        Ok(())
    }

    fn sleep() {}

    fn on_connect(_session: SessionInfo) {}

    fn on_disconnect(_session: u64) {}

    fn on_message(_session: u64, kind: String, payload: Vec<u8>) {
        if kind == "note" {
            NOTES.with(|n| {
                n.borrow_mut()
                    .push(String::from_utf8_lossy(&payload).into_owned())
            });
        }
    }

    fn on_event(_caller: Option<u64>, name: String, _params: String) -> Result<String, String> {
        match name.as_str() {
            "name" => Ok(format!("\"{}\"", host::instance_name())),
            "notes" => Ok(NOTES.with(|n| format!("[{}]", n.borrow().join(",")))),
            other => Err(format!("no event {other}")),
        }
    }

    fn on_timer(_timer: u32) {}
}

bindings::export!(Legacy with_types_in bindings);
