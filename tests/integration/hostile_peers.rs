//! Hostile peers on real QUIC connections with valid identities: each attack writes bytes
//! the real client never would, again and again for a window, while a well-behaved client
//! keeps asking the same host for requests. Every attack must end its stream or connection
//! with a reason (or be answered with an error), the host must not grow without bound, and
//! the good client must be served throughout; the ratio of its request rate during each
//! attack to its rate just before is printed.

use std::time::{Duration, Instant};
use wasmwire::broker::Ask;
use wasmwire::wire::Control;
use wasmwire_tests::client::{TestClient, WITHIN, client_of};
use wasmwire_tests::hostile::{ATTACKS, attack_once, chatter};
use wasmwire_tests::{addr_of, start_peer};

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
