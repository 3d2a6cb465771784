#!/usr/bin/env python3
"""bench/slow_client.py MODE PORT PATH SECONDS: the flooding session's slow reader.

Opens the session (MODE ws: a WebSocket upgrade on PATH; tcp: a plain TCP connection) and reads
16 KiB every 5 ms for SECONDS, printing the bytes received once a second. Used by the fairness
row of bench/run.sh and by bench/fairness.sh.
"""
import base64, os, socket, sys, time
mode, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
if mode == "ws":
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
end = time.monotonic() + seconds
got, report = 0, time.monotonic() + 1
while time.monotonic() < end:
    got += len(s.recv(16384))
    time.sleep(0.005)
    if time.monotonic() >= report:
        print(f"{mode} {port}: {got} bytes received", flush=True)
        report += 1
s.close()
