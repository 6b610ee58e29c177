//! What `wasmwire fuzz` watches in a guest's host calls, and the errors it injects: a
//! wrapper around the production imports ([`ServiceCtxView`]) that the fuzzer's linker
//! installs instead of them. The production imports know nothing of it, so a real host pays
//! nothing for it, and the fuzzer still runs the very code a host runs behind each check.

use super::bindings::wasmwire::service::{host, types};
use super::bindings::{InstanceInfo, Level, SessionInfo, WitError};
use super::call::SessionId;
use super::service_ctx::ServiceCtxView;
use std::collections::HashSet;
use wasmtime::component::HasData;

/// What a fuzzing run watches in host calls, and the error it injects into the next one.
#[derive(Default)]
pub struct Audit {
    /// Every session id the host handed this instance.
    pub given: HashSet<SessionId>,
    /// Broken host-side rules, in the order seen.
    pub violations: Vec<String>,
    /// The error the next `send`, `connect` or `request` returns instead of its own answer.
    pub fault: Option<WitError>,
}

/// The `wasmwire:service/host` imports with an audit around them.
pub struct Audited<'a> {
    /// The production imports every call reaches unless a fault is injected.
    pub imports: ServiceCtxView<'a>,
    /// The run's audit (`None` only in a store built without one: then it checks nothing).
    pub audit: Option<&'a mut Audit>,
}

/// The fuzzer's linker getter type for the `wasmwire:service` imports.
pub struct HasAudited;

impl HasData for HasAudited {
    type Data<'a> = Audited<'a>;
}

impl Audited<'_> {
    /// The error the fuzzer injects into this call, if it wants one.
    fn injected(&mut self) -> Option<WitError> {
        self.audit.as_mut()?.fault.take()
    }
}

impl types::Host for Audited<'_> {}

impl host::Host for Audited<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.imports.log(level, message)
    }

    fn send(
        &mut self,
        session: SessionId,
        kind: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        if let Some(audit) = self.audit.as_mut()
            && !audit.given.contains(&session)
        {
            audit.violations.push(format!(
                "the guest sent a {kind:?} message on session {session}, which it was never given"
            ));
        }
        if let Some(e) = self.injected() {
            return Ok(Err(e));
        }
        self.imports.send(session, kind, payload)
    }

    fn close(&mut self, session: SessionId) -> wasmtime::Result<()> {
        self.imports.close(session)
    }

    fn sessions(&mut self) -> wasmtime::Result<Vec<SessionInfo>> {
        self.imports.sessions()
    }

    async fn connect(
        &mut self,
        peer: Option<String>,
        service: String,
    ) -> wasmtime::Result<Result<SessionId, WitError>> {
        if let Some(e) = self.injected() {
            return Ok(Err(e));
        }
        self.imports.connect(peer, service).await
    }

    async fn request(
        &mut self,
        service: String,
        event: String,
        params: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        if let Some(e) = self.injected() {
            return Ok(Err(e));
        }
        self.imports.request(service, event, params).await
    }

    fn set_timer(&mut self, every_ms: u64) -> wasmtime::Result<Result<u32, WitError>> {
        self.imports.set_timer(every_ms)
    }

    fn cancel_timer(&mut self, timer: u32) -> wasmtime::Result<()> {
        self.imports.cancel_timer(timer)
    }

    fn instance_name(&mut self) -> wasmtime::Result<String> {
        self.imports.instance_name()
    }

    fn self_info(&mut self) -> wasmtime::Result<InstanceInfo> {
        self.imports.self_info()
    }

    fn set_alarm(&mut self, at_ms: u64) -> wasmtime::Result<Result<(), WitError>> {
        self.imports.set_alarm(at_ms)
    }

    fn cancel_alarm(&mut self) -> wasmtime::Result<()> {
        self.imports.cancel_alarm()
    }

    fn alarm(&mut self) -> wasmtime::Result<Option<u64>> {
        self.imports.alarm()
    }
}
