//! One line of a recording <-> one [`Entry`]. The only place that knows the line layout.
//!
//! What `data` holds, per framing mode (so that one direction's `data`, concatenated, is the
//! byte stream of the backend connection in that direction):
//!
//! | framing         | `in` (client -> backend)               | `out` (backend -> client)          |
//! |-----------------|----------------------------------------|------------------------------------|
//! | raw             | each frame's payload, as streamed      | each read from the backend         |
//! | lines           | the line with its `\n`                 | the line with its `\n` or `\r\n`   |
//! | length-prefixed | the payload; the 5-byte envelope header is implied by kind and length    |
//!
//! A text entry's `data` is a JSON string; a binary one's is base64. A text entry whose bytes
//! are not UTF-8 on their own (a piece of a fragmented message cut inside a character, on a raw
//! route) is base64 too and says so with `"enc":"base64"`.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The `v` of the start line.
pub const FORMAT_VERSION: u32 = 1;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which way the bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Client -> backend: what was written to the backend.
    In,
    /// Backend -> client: what was read from the backend.
    Out,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }

    /// 0 for `in`, 1 for `out` (per-direction counters).
    pub(crate) fn index(self) -> usize {
        match self {
            Dir::In => 0,
            Dir::Out => 1,
        }
    }
}

/// The WebSocket kind of the message the bytes belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Binary,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Binary => "binary",
        }
    }
}

/// Why a gap line says bytes were left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GapReason {
    /// The writer fell behind: its queue was full when the bytes passed.
    #[serde(rename = "queue full")]
    QueueFull,
    /// `record_max_bytes` was reached.
    #[serde(rename = "size limit")]
    SizeLimit,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::QueueFull => "queue full",
            GapReason::SizeLimit => "size limit",
        }
    }
}

/// The first line: who the session was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub session: u64,
    pub route: String,
    /// `ip:port` of the client.
    pub client: String,
    pub backend: String,
    pub subprotocol: Option<String>,
    /// `raw`, `lines` or `length-prefixed`.
    pub framing: String,
    /// When the session started, RFC 3339 in UTC.
    pub time: String,
}

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Start(Header),
    /// `t`: milliseconds since the start.
    Message {
        t: u64,
        dir: Dir,
        kind: Kind,
        data: Vec<u8>,
    },
    Gap {
        t: u64,
        dir: Dir,
        bytes: u64,
        reason: GapReason,
    },
    /// `close`: the close code sent to the client (1006 when none was sent).
    End {
        t: u64,
        close: u16,
        reason: String,
    },
}

/// Why a line is not an entry.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON object of the recording format: {0}")]
    Json(#[from] serde_json::Error),
    #[error("recording format version {0} is not supported (this wsgate reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("a {kind} line needs \"{key}\"")]
    Missing {
        kind: &'static str,
        key: &'static str,
    },
    #[error("unknown line type {0:?}")]
    UnknownType(String),
    #[error("\"data\" is not valid base64")]
    Base64,
    #[error("unknown \"enc\" {0:?} (only \"base64\")")]
    Encoding(String),
}

/// Every key any line may have; which ones a line needs depends on its `type`. Unknown keys are
/// ignored, so that a newer writer's additions do not stop an older reader.
#[derive(Deserialize)]
struct RawLine {
    #[serde(rename = "type")]
    ty: Option<String>,
    v: Option<u32>,
    session: Option<u64>,
    route: Option<String>,
    client: Option<String>,
    backend: Option<String>,
    subprotocol: Option<String>,
    framing: Option<String>,
    time: Option<String>,
    t: Option<u64>,
    dir: Option<Dir>,
    kind: Option<Kind>,
    enc: Option<String>,
    data: Option<String>,
    bytes: Option<u64>,
    reason: Option<String>,
    close: Option<u16>,
}

fn need<T>(v: Option<T>, kind: &'static str, key: &'static str) -> Result<T, LineError> {
    v.ok_or(LineError::Missing { kind, key })
}

