#!/usr/bin/env python3
"""Run README.md's first command as a new user would, and check that the demo works.

The command is taken from README.md itself (the first ```sh block under "## The two commands"),
so the README and this check cannot drift apart. It is run with bash from the repository root,
in a process group of its own. Then, with an independent client (the `websockets` package):

- ws://127.0.0.1:8080 accepts connections (waiting up to --timeout while cargo builds);
- ws://127.0.0.1:8080/demo, with Origin http://127.0.0.1:8080, says `world`; the client sends
  `from client: hello` and the gateway log shows the greeter receiving it;
- http://127.0.0.1:8080/ serves the demo page (200, text/html, the bytes of demo/index.html);
- SIGINT ends the process with exit status 0.

Any failure prints the process's log and exits 1; whatever was started is ended (its process
group) before this script exits. The ports config.toml uses must be free beforehand.

Usage: .venv/bin/python scripts/check_readme_demo.py [--timeout SECONDS]
"""

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PORT = 8080
PAGE_URL = f"http://{HOST}:{PORT}/"
WS_URL = f"ws://{HOST}:{PORT}/demo"
ORIGIN = f"http://{HOST}:{PORT}"
GREETING = "world"
MESSAGE = "from client: hello"
RECEIVED_LINE = f"server: received: {MESSAGE}"

# Bounds of the phases after the gateway is up.
IO_TIMEOUT = 10.0
LOG_TIMEOUT = 10.0
EXIT_TIMEOUT = 30.0  # above the configuration's shutdown_grace (10 s)
PROGRESS_EVERY = 30.0


class CheckFailed(Exception):
    pass


