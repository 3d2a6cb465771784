//! Connecting: the target URL, TCP, TLS (rustls) and the WebSocket opening handshake (RFC 6455
//! §4.1), written by hand so that the client stays cheap; or, with `--http2`, extended CONNECT
//! streams (RFC 8441) on shared HTTP/2 connections with prior knowledge (h2c). Offers
//! permessage-deflate (RFC 7692) when asked and reports what the server answered.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// RFC 6455 §1.3: the GUID appended to the key for `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest HTTP response head accepted from the server.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ws,
    Wss,
    Tcp,
}

/// A parsed `ws://`, `wss://` or `tcp://` URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    /// Host as written (without brackets for IPv6), for `Host:` and TLS server name.
    pub host: String,
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
    /// Resolved once, at start.
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url}: expected ws://, wss:// or tcp://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "tcp" => Scheme::Tcp,
            other => return Err(format!("{url}: unsupported scheme {other:?}")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("{url}: bad IPv6 host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match (port, scheme) {
            (Some(p), _) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            (None, Scheme::Ws) => 80,
            (None, Scheme::Wss) => 443,
            (None, Scheme::Tcp) => return Err(format!("{url}: tcp:// needs a port")),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        use std::net::ToSocketAddrs;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        Ok(Target {
            scheme,
            host,
            port,
            path,
            addr,
        })
    }

    pub fn is_ws(&self) -> bool {
        self.scheme != Scheme::Tcp
    }

    /// The `Host:` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = match self.scheme {
            Scheme::Ws => 80,
            Scheme::Wss => 443,
            Scheme::Tcp => 0,
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// How to open connections: shared by every connection of a run.
pub struct Connector {
    pub target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    subprotocols: Vec<String>,
    headers: Vec<String>,
    pub connect_timeout: Duration,
    /// `--http2`: the shared HTTP/2 connections, opened on first use; streams go round-robin.
    h2: Vec<tokio::sync::OnceCell<h2::client::SendRequest<Bytes>>>,
    h2_next: AtomicUsize,
    /// Offer permessage-deflate.
    deflate: bool,
}

/// What the server answered to a permessage-deflate offer.
#[derive(Debug, Clone, Copy)]
pub struct Deflate {
    /// The client must start each message's compression afresh.
    pub client_no_context_takeover: bool,
    /// The client's compression window (8..15).
    pub client_max_window_bits: u8,
}

impl Deflate {
    /// Parse a `Sec-WebSocket-Extensions` answer: `None` unless it accepted permessage-deflate.
    fn parse(value: &str) -> Option<Deflate> {
        let mut params = value.split(',').next()?.split(';').map(str::trim);
        if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let mut d = Deflate {
            client_no_context_takeover: false,
            client_max_window_bits: 15,
        };
        for p in params {
            let (name, v) = p.split_once('=').unwrap_or((p, ""));
            match name.trim() {
                "client_no_context_takeover" => d.client_no_context_takeover = true,
                "client_max_window_bits" => {
                    if let Ok(b) = v.trim().trim_matches('"').parse::<u8>() {
                        d.client_max_window_bits = b.clamp(8, 15);
                    }
                }
                _ => {}
            }
        }
        Some(d)
    }
}

/// The extension offer sent with `--deflate`.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

pub struct ConnectorOptions {
    pub insecure: bool,
    pub ca: Option<std::path::PathBuf>,
    pub tls_resume: bool,
    pub subprotocols: Vec<String>,
    pub headers: Vec<String>,
    pub connect_timeout: Duration,
    /// HTTP/2 connections to spread streams over (0: HTTP/1.1, one connection per session).
    pub http2_connections: usize,
    pub deflate: bool,
}

impl Connector {
    /// The `--header` lines, as given ("Name: value").
    pub fn extra_headers(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(String::as_str)
    }

    pub fn new(target: Target, opts: ConnectorOptions) -> Result<Connector, String> {
        let tls = if target.scheme == Scheme::Wss {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?;
            let mut config = if opts.insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                    .with_no_client_auth()
            } else {
                let mut roots = rustls::RootCertStore::empty();
                match &opts.ca {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                        for cert in certs {
                            let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                            roots
                                .add(cert)
                                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            if !opts.tls_resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| format!("TLS server name {:?}: {e}", target.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Connector {
            target,
            tls,
            subprotocols: opts.subprotocols,
            headers: opts.headers,
            connect_timeout: opts.connect_timeout,
            h2: (0..opts.http2_connections)
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            h2_next: AtomicUsize::new(0),
            deflate: opts.deflate,
        })
    }

    pub fn is_http2(&self) -> bool {
        !self.h2.is_empty()
    }

    /// TCP connect, TLS handshake and WebSocket upgrade (as the scheme asks), within the connect
    /// timeout. Returns the stream and any bytes the server sent right behind its 101 (they are
    /// frames), placed at the front of `rbuf`, with their count.
    pub async fn open(&self, rbuf: &mut [u8], seed: u64) -> Result<(Stream, usize), String> {
        self.open_ext(rbuf, seed).await.map(|(s, n, _)| (s, n))
    }

    /// As `open`, with the permessage-deflate parameters if the server accepted the offer.
    pub async fn open_ext(
        &self,
        rbuf: &mut [u8],
        seed: u64,
    ) -> Result<(Stream, usize, Option<Deflate>), String> {
        let opening = async {
            if self.is_http2() {
                self.open_h2().await
            } else {
                self.open_inner(rbuf, seed).await
            }
        };
        match tokio::time::timeout(self.connect_timeout, opening).await {
            Ok(r) => r,
            Err(_) => Err("connect timeout".into()),
        }
    }

    /// One HTTP/2 connection (h2c, prior knowledge) with large windows, once the server's
    /// SETTINGS have enabled extended CONNECT (RFC 8441 §3).
    async fn h2_connect(&self) -> Result<h2::client::SendRequest<Bytes>, String> {
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(256 * 1024)
            .initial_connection_window_size(64 << 20)
            .handshake(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        while !client.is_extended_connect_protocol_enabled() {
            if tokio::time::Instant::now() >= deadline {
                return Err("HTTP/2: the server did not enable extended CONNECT".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        }
        Ok(client)
    }

    async fn open_h2(&self) -> Result<(Stream, usize, Option<Deflate>), String> {
        let i = self.h2_next.fetch_add(1, Ordering::Relaxed) % self.h2.len();
        let client = self.h2[i]
            .get_or_try_init(|| self.h2_connect())
            .await?
            .clone();
        let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!(
                "http://{}{}",
                self.target.host_header(),
                self.target.path
            ))
            .header("sec-websocket-version", "13");
        if !self.subprotocols.is_empty() {
            req = req.header("sec-websocket-protocol", self.subprotocols.join(", "));
        }
        if self.deflate {
            req = req.header("sec-websocket-extensions", DEFLATE_OFFER);
        }
        for h in &self.headers {
            if let Some((name, value)) = h.split_once(':') {
                req = req.header(name.trim().to_ascii_lowercase(), value.trim());
            }
        }
        let mut req = req.body(()).map_err(|e| format!("request: {e}"))?;
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (resp, send) = client
            .send_request(req, false)
            .map_err(|e| format!("HTTP/2 CONNECT: {e}"))?;
        let resp = resp.await.map_err(|e| format!("HTTP/2 CONNECT: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("handshake: HTTP/2 status {}", resp.status()));
        }
        let deflate = resp
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|v| v.to_str().ok())
            .and_then(Deflate::parse);
        let recv = resp.into_body();
        Ok((
            Stream::H2(Box::new(H2Stream {
                send,
                recv,
                pending: Bytes::new(),
            })),
            0,
            deflate,
        ))
    }

    async fn open_inner(
        &self,
        rbuf: &mut [u8],
        seed: u64,
    ) -> Result<(Stream, usize, Option<Deflate>), String> {
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let mut stream = match &self.tls {
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )),
            None => Stream::Plain(tcp),
        };
        if !self.target.is_ws() {
            return Ok((stream, 0, None));
        }
        let (n, deflate) = self.upgrade(&mut stream, rbuf, seed).await?;
        Ok((stream, n, deflate))
    }

    async fn upgrade(
        &self,
        stream: &mut Stream,
        rbuf: &mut [u8],
        seed: u64,
    ) -> Result<(usize, Option<Deflate>), String> {
        let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut raw_key = [0u8; 16];
        for chunk in raw_key.chunks_mut(8) {
            rng = xorshift(rng);
            chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.encode(raw_key);
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            self.target.path,
            self.target.host_header()
        );
        if !self.subprotocols.is_empty() {
            req.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                self.subprotocols.join(", ")
            ));
        }
        if self.deflate {
            req.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
        }
        for h in &self.headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("handshake write: {e}"))?;

        let mut len = 0usize;
        let head_end = loop {
            if let Some(i) = find(&rbuf[..len], b"\r\n\r\n") {
                break i + 4;
            }
            if len >= MAX_RESPONSE_HEAD.min(rbuf.len()) {
                return Err("handshake: response head too large".into());
            }
            let n = stream
                .read(&mut rbuf[len..])
                .await
                .map_err(|e| format!("handshake read: {e}"))?;
            if n == 0 {
                return Err("handshake: connection closed before the response".into());
            }
            len += n;
        };
        let head = String::from_utf8_lossy(&rbuf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let mut parts = status.split(' ');
        if parts.next() != Some("HTTP/1.1") || parts.next() != Some("101") {
            return Err(format!("handshake: {status:?}"));
        }
        let expected = b64.encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
        let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
        let accept = fields
            .iter()
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_string());
        let deflate = fields
            .iter()
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
            .and_then(|(_, v)| Deflate::parse(v.trim()));
        match accept {
            Some(a) if a == expected => {}
            Some(a) => return Err(format!("handshake: wrong Sec-WebSocket-Accept {a:?}")),
            None => return Err("handshake: no Sec-WebSocket-Accept".into()),
        }
        rbuf.copy_within(head_end..len, 0);
        Ok((len - head_end, deflate))
    }
}

pub fn xorshift(mut x: u64) -> u64 {
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `--insecure`: accept any server certificate (signatures are still checked).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS connection, or one stream of an HTTP/2 connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    H2(Box<H2Stream>),
}

/// A WebSocket carried on an HTTP/2 stream (RFC 8441): its frames are the DATA of the stream.
pub struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            let cap = this.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io::Error::other)?;
                return Poll::Ready(Ok(n));
            }
            match std::task::ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(_)) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.get_mut().send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::H2(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::H2(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::H2(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::H2(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/raw?x=1").unwrap();
        assert_eq!(
            (t.scheme, t.port, t.path.as_str()),
            (Scheme::Ws, 8080, "/raw?x=1")
        );
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        let t = Target::parse("wss://[::1]:9443").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.path.as_str()),
            (Scheme::Wss, "::1", "/")
        );
        assert_eq!(t.host_header(), "[::1]:9443");
        let t = Target::parse("tcp://127.0.0.1:7").unwrap();
        assert!(!t.is_ws());
        assert!(Target::parse("tcp://127.0.0.1").is_err());
        assert!(Target::parse("http://127.0.0.1:1").is_err());
    }
}
