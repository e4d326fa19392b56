#!/usr/bin/env python3
"""Holds N idle client connections to a proxy, each after one answered exchange.

    idle_clients.py PORT N HOLD_SECONDS [MODE]

Opens N connections to 127.0.0.1:PORT (at most 500 being set up at once, each given 60 s),
does one exchange on each, then leaves the connection open and idle. MODE is:

  http1  (default) `GET / HTTP/1.1` and the whole response (Content-Length framing); the
         connection stays as an idle keep-alive connection.
  ws     a WebSocket handshake (`GET /ws`, `Connection: Upgrade`, `Upgrade: websocket`, a
         random `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`); checks the
         `101 Switching Protocols` and its `Sec-WebSocket-Accept`, sends one masked text frame
         and reads its echo (so bytes crossed the tunnel both ways), then holds the tunnel.
  h2tls  TLS (certificate not verified, SNI `bench`), ALPN `h2` (anything else fails), the
         HTTP/2 preface and an empty SETTINGS, one GET on stream 1 (HPACK: indexed `:method
         GET`, `:scheme https`, `:path /`, `:authority: bench` as a literal with indexed
         name); acks the server's SETTINGS (and PINGs) and reads until END_STREAM on stream 1,
         then holds the connection with no open stream.

Prints `ready N` once N connections are set up, with a line on stderr for the ones that failed
(N is then the rest), and `closed K` if the proxy closed K of them while held (each held
connection is read until its EOF). Exits after HOLD_SECONDS.
"""
import asyncio
import base64
import hashlib
import os
import ssl
import sys

GATE = 500
SETUP_TIMEOUT = 60

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B5B"
WS_TEXT = b"hello through the tunnel"

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
H2_END_STREAM, H2_ACK, H2_END_HEADERS, H2_PADDED, H2_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
# :method GET (2), :scheme https (7), :path / (4), then :authority (1) as a literal with
# incremental indexing and an indexed name (0x41), its value not Huffman-coded.
H2_BLOCK = b"\x82\x87\x84\x41" + bytes([len(b"bench")]) + b"bench"


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


H2_REQUEST = (
    H2_PREFACE
    + h2_frame(H2_SETTINGS, 0, 0)
    + h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, 1, H2_BLOCK)
)


async def http1(port, _context):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return reader, writer


async def ws(port, _context):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake answered {lines[0]!r}")
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    accept = [v.strip() for n, _, v in (l.partition(b":") for l in lines[1:]) if n.strip().lower() == b"sec-websocket-accept"]
    if accept != [expected]:
        raise RuntimeError(f"Sec-WebSocket-Accept {accept!r}, expected {expected!r}")
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(WS_TEXT))
    writer.write(bytes([0x81, 0x80 | len(WS_TEXT)]) + mask + masked)
    echo = await reader.readexactly(2 + len(WS_TEXT))
    if echo != bytes([0x81, len(WS_TEXT)]) + WS_TEXT:
        raise RuntimeError(f"echo {echo!r}")
    return reader, writer


async def h2tls(port, context):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="bench")
    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    if alpn != "h2":
        raise RuntimeError(f"ALPN chose {alpn!r}, not h2")
    writer.write(H2_REQUEST)
    status = None
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == H2_SETTINGS and not flags & H2_ACK:
            writer.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
        elif kind == H2_PING and not flags & H2_ACK:
            writer.write(h2_frame(H2_PING, H2_ACK, 0, payload))
        elif kind == H2_GOAWAY:
            raise RuntimeError(f"GOAWAY {payload.hex()}")
        elif kind == H2_RST_STREAM and stream == 1:
            raise RuntimeError(f"RST_STREAM {payload.hex()}")
        elif kind == H2_HEADERS and stream == 1 and status is None:
            block = payload
            if flags & H2_PADDED:
                block = block[1 : len(block) - block[0]]
            if flags & H2_PRIORITY:
                block = block[5:]
            status = block[:1]
        if stream == 1 and kind in (H2_DATA, H2_HEADERS) and flags & H2_END_STREAM:
            break
    # :status 200 is static entry 8 (0x88) for HAProxy's and hyper's encoders alike.
    if status != b"\x88":
        raise RuntimeError(f"response header block starts {status!r}, not :status 200 (0x88)")
    await writer.drain()
    return reader, writer


async def main(port, count, hold, mode):
    setup = {"http1": http1, "ws": ws, "h2tls": h2tls}[mode]
    context = None
    if mode == "h2tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
    gate = asyncio.Semaphore(GATE)

    async def one():
        async with gate:
            return await asyncio.wait_for(setup(port, context), SETUP_TIMEOUT)

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    connections = [result for result in results if not isinstance(result, BaseException)]
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        print(f"{len(failures)} of {count} {mode} connections failed, the first: {failures[0]!r}", file=sys.stderr)
    closed = 0

    async def watch(reader):
        nonlocal closed
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        closed += 1

    watchers = [asyncio.create_task(watch(reader)) for reader, _ in connections]
    print(f"ready {len(connections)}", flush=True)
    await asyncio.sleep(hold)
    print(f"closed {closed}", flush=True)
    for task in watchers:
        task.cancel()
    for _, writer in connections:
        writer.close()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(writer.wait_closed() for _, writer in connections), return_exceptions=True), 10
        )
    except asyncio.TimeoutError:
        pass


if __name__ == "__main__":
    mode = sys.argv[4] if len(sys.argv) > 4 else "http1"
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), mode))
