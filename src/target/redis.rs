//! Where tokens map to targets: a Redis server (websockify's TokenRedis), spoken to with a small
//! RESP2 client of our own.
//!
//! Owns the `redis://[[user]:password@]host[:port][/db]` URL ([`RedisSettings`]), the reply
//! parser ([`parse_reply`], pure: bytes in, a reply or "need more" out) and one lookup: a
//! connection of its own, `AUTH` (with the user when given) and `SELECT` when needed, then
//! `GET prefix+token`, sent together and answered in order, all within `source_timeout`. A nil
//! reply (or an empty value) is an unknown token; the value names the target as
//! `host:port` / `unix_socket:/path`, `{"host": "h:p"}` or `{"host": "h", "port": p}`. Anything
//! else (no connection, a refused `AUTH`, an error reply such as `WRONGTYPE`, a reply that is
//! malformed or holds more than [`MAX_BULK_BYTES`], the deadline) makes the source unavailable.
//! Bounded: at most [`MAX_IN_FLIGHT`] lookups per route in flight. Neither the password nor the
//! token is ever logged or part of an error: errors carry [`RedisSettings::redacted_url`] and
//! Redis error codes (`WRONGPASS`), never the server's message, which may quote arguments.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::service::{parse_answer, MAX_IN_FLIGHT};
use super::source::{parse_target, SourceError};
use super::Target;

/// Default Redis port.
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// Largest bulk string (a value) accepted in a reply.
pub const MAX_BULK_BYTES: usize = 64 * 1024;
/// Longest reply line (a status, an error, a number), CRLF excluded.
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// Longest `redis_key_prefix`.
pub const MAX_KEY_PREFIX_BYTES: usize = 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A Redis source's settings, checked. `Debug` and [`Self::redacted_url`] hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: u32,
    key_prefix: String,
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a `redis://` source is refused. Never quotes the URL: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("not a redis://[[user]:password@]host[:port][/db] URL")]
    NotRedis,
    #[error("rediss:// (Redis over TLS) is not supported; use redis://")]
    Tls,
    #[error("query options (?...) and fragments (#...) are not supported in a redis:// URL")]
    QueryOrFragment,
    #[error("the user part needs a ':' before the password: redis://user:password@host or redis://:password@host")]
    NoPassword,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("the user or password has a bad %XX escape or is not UTF-8")]
    BadEscape,
    #[error("the URL has no host")]
    NoHost,
    #[error("the host is not a name, an IPv4 address or a bracketed IPv6 address")]
    BadHost,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("the database (after the '/') is not a number from 0 to 2147483647")]
    BadDb,
}

impl RedisSettings {
    /// `redis://[[user]:password@]host[:port][/db]`: port 6379 and database 0 by default; the
    /// user and password may be percent-encoded.
    pub fn parse(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
    ) -> Result<RedisSettings, RedisUrlError> {
        use RedisUrlError as E;
        if url.starts_with("rediss://") {
            return Err(E::Tls);
        }
        let rest = url.strip_prefix("redis://").ok_or(E::NotRedis)?;
        if rest.contains(['?', '#']) {
            return Err(E::QueryOrFragment);
        }
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let db = match db {
            "" => 0,
            d if d.bytes().all(|b| b.is_ascii_digit()) => d
                .parse::<u32>()
                .ok()
                .filter(|&n| i32::try_from(n).is_ok())
                .ok_or(E::BadDb)?,
            _ => return Err(E::BadDb),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = u.split_once(':').ok_or(E::NoPassword)?;
                if password.is_empty() {
                    return Err(E::EmptyPassword);
                }
                let user = percent_decode(user).ok_or(E::BadEscape)?;
                let password = percent_decode(password).ok_or(E::BadEscape)?;
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or(E::BadHost)?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| E::BadHost)?;
            let port = match p {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(E::BadHost)?),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(E::NoHost);
        }
        let name_ok = host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !name_ok {
            return Err(E::BadHost);
        }
        let port = match port {
            None => DEFAULT_REDIS_PORT,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or(E::BadPort)?,
            Some(_) => return Err(E::BadPort),
        };
        Ok(RedisSettings {
            host: host.to_string(),
            port,
            user,
            password,
            db,
            key_prefix: key_prefix.to_string(),
            timeout,
        })
    }

    /// The URL with the password hidden, port and database spelled out:
    /// `redis://user:***@host:6379/0`.
    pub fn redacted_url(&self) -> String {
        let auth = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_string(),
            _ => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{auth}{host}:{}/{}", self.port, self.db)
    }

    /// What is prepended to the token to make the key.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }
}

