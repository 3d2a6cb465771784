//! The gateway as a process, for what needs one: signals, exit status, `ulimit -n`, the
//! environment, log lines (text or JSON), and measurements of the process (memory, CPU time,
//! threads). Everything else runs the gateway in-process (`TestGateway`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{one_route_config, procfs};

/// How long the gateway may take to bind everything.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start the gateway.
#[derive(Default)]
pub struct Opts {
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
    /// Run it under `ulimit -n <n>`.
    pub fd_limit: Option<u32>,
    /// A directory prepared by the caller (certificates, secrets); a fresh one otherwise.
    pub dir: Option<tempfile::TempDir>,
    /// `WSGATE_LOG` for the child; "wsgate=debug,info" (or `WSGATE_TEST_LOG`) otherwise.
    pub log_filter: Option<String>,
    /// Arguments after `--config PATH` (such as `--upgrade`).
    pub args: Vec<String>,
}

/// A running `wsgate` process, killed (by its PID) when dropped.
pub struct Gateway {
    child: Option<Child>,
    status: Option<ExitStatus>,
    /// Holds the config file (`wsgate.toml`) and anything the test put next to it.
    pub dir: tempfile::TempDir,
    /// WebSocket listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

enum Bound {
    Listener(SocketAddr),
    Admin(SocketAddr),
    /// A unix-socket listener (its path is in the config).
    Unix,
}

/// One "listening" log line, text or JSON.
fn bound(line: &str) -> Option<Bound> {
    if line.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let addr = v.get("addr")?.as_str()?.parse().ok()?;
        return match v.get("message")?.as_str()? {
            "listening" => Some(Bound::Listener(addr)),
            "admin listening" => Some(Bound::Admin(addr)),
            _ => None,
        };
    }
    if line.contains("demo backend") {
        return None;
    }
    if line.contains("listening on unix socket") {
        return Some(Bound::Unix);
    }
    let parse = |rest: &str| rest.split_whitespace().next()?.parse().ok();
    if let Some((_, rest)) = line.split_once("admin listening addr=") {
        return parse(rest).map(Bound::Admin);
    }
    if let Some((_, rest)) = line.split_once(" listening addr=") {
        return parse(rest).map(Bound::Listener);
    }
    None
}

impl Gateway {
    /// Write `config` to a fresh temporary directory (`wsgate.toml`) and start the gateway on
    /// it. Listeners should bind `127.0.0.1:0`, the admin listener
    /// [`ADMIN_BIND`](super::ops::ADMIN_BIND); their real
    /// addresses are read from the log ("listening addr=...", text or JSON).
    pub async fn start(config: &str) -> Gateway {
        Gateway::start_with(config, Opts::default()).await
    }

    /// Like [`start`](Self::start), in a directory the caller prepared (certificates, files).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_with(
            config,
            Opts {
                dir: Some(dir),
                ..Opts::default()
            },
        )
        .await
    }

    /// One plain listener on a free loopback port and one route at `path` to `backend`, with the
    /// `[limits]` lines `limits`.
    pub async fn one_route(path: &str, backend: &str, limits: &str) -> Gateway {
        Gateway::start(&one_route_config(path, backend, limits)).await
    }

    pub async fn start_with(config: &str, opts: Opts) -> Gateway {
        let dir = match opts.dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("tempdir"),
        };
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, config).expect("write config");
        let bin = env!("CARGO_BIN_EXE_wsgate");
        let mut cmd = match opts.fd_limit {
            None => {
                let mut c = Command::new(bin);
                c.arg("--config").arg(&path).args(&opts.args);
                c
            }
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" --config \"$1\""))
                    .arg(bin)
                    .arg(&path);
                c
            }
        };
        let filter = opts.log_filter.unwrap_or_else(|| {
            std::env::var("WSGATE_TEST_LOG").unwrap_or_else(|_| "wsgate=debug,info".into())
        });
        cmd.env("WSGATE_LOG", filter)
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wsgate");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let listeners = config.matches("[[listener]]").count();
        let want_admin = config.lines().any(|l| l.trim() == "[admin]");
        let mut gw = Gateway {
            child: Some(child),
            status: None,
            dir,
            addrs: Vec::new(),
            admin: None,
            log,
            reader: Some(reader),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut addrs = Vec::new();
            let mut admin = None;
            let mut unix = 0;
            for line in gw.logs().lines() {
                match bound(line) {
                    Some(Bound::Listener(a)) => addrs.push(a),
                    Some(Bound::Admin(a)) => admin = Some(a),
                    Some(Bound::Unix) => unix += 1,
                    None => {}
                }
            }
            if addrs.len() + unix >= listeners && (admin.is_some() || !want_admin) {
                gw.addrs = addrs;
                gw.admin = admin;
                return gw;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("wsgate exited early ({status}):\n{}", gw.logs());
            }
            assert!(
                Instant::now() < deadline,
                "wsgate did not start listening within {START_TIMEOUT:?}:\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wsgate.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
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
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.lines().filter(|l| l.contains(needle)).count() >= n {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "within {timeout:?} the log never had {n} line(s) containing {needle:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_count(needle, 1, timeout).await
    }

    /// Send a signal ("TERM", "HUP", ...) to the gateway by PID.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{name} {} failed", self.pid());
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.as_mut().unwrap().try_wait().unwrap();
        }
        self.status
    }

    /// Wait for the process to exit (at most `timeout`), then for the rest of its log.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.try_exit() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "wsgate did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(reader) = self.reader.take() {
            // The pipe is closed now that the process is gone: the reader ends at once.
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        status
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout).await
    }

    /// Total CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        procfs::cpu_time(self.pid())
    }

    /// The process's resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        procfs::rss_bytes(self.pid())
    }

    /// How many file descriptors the process has open.
    pub fn open_fds(&self) -> usize {
        procfs::open_fds(self.pid()).len()
    }

    /// How many descriptor numbers below `limit` (its `ulimit -n`) the process has free: what
    /// it can still open.
    pub fn free_fds(&self, limit: u32) -> usize {
        let open = procfs::open_fds(self.pid());
        (0..limit).filter(|n| !open.contains(n)).count()
    }

    /// Wait until the process has `want` descriptors open, or panic with the count and the log.
    pub async fn wait_for_open_fds(&self, want: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_fds();
            if open == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway has {open} descriptors open, not {want}, after {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many of the process's threads have a name starting with `prefix`.
    pub fn threads_named(&self, prefix: &str) -> usize {
        procfs::threads_named(self.pid(), prefix)
    }

    /// [`Self::threads_named`] once exactly `n` threads have that name, or the count after 10 s.
    /// A thread starts with its creator's name and renames itself once it runs, which on a busy
    /// machine can be a moment later: threads the gateway starts from a worker thread show as
    /// workers at first, and a new thread may not have its name yet.
    pub async fn threads_named_settled(&self, prefix: &str, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.threads_named(prefix);
            if count == n || Instant::now() >= deadline {
                return count;
            }
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
