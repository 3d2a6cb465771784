//! Who may connect to a route, decided from the request head before any backend is touched.
//!
//! Owns the per-route Origin policy, the route's credential check ([`RouteAuth`]: a JWT, or an
//! external auth service), and subprotocol selection. Refusals are 401 (missing or invalid
//! credential), 403 (Origin or subject refused) or 503 (auth service unavailable). Credential values
//! are never logged, returned in an error, or passed to a backend.

pub mod forward;
pub mod jwt;

use std::net::SocketAddr;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::{StatusCode, Uri};

use crate::error::Reject;
use crate::origin::Origin;
use crate::origin::OriginPattern;
use crate::target::{token_hash, Claimed, Target};

/// A route's credential check, as configured (`[route.auth]`, by `type`). Values only: the
/// server builds the check ([`RouteAuth`]) from them when it builds a configuration generation.
#[derive(Debug, Clone)]
pub enum AuthSettings {
    Jwt(jwt::JwtSettings),
    Forward(forward::ForwardSettings),
}

impl AuthSettings {
    /// Whether browsers send this credential on their own, so that any page can use it.
    pub fn is_ambient(&self) -> bool {
        match self {
            AuthSettings::Jwt(j) => j.source.is_ambient(),
            // The auth service sees the Cookie header, so cookies can carry the decision.
            AuthSettings::Forward(_) => true,
        }
    }
}

/// What the checks need to know of a route. The route's configuration stays in `config`, which
/// hands out this view, so that the checks do not depend on the configuration's types.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy<'a> {
    pub path: &'a str,
    pub allowed_origins: Option<&'a [OriginPattern]>,
    pub allow_missing_origin: bool,
    pub subprotocols: &'a [String],
    /// The route is `raw` (websockify's byte stream): it answers `binary` when nothing else is
    /// configured.
    pub raw: bool,
}

/// A route's credential check.
#[derive(Debug)]
pub enum RouteAuth {
    Jwt(jwt::JwtAuth),
    Forward(forward::ForwardAuth),
}

impl RouteAuth {
    /// Build the route's check from its settings (for forward auth: an empty cache).
    pub fn new(settings: &AuthSettings) -> RouteAuth {
        match settings {
            AuthSettings::Jwt(s) => RouteAuth::Jwt(jwt::JwtAuth::new(s)),
            AuthSettings::Forward(s) => RouteAuth::Forward(forward::ForwardAuth::new(s)),
        }
    }
}

/// Who the client is, once authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub subject: Option<String>,
    /// When the credential stops being valid: the session is closed with 1008 then.
    pub expires_at: Option<SystemTime>,
    /// For a JWT: the target its `host` and `port` claims name (for `[route.target]
    /// source = "jwt"`), with the token's hash for the logs.
    pub claimed: Option<Claimed>,
}

/// The parts of a request the credential check reads.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    pub offered_protocols: &'a [String],
    pub client: SocketAddr,
    pub tls: bool,
}

/// Run the route's credential check `auth` (built from the route's settings), if it has one. A
/// subject longer than [`MAX_SUBJECT_BYTES`](crate::proxy_protocol::MAX_SUBJECT_BYTES) is refused
/// with 401.
pub async fn authenticate(
    route: &RoutePolicy<'_>,
    auth: Option<&RouteAuth>,
    req: &Request<'_>,
) -> Result<Identity, AuthError> {
    let identity = credential(route, auth, req).await?;
    if identity
        .subject
        .as_ref()
        .is_some_and(|s| s.len() > crate::proxy_protocol::MAX_SUBJECT_BYTES)
    {
        return Err(AuthError::Denied(unauthorized("subject too long")));
    }
    Ok(identity)
}

/// How a route's credential check came out (the `outcome` label of the auth metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Allowed,
    /// The credential was missing, invalid or refused (401/403).
    Denied,
    /// The check could not be made: the auth service failed or is saturated (503).
    Unavailable,
}

