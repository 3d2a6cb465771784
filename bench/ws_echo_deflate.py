"""A compressing WebSocket echo server for the benchmarks (bench/http2_deflate.sh): Python
`websockets` (asyncio), which accepts a client's permessage-deflate offer (RFC 7692, zlib in
C) and sends every message back as it came. It is the backend behind nginx, which passes the
extension through untouched: the compression work is done here, where wsgate does it itself in
front of a plain TCP echo.

Usage: ws_echo_deflate.py PORT   (binds 127.0.0.1:PORT; prints "listening" once bound; stops
on SIGINT or SIGTERM)
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port):
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # compression="deflate" is the default; written out because it is the point of this server.
    async with serve(echo, "127.0.0.1", port, compression="deflate", max_size=2**24, ping_interval=None):
        print("listening", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
