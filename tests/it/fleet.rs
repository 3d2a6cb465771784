//! A rolling restart of a fleet behind a real HAProxy drops nobody.
//!
//! Three gateways, each in its own network namespace joined to the root namespace by a veth
//! pair, with a `proxy_protocol = "v2"` listener trusting only the root side's address and a
//! built-in echo backend on the namespace's own loopback. HAProxy in the root namespace (`mode
//! tcp`, `balance roundrobin`, `send-proxy-v2`, health checks on each admin port's `/readyz`
//! every 200 ms) fronts them on 127.0.0.1. WebSocket clients keep exchanging numbered messages
//! and reconnect when closed, while each gateway in turn is sent SIGTERM, waited for, started
//! again and waited for until HAProxy has it up. No connection attempt may fail, no stream may
//! skip or repeat a message, every session of a drained gateway must end with its Close, and
//! the access lines must name the client (127.0.0.1, carried by PROXY v2), not HAProxy.
//!
//! Needs root (network namespaces and veth links). `WSGATE_FLEET_CLIENTS` and
//! `WSGATE_FLEET_PAUSE_MS` change the load (`bench/rolling_restart.sh`); the test prints its
//! report as one `fleet report:` line.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::free_port;
use crate::support::ops::{self, WAIT};

/// Gateways in the fleet.
const INSTANCES: usize = 3;
const DEFAULT_CLIENTS: usize = 300;
const DEFAULT_PAUSE_MS: u64 = 50;
/// Ports inside every namespace (each has its own).
const LISTEN_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9090;
const ECHO_PORT: u16 = 7000;
/// How long a client waits for its echo, its handshake answer, or a gateway for its exit.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// How long HAProxy may take to see a gateway go down or come up (checks every 200 ms).
const HAPROXY_WAIT: Duration = Duration::from_secs(10);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// Run `ip ARGS`; `Err` carries its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian package iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A private /24 (10.213.X.0/24) that no interface address or route on this machine uses.
fn free_subnet() -> u8 {
    let addrs = must(ip(&["-4", "-o", "addr", "show"]));
    let routes = must(ip(&["-4", "route", "show", "table", "all"]));
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|k| 20 + (start + k) % 200)
        .find(|x| {
            let prefix = format!("10.213.{x}.");
            !addrs.contains(&prefix) && !routes.contains(&prefix)
        })
        .expect("every 10.213.X.0/24 (X in 20..220) is in use on this machine")
}

/// One gateway's place: its namespace, its veth pair and the addresses at both ends.
struct Slot {
    netns: String,
    /// The root namespace's end of the veth pair: HAProxy's source address.
    host_ip: Ipv4Addr,
    /// The namespace's end: the gateway's listener and admin address.
    ns_ip: Ipv4Addr,
    config: PathBuf,
    process: Option<Child>,
    /// Every start's log file, in order.
    logs: Vec<PathBuf>,
}

impl Slot {
    fn listener(&self) -> SocketAddr {
        SocketAddr::from((self.ns_ip, LISTEN_PORT))
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ns_ip, ADMIN_PORT))
    }
}

/// The namespaces, links and processes of one test: all removed when dropped, also when the
/// test fails (processes killed by PID first, then the links and namespaces deleted).
struct Fleet {
    slots: Vec<Slot>,
    veths: Vec<String>,
    haproxy: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self
            .slots
            .iter_mut()
            .filter_map(|s| s.process.as_mut())
            .chain(self.haproxy.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for veth in &self.veths {
            let _ = ip(&["link", "del", veth]);
        }
        for slot in &self.slots {
            let _ = ip(&["netns", "del", &slot.netns]);
        }
    }
}

