//! Test clients of a host: [`TestClient`], the real client connection (a `Net` with role
//! client), and [`raw_connection`], a bare QUIC connection for bytes the client never sends.

use std::time::Duration;

/// How long a test client waits for an answer.
pub const WITHIN: Duration = Duration::from_secs(10);

/// A client connection for tests: a `Net` with role client, dialled to a host.
pub struct TestClient {
    pub net: wasmwire::net::Net,
    pub conn: wasmwire::broker::ConnId,
}

impl TestClient {
    /// Dials the host at `addr` as a client with a key of its own; `None` if it does not
    /// answer (not up yet, or gone).
    pub async fn dial(addr: &str) -> Option<TestClient> {
        let net = client_net(
            wasmwire::net::identity::Identity::generate().ok()?,
            wasmwire::wire::ALPN,
        );
        let (conn, _) = net.dial(&addr.parse().ok()?).await.ok()?;
        Some(TestClient { net, conn })
    }

    /// Calls `event` of `service` with `params`, waiting up to `within`: its reply, or why
    /// not.
    pub async fn request(
        &self,
        service: &str,
        event: &str,
        params: &str,
        within: Duration,
    ) -> Result<String, wasmwire::broker::Failure> {
        let ask = wasmwire::broker::Ask::Request {
            service: service.into(),
            event: event.into(),
            params: params.into(),
            chain: vec![],
            caller: None,
            session: None,
        };
        match self.net.ask(self.conn, ask, within).await? {
            wasmwire::wire::Control::Response { result, .. } => Ok(result),
            other => panic!("{service} {event} answered {other:?}"),
        }
    }

    /// Each service's name and state, as `list-services` answers.
    pub async fn list(&self) -> Vec<(String, String)> {
        self.services()
            .await
            .into_iter()
            .map(|s| (s.name, s.state.to_string()))
            .collect()
    }

    /// What `list-services` answers, whole.
    pub async fn services(&self) -> Vec<wasmwire::wire::ServiceEntry> {
        match self
            .net
            .ask(self.conn, wasmwire::broker::Ask::ListServices, WITHIN)
            .await
        {
            Ok(wasmwire::wire::Control::Services { services, .. }) => services,
            other => panic!("{other:?}"),
        }
    }

    /// Closes the connection (waits a little for the close to be sent).
    pub async fn close(self) {
        self.net.shutdown(Duration::from_millis(200)).await;
    }
}

/// A client `Net` with `identity`, offering `alpn`.
pub fn client_net(identity: wasmwire::net::identity::Identity, alpn: &[u8]) -> wasmwire::net::Net {
    wasmwire::net::Net::start(
        wasmwire::net::NetConfig {
            role: wasmwire::wire::Role::Client,
            listen: None,
            advertise: None,
            identity,
            allow: vec![],
            peers: vec![],
            transport: Default::default(),
            limits: Default::default(),
            alpn: alpn.to_vec(),
            resolver: None,
        },
        None,
    )
    .unwrap()
}

/// A client connected to `host`.
pub async fn client_of(host: &wasmwire::node::Node) -> TestClient {
    let net = client_net(
        wasmwire::net::identity::Identity::generate().unwrap(),
        wasmwire::wire::ALPN,
    );
    let spec = crate::addr_of(host).parse().unwrap();
    let (conn, _) = net.dial(&spec).await.unwrap();
    TestClient { net, conn }
}

/// A raw QUIC connection to `addr` with a fresh valid identity and wasmwire's ALPN: for
/// writing bytes the real client never would.
pub async fn raw_connection(addr: &str) -> (quinn::Endpoint, quinn::Connection) {
    use std::sync::Arc;
    let identity = wasmwire::net::identity::Identity::generate().unwrap();
    let tls = wasmwire::net::identity::client_config(
        &identity,
        Arc::new(Default::default()),
        wasmwire::wire::ALPN,
    )
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, addr.parse().unwrap(), "wasmwire")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}
