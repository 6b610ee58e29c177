//! `wasmwire fuzz`: it finds a planted three-step bug and shrinks it to those three steps,
//! its replay file reproduces the trap, host-side rules are checked, the same seed gives
//! the same runs, and the sample services survive a short fuzzing.

use std::process::Command;
use std::time::Duration;
use wasmwire::fuzz::{self, Kind, Replay, Settings, Step, Target};
use wasmwire_tests::{scratch_dir, service, test_guest, wasmwire_bin};

fn settings(options: &str, seed: u64, runs: u64) -> Settings {
    Settings {
        options: options.into(),
        seed,
        runs: Some(runs),
        duration: None,
        max_steps: 32,
        jobs: 1,
        limits: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planted_bug_is_found_shrunk_to_three_steps_and_replayed() {
    let path = test_guest("planted");
    let s = settings(r#"{"level": 5}"#, 20_241_123, 20_000);
    let target = Target::load(&path, &s.limits).await.unwrap();
    let report = fuzz::fuzz(&target, &s, |_| {});
    let failure = report
        .failure
        .expect("the planted bug is found within 20 000 runs");
    assert_eq!(failure.finding.kind, Kind::Trap);
    assert_eq!(failure.finding.export, "on-event");
    assert!(
        failure.finding.cause.contains("planted bug"),
        "{}",
        failure.finding.cause
    );
    let steps = &failure.replay.steps;
    assert_eq!(steps.len(), 3, "{steps:?}");
    let id = match &steps[0] {
        Step::Connect { id, .. } => *id,
        other => panic!("first step {other:?}"),
    };
    match &steps[1] {
        Step::Message {
            id: on,
            kind,
            payload,
        } => {
            assert_eq!((*on, kind.as_str()), (id, "set"));
            let level = serde_json::from_slice::<serde_json::Value>(payload).unwrap()["level"]
                .as_i64()
                .unwrap();
            assert!(level > 100, "{level}");
        }
        other => panic!("second step {other:?}"),
    }
    assert!(matches!(&steps[2], Step::Event { name, .. } if name == "check"));
    eprintln!(
        "planted bug found after {} runs ({} steps, shrunk to 3)",
        report.runs, failure.found_steps
    );

    // The replay file, through the real CLI, reproduces it (exit 1, "reproduced").
    let file = scratch_dir("fuzz").join("planted.replay");
    std::fs::write(&file, failure.replay.to_text(&["test".into()])).unwrap();
    assert_eq!(
        Replay::parse(&std::fs::read_to_string(&file).unwrap()).unwrap(),
        failure.replay
    );
    let out = Command::new(wasmwire_bin())
        .args([
            "fuzz",
            path.to_str().unwrap(),
            "--replay",
            file.to_str().unwrap(),
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("reproduced: trap in on-event at step 3 of 3"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_step_delivers_its_messages_in_one_on_messages_call() {
    let s = settings("{}", 1, 1);
    let target = Target::load(&wasmwire_tests::test_guest("misbehave"), &s.limits)
        .await
        .unwrap();
    let body = "message 1 \"note\" \"1\"\nmessage 1 \"boom\" \"\"\nmessage 1 \"note\" \"2\"\n";
    let run = |text: String| {
        let target = &target;
        let s = &s;
        async move {
            let steps = Replay::parse(&text).unwrap().steps;
            fuzz::replay(target, s, &steps).await.0.expect("a finding")
        }
    };
    // Gathered by `batch 3`, the trap is in `on-message-block`; without it, in `on-message`.
    let f = run(format!("connect 1 \"a\"\nbatch 3\n{body}")).await;
    assert_eq!(
        (f.kind, f.export),
        (Kind::Trap, "on-message-block"),
        "{f:?}"
    );
    assert_eq!(
        f.step, 4,
        "found when the third message completed the batch"
    );
    let f = run(format!("connect 1 \"a\"\n{body}")).await;
    assert_eq!((f.kind, f.export), (Kind::Trap, "on-message"), "{f:?}");
    assert_eq!(f.step, 2);
    // A batch still gathering when a step of another kind comes is delivered first.
    let f = run("connect 1 \"a\"\nbatch 5\nmessage 1 \"boom\" \"\"\ndescribe\n".into()).await;
    assert_eq!((f.export, f.step), ("on-message-block", 3), "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_on_a_session_never_given_breaks_a_host_rule() {
    // `foreign` sends on 10 000 session ids the guest does not own.
    let s = settings("{}", 1, 1);
    let target = Target::load(&wasmwire_tests::test_guest("misbehave"), &s.limits)
        .await
        .unwrap();
    let bad = Replay::parse("event \"foreign\" \"null\"\n").unwrap();
    let (finding, _) = fuzz::replay(&target, &s, &bad.steps).await;
    let f = finding.expect("a finding");
    assert_eq!((f.kind, f.export), (Kind::Invariant, "send"));
    assert!(f.cause.contains("never given"), "{}", f.cause);
    // The spec sample sends only on sessions it was given: on one, fine; on any other id
    // it answers an error without calling the host.
    let target = Target::load(&service("spec"), &s.limits).await.unwrap();
    let steps = |id: u64| {
        Replay::parse(&format!(
            "connect 1 \"fuzz-1\"\nevent \"send\" \"{{\\\"session\\\": {id}, \\\"kind\\\": \\\"note\\\", \\\"text\\\": \\\"x\\\"}}\"\n"
        ))
        .unwrap()
        .steps
    };
    assert_eq!(fuzz::replay(&target, &s, &steps(1)).await.0, None);
    assert_eq!(fuzz::replay(&target, &s, &steps(999)).await.0, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_runs() {
    let s = settings(r#"{"start": 3}"#, 99, 200);
    let target = Target::load(&service("counter"), &s.limits).await.unwrap();
    let a = fuzz::fuzz(&target, &s, |_| {});
    let b = fuzz::fuzz(&target, &s, |_| {});
    assert_eq!((a.runs, a.calls, a.refused), (b.runs, b.calls, b.refused));
    assert_eq!(a.events, b.events);
    assert!(
        a.refused > 0,
        "undeclared kinds and events are tried, and refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_services_survive_fuzzing() {
    for (name, options) in [
        ("echo", "{}"),
        ("counter", r#"{"start": 100}"#),
        ("chat", r#"{"room": "lobby"}"#),
        ("ticker", r#"{"every_ms": 1000}"#),
        ("spec", "{}"),
    ] {
        let mut s = settings(options, 7, 0);
        s.runs = None;
        s.duration = Some(Duration::from_secs(2));
        let target = Target::load(&service(name), &s.limits).await.unwrap();
        let r = fuzz::fuzz(&target, &s, |_| {});
        assert!(r.failure.is_none(), "{name}: {:?}", r.failure);
        assert!(r.runs > 10 && r.calls > 100, "{name}: {} runs", r.runs);
        eprintln!(
            "{name}: {} runs, {} calls, {:.0} calls/s",
            r.runs,
            r.calls,
            r.calls_per_second()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzer_and_a_running_host_refuse_the_same_steps_for_the_same_reasons() {
    // The same service and limits, driven once by the fuzzer and once through a running
    // host: each refusal must read the same, because both ask the same checks (kinds,
    // events, sizes, `max_sessions`) of the same instance core.
    let mut s = settings("{}", 1, 1);
    s.limits.max_message = 64;
    s.limits.max_sessions = 1;
    let target = Target::load(&service("spec"), &s.limits).await.unwrap();
    // Two sizes over the limit, so that the two refusals read apart (each reason is kept
    // once).
    let (big, bigger) = ("x".repeat(65), "x".repeat(66));
    let steps = Replay::parse(&format!(
        "connect 1 \"first\"\n\
         message 1 \"nope\" \"\"\n\
         message 1 \"note\" \"{big}\"\n\
         event \"nope\" \"null\"\n\
         event \"record\" \"{bigger}\"\n\
         connect 2 \"second\"\n"
    ))
    .unwrap()
    .steps;
    let fuzzer = fuzz::refusals(&target, &s, &steps).await;

    // The same steps against a host running `spec` under the same name and limits.
    let node = wasmwire_tests::start(
        "[[service]]\nname = \"spec\"\ncomponent = \"{service:spec}\"\nchannel = 1\n\
         max_message = \"64B\"\nmax_sessions = 1\n",
    )
    .await;
    let first = node.open_session("spec", "first").await.unwrap();
    let host = [
        first.send("nope", Vec::new()).unwrap_err(),
        first.send("note", big.clone().into_bytes()).unwrap_err(),
        node.request("spec", "nope", "null").await.unwrap_err(),
        node.request("spec", "record", &bigger).await.unwrap_err(),
        node.open_session("spec", "second").await.err().unwrap(),
    ]
    .map(|e| e.to_string());
    assert_eq!(
        fuzzer, host,
        "the fuzzer refused {fuzzer:#?}, the host {host:#?}"
    );
    node.shutdown().await;
}

/// A service that stores gets a fresh bucket per run, storage errors among the faults,
/// and its trapped calls' writes checked to be gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storing_service_gets_a_fresh_bucket_per_run_and_storage_faults() {
    let path = test_guest("durable");
    let s = settings("null", 7, 1);
    let target = Target::load(&path, &s.limits).await.unwrap();
    let steps = |text: &str| Replay::parse(text).unwrap().steps;

    // One run writes; the next run's bucket is empty.
    let (finding, _) = fuzz::replay(
        &target,
        &s,
        &steps("event \"set\" \"{\\\"key\\\":\\\"a\\\",\\\"value\\\":1}\"\nevent \"expect-empty\" \"null\"\n"),
    )
    .await;
    let finding = finding.expect("within one run the write is seen");
    assert_eq!(finding.kind, Kind::Trap, "{finding:?}");
    assert!(finding.cause.contains("expect-empty"), "{finding:?}");
    let (finding, calls) =
        fuzz::replay(&target, &s, &steps("event \"expect-empty\" \"null\"\n")).await;
    assert!(
        finding.is_none(),
        "a new run starts with no data: {finding:?}"
    );
    assert!(calls >= 2, "wakeup and the event ran ({calls})");

    // Storage works without faults, and a storage fault reaches the guest as an error.
    let (finding, _) = fuzz::replay(&target, &s, &steps("event \"must-incr\" \"null\"\n")).await;
    assert!(finding.is_none(), "{finding:?}");
    let (finding, _) = fuzz::replay(
        &target,
        &s,
        &steps("wake\nfault \"store\"\nevent \"must-incr\" \"null\"\n"),
    )
    .await;
    let finding = finding.expect("the injected storage error is a panic of must-incr");
    assert!(
        finding.cause.contains("injected by the fuzzer"),
        "{finding:?}"
    );

    // A call that writes and traps is a trap, not a broken rule: its write is gone.
    let (finding, _) = fuzz::replay(
        &target,
        &s,
        &steps("wake\nevent \"set-and-trap\" \"{\\\"key\\\":\\\"b\\\",\\\"value\\\":2}\"\n"),
    )
    .await;
    let finding = finding.expect("set-and-trap traps");
    assert_eq!(
        (finding.kind, finding.export),
        (Kind::Trap, "on-event"),
        "{finding:?}"
    );

    // Fuzzing it finds its deliberate trap, never a leaked write.
    let report = fuzz::fuzz(&target, &settings("null", 11, 300), |_| {});
    if let Some(f) = report.failure {
        assert_ne!(f.finding.kind, Kind::Invariant, "{:?}", f.finding);
    }
}
