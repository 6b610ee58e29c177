//! Finding the network over real QUIC: a host at its connection cap answers a newcomer
//! with `full` and a sample of its peers, and the newcomer joins through them; a host
//! known but not connected is dialled when something asks for it by id.

use std::time::Duration;
use wasmwire::broker::{Ask, BrokerLimits};
use wasmwire::wire::{Control, ErrorCode, PeerId};
use wasmwire_tests::{bare_host as host, dht_only, hosts_of, request_any, wait_linked, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_turned_away_by_a_full_host_joins_through_its_sample() {
    // The seed holds two connections at most; two hosts fill it.
    let seed = host(
        &[],
        BrokerLimits {
            max_connections: 2,
            ..BrokerLimits::default()
        },
    );
    let seed_addr = seed.local_addr().unwrap();
    let (b, c) = (
        host(&[seed_addr], BrokerLimits::default()),
        host(&[seed_addr], BrokerLimits::default()),
    );
    wait_until(Duration::from_secs(20), "the seed is full", || {
        let seed = seed.clone();
        async move { (hosts_of(&seed).await.len() == 2).then_some(()) }
    })
    .await;
    // The newcomer knows only the seed, which answers `full` with B and C.
    let newcomer = host(&[seed_addr], BrokerLimits::default());
    let joined = wait_until(
        Duration::from_secs(30),
        "the newcomer connected to a host it learned from the full seed",
        || {
            let (newcomer, b, c) = (newcomer.clone(), b.id(), c.id());
            async move {
                let hosts = hosts_of(&newcomer).await;
                hosts.iter().find(|p| **p == b || **p == c).copied()
            }
        },
    )
    .await;
    assert!(joined == b.id() || joined == c.id());
    assert!(
        !hosts_of(&newcomer).await.contains(&seed.id()),
        "the full seed never took the newcomer"
    );
    let held = seed.connections().await.len();
    assert!(held <= 2, "the seed holds {held} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_known_but_not_connected_is_dialled_when_asked_for() {
    let c = host(&[], BrokerLimits::default());
    let b = host(&[c.local_addr().unwrap()], BrokerLimits::default());
    // B knows C before A asks B for its peers (on hello; again only 30 s later).
    wait_linked(&b, c.id(), "B connected to C").await;
    // A dials learned peers up to one connection: it learns C from B and leaves it.
    let a = host(
        &[b.local_addr().unwrap()],
        BrokerLimits {
            max_peers: 1,
            ..BrokerLimits::default()
        },
    );
    let c_id = c.id();
    wait_until(Duration::from_secs(20), "A learned C from B", || {
        let a = a.clone();
        async move {
            a.peers()
                .await
                .iter()
                .any(|e| e.peer == c_id.to_string() && !e.connected)
                .then_some(())
        }
    })
    .await;
    assert!(!hosts_of(&a).await.contains(&c_id));
    // Asked for by id, C is dialled there and then, and answers.
    let answer = a
        .ask_peer(c_id, Ask::Ping, Duration::from_secs(20))
        .await
        .expect("C answers once dialled");
    assert!(matches!(answer, Control::Pong { .. }), "{answer:?}");
    assert!(hosts_of(&a).await.contains(&c_id));
    // An id nobody knows is no dial: it fails at once, saying so.
    let nobody = wasmwire::net::identity::Identity::generate().unwrap().id;
    let failure = a
        .ask_peer(nobody, Ask::Ping, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(failure.code, ErrorCode::Unavailable, "{failure:?}");
    assert!(failure.reason.contains("not connected"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_is_released_once_others_exist_and_dialled_again_when_asked_for() {
    let seed = host(&[], BrokerLimits::default());
    let seed_addr = seed.local_addr().unwrap();
    let b = host(&[seed_addr], BrokerLimits::default());
    let c = host(&[seed_addr], BrokerLimits::default());
    wait_until(Duration::from_secs(20), "the seed has B and C", || {
        let seed = seed.clone();
        async move { (hosts_of(&seed).await.len() == 2).then_some(()) }
    })
    .await;
    // A needs two hosts besides its seed, and exchanges peers often (the default is 30 s).
    let a = host(
        &[seed_addr],
        BrokerLimits {
            bootstrap_until: 2,
            exchange_every: Duration::from_millis(300),
            ..BrokerLimits::default()
        },
    );
    let (seed_id, b_id, c_id) = (seed.id(), b.id(), c.id());
    wait_until(
        Duration::from_secs(30),
        "A holds B and C and has let its seed go",
        || {
            let a = a.clone();
            async move {
                let hosts = hosts_of(&a).await;
                (hosts.contains(&b_id) && hosts.contains(&c_id) && !hosts.contains(&seed_id))
                    .then_some(())
            }
        },
    )
    .await;
    // Released, not forgotten: asked for by id, the seed is dialled and answers.
    let answer = a
        .ask_peer(seed_id, Ask::Ping, Duration::from_secs(20))
        .await
        .expect("the released seed answers once dialled again");
    assert!(matches!(answer, Control::Pong { .. }), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_nobody_configured_is_reached_by_id_through_the_dht() {
    let c = host(&[], BrokerLimits::default());
    let b = host(&[c.local_addr().unwrap()], BrokerLimits::default());
    let c_id = c.id();
    wait_linked(&b, c_id, "B connected to C").await;
    let a = host(&[b.local_addr().unwrap()], dht_only());
    let b_id = b.id();
    wait_linked(&a, b_id, "A connected to B").await;
    assert!(a.peers().await.iter().all(|e| e.peer != c_id.to_string()));
    // `find-node` toward C's key at B finds C; A dials it and asks.
    let answer = a
        .ask_peer(c_id, Ask::Ping, Duration::from_secs(20))
        .await
        .expect("C found through the DHT and dialled");
    assert!(matches!(answer, Control::Pong { .. }), "{answer:?}");
    assert!(hosts_of(&a).await.contains(&c_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_found_through_the_dht_by_a_host_never_told_of_it() {
    // B runs nothing; P runs `echo`, knows only B, and publishes its record there.
    let b = host(&[], BrokerLimits::default());
    let b_addr = b.local_addr().unwrap().to_string();
    let p = wasmwire_tests::start_peer(
        &[b_addr],
        "",
        "[[service]]\nname = \"echo\"\ncomponent = \"{service:echo}\"\nchannel = 2\nexpose = true\n",
    )
    .await;
    let p_id = p.peer_id().unwrap();
    // A knows only B and learns nothing by exchange.
    let a = host(&[b.local_addr().unwrap()], dht_only());
    let answer = wait_until(
        Duration::from_secs(30),
        "A's request to */echo is answered",
        || request_any(&a, "echo", "echo", "\"found\""),
    )
    .await;
    assert_eq!(answer, "\"found\"");
    assert!(hosts_of(&a).await.contains(&p_id), "A dialled the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_join_through_one_bootstrap_peer_and_find_each_other_through_the_dht() {
    // S is the only bootstrap peer anyone is configured with.
    let s = host(&[], BrokerLimits::default());
    let s_addr = s.local_addr().unwrap();
    // C and D need two hosts besides S, exchange peers often (the default is 30 s), and
    // dial no more once they hold two (so that neither dials A when it hears of it).
    let two = BrokerLimits {
        bootstrap_until: 2,
        max_peers: 2,
        exchange_every: Duration::from_millis(300),
        ..BrokerLimits::default()
    };
    let c = host(&[s_addr], two.clone());
    let d = host(&[s_addr], two);
    let p = wasmwire_tests::start_peer(
        &[s_addr.to_string()],
        "",
        "[[service]]\nname = \"echo\"\ncomponent = \"{service:echo}\"\nchannel = 2\nexpose = true\n",
    )
    .await;
    let p_id = p.peer_id().unwrap();
    let (s_id, c_id, d_id) = (s.id(), c.id(), d.id());
    wait_until(
        Duration::from_secs(30),
        "C and D hold each other and P, and have let S go",
        || {
            let (c, d) = (c.clone(), d.clone());
            async move {
                let (hc, hd) = (hosts_of(&c).await, hosts_of(&d).await);
                let holds = |h: &[PeerId], other: PeerId| {
                    h.contains(&other) && h.contains(&p_id) && !h.contains(&s_id)
                };
                (holds(&hc, d_id) && holds(&hd, c_id)).then_some(())
            }
        },
    )
    .await;
    // A joins last through S and learns nobody by exchange: it finds `echo` on P and
    // reaches D by id through the DHT.
    // (It exchanges often too, so that the connections its lookups make are let go soon.)
    let a = host(
        &[s_addr],
        BrokerLimits {
            exchange_every: Duration::from_millis(300),
            ..dht_only()
        },
    );
    wait_linked(&a, s_id, "A connected to S").await;
    let answer = wait_until(Duration::from_secs(40), "A's */echo answered", || {
        request_any(&a, "echo", "echo", "\"five\"")
    })
    .await;
    assert_eq!(answer, "\"five\"");
    // The lookup may have dialled D to ask it: that connection is let go, and D is then
    // reached again by id from what the DHT told A (A learns nothing by exchange).
    wait_until(Duration::from_secs(20), "A let D go", || {
        let a = a.clone();
        async move { (!hosts_of(&a).await.contains(&d_id)).then_some(()) }
    })
    .await;
    assert_eq!(a.tables().await.learned, 0);
    let pong = a
        .ask_peer(d_id, Ask::Ping, Duration::from_secs(20))
        .await
        .expect("D found through the DHT and dialled");
    assert!(matches!(pong, Control::Pong { .. }), "{pong:?}");
}
