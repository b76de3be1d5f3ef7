"""In memory: the channel's limits, deadlines and head rules, on a MemoryReactorClock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from hps._twisted import inner_channel
from hps.catalog import identity_of, scan
from hps.config import Config
from hps.files import Source, open_verified
from hps.limits import PROBE_RESERVE, Limits
from hps.resources import Root
from hps.site import SWEEP_SECONDS, PluginSite, TrackedProtocol
from hps.state import ServerState
from hps.transfer import Policy, Transfer
from hps.variants import GzipVariants
from tests.support.server import wasm_bytes

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class Site:
    def __init__(self, root: Path, limits: Limits | None) -> None:
        target = root / "demo" / "1.0.0" / "plugin.wasm"
        target.parent.mkdir(parents=True)
        target.write_bytes(wasm_bytes(1000))
        self.root = root
        self.state = ServerState(config=Config(root=str(root)), catalog=scan(str(root)))
        self.clock = MemoryReactorClock()
        # gzip on, as the service wires it: listings compress only when variants exist.
        variants = GzipVariants(str(root.parent / "cache"), run=lambda *a: succeed(None))
        transfer = Transfer(Policy.from_config(300, immutable=False), variants=variants)
        self.site = PluginSite(Root(self.state, transfer, clock=self.clock), state=self.state,
                               limits=limits, reactor=self.clock)
        self.site.startFactory()

    def connect(self) -> tuple[TrackedProtocol, StringTransport]:
        address = IPv4Address("TCP", "127.0.0.1", 1234)
        proto = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def ask(self, data: bytes) -> tuple[TrackedProtocol, StringTransport]:
        proto, transport = self.connect()
        proto.dataReceived(data)
        return proto, transport

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds / SWEEP_SECONDS) + 1):
            self.clock.advance(SWEEP_SECONDS)


@pytest.fixture
def make(tmp_path: Path):
    return lambda **limits: Site(tmp_path / "plugins", Limits(**limits))


def test_a_silent_connection_is_cut_at_the_header_timeout_from_accept(make) -> None:
    site = make(header_timeout=2.0)
    _, silent = site.connect()
    _, slow = site.ask(b"GET / HTTP/1.1\r\n")
    site.advance(1.5)
    assert not silent.disconnecting and not slow.disconnecting
    site.advance(1.0)
    assert silent.disconnected, "nothing to answer: the socket just goes"
    assert silent.value() == b""
    assert slow.value().startswith(b"HTTP/1.1 408 ") and slow.disconnecting


def test_at_the_cap_the_oldest_idle_connection_makes_room(make) -> None:
    site = make(max_connections=2)
    _, oldest = site.connect()
    busy, _ = site.connect()
    inner_channel(busy).response_began()  # answering: never evicted
    _, newest = site.ask(HEALTHZ)
    assert oldest.disconnecting and oldest.value() == b""
    assert newest.value().startswith(b"HTTP/1.1 200 ")
    assert len(site.site.connections) == 2


def test_when_everyone_is_answering_probes_still_get_through(make) -> None:
    site = make(max_connections=1)
    busy, _ = site.connect()
    inner_channel(busy).response_began()
    _, probe = site.ask(HEALTHZ)
    assert probe.value().startswith(b"HTTP/1.1 200 ") and probe.value().endswith(b"ok\n")
    assert b"\r\nConnection: close\r\n" in probe.value()
    _, download = site.ask(b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n\r\n")
    assert download.value().startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in download.value()
    # Probe slots held by busy connections run out; then shedding is a 503, not a reset.
    for _ in range(PROBE_RESERVE):
        inner_channel(site.connect()[0]).response_began()
    _, shed = site.connect()
    assert shed.value().startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in shed.value()


def test_open_files_count_against_the_descriptor_budget(make, tmp_path: Path) -> None:
    module = tmp_path / "module"
    module.write_bytes(b"\0asm")
    held = [open_verified(str(module), identity_of(os.stat(module))) for _ in range(2)]
    site = make(max_connections=10, descriptors=Source.open + 1)  # room for one socket
    site.site.open_files = lambda: Source.open  # as make_service wires it
    busy, _ = site.connect()
    inner_channel(busy).response_began()
    _, second = site.ask(b"GET /plugins/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert second.value().startswith(b"HTTP/1.1 503 "), "two files and a socket: no room"
    del held


def test_generated_error_pages_carry_no_body_on_head(make) -> None:
    site = make()
    for head in (b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"HEAD /plugins/%00 HTTP/1.1\r\nHost: x\r\n\r\n"):
        _, transport = site.ask(head)
        assert transport.value().split(b" ")[1] in (b"400", b"404")
        assert transport.value().endswith(b"\r\n\r\n"), transport.value()
