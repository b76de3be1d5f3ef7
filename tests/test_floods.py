"""Floods of hostile connections at the scale the issue measured, in memory.

tests/test_clients.py pins each rule on a handful of connections; these hold them at
the default cap of 4,096 connections and at the full probe-only reserve, on the real
site (tests/support/memory.py) with the clock moved by the test: deadlines are exact,
and nothing waits on a wall clock or needs thousands of descriptors.
"""

from __future__ import annotations

from hps.config import Config
from hps.limits import PROBE_RESERVE
from hps.metrics import REGISTRY
from hps.site import SWEEP_SECONDS
from tests.support.memory import Connection, Harness
from tests.support.server import Tree

DOWNLOAD = b"GET /plugins/key-auth/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n"


def aborted(reason: str) -> float:
    """``hps_responses_aborted_total{reason}`` (counters are process-wide: tests compare)."""
    return REGISTRY.get_sample_value("hps_responses_aborted_total", {"reason": reason}) or 0.0


def shed() -> float:
    return REGISTRY.get_sample_value("hps_connections_shed_total") or 0.0


def flood(server: Harness, count: int) -> list[Connection]:
    """``count`` connections accepted at once that never send a byte."""
    silent = [server.connect(settle=False) for _ in range(count)]
    server.settle()
    return silent


def test_silent_socket_flood_is_cut_and_probes_keep_answering(tree: Tree, harness) -> None:
    """4,100 connections that never send a byte (more than the default cap of 4,096), in
    two waves a second apart: each one past the cap evicts the oldest silent one,
    /healthz keeps answering, and each silent one is closed at the header timeout counted
    from its own accept, with nothing written to it."""
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root, header_timeout=2)
    cap = server.site.limits.max_connections
    assert cap == Config().max_connections == 4096, "the descriptor limit lowered the cap"
    evicted, timed_out = aborted("evicted"), aborted("header_timeout")
    first = flood(server, cap - 100)
    server.advance(1.0)
    second = flood(server, 104)
    assert [client.closed for client in first[:5]] == [True] * 4 + [False]
    assert len(server.site.connections) == cap and not server.site.probes
    answers = []
    for _ in range(10):
        answers.append(server.get("/healthz").status)
        server.advance(0.05)
    assert answers == [200] * 10
    # The first probe evicted the oldest silent connection; each later one had the slot
    # the one before it freed when its client hung up.
    assert [client.closed for client in first[4:6]] == [True, False]
    assert aborted("evicted") - evicted == 5
    server.advance(0.4)  # 1.9 s after the first wave's accept: all still open
    assert not any(client.closed for client in first[5:] + second)
    server.advance(0.65)  # past its deadline and the sweep after it
    assert all(client.closed for client in first) and not any(c.closed for c in second)
    server.advance(1.0)  # past the second wave's deadline, and the sweep after it
    assert all(client.closed and client.received() == b"" for client in first + second)
    assert aborted("header_timeout") - timed_out == len(first + second) - 5
    assert not server.site.connections and not server.site.probes


def test_probes_answer_from_the_reserve_when_every_connection_is_answering(
        tree: Tree, harness) -> None:
    """The cap full of downloads nobody reads: newcomers get the probe-only reserve of
    PROBE_RESERVE connections, where a silent one makes room for the next newcomer and
    is cut at the header timeout; a probe there is answered, anything else gets 503,
    and the downloads go on."""
    body = tree.add("key-auth", "1.0.0", size=200_000)
    server = harness(tree.root, header_timeout=2, max_connections=64, gzip=False)
    evicted, shed_before = aborted("evicted"), shed()
    downloads = []
    for _ in range(64):
        client = server.connect()
        client.stop_reading()
        downloads.append(client.send(DOWNLOAD))
    silent = flood(server, PROBE_RESERVE + 8)
    assert len(server.site.connections) == 64 and len(server.site.probes) == PROBE_RESERVE
    assert [client.closed for client in silent] == [True] * 8 + [False] * PROBE_RESERVE
    probe = server.get("/healthz")  # evicts the oldest silent one in the reserve
    assert probe.status == 200 and probe.body == b"ok\n"
    other = server.get("/plugins/")  # the slot the probe freed
    assert other.status == 503 and other.header("Retry-After") == "1"
    assert aborted("evicted") - evicted == 9 and shed() - shed_before == 1
    server.advance(2 + SWEEP_SECONDS)
    assert all(client.closed and client.received() == b"" for client in silent)
    assert not server.site.probes and not any(client.closed for client in downloads)
    for client in downloads:
        client.resume_reading()
        assert client.take().body == body
