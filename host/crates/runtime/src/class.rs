//! What a loaded component declares — its message kinds and events — and the one rule
//! every sender, caller and the fuzzer ask before a message or event reaches a guest:
//! declared, and within the receiver's `max_message`.

use super::cache::CacheOutcome;
use super::call::CallError;
use std::path::PathBuf;
use wasmtime::component::__internal::{InterfaceType, LowerContext, map_maybe_uninit};

/// What a loaded service component declares (its pre-linked code is beside it, in `Compiled`).
pub struct Class {
    /// The component file.
    pub path: PathBuf,
    /// Message kinds it accepts, in `describe` order (indexes are used on the hot path).
    pub messages: Box<[String]>,
    /// Event names it accepts.
    pub events: Box<[String]>,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
    /// Whether it imports `wasi:keyvalue` or `set-alarm` (the host opens its data file only
    /// if one does).
    pub stores: bool,
    /// Its `on-alarm` export (world `service-with-alarms`), if it has one.
    pub on_alarm: Option<wasmtime::component::ComponentExportIndex>,
    /// Its `on-messages` export (world `service-with-batches`), if it has one: the
    /// actor then hands it runs of messages in one call.
    pub on_messages: Option<wasmtime::component::ComponentExportIndex>,
    /// Its `on-message-block` export (since 0.1.4), if it has one: preferred to
    /// `on-messages`.
    pub on_message_block: Option<wasmtime::component::ComponentExportIndex>,
    /// Where its `lifecycle` exports are, found once (a wake looks nothing up by name).
    pub(crate) exports: crate::bindings::ServiceIndices,
}

/// One message of a batch, as `inbox.on-messages` takes it: borrowed from the envelopes
/// it came in, so a batch copies no payload on the host side.
#[derive(wasmtime::component::ComponentType)]
#[component(record)]
pub(crate) struct Delivered<'a> {
    /// This end's session.
    pub session: u64,
    /// Its declared kind.
    pub kind: &'a str,
    /// Its bytes.
    pub payload: &'a [u8],
}

/// A run of messages as `inbox.on-message-block` takes it (a `message-block`): four lists
/// for the whole run, so the guest allocates four times a batch instead of twice a message
/// and reads each message in place.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Default)]
#[component(record)]
pub(crate) struct Block {
    /// Message `i`'s session (this end's).
    pub sessions: Vec<u64>,
    /// Message `i`'s kind: its index in the class's `messages`.
    pub kinds: Vec<u16>,
    /// Where message `i`'s payload ends in `bytes`.
    pub ends: Vec<u32>,
    /// The payloads, one after the other.
    pub bytes: Vec<u8>,
}