/// `%XX` decoded (a `+` stays a `+`); `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One RESP2 reply, as far as a lookup needs them (arrays other than nil are refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR message`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
}

/// Why bytes are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("a reply line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("a value of {0} bytes, more than {MAX_BULK_BYTES}")]
    TooLarge(i64),
    #[error("a malformed reply")]
    Malformed,
    #[error("an unexpected reply of type {0:?}")]
    Unexpected(char),
}

/// The first reply in `buf` and the bytes it took, or `None` when more bytes are needed (then
/// nothing is consumed). Limits are checked before waiting for more: a line longer than
/// [`MAX_LINE_BYTES`] or a bulk string declared longer than [`MAX_BULK_BYTES`] is an error at
/// once.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(line) = line(&buf[1..])? else {
        return Ok(None);
    };
    let head = 1 + line.len() + 2;
    let text = || String::from_utf8(line.to_vec()).map_err(|_| RespError::Malformed);
    let reply = match kind {
        b'+' => Reply::Simple(text()?),
        b'-' => Reply::Error(text()?),
        b':' => Reply::Integer(parse_int(line)?),
        b'$' => match parse_int(line)? {
            -1 => Reply::Nil,
            n if n < 0 => return Err(RespError::Malformed),
            n => {
                let len = usize::try_from(n)
                    .ok()
                    .filter(|&l| l <= MAX_BULK_BYTES)
                    .ok_or(RespError::TooLarge(n))?;
                let end = head + len;
                let Some(tail) = buf.get(end..end + 2) else {
                    return Ok(None);
                };
                if tail != b"\r\n" {
                    return Err(RespError::Malformed);
                }
                return Ok(Some((Reply::Bulk(buf[head..end].to_vec()), end + 2)));
            }
        },
        b'*' if parse_int(line)? == -1 => Reply::Nil,
        other => return Err(RespError::Unexpected(char::from(other))),
    };
    Ok(Some((reply, head)))
}

/// The bytes before the first CRLF (which must end the line: a lone CR or LF is malformed), or
/// `None` when no CRLF is there yet.
fn line(buf: &[u8]) -> Result<Option<&[u8]>, RespError> {
    let window = &buf[..buf.len().min(MAX_LINE_BYTES + 2)];
    match memchr::memchr2(b'\r', b'\n', window) {
        Some(i) if window[i] == b'\n' => Err(RespError::Malformed),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok(Some(&buf[..i])),
            Some(_) => Err(RespError::Malformed),
            // The CR ends the window: the LF may still come, unless the line is already too long.
            None if i <= MAX_LINE_BYTES => Ok(None),
            None => Err(RespError::LineTooLong),
        },
        None if window.len() > MAX_LINE_BYTES => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

/// A decimal integer as Redis writes it: an optional `-` and 1 to 19 digits.
fn parse_int(line: &[u8]) -> Result<i64, RespError> {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Malformed);
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Malformed)
}

