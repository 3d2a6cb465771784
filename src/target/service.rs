//! Where tokens map to targets: a token service asked over HTTP(S) (websockify's token API).
//!
//! One `GET` per lookup, to the configured URL with the token percent-encoded in place of
//! `{token}`, or, when the URL has no `{token}`, as a last path segment appended to its path. A
//! 200 answer names the target as plain text (`host:port` or `unix_socket:/path`, as in a token
//! file) or as a JSON object `{"host": ..., "port": ...}`; 404 or an empty 200 body means the token
//! is unknown; anything else (another status, no answer within the deadline, a body that is not
//! understood or larger than [`MAX_ANSWER_BYTES`]) makes the source unavailable. Bounded: at most
//! the configured number of requests in flight; a lookup waits for a free slot within its
//! deadline. The token is never logged nor part of an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use super::source::{parse_target, SourceError};
use super::Target;
use crate::outbound::{self, ClientTlsError};

/// Default deadline of one lookup (waiting for a slot and connecting included).
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most lookups in flight at once, per route.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest answer body read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// What the URL's `{token}` stands for.
pub const PLACEHOLDER: &str = "{token}";

/// A token service's settings, checked: the URL template and the TLS client configuration.
#[derive(Clone)]
pub struct ServiceSettings {
    url: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl PartialEq for ServiceSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.timeout == other.timeout && self.ca_pem == other.ca_pem
    }
}

impl Eq for ServiceSettings {}

impl std::fmt::Debug for ServiceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSettings")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a token service URL or its `ca_file` is refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceSettingsError {
    #[error("{0:?} is not an http:// or https:// URL with a host")]
    NotAUrl(String),
    #[error("{0:?}: {{token}} may only be in the path or the query")]
    PlaceholderInAuthority(String),
    #[error("{0}")]
    Tls(#[from] ClientTlsError),
    #[error("source_ca_file only applies to an https:// source")]
    CaWithoutHttps,
}

impl ServiceSettings {
    /// `url` is `http://` or `https://`; `ca_pem` adds trust anchors for https (else the
    /// well-known public roots are used).
    pub fn new(
        url: &str,
        timeout: Duration,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<ServiceSettings, ServiceSettingsError> {
        use ServiceSettingsError as E;
        let bad = || E::NotAUrl(url.to_string());
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let https = url.starts_with("https://");
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad());
        }
        if authority.contains(PLACEHOLDER) {
            return Err(E::PlaceholderInAuthority(url.to_string()));
        }
        if url.contains('#') {
            return Err(bad());
        }
        // The template with a sample token must be a URL.
        let uri: Uri = build_url(url, "t").parse().map_err(|_| bad())?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, &ca_pem) {
            (true, pem) => Some(outbound::client_tls(pem.as_deref())?),
            (false, Some(_)) => return Err(E::CaWithoutHttps),
            (false, None) => None,
        };
        Ok(ServiceSettings {
            url: url.to_string(),
            host,
            port,
            tls,
            ca_pem,
            timeout,
        })
    }

    /// The URL template, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The URL for `token`: percent-encoded in place of every `{token}`, or, when there is none,
/// appended to the path as its last segment (before the query).
pub fn build_url(template: &str, token: &str) -> String {
    let enc = percent_encode(token);
    if template.contains(PLACEHOLDER) {
        return template.replace(PLACEHOLDER, &enc);
    }
    let scheme_end = template.find("://").map_or(0, |i| i + 3);
    let (head, query) = match template[scheme_end..].find('?') {
        Some(q) => template.split_at(scheme_end + q),
        None => (template, ""),
    };
    let sep = if head.ends_with('/') { "" } else { "/" };
    format!("{head}{sep}{enc}{query}")
}

/// Every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a 200 answer's body names: a target, nothing (empty: an unknown token), or an error.
/// JSON when the Content-Type says so or the body starts with `{`, else plain text.
pub fn parse_answer(content_type: Option<&str>, body: &[u8]) -> Result<Option<Target>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "answer is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let json = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"))
        || text.starts_with('{');
    if json {
        return parse_json(text).map(Some);
    }
    parse_target(text)
        .map(Some)
        .ok_or_else(|| "answer is not host:port or unix_socket:/path".to_string())
}

fn parse_json(text: &str) -> Result<Target, String> {
    let bad = || "answer is not a JSON object with host and port".to_string();
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let host = v.get("host").and_then(|h| h.as_str()).ok_or_else(bad)?;
    let port = match v.get("port") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|p| p.to_string()),
        Some(serde_json::Value::String(s)) => Some(s.trim().to_string()),
        _ => None,
    }
    .ok_or_else(bad)?;
    let joined = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match parse_target(&joined) {
        Some(t @ Target::Tcp { .. }) => Ok(t),
        _ => Err(bad()),
    }
}

/// A token service source: its settings, the TLS connector and the bound on lookups in flight.
pub struct ServiceSource {
    settings: ServiceSettings,
    tls: Option<TlsConnector>,
    permits: Semaphore,
}

