//! # wasmwire-guest: write a wasmwire service
//!
//! A wasmwire service is a WebAssembly component that the `wasmwire` host wakes when it is
//! needed, feeds with messages and events one at a time, and puts to sleep when nobody uses
//! it. This crate is all a service author depends on: implement [`Service`] (every method has
//! a default), then call [`export_service!`]. No WIT, no bindings, no `unsafe`.
//!
//! ## 1. Create the crate
//!
//! ```toml
//! [package]
//! name = "greeter"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wasmwire-guest = { path = "../guest-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! ## 2. Implement the trait
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use wasmwire_guest::{Event, Message, Reply, Service, SessionId, export_service};
//!
//! #[derive(Default)]
//! struct Greeter { greeting: String, greeted: u64 }
//!
//! #[derive(Deserialize)]
//! struct Options { greeting: String }
//!
//! #[derive(Deserialize)]
//! struct Hello { name: String }
//!
//! #[derive(Serialize)]
//! struct Stats { greeted: u64 }
//!
//! impl Service for Greeter {
//!     // The host refuses any other message kind or event name before it reaches you.
//!     const MESSAGES: &'static [&'static str] = &["hello"];
//!     const EVENTS: &'static [&'static str] = &["stats"];
//!
//!     // `options` is the instance's `options` table from the manifest.
//!     fn wakeup(&mut self, options: wasmwire_guest::Options) -> Result<(), String> {
//!         let opts: Options = options.parse()?;
//!         self.greeting = opts.greeting;
//!         Ok(())
//!     }
//!
//!     fn on_message(&mut self, session: SessionId, message: Message<'_>) {
//!         if let Ok(hello) = message.json::<Hello>() {
//!             self.greeted += 1;
//!             let text = format!("{}, {}!", self.greeting, hello.name);
//!             let _ = wasmwire_guest::send(session, "hello", text.as_bytes());
//!         }
//!     }
//!
//!     fn on_event(&mut self, _caller: Option<SessionId>, event: Event<'_>) -> Reply {
//!         match event.name {
//!             "stats" => Reply::json(&Stats { greeted: self.greeted }),
//!             other => Reply::error(format!("unknown event {other}")),
//!         }
//!     }
//! }
//!
//! export_service!(Greeter);
//! ```
//!
//! ## 3. Build it and list it in the manifest
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! ```toml
//! [[service]]
//! name = "greeter"
//! component = "target/wasm32-wasip2/release/greeter.wasm"
//! channel = 7
//! options = { greeting = "Hello" }
//! ```
//!
//! `wasmwire check wasmwire.toml` type-checks it, `wasmwire inspect greeter.wasm` shows what
//! it declares, and `wasmwire run` serves it.
//!
//! ## The rules the host keeps for you
//! - One call at a time per instance, in arrival order: `&mut self` is all the locking you need.
//! - State lives from [`Service::wakeup`] to [`Service::sleep`]; after `sleep` the instance is
//!   dropped and the next demand starts from `Default` again. What must outlive that goes in
//!   [`store`]: the instance's own durable bucket, each call's writes one transaction.
//! - A trap (a panic), a call that runs past its CPU deadline, or a memory limit hit kills this
//!   instance only; the host restarts it on the next demand.
//! - [`connect`] and [`request`] reach only the services named in the instance's `uses`.
//! - Messages waiting in the mailbox come in one call (`on-message-block`, WIT 0.1.4: the
//!   batch in one buffer, so a message costs the guest no allocation), each passed to
//!   [`Service::on_message`] in order; a handler that calls [`close`] or
//!   [`connect`] ends the batch there, so `on_disconnect`/`on_connect` come between messages
//!   as they would one call at a time. A batch is one call, with a CPU budget of
//!   `call_timeout` per message; a panic drops the messages after it with the sessions. A
//!   service that uses [`store`] or alarms gets one call per message (each its own
//!   transaction) instead.

extern crate self as wasmwire_guest;

