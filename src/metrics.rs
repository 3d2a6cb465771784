//! Prometheus metrics: what the gateway counts, and their exposition text for `/metrics`
//! (OpenMetrics, or the Prometheus text format 0.0.4 for clients that ask for it).
//!
//! Owns the registry and every metric family. Hot-path updates are single atomic operations on
//! handles resolved once per route ([`RouteMetrics`], [`RouteCounters`]); label sets are small
//! and bounded (route paths come from the config, status and close codes from fixed tables).

use std::sync::{Arc, OnceLock, RwLock};

use crate::error::Side;
use crate::fallback::Transport;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub route: String,
    /// The close code sent, or "none" when the connection was cut without one.
    pub code: String,
    /// client, backend or gateway.
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The close code sent.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub route: String,
    /// "up" (client -> backend) or "down" (backend -> client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub route: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// file_descriptors, memory, buffers, ephemeral_ports.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    pub route: String,
    /// allowed, denied (401/403), unavailable (503).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub route: String,
    /// "1.1" or "2".
    pub http_version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub route: String,
    /// "websocket", "streaming" or "polling" (a fallback session's last down transport).
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbuseLabel {
    /// What the client overdid: "settings", "ping", "reset", "protocol".
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyRefusedLabel {
    /// The listener's bound address.
    pub listener: String,
    /// "untrusted", "missing", "malformed", "too_long", "timeout", "closed".
    pub reason: &'static str,
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    pub sessions_open: Family<RouteLabel, Gauge>,
    pub sessions_total: Family<RouteLabel, Counter>,
    pub handshakes: Family<HandshakeLabel, Counter>,
    pub closes: Family<CloseLabel, Counter>,
    /// Sessions closed because the gateway drained, by the code sent (`drain_close_code`).
    pub drain_closes: Family<CodeLabel, Counter>,
    pub bytes: Family<DirectionLabel, Counter>,
    pub messages: Family<DirectionLabel, Counter>,
    pub backend_connect_seconds: Family<BackendLabel, Histogram>,
    pub backend_connect_failures: Family<BackendLabel, Counter>,
    pub backend_up: Family<BackendLabel, Gauge>,
    pub session_seconds: Family<RouteLabel, Histogram>,
    pub auth: Family<AuthLabel, Counter>,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    /// Connections closed on a `proxy_protocol` listener before any HTTP.
    pub proxy_header_refused: Family<ProxyRefusedLabel, Counter>,
    pub local_resource_errors: Family<ResourceLabel, Counter>,
    pub sessions_by_version: Family<VersionLabel, Counter>,
    pub sessions_by_transport: Family<TransportLabel, Counter>,
    pub http2_connections: Counter,
    pub http2_abuse: Family<AbuseLabel, Counter>,
    pub recorded_bytes: Family<RouteLabel, Counter>,
    pub recording_gaps: Family<RouteLabel, Counter>,
}

fn connect_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn session_histogram() -> Histogram {
    // 10 ms .. ~3 days
    Histogram::new(exponential_buckets(0.01, 4.0, 13))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("wsgate");
        let m = Metrics {
            sessions_open: Family::default(),
            sessions_total: Family::default(),
            handshakes: Family::default(),
            closes: Family::default(),
            drain_closes: Family::default(),
            bytes: Family::default(),
            messages: Family::default(),
            backend_connect_seconds: Family::new_with_constructor(connect_histogram),
            backend_connect_failures: Family::default(),
            backend_up: Family::default(),
            session_seconds: Family::new_with_constructor(session_histogram),
            auth: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            proxy_header_refused: Family::default(),
            local_resource_errors: Family::default(),
            sessions_by_version: Family::default(),
            sessions_by_transport: Family::default(),
            http2_connections: Counter::default(),
            http2_abuse: Family::default(),
            recorded_bytes: Family::default(),
            recording_gaps: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_open",
            "WebSocket sessions open now",
            m.sessions_open.clone(),
        );
        registry.register(
            "sessions",
            "WebSocket sessions opened",
            m.sessions_total.clone(),
        );
        registry.register(
            "sessions_by_http_version",
            "WebSocket sessions opened, by the HTTP version of their handshake (1.1: Upgrade, 2: extended CONNECT)",
            m.sessions_by_version.clone(),
        );
        registry.register(
            "sessions_by_transport",
            "Sessions ended, by client transport (websocket; streaming or polling: the fallback transport, the last one the session used)",
            m.sessions_by_transport.clone(),
        );
        registry.register(
            "http2_connections",
            "Client connections that spoke HTTP/2",
            m.http2_connections.clone(),
        );
        registry.register(
            "http2_abuse_closes",
            "HTTP/2 connections closed for frame floods, by the kind of frame",
            m.http2_abuse.clone(),
        );
        registry.register(
            "handshakes",
            "Upgrade attempts by answer status (101 = accepted)",
            m.handshakes.clone(),
        );
        registry.register(
            "closes",
            "Sessions ended, by close code sent and by who caused the end",
            m.closes.clone(),
        );
        registry.register(
            "drain_closes",
            "Sessions closed because the gateway drained (SIGTERM/SIGINT), by the close code sent",
            m.drain_closes.clone(),
        );
        registry.register(
            "bytes",
            "Message payload bytes by direction",
            m.bytes.clone(),
        );
        registry.register("messages", "Messages by direction", m.messages.clone());
        registry.register(
            "backend_connect_seconds",
            "Time to connect to a backend",
            m.backend_connect_seconds.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Failed backend connects (refused, unreachable, timed out)",
            m.backend_connect_failures.clone(),
        );
        registry.register(
            "backend_up",
            "1 when a backend is in rotation, 0 while it is skipped after failures",
            m.backend_up.clone(),
        );
        registry.register(
            "session_seconds",
            "Session durations",
            m.session_seconds.clone(),
        );
        registry.register("auth", "Credential checks by outcome", m.auth.clone());
        registry.register(
            "connections_open",
            "Client connections open now (before and after the upgrade)",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused by max_connections or max_connections_per_ip",
            m.connections_refused.clone(),
        );
        registry.register(
            "proxy_header_refused",
            "Connections closed on a proxy_protocol listener before any HTTP: a peer not in \
             trusted, or a missing, malformed or late PROXY header",
            m.proxy_header_refused.clone(),
        );
        registry.register(
            "local_resource_errors",
            "Accepts and backend connects that failed because the gateway ran out of its own file \
             descriptors, memory, socket buffers or ephemeral ports",
            m.local_resource_errors.clone(),
        );
        registry.register(
            "recorded_bytes",
            "Message bytes written to session recordings (record = \"DIR\")",
            m.recorded_bytes.clone(),
        );
        registry.register(
            "recording_gaps",
            "Gap lines in session recordings: bytes left out because the writer fell behind or \
             the file reached record_max_bytes",
            m.recording_gaps.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same samples in the Prometheus text format 0.0.4, for clients that ask for it.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    pub fn handshake(&self, route: &str, status: u16) {
        self.handshakes
            .get_or_create(&HandshakeLabel {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// An accept or backend connect failed for lack of a local resource (`kind`).
    pub fn local_resource_error(&self, kind: &'static str) {
        self.local_resource_errors
            .get_or_create(&ResourceLabel { kind })
            .inc();
    }

    /// Handles for one session's hot-path counters.
    pub fn route_counters(&self, route: &str) -> RouteCounters {
        let dir = |direction| DirectionLabel {
            route: route.to_string(),
            direction,
        };
        // One statement each: a family's read guard lives until the end of its statement, and
        // creating the next child needs the write lock.
        let bytes_up = self.bytes.get_or_create(&dir("up")).clone();
        let bytes_down = self.bytes.get_or_create(&dir("down")).clone();
        let messages_up = self.messages.get_or_create(&dir("up")).clone();
        let messages_down = self.messages.get_or_create(&dir("down")).clone();
        RouteCounters {
            bytes_up,
            bytes_down,
            messages_up,
            messages_down,
        }
    }
}

/// The metrics a route's sessions update, each resolved from its family once per route and
/// kept: a session's start and end are then atomic operations on shared handles, with no label
/// built, hashed or looked up (about 20 of those per session otherwise). A handle is resolved on
/// first use, so a route shows in the exposition only what it has counted, as before.
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: String,
    sessions_open: OnceLock<Gauge>,
    sessions_total: OnceLock<Counter>,
    session_seconds: OnceLock<Histogram>,
    counters: OnceLock<RouteCounters>,
    /// Handshakes answered 101 (WebSocket) and 200 (fallback `open`).
    handshakes_101: OnceLock<Counter>,
    handshakes_200: OnceLock<Counter>,
    /// Sessions by HTTP version: "1.1", "2".
    by_version: [OnceLock<Counter>; 2],
    /// Sessions by transport: "websocket", "streaming", "polling".
    by_transport: [OnceLock<Counter>; 3],
    /// Closes by (code sent, side): the few combinations a route sees, searched in order.
    closes: RwLock<Vec<(Option<u16>, Side, Counter)>>,
}

/// The handle in `slot`, resolved from `family` with `label` the first time.
fn resolved<'a, L, M, C>(
    slot: &'a OnceLock<M>,
    family: &Family<L, M, C>,
    label: impl FnOnce() -> L,
) -> &'a M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    slot.get_or_init(|| family.get_or_create(&label()).clone())
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    pub fn new(metrics: Arc<Metrics>, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            metrics,
            route: route.to_string(),
            sessions_open: OnceLock::new(),
            sessions_total: OnceLock::new(),
            session_seconds: OnceLock::new(),
            counters: OnceLock::new(),
            handshakes_101: OnceLock::new(),
            handshakes_200: OnceLock::new(),
            by_version: Default::default(),
            by_transport: Default::default(),
            closes: RwLock::new(Vec::new()),
        })
    }

    fn label(&self) -> RouteLabel {
        RouteLabel {
            route: self.route.clone(),
        }
    }

    /// A handshake of this route answered with `status`.
    pub fn handshake(&self, status: u16) {
        let slot = match status {
            101 => &self.handshakes_101,
            200 => &self.handshakes_200,
            _ => return self.metrics.handshake(&self.route, status),
        };
        resolved(slot, &self.metrics.handshakes, || HandshakeLabel {
            route: self.route.clone(),
            status,
        })
        .inc();
    }

    fn open(&self) -> &Gauge {
        resolved(&self.sessions_open, &self.metrics.sessions_open, || {
            self.label()
        })
    }

    /// A session started over HTTP `http_version` ("1.1" or "2").
    pub fn session_opened(&self, http_version: &'static str) {
        self.open().inc();
        resolved(&self.sessions_total, &self.metrics.sessions_total, || {
            self.label()
        })
        .inc();
        let slot = &self.by_version[usize::from(http_version != "1.1")];
        resolved(slot, &self.metrics.sessions_by_version, || VersionLabel {
            route: self.route.clone(),
            http_version,
        })
        .inc();
    }

    /// A session ended after `duration`, over `transport`, its Close `code` (`None`: none was
    /// sent) decided by `by`.
    pub fn session_closed(
        &self,
        duration: std::time::Duration,
        transport: Transport,
        code: Option<u16>,
        by: Side,
    ) {
        let label = || TransportLabel {
            route: self.route.clone(),
            transport: transport.label(),
        };
        resolved(
            &self.by_transport[transport as usize],
            &self.metrics.sessions_by_transport,
            label,
        )
        .inc();
        self.open().dec();
        resolved(&self.session_seconds, &self.metrics.session_seconds, || {
            self.label()
        })
        .observe(duration.as_secs_f64());
        self.close_counter(code, by).inc();
    }

    fn close_counter(&self, code: Option<u16>, by: Side) -> Counter {
        let find = |closes: &[(Option<u16>, Side, Counter)]| {
            closes
                .iter()
                .find(|(c, b, _)| *c == code && *b == by)
                .map(|(_, _, counter)| counter.clone())
        };
        if let Some(c) = find(&self.closes.read().unwrap_or_else(|e| e.into_inner())) {
            return c;
        }
        let mut closes = self.closes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = find(&closes) {
            return c;
        }
        let counter = self
            .metrics
            .closes
            .get_or_create(&CloseLabel {
                route: self.route.clone(),
                code: code.map_or_else(|| "none".to_string(), |c| c.to_string()),
                by: by.to_string(),
            })
            .clone();
        closes.push((code, by, counter.clone()));
        counter
    }

    /// The route's traffic counters.
    pub fn counters(&self) -> &RouteCounters {
        self.counters
            .get_or_init(|| self.metrics.route_counters(&self.route))
    }
}

