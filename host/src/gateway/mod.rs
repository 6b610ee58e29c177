//! The HTTP and WebSocket gateway (`[host] http = "127.0.0.1:8080"`): services reached
//! from any language and from a browser, over hyper. `GET /v1/services` lists the exposed
//! services, `POST /v1/services/{name}/events/{event}` calls an event (JSON in, JSON out),
//! `GET /v1/services/{name}/session` upgrades to a WebSocket that is a session
//! ([`socket`]), `GET /metrics` gives the Prometheus figures, and anything else is a file
//! of the `http_static` folder. `docs/gateway.md` is the reference.
//!
//! Every entry goes through the runtime directory like a peer's: only `expose = true`
//! services, the same checks, the same errors — mapped to HTTP statuses by
//! [`routes::status_of`]. Each connection is bounded: its request head must arrive within
//! [`HEAD_TIMEOUT`] (which also closes an idle keep-alive connection) and be at most
//! [`MAX_HEAD`] bytes, a body within [`BODY_TIMEOUT`] and the target's `max_message`, and
//! at most [`MAX_CONNECTIONS`] connections are open at once.
//!
//! The `[host] metrics` address, when set, is this same server with only `/metrics`.

mod access;
pub mod routes;
pub mod socket;
mod timed;

pub use access::{Access, TokenFileError, bearer, digest, digest_text};

use crate::metrics::Source;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use routes::Route;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use wasmwire_manifest::HttpConfig;
use wasmwire_runtime::directory::{Opener, reply_within};
use wasmwire_runtime::instance::{CallError, PeerInfo};
use wasmwire_runtime::session::{CLIENT_QUEUE, Inbound, Route as SessionRoute};

/// How long a client has to send a request head — on a new connection, and between the
/// requests of a kept-alive one (so an idle connection is closed after this long).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client has to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write to a client may wait for it to read (a response, a WebSocket's
/// messages); past it the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a TLS handshake may take.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers); past it, 431.
pub const MAX_HEAD: usize = 16 << 10;

/// Most connections open at once (WebSocket sessions included); past it, new ones are
/// closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Bytes of a static file read at a time: a file is streamed, never held whole.
const FILE_CHUNK: usize = 64 << 10;

/// A response body: a buffer, or a file read as it is sent.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body of one buffer.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Longest client name a session may give (`?name=`).
pub const MAX_NAME: usize = 64;

/// The client name of a session that gives none.
pub const DEFAULT_NAME: &str = "web";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file could not be read.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// The certificate or key could not be used.
    #[error("HTTPS: {0}")]
    Tls(String),
}

/// What a gateway serves, and to whom.
pub struct Settings {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether `/v1/` is served (off for the `[host] metrics` address).
    pub api: bool,
    /// Tokens and origins.
    pub access: Access,
    /// The folder of static files, if any.
    pub static_dir: Option<PathBuf>,
    /// Certificate chain and key files, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a request head may take to arrive (and a kept-alive connection stay idle).
    pub head_timeout: Duration,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// How long a write may wait for the client to read.
    pub write_timeout: Duration,
}

impl Settings {
    /// The gateway of `[host] http`: reads the token file, if one is named.
    pub fn gateway(http: &HttpConfig) -> Result<Settings, GatewayError> {
        let mut access = Access::new(http.tokens.iter().copied(), http.origins.clone());
        if let Some(file) = &http.tokens_file {
            access.add_file(file)?;
            if access.tokens() == 0 {
                tracing::warn!(target: "wasmwire::gateway", file = %file.display(), "http_tokens_file holds no token: nobody can use the gateway");
            }
        }
        Ok(Settings {
            addr: http.addr,
            api: true,
            access,
            static_dir: http.static_dir.clone(),
            tls: http.tls.clone(),
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        })
    }