impl AuthOutcome {
    pub fn of(result: &Result<Identity, AuthError>) -> AuthOutcome {
        match result {
            Ok(_) => AuthOutcome::Allowed,
            Err(AuthError::Denied(_)) => AuthOutcome::Denied,
            Err(AuthError::Unavailable(_)) => AuthOutcome::Unavailable,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AuthOutcome::Allowed => "allowed",
            AuthOutcome::Denied => "denied",
            AuthOutcome::Unavailable => "unavailable",
        }
    }
}

/// Why a credential check did not let the request through; the kind is decided where the check
/// ran, and each carries the answer the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("denied: {0}")]
    Denied(Reject),
    #[error("unavailable: {0}")]
    Unavailable(Reject),
}

impl From<AuthError> for Reject {
    fn from(e: AuthError) -> Reject {
        match e {
            AuthError::Denied(r) | AuthError::Unavailable(r) => r,
        }
    }
}

async fn credential(
    route: &RoutePolicy<'_>,
    auth: Option<&RouteAuth>,
    req: &Request<'_>,
) -> Result<Identity, AuthError> {
    match auth {
        None => Ok(Identity::default()),
        Some(RouteAuth::Jwt(j)) => {
            let from_query;
            let token = match &j.source {
                jwt::TokenSource::Query(_) => {
                    from_query = j.extract_query(req.uri);
                    from_query.as_deref().map_err(|e| *e)
                }
                _ => j.extract(req.headers, req.offered_protocols),
            }
            .map_err(|e| AuthError::Denied(unauthorized(e.reason())))?;
            let verified = j
                .verify(token)
                .map_err(|e| AuthError::Denied(unauthorized(e.reason())))?;
            Ok(Identity {
                subject: verified.subject,
                expires_at: Some(verified.expires_at),
                claimed: Some(Claimed {
                    target: verified
                        .target
                        .map(|(host, port)| Target::Tcp { host, port }),
                    token_hash: token_hash(token),
                }),
            })
        }
        Some(RouteAuth::Forward(f)) => {
            let subject = forward::Subject {
                headers: req.headers,
                uri: req.uri,
                client: req.client,
                tls: req.tls,
                route: route.path,
            };
            match f.check(&subject).await {
                forward::Decision::Allow(subject) => Ok(Identity {
                    subject,
                    expires_at: None,
                    claimed: None,
                }),
                forward::Decision::Deny(StatusCode::FORBIDDEN) => Err(AuthError::Denied(
                    Reject::client(StatusCode::FORBIDDEN, "denied by the auth service"),
                )),
                forward::Decision::Deny(_) => Err(AuthError::Denied(unauthorized(
                    "refused by the auth service",
                ))),
                forward::Decision::Unavailable(reason) => Err(AuthError::Unavailable(
                    Reject::gateway(StatusCode::SERVICE_UNAVAILABLE, reason),
                )),
            }
        }
    }
}

fn unauthorized(reason: &'static str) -> Reject {
    Reject::client(StatusCode::UNAUTHORIZED, reason)
}

