//! Helpers for the authorization tests (Origin policy, JWT, forward auth, PROXY protocol):
//! token signing with every supported key type, raw handshake attempts that report exactly what
//! the client saw, a tiny HTTP/1.1 auth service, PROXY headers read with the `ppp` crate, and
//! `wsgate check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::frames::{self, read_to_end, Ended, RawWs, Response, IO_TIMEOUT};
use crate::support::backends::Conn;

/// The Origin every origin-restricted route in these tests allows.
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";
/// Issuer and audience configured on the JWT routes.
pub const ISSUER: &str = "https://login.example.com";
pub const AUDIENCE: &str = "wsgate";
/// The `WWW-Authenticate` value every 401 carries.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"wsgate\"";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims the JWT routes accept: right issuer and audience, valid for ten minutes.
pub fn good_claims(sub: &str) -> Value {
    serde_json::json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// `good_claims` with `key` set to `value`.
pub fn claims_with(sub: &str, key: &str, value: Value) -> Value {
    let mut c = good_claims(sub);
    c[key] = value;
    c
}

/// A private key and the algorithm it signs with.
pub struct Signer {
    pub alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key).expect("sign token")
    }
}

pub fn hs256(secret: &[u8]) -> Signer {
    Signer {
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(secret),
    }
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The test-only RSA key pair in tests/fixtures: (signer, public key PEM).
pub fn rs256() -> (Signer, Vec<u8>) {
    let private = std::fs::read(fixture("test-only-rs256-private.pem")).expect("RSA fixture");
    let public = std::fs::read(fixture("test-only-rs256-public.pem")).expect("RSA fixture");
    let signer = Signer {
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&private).expect("RSA private key"),
    };
    (signer, public)
}

/// Another RSA private key (tokens signed by it must not verify against `rs256()`'s public key).
pub fn rs256_other() -> Signer {
    let private = std::fs::read(fixture("test-only-rs256-other-private.pem")).expect("RSA fixture");
    Signer {
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&private).expect("RSA private key"),
    }
}

/// A fresh ECDSA P-256 key pair: (signer, public key PEM).
pub fn es256() -> (Signer, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let signer = Signer {
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("EC private key"),
    };
    (signer, kp.public_key_pem().into_bytes())
}

