//! `make bench`, third part: keyed instances and scale. Release build, one keyed class of
//! the `bench` guest, each figure beside a baseline measured in the same run.
//!
//! (l) 100 000 distinct keys touched once each (made, woken, one event, asleep, retired),
//!     keys per second with 64 callers, vs a bare instantiate + `wakeup` + `on-event` +
//!     drop on one thread; host RSS at the start, at the end (every key retired, the heap
//!     trim finished) and the largest in between; then the same with `keep_resident =
//!     "256KiB"` (freed slots keep their pages: faster, and RSS stays up);
//! (m) 10 000 keys awake at once: host RSS per awake instance, split into the wasmtime
//!     pool's pages (linear memories, stacks) and the rest (heap, mostly), vs the same
//!     component held awake 1 000 times in bare stores of an engine set up the same way;
//!     `SCALE_EXIT_AWAKE=1` exits right there, so that `heaptrack` lists what the awake
//!     instances hold as leaks;
//! (n) wake (instantiate + `wakeup`, in the actor) p50 / p99 while 10 000 are awake, vs a
//!     bare instantiate + `wakeup`;
//! (o) event dispatch (clients' `request`s, 64 in flight: time per event) with 10 000
//!     awake, all to one key ÷ the same with 1 awake; and spread over all 10 000 keys ÷
//!     spread over 64 keys with 64 awake;
//! (p) event dispatch with 1 awake ÷ a bare *synchronous* typed call of `on-event` of the
//!     same component (no async, no fibers, default allocator);
//! (q) `wasmwire run` warm start (compiled cache warm) of 20 and of 1 000 services: from
//!     spawning the process to "listening" and every autostart service awake, read from its
//!     log; vs spawning the same binary for `--version`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::node::Node;
use wasmwire::runtime::{Runtime, RuntimeConfig, heap};
use wasmwire_tests::{env_or, load_manifest, root, rss, scratch_dir, wasmwire_bin};

const ROUNDS: usize = 3;

/// Keys awake before the many: the spread-dispatch baseline of (o).
const SMALL: usize = 64;

fn row(name: &str, value: String, baseline: String, ratio: String, target: &str) {
    println!("{name:<48} {value:>16} {baseline:>20} {ratio:>9}   {target}");
}

fn cache_line() -> String {
    format!(
        "cache_dir = {:?}\n",
        root().join("target/test-cache").display().to_string()
    )
}

fn main() {
    wasmwire_tests::bench::on_two_threads(run());
}

fn keyed_manifest(max_awake: u32, idle: &str) -> String {
    format!(
        "[host]\nmax_awake = {max_awake}\nthreads = 2\n{}\n[[service]]\nname = \"k\"\n\
         component = \"{{guest:bench}}\"\nchannel = 1\nkeyed = true\nidle_timeout = {idle:?}\n",
        cache_line()
    )
}

/// Bench (l) in one host: keys per second and host RSS in MiB.
struct Touch {
    rate: f64,
    start: f64,
    peak: f64,
    end: f64,
    trims: u64,
}

