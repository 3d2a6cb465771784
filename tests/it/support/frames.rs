//! A WebSocket client written by hand, for tests that must control every byte on the wire:
//! request heads (valid or not), masked client frames (valid or broken on purpose), and a parser
//! for what the server sends back (checked for the server-side rules: never masked).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every single network wait in these helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The key used by every request built here; its accept value is [`ACCEPT`].
pub const KEY: &str = "w4v7O6xFTi36lq3RNcgctw==";
/// `base64(sha1(KEY + GUID))`, computed independently of the gateway (RFC 6455 §4.2.2).
pub const ACCEPT: &str = "Oy4NRAQ13jhfONC7bP8dTKb4PTU=";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A client frame to encode; every field can be set to something invalid.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub fin: bool,
    /// RSV1..3 as the three bits 0b0111_0000 of the first byte.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: &'a [u8],
    /// Length to declare instead of `payload.len()` (the payload written is still `payload`).
    pub declared_len: Option<u64>,
    pub mask: [u8; 4],
}

impl<'a> Spec<'a> {
    pub fn new(fin: bool, opcode: u8, payload: &'a [u8]) -> Spec<'a> {
        Spec {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            payload,
            declared_len: None,
            mask: [0x9a, 0x3c, 0x51, 0xe7],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | (self.rsv & 0x70) | (self.opcode & 0x0f));
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if self.masked {
            out.extend_from_slice(&self.mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.mask[i % 4]),
            );
        } else {
            out.extend_from_slice(self.payload);
        }
        out
    }
}

/// A valid masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    Spec::new(fin, opcode, payload).encode()
}

/// A valid masked client frame with the given masking key.
pub fn frame_with_mask(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    Spec {
        mask,
        ..Spec::new(fin, opcode, payload)
    }
    .encode()
}

pub fn text(s: &str) -> Vec<u8> {
    frame(true, OP_TEXT, s.as_bytes())
}

pub fn binary(b: &[u8]) -> Vec<u8> {
    frame(true, OP_BINARY, b)
}

/// A masked Close frame with `code` (and `reason`), or an empty one.
pub fn close(code: Option<u16>, reason: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
    }
    frame(true, OP_CLOSE, &payload)
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The code of a Close frame (`None` for an empty Close).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a Close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn close_reason(&self) -> String {
        String::from_utf8(self.payload.get(2..).unwrap_or_default().to_vec())
            .expect("close reason is UTF-8")
    }
}

/// Parse one server frame from the front of `buf`: `Some((frame, bytes used))` or `None` if
/// incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = buf[0] & 0x70;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let b = buf.get(2..10)?;
            (u64::from_be_bytes(b.try_into().unwrap()), 10)
        }
        n => (n as u64, 2),
    };
    let mut mask = None;
    if masked {
        mask = Some(<[u8; 4]>::try_from(buf.get(at..at + 4)?).unwrap());
        at += 4;
    }
    let end = at + usize::try_from(len).expect("frame length fits in memory");
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        ServerFrame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        },
        end,
    ))
}

/// An upgrade request head for `path` with `Host: addr`, the standard headers, and `extra`
/// headers appended (use `headers` to replace the standard ones entirely).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> String {
    let mut h = vec![
        ("Host".to_string(), addr.to_string()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), KEY.into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    request("GET", path, "HTTP/1.1", &h)
}

