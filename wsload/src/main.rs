//! wsload: a small, cheap load generator for WebSocket (`ws://`, `wss://`) and plain TCP
//! (`tcp://`) echo endpoints.
//!
//! Modes:
//! - `echo` (default): N connections, each keeping K messages of SIZE bytes in flight; a message
//!   is complete when all its payload bytes have come back, counted across frames (a byte-stream
//!   bridge may re-chunk). Reports messages/s, payload MB/s and latency percentiles (HDR).
//! - `handshake`: N workers each opening a new connection per "message" (TCP, TLS, upgrade) and
//!   closing it; reports handshakes/s and handshake latency.
//! - `idle`: open N connections, hold them, close them; reports only successes and failures (and,
//!   with `--server-pid`, the server tree's RSS before and after).
//!
//! With `--server-pid PID` (and `--backend-pid PID`), wsload samples the CPU time and RSS of that
//! process and all its descendants from /proc at the start and end of the measurement window.
//! `--json` prints one JSON object on stdout instead of the human summary.
//!
//! The WebSocket client is written by hand (RFC 6455 §4.1 upgrade, masked frames with a zero
//! key by default, which is legal and makes masking free; server frames are counted, not copied;
//! Pings are answered) so that the client costs little next to the servers it measures.
//!
//! `--http2` (ws:// only, modes echo and idle) carries every session as an extended CONNECT
//! stream (RFC 8441) on one HTTP/2 connection with prior knowledge (h2c), or on
//! `--http2-connections` of them. `--deflate` offers permessage-deflate (RFC 7692): when the
//! server accepts, each message is compressed as it is sent and compressed messages received are
//! inflated to count them. `--text-json` sends JSON-like text, which compresses as real traffic.

mod client;
mod fallback;
mod frames;
mod procfs;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use client::{Connector, ConnectorOptions, Stream, Target};
use procfs::TreeSample;

/// Read buffer of an echo connection.
const READ_BUF: usize = 64 * 1024;
/// Read buffer of a handshake or idle connection (response head, control frames).
const SMALL_BUF: usize = 4 * 1024;
/// Highest latency the histograms track (larger values are clamped), nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// How many distinct error messages the report lists.
const ERROR_KINDS_SHOWN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Echo,
    Handshake,
    Idle,
}

