"""A real Twisted TLS connection in memory, server and client, for tests of what hps does
to TLS connections (:mod:`hps.tls`): the server's application sees Twisted's
``TLSMemoryBIOProtocol`` as its transport, as hps's site does, over a TCP transport
that pauses producers as a socket does (:class:`tests.support.transport.ServerTransport`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connect
from zope.interface import implementer

from hps.tls import tune
from tests.support.certificates import self_signed
from tests.support.memory import _One
from tests.support.transport import Client, ClientTransport, ServerTransport


class App(Protocol):
    """The server's application: its transport is Twisted's TLS connection."""

    def __init__(self, tuned: bool, early: bytes = b"") -> None:
        self.tuned, self.early, self.lost = tuned, early, None

    def makeConnection(self, transport: Any) -> None:
        if self.tuned:
            tune(transport)  # where hps does it: as the site's protocol is connected
        super().makeConnection(transport)
        if self.early:
            transport.write(self.early)  # before the handshake is done

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Wire(ServerTransport):
    """The server's TCP transport, recording each write it is handed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)


@implementer(IPushProducer)
class Producer:
    """Writes ``chunks`` to ``transport`` while not paused, as hps's Sender does."""

    def __init__(self, transport: Any, chunks: list[bytes]) -> None:
        self.transport, self.chunks = transport, chunks
        self.paused, self.pauses = False, 0

    def resumeProducing(self) -> None:
        self.paused = False
        while self.chunks and not self.paused:
            self.transport.write(self.chunks.pop(0))

    def pauseProducing(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def stopProducing(self) -> None:
        self.chunks = []


@dataclass
class Pair:
    app: App
    server: TLSMemoryBIOProtocol
    wire: Wire
    client: Client
    clock: Clock
    pump: IOPump

    def settle(self) -> None:
        for _ in range(10_000):
            moved = self.pump.pump()
            for transport in (self.wire, self.pump.clientIO):
                if transport.disconnected:
                    transport.reportDisconnect()
            if not moved and not self.clock.getDelayedCalls():
                return
            self.clock.advance(0)
        raise AssertionError("never settled")


def server_options(where: Path) -> Any:
    """Twisted's TLS options for a server with a fresh self-signed certificate."""
    key, cert = self_signed(where)
    return PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()


def tls_pair(options: Any, tuned: bool, early: bytes = b"", handshake: bool = True) -> Pair:
    """A server with ``options`` (``tuned``: as hps's site makes it) and a client; ``early``
    is written by the server's application as it connects (before the handshake);
    ``handshake`` settles the pair (else nothing has moved yet)."""
    clock = Clock()
    app = App(tuned, early)
    server = TLSMemoryBIOFactory(options, False, _One(app), clock).buildProtocol(None)
    client = Client()
    client_tls = TLSMemoryBIOFactory(CertificateOptions(), True, _One(client),
                                     clock).buildProtocol(None)
    peer, host = IPv4Address("TCP", "127.0.0.1", 40000), IPv4Address("TCP", "127.0.0.1", 8443)
    wire = Wire(server, peer, host)
    pump = connect(server, wire, client_tls, ClientTransport(client_tls, False, host, peer),
                   greet=False, clock=clock)
    made = Pair(app, server, wire, client, clock, pump)
    if handshake:
        made.settle()
    return made


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Server TLS options with a self-signed certificate, one per test module."""
    return server_options(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["twisted", "hps"])
def tls_pairs(request: pytest.FixtureRequest, tls_options: Any) -> Callable[..., Pair]:
    """``tls_pairs(**how)`` makes a :func:`tls_pair`; each test runs on Twisted's own write
    path and on hps's (:func:`hps.tls.tune`), which must behave alike."""
    return lambda **how: tls_pair(tls_options, tuned=request.param == "hps", **how)
