//! The status page the admin listener serves at `GET /`: one self-contained HTML file
//! (`assets/status.html`, compiled in, its CSS and script inline) and the headers that lock it
//! down. The page holds no data: it fetches `/status`, `/metrics` and `/sessions` itself, with the
//! admin token the operator types into it, so serving it needs no token.
//!
//! The Content-Security-Policy allows exactly the page's one inline script and one inline style
//! sheet by their SHA-256 hashes (computed once from the compiled-in file), fetches to the admin
//! listener itself, and nothing else.

use std::sync::LazyLock;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The page, as shipped in `assets/status.html`.
pub const PAGE: &str = include_str!("../../assets/status.html");

/// The text between the first `open` tag and the next `close` tag.
fn inline<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    Some(&page[start..start + len])
}

/// `'sha256-BASE64'` of `text`, the CSP source that allows exactly that inline element.
fn hash_source(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page's Content-Security-Policy.
pub fn csp(page: &str) -> String {
    // A page without its script or style gets no allowance for them ('none').
    let source =
        |open, close| inline(page, open, close).map_or_else(|| "'none'".to_string(), hash_source);
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source("<script>", "</script>"),
        source("<style>", "</style>"),
    )
}

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    // Hashes are base64: always a valid header value.
    HeaderValue::from_str(&csp(PAGE))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// The page with its headers.
pub fn response() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_one_inline_script_and_style_and_nothing_external() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        for external in ["src=", "href=", "@import", "url(", "https://"] {
            assert!(!PAGE.contains(external), "the page names {external:?}");
        }
        // The one address in it is the SVG namespace, which is never fetched.
        assert_eq!(
            PAGE.matches("http://").count(),
            PAGE.matches("'http://www.w3.org/2000/svg'").count()
        );
        // Inline attributes the policy would block: handlers and style attributes.
        for blocked in [" onclick=", " onload=", " style=", "innerHTML", "outerHTML"] {
            assert!(!PAGE.contains(blocked), "the page uses {blocked:?}");
        }
    }

    #[test]
    fn csp_allows_exactly_the_inline_script_and_style() {
        let policy = csp(PAGE);
        let script = inline(PAGE, "<script>", "</script>").expect("script");
        let style = inline(PAGE, "<style>", "</style>").expect("style");
        assert!(script.contains("fetch("));
        assert!(style.contains("font-variant-numeric: tabular-nums"));
        assert!(policy.starts_with("default-src 'none'; "), "{policy}");
        assert!(
            policy.contains(&format!("script-src {};", hash_source(script))),
            "{policy}"
        );
        assert!(
            policy.contains(&format!("style-src {};", hash_source(style))),
            "{policy}"
        );
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1), base64.
        assert_eq!(
            hash_source("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
    }

    #[test]
    fn a_page_without_script_gets_none() {
        let policy = csp("<!doctype html><p>plain</p>");
        assert!(policy.contains("script-src 'none';"), "{policy}");
        assert!(policy.contains("style-src 'none';"), "{policy}");
    }
}
