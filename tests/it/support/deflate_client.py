"""permessage-deflate client for tests/it/deflate.rs: an independent implementation (Python
`websockets`, which compresses with zlib) echoes messages through the gateway.

Usage: deflate_client.py BASE_URL CASE... where CASE is PATH or PATH:OPTIONS, OPTIONS being
comma-separated client offer settings (cnct = client_no_context_takeover, snct =
server_no_context_takeover, sbits=N, cbits=N, off = no compression offered) or `idle`: pause
2.5 s before the last two messages, long enough for the gateway to free its idle compressor.

For each case it prints one JSON line: the path, the Sec-WebSocket-Extensions answer, how many
data frames came back compressed (RSV1) and uncompressed, and whether every echo matched.
"""

import json
import sys
import time

from websockets.extensions import permessage_deflate
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

# Count the frames the gateway sends, by their RSV1 bit, before they are inflated.
counts = {"compressed": 0, "plain": 0}
_decode = permessage_deflate.PerMessageDeflate.decode


def counting_decode(self, frame, **kwargs):
    if frame.opcode.value in (1, 2):
        counts["compressed" if frame.rsv1 else "plain"] += 1
    return _decode(self, frame, **kwargs)


permessage_deflate.PerMessageDeflate.decode = counting_decode


def messages():
    unit = "κόσμε wsgate compresses this line again and again. "
    yield "tiny"
    yield b"\x00\x01tiny"
    for n in (100, 3000, 200_000):
        yield (unit * (n // len(unit) + 1))[:n]
        yield bytes((i * 7) % 13 for i in range(n))
    yield "pause"
    # The same text again: with context takeover it refers back to the earlier one.
    yield unit * 40
    yield unit * 40


def run_case(base, case):
    path, _, opts = case.partition(":")
    opts = [o for o in opts.split(",") if o]
    kwargs = {}
    idle = "idle" in opts
    for o in opts:
        if o == "idle":
            continue
        if o == "cnct":
            kwargs["client_no_context_takeover"] = True
        elif o == "snct":
            kwargs["server_no_context_takeover"] = True
        elif o.startswith("sbits="):
            kwargs["server_max_window_bits"] = int(o[6:])
        elif o.startswith("cbits="):
            kwargs["client_max_window_bits"] = int(o[6:])
    if "off" in opts:
        extra = {"compression": None}
    elif kwargs:
        extra = {"compression": None, "extensions": [ClientPerMessageDeflateFactory(**kwargs)]}
    else:
        extra = {}
    counts["compressed"] = counts["plain"] = 0
    ok = True
    with connect(base + path, max_size=2**24, open_timeout=10, close_timeout=5, **extra) as ws:
        answer = ws.response.headers.get("Sec-WebSocket-Extensions")
        for m in messages():
            if m == "pause":
                if idle:
                    time.sleep(2.5)
                continue
            ws.send(m)
            got = ws.recv(timeout=10)
            if got != m or type(got) is not type(m):
                ok = False
    return {
        "case": case,
        "extensions": answer,
        "compressed": counts["compressed"],
        "plain": counts["plain"],
        "ok": ok,
    }


def main():
    base = sys.argv[1]
    for case in sys.argv[2:]:
        print(json.dumps(run_case(base, case)), flush=True)


if __name__ == "__main__":
    main()
