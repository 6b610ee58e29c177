//! The Prometheus endpoint (`[host] metrics = "127.0.0.1:9464"`): on each scrape, the
//! host's figures (see [`crate::wire::HostStats`], the same ones `wasmwire top` reads over
//! channel 0) are encoded in the OpenMetrics text format by `prometheus-client`.
//!
//! Nothing is registered or looked up on the per-call path: instances bump plain atomics
//! they own ([`crate::runtime::stats`]), connections bump theirs ([`crate::net::Traffic`]),
//! and a scrape reads them all once, into a registry made for that scrape.
//!
//! They are served at `/metrics` by the HTTP gateway ([`crate::gateway`]): on the
//! `[host] http` address, and on the `[host] metrics` address if one is set.

use crate::net::Net;
use crate::runtime::directory::Directory;
use crate::wire::{HostStats, InstanceFigures, PeerFigures};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::time::Instant;

/// The content type of the OpenMetrics text format, which Prometheus asks for and reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the figures come from: the directory (always) and the network (if the host has one).
#[derive(Clone)]
pub struct Source {
    directory: Arc<Directory>,
    net: Option<Net>,
    started: Instant,
}

impl Source {
    /// Figures of this directory, and of this network's connections if given.
    pub fn new(directory: Arc<Directory>, net: Option<Net>) -> Source {
        Source {
            directory,
            net,
            started: Instant::now(),
        }
    }

    /// The host's instances.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The figures now.
    pub async fn stats(&self) -> HostStats {
        match &self.net {
            Some(net) => net.stats().await,
            None => self.directory.host_stats(self.started.elapsed()),
        }
    }
}

/// Encodes figures in the OpenMetrics text format (counters end in `_total`).
pub fn encode(stats: &HostStats) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("wasmwire");
    registry.register_collector(Box::new(Figures(stats.clone())));
    let mut text = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Adds the durable data's figures to an encoded scrape: the committer's counters, what
/// all buckets hold together, and each shared bucket's keys and bytes (an instance's own
/// buckets are one per key of a keyed class — too many to label; `wasmwire data list`
/// shows them).
pub fn encode_store(text: String, db: &crate::store::Database) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("wasmwire");
    // The shared buckets only (a few, listed in the manifest): the totals are the
    // committer's running figures, so a scrape never walks every key's bucket.
    let shared = db.shared().unwrap_or_default();
    registry.register_collector(Box::new(StoreFigures {
        figures: db.figures().clone(),
        shared,
    }));
    let mut more = String::with_capacity(2048);
    let _ = prometheus_client::encoding::text::encode(&mut more, &registry);
    // Both end with `# EOF`: keep one, at the end.
    let head = text.strip_suffix("# EOF\n").unwrap_or(&text);
    format!("{head}{more}")
}

/// The durable data's figures, as a collector.
#[derive(Debug)]
struct StoreFigures {
    figures: Arc<crate::store::Figures>,
    shared: Vec<(String, crate::store::Usage)>,
}