impl Fleet {
    /// `n` namespaces `wsgf-PID-1..n`, each with a veth pair to the root namespace (a /30 of
    /// the chosen /24 per pair) and loopback up.
    fn create(n: usize) -> Fleet {
        let pid = std::process::id();
        let mut fleet = Fleet {
            slots: Vec::new(),
            veths: Vec::new(),
            haproxy: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let first = format!("wsgf-{pid}-1");
        if let Err(e) = ip(&["netns", "add", &first]) {
            panic!(
                "this test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): it creates network \
                 namespaces and veth links. Run it as root. {e}"
            );
        }
        let x = free_subnet();
        for i in 0..n {
            let netns = format!("wsgf-{pid}-{}", i + 1);
            let (host_if, ns_if) = (
                format!("wsgf{pid}h{}", i + 1),
                format!("wsgf{pid}n{}", i + 1),
            );
            let base = 4 * u8::try_from(i).expect("few instances");
            let host_ip = Ipv4Addr::new(10, 213, x, base + 1);
            let ns_ip = Ipv4Addr::new(10, 213, x, base + 2);
            let config = fleet.dir.path().join(format!("gw{}.toml", i + 1));
            fleet.slots.push(Slot {
                netns: netns.clone(),
                host_ip,
                ns_ip,
                config,
                process: None,
                logs: Vec::new(),
            });
            if i > 0 {
                must(ip(&["netns", "add", &netns]));
            }
            must(ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &netns,
            ]));
            fleet.veths.push(host_if.clone());
            must(ip(&[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_if,
            ]));
            must(ip(&["link", "set", &host_if, "up"]));
            must(ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_if,
            ]));
            must(ip(&["-n", &netns, "link", "set", &ns_if, "up"]));
            must(ip(&["-n", &netns, "link", "set", "lo", "up"]));
        }
        for slot in &fleet.slots {
            let (ns_ip, host_ip) = (slot.ns_ip, slot.host_ip);
            std::fs::write(
                &slot.config,
                format!(
                    r#"[[listener]]
bind = "{ns_ip}:{LISTEN_PORT}"
proxy_protocol = "v2"
trusted = ["{host_ip}/32"]

[admin]
bind = "{ns_ip}:{ADMIN_PORT}"

[limits]
max_connections_per_ip = 100000
shutdown_grace = "10s"

[[demo_backend]]
bind = "127.0.0.1:{ECHO_PORT}"
kind = "echo"

[[route]]
path = "/echo"
backend = "127.0.0.1:{ECHO_PORT}"
"#
                ),
            )
            .expect("write config");
        }
        fleet
    }

    /// Start gateway `i` in its namespace and wait until its `/readyz` says 200.
    async fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let log = self
            .dir
            .path()
            .join(format!("gw{}-{}.log", i + 1, slot.logs.len() + 1));
        let child = Command::new("ip")
            .args(["netns", "exec", &slot.netns])
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--config")
            .arg(&slot.config)
            .env("WSGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ip netns exec wsgate");
        slot.process = Some(child);
        slot.logs.push(log.clone());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = ops::try_http(slot.admin(), "GET", "/readyz", None).await {
                if r.status == 200 {
                    return;
                }
            }
            let status = slot.process.as_mut().unwrap().try_wait().unwrap();
            assert!(
                status.is_none() && Instant::now() < deadline,
                "gateway {} never got ready (exit {status:?}):\n{}",
                i + 1,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to gateway `i` (by its PID: `ip netns exec` execs the gateway).
    fn terminate(&mut self, i: usize) {
        let pid = self.slots[i].process.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Wait for gateway `i` to exit.
    async fn wait_exit(&mut self, i: usize) -> ExitStatus {
        let deadline = Instant::now() + REPLY_WAIT + Duration::from_secs(5);
        let child = self.slots[i].process.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.slots[i].process = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} did not exit after SIGTERM",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// HAProxy in the root namespace: a TCP frontend on 127.0.0.1 and the gateways as servers.
    async fn start_haproxy(&mut self, clients: usize) -> (SocketAddr, PathBuf) {
        // Room for every client twice (a reconnect may come before HAProxy saw the old one
        // go), within the file descriptors HAProxy may have.
        let maxconn = clients * 2 + 500;
        let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sock = self.dir.path().join("haproxy.sock");
        let mut cfg = format!(
            "global\n    maxconn {maxconn}\n    stats socket {} mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
             timeout server 60s\n    retries 3\n    option redispatch 1\n\n\
             frontend ws\n    bind {front}\n    maxconn {maxconn}\n    default_backend gateways\n\n\
             backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n    \
             http-check expect status 200\n    default-server inter 200ms fall 1 rise 2\n",
            sock.display()
        );
        for (i, slot) in self.slots.iter().enumerate() {
            cfg.push_str(&format!(
                "    server gw{} {} send-proxy-v2 check port {ADMIN_PORT}\n",
                i + 1,
                slot.listener()
            ));
        }
        let path = self.dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).expect("write haproxy.cfg");
        let err = self.dir.path().join("haproxy.err");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("haproxy.err"))
            .spawn()
            .expect("haproxy (Debian package haproxy; scripts/test.sh installs it)");
        self.haproxy = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(front).await.is_err()
            || tokio::net::UnixStream::connect(&sock).await.is_err()
        {
            let status = self.haproxy.as_mut().unwrap().try_wait().unwrap();
            assert!(
                status.is_none() && Instant::now() < deadline,
                "HAProxy never listened on {front} (exit {status:?}):\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (front, sock)
    }
}

/// HAProxy's `show stat` for the backend `gateways`: a map from server name (and `BACKEND`)
/// to its row, by column name.
async fn haproxy_stat(sock: &Path) -> HashMap<String, HashMap<String, String>> {
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .expect("HAProxy stats socket");
    s.write_all(b"show stat\n").await.expect("write stats");
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text))
        .await
        .expect("stats socket answer")
        .expect("read stats");
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .expect("show stat header")
        .split(',')
        .collect();
    lines
        .filter(|l| l.starts_with("gateways,"))
        .map(|l| {
            let row: HashMap<String, String> = header
                .iter()
                .zip(l.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (row["svname"].clone(), row)
        })
        .collect()
}

