//! The files operators deploy wsgate with, checked by the tools that consume them:
//! `deploy/kubernetes/*.yaml` against the Kubernetes API schemas (kubernetes-validate, offline)
//! and against the gateway (the ConfigMap's config.toml loads; probes, ports, annotations and the
//! termination grace agree with it); `deploy/systemd/*` with `systemd-analyze verify`; the admin
//! `/metrics` text with `promtool check metrics`; and a real Prometheus server scraping wsgate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, backends, ops, TestGateway};
use ops::WAIT;

fn deploy_dir(kind: &str) -> PathBuf {
    support::repo_root().join("deploy").join(kind)
}

/// The repository's `.venv` (scripts/test.sh installs kubernetes-validate there).
fn venv_bin(name: &str) -> PathBuf {
    support::repo_root().join(".venv/bin").join(name)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// Every document of the manifests, as JSON (read by PyYAML, which kubernetes-validate uses).
fn documents() -> Vec<Value> {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             print(json.dumps(docs))",
        )
        .args(manifests())
        .output()
        .expect("run .venv/bin/python (scripts/test.sh creates it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate (scripts/test.sh installs it into .venv)")
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    // The default schema version (the newest the package ships) and the oldest the Deployment
    // needs (its preStop `sleep` came with 1.30).
    for version in ["1.37.0", "1.30.0"] {
        let out = validate(&manifests(), version);
        assert!(
            out.status.success(),
            "kubernetes-validate -k {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The check is real: a wrong type and an unknown field are refused.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy_dir("kubernetes").join("deployment.yaml")).unwrap();
    for (from, to) in [
        ("replicas: 3", "replicas: three"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: true\n            readOnlyRoot: true",
        ),
    ] {
        assert!(text.contains(from));
        let bad = dir.path().join("deployment.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        assert!(!validate(&[bad], "1.37.0").status.success(), "{to}");
    }
}

#[test]
fn kubernetes_manifests_agree_with_the_gateway_config() {
    let docs = documents();
    let toml = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("the ConfigMap holds config.toml")
        .to_string();
    // The library's parser, and the command line's check.
    let config = wsgate::Config::parse(&toml, Path::new("/etc/wsgate")).expect("config.toml loads");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &toml).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["--config", "/etc/wsgate/config.toml"])
    );
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    let admin = config.admin.as_ref().expect("[admin] for the probes");
    assert_eq!(port("admin"), u64::from(admin.bind.port()));
    match &config.listeners[0].bind {
        wsgate::config::ListenAddr::Tcp(a) => assert_eq!(port("ws"), u64::from(a.port())),
        other => panic!("{other:?}"),
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");

    // The drain fits in the grace period: preStop pause + shutdown_grace + a margin.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = config.http.shutdown_grace.as_secs();
    assert!(pre_stop >= 1);
    assert!(
        grace >= pre_stop + drain + 5,
        "terminationGracePeriodSeconds {grace} < preStop {pre_stop} + shutdown_grace {drain} + 5"
    );
    // A rolling update spreads the reconnects: Close 1012 over a window inside the grace
    // (the loader refuses a window not shorter than shutdown_grace).
    assert_eq!(config.http.drain_close_code.get(), 1012);
    assert!(config.http.drain_window >= std::time::Duration::from_secs(1));

    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(
        annotations["prometheus.io/port"],
        admin.bind.port().to_string()
    );

    // The Service and the PodDisruptionBudget select these pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = kind(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "ws");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v);
    }
    let pdb = kind(&docs, "PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v);
    }
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["configMap"]["name"] == kind(&docs, "ConfigMap")["metadata"]["name"]));
}

/// `systemd-analyze verify` on copies of the units under a root of their own, where the
/// service's programs exist (`/usr/local/bin/wsgate` is this build). Returns its output (verify
/// reports most problems as warnings with exit 0: the output must be empty).
fn verify_units(units: &[(&str, String)]) -> (bool, String) {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_wsgate"), r.join("usr/local/bin/wsgate")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    // The units the service's dependencies name (sysinit.target, sockets.target, ...).
    std::fs::create_dir_all(r.join("lib/systemd")).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system")
        .arg(r.join("lib/systemd/"))
        .status()
        .unwrap();
    assert!(copied.success());
    let mut paths = Vec::new();
    for (name, text) in units {
        let p = etc.join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", r.display()))
        .args(&paths)
        .output()
        .expect("run systemd-analyze (package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn unit_files() -> Vec<(&'static str, String)> {
    ["wsgate.service", "wsgate.socket", "wsgate-tls.socket"]
        .into_iter()
        .map(|n| {
            (
                n,
                std::fs::read_to_string(deploy_dir("systemd").join(n)).unwrap(),
            )
        })
        .collect()
}

/// The value of `key=` in a unit file.
fn unit_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// The service's system call filter lets the session threads use io_uring (the default
/// `session_io = "auto"` calls `io_uring_setup` at start; a filtered call would kill the
/// process, since the unit sets no `SystemCallErrorNumber`).
#[test]
fn systemd_service_allows_io_uring() {
    let units = unit_files();
    let (_, service) = units
        .iter()
        .find(|(name, _)| *name == "wsgate.service")
        .expect("wsgate.service");
    let allowed: Vec<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(allowed.contains(&"@system-service"), "{allowed:?}");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            allowed.contains(&call),
            "SystemCallFilter must allow {call}: {allowed:?}"
        );
    }
}

