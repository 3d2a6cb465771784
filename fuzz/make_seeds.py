#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/ (committed; rerun after changing it).

The cases follow the test suite: valid, fragmented and control frames and their violations
(src/ws/frame.rs), upgrade heads (tests/it/handshake.rs), configurations (config.toml, the
README example, src/config.rs), PROXY headers (tests/it/proxy_protocol.rs) and Redis replies
(src/target/redis.rs).
"""
import base64
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


# ---- frame_decoder: limits, cuts, then the client's bytes -----------------------------------


def frame(fin, opcode, payload, key=KEY, length=None):
    n = len(payload) if length is None else length
    out = bytearray([(0x80 if fin else 0) | opcode])
    if n < 126:
        out.append(0x80 | n)
    elif n <= 0xFFFF:
        out.append(0x80 | 126)
        out += struct.pack(">H", n)
    else:
        out.append(0x80 | 127)
        out += struct.pack(">Q", n)
    out += key
    out += bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(out)


def decoder_input(stream, cuts=(), frame_size=1 << 20, message_size=1 << 20, fragments=16):
    head = struct.pack("<IIBB", frame_size, message_size, fragments, len(cuts))
    head += b"".join(struct.pack("<H", c) for c in cuts)
    return head + stream


def frame_decoder():
    t = "frame_decoder"
    # RFC 6455 §5.7: a single-frame masked text message "Hello".
    write(t, "text_hello", decoder_input(frame(True, 0x1, b"Hello"), cuts=(3,)))
    write(
        t,
        "fragmented_text_with_ping",
        decoder_input(
            frame(False, 0x1, b"Hel") + frame(True, 0x9, b"ping") + frame(True, 0x0, b"lo"),
            cuts=(1, 7, 12, 20),
        ),
    )
    # A code point cut between two fragments.
    euro = "€uro".encode()
    write(
        t,
        "utf8_across_fragments",
        decoder_input(frame(False, 0x1, euro[:2]) + frame(True, 0x0, euro[2:]), cuts=(7,)),
    )
    write(
        t,
        "close_then_junk",
        decoder_input(frame(True, 0x8, struct.pack(">H", 1000) + b"bye") + b"\xff\xff junk"),
    )
    write(
        t,
        "binary_16bit_length",
        decoder_input(frame(True, 0x2, bytes(range(256)) * 1 + b"\x00" * 44), cuts=(2, 5, 100)),
    )
    # A 64-bit length whose payload only starts to arrive.
    write(
        t,
        "binary_64bit_length_partial",
        decoder_input(frame(True, 0x2, b"\x01" * 40, length=70000)[:54]),
    )
    write(
        t,
        "pong_and_empty_messages",
        decoder_input(frame(True, 0xA, b"") + frame(True, 0x2, b"") + frame(True, 0x1, b"")),
    )
    write(
        t,
        "invalid_utf8_text",
        decoder_input(frame(True, 0x1, b"ok so far \xed\xa0\x80 then not"), cuts=(10, 17)),
    )
    write(
        t,
        "message_over_small_limits",
        decoder_input(
            frame(False, 0x2, b"abcd") + frame(False, 0x0, b"ef") + frame(True, 0x0, b"g"),
            frame_size=4,
            message_size=6,
            fragments=2,
        ),
    )
    write(t, "unmasked_frame", decoder_input(b"\x81\x05Hello"))


# ---- handshake: request heads ---------------------------------------------------------------


def head(method="GET", version="HTTP/1.1", edits=()):
    h = [
        ["Host", "127.0.0.1:8080"],
        ["Upgrade", "websocket"],
        ["Connection", "Upgrade"],
        ["Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="],
        ["Sec-WebSocket-Version", "13"],
    ]
    for name, value in edits:
        if name.startswith("+"):
            h.append([name[1:], value])
            continue
        found = [x for x in h if x[0].lower() == name.lower()]
        if found and value is None:
            h.remove(found[0])
        elif found:
            found[0][1] = value
        elif value is not None:
            h.append([name, value])
    lines = [f"{method} /echo {version}"] + [f"{k}: {v}" for k, v in h]
    return "\r\n".join(lines) + "\r\n\r\n"


def handshake():
    t = "handshake"
    write(t, "valid", head())
    write(
        t,
        "valid_with_protocols_and_origin",
        head(
            edits=[
                ("Sec-WebSocket-Protocol", "chat, superchat"),
                ("+Sec-WebSocket-Protocol", "binary"),
                ("Origin", "http://127.0.0.1:8080"),
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "WebSocket"),
            ]
        ),
    )
    key = base64.b64encode(bytes(range(16))).decode()
    write(t, "key_with_whitespace", head(edits=[("Sec-WebSocket-Key", f"{key} \t")]))
    write(t, "http_1_0", head(version="HTTP/1.0"))
    write(t, "post", head(method="POST"))
    write(t, "version_8", head(edits=[("Sec-WebSocket-Version", "8")]))
    write(t, "duplicate_key", head(edits=[("+Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
    write(t, "content_length", head(edits=[("Content-Length", "5")]))
    write(t, "malformed_protocols", head(edits=[("Sec-WebSocket-Protocol", "chat, ")]))
    write(t, "h2c_upgrade", head(edits=[("Upgrade", "h2c")]))


# ---- config: TOML ----------------------------------------------------------------------------


def config():
    t = "config"
    shutil.copyfile(os.path.join(ROOT, "config.toml"), os.path.join(SEEDS, t, "config.toml"))
    write(
        t,
        "minimal.toml",
        '[[listener]]\nbind = "127.0.0.1:0"\n\n[[route]]\npath = "/echo"\nbackend = "127.0.0.1:9001"\n',
    )
    write(
        t,
        "readme_example.toml",
        """[[listener]]