impl ServiceSource {
    pub fn new(settings: &ServiceSettings) -> ServiceSource {
        ServiceSource {
            settings: settings.clone(),
            tls: settings.tls.clone().map(TlsConnector::from),
            permits: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The target for `token`: `None` when the service does not know it.
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, SourceError> {
        let unavailable = |m: String| Err(SourceError::Service(m));
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.permits.acquire()).await
        else {
            return unavailable(format!(
                "more than {MAX_IN_FLIGHT} token service requests in flight"
            ));
        };
        let Some(request) = self.request(token) else {
            return unavailable("cannot build the token service request".into());
        };
        let s = &self.settings;
        let answer = tokio::time::timeout_at(
            deadline,
            outbound::get(
                &s.host,
                s.port,
                self.tls.as_ref(),
                request,
                MAX_ANSWER_BYTES,
            ),
        )
        .await;
        let answer = match answer {
            Err(_) => {
                return unavailable(format!(
                    "token service did not answer within {:?}",
                    s.timeout
                ))
            }
            Ok(Err(f)) => return unavailable(format!("token service: {f}")),
            Ok(Ok(a)) => a,
        };
        match answer.status {
            StatusCode::OK => {
                let ct = answer
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                parse_answer(ct, &answer.body)
                    .map_err(|m| SourceError::Service(format!("token service: {m}")))
            }
            StatusCode::NOT_FOUND => Ok(None),
            other => unavailable(format!("token service answered {other}")),
        }
    }

    fn request(&self, token: &str) -> Option<Request<Empty<Bytes>>> {
        let uri: Uri = build_url(&self.settings.url, token).parse().ok()?;
        let mut req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .body(Empty::new())
            .ok()?;
        let authority = uri.authority()?.as_str();
        let h = req.headers_mut();
        h.insert(header::HOST, HeaderValue::from_str(authority).ok()?);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/plain"),
        );
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn plain_and_json_answers() {
        assert_eq!(
            parse_answer(Some("text/plain"), b" 10.0.0.5:5901\n"),
            Ok(Some(tcp("10.0.0.5", 5901)))
        );
        assert_eq!(
            parse_answer(None, b"unix_socket:/run/vnc.sock"),
            Ok(Some(Target::Unix("/run/vnc.sock".into())))
        );
        assert_eq!(
            parse_answer(None, br#"{"host": "vm1.internal", "port": 5902}"#),
            Ok(Some(tcp("vm1.internal", 5902)))
        );
        assert_eq!(
            parse_answer(
                Some("application/json; charset=utf-8"),
                br#" {"host":"fd00::1","port":"5903"} "#
            ),
            Ok(Some(tcp("fd00::1", 5903)))
        );
        assert_eq!(parse_answer(None, b" \n"), Ok(None));
        assert_eq!(parse_answer(Some("application/json"), b""), Ok(None));
    }

    #[test]
    fn garbage_answers_are_errors() {
        for body in [
            &b"10.0.0.5"[..],
            b"10.0.0.5:0",
            b"<html>hello</html>",
            b"{\"host\": \"h\"}",
            b"{\"host\": \"h\", \"port\": 70000}",
            b"{\"host\": \"h\", \"port\": \"x\"}",
            b"{\"host\": 5, \"port\": 1}",
            b"{not json",
            b"\xff\xfe",
        ] {
            assert!(parse_answer(None, body).is_err(), "{body:?}");
        }
        assert!(parse_answer(Some("application/json"), b"10.0.0.5:1").is_err());
    }

    #[test]
    fn the_token_is_substituted_or_appended_percent_encoded() {
        assert_eq!(
            build_url("http://ts:8080/lookup?t={token}&v=1", "a b/c"),
            "http://ts:8080/lookup?t=a%20b%2Fc&v=1"
        );
        assert_eq!(
            build_url("http://ts/tokens/{token}", "x?y#z%"),
            "http://ts/tokens/x%3Fy%23z%25"
        );
        assert_eq!(
            build_url("http://ts/tokens", "k-1_.~"),
            "http://ts/tokens/k-1_.~"
        );
        assert_eq!(
            build_url("http://ts/tokens/", "é"),
            "http://ts/tokens/%C3%A9"
        );
        assert_eq!(build_url("https://ts:9/t?x=1", "k"), "https://ts:9/t/k?x=1");
        assert_eq!(build_url("http://ts:9", "k"), "http://ts:9/k");
    }

    #[test]
    fn urls_are_checked() {
        let mk = |u: &str| ServiceSettings::new(u, DEFAULT_SOURCE_TIMEOUT, None);
        assert!(mk("http://127.0.0.1:9000/t?token={token}").is_ok());
        assert!(mk("https://tokens.example.com/api").is_ok());
        assert!(mk("http://[::1]:9000/").is_ok());
        for bad in [
            "ftp://x/",
            "127.0.0.1:9000",
            "http://",
            "http:///path",
            "http://{token}.example/",
            "http://h/a b",
            "http://h/#frag",
        ] {
            assert!(mk(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            ServiceSettings::new("http://h/", DEFAULT_SOURCE_TIMEOUT, Some(b"x".to_vec())),
            Err(ServiceSettingsError::CaWithoutHttps)
        ));
    }
}
