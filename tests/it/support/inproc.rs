//! The gateway in-process: `wsgate::run_with_listeners` spawned on the test's own runtime, on
//! port-0 binds, its addresses read back from what it reports. Dropping it shuts the gateway
//! down. Under `#[tokio::test(start_paused = true)]` the gateway's timers are the test's virtual
//! clock.
//!
//! What the gateway logs is captured while the `TestGateway` lives (text lines, as the binary
//! writes them, filter `wsgate=debug,info`): the capture is the default subscriber of the test's
//! thread, so it sees everything on a current-thread runtime (`#[tokio::test]`'s default).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::one_route_config;

/// Bound on the start (binding and reporting the addresses).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway running in the test's runtime; shut down when dropped.
pub struct TestGateway {
    /// TCP listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// Unix-socket listener paths, in config order.
    pub unix: Vec<PathBuf>,
    /// The admin listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The directory relative paths in the config are resolved against.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    log: Arc<Mutex<String>>,
    _capture: tracing::subscriber::DefaultGuard,
}

/// Appends what the log formatter writes to the shared buffer.
struct Capture(Arc<Mutex<String>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TestGateway {
    /// Parse `config` (panics on an invalid one) and run the gateway on it. Listeners should
    /// bind `127.0.0.1:0`, the admin listener `ops::ADMIN_BIND`.
    pub async fn start(config: &str) -> TestGateway {
        TestGateway::start_in(tempfile::tempdir().expect("tempdir"), config).await
    }

    /// Like [`start`](Self::start), with relative paths resolved against `dir` (certificates,
    /// static files the caller put there).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> TestGateway {
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("WSGATE_TEST_LOG").unwrap_or_else(|_| "wsgate=debug,info".into()),
            ))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        let capture = tracing::subscriber::set_default(subscriber);
        let parsed = wsgate::config::Config::parse(config, dir.path())
            .unwrap_or_else(|e| panic!("invalid test config: {e}\n{config}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let (report, bound) = oneshot::channel();
        let task = tokio::spawn(wsgate::run_with_listeners(
            parsed,
            async move {
                let _ = stopped.await;
            },
            report,
        ));
        let bound = match tokio::time::timeout(START_TIMEOUT, bound).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => match task.await {
                Ok(Err(e)) => panic!("the gateway did not start: {e}"),
                other => panic!("the gateway did not start: {other:?}"),
            },
            Err(_) => panic!("the gateway did not bind within {START_TIMEOUT:?}"),
        };
        TestGateway {
            addrs: bound.listeners,
            unix: bound.unix,
            admin: bound.admin,
            dir,
            stop: Some(stop),
            log,
            _capture: capture,
        }
    }

    /// One plain listener on a free loopback port and one route at `path` to `backend`, with the
    /// `[limits]` lines `limits`.
    pub async fn one_route(path: &str, backend: &str, limits: &str) -> TestGateway {
        TestGateway::start(&one_route_config(path, backend, limits)).await
    }

    /// The first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `ws://ADDR/path` on the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// The admin listener (panics when the config has none).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("no [admin] listener in this config")
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait until `n` log lines contain `needle`; panics with the log after `timeout`.
    pub async fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.lines().filter(|l| l.contains(needle)).count() >= n {
                return logs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "within {timeout:?} the log never had {n} line(s) containing {needle:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the log contains `needle`; panics with the log after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_count(needle, 1, timeout).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
