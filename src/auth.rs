//! Who may connect to a route, decided from the request head before any backend is touched.
//!
//! Owns the per-route Origin policy and subprotocol selection. Pure: takes headers, returns a
//! decision. Never logs or returns credential values.

use http::header::{self, HeaderMap};
use http::StatusCode;

use crate::config::Route;
use crate::handshake::Reject;
use crate::origin::Origin;

/// Check the `Origin` header against the route's `allowed_origins`.
///
/// A route without `allowed_origins` accepts any Origin, or none. A route with it requires exactly
/// one well-formed Origin that is in the list: a missing, `null` or malformed Origin is refused with
/// 403, like a foreign one (cross-site WebSocket hijacking defence; RFC 6455 §10.2).
pub fn check_origin(route: &Route, headers: &HeaderMap) -> Result<(), Reject> {
    let Some(allowed) = &route.allowed_origins else {
        return Ok(());
    };
    let mut values = headers.get_all(header::ORIGIN).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "an Origin header is required on this route",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Reject::new(
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
        .ok_or(Reject::new(
            StatusCode::FORBIDDEN,
            "malformed or opaque Origin",
        ))?;
    if allowed.contains(&origin) {
        Ok(())
    } else {
        Err(Reject::new(
            StatusCode::FORBIDDEN,
            "Origin not allowed on this route",
        ))
    }
}

/// The subprotocol to answer with: the first of the route's `subprotocols` that the client offered.
pub fn select_subprotocol<'r>(route: &'r Route, offered: &[String]) -> Option<&'r str> {
    route
        .subprotocols
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
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
        assert!(check_origin(&r, &with_origin(None)).is_ok());
        assert!(check_origin(&r, &with_origin(Some("null"))).is_ok());
    }

    #[test]
    fn policy_is_exact_after_normalising() {
        let r = route("allowed_origins = [\"https://app.example.com\"]");
        assert!(check_origin(&r, &with_origin(Some("https://app.example.com"))).is_ok());
        assert!(check_origin(&r, &with_origin(Some("https://APP.example.com:443"))).is_ok());
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
            let e = check_origin(&r, &with_origin(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad:?}");
        }
        let mut two = with_origin(Some("https://app.example.com"));
        two.append(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        assert!(check_origin(&r, &two).is_err());
    }

    #[test]
    fn subprotocol_uses_route_preference() {
        let r = route("subprotocols = [\"binary\", \"base64\"]");
        let offered = vec!["base64".to_string(), "binary".to_string()];
        assert_eq!(select_subprotocol(&r, &offered), Some("binary"));
        assert_eq!(select_subprotocol(&r, &["chat".to_string()]), None);
        assert_eq!(select_subprotocol(&route(""), &offered), None);
    }
}