use std::cell::RefCell;
use std::fmt;
use std::thread::LocalKey;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        // `service` with the `on-alarm` export (a service that sets no alarm is never
        // called) and `on-message-block` (the host hands it messages in batches; the
        // 0.1.3 `on-messages` is exported too, as a host of 0.1.3 calls that).
        world: "service-with-batches",
        // The world imports `wasi:keyvalue` from `wit/deps`: generate its bindings here too.
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_service_bindings",
        default_bindings_module: "wasmwire_guest::bindings",
        runtime_path: "wasmwire_guest::__private::wit_bindgen::rt",
    });
}

pub mod store;

use bindings::wasmwire::service::host;
use bindings::wasmwire::service::types;

/// Names one end of a session; the host never reuses it within a run.
pub type SessionId = u64;

/// Names a timer returned by [`set_timer`].
pub type TimerId = u32;

/// Log severity for [`log`].
pub use types::Level;

/// Why a host call failed (the WIT `error` variant, with readable messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The session id is not (or no longer) open.
    NoSuchSession,
    /// No service of that name.
    NoSuchService(String),
    /// Not allowed: not in this instance's `uses`, or a limit.
    Denied(String),
    /// Payload or parameters exceed the receiver's `max_message`.
    TooLarge,
    /// The other end closed before answering.
    Closed,
    /// No answer within `request_timeout`.
    Timeout,
    /// The receiver's mailbox is full: try again later.
    Busy,
    /// The request would wait on itself.
    Cycle,
    /// Malformed call: an undeclared message kind or event, a bad argument.
    Invalid(String),
    /// The service is down or could not be woken.
    Unavailable(String),
    /// The callee's `on_event` returned this error text.
    Failed(String),
}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Error {
        use types::Error as E;
        match e {
            E::NoSuchSession => Error::NoSuchSession,
            E::NoSuchService(s) => Error::NoSuchService(s),
            E::Denied(s) => Error::Denied(s),
            E::TooLarge => Error::TooLarge,
            E::Closed => Error::Closed,
            E::Timeout => Error::Timeout,
            E::Busy => Error::Busy,
            E::Cycle => Error::Cycle,
            E::Invalid(s) => Error::Invalid(s),
            E::Unavailable(s) => Error::Unavailable(s),
            E::Failed(s) => Error::Failed(s),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchSession => f.write_str("no such session"),
            Error::NoSuchService(s) => write!(f, "no such service: {s}"),
            Error::Denied(s) => write!(f, "denied: {s}"),
            Error::TooLarge => f.write_str("too large"),
            Error::Closed => f.write_str("closed"),
            Error::Timeout => f.write_str("timed out"),
            Error::Busy => f.write_str("busy: mailbox full"),
            Error::Cycle => f.write_str("request cycle"),
            Error::Invalid(s) => write!(f, "invalid: {s}"),
            Error::Unavailable(s) => write!(f, "unavailable: {s}"),
            Error::Failed(s) => write!(f, "failed: {s}"),
        }
    }
}

impl std::error::Error for Error {}

/// What the service knows about one of its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// This end's id.
    pub id: SessionId,
    /// The peer host's id, or `None` when the other end is on this host.
    pub peer: Option<String>,
    /// The instance (or client) at the other end.
    pub service: String,
    /// The channel of the service that accepted the session.
    pub channel: u16,
}

impl From<types::SessionInfo> for Session {
    fn from(s: types::SessionInfo) -> Self {
        Session {
            id: s.id,
            peer: s.peer,
            service: s.service,
            channel: s.channel,
        }
    }
}

/// The instance's `options` from the manifest, as JSON text.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a>(pub &'a str);

impl Options<'_> {
    /// Decodes the options into your own type; a decoding error is reported as a wakeup error.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(self.0).map_err(|e| format!("bad options: {e}"))
    }

    /// The options as untyped JSON.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// One message received on a session.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The message kind, always one of [`Service::MESSAGES`].
    pub kind: &'a str,
    /// The raw payload.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// Decodes a JSON payload into your own type.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.payload)
    }
}

