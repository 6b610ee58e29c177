//! The TOML manifest: which services run, with which options and limits.
//!
//! Loading has three steps, each in its own file: `schema` (serde types exactly as written,
//! unknown fields rejected), `validate` (defaults, references between entries, files on
//! disk) and the types below, which are what the rest of the host uses. Every error names
//! the file, the line and the field, and says what to write instead.

mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmwire_wire::PeerId;

pub use validate::parse;

/// A loaded, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from, as given.
    pub path: PathBuf,
    /// Host-wide settings.
    pub host: HostConfig,
    /// Service instances, in file order.
    pub services: Vec<ServiceConfig>,
    /// Every shared bucket a service lists, with its quotas.
    pub buckets: Vec<BucketConfig>,
}

/// How a service may use a shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read its keys.
    ReadOnly,
    /// Read and write them.
    ReadWrite,
}

/// A shared bucket and its quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// Its name, as services list it.
    pub name: String,
    /// Most bytes of keys and values it may hold.
    pub max_data: u64,
    /// Most keys it may hold.
    pub max_keys: u64,
}

/// A shared bucket's `max_data` when its `[[bucket]]` does not say.
pub const DEFAULT_BUCKET_MAX_DATA: u64 = 1 << 30;
/// A shared bucket's `max_keys` when its `[[bucket]]` does not say.
pub const DEFAULT_BUCKET_MAX_KEYS: u64 = 10_000_000;

/// `[host] keep_resident` when not written and no service is keyed.
pub const DEFAULT_KEEP_RESIDENT: u64 = 256 << 10;

/// Host-wide settings with defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// QUIC listen address, if any.
    pub listen: Option<std::net::SocketAddr>,
    /// The address peers are told to dial (default: `listen`).
    pub advertise: Option<std::net::SocketAddr>,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The HTTP and WebSocket gateway, if `[host] http` is set.
    pub http: Option<HttpConfig>,
    /// The identity key file.
    pub identity: PathBuf,
    /// Peers dialled at start and kept connected.
    pub peers: Vec<PeerSpec>,
    /// Peer ids allowed to connect (empty: any).
    pub allow: Vec<PeerId>,
    /// QUIC settings of every connection.
    pub transport: Transport,
    /// Size of the instance pool: most instances awake at once.
    pub max_awake: u32,
    /// Bytes of each freed pool slot's linear memory kept resident (written pages reset in
    /// place) instead of given back to the system: faster next wakes, memory held.
    pub keep_resident: u64,
    /// Folder of the compiled-component cache.
    pub cache_dir: PathBuf,
    /// Folder of the services' durable data (fjall's `keyvalue/` folder; opened only when a
    /// component imports `wasi:keyvalue`).
    pub data_dir: PathBuf,
    /// Bytes kept free on the disk of `data_dir`: a write made with less free fails with
    /// an error to the guest (which keeps running) instead of filling the disk.
    pub data_reserve: u64,
    /// Worker threads that run the instances.
    pub threads: u32,
    /// How long a stopping host (SIGTERM, Ctrl-C) waits for its services to finish the work
    /// they accepted before it stops them where they are.
    pub shutdown_timeout: Duration,
}

/// The HTTP and WebSocket gateway's settings (the `[host] http*` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// SHA-256 digests of the bearer tokens written in the manifest.
    pub tokens: Vec<[u8; 32]>,
    /// A file of tokens (one per line, as given or as `sha256:HEX`), read at start.
    pub tokens_file: Option<PathBuf>,
    /// Origins allowed by CORS (`"*"`: any); empty: CORS off.
    pub origins: Vec<String>,
    /// The folder of static files it serves, if any.
    pub static_dir: Option<PathBuf>,
    /// Certificate chain and key (PEM files): HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Parses a token digest as the manifest writes it: `sha256:` and 64 hex digits.
pub fn parse_token_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The default of `[host] data_reserve`: 64 MiB.
pub const DEFAULT_DATA_RESERVE: u64 = 64 << 20;

