//! Helpers for the operations tests (admin endpoint, metrics, access log, limits, drain, reload,
//! backend pools): a minimal HTTP/1.1 client for the admin endpoints, a Prometheus text parser,
//! and WebSocket helpers on tokio-tungstenite (an independent client implementation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every single wait in these helpers.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where the admin listener binds in these tests: loopback, an address of its own (the config
/// refuses two binds of `127.0.0.1:0`, port 0 or not), the port chosen by the kernel.
pub const ADMIN_BIND: &str = "127.0.0.2:0";

// ----- a minimal HTTP/1.1 client for the admin endpoints -----

#[derive(Debug, Clone)]
pub struct HttpResp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection; `Err` when the connection cannot be made or breaks.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<HttpResp> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete answer"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no response head: {text:?}"),
        )
    })?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad head {head:?}"),
            )
        })?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResp {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Like [`try_http`], panicking on a connection failure.
pub async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> HttpResp {
    try_http(addr, method, path, token)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin listener {addr}: {e}"))
}

// ----- Prometheus text exposition -----

/// Label pairs, in exposition order.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name -> type, from the `# TYPE` lines.
    pub types: HashMap<String, String>,
    pub text: String,
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y"} rest` -> labels and rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').expect("called on '{'");
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once('=').ok_or("label without '='")?;
        let name = name.trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = r.strip_prefix('"').ok_or("label value not quoted")?.chars();
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")? {
                '"' => break,
                '\\' => match chars.next().ok_or("dangling escape")? {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                c => value.push(c),
            }
        }
        labels.push((name.to_string(), value));
        rest = chars.as_str();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_sum", "_count", "_created", "_info"];