bind = "0.0.0.0:443"
tls = { cert = "/etc/wsgate/fullchain.pem", key = "/etc/wsgate/privkey.pem" }

[[route]]
path = "/vnc"
backend = "10.0.0.5:5901"
framing = "raw"
allowed_origins = ["https://console.example.com"]
subprotocols = ["binary"]

[[route]]
path = "/chat"
backend = "unix:/run/chat.sock"
framing = "lines"
allowed_origins = ["https://app.example.com"]
[route.limits]
max_message_size = "64KiB"
max_frame_size = "64KiB"
idle_timeout = "30m"

[limits]
handshake_timeout = "5s"
""",
    )
    write(
        t,
        "pool_proxy_protocol.toml",
        """[[listener]]
bind = "[::1]:0"

[[route]]
path = "/pool"
backends = ["127.0.0.1:9001", "localhost:9002", "unix:sock"]
balance = "least-connections"
proxy_protocol = "v2"
framing = "length-prefixed"
max_sessions = 10
[route.health]
failures = 2
cooloff = "250ms"
[route.limits]
max_fragments = 4
ping_interval = "1h"
""",
    )
    write(t, "duration", "250ms")
    write(t, "size", "16MiB")


# ---- proxy_header: flags, addresses, session id, stretch lengths, subject NUL route ----------


def addr(kind, ip, port):
    return bytes([kind]) + bytes(ip) + struct.pack(">H", port)


def proxy(flags, src, dst, session, subject, route, subject_len=0, route_len=0):
    return (
        bytes([flags])
        + src
        + dst
        + struct.pack(">QHH", session, subject_len, route_len)
        + subject.encode()
        + b"\0"
        + route.encode()
    )


def proxy_header():
    t = "proxy_header"
    v4 = lambda a, b, c, d, port: addr(0, [a, b, c, d], port)
    v6 = lambda last, port: addr(1, [0] * 15 + [last], port)
    mapped = lambda a, b, c, d, port: addr(2, [a, b, c, d], port)
    src, dst = v4(127, 0, 0, 2, 50000), v4(127, 0, 0, 1, 8080)
    write(t, "v1_ipv4", proxy(0b00, src, dst, 42, "", "/chat"))
    write(t, "v2_ipv4_subject", proxy(0b11, src, dst, 42, "alice", "/chat"))
    write(t, "v1_ipv6", proxy(0b00, v6(1, 5), v6(1, 6), 1, "", "/"))
    write(t, "v2_ipv6_no_subject", proxy(0b01, v6(1, 1), v6(2, 2), 7, "", "/echo"))
    write(t, "v1_mapped", proxy(0b00, mapped(10, 1, 2, 3, 5), v4(10, 0, 0, 1, 6), 9, "", "/"))
    write(
        t,
        "v2_mixed_families",
        proxy(0b11, v4(192, 0, 2, 1, 1), v6(1, 2), 2**64 - 1, "bob@example.com", "/ws"),
    )
    write(
        t,
        "v2_long_subject",
        proxy(0b11, src, dst, 3, "sub-é-", "/long", subject_len=20000, route_len=300),
    )


# ---- redis_reply: RESP2 replies as a Redis server sends them (src/target/redis.rs) ---------


def redis_reply():
    t = "redis_reply"
    write(t, "auth_select_get", b"+OK\r\n+OK\r\n$14\r\n127.0.0.1:5901\r\n")
    write(t, "nil", b"$-1\r\n")
    write(t, "json_value", b'$31\r\n{"host": "vm1", "port": "5902"}\r\n')
    write(t, "wrongpass", b"-WRONGPASS invalid username-password pair\r\n")
    write(t, "wrongtype", b"-WRONGTYPE Operation against a key holding the wrong kind\r\n")
    write(t, "integer_and_nil_array", b":-42\r\n*-1\r\n")
    write(t, "truncated_bulk", b"$10\r\nabc")
    write(t, "oversized_bulk", b"$65537\r\n")
    write(t, "binary_bulk", b"$5\r\na\r\nb\x00\r\n")


# ---- recording_line: session recordings, whole and cut short --------------------------------


def recording_line():
    t = "recording_line"
    lines = [
        '{"v":1,"type":"start","session":1,"route":"/r","client":"127.0.0.1:1",'
        '"backend":"127.0.0.1:2","subprotocol":null,"framing":"raw",'
        '"time":"2024-01-01T00:00:00.000Z"}',
        '{"t":1,"dir":"in","kind":"text","data":"hi\\n"}',
        '{"t":2,"dir":"out","kind":"binary","data":"AAEC"}',
        '{"t":3,"dir":"in","kind":"text","enc":"base64","data":"YcM="}',
        '{"t":4,"type":"gap","dir":"out","bytes":9,"reason":"queue full"}',
        '{"t":5,"type":"gap","dir":"in","bytes":7,"reason":"size limit"}',
        '{"t":6,"type":"end","close":1000,"reason":"client closed"}',
    ]
    whole = "\n".join(lines) + "\n"
    write(t, "session", whole)
    write(t, "cut_short", whole + '{"t":7,"dir":"in"')


def proxy_decode():
    t = "proxy_decode"
    sig = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
    write(t, "v1_tcp4", b"\x00PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n")
    write(t, "v1_tcp6", b"\x00PROXY TCP6 2001:db8::7 ::1 1 2\r\n")
    write(t, "v1_unknown", b"\x00PROXY UNKNOWN\r\n")
    v4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 56324, 443)
    tlv = b"\x01\x00\x02h2"
    write(t, "v2_inet", b"\x01" + sig + b"\x21\x11" + struct.pack(">H", len(v4 + tlv)) + v4 + tlv)
    v6 = bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack(">HH", 1, 2)
    write(t, "v2_inet6", b"\x01" + sig + b"\x21\x21" + struct.pack(">H", len(v6)) + v6)
    write(t, "v2_local", b"\x01" + sig + b"\x20\x00\x00\x00")


if __name__ == "__main__":
    for target in ["frame_decoder", "handshake", "config", "proxy_header", "proxy_decode", "redis_reply", "recording_line"]:
        shutil.rmtree(os.path.join(SEEDS, target), ignore_errors=True)
    frame_decoder()
    handshake()
    os.makedirs(os.path.join(SEEDS, "config"), exist_ok=True)
    config()
    proxy_header()
    proxy_decode()
    redis_reply()
    recording_line()
