//! Turns the written manifest (`schema`) into the one the host uses: applies defaults,
//! resolves paths against the manifest's folder, and checks what serde cannot see —
//! duplicate names and channels, `uses` that name no service, files that do not exist,
//! limits out of range. All problems are collected, not just the first.

use super::DEFAULT_MAX_INSTANCES;
use super::schema::InstanceName;
use super::schema::{BucketSection, ManifestFile, ServiceSection};
use super::{
    BucketConfig, Diagnostic, HostConfig, Limits, Location, Manifest, ManifestError, PeerSpec,
    ServiceConfig, Transport,
};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use wasmwire_wire::PeerId;

/// Parses and validates manifest text read from `path`.
pub fn parse(source: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let file = Source { text: source, path };
    let written: ManifestFile =
        toml::from_str(source).map_err(|e| ManifestError::Invalid(vec![file.toml_error(&e)]))?;
    let mut v = Validator {
        file,
        problems: Vec::new(),
    };
    let manifest = v.manifest(written);
    if v.problems.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestError::Invalid(v.problems))
    }
}

/// The manifest text, for turning byte offsets into lines and field paths.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn location(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { line, column }
    }

    /// The dotted path of the key written on the line at `offset`, such as `service[1].memory`,
    /// found by reading the table headers above it.
    fn field_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let mut table = String::new();
        let mut service_index = 0usize;
        for l in self.text[..line_start].lines() {
            let l = l.trim();
            if l == "[[service]]" {
                service_index += 1;
                table = format!("service[{service_index}]");
            } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                table = name.trim_matches(['[', ']']).trim().to_string();
            }
        }
        let key = match line.split_once('=') {
            Some((key, _)) if !line.trim_start().starts_with('[') => {
                key.trim().trim_matches('"').to_string()
            }
            _ => String::new(),
        };
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }

    fn diagnostic(
        &self,
        span: Range<usize>,
        field: String,
        message: String,
        help: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            at: self.location(span.start),
            field,
            message,
            help,
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let mut field = self.field_at(span.start);
        let mut help = None;
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let unknown = rest.split('`').next().unwrap_or_default();
            let table = field
                .rsplit_once('.')
                .map(|(t, _)| t.to_string())
                .unwrap_or_default();
            field = if table.is_empty() {
                unknown.to_string()
            } else {
                format!("{table}.{unknown}")
            };
            let expected: Vec<&str> = message.split('`').skip(3).step_by(2).collect();
            help = closest(unknown, &expected).map(|s| format!("did you mean `{s}`?"));
        } else if let Some(rest) = message.strip_prefix("missing field `") {
            let missing = rest.split('`').next().unwrap_or_default();
            field = if field.is_empty() {
                missing.to_string()
            } else {
                format!("{field}.{missing}")
            };
            help = Some(format!("add `{missing} = ...` to this table"));
        }
        self.diagnostic(span, field, message, help)
    }
}

/// Whether `name` may name a shared bucket: 1 to 64 lowercase letters, digits, `-`, `_`
/// or `.`, starting with a letter; not `default`, the instance's own bucket.
fn check_bucket_name(name: &str) -> Result<(), String> {
    if name == "default" {
        return Err("\"default\" is the instance's own bucket: it needs no declaration".into());
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "invalid bucket name {name:?}: use 1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter"
        ));
    }
    Ok(())
}

/// The expected word nearest to `word`, if it is a plausible typo of it.
fn closest<'a>(word: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (edit_distance(word, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min()
        .map(|(_, e)| e)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

