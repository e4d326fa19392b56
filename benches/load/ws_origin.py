#!/usr/bin/env python3
"""A WebSocket echo origin for idle_memory.sh (nginx cannot be one by itself).

    ws_origin.py PORT

Listens on 127.0.0.1:PORT (accept backlog 4096, one asyncio loop, thousands of connections).
Answers a request carrying `Sec-WebSocket-Key` with `101 Switching Protocols`,
`Upgrade: websocket` and the matching `Sec-WebSocket-Accept` (RFC 6455 §4.2.2:
base64(sha1(key + GUID))), then echoes every text, binary or continuation frame unmasked,
answers a ping with a pong and a close with a close. Any other request gets 400. Runs until
it is killed; needs an open-file limit above the number of tunnels.
"""
import asyncio
import base64
import hashlib
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B5B"


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(first, payload):
    """An unmasked frame (a server's) with first byte `first` (FIN, RSV and opcode)."""
    length = len(payload)
    if length < 126:
        head = bytes([first, length])
    elif length < 1 << 16:
        head = bytes([first, 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, 127]) + length.to_bytes(8, "big")
    return head + payload


async def serve(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        key = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n"
        )
        await writer.drain()
        while True:
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            data = await reader.readexactly(length)
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))
            opcode = first & 0x0F
            if opcode == 0x8:  # close: answer with the status code, then end
                writer.write(frame(0x88, payload[:2]))
                await writer.drain()
                return
            if opcode == 0x9:  # ping
                writer.write(frame(0x8A, payload))
            elif opcode in (0x0, 0x1, 0x2):  # continuation, text, binary: echo as is
                writer.write(frame(first, payload))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