impl Entry {
    /// Parse one line (without its `\n`).
    pub fn parse(line: &[u8]) -> Result<Entry, LineError> {
        let raw: RawLine = serde_json::from_slice(line)?;
        match raw.ty.as_deref() {
            None => {
                const K: &str = "message";
                let kind = need(raw.kind, K, "kind")?;
                let text = need(raw.data, K, "data")?;
                let base64 = match raw.enc.as_deref() {
                    None => kind == Kind::Binary,
                    Some("base64") => true,
                    Some(other) => return Err(LineError::Encoding(other.to_string())),
                };
                let data = if base64 {
                    B64.decode(text.as_bytes()).map_err(|_| LineError::Base64)?
                } else {
                    text.into_bytes()
                };
                Ok(Entry::Message {
                    t: need(raw.t, K, "t")?,
                    dir: need(raw.dir, K, "dir")?,
                    kind,
                    data,
                })
            }
            Some("start") => {
                const K: &str = "start";
                let v = need(raw.v, K, "v")?;
                if v != FORMAT_VERSION {
                    return Err(LineError::Version(v));
                }
                Ok(Entry::Start(Header {
                    session: need(raw.session, K, "session")?,
                    route: need(raw.route, K, "route")?,
                    client: need(raw.client, K, "client")?,
                    backend: need(raw.backend, K, "backend")?,
                    subprotocol: raw.subprotocol,
                    framing: need(raw.framing, K, "framing")?,
                    time: need(raw.time, K, "time")?,
                }))
            }
            Some("gap") => {
                const K: &str = "gap";
                let reason = need(raw.reason, K, "reason")?;
                let reason = match reason.as_str() {
                    "queue full" => GapReason::QueueFull,
                    "size limit" => GapReason::SizeLimit,
                    _ => return Err(LineError::UnknownType(format!("gap reason {reason}"))),
                };
                Ok(Entry::Gap {
                    t: need(raw.t, K, "t")?,
                    dir: need(raw.dir, K, "dir")?,
                    bytes: need(raw.bytes, K, "bytes")?,
                    reason,
                })
            }
            Some("end") => {
                const K: &str = "end";
                Ok(Entry::End {
                    t: need(raw.t, K, "t")?,
                    close: need(raw.close, K, "close")?,
                    reason: raw.reason.unwrap_or_default(),
                })
            }
            Some(other) => Err(LineError::UnknownType(other.to_string())),
        }
    }

    /// Append this entry as one line, `\n` included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Start(h) => encode_start(out, h),
            Entry::Message { t, dir, kind, data } => encode_message(out, *t, *dir, *kind, data),
            Entry::Gap {
                t,
                dir,
                bytes,
                reason,
            } => encode_gap(out, *t, *dir, *bytes, *reason),
            Entry::End { t, close, reason } => encode_end(out, *t, *close, reason),
        }
    }

    /// Milliseconds since the start (0 for the start line).
    pub fn t(&self) -> u64 {
        match self {
            Entry::Start(_) => 0,
            Entry::Message { t, .. } | Entry::Gap { t, .. } | Entry::End { t, .. } => *t,
        }
    }
}

/// A JSON string, escaped by serde_json (it cannot fail on a `str` into a `Vec`).
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(crate) fn encode_start(out: &mut Vec<u8>, h: &Header) {
    #[derive(Serialize)]
    struct Start<'a> {
        v: u32,
        #[serde(rename = "type")]
        ty: &'a str,
        session: u64,
        route: &'a str,
        client: &'a str,
        backend: &'a str,
        subprotocol: Option<&'a str>,
        framing: &'a str,
        time: &'a str,
    }
    let _ = serde_json::to_writer(
        &mut *out,
        &Start {
            v: FORMAT_VERSION,
            ty: "start",
            session: h.session,
            route: &h.route,
            client: &h.client,
            backend: &h.backend,
            subprotocol: h.subprotocol.as_deref(),
            framing: &h.framing,
            time: &h.time,
        },
    );
    out.push(b'\n');
}

pub(crate) fn encode_message(out: &mut Vec<u8>, t: u64, dir: Dir, kind: Kind, data: &[u8]) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"t\":{t},\"dir\":\"{}\",\"kind\":\"{}\",",
        dir.as_str(),
        kind.as_str()
    );
    let text = match kind {
        Kind::Text => std::str::from_utf8(data).ok(),
        Kind::Binary => None,
    };
    match text {
        Some(s) => {
            out.extend_from_slice(b"\"data\":");
            json_str(out, s);
        }
        None => {
            if kind == Kind::Text {
                out.extend_from_slice(b"\"enc\":\"base64\",");
            }
            out.extend_from_slice(b"\"data\":\"");
            let at = out.len();
            out.resize(at + base64::encoded_len(data.len(), true).unwrap_or(0), 0);
            // The room is exactly the encoded length, so this cannot fail.
            let n = B64.encode_slice(data, &mut out[at..]).unwrap_or(0);
            out.truncate(at + n);
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"}\n");
}

