#!/usr/bin/env python3
"""Turn bench/run.sh results into the BENCHMARKS.md tables and bench/latency.svg (stdlib only).

    bench/report.py [RUN_DIR...]       RUN_DIR: bench/results/run-* (default: the newest); with
                                       several, a later one's TARGET/ROW results replace an
                                       earlier one's (a partial re-run completes a full one)
    bench/report.py --one-line JSON    one wsload JSON object -> a short line (run.sh's log)

Reads RUN_DIR/results.jsonl (one wsload --json object per run, labelled TARGET/ROW/REP), takes
the median of the repetitions, and writes RUN_DIR/summary.md, bench/latency.svg and the part of
BENCHMARKS.md between the GENERATED markers. Codec numbers come from criterion's
target/criterion/*/new/estimates.json when present.
"""

import glob
import json
import math
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- BEGIN GENERATED (bench/report.py) -->"
END = "<!-- END GENERATED -->"

TARGETS = ["wsgate-raw", "wsgate-lp", "websockify", "nginx", "haproxy", "direct-ws", "direct-tcp"]
TARGET_DESC = {
    "wsgate-raw": "wsgate, `raw` route -> TCP echo",
    "wsgate-lp": "wsgate, `length-prefixed` route -> TCP echo",
    "websockify": "websockify -> TCP echo",
    "nginx": "nginx (proxy_buffer_size 64k) -> ws echo",
    "haproxy": "HAProxy `mode tcp` -> TCP echo (tcp://)",
    "direct-ws": "ws echo, no proxy",
    "direct-tcp": "TCP echo, no proxy (tcp://)",
}
ECHO_ROWS = [
    ("echo64_c1", "64 B ping-pong, 1 connection"),
    ("echo64_c10", "64 B ping-pong, 10 connections"),
    ("echo64_c50", "64 B ping-pong, 50 connections"),
    ("echo64_c200", "64 B ping-pong, 200 connections"),
    ("bulk64k_k1", "64 KiB messages, 1 connection, 1 in flight"),
    ("bulk64k_k4", "64 KiB messages, 1 connection, 4 in flight"),
]
CHART_ROWS = [("echo64_c1", 1), ("echo64_c10", 10), ("echo64_c50", 50), ("echo64_c200", 200)]
COLORS = {
    "wsgate-raw": "#d62728",
    "wsgate-lp": "#ff7f0e",
    "websockify": "#8c564b",
    "nginx": "#2ca02c",
    "haproxy": "#9467bd",
    "direct-ws": "#1f77b4",
    "direct-tcp": "#7f7f7f",
}


def get(obj, path):
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj or obj[key] is None:
            return None
        obj = obj[key]
    return obj


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def one_line(js):
    try:
        r = json.loads(js)
    except ValueError:
        return "unparsable output"
    err = r.get("errors")
    if r.get("mode") == "idle":
        return (
            f"opened {r.get('opened')} failed {r.get('failed')} "
            f"bytes/session {fmt(get(r, 'server.bytes_per_session'))}"
        )
    if r.get("mode") == "handshake":
        return (
            f"{fmt(r.get('handshakes_per_s'))} handshakes/s p50 {fmt(get(r, 'latency_us.p50'), 1)} us "
            f"errors {err}"
        )
    if "msgs_per_s" in r:
        return (
            f"{fmt(r.get('msgs_per_s'))} msg/s {fmt(r.get('payload_mb_per_s'), 1)} MB/s "
            f"p50 {fmt(get(r, 'latency_us.p50'), 1)} p99 {fmt(get(r, 'latency_us.p99'), 1)} us "
            f"server {fmt(get(r, 'server.cpu_s_per_million'), 2)} cpu-s/M errors {err}"
        )
    return f"errors {err} {r.get('error_kinds')}"


def load_all(run_dirs):
    runs = {}
    for d in run_dirs:
        runs.update(load(d))
    return runs


def load(run_dir):
    runs = {}
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            parts = (r.get("label") or "").split("/")
            if len(parts) != 3:
                continue
            runs.setdefault((parts[0], parts[1]), []).append(r)
    return runs


def agg(runs, target, row, path):
    return median([get(r, path) for r in runs.get((target, row), [])])


def other_cpu(r):
    """Busy CPU-s of the machine not charged to the client, proxy or backend processes."""
    busy = r.get("machine_busy_cpu_s")
    if busy is None:
        return None
    ours = (r.get("client_cpu_s") or 0) + (get(r, "server.cpu_s") or 0) + (get(r, "backend.cpu_s") or 0)
    return max(busy - ours, 0.0)


