//! Deployment beyond one machine: a `peers` entry whose name stands for several addresses
//! (a headless Kubernetes Service lists one per pod, this one included) makes each address
//! a peer and skips the host's own.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use wasmwire::net::{Net, NetConfig};
use wasmwire::wire::Role;
use wasmwire_tests::{addr_of, free_port, start_peer, wait_until};

const ECHO: &str =
    "[[service]]\nname = \"echo\"\ncomponent = \"{service:echo}\"\nchannel = 2\nexpose = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_peers_expands_to_every_address_but_this_hosts_own() {
    let pods = [
        start_peer(&[], "", ECHO).await,
        start_peer(&[], "", ECHO).await,
        start_peer(&[], "", ECHO).await,
    ];
    let me: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // What a cluster's DNS answers for the headless Service: every pod, this one among them.
    let mut answer: Vec<SocketAddr> = pods.iter().map(|p| addr_of(p).parse().unwrap()).collect();
    answer.insert(1, me);
    let asked = Arc::new(std::sync::Mutex::new(0u32));
    let resolver: wasmwire::net::Resolver = {
        let (answer, asked) = (answer.clone(), asked.clone());
        Arc::new(move |name: &str| {
            *asked.lock().unwrap() += 1;
            match name {
                "wasmwire.default.svc.cluster.local:7400" => Ok(answer.clone()),
                other => Err(format!("cannot resolve {other}: no such name")),
            }
        })
    };
    let net = Net::start(
        NetConfig {
            role: Role::Host,
            listen: Some(me),
            advertise: None,
            identity: wasmwire::net::identity::Identity::generate().unwrap(),
            allow: vec![],
            peers: vec!["wasmwire.default.svc.cluster.local:7400".parse().unwrap()],
            transport: Default::default(),
            limits: Default::default(),
            alpn: wasmwire::wire::ALPN.to_vec(),
            resolver: Some(resolver),
        },
        None,
    )
    .unwrap();
    let want: HashSet<String> = pods
        .iter()
        .map(|p| p.peer_id().unwrap().to_string())
        .collect();
    wait_until(Duration::from_secs(10), "connected to every pod", || {
        let (net, want) = (net.clone(), want.clone());
        async move {
            let hosts: HashSet<String> = net
                .connections()
                .await
                .into_iter()
                .filter(|(_, _, r)| *r == Role::Host)
                .map(|(_, p, _)| p.to_string())
                .collect();
            (hosts == want).then_some(())
        }
    })
    .await;
    // Each pod sees this host, once.
    for p in &pods {
        let theirs = p.net().unwrap().connections().await;
        let to_me = theirs.iter().filter(|(_, id, _)| *id == net.id()).count();
        assert_eq!(to_me, 1, "a pod has {to_me} connections to the new host");
    }
    // Nothing was refused and no connection counts itself: its own address was dialled
    // once, recognised, and is skipped from then on.
    assert_eq!(net.refused_handshakes(), 0);
    assert_eq!(net.connections().await.len(), 3);
    assert!(*asked.lock().unwrap() >= 1);
    net.shutdown(Duration::from_millis(200)).await;
    for p in pods {
        p.shutdown().await;
    }
}
