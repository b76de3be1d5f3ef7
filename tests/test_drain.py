"""SIGTERM drains: readiness fails, downloads in flight finish, stragglers are cut, exit 0.

The drain's steps run in memory on the harness's clock (what ``twistd`` does on SIGTERM
is ``stopService``, which :meth:`Harness.stop` calls); one real process checks the
signal and the exit status.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket

import pytest

from tests.support.server import Tree

SIZE = 1 << 20
GET = b"GET /plugins/big/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n"
ABORTED = 'hps_responses_aborted_total{reason="%s"}'


def test_sigterm_lets_slow_downloads_finish(tree: Tree, harness) -> None:
    body = tree.add("big", "1.0.0", size=SIZE)
    server = harness(tree.root, drain_delay=1, drain_timeout=20, gzip=False)
    idle = server.connect()  # a keep-alive connection between requests
    slow = []
    for _ in range(20):
        client = server.connect()
        client.stop_reading()
        slow.append(client.send(GET))
    stopping = server.stop()
    ready = server.get("/readyz")  # still listening: the drain delay
    assert ready.status == 503 and json.loads(ready.body)["reason"] == "draining"
    server.advance(1.0)  # the ports close; idle connections go now, busy ones when done
    assert idle.closed and not any(client.closed for client in slow)
    for step in range(10):  # the clients read, a little at a time
        for client in slow[step::10]:
            client.resume_reading()
        server.advance(0.5)
    replies = [client.take() for client in slow]
    assert [(r.status, hashlib.sha256(r.body).hexdigest()) for r in replies] == [
        (200, hashlib.sha256(body).hexdigest())] * 20
    assert all(client.closed for client in slow)
    assert stopping.called
    # Counted from the ports' closing; the last tenth began reading 9 steps of 0.5 s later.
    assert "drained: every response finished in 4.5s" in server.log()


def test_stalled_reader_is_cut_after_the_send_timeout(tree: Tree, harness) -> None:
    tree.add("big", "1.0.0", size=SIZE)
    server = harness(tree.root, send_timeout=2, gzip=False)
    before = server.metrics()
    stalled = server.connect()
    stalled.stop_reading()
    stalled.send(GET)
    server.advance(2.0)
    assert not stalled.closed, "no progress for 2 s: not more than the send timeout yet"
    server.advance(0.5)
    assert stalled.closed and stalled.transport.taken < SIZE
    after = server.metrics()
    assert after[ABORTED % "send_timeout"] - before.get(ABORTED % "send_timeout", 0) == 1
    assert server.get("/healthz").status == 200


def test_drain_timeout_aborts_stuck_clients(tree: Tree, harness) -> None:
    tree.add("big", "1.0.0", size=SIZE)
    server = harness(tree.root, drain_delay=0, drain_timeout=1, gzip=False)
    stuck = server.connect()
    stuck.stop_reading()
    stuck.send(GET)
    stopping = server.stop()
    server.advance(0.5)
    assert not stopping.called and not stuck.closed
    server.advance(0.5)
    assert stopping.called and stuck.closed
    assert "drain timeout after 1.0s: aborted 1 connections" in server.log()


@pytest.mark.process
def test_a_real_sigterm_drains_and_exits_zero(tree: Tree, serve) -> None:
    """The process: twistd's SIGTERM handling, the drain, and exit status 0 (not 143)."""
    tree.add("big", "1.0.0", size=8 << 20)
    server = serve("--root", str(tree.root), "--drain-delay", "0", "--drain-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port)) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(GET)
        assert stuck.recv(1)  # the response is under way
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
    assert "drain timeout after 1.0s: aborted 1 connections" in server.log()
