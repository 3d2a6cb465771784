//! A small client of the fallback transport (README "Fallback transport"): hyper's HTTP/1.1
//! client over real loopback sockets, one connection per request, and the record format.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on one request in these tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;
pub const CLOSE: u8 = 8;
pub const HEARTBEAT: u8 = 9;

/// Append a record.
pub fn record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
}

/// Take the complete records at the start of `buf` (what is left is an incomplete one).
pub fn take_records(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 5 {
        let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
        if buf.len() < at + 5 + len {
            break;
        }
        out.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    out
}

/// The close code of a close record's payload.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// One request on a fresh connection; the response with its body still to read.
pub async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<hyper::Response<Incoming>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A whole response: status, headers, body (an error if the body was cut).
pub async fn full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, http::HeaderMap, Vec<u8>), String> {
    let fut = async {
        let resp = send_request(addr, method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok((status, headers, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// A fallback client of one route.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub path: String,
    /// Headers sent with every request (Origin, Cookie, Authorization...).
    pub extra: Vec<(&'static str, String)>,
    pub session: String,
}

impl Client {
    pub fn new(addr: SocketAddr, path: &str) -> Client {
        Client {
            addr,
            path: path.to_string(),
            extra: Vec::new(),
            session: String::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: &str) -> Client {
        self.extra.push((name, value.to_string()));
        self
    }

    fn headers(&self, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut h = self.extra.clone();
        h.extend_from_slice(more);
        h
    }

    /// `open`: the status, and the JSON answer on success (the session id is kept).
    pub async fn open(&mut self, transport: &str) -> (u16, serde_json::Value) {
        let h = self.headers(&[
            ("wsgate-fallback", "open".into()),
            ("wsgate-transport", transport.into()),
        ]);
        let (status, _, body) = full(self.addr, "POST", &self.path, &h, Vec::new())
            .await
            .expect("open");
        if status != 200 {
            return (status, serde_json::Value::Null);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).expect("open answer is JSON");
        self.session = v["session"].as_str().expect("session id").to_string();
        (status, v)
    }

    /// `send` of `records` numbered from `seq`: the status and the acknowledged count.
    pub async fn send(&self, seq: u64, records: Vec<u8>) -> Result<(u16, u64), String> {
        let h = self.headers(&[
            ("wsgate-fallback", "send".into()),
            ("wsgate-session", self.session.clone()),
            ("wsgate-seq", seq.to_string()),
            ("content-type", "application/octet-stream".into()),
        ]);
        let (status, _, body) = full(self.addr, "POST", &self.path, &h, records).await?;
        if status != 200 {
            return Ok((status, 0));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((status, v["ack"].as_u64().ok_or("no ack")?))
    }

    /// One `poll`: the status, the body bytes received (perhaps cut), and whether it was cut.
    pub async fn poll(&self, ack: u64) -> Result<(u16, Vec<u8>, bool), String> {
        let h = self.headers(&[
            ("wsgate-fallback", "poll".into()),
            ("wsgate-session", self.session.clone()),
            ("wsgate-ack", ack.to_string()),
        ]);
        let fut = async {
            let resp = send_request(self.addr, "POST", &self.path, &h, Vec::new()).await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            let mut cut = false;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            got.extend_from_slice(d);
                        }
                    }
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
            }
            Ok((status, got, cut))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| "poll timed out".to_string())?
    }

    /// `stream`: the response, its body read by the caller.
    pub async fn stream(&self, ack: u64) -> hyper::Response<Incoming> {
        let h = self.headers(&[
            ("wsgate-fallback", "stream".into()),
            ("wsgate-session", self.session.clone()),
            ("wsgate-ack", ack.to_string()),
        ]);
        send_request(self.addr, "POST", &self.path, &h, Vec::new())
            .await
            .expect("stream")
    }
}

/// Read records from a streaming body until `want` messages (heartbeats not counted) arrived or
/// the body ends. Returns the messages.
pub async fn read_stream(body: &mut Incoming, want: usize) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let fut = async {
        while out.len() < want {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        buf.extend_from_slice(d);
                    }
                    out.extend(
                        take_records(&mut buf)
                            .into_iter()
                            .filter(|r| r.0 != HEARTBEAT),
                    );
                }
                _ => break,
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .expect("stream read timed out");
    out
}

/// The records of the next chunks of a stream (heartbeats left out; an incomplete record stays
/// in `buf`); none when the stream ended. Each chunk must come within [`REQUEST_TIMEOUT`].
pub async fn next_records(body: &mut Incoming, buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    loop {
        let f = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
            .await
            .expect("stream data in time");
        let Some(Ok(f)) = f else { return Vec::new() };
        if let Some(d) = f.data_ref() {
            buf.extend_from_slice(d);
        }
        let recs: Vec<_> = take_records(buf)
            .into_iter()
            .filter(|r| r.0 != HEARTBEAT)
            .collect();
        if !recs.is_empty() {
            return recs;
        }
    }
}
