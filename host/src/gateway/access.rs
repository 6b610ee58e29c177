//! Who may use the gateway: bearer tokens (kept as SHA-256 digests, never as written) and
//! the browser origins allowed to call it (CORS, and the same check on WebSocket upgrades
//! and posts, which a browser sends cross-site without asking).

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;

/// Why the token file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read http_tokens_file {path}: {source}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// The I/O error.
    pub source: std::io::Error,
}

/// The tokens and origins the gateway accepts.
#[derive(Debug, Default)]
pub struct Access {
    /// Digests of the accepted tokens.
    tokens: HashSet<[u8; 32]>,
    /// Whether a token is needed: tokens were configured (a token file with none in it
    /// lets nobody in, rather than everybody).
    required: bool,
    /// Allowed origins, as written (`"*"`: any).
    origins: Vec<String>,
}

/// The SHA-256 digest of a token, as `http_tokens` stores it.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:` and the digest in hex, as the manifest writes it.
pub fn digest_text(token: &str) -> String {
    let mut s = String::from("sha256:");
    for b in digest(token) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Access {
    /// Accepts the tokens of these digests (none: anyone) from pages of these origins.
    pub fn new(tokens: impl IntoIterator<Item = [u8; 32]>, origins: Vec<String>) -> Access {
        let tokens: HashSet<_> = tokens.into_iter().collect();
        Access {
            required: !tokens.is_empty(),
            tokens,
            origins,
        }
    }

    /// Adds the tokens of a file: one per line, plain or as `sha256:HEX`; blank lines and
    /// lines starting with `#` are skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<(), TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError {
            path: path.display().to_string(),
            source,
        })?;
        self.required = true;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let d = wasmwire_manifest::parse_token_digest(line).unwrap_or_else(|| digest(line));
            self.tokens.insert(d);
        }
        Ok(())
    }

    /// Whether a token is needed at all.
    pub fn needs_token(&self) -> bool {
        self.required
    }

    /// How many tokens are accepted.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `token` (as sent, without `Bearer `) is one of the accepted ones.
    pub fn admits(&self, token: Option<&str>) -> bool {
        if !self.required {
            return true;
        }
        token.is_some_and(|t| self.tokens.contains(&digest(t)))
    }

    /// Whether a request's `Host` may be answered. With no token to protect it, only a
    /// host that is an IP address, `localhost`, or the host of a listed origin: a page
    /// whose DNS name was rebound to 127.0.0.1 sends its own name, and is refused.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        if self.required {
            return true;
        }
        let Some(host) = host else { return false };
        let name = match host.strip_prefix('[') {
            // `[::1]:8080`
            Some(v6) => {
                return v6
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(n, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    n
                } else {
                    host
                }
            }),
        };
        name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.origins.iter().any(|o| {
                o.split_once("://")
                    .map(|(_, h)| h.rsplit_once(':').map_or(h, |(n, _)| n))
                    .is_some_and(|h| h.eq_ignore_ascii_case(name))
            })
    }

    /// Whether CORS is on (some origin is listed).
    pub fn cors(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Whether a page of `origin` may call: one of the listed origins (or `*`), or the
    /// gateway's own origin (`host` is the request's `Host`). A request with no `Origin`
    /// comes from no browser page, and is not the browser's to police.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self
            .origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((own, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_digest() {
        let open = Access::default();
        assert!(open.admits(None));
        let a = Access::new([digest("s3cret")], vec![]);
        assert!(a.needs_token());
        assert!(a.admits(Some("s3cret")));
        assert!(!a.admits(Some("s3cret ")));
        assert!(!a.admits(None));
        let text = digest_text("s3cret");
        assert_eq!(
            wasmwire_manifest::parse_token_digest(&text),
            Some(digest("s3cret"))
        );
    }

    #[test]
    fn token_files_take_plain_tokens_and_digests() {
        let dir = std::env::temp_dir().join(format!("ww-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(
            &f,
            format!("# ops\nplain-one\n\n{}\n", digest_text("hashed-two")),
        )
        .unwrap();
        let mut a = Access::default();
        a.add_file(&f).unwrap();
        assert!(a.admits(Some("plain-one")));
        assert!(a.admits(Some("hashed-two")));
        assert!(!a.admits(Some("# ops")));
        assert!(Access::default().add_file(&dir.join("missing")).is_err());
    }

    #[test]
    fn origins_are_listed_or_the_gateway_s_own() {
        let a = Access::new([], vec!["https://chat.example".into()]);
        assert!(a.origin_allowed("https://chat.example", Some("127.0.0.1:8080")));
        assert!(a.origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!a.origin_allowed("https://evil.example", Some("127.0.0.1:8080")));
        assert!(!a.origin_allowed("null", Some("127.0.0.1:8080")));
        assert!(Access::new([], vec!["*".into()]).origin_allowed("https://any", None));
        assert!(a.origin_allowed("HTTPS://Chat.Example", None));
    }

    #[test]
    fn without_tokens_only_addresses_and_listed_names_are_hosts() {
        let a = Access::new([], vec!["https://chat.example:8443".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.0.0.5",
            "chat.example:8080",
        ] {
            assert!(a.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1.evil.example:80",
        ] {
            assert!(!a.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!a.host_allowed(None));
        assert!(Access::new([digest("t")], vec![]).host_allowed(Some("any.example")));
    }

    #[test]
    fn an_empty_token_file_lets_nobody_in() {
        let dir = std::env::temp_dir().join(format!("ww-empty-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "# none yet\n\n").unwrap();
        let mut a = Access::default();
        a.add_file(&f).unwrap();
        assert!(a.needs_token());
        assert!(!a.admits(None));
        assert!(!a.admits(Some("# none yet")));
    }

    #[test]
    fn bearer_headers_parse() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
