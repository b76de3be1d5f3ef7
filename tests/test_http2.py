"""HTTP/2 against a hostile client (the ``h2`` library over TLS + ALPN) and a real process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from hps.http2 import LOG_EVERY, MAX_STREAMS, PluginH2Connection
from tests.support.h2client import H2Client
from tests.support.server import Server, Tree
from tests.test_tls import self_signed

BIG = "/plugins/big/1.0.0/plugin.wasm"
SMALL = "/plugins/small/1.0.0/plugin.wasm"


@pytest.fixture
def h2server(tree: Tree, serve, tmp_path: Path):
    def start(*args: str) -> tuple[Server, bytes]:
        body = tree.add("big", "1.0.0", size=8 << 20)
        tree.add("small", "1.0.0", size=100_000)
        key, cert = self_signed(tmp_path)
        server = serve("--root", str(tree.root), *args, ready=False,
                       listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        server.wait_log("catalog holds 2 artifacts")
        return server, body
    return start


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_cancels_and_bodies_reset_only_their_own_streams(h2server) -> None:
    """One real process: streams opened and cancelled in one write, then a request body
    that never ends, each beside a download that must finish whole."""
    server, body = h2server()
    client = H2Client(server.port)
    try:
        big = client.get(BIG)
        client.pump(0.2)
        for burst in (2, 2, 2, 200):  # each opened and cancelled, all in the same write
            for _ in range(burst):
                client.cancel(client.get(SMALL, send=False), send=False)
            client.flush()
            client.pump(0.05)
        assert client.wait(lambda: big in client.ended, 30), "the download never finished"
        assert bytes(client.bodies[big]) == body and not client.closed
    finally:
        client.close()
    assert "Traceback" not in server.log() and "Unhandled" not in server.log()
    client = H2Client(server.port)
    try:
        big = client.get(BIG)
        post = client.conn.get_next_available_stream_id()
        client.conn.send_headers(post, [(":method", "POST"), (":path", "/"), (":scheme", "https"),
                                        (":authority", "localhost")])
        for _ in range(4):  # 32 KiB of a body that never ends (well within the window)
            client.conn.send_data(post, b"x" * 8192)
        client.flush()
        assert client.wait(lambda: big in client.ended and post in client.reset, 30)
        assert bytes(client.bodies[big]) == body and not client.closed
    finally:
        client.close()
    assert "Traceback" not in server.log()


def test_window_zero_streams_are_cut_by_the_send_deadline_and_leave_nothing_open(
        h2server) -> None:
    """5 connections x 100 streams whose window stays 0 while the client PINGs."""
    send_timeout = 2.0
    server, _ = h2server("--send-timeout", str(send_timeout))
    pid = server.process.pid
    warm = H2Client(server.port)
    stream = warm.get(BIG)
    assert warm.wait(lambda: stream in warm.ended)
    warm.close()
    time.sleep(0.5)  # a real process: its side of the closed connection goes too
    baseline = descriptors(pid)
    clients = [H2Client(server.port, window=0) for _ in range(5)]
    try:
        for client in clients:
            client.pump(0.1)  # the server's SETTINGS
            assert client.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
            for _ in range(MAX_STREAMS):
                client.get(BIG, send=False)
            client.flush()
        began = time.monotonic()
        peak = 0
        while time.monotonic() - began < send_timeout + 6:
            for client in clients:
                client.ping()
                client.pump(0.05)
            peak = max(peak, descriptors(pid))
            if all(len(c.reset) == MAX_STREAMS for c in clients):
                break
        took = time.monotonic() - began
        cut = sum(len(c.reset) for c in clients)
        assert cut == 5 * MAX_STREAMS, f"only {cut} streams cut"
        assert all(not c.ended for c in clients) and not any(c.closed for c in clients)
    finally:
        for client in clients:
            client.close()
    deadline = time.monotonic() + 10
    while descriptors(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)  # polls a real process's descriptors
    after = descriptors(pid)
    print(f"500 window-0 HTTP/2 streams (5 connections, PINGing) cut {took:.1f}s after they "
          f"opened (send_timeout {send_timeout}s); descriptors: baseline {baseline}, peak "
          f"{peak}, after {after}")
    assert took >= send_timeout - 0.5, "cut by the send deadline, not before"
    assert after <= baseline


def test_protocol_errors_close_the_connection_with_one_line_every_few_seconds() -> None:
    clock = MemoryReactorClock()
    lines: list[str] = []

    def observe(event: dict) -> None:
        if "HTTP/2 protocol error" in (event.get("log_format") or ""):
            lines.append(formatEvent(event))

    def fail_one() -> StringTransport:
        connection = PluginH2Connection(clock)
        connection.callLater = clock.callLater
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.protocol_error(ValueError("bad state"))
        return transport

    PluginH2Connection.last_logged, PluginH2Connection.quiet = float("-inf"), 0
    globalLogPublisher.addObserver(observe)
    try:
        assert all(fail_one().disconnecting for _ in range(3))
        clock.advance(LOG_EVERY)
        fail_one()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 2 and "(2 more not logged)" in lines[1]


def test_a_probe_slot_past_the_cap_answers_probes_only_on_http2_too(h2server) -> None:
    server, _ = h2server("--max-connections", "1")
    stalled = H2Client(server.port, window=0)  # the one connection, answering (window 0)
    stalled.get(BIG)
    stalled.pump(0.3)
    probe = H2Client(server.port)
    try:
        health, download = probe.get("/healthz"), probe.get(SMALL)
        assert probe.wait(lambda: {health, download} <= probe.ended)
        assert probe.status[health] == 200 and bytes(probe.bodies[health]) == b"ok\n"
        assert probe.status[download] == 503
    finally:
        probe.close()
        stalled.close()
