//! `make bench`: the host's hot paths, each printed beside a baseline measured in the same
//! run on the same machine. Plain timing loops (release build), no statistics library: each
//! figure is the best of a few rounds, which is what a shared 2-core machine can report
//! honestly.
//!
//! (a) `on-message` (64 B) through the real mailbox and actor, pipelined, vs a bare typed
//!     call of the same export;
//! (b) session messages per second between two instances;
//! (c) waking a sleeping instance (instantiate + `wakeup`) vs a bare instantiate;
//! (d) host memory per awake instance with 1 000 awake;
//! (e) a `request` round trip between two instances, p50 and p99, vs a bare `on-event` call;
//! (f) `wasmwire fuzz` on the sample `echo`, export calls per second on one worker and on
//!     one per core, vs the rate of the bare typed call of (a), alternated in rounds;
//! (q) a lone 64-byte message from a client to `echo` and back, p50 / p99 — batching must
//!     not make a lone message wait — vs the same two thread hand-offs (a task on a thread
//!     of its own, tokio channels) without wasm.
//!
//! `BENCH_ONE_THREAD=1` runs everything on one thread (shows what thread hand-offs cost);
//! `BENCH_DETAIL=1` adds break-downs (store set-up, how far the receiver kept up in (b)).

use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmwire::node::Node;
use wasmwire::runtime::{HostState, Runtime, RuntimeConfig};
use wasmwire_tests::{json, load_manifest, root};

const ROUNDS: usize = 3;

/// The runtime the bare baselines call through: 64 MiB instances, the test cache.
fn bench_runtime(max_awake: u32) -> Runtime {
    Runtime::new(&RuntimeConfig {
        max_awake,
        max_memory: 64 << 20,
        keep_resident: wasmwire::manifest::DEFAULT_KEEP_RESIDENT,
        cache_dir: Some(root().join("target/test-cache")),
    })
    .unwrap()
}

fn row(name: &str, value: String, baseline: String, ratio: String, target: &str) {
    println!("{name:<44} {value:>14} {baseline:>16} {ratio:>9}   {target}");
}

/// A store the way a plain wasmtime embedding makes one: no limiter, no deadline callback.
fn bare_store(runtime: &Runtime) -> wasmtime::Store<HostState> {
    let mut store = wasmtime::Store::new(
        runtime.engine(),
        HostState::scratch(Arc::from("bare"), runtime.ticks()),
    );
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// (q)'s floor: `n` round trips of a 64-byte message through a task on a thread of its own
/// (what an instance's worker is) over tokio channels, no wasm; sorted.
async fn bare_round_trips(n: usize) -> Vec<Duration> {
    let (to, mut there) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (back, mut here) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async move {
                while let Some(m) = there.recv().await {
                    if back.send(m).await.is_err() {
                        break;
                    }
                }
            })
    });
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        to.send(vec![7u8; 64]).await.unwrap();
        here.recv().await.unwrap();
        times.push(t.elapsed());
    }
    drop(to);
    worker.join().unwrap();
    times.sort();
    times
}

async fn count(node: &Node, service: &str) -> u64 {
    json(&node.request(service, "count", "null").await.unwrap())
        .as_u64()
        .unwrap()
}