/// A request head written exactly as given.
pub fn request(method: &str, path: &str, version: &str, headers: &[(String, String)]) -> String {
    let mut s = format!("{method} {path} {version}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The raw head, for messages.
    pub raw: String,
}

impl Response {
    /// All values of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "header {name} repeated:\n{}", self.raw);
        all.first().copied()
    }

    /// True when a `Connection` header carries the `close` token.
    pub fn connection_close(&self) -> bool {
        self.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// Parse a response head at the front of `buf`: `Some((response, head length))`.
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let raw = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = raw.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Some((
        Response {
            status,
            headers,
            raw,
        },
        end,
    ))
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Orderly FIN.
    Eof,
    /// The peer reset the connection.
    Reset,
}

/// Read from `stream` into `buf` until EOF (or a reset), at most `timeout` in total.
pub async fn read_to_end(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> Ended {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "connection not closed within {timeout:?}; got so far: {:?}",
                String::from_utf8_lossy(buf)
            ),
            Ok(Ok(0)) => return Ended::Eof,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ended::Reset,
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

/// Send `bytes` as one write on a fresh connection, then read everything the server sends until
/// it closes. Returns the bytes and how the connection ended.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Ended) {
    let mut s = connect(addr).await;
    tokio::time::timeout(IO_TIMEOUT, s.write_all(bytes))
        .await
        .expect("write timed out")
        .expect("write");
    let mut buf = Vec::new();
    let ended = read_to_end(&mut s, &mut buf, IO_TIMEOUT).await;
    (buf, ended)
}

/// Read until a whole response head has arrived (bounded by [`IO_TIMEOUT`]); returns it and the
/// bytes that came after it.
pub async fn read_response_head(stream: &mut TcpStream) -> (Response, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (response, used) = loop {
        if let Some(r) = parse_response(&buf) {
            break r;
        }
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("no response head within the timeout")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    buf.drain(..used);
    (response, buf)
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// A client connection after a 101: frames in, frames out.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read but not parsed yet.
    pub buf: Vec<u8>,
    /// The 101 response.
    pub response: Response,
}

impl RawWs {
    /// Open a WebSocket on `path`, asserting a 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::connect_with(addr, path, &[], &[]).await
    }

    /// Like [`connect`](Self::connect), with extra request headers and `after` written in the
    /// same write as the request head.
    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        extra: &[(&str, &str)],
        after: &[u8],
    ) -> RawWs {
        let mut stream = connect(addr).await;
        let mut out = upgrade_request(addr, path, extra).into_bytes();
        out.extend_from_slice(after);
        tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out))
            .await
            .expect("write timed out")
            .expect("write request");
        let (response, buf) = read_response_head(&mut stream).await;
        assert_eq!(response.status, 101, "expected 101, got:\n{}", response.raw);
        RawWs {
            stream,
            buf,
            response,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write frame");
    }

    /// The next server frame, or `None` when the server closed the connection (FIN or reset).
    /// Panics after `IO_TIMEOUT`. Asserts the server-side rules: unmasked, no RSV bits.
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        self.next_frame_within(IO_TIMEOUT).await
    }

    pub async fn next_frame_within(&mut self, timeout: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((f, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                assert!(
                    !f.masked,
                    "RFC 6455 §5.1: server frames are never masked: {f:?}"
                );
                assert_eq!(f.rsv, 0, "no extension was negotiated: {f:?}");
                return Some(f);
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "no complete frame within {timeout:?} (buffered {} bytes)",
                    self.buf.len()
                ),
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Ok(Err(e)) => panic!("read failed: {e}"),
            };
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a frame: {} bytes left",
                    self.buf.len()
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read frames until a Close; returns the data frames before it (pongs included) and the Close.
    pub async fn until_close(&mut self) -> (Vec<ServerFrame>, ServerFrame) {
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                Some(f) if f.opcode == OP_CLOSE => return (before, f),
                Some(f) => before.push(f),
                None => {
                    panic!("connection closed without a Close frame; frames before: {before:?}")
                }
            }
        }
    }

    /// Read frames until a Close and return its code (data frames before it are dropped).
    pub async fn close_code(&mut self) -> Option<u16> {
        self.until_close().await.1.close_code()
    }

    /// Assert that the server closes the TCP connection (FIN) without sending anything more.
    pub async fn expect_eof(&mut self) {
        let mut rest = std::mem::take(&mut self.buf);
        let ended = read_to_end(&mut self.stream, &mut rest, IO_TIMEOUT).await;
        assert!(rest.is_empty(), "bytes after the Close: {rest:?}");
        assert_eq!(ended, Ended::Eof, "expected FIN, got a reset");
    }
}
