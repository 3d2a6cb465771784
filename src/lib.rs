//! wsgate: a WebSocket-to-TCP gateway.
//!
//! The data path, one module per stage, in order:
//!
//! ```text
//! server      accept -> (tls, ALPN) -> HTTP/1.1 or HTTP/2 (hyper) -> one answer per request
//! handshake   RFC 6455 §4.2.1 / RFC 8441 validation, Sec-WebSocket-Accept -> 400 / 426
//! server      route lookup (exact, then longest prefix; router.rs)      -> 404
//! auth        Origin policy, credentials, subprotocol selection         -> 403 / 401 / 503
//! target      per-session target: token -> source -> allow-list         -> 400 / 404 / 403 / 503
//! backend     connect (failover), PROXY header, TLS, with a deadline    -> 502 / 503 / 504
//! handshake   101 Switching Protocols, then the session task:
//! dataplane   plain TCP sessions move to a session thread's event loop (the same pump) at their
//!             first word (server::first_word: one that closes at once stays)
//! pump        upstream (client -> backend) and downstream (backend -> client, control events)
//! ws          frame codec: unmasking, limits, UTF-8, control frames      -> 1002 / 1007 / 1009
//!             permessage-deflate: inflate in bounded chunks, bomb guard  -> 1008 / 1009
//! framing     messages <-> backend bytes: raw, lines, length-prefixed    -> 1003 / 1007 / 1011 / 1013
//! error       how a session ends: Closed with one close code, or Cut, and the side that caused it
//! ```
//!
//! `config` turns the file into typed values before anything is bound; `static_files` serves the
//! demo page for plain HTTP requests; `demo` runs the built-in demo backends; `tls` loads
//! certificates during config validation (the listeners' and the backend TLS client's); `origin` parses origins; `outbound` makes the HTTP(S)
//! requests of `auth` and `target` (auth service, token service); `proxy_protocol` encodes the
//! PROXY header for backends and decodes the one a load balancer sends to a listener;
//! `forwarded` finds the real client address behind a trusted proxy (`trusted` ranges,
//! `X-Forwarded-For`, RFC 7239 `Forwarded`); `fallback` carries sessions over plain HTTP requests (streaming or
//! long-polling) for clients without WebSocket, as an in-process WebSocket client of the usual
//! pump; `registry`, `metrics` and `admin` serve the operator's view (live sessions, readiness,
//! Prometheus metrics, the status page); `websockify` turns websockify's command line into a
//! configuration text; `notify` sends systemd's readiness messages (`Type=notify`); `server::upgrade` hands the
//! listening sockets to a new binary (`wsgate --upgrade`); `recording`
//! writes a route's sessions to files (`record = "DIR"`) beside
//! the pump and reads them back for `wsgate replay`.
//!
//! The library's public surface is what the binary, the benchmarks, the fuzz targets and the
//! integration tests use: [`run`], [`run_from_file`], [`run_upgrade_from_file`],
//! [`run_with_listeners`], `config`,
//! `handshake`, `ws`, `proxy_protocol`, `forwarded`, `recording`, and the types they name (`auth`,
//! `origin`); everything else is crate-private.
// Denied everywhere; the one exception (reading a socket into uninitialised memory on a session
// thread, `dataplane::io::recv_into`) is allowed on that function alone, with its reason.
#![deny(unsafe_code)]
// Lengths and counts come from the network and the configuration: narrowing them is explicit
// (the unit tests cut random numbers down to size on purpose).
#![cfg_attr(
    not(test),
    deny(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub(crate) mod admin;
pub mod auth;
pub(crate) mod backend;
pub mod config;
pub(crate) mod dataplane;
pub(crate) mod demo;
pub(crate) mod error;
pub(crate) mod fallback;
pub mod forwarded;
pub(crate) mod framing;
pub mod handshake;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod origin;
pub(crate) mod outbound;
pub mod proxy_protocol;
pub(crate) mod pump;
pub mod recording;
pub(crate) mod registry;
pub(crate) mod server;
pub(crate) mod static_files;
pub mod target;
pub(crate) mod tls;
pub mod websockify;
pub mod ws;

use std::future::Future;

pub use config::Config;
pub use dataplane::start as start_session_threads;
pub use server::{Bound, RunError};

/// Run the gateway on a validated configuration until `shutdown` resolves, then close every
/// session with 1001 and return within the shutdown grace period.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    server::run(config, None, shutdown, None, false).await
}

/// Like [`run`], and sends the bound addresses to `bound` once every listener is bound: for
/// running the gateway inside another program on port-0 binds (the integration tests do).
pub async fn run_with_listeners(
    config: Config,
    shutdown: impl Future<Output = ()>,
    bound: tokio::sync::oneshot::Sender<Bound>,
) -> Result<(), RunError> {
    server::run(config, None, shutdown, Some(bound), false).await
}

/// Like [`run`], for a configuration loaded from `path`: SIGHUP re-reads the file (new
/// connections use the new configuration; open sessions keep theirs), and certificate files are
/// reloaded when they change.
pub async fn run_from_file(
    config: Config,
    path: std::path::PathBuf,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    server::run(config, Some(path), shutdown, None, false).await
}

/// Like [`run_from_file`], started as the successor of the process listening on
/// `[runtime] upgrade_socket` (`wsgate --upgrade`): its listening sockets are taken over, and it
/// drains once this process is ready. An error before then leaves it serving.
pub async fn run_upgrade_from_file(
    config: Config,
    path: std::path::PathBuf,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    server::run(config, Some(path), shutdown, None, true).await
}
