"""Hostile and careless clients: slowloris, bodies, too many connections, huge heads.

All in memory (tests/support/memory.py): the clock moves only when a test says, so
deadlines are exact and nothing waits on a wall clock.
"""

from __future__ import annotations

from tests.support.memory import Harness
from tests.support.server import Tree

DOWNLOAD = b"GET /plugins/key-auth/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_slowloris_does_not_stop_a_normal_download(tree: Tree, harness) -> None:
    body = tree.add("key-auth", "1.0.0", size=1 << 20)
    server: Harness = harness(tree.root, header_timeout=3, gzip=False)
    attackers = [server.connect().send(b"GET / HTTP/1.1\r\nHost: x\r\n", settle=False)
                 for _ in range(300)]
    for _ in range(4):  # a header line every half second: Twisted's idle timer never fires
        server.advance(0.5)
        for attacker in attackers:
            attacker.send(b"X-a: b\r\n", settle=False)
    reply = server.get("/plugins/key-auth/1.0.0/plugin.wasm")
    assert reply.status == 200 and reply.body == body
    assert not any(attacker.received() for attacker in attackers), "2 s in: not yet"
    server.advance(1.5)  # past the 3 s header timeout, counted from each accept
    assert all(attacker.received().startswith(b"HTTP/1.1 408 ") for attacker in attackers)
    assert all(attacker.closed for attacker in attackers)


def test_request_bodies_are_refused_early(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root)
    path = "/plugins/key-auth/1.0.0/plugin.wasm"
    assert server.request(path, body=b"hello").status == 413
    huge = server.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in huge
    chunked = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert server.request("/", method="POST", body=b"x").status == 405  # small: reaches routing
    assert server.get(path).status == 200


def test_connection_cap_sheds_with_503_but_answers_probes(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0", size=1 << 20)
    server = harness(tree.root, max_connections=3, gzip=False)
    # Three downloads nobody reads: every connection is answering, none can make room.
    stalled = []
    for _ in range(3):
        client = server.connect()
        client.stop_reading()
        stalled.append(client.send(DOWNLOAD))
    shed = server.raw(b"GET /plugins/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert shed.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1\r\n" in shed and b"Connection: close\r\n" in shed
    probe = server.raw(HEALTHZ)
    assert probe.startswith(b"HTTP/1.1 200 ") and probe.endswith(b"ok\n")
    for client in stalled:
        client.close()
    assert server.get("/plugins/").status == 200


def test_silent_connection_flood_is_cut_and_probes_keep_answering(tree: Tree,
                                                                 harness) -> None:
    """More silent connections than the cap: a newcomer (a probe too) evicts the oldest
    silent one, and every silent one left goes at the header timeout from its accept."""
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root, header_timeout=2, max_connections=50)
    silent = [server.connect() for _ in range(60)]
    evicted = [client for client in silent if client.closed]
    assert len(evicted) == 10 and silent[:10] == evicted, "the oldest made room"
    answers = []
    for _ in range(10):
        answers.append(server.get("/healthz").status)
        server.advance(0.1)
    assert answers == [200] * 10
    # The first probe made room by evicting the oldest; each later one had the slot the
    # one before it freed when its client hung up.
    assert [client.closed for client in silent[10:]] == [True] + [False] * 49
    server.advance(1.5)
    assert all(client.closed and client.received() == b"" for client in silent)


def test_header_limits(tree: Tree, harness) -> None:
    """Too many header lines is 400, one overlong line is 431, and the server goes on answering."""
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root)
    many = b"".join(b"X-%d: y\r\n" % i for i in range(150))
    assert server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(
        b"HTTP/1.1 400 ")
    long_line = b"X-Big: " + b"a" * 20000 + b"\r\n"
    assert server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + long_line + b"\r\n").startswith(
        b"HTTP/1.1 431 ")
    assert server.get("/healthz").status == 200