/// Wait until HAProxy reports server `gwN` in a state starting with `want` (`UP` or `DOWN`;
/// `UP` must be exactly that, not `UP 1/2` going down).
async fn wait_haproxy(sock: &Path, server: &str, want: &str) {
    let start = Instant::now();
    loop {
        let stat = haproxy_stat(sock).await;
        let status = stat
            .get(server)
            .map(|r| r["status"].clone())
            .unwrap_or_default();
        if status == want || (want == "DOWN" && status.starts_with("DOWN")) {
            return;
        }
        assert!(
            start.elapsed() < HAPROXY_WAIT,
            "HAProxy still has {server} {status:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Open,
    /// The gateway's Close, with its code.
    Close(u16),
    /// Ended without a Close, or an echo was missing.
    Dropped(String),
    /// The client ended it at the end of the test.
    Stopped,
}

#[derive(Debug)]
struct Connection {
    /// The client's port towards HAProxy: what PROXY v2 carries, what `/sessions` shows.
    port: u16,
    opened: Instant,
    end: End,
}

#[derive(Default)]
struct Tally {
    attempts: u64,
    refused: Vec<String>,
    connections: Vec<Connection>,
    /// From a Close received to the next session's 101.
    reestablish: Vec<Duration>,
    messages: u64,
    /// Echoes out of order (a gap or a repeat).
    violations: Vec<String>,
}

/// What came back after a message.
enum Reply {
    Data(String),
    Close(u16),
    Broken(String),
}

/// One client: numbered messages, one in flight, `pause` apart; reconnect when closed.
async fn client(
    id: usize,
    front: SocketAddr,
    pause: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let url = format!("ws://{front}/echo");
    let mut closed_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        tally.lock().unwrap().attempts += 1;
        let opened =
            tokio::time::timeout(REPLY_WAIT, tokio_tungstenite::connect_async(url.as_str())).await;
        let mut ws = match opened {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                tally
                    .lock()
                    .unwrap()
                    .refused
                    .push(format!("client {id}: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                tally
                    .lock()
                    .unwrap()
                    .refused
                    .push(format!("client {id}: no handshake answer"));
                continue;
            }
        };
        let index = {
            let mut t = tally.lock().unwrap();
            if let Some(at) = closed_at.take() {
                t.reestablish.push(at.elapsed());
            }
            t.connections.push(Connection {
                port: ops::local_addr(&ws).port(),
                opened: Instant::now(),
                end: End::Open,
            });
            t.connections.len() - 1
        };
        let mut seq = 0u64;
        let end = loop {
            if stop.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(REPLY_WAIT, ws.close(None)).await;
                let _ = tokio::time::timeout(REPLY_WAIT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                break End::Stopped;
            }
            let text = format!("{id}:{seq}");
            if let Err(e) = ws.send(Message::text(text.clone())).await {
                break End::Dropped(format!("send: {e}"));
            }
            let reply = tokio::time::timeout(REPLY_WAIT, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return Reply::Data(t.to_string()),
                        Some(Ok(Message::Binary(b))) => {
                            return Reply::Data(String::from_utf8_lossy(&b).into_owned())
                        }
                        Some(Ok(Message::Close(f))) => {
                            return Reply::Close(f.map_or(1005, |f| u16::from(f.code)))
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Reply::Broken(e.to_string()),
                        None => return Reply::Broken("ended without a Close".into()),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Reply::Broken("no echo within the timeout".into()));
            match reply {
                Reply::Data(t) if t == text => {
                    seq += 1;
                    tally.lock().unwrap().messages += 1;
                }
                Reply::Data(t) => {
                    tally
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("client {id}: sent {text:?}, got {t:?}"));
                    break End::Dropped("out of order".into());
                }
                Reply::Close(code) => {
                    closed_at = Some(Instant::now());
                    // Answer the Close and see the connection end.
                    let _ = tokio::time::timeout(REPLY_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break End::Close(code);
                }
                Reply::Broken(e) => break End::Dropped(e),
            }
            tokio::time::sleep(pause).await;
        };
        tally.lock().unwrap().connections[index].end = end;
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// The rolling restart: every gateway drained with SIGTERM and started again, one after the
/// other, under load through HAProxy; nobody is refused, nothing is lost or repeated, every
/// drained session ends with Close 1001, the access lines name 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_haproxy_drops_nobody() {
    let clients = usize::try_from(env_number("WSGATE_FLEET_CLIENTS", DEFAULT_CLIENTS as u64))
        .expect("WSGATE_FLEET_CLIENTS");
    let pause = Duration::from_millis(env_number("WSGATE_FLEET_PAUSE_MS", DEFAULT_PAUSE_MS));
    let started = Instant::now();
    let mut fleet = Fleet::create(INSTANCES);
    for i in 0..INSTANCES {
        fleet.start(i).await;
    }
    let (front, sock) = fleet.start_haproxy(clients).await;
    for i in 0..INSTANCES {
        wait_haproxy(&sock, &format!("gw{}", i + 1), "UP").await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for id in 0..clients {
        // Spread the first connections over a second.
        let delay = Duration::from_micros(1_000_000 * id as u64 / clients.max(1) as u64);
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            client(id, front, pause, stop, tally).await;
        }));
    }
    let ramp = Instant::now();
    while tally.lock().unwrap().connections.len() < clients {
        assert!(
            ramp.elapsed() < WAIT * 2,
            "the clients did not all connect: {:?}",
            tally
                .lock()
                .unwrap()
                .refused
                .iter()
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Each gateway in turn: the sessions it has, SIGTERM, its exit, HAProxy sees it down, a new
    // start with the same configuration, HAProxy sees it up.
    let mut drained: Vec<(usize, Vec<u16>, Instant)> = Vec::new();
    let mut down_after = Vec::new();
    for i in 0..INSTANCES {
        let r = ops::http(fleet.slots[i].admin(), "GET", "/sessions", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let list: serde_json::Value = serde_json::from_str(&r.body).expect("/sessions JSON");
        let ports: Vec<u16> = list
            .as_array()
            .expect("/sessions array")
            .iter()
            .map(|s| {
                let client: SocketAddr = s["client"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("session client {s}"));
                assert_eq!(
                    client.ip().to_string(),
                    "127.0.0.1",
                    "/sessions of gateway {} names the carried client: {s}",
                    i + 1
                );
                client.port()
            })
            .collect();
        assert!(
            !ports.is_empty(),
            "gateway {} has no sessions before its restart",
            i + 1
        );
        let at = Instant::now();
        fleet.terminate(i);
        let status = fleet.wait_exit(i).await;
        assert!(
            status.success(),
            "gateway {} exited with {status} after SIGTERM:\n{}",
            i + 1,
            std::fs::read_to_string(fleet.slots[i].logs.last().unwrap()).unwrap_or_default()
        );
        let server = format!("gw{}", i + 1);
        wait_haproxy(&sock, &server, "DOWN").await;
        down_after.push(at.elapsed());
        drained.push((i, ports, at));
        fleet.start(i).await;
        wait_haproxy(&sock, &server, "UP").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(REPLY_WAIT * 2, t)
            .await
            .expect("a client did not stop")
            .expect("client task");
    }
    let backend = haproxy_stat(&sock).await;
    let redispatched = backend
        .get("BACKEND")
        .map_or_else(String::new, |r| r["wredis"].clone());

    let t = tally.lock().unwrap();
    let mut reestablish = t.reestablish.clone();
    reestablish.sort();
    let reconnects = t.connections.len().saturating_sub(clients);
    println!(
        "fleet report: clients={clients} instances={INSTANCES} attempts={} refused={} \
         reconnects={reconnects} reestablish_p50_ms={:.1} reestablish_p99_ms={:.1} \
         reestablish_max_ms={:.1} messages={} haproxy_redispatches={redispatched} \
         down_after_max_ms={} seconds={:.1}",
        t.attempts,
        t.refused.len(),
        percentile(&reestablish, 50).as_secs_f64() * 1000.0,
        percentile(&reestablish, 99).as_secs_f64() * 1000.0,
        reestablish
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0,
        t.messages,
        down_after
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_millis(),
        started.elapsed().as_secs_f64(),
    );

    assert!(
        t.refused.is_empty(),
        "{} connection attempts failed, e.g. {:?}",
        t.refused.len(),
        t.refused.iter().take(5).collect::<Vec<_>>()
    );
    assert!(t.violations.is_empty(), "{:?}", t.violations);
    let dropped: Vec<&Connection> = t
        .connections
        .iter()
        .filter(|c| matches!(c.end, End::Dropped(_) | End::Open))
        .collect();
    assert!(
        dropped.is_empty(),
        "connections ended without a Close: {dropped:?}"
    );
    assert!(
        t.messages >= clients as u64,
        "only {} messages exchanged",
        t.messages
    );
    // Every session a drained gateway had ended with its Close 1001 (going away).
    for (i, ports, at) in &drained {
        for port in ports {
            let conn = t
                .connections
                .iter()
                .filter(|c| c.port == *port && c.opened <= *at)
                .max_by_key(|c| c.opened)
                .unwrap_or_else(|| {
                    panic!(
                        "gateway {} had a session of port {port} no client opened",
                        i + 1
                    )
                });
            assert_eq!(
                conn.end,
                End::Close(1001),
                "a session of gateway {} (client port {port})",
                i + 1
            );
        }
    }
    let closes = t
        .connections
        .iter()
        .filter(|c| c.end == End::Close(1001))
        .count();
    let had: usize = drained.iter().map(|(_, p, _)| p.len()).sum();
    assert!(
        closes >= had,
        "{closes} Close 1001 for {had} drained sessions"
    );
    assert_eq!(
        reconnects, closes,
        "every Close was followed by a reconnect"
    );
    drop(t);

    // The access lines: one per session, each naming 127.0.0.1 (from PROXY v2), never the
    // balancer's veth address.
    let mut lines = 0;
    for slot in &fleet.slots {
        for log in &slot.logs {
            let text = std::fs::read_to_string(log).expect("gateway log");
            for line in text.lines().filter(|l| l.contains("session closed")) {
                lines += 1;
                assert!(line.contains("client=127.0.0.1:"), "{line}");
                assert!(!line.contains(&slot.host_ip.to_string()), "{line}");
            }
        }
    }
    assert!(
        lines >= had,
        "{lines} access lines for at least {had} sessions"
    );
}