#[test]
fn systemd_units_verify() {
    let units = unit_files();
    let (ok, out) = verify_units(&units);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    // The check is real: a mistyped value and an unknown key are reported.
    let service = &units[0].1;
    for (from, to) in [
        ("\nType=notify\n", "\nType=notifyy\n"),
        ("\nNoNewPrivileges=yes\n", "\nNoNewPrivilege=yes\n"),
    ] {
        assert!(service.contains(from));
        let mut bad = units.clone();
        bad[0].1 = service.replacen(from, to, 1);
        let (ok, out) = verify_units(&bad);
        assert!(!ok || !out.trim().is_empty(), "{to} was not reported");
    }

    // What the service promises: notify, reload by SIGHUP, a stop timeout above the drain.
    assert_eq!(unit_value(service, "Type").as_deref(), Some("notify"));
    assert_eq!(
        unit_value(service, "ExecStart").as_deref(),
        Some("/usr/local/bin/wsgate --config /etc/wsgate/config.toml")
    );
    assert_eq!(
        unit_value(service, "ExecReload").as_deref(),
        Some("/bin/kill -HUP $MAINPID")
    );
    let stop: u64 = unit_value(service, "TimeoutStopSec")
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    let default_grace = wsgate::config::DEFAULT_SHUTDOWN_GRACE_SECS;
    assert!(
        stop > default_grace,
        "TimeoutStopSec {stop} <= shutdown_grace {default_grace}"
    );
    assert_eq!(
        unit_value(service, "CapabilityBoundingSet").as_deref(),
        Some("")
    );
    // The sockets' names are the ones a `systemd:NAME` listener takes.
    for (file, name) in [
        ("wsgate.socket", "wsgate"),
        ("wsgate-tls.socket", "wsgate-tls"),
    ] {
        let text = &units.iter().find(|(n, _)| *n == file).unwrap().1;
        assert_eq!(
            unit_value(text, "FileDescriptorName").as_deref(),
            Some(name)
        );
        let config = format!(
            "[[listener]]\nbind = \"systemd:{name}\"\n[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:9\"\n"
        );
        wsgate::Config::parse(&config, Path::new("/etc/wsgate")).unwrap();
    }
}

/// A gateway with an admin listener that carried a few sessions (and a refused handshake).
async fn gateway_with_traffic() -> (TestGateway, backends::Backend) {
    let backend = backends::echo().await;
    let gw = TestGateway::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/echo\"\nbackend = \"{}\"\n\n[admin]\nbind = \"{}\"\n",
        backend.config_addr(),
        ops::ADMIN_BIND
    ))
    .await;
    for i in 0..3 {
        let mut ws = ops::ws(&gw.url("/echo")).await;
        ops::echo(&mut ws, &format!("message {i}")).await;
        ops::close(ws).await;
    }
    assert_eq!(ops::try_ws(&gw.url("/nope"), &[]).await.err(), Some(404));
    ops::wait_metric(
        gw.admin(),
        "wsgate_sessions_total",
        &[("route", "/echo")],
        3.0,
        WAIT,
    )
    .await;
    (gw, backend)
}

/// `GET /metrics` with an `Accept` header; the answer's content type and body.
async fn metrics_as(admin: std::net::SocketAddr, accept: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap();
    (content_type, body.to_string())
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let (gw, _backend) = gateway_with_traffic().await;
    // The Prometheus text format, which promtool reads, when it is asked for.
    let (content_type, body) = metrics_as(gw.admin(), "text/plain;version=0.0.4").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        body.contains("# TYPE wsgate_sessions_total counter"),
        "{body}"
    );
    assert!(
        body.contains("wsgate_sessions_total{route=\"/echo\"} 3"),
        "{body}"
    );
    assert!(!body.contains("# EOF"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (package prometheus)");
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n--- exposition ---\n{body}"
    );
    // The same samples as OpenMetrics, the default (and what Prometheus asks for first).
    let (content_type, om) = metrics_as(
        gw.admin(),
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(om.ends_with("# EOF\n"));
    let samples = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(samples(&om).len(), samples(&body).len());
}

/// A Prometheus server in a temporary directory, killed by PID when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: wsgate\n    metrics_path: /metrics\n\
                 \x20   static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", support::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (package prometheus)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The result vector of an instant query, `None` while the server does not answer yet.
    async fn query(&self, q: &str) -> Option<Vec<Value>> {
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let encoded: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = ops::try_http(addr, "GET", &format!("/api/v1/query?query={encoded}"), None)
            .await
            .ok()?;
        if r.status != 200 {
            return None;
        }
        // A chunked body: the JSON object is between the first '{' and the last '}'.
        let start = r.body.find('{')?;
        let end = r.body.rfind('}')?;
        let v: Value = serde_json::from_str(&r.body[start..=end]).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    /// Wait (at most `limit`) for a query with a non-empty result.
    async fn wait_for(&self, q: &str, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = self.query(q).await {
                if !r.is_empty() {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "Prometheus never answered {q}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn prometheus_scrapes_wsgate() {
    let (gw, _backend) = gateway_with_traffic().await;
    let prometheus = Prometheus::start(gw.admin());
    // Target discovery takes a few seconds before the first scrape.
    let up = prometheus
        .wait_for("up{job=\"wsgate\"} == 1", Duration::from_secs(60))
        .await;
    assert_eq!(up[0]["metric"]["instance"], gw.admin().to_string());
    let sessions = prometheus
        .wait_for(
            "wsgate_sessions_total{job=\"wsgate\",route=\"/echo\"}",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sessions[0]["value"][1], "3");
    let refused = prometheus
        .wait_for(
            "wsgate_handshakes_total{route=\"-\",status=\"404\"}",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(refused[0]["value"][1], "1");
}
