//! The opening handshake (RFC 6455 §4.2), as a pure function of the request head.
//!
//! Owns: deciding whether a request is a WebSocket upgrade attempt, validating it, computing
//! `Sec-WebSocket-Accept`, parsing the offered subprotocols, and building the 101 answer
//! ([`switching_protocols`]), and negotiating permessage-deflate (RFC 7692 §7,
//! [`negotiate_deflate`]). It does not route, authorise, connect, or write anything: the
//! server turns a [`Reject`] into exactly one HTTP answer.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Response, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::error::Reject;
use crate::ws::deflate::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::ws::{DeflateParams, DeflateSettings};

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version we speak (RFC 6455 §4.1).
pub const WEBSOCKET_VERSION: &str = "13";

/// A request head that passed every check of RFC 6455 §4.2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The value for `Sec-WebSocket-Accept`.
    pub accept: String,
    /// Subprotocols the client offered, in its order.
    pub offered_protocols: Vec<String>,
}

/// A handshake that is not valid: 400 (or 426 for the version), the client's doing.
fn bad(reason: &'static str) -> Reject {
    Reject::client(StatusCode::BAD_REQUEST, reason)
}

/// True when the client is trying to open a WebSocket (or any upgrade), as opposed to a plain
/// HTTP request: it carries `Upgrade` or any `Sec-WebSocket-*` handshake header.
pub fn is_upgrade_attempt(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)
}

/// Validate an upgrade request per RFC 6455 §4.2.1.
pub fn validate(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Accepted, Reject> {
    // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if method != Method::GET {
        return Err(bad("a WebSocket handshake must use GET"));
    }
    if version < Version::HTTP_11 {
        return Err(bad("a WebSocket handshake needs HTTP/1.1 or later"));
    }
    // §4.2.1 item 2: a |Host| header field.
    match single(headers, &header::HOST) {
        Some(h) if !h.is_empty() => {}
        Some(_) => return Err(bad("empty Host header")),
        None => return Err(bad("exactly one Host header is required")),
    }
    // An upgrade request carries no body; anything after the head is WebSocket frames.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(bad(
            "a WebSocket handshake must not have a body (Transfer-Encoding)",
        ));
    }
    for v in headers.get_all(header::CONTENT_LENGTH) {
        if v.as_bytes() != b"0" {
            return Err(bad(
                "a WebSocket handshake must not have a body (Content-Length)",
            ));
        }
    }
    // §4.2.1 item 3: |Upgrade| including "websocket" (case-insensitive).
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(bad("Upgrade header must name websocket"));
    }
    // §4.2.1 item 4: |Connection| including the token "Upgrade".
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(bad("Connection header must contain the upgrade token"));
    }
    // §4.2.1 item 6 and §4.4: any version but 13 gets 426 and the version we speak.
    if single(headers, &header::SEC_WEBSOCKET_VERSION) != Some(WEBSOCKET_VERSION.as_bytes()) {
        return Err(Reject::client(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version (this server speaks 13)",
        ));
    }
    // §4.2.1 item 5: |Sec-WebSocket-Key|, base64 of 16 bytes.
    let key = match single(headers, &header::SEC_WEBSOCKET_KEY) {
        Some(k) => k,
        None if headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count() > 1 => {
            return Err(bad("more than one Sec-WebSocket-Key header"))
        }
        None => return Err(bad("missing Sec-WebSocket-Key header")),
    };
    let key = trim_ows(key);
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(bad("Sec-WebSocket-Key must be base64 of 16 bytes")),
    }
    let offered_protocols = offered_protocols(headers)?;
    Ok(Accepted {
        accept: accept_key(key),
        offered_protocols,
    })
}

/// Validate an extended CONNECT (RFC 8441 §4, §5) that opens a WebSocket on an HTTP/2 stream:
/// method CONNECT, `:protocol` `websocket`, `Sec-WebSocket-Version: 13`. There is no key and no
/// `Upgrade`/`Connection` (HTTP/2 forbids them); `:authority` and `:path` are checked by the HTTP/2
/// layer. Returns the offered subprotocols.
pub fn validate_extended_connect(
    method: &Method,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<Vec<String>, Reject> {
    if method != Method::CONNECT {
        return Err(bad("a WebSocket over HTTP/2 must use CONNECT"));
    }
    match protocol {
        Some(p) if p.eq_ignore_ascii_case("websocket") => {}
        Some(_) => {
            return Err(Reject::client(
                StatusCode::NOT_IMPLEMENTED,
                "the only :protocol this server speaks is websocket",
            ))
        }
        None => {
            return Err(Reject::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "plain CONNECT is not supported (an extended CONNECT needs :protocol websocket)",
            ))
        }
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(bad(
            "a WebSocket handshake must not have a body (Transfer-Encoding)",
        ));
    }
    if single(headers, &header::SEC_WEBSOCKET_VERSION) != Some(WEBSOCKET_VERSION.as_bytes()) {
        return Err(Reject::client(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version (this server speaks 13)",
        ));
    }
    offered_protocols(headers)
}