/// The default of `[host] shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC settings (each a `[host]` field of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// How often an idle connection is pinged, so that the peer's idle timer never fires
    /// while both are alive.
    pub keep_alive: Duration,
    /// How long without a packet before a connection is declared dead.
    pub peer_timeout: Duration,
    /// Bytes a peer may send on one stream before the receiver reads them.
    pub stream_window: u64,
    /// Bytes a peer may send on all streams of a connection before the receiver reads.
    pub connection_window: u64,
    /// Sessions a peer may have open to this host at once (plus its control stream).
    pub max_streams: u32,
    /// How long a session or connection may have data waiting and make no progress before
    /// it is logged (once) and counted as a stall.
    pub stall_after: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            keep_alive: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            stream_window: 1 << 20,
            connection_window: 8 << 20,
            max_streams: 1024,
            stall_after: Duration::from_secs(5),
        }
    }
}

/// A configured peer: an address or DNS name with a port, and maybe the id it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// `ip:port` or `name:port`, as written.
    pub addr: String,
    /// The id after `#`, if given.
    pub expected: Option<PeerId>,
}

impl std::str::FromStr for PeerSpec {
    type Err = String;

    /// Parses `ADDR`, `ADDR#PEERID` or `NAME:PORT[#PEERID]`.
    fn from_str(s: &str) -> Result<PeerSpec, String> {
        let (addr, expected) = match s.split_once('#') {
            Some((a, id)) => (a, Some(id.parse::<PeerId>().map_err(|e| e.to_string())?)),
            None => (s, None),
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!(
                "{addr:?} has no port: write it like \"10.0.0.2:7400\""
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "{addr:?} is not HOST:PORT: write it like \"10.0.0.2:7400\" or \"peers.example:7400\""
            ));
        }
        Ok(PeerSpec {
            addr: addr.to_string(),
            expected,
        })
    }
}

/// One service instance with defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Unique instance name.
    pub name: String,
    /// The component file (resolved against the manifest's folder).
    pub component: PathBuf,
    /// Where the `component` value is written, for errors found when loading it.
    pub component_at: Location,
    /// The channel it listens on.
    pub channel: u16,
    /// The `options` table as JSON, handed to `wakeup`.
    pub options_json: String,
    /// Services of this host it may connect to or request.
    pub uses: Vec<String>,
    /// Services on other hosts it may use: (peer id, or `None` for any; name).
    pub remote_uses: Vec<(Option<PeerId>, String)>,
    /// Reachable from other hosts and clients.
    pub expose: bool,
    /// Woken at start and kept awake.
    pub autostart: bool,
    /// For a keyed class (`keyed = true`): its `max_instances`. Its instances are named
    /// `name/KEY` and made on first demand.
    pub keyed: Option<u32>,
    /// The shared buckets it may open, and how.
    pub buckets: Vec<(String, Access)>,
    /// Per-instance limits.
    pub limits: Limits,
}

/// `max_instances` of a keyed class when the manifest does not say.
pub const DEFAULT_MAX_INSTANCES: u32 = 100_000;

/// Per-instance limits (each a manifest field of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, bytes.
    pub memory: u64,
    /// CPU time per call.
    pub call_timeout: Duration,
    /// Messages and events that may wait in the mailbox.
    pub mailbox: u32,
    /// Largest payload or parameters, bytes.
    pub max_message: u64,
    /// Sessions open at once.
    pub max_sessions: u32,
    /// Timers at once.
    pub max_timers: u32,
    /// How long `request`/`connect` wait.
    pub request_timeout: Duration,
    /// Idle time before sleep.
    pub idle_timeout: Duration,
    /// Crashes allowed within `restart_window`.
    pub max_restarts: u32,
    /// Window for `max_restarts`.
    pub restart_window: Duration,
    /// First restart delay, doubled per crash in the window.
    pub restart_backoff: Duration,
    /// Bytes of keys and values its own bucket may hold.
    pub max_data: u64,
    /// Keys its own bucket may hold.
    pub max_keys: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            call_timeout: Duration::from_millis(100),
            mailbox: 1024,
            max_message: 1 << 20,
            max_sessions: 1024,
            max_timers: 16,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(100),
            max_data: 64 << 20,
            max_keys: 100_000,
        }
    }
}

/// A place in the manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// One problem in a manifest, with where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The manifest file, as given.
    pub file: PathBuf,
    /// Where in it.
    pub at: Location,
    /// The field, as a path like `service[2].component`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when we can tell.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: field `{}`: {}",
            self.file.display(),
            self.at.line,
            self.at.column,
            self.field,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has errors; all of them are listed.
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {d}")?;
        }
        Ok(())
    }
}

/// Reads and validates a manifest file.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let source = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, path)
}
