//! `make bench`, third part: keyed instances and scale. Release build, one keyed class of
//! the `bench` guest, each figure beside a baseline measured in the same run.
//!
//! (l) 100 000 distinct keys touched once each (made, woken, one event, asleep, retired),
//!     keys per second with 64 callers, vs a bare instantiate + `wakeup` + `on-event` +
//!     drop on one thread; host RSS at the start, at the end (every key retired) and the
//!     largest in between;
//! (m) 10 000 keys awake at once: host RSS per awake instance, vs the same component held
//!     awake 1 000 times in bare stores of the same engine;
//! (n) wake (instantiate + `wakeup`, in the actor) p50 / p99 while 10 000 are awake, vs a
//!     bare instantiate + `wakeup`;
//! (o) event dispatch (clients' `request`s, 64 in flight: time per event) with 10 000
//!     awake — all to one key, and spread over every key — ÷ the same with 1 awake;
//! (p) event dispatch with 1 awake ÷ a bare *synchronous* typed call of `on-event` of the
//!     same component (no async, no fibers, default allocator);
//! (q) `wasmwire run` warm start (compiled cache warm) of 20 and of 1 000 services: from
//!     spawning the process to "listening" and every autostart service awake, read from its
//!     log; vs spawning the same binary for `--version`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::node::Node;
use wasmwire::runtime::{Runtime, RuntimeConfig};
use wasmwire_tests::{env_or, load_manifest, root, rss, scratch_dir, wasmwire_bin};

const ROUNDS: usize = 3;

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn keyed_manifest(max_awake: u32, idle: &str) -> String {
    format!(
        "[host]\nmax_awake = {max_awake}\nthreads = 2\n{}\n[[service]]\nname = \"k\"\n\
         component = \"{{guest:bench}}\"\nchannel = 1\nkeyed = true\nidle_timeout = {idle:?}\n",
        cache_line()
    )
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
    let bare_instance_kib = {
        let mut held = Vec::new();
        let before = rss();
        for _ in 0..1000 {
            let mut store = runtime.scratch_store(Arc::from("bare"));
            let s = class.pre.instantiate_async(&mut store).await.unwrap();
            held.push((store, s));
        }
        let kib = rss().saturating_sub(before) as f64 / 1000.0 / 1024.0;
        drop(held);
        kib
    };
    let bare_awake_kib = {
        let mut held = Vec::new();
        let mut store = runtime.scratch_store(Arc::from("bare"));
        store.set_epoch_deadline(u64::MAX / 2);
        let s = class.pre.instantiate_async(&mut store).await.unwrap();
        held.push((store, s));
        let before = rss();
        for _ in 0..1000 {
            let mut store = runtime.scratch_store(Arc::from("bare"));
            store.set_epoch_deadline(u64::MAX / 2);
            let s = class.pre.instantiate_async(&mut store).await.unwrap();
            s.wasmwire_service_lifecycle()
                .call_wakeup(&mut store, "{}")
                .await
                .unwrap()
                .unwrap();
            held.push((store, s));
        }
        let kib = rss().saturating_sub(before) as f64 / 1000.0 / 1024.0;
        drop(held);
        kib
    };
    drop(class);
    drop(runtime);
    let sync_call_ns = sync_call_ns(&bench_wasm);

    // (l) touching many keys once each.
    let node = Arc::new(
        Node::start(&load_manifest(&keyed_manifest(1024, "2ms")))
            .await
            .unwrap(),
    );
    node.request("k/warm", "pong", "null").await.unwrap();
    wait_retired(&node).await;
    let start_rss = rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(start_rss));
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
    let end_rss = rss();
    row(
        &format!("(l) {keys} keys touched once (64 callers)"),
        format!("{:.0} keys/s", keys as f64 / took),
        format!("{:.0}/s bare, 1 thr", 1e6 / bare_touch_us),
        format!("{:.2}x", (keys as f64 / took) / (1e6 / bare_touch_us)),
        "report",
    );
    row(
        "    host RSS start / largest / after (MiB)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            start_rss as f64 / 1048576.0,
            peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0,
            end_rss as f64 / 1048576.0
        ),
        "-".into(),
        format!(
            "{:+.1} MiB",
            (end_rss as f64 - start_rss as f64) / 1048576.0
        ),
        "after near start",
    );
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }

    // (m)-(o) many awake at once.
    let node = Arc::new(
        Node::start(&load_manifest(&keyed_manifest(awake as u32 + 16, "1h")))
            .await
            .unwrap(),
    );
    node.wake("k/0").await.unwrap();
    let one_awake_ns = dispatch_ns(&node, 1, 100_000).await;
    let before = rss();
    let t = Instant::now();
    // The last 1 000 are woken one by one below, timing each (n).
    let first = awake - 1000;
    let maps_before = maps();
    fan_out(&node, first, 64, |node, i| async move {
        if i > 0 {
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
    let per_kib = rss().saturating_sub(before) as f64 / (awake - 1) as f64 / 1024.0;
    let maps_per = (maps() - maps_before) as f64 / (awake - 1) as f64;
    row(
        &format!("(m) host RSS per awake instance ({awake} awake)"),
        format!("{per_kib:.1} KiB"),
        format!("{bare_awake_kib:.1} KiB bare"),
        format!("{:.2}x", per_kib / bare_awake_kib),
        "<= 35 KiB",
    );
    row(
        "    bare instance before / after wakeup",
        format!("{bare_instance_kib:.1} KiB"),
        format!("{bare_awake_kib:.1} KiB"),
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
        &format!("(o) dispatch, {awake} awake (1 key / all) vs 1"),
        format!("{:.2} / {:.2} us", many_awake_ns / 1e3, other_ns / 1e3),
        format!("{:.2} us 1 awake", one_awake_ns / 1e3),
        format!("{:.2}x", many_awake_ns.max(other_ns) / one_awake_ns),
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
    use wasmtime::component::{Component, Linker};
    let engine = wasmtime::Engine::default();
    let component = Component::from_file(&engine, wasm).unwrap();
    let mut linker: Linker<()> = Linker::new(&engine);
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = linker.instantiate(&mut store, &component).unwrap();
    let iface = instance
        .get_export_index(&mut store, None, "wasmwire:service/lifecycle@0.1.1")
        .expect("lifecycle export");
    let idx = instance
        .get_export_index(&mut store, Some(&iface), "on-event")
        .expect("on-event");
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
