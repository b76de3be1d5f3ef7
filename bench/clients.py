#!/usr/bin/env python3
"""Many concurrent HTTP/1.1 clients on loopback, for the bench's memory cases.

``python bench/clients.py --port P --path /a --path /b --clients 1000 --mode wait``

Every client first connects and sends its GET; then

- ``wait``: all wait ``--wait`` seconds, then each reads its whole response (a rollout:
  1,000 gateways ask at once, on links slower than the server);
- ``slow``: every client has a ``--rcvbuf`` receive buffer (set before connecting, so the
  TCP window stays small) and reads ``--rcvbuf`` bytes every ``--interval`` seconds for
  ``--hold`` seconds, then hangs up (slow links).

Paths are spread round-robin over the clients. Prints one JSON line: how many completed,
bytes read, seconds. Only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import time


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def connect(port: int, rcvbuf: int | None, tls: bool):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, ssl=tls_context() if tls else None,
                                         server_hostname="localhost" if tls else None,
                                         limit=1 << 20)


def request(path: str, gzip: bool) -> bytes:
    extra = "Accept-Encoding: gzip\r\n" if gzip else ""
    return (f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: Go-http-client/1.1\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()


async def open_and_ask(args, path: str):
    reader, writer = await connect(args.port, args.rcvbuf if args.mode == "slow" else None,
                                   args.tls)
    writer.write(request(path, args.gzip))
    await writer.drain()
    return reader, writer


async def read_all(reader, writer) -> int:
    total = 0
    while chunk := await reader.read(1 << 20):
        total += len(chunk)
    writer.close()
    return total


async def read_slowly(reader, writer, args, deadline: float) -> int:
    total = 0
    while time.monotonic() < deadline:
        chunk = await reader.read(args.rcvbuf)
        if not chunk:
            break
        total += len(chunk)
        await asyncio.sleep(args.interval)
    writer.close()
    return total


async def run(args) -> dict:
    """Every client connects and asks first (TLS handshakes take the client a while on a
    busy machine); then all wait, or read slowly, together."""
    started = time.monotonic()
    paths = args.path
    opened = await asyncio.gather(*[open_and_ask(args, paths[i % len(paths)])
                                    for i in range(args.clients)], return_exceptions=True)
    connected = time.monotonic() - started
    live = [o for o in opened if isinstance(o, tuple)]
    if args.mode == "wait":
        await asyncio.sleep(args.wait)
        reads = [read_all(r, w) for r, w in live]
    else:
        deadline = time.monotonic() + args.hold
        reads = [read_slowly(r, w, args, deadline) for r, w in live]
    results = list(await asyncio.gather(*reads, return_exceptions=True))
    results += [o for o in opened if not isinstance(o, tuple)]
    done = [r for r in results if isinstance(r, int)]
    errors = sorted({type(r).__name__ for r in results if not isinstance(r, int)})
    return {"clients": args.clients, "completed": len(done), "bytes": sum(done),
            "errors": errors, "connect_seconds": round(connected, 2),
            "seconds": round(time.monotonic() - started, 2)}


def more_descriptors() -> None:
    """A thousand sockets and more: raise this process's descriptor limit to its hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", action="append", required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--mode", choices=("wait", "slow"), default="wait")
    parser.add_argument("--wait", type=float, default=3.0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--rcvbuf", type=int, default=8192)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    more_descriptors()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
