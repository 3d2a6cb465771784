#!/usr/bin/env python3
"""Turn bench/run.sh results into the BENCHMARKS.md tables and bench/latency.svg (stdlib only).

    bench/report.py [--docs] [RUN_DIR...]
                                       RUN_DIR: bench/results/run-* (default: the newest); with
                                       several, a later one's TARGET/ROW results replace an
                                       earlier one's (a partial re-run completes a full one)
    bench/report.py --one-line JSON    one wsload JSON object -> a short line (run.sh's log)
    bench/report.py --tuning RUN_DIR   RUN_DIR/tuning.jsonl (run.sh's tuning probes) ->
                                       RUN_DIR/tuning.json and tuning.md; prints "PEER CLASS COUNT"
                                       lines, the worker counts the matrix uses

Reads RUN_DIR/results.jsonl (one wsload --json object per run, labelled TARGET/ROW/REP), takes
the median of the repetitions, and writes RUN_DIR/summary.md, RUN_DIR/latency.svg and
RUN_DIR/throughput.svg. Only with --docs (what a full bench/run.sh passes) does it also write
bench/latency.svg, bench/throughput.svg and the part of BENCHMARKS.md between the GENERATED
markers. RUN_DIR/tuning.md and RUN_DIR/instructions.md (bench/instructions.sh's table, from
run.sh INSTR=1), when present in the newest RUN_DIR that has them, are included. Codec numbers
come from criterion's target/criterion/*/new/estimates.json when present.
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

TARGETS = ["wsgate-raw", "wsgate-epoll", "wsgate-lp", "websockify", "nginx", "haproxy", "direct-ws", "direct-tcp"]
TARGET_DESC = {
    "wsgate-raw": "wsgate, `raw` route -> TCP echo",
    "wsgate-epoll": "wsgate, `raw` route, session threads on epoll (`session_io = \"epoll\"`) -> TCP echo",
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
    ("echo64_c1000", "64 B ping-pong, 1,000 connections"),
    ("bulk64k_k1", "64 KiB messages, 1 connection, 1 in flight"),
    ("bulk64k_k4", "64 KiB messages, 1 connection, 4 in flight"),
    ("wss_echo64_c50", "TLS (wss://): 64 B ping-pong, 50 connections"),
    ("wss_bulk64k_k4", "TLS (wss://): 64 KiB messages, 1 connection, 4 in flight"),
]
CHART_ROWS = [("echo64_c1", 1), ("echo64_c10", 10), ("echo64_c50", 50), ("echo64_c200", 200), ("echo64_c1000", 1000)]
# The peers wsgate is compared with; the best of them (after tuning) is the reference.
PEERS = ["nginx", "haproxy"]
KNOBS = {"wsgate": "worker_threads", "nginx": "worker_processes", "haproxy": "nbthread"}
COLORS = {
    "wsgate-raw": "#d62728",
    "wsgate-epoll": "#e377c2",
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


def tuning_md(run_dirs):
    """The newest RUN_DIR/tuning.md, without its title line, or None."""
    for d in reversed(run_dirs):
        path = os.path.join(d, "tuning.md")
        if os.path.exists(path):
            text = "\n".join(l for l in open(path).read().splitlines() if not l.startswith("# "))
            return text.strip()
    return None


def tuning(run_dir):
    """run.sh's tuning step: pick each peer's worker counts from RUN_DIR/tuning.jsonl.

    A probe record has "tune": {peer, class, value, rep} and the wsload JSON; a "fixed" record
    a count chosen without probing (forced, or TUNE=0). Per peer and class (msg: 64 B
    ping-pong at 50 connections, msg/s; hs: hs_ws, handshakes/s) the candidate with the higher
    median wins; equal medians go to the smaller count. Writes tuning.json and tuning.md and
    returns [(peer, class, count)]."""
    probes, fixed = {}, {}
    for line in open(os.path.join(run_dir, "tuning.jsonl")):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "fixed" in r:
            fixed[r["fixed"]["peer"]] = r["fixed"]
        elif "tune" in r:
            t = r["tune"]
            key = "msgs_per_s" if t["class"] == "msg" else "handshakes_per_s"
            probes.setdefault((t["peer"], t["class"]), {}).setdefault(t["value"], []).append(
                {"rep": t.get("rep"), "rate": r.get(key), "errors": r.get("errors")}
            )
    out, choices = {}, []
    peers = sorted({p for p, _ in probes} | set(fixed), key=lambda p: list(KNOBS).index(p) if p in KNOBS else 9)
    for peer in peers:
        entry = {"setting": KNOBS.get(peer, "?")}
        for cls in ("msg", "hs"):
            if peer in fixed:
                entry[cls] = {"choice": fixed[peer]["value"], "why": fixed[peer]["why"]}
            elif (peer, cls) in probes:
                cands = probes[(peer, cls)]
                med = {n: median([p["rate"] for p in runs]) for n, runs in cands.items()}
                ranked = sorted(med, key=lambda n: (-(med[n] or 0), n))
                entry[cls] = {
                    "choice": ranked[0],
                    "why": "higher median " + ("msg/s, 64 B ping-pong, 50 connections" if cls == "msg" else "handshakes/s, hs_ws"),
                    "median": {str(n): med[n] for n in sorted(med)},
                    "probes": {str(n): cands[n] for n in sorted(cands)},
                }
            elif cls == "hs" and "msg" in entry:
                entry[cls] = {"choice": entry["msg"]["choice"],
                              "why": "no handshake rows (driven with tcp://): the message choice"}
            else:
                continue
            choices.append((peer, cls, entry[cls]["choice"]))
        out[peer] = entry
    with open(os.path.join(run_dir, "tuning.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    L = ["# Peer tuning", ""]
    L.append("| peer | setting | rows | candidate | probe runs | median | chosen |")
    L.append("|---|---|---|---|---|---|---|")
    split = []
    for peer, entry in out.items():
        for cls in ("msg", "hs"):
            e = entry.get(cls)
            if not e:
                continue
            rows = "message rows (msg/s)" if cls == "msg" else "handshake rows (handshakes/s)"
            if "probes" not in e:
                L.append(f"| {peer} | `{entry['setting']}` | {rows} | {e['choice']} | - | - | {e['choice']}: {e['why']} |")
                continue
            for n, runs in e["probes"].items():
                got = ", ".join(fmt(p["rate"]) + (f" ({p['errors']} errors)" if p.get("errors") else "") for p in runs)
                chosen = "**yes**" if int(n) == e["choice"] else ""
                L.append(f"| {peer} | `{entry['setting']}` | {rows} | {n} | {got} | {fmt(e['median'][n])} | {chosen} |")
        m, h = entry.get("msg", {}).get("choice"), entry.get("hs", {}).get("choice")
        if m is not None and h is not None and m != h:
            split.append(f"{peer} runs the message rows with `{entry['setting']} {m}` and the handshake rows with "
                         f"`{entry['setting']} {h}`.")
    L.append("")
    if probes:
            L.append("Probes: each candidate in turn (the order alternates from one repetition to the next), on a "
                 "freshly started proxy, 64 B ping-pong on 50 connections and then handshakes (hs_ws); "
                 "the median decides, a tie goes to the smaller count.")
    L.append("The idle-session and fairness rows use the message count.")
    if split:
        L.append("")
        L.extend(split)
    with open(os.path.join(run_dir, "tuning.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    return choices


def svg_throughput(runs, path):
    """Horizontal bars, one panel per row (each on its own scale): msg/s of every target."""
    rows = [(r, title) for r, title in ECHO_ROWS if any((t, r) in runs for t in TARGETS)]
    if not rows:
        return False
    bar, gap, head = 14, 3, 24
    w, left, right = 760, 230, 90
    pw = w - left - right
    panels = []
    for row, title in rows:
        vals = [(t, agg(runs, t, row, "msgs_per_s")) for t in TARGETS if (t, row) in runs]
        vals = [(t, v) for t, v in vals if v is not None]
        if vals:
            panels.append((row, title, vals))
    h = 40 + sum(head + len(v) * (bar + gap) + 12 for _, _, v in panels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">'
        "messages per second by row (median of repetitions; each row on its own scale)</text>",
    ]
    y = 40
    for row, title, vals in panels:
        out.append(f'<text x="10" y="{y + 15}" font-weight="bold">{title}</text>')
        y += head
        top = max(v for _, v in vals) or 1
        for t, v in vals:
            bw = pw * v / top
            out.append(f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end">{peer_label(runs, t, row)}</text>')
            out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar}" fill="{COLORS.get(t, "#000")}"/>')
            out.append(f'<text x="{left + bw + 4:.1f}" y="{y + bar - 3}">{fmt(v)}</text>')
            y += bar + gap
        y += 12
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


def tuning_of(runs, target, row):
    """The worker setting a target ran a row with ("worker_processes 1"), or None."""
    for r in runs.get((target, row), []):
        t = r.get("tuning")
        if isinstance(t, dict) and t.get("setting"):
            return f"{t['setting']} {t.get('value')}"
    return None


def peer_label(runs, target, row):
    tun = tuning_of(runs, target, row)
    return f"{target} ({tun})" if tun else target


def best_peer(runs, row, path, peers, higher=True, scale=1.0):
    """(value, label) of the best peer on a row: highest (rates) or lowest (costs)."""
    found = []
    for t in peers:
        v = agg(runs, t, row, path)
        if v is not None:
            found.append((v * scale, peer_label(runs, t, row)))
    if not found:
        return None, "-"
    return (max if higher else min)(found, key=lambda f: f[0])


def fairness_delta(runs, target):
    a = agg(runs, target, "fairness_alone", "latency_us.p99")
    b = agg(runs, target, "fairness_flood", "latency_us.p99")
    return b - a if None not in (a, b) else None


def instructions_table(run_dirs):
    """bench/instructions.sh's Markdown table from the newest RUN_DIR/instructions.md, or None."""
    for d in reversed(run_dirs):
        path = os.path.join(d, "instructions.md")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read().strip()
    return None


