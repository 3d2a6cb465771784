//! Static files for plain HTTP requests (the demo page), from the configured `[static]` directory.
//!
//! Owns mapping a request path to a file inside the directory and nowhere else: percent-decoding,
//! refusing `..`, `.`, backslashes and NUL, resolving symlinks and checking the result is still
//! inside the directory. GET and HEAD only (the server checks the method). Files are small and
//! read whole; anything larger than the cap is refused rather than streamed.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::config::StaticFiles;

/// Largest file served, in bytes.
pub const MAX_STATIC_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The response for `path`, or `None` when no file maps to it (the caller answers 404).
pub async fn serve(st: &StaticFiles, path: &str, head_only: bool) -> Option<Response<Full<Bytes>>> {
    let file = resolve(&st.dir, &st.index, path).await?;
    let meta = tokio::fs::metadata(&file).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_STATIC_FILE_BYTES {
        return Some(text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "file too large to serve\n",
        ));
    }
    let body = if head_only {
        Bytes::new()
    } else {
        Bytes::from(tokio::fs::read(&file).await.ok()?)
    };
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Map a request path to a file under `dir` (already canonical), or `None`.
async fn resolve(dir: &Path, index: &str, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let mut out = dir.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return None;
        }
        out.push(segment);
    }
    if decoded.ends_with('/') || out == dir {
        out.push(index);
    }
    // Symlinks may point anywhere: what we serve must really be inside `dir`.
    let real = tokio::fs::canonicalize(&out).await.ok()?;
    if !real.starts_with(dir) {
        return None;
    }
    let real = if tokio::fs::metadata(&real).await.ok()?.is_dir() {
        let idx = tokio::fs::canonicalize(real.join(index)).await.ok()?;
        idx.starts_with(dir).then_some(idx)?
    } else {
        real
    };
    Some(real)
}

/// Decode `%XX` escapes; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/%2e%2e/x").as_deref(), Some("/../x"));
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%2"), None);
        assert_eq!(percent_decode("/%ff"), None);
    }

    #[tokio::test]
    async fn stays_inside_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("site");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "hi").unwrap();
        std::fs::write(root.path().join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.txt"), dir.join("link.txt")).unwrap();
        let dir = dir.canonicalize().unwrap();
        assert_eq!(
            resolve(&dir, "index.html", "/").await,
            Some(dir.join("index.html"))
        );
        assert_eq!(
            resolve(&dir, "index.html", "/index.html").await,
            Some(dir.join("index.html"))
        );
        for bad in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/link.txt",
            "/..%2fsecret.txt",
            "/missing",
            "/a\\b",
        ] {
            assert_eq!(resolve(&dir, "index.html", bad).await, None, "{bad}");
        }
    }
}