/// Per-route traffic counters, resolved once per route ([`RouteMetrics::counters`]).
#[derive(Clone, Debug, Default)]
pub struct RouteCounters {
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub messages_up: Counter,
    pub messages_down: Counter,
}

/// OpenMetrics text -> Prometheus text format 0.0.4. The two differ, for what this registry
/// writes, in three things: a counter family is named with its `_total` suffix in `# HELP` and
/// `# TYPE`; there are no `# UNIT` lines, `_created` samples or `# EOF`. `# HELP` comes before
/// `# TYPE` in both, so a family's HELP line is held until its TYPE line says what it is.
pub(crate) fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => {
                    counter = Some(name);
                    (format!("{name}_total"), "counter")
                }
                "gauge" | "histogram" | "summary" => {
                    counter = None;
                    (name.to_string(), kind)
                }
                _ => {
                    counter = None;
                    (name.to_string(), "untyped")
                }
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(c) = counter {
            if line
                .strip_prefix(c)
                .is_some_and(|rest| rest.starts_with("_created"))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP wsgate_sessions Sessions opened.\n# TYPE wsgate_sessions counter\n\
                  wsgate_sessions_total{route=\"/a\"} 2\nwsgate_sessions_created{route=\"/a\"} 1.5\n\
                  # HELP wsgate_open Open now.\n# TYPE wsgate_open gauge\n# UNIT wsgate_open x\n\
                  wsgate_open 1\n# HELP wsgate_s Durations.\n# TYPE wsgate_s histogram\n\
                  wsgate_s_bucket{le=\"+Inf\"} 1\nwsgate_s_sum 0.5\nwsgate_s_count 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP wsgate_sessions_total Sessions opened.\n# TYPE wsgate_sessions_total counter\n\
             wsgate_sessions_total{route=\"/a\"} 2\n\
             # HELP wsgate_open Open now.\n# TYPE wsgate_open gauge\nwsgate_open 1\n\
             # HELP wsgate_s Durations.\n# TYPE wsgate_s histogram\n\
             wsgate_s_bucket{le=\"+Inf\"} 1\nwsgate_s_sum 0.5\nwsgate_s_count 1\n"
        );
        // The registry's own text: every sample kept, no OpenMetrics-only line left.
        let m = Metrics::new();
        m.handshake("/echo", 101);
        let om = m.encode();
        let text = m.encode_prometheus_text();
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&om), samples(&text));
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE wsgate_handshakes_total counter"),
            "{text}"
        );
    }

    #[test]
    fn route_handles_count_under_the_route_labels() {
        let m = Metrics::new();
        let r = RouteMetrics::new(m.clone(), "/echo");
        let text = m.encode();
        assert!(
            !text.contains("route=\"/echo\""),
            "nothing before use: {text}"
        );
        r.handshake(101);
        r.handshake(101);
        r.handshake(403);
        r.session_opened("1.1");
        r.session_opened("2");
        r.session_closed(
            Duration::from_millis(5),
            Transport::WebSocket,
            Some(1000),
            Side::Client,
        );
        r.session_closed(
            Duration::from_millis(5),
            Transport::Polling,
            None,
            Side::Gateway,
        );
        r.counters().bytes_up.inc_by(7);
        // Another handle of the same route (a reload) counts into the same series.
        RouteMetrics::new(m.clone(), "/echo").session_closed(
            Duration::ZERO,
            Transport::WebSocket,
            Some(1000),
            Side::Client,
        );
        let text = m.encode();
        for line in [
            "wsgate_handshakes_total{route=\"/echo\",status=\"101\"} 2",
            "wsgate_handshakes_total{route=\"/echo\",status=\"403\"} 1",
            "wsgate_sessions_total{route=\"/echo\"} 2",
            "wsgate_sessions_open{route=\"/echo\"} -1",
            "wsgate_closes_total{route=\"/echo\",code=\"1000\",by=\"client\"} 2",
            "wsgate_closes_total{route=\"/echo\",code=\"none\",by=\"gateway\"} 1",
            "wsgate_bytes_total{route=\"/echo\",direction=\"up\"} 7",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn exposition_contains_updates() {
        let m = Metrics::new();
        m.handshake("/echo", 101);
        m.route_counters("/echo").bytes_up.inc_by(5);
        let text = m.encode();
        assert!(
            text.contains("wsgate_handshakes_total{route=\"/echo\",status=\"101\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_bytes_total{route=\"/echo\",direction=\"up\"} 5"),
            "{text}"
        );
    }
}
