"""HTTP/2 against a hostile client (the ``h2`` library over TLS + ALPN), in memory.

The server is the real one on a fake reactor (tests/support/memory.py) listening on
``ssl:``; the client speaks TLS and HTTP/2 to it. The real-process TLS + HTTP/2 smoke
test is tests/test_tls.py (curl).
"""

from __future__ import annotations

from pathlib import Path

import h2.settings
import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from hps.files import Source
from hps.http2 import LOG_EVERY, MAX_STREAMS, PluginH2Connection
from hps.site import SWEEP_SECONDS
from tests.support.certificates import self_signed
from tests.support.h2client import connect_h2
from tests.support.memory import Harness
from tests.support.server import Tree

BIG = "/plugins/big/1.0.0/plugin.wasm"
SMALL = "/plugins/small/1.0.0/plugin.wasm"
BIG_SIZE = 1 << 20
"""Many times the client's window (64 KiB) and the server's per-stream backlog."""


@pytest.fixture
def h2site(tree: Tree, harness, tmp_path: Path):
    """``h2site(**knobs)``: an in-memory server on ``ssl:`` serving ``big`` and ``small``."""
    def start(**knobs: object) -> tuple[Harness, bytes]:
        body = tree.add("big", "1.0.0", size=BIG_SIZE)
        tree.add("small", "1.0.0", size=100_000)
        key, cert = self_signed(tmp_path)
        server = harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"],
                         **knobs)
        assert len(server.site.state.catalog) == 2
        return server, body
    return start


def quiet(server: Harness) -> None:
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_cancels_and_bodies_reset_only_their_own_streams(h2site) -> None:
    """Streams opened and cancelled in one write, then a request body that never ends,
    each beside a download that must finish whole."""
    server, body = h2site()
    client = connect_h2(server)
    big = client.get(BIG)
    for _ in range(5):
        server.turn()
    for burst in (2, 2, 2, 200):  # each opened and cancelled, all in the same write
        for _ in range(burst):
            client.cancel(client.get(SMALL, send=False), send=False)
        client.flush()
        server.turn()
        assert big not in client.ended, "the download is still under way beside them"
    server.settle()
    assert big in client.ended and bytes(client.bodies[big]) == body and not client.closed
    client.close()
    quiet(server)

    client = connect_h2(server)
    big = client.get(BIG)
    post = client.conn.get_next_available_stream_id()
    client.conn.send_headers(post, [(":method", "POST"), (":path", "/"), (":scheme", "https"),
                                    (":authority", "localhost")])
    for _ in range(4):  # 32 KiB of a body that never ends (past MAX_BODY, within the window)
        client.conn.send_data(post, b"x" * 8192)
    client.flush()
    server.settle()
    assert post in client.reset and post not in client.ended
    assert big in client.ended and bytes(client.bodies[big]) == body and not client.closed
    client.close()
    quiet(server)


def accounting(server: Harness) -> dict[str, float]:
    """What the server holds (its own books, as the cap sees them), and its metrics."""
    scrape = server.metrics()  # on a connection of its own, closed when it returns
    return {"connections": len(server.site.connections) + len(server.site.probes),
            "descriptors": server.site.descriptors_in_use(), "files": Source.open,
            "in flight": server.site.in_flight,
            "open (metric)": scrape["hps_connections_open"],
            "in flight (metric)": scrape["hps_responses_in_flight"],
            "cut (metric)": scrape.get('hps_responses_aborted_total{reason="send_timeout"}', 0)}


CLIENTS = 3