/// The `200` that opens a WebSocket on an HTTP/2 stream (RFC 8441 §5: no `Sec-WebSocket-Accept`),
/// naming the selected subprotocol if there is one.
pub fn connect_established<B: Default>(protocol: Option<&str>) -> Response<B> {
    let mut resp = Response::new(B::default());
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

/// `base64(sha1(key + GUID))` (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// RFC 7230 §3.2.6 `tchar`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The subprotocols offered in `Sec-WebSocket-Protocol` (RFC 6455 §4.1: comma-separated tokens).
fn offered_protocols(headers: &HeaderMap) -> Result<Vec<String>, Reject> {
    let mut out = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = trim_ows(item);
            if item.is_empty() || !item.iter().all(|&b| is_token_byte(b)) {
                return Err(bad("malformed Sec-WebSocket-Protocol header"));
            }
            // Token bytes are ASCII, so this cannot fail.
            out.push(String::from_utf8_lossy(item).into_owned());
        }
    }
    Ok(out)
}

/// The value of a header that must appear exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    Some(first.as_bytes())
}

/// True when any of the comma-separated tokens in any `name` header equals `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The 101 Switching Protocols answer to an accepted handshake (RFC 6455 §4.2.2), naming the
/// selected subprotocol if there is one. The body type is the caller's (the answer has none).
pub fn switching_protocols<B: Default>(accepted: &Accepted, protocol: Option<&str>) -> Response<B> {
    let mut resp = Response::new(B::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // Base64 output is always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&accepted.accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    // A selected subprotocol is one the client offered, so a valid token.
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

/// One offered extension: its name and parameters (values unquoted), as written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Offer {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// Parse every `Sec-WebSocket-Extensions` header (RFC 6455 §9.1):
/// `extension *( ";" param [ "=" ( token | quoted-string ) ] )`, comma-separated, across
/// several headers. `None` when any header is malformed: its offers cannot be told apart.
fn extension_offers(headers: &HeaderMap) -> Option<Vec<Offer>> {
    let mut offers = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        parse_extension_list(value.as_bytes(), &mut offers)?;
    }
    Some(offers)
}

fn parse_extension_list(mut s: &[u8], offers: &mut Vec<Offer>) -> Option<()> {
    fn skip_ows(s: &mut &[u8]) {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    }
    fn token(s: &mut &[u8]) -> Option<String> {
        let n = s.iter().take_while(|&&b| is_token_byte(b)).count();
        if n == 0 {
            return None;
        }
        let (t, rest) = s.split_at(n);
        *s = rest;
        Some(String::from_utf8_lossy(t).into_owned())
    }
    fn quoted(s: &mut &[u8]) -> Option<String> {
        let mut out = Vec::new();
        let mut i = 1; // after the opening quote
        loop {
            match *s.get(i)? {
                b'"' => break,
                b'\\' => {
                    out.push(*s.get(i + 1)?);
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        *s = &s[i + 1..];
        // RFC 6455 §9.1: a quoted value must be a token once unescaped.
        if out.is_empty() || !out.iter().all(|&b| is_token_byte(b)) {
            return None;
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
    loop {
        skip_ows(&mut s);
        // Empty list elements (",,") are allowed by the list syntax (RFC 7230 §7).
        if let [b',', rest @ ..] = s {
            s = rest;
            continue;
        }
        if s.is_empty() {
            return Some(());
        }
        let name = token(&mut s)?;
        let mut params = Vec::new();
        loop {
            skip_ows(&mut s);
            match s {
                [b';', rest @ ..] => {
                    s = rest;
                    skip_ows(&mut s);
                    let key = token(&mut s)?;
                    skip_ows(&mut s);
                    let value = if let [b'=', rest @ ..] = s {
                        s = rest;
                        skip_ows(&mut s);
                        Some(if s.first() == Some(&b'"') {
                            quoted(&mut s)?
                        } else {
                            token(&mut s)?
                        })
                    } else {
                        None
                    };
                    params.push((key, value));
                }
                [b',', ..] | [] => break,
                _ => return None,
            }
        }
        offers.push(Offer { name, params });
    }
}

/// The permessage-deflate parameters of one offer, valid per RFC 7692 §7.1: no unknown or
/// repeated parameter, flags without a value, window bits 8..15 written as plain decimal.
/// `client_max_window_bits` is `Some(None)` when offered without a value.
#[derive(Debug, Default)]
struct DeflateOffer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<Option<u8>>,
}

fn window_bits(v: &str) -> Option<u8> {
    // RFC 7692 §7.1.2.1: 1*DIGIT without leading zeros, 8..15.
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>()
        .ok()
        .filter(|b| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(b))
}

fn deflate_offer(offer: &Offer) -> Option<DeflateOffer> {
    let mut d = DeflateOffer::default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &offer.params {
        let key = key.to_ascii_lowercase();
        // RFC 7692 §7: an offer with a parameter twice is declined.
        if seen.contains(&key.as_str()) {
            return None;
        }
        match (key.as_str(), value) {
            ("server_no_context_takeover", None) => {
                d.server_no_context_takeover = true;
                seen.push("server_no_context_takeover");
            }
            ("client_no_context_takeover", None) => {
                d.client_no_context_takeover = true;
                seen.push("client_no_context_takeover");
            }
            ("server_max_window_bits", Some(v)) => {
                d.server_max_window_bits = Some(window_bits(v)?);
                seen.push("server_max_window_bits");
            }
            ("client_max_window_bits", None) => {
                d.client_max_window_bits = Some(None);
                seen.push("client_max_window_bits");
            }
            ("client_max_window_bits", Some(v)) => {
                d.client_max_window_bits = Some(Some(window_bits(v)?));
                seen.push("client_max_window_bits");
            }
            // Unknown parameters, flags with a value, server_max_window_bits without one.
            _ => return None,
        }
    }
    Some(d)
}

/// Negotiate permessage-deflate (RFC 7692 §7) for a route that allows it: the first offer
/// this route can accept wins. Returns the session's parameters and the
/// `Sec-WebSocket-Extensions` value of the 101, or `None` (no compression; the handshake goes
/// on without the extension) when nothing acceptable was offered.
///
/// - Malformed headers, unknown or repeated parameters and out-of-range values decline the
///   offer (a malformed header declines all of them).
/// - `server_max_window_bits`: the smaller of the offer's and the route's; named in the answer
///   when below 15 or offered.
/// - `client_max_window_bits`: only answered when offered (with or without a value); the
///   smaller of the offer's value (15 without one) and the route's. An offer without it is
///   declined when the route asks for less than 15 (the client could not be told).
/// - `*_no_context_takeover`: answered when offered or when the route sets it.
pub fn negotiate_deflate(
    headers: &HeaderMap,
    route: &DeflateSettings,
) -> Option<(DeflateParams, String)> {
    for offer in extension_offers(headers)? {
        if !offer.name.eq_ignore_ascii_case("permessage-deflate") {
            continue;
        }
        let Some(d) = deflate_offer(&offer) else {
            continue;
        };
        let client_bits = match d.client_max_window_bits {
            None if route.client_max_window_bits < MAX_WINDOW_BITS => continue,
            None => None,
            Some(v) => Some(
                v.unwrap_or(MAX_WINDOW_BITS)
                    .min(route.client_max_window_bits),
            ),
        };
        let server_bits = d
            .server_max_window_bits
            .unwrap_or(MAX_WINDOW_BITS)
            .min(route.server_max_window_bits);
        let params = DeflateParams {
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits.unwrap_or(MAX_WINDOW_BITS),
            server_no_context_takeover: d.server_no_context_takeover
                || route.server_no_context_takeover,
            client_no_context_takeover: d.client_no_context_takeover
                || route.client_no_context_takeover,
            min_compress_bytes: route.min_compress_bytes,
        };
        let mut answer = String::from("permessage-deflate");
        if params.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if params.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if d.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS {
            answer.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
        if let Some(bits) = client_bits {
            answer.push_str(&format!("; client_max_window_bits={bits}"));
        }
        return Some((params, answer));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_headers(version: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(version),
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, binary"),
        );
        h
    }

    #[test]
    fn extended_connect_is_validated_like_rfc_8441_says() {
        let ok = validate_extended_connect(&Method::CONNECT, Some("websocket"), &h2_headers("13"));
        assert_eq!(ok.unwrap(), vec!["chat".to_string(), "binary".to_string()]);
        let status = |m: &Method, p: Option<&str>, v| {
            validate_extended_connect(m, p, &h2_headers(v))
                .unwrap_err()
                .status
        };
        assert_eq!(status(&Method::GET, Some("websocket"), "13"), 400);
        assert_eq!(status(&Method::CONNECT, None, "13"), 405);
        assert_eq!(status(&Method::CONNECT, Some("h2t"), "13"), 501);
        assert_eq!(status(&Method::CONNECT, Some("websocket"), "8"), 426);
        let r: Response<()> = connect_established(Some("chat"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        assert!(!r.headers().contains_key(header::SEC_WEBSOCKET_ACCEPT));
    }

    #[test]
    fn the_101_carries_accept_and_the_selected_subprotocol() {
        let accepted = Accepted {
            accept: accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            offered_protocols: vec!["chat".into()],
        };
        let r: Response<()> = switching_protocols(&accepted, Some("chat"));
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
        assert_eq!(r.headers()[header::CONNECTION], "Upgrade");
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        let none: Response<()> = switching_protocols(&accepted, None);
        assert!(!none.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }
    use http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("localhost:8080"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    fn check(h: &HeaderMap) -> Result<Accepted, Reject> {
        validate(&Method::GET, Version::HTTP_11, h)
    }

    #[test]
    fn rfc_accept_vectors() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            accept_key(b"w4v7O6xFTi36lq3RNcgctw=="),
            "Oy4NRAQ13jhfONC7bP8dTKb4PTU="
        );
    }

    #[test]
    fn valid_request_is_accepted() {
        let a = check(&good()).unwrap();
        assert_eq!(a.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(a.offered_protocols.is_empty());
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let mut h = good();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, UPGRADE"),
        );
        assert!(check(&h).is_ok());
    }

    #[test]
    fn method_and_version() {
        let r = validate(&Method::POST, Version::HTTP_11, &good()).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = validate(&Method::GET, Version::HTTP_10, &good()).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn each_missing_or_bad_header_is_400() {
        let cases: Vec<(HeaderName, Option<&'static str>)> = vec![
            (header::HOST, None),
            (header::UPGRADE, None),
            (header::UPGRADE, Some("h2c")),
            (header::CONNECTION, None),
            (header::CONNECTION, Some("keep-alive")),
            (header::SEC_WEBSOCKET_KEY, None),
            (header::SEC_WEBSOCKET_KEY, Some("short")),
            (header::SEC_WEBSOCKET_KEY, Some("dGhlIHNhbXBsZSBub25jZQ")),
            (
                header::SEC_WEBSOCKET_KEY,
                Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ),
            (header::CONTENT_LENGTH, Some("5")),
            (header::TRANSFER_ENCODING, Some("chunked")),
            (header::SEC_WEBSOCKET_PROTOCOL, Some("chat, ")),
        ];
        for (name, value) in cases {
            let mut h = good();
            match value {
                Some(v) => {
                    h.insert(name.clone(), HeaderValue::from_static(v));
                }
                None => {
                    h.remove(&name);
                }
            }
            let r = check(&h).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {value:?}");
        }
    }

    #[test]
    fn two_keys_is_400() {
        let mut h = good();
        h.append(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("w4v7O6xFTi36lq3RNcgctw=="),
        );
        assert_eq!(check(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn version_other_than_13_is_426() {
        for v in [Some("8"), Some("14"), Some("13, 8"), None] {
            let mut h = good();
            match v {
                Some(v) => {
                    h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(v));
                }
                None => {
                    h.remove(header::SEC_WEBSOCKET_VERSION);
                }
            }
            assert_eq!(
                check(&h).unwrap_err().status,
                StatusCode::UPGRADE_REQUIRED,
                "{v:?}"
            );
        }
    }

    #[test]
    fn offered_protocols_are_parsed() {
        let mut h = good();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, binary"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64"),
        );
        assert_eq!(
            check(&h).unwrap().offered_protocols,
            ["chat", "binary", "base64"]
        );
    }

    #[test]
    fn upgrade_attempt_detection() {
        assert!(is_upgrade_attempt(&good()));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("x"));
        assert!(!is_upgrade_attempt(&h));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("x"));
        assert!(is_upgrade_attempt(&h));
    }

    fn ext(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn answer(values: &[&str], route: &DeflateSettings) -> Option<String> {
        negotiate_deflate(&ext(values), route).map(|(_, a)| a)
    }

    #[test]
    fn deflate_plain_offer_and_browser_offer() {
        let r = DeflateSettings::default();
        assert_eq!(
            answer(&["permessage-deflate"], &r).as_deref(),
            Some("permessage-deflate")
        );
        // Chrome's and Python websockets' offer: client_max_window_bits without a value.
        let (p, a) =
            negotiate_deflate(&ext(&["permessage-deflate; client_max_window_bits"]), &r).unwrap();
        assert_eq!(a, "permessage-deflate; client_max_window_bits=15");
        assert_eq!(p.client_max_window_bits, 15);
        assert!(!p.client_no_context_takeover && !p.server_no_context_takeover);
        // No offer, another extension only, or an empty header: no compression.
        assert_eq!(answer(&[], &r), None);
        assert_eq!(answer(&["x-webkit-deflate-frame"], &r), None);
        assert_eq!(answer(&[""], &r), None);
        // Case-insensitive names, whitespace, empty list elements.
        assert_eq!(
            answer(
                &[" , PerMessage-Deflate ;\tServer_No_Context_Takeover ,"],
                &r
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn deflate_parameters_are_answered_per_route() {
        let r = DeflateSettings {
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            min_compress_bytes: 64,
        };
        let (p, a) = negotiate_deflate(
            &ext(&["permessage-deflate; client_max_window_bits; server_max_window_bits=14"]),
            &r,
        )
        .unwrap();
        assert_eq!(
            a,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 12)
        );
        // The client's smaller values win.
        let (p, a) = negotiate_deflate(
            &ext(&["permessage-deflate; client_max_window_bits=9; server_max_window_bits=8"]),
            &r,
        )
        .unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (8, 9));
        assert!(!p.compress_to_client());
        assert!(a.ends_with("server_max_window_bits=8; client_max_window_bits=9"));
        // A route that limits the client's window declines offers that cannot be told so.
        assert_eq!(answer(&["permessage-deflate"], &r), None);
        // ... and takes the next acceptable one.
        assert_eq!(
            answer(
                &["permessage-deflate, permessage-deflate; client_max_window_bits=\"11\""],
                &r
            )
            .as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10; client_max_window_bits=11"
            )
        );
    }

    #[test]
    fn deflate_first_acceptable_offer_across_headers() {
        let r = DeflateSettings::default();
        let (p, _) = negotiate_deflate(
            &ext(&[
                "foo; bar=1, permessage-deflate; unknown",
                "permessage-deflate; client_no_context_takeover; client_max_window_bits=10",
                "permessage-deflate",
            ]),
            &r,
        )
        .unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 10);
    }

    #[test]
    fn deflate_bad_offers_are_declined() {
        let r = DeflateSettings::default();
        for bad in [
            // Unknown parameter.
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            // Duplicates (also in another case).
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; Client_Max_Window_Bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            // Flags with a value.
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            // server_max_window_bits needs a value.
            "permessage-deflate; server_max_window_bits",
            // Out of range, leading zeros, not a number, signs, empty quotes.
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=\"\"",
            "permessage-deflate; client_max_window_bits=256",
            "permessage-deflate; server_max_window_bits=99999999999999999999",
            // Malformed syntax: the whole header is declined.
            "permessage-deflate;",
            "permessage-deflate; =10",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate x",
            "permessage-deflate; a b",
            "\"permessage-deflate\"",
            "permessage-deflate; client_max_window_bits=10=11",
            "; permessage-deflate",
        ] {
            assert_eq!(answer(&[bad], &r), None, "{bad}");
        }
        // A malformed header declines every offer, in it and in the other headers.
        assert_eq!(answer(&["permessage-deflate, foo;;"], &r), None);
        assert!(answer(&["foo;;", "permessage-deflate"], &r).is_none());
        // Quoted values that are tokens are fine, escapes included.
        assert!(answer(&["permessage-deflate; server_max_window_bits=\"1\\2\""], &r).is_some());
    }
}
