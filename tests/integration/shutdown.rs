//! Graceful shutdown under load: SIGTERM to a real host process while client sessions
//! stream messages at its `echo` and requests are in flight, one of them into a guest that
//! never returns. Every session must end with a close (so every message not echoed was
//! announced lost), echoes must come back in order, every request must be answered or fail
//! with `closed` (never hang, never `timeout`), and the process must exit 0 within its
//! `shutdown_timeout` and a margin, naming the service it had to leave in its call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmwire::broker::Ask;
use wasmwire::runtime::instance::CallError;
use wasmwire::runtime::session::ClientEvent;
use wasmwire::wire::{Control, ErrorCode};
use wasmwire_tests::client::{TestClient, client_net};
use wasmwire_tests::process::HostProcess;
use wasmwire_tests::{free_port, peer_manifest, scratch_dir, wait_until};

const SERVICES: &str = r#"
[[service]]
name = "echo"
component = "{service:echo}"
channel = 2
expose = true
mailbox = 4096

[[service]]
name = "stuck"
component = "{guest:misbehave}"
channel = 3
expose = true
call_timeout = "1h"
"#;

/// The host's `shutdown_timeout`.
const BOUND: Duration = Duration::from_secs(4);
/// Client sessions streaming at `echo`.
const SESSIONS: usize = 16;
/// Request loops.
const ASKERS: usize = 8;

async fn dial(addr: &str) -> TestClient {
    let net = client_net(
        wasmwire::net::identity::Identity::generate().unwrap(),
        wasmwire::wire::ALPN,
    );
    let (conn, _) = net
        .dial(&addr.parse().unwrap())
        .await
        .expect("dial the host");
    TestClient { net, conn }
}

