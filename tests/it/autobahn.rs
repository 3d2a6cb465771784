//! Autobahn TestSuite conformance (groups 1-7, 9, 10, and 12, 13 with permessage-deflate) of the
//! real gateway, driven by `kosoku`
//! (PyPI), which plays the Autobahn fuzzingclient case files against a server.
//!
//! The gateway routes `/` to its built-in byte-echo backend with length-prefixed framing: every
//! message goes to the echo backend as one envelope and comes back identical, so message types
//! and boundaries survive and the gateway behaves like an Autobahn echo server.
//!
//! kosoku is found at `$KOSOKU`, else `<repo>/.venv/bin/kosoku` (`./scripts/test.sh` installs it
//! there), and runs under the `python` next to it through `tests/it/support/kosoku_run.py`,
//! which fixes one fault of the driver's own (see that script). The test fails, never skips,
//! when it is missing.
//!
//! Sixty of the large compressed cases (64 and 128 KiB messages in all but the first subgroup of
//! 12 and 13, see [`large_compressed_cases`]) are left out unless `WSGATE_AUTOBAHN_ALL=1` is set:
//! they repeat the sizes the first subgroups already play and would double the run.
//!
//! The report (JSON and HTML per case) is left in `<target>/autobahn-report/`; the summary is
//! printed and also written to `<target>/autobahn-summary.txt`.

use crate::support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Case groups to run. There is no group 8. Groups 12 and 13 are permessage-deflate: the route
/// has `compression = "permessage-deflate"` (cases of the other groups offer no extension).
const GROUPS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"];
/// Every case of those groups: 301 without compression, 216 with.
const ALL_CASES: usize = 517;
/// Set (to anything but empty) to run every case of [`GROUPS`], the large compressed ones too.
const ALL_CASES_ENV: &str = "WSGATE_AUTOBAHN_ALL";
/// How long the default selection may take (it takes about 210 s on 2 CPUs); every case takes
/// about twice as long, and gets twice this.
const KOSOKU_TIMEOUT: Duration = Duration::from_secs(600);

/// The large compressed cases left out by default: in groups 12 and 13 every subgroup plays the
/// same 18 message sizes (16 B to 128 KiB, 1,000 messages each, the last ones fragmented), and
/// cases 10 and 14-18 (64 and 128 KiB) carry 87% of the bytes and take two thirds of the run.
/// The first subgroup of each group (12.1, 13.1) runs them all; the other subgroups, which
/// differ in their payload (12) or in the negotiated parameters (13), run sizes up to 32 KiB,
/// fragmented ones included. 60 cases: 24 in 12.2-12.5, 36 in 13.2-13.7.
fn large_compressed_cases() -> Vec<String> {
    let mut ids = Vec::new();
    for (group, subgroups) in [(12, 2..=5), (13, 2..=7)] {
        for sub in subgroups {
            for case in [10, 14, 15, 16, 17, 18] {
                ids.push(format!("{group}.{sub}.{case}"));
            }
        }
    }
    ids
}

const BEHAVIOR_OK: &[&str] = &["OK", "NON-STRICT", "INFORMATIONAL"];
const BEHAVIOR_CLOSE_OK: &[&str] = &["OK", "INFORMATIONAL"];

struct Case {
    id: String,
    behavior: String,
    behavior_close: String,
}

/// `<target>` directory: the parent of the profile directory holding the wsgate binary.
fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_wsgate"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| support::repo_root().join("target"))
}

fn kosoku_path() -> PathBuf {
    let path = match std::env::var_os("KOSOKU") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => support::repo_root().join(".venv/bin/kosoku"),
    };
    assert!(
        path.is_file(),
        "kosoku (the Autobahn test driver, PyPI package kosoku==0.1.0) not found at {}: \
         run ./scripts/test.sh, which installs kosoku into .venv (or set KOSOKU=/path/to/kosoku)",
        path.display()
    );
    path
}

/// Split "1.10.2" into numeric parts for natural ordering.
fn id_key(id: &str) -> Vec<u64> {
    id.split('.')
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

fn read_cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read report dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains("_case_") || !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read case report");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_else(|| panic!("{}: no string field {k:?}", path.display()))
                .to_string()
        };
        cases.push(Case {
            id: field("id"),
            behavior: field("behavior"),
            behavior_close: field("behaviorClose"),
        });
    }
    cases.sort_by_key(|c| id_key(&c.id));
    cases
}