pub(crate) fn encode_gap(out: &mut Vec<u8>, t: u64, dir: Dir, bytes: u64, reason: GapReason) {
    use std::io::Write;
    let _ = writeln!(
        out,
        "{{\"t\":{t},\"type\":\"gap\",\"dir\":\"{}\",\"bytes\":{bytes},\"reason\":\"{}\"}}",
        dir.as_str(),
        reason.as_str()
    );
}

pub(crate) fn encode_end(out: &mut Vec<u8>, t: u64, close: u16, reason: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"t\":{t},\"type\":\"end\",\"close\":{close},\"reason\":"
    );
    json_str(out, reason);
    out.extend_from_slice(b"}\n");
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar (the
/// era-based method: 400-year eras of 146 097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn round_trip(e: &Entry) -> Vec<u8> {
        let mut line = Vec::new();
        e.encode(&mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let back = Entry::parse(&line[..line.len() - 1]).unwrap();
        assert_eq!(&back, e);
        line
    }

    #[test]
    fn every_kind_of_line_round_trips() {
        let header = Header {
            session: 7,
            route: "/a \"quoted\"".into(),
            client: "[::1]:5000".into(),
            backend: "unix:/run/x.sock".into(),
            subprotocol: Some("chat".into()),
            framing: "lines".into(),
            time: "2024-05-01T12:00:00.000Z".into(),
        };
        let line = round_trip(&Entry::Start(header.clone()));
        assert!(line.starts_with(b"{\"v\":1,\"type\":\"start\",\"session\":7,"));
        round_trip(&Entry::Start(Header {
            subprotocol: None,
            ..header
        }));
        let line = round_trip(&Entry::Message {
            t: 12,
            dir: Dir::In,
            kind: Kind::Text,
            data: b"hello \"\xc3\xa9\"\n".to_vec(),
        });
        assert_eq!(
            line,
            b"{\"t\":12,\"dir\":\"in\",\"kind\":\"text\",\"data\":\"hello \\\"\xc3\xa9\\\"\\n\"}\n"
        );
        let line = round_trip(&Entry::Message {
            t: 13,
            dir: Dir::Out,
            kind: Kind::Binary,
            data: b"hello\n".to_vec(),
        });
        assert_eq!(
            line,
            b"{\"t\":13,\"dir\":\"out\",\"kind\":\"binary\",\"data\":\"aGVsbG8K\"}\n"
        );
        // Half a character: still text, carried as base64.
        let line = round_trip(&Entry::Message {
            t: 14,
            dir: Dir::In,
            kind: Kind::Text,
            data: vec![b'a', 0xc3],
        });
        assert!(line.windows(14).any(|w| w == b"\"enc\":\"base64\""));
        round_trip(&Entry::Message {
            t: 15,
            dir: Dir::In,
            kind: Kind::Binary,
            data: Vec::new(),
        });
        round_trip(&Entry::Gap {
            t: 40,
            dir: Dir::Out,
            bytes: 65536,
            reason: GapReason::QueueFull,
        });
        round_trip(&Entry::Gap {
            t: 41,
            dir: Dir::In,
            bytes: 1,
            reason: GapReason::SizeLimit,
        });
        round_trip(&Entry::End {
            t: 900,
            close: 1000,
            reason: "client closed \u{1}".into(),
        });
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for line in [
            &b""[..],
            b"{",
            b"[]",
            b"{}",
            b"{\"t\":1,\"dir\":\"in\",\"kind\":\"binary\",\"data\":\"!!\"}",
            b"{\"t\":1,\"dir\":\"up\",\"kind\":\"binary\",\"data\":\"\"}",
            b"{\"t\":1,\"dir\":\"in\",\"kind\":\"text\",\"enc\":\"hex\",\"data\":\"\"}",
            b"{\"v\":2,\"type\":\"start\"}",
            b"{\"v\":1,\"type\":\"start\",\"session\":1}",
            b"{\"t\":1,\"type\":\"gap\",\"dir\":\"in\",\"bytes\":1,\"reason\":\"disk\"}",
            b"{\"t\":1,\"type\":\"other\"}",
            b"{\"t\":-1,\"type\":\"end\",\"close\":1000}",
        ] {
            assert!(
                Entry::parse(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // Unknown keys are ignored; an end line's reason may be absent.
        assert_eq!(
            Entry::parse(b"{\"t\":5,\"type\":\"end\",\"close\":1006,\"extra\":[1]}").unwrap(),
            Entry::End {
                t: 5,
                close: 1006,
                reason: String::new()
            }
        );
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 13:14:15.678.
        let t = UNIX_EPOCH + Duration::from_millis(951_830_055_678);
        assert_eq!(rfc3339(t), "2000-02-29T13:14:15.678Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }
}