/// Touches `keys` distinct keys once each from 64 callers, in a host with `max_awake` 1 024
/// and `keep_resident` (the default when `None`); RSS "after" is read once every key has
/// retired and the heap trim it set off has finished.
async fn touch_keys(keys: usize, keep_resident: Option<&str>) -> Touch {
    let mut manifest = keyed_manifest(1024, "2ms");
    if let Some(k) = keep_resident {
        manifest = manifest.replacen("[host]\n", &format!("[host]\nkeep_resident = {k:?}\n"), 1);
    }
    let node = Arc::new(Node::start(&load_manifest(&manifest)).await.unwrap());
    node.request("k/warm", "pong", "null").await.unwrap();
    wait_retired(&node).await;
    let (trims_before, _) = heap::trims();
    let start = rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let t = Instant::now();
    let p = peak.clone();
    fan_out(&node, keys, 64, move |node, i| {
        let p = p.clone();
        async move {
            node.request(&format!("k/{i}"), "pong", "null")
                .await
                .unwrap();
            if i % 1000 == 0 {
                p.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await;
    let took = t.elapsed().as_secs_f64();
    wait_retired(&node).await;
    while heap::trims().1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = rss();
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    Touch {
        rate: keys as f64 / took,
        start: mib(start),
        peak: mib(peak.load(std::sync::atomic::Ordering::Relaxed)),
        end: mib(end),
        trims: heap::trims().0 - trims_before,
    }
}

/// Time per event of `n` `pong` requests from 64 concurrent callers (pipelined: the
/// receiving actors take them in batches), best of rounds, nanoseconds. Request `i` goes to
/// key `k/(i % spread)`.
async fn dispatch_ns(node: &Arc<Node>, spread: usize, n: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        fan_out(node, n, 64, move |node, i| async move {
            node.request(&format!("k/{}", i % spread), "pong", "null")
                .await
                .unwrap();
        })
        .await;
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// Runs `f(i)` for every `i` in `0..n` on `callers` concurrent tasks.
async fn fan_out<F, Fut>(node: &Arc<Node>, n: usize, callers: usize, f: F)
where
    F: Fn(Arc<Node>, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let node = node.clone();
        let f = f.clone();
        tasks.spawn(async move {
            let mut i = c;
            while i < n {
                f(node.clone(), i).await;
                i += callers;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn live(node: &Node) -> usize {
    node.instance("k").unwrap().keyed().unwrap().live()
}

async fn run() {
    let bench_wasm = root().join("target/test-guests/bench.wasm");
    assert!(
        bench_wasm.is_file(),
        "run `make test-guests` first (make bench does)"
    );
    println!(
        "{:<48} {:>16} {:>20} {:>9}   target",
        "benchmark", "wasmwire", "baseline", "ratio"
    );
    let keys: usize = env_or("SCALE_KEYS", 100_000);
    let awake: usize = env_or("SCALE_AWAKE", 10_000);

    // Baselines on the host's own engine settings (pooling allocator, async, epochs).
    let runtime = Runtime::new(&RuntimeConfig {
        keep_resident: 0,
        max_awake: 1024,
        max_memory: 64 << 20,
        cache_dir: Some(root().join("target/test-cache")),
    })
    .unwrap();
    let class = runtime.load(&bench_wasm).await.unwrap();
    let mut wake_bare = Vec::new();
    let bare_touch_us = {
        let n = 5_000;
        let mut best = f64::INFINITY;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                let t1 = Instant::now();
                let mut store = runtime.scratch_store(Arc::from("bare"));
                store.set_epoch_deadline(u64::MAX / 2);
                let s = class.pre.instantiate_async(&mut store).await.unwrap();
                let lc = s.wasmwire_service_lifecycle();
                lc.call_wakeup(&mut store, "{}").await.unwrap().unwrap();
                wake_bare.push(t1.elapsed().as_nanos() as u64);
                lc.call_on_event(&mut store, None, "pong", "null")
                    .await
                    .unwrap()
                    .unwrap();
                lc.call_sleep(&mut store).await.unwrap();
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        best
    };
    wake_bare.sort_unstable();
    let bare_wake_p50 = wake_bare[wake_bare.len() / 2] as f64 / 1e3;
    let bare_wake_p99 = wake_bare[wake_bare.len() * 99 / 100] as f64 / 1e3;
    drop(class);
    drop(runtime);
    let (bare_made, bare_awake) = {
        let w = bench_wasm.clone();
        tokio::spawn(async move { bare_footprint(&w, awake as u32 + 16).await })
            .await
            .unwrap()
    };
    let sync_call_ns = sync_call_ns(&bench_wasm);

    // (l) touching many keys once each, with the default `keep_resident` (0) and with
    // freed slots' pages kept.
    for (keep, note) in [(None, "after near start"), (Some("256KiB"), "report")] {
        let l = touch_keys(keys, keep).await;
        let label = match keep {
            None => format!("(l) {keys} keys touched once (64 callers)"),
            Some(k) => format!("    same, keep_resident = {k:?}"),
        };
        row(
            &label,
            format!("{:.0} keys/s", l.rate),
            format!("{:.0}/s bare, 1 thr", 1e6 / bare_touch_us),
            format!("{:.2}x", l.rate / (1e6 / bare_touch_us)),
            "report",
        );
        row(
            "    host RSS start / largest / after (MiB)",
            format!("{:.1} / {:.1} / {:.1}", l.start, l.peak, l.end),
            format!("{} heap trims", l.trims),
            format!("{:+.1} MiB", l.end - l.start),
            note,
        );
    }

    // (m)-(o) many awake at once.
    let node = Arc::new(
        Node::start(&load_manifest(&keyed_manifest(awake as u32 + 16, "1h")))
            .await
            .unwrap(),
    );
    node.wake("k/0").await.unwrap();
    let one_awake_ns = dispatch_ns(&node, 1, 100_000).await;
    // Events spread over distinct keys cannot be batched (one actor wake-up each): the
    // baseline for spreading over all keys at 10 000 awake is spreading over 64 at 64.
    fan_out(&node, SMALL, 64, |node, i| async move {
        node.wake(&format!("k/{i}")).await.unwrap();
    })
    .await;
    let small_spread_ns = dispatch_ns(&node, SMALL, 100_000).await;
    let before = rss();
    let maps_before = maps();
    let pools = Footprint::pools();
    let fp_before = Footprint::now(&pools);
    let t = Instant::now();
    // The last 1 000 are woken one by one below, timing each (n).
    let first = awake - 1000;
    fan_out(&node, first, 64, |node, i| async move {
        if i >= SMALL {
            node.wake(&format!("k/{i}")).await.unwrap();
        }
    })
    .await;
    let wake_all = t.elapsed();
    let mut wakes = Vec::new();
    for i in first..awake {
        let key = format!("k/{i}");
        node.wake(&key).await.unwrap();
        wakes.push(node.live(&key).unwrap().last_wake_ns());
    }
    assert_eq!(live(&node), awake);
    let per_kib = rss().saturating_sub(before) as f64 / (awake - SMALL) as f64 / 1024.0;
    let host = Footprint::now(&pools).per(fp_before, awake - SMALL);
    let maps_per = (maps() - maps_before) as f64 / (awake - SMALL) as f64;
    row(
        &format!("(m) host RSS per awake instance ({awake} awake)"),
        format!("{per_kib:.1} KiB"),
        format!("{:.1} KiB bare", bare_awake.total()),
        format!("{:.2}x", per_kib / bare_awake.total()),
        "<= 35 KiB",
    );
    row(
        "    of which pool (resident / private), rest",
        format!(
            "{:.1} / {:.1}, {:.1} KiB",
            host.pool_rss, host.pool_private, host.rest
        ),
        "-".into(),
        "-".into(),
        "report",
    );
    row(
        "    bare instance before / after wakeup",
        format!("{:.1} KiB", bare_made.total()),
        format!("{:.1} KiB", bare_awake.total()),
        "-".into(),
        "report",
    );
    row(
        "    memory mappings per awake instance",
        format!("{maps_per:.1}"),
        format!("{} max_map_count", max_map_count()),
        "-".into(),
        "report",
    );
    row(
        &format!("    waking {first} (64 callers)"),
        format!("{:.2} s", wake_all.as_secs_f64()),
        "-".into(),
        "-".into(),
        "report",
    );
    if std::env::var_os("SCALE_EXIT_AWAKE").is_some() {
        std::process::exit(0);
    }
    wakes.sort_unstable();
    let (p50, p99) = (
        wakes[wakes.len() / 2] as f64 / 1e3,
        wakes[wakes.len() * 99 / 100] as f64 / 1e3,
    );
    row(
        &format!("(n) wake p50 / p99 with {awake} awake"),
        format!("{p50:.1} / {p99:.1} us"),
        format!("{bare_wake_p50:.1} / {bare_wake_p99:.1} us bare"),
        format!("{:.2}x", p50 / bare_wake_p50),
        "report",
    );
    let many_awake_ns = dispatch_ns(&node, 1, 100_000).await;
    let other_ns = dispatch_ns(&node, awake, 100_000).await;
    row(
        &format!("(o) dispatch, {awake} awake, to 1 key"),
        format!("{:.2} us", many_awake_ns / 1e3),
        format!("{:.2} us 1 awake", one_awake_ns / 1e3),
        format!("{:.2}x", many_awake_ns / one_awake_ns),
        "<= 1.3x",
    );
    row(
        &format!("    spread over all {awake} keys"),
        format!("{:.2} us", other_ns / 1e3),
        format!("{:.2} us {SMALL} of {SMALL}", small_spread_ns / 1e3),
        format!("{:.2}x", other_ns / small_spread_ns),
        "<= 1.3x",
    );
    row(
        "(p) event dispatch (1 awake) vs sync typed call",
        format!("{:.2} us", one_awake_ns / 1e3),
        format!("{:.0} ns sync", sync_call_ns),
        format!("{:.1}x", one_awake_ns / sync_call_ns),
        "report",
    );
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }

    // (q) warm start.
    let version_s = {
        let mut best = f64::INFINITY;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let ok = std::process::Command::new(wasmwire_bin())
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok);
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    for (services, target) in [(20, "<= 50 ms"), (1000, "<= 1 s")] {
        let s = warm_start(services);
        row(
            &format!("(q) `wasmwire run` warm start, {services} services"),
            format!("{:.1} ms", s * 1e3),
            format!("{:.1} ms --version", version_s * 1e3),
            "-".into(),
            target,
        );
    }
}

/// What 1 000 bare instances of `wasm` cost each, held in stores of a fresh engine set up
/// as a host's with `max_awake` (fresh slots, like the host's): (instantiated, after
/// `wakeup`).
async fn bare_footprint(wasm: &std::path::Path, max_awake: u32) -> (Footprint, Footprint) {
    const N: usize = 1000;
    let runtime = Runtime::new(&RuntimeConfig {
        max_awake,
        max_memory: 64 << 20,
        keep_resident: 0,
        cache_dir: Some(root().join("target/test-cache")),
    })
    .unwrap();
    let class = runtime.load(wasm).await.unwrap();
    let pools = Footprint::pools();
    let instantiate = || async {
        let mut store = runtime.scratch_store(Arc::from("bare"));
        store.set_epoch_deadline(u64::MAX / 2);
        let s = class.pre.instantiate_async(&mut store).await.unwrap();
        (store, s)
    };
    // One awake first, so what every instance shares (code pages touched, the first
    // allocations of each arena) is in `before`.
    let (mut store, s) = instantiate().await;
    let lc = s.wasmwire_service_lifecycle();
    lc.call_wakeup(&mut store, "{}").await.unwrap().unwrap();
    let before = Footprint::now(&pools);
    let mut held = vec![(store, s)];
    for _ in 0..N {
        held.push(instantiate().await);
    }
    let made = Footprint::now(&pools).per(before, N);
    for (store, s) in &mut held[1..] {
        let lc = s.wasmwire_service_lifecycle();
        lc.call_wakeup(&mut *store, "{}").await.unwrap().unwrap();
    }
    let awake = Footprint::now(&pools).per(before, N);
    (made, awake)
}

/// Memory mappings of this process now.
fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

/// The kernel's limit on mappings per process.
fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Waits until every key of `k` has retired.
async fn wait_retired(node: &Node) {
    let t = Instant::now();
    while live(node) > 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "keys never retired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A bare synchronous typed call of `on-event` (`pong`), nanoseconds: a default wasmtime
/// engine (no async, on-demand allocation), the host's imports defined as traps (`pong`
/// calls none).
fn sync_call_ns(wasm: &std::path::Path) -> f64 {
    let (mut store, instance, [idx]) = wasmwire_tests::sync_exports(wasm, ["on-event"]);
    let f = instance
        .get_typed_func::<(Option<u64>, &str, &str), (Result<String, String>,)>(&mut store, idx)
        .unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            let (r,) = f.call(&mut store, (None, "pong", "null")).unwrap();
            std::hint::black_box(r.unwrap());
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// Best of rounds, seconds, from spawning `wasmwire run` on `services` services (the first
/// two autostart, all listening on the network) to the log saying "listening" and every
/// autostart service "awake". Round 0 fills the compiled cache and is not counted.
fn warm_start(services: usize) -> f64 {
    let dir = scratch_dir("bench-warm-start");
    let mut text = format!(
        "[host]\nlisten = \"127.0.0.1:0\"\nidentity = {:?}\nmax_awake = {}\n{}",
        dir.join("host.key").display().to_string(),
        services.max(16),
        cache_line()
    );
    for i in 0..services {
        text.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\ncomponent = {:?}\nchannel = {}\nexpose = true\nautostart = {}\n",
            root().join("target/services/counter.wasm").display().to_string(),
            i + 1,
            i < 2
        ));
    }
    let path = dir.join("wasmwire.toml");
    std::fs::write(&path, text).unwrap();
    let mut best = f64::INFINITY;
    for round in 0..=ROUNDS {
        let t = Instant::now();
        let mut child = std::process::Command::new(wasmwire_bin())
            .arg("run")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (mut listening, mut awake) = (false, 0);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            listening |= line.contains("listening");
            if line.contains(" awake") && !line.contains("asleep") {
                awake += 1;
            }
            if listening && awake >= 2 {
                break;
            }
        }
        let took = t.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        assert!(listening && awake >= 2, "the host never became ready");
        if round > 0 {
            best = best.min(took);
        }
    }
    best
}

/// Where this process's resident memory is, in KiB, from `/proc/self/smaps`: inside the
/// wasmtime pool's reservations (linear memories, stacks: every mapping of at least 1 GiB
/// when [`Footprint::pools`] looked), and everywhere else (the malloc heap, mostly).
#[derive(Clone, Copy, Default)]
struct Footprint {
    /// Resident pages in the pool, shared image pages included (RSS counts a page each
    /// time it is mapped: the copy-on-write image of a memory is one physical copy).
    pool_rss: f64,
    /// Pages in the pool written by this process alone.
    pool_private: f64,
    /// Resident pages outside the pool.
    rest: f64,
}

impl Footprint {
    /// The address ranges of the pool's reservations now (call after the engine exists,
    /// before instances touch them: a touched slot splits its reservation's mapping).
    fn pools() -> Vec<(u64, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        maps.lines()
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                let (a, b) = (
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                );
                (b - a >= 1 << 30).then_some((a, b))
            })
            .collect()
    }

    /// Resident memory now, split by `pools`.
    fn now(pools: &[(u64, u64)]) -> Footprint {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut f = Footprint::default();
        let mut in_pool = false;
        for line in smaps.lines() {
            let kib = |v: &str| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
            };
            if let Some(v) = line.strip_prefix("Rss:") {
                if in_pool {
                    f.pool_rss += kib(v);
                } else {
                    f.rest += kib(v);
                }
            } else if let Some(v) = line.strip_prefix("Private_Dirty:") {
                if in_pool {
                    f.pool_private += kib(v);
                }
            } else if let Some((a, _)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
            {
                // A mapping's header line: `start-end perms ...` (field lines have no `-`
                // in their first word).
                if let Ok(a) = u64::from_str_radix(a, 16) {
                    in_pool = pools.iter().any(|&(s, e)| a >= s && a < e);
                }
            }
        }
        f
    }

    /// All resident memory.
    fn total(self) -> f64 {
        self.pool_rss + self.rest
    }

    /// What grew from `before` to `self`, per one of `n` instances.
    fn per(self, before: Footprint, n: usize) -> Footprint {
        let n = n as f64;
        Footprint {
            pool_rss: (self.pool_rss - before.pool_rss) / n,
            pool_private: (self.pool_private - before.pool_private) / n,
            rest: (self.rest - before.rest) / n,
        }
    }
}