/// What one session saw: (sent and accepted, echoed, ended with a close).
async fn stream(
    client: Arc<TestClient>,
    n: usize,
    stop: Arc<AtomicBool>,
    echoes: Arc<AtomicU64>,
) -> (u64, u64, bool) {
    let mut s = client
        .net
        .open_client_session(client.conn, "echo", &format!("stream-{n}"), 1 << 20)
        .await
        .expect("a session to echo");
    let (mut sent, mut echoed, mut last) = (0u64, 0u64, 0u64);
    let mut sending = true;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tokio::select! {
            e = s.events.recv() => match e {
                Some(ClientEvent::Message { payload, .. }) => {
                    let seq: u64 = String::from_utf8_lossy(&payload).parse().unwrap();
                    assert!(seq > last && seq <= sent, "session {n}: echo {seq} after {last}, {sent} sent");
                    (last, echoed) = (seq, echoed + 1);
                    echoes.fetch_add(1, Ordering::Relaxed);
                }
                Some(ClientEvent::Closed) | None => return (sent, echoed, true),
            },
            _ = tick.tick(), if sending => {
                if stop.load(Ordering::Relaxed) {
                    sending = false;
                    continue;
                }
                match s.send("echo", (sent + 1).to_string().into_bytes()) {
                    Ok(()) => sent += 1,
                    Err(CallError::Busy) => {}
                    // Refused: the sender is told at once; the close follows.
                    Err(_) => sending = false,
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => return (sent, echoed, false),
        }
    }
}

/// Requests `echo` until the first error other than `busy` (echo's mailbox full of the
/// streams' messages: a caller waits and asks again); returns (answered, the error's code).
async fn ask_loop(client: Arc<TestClient>, answers: Arc<AtomicU64>) -> (u64, ErrorCode) {
    let mut answered = 0;
    loop {
        let ask = Ask::Request {
            service: "echo".into(),
            event: "echo".into(),
            params: format!("{answered}"),
            chain: vec![],
            caller: None,
            session: None,
        };
        match client
            .net
            .ask(client.conn, ask, Duration::from_secs(60))
            .await
        {
            Ok(Control::Response { .. }) => {
                answered += 1;
                answers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => panic!("answered {other:?}"),
            Err(f) if f.code == ErrorCode::Busy => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(f) => return (answered, f.code),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_or_announces_everything_and_exits_0_within_its_bound() {
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = scratch_dir("shutdown");
    let manifest = dir.join("wasmwire.toml");
    let extra = format!("shutdown_timeout = \"{}s\"", BOUND.as_secs());
    std::fs::write(&manifest, peer_manifest(&addr, &[], &extra, SERVICES)).unwrap();
    let mut host = HostProcess::start(&manifest, &dir.join("host.log"));
    host.wait_listening().await;

    let sessions = Arc::new(dial(&addr).await);
    let askers = Arc::new(dial(&addr).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (echoes, answers) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let streams: Vec<_> = (0..SESSIONS)
        .map(|n| tokio::spawn(stream(sessions.clone(), n, stop.clone(), echoes.clone())))
        .collect();
    let asks: Vec<_> = (0..ASKERS)
        .map(|_| tokio::spawn(ask_loop(askers.clone(), answers.clone())))
        .collect();
    // A request into a guest that never returns: the host cannot finish it, only bound it.
    let stuck = {
        let c = askers.clone();
        tokio::spawn(async move {
            let ask = Ask::Request {
                service: "stuck".into(),
                event: "spin".into(),
                params: "null".into(),
                chain: vec![],
                caller: None,
                session: None,
            };
            c.net.ask(c.conn, ask, Duration::from_secs(120)).await
        })
    };
    // SIGTERM once load is flowing (messages echoed, requests answered) and `stuck` has
    // taken its request (awake, its mailbox empty: it is in the endless call).
    wait_until(
        Duration::from_secs(60),
        "load flowing and stuck in its call",
        || {
            let (askers, echoes, answers) = (askers.clone(), echoes.clone(), answers.clone());
            async move {
                let flowing =
                    echoes.load(Ordering::Relaxed) >= 100 && answers.load(Ordering::Relaxed) >= 5;
                let stats = askers
                    .net
                    .ask(askers.conn, Ask::Stats, Duration::from_secs(10))
                    .await;
                let Ok(Control::Stats { stats, .. }) = stats else {
                    return None;
                };
                let in_call = stats.instances.iter().any(|i| {
                    i.name == "stuck"
                        && i.state == wasmwire::wire::ServiceState::Awake
                        && i.mailbox == 0
                        && i.calls >= 1
                });
                (flowing && in_call).then_some(())
            }
        },
    )
    .await;

    let signalled = Instant::now();
    host.terminate();
    let status = host.wait_exit(Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let log_text = host.log_text();
    eprintln!("exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "exit status {status}; log:\n{log_text}");
    assert!(
        took < BOUND + Duration::from_secs(10),
        "took {took:?} to stop, bound {BOUND:?}; log:\n{log_text}"
    );
    assert!(
        log_text
            .lines()
            .any(|l| l.contains("still in a call") && l.contains("first=stuck")),
        "the service left in its call is named:\n{log_text}"
    );

    let (mut sent, mut echoed) = (0, 0);
    for (n, s) in streams.into_iter().enumerate() {
        let (s_sent, s_echoed, closed) = s.await.expect("a stream");
        assert!(closed, "session {n} never saw its close");
        sent += s_sent;
        echoed += s_echoed;
    }
    let mut answered = 0;
    for a in asks {
        let (n, code) = a.await.expect("an asker");
        assert_eq!(
            code,
            ErrorCode::Closed,
            "a request in flight failed with {code:?}"
        );
        answered += n;
    }
    let stuck = stuck.await.expect("the stuck request");
    assert!(
        matches!(&stuck, Err(f) if f.code == ErrorCode::Closed),
        "the request left in its call fails with closed: {stuck:?}"
    );
    eprintln!(
        "{sent} messages accepted over {SESSIONS} sessions, {echoed} echoed, the rest announced \
         by the sessions' close; {answered} requests answered, every other one closed"
    );
    assert!(sent >= 100 && echoed >= 100 && answered >= 5);
}