/// A fresh Ed25519 key pair: (signer, public key PEM).
pub fn ed25519() -> (Signer, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    let signer = Signer {
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).expect("Ed25519 private key"),
    };
    (signer, kp.public_key_pem().into_bytes())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}`, empty signature.
pub fn alg_none_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// `token` with its payload replaced by `claims`, header and signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token");
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// Algorithm confusion: an HS256 token whose HMAC key is the bytes of an RSA (or other) public
/// key PEM, as a verifier that trusted the token's `alg` would compute it.
pub fn confused_token(public_pem: &[u8], claims: &Value) -> String {
    hs256(public_pem).sign(claims)
}

/// What one raw handshake attempt produced.
pub struct Attempt {
    /// The client socket's local address (what the gateway sees as the peer).
    pub local: SocketAddr,
    pub response: Response,
    /// For a refusal: the body, read until the gateway closed the connection.
    pub body: Vec<u8>,
    /// For a 101: the open WebSocket.
    pub ws: Option<RawWs>,
}

impl Attempt {
    pub fn status(&self) -> u16 {
        self.response.status
    }

    pub fn ws(&mut self) -> &mut RawWs {
        self.ws
            .as_mut()
            .unwrap_or_else(|| panic!("expected a 101:\n{}", self.response.raw))
    }
}

/// Send `head` (a complete request head, any bytes) on a fresh connection and read the answer:
/// on a 101 the WebSocket is kept open; otherwise everything is read until the gateway closes.
pub async fn attempt_raw(addr: SocketAddr, head: &[u8]) -> Attempt {
    let mut stream = frames::connect(addr).await;
    let local = stream.local_addr().unwrap();
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(head))
        .await
        .expect("request write timed out")
        .expect("write request");
    let (response, mut buf) = frames::read_response_head(&mut stream).await;
    if response.status == 101 {
        return Attempt {
            local,
            response: response.clone(),
            body: Vec::new(),
            ws: Some(RawWs {
                stream,
                buf,
                response,
            }),
        };
    }
    let ended = read_to_end(&mut stream, &mut buf, IO_TIMEOUT).await;
    assert_eq!(
        ended,
        Ended::Eof,
        "a refusal must end with FIN:\n{}",
        response.raw
    );
    Attempt {
        local,
        response,
        body: buf,
        ws: None,
    }
}

/// An upgrade request for `path` with the standard headers plus `extra`.
pub async fn attempt(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Attempt {
    attempt_raw(addr, frames::upgrade_request(addr, path, extra).as_bytes()).await
}

/// Assert `a` is a refusal with `status`, `Connection: close`, a reason body, and for 401 the
/// `WWW-Authenticate` challenge.
pub fn assert_refused(a: &Attempt, status: u16, what: &str) {
    assert_eq!(
        a.status(),
        status,
        "{what}: expected {status}, got:\n{}",
        a.response.raw
    );
    assert!(
        a.response.connection_close(),
        "{what}: a refusal carries Connection: close:\n{}",
        a.response.raw
    );
    assert!(
        !a.body.is_empty(),
        "{what}: a refusal carries a short reason:\n{}",
        a.response.raw
    );
    if status == 401 {
        assert_eq!(
            a.response.header("www-authenticate"),
            Some(WWW_AUTHENTICATE),
            "{what}: a 401 carries the Bearer challenge:\n{}",
            a.response.raw
        );
    } else {
        assert_eq!(
            a.response.header("www-authenticate"),
            None,
            "{what}: only a 401 carries WWW-Authenticate:\n{}",
            a.response.raw
        );
    }
}

/// The refusal log line for the attempt made from `local` (client port pins it to one request).
pub fn refusal_line(local: SocketAddr, path: &str, status: u16, reason: &str) -> String {
    format!("handshake refused client={local} path={path} status={status} reason=\"{reason}\"")
}

/// `wsgate check --config <dir>/wsgate.toml`, bounded: (exit code, stdout, stderr). Variables in
/// `env_remove` are removed from the child's environment.
pub fn check_config(dir: &Path, text: &str, env_remove: &[&str]) -> (i32, String, String) {
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in env_remove {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().expect("spawn wsgate check");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`wsgate check` did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.code().expect("exited with a code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ----- forward auth service -----

/// How the test auth service answers every request.
#[derive(Debug, Clone)]
pub enum AuthReply {
    /// 200, with `X-Auth-User: <user>` when given.
    Allow(Option<&'static str>),
    /// This status, empty body.
    Status(u16),
    /// Read the request and never answer (the connection is held for 30 s).
    Hang,
}

/// One request the auth service received.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl AuthRequest {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name`, or `None`; panics when repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} repeated in {self:?}");
        all.first().copied()
    }
}

/// A minimal HTTP/1.1 auth service on 127.0.0.1:0: records each request head and answers it
/// per its [`AuthReply`], one request per connection.
pub struct AuthServer {
    pub addr: SocketAddr,
    reply: Arc<Mutex<AuthReply>>,
    count: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<AuthRequest>,
    task: JoinHandle<()>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthServer {
    pub async fn start(reply: AuthReply) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind auth service");
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(Mutex::new(reply));
        let (tx, rx) = mpsc::unbounded_channel();
        let (c, r) = (count.clone(), reply.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, tx, reply) = (c.clone(), tx.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        serve_auth(stream, c, tx, reply),
                    )
                    .await;
                });
            }
        });
        AuthServer {
            addr,
            reply,
            count,
            requests: rx,
            task,
        }
    }

    /// Answer the following requests with `reply`.
    pub fn set_reply(&self, reply: AuthReply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// `http://ADDR<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received so far (each counted once its head was read, before it was answered).
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The next request received (in order).
    pub async fn next_request(&mut self) -> AuthRequest {
        tokio::time::timeout(IO_TIMEOUT, self.requests.recv())
            .await
            .expect("the auth service got no request")
            .expect("auth service gone")
    }
}

