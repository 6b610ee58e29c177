//! A running host: loads the manifest's components once, builds one `Instance` and one
//! actor task per `[[service]]`, and offers the operations a client needs (request an
//! event, open a session, watch lifecycle changes, shut down cleanly).

use crate::gateway::{Gateway, Settings};
use crate::manifest::{Diagnostic, Manifest, ManifestError};
use crate::net::identity::{Identity, IdentityError};
use crate::net::{Net, NetConfig, NetError};
use crate::runtime::directory::{Directory, Opener, reply_within};
use crate::runtime::instance::{CallError, Instance, LifecycleEvent, PeerInfo, SessionId};
use crate::runtime::session::{ClientEvent, Route};
use crate::runtime::start::{Started, start_instances};
use crate::runtime::{CacheOutcome, Compiled, Runtime, RuntimeConfig};
use crate::wire::{self, PeerId, Role};
use crate::workers::Workers;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The engine could not be built.
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
    /// A component failed to load; the diagnostics say which and why.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The host key could not be read or made.
    #[error("host identity: {0}")]
    Identity(#[from] IdentityError),
    /// The network could not start.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// The HTTP gateway or the metrics address could not start.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// The data file could not be opened (another host has it, or it is damaged).
    #[error("durable data: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Loads every distinct component of a manifest once, reporting failures against the
/// manifest's `component` fields.
pub async fn load_classes(
    runtime: &Runtime,
    manifest: &Manifest,
) -> Result<HashMap<PathBuf, Compiled>, ManifestError> {
    let mut classes = HashMap::new();
    let mut problems = Vec::new();
    for (i, s) in manifest.services.iter().enumerate() {
        if classes.contains_key(&s.component) {
            continue;
        }
        match runtime.load(&s.component).await {
            Ok(c) => {
                tracing::debug!(component = %s.component.display(), cache = ?c.class.cache, messages = ?c.class.messages, events = ?c.class.events, "loaded");
                classes.insert(s.component.clone(), c);
            }
            Err(e) => problems.push(Diagnostic {
                file: manifest.path.clone(),
                at: s.component_at,
                field: format!("service[{}].component", i + 1),
                message: e.to_string(),
                help: Some("a service must be a wasm32-wasip2 component built against wit/ (the wasmwire-guest SDK does this)".into()),
            }),
        }
    }
    if problems.is_empty() {
        Ok(classes)
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

/// A client's session with an instance.
pub struct ClientSession {
    /// The instance's end of the session.
    pub end: SessionId,
    instance: Arc<Instance>,
    /// What the instance sends, and the close (bounded: a client that does not read makes
    /// the instance's `send` return `busy`).
    pub events: mpsc::Receiver<ClientEvent>,
}

impl ClientSession {
    /// Sends a message of a kind the instance declared.
    pub fn send(&self, kind: &str, payload: Vec<u8>) -> Result<(), CallError> {
        self.route().send_now(kind, payload)
    }

    /// Closes the session; the instance gets `on-disconnect`.
    pub fn close(self) {
        self.route().disconnect();
    }

    fn route(&self) -> Route {
        Route::Instance {
            to: self.instance.clone(),
            end: self.end,
        }
    }
}

/// A running host.
pub struct Node {
    runtime: Arc<Runtime>,
    directory: Arc<Directory>,
    tasks: Vec<JoinHandle<()>>,
    classes: HashMap<PathBuf, Compiled>,
    net: Option<Net>,
    /// The HTTP gateway, if `[host] http` is set (stops when dropped).
    gateway: Option<Gateway>,
    /// The `/metrics` address, if `[host] metrics` is set (stops when dropped).
    metrics: Option<Gateway>,
    /// How long `shutdown` waits for the services to finish the work they accepted.
    shutdown_timeout: std::time::Duration,
    /// Dropped last: stops the worker threads.
    workers: Workers,
}

impl Node {
    /// Starts a host for a manifest, sized by its `[host]` section.
    pub async fn start(manifest: &Manifest) -> Result<Node, NodeError> {
        Node::start_with(manifest, RuntimeConfig::for_manifest(manifest)).await
    }

    /// Starts a host with explicit engine settings.
    pub async fn start_with(manifest: &Manifest, config: RuntimeConfig) -> Result<Node, NodeError> {
        let runtime =
            Arc::new(Runtime::new(&config).map_err(|e| NodeError::Engine(format!("{e:#}")))?);
        let classes = load_classes(&runtime, manifest).await?;
        let workers = Workers::start(manifest.host.threads as usize)
            .map_err(|e| NodeError::Engine(format!("cannot start worker threads: {e}")))?;
        // The data file is opened only if a component can use it: a host without durable
        // services touches no data dir.
        let database = if classes.values().any(|c| c.class.stores) {
            let db = crate::store::Database::open(&manifest.host.data_dir)?;
            db.set_reserve(manifest.host.data_reserve);
            tracing::info!(file = %db.path().display(), "durable data");
            Some(db)
        } else {
            None
        };
        let Started { directory, tasks } =
            start_instances(manifest, &classes, &workers, runtime.ticks(), database);
        let net = match manifest.host.listen {
            None => None,
            Some(listen) => {
                let (identity, created) = Identity::load_or_create(&manifest.host.identity)?;
                if created {
                    tracing::info!(key = %manifest.host.identity.display(), "created a new host key");
                }
                let net = Net::start(
                    NetConfig {
                        role: Role::Host,
                        listen: Some(listen),
                        advertise: manifest.host.advertise,
                        identity,
                        allow: manifest.host.allow.clone(),
                        peers: manifest.host.peers.clone(),
                        transport: manifest.host.transport.clone(),
                        limits: Default::default(),
                        alpn: wire::ALPN.to_vec(),
                        resolver: None,
                    },
                    Some(directory.clone()),
                )?;
                directory.set_peers(Arc::new(net.clone()));
                let exposed: Vec<&str> = directory
                    .instances()
                    .iter()
                    .filter(|i| i.expose)
                    .map(|i| &*i.name)
                    .collect();
                tracing::info!(
                    peer_id = %net.id(),
                    listen = %net.local_addr().map_or("?".into(), |a| a.to_string()),
                    ?exposed,
                    "listening"
                );
                Some(net)
            }
        };
        let source = crate::metrics::Source::new(directory.clone(), net.clone());
        let metrics = match manifest.host.metrics {
            None => None,
            Some(addr) => {
                let endpoint = Gateway::start(Settings::metrics_only(addr), source.clone()).await?;
                tracing::info!(addr = %endpoint.local_addr(), "metrics at http://{}/metrics", endpoint.local_addr());
                Some(endpoint)
            }
        };
        let gateway = match &manifest.host.http {
            None => None,
            Some(http) => {
                let gateway = Gateway::start(Settings::gateway(http)?, source).await?;
                let scheme = if http.tls.is_some() { "https" } else { "http" };
                tracing::info!(
                    addr = %gateway.local_addr(),
                    tokens = !http.tokens.is_empty() || http.tokens_file.is_some(),
                    "gateway at {scheme}://{}/v1/services",
                    gateway.local_addr()
                );
                Some(gateway)
            }
        };
        Ok(Node {
            runtime,
            directory,
            tasks,
            classes,
            net,
            gateway,
            metrics,
            shutdown_timeout: manifest.host.shutdown_timeout,
            workers,
        })
    }

    /// This host's peer id, if it has a network.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.net.as_ref().map(Net::id)
    }

    /// Where this host listens, if it has a network.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.net.as_ref().and_then(Net::local_addr)
    }

    /// Where the Prometheus endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(Gateway::local_addr)
    }

    /// Where the HTTP gateway listens, if it runs.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway.as_ref().map(Gateway::local_addr)
    }

    /// The network endpoint, if any.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Every instance.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The manifest entry of this name (a plain instance, or a keyed class).
    pub fn instance(&self, name: &str) -> Option<&Arc<Instance>> {
        self.directory.by_name(name)
    }

    /// The live instance of a name, keyed ones (`room/42`) included, without making one.
    pub fn live(&self, name: &str) -> Option<Arc<Instance>> {
        self.directory.live(name)
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Whether each component came from the compiled cache.
    pub fn cache_outcomes(&self) -> Vec<(PathBuf, CacheOutcome)> {
        let mut v: Vec<_> = self
            .classes
            .iter()
            .map(|(p, c)| (p.clone(), c.class.cache))
            .collect();
        v.sort();
        v
    }

    /// Lifecycle changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.directory.subscribe()
    }

    /// The instance of a name, making a keyed one on demand.
    fn find(&self, service: &str) -> Result<Arc<Instance>, CallError> {
        self.directory.resolve(service)
    }

    /// Calls an event as a client (not bound by any `uses`), waiting up to the callee's
    /// `request_timeout` for the reply.
    pub async fn request(
        &self,
        service: &str,
        event: &str,
        params: &str,
    ) -> Result<String, CallError> {
        let target = self.find(service)?;
        let rx = self.directory.post_event(
            &target,
            event,
            params.to_string(),
            None,
            Default::default(),
        )?;
        reply_within(rx, target.limits.request_timeout).await
    }

    /// Opens a session to `service` as the client `client`.
    pub async fn open_session(
        &self,
        service: &str,
        client: &str,
    ) -> Result<ClientSession, CallError> {
        let target = self.find(service)?;
        let (tx, events) = mpsc::channel(crate::runtime::session::CLIENT_QUEUE);
        let opener = Opener {
            from: PeerInfo {
                service: Arc::from(client),
                peer: None,
            },
            // A client takes what the service itself would take.
            back: Route::Client {
                to: tx,
                max_message: target.limits.max_message,
            },
            chain: Default::default(),
        };
        let (target, end) = self
            .directory
            .open_session(&target, opener)?
            .accepted(target.limits.request_timeout)
            .await?;
        Ok(ClientSession {
            end,
            instance: target,
            events,
        })
    }

    /// Wakes an instance now (if it is asleep) and waits until it is awake.
    pub async fn wake(&self, service: &str) -> Result<(), CallError> {
        self.directory.wake(service).await
    }

    /// Puts an instance to sleep now if it is awake and has no sessions; says whether it did.
    pub async fn sleep(&self, service: &str) -> Result<bool, CallError> {
        self.directory.sleep(service).await
    }

    /// Stops the host gracefully, in three steps. Every instance refuses new work at once
    /// (`closed`: a local or remote caller knows), finishes the messages and requests its
    /// mailbox already holds, and is put to sleep (`sleep()`, its sessions closed, so each
    /// other end sees `on-disconnect`). Then every connection is closed with a reason.
    /// Instances still busy after `[host] shutdown_timeout` (a guest in a long call) are
    /// left where they are, named in a warning: the host stops anyway, and their callers
    /// see the connection or the actor close.
    pub async fn shutdown(mut self) {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        // The gateway stops taking connections first (those open finish the request they
        // are in, and its WebSockets are closed with "the host is stopping").
        drop(self.gateway.take());
        let late = self.directory.drain(deadline).await;
        if late.is_empty() {
            for t in self.tasks {
                let _ = tokio::time::timeout_at(deadline, t).await;
            }
        } else {
            tracing::warn!(
                still_busy = late.len(),
                first = %late[0],
                shutdown_timeout = ?self.shutdown_timeout,
                "stopping with services still in a call: they had shutdown_timeout to finish"
            );
        }
        // Sessions were closed as their instances went to sleep; now every connection is
        // closed with a reason, so peers see it at once rather than at their idle timeout.
        if let Some(net) = &self.net {
            net.shutdown(std::time::Duration::from_secs(2)).await;
        }
        drop(self.workers);
    }
}