/// Check the `Origin` header against the route's `allowed_origins`.
///
/// A route without `allowed_origins` accepts any Origin, or none. A route with it requires exactly
/// one well-formed Origin that matches an entry: a `null` or malformed Origin is refused with 403,
/// like a foreign one (cross-site WebSocket hijacking defence; RFC 6455 §10.2), and so is a missing
/// one unless the route sets `allow_missing_origin` (only possible when its credential is not
/// ambient, see config validation).
pub fn check_origin(route: &RoutePolicy<'_>, headers: &HeaderMap) -> Result<(), Reject> {
    let Some(allowed) = route.allowed_origins else {
        return Ok(());
    };
    let mut values = headers.get_all(header::ORIGIN).iter();
    let value = match (values.next(), values.next()) {
        (None, _) if route.allow_missing_origin => return Ok(()),
        (None, _) => {
            return Err(Reject::client(
                StatusCode::FORBIDDEN,
                "an Origin header is required on this route",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Reject::client(
                StatusCode::FORBIDDEN,
                "more than one Origin header",
            ))
        }
        (Some(v), None) => v,
    };
    let origin = value
        .to_str()
        .ok()
        .and_then(|s| Origin::parse(s).ok())
        .ok_or(Reject::client(
            StatusCode::FORBIDDEN,
            "malformed or opaque Origin",
        ))?;
    if allowed.iter().any(|p| p.matches(&origin)) {
        Ok(())
    } else {
        Err(Reject::client(
            StatusCode::FORBIDDEN,
            "Origin not allowed on this route",
        ))
    }
}

/// The subprotocol websockify-style clients (noVNC) offer for raw binary streams.
pub const BINARY_SUBPROTOCOL: &str = "binary";

/// The subprotocol to answer with: the first of the route's `subprotocols` that the client offered.
/// (A token carried in `Sec-WebSocket-Protocol` is never one of them: config validation ensures no
/// configured name starts with the token prefix.)
///
/// A `raw` route without `subprotocols` answers `binary` when the client offers it, as websockify
/// does: that is what raw framing speaks, and a browser fails a connection whose offered
/// subprotocols all go unanswered. Other offers on such a route get no answer (RFC 6455 §4.2.2).
pub fn select_subprotocol<'r>(route: &RoutePolicy<'r>, offered: &[String]) -> Option<&'r str> {
    if route.subprotocols.is_empty() {
        let binary = route.raw && offered.iter().any(|o| o == BINARY_SUBPROTOCOL);
        return binary.then_some(BINARY_SUBPROTOCOL);
    }
    route
        .subprotocols
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Route};
    use http::HeaderValue;
    use std::path::Path;

    fn route(extra: &str) -> std::sync::Arc<Route> {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:1\"\n{extra}\n"
        );
        Config::parse(&text, Path::new(".")).unwrap().routes[0].clone()
    }

    fn with_origin(v: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(header::ORIGIN, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn no_policy_accepts_anything() {
        let r = route("");
        assert!(check_origin(&r.policy(), &with_origin(None)).is_ok());
        assert!(check_origin(&r.policy(), &with_origin(Some("null"))).is_ok());
    }

    #[test]
    fn policy_is_exact_after_normalising() {
        let r = route("allowed_origins = [\"https://app.example.com\"]");
        assert!(check_origin(&r.policy(), &with_origin(Some("https://app.example.com"))).is_ok());
        assert!(check_origin(
            &r.policy(),
            &with_origin(Some("https://APP.example.com:443"))
        )
        .is_ok());
        for bad in [
            None,
            Some("null"),
            Some("garbage"),
            Some("https://app.example.com.evil.io"),
            Some("https://evil-app.example.com"),
            Some("http://app.example.com"),
            Some("https://app.example.com:8443"),
            Some("https://app.example.com."),
        ] {
            let e = check_origin(&r.policy(), &with_origin(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad:?}");
        }
        let mut two = with_origin(Some("https://app.example.com"));
        two.append(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        assert!(check_origin(&r.policy(), &two).is_err());
    }

    #[test]
    fn subprotocol_uses_route_preference() {
        let r = route("subprotocols = [\"binary\", \"base64\"]");
        let offered = vec!["base64".to_string(), "binary".to_string()];
        assert_eq!(select_subprotocol(&r.policy(), &offered), Some("binary"));
        assert_eq!(select_subprotocol(&r.policy(), &["chat".to_string()]), None);
        assert_eq!(select_subprotocol(&r.policy(), &["chat".to_string()]), None);
    }

    #[test]
    fn raw_route_without_subprotocols_answers_binary_only() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let raw = route("");
        assert_eq!(
            select_subprotocol(&raw.policy(), &offered(&["base64", "binary"])),
            Some("binary")
        );
        assert_eq!(select_subprotocol(&raw.policy(), &offered(&["chat"])), None);
        assert_eq!(select_subprotocol(&raw.policy(), &offered(&[])), None);
        let lines = route("framing = \"lines\"");
        assert_eq!(
            select_subprotocol(&lines.policy(), &offered(&["binary"])),
            None
        );
        // A configured list is the whole choice.
        let listed = route("subprotocols = [\"base64\"]");
        assert_eq!(
            select_subprotocol(&listed.policy(), &offered(&["binary"])),
            None
        );
    }
}
