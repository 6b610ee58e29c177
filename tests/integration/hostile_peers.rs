//! Hostile peers on real QUIC connections with valid identities: each attack writes bytes
//! the real client never would, again and again for a window, while a well-behaved client
//! keeps asking the same host for requests. Every attack must end its stream or connection
//! with a reason (or be answered with an error), the host must not grow without bound, and
//! the good client must be served throughout; the ratio of its request rate during each
//! attack to its rate just before is printed. The DHT attacks (a Sybil flood of provider
//! records, answers that point lookups at addresses where nothing answers, a host that
//! claims to be closest to every key) must leave the learned tables bounded and lookups
//! working.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmwire::broker::Ask;
use wasmwire::wire::Control;
use wasmwire_tests::client::{TestClient, WITHIN, client_of};
use wasmwire_tests::hostile::{ATTACKS, Lie, attack_once, chatter, lying_host, record_flood};
use wasmwire_tests::{
    addr_of, bare_host, dht_only, hosts_of, request_any, start_peer, wait_linked, wait_until,
};

const HOST: &str = r#"
[[service]]
name = "counter"
component = "{service:counter}"
channel = 3
expose = true

[[service]]
name = "echo"
component = "{service:echo}"
channel = 5
expose = true

[[service]]
name = "secret"
component = "{service:counter}"
channel = 4
"#;

async fn good_rate(client: &TestClient, window: Duration) -> f64 {
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < window {
        let ask = Ask::Request {
            service: "counter".into(),
            event: "incr".into(),
            params: "null".into(),
            chain: vec![],
            caller: None,
            session: None,
        };
        let r = client.net.ask(client.conn, ask, WITHIN).await;
        assert!(
            matches!(r, Ok(Control::Response { .. })),
            "the good client was refused: {r:?}"
        );
        n += 1;
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_while_a_good_client_is_served() {
    let _alone = wasmwire_tests::ALONE.lock().await;
    let b = start_peer(&[], "", HOST).await;
    let addr = addr_of(&b);
    let good = client_of(&b).await;
    let window = Duration::from_millis(500);
    good_rate(&good, window).await; // warm up
    let rss_before = wasmwire_tests::rss();
    let mut served = Vec::new();
    for &attack in ATTACKS {
        let quiet = good_rate(&good, window).await;
        let run = async {
            let started = Instant::now();
            let mut last = attack_once(attack, &addr).await;
            while started.elapsed() < window {
                // Paced, so that what is measured is the attack, not this test's own
                // handshakes competing for the 2 cores.
                tokio::time::sleep(Duration::from_millis(20)).await;
                last = attack_once(attack, &addr).await;
            }
            last
        };
        let (seen, loud) = tokio::join!(run, good_rate(&good, window));
        let ratio = loud / quiet;
        eprintln!("{attack}: {seen}; good client {loud:.0} vs {quiet:.0} req/s: ratio {ratio:.2}");
        let ok = match attack {
            "truncated-frame" => {
                seen.contains("malformed control message: stream ended inside a frame")
            }
            "length-past-limit" => seen
                .contains("malformed control message: frame of 4294967295 bytes is over the limit"),
            "garbage-json" => seen.contains("malformed control message"),
            "unknown-type" => seen.contains("UnknownType") && seen.contains("id: 5"),
            "header-unknown-service" => {
                seen.contains("rejected NoSuchService") && seen.contains("nothing")
            }
            "header-unexposed-service" => {
                seen.contains("rejected NoSuchService") && seen.contains("secret")
            }
            "data-before-header" => seen == "reset 1",
            // Past the peer's window (256 waiting) its reader stops: the rest wait in its
            // own stream, and every request is answered in turn.
            "request-flood" => seen == "2000 answered, 0 busy",
            "query-flood" => !seen.starts_with("0 "),
            "never-reads" => seen.starts_with("wrote: "),
            "silent-streams" => seen.contains("1000 streams") && seen.contains("Reset(2)"),
            "bogus-peers" => seen.contains("with 32 bogus peers"),
            _ => false,
        };
        assert!(ok, "{attack}: {seen}");
        served.push((attack, loud));
    }
    // The bogus peers were learned into a bounded table (256), and no more.
    let learned = b
        .net()
        .unwrap()
        .peers()
        .await
        .iter()
        .filter(|p| !p.connected)
        .count();
    eprintln!("learned table after the bogus-peers attack: {learned} entries");
    assert!((1..=256).contains(&learned), "learned {learned}");
    let grew = wasmwire_tests::rss().saturating_sub(rss_before) >> 20;
    eprintln!("host RSS grew {grew} MiB over the attacks");
    assert!(grew < 128, "host RSS grew {grew} MiB");
    // Served throughout (every request above succeeded); never starved: answered several
    // times in each attack's window. How much it slows is printed, not bounded: beside a
    // build using both cores (the debug build of this test, say) the request flood has
    // cut the good client to 3% of its quiet rate (24 answers a second) and still never
    // starved it, so a ratio bound would only measure the machine.
    for (attack, loud) in served {
        let answered = loud * window.as_secs_f64();
        assert!(
            answered >= 2.0,
            "{attack}: the good client was answered {answered:.0} times in {window:?}"
        );
    }
    good.close().await;
    b.shutdown().await;
}

/// Fair scheduling in the broker task: four peers writing frames as fast as they can (of a
/// type the host answers but that takes no request-window permit) each hold at most their
/// share of the broker's input queue. A good client keeps being answered, and each chatty
/// peer is served too: every one of its frames is read and answered. Measured on 2 cores
/// (debug build): the good client kept 0.08-0.10 of its quiet rate with the shares and
/// 0.02 without; what remains is the CPU the four floods take in this one process, and it
/// halves again with busy processes beside the test. So the test asserts what does not
/// depend on the machine: every request answered, some progress, every flood served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_connections_cannot_starve_the_others_in_the_broker() {
    let _alone = wasmwire_tests::ALONE.lock().await;
    const CHATTY: usize = 4;
    const FRAMES: usize = 20_000;
    let b = start_peer(&[], "", HOST).await;
    let addr = addr_of(&b);
    let good = client_of(&b).await;
    let window = Duration::from_secs(1);
    good_rate(&good, window).await; // warm up
    let quiet = good_rate(&good, window).await;
    let chatter_runs: Vec<_> = (0..CHATTY)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { chatter(&addr, FRAMES, Duration::from_secs(120)).await })
        })
        .collect();
    let loud = good_rate(&good, window).await;
    let mut served = Vec::new();
    for c in chatter_runs {
        served.push(c.await.unwrap());
    }
    let ratio = loud / quiet;
    eprintln!(
        "good client {loud:.0} vs {quiet:.0} req/s beside {CHATTY} chatty peers: ratio \
         {ratio:.2}; chatty peers answered {served:?}"
    );
    assert!(ratio > 0.01, "the good client was starved: {ratio:.2}");
    for (answers, open) in served {
        assert!(open, "a chatty peer that reads its answers is not cut off");
        assert_eq!(answers, FRAMES, "every frame of a chatty peer is answered");
    }
    good.close().await;
    b.shutdown().await;
}