    /// The `[host] metrics` address: `/metrics` only, to anyone who reaches it.
    pub fn metrics_only(addr: SocketAddr) -> Settings {
        Settings {
            addr,
            api: false,
            access: Access::default(),
            static_dir: None,
            tls: None,
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// A running gateway; it stops accepting when dropped, and its connections finish the
/// request they are in.
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// What every connection's requests share.
struct Shared {
    api: bool,
    access: Access,
    static_dir: Option<PathBuf>,
    source: Source,
    head_timeout: Duration,
    body_timeout: Duration,
    write_timeout: Duration,
    /// Changes when the gateway stops: each WebSocket session watches it.
    stopped: watch::Receiver<bool>,
}

impl Gateway {
    /// Binds the settings' address and serves until dropped.
    pub async fn start(settings: Settings, source: Source) -> Result<Gateway, GatewayError> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let addr = settings.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            api: settings.api,
            access: settings.access,
            static_dir: settings.static_dir,
            source,
            head_timeout: settings.head_timeout,
            body_timeout: settings.body_timeout,
            write_timeout: settings.write_timeout,
            stopped: stopped.clone(),
        });
        tokio::spawn(accept_loop(listener, shared, tls, stopped));
        Ok(Gateway { addr: bound, stop })
    }

    /// The address bound (the port filled in when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A TLS acceptor for a PEM certificate chain and key.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, GatewayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        GatewayError::Tls(format!("{}: {e}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, &e))?;
    if chain.is_empty() {
        return Err(fail(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather than spin.
                tracing::warn!(target: "wasmwire::gateway", "cannot accept an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(target: "wasmwire::gateway", %peer, "refused: {MAX_CONNECTIONS} connections open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            // Held by the connection and, once it upgrades, by its WebSocket.
            let permit = Arc::new(permit);
            match tls {
                None => connection(stream, peer, shared, permit, stopped).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, peer, shared, permit, stopped).await,
                        Ok(Err(e)) => {
                            tracing::debug!(target: "wasmwire::gateway", %peer, "TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            tracing::debug!(target: "wasmwire::gateway", %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// Serves one connection's requests (and its WebSocket, if it upgrades).
async fn connection<S>(
    io: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: Arc<OwnedSemaphorePermit>,
    mut stopped: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head_timeout, body_timeout, write_timeout) = (
        shared.head_timeout,
        shared.body_timeout,
        shared.write_timeout,
    );
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared, permit).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD.max(8192) * 4)
        .serve_connection(TokioIo::new(timed::Timed::new(io, write_timeout)), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(target: "wasmwire::gateway", %peer, "connection ended: {e}");
            }
            return;
        }
        _ = stopped.changed() => conn.as_mut().graceful_shutdown(),
    }
    // Stopping: the request in progress may finish, for as long as a body may take.
    let _ = tokio::time::timeout(body_timeout, conn).await;
}

/// A response with a body and content type.
fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An error response: `{"error": NAME, "message": TEXT}`.
fn error(status: StatusCode, name: &str, message: &str) -> Response<Body> {
    respond(
        status,
        "application/json",
        routes::error_body(name, message),
    )
}

/// The response of a call error (`busy` says when to come back).
fn call_error(e: &CallError) -> Response<Body> {
    let (status, name) = routes::status_of(e);
    let mut r = error(status, name, &routes::message_of(e));
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// 405 with the methods the route takes.
fn wrong_method(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        &format!("this route takes {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let mut response = route(req, shared, origin.as_deref(), permit).await;
    if let Some(origin) = origin
        && shared.access.cors()
        && shared.access.origin_allowed(&origin, None)
        && let Ok(v) = HeaderValue::from_str(&origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    origin: Option<&str>,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let route = match routes::route(&path) {
        Ok(r) => r,
        Err(routes::BadPath(why)) => return error(StatusCode::BAD_REQUEST, "bad-path", &why),
    };
    let api = !matches!(route, Route::File(_));
    if api && *req.method() == Method::OPTIONS {
        return preflight(&req, shared, origin);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    // The figures too: a rebound page must not read them either. (Not on the `metrics`
    // address, which serves nothing else: Prometheus may well scrape it by a DNS name.)
    if api && shared.api && !shared.access.host_allowed(host) {
        return error(
            StatusCode::FORBIDDEN,
            "host",
            "with no tokens, the gateway answers only requests to an IP address, localhost or the host of an `http_origins` entry",
        );
    }
    if matches!(
        route,
        Route::Services | Route::Event { .. } | Route::Session { .. } | Route::UnknownApi
    ) {
        if !shared.api {
            return error(
                StatusCode::NOT_FOUND,
                "not-found",
                "this address serves /metrics only",
            );
        }
        // A browser page of another site may not drive the services (a post or a
        // WebSocket needs no CORS approval to be sent).
        if let Some(o) = origin
            && !shared.access.origin_allowed(o, host)
        {
            return error(
                StatusCode::FORBIDDEN,
                "origin",
                &format!(
                    "pages of {o} may not call this gateway: list the origin in `http_origins`"
                ),
            );
        }
    }
    let websocket = matches!(route, Route::Session { .. });
    if api
        && !matches!(route, Route::UnknownApi)
        && !shared.access.admits(token(&req, websocket).as_deref())
    {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is needed: `Authorization: Bearer TOKEN`",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match route {
        Route::Metrics if get => metrics(shared).await,
        Route::Metrics => wrong_method("GET, HEAD"),
        Route::Services if get => {
            let list = shared.source.directory().list_services();
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&list).unwrap_or_default(),
            )
        }
        Route::Services => wrong_method("GET, HEAD"),
        Route::Event { service, event } if *req.method() == Method::POST => {
            let (service, event) = (service.into_owned(), event.into_owned());
            call(req, shared, &service, &event).await
        }
        Route::Event { .. } => wrong_method("POST"),
        Route::Session { service } if *req.method() == Method::GET => {
            let service = service.into_owned();
            session(req, shared, &service, permit).await
        }
        Route::Session { .. } => wrong_method("GET"),
        Route::UnknownApi => error(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such route: see docs/gateway.md",
        ),
        Route::File(path) if get => file(shared, path).await,
        Route::File(_) => match shared.static_dir {
            Some(_) => wrong_method("GET, HEAD"),
            None => error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such route: see docs/gateway.md",
            ),
        },
    }
}

/// The bearer token of a request: its `Authorization` header, or for a WebSocket (which a
/// browser opens without headers of its own) its `access_token` query parameter — only
/// there, since a token in an address ends up in histories and logs.
fn token(req: &Request<Incoming>, websocket: bool) -> Option<String> {
    if let Some(t) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Some(t.to_string());
    }
    if !websocket {
        return None;
    }
    routes::query_param(req.uri().query(), "access_token")
}

/// Answers a CORS preflight.
fn preflight(req: &Request<Incoming>, shared: &Shared, origin: Option<&str>) -> Response<Body> {
    let Some(origin) =
        origin.filter(|o| shared.access.cors() && shared.access.origin_allowed(o, None))
    else {
        return error(
            StatusCode::FORBIDDEN,
            "origin",
            "CORS: this origin is not in `http_origins`",
        );
    };
    let _ = req;
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

async fn metrics(shared: &Shared) -> Response<Body> {
    let source = &shared.source;
    let mut text = crate::metrics::encode(&source.stats().await);
    if let Some(db) = source.directory().database() {
        text = crate::metrics::encode_store(text, db);
    }
    respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, text)
}

/// `POST /v1/services/{service}/events/{event}`: the body is the event's JSON parameters
/// (none: `null`), the reply the response's body.
async fn call(
    req: Request<Incoming>,
    shared: &Shared,
    service: &str,
    event: &str,
) -> Response<Body> {
    let directory = shared.source.directory();
    let target = match directory.exposed(service) {
        Ok(t) => t,
        Err(e) => return call_error(&e),
    };
    let limit = target.limits.max_message;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|s| *s > limit) {
        return call_error(&CallError::TooLarge {
            size: size as usize,
            limit,
        });
    }
    let body = Limited::new(req.into_body(), limit as usize);
    let within = shared.body_timeout;
    let bytes = match tokio::time::timeout(within, body.collect()).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                &format!("the body did not arrive within {within:?}"),
            );
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return call_error(&CallError::TooLarge {
                size: limit as usize + 1,
                limit,
            });
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad-body", &e.to_string()),
        Ok(Ok(b)) => b.to_bytes(),
    };
    let params = if bytes.iter().all(u8::is_ascii_whitespace) {
        "null".to_string()
    } else {
        match std::str::from_utf8(&bytes) {
            Ok(text) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => text.to_string(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad-json",
                        &format!("the body is not JSON: {e}"),
                    );
                }
            },
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad-json", "the body is not UTF-8"),
        }
    };
    let rx = match directory.post_event(&target, event, params, None, Default::default()) {
        Ok(rx) => rx,
        Err(e) => return call_error(&e),
    };
    match reply_within(rx, target.limits.request_timeout).await {
        Ok(reply) => {
            // Services built with an SDK reply JSON; a reply that is not is passed on as text.
            let json = serde_json::from_str::<serde::de::IgnoredAny>(&reply).is_ok();
            let kind = if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            respond(StatusCode::OK, kind, reply)
        }
        Err(e) => call_error(&e),
    }
}