/// A command as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// What a value names: a target, or nothing (empty: an unknown token). `host:port` or
/// `unix_socket:/path` as in a token file, `{"host": "h:p"}`, or `{"host": "h", "port": p}`.
pub fn parse_value(value: &[u8]) -> Result<Option<Target>, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "the value is not UTF-8".to_string())?
        .trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| "the value is not a JSON object with host (and port)".to_string())?;
        if v.get("port").is_none() {
            let host = v.get("host").and_then(|h| h.as_str());
            return match host.map(str::trim).and_then(parse_target) {
                Some(t @ Target::Tcp { .. }) => Ok(Some(t)),
                _ => Err("the value's host is not host:port".to_string()),
            };
        }
    }
    parse_answer(None, text.as_bytes()).map_err(|m| m.replace("answer", "the value"))
}

/// The code of an error reply (`WRONGTYPE`, `NOAUTH`, ...): its first word if it is one, so
/// that the server's message, which may quote arguments, is never logged.
fn error_code(message: &str) -> &str {
    let word = message.split_whitespace().next().unwrap_or("");
    let is_code = !word.is_empty()
        && word.len() <= 32
        && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    if is_code {
        word
    } else {
        "an error"
    }
}

/// A Redis source: its settings and the bound on lookups in flight.
pub struct RedisSource {
    settings: RedisSettings,
    permits: Semaphore,
}