/// One event received, with JSON parameters.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The event name, always one of [`Service::EVENTS`].
    pub name: &'a str,
    /// The parameters as JSON text.
    pub params: &'a str,
}

impl Event<'_> {
    /// Decodes the parameters into your own type.
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(self.params).map_err(|e| format!("bad params for {}: {e}", self.name))
    }
}

/// The answer to an event: JSON text, or an error text for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply(pub Result<String, String>);

impl Reply {
    /// Answers with a value serialised as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Reply {
        Reply(serde_json::to_string(value).map_err(|e| e.to_string()))
    }

    /// Answers with an error text.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply(Err(message.into()))
    }

    /// Answers with `null`.
    pub fn ok() -> Reply {
        Reply(Ok("null".to_string()))
    }
}

impl<T: serde::Serialize, E: fmt::Display> From<Result<T, E>> for Reply {
    fn from(r: Result<T, E>) -> Reply {
        match r {
            Ok(v) => Reply::json(&v),
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

/// A wasmwire service. Every method has a default, so implement only what you use.
///
/// The host creates the value with `Default` when it wakes the instance, calls
/// [`wakeup`](Service::wakeup), then the handlers one at a time, and [`sleep`](Service::sleep)
/// before dropping it.
pub trait Service: Default + 'static {
    /// The message kinds [`on_message`](Service::on_message) accepts; others are refused by the host.
    const MESSAGES: &'static [&'static str] = &[];
    /// The event names [`on_event`](Service::on_event) accepts; others are refused by the host.
    const EVENTS: &'static [&'static str] = &[];

    /// Starts an awake period with the manifest's options. An error counts as a crash.
    fn wakeup(&mut self, options: Options<'_>) -> Result<(), String> {
        let _ = options;
        Ok(())
    }

    /// Ends an awake period; the instance is dropped right after.
    fn sleep(&mut self) {}

    /// A session opened.
    fn on_connect(&mut self, session: Session) {
        let _ = session;
    }

    /// A session closed.
    fn on_disconnect(&mut self, session: SessionId) {
        let _ = session;
    }

    /// A message arrived on a session.
    fn on_message(&mut self, session: SessionId, message: Message<'_>) {
        let _ = (session, message);
    }

    /// An event arrived; `caller` is the session it came on, if any.
    fn on_event(&mut self, caller: Option<SessionId>, event: Event<'_>) -> Reply {
        let _ = caller;
        Reply::error(format!("event {} is not handled", event.name))
    }

    /// A timer fired.
    fn on_timer(&mut self, timer: TimerId) {
        let _ = timer;
    }

    /// The alarm set with [`set_alarm`] for `at_ms` is due. Unlike a timer it wakes a
    /// sleeping instance (a retired key too, or after a host restart). The alarm is already
    /// removed when this runs: call [`set_alarm`] here for the next one. A panic puts it
    /// back, and the host tries again after 1, 2, 4… seconds (six tries in all).
    fn on_alarm(&mut self, at_ms: u64) {
        let _ = at_ms;
    }
}

/// Writes a line to the host's log under this instance's name.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Sends a message on a session. Fails with [`Error::Busy`] when the receiver is full.
pub fn send(session: SessionId, kind: &str, payload: &[u8]) -> Result<(), Error> {
    host::send(session, kind, payload).map_err(Error::from)
}

/// Sends a value serialised as JSON.
pub fn send_json<T: serde::Serialize + ?Sized>(
    session: SessionId,
    kind: &str,
    value: &T,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
    host::send(session, kind, &bytes).map_err(Error::from)
}

/// Closes a session; both ends get `on_disconnect`.
pub fn close(session: SessionId) {
    __private::changed_sessions();
    host::close(session);
}

/// The sessions open now.
pub fn sessions() -> Vec<Session> {
    host::sessions().into_iter().map(Session::from).collect()
}

/// Opens a session to a service on this host (`peer = None`) or on a peer host.
pub fn connect(peer: Option<&str>, service: &str) -> Result<SessionId, Error> {
    __private::changed_sessions();
    host::connect(peer, service).map_err(Error::from)
}