def test_window_zero_streams_are_cut_by_the_send_deadline_and_leave_nothing_open(
        h2site) -> None:
    """Connections at the stream cap (100), every window 0 while the client PINGs."""
    send_timeout = 2.0
    server, body = h2site(send_timeout=send_timeout)
    warm = connect_h2(server)
    stream = warm.get(BIG)
    server.settle()
    assert bytes(warm.bodies[stream]) == body
    warm.close()
    before = accounting(server)
    clients = [connect_h2(server, window=0) for _ in range(CLIENTS)]
    for client in clients:
        assert client.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
        for _ in range(MAX_STREAMS):
            client.get(BIG, send=False)
        client.flush()
    server.settle()
    began = server.reactor.seconds()
    held = accounting(server)
    assert held["connections"] == before["connections"] + CLIENTS
    assert held["in flight"] == before["in flight"] + CLIENTS * MAX_STREAMS
    while not all(len(c.reset) == MAX_STREAMS for c in clients):
        assert server.reactor.seconds() - began <= send_timeout + 2 * SWEEP_SECONDS, (
            f"only {sum(len(c.reset) for c in clients)} streams cut")
        for client in clients:
            client.ping()
        server.advance(0.1, step=0.1)
        if server.reactor.seconds() - began < send_timeout:
            assert not any(c.reset for c in clients), "cut by the send deadline, not before"
    assert all(not c.ended and not c.closed for c in clients)
    assert all(len(c.bodies[s]) == 0 for c in clients for s in c.bodies), "window 0: no bytes"
    cut = accounting(server)
    assert cut["connections"] == held["connections"] and cut["in flight"] == before["in flight"]
    assert cut["cut (metric)"] == before["cut (metric)"] + CLIENTS * MAX_STREAMS
    for client in clients:
        client.close()
    after = accounting(server)
    assert after == dict(before, **{"cut (metric)": cut["cut (metric)"]}), (before, after)
    quiet(server)


def test_a_stream_without_window_leaves_the_server_idle_until_the_window_opens(
        h2site, tree: Tree) -> None:
    """Responses queued on streams whose window is 0 wait for a WINDOW_UPDATE without
    busy-polling (twisted.web reschedules its send loop with callLater(0) meanwhile: a
    core per such client until the send deadline), then finish whole."""
    server, _ = h2site()
    client = connect_h2(server, window=0)
    health, download = client.get("/healthz"), client.get(SMALL)
    server.settle()
    assert client.status == {health: 200, download: 200} and not client.ended
    now = server.reactor.seconds()
    assert [call for call in server.reactor.getDelayedCalls() if call.getTime() <= now] == []
    client.auto_window = True
    for stream in (health, download):
        client.conn.increment_flow_control_window(1 << 20, stream_id=stream)
    client.flush()
    server.settle()
    assert {health, download} <= client.ended and bytes(client.bodies[health]) == b"ok\n"
    assert bytes(client.bodies[download]) == (tree.root / "small/1.0.0/plugin.wasm").read_bytes()


def test_a_window_opened_by_settings_resumes_the_download(h2site) -> None:
    """RFC 9113 6.9.2: raising SETTINGS_INITIAL_WINDOW_SIZE opens every open stream's
    window, with no WINDOW_UPDATE; the sender flow control paused resumes at once."""
    server, body = h2site()
    client = connect_h2(server, window=0)
    big = client.get(BIG)
    server.settle()
    assert client.status == {big: 200} and not client.ended
    client.auto_window = True
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
    client.flush()
    server.settle()  # no clock movement: not the send deadline, not a poll
    assert big in client.ended and bytes(client.bodies[big]) == body


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


def test_a_probe_slot_past_the_cap_answers_probes_only_on_http2_too(h2site) -> None:
    server, _ = h2site(max_connections=1)
    stalled = connect_h2(server, window=0)  # the one connection, answering (window 0)
    download = stalled.get(BIG)
    server.settle()
    assert stalled.status[download] == 200 and download not in stalled.ended
    probe = connect_h2(server)
    health, refused = probe.get("/healthz"), probe.get(SMALL)
    server.settle()
    assert {health, refused} <= probe.ended
    assert probe.status[health] == 200 and bytes(probe.bodies[health]) == b"ok\n"
    assert probe.status[refused] == 503
    assert list(server.site.probes) == [probe.connection.server.wrappedProtocol]
    probe.close()
    stalled.close()
    assert not server.site.connections and not server.site.probes