fn main() {
    let rt = if std::env::var_os("BENCH_ONE_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(run());
}

async fn run() {
    let bench_wasm = root().join("target/test-guests/bench.wasm");
    assert!(
        bench_wasm.is_file(),
        "run `make test-guests` first (make bench does)"
    );
    println!(
        "{:<44} {:>14} {:>16} {:>9}   target",
        "benchmark", "wasmwire", "baseline", "ratio"
    );

    // Baselines: the same component called directly through the generated bindings.
    let runtime = bench_runtime(16);
    let class = runtime.load(&bench_wasm).await.unwrap();
    let payload = vec![7u8; 64];
    let bare_call_ns = {
        let mut store = runtime.scratch_store(Arc::from("bare"));
        let service = class.pre.instantiate_async(&mut store).await.unwrap();
        let lc = service.wasmwire_service_lifecycle();
        lc.call_wakeup(&mut store, "{}").await.unwrap().unwrap();
        let n = 200_000;
        let mut best_ns = f64::INFINITY;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                lc.call_on_message(&mut store, 1, "data", &payload)
                    .await
                    .unwrap();
            }
            best_ns = best_ns.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        best_ns
    };
    // Step 3 of the batching issue: what a call without a fiber would save. The same
    // export, called synchronously on a default engine.
    let bare_sync_call_ns = {
        let (mut store, instance, [wakeup, on_message]) =
            wasmwire_tests::sync_exports(&bench_wasm, ["wakeup", "on-message"]);
        let wakeup = instance
            .get_typed_func::<(&str,), (Result<(), String>,)>(&mut store, wakeup)
            .unwrap();
        wakeup.call(&mut store, ("{}",)).unwrap().0.unwrap();
        let on_message = instance
            .get_typed_func::<(u64, &str, &[u8]), ()>(&mut store, on_message)
            .unwrap();
        let n = 200_000;
        let mut best_ns = f64::INFINITY;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                on_message.call(&mut store, (1, "data", &payload)).unwrap();
            }
            best_ns = best_ns.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        best_ns
    };
    let bare_event_ns = {
        let mut store = runtime.scratch_store(Arc::from("bare"));
        let service = class.pre.instantiate_async(&mut store).await.unwrap();
        let lc = service.wasmwire_service_lifecycle();
        lc.call_wakeup(&mut store, "{}").await.unwrap().unwrap();
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            lc.call_on_event(&mut store, None, "pong", "null")
                .await
                .unwrap()
                .unwrap();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let bare_instantiate_us = {
        let n = 2_000;
        let mut best_us = f64::INFINITY;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                let mut store = bare_store(&runtime);
                let service = class.pre.instantiate_async(&mut store).await.unwrap();
                drop((service, store));
            }
            best_us = best_us.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        best_us
    };

    if std::env::var_os("BENCH_DETAIL").is_some() {
        let n = 5_000;
        let t = Instant::now();
        for _ in 0..n {
            drop(std::hint::black_box(HostState::scratch(
                Arc::from("x"),
                runtime.ticks(),
            )));
        }
        println!(
            "detail: HostState::scratch (WasiCtx build) {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let t = Instant::now();
        for _ in 0..n {
            drop(std::hint::black_box(bare_store(&runtime)));
        }
        println!(
            "detail: + Store::new {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let t = Instant::now();
        for _ in 0..n {
            let mut store = bare_store(&runtime);
            let service = class.pre.instantiate_async(&mut store).await.unwrap();
            service
                .wasmwire_service_lifecycle()
                .call_wakeup(&mut store, "{}")
                .await
                .unwrap()
                .unwrap();
        }
        println!(
            "detail: + instantiate + wakeup {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        if std::env::var_os("BENCH_DETAIL_ONLY").is_some() {
            return;
        }
    }

    let node = Node::start(&load_manifest(
        r#"
[host]
max_awake = 64
threads = THREADS

[[service]]
name = "sink"
component = "{guest:bench}"
channel = 1
mailbox = 1048576
call_timeout = "60s"

[[service]]
name = "flooder"
component = "{guest:bench}"
channel = 2
uses = ["sink"]
call_timeout = "60s"
request_timeout = "60s"

[[service]]
name = "sleeper"
component = "{guest:bench}"
channel = 3
idle_timeout = "1h"

[[service]]
name = "pinger"
component = "{guest:bench}"
channel = 4
uses = ["ponger"]
call_timeout = "60s"

[[service]]
name = "ponger"
component = "{guest:bench}"
channel = 5

[[service]]
name = "echo"
component = "{service:echo}"
channel = 6
"#
        .replace(
            "THREADS",
            &std::env::var("BENCH_THREADS").unwrap_or_else(|_| "2".into()),
        )
        .replace(
            "[host]\n",
            &format!(
                "[host]\ncache_dir = {:?}\n",
                root().join("target/test-cache").display().to_string()
            ),
        )
        .as_str(),
    ))
    .await
    .unwrap();

    // (a) through the mailbox and actor, pipelined.
    let actor_ns = {
        let session = node.open_session("sink", "bench").await.unwrap();
        let n: u64 = 200_000;
        let mut best_ns = f64::INFINITY;
        for _ in 0..ROUNDS {
            let start_count = count(&node, "sink").await;
            let t = Instant::now();
            for _ in 0..n {
                while session.send("data", payload.clone()).is_err() {
                    tokio::task::yield_now().await;
                }
            }
            // The event queues behind every message: its answer means all were handled.
            while count(&node, "sink").await < start_count + n {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            best_ns = best_ns.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        session.close();
        best_ns
    };
    row(
        "(a) on-message 64 B via mailbox+actor",
        format!("{actor_ns:.0} ns"),
        format!("{bare_sync_call_ns:.0} ns bare sync"),
        format!("{:.2}x", actor_ns / bare_sync_call_ns),
        "<= 0.5x batched",
    );
    row(
        "    bare call_async (fiber) ÷ bare sync call",
        format!("{bare_call_ns:.0} ns"),
        format!("{bare_sync_call_ns:.0} ns sync"),
        format!("{:.2}x", bare_call_ns / bare_sync_call_ns),
        "report",
    );

    // (b) instance to instance over a local session.
    let msgs_per_s = {
        let n: u64 = 1_000_000;
        let mut best_rate: f64 = 0.0;
        for _ in 0..ROUNDS {
            let start_count = count(&node, "sink").await;
            let t = Instant::now();
            node.request(
                "flooder",
                "flood",
                &format!(r#"{{"service": "sink", "n": {n}, "size": 64}}"#),
            )
            .await
            .unwrap();
            if std::env::var_os("BENCH_DETAIL").is_some() {
                let got = count(&node, "sink").await - start_count;
                println!(
                    "detail: flood returned after {:?} with {got} of {n} handled",
                    t.elapsed()
                );
            }
            while count(&node, "sink").await < start_count + n {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            best_rate = best_rate.max(n as f64 / t.elapsed().as_secs_f64());
        }
        best_rate
    };
    row(
        "(b) session messages, instance to instance",
        format!("{:.2} M/s", msgs_per_s / 1e6),
        format!("{:.2} M/s bare sync", 1e3 / bare_sync_call_ns),
        format!("{:.2}x", (1e9 / msgs_per_s) / bare_sync_call_ns),
        ">= 5 M/s",
    );

    // (c) wake a sleeping instance: instantiate + wakeup, timed inside the actor; the round
    // trip through the node (a control message to the actor's thread and back) beside it.
    let (wake_us, wake_round_trip_us) = {
        let n = 2_000;
        let mut best = (f64::INFINITY, f64::INFINITY);
        for _ in 0..ROUNDS {
            let mut inside = 0u64;
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                node.wake("sleeper").await.unwrap();
                total += t.elapsed();
                inside += node.instance("sleeper").unwrap().last_wake_ns();
                assert!(node.sleep("sleeper").await.unwrap());
            }
            best.0 = best.0.min(inside as f64 / 1e3 / n as f64);
            best.1 = best.1.min(total.as_secs_f64() * 1e6 / n as f64);
        }
        best
    };
    row(
        "(c) wake: instantiate + wakeup (in actor)",
        format!("{wake_us:.1} us"),
        format!("{bare_instantiate_us:.1} us bare"),
        format!("{:.2}x", wake_us / bare_instantiate_us),
        "<= 10 us",
    );
    row(
        "    wake round trip through the node",
        format!("{wake_round_trip_us:.1} us"),
        "-".into(),
        "-".into(),
        "report",
    );

    // (e) request round trip between two instances, timed inside the guest.
    let (p50, p99) = {
        let times = json(
            &node
                .request("pinger", "ping", r#"{"service": "ponger", "n": 20000}"#)
                .await
                .unwrap(),
        );
        let times: Vec<u64> = times
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        (
            times[times.len() / 2] as f64 / 1e3,
            times[times.len() * 99 / 100] as f64 / 1e3,
        )
    };
    row(
        "(e) request round trip p50 / p99",
        format!("{p50:.1} / {p99:.1} us"),
        format!("{:.2} us bare", bare_event_ns / 1e3),
        format!("{:.1}x", p50 * 1e3 / bare_event_ns),
        "p50 <= 2 us",
    );

    // (q) a lone message to `echo` and back, vs the same two thread hand-offs without wasm.
    let (ours, floor) = {
        let mut echo = node.open_session("echo", "bench").await.unwrap();
        let trips = 10_000;
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let f = bare_round_trips(trips).await;
            if round == 0 || f[trips / 2] < floor[trips / 2] {
                floor = f;
            }
            let mut times = Vec::with_capacity(trips);
            for _ in 0..trips {
                let t = Instant::now();
                echo.send("echo", payload.clone()).unwrap();
                match echo.events.recv().await {
                    Some(wasmwire::runtime::session::ClientEvent::Message { .. }) => {}
                    other => panic!("echo answered {other:?}"),
                }
                times.push(t.elapsed());
            }
            times.sort();
            if round == 0 || times[trips / 2] < ours[trips / 2] {
                ours = times;
            }
        }
        echo.close();
        (ours, floor)
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let median = |v: &[Duration]| v[v.len() / 2];
    let tail = |v: &[Duration]| v[v.len() * 99 / 100];
    row(
        "(q) lone message to echo and back p50 / p99",
        format!("{:.1} / {:.1} us", us(median(&ours)), us(tail(&ours))),
        format!("{:.1} / {:.1} us", us(median(&floor)), us(tail(&floor))),
        format!("{:.1}x", us(median(&ours)) / us(median(&floor))),
        "report",
    );
    node.shutdown().await;
    drop(runtime);

    // (d) memory per awake instance, 1 000 awake.
    let mut text = format!(
        "[host]\nmax_awake = 1024\ncache_dir = {:?}\n",
        root().join("target/test-cache").display().to_string()
    );
    for i in 0..1000 {
        text.push_str(&format!("\n[[service]]\nname = \"s{i}\"\ncomponent = \"{{guest:bench}}\"\nchannel = {}\nidle_timeout = \"1h\"\n", i + 1));
    }
    let node = Node::start(&load_manifest(&text)).await.unwrap();
    node.wake("s0").await.unwrap(); // warm the pool's first slot and the code
    let before = wasmwire_tests::rss();
    for i in 1..1000 {
        node.wake(&format!("s{i}")).await.unwrap();
    }
    let per = (wasmwire_tests::rss().saturating_sub(before)) as f64 / 999.0;
    row(
        "(d) host memory per awake instance (1000)",
        format!("{:.1} KiB", per / 1024.0),
        "-".into(),
        "-".into(),
        "report",
    );
    node.shutdown().await;

    // (f) fuzzing throughput. Bare dispatch and the fuzzer alternate in rounds (the machine
    // is noisy); the best of each is kept.
    let runtime = bench_runtime(4);
    let class = runtime.load(&bench_wasm).await.unwrap();
    let echo = root().join("target/services/echo.wasm");
    let target = wasmwire::fuzz::Target::load(&echo, &Default::default())
        .await
        .expect("run `make services` first (make bench does)");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut bare_rate, mut one_rate, mut all_rate) = (0f64, 0f64, 0f64);
    for round in 0..ROUNDS as u64 {
        let mut store = runtime.scratch_store(Arc::from("bare"));
        let service = class.pre.instantiate_async(&mut store).await.unwrap();
        let lc = service.wasmwire_service_lifecycle();
        lc.call_wakeup(&mut store, "{}").await.unwrap().unwrap();
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            lc.call_on_message(&mut store, 1, "data", &payload)
                .await
                .unwrap();
        }
        bare_rate = bare_rate.max(n as f64 / t.elapsed().as_secs_f64());
        for (jobs, best) in [(1, &mut one_rate), (cores, &mut all_rate)] {
            let settings = wasmwire::fuzz::Settings {
                options: "{}".into(),
                seed: round,
                runs: None,
                duration: Some(Duration::from_millis(1500)),
                max_steps: 128,
                limits: Default::default(),
                jobs,
            };
            // Blocks this thread (the fuzzer's workers have their own runtimes): nothing
            // else runs on this one now.
            let report = wasmwire::fuzz::fuzz(&target, &settings, |_| {});
            assert!(report.failure.is_none(), "{:?}", report.failure);
            *best = best.max(report.calls_per_second());
        }
    }
    row(
        "(f) wasmwire fuzz echo, calls/s, 1 worker",
        format!("{:.0} k/s", one_rate / 1e3),
        format!("{:.0} k/s bare", bare_rate / 1e3),
        format!("{:.2}x", one_rate / bare_rate),
        ">= 0.5x",
    );
    row(
        &format!("(f) wasmwire fuzz echo, calls/s, {cores} workers"),
        format!("{:.0} k/s", all_rate / 1e3),
        format!("{:.0} k/s bare", bare_rate / 1e3),
        format!("{:.2}x", all_rate / bare_rate),
        ">= 0.5x",
    );
}