def instructions_per_message(table, target, workload="64 B, 50 connections"):
    if not table:
        return None
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[0] == workload and cells[1] == target:
            try:
                return float(cells[-1].replace(",", ""))
            except ValueError:
                return None
    return None


def targets_section(runs, run_dirs):
    L = []
    W = "wsgate-raw"
    L.append("| target | wsgate (`raw` route) | best peer (tuning) | ratio | needed | verdict |")
    L.append("|---|---|---|---|---|---|")

    def line(name, w, w_unit, ref, ref_label, needed, ok, digits=0, r=None, row=None):
        if r is None:
            q = ratio(w, ref)
            r = f"{fmt(q, 2)}x" if q is not None else "-"
        w_txt = f"{fmt(w, digits)}{w_unit}" if w is not None else "-"
        wt = tuning_of(runs, W, row) if row else None
        if w is not None and wt:
            w_txt += f" ({wt})"
        ref_txt = f"{ref_label}: {fmt(ref, digits)}{w_unit}" if ref is not None else "-"
        L.append(f"| {name} | {w_txt} | {ref_txt} | {r} | {needed} | {verdict(ok)} |")

    def at_least(row, path, name, unit, peers, factor=1.0, digits=0):
        w = agg(runs, W, row, path)
        ref, label = best_peer(runs, row, path, peers)
        ok = None if None in (w, ref) else w >= factor * ref
        need = f">= {factor:g}x {' and '.join(peers)}" if factor != 1.0 else f">= {' and '.join(peers)}"
        line(name, w, unit, ref, label, need, ok, digits, row=row)

    for row, conns in (("echo64_c50", "50"), ("echo64_c200", "200"), ("echo64_c1000", "1,000")):
        at_least(row, "msgs_per_s", f"64 B ping-pong, {conns} connections, msg/s", " msg/s", PEERS)
    w = agg(runs, W, "echo64_c50", "server.cpu_s_per_million")
    ref, label = best_peer(runs, "echo64_c50", "server.cpu_s_per_million", ["nginx"], higher=False)
    line("proxy CPU-s per 1M messages, 64 B, 50 connections", w, "", ref, label, "<= nginx",
         None if None in (w, ref) else w <= ref, 2, row="echo64_c50")
    table = instructions_table(run_dirs)
    w = instructions_per_message(table, W)
    found = [(v, t) for t in PEERS for v in [instructions_per_message(table, t)] if v is not None]
    ref, label = min(found) if found else (None, "-")
    # bench/instructions.sh says which session loop wsgate ran under callgrind.
    loop = re.search(r"session threads under callgrind: (\w+)", table or "")
    what = f"callgrind, 1 worker, session threads on {loop.group(1)}" if loop else "callgrind, 1 worker"
    line(f"user-space instructions per message, 64 B, 50 connections ({what})", w, "", ref,
         label, "<= 3,000", None if w is None else w <= 3000)
    at_least("bulk64k_k1", "payload_mb_per_s", "64 KiB messages, 1 in flight, MB/s", " MB/s", PEERS)
    at_least("bulk64k_k4", "payload_mb_per_s", "64 KiB messages, 4 in flight, MB/s", " MB/s", PEERS)
    at_least("wss_echo64_c50", "msgs_per_s", "TLS: 64 B ping-pong, 50 connections, msg/s", " msg/s", ["nginx"])
    at_least("wss_bulk64k_k4", "payload_mb_per_s", "TLS: 64 KiB messages, 4 in flight, MB/s", " MB/s", ["nginx"])
    for row, limit, name in (("idle_plain", 4, "plain"), ("idle_tls", 16, "TLS")):
        b = agg(runs, W, row, "server.bytes_per_session")
        kib = b / 1024 if b is not None else None
        ref, label = best_peer(runs, row, "server.bytes_per_session", PEERS, higher=False, scale=1 / 1024)
        line(f"memory per idle session, {name}", kib, " KiB", ref, label, f"<= {limit} KiB",
             None if kib is None else kib <= limit, 1, row=row)
    at_least("hs_ws", "handshakes_per_s", "handshakes/s, plain", " /s", ["nginx"], 1.3)
    at_least("hs_wss", "handshakes_per_s", "handshakes/s, TLS", " /s", ["nginx"], 1.3)
    d = fairness_delta(runs, W)
    found = [(v, peer_label(runs, t, "fairness_flood")) for t in PEERS for v in [fairness_delta(runs, t)] if v is not None]
    ref, label = min(found, key=lambda f: f[0]) if found else (None, "-")
    line(f"fairness: p99 of {fair_conns(runs)} ping-pong sessions, flood minus alone, us", d, " us", ref, label,
         "<= 1,000 us", None if d is None else d <= 1000, 0, r="-", row="fairness_flood")
    return "\n".join(L)