impl Collector for StoreFigures {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let f = &self.figures;
        let counter = |v: u64| std::iter::once((Vec::new(), ConstCounter::new(v)));
        family(
            &mut e,
            "store_commits",
            "Commits of durable data (each one fsync, for a group of calls' writes).",
            counter(f.commits.load(Relaxed)),
        )?;
        family(
            &mut e,
            "store_write_sets",
            "Export calls whose writes were committed.",
            counter(f.write_sets.load(Relaxed)),
        )?;
        family(
            &mut e,
            "store_writes",
            "Keys written or deleted, committed.",
            counter(f.writes.load(Relaxed)),
        )?;
        family(
            &mut e,
            "store_commit_seconds",
            "Seconds spent committing (divide by store_commits for the mean commit latency).",
            std::iter::once((
                Vec::new(),
                ConstCounter::new(f.commit_ns.load(Relaxed) as f64 / 1e9),
            )),
        )?;
        family(
            &mut e,
            "store_commit_failures",
            "Commits that failed (each a crash of the instances whose writes it held).",
            counter(f.failures.load(Relaxed)),
        )?;
        let gauge = |v: u64| std::iter::once((Vec::new(), ConstGauge::new(v)));
        family(
            &mut e,
            "store_keys",
            "Keys held, every bucket together.",
            gauge(f.keys.load(Relaxed).max(0) as u64),
        )?;
        family(
            &mut e,
            "store_bytes",
            "Bytes of keys and values held, every bucket together.",
            gauge(f.bytes.load(Relaxed).max(0) as u64),
        )?;
        let shared = || {
            self.shared
                .iter()
                .filter_map(|(b, u)| Some((b.strip_prefix("s/")?.to_string(), *u)))
        };
        family(
            &mut e,
            "store_bucket_keys",
            "Keys held by a shared bucket.",
            shared().map(|(b, u)| (vec![("bucket", b)], ConstGauge::new(u.keys))),
        )?;
        family(
            &mut e,
            "store_bucket_bytes",
            "Bytes of keys and values held by a shared bucket.",
            shared().map(|(b, u)| (vec![("bucket", b)], ConstGauge::new(u.bytes))),
        )
    }
}

/// A metric's name, help text, and how to read it from one entry's figures.
type Described<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One scrape's figures, as a collector.
#[derive(Debug)]
struct Figures(HostStats);

