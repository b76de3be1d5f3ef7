"""Admission by memory and the TLS handshake gate, on the real site in memory.

The resident size the budget starts from is the test's to set (``sample``): the
process running the tests is not the server's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from hps._twisted import ssl_set_mode
from hps.admission import (
    CHARGE_PLAIN,
    CHARGE_TLS,
    HANDSHAKE_GRACE,
    MAX_HANDSHAKES,
    Admission,
)
from hps.memory import HeapSlack, Limit
from hps.metrics import REGISTRY
from tests.support.certificates import self_signed
from tests.support.memory import Connection, Harness, parse
from tests.support.server import Tree

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
    admission.base = 0
    admission.measure()


class Port:
    """A TLS port as the gate sees it: reading or not, and its accepts per turn."""

    connected = reading = True
    numberAccepts = 100

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


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
    # Short of memory a TLS newcomer is refused whatever it asks (probes belong on the
    # plain port, whose newcomers may take the probe reserve).
    for path in (MODULE, "/healthz"):
        refused = server.get(path)
        assert (refused.status, refused.header("Retry-After")) == (503, "1")
    assert not server.site.probes and not first.closed and not second.closed
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


def test_probes_are_answered_at_once_while_the_handshake_gate_is_closed(
        tree: Tree, harness, tmp_path: Path) -> None:
    """A herd's handshakes fill the gate; a probe on the plain port is answered in the same
    settle, and the TLS port's next accept loop has no room for more handshakes."""
    server = tls_server(tree, harness, tmp_path)
    port = server.site.admission.tls_ports[0]
    port.numberAccepts = 300  # what Twisted's port grows to in a connect storm
    herd = [server.connect(settle=False) for _ in range(MAX_HANDSHAKES)]
    assert not port.reading and port.numberAccepts == 1
    probe = server.connect(plain=True, settle=False)
    probe.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", settle=False)
    server.reactor.run_due()
    probe.pump.flush()
    assert probe.received().startswith(b"HTTP/1.1 200 ")
    server.settle()
    assert port.reading and not any(c.closed for c in herd)


def test_the_tls_ports_accept_at_most_the_gates_room_per_turn() -> None:
    """The bound follows the handshakes under way, and only ever lowers Twisted's own."""
    clock, port = Clock(), Port()
    port.numberAccepts = 300  # what Twisted's port grows to in a connect storm
    gate = Admission(Limit(None, "test"), clock, sample=lambda: 0)
    gate.tls_ports.append(port)
    conns = [object() for _ in range(10)]
    for conn in conns:
        gate.handshake_started(conn)
    assert port.numberAccepts == MAX_HANDSHAKES - 10
    port.numberAccepts = 80  # the loop filled: Twisted raised it by 20
    gate.handshake_ended(conns[0])
    assert port.numberAccepts == MAX_HANDSHAKES - 9
    port.numberAccepts = 3  # a quiet turn: Twisted lowered it, and it stays lower
    gate.handshake_ended(conns[1])
    assert port.numberAccepts == 3


def test_twisted_accepts_number_accepts_connections_per_read() -> None:
    """Canary: ``tcp.Port.doRead`` takes at most ``numberAccepts`` connections per call
    (what :meth:`Admission.bound_accepts` relies on), with real sockets on 127.0.0.1."""
    built: list[object] = []

    class Count(Factory):
        def buildProtocol(self, addr: object) -> Protocol:
            built.append(addr)
            return Protocol()

    port = tcp.Port(0, Count(), interface="127.0.0.1", reactor=MemoryReactor())
    port.startListening()
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port))
               for _ in range(5)]
    try:
        assert port.numberAccepts == 100
        port.numberAccepts = 2
        port.doRead()
        assert len(built) == 2
        assert port.numberAccepts == 22, "a full loop raises it by 20 (what the bound undoes)"
        port.numberAccepts = 2
        port.doRead()
        assert len(built) == 4
    finally:
        for client in clients:
            client.close()
        port.socket.close()


def test_slow_handshakes_stop_holding_the_gate() -> None:
    clock, port = Clock(), Port()
    gate = Admission(Limit(None, "test"), clock, sample=lambda: 0)
    gate.tls_ports.append(port)
    silent = [object() for _ in range(MAX_HANDSHAKES)]
    for conn in silent:
        gate.handshake_started(conn)
    assert not port.reading
    clock.advance(HANDSHAKE_GRACE / 2)
    gate.expire(clock.seconds())
    assert not port.reading
    clock.advance(HANDSHAKE_GRACE / 2 + 0.01)
    gate.expire(clock.seconds())
    assert port.reading and not gate.handshakes
    port.connected = False  # closed by a drain: never reopened
    for conn in silent:
        gate.handshake_started(conn)
    gate.expire(10.0)
    assert not port.reading