async fn serve_auth(
    mut s: TcpStream,
    count: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<AuthRequest>,
    reply: Arc<Mutex<AuthReply>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        assert!(buf.len() < 64 * 1024, "auth request head too large");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    count.fetch_add(1, Ordering::SeqCst);
    let _ = tx.send(AuthRequest {
        method,
        target,
        headers,
    });
    let reply = reply.lock().unwrap().clone();
    let answer = match reply {
        AuthReply::Allow(user) => format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            user.map(|u| format!("X-Auth-User: {u}\r\n"))
                .unwrap_or_default()
        ),
        AuthReply::Status(code) => {
            format!("HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        AuthReply::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    };
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
}

// ----- PROXY protocol -----

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    V1 {
        /// `TCP4` or `TCP6`.
        family: String,
        src: SocketAddr,
        dst: SocketAddr,
    },
    V2 {
        /// The version/command byte (0x21: version 2, PROXY).
        ver_cmd: u8,
        /// The family/transport byte (0x11: IPv4 stream, 0x21: IPv6 stream).
        family: u8,
        src: SocketAddr,
        dst: SocketAddr,
        tlvs: Vec<(u8, Vec<u8>)>,
    },
}

impl Proxy {
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        match self {
            Proxy::V1 { src, dst, .. } | Proxy::V2 { src, dst, .. } => (*src, *dst),
        }
    }

    /// The value of TLV `kind` (v2), asserting it appears at most once.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        let Proxy::V2 { tlvs, .. } = self else {
            panic!("not a v2 header: {self:?}")
        };
        let found: Vec<&[u8]> = tlvs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert!(found.len() <= 1, "TLV {kind:#x} repeated: {self:?}");
        found.first().copied()
    }

    pub fn tlv_str(&self, kind: u8) -> Option<String> {
        self.tlv(kind)
            .map(|v| String::from_utf8(v.to_vec()).expect("TLV value is UTF-8"))
    }
}

pub const TLV_SUBJECT: u8 = 0xE0;
pub const TLV_ROUTE: u8 = 0xE1;
pub const TLV_SESSION_ID: u8 = 0xE2;

/// Parse a PROXY header at the front of `buf` with the `ppp` crate (HAProxy's spec, implemented
/// independently of the gateway): `Some((header, its length))`, `None` while incomplete; panics
/// on anything malformed.
pub fn parse_proxy(buf: &[u8]) -> Option<(Proxy, usize)> {
    use ppp::PartialResult;
    let parsed = ppp::HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return None;
    }
    match parsed {
        ppp::HeaderResult::V1(r) => {
            let h = r.unwrap_or_else(|e| panic!("malformed v1 header ({e}): {buf:?}"));
            let (family, src, dst) = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => (
                    "TCP4",
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                ppp::v1::Addresses::Tcp6(a) => (
                    "TCP6",
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                ppp::v1::Addresses::Unknown => panic!("v1 header without addresses: {h:?}"),
            };
            let len = h.header.len();
            Some((
                Proxy::V1 {
                    family: family.to_string(),
                    src,
                    dst,
                },
                len,
            ))
        }
        ppp::HeaderResult::V2(r) => {
            let h = r.unwrap_or_else(|e| panic!("malformed v2 header ({e}): {buf:?}"));
            let (src, dst) = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                ppp::v2::Addresses::IPv6(a) => (
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                ),
                other => panic!("unexpected v2 addresses {other:?}"),
            };
            let tlvs = h
                .tlvs()
                .map(|t| t.unwrap_or_else(|e| panic!("malformed TLV ({e}) in {h:?}")))
                .map(|t| (t.kind, t.value.to_vec()))
                .collect();
            Some((
                Proxy::V2 {
                    ver_cmd: h.command | h.version,
                    family: h.addresses.address_family() | h.protocol,
                    src,
                    dst,
                    tlvs,
                },
                h.len(),
            ))
        }
    }
}

/// Wait until the backend connection `conn` has received a PROXY header followed by at least
/// `payload_len` bytes; returns the header and everything after it.
pub async fn read_proxy(conn: &mut Conn, payload_len: usize) -> (Proxy, Vec<u8>) {
    let mut want = 1;
    loop {
        let got = conn.wait_for_len(want).await;
        match parse_proxy(&got) {
            Some((p, used)) if got.len() >= used + payload_len => {
                return (p, got[used..].to_vec());
            }
            Some((_, used)) => want = used + payload_len,
            None => want = got.len() + 1,
        }
    }
}
