//! The gateway's routes as pure functions: a request path to a [`Route`], a call error to
//! its HTTP status and JSON body, a file name to its content type. No I/O here, so every
//! rule is tested on its own.

use hyper::StatusCode;
use std::borrow::Cow;
use wasmwire_runtime::instance::CallError;

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v1/services`: the exposed services.
    Services,
    /// `/v1/services/{service}/events/{event}`: call an event.
    Event {
        /// The service (`room/42` for a key of a keyed class).
        service: Cow<'a, str>,
        /// The event.
        event: Cow<'a, str>,
    },
    /// `/v1/services/{service}/session`: a WebSocket that is a session.
    Session {
        /// The service.
        service: Cow<'a, str>,
    },
    /// `/metrics`: the Prometheus figures.
    Metrics,
    /// Anything under `/v1/` that is none of the above.
    UnknownApi,
    /// Anything else: a static file, if a folder is served.
    File(&'a str),
}

/// Every route the gateway serves, with its methods, as `docs/gateway.md` lists them (a
/// test checks the document against this list and this list against [`route`]).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/services"),
    ("POST", "/v1/services/{service}/events/{event}"),
    ("GET", "/v1/services/{service}/session"),
    ("GET", "/metrics"),
];

/// The route of a request path (without its query). Path segments are percent-decoded
/// after they are split, so `room%2F42` and `room/42` name the same key.
pub fn route(path: &str) -> Result<Route<'_>, BadPath> {
    if path == "/metrics" {
        return Ok(Route::Metrics);
    }
    let Some(api) = path.strip_prefix("/v1/") else {
        return Ok(Route::File(path));
    };
    let Some(rest) = api.strip_prefix("services") else {
        return Ok(Route::UnknownApi);
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Services);
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok(Route::UnknownApi);
    };
    // An event first, so that an event named `session` can be called; a key named
    // `events` opens a session as `room%2Fevents/session`.
    if let Some((service, event)) = rest.rsplit_once("/events/")
        && !event.is_empty()
        && !event.contains('/')
    {
        return Ok(Route::Event {
            service: service_name(service)?,
            event: decode(event)?,
        });
    }
    if let Some(service) = rest.strip_suffix("/session") {
        return Ok(Route::Session {
            service: service_name(service)?,
        });
    }
    Ok(Route::UnknownApi)
}

/// A service name from the path: one segment, or `class/key`.
fn service_name(s: &str) -> Result<Cow<'_, str>, BadPath> {
    if s.is_empty() || s.split('/').count() > 2 || s.split('/').any(str::is_empty) {
        return Err(BadPath(format!("{s:?} is not a service name")));
    }
    decode(s)
}

/// A path that cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath(pub String);

/// Decodes `%XX` escapes (and nothing else: `+` is a plus in a path).
pub fn decode(s: &str) -> Result<Cow<'_, str>, BadPath> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BadPath(format!("a bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| BadPath(format!("{s:?} is not UTF-8 once decoded")))
}

/// The value of `name` in a query string, decoded as a form value (`+` is a space, as a
/// browser's `URLSearchParams` writes one).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let (_, v) = query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)?;
    decode(&v.replace('+', " ")).ok().map(Cow::into_owned)
}

/// The status and `error` name of a call error: what a client of any language matches on.
pub fn status_of(e: &CallError) -> (StatusCode, &'static str) {
    match e {
        CallError::NoSuchService(_) => (StatusCode::NOT_FOUND, "no-such-service"),
        CallError::NoSuchSession => (StatusCode::NOT_FOUND, "no-such-session"),
        CallError::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
        CallError::Busy | CallError::Full(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        CallError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        // The service stopped (crashed, or the host is stopping) before it answered: the
        // same to a client as a service that is down, and worth a retry.
        CallError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
        CallError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        CallError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        CallError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        CallError::Cycle => (StatusCode::UNPROCESSABLE_ENTITY, "cycle"),
        CallError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    }
}

/// The text of a call error for people: the guest's own text for `failed`.
pub fn message_of(e: &CallError) -> String {
    match e {
        CallError::Failed(text) => text.clone(),
        e => e.to_string(),
    }
}

/// The JSON body of an error: `{"error": NAME, "message": TEXT}`.
pub fn error_body(error: &str, message: &str) -> String {
    serde_json::json!({ "error": error, "message": message }).to_string()
}

/// The content type of a static file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The file a static path names under the served folder, or `None` for a path that could
/// step outside it (`..`, a backslash, a NUL) or that names a folder other than through
/// its `index.html`.
pub fn static_file(path: &str) -> Option<String> {
    let decoded = decode(path).ok()?;
    let mut rel = decoded.trim_start_matches('/').to_string();
    if rel.is_empty() || rel.ends_with('/') {
        rel.push_str("index.html");
    }
    // No `..`, and no hidden files either (`.git/`, `.wasmwire/host.key` when the folder
    // served is the project's own).
    let safe = rel
        .split('/')
        .all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.contains(['\\', '\0']));
    safe.then_some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route() {
        assert_eq!(route("/v1/services"), Ok(Route::Services));
        assert_eq!(route("/v1/services/"), Ok(Route::Services));
        assert_eq!(
            route("/v1/services/echo/events/echo"),
            Ok(Route::Event {
                service: "echo".into(),
                event: "echo".into()
            })
        );
        assert_eq!(
            route("/v1/services/room/42/events/members"),
            Ok(Route::Event {
                service: "room/42".into(),
                event: "members".into()
            })
        );
        assert_eq!(
            route("/v1/services/room%2F42/session"),
            Ok(Route::Session {
                service: "room/42".into()
            })
        );
        assert_eq!(
            route("/v1/services/echo/events/session"),
            Ok(Route::Event {
                service: "echo".into(),
                event: "session".into()
            })
        );
        assert_eq!(
            route("/v1/services/room%2Fevents/session"),
            Ok(Route::Session {
                service: "room/events".into()
            })
        );
        assert!(route("/v1/services/%+f/session").is_err());
        assert_eq!(route("/metrics"), Ok(Route::Metrics));
        assert_eq!(route("/v1/other"), Ok(Route::UnknownApi));
        assert_eq!(route("/v1/services/echo"), Ok(Route::UnknownApi));
        assert_eq!(route("/v1/services/echo/events/"), Ok(Route::UnknownApi));
        assert_eq!(route("/index.html"), Ok(Route::File("/index.html")));
        assert!(route("/v1/services/a/b/c/session").is_err());
        assert!(route("/v1/services//session").is_err());
        assert!(route("/v1/services/%zz/session").is_err());
        assert!(route("/v1/services/%ff/session").is_err());
    }

    #[test]
    fn every_listed_route_routes() {
        for (_, path) in ROUTES {
            let concrete = path
                .replace("{service}", "room/1")
                .replace("{event}", "members");
            let r = route(&concrete).unwrap();
            assert!(
                !matches!(r, Route::UnknownApi | Route::File(_)),
                "{path} does not route"
            );
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (CallError::NoSuchService("x".into()), 404),
            (CallError::Denied("x".into()), 403),
            (CallError::Busy, 429),
            (CallError::Full("x".into()), 429),
            (CallError::Unavailable("x".into()), 503),
            (CallError::Timeout, 504),
            (CallError::TooLarge { size: 2, limit: 1 }, 413),
            (CallError::Invalid("x".into()), 422),
            (CallError::Failed("boom".into()), 500),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(&e).0.as_u16(), code, "{e}");
        }
        assert_eq!(message_of(&CallError::Failed("boom".into())), "boom");
    }

    #[test]
    fn static_paths_stay_inside() {
        assert_eq!(static_file("/").as_deref(), Some("index.html"));
        assert_eq!(static_file("/js/app.js").as_deref(), Some("js/app.js"));
        assert_eq!(static_file("/sub/").as_deref(), Some("sub/index.html"));
        assert_eq!(static_file("/../etc/passwd"), None);
        assert_eq!(static_file("/a/%2e%2e/b"), None);
        assert_eq!(static_file("/a//b"), None);
        assert_eq!(static_file("/a\\b"), None);
        assert_eq!(static_file("/.wasmwire/host.key"), None);
        assert_eq!(static_file("/sub/.hidden"), None);
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_param(Some("a=1&name=ann%20b"), "name").as_deref(),
            Some("ann b")
        );
        assert_eq!(
            query_param(Some("name=Ann+Lee%2B1"), "name").as_deref(),
            Some("Ann Lee+1")
        );
        assert_eq!(query_param(Some("a=1"), "name"), None);
        assert_eq!(query_param(None, "name"), None);
    }
}