# -- a real process in a real memory cgroup ------------------------------------------------

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
HERD = 300
HERD_MODULE = 1 << 20
LIMIT = 96 << 20
"""About 60 MiB for the idle server, so the budget leaves room for ~100 TLS downloads:
most of the herd must be refused, and none may push the process over the limit."""


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A fresh memory cgroup with ``limit`` (v1 here; v2 where only it is mounted)."""
    if (CGROUP_V1 / "memory.limit_in_bytes").exists():
        group, limit_file = CGROUP_V1 / f"hps-test-{os.getpid()}", "memory.limit_in_bytes"
    else:
        v2 = Path("/sys/fs/cgroup")
        if "memory" not in (v2 / "cgroup.subtree_control").read_text(errors="ignore") \
                if (v2 / "cgroup.subtree_control").exists() else True:
            pytest.skip("no memory controller mounted (neither cgroup v1 memory nor v2 "
                        "with memory delegated)")
        group, limit_file = v2 / f"hps-test-{os.getpid()}", "memory.max"
    group.mkdir()
    try:
        (group / limit_file).write_text(str(limit))
        yield group
    finally:
        for _ in range(50):  # the process may take a moment to leave after it exits
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)  # waits for the kernel to let go of the cgroup


def oom_kills(group: Path) -> int:
    """``oom_kill N`` from v1's memory.oom_control, or v2's memory.events."""
    for name in ("memory.oom_control", "memory.events"):
        if (group / name).exists():
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


async def fetch(port: int, path: str, context: ssl.SSLContext,
                asked: list[int], everyone_asked: asyncio.Event) -> tuple[int, bytes, str | None]:
    """GET over TLS, then wait for the herd to have asked, then read: (status, body,
    Retry-After). A reset raises."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                  server_hostname="localhost")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    asked.append(1)
    if len(asked) == HERD:
        everyone_asked.set()
    await everyone_asked.wait()
    data = await reader.read()
    writer.close()
    reply, _ = parse(data)
    return reply.status, reply.body if reply.complete else b"", reply.header("Retry-After")


def probe_while(port: int, done: threading.Event, statuses: list[int]) -> None:
    """/healthz on the plain port every 0.2 s, 2 s allowed each (the kubelet's 1 s is for
    a pod that does not share two cores with its load); 0 for no answer in time."""
    while not done.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b"".join(iter(lambda: sock.recv(4096), b""))
            statuses.append(parse(data)[0].status)
        except OSError:
            statuses.append(0)
        done.wait(0.2)


async def herd(tls_port: int) -> list:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    everyone_asked, asked = asyncio.Event(), []
    fetches = [asyncio.create_task(fetch(tls_port, MODULE, context, asked, everyone_asked))
               for _ in range(HERD)]
    with contextlib.suppress(asyncio.TimeoutError):  # one that failed never asks
        await asyncio.wait_for(everyone_asked.wait(), 60)
    everyone_asked.set()
    return await asyncio.gather(*fetches, return_exceptions=True)


def herd_and_probes(tls_port: int, plain_port: int) -> tuple[list, list[int]]:
    """The herd in an event loop, the probes in a thread of their own beside it."""
    done, statuses = threading.Event(), []
    prober = threading.Thread(target=probe_while, args=(plain_port, done, statuses))
    prober.start()
    try:
        results = asyncio.run(herd(tls_port))
    finally:
        done.set()
        prober.join()
    return results, statuses


@pytest.mark.process
def test_a_tls_herd_in_a_small_memory_cgroup(tree: Tree, serve, tmp_path: Path) -> None:
    """A real ``twistd hps`` in a real 96 MiB memory cgroup (limit read from it), a herd of
    300 TLS clients asking for a 1 MiB module at once: not OOM-killed, /healthz answers
    throughout, every 200 is whole, every other answer is 503 + Retry-After, no resets."""
    body = tree.add("big", "1.0.0", size=HERD_MODULE)
    key, cert = self_signed(tmp_path)
    with memory_cgroup(LIMIT) as group:
        enter = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        server = serve("--root", str(tree.root), "--listen",
                       f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                       "--access-log", "off", wrap=("sh", "-c", enter, "sh"))
        line = server.wait_log(r"memory: limit 96 MiB \(cgroup v\d [^)]*\).*")
        assert str(group.relative_to("/sys/fs/cgroup")).split("/")[-1] in line, line
        server.wait_log(r"hps listening on \S+ \(ssl:")
        results, probes = herd_and_probes(server.ports[1], server.port)
        assert server.process.poll() is None, server.log()
        assert oom_kills(group) == 0
        resets = [r for r in results if isinstance(r, BaseException)]
        assert not resets, resets[:3]
        whole = [r for r in results if r[0] == 200]
        assert all(r[1] == body for r in whole), "a 200 that is not whole"
        assert all(r[0] == 503 and r[2] == "1" for r in results if r[0] != 200)
        assert whole, "nothing was served"
        assert probes and probes.count(200) >= 0.9 * len(probes), probes
        server.stop()


def test_every_sample_gives_back_a_burst_of_freed_heap_first() -> None:
    """With or without a limit: the peak resident size is what the pod is killed for."""
    order: list[str] = []

    class Slack(HeapSlack):
        def check(self) -> bool:
            order.append("check")
            return True

    def sample() -> int:
        order.append("sample")
        return 1

    gate = Admission(Limit(None, "test"), Clock(), sample=sample, slack=Slack())
    gate.measure(idle=False)
    assert order == ["check", "sample"]
