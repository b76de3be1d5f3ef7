#!/usr/bin/env python3
"""Three ways to put one write through OpenSSL, on pyOpenSSL memory-BIO pairs, in one process.

A script, not a test::

    flock /tmp/hps-bench.lock taskset -c 1 python bench/tlswrites.py [--sizes 65536,131072]
        [--writes 2000] [--connections 300]

- ``twisted``: what ``TLSMemoryBIOProtocol._write`` does: 16 KiB slices, ``send`` and
  ``bio_read(2**15)`` per slice;
- ``whole``: one ``SSL_write`` of the whole write (``SSL_MODE_ENABLE_PARTIAL_WRITE``
  cleared) and one ``bio_read`` of all its ciphertext;
- ``hps``: :func:`hps._twisted.ssl_encrypt`, one ``SSL_write`` per record, the write BIO
  drained into a process-wide batch after each.

For each: CPU microseconds per write (the server side only: encryption and getting the
ciphertext out as ``bytes``), and the memory each connection keeps afterwards
(RSS growth over ``--connections`` connections that each made one write, divided by
them): OpenSSL's memory BIO keeps the largest size it ever held, for the connection's
life. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hps._twisted import ssl_encrypt  # noqa: E402
from tests.support.certificates import self_signed  # noqa: E402


def pair(context: SSL.Context, with_client: bool = False) -> Any:
    """A server connection whose handshake with a client (in memory) is done (and the
    client, ``with_client``)."""
    server, client = SSL.Connection(context, None), SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                end.do_handshake()
        for source, sink in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                sink.bio_write(source.bio_read(1 << 20))
    return (server, client) if with_client else server


def twisted(connection: SSL.Connection, data: bytes) -> None:
    for at in range(0, len(data), 2**14):
        connection.send(data[at:at + 2**14])
        connection.bio_read(2**15)


def whole(connection: SSL.Connection, data: bytes) -> None:
    # pyOpenSSL's private handle: only this alternative, which hps does not use, needs it
    lib.SSL_clear_mode(connection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)  # noqa: SLF001
    connection.send(data)
    connection.bio_read(len(data) + 4096)


def hps(connection: SSL.Connection, data: bytes) -> None:
    ssl_encrypt(connection, data, lambda ciphertext: None)


def rss_kib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1024


def measure(context: SSL.Context, way: Callable[[SSL.Connection, bytes], None],
            data: bytes, writes: int, connections: int) -> tuple[float, float]:
    """(CPU µs per write, KiB kept per connection after one write)."""
    connection = pair(context)
    began = time.process_time()
    for _ in range(writes):
        way(connection, data)
    per_write = (time.process_time() - began) / writes * 1e6
    kept = [pair(context) for _ in range(connections)]
    gc.collect()
    before = rss_kib()
    for each in kept:
        way(each, data)
    gc.collect()
    return per_write, (rss_kib() - before) / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="65536,131072")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    key, cert = self_signed(Path(tempfile.mkdtemp(prefix="hps-tlswrites-")))
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_privatekey_file(str(key))
    context.use_certificate_file(str(cert))
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    print("| write | way | CPU µs per write | KiB kept per connection |\n|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        data = b"x" * size
        for way in (twisted, whole, hps):
            micros, kept = measure(context, way, data, args.writes, args.connections)
            print(f"| {size // 1024} KiB | {way.__name__} | {micros:.0f} | {kept:.0f} |")


if __name__ == "__main__":
    main()