impl Block {
    /// The run `messages` (with their kinds' indices, `kinds`), copied into a block.
    pub(crate) fn of(messages: &[Delivered<'_>], kinds: &[u16]) -> Block {
        let bytes = messages.iter().map(|m| m.payload.len()).sum();
        let mut block = Block {
            sessions: Vec::with_capacity(messages.len()),
            kinds: kinds[..messages.len()].to_vec(),
            ends: Vec::with_capacity(messages.len()),
            bytes: Vec::with_capacity(bytes),
        };
        for m in messages {
            block.sessions.push(m.session);
            block.bytes.extend_from_slice(m.payload);
            // Below `u32::MAX`: past the first, at most `RUN_BYTES` of payloads.
            block.ends.push(block.bytes.len() as u32);
        }
        block
    }
}

/// Messages a batch's list is written in at a time: their kinds and payloads are
/// allocated in the guest first, then all of them written through one look-up of its
/// memory (addresses kept on the stack: 2 × 8 bytes a message). Fewer than a run of
/// [`MAX_RUN_LIST`], so that a run of 16 is written in two chunks (and the tests see it).
const LOWER_CHUNK: usize = 8;

/// Size of a `message` record in guest memory: `u64`, then `string` and `list<u8>` as
/// (address, length) pairs of `u32`.
const RECORD_SIZE: usize = 24;

// SAFETY: lowers exactly the record `ComponentType` derived above describes (checked
// against the export's type when the class is loaded): `session` at 0, `kind` at 8 and
// `payload` at 16, each string and list in memory of its own got from the guest's
// `realloc`, as the canonical ABI has a guest own them.
unsafe impl wasmtime::component::Lower for Delivered<'_> {
    #[inline]
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut std::mem::MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        let fields = record_fields(cx, ty);
        self.session
            .linear_lower_to_flat(cx, fields[0], map_maybe_uninit!(dst.session))?;
        self.kind
            .linear_lower_to_flat(cx, fields[1], map_maybe_uninit!(dst.kind))?;
        self.payload
            .linear_lower_to_flat(cx, fields[2], map_maybe_uninit!(dst.payload))
    }

    #[inline]
    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let fields = record_fields(cx, ty);
        self.session.linear_lower_to_memory(cx, fields[0], offset)?;
        self.kind
            .linear_lower_to_memory(cx, fields[1], offset + 8)?;
        self.payload
            .linear_lower_to_memory(cx, fields[2], offset + 16)
    }

    /// The whole batch: the generated lowering looks the guest's memory up again for
    /// every field it writes (ten times a message, a third of a receiving worker's time
    /// in `make bench` (a)); here once per [`LOWER_CHUNK`] messages, beside the two
    /// `realloc` calls a message needs in any case.
    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        mut offset: usize,
        items: &[Self],
    ) -> wasmtime::Result<()> {
        use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
        if !matches!(cx.options().string_encoding, StringEncoding::Utf8) {
            // A guest that takes strings in UTF-16 or Latin-1: the generated way.
            for item in items {
                item.linear_lower_to_memory(cx, ty, offset)?;
                offset += RECORD_SIZE;
            }
            return Ok(());
        }
        let mut at = [[0usize; 2]; LOWER_CHUNK];
        for chunk in items.chunks(LOWER_CHUNK) {
            for (m, at) in chunk.iter().zip(at.iter_mut()) {
                // `realloc` checks that what it returns lies inside memory.
                at[0] = cx.realloc(0, 0, 1, m.kind.len())?;
                at[1] = cx.realloc(0, 0, 1, m.payload.len())?;
            }
            let memory = cx.as_slice_mut();
            for (m, at) in chunk.iter().zip(at.iter()) {
                memory[at[0]..][..m.kind.len()].copy_from_slice(m.kind.as_bytes());
                memory[at[1]..][..m.payload.len()].copy_from_slice(m.payload);
                let record: &mut [u8; RECORD_SIZE] = memory
                    .get_mut(offset..offset + RECORD_SIZE)
                    .and_then(|r| r.try_into().ok())
                    .ok_or_else(|| wasmtime::format_err!("batch list beyond end of memory"))?;
                record[0..8].copy_from_slice(&m.session.to_le_bytes());
                record[8..12].copy_from_slice(&(at[0] as u32).to_le_bytes());
                record[12..16].copy_from_slice(&(m.kind.len() as u32).to_le_bytes());
                record[16..20].copy_from_slice(&(at[1] as u32).to_le_bytes());
                record[20..24].copy_from_slice(&(m.payload.len() as u32).to_le_bytes());
                offset += RECORD_SIZE;
            }
        }
        Ok(())
    }
}

/// The field types of the record `ty` (a `message`, as `Delivered` lowers it).
#[inline]
fn record_fields<T>(cx: &LowerContext<'_, T>, ty: InterfaceType) -> [InterfaceType; 3] {
    let InterfaceType::Record(i) = ty else {
        wasmtime::component::__internal::bad_type_info()
    };
    let fields = &cx.types[i].fields;
    [fields[0].ty, fields[1].ty, fields[2].ty]
}

/// Most messages in one `on-message-block` call. The call may use `call_timeout` of CPU
/// for each, so this also bounds how long an endless loop in a batch runs before it is
/// stopped (64 × 100 ms by default; it gives its thread back every 2 ms all along, so its
/// neighbours keep going). 64 rather than 16: a batch's fixed cost (the fiber, four
/// `realloc`s, the end-of-call work) spread four times thinner gave bench (b) 4.0–4.2 M/s
/// instead of 3.65–3.74.
pub(crate) const MAX_RUN: usize = 64;

/// Most messages in one `on-messages` call: what its WIT (0.1.3) promises a guest.
pub(crate) const MAX_RUN_LIST: usize = 16;

/// Most payload bytes in one call, past its first message: the guest gets the whole
/// batch's payloads at once, in memory of its own (its limit is 64 MiB by default, a
/// message's 1 MiB), so a run is cut here, however few messages it has.
pub(crate) const RUN_BYTES: usize = 256 << 10;

