//! Shared test helpers: run the real `wsgate` binary on a config, find its ports, read its log.

pub mod auth;
pub mod backends;
pub mod chromium;
pub mod cli;
pub mod frames;
pub mod ops;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the gateway may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `wsgate` process, killed (by its PID) when dropped.
pub struct Gateway {
    child: Option<Child>,
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// Holds the config file (and anything the test put next to it).
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Write `config` to a temporary directory and start the gateway on it. Listeners should bind
    /// `127.0.0.1:0`; their real addresses are read from the log ("listening addr=...").
    pub async fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        Gateway::start_in(dir, config).await
    }

    /// Like [`start`](Self::start), in a directory the caller prepared (certificates, static files).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, config).expect("write config");
        let listeners = config.matches("[[listener]]").count();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(&path)
            .env(
                "WSGATE_LOG",
                std::env::var("WSGATE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            addrs: Vec::new(),
            log,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let addrs = listening_addrs(&gw.logs());
            if addrs.len() >= listeners {
                gw.addrs = addrs;
                return gw;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("wsgate exited early ({status}):\n{}", gw.logs());
            }
            assert!(
                Instant::now() < deadline,
                "wsgate did not start listening:\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One plain listener on a free loopback port and one route at `path` to `backend`, with the
    /// `[limits]` lines `limits`.
    pub async fn one_route(path: &str, backend: &str, limits: &str) -> Gateway {
        Gateway::start(&format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"{path}\"\nbackend = \"{backend}\"\n\n[limits]\n{limits}\n"
        ))
        .await
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `ws://ADDR/path` for the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle`; panics with the log after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM (by PID) and wait for the exit status, at most `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.pid();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wsgate did not exit after SIGTERM:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parse `listening addr=IP:PORT` lines from the log, in order.
pub fn listening_addrs(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter(|l| {
            l.contains(" listening ")
                && !l.contains("demo backend")
                && !l.contains("admin listening")
        })
        .filter_map(|l| l.split("addr=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// A free loopback port (bind to 0, read it, release it). Only for services whose address must
/// be written into a config before they start (the demo backend); prefer binding to 0 directly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Threads of process `pid` whose name starts with `prefix` (Linux: /proc/PID/task/*/comm).
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}