impl Exposition {
    /// Parse the text format, checking it as it goes: every sample belongs to a family declared
    /// by `# TYPE`, names and labels are well formed, values are numbers, `# EOF` (OpenMetrics)
    /// comes last if present, and histogram buckets are cumulative with `+Inf` equal to `_count`.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        let mut eof = false;
        for (i, line) in text.lines().enumerate() {
            let at = |m: String| format!("line {}: {m}: {line:?}", i + 1);
            if eof {
                return Err(at("content after # EOF".into()));
            }
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                match parts.next() {
                    Some("EOF") => eof = true,
                    Some("TYPE") => {
                        let name = parts.next().ok_or_else(|| at("TYPE without name".into()))?;
                        let kind = parts.next().ok_or_else(|| at("TYPE without type".into()))?;
                        if !is_metric_name(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                        let known = [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "untyped",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram",
                        ];
                        if !known.contains(&kind) {
                            return Err(at(format!("unknown type {kind:?}")));
                        }
                        if types.insert(name.to_string(), kind.to_string()).is_some() {
                            return Err(at(format!("second TYPE for {name}")));
                        }
                    }
                    Some("HELP") | Some("UNIT") => {
                        let name = parts.next().unwrap_or_default();
                        if !is_metric_name(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| at("sample without value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let mut fields = rest.split_whitespace();
            let value = fields
                .next()
                .and_then(parse_value)
                .ok_or_else(|| at("bad or missing value".into()))?;
            if let Some(ts) = fields.next() {
                ts.parse::<f64>()
                    .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let declared = types.contains_key(name)
                || SUFFIXES.iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|base| types.contains_key(base))
                });
            if !declared {
                return Err(at(format!("sample {name} has no # TYPE")));
            }
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        let e = Exposition {
            samples,
            types,
            text: text.to_string(),
        };
        e.check_histograms()?;
        Ok(e)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let count = format!("{family}_count");
            // Group buckets by their labels without `le`.
            let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .and_then(|(_, v)| parse_value(v))
                    .ok_or_else(|| format!("{bucket} without a numeric le: {s:?}"))?;
                let mut key: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                key.sort();
                series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in series {
                for w in buckets.windows(2) {
                    if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                        return Err(format!(
                            "{bucket}{key:?}: buckets not cumulative: {buckets:?}"
                        ));
                    }
                }
                let last = buckets.last().expect("at least one bucket");
                if last.0 != f64::INFINITY {
                    return Err(format!("{bucket}{key:?}: no +Inf bucket"));
                }
                let labels: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let c = self.get(&count, &labels);
                if c != Some(last.1) {
                    return Err(format!(
                        "{family}{key:?}: +Inf bucket {} but _count {c:?}",
                        last.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// The sample `name` whose labels are exactly `labels` (any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        });
        let first = found.next()?;
        assert!(found.next().is_none(), "{name}{labels:?} appears twice");
        Some(first.value)
    }

    /// Like [`get`](Self::get); an absent series counts as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// GET /metrics and parse it (panics on a parse error, with the text).
pub async fn metrics(admin: SocketAddr, token: Option<&str>) -> Exposition {
    let r = http(admin, "GET", "/metrics", token).await;
    assert_eq!(r.status, 200, "/metrics: {r:?}");
    Exposition::parse(&r.body)
        .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{}", r.body))
}

/// Poll /metrics until `name{labels}` equals `want` (absent = 0); panics after `timeout`.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    timeout: Duration,
) -> Exposition {
    let deadline = Instant::now() + timeout;
    loop {
        let m = metrics(admin, None).await;
        if m.value(name, labels) == want {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never became {want} within {timeout:?} (now {}):\n{}",
            m.value(name, labels),
            m.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (polling) until `connections_open` is `n`: every connection beyond that has released
/// its place in the limits, its route session slot and its backend lease (the gauge is
/// decremented last, when a session task ends).
pub async fn wait_connections_open(admin: SocketAddr, n: usize) {
    wait_metric(admin, "wsgate_connections_open", &[], n as f64, WAIT).await;
}

/// Poll `f` until it is true; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "never happened within {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ----- WebSocket clients (tokio-tungstenite) -----

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open a WebSocket with extra request headers; `Err` carries the HTTP status of a refusal.
pub async fn try_ws(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("{url}: no handshake answer within {WAIT:?}"),
        Ok(Ok((ws, resp))) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("{url}: handshake failed: {e}"),
    }
}

/// Open a WebSocket, asserting a 101.
pub async fn ws(url: &str) -> Ws {
    ws_with(url, &[]).await
}

pub async fn ws_with(url: &str, headers: &[(&str, &str)]) -> Ws {
    match try_ws(url, headers).await {
        Ok(ws) => ws,
        Err(status) => panic!("{url}: expected 101, got {status}"),
    }
}

/// The client's own address (what the gateway sees as the peer).
pub fn local_addr(ws: &Ws) -> SocketAddr {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => panic!("not a plain TCP stream"),
    }
}

pub async fn send(ws: &mut Ws, m: Message) {
    tokio::time::timeout(WAIT, ws.send(m))
        .await
        .expect("send timed out")
        .expect("send");
}

/// The next data message (pings and pongs skipped); panics on a Close or an error.
pub async fn next_data(ws: &mut Ws) -> Vec<u8> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message within the timeout")
            .expect("connection ended")
            .expect("read failed");
        match m {
            Message::Text(t) => return t.as_bytes().to_vec(),
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected data, got {other:?}"),
        }
    }
}

/// Send `text` and wait for the same bytes back (an echo backend in raw framing).
pub async fn echo(ws: &mut Ws, text: &str) {
    send(ws, Message::text(text)).await;
    let mut got = Vec::new();
    while got.len() < text.len() {
        got.extend(next_data(ws).await);
    }
    assert_eq!(got, text.as_bytes(), "echo");
}

/// Read until the server's Close frame; returns it (data messages before it are dropped).
pub async fn expect_close(ws: &mut Ws) -> Option<CloseFrame> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a Close: {e}"),
                None => panic!("connection ended without a Close"),
            }
        }
    })
    .await
    .expect("no Close frame within the timeout")
}

/// The close code of the next Close frame.
pub async fn close_code(ws: &mut Ws) -> u16 {
    let frame = expect_close(ws).await.expect("the Close carries a code");
    u16::from(frame.code)
}

/// After a Close: keep polling (tungstenite answers the Close) until the connection ends.
pub async fn finish(ws: &mut Ws) {
    tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} })
        .await
        .expect("the connection did not end after the Close");
}

/// Close from the client side with 1000 and wait for the end of the closing handshake.
pub async fn close(mut ws: Ws) {
    let frame = CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    tokio::time::timeout(WAIT, ws.close(Some(frame)))
        .await
        .expect("close timed out")
        .expect("close");
    finish(&mut ws).await;
}
