#!/usr/bin/env python3
"""A trivial origin, and a client that floods a stick table with session ids no backend issued.

    session_flood.py backend PORT
    session_flood.py flood PORT N SIZE [CONNECTIONS]

`backend` answers every request on 127.0.0.1:PORT with 200 and a two-byte body, whatever the
size of its head (up to 1 MiB), and never sets a cookie: no session is ever confirmed.

`flood` sends N requests to 127.0.0.1:PORT over CONNECTIONS keep-alive connections (default 8),
each `GET /` with `Cookie: sid=ID`, ID unique per request and SIZE bytes long, reads each whole
response (Content-Length framing), and prints `sent N` and the count of each status.
"""
import asyncio
import collections
import sys

HEAD_LIMIT = 1 << 20


async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def backend(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, limit=HEAD_LIMIT)
    async with server:
        await server.serve_forever()


def session_id(n, size):
    prefix = f"{n:08d}-"
    return prefix + "x" * max(0, size - len(prefix))


async def connection(port, ids, statuses):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT)
    for sid in ids:
        writer.write(f"GET / HTTP/1.1\r\nHost: bench\r\nCookie: sid={sid}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        statuses[int(lines[0].split()[1])] += 1
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
    writer.close()


async def flood(port, count, size, connections):
    statuses = collections.Counter()
    ids = [session_id(n, size) for n in range(count)]
    await asyncio.gather(
        *(connection(port, ids[start::connections], statuses) for start in range(connections))
    )
    print(f"sent {count} " + " ".join(f"{status}:{n}" for status, n in sorted(statuses.items())))


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        asyncio.run(backend(int(sys.argv[2])))
    else:
        connections = int(sys.argv[5]) if len(sys.argv) > 5 else 8
        asyncio.run(flood(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), connections))