def fair_conns(runs):
    for r in runs.get(("wsgate-raw", "fairness_alone"), []) + runs.get(("nginx", "fairness_alone"), []):
        if r.get("connections"):
            return r["connections"]
    return 20


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
    L.append("Every row against the best peer after tuning (the higher rate of nginx and HAProxy, the "
             "lower cost; nginx alone where the target names it or HAProxy has no such row), each "
             "with the worker count it ran with.")
    L.append("")
    L.append(targets_section(runs, run_dirs))
    L.append("")
    tuning = tuning_md(run_dirs)
    if tuning:
        L.append("### Peer tuning")
        L.append("")
        L.append(tuning)
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
                f"| {peer_label(runs, t, row)} | {fmt(agg(runs, t, row, 'msgs_per_s'))} | {fmt(agg(runs, t, row, 'payload_mb_per_s'), 1)} | "
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
                f"| {peer_label(runs, t, 'hs_ws' if (t, 'hs_ws') in runs else 'hs_wss')} | {fmt(agg(runs, t, 'hs_ws', 'handshakes_per_s'))} | {fmt(agg(runs, t, 'hs_ws', 'latency_us.p50'), 1)} | "
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
                f"| {peer_label(runs, t, 'idle_plain' if (t, 'idle_plain') in runs else 'idle_tls')} | {fmt(n)} | {fmt(kib('idle_plain'), 1)} | {fmt(kib('idle_plain', 'pss_bytes_per_session'), 1)} | "
                f"{rss('idle_plain')} | {fmt(kib('idle_tls'), 1)} | {fmt(kib('idle_tls', 'pss_bytes_per_session'), 1)} | "
                f"{rss('idle_tls')} | {fails} |"
            )
        L.append("")
    present = [t for t in TARGETS if (t, "fairness_alone") in runs]
    if present:
        L.append(f"### Fairness: {fair_conns(runs)} ping-pong sessions (64 B) alone and beside one flooding session")
        L.append("")
        L.append("The flooding session's backend sends as fast as it can to a client that reads 16 KiB every "
                 "5 ms; the same proxy process serves both.")
        L.append("")
        L.append("| peer | msg/s alone | p99 us alone | msg/s beside the flood | p99 us beside the flood | p99 difference, us | p99.9 us beside the flood | errors | reps |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for t in present:
            errs = (total_errors(runs, t, "fairness_alone") or 0) + (total_errors(runs, t, "fairness_flood") or 0)
            L.append(
                f"| {peer_label(runs, t, 'fairness_alone')} | {fmt(agg(runs, t, 'fairness_alone', 'msgs_per_s'))} | "
                f"{fmt(agg(runs, t, 'fairness_alone', 'latency_us.p99'), 1)} | "
                f"{fmt(agg(runs, t, 'fairness_flood', 'msgs_per_s'))} | "
                f"{fmt(agg(runs, t, 'fairness_flood', 'latency_us.p99'), 1)} | {fmt(fairness_delta(runs, t), 1)} | "
                f"{fmt(agg(runs, t, 'fairness_flood', 'latency_us.p999'), 1)} | {errs} | {reps(runs, t, 'fairness_flood')} |"
            )
        L.append("")
    table = instructions_table(run_dirs)
    if table:
        L.append("### User-space instructions per message (bench/instructions.sh, callgrind, one worker each)")
        L.append("")
        L.append("\n".join(line for line in table.splitlines() if not line.startswith("## ")).strip())
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
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "--one-line":
        print(one_line(args[1]))
        return
    if len(args) >= 2 and args[0] == "--other-cpu":
        try:
            o = other_cpu(json.loads(args[1]))
        except ValueError:
            o = None
        print(f"{o:.2f}" if o is not None else "0")
        return
    if len(args) >= 2 and args[0] == "--tuning":
        for peer, cls, n in tuning(os.path.abspath(args[1])):
            print(peer, cls, n)
        return
    docs = "--docs" in args
    args = [a for a in args if a != "--docs"]
    if args:
        run_dirs = [os.path.abspath(a) for a in args]
    else:
        found = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "run-*")))
        if not found:
            sys.exit("report.py: no bench/results/run-* directory")
        run_dirs = found[-1:]
    run_dir = run_dirs[-1]
    runs = load_all(run_dirs)
    codec = codec_table()
    body = tables(runs, run_dirs, codec)
    # Without --docs (a quick run, a look at a run) nothing outside RUN_DIR is written.
    svg_dir = os.path.join(ROOT, "bench") if docs else run_dir
    svg_ref = "bench/" if docs else ""
    written = []
    chart = os.path.join(svg_dir, "latency.svg")
    if svg_chart(runs, chart):
        body += f"\n![latency against connections]({svg_ref}latency.svg)\n"
        written.append(chart)
    bars = os.path.join(svg_dir, "throughput.svg")
    if svg_throughput(runs, bars):
        body += f"\n![messages per second by row]({svg_ref}throughput.svg)\n"
        written.append(bars)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(body + "\n")
    written.append(os.path.join(run_dir, "summary.md"))
    md = os.path.join(ROOT, "BENCHMARKS.md")
    if docs and os.path.exists(md):
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
            written.append(md)
    print("report.py: wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
