"""In memory: the whole server as ``twistd hps`` builds it, on a ``MemoryReactorClock``.

In the style of treq's ``RequestTraversalAgent``, but one level lower: the
service comes from :func:`hps.service.make_service` itself (so this harness
cannot drift from production wiring), its listener lands in the fake reactor's
``tcpServers``, and every client is a protocol connected to the real
``PluginSite`` with :mod:`twisted.test.iosim`. Nothing runs by itself:

- bytes move when the harness pumps (``settle``, which every request does);
- time moves with :meth:`Harness.advance` (the site's sweep, timeouts, drain);
- as in a real reactor, a timed call due now that schedules another for now
  (``callLater(0)``) gets it run on the next turn, after bytes have moved: twisted.web's
  HTTP/2 send loop waits for a flow-control window that way;
- work the server sends to threads (scans, gzip variants, big listings, and the
  pull-through fetches production gives daemon threads of their own) waits in
  :class:`Pool` and runs when the harness settles, unless the test holds it.

A ``ssl:`` listener is wrapped in TLS as the real reactor's ``listenSSL`` does (so ALPN
picks HTTP/2 through twisted.web's own negotiation); clients then speak TLS too.

What stays out: inotify and the SIGHUP handler (process-wide), real sockets (so on
a plain listener the fast path, which needs ``os.sendfile`` on a TCP socket, declines and
twisted.web answers everything; see tests/test_fastpath.py for that path. On an ``ssl:``
listener the fast path answers HTTP/1.1 artifact downloads, through the TLS transport).
Black-box tests with a real process live beside it in ``tests/support/server.py``.

This file holds the :class:`Harness` and its ``harness`` fixture; its parts live beside
it: the fake reactor in ``reactor.py``, both ends of a connection in ``transport.py``.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, IOPump, connect

from hps.catalog import unloaded
from hps.config import Config, build
from hps.service import make_service
from hps.site import SWEEP_SECONDS, PluginSite
from hps.watch import Watcher
from hps.work import in_threads
from tests.support.reactor import START, Pool, Reactor
from tests.support.transport import (
    SEND_BUFFER,
    Client,
    ClientTransport,
    Response,
    ServerTransport,
    parse,
    quiet,
)

# The harness and its parts: tests import any of them from here.
__all__ = ["SEND_BUFFER", "START", "Client", "Connection", "Harness", "Pool", "Reactor",
           "Response", "ServerTransport", "config_for", "harness", "parse"]

SPIN_TURNS = 50
"""Turns in a row in which only timed calls due now ran (nothing moved): the server is
busy-waiting, as twisted.web's HTTP/2 send loop does for a window, so it has settled."""

class _One(Factory):
    """A factory for one protocol that exists already (a client TLS wraps)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_made = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_made


@dataclass(eq=False)  # identity: the harness removes closed ones from a list of thousands
class Connection:
    """One client connection to the site."""

    harness: Harness
    client: Client
    server: Any
    transport: ServerTransport
    pump: IOPump
    wire: ClientTransport | None = None
    """The client's end of the socket (under its TLS, if any)."""

    @property
    def client_end(self) -> FakeTransport:
        return self.wire if self.wire is not None else self.client.transport

    def step(self) -> bool:
        """Move bytes once; both ends learn of a close (True if anything happened)."""
        if quiet(self.transport) and quiet(self.client_end):
            return False  # most of a flood: spares pumping thousands of idle connections
        moved = self.pump.pump(advanceClock=False)
        for transport in (self.transport, self.client_end):
            if transport.disconnected and not getattr(transport, "reported", False):
                transport.reportDisconnect()
                moved = True
        return moved

    def send(self, data: bytes, settle: bool = True) -> Connection:
        """Send ``data``; ``settle=False`` leaves it in flight (to send on many at once)."""
        self.client.transport.write(data)
        if settle:
            self.harness.settle()
        return self

    def received(self) -> bytes:
        return bytes(self.client.data)

    def take(self, method: str = "GET") -> Response:
        """The next whole response on this connection (and forget its bytes)."""
        response, rest = parse(bytes(self.client.data), method)
        self.client.data = bytearray(rest)
        return response

    @property
    def closed(self) -> bool:
        return self.client.closed

    def stop_reading(self) -> None:
        self.transport.reading = False

    def resume_reading(self) -> None:
        self.transport.reading = True
        self.harness.settle()

    def close(self) -> None:
        """The client hangs up."""
        self.client.transport.loseConnection()
        self.harness.settle()


