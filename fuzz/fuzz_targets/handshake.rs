//! The opening handshake validator (`wsgate::handshake::validate`) on request heads read from
//! the input: a request line (`METHOD target HTTP/x`, with versions 0.9, 1.0, 1.1, 2 and 3) and
//! `name: value` lines, each turned into an `http::Method`, `http::Version` and
//! `http::HeaderMap` (lines that `http` refuses are skipped; a value keeps its trailing
//! whitespace, so the validator's own trimming is exercised). The seeds are upgrade heads.
//!
//! Checked: no panic; a refusal is 400 or 426 (426 only when `Sec-WebSocket-Version` is not
//! exactly one `13`), never asks to retry, and renders with Display; the request is accepted
//! exactly when a model written here from RFC 6455 §4.2.1 accepts it (GET, HTTP/1.1 or later,
//! one non-empty Host, no body, the `websocket` and `upgrade` tokens, one version `13`, one key
//! that is base64 of 16 bytes, a well-formed subprotocol list); when accepted,
//! `Sec-WebSocket-Accept` equals base64(sha1(key + GUID)) computed here with `sha1` and
//! `base64`, and the offered subprotocols are the header's list in order.

#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use wsgate::handshake::validate;

/// RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The method, version and headers of a request head; `None` if its request line is not one.
fn parse_head(data: &[u8]) -> Option<(Method, Version, HeaderMap)> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut request = lines.next()?.split(|&b| b == b' ');
    let method = Method::from_bytes(request.next()?).ok()?;
    let _target = request.next()?;
    let version = match request.next()? {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
        _ => return None,
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let start = value
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(value.len());
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value[start..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    Some((method, version, headers))
}

/// RFC 7230 §3.2.3 optional whitespace, both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
}

/// Any comma-separated item of any `name` header is `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    values(headers, name).iter().any(|v| {
        v.split(|&b| b == b',')
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// RFC 7230 §3.2.6 `token`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What an upgrade request that passes RFC 6455 §4.2.1 must be answered with: the key and the
/// offered subprotocols; `None` if it must be refused.
fn model(method: &Method, version: Version, headers: &HeaderMap) -> Option<(Vec<u8>, Vec<String>)> {
    let one = |name: &HeaderName| match values(headers, name).as_slice() {
        [v] => Some(*v),
        _ => None,
    };
    if method != Method::GET || version < Version::HTTP_11 {
        return None;
    }
    if one(&header::HOST)?.is_empty() {
        return None;
    }
    if headers.contains_key(header::TRANSFER_ENCODING)
        || values(headers, &header::CONTENT_LENGTH)
            .iter()
            .any(|v| *v != b"0")
    {
        return None;
    }
    if !has_token(headers, &header::UPGRADE, "websocket")
        || !has_token(headers, &header::CONNECTION, "upgrade")
        || one(&header::SEC_WEBSOCKET_VERSION)? != b"13"
    {
        return None;
    }
    let key = trim_ows(one(&header::SEC_WEBSOCKET_KEY)?);
    if BASE64.decode(key).ok()?.len() != 16 {
        return None;
    }
    let mut protocols = Vec::new();
    for v in values(headers, &header::SEC_WEBSOCKET_PROTOCOL) {
        for item in v.split(|&b| b == b',') {
            let item = trim_ows(item);
            if !is_token(item) {
                return None;
            }
            protocols.push(String::from_utf8(item.to_vec()).ok()?);
        }
    }
    Some((key.to_vec(), protocols))
}

fuzz_target!(|data: &[u8]| {
    let Some((method, version, headers)) = parse_head(data) else {
        return;
    };
    let result = validate(&method, version, &headers);
    let expected = model(&method, version, &headers);
    match (result, expected) {
        (Err(reject), None) => {
            assert!(!reject.reason.is_empty());
            assert!(!reject.to_string().is_empty());
            assert!(!reject.retry_after, "{reject}");
            match reject.status {
                StatusCode::BAD_REQUEST => {}
                StatusCode::UPGRADE_REQUIRED => assert!(
                    values(&headers, &header::SEC_WEBSOCKET_VERSION) != [b"13"],
                    "426 for version 13"
                ),
                _ => panic!("refused with {reject}"),
            }
        }
        (Ok(accepted), Some((key, protocols))) => {
            let mut sha = Sha1::new();
            sha.update(&key);
            sha.update(GUID);
            assert_eq!(accepted.accept, BASE64.encode(sha.finalize()));
            assert_eq!(accepted.offered_protocols, protocols);
        }
        (Err(reject), Some(_)) => panic!("refused ({reject}) a valid request: {headers:?}"),
        (Ok(accepted), None) => panic!("accepted ({accepted:?}) an invalid request: {headers:?}"),
    }
});
