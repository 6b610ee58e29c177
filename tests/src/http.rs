//! A real HTTP/1.1 client (hyper's) and a real WebSocket client (tokio-tungstenite) for the
//! gateway's tests and bench.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// An answer: status, headers, body as text.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

/// One kept-alive HTTP/1.1 connection.
pub struct Http {
    send: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Http {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Http {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        Http { send, addr }
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", self.addr.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("a request");
        self.send.ready().await.expect("the connection is ready");
        let res = tokio::time::timeout(Duration::from_secs(60), self.send.send_request(req))
            .await
            .expect("answered within a minute")
            .expect("an answer");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("a body").to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// One request on a connection of its own.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    Http::connect(addr)
        .await
        .request(method, path, headers, body)
        .await
}

/// `POST /v1/services/{service}/events/{event}` with a JSON body.
pub async fn call(addr: SocketAddr, service: &str, event: &str, params: &str) -> Answer {
    let path = format!("/v1/services/{service}/events/{event}");
    request(
        addr,
        "POST",
        &path,
        &[("content-type", "application/json")],
        params.to_string(),
    )
    .await
}

/// A WebSocket client.
pub type Socket = WebSocketStream<TcpStream>;

/// Opens `path` (with its query) as a WebSocket; `Err` is the refusal's status and body.
pub async fn websocket(addr: SocketAddr, path: &str) -> Result<Socket, (u16, String)> {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{addr}{path}");
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let status = res.status().as_u16();
            let body = res
                .into_body()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// Sends a message in a text frame.
pub async fn send_text(ws: &mut Socket, kind: &str, payload: &str) {
    let frame = serde_json::json!({ "kind": kind, "payload": payload }).to_string();
    ws.send(Message::text(frame)).await.expect("send a frame");
}

/// The next data frame's JSON (text frames only), skipping pings; `None` when closed.
pub async fn next_json(ws: &mut Socket, within: Duration) -> Option<serde_json::Value> {
    loop {
        let frame = tokio::time::timeout(within, ws.next())
            .await
            .expect("a frame in time")?
            .ok()?;
        match frame {
            Message::Text(t) => return Some(serde_json::from_str(t.as_str()).expect("JSON")),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Writes `bytes` on a fresh connection (a request as a hostile client writes it; a write
/// the server refuses midway is not an error) and reads until the server closes, for at
/// most `within`: what came back, and whether the server closed in that time.
pub async fn raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(within, s.read_to_end(&mut got))
        .await
        .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}