/// Writes one metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.peekable();
    let Some((first_labels, first)) = samples.peek() else {
        return Ok(());
    };
    let (kind, plain) = (first.metric_type(), first_labels.is_empty());
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    if plain {
        // One sample without labels: written as `name value`, not `name{} value`.
        if let Some((_, value)) = samples.next() {
            value.encode(metric)?;
        }
        return Ok(());
    }
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let one = |v: u64| std::iter::once((Vec::new(), ConstGauge::new(v)));
        family(
            &mut e,
            "uptime_seconds",
            "Seconds since the host started.",
            std::iter::once((Vec::new(), ConstGauge::new(s.uptime_ms as f64 / 1000.0))),
        )?;
        family(
            &mut e,
            "awake_instances",
            "Instances awake now, every service together.",
            one(s.instances.iter().map(|i| i.awake).sum()),
        )?;
        family(
            &mut e,
            "handshakes_refused",
            "Handshakes refused: a key not in `allow`, not the peer dialled, or malformed.",
            std::iter::once((Vec::new(), ConstCounter::new(s.refused_handshakes))),
        )?;
        family(
            &mut e,
            "tasks",
            "Tasks alive on the host's async runtimes, the instance actors' included.",
            one(s.tasks),
        )?;
        let st = &s.stalls;
        family(
            &mut e,
            "stalls",
            "Sessions or connections with data waiting that made no progress for stall_after, by what they waited on.",
            [
                ("stream-credit", st.stream_credit),
                ("send-blocked", st.send_blocked),
                ("mailbox-full", st.mailbox_full),
                ("control-blocked", st.control_blocked),
            ]
            .into_iter()
            .map(|(k, v)| (vec![("kind", k.to_string())], ConstCounter::new(v))),
        )?;
        let by_instance = |f: fn(&InstanceFigures) -> u64| {
            s.instances
                .iter()
                .map(move |i| (vec![("instance", i.name.clone())], f(i)))
        };
        let counters: [Described<InstanceFigures>; 6] = [
            ("instance_calls", "Export calls made into the guest.", |i| {
                i.calls
            }),
            ("instance_errors", "Events answered with an error.", |i| {
                i.errors
            }),
            (
                "instance_traps",
                "Calls that trapped or hit a limit (crashes).",
                |i| i.traps,
            ),
            ("instance_restarts", "Wakes after a crash.", |i| i.restarts),
            ("instance_wakes", "Wakes (instantiate + wakeup).", |i| {
                i.wakes
            }),
            (
                "instance_sleeps",
                "Times the instance went to sleep.",
                |i| i.sleeps,
            ),
        ];
        for (name, help, f) in counters {
            family(
                &mut e,
                name,
                help,
                by_instance(f).map(|(l, v)| (l, ConstCounter::new(v))),
            )?;
        }
        let gauges: [Described<InstanceFigures>; 4] = [
            (
                "instance_awake",
                "Instances of this entry awake now (a keyed class: its awake keys).",
                |i| i.awake,
            ),
            (
                "instance_mailbox_depth",
                "Messages and events waiting in the mailbox.",
                |i| i.mailbox,
            ),
            (
                "instance_memory_bytes",
                "Bytes of linear memory held.",
                |i| i.memory,
            ),
            ("instance_sessions", "Sessions open.", |i| i.sessions),
        ];
        for (name, help, f) in gauges {
            family(
                &mut e,
                name,
                help,
                by_instance(f).map(|(l, v)| (l, ConstGauge::new(v))),
            )?;
        }
        let by_peer = |f: fn(&PeerFigures) -> u64| {
            s.peers.iter().map(move |p| {
                (
                    vec![
                        ("peer", p.peer.clone()),
                        ("role", p.role.as_str().to_string()),
                    ],
                    ConstCounter::new(f(p)),
                )
            })
        };
        let peer_counters: [Described<PeerFigures>; 6] = [
            (
                "peer_messages_received",
                "Session messages received from the peer.",
                |p| p.messages_in,
            ),
            (
                "peer_messages_sent",
                "Session messages sent to the peer.",
                |p| p.messages_out,
            ),
            (
                "peer_control_received",
                "Control messages (requests, answers) received.",
                |p| p.control_in,
            ),
            ("peer_control_sent", "Control messages sent.", |p| {
                p.control_out
            }),
            (
                "peer_received_bytes",
                "UDP payload bytes received on the connection.",
                |p| p.bytes_in,
            ),
            (
                "peer_sent_bytes",
                "UDP payload bytes sent on the connection.",
                |p| p.bytes_out,
            ),
        ];
        for (name, help, f) in peer_counters {
            family(&mut e, name, help, by_peer(f))?;
        }
        family(
            &mut e,
            "peer_rtt_seconds",
            "QUIC's smoothed round-trip time to the peer.",
            s.peers.iter().map(|p| {
                (
                    vec![
                        ("peer", p.peer.clone()),
                        ("role", p.role.as_str().to_string()),
                    ],
                    ConstGauge::new(p.rtt_us as f64 / 1e6),
                )
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_encode_as_openmetrics() {
        let stats = HostStats {
            host: "h".into(),
            uptime_ms: 1500,
            instances: vec![InstanceFigures {
                name: "counter".into(),
                state: crate::wire::ServiceState::Awake,
                awake: 1,
                calls: 7,
                traps: 1,
                memory: 65536,
                ..Default::default()
            }],
            total_instances: 1,
            peers: vec![PeerFigures {
                peer: "p".into(),
                role: crate::wire::Role::Host,
                addr: String::new(),
                rtt_us: 250,
                messages_in: 3,
                messages_out: 0,
                control_in: 0,
                control_out: 0,
                bytes_in: 0,
                bytes_out: 0,
            }],
            refused_handshakes: 2,
            stalls: crate::wire::StallFigures {
                mailbox_full: 4,
                ..Default::default()
            },
            tasks: 12,
        };
        let text = encode(&stats);
        for line in [
            "wasmwire_instance_calls_total{instance=\"counter\"} 7",
            "wasmwire_instance_traps_total{instance=\"counter\"} 1",
            "wasmwire_instance_memory_bytes{instance=\"counter\"} 65536",
            "wasmwire_awake_instances 1",
            "wasmwire_handshakes_refused_total 2",
            "wasmwire_tasks 12",
            "wasmwire_stalls_total{kind=\"mailbox-full\"} 4",
            "wasmwire_stalls_total{kind=\"stream-credit\"} 0",
            "wasmwire_peer_messages_received_total{peer=\"p\",role=\"host\"} 3",
            "wasmwire_peer_rtt_seconds{peer=\"p\",role=\"host\"} 0.00025",
            "# TYPE wasmwire_instance_calls counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }
}
