"""Admission by memory and the TLS handshake gate, on the real site in memory.

The resident size the budget starts from is the test's to set (``sample``): the
process running the tests is not the server's size.
"""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL

from hps._twisted import ssl_set_mode
from hps.admission import (
    CHARGE_PLAIN,
    CHARGE_TLS,
    HANDSHAKE_GRACE,
    MAX_HANDSHAKES,
    Admission,
)
from hps.memory import Limit
from hps.metrics import REGISTRY
from tests.support.memory import Connection, Harness
from tests.support.server import Tree
from tests.test_tls import self_signed

MODULE = "/plugins/big/1.0.0/plugin.wasm"
DOWNLOAD = f"GET {MODULE} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
SIZE = 1 << 20


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def room_for(server: Harness, count: int, charge: int) -> None:
    """Make the idle server's resident size leave room for exactly ``count`` charges."""
    admission = server.site.admission
    assert admission.budget is not None
    held = admission.budget - count * charge - admission.charged
    admission.sample = lambda: held
    admission.measure()


def stalled(server: Harness) -> Connection:
    """A download whose client stopped reading: busy, and not evictable."""
    client = server.connect()
    client.stop_reading()
    return client.send(DOWNLOAD)


def test_beyond_the_memory_budget_503_and_probes_still_answer(tree: Tree, harness) -> None:
    body = tree.add("big", "1.0.0", size=SIZE)
    server = harness(tree.root, memory_limit="64Mi")
    assert server.site.admission.limit == Limit(64 << 20, "--memory-limit")
    room_for(server, 3, CHARGE_PLAIN)
    downloads = [stalled(server) for _ in range(3)]
    assert not any(d.closed for d in downloads)
    # No room and nobody idle to evict: probe-only connections from the reserve.
    shed_before = sample("hps_memory_shed_total")
    assert server.get("/healthz").status == 200
    refused = server.get(MODULE)
    assert (refused.status, refused.header("Retry-After")) == (503, "1")
    assert sample("hps_memory_shed_total") - shed_before == 2
    # A download that ends gives its room back: the next one is served whole.
    downloads[0].resume_reading()
    downloads[0].close()
    assert server.get(MODULE).body == body
    metrics = server.metrics()
    assert metrics["hps_memory_limit_bytes"] == 64 << 20
    assert metrics["hps_memory_budget_bytes"] == server.site.admission.budget
    assert metrics["hps_memory_estimate_bytes"] >= server.site.admission.base + 2 * CHARGE_PLAIN


def test_no_limit_admits_up_to_the_cap(tree: Tree, harness) -> None:
    tree.add("big", "1.0.0", size=SIZE)
    server = harness(tree.root, memory_limit="none")
    assert server.site.admission.budget is None
    downloads = [stalled(server) for _ in range(5)]
    assert not server.site.probes and not any(d.closed for d in downloads)
    assert "memory: no limit (--memory-limit (off))" in server.log()


def test_the_start_states_the_limit_and_the_budget(tree: Tree, harness) -> None:
    tree.add("big", "1.0.0")
    server = harness(tree.root, memory_limit="256Mi")
    line = next(e for e in server.events if e.startswith("memory:"))
    assert line.startswith("memory: limit 256 MiB (--memory-limit); budget 220 MiB after 36 "
                           "MiB headroom; idle server "), line
    assert "TLS or" in line and line.endswith("plain connections, then 503 + Retry-After")


def tls_server(tree: Tree, harness, tmp_path: Path, **knobs: object) -> Harness:
    tree.add("big", "1.0.0", size=SIZE)
    key, cert = self_signed(tmp_path)
    return harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"], **knobs)


def test_tls_connections_are_charged_as_tls(tree: Tree, harness, tmp_path: Path) -> None:
    server = tls_server(tree, harness, tmp_path, memory_limit="64Mi")
    room_for(server, 2, CHARGE_TLS)
    first, second = stalled(server), stalled(server)
    assert server.site.admission.charged == 2 * CHARGE_TLS
    assert server.get("/healthz").status == 200  # from the probe reserve
    assert server.get(MODULE).status == 503
    for client in (first, second):
        client.transport.abortConnection()
    server.settle()
    assert server.site.admission.charged == 0


def test_openssl_buffers_are_released_when_idle(tree: Tree, harness, tmp_path: Path) -> None:
    server = tls_server(tree, harness, tmp_path)
    client = server.connect()
    assert ssl_set_mode(client.server.getHandle(), 0) & SSL.MODE_RELEASE_BUFFERS
    client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.take().status == 200


def test_the_handshake_gate_pauses_the_tls_ports(tree: Tree, harness, tmp_path: Path) -> None:
    """MAX_HANDSHAKES handshakes under way close the gate; finishing them opens it."""
    server = tls_server(tree, harness, tmp_path)
    port = server.site.admission.tls_ports[0]
    closed = sample("hps_tls_gate_closed_total")
    clients = [server.connect(settle=False) for _ in range(MAX_HANDSHAKES)]
    assert not port.reading and sample("hps_tls_gate_closed_total") - closed == 1
    server.settle()
    assert port.reading and not server.site.admission.handshakes
    assert not any(c.closed for c in clients)


def test_slow_handshakes_stop_holding_the_gate() -> None:
    class Clock:
        now = 0.0

        def seconds(self) -> float:
            return self.now

    class Port:
        connected = reading = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    clock, port = Clock(), Port()
    gate = Admission(Limit(None, "test"), clock, sample=lambda: 0)
    gate.tls_ports.append(port)
    silent = [object() for _ in range(MAX_HANDSHAKES)]
    for conn in silent:
        gate.handshake_started(conn)
    assert not port.reading
    clock.now = HANDSHAKE_GRACE / 2
    gate.expire(clock.now)
    assert not port.reading
    clock.now = HANDSHAKE_GRACE + 0.01
    gate.expire(clock.now)
    assert port.reading and not gate.handshakes
    port.connected = False  # closed by a drain: never reopened
    for conn in silent:
        gate.handshake_started(conn)
    gate.expire(10.0)
    assert not port.reading
