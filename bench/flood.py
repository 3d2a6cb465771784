#!/usr/bin/env python3
"""bench/flood.py MODE PORT: a backend that gives every connection data as fast as it takes it.

MODE raw: 64 KiB chunks of bytes (behind wsgate's raw route and HAProxy); ws: answers the
WebSocket upgrade, then 16 KiB binary frames (behind nginx). Used by the fairness row of
bench/run.sh and by bench/fairness.sh; stopped by them.
"""
import base64, hashlib, socket, sys, threading
mode, port = sys.argv[1], int(sys.argv[2])
def serve(conn):
    try:
        if mode == "ws":
            head = b""
            while b"\r\n\r\n" not in head:
                more = conn.recv(4096)
                if not more:
                    return
                head += more
            key = b""
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            chunk = b"\x82\x7e\x40\x00" + b"\x5a" * 16384
        else:
            chunk = b"\x5a" * 65536
        while True:
            conn.sendall(chunk)
    except OSError:
        pass
    finally:
        conn.close()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