/// Calls an event on another service and waits for its raw JSON reply.
pub fn request(service: &str, event: &str, params: &str) -> Result<String, Error> {
    host::request(service, event, params).map_err(Error::from)
}

/// Calls an event with typed parameters and decodes the typed reply.
pub fn request_json<P, R>(service: &str, event: &str, params: &P) -> Result<R, Error>
where
    P: serde::Serialize + ?Sized,
    R: serde::de::DeserializeOwned,
{
    let params = serde_json::to_string(params).map_err(|e| Error::Invalid(e.to_string()))?;
    let reply = host::request(service, event, &params)?;
    serde_json::from_str(&reply).map_err(|e| Error::Invalid(format!("bad reply: {e}")))
}

/// Sets this instance's one alarm (replacing any) to `at_ms`, milliseconds since the Unix
/// epoch: when it is due the host wakes the instance, even from sleep or after a restart,
/// and calls [`Service::on_alarm`]. It is written with the call's other writes (a panic
/// drops it). Needs a host that keeps data.
pub fn set_alarm(at_ms: u64) -> Result<(), Error> {
    host::set_alarm(at_ms).map_err(Error::from)
}

/// Removes this instance's alarm, if it has one.
pub fn cancel_alarm() {
    host::cancel_alarm();
}

/// When this instance's alarm is due, if it has one.
pub fn alarm() -> Option<u64> {
    host::alarm()
}

/// Now, in milliseconds since the Unix epoch (the clock alarms are set in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts a timer firing every `every_ms` milliseconds while the instance is awake.
pub fn set_timer(every_ms: u64) -> Result<TimerId, Error> {
    host::set_timer(every_ms).map_err(Error::from)
}

/// Stops a timer.
pub fn cancel_timer(timer: TimerId) {
    host::cancel_timer(timer);
}

/// This instance's name from the manifest (`room/42` for a key of a keyed class).
pub fn instance_name() -> String {
    host::instance_name()
}

/// Who this instance is: its full name, its manifest entry (the class of a keyed
/// instance), its key, and the host's peer id.
pub use types::InstanceInfo;

/// This instance's name, class and key, and the host it runs on.
pub fn self_info() -> InstanceInfo {
    host::self_info()
}

