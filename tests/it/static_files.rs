//! Plain HTTP requests for files under `[static]` `dir`, over loopback: each file is served whole
//! with the Content-Type of its extension (text types with `charset=utf-8`; fonts, audio and
//! WebAssembly with their registered types, not `application/octet-stream`) and
//! `X-Content-Type-Options: nosniff`, so browsers use what they are told.

use crate::support;
use crate::support::frames;

use frames::{exchange, parse_response};
use support::TestGateway;

/// (file name, expected Content-Type).
const FILES: [(&str, &str); 14] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("module.mjs", "text/javascript; charset=utf-8"),
    ("site.css", "text/css; charset=utf-8"),
    ("logo.svg", "image/svg+xml"),
    ("font.woff", "font/woff"),
    ("font.woff2", "font/woff2"),
    ("font.ttf", "font/ttf"),
    ("font.otf", "font/otf"),
    ("sound.mp3", "audio/mpeg"),
    ("sound.oga", "audio/ogg"),
    ("sound.ogg", "audio/ogg"),
    ("app.wasm", "application/wasm"),
    ("blob.unknownext", "application/octet-stream"),
];

#[tokio::test]
async fn files_are_served_with_their_types_and_nosniff() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    for (i, (name, _)) in FILES.iter().enumerate() {
        // Distinct bytes per file, not all of them text.
        let body: Vec<u8> = format!("{name}:")
            .bytes()
            .chain((0..=255u8).cycle().skip(i).take(300))
            .collect();
        std::fs::write(site.join(name), body).unwrap();
    }
    let gw = TestGateway::start_in(
        dir,
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[static]\ndir = \"site\"\n\n[[route]]\npath = \"/ws\"\nbackend = \"127.0.0.1:9\"\n",
    )
    .await;
    for (name, want) in FILES {
        let request = format!(
            "GET /{name} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr()
        );
        let (bytes, _) = exchange(gw.addr(), request.as_bytes()).await;
        let (resp, head_len) = parse_response(&bytes).unwrap_or_else(|| {
            panic!("{name}: no response: {:?}", String::from_utf8_lossy(&bytes))
        });
        assert_eq!(resp.status, 200, "{name}:\n{}", resp.raw);
        assert_eq!(
            resp.header("content-type"),
            Some(want),
            "{name}:\n{}",
            resp.raw
        );
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{name}:\n{}",
            resp.raw
        );
        let on_disk = std::fs::read(gw.dir.path().join("site").join(name)).unwrap();
        assert_eq!(
            resp.header("content-length"),
            Some(on_disk.len().to_string().as_str()),
            "{name}"
        );
        assert_eq!(&bytes[head_len..], on_disk.as_slice(), "{name}: body");
    }
}
