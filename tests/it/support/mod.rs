//! Shared test helpers: the gateway in-process (`inproc`, most tests) or as a process (`process`), backend stubs, clients (a raw
//! frame-level one in `frames`, tokio-tungstenite in `ops`), the admin HTTP client and metrics
//! parser, JWT signing and the auth service (`auth`), Chromium, and /proc readings.

pub mod auth;
pub mod backends;
pub mod chromium;
pub mod cli;
pub mod fallback;
pub mod frames;
pub mod inproc;
pub mod ops;
pub mod process;
pub mod procfs;

pub use inproc::TestGateway;
pub use process::{Gateway, Opts};

use std::path::{Path, PathBuf};

/// The config text of one plain listener on a free loopback port and one route at `path` to
/// `backend`, with the `[limits]` lines `limits`.
pub fn one_route_config(path: &str, backend: &str, limits: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"{path}\"\nbackend = \"{backend}\"\n\n[limits]\n{limits}\n"
    )
}

/// A free loopback port, for services whose address must be written into a config before they
/// start (the demo backend, HAProxy); prefer binding to 0 directly.
///
/// The port is taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), from a
/// counter shared by the whole test process, and checked free by binding it. A port from the
/// ephemeral range (bind to 0, release) could be taken by any outgoing connection of a concurrent
/// test before the service binds it; one below it can only be taken by an explicit bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let lo = 10_000u32;
    let hi = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(lo + 1_000, 65_535);
    let span = hi - lo;
    // Each test process starts at its own offset, so two test binaries rarely meet.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = lo + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

/// The repository root (for the shipped demo directory and config).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A fresh self-signed certificate for `localhost`, written to `cert.pem` and `key.pem` in `dir`
/// (each through a rename, so that a gateway watching the files never reads a half-written one).
/// Returns the certificate, for clients to trust.
pub fn write_cert(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    for (name, pem) in [
        ("cert.pem", ck.cert.pem()),
        ("key.pem", ck.key_pair.serialize_pem()),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    ck.cert.der().clone()
}
