//! A real headless Chromium, driven over its DevTools protocol (one WebSocket to the
//! browser, a flattened session per page): open pages, run JavaScript in them, wait for
//! what they show, take screenshots. `make test` installs Debian's `chromium` when it can
//! (`make browser`); [`Browser::launch`] finds it, or `CHROMIUM=/path`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless Chromium (killed when dropped).
pub struct Browser {
    child: Child,
    ws: Ws,
    next: u64,
}

/// A page (a tab), by its DevTools session.
pub struct Page {
    session: String,
}

/// The Chromium binary: `CHROMIUM`, or the first of the usual names on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Browser {
    /// Starts a headless Chromium with a profile in `profile` and connects to it.
    pub async fn launch(binary: &Path, profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).expect("a profile folder");
        let port_file = profile.join("DevToolsActivePort");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new(binary)
            .args([
                "--headless=new",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1000,720",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Chromium writes its DevTools port and browser path to this file once it listens.
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let [port, path, ..] = text.lines().collect::<Vec<_>>()[..]
            {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Chromium did not open its DevTools port within a minute"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to Chromium's DevTools");
        Browser { child, ws, next: 0 }
    }

    /// Calls a DevTools method (on a page's session, or on the browser) and returns its
    /// result; events that arrive meanwhile are skipped.
    pub async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(p) = page {
            msg["sessionId"] = json!(p.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to Chromium");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("Chromium did not answer {method} within a minute"))
                .expect("Chromium's DevTools socket is open")
                .expect("a DevTools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens a page at `url`.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        Page {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        }
    }

    /// Evaluates a JavaScript expression in a page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until a JavaScript expression is true in a page (one that throws, say
    /// before the page has loaded, is not true yet).
    pub async fn wait_for(&mut self, page: &Page, expression: &str, within: Duration) {
        let started = Instant::now();
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (_) {{ return false; }} }})()");
        loop {
            if self.eval(page, &guarded).await == json!(true) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{expression} was not true within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of a page.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        let shot = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("screenshot data").as_bytes())
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("a screenshot folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