/// How many of the messages whose payload sizes `lens` gives (in order) go in one call:
/// at most `max`, at least one, and no more than [`RUN_BYTES`] of payload past the first.
#[inline]
pub(crate) fn run_length(lens: impl Iterator<Item = usize>, max: usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for len in lens.take(max) {
        bytes += len;
        if n > 0 && bytes > RUN_BYTES {
            break;
        }
        n += 1;
    }
    n
}

impl Class {
    /// Most messages it is handed in one call: [`MAX_RUN`] through `on-message-block`,
    /// [`MAX_RUN_LIST`] through `on-messages`.
    #[inline]
    pub fn max_run(&self) -> usize {
        if self.on_message_block.is_some() {
            MAX_RUN
        } else {
            MAX_RUN_LIST
        }
    }

    /// Whether the actor hands it runs of messages in one call: it exports
    /// `on-message-block` or `on-messages`, and keeps no data. (A batch is one call, so one transaction: a trap in it would
    /// drop the writes of the messages handled before it, which are not delivered again.
    /// A service that writes gets one `on-message` per message, each its own transaction.)
    #[inline]
    pub fn batches(&self) -> bool {
        (self.on_messages.is_some() || self.on_message_block.is_some()) && !self.stores
    }

    /// Whether it exports `on-alarm`: only then may it set an alarm.
    #[inline]
    pub fn alarms(&self) -> bool {
        self.on_alarm.is_some()
    }

    /// The index of an accepted message kind.
    #[inline]
    pub fn message_index(&self, kind: &str) -> Option<u16> {
        self.messages
            .iter()
            .position(|k| k == kind)
            .map(|i| i as u16)
    }

    /// The index of an accepted event name.
    #[inline]
    pub fn event_index(&self, name: &str) -> Option<u16> {
        self.events.iter().position(|k| k == name).map(|i| i as u16)
    }
}

/// Why a message or an event is refused before the guest: a value, made into the caller's
/// error (and its text) only by whoever reports it, so that a caller that only counts
/// refusals (the fuzzer) formats nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The receiver declares no such kind or event.
    Undeclared,
    /// Over the receiver's `max_message`.
    TooLarge {
        /// Bytes sent.
        size: usize,
        /// The receiver's limit.
        limit: u64,
    },
}

impl Refusal {
    /// The error a sender of message kind `kind` to the instance `name` gets.
    pub(crate) fn message_error(self, name: &str, class: &Class, kind: &str) -> CallError {
        match self {
            Refusal::Undeclared => CallError::Invalid(format!(
                "{name} does not accept message kind {kind:?}; it declares {:?}",
                class.messages
            )),
            Refusal::TooLarge { size, limit } => CallError::TooLarge { size, limit },
        }
    }

    /// The error a caller of event `event` on the instance `name` gets.
    pub(crate) fn event_error(self, name: &str, class: &Class, event: &str) -> CallError {
        match self {
            Refusal::Undeclared => CallError::Invalid(format!(
                "{name} has no event {event:?}; it declares {:?}",
                class.events
            )),
            Refusal::TooLarge { size, limit } => CallError::TooLarge { size, limit },
        }
    }
}

/// The number of message kind `kind` among those `class` declares, or why a message of
/// `len` bytes (to an instance taking at most `max_message`) is refused. Checked before the
/// guest, by the sender: every sender and the fuzzer ask here.
#[inline]
pub(crate) fn check_message(
    class: &Class,
    max_message: u64,
    kind: &str,
    len: usize,
) -> Result<u16, Refusal> {
    admit(class.message_index(kind), max_message, len)
}

/// The number of event `event` among those `class` declares, or why a call of it with
/// `len` bytes of parameters (to an instance taking at most `max_message`) is refused.
/// Checked before the guest: every caller and the fuzzer ask here.
#[inline]
pub(crate) fn check_event(
    class: &Class,
    max_message: u64,
    event: &str,
    len: usize,
) -> Result<u16, Refusal> {
    admit(class.event_index(event), max_message, len)
}

/// The one rule for both: declared, and at most `max_message` bytes.
#[inline]
fn admit(index: Option<u16>, max_message: u64, len: usize) -> Result<u16, Refusal> {
    let index = index.ok_or(Refusal::Undeclared)?;
    if len as u64 > max_message {
        return Err(Refusal::TooLarge {
            size: len,
            limit: max_message,
        });
    }
    Ok(index)
}
