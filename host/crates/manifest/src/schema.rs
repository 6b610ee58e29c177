//! The manifest as written: serde types only, unknown fields rejected, spans kept so that
//! later passes can point at the line of any value. Defaults and checks live in `validate`.

use super::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use toml::Spanned;

/// The whole file: one `[host]` table and any number of `[[service]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Host-wide settings.
    #[serde(default)]
    pub host: HostSection,
    /// Service instances, in file order.
    #[serde(default)]
    pub service: Vec<ServiceSection>,
    /// Shared buckets' quotas.
    #[serde(default)]
    pub bucket: Vec<BucketSection>,
}

/// `[[bucket]]`: the quotas of a shared bucket that services list in `buckets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSection {
    /// The bucket's name, as services list it.
    pub name: Spanned<String>,
    /// Most bytes of keys and values it may hold.
    pub max_data: Option<Spanned<ByteSize>>,
    /// Most keys it may hold.
    pub max_keys: Option<Spanned<u64>>,
}

/// `[host]`: where this host listens, who it is, and how many instances may be awake.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// QUIC listen address (`"127.0.0.1:7400"`); used once peers are wired.
    pub listen: Option<Spanned<String>>,
    /// Address told to peers instead of `listen` (behind a port forward, NAT or relay).
    pub advertise: Option<Spanned<String>>,
    /// Address of the Prometheus endpoint (`"127.0.0.1:9464"`); none by default.
    pub metrics: Option<Spanned<String>>,
    /// Address of the HTTP and WebSocket gateway (`"127.0.0.1:8080"`); none by default.
    pub http: Option<Spanned<String>>,
    /// Bearer tokens the gateway accepts, each as `sha256:HEX` of the token.
    #[serde(default)]
    pub http_tokens: Vec<Spanned<String>>,
    /// A file of bearer tokens the gateway accepts, one per line (read at start).
    pub http_tokens_file: Option<Spanned<String>>,
    /// Origins a browser page may call the gateway from (CORS); none by default.
    #[serde(default)]
    pub http_origins: Vec<Spanned<String>>,
    /// A folder of static files the gateway serves outside `/v1/` and `/metrics`.
    pub http_static: Option<Spanned<String>>,
    /// PEM certificate chain: the gateway speaks HTTPS (with `http_key`).
    pub http_cert: Option<Spanned<String>>,
    /// PEM private key of `http_cert`.
    pub http_key: Option<Spanned<String>>,
    /// Path of the ed25519 key file, created if missing.
    pub identity: Option<Spanned<String>>,
    /// Peer addresses dialled at start.
    #[serde(default)]
    pub peers: Vec<Spanned<String>>,
    /// Peer ids allowed to connect; empty allows any.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Most instances awake at once (the size of the instance pool).
    pub max_awake: Option<Spanned<u32>>,
    /// Bytes of a freed instance's memory kept resident for the next one in its slot.
    pub keep_resident: Option<Spanned<ByteSize>>,
    /// Where compiled components are cached.
    pub cache_dir: Option<Spanned<String>>,
    /// Where the services' durable data (`wasi:keyvalue`) is kept.
    pub data_dir: Option<Spanned<String>>,
    /// Disk space kept free under `data_dir`: a write that finds less fails.
    pub data_reserve: Option<Spanned<ByteSize>>,
    /// Worker threads that run the instances (default: one per core).
    pub threads: Option<Spanned<u32>>,
    /// Interval of QUIC keep-alive pings.
    pub keep_alive: Option<Spanned<HumanDuration>>,
    /// Silence after which a peer connection is dead.
    pub peer_timeout: Option<Spanned<HumanDuration>>,
    /// Receive window of one stream.
    pub stream_window: Option<Spanned<ByteSize>>,
    /// Receive window of one connection.
    pub connection_window: Option<Spanned<ByteSize>>,
    /// Streams a peer may have open at once.
    pub max_streams: Option<Spanned<u32>>,
    /// How long a session or connection may have data waiting without progress before the
    /// watchdog logs and counts it.
    pub stall_after: Option<Spanned<HumanDuration>>,
    /// How long a stopping host waits for its services to finish the work they accepted.
    pub shutdown_timeout: Option<Spanned<HumanDuration>>,
}