def readme_command() -> str:
    """The first ```sh block under "## The two commands" in README.md."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("## The two commands")
    except ValueError:
        raise CheckFailed('README.md has no "## The two commands" heading')
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        section.append(line)
    text = "\n".join(section)
    m = re.search(r"^```sh\n(.*?)^```", text, re.S | re.M)
    if not m or not m.group(1).strip():
        raise CheckFailed('no ```sh block under "## The two commands" in README.md')
    if PAGE_URL not in text:
        raise CheckFailed(f"README.md's first command section no longer mentions {PAGE_URL}")
    return m.group(1).strip()


def config_ports() -> list[tuple[str, str]]:
    """Every address config.toml binds, as (what, "IP:port")."""
    cfg = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    out = [(f"listener[{i}]", l["bind"]) for i, l in enumerate(cfg.get("listener", []))]
    out += [(f"demo_backend[{i}]", d["bind"]) for i, d in enumerate(cfg.get("demo_backend", []))]
    if "admin" in cfg:
        out.append(("admin", cfg["admin"]["bind"]))
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def check_ports_free(binds: list[tuple[str, str]]) -> None:
    if f"{HOST}:{PORT}" not in [a for _, a in binds]:
        raise CheckFailed(f"config.toml has no listener on {HOST}:{PORT}, which README.md opens")
    for what, addr in binds:
        host, port = split_addr(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # As the gateway binds (SO_REUSEADDR, so a socket in TIME_WAIT is no obstacle).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise CheckFailed(
                    f"{addr} ({what} in config.toml) is already in use ({e.strerror}); "
                    "stop whatever listens there and run the check again"
                )


class Process:
    """The README command in its own process group, its output collected line by line."""

    def __init__(self, command: str):
        env = dict(os.environ)
        env.pop("WSGATE_LOG", None)  # the README describes the default log level
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # start_new_session: the child leads a new group
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self.lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def log(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def last_line(self) -> str:
        with self.lock:
            return self.lines[-1].strip() if self.lines else "(nothing yet)"

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """End the whole group: SIGTERM, then SIGKILL after 5 s."""
        self.signal_group(signal.SIGTERM)
        if self.wait(5) is None:
            self.signal_group(signal.SIGKILL)
            self.wait(5)
        # Members of the group that outlived its leader.
        self.signal_group(signal.SIGKILL)
        self.reader.join(2)


def wait_until_accepting(p: Process, timeout: float) -> None:
    start = time.monotonic()
    next_report = start + PROGRESS_EVERY
    while True:
        try:
            with socket.create_connection((HOST, PORT), timeout=1):
                return
        except OSError:
            pass
        code = p.proc.poll()
        if code is not None:
            raise CheckFailed(f"the command exited with status {code} before {HOST}:{PORT} accepted")
        now = time.monotonic()
        if now - start > timeout:
            raise CheckFailed(f"{HOST}:{PORT} did not accept within {timeout:.0f} s")
        if now >= next_report:
            print(f"  ... {now - start:.0f} s, waiting for {HOST}:{PORT}; last output: {p.last_line()}",
                  flush=True)
            next_report = now + PROGRESS_EVERY
        time.sleep(0.5)


def wait_for_log(p: Process, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in p.log():
        if time.monotonic() > deadline:
            raise CheckFailed(f"the log never showed {needle!r} within {timeout:.0f} s")
        time.sleep(0.1)


async def websocket_exchange() -> None:
    async with connect(WS_URL, origin=ORIGIN, open_timeout=IO_TIMEOUT, close_timeout=IO_TIMEOUT) as ws:
        first = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
        if first != GREETING:
            raise CheckFailed(f"{WS_URL} sent {first!r}, expected the text message {GREETING!r}")
        await asyncio.wait_for(ws.send(MESSAGE), IO_TIMEOUT)


def check_page() -> None:
    expected = (ROOT / "demo" / "index.html").read_bytes()
    with urllib.request.urlopen(PAGE_URL, timeout=IO_TIMEOUT) as resp:
        status = resp.status
        ctype = resp.headers.get("Content-Type", "")
        body = resp.read()
    if status != 200:
        raise CheckFailed(f"GET {PAGE_URL}: status {status}, expected 200")
    if ctype.split(";")[0].strip() != "text/html":
        raise CheckFailed(f"GET {PAGE_URL}: Content-Type {ctype!r}, expected text/html")
    if body != expected:
        raise CheckFailed(f"GET {PAGE_URL}: the body is not demo/index.html")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for the gateway to accept, build included (default 900)")
    args = ap.parse_args()

    # SIGTERM to this script ends what it started, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    try:
        command = readme_command()
        check_ports_free(config_ports())
    except CheckFailed as e:
        print(f"check_readme_demo: FAILED: {e}", file=sys.stderr)
        return 1

    print(f"README.md's first command: {command}", flush=True)
    p = Process(command)
    ok = False
    try:
        wait_until_accepting(p, args.timeout)
        print(f"  {HOST}:{PORT} accepts", flush=True)
        asyncio.run(websocket_exchange())
        print(f"  {WS_URL} said {GREETING!r}; sent {MESSAGE!r}", flush=True)
        wait_for_log(p, RECEIVED_LINE, LOG_TIMEOUT)
        print(f"  the log shows {RECEIVED_LINE!r}", flush=True)
        check_page()
        print(f"  {PAGE_URL} serves demo/index.html as text/html", flush=True)
        p.signal_group(signal.SIGINT)
        code = p.wait(EXIT_TIMEOUT)
        if code is None:
            raise CheckFailed(f"the process did not exit within {EXIT_TIMEOUT:.0f} s of SIGINT")
        if code != 0:
            raise CheckFailed(f"after SIGINT the process exited with status {code}, expected 0")
        print("  SIGINT: exit status 0", flush=True)
        ok = True
    except (CheckFailed, OSError, asyncio.TimeoutError, Exception) as e:
        print(f"check_readme_demo: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if p.proc.poll() is None or not ok:
            p.kill()
        if not ok:
            print("---- output of the command ----", file=sys.stderr)
            print(p.log(), file=sys.stderr)
            print("---- end of output ----", file=sys.stderr)
    if ok:
        print("README first command: OK")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