/// Exports a [`Service`] type as this component's implementation. Call it once per crate.
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WASMWIRE_STATE: ::std::cell::RefCell<::core::option::Option<$service>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct __WasmwireExport;
            impl $crate::__private::Guest for __WasmwireExport {
                fn describe() -> $crate::__private::Description {
                    $crate::__private::describe::<$service>()
                }
                fn wakeup(options: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::wakeup::<$service>(&__WASMWIRE_STATE, options)
                }
                fn sleep() {
                    $crate::__private::sleep::<$service>(&__WASMWIRE_STATE)
                }
                fn on_connect(session: $crate::__private::SessionInfo) {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| s.on_connect(session.into()))
                }
                fn on_disconnect(session: u64) {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| s.on_disconnect(session))
                }
                fn on_message(session: u64, kind: ::std::string::String, payload: ::std::vec::Vec<u8>) {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| {
                        s.on_message(session, $crate::Message { kind: &kind, payload: &payload })
                    })
                }
                fn on_event(
                    caller: ::core::option::Option<u64>,
                    name: ::std::string::String,
                    params: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| {
                        s.on_event(caller, $crate::Event { name: &name, params: &params }).0
                    })
                }
                fn on_timer(timer: u32) {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| s.on_timer(timer))
                }
            }
            impl $crate::__private::AlarmGuest for __WasmwireExport {
                fn on_alarm(at_ms: u64) {
                    $crate::__private::with::<$service, _>(&__WASMWIRE_STATE, |s| s.on_alarm(at_ms))
                }
            }
            impl $crate::__private::InboxGuest for __WasmwireExport {
                fn on_messages(batch: ::std::vec::Vec<$crate::__private::Delivered>) -> u32 {
                    $crate::__private::on_messages::<$service>(&__WASMWIRE_STATE, batch)
                }
                fn on_message_block(block: $crate::__private::MessageBlock) -> u32 {
                    $crate::__private::on_message_block::<$service>(&__WASMWIRE_STATE, block)
                }
            }
            $crate::bindings::__export_service_bindings!(__WasmwireExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::wasmwire::service::alarm::Guest as AlarmGuest;
    pub use crate::bindings::exports::wasmwire::service::inbox::{
        Guest as InboxGuest, Message as Delivered, MessageBlock,
    };
    pub use crate::bindings::exports::wasmwire::service::lifecycle::{Description, Guest};
    pub use crate::bindings::wasmwire::service::types::SessionInfo;
    pub use wit_bindgen;

    use super::*;

    type State<S> = LocalKey<RefCell<Option<S>>>;

    pub fn describe<S: Service>() -> Description {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Description {
            messages: own(S::MESSAGES),
            events: own(S::EVENTS),
        }
    }

    pub fn wakeup<S: Service>(state: &'static State<S>, options: String) -> Result<(), String> {
        let mut service = S::default();
        service.wakeup(Options(&options))?;
        state.with(|s| *s.borrow_mut() = Some(service));
        Ok(())
    }

    pub fn sleep<S: Service>(state: &'static State<S>) {
        if let Some(mut service) = state.with(|s| s.borrow_mut().take()) {
            service.sleep();
        }
    }

    thread_local! {
        /// Calls to `close` and `connect` so far: a batch stops after a message whose
        /// handling made one, so that the `on-disconnect`/`on-connect` it causes comes
        /// before the next message, as it does between `on-message` calls.
        static SESSION_CHANGES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Counts a `close` or `connect`.
    pub fn changed_sessions() {
        SESSION_CHANGES.with(|c| c.set(c.get() + 1));
    }

    /// `on-messages`: each message to [`Service::on_message`] in order, up to and including
    /// the first whose handling opened or closed a session; returns how many.
    pub fn on_messages<S: Service>(state: &'static State<S>, batch: Vec<Delivered>) -> u32 {
        with(state, |s| {
            let mut handled = 0;
            for m in &batch {
                let before = SESSION_CHANGES.with(std::cell::Cell::get);
                s.on_message(
                    m.session,
                    Message {
                        kind: &m.kind,
                        payload: &m.payload,
                    },
                );
                handled += 1;
                if SESSION_CHANGES.with(std::cell::Cell::get) != before {
                    break;
                }
            }
            handled
        })
    }

    /// `on-message-block`: as [`on_messages`], the batch read in place. A message whose kind
    /// index or payload bounds the host got wrong (a host bug) is skipped, not a trap.
    pub fn on_message_block<S: Service>(state: &'static State<S>, block: MessageBlock) -> u32 {
        with(state, |s| {
            let mut handled = 0;
            let mut start = 0;
            for (i, &session) in block.sessions.iter().enumerate() {
                handled += 1;
                let Some(end) = block.ends.get(i).map(|&e| e as usize) else {
                    continue;
                };
                // This message's bytes, and the next one's start, whatever is wrong here.
                let payload = block.bytes.get(start..end);
                start = end.max(start);
                let kind = block
                    .kinds
                    .get(i)
                    .and_then(|&k| S::MESSAGES.get(k as usize));
                let (Some(kind), Some(payload)) = (kind, payload) else {
                    continue;
                };
                let before = SESSION_CHANGES.with(std::cell::Cell::get);
                s.on_message(session, Message { kind, payload });
                if SESSION_CHANGES.with(std::cell::Cell::get) != before {
                    break;
                }
            }
            handled
        })
    }

    /// Runs a handler on the awake state; the host only calls handlers between wakeup and sleep,
    /// but a missing state (a host bug) is answered with a fresh default rather than a trap.
    pub fn with<S: Service, R>(state: &'static State<S>, f: impl FnOnce(&mut S) -> R) -> R {
        state.with(|s| {
            let mut slot = s.borrow_mut();
            f(slot.get_or_insert_with(S::default))
        })
    }
}