struct Validator<'a> {
    file: Source<'a>,
    problems: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn problem<T>(
        &mut self,
        at: &Spanned<T>,
        field: String,
        message: String,
        help: Option<String>,
    ) {
        let d = self.file.diagnostic(at.span(), field, message, help);
        self.problems.push(d);
    }

    /// A `host.*` socket address field, or a problem naming it.
    fn socket_addr(
        &mut self,
        field: &Option<Spanned<String>>,
        name: &str,
    ) -> Option<std::net::SocketAddr> {
        let l = field.as_ref()?;
        match l.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let msg = format!("{:?} is not a socket address", l.get_ref());
                self.problem(
                    l,
                    name.into(),
                    msg,
                    Some("write an address and port, like \"127.0.0.1:7400\"".into()),
                );
                None
            }
        }
    }

    /// The gateway's settings, or problems naming the `http*` fields.
    fn http(
        &mut self,
        h: &super::schema::HostSection,
        dir: &std::path::Path,
        metrics: Option<std::net::SocketAddr>,
    ) -> Option<super::HttpConfig> {
        let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| dir.join(p.get_ref()));
        let Some(at) = &h.http else {
            // Settings of a gateway that is not there are a mistake, not a no-op.
            let orphan = [
                (h.http_tokens.first(), "host.http_tokens"),
                (h.http_tokens_file.as_ref(), "host.http_tokens_file"),
                (h.http_origins.first(), "host.http_origins"),
                (h.http_static.as_ref(), "host.http_static"),
                (h.http_cert.as_ref(), "host.http_cert"),
                (h.http_key.as_ref(), "host.http_key"),
            ];
            for (field, name) in orphan {
                if let Some(f) = field {
                    self.problem(
                        f,
                        name.into(),
                        "a gateway setting without `http`".into(),
                        Some("set `http = \"127.0.0.1:8080\"` to run the gateway".into()),
                    );
                }
            }
            return None;
        };
        let addr = self.socket_addr(&h.http, "host.http")?;
        if Some(addr) == metrics && addr.port() != 0 {
            self.problem(
                at,
                "host.http".into(),
                "the gateway and `metrics` have the same address".into(),
                Some(
                    "the gateway serves /metrics too: drop `metrics`, or give it its own port"
                        .into(),
                ),
            );
        }
        let mut tokens = Vec::new();
        for (i, t) in h.http_tokens.iter().enumerate() {
            match super::parse_token_digest(t.get_ref()) {
                Some(d) => tokens.push(d),
                None => self.problem(
                    t,
                    format!("host.http_tokens[{}]", i + 1),
                    if t.get_ref().starts_with("sha256:") {
                        "not a token digest".into()
                    } else {
                        "a token written as itself: the manifest keeps only its digest".into()
                    },
                    Some("write \"sha256:\" and 64 hex digits: `wasmwire token` makes a token and prints its digest".into()),
                ),
            }
        }
        if !addr.ip().is_loopback() && tokens.is_empty() && h.http_tokens_file.is_none() {
            self.problem(
                at,
                "host.http".into(),
                format!("the gateway listens on {addr}, beyond this machine, with no tokens"),
                Some("set `http_tokens` (or `http_tokens_file`) so that only holders of a token get in, or listen on 127.0.0.1".into()),
            );
        }
        let mut origins = Vec::new();
        for (i, o) in h.http_origins.iter().enumerate() {
            let s = o.get_ref();
            let well_formed = s == "*"
                || ((s.starts_with("http://") || s.starts_with("https://"))
                    && !s.ends_with('/')
                    && s.split_once("://")
                        .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains('/')));
            if well_formed {
                origins.push(s.clone());
            } else {
                self.problem(
                    o,
                    format!("host.http_origins[{}]", i + 1),
                    format!("{s:?} is not an origin"),
                    Some("write a scheme and host with no path, like \"https://chat.example.com\" (or \"*\" for any)".into()),
                );
            }
        }
        let static_dir = path(&h.http_static);
        if let (Some(s), Some(d)) = (&h.http_static, &static_dir)
            && !d.is_dir()
        {
            self.problem(
                s,
                "host.http_static".into(),
                format!("{} is not a folder", d.display()),
                Some("name a folder of files to serve, relative to the manifest".into()),
            );
        }
        let tls = match (&h.http_cert, &h.http_key) {
            (Some(c), Some(k)) => {
                for (f, name) in [(c, "host.http_cert"), (k, "host.http_key")] {
                    if !dir.join(f.get_ref()).is_file() {
                        self.problem(
                            f,
                            name.into(),
                            format!("no file {}", dir.join(f.get_ref()).display()),
                            Some("name a PEM file, relative to the manifest".into()),
                        );
                    }
                }
                Some((dir.join(c.get_ref()), dir.join(k.get_ref())))
            }
            (Some(one), None) | (None, Some(one)) => {
                let name = if h.http_cert.is_some() {
                    "host.http_cert"
                } else {
                    "host.http_key"
                };
                self.problem(
                    one,
                    name.into(),
                    "HTTPS needs both `http_cert` and `http_key`".into(),
                    None,
                );
                None
            }
            (None, None) => None,
        };
        Some(super::HttpConfig {
            addr,
            tokens,
            tokens_file: path(&h.http_tokens_file),
            origins,
            static_dir,
            tls,
        })
    }

    fn dir(&self) -> PathBuf {
        match self.file.path.parent() {
            Some(p) => p.to_path_buf(),
            None => PathBuf::new(),
        }
    }

    fn manifest(&mut self, written: ManifestFile) -> Manifest {
        let dir = self.dir();
        let h = written.host;
        let listen = self.socket_addr(&h.listen, "host.listen");
        let advertise = self.socket_addr(&h.advertise, "host.advertise");
        let metrics = self.socket_addr(&h.metrics, "host.metrics");
        let http = self.http(&h, &dir, metrics);
        if let (Some(a), None) = (&h.advertise, &h.listen) {
            self.problem(
                a,
                "host.advertise".into(),
                "an advertised address without `listen`".into(),
                Some("`advertise` names where peers reach this host's `listen` address".into()),
            );
        }
        let max_awake = self.bounded(
            &h.max_awake,
            "host.max_awake",
            1000,
            |n| *n,
            1,
            100_000,
            "1 to 100000",
        );
        // Kept pages make wakes cheap but are never given back (see `runtime/mod.rs`): a
        // host of keyed classes, whose bursts touch many slots, keeps none by default.
        let keyed = written
            .service
            .iter()
            .any(|s| s.keyed.as_ref().is_some_and(|k| *k.get_ref()));
        let keep_resident = self.bounded(
            &h.keep_resident,
            "host.keep_resident",
            if keyed {
                0
            } else {
                super::DEFAULT_KEEP_RESIDENT
            },
            |b| b.0,
            0,
            64 << 20,
            "0 to 64MiB",
        );
        let data_reserve = self.bounded(
            &h.data_reserve,
            "host.data_reserve",
            super::DEFAULT_DATA_RESERVE,
            |b| b.0,
            0,
            u64::MAX,
            "a size such as \"256MiB\"",
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let threads = self.bounded(
            &h.threads,
            "host.threads",
            cores,
            |n| *n,
            1,
            256,
            "1 to 256",
        );
        let mut peers = Vec::new();
        for (i, p) in h.peers.iter().enumerate() {
            match p.get_ref().parse::<PeerSpec>() {
                Ok(spec) => peers.push(spec),
                Err(e) => self.problem(
                    p,
                    format!("host.peers[{}]", i + 1),
                    e,
                    Some("write \"ADDR:PORT\", \"ADDR:PORT#PEERID\" or \"NAME:PORT\" (a DNS name that resolves to several addresses dials each)".into()),
                ),
            }
        }
        let mut allow = Vec::new();
        for (i, a) in h.allow.iter().enumerate() {
            match a.get_ref().parse::<PeerId>() {
                Ok(id) => allow.push(id),
                Err(e) => self.problem(
                    a,
                    format!("host.allow[{}]", i + 1),
                    e.to_string(),
                    Some("`wasmwire id KEYFILE` prints a host's peer id".into()),
                ),
            }
        }
        let t = Transport::default();
        let transport = Transport {
            keep_alive: self.duration(&h.keep_alive, "host.keep_alive", t.keep_alive),
            peer_timeout: self.duration(&h.peer_timeout, "host.peer_timeout", t.peer_timeout),
            stream_window: self.bounded(
                &h.stream_window,
                "host.stream_window",
                t.stream_window,
                |b| b.0,
                16 << 10,
                1 << 30,
                "16KiB to 1GiB",
            ),
            connection_window: self.bounded(
                &h.connection_window,
                "host.connection_window",
                t.connection_window,
                |b| b.0,
                16 << 10,
                1 << 30,
                "16KiB to 1GiB",
            ),
            max_streams: self.bounded(
                &h.max_streams,
                "host.max_streams",
                t.max_streams,
                |n| *n,
                1,
                1 << 20,
                "1 to 1048576",
            ),
            stall_after: self.duration(&h.stall_after, "host.stall_after", t.stall_after),
        };
        if let Some((k, field)) = h
            .keep_alive
            .as_ref()
            .map(|k| (k, "host.keep_alive"))
            .or_else(|| h.peer_timeout.as_ref().map(|p| (p, "host.peer_timeout")))
            && transport.keep_alive >= transport.peer_timeout
        {
            self.problem(
                k,
                field.into(),
                format!(
                    "keep_alive ({:?}) must be shorter than peer_timeout ({:?})",
                    transport.keep_alive, transport.peer_timeout
                ),
                Some("otherwise an idle but healthy connection times out".into()),
            );
        }
        let host = HostConfig {
            listen,
            advertise,
            metrics,
            http,
            identity: dir.join(
                h.identity
                    .map_or(".wasmwire/host.key".to_string(), Spanned::into_inner),
            ),
            peers,
            allow,
            transport,
            max_awake,
            keep_resident,
            cache_dir: dir.join(
                h.cache_dir
                    .map_or(".wasmwire/cache".to_string(), Spanned::into_inner),
            ),
            data_dir: dir.join(
                h.data_dir
                    .map_or(".wasmwire/data".to_string(), Spanned::into_inner),
            ),
            data_reserve,
            threads,
            shutdown_timeout: self.duration(
                &h.shutdown_timeout,
                "host.shutdown_timeout",
                super::SHUTDOWN_TIMEOUT,
            ),
        };

        let mut names: HashMap<String, (usize, Location)> = HashMap::new();
        let mut channels: HashMap<u16, String> = HashMap::new();
        for (i, s) in written.service.iter().enumerate() {
            let field = |f: &str| format!("service[{}].{f}", i + 1);
            let name = &s.name.get_ref().0;
            let at = self.file.location(s.name.span().start);
            if let Some((_, first)) = names.get(name) {
                let msg = format!("duplicate instance name {name:?}");
                let help = format!(
                    "it is first used at line {}; each instance needs its own name",
                    first.line
                );
                self.problem(&s.name, field("name"), msg, Some(help));
            } else {
                names.insert(name.clone(), (i, at));
            }
            let channel = *s.channel.get_ref();
            if channel == 0 {
                let help = "pick a channel from 1 to 65535".to_string();
                self.problem(
                    &s.channel,
                    field("channel"),
                    "channel 0 is reserved for the host's broker".into(),
                    Some(help),
                );
            } else if let Some(other) = channels.get(&channel) {
                let msg = format!("channel {channel} is already taken by {other:?}");
                self.problem(
                    &s.channel,
                    field("channel"),
                    msg,
                    Some("each instance listens on its own channel".into()),
                );
            } else {
                channels.insert(channel, name.clone());
            }
        }

        let mut services = Vec::with_capacity(written.service.len());
        for (i, s) in written.service.into_iter().enumerate() {
            services.push(self.service(i + 1, s, &names, &dir));
        }
        let buckets = self.buckets(written.bucket, &services);
        Manifest {
            path: self.file.path.to_path_buf(),
            host,
            services,
            buckets,
        }
    }

    /// Every shared bucket a service lists, with the quotas of its `[[bucket]]` (or the
    /// defaults). A `[[bucket]]` no service lists is a problem: most likely a typo.
    fn buckets(
        &mut self,
        written: Vec<BucketSection>,
        services: &[ServiceConfig],
    ) -> Vec<BucketConfig> {
        let mut out: Vec<BucketConfig> = Vec::new();
        for s in services {
            for (name, _) in &s.buckets {
                if !out.iter().any(|b| &b.name == name) {
                    out.push(BucketConfig {
                        name: name.clone(),
                        max_data: super::DEFAULT_BUCKET_MAX_DATA,
                        max_keys: super::DEFAULT_BUCKET_MAX_KEYS,
                    });
                }
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for (i, b) in written.into_iter().enumerate() {
            let field = |f: &str| format!("bucket[{}].{f}", i + 1);
            let name = b.name.get_ref().clone();
            if seen.contains(&name) {
                self.problem(
                    &b.name,
                    field("name"),
                    format!("bucket {name:?} has two `[[bucket]]` tables"),
                    Some("keep one".into()),
                );
                continue;
            }
            seen.push(name.clone());
            if let Err(why) = check_bucket_name(&name) {
                self.problem(&b.name, field("name"), why, None);
                continue;
            }
            let Some(entry) = out.iter_mut().find(|e| e.name == name) else {
                let listed: Vec<&str> = out.iter().map(|e| e.name.as_str()).collect();
                let help = match closest(&name, &listed) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!(
                        "add `buckets = {{ {name} = \"read-write\" }}` to the services that use it, or fix the name"
                    ),
                };
                self.problem(
                    &b.name,
                    field("name"),
                    format!("no service lists bucket {name:?} in its `buckets`"),
                    Some(help),
                );
                continue;
            };
            entry.max_data = self.bounded(
                &b.max_data,
                &field("max_data"),
                entry.max_data,
                |s| s.0,
                1 << 10,
                1 << 40,
                "1KiB to 1TiB",
            );
            entry.max_keys = self.bounded(
                &b.max_keys,
                &field("max_keys"),
                entry.max_keys,
                |n| *n,
                1,
                1_000_000_000,
                "1 to 1000000000",
            );
        }
        out
    }

    fn service(
        &mut self,
        index: usize,
        s: ServiceSection,
        names: &HashMap<String, (usize, Location)>,
        dir: &Path,
    ) -> ServiceConfig {
        let field = |f: &str| format!("service[{index}].{f}");
        let name = s.name.get_ref().0.clone();
        let mut remote_uses = Vec::new();
        for u in &s.uses {
            if let Some((peer, service)) = u.get_ref().split_once('/') {
                let peer = peer
                    .parse::<wasmwire_wire::PeerSel>()
                    .map(wasmwire_wire::PeerSel::id)
                    .map_err(|e| e.to_string());
                let service = InstanceName::try_from(service.to_string()).map(|n| n.0);
                match (peer, service) {
                    (Ok(p), Ok(n)) => remote_uses.push((p, n)),
                    (Err(e), _) | (_, Err(e)) => self.problem(
                        u,
                        field("uses"),
                        e,
                        Some("a service on another host is written \"PEERID/name\", or \"*/name\" for any peer that runs it".into()),
                    ),
                }
                continue;
            }
            if !names.contains_key(u.get_ref()) {
                let msg = format!("no service named {:?} in this manifest", u.get_ref());
                let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
                known.sort_unstable();
                let help = match closest(u.get_ref(), &known) {
                    Some(c) => format!("did you mean {c:?}?"),
                    None => format!(
                        "`uses` lists instance names; this manifest has: {}",
                        known.join(", ")
                    ),
                };
                self.problem(u, field("uses"), msg, Some(help));
            }
        }
        let component = dir.join(s.component.get_ref());
        if !component.is_file() {
            let msg = format!("component file {} does not exist", component.display());
            let help = "build the samples with `make services`, or fix the path (relative paths resolve against the manifest's folder)";
            self.problem(&s.component, field("component"), msg, Some(help.into()));
        }
        let options_json = match &s.options {
            Some(t) => serde_json::to_string(t.get_ref()).unwrap_or_else(|_| "{}".into()),
            None => "{}".into(),
        };

        let d = Limits::default();
        let limits = Limits {
            memory: self.bounded(
                &s.memory,
                &field("memory"),
                d.memory,
                |b| b.0,
                1 << 20,
                4 << 30,
                "1MiB to 4GiB",
            ),
            call_timeout: self.duration(&s.call_timeout, &field("call_timeout"), d.call_timeout),
            mailbox: self.bounded(
                &s.mailbox,
                &field("mailbox"),
                d.mailbox,
                |n| *n,
                1,
                1 << 20,
                "1 to 1048576",
            ),
            max_message: self.bounded(
                &s.max_message,
                &field("max_message"),
                d.max_message,
                |b| b.0,
                1,
                64 << 20,
                "1B to 64MiB",
            ),
            max_sessions: self.bounded(
                &s.max_sessions,
                &field("max_sessions"),
                d.max_sessions,
                |n| *n,
                1,
                1 << 20,
                "1 to 1048576",
            ),
            max_timers: self.bounded(
                &s.max_timers,
                &field("max_timers"),
                d.max_timers,
                |n| *n,
                0,
                1024,
                "0 to 1024",
            ),
            request_timeout: self.duration(
                &s.request_timeout,
                &field("request_timeout"),
                d.request_timeout,
            ),
            idle_timeout: self.duration(&s.idle_timeout, &field("idle_timeout"), d.idle_timeout),
            max_restarts: s
                .max_restarts
                .as_ref()
                .map_or(d.max_restarts, |m| *m.get_ref()),
            restart_window: self.duration(
                &s.restart_window,
                &field("restart_window"),
                d.restart_window,
            ),
            restart_backoff: s
                .restart_backoff
                .as_ref()
                .map_or(d.restart_backoff, |b| b.get_ref().0),
            max_data: self.bounded(
                &s.max_data,
                &field("max_data"),
                d.max_data,
                |b| b.0,
                1 << 10,
                1 << 40,
                "1KiB to 1TiB",
            ),
            max_keys: self.bounded(
                &s.max_keys,
                &field("max_keys"),
                d.max_keys,
                |n| *n,
                1,
                1_000_000_000,
                "1 to 1000000000",
            ),
        };
        let mut buckets = Vec::new();
        for (bucket, access) in &s.buckets {
            if let Err(why) = check_bucket_name(bucket) {
                self.problem(access, field("buckets"), why, None);
            } else {
                buckets.push((bucket.clone(), *access.get_ref()));
            }
        }
        let keyed = match (&s.keyed, &s.max_instances) {
            (Some(k), _) if *k.get_ref() => {
                if s.autostart {
                    self.problem(
                        k,
                        field("keyed"),
                        "a keyed class cannot `autostart`: its instances are made on demand".into(),
                        Some("remove `autostart`, or make this a plain service".into()),
                    );
                }
                Some(self.bounded(
                    &s.max_instances,
                    &field("max_instances"),
                    DEFAULT_MAX_INSTANCES,
                    |n| *n,
                    1,
                    1_000_000,
                    "1 to 1000000",
                ))
            }
            (_, Some(m)) => {
                self.problem(
                    m,
                    field("max_instances"),
                    "`max_instances` is for keyed classes".into(),
                    Some(
                        "add `keyed = true` to make this a class of instances named NAME/KEY"
                            .into(),
                    ),
                );
                None
            }
            _ => None,
        };
        ServiceConfig {
            keyed,
            name,
            component,
            component_at: self.file.location(s.component.span().start),
            channel: *s.channel.get_ref(),
            options_json,
            uses: s
                .uses
                .into_iter()
                .map(Spanned::into_inner)
                .filter(|u| !u.contains('/'))
                .collect(),
            remote_uses,
            expose: s.expose,
            autostart: s.autostart,
            limits,
            buckets,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bounded<T, N: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        value: &Option<Spanned<T>>,
        field: &str,
        default: N,
        get: impl Fn(&T) -> N,
        min: N,
        max: N,
        range: &str,
    ) -> N {
        let Some(v) = value else { return default };
        let n = get(v.get_ref());
        if n < min || n > max {
            self.problem(
                v,
                field.to_string(),
                format!("{n} is out of range"),
                Some(format!("use {range}")),
            );
        }
        n
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<super::units::HumanDuration>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = value else { return default };
        if v.get_ref().0.is_zero() {
            self.problem(
                v,
                field.to_string(),
                "must be longer than zero".into(),
                Some("write a duration like \"100ms\"".into()),
            );
        }
        v.get_ref().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> String {
        match parse(src, Path::new("m.toml")) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_field_names_line_field_and_suggestion() {
        let e = errors("[[service]]\nname = \"a\"\ncomponnet = \"x.wasm\"\nchannel = 1\n");
        assert!(
            e.starts_with(
                "error: m.toml:3:1: field `service[1].componnet`: unknown field `componnet`"
            ),
            "{e}"
        );
        assert!(e.contains("did you mean `component`?"), "{e}");
    }

    #[test]
    fn bad_duration_points_at_value() {
        let e = errors(
            "[[service]]\nname = \"a\"\ncomponent = \"x.wasm\"\nchannel = 1\nidle_timeout = \"30\"\n",
        );
        assert!(
            e.contains("m.toml:5:16: field `service[1].idle_timeout`"),
            "{e}"
        );
        assert!(e.contains("write a number and a unit"), "{e}");
    }

    #[test]
    fn underscore_in_name_says_what_to_write() {
        let e = errors("[[service]]\nname = \"my_svc\"\ncomponent = \"x.wasm\"\nchannel = 1\n");
        assert!(
            e.contains("write \\\"my-svc\\\"") || e.contains("write \"my-svc\""),
            "{e}"
        );
    }

    #[test]
    fn host_settings_are_range_checked() {
        let e = errors(
            "[host]\nthreads = 0\nmax_awake = 0\nlisten = \"nowhere\"\nadvertise = \"x:y\"\n\
             keep_resident = \"1GiB\"\n",
        );
        assert!(
            e.contains("m.toml:6:17: field `host.keep_resident`: 1073741824 is out of range"),
            "{e}"
        );
        assert!(
            e.contains("m.toml:2:11: field `host.threads`: 0 is out of range"),
            "{e}"
        );
        assert!(
            e.contains("field `host.max_awake`: 0 is out of range"),
            "{e}"
        );
        assert!(
            e.contains("field `host.listen`: \"nowhere\" is not a socket address"),
            "{e}"
        );
        assert!(
            e.contains("m.toml:5:13: field `host.advertise`: \"x:y\" is not a socket address"),
            "{e}"
        );
        let e = errors("[host]\nadvertise = \"10.0.0.1:7400\"\n");
        assert!(
            e.contains("field `host.advertise`: an advertised address without `listen`"),
            "{e}"
        );
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let src = "[[service]]\nname = \"a\"\ncomponent = \"no.wasm\"\nchannel = 0\nuses = [\"b\"]\n\
                   [[service]]\nname = \"a\"\ncomponent = \"no.wasm\"\nchannel = 3\nmailbox = 0\n";
        let e = errors(src);
        assert!(e.contains("channel 0 is reserved"), "{e}");
        assert!(e.contains("no service named \"b\""), "{e}");
        assert!(
            e.contains("m.toml:7:8: field `service[2].name`: duplicate instance name \"a\""),
            "{e}"
        );
        assert!(
            e.contains("field `service[2].mailbox`: 0 is out of range"),
            "{e}"
        );
        assert_eq!(e.matches("does not exist").count(), 2, "{e}");
    }
}