/// `GET /v1/services/{service}/session`: opens a session, then upgrades to a WebSocket.
async fn session(
    mut req: Request<Incoming>,
    shared: &Shared,
    service: &str,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "a session is a WebSocket: send `Upgrade: websocket`",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = error(
            StatusCode::BAD_REQUEST,
            "bad-websocket",
            "WebSocket version 13 only",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let name = match routes::query_param(req.uri().query(), "name") {
        None => DEFAULT_NAME.to_string(),
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME && !n.chars().any(char::is_control) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad-name",
                &format!("`name` must be 1 to {MAX_NAME} bytes with no control characters"),
            );
        }
    };
    let directory = shared.source.directory();
    let target = match directory.exposed(service) {
        Ok(t) => t,
        Err(e) => return call_error(&e),
    };
    let (tx, events) = mpsc::channel(CLIENT_QUEUE);
    let opener = Opener {
        from: PeerInfo {
            service: Arc::from(name.as_str()),
            peer: None,
        },
        back: SessionRoute::Client {
            to: tx,
            max_message: target.limits.max_message,
        },
        chain: Default::default(),
    };
    let pending = match directory.open_session(&target, opener) {
        Ok(p) => p,
        Err(e) => return call_error(&e),
    };
    // If the client goes while the service is still to accept, hyper drops this future:
    // the guard then closes the end the service may yet accept.
    let mut guard = CloseOnDrop(Some((pending.instance.clone(), pending.end)));
    let answer = pending.accepted(target.limits.request_timeout).await;
    // Answered: from here on the end is closed by its `Inbound` (or was never opened).
    guard.0 = None;
    let (instance, end) = match answer {
        Ok(a) => a,
        Err(e) => return call_error(&e),
    };
    let max_message = instance.limits.max_message;
    let accepted = socket::Accepted {
        session: end,
        service: service.to_string(),
        channel: instance.channel,
        messages: instance.class.messages.to_vec(),
        max_message,
    };
    // From here on, dropping this end tells the service the session ended.
    let inbound = Inbound::new(instance, end);
    let upgrading = hyper::upgrade::on(&mut req);
    let stopped = shared.stopped.clone();
    tokio::spawn(async move {
        let _permit = permit;
        match upgrading.await {
            Ok(upgraded) => {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    Some(socket::config(max_message)),
                )
                .await;
                socket::run(ws, inbound, events, accepted, stopped).await;
            }
            Err(e) => {
                tracing::debug!(target: "wasmwire::gateway", "WebSocket upgrade failed: {e}");
                drop(inbound);
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Closes a session end when dropped, unless emptied first.
struct CloseOnDrop(Option<(Arc<wasmwire_runtime::instance::Instance>, u64)>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some((instance, end)) = self.0.take() {
            drop(Inbound::new(instance, end));
        }
    }
}

/// A file of the static folder.
async fn file(shared: &Shared, path: &str) -> Response<Body> {
    let not_found = || error(StatusCode::NOT_FOUND, "not-found", "no such file");
    let (Some(dir), Some(rel)) = (&shared.static_dir, routes::static_file(path)) else {
        return not_found();
    };
    // Through symbolic links too, the file must be inside the folder.
    let (Ok(full), Ok(root)) = (
        tokio::fs::canonicalize(dir.join(&rel)).await,
        tokio::fs::canonicalize(dir).await,
    ) else {
        return not_found();
    };
    if !full.starts_with(&root) {
        return not_found();
    }
    let Ok(meta) = tokio::fs::metadata(&full).await else {
        return not_found();
    };
    if !meta.is_file() {
        return not_found();
    }
    let Ok(file) = tokio::fs::File::open(&full).await else {
        return not_found();
    };
    // Read a chunk at a time as the client takes it: what a connection holds for a file is
    // one chunk, however large the file and however slow the client.
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = bytes::BytesMut::with_capacity(FILE_CHUNK);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(hyper::body::Frame::data(buf.freeze())), Some(file))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut r = Response::new(StreamBody::new(chunks).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(routes::content_type(&rel)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