#[derive(Debug, Parser)]
#[command(
    name = "wsload",
    version,
    about = "Load generator for ws://, wss:// and tcp:// echo endpoints",
    after_help = "Examples:\n  \
      wsload ws://127.0.0.1:8080/echo -c 50 -s 64 -d 5 --warmup 1\n  \
      wsload wss://127.0.0.1:8443/echo --insecure -c 1 -s 64KiB -k 4 -d 5 --json\n  \
      wsload ws://127.0.0.1:8080/echo --mode handshake -c 8 -d 5\n  \
      wsload ws://127.0.0.1:8080/echo --mode idle -c 10000 -d 5 --server-pid 1234 --json"
)]
struct Args {
    /// Echo endpoint: ws://HOST:PORT/PATH, wss://HOST:PORT/PATH or tcp://HOST:PORT
    url: String,
    /// What to measure
    #[arg(long, value_enum, default_value = "echo")]
    mode: Mode,
    /// Connections (echo, idle) or concurrent handshake workers (handshake)
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Message payload size: bytes, or with a unit (KiB, MiB)
    #[arg(short = 's', long, default_value = "64", value_parser = parse_size)]
    size: usize,
    /// Send text messages (ASCII payload)
    #[arg(long, conflicts_with = "binary")]
    text: bool,
    /// Send binary messages (the default)
    #[arg(long)]
    binary: bool,
    /// Send text messages of JSON-like records (compressible) instead of the letter sequence
    #[arg(long, conflicts_with = "binary")]
    text_json: bool,
    /// ws:// over HTTP/2 with prior knowledge (h2c): every session is an extended CONNECT stream
    /// on one shared connection (echo and idle modes)
    #[arg(long)]
    http2: bool,
    /// With --http2: spread the sessions over this many HTTP/2 connections
    #[arg(long, default_value_t = 1)]
    http2_connections: usize,
    /// Offer permessage-deflate; when accepted, compress every message sent
    #[arg(long)]
    deflate: bool,
    /// Idle mode: each session sends one message (compressed with --deflate) after opening
    #[arg(long)]
    idle_send: bool,
    /// Idle mode: open wsgate fallback sessions (HTTP streaming or long-polling) instead of
    /// WebSocket ones, and hold them as a browser without WebSocket does
    #[arg(long, value_enum, conflicts_with_all = ["http2", "deflate", "idle_send"])]
    fallback: Option<fallback::Transport>,
    /// Messages outstanding per connection (echo)
    #[arg(short = 'k', long, default_value_t = 1)]
    in_flight: usize,
    /// Measurement time in seconds (default 5 unless --messages is given; idle: hold time)
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Stop after this many messages (or handshakes) in total, after the warm-up
    #[arg(short = 'n', long)]
    messages: Option<u64>,
    /// Warm-up seconds before measuring (traffic flows, nothing is recorded)
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Tokio worker threads (1: a current-thread runtime)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// wss://: accept any server certificate
    #[arg(long)]
    insecure: bool,
    /// wss://: trust the PEM certificates in FILE instead of the public roots
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// wss://: allow TLS session resumption (default: every handshake is a full one)
    #[arg(long)]
    tls_resume: bool,
    /// Offer this subprotocol (repeatable), e.g. `binary` for websockify
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Send an Origin header
    #[arg(long)]
    origin: Option<String>,
    /// Extra request header "Name: value" (repeatable)
    #[arg(long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Mask with a random key per connection (default: the all-zero key)
    #[arg(long)]
    random_mask: bool,
    /// Seconds allowed for one connection to open (TCP + TLS + upgrade)
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Hard limit on the whole run in seconds (default: warm-up + duration + 10, or 120 with
    /// --messages only)
    #[arg(long)]
    timeout: Option<f64>,
    /// Connections opened at the same time (idle mode)
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// Idle mode: seconds to wait after the last connection opened before sampling RSS
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Sample CPU and RSS of this process tree (repeatable): the server under test
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Sample CPU and RSS of this process tree too (repeatable): the backend behind a proxy
    #[arg(long = "backend-pid", value_name = "PID")]
    backend_pids: Vec<u32>,
    /// Allow a target that is not a loopback address (by default wsload only loads this machine)
    #[arg(long)]
    allow_remote: bool,
    /// Free-form label copied into the JSON output
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON object instead of the human summary
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        _ => return Err(format!("bad size unit in {s:?} (use B, KiB, MiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("histogram bounds")
}

/// Everything one connection (or handshake worker) measured.
struct ConnResult {
    hist: Histogram<u64>,
    messages: u64,
    errors: Vec<String>,
    last_done: Option<Instant>,
}

impl ConnResult {
    fn new(with_histogram: bool) -> ConnResult {
        ConnResult {
            hist: if with_histogram {
                new_histogram()
            } else {
                Histogram::new_with_bounds(1, 2, 1).expect("histogram")
            },
            messages: 0,
            errors: Vec::new(),
            last_done: None,
        }
    }
}

/// The time plan of a run, fixed once every connection is open.
struct Plan {
    /// End of the warm-up: from here on, completions are recorded.
    meas_start: Instant,
    /// End of the measurement (duration mode), or the hard deadline (count mode).
    meas_end: Instant,
    /// With --messages: messages still to start after the warm-up.
    budget: Option<AtomicI64>,
    /// Only --messages limits the run: reaching `meas_end` (the hard deadline) is an error.
    count_mode: bool,
    /// The hard deadline of the run.
    hard: Instant,
    /// Connections that stopped (done or failed) and wait for `release` before closing.
    finished: AtomicUsize,
    /// Cancelled once the end sample of the server trees is taken: only then do connections
    /// close, so that per-connection server processes are still alive when sampled.
    release: CancellationToken,
}

impl Plan {
    /// The plan of a run whose measurement starts at `meas_start` (after the warm-up) and that
    /// must end by `hard`: `--duration` ends it earlier, `--messages` limits what is sent.
    fn new(args: &Args, meas_start: Instant, hard: Instant) -> Arc<Plan> {
        let duration = measure_duration(args);
        Arc::new(Plan {
            meas_start,
            meas_end: match duration {
                Some(d) => (meas_start + secs(d)).min(hard),
                None => hard,
            },
            budget: args.messages.map(|n| AtomicI64::new(n as i64)),
            count_mode: duration.is_none(),
            hard,
            finished: AtomicUsize::new(0),
            release: CancellationToken::new(),
        })
    }

    /// Seconds measured: the measurement window, or in count mode up to the last completion.
    fn elapsed(&self, last_done: Option<Instant>) -> f64 {
        let end = if self.count_mode {
            last_done.unwrap_or(self.meas_start)
        } else {
            self.meas_end
        };
        end.saturating_duration_since(self.meas_start).as_secs_f64()
    }

    /// May a connection start another message at `now`?
    fn may_send(&self, now: Instant) -> bool {
        if now >= self.meas_end {
            return false;
        }
        match &self.budget {
            Some(b) if now >= self.meas_start => b.fetch_sub(1, Ordering::Relaxed) > 0,
            _ => true,
        }
    }
}

/// What every connection shares.
struct Shared {
    connector: Connector,
    size: usize,
    in_flight: usize,
    text: bool,
    /// `--text-json`: the payload is JSON-like records.
    json_payload: bool,
    /// `--idle-send`: idle sessions send one message first.
    idle_send: bool,
    /// `--fallback`: idle sessions use wsgate's fallback transport.
    fallback: Option<fallback::Transport>,
    random_mask: bool,
    seed: u64,
    /// Sessions on which permessage-deflate was negotiated.
    deflated: AtomicUsize,
}

impl Shared {
    fn mask_key(&self, conn: usize) -> [u8; 4] {
        if self.random_mask {
            let x = client::xorshift(self.seed ^ (conn as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            let b = x.to_le_bytes();
            [b[0], b[1], b[2], b[3]]
        } else {
            [0; 4]
        }
    }

    /// `in_flight` copies of the message as it goes on the wire, and the length of one.
    fn payload(&self) -> Vec<u8> {
        if self.json_payload {
            frames::json_payload(self.size)
        } else {
            frames::payload(self.size)
        }
    }

    fn opcode(&self) -> u8 {
        if self.text {
            0x1
        } else {
            0x2
        }
    }

    /// How the sessions were carried, for the reports.
    fn transport_line(&self, args: &Args) -> String {
        let mut s = String::new();
        if args.http2 {
            s.push_str(&format!(
                "  transport    HTTP/2 (h2c, extended CONNECT), {} connection(s)\n",
                args.http2_connections
            ));
        }
        if args.deflate {
            s.push_str(&format!(
                "  deflate      offered; negotiated on {} session(s)\n",
                self.deflated.load(Ordering::Relaxed)
            ));
        }
        s
    }

    fn batch(&self, key: [u8; 4]) -> (Vec<u8>, usize) {
        let payload = self.payload();
        let one = if self.connector.target.is_ws() {
            let mut v = Vec::new();
            frames::push_frame(&mut v, self.opcode(), &payload, key);
            v
        } else {
            payload
        };
        let len = one.len();
        (one.repeat(self.in_flight), len)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.in_flight == 0 || args.threads == 0 {
        eprintln!("wsload: --connections, --in-flight and --threads must be at least 1");
        return ExitCode::from(2);
    }
    if args.mode == Mode::Echo && args.size == 0 {
        eprintln!("wsload: --size must be at least 1 byte");
        return ExitCode::from(2);
    }
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsload: {e}");
            return ExitCode::from(2);
        }
    };
    if !target.addr.ip().is_loopback() && !args.allow_remote {
        eprintln!(
            "wsload: {} is not a loopback address; pass --allow-remote to load another machine",
            target.addr.ip()
        );
        return ExitCode::from(2);
    }
    if args.http2 && (target.scheme != client::Scheme::Ws || args.mode == Mode::Handshake) {
        eprintln!("wsload: --http2 supports ws:// URLs in modes echo and idle");
        return ExitCode::from(2);
    }
    if args.fallback.is_some() && (target.scheme != client::Scheme::Ws || args.mode != Mode::Idle) {
        eprintln!("wsload: --fallback supports ws:// URLs in idle mode");
        return ExitCode::from(2);
    }
    if args.http2 && args.http2_connections == 0 {
        eprintln!("wsload: --http2-connections must be at least 1");
        return ExitCode::from(2);
    }
    let mut headers = args.headers.clone();
    if let Some(o) = &args.origin {
        headers.push(format!("Origin: {o}"));
    }
    let connector = match Connector::new(
        target,
        ConnectorOptions {
            insecure: args.insecure,
            ca: args.ca.clone(),
            tls_resume: args.tls_resume,
            subprotocols: args.subprotocols.clone(),
            headers,
            connect_timeout: secs(args.connect_timeout),
            http2_connections: if args.http2 {
                args.http2_connections
            } else {
                0
            },
            deflate: args.deflate,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsload: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsload: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let shared = Arc::new(Shared {
        connector,
        size: args.size,
        in_flight: args.in_flight,
        text: args.text || args.text_json,
        json_payload: args.text_json,
        idle_send: args.idle_send,
        fallback: args.fallback,
        random_mask: args.random_mask,
        seed,
        deflated: AtomicUsize::new(0),
    });
    let report = runtime.block_on(async {
        match args.mode {
            Mode::Echo => run_echo(&args, shared).await,
            Mode::Handshake => run_handshake(&args, shared).await,
            Mode::Idle => run_idle(&args, shared).await,
        }
    });
    // Connections still lingering (timeouts) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(200));
    if args.json {
        println!("{}", report.json);
    } else {
        print!("{}", report.human);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

struct Report {
    json: serde_json::Value,
    human: String,
    ok: bool,
}

/// Process-tree samples at the start and end of the measurement.
#[derive(Default)]
struct Samples {
    server: (Option<TreeSample>, Option<TreeSample>),
    backend: (Option<TreeSample>, Option<TreeSample>),
    client_cpu: (f64, f64),
    machine_busy: (Option<f64>, Option<f64>),
}

impl Samples {
    fn take(args: &Args) -> (Option<TreeSample>, Option<TreeSample>, f64) {
        (
            procfs::sample_trees(&args.server_pids),
            procfs::sample_trees(&args.backend_pids),
            procfs::self_cpu_s(),
        )
    }
    fn start(&mut self, args: &Args) {
        let (s, b, c) = Samples::take(args);
        self.server.0 = s;
        self.backend.0 = b;
        self.client_cpu.0 = c;
        self.machine_busy.0 = procfs::machine_busy_s();
    }
    fn end(&mut self, args: &Args) {
        let (s, b, c) = Samples::take(args);
        self.server.1 = s;
        self.backend.1 = b;
        self.client_cpu.1 = c;
        self.machine_busy.1 = procfs::machine_busy_s();
    }

    /// Busy CPU seconds of the whole machine during the window.
    fn machine_busy_s(&self) -> Option<f64> {
        match self.machine_busy {
            (Some(a), Some(b)) => Some(round3((b - a).max(0.0))),
            _ => None,
        }
    }
}

fn tree_json(pair: &(Option<TreeSample>, Option<TreeSample>), messages: u64) -> serde_json::Value {
    match pair {
        (Some(a), Some(b)) => {
            let cpu = (b.cpu_s - a.cpu_s).max(0.0);
            serde_json::json!({
                "cpu_s": round3(cpu),
                "cpu_s_per_million": if messages > 0 {
                    serde_json::json!(round3(cpu * 1e6 / messages as f64))
                } else {
                    serde_json::Value::Null
                },
                "rss_kib_start": a.rss_kib,
                "rss_kib_end": b.rss_kib,
                "pss_kib_start": a.pss_kib,
                "pss_kib_end": b.pss_kib,
                "procs_start": a.procs,
                "procs_end": b.procs,
            })
        }
        _ => serde_json::Value::Null,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Merge the per-connection results: histogram, counts, error kinds.
struct Totals {
    hist: Histogram<u64>,
    messages: u64,
    errors: u64,
    error_kinds: Vec<(String, u64)>,
    last_done: Option<Instant>,
}

fn merge(results: Vec<ConnResult>, extra_errors: Vec<String>) -> Totals {
    let mut hist = new_histogram();
    let mut messages = 0;
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let mut errors = 0;
    let mut last_done: Option<Instant> = None;
    for r in results {
        if !r.hist.is_empty() {
            let _ = hist.add(&r.hist);
        }
        messages += r.messages;
        for e in r.errors {
            errors += 1;
            *kinds.entry(e).or_default() += 1;
        }
        last_done = match (last_done, r.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    for e in extra_errors {
        errors += 1;
        *kinds.entry(e).or_default() += 1;
    }
    let mut error_kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    error_kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    error_kinds.truncate(ERROR_KINDS_SHOWN);
    Totals {
        hist,
        messages,
        errors,
        error_kinds,
        last_done,
    }
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    let us = |ns: u64| round3(ns as f64 / 1000.0);
    serde_json::json!({
        "min": us(h.min()),
        "mean": round3(h.mean() / 1000.0),
        "p50": us(h.value_at_quantile(0.5)),
        "p90": us(h.value_at_quantile(0.9)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "  latency      (no samples)\n".into();
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "  latency us   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    )
}

fn common_json(args: &Args, shared: &Shared) -> serde_json::Value {
    serde_json::json!({
        "label": args.label,
        "mode": args.mode,
        "url": args.url,
        "connections": args.connections,
        "size": shared.size,
        "in_flight": shared.in_flight,
        "text": shared.text,
        "threads": args.threads,
        "warmup_s": args.warmup,
        "http2": args.http2,
        "http2_connections": if args.http2 { args.http2_connections } else { 0 },
        "deflate_offered": args.deflate,
        "deflate_sessions": shared.deflated.load(Ordering::Relaxed),
        "text_json": shared.json_payload,
    })
}

fn errors_human(t: &Totals) -> String {
    let mut s = format!("  errors       {}\n", t.errors);
    for (e, n) in &t.error_kinds {
        s.push_str(&format!("               {n} x {e}\n"));
    }
    s
}

fn trees_human(samples: &Samples, messages: u64) -> String {
    let mut s = String::new();
    for (name, pair) in [("server", &samples.server), ("backend", &samples.backend)] {
        if let (Some(a), Some(b)) = pair {
            let cpu = (b.cpu_s - a.cpu_s).max(0.0);
            s.push_str(&format!(
                "  {name:<7} cpu {cpu:.2} s ({} procs){}, rss {} -> {} KiB\n",
                b.procs,
                if messages > 0 {
                    format!(
                        ", {:.2} s per million messages",
                        cpu * 1e6 / messages as f64
                    )
                } else {
                    String::new()
                },
                a.rss_kib,
                b.rss_kib
            ));
        }
    }
    s
}

/// The hard deadline of the run, from its start.
fn hard_limit(args: &Args, default_duration: f64) -> Duration {
    match (args.timeout, args.duration, args.messages) {
        (Some(t), _, _) => secs(t),
        (None, None, Some(_)) => secs(args.warmup + 120.0),
        (None, d, _) => secs(args.warmup + d.unwrap_or(default_duration) + 10.0),
    }
}

fn measure_duration(args: &Args) -> Option<f64> {
    match (args.duration, args.messages) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(5.0),
    }
}

// ---------------------------------------------------------------------------------------------
// echo

async fn run_echo(args: &Args, shared: Arc<Shared>) -> Report {
    let started = Instant::now();
    let hard = started + hard_limit(args, 5.0);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(args.connections);
    let (go_tx, go_rx) = watch::channel::<Option<Arc<Plan>>>(None);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (sh, ready, go) = (shared.clone(), ready_tx.clone(), go_rx.clone());
        tasks.push(tokio::spawn(echo_conn(i, sh, ready, go)));
    }
    drop(ready_tx);
    let mut opened = 0usize;
    let open_deadline = started + shared.connector.connect_timeout + Duration::from_secs(5);
    for _ in 0..args.connections {
        match tokio::time::timeout_at(open_deadline, ready_rx.recv()).await {
            Ok(Some(ok)) => opened += usize::from(ok),
            _ => break,
        }
    }
    let t0 = Instant::now();
    let meas_start = t0 + secs(args.warmup);
    let plan = Plan::new(args, meas_start, hard);
    let _ = go_tx.send(Some(plan.clone()));

    let mut samples = Samples::default();
    tokio::time::sleep_until(meas_start).await;
    samples.start(args);
    if !plan.count_mode {
        tokio::time::sleep_until(plan.meas_end).await;
    } else {
        // Count mode: until every open connection is done (or the hard deadline).
        while plan.finished.load(Ordering::Acquire) < opened && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    samples.end(args);
    plan.release.cancel();
    let (results, extra) = join_all(tasks, plan.meas_end.max(hard) + Duration::from_secs(2)).await;
    let totals = merge(results, extra);
    let elapsed = plan.elapsed(totals.last_done);
    let rate = if elapsed > 0.0 {
        totals.messages as f64 / elapsed
    } else {
        0.0
    };
    let mbps = rate * shared.size as f64 / 1e6;
    let client_cpu = samples.client_cpu.1 - samples.client_cpu.0;

    let mut json = common_json(args, &shared);
    let obj = json.as_object_mut().expect("object");
    obj.insert("connections_opened".into(), opened.into());
    obj.insert("elapsed_s".into(), round3(elapsed).into());
    obj.insert("messages".into(), totals.messages.into());
    obj.insert("msgs_per_s".into(), round3(rate).into());
    obj.insert("payload_mb_per_s".into(), round3(mbps).into());
    obj.insert("latency_us".into(), latency_json(&totals.hist));
    obj.insert("errors".into(), totals.errors.into());
    obj.insert("error_kinds".into(), serde_json::json!(totals.error_kinds));
    obj.insert("client_cpu_s".into(), round3(client_cpu).into());
    obj.insert("machine_busy_cpu_s".into(), samples.machine_busy_s().into());
    obj.insert("server".into(), tree_json(&samples.server, totals.messages));
    obj.insert(
        "backend".into(),
        tree_json(&samples.backend, totals.messages),
    );

    let mut human = format!(
        "wsload echo {}  connections={} size={} B in-flight={} {} threads={}\n",
        args.url,
        args.connections,
        shared.size,
        shared.in_flight,
        if shared.text { "text" } else { "binary" },
        args.threads
    );
    human.push_str(&shared.transport_line(args));
    human.push_str(&format!(
        "  messages     {} in {:.2} s = {:.0} msg/s, {:.2} MB/s payload (each way)\n",
        totals.messages, elapsed, rate, mbps
    ));
    human.push_str(&latency_line(&totals.hist));
    human.push_str(&errors_human(&totals));
    human.push_str(&format!(
        "  client cpu   {:.2} s ({:.0} % of one core)\n",
        client_cpu,
        if elapsed > 0.0 {
            client_cpu * 100.0 / elapsed
        } else {
            0.0
        }
    ));
    human.push_str(&trees_human(&samples, totals.messages));
    Report {
        json,
        human,
        ok: totals.errors == 0 && totals.messages > 0,
    }
}

/// Wait for every task until `deadline`; tasks still running then are aborted and counted as
/// errors.
async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<ConnResult>>,
    deadline: Instant,
) -> (Vec<ConnResult>, Vec<String>) {
    let mut results = Vec::with_capacity(tasks.len());
    let mut extra = Vec::new();
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => extra.push(format!("task failed: {e}")),
            Err(_) => {
                t.abort();
                extra.push("run timeout".into());
            }
        }
    }
    (results, extra)
}

async fn echo_conn(
    id: usize,
    sh: Arc<Shared>,
    ready: mpsc::Sender<bool>,
    mut go: watch::Receiver<Option<Arc<Plan>>>,
) -> ConnResult {
    let mut res = ConnResult::new(true);
    let mut rbuf = vec![0u8; READ_BUF];
    let opened = sh.connector.open_ext(&mut rbuf, sh.seed ^ id as u64).await;
    let _ = ready.send(opened.is_ok()).await;
    drop(ready);
    let (stream, rlen, deflate) = match opened {
        Ok(x) => x,
        Err(e) => {
            res.errors.push(e);
            return res;
        }
    };
    let plan = match go.wait_for(Option::is_some).await {
        Ok(p) => p.clone().expect("plan"),
        Err(_) => return res,
    };
    let key = sh.mask_key(id);
    let (batch, frame_len) = sh.batch(key);
    if deflate.is_some() {
        sh.deflated.fetch_add(1, Ordering::Relaxed);
    }
    let payload = sh.payload();
    let mut conn = EchoConn {
        sh: &sh,
        plan: &plan,
        key,
        batch: &batch,
        frame_len,
        deflate: deflate.map(|d| {
            (
                frames::Deflater::new(d.client_max_window_bits, d.client_no_context_takeover),
                payload,
            )
        }),
        res: &mut res,
    };
    match stream {
        Stream::Plain(s) => {
            let (r, w) = s.into_split();
            conn.run(r, w, rbuf, rlen).await;
        }
        Stream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            conn.run(r, w, rbuf, rlen).await;
        }
        Stream::H2(s) => {
            let (r, w) = tokio::io::split(*s);
            conn.run(r, w, rbuf, rlen).await;
        }
    }
    res
}

struct EchoConn<'a> {
    sh: &'a Shared,
    plan: &'a Plan,
    key: [u8; 4],
    batch: &'a [u8],
    frame_len: usize,
    /// permessage-deflate negotiated: the compressor and the message it compresses each time.
    deflate: Option<(frames::Deflater, Vec<u8>)>,
    res: &'a mut ConnResult,
}

impl EchoConn<'_> {
    /// Keep `in_flight` messages outstanding until the plan says stop; read and write at the
    /// same time so that no amount in flight can deadlock against the server's buffers.
    async fn run<R, W>(&mut self, mut rd: R, mut wr: W, rbuf: Vec<u8>, rlen: usize)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let clean = self.pump(&mut rd, &mut wr, rbuf, rlen).await;
        self.plan.finished.fetch_add(1, Ordering::AcqRel);
        // Stay connected until the server trees have been sampled (bounded by the hard deadline).
        tokio::select! {
            _ = self.plan.release.cancelled() => {}
            _ = tokio::time::sleep_until(self.plan.hard) => {}
        }
        // Say goodbye at a frame boundary (best effort, bounded).
        if clean && self.sh.connector.target.is_ws() {
            let close = frames::close_frame(self.key);
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                wr.write_all(&close).await?;
                wr.shutdown().await?;
                // Until the server's end: an HTTP/2 stream dropped before it would be reset.
                drain(&mut rd).await
            })
            .await;
        }
    }

    /// Returns whether the connection ended at a frame boundary without error.
    async fn pump<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        mut rbuf: Vec<u8>,
        mut rlen: usize,
    ) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let ws = self.sh.connector.target.is_ws();
        let size = self.sh.size as u64;
        let k = self.sh.in_flight;
        let frame_len = self.frame_len;
        let mut sent: VecDeque<Instant> = VecDeque::with_capacity(k);
        // Whole frames queued and not yet fully written; bytes of the first already written.
        let mut queued = 0usize;
        let mut partial = 0usize;
        // Pongs (and the final Close) to write at the next frame boundary.
        let mut control: Vec<u8> = Vec::new();
        let mut reader = if self.deflate.is_some() {
            frames::Reader::inflating()
        } else {
            frames::Reader::default()
        };
        // With deflate, frames differ from message to message: they are built into `out` as
        // they are queued, and `partial` counts the bytes of `out` already written.
        let mut out: Vec<u8> = Vec::new();
        let opcode = self.sh.opcode();
        // Payload bytes received towards the oldest outstanding message.
        let mut acc = 0u64;
        let mut sending = true;
        let stop = tokio::time::sleep_until(self.plan.meas_end);
        tokio::pin!(stop);

        if ws && rlen > 0 {
            if let Err(e) = reader.feed(&mut rbuf, &mut rlen, &mut control, self.key) {
                self.res.errors.push(e.to_string());
                return false;
            }
        }
        loop {
            if sending && sent.len() < k {
                let now = Instant::now();
                while sent.len() < k {
                    if !self.plan.may_send(now) {
                        sending = false;
                        break;
                    }
                    sent.push_back(now);
                    queued += 1;
                    if let Some((d, payload)) = &mut self.deflate {
                        d.push_frame(&mut out, opcode, payload, self.key);
                    }
                }
            }
            if !sending && sent.is_empty() {
                break;
            }
            let write_control = !control.is_empty() && partial == 0;
            let want_write = write_control || queued > 0;
            let wslice: &[u8] = if write_control {
                &control
            } else if self.deflate.is_some() {
                &out[partial..]
            } else {
                &self.batch[partial..queued * frame_len]
            };
            tokio::select! {
                biased;
                r = wr.write(wslice), if want_write => match r {
                    Ok(0) => {
                        self.res.errors.push("write returned 0".into());
                        return false;
                    }
                    Ok(n) if write_control => {
                        control.drain(..n);
                    }
                    Ok(n) if self.deflate.is_some() => {
                        partial += n;
                        if partial == out.len() {
                            out.clear();
                            partial = 0;
                            queued = 0;
                        }
                    }
                    Ok(n) => {
                        partial += n;
                        queued -= partial / frame_len;
                        partial %= frame_len;
                    }
                    Err(e) => {
                        self.res.errors.push(format!("write: {e}"));
                        return false;
                    }
                },
                r = rd.read(&mut rbuf[rlen..]) => match r {
                    Ok(0) => {
                        self.res.errors.push("server closed the connection".into());
                        return false;
                    }
                    Ok(n) => {
                        rlen += n;
                        let data = if ws {
                            match reader.feed(&mut rbuf, &mut rlen, &mut control, self.key) {
                                Ok(d) => d,
                                Err(e) => {
                                    self.res.errors.push(e.to_string());
                                    return false;
                                }
                            }
                        } else {
                            std::mem::take(&mut rlen) as u64
                        };
                        acc += data;
                        if acc >= size {
                            let now = Instant::now();
                            while acc >= size {
                                acc -= size;
                                let Some(t) = sent.pop_front() else {
                                    self.res.errors.push("received more than was sent".into());
                                    return false;
                                };
                                if now >= self.plan.meas_start && now < self.plan.meas_end {
                                    let ns = now.saturating_duration_since(t).as_nanos() as u64;
                                    self.res.hist.saturating_record(ns.max(1));
                                    self.res.messages += 1;
                                    self.res.last_done = Some(now);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.res.errors.push(format!("read: {e}"));
                        return false;
                    }
                },
                _ = &mut stop => {
                    if self.plan.count_mode && (sending || !sent.is_empty()) {
                        // Count mode: the plan's end is the hard deadline.
                        self.res.errors.push("timeout with messages outstanding".into());
                    }
                    break;
                }
            }
        }
        partial == 0 && queued == 0
    }
}

// ---------------------------------------------------------------------------------------------
// handshake

async fn run_handshake(args: &Args, shared: Arc<Shared>) -> Report {
    let started = Instant::now();
    let hard = started + hard_limit(args, 5.0);
    let meas_start = started + secs(args.warmup);
    let plan = Plan::new(args, meas_start, hard);
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(handshake_worker(i, shared.clone(), plan.clone())))
        .collect();
    let mut samples = Samples::default();
    tokio::time::sleep_until(meas_start).await;
    samples.start(args);
    if !plan.count_mode {
        tokio::time::sleep_until(plan.meas_end).await;
        samples.end(args);
    }
    plan.release.cancel();
    let (results, extra) = join_all(tasks, hard + shared.connector.connect_timeout).await;
    if plan.count_mode {
        samples.end(args);
    }
    let totals = merge(results, extra);
    let elapsed = plan.elapsed(totals.last_done);
    let rate = if elapsed > 0.0 {
        totals.messages as f64 / elapsed
    } else {
        0.0
    };
    let client_cpu = samples.client_cpu.1 - samples.client_cpu.0;
    let mut json = common_json(args, &shared);
    let obj = json.as_object_mut().expect("object");
    obj.insert("elapsed_s".into(), round3(elapsed).into());
    obj.insert("handshakes".into(), totals.messages.into());
    obj.insert("handshakes_per_s".into(), round3(rate).into());
    obj.insert("latency_us".into(), latency_json(&totals.hist));
    obj.insert("errors".into(), totals.errors.into());
    obj.insert("error_kinds".into(), serde_json::json!(totals.error_kinds));
    obj.insert("client_cpu_s".into(), round3(client_cpu).into());
    obj.insert("machine_busy_cpu_s".into(), samples.machine_busy_s().into());
    obj.insert("server".into(), tree_json(&samples.server, totals.messages));
    obj.insert(
        "backend".into(),
        tree_json(&samples.backend, totals.messages),
    );
    let mut human = format!(
        "wsload handshake {}  workers={} threads={}\n",
        args.url, args.connections, args.threads
    );
    human.push_str(&format!(
        "  handshakes   {} in {:.2} s = {:.0} /s\n",
        totals.messages, elapsed, rate
    ));
    human.push_str(&latency_line(&totals.hist));
    human.push_str(&errors_human(&totals));
    human.push_str(&format!("  client cpu   {client_cpu:.2} s\n"));
    human.push_str(&trees_human(&samples, 0));
    Report {
        json,
        human,
        ok: totals.errors == 0 && totals.messages > 0,
    }
}

async fn handshake_worker(id: usize, sh: Arc<Shared>, plan: Arc<Plan>) -> ConnResult {
    let mut res = ConnResult::new(true);
    let mut rbuf = vec![0u8; SMALL_BUF];
    let close = frames::close_frame(sh.mask_key(id));
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        if !plan.may_send(t) {
            break;
        }
        n += 1;
        let seed = sh.seed ^ ((id as u64) << 32) ^ n;
        let opened = tokio::select! {
            r = sh.connector.open(&mut rbuf, seed) => Some(r),
            _ = tokio::time::sleep_until(plan.meas_end) => None,
        };
        let Some(opened) = opened else { break };
        let done = Instant::now();
        let counted = done >= plan.meas_start && done < plan.meas_end;
        match opened {
            Ok((mut stream, _)) => {
                if counted {
                    let ns = done.saturating_duration_since(t).as_nanos() as u64;
                    res.hist.saturating_record(ns.max(1));
                    res.messages += 1;
                    res.last_done = Some(done);
                }
                let is_ws = sh.connector.target.is_ws();
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    if is_ws {
                        stream.write_all(&close).await?;
                    }
                    stream.shutdown().await
                })
                .await;
            }
            Err(e) => {
                if counted {
                    res.errors.push(e);
                }
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    res
}

// ---------------------------------------------------------------------------------------------
// idle

async fn run_idle(args: &Args, shared: Arc<Shared>) -> Report {
    let started = Instant::now();
    let hold = args.duration.unwrap_or(5.0);
    let mut samples = Samples::default();
    samples.start(args);
    let before = samples.server.0;
    let token = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let (open_tx, mut open_rx) = mpsc::channel::<Result<(), String>>(args.connections);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (sh, gate, tx, token, dropped) = (
            shared.clone(),
            gate.clone(),
            open_tx.clone(),
            token.clone(),
            dropped.clone(),
        );
        tasks.push(tokio::spawn(idle_conn(i, sh, gate, tx, token, dropped)));
    }
    drop(open_tx);
    let open_deadline = started + hard_limit(args, 5.0) + secs(60.0);
    let mut opened = 0u64;
    let mut failures: Vec<String> = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(open_deadline, open_rx.recv()).await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => failures.push(e),
        }
        if opened as usize + failures.len() == args.connections {
            break;
        }
    }
    let open_time = started.elapsed().as_secs_f64();
    tokio::time::sleep(secs(args.settle)).await;
    let after_open = procfs::sample_trees(&args.server_pids);
    let backend_after = procfs::sample_trees(&args.backend_pids);
    let hold_end = Instant::now() + secs((hold - args.settle).max(0.0));
    tokio::time::sleep_until(hold_end).await;
    let at_end = procfs::sample_trees(&args.server_pids);
    let dropped_n = dropped.load(Ordering::Relaxed);
    token.cancel();
    let (_, extra) = join_all(tasks, Instant::now() + Duration::from_secs(10)).await;
    failures.extend(extra);
    for _ in 0..dropped_n {
        failures.push("closed while idle".into());
    }
    let mut kinds: HashMap<String, u64> = HashMap::new();
    for f in &failures {
        *kinds.entry(f.clone()).or_default() += 1;
    }
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds.truncate(ERROR_KINDS_SHOWN);

    let growth_kib = match (before, after_open) {
        (Some(a), Some(b)) => Some(b.rss_kib as i64 - a.rss_kib as i64),
        _ => None,
    };
    let per_session = growth_kib
        .filter(|_| opened > 0)
        .map(|g| round3(g as f64 * 1024.0 / opened as f64));
    let pss_per_session = match (before, after_open) {
        (Some(a), Some(b)) if opened > 0 => Some(round3(
            (b.pss_kib as f64 - a.pss_kib as f64) * 1024.0 / opened as f64,
        )),
        _ => None,
    };
    let mut json = common_json(args, &shared);
    let obj = json.as_object_mut().expect("object");
    obj.insert("opened".into(), opened.into());
    obj.insert("failed".into(), (failures.len() as u64).into());
    obj.insert("errors".into(), (failures.len() as u64).into());
    obj.insert("error_kinds".into(), serde_json::json!(kinds));
    obj.insert("open_s".into(), round3(open_time).into());
    obj.insert("hold_s".into(), hold.into());
    let tree = |s: Option<TreeSample>| s.map(|s| serde_json::json!(s));
    obj.insert(
        "server".into(),
        serde_json::json!({
            "before": tree(before),
            "after_open": tree(after_open),
            "at_end": tree(at_end),
            "rss_growth_kib": growth_kib,
            "bytes_per_session": per_session,
            "pss_bytes_per_session": pss_per_session,
        }),
    );
    obj.insert(
        "backend".into(),
        serde_json::json!({
            "before": tree(samples.backend.0),
            "after_open": tree(backend_after),
        }),
    );
    let mut human = format!(
        "wsload idle {}  connections={} hold={} s\n  opened       {} in {:.2} s, failed {}\n",
        args.url,
        args.connections,
        hold,
        opened,
        open_time,
        failures.len()
    );
    human.push_str(&shared.transport_line(args));
    for (e, n) in &kinds {
        human.push_str(&format!("               {n} x {e}\n"));
    }
    if let (Some(a), Some(b)) = (before, after_open) {
        human.push_str(&format!(
            "  server rss   {} -> {} KiB ({} procs -> {}): {:.0} bytes per session (pss: {:.0})\n",
            a.rss_kib,
            b.rss_kib,
            a.procs,
            b.procs,
            per_session.unwrap_or(0.0),
            pss_per_session.unwrap_or(0.0)
        ));
    }
    Report {
        json,
        human,
        ok: failures.is_empty() && opened > 0,
    }
}

async fn idle_conn(
    id: usize,
    sh: Arc<Shared>,
    gate: Arc<Semaphore>,
    opened_tx: mpsc::Sender<Result<(), String>>,
    token: CancellationToken,
    dropped: Arc<AtomicU64>,
) -> ConnResult {
    let res = ConnResult::new(false);
    let permit = tokio::select! {
        p = gate.acquire() => p,
        _ = token.cancelled() => return res,
    };
    if let Some(transport) = sh.fallback {
        let opened = fallback::open(&sh.connector, transport).await;
        drop(permit);
        let session = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = opened_tx.send(Err(e)).await;
                return res;
            }
        };
        let _ = opened_tx.send(Ok(())).await;
        drop(opened_tx);
        tokio::select! {
            _ = token.cancelled() => {}
            _ = fallback::hold(&sh.connector, &session, transport) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        return res;
    }
    let mut rbuf = vec![0u8; SMALL_BUF];
    let opened = sh.connector.open_ext(&mut rbuf, sh.seed ^ id as u64).await;
    drop(permit);
    let (mut stream, rlen, deflate) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = opened_tx.send(Err(e)).await;
            return res;
        }
    };
    if deflate.is_some() {
        sh.deflated.fetch_add(1, Ordering::Relaxed);
    }
    if sh.idle_send && sh.connector.target.is_ws() {
        let key = sh.mask_key(id);
        let mut frame = Vec::new();
        match deflate {
            Some(d) => {
                frames::Deflater::new(d.client_max_window_bits, d.client_no_context_takeover)
                    .push_frame(&mut frame, sh.opcode(), &sh.payload(), key)
            }
            None => frames::push_frame(&mut frame, sh.opcode(), &sh.payload(), key),
        }
        if let Err(e) = stream.write_all(&frame).await {
            let _ = opened_tx.send(Err(format!("write: {e}"))).await;
            return res;
        }
    }
    let _ = opened_tx.send(Ok(())).await;
    drop(opened_tx);
    let key = sh.mask_key(id);
    let is_ws = sh.connector.target.is_ws();
    let closed_early = tokio::select! {
        _ = token.cancelled() => false,
        _ = hold(&mut stream, &mut rbuf, rlen, key, is_ws) => true,
    };
    if closed_early {
        dropped.fetch_add(1, Ordering::Relaxed);
        return res;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        if is_ws {
            stream.write_all(&frames::close_frame(key)).await?;
        }
        stream.shutdown().await?;
        drain(&mut stream).await
    })
    .await;
    res
}

/// Read and discard until the peer's end of stream.
async fn drain<R: AsyncRead + Unpin>(mut rd: R) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    while rd.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Keep an idle connection alive: answer Pings. Returns when the server ends it.
async fn hold(stream: &mut Stream, rbuf: &mut [u8], mut len: usize, key: [u8; 4], ws: bool) {
    let mut reader = frames::Reader::default();
    let mut control = Vec::new();
    loop {
        if ws {
            if reader.feed(rbuf, &mut len, &mut control, key).is_err() {
                return;
            }
            if !control.is_empty() {
                if stream.write_all(&control).await.is_err() {
                    return;
                }
                control.clear();
            }
        } else {
            len = 0;
        }
        match stream.read(&mut rbuf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
}
