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
    h.insert(header::CONTENT_TYPE, content_type(&file));
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

/// Extensions whose registered type is newer than the `mime_guess` table's entry: RFC 8081
/// (fonts) and RFC 9239 (JavaScript modules).
const NEWER_TYPES: [(&str, &str); 3] = [
    ("woff", "font/woff"),
    ("otf", "font/otf"),
    ("mjs", "text/javascript"),
];

/// The `Content-Type` of a file, from its extension (the `mime_guess` table, which follows the
/// IANA registry and the common server maps, with [`NEWER_TYPES`] first): text types carry
/// `; charset=utf-8`; an unknown extension is `application/octet-stream`.
fn content_type(path: &Path) -> HeaderValue {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mime = NEWER_TYPES
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .and_then(|(_, t)| t.parse::<mime_guess::Mime>().ok())
        .unwrap_or_else(|| mime_guess::from_path(path).first_or_octet_stream());
    let value = if mime.type_() == mime_guess::mime::TEXT {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
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

    #[test]
    fn content_types() {
        for (name, want) in [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("mod.mjs", "text/javascript; charset=utf-8"),
            ("site.css", "text/css; charset=utf-8"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("data.json", "application/json"),
            ("logo.svg", "image/svg+xml"),
            ("font.woff", "font/woff"),
            ("font.woff2", "font/woff2"),
            ("font.ttf", "font/ttf"),
            ("font.otf", "font/otf"),
            ("FONT.WOFF2", "font/woff2"),
            ("sound.mp3", "audio/mpeg"),
            ("sound.oga", "audio/ogg"),
            ("sound.ogg", "audio/ogg"),
            ("app.wasm", "application/wasm"),
            ("blob.unknownext", "application/octet-stream"),
            ("no-extension", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), want, "{name}");
        }
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