@dataclass
class Harness:
    """``make_service(config)`` started on a fake reactor, and clients to talk to it."""

    config: Config
    reactor: Reactor = field(default_factory=Reactor)
    connections: list[Connection] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    access: io.StringIO = field(default_factory=io.StringIO)
    hold_threads: bool = False
    """While True, work sent to threads waits (a scan or a compression in progress)."""

    def __post_init__(self) -> None:
        globalLogPublisher.addObserver(self._observe)
        self.service: MultiService = make_service(self.config, self.reactor)
        for child in self.service:
            if isinstance(child, Watcher):
                # Process-wide or real-fd: left to the real-process tests.
                child.use_inotify = child.hangup = False
                self.watcher = child
        self.service.privilegedStartService()
        self.service.startService()
        self.listening: Any = self.reactor.tcpServers[0][1]
        """What the port accepts with: the site, or the TLS wrapped around it."""
        self.site: PluginSite = getattr(self.listening, "wrappedFactory", self.listening)
        self.site.access.stream = self.access
        upstream = self.site.resource.upstream
        if upstream is not None:  # the registry fetch waits in the pool like other thread work
            upstream.source.run = in_threads(self.reactor)
        self.settle()

    def _observe(self, event: dict) -> None:
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += "\n" + event["log_failure"].getTraceback()
        self.events.append(text)

    def log(self) -> str:
        return "\n".join(self.events)

    def access_lines(self) -> list[str]:
        self.site.access.flush()
        return self.access.getvalue().splitlines()

    # -- moving bytes and time ---------------------------------------------------------

    def turn(self) -> tuple[bool, bool]:
        """One reactor turn: the calls due now, thread work, bytes moved once each way.
        Returns (a timed call ran, anything else happened)."""
        moved = self.reactor.run_from_threads()
        timed = self.reactor.run_due()
        if not self.hold_threads:
            moved = self.reactor.pool.run() or moved
        moved = self.reactor.run_from_threads() or moved
        for connection in list(self.connections):
            moved = connection.step() or moved
            if connection.transport.disconnected and connection.client_end.disconnected:
                self.connections.remove(connection)
        return timed, moved

    def settle(self) -> None:
        """Run everything that can run now, turn by turn, until nothing moves (calls that
        only reschedule themselves for now, a busy-wait, stop counting after SPIN_TURNS)."""
        spinning = 0
        for _ in range(100_000):
            timed, moved = self.turn()
            spinning = 0 if moved else spinning + 1
            if (not timed and not moved) or spinning > SPIN_TURNS:
                return
        raise AssertionError("the server never settled")

    def settle_granting(self) -> list[Any]:
        """:meth:`settle`, turn by turn, checking the site's body turns stay within their
        limit; returns the keys that held a turn (:mod:`hps.bodies`), in the order they got it."""
        gate = self.site.bodies
        granted = list(gate.active)
        for _ in range(10_000):
            timed, moved = self.turn()
            assert len(gate.active) <= gate.limit, f"at most {gate.limit} bodies at once"
            granted += [key for key in gate.active if key not in granted]
            if not (timed or moved):
                return granted
        raise AssertionError("the server never settled")

    def advance(self, seconds: float, step: float = SWEEP_SECONDS) -> None:
        """Move the clock by ``seconds``, settling after each ``step`` (the sweep's period)."""
        left = seconds
        while left > 1e-9:
            self.reactor.rightNow += min(step, left)  # ``Clock.advance`` without its runs
            left -= step
            self.settle()

    # -- clients -----------------------------------------------------------------------

    def connect(self, peer: str = "127.0.0.1", settle: bool = True,
                client: Protocol | None = None, tls: Any = None,
                plain: bool = False) -> Connection:
        """A new connection from ``peer``: a raw :class:`Client`, or ``client``. On a TLS
        listener the client speaks TLS with the ``tls`` options (default: no ALPN, so
        HTTP/1.1), unless ``plain`` (a plain port of the same site beside it, as a probe
        port). ``settle=False`` leaves its accept unsettled (to open thousands at once).
        """
        address = IPv4Address("TCP", peer, 40000 + len(self.connections))
        host = IPv4Address("TCP", "127.0.0.1", 8080)
        listening = self.site if plain else self.listening
        server = listening.buildProtocol(address)
        client = client if client is not None else Client()
        wire: Protocol = client
        if listening is not self.site:
            wire = TLSMemoryBIOFactory(tls or CertificateOptions(), True, _One(client),
                                       clock=self.reactor).buildProtocol(host)
        transport, client_end = (ServerTransport(server, address, host),
                                 ClientTransport(wire, False, address, host))
        pump = connect(server, transport, wire, client_end, greet=False, clock=self.reactor)
        connection = Connection(self, client, server, transport, pump, client_end)
        self.connections.append(connection)
        if settle:
            self.settle()
        return connection

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` on a new connection; every byte the server sent back."""
        connection = self.connect().send(data)
        reply = connection.received()
        connection.close()
        return reply

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Response:
        """One request on a new connection, as ``http.client`` would send it."""
        lines = [f"{method} {path} HTTP/1.1"]
        named = {key.lower() for key in headers or {}}
        if "host" not in named:
            lines.append("Host: hps.test")
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection = self.connect().send(head + (body or b""))
        response = connection.take(method)
        connection.close()
        return response

    def get(self, path: str, headers: dict[str, str] | None = None, **named: str) -> Response:
        """GET ``path``; headers as a dict or as keywords (``Accept_Encoding="gzip"``)."""
        merged = dict(headers or {}, **{k.replace("_", "-"): v for k, v in named.items()})
        return self.request(path, headers=merged)

    def metrics(self) -> dict[str, float]:
        """A scrape of ``/metrics``: ``{'name{labels}': value}``. Counters are process-wide
        (one registry, as in a real process), so tests compare two scrapes."""
        reply = self.get("/metrics")
        assert reply.status == 200
        samples = {}
        for line in reply.body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    # -- the server's life -------------------------------------------------------------

    def rescan(self) -> None:
        """What SIGHUP (or an inotify event) does: a rescan, run to completion."""
        self.watcher.sighup()
        self.settle()

    def stop(self) -> Deferred:
        """What SIGTERM does: stop the service (the drain); returns its Deferred."""
        stopping = self.service.stopService()
        self.settle()
        return stopping

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        if self.service.running:
            self.service.stopService()
            self.advance(self.config.drain_delay + self.config.drain_timeout + 1, step=1)
        for connection in self.connections:
            connection.transport.abortConnection()
        self.settle()
        # An empty catalog makes the server let go of every file it holds open (the count
        # of open files is process-wide: the next test's connection cap counts it).
        assert self.site.state is not None
        self.site.state.swap(unloaded(self.config.root))


def config_for(root: Path, cache: Path, **knobs: Any) -> Config:
    """``twistd hps --root ROOT --cache-dir CACHE --<knob> VALUE...``: the same merge, types
    and checks as the flags."""
    return build(None, {"root": str(root), "listen": ["tcp:8080"], "cache_dir": str(cache),
                        **knobs})


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """``harness(root, **knobs)`` starts an in-memory server; each is closed at teardown."""
    made: list[Harness] = []

    def factory(root: Path, hold_threads: bool = False, **knobs: Any) -> Harness:
        made.append(Harness(config_for(root, tmp_path / "cache", **knobs),
                            hold_threads=hold_threads))
        return made[-1]

    yield factory
    for each in made:
        each.close()
    made.clear()
    gc.collect()  # connections and their senders form cycles; they hold files too