/// Waits until a liar has answered a lookup query (it was asked beside the honest hosts;
/// the lookup may have finished before its answer came).
async fn asked(answers: &AtomicUsize, what: &str) {
    wait_until(Duration::from_secs(10), what, || async move {
        (answers.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
}

/// A host that knows only `b`, and a host lying to it as `lie` says (advertising
/// `listen`) connected to it: the host, the liar's count of answers, and the liar's task.
async fn beside_a_liar(
    b: std::net::SocketAddr,
    lie: Lie,
    listen: &'static str,
) -> (
    wasmwire::net::Net,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let a = bare_host(&[b], dht_only());
    let addr = a.local_addr().unwrap().to_string();
    let answers = Arc::new(AtomicUsize::new(0));
    let liar = tokio::spawn({
        let answers = answers.clone();
        async move {
            let within = Duration::from_secs(120);
            lying_host(&addr, listen, lie, within, &answers).await
        }
    });
    wait_until(
        Duration::from_secs(20),
        "the host holds B and the liar",
        || {
            let a = a.clone();
            async move { (hosts_of(&a).await.len() >= 2).then_some(()) }
        },
    )
    .await;
    (a, answers, liar)
}

/// Asks `*/echo` from `a` until answered (each try may run a lookup); panics after 60 s.
async fn echo_through_the_dht(a: &wasmwire::net::Net, what: &str) {
    let answer = wait_until(Duration::from_secs(60), what, || {
        request_any(a, "echo", "echo", "\"found\"")
    })
    .await;
    assert_eq!(answer, "\"found\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_attacks_leave_the_tables_bounded_and_lookups_working() {
    use wasmwire::broker::BrokerLimits;
    // B keeps records; P runs `echo`, knows only B, and publishes its record there.
    let b = bare_host(&[], BrokerLimits::default());
    let b_addr = b.local_addr().unwrap();
    let p = start_peer(&[b_addr.to_string()], "", HOST).await;
    let p_id = p.peer_id().unwrap();
    wait_linked(&b, p_id, "P connected to B").await;
    wait_until(Duration::from_secs(30), "B keeps P's record", || {
        let b = b.clone();
        async move { (b.tables().await.records >= 2).then_some(()) }
    })
    .await;

    // 1. A Sybil flood: 220 fresh hosts store records for `echo` and 63 other names each.
    let (stored, refused) = record_flood(&b_addr.to_string(), 220, "echo").await;
    let t = b.tables().await;
    eprintln!("record flood: {stored} stored, {refused} refused; B keeps {t:?}");
    assert!(t.records <= 8192, "records bounded: {t:?}");
    assert!(refused > 0, "past the caps, records are refused");
    assert!(t.table <= 256 * 20, "{t:?}");
    // A host that knows only B finds P among 64 records of `echo` and the flood's ids.
    let a1 = bare_host(&[b_addr], dht_only());
    echo_through_the_dht(&a1, "*/echo answered after the record flood").await;

    // 2. A host whose answers point lookups at 20 hosts where nothing answers, named as
    // providers too; A2 knows only B and the liar.
    let (a2, lies, liar) = beside_a_liar(b_addr, Lie::Unreachable, "192.0.2.9:7400").await;
    echo_through_the_dht(&a2, "*/echo answered beside a liar").await;
    asked(&lies, "the liar answered A2's lookup").await;
    let t2 = a2.tables().await;
    assert!(t2.table <= 256 * 20 && t2.learned == 0, "{t2:?}");

    // 3. A host that claims to be closest to every key (20 ids near each key asked, all
    // at its own address, where nothing listens); A3 knows only B and the liar, and
    // reaches P by id as well as by name.
    let (a3, claims, closest) = beside_a_liar(b_addr, Lie::Closest, "127.0.0.1:9").await;
    let pong = a3
        .ask_peer(p_id, Ask::Ping, Duration::from_secs(30))
        .await
        .expect("P reached by id beside a liar");
    assert!(matches!(pong, Control::Pong { .. }), "{pong:?}");
    echo_through_the_dht(&a3, "*/echo answered beside a host closest to every key").await;
    let t3 = a3.tables().await;
    assert!(t3.table <= 256 * 20, "{t3:?}");
    asked(&claims, "the liar answered A3's lookups").await;
    liar.abort();
    closest.abort();
    eprintln!("tables after the lies: A2 {t2:?}, A3 {t3:?}");
}
