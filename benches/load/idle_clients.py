#!/usr/bin/env python3
"""Holds N idle keep-alive client connections to a proxy, each after one answered request.

    idle_clients.py PORT N HOLD_SECONDS

Opens N connections to 127.0.0.1:PORT (at most 500 connecting at once), sends each one
`GET / HTTP/1.1` and reads the whole response (Content-Length framing), then leaves the
connection open and idle. Prints `ready N` once all N have been answered, and `closed K`
if the proxy closed K of them while held. Exits after HOLD_SECONDS.
"""
import asyncio
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one(port, gate):
    async with gate:
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


async def main(port, count, hold):
    gate = asyncio.Semaphore(500)
    connections = await asyncio.gather(*(one(port, gate) for _ in range(count)))
    print(f"ready {len(connections)}", flush=True)
    await asyncio.sleep(hold)
    closed = sum(1 for reader, _ in connections if reader.at_eof())
    print(f"closed {closed}", flush=True)
    for _, writer in connections:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