/// `[[service]]`: one named, configured instance of a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Unique instance name.
    pub name: Spanned<InstanceName>,
    /// Path of the `.wasm` component, relative to the manifest's folder.
    pub component: Spanned<String>,
    /// Channel (like a port) the instance listens on; 0 is the host's broker.
    pub channel: Spanned<u16>,
    /// Handed to `wakeup` as a JSON object.
    pub options: Option<Spanned<toml::Table>>,
    /// The only services this instance may connect to or request: `name` on this host,
    /// `PEERID/name` or `*/name` on others.
    #[serde(default)]
    pub uses: Vec<Spanned<String>>,
    /// Reachable from other hosts and clients (default: only from this host's services).
    #[serde(default)]
    pub expose: bool,
    /// Wake at start and keep awake (restarted after a crash) instead of waking on demand.
    #[serde(default)]
    pub autostart: bool,
    /// A class of instances named `name/KEY`, each made on first demand.
    pub keyed: Option<Spanned<bool>>,
    /// Most keys of a keyed class live at once.
    pub max_instances: Option<Spanned<u32>>,
    /// Put to sleep after this long with no sessions and an empty mailbox.
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// Linear memory limit.
    pub memory: Option<Spanned<ByteSize>>,
    /// CPU time one call may use before it is stopped.
    pub call_timeout: Option<Spanned<HumanDuration>>,
    /// How many messages and events may wait; past that senders get `busy`.
    pub mailbox: Option<Spanned<u32>>,
    /// Largest message payload or event parameters accepted.
    pub max_message: Option<Spanned<ByteSize>>,
    /// Most sessions open at once.
    pub max_sessions: Option<Spanned<u32>>,
    /// Most timers at once.
    pub max_timers: Option<Spanned<u32>>,
    /// How long this instance's `request` and `connect` wait for an answer.
    pub request_timeout: Option<Spanned<HumanDuration>>,
    /// Crashes allowed within `restart_window` before the instance stays down.
    pub max_restarts: Option<Spanned<u32>>,
    /// The window `max_restarts` counts crashes in.
    pub restart_window: Option<Spanned<HumanDuration>>,
    /// First delay before a restart; doubles with each crash in the window.
    pub restart_backoff: Option<Spanned<HumanDuration>>,
    /// Shared buckets this instance may open, by name: `"read-only"` or `"read-write"`.
    #[serde(default)]
    pub buckets: std::collections::BTreeMap<String, Spanned<super::Access>>,
    /// Most bytes of keys and values the instance's own bucket may hold (each key's, for a
    /// keyed class).
    pub max_data: Option<Spanned<ByteSize>>,
    /// Most keys its own bucket may hold.
    pub max_keys: Option<Spanned<u64>>,
}

/// An instance name: lowercase letters, digits and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct InstanceName(pub String);

impl TryFrom<String> for InstanceName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() {
            return Err("instance name is empty: give each service a name like \"chat\"".into());
        }
        if name.len() > 64 {
            return Err(format!(
                "instance name {name:?} is longer than 64 characters"
            ));
        }
        if name.contains('_') {
            return Err(format!(
                "invalid instance name {name:?}: words must be separated with '-', not '_' (write {:?})",
                name.replace('_', "-")
            ));
        }
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid instance name {name:?}: use lowercase letters (write {:?})",
                name.to_ascii_lowercase()
            ));
        }
        let first_is_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
        if !first_is_letter
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "invalid instance name {name:?}: use lowercase letters, digits and '-', starting with a letter"
            ));
        }
        if wasmwire_wire::addr::names_a_host(&name) {
            return Err(format!(
                "invalid instance name {name:?}: it reads as a peer id, which names a host in a service address (PEERID/name); choose another name"
            ));
        }
        Ok(InstanceName(name))
    }
}