fn summary(cases: &[Case], left_out: usize, elapsed: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Autobahn TestSuite (kosoku), groups {}: {} cases in {:.1} s",
        GROUPS.join(", "),
        cases.len(),
        elapsed.as_secs_f64()
    );
    if left_out > 0 {
        let _ = writeln!(
            s,
            "  {left_out} large compressed cases left out ({ALL_CASES_ENV}=1 runs them too)"
        );
    }
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut groups: BTreeMap<u64, BTreeMap<&str, usize>> = BTreeMap::new();
    for c in cases {
        *pairs.entry((&c.behavior, &c.behavior_close)).or_default() += 1;
        let g = id_key(&c.id)[0];
        *groups.entry(g).or_default().entry(&c.behavior).or_default() += 1;
    }
    let _ = writeln!(
        s,
        "  {:<16} {:<16} {:>6}",
        "behavior", "behaviorClose", "cases"
    );
    for ((b, bc), n) in &pairs {
        let _ = writeln!(s, "  {b:<16} {bc:<16} {n:>6}");
    }
    let _ = writeln!(s, "  per group (behavior):");
    for (g, counts) in &groups {
        let parts: Vec<String> = counts.iter().map(|(b, n)| format!("{b} {n}")).collect();
        let _ = writeln!(s, "    {g:>2}: {}", parts.join(", "));
    }
    let not_ok: Vec<&Case> = cases
        .iter()
        .filter(|c| c.behavior != "OK" || c.behavior_close != "OK")
        .collect();
    if not_ok.is_empty() {
        let _ = writeln!(s, "  every case OK/OK");
    } else {
        let _ = writeln!(s, "  cases not OK/OK ({}):", not_ok.len());
        for c in not_ok {
            let verdict = if BEHAVIOR_OK.contains(&c.behavior.as_str())
                && BEHAVIOR_CLOSE_OK.contains(&c.behavior_close.as_str())
            {
                "accepted"
            } else {
                "REJECTED"
            };
            let _ = writeln!(
                s,
                "    {:<10} behavior={:<14} behaviorClose={:<14} {verdict}",
                c.id, c.behavior, c.behavior_close
            );
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_conformance() {
    let kosoku = kosoku_path();
    let echo_port = support::free_port();
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[[demo_backend]]
bind = "127.0.0.1:{echo_port}"
kind = "echo"

[[route]]
path = "/"
backend = "127.0.0.1:{echo_port}"
framing = "length-prefixed"
compression = "permessage-deflate"

[limits]
max_message_size = "20MiB"
max_frame_size = "20MiB"
max_fragments = 1000000
close_timeout = "2s"
"#
    );
    let gw = support::Gateway::start(&config).await;

    let target = target_dir();
    let outdir = target.join("autobahn-report");
    let summary_file = target.join("autobahn-summary.txt");
    let _ = std::fs::remove_file(&summary_file);
    if outdir.exists() {
        std::fs::remove_dir_all(&outdir).expect("clear old report");
    }
    std::fs::create_dir_all(&outdir).expect("create report dir");

    // kosoku runs through tests/it/support/kosoku_run.py, with the Python of its own
    // environment: the wrapper fixes the driver's empty-message fault in cases 12.*.1 and
    // 13.*.1 (see the script) so that every case runs.
    let python = kosoku.with_file_name("python");
    let mut cmd = Command::new(&python);
    cmd.arg(support::repo_root().join("tests/it/support/kosoku_run.py"));
    cmd.arg(format!("ws://{}/", gw.addr()));
    for g in GROUPS {
        cmd.arg("-i").arg(format!("{g}.*"));
    }
    let all = std::env::var_os(ALL_CASES_ENV).is_some_and(|v| !v.is_empty());
    let excluded = if all {
        Vec::new()
    } else {
        large_compressed_cases()
    };
    for id in &excluded {
        cmd.arg("-x").arg(id);
    }
    let min_cases = ALL_CASES - excluded.len();
    let timeout = if all {
        2 * KOSOKU_TIMEOUT
    } else {
        KOSOKU_TIMEOUT
    };
    cmd.arg("-p")
        .arg("2")
        .arg("-o")
        .arg(&outdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child =
        ChildGuard(Some(cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", kosoku.display())
        })));
    let stdout_reader = read_all(child.0.as_mut().unwrap().stdout.take().unwrap());
    let stderr_reader = read_all(child.0.as_mut().unwrap().stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child
            .0
            .as_mut()
            .unwrap()
            .try_wait()
            .expect("wait for kosoku")
        {
            child.0 = None;
            break status;
        }
        if started.elapsed() > timeout {
            drop(child);
            let out = join_for(stdout_reader, Duration::from_secs(2)).await;
            let err = join_for(stderr_reader, Duration::from_secs(2)).await;
            panic!(
                "kosoku did not finish within {timeout:?} (it was killed)\n\
                 kosoku stdout:\n{out}\nkosoku stderr:\n{}\ngateway log tail:\n{}",
                tail(&err, 40),
                tail(&gw.logs(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stdout = stdout_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    let elapsed = started.elapsed();

    let cases = read_cases(&outdir);
    let text = summary(&cases, excluded.len(), elapsed);
    let _ = std::fs::write(&summary_file, &text);
    println!("{text}");
    println!("  report: {}", outdir.join("index.html").display());

    // Exit code 1 means some case failed; anything else non-zero means kosoku itself failed.
    let code = status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "kosoku failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        status
    );
    assert!(
        cases.len() >= min_cases,
        "only {} case reports in {} (expected >= {min_cases}); kosoku stdout:\n{stdout}\nstderr:\n{stderr}",
        cases.len(),
        outdir.display()
    );
    for g in GROUPS {
        let g: u64 = g.parse().unwrap();
        assert!(
            cases.iter().any(|c| id_key(&c.id)[0] == g),
            "no case of group {g} ran"
        );
    }
    let rejected: Vec<String> = cases
        .iter()
        .filter(|c| {
            !BEHAVIOR_OK.contains(&c.behavior.as_str())
                || !BEHAVIOR_CLOSE_OK.contains(&c.behavior_close.as_str())
        })
        .map(|c| format!("{} ({} / {})", c.id, c.behavior, c.behavior_close))
        .collect();
    assert!(
        rejected.is_empty(),
        "{} Autobahn case(s) not passed: {}\n(see {}/index.html)",
        rejected.len(),
        rejected.join(", "),
        outdir.display()
    );
    assert_eq!(
        code,
        Some(0),
        "every case report is acceptable but kosoku exited {}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        status
    );
}

/// Kills (by its PID) and reaps the child when dropped, also on panic.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Read a pipe to its end on a thread (so the child never blocks on a full pipe).
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The reader's text if it finishes within `limit` (a pipe may stay open in a grandchild).
async fn join_for(reader: std::thread::JoinHandle<String>, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if reader.is_finished() {
        reader.join().unwrap_or_default()
    } else {
        "(still open)".to_string()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