def agg_other(runs, target, row):
    return median([other_cpu(r) for r in runs.get((target, row), [])])


def total_errors(runs, target, row):
    rs = runs.get((target, row), [])
    if not rs:
        return None
    return sum(int(r.get("errors") or 0) for r in rs)


def reps(runs, target, row):
    return len(runs.get((target, row), []))


def codec_table():
    rows = []
    for bench in sorted(glob.glob(os.path.join(ROOT, "target", "criterion", "**", "new", "benchmark.json"), recursive=True)):
        try:
            meta = json.load(open(bench))
            est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
        except (OSError, ValueError):
            continue
        tp = meta.get("throughput") or {}
        nbytes = tp.get("Bytes") or tp.get("BytesDecimal")
        ns = get(est, "median.point_estimate")
        if not nbytes or not ns:
            continue
        rows.append((meta.get("full_id") or meta.get("title"), ns, nbytes / ns))
    order = {"mask": 0, "utf8": 1, "decoder": 2}
    rows.sort(key=lambda r: (order.get(str(r[0]).split("/")[0], 9), str(r[0])))
    return rows


def svg_chart(runs, path):
    w, h = 760, 470
    left, right, top, bottom = 70, 200, 40, 60
    pw, ph = w - left - right, h - top - bottom
    series = []
    for t in TARGETS:
        pts50, pts99 = [], []
        for row, conns in CHART_ROWS:
            p50 = agg(runs, t, row, "latency_us.p50")
            p99 = agg(runs, t, row, "latency_us.p99")
            if p50:
                pts50.append((conns, p50))
            if p99:
                pts99.append((conns, p99))
        if pts50:
            series.append((t, pts50, pts99))
    values = [v for _, a, b in series for _, v in a + b]
    if not values:
        return False
    ymin = 10 ** math.floor(math.log10(min(values)))
    ymax = 10 ** math.ceil(math.log10(max(values)))
    xs = [c for _, c in CHART_ROWS]
    xmin, xmax = min(xs), max(xs)

    def x(c):
        return left + pw * (math.log10(c) - math.log10(xmin)) / (math.log10(xmax) - math.log10(xmin))

    def y(v):
        return top + ph * (1 - (math.log10(v) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin)))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="15">'
        "64 B ping-pong: latency against connections (median of repetitions)</text>",
    ]
    decade = ymin
    while decade <= ymax * 1.0001:
        for m in (1, 2, 5):
            v = decade * m
            if ymin <= v <= ymax * 1.0001:
                yy = y(v)
                out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
                label = f"{v:g}" if v < 1000 else f"{v / 1000:g}k"
                out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    for c in xs:
        xx = x(c)
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 18}" text-anchor="middle">{c}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 18}" text-anchor="middle">connections (1 message in flight each, log scale)</text>')
    out.append(
        f'<text transform="translate(18,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
        "latency, microseconds (log scale)</text>"
    )
    ly = top + 10
    for t, p50, p99 in series:
        color = COLORS.get(t, "#000")
        for pts, dash in ((p50, ""), (p99, ' stroke-dasharray="5,4"')):
            if len(pts) > 1:
                d = " ".join(f"{x(c):.1f},{y(v):.1f}" for c, v in pts)
                out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for c, v in pts:
                out.append(f'<circle cx="{x(c):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        out.append(f'<line x1="{left + pw + 15}" x2="{left + pw + 40}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">{t}</text>')
        ly += 20
    ly += 10
    out.append(f'<line x1="{left + pw + 15}" x2="{left + pw + 40}" y1="{ly}" y2="{ly}" stroke="#000" stroke-width="2"/>')
    out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">p50</text>')
    ly += 20
    out.append(
        f'<line x1="{left + pw + 15}" x2="{left + pw + 40}" y1="{ly}" y2="{ly}" stroke="#000" '
        'stroke-width="2" stroke-dasharray="5,4"/>'
    )
    out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">p99</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**meets**" if ok else "**misses**"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets_section(runs, codec):
    L = []
    W = "wsgate-raw"
    rate_w = agg(runs, W, "echo64_c50", "msgs_per_s")
    rate_n = agg(runs, "nginx", "echo64_c50", "msgs_per_s")
    rate_f = agg(runs, "websockify", "echo64_c50", "msgs_per_s")
    r1, r2 = ratio(rate_w, rate_n), ratio(rate_w, rate_f)
    L.append("| target | wsgate | reference | ratio | needed | verdict |")
    L.append("|---|---|---|---|---|---|")
    L.append(
        f"| message rate, 64 B, 50 connections vs nginx | {fmt(rate_w)} msg/s | {fmt(rate_n)} msg/s | "
        f"{fmt(r1, 2)}x | >= 1.3x | {verdict(None if r1 is None else r1 >= 1.3)} |"
    )
    L.append(
        f"| message rate, 64 B, 50 connections vs websockify | {fmt(rate_w)} msg/s | {fmt(rate_f)} msg/s | "
        f"{fmt(r2, 2)}x | >= 4x | {verdict(None if r2 is None else r2 >= 4)} |"
    )
    cpm_w = agg(runs, W, "echo64_c50", "server.cpu_s_per_million")
    cpm_n = agg(runs, "nginx", "echo64_c50", "server.cpu_s_per_million")
    mps_w = 1e6 / cpm_w if cpm_w else None
    mps_n = 1e6 / cpm_n if cpm_n else None
    r3 = ratio(mps_w, mps_n)
    L.append(
        f"| messages per proxy CPU-second (64 B, 50 conns) vs nginx | {fmt(mps_w)} | {fmt(mps_n)} | "
        f"{fmt(r3, 2)}x | >= 1.25x | {verdict(None if r3 is None else r3 >= 1.25)} |"
    )
    bw_w = agg(runs, W, "bulk64k_k4", "payload_mb_per_s")
    bw_n = agg(runs, "nginx", "bulk64k_k4", "payload_mb_per_s")
    bw_h = agg(runs, "haproxy", "bulk64k_k4", "payload_mb_per_s")
    r4, r5 = ratio(bw_w, bw_n), ratio(bw_w, bw_h)
    L.append(
        f"| 64 KiB bulk (4 in flight) vs nginx | {fmt(bw_w)} MB/s | {fmt(bw_n)} MB/s | {fmt(r4, 2)}x | "
        f">= 1x | {verdict(None if r4 is None else r4 >= 1.0)} |"
    )
    L.append(
        f"| 64 KiB bulk (4 in flight) vs HAProxy TCP relay | {fmt(bw_w)} MB/s | {fmt(bw_h)} MB/s | "
        f"{fmt(r5, 2)}x | >= 0.8x | {verdict(None if r5 is None else r5 >= 0.8)} |"
    )
    p_w = agg(runs, W, "echo64_c1", "latency_us.p50")
    p_dt = agg(runs, "direct-tcp", "echo64_c1", "latency_us.p50")
    p_n = agg(runs, "nginx", "echo64_c1", "latency_us.p50")
    p_dw = agg(runs, "direct-ws", "echo64_c1", "latency_us.p50")
    add_w = p_w - p_dt if None not in (p_w, p_dt) else None
    add_n = p_n - p_dw if None not in (p_n, p_dw) else None
    L.append(
        f"| added p50 latency at 1 connection (over its direct path) vs nginx | {fmt(add_w, 1)} us | "
        f"{fmt(add_n, 1)} us | {fmt(ratio(add_w, add_n), 2)}x | <= 1x | "
        f"{verdict(None if None in (add_w, add_n) else add_w <= add_n)} |"
    )
    for row, limit, name in (("idle_plain", 8, "plain"), ("idle_tls", 24, "TLS")):
        b = agg(runs, W, row, "server.bytes_per_session")
        n = agg(runs, "nginx", row, "server.bytes_per_session")
        kib = b / 1024 if b is not None else None
        L.append(
            f"| memory per idle session, {name} | {fmt(kib, 1)} KiB | nginx {fmt(n / 1024 if n else None, 1)} KiB | "
            f"- | <= {limit} KiB | {verdict(None if kib is None else kib <= limit)} |"
        )
    hs_w = agg(runs, W, "hs_ws", "handshakes_per_s")
    hs_n = agg(runs, "nginx", "hs_ws", "handshakes_per_s")
    r6 = ratio(hs_w, hs_n)
    L.append(
        f"| handshakes per second, plain vs nginx | {fmt(hs_w)} /s | {fmt(hs_n)} /s | {fmt(r6, 2)}x | "
        f">= 1.5x | {verdict(None if r6 is None else r6 >= 1.5)} |"
    )
    tls_w = agg(runs, W, "hs_wss", "handshakes_per_s")
    tls_n = agg(runs, "nginx", "hs_wss", "handshakes_per_s")
    L.append(
        f"| handshakes per second, TLS | {fmt(tls_w)} /s | nginx {fmt(tls_n)} /s | {fmt(ratio(tls_w, tls_n), 2)}x | "
        "reported | - |"
    )
    mask = [c for c in codec if c[0] and c[0].startswith("mask/apply_mask/1MiB")]
    if mask:
        gbs = mask[0][2]
        L.append(
            f"| unmasking, 1 MiB (criterion) | {fmt(gbs, 1)} GB/s | - | - | tens of GB/s | "
            f"{verdict(gbs >= 10)} |"
        )
    utf8 = {c[0]: c[2] for c in codec if c[0] and c[0].startswith("utf8/feed/") and c[0].endswith("/1MiB")}
    if "utf8/feed/multibyte/1MiB" in utf8 and "utf8/feed/ascii/1MiB" in utf8:
        multi, ascii_ = utf8["utf8/feed/multibyte/1MiB"], utf8["utf8/feed/ascii/1MiB"]
        L.append(
            f"| UTF-8 validation, 1 MiB (criterion): ASCII / mixed multi-byte text | {fmt(ascii_, 1)} / "
            f"{fmt(multi, 1)} GB/s | - | - | memory speed (>= 10 GB/s, one core's DRAM bandwidth class) | "
            f"{verdict(min(multi, ascii_) >= 10)} |"
        )
    return "\n".join(L)


def describe_runs(run_dirs):
    parts = []
    for i, d in enumerate(run_dirs):
        settings = ""
        machine = os.path.join(d, "machine.txt")
        if os.path.exists(machine):
            for line in open(machine):
                if line.startswith("reps="):
                    settings = line.strip()
        rows = sorted({f"{t}/{r}" for t, r in load(d)})
        what = "" if i == 0 else " replacing " + ", ".join(rows)
        parts.append(f"`{os.path.relpath(d, ROOT)}` ({settings}){what}")
    return "; ".join(parts)


def tables(runs, run_dirs, codec):
    L = []
    L.append(f"Runs: {describe_runs(run_dirs)}. Medians of the repetitions; "
             "`errors` is the total over all repetitions. \"other CPU-s\": busy CPU time of the "
             "machine during the window (/proc/stat, both CPUs) not charged to the client, proxy or "
             "backend processes: kernel work not attributed to a process (loopback softirqs) plus "
             "anything else running; a run takes 2 x its duration in CPU-s at most.")
    L.append("")
    L.append("### Targets")
    L.append("")
    L.append(targets_section(runs, codec))
    L.append("")
    for row, title in ECHO_ROWS:
        present = [t for t in TARGETS if (t, row) in runs]
        if not present:
            continue
        L.append(f"### {title}")
        L.append("")
        L.append("| peer | msg/s | MB/s | p50 us | p90 us | p99 us | p99.9 us | max us | proxy CPU-s per 1M msgs | backend CPU-s per 1M msgs | client CPU-s | other CPU-s | errors | reps |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in present:
            L.append(
                f"| {t} | {fmt(agg(runs, t, row, 'msgs_per_s'))} | {fmt(agg(runs, t, row, 'payload_mb_per_s'), 1)} | "
                f"{fmt(agg(runs, t, row, 'latency_us.p50'), 1)} | {fmt(agg(runs, t, row, 'latency_us.p90'), 1)} | "
                f"{fmt(agg(runs, t, row, 'latency_us.p99'), 1)} | {fmt(agg(runs, t, row, 'latency_us.p999'), 1)} | "
                f"{fmt(agg(runs, t, row, 'latency_us.max'), 0)} | "
                f"{fmt(agg(runs, t, row, 'server.cpu_s_per_million'), 2)} | "
                f"{fmt(agg(runs, t, row, 'backend.cpu_s_per_million'), 2)} | "
                f"{fmt(agg(runs, t, row, 'client_cpu_s'), 2)} | {fmt(agg_other(runs, t, row), 2)} | "
                f"{total_errors(runs, t, row)} | {reps(runs, t, row)} |"
            )
        L.append("")
    present = [t for t in TARGETS if (t, "hs_ws") in runs or (t, "hs_wss") in runs]
    if present:
        L.append("### Handshakes (new connection per handshake, full TLS handshakes, no resumption)")
        L.append("")
        L.append("| peer | ws/s | ws p50 us | ws p99 us | proxy CPU-s per 1k ws | wss/s | wss p50 us | wss p99 us | proxy CPU-s per 1k wss | errors |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for t in present:
            def per_k(row):
                cpu = agg(runs, t, row, "server.cpu_s")
                n = agg(runs, t, row, "handshakes")
                return cpu * 1000 / n if cpu is not None and n else None
            errs = (total_errors(runs, t, "hs_ws") or 0) + (total_errors(runs, t, "hs_wss") or 0)
            L.append(
                f"| {t} | {fmt(agg(runs, t, 'hs_ws', 'handshakes_per_s'))} | {fmt(agg(runs, t, 'hs_ws', 'latency_us.p50'), 1)} | "
                f"{fmt(agg(runs, t, 'hs_ws', 'latency_us.p99'), 1)} | {fmt(per_k('hs_ws'), 3)} | "
                f"{fmt(agg(runs, t, 'hs_wss', 'handshakes_per_s'))} | {fmt(agg(runs, t, 'hs_wss', 'latency_us.p50'), 1)} | "
                f"{fmt(agg(runs, t, 'hs_wss', 'latency_us.p99'), 1)} | {fmt(per_k('hs_wss'), 3)} | {errs} |"
            )
        L.append("")
    present = [t for t in TARGETS if (t, "idle_plain") in runs or (t, "idle_tls") in runs]
    if present:
        L.append("### Idle sessions (RSS growth of the server process tree / sessions)")
        L.append("")
        L.append("| peer | sessions | plain: KiB per session (RSS) | plain: KiB per session (PSS) | plain: RSS before -> after, MiB | TLS: KiB per session (RSS) | TLS: KiB per session (PSS) | TLS: RSS before -> after, MiB | failures |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for t in present:
            def kib(row, key="bytes_per_session"):
                b = agg(runs, t, row, "server." + key)
                return b / 1024 if b is not None else None

            def rss(row):
                a = agg(runs, t, row, "server.before.rss_kib")
                b = agg(runs, t, row, "server.after_open.rss_kib")
                if a is None or b is None:
                    return "-"
                return f"{a / 1024:.1f} -> {b / 1024:.1f}"
            n = agg(runs, t, "idle_plain", "opened") or agg(runs, t, "idle_tls", "opened")
            fails = sum(
                int(r.get("failed") or 0) for row in ("idle_plain", "idle_tls") for r in runs.get((t, row), [])
            )
            L.append(
                f"| {t} | {fmt(n)} | {fmt(kib('idle_plain'), 1)} | {fmt(kib('idle_plain', 'pss_bytes_per_session'), 1)} | "
                f"{rss('idle_plain')} | {fmt(kib('idle_tls'), 1)} | {fmt(kib('idle_tls', 'pss_bytes_per_session'), 1)} | "
                f"{rss('idle_tls')} | {fails} |"
            )
        L.append("")
    if codec:
        L.append("### Codec micro-benchmarks (criterion, median)")
        L.append("")
        L.append("| benchmark | time | throughput |")
        L.append("|---|---|---|")
        for name, ns, gbs in codec:
            t = f"{ns:,.1f} ns" if ns < 1e4 else f"{ns / 1e3:,.1f} us"
            L.append(f"| {name} | {t} | {gbs:,.2f} GB/s |")
        L.append("")
    return "\n".join(L)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--one-line":
        print(one_line(sys.argv[2]))
        return
    if len(sys.argv) >= 3 and sys.argv[1] == "--other-cpu":
        try:
            o = other_cpu(json.loads(sys.argv[2]))
        except ValueError:
            o = None
        print(f"{o:.2f}" if o is not None else "0")
        return
    if len(sys.argv) >= 2:
        run_dirs = [os.path.abspath(a) for a in sys.argv[1:]]
    else:
        found = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "run-*")))
        if not found:
            sys.exit("report.py: no bench/results/run-* directory")
        run_dirs = found[-1:]
    run_dir = run_dirs[-1]
    runs = load_all(run_dirs)
    codec = codec_table()
    body = tables(runs, run_dirs, codec)
    chart = os.path.join(ROOT, "bench", "latency.svg")
    if svg_chart(runs, chart):
        body += "\n![latency against connections](bench/latency.svg)\n"
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(body + "\n")
    md = os.path.join(ROOT, "BENCHMARKS.md")
    if os.path.exists(md):
        text = open(md).read()
        if BEGIN in text and END in text:
            new = re.sub(
                re.escape(BEGIN) + r".*?" + re.escape(END),
                lambda _: f"{BEGIN}\n{body}\n{END}",
                text,
                flags=re.S,
            )
            with open(md, "w") as f:
                f.write(new)
            print(f"report.py: updated {md}")
    print(f"report.py: wrote {os.path.join(run_dir, 'summary.md')} and {chart}")


if __name__ == "__main__":
    main()