impl RedisSource {
    pub fn new(settings: &RedisSettings) -> RedisSource {
        RedisSource {
            settings: settings.clone(),
            permits: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The target for `token`: `None` when the key does not exist.
    pub async fn lookup(&self, token: &str) -> Result<Option<Target>, SourceError> {
        let s = &self.settings;
        let unavailable = |reason: String| SourceError::Redis {
            url: s.redacted_url(),
            reason,
        };
        let deadline = tokio::time::Instant::now() + s.timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.permits.acquire()).await
        else {
            return Err(unavailable(format!(
                "more than {MAX_IN_FLIGHT} lookups in flight"
            )));
        };
        let value = match tokio::time::timeout_at(deadline, self.get(token)).await {
            Err(_) => return Err(unavailable(format!("no answer within {:?}", s.timeout))),
            Ok(Err(reason)) => return Err(unavailable(reason)),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(v))) => v,
        };
        parse_value(&value).map_err(unavailable)
    }

    /// The value of `prefix + token` (`None`: nil), or why there is none.
    async fn get(&self, token: &str) -> Result<Option<Vec<u8>>, String> {
        let s = &self.settings;
        let mut stream = TcpStream::connect((s.host.as_str(), s.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        // AUTH, SELECT and GET in one write; the answers come back in order.
        let mut out = Vec::new();
        let mut steps = Vec::new();
        if let Some(password) = &s.password {
            match &s.user {
                Some(u) => encode_command(&mut out, &[b"AUTH", u.as_bytes(), password.as_bytes()]),
                None => encode_command(&mut out, &[b"AUTH", password.as_bytes()]),
            }
            steps.push("AUTH");
        }
        if s.db != 0 {
            encode_command(&mut out, &[b"SELECT", s.db.to_string().as_bytes()]);
            steps.push("SELECT");
        }
        let key = [s.key_prefix.as_bytes(), token.as_bytes()].concat();
        encode_command(&mut out, &[b"GET", &key]);
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut buf = Vec::new();
        for step in steps {
            match read_reply(&mut stream, &mut buf).await? {
                Reply::Simple(ok) if ok == "OK" => {}
                Reply::Error(e) => return Err(format!("{step} refused ({})", error_code(&e))),
                _ => return Err(format!("unexpected answer to {step}")),
            }
        }
        match read_reply(&mut stream, &mut buf).await? {
            Reply::Nil => Ok(None),
            Reply::Bulk(v) => Ok(Some(v)),
            Reply::Error(e) => Err(format!("GET refused ({})", error_code(&e))),
            _ => Err("unexpected answer to GET".to_string()),
        }
    }
}

/// The next reply on `stream`, with the bytes already read in `buf` (what follows the reply
/// stays there). Bounded by the parser's limits.
async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Reply, String> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        match parse_reply(buf) {
            Ok(Some((reply, used))) => {
                buf.drain(..used);
                return Ok(reply);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            return Err("the connection closed before the answer".to_string());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Result<RedisSettings, RedisUrlError> {
        RedisSettings::parse(u, "", Duration::from_secs(2))
    }

    #[test]
    fn urls_and_their_parts() {
        let s = url("redis://127.0.0.1").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("127.0.0.1", 6379, 0));
        assert_eq!((s.user.as_deref(), s.password.as_deref()), (None, None));
        assert_eq!(s.redacted_url(), "redis://127.0.0.1:6379/0");

        let s = url("redis://:s%40cret@redis.internal:6380/3").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("redis.internal", 6380, 3));
        assert_eq!(s.password.as_deref(), Some("s@cret"));
        assert_eq!(s.user, None);
        assert_eq!(s.redacted_url(), "redis://:***@redis.internal:6380/3");

        let s = url("redis://gw:p:w+d@[::1]:7000/").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("::1", 7000, 0));
        assert_eq!(s.user.as_deref(), Some("gw"));
        assert_eq!(s.password.as_deref(), Some("p:w+d"));
        assert_eq!(s.redacted_url(), "redis://gw:***@[::1]:7000/0");
        assert!(!format!("{s:?}").contains("p:w+d"), "{s:?}");

        assert_eq!(url("redis://[fd00::5]").unwrap().port, 6379);
        assert_eq!(url("redis://h/2147483647").unwrap().db, 2_147_483_647);
    }

    #[test]
    fn bad_urls_are_named() {
        use RedisUrlError as E;
        for (u, e) in [
            ("http://h", E::NotRedis),
            ("redis:/h", E::NotRedis),
            ("rediss://h", E::Tls),
            ("redis://h?db=1", E::QueryOrFragment),
            ("redis://h#x", E::QueryOrFragment),
            ("redis://secret@h", E::NoPassword),
            ("redis://user:@h", E::EmptyPassword),
            ("redis://:%zz@h", E::BadEscape),
            ("redis://:%ff@h", E::BadEscape),
            ("redis://", E::NoHost),
            ("redis://:pw@", E::NoHost),
            ("redis://:6379", E::NoHost),
            ("redis://h h", E::BadHost),
            ("redis://[::1", E::BadHost),
            ("redis://[nope]:1", E::BadHost),
            ("redis://[::1]x", E::BadHost),
            ("redis://h:0", E::BadPort),
            ("redis://h:65536", E::BadPort),
            ("redis://h:", E::BadPort),
            ("redis://h:+1", E::BadPort),
            ("redis://h:1:2", E::BadPort),
            ("redis://h/x", E::BadDb),
            ("redis://h/-1", E::BadDb),
            ("redis://h/1/2", E::BadDb),
            ("redis://h/2147483648", E::BadDb),
        ] {
            assert_eq!(url(u).err(), Some(e), "{u}");
        }
        // No error quotes the URL, which may hold a password.
        let e = url("redis://:hunter2@h:99999").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn replies_parse() {
        let ok = |b: &[u8]| parse_reply(b).unwrap().unwrap();
        assert_eq!(ok(b"+OK\r\n"), (Reply::Simple("OK".into()), 5));
        assert_eq!(
            ok(b"-WRONGTYPE Operation against a key\r\nrest"),
            (Reply::Error("WRONGTYPE Operation against a key".into()), 36)
        );
        assert_eq!(ok(b":-42\r\n"), (Reply::Integer(-42), 6));
        assert_eq!(ok(b"$-1\r\n"), (Reply::Nil, 5));
        assert_eq!(ok(b"*-1\r\n"), (Reply::Nil, 5));
        assert_eq!(ok(b"$0\r\n\r\n"), (Reply::Bulk(Vec::new()), 6));
        assert_eq!(
            ok(b"$5\r\na\r\nb\0\r\n+OK\r\n"),
            (Reply::Bulk(b"a\r\nb\0".to_vec()), 11)
        );
    }

    #[test]
    fn truncated_replies_need_more_and_consume_nothing() {
        let whole: &[&[u8]] = &[b"+OK\r\n", b"$5\r\nhello\r\n", b":7\r\n", b"$-1\r\n"];
        for w in whole {
            for cut in 0..w.len() {
                assert_eq!(parse_reply(&w[..cut]), Ok(None), "{:?}", &w[..cut]);
            }
            assert!(parse_reply(w).unwrap().is_some());
        }
    }

    #[test]
    fn bad_and_oversized_replies_are_errors() {
        for b in [
            &b"+OK\n"[..],
            b"+O\rK\r\n",
            b"$3\r\nabcd\r\n",
            b"$3\r\nabc\n\n",
            b"$-2\r\n",
            b"$+3\r\nabc\r\n",
            b"$\r\n",
            b":1x\r\n",
            b":99999999999999999999\r\n",
            b"+\xff\r\n",
        ] {
            assert_eq!(parse_reply(b), Err(RespError::Malformed), "{b:?}");
        }
        assert_eq!(
            parse_reply(b"*2\r\n$1\r\na\r\n"),
            Err(RespError::Unexpected('*'))
        );
        assert_eq!(parse_reply(b"%1\r\n"), Err(RespError::Unexpected('%')));
        // Refused from the declared length, before any of the value arrives.
        let big = format!("${}\r\n", MAX_BULK_BYTES + 1);
        assert_eq!(parse_reply(big.as_bytes()), Err(RespError::TooLarge(65537)));
        let max = format!("${MAX_BULK_BYTES}\r\n");
        assert_eq!(parse_reply(max.as_bytes()), Ok(None));
        // A line without an end, longer than the bound.
        let mut long = vec![b'+'; MAX_LINE_BYTES + 2];
        assert_eq!(parse_reply(&long), Err(RespError::LineTooLong));
        long.truncate(MAX_LINE_BYTES);
        assert_eq!(parse_reply(&long), Ok(None));
        long.extend_from_slice(b"\r");
        assert_eq!(parse_reply(&long), Ok(None));
        long.extend_from_slice(b"\n");
        assert!(matches!(
            parse_reply(&long),
            Ok(Some((Reply::Simple(_), _)))
        ));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"GET", b"vnc:a b"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$7\r\nvnc:a b\r\n");
    }

    #[test]
    fn values_name_targets() {
        let tcp = |h: &str, p| {
            Ok(Some(Target::Tcp {
                host: h.into(),
                port: p,
            }))
        };
        assert_eq!(parse_value(b"10.0.0.5:5901\n"), tcp("10.0.0.5", 5901));
        assert_eq!(
            parse_value(b"unix_socket:/run/vnc.sock"),
            Ok(Some(Target::Unix("/run/vnc.sock".into())))
        );
        assert_eq!(
            parse_value(br#"{"host": "vm1.internal:5902"}"#),
            tcp("vm1.internal", 5902)
        );
        assert_eq!(
            parse_value(br#"{"host": "vm1", "port": 5903}"#),
            tcp("vm1", 5903)
        );
        assert_eq!(
            parse_value(br#"{"host": "fd00::1", "port": "5904"}"#),
            tcp("fd00::1", 5904)
        );
        assert_eq!(parse_value(b"  "), Ok(None));
        for bad in [
            &b"10.0.0.5"[..],
            br#"{"host": "vm1"}"#,
            br#"{"host": "unix_socket:/x"}"#,
            br#"{"host": 5}"#,
            br#"{"host": "h", "port": 0}"#,
            b"{nope",
            b"\xff",
        ] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_codes_only() {
        assert_eq!(
            error_code("WRONGPASS invalid username-password pair"),
            "WRONGPASS"
        );
        assert_eq!(
            error_code("ERR unknown command 'x', with args beginning with: 'k'"),
            "ERR"
        );
        assert_eq!(error_code("secret-key is bad"), "an error");
        assert_eq!(error_code(""), "an error");
    }
}
