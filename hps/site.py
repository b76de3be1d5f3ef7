"""The HTTP layer under the resources: Site, channel and Request classes.

Limits, timeouts and drain belong here; the resources only route.

Every connection is a :class:`TrackedProtocol` (Twisted's HTTP/1.1-or-HTTP/2
switch) around a :class:`PluginChannel`. The site keeps the set of them, and
a sweep every ``SWEEP_SECONDS`` enforces the per-connection deadlines (it also
writes the buffered access lines and, once the ports are closed in a drain,
closes connections that went idle):

- **header timeout**: a request head that is not complete in time is cut with
  408 (slowloris keeps resetting Twisted's idle timer with every byte);
- **send timeout**: a busy connection whose response made no progress that
  long is aborted (Twisted's idle timeout is off while a request is in flight).

*Progress* is the channel writing, the transport asking it to resume (its
buffer drained), or an explicit :meth:`PluginChannel.progress`.

For the fast path (it answers on :meth:`PluginChannel.dataReceived` before
twisted.web parses anything), the contract is:

- call ``channel.response_began()`` before writing a response and
  ``channel.response_ended()`` once its last byte is handed to the transport
  (or the connection is lost): drain waits for it and the in-flight gauge
  counts it;
- call ``channel.progress()`` after each chunk handed to the transport;
- decline while ``state.draining`` (twisted.web then adds ``Connection: close``);
- log and count via ``channel.site.finished_response(...)``, or ``finished_fast(...)`` for a
  one-call 200 whose access line the connection already built (same counts, same line);
- answer only while ``channel.web_owned`` is false (twisted.web has never parsed a byte
  of the connection: sticky), and set ``channel.fast_queued`` when bytes are left in the
  transport's buffer (the channel clears it once the buffer drains);
- ``channel.fast_reply.lost()`` runs if the connection goes with a reply in flight.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from hps import metrics
from hps._twisted import (
    GenericHTTPChannelProtocol,
    inner_channel,
    negotiating,
    request_line,
    request_method,
    switch_to_h2,
)
from hps.access import AccessLog
from hps.head import host_ok, keeps_alive, origin_form
from hps.headers import EVERY_RESPONSE, EVERY_RESPONSE_LINES, SERVER

if TYPE_CHECKING:
    from hps.config import Config
    from hps.state import ServerState

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16384
MAX_BODY = 1024
"""Only GET and HEAD exist here; a body bigger than this is a mistake or an attack."""

SWEEP_SECONDS = 0.5
_log = Logger()


Canned = tuple[bytes, bytes, bytes]
"""(status line, body, extra header lines) of a reply written before twisted.web is involved."""


def canned(reply: Canned, head: bool = False) -> bytes:
    """A complete, closing HTTP/1.1 response; no body when it answers a HEAD."""
    status, body, extra = reply
    return (b"HTTP/1.1 " + status + b"\r\n" + EVERY_RESPONSE_LINES
            + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n" + extra + b"\r\n"
            + (b"" if head else body))


SHED: Canned = (b"503 Service Unavailable", b"too many connections, retry\n",
                b"Retry-After: 1\r\n")
TOO_LARGE: Canned = (b"413 Content Too Large", b"request bodies are not accepted\n", b"")
HEAD_TOO_SLOW: Canned = (b"408 Request Timeout", b"request head took too long\n", b"")
HEAD_TOO_BIG: Canned = (b"431 Request Header Fields Too Large", b"request head too large\n", b"")
BAD_HOST: Canned = (b"400 Bad Request", b"one valid Host header is required\n", b"")


@dataclass(frozen=True)
class Limits:
    send_timeout: float = 30.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    descriptors: int = 0
    """Descriptors connections and open files may use together; 0: twice max_connections."""

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        connections, descriptors = descriptor_budget(config.max_connections)
        return cls(config.send_timeout, config.header_timeout, config.idle_timeout,
                   connections, descriptors)

    @property
    def descriptor_budget(self) -> int:
        return self.descriptors or 2 * self.max_connections


FD_RESERVE = 256
"""Descriptors kept beyond the budget: listening sockets, inotify, logs, probe connections
(PROBE_RESERVE) and connections closed in this reactor turn whose descriptor is not yet
released. Running out makes accept() fail in a busy loop and answers turn into resets."""

PROBE_RESERVE = 32
"""Connections admitted beyond the cap to answer /healthz and /readyz (everything else on
them gets 503): a flood must never make the kubelet restart the pod."""

PROBE_PATHS = (b"/healthz", b"/readyz")
EVICT_SCAN = 64
"""Connections looked at, oldest first, for one that is not answering and can make room."""


def descriptor_budget(requested: int) -> tuple[int, int]:
    """(connections, descriptors) the process can afford for ``requested`` connections.

    Each HTTP/1.1 connection may hold a file besides its socket, so the soft
    descriptor limit is raised (up to the hard one) to twice ``requested`` plus
    FD_RESERVE; the connection cap is lowered when even that is not possible.
    """
    want = 2 * requested + FD_RESERVE
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (OSError, ValueError):
        return requested, 2 * requested
    if soft == resource.RLIM_INFINITY:
        return requested, 2 * requested
    budget = max(2, soft - FD_RESERVE)
    allowed = min(requested, budget // 2)
    if allowed < requested:
        _log.warn("max-connections {requested} exceeds the descriptor limit {soft}; using "
                  "{allowed}", requested=requested, soft=soft, allowed=allowed)
    return allowed, budget


class FastPath(Protocol):
    """Answers the plainest requests without twisted.web's parser (see fastpath)."""

    def handle(self, channel: PluginChannel, data: bytes) -> bool:
        """Serve ``data`` entirely and return True, or touch nothing and return False."""


def refuses_body(method: bytes, length: int | None) -> bool:
    """``length`` is Content-Length, or None for chunked: is the body unacceptable?"""
    if length == 0:
        return False
    if method in (b"GET", b"HEAD"):
        return True
    return length is None or length > MAX_BODY


class PluginRequest(Request):
    """A request that carries :mod:`hps.headers` (never the Twisted version in ``Server``),
    and is counted."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = SERVER  # twisted.web's process() sets its own
        super().setHeader(name, value)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        path, authority = origin_form(path)
        if authority is not None:  # RFC 9112 3.2.2: the target's authority replaces Host
            self.requestHeaders.setRawHeaders(b"host", [authority])
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        """HTTP/1.1 bodies are refused at the head (``refuses_body``); an HTTP/2 stream's
        body arrives in DATA frames, so its stream is reset once it exceeds MAX_BODY."""
        received = self.content.tell() + len(data) if self.content is not None else 0
        if received > MAX_BODY:
            metrics.observe_refused("body")
            self.channel.abortConnection()
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        """However the request ends (connection lost, HTTP/2 stream reset or cut), its
        body's producer stops, and lets go of the file it reads."""
        producer = self.producer
        super().connectionLost(reason)
        if producer is not None:
            producer.stopProducing()

    def process(self) -> None:
        for name, value in EVERY_RESPONSE:
            self.setHeader(name, value)
        site = self.channel.site
        site.request_began(self)
        self.notifyFinish().addBoth(site.request_ended, self)
        super().process()


class ProbeRequest(PluginRequest):
    """A request on an HTTP/2 connection admitted beyond the cap: probes only, else 503."""

    def process(self) -> None:
        if self.path in PROBE_PATHS:
            super().process()
            return
        metrics.observe_shed()
        for name, value in EVERY_RESPONSE:
            self.setHeader(name, value)
        status, body, _ = SHED
        self.setResponseCode(int(status[:3]))
        self.setHeader(b"retry-after", b"1")
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


class PluginChannel(HTTPChannel):
    """HTTP/1.1 channel with an optional fast path in front of the parser."""

    fast_path: FastPath | None = None
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    MAX_LENGTH = MAX_HEAD_BYTES  # LineReceiver's cap on one line

    def __init__(self) -> None:
        super().__init__()
        self.head_since: float | None = None
        self.last_progress = 0.0
        self.fast_responses = 0
        self.cut = False
        self.received = False
        self.probe_only = False
        """Admitted beyond the cap (PROBE_RESERVE): only probes are answered, then it closes."""
        self.peer_host: str | None = None
        self.fast_reply: Any = None
        """The fast path's multi-chunk response in flight on this channel, if any."""
        self.fast_line: Any = None
        """The fast path's last (request, body size, second, access line), for reuse."""
        self.web_owned = False
        """Sticky: twisted.web has parsed bytes of this connection, so it owns it."""
        self.fast_queued = False
        """The fast path left bytes in the transport's buffer (cleared once it drains)."""
        self.handling = False
        """twisted.web has a whole request and has not finished answering it."""
        self.producing = False
        """A producer (a response body) is registered on this channel."""
        self.blocked = False
        """The transport paused us: bytes wait for a client that does not read."""

    def now(self) -> float:
        return self.site.reactor.seconds()

    def connectionMade(self) -> None:
        super().connectionMade()
        # The head deadline runs from accept: a client that never sends a byte (or a TLS
        # client that never sends its ClientHello) is cut like a slow one.
        self.head_since = self.now()

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        fast = self.fast_path
        if fast is not None and not self.probe_only and fast.handle(self, data):
            self.head_since = None
            return
        self.web_owned = True
        # After the fast path (which never reads head_since) it comes to the same.
        if self.head_since is None and not self.handling:
            self.head_since = self.now()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self.head_since = None
        request = self.requests[-1]
        if refuses_body(request_method(self), self.length):
            self.refuse(TOO_LARGE, "body")
        elif not host_ok(request.requestHeaders.getRawHeaders(b"host"), request_line(self)[2]):
            self.refuse(BAD_HOST, "bad_host")
        elif self.probe_only and origin_form(request_line(self)[1] or b"")[0] not in PROBE_PATHS:
            metrics.observe_shed()
            self.refuse(SHED, "shed")
        else:
            super().allHeadersReceived()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """twisted.web reads only the first Connection line, split on spaces (RFC 9112 9.6)."""
        if not self.probe_only and keeps_alive(
                version, request.requestHeaders.getRawHeaders(b"connection")):
            return True
        if version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def allContentReceived(self) -> None:
        self.last_progress = self.now()
        self.handling = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self.handling = False
        super().requestDone(request)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producing = True
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.producing = False
        super().unregisterProducer()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(HEAD_TOO_BIG, "head_too_big")

    def refuse(self, reply: Canned, reason: str) -> None:
        """Answer with a canned reply and close, reading nothing more."""
        metrics.observe_refused(reason)
        head = request_method(self) == b"HEAD"  # known once the request line is read
        self.head_since = None
        self.persistent = False
        # Instance attributes shadow the parser, so the rest of the body is dropped unread
        # and a head refused at its end never reaches a resource.
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign]
        self.allContentReceived = _ignore  # type: ignore[method-assign]
        self.transport.write(canned(reply, head))
        self.loseConnection()

    # -- progress, for the send watchdog ---------------------------------------------------

    def progress(self) -> None:
        """A response made progress (bytes left for the client); feeds the send watchdog."""
        self.last_progress = self.now()

    def write(self, data: bytes) -> None:
        self.last_progress = self.now()
        super().write(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.last_progress = self.now()
        super().writeSequence(iovec)

    def pauseProducing(self) -> None:
        self.blocked = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.last_progress = self.now()  # the transport drained its buffer: the client reads
        self.fast_queued = self.blocked = False
        super().resumeProducing()

    def response_began(self) -> None:
        """The fast path starts a response (pair with :meth:`response_ended`)."""
        self.fast_responses += 1
        self.site.in_flight += 1
        self.progress()

    def response_ended(self) -> None:
        if self.fast_responses > 0:
            self.fast_responses -= 1
            self.site.in_flight -= 1

    def busy(self) -> bool:
        """A response is being produced, or its bytes wait for a client that does not read."""
        return self.handling or self.blocked or self.fast_responses > 0 or self.producing

    def overdue(self, now: float, limits: Limits) -> str | None:
        """Which deadline this connection has missed, if any."""
        if self.head_since is not None and now - self.head_since > limits.header_timeout:
            return "header_timeout"
        if self.busy() and now - self.last_progress > limits.send_timeout:
            return "send_timeout"
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fast_reply is not None:
            self.fast_reply.lost()
        while self.fast_responses:
            self.response_ended()
        super().connectionLost(reason)


def _ignore(*args: object) -> None:
    return None


class TrackedProtocol(GenericHTTPChannelProtocol):
    """Twisted's HTTP/1.1-or-h2 switch, admitted and tracked by the site.

    Tracking here, not in the channel, because after ALPN picks h2 the wrapper
    forwards ``connectionLost`` to the H2 connection, not to our channel.
    """

    shed = False
    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        if not self.factory.admit(self):
            self.shed = True
            transport.write(canned(SHED))
            transport.loseConnection()
            return
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.shed:
            return
        if negotiating(self) and getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            from hps.http2 import PluginH2Connection  # h2 is an extra; ALPN offers it only then

            probe_only = inner_channel(self).probe_only
            connection = PluginH2Connection(self.factory.reactor)
            switch_to_h2(self, connection)
            if probe_only:
                connection.requestFactory = ProbeRequest
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.shed:
            return
        self.factory.forget(self)
        super().connectionLost(reason)

    def busy(self) -> bool:
        channel = inner_channel(self)
        if isinstance(channel, PluginChannel):
            return channel.busy()
        return bool(getattr(channel, "streams", None))  # h2: any stream still open

    def check(self, now: float, limits: Limits) -> None:
        channel = inner_channel(self)
        if not isinstance(channel, PluginChannel):
            channel.check(now, limits.send_timeout)  # hps.http2.PluginH2Connection
            return
        reason = channel.overdue(now, limits)
        if reason is None:
            return
        metrics.observe_abort(reason)
        if reason == "header_timeout" and channel.received and not channel.cut:
            channel.cut = True  # polite first: a slow but honest client learns why
            channel.head_since = now
            channel.refuse(HEAD_TOO_SLOW, reason)
        else:
            # Silent (nothing to answer, and a TLS handshake may not even have begun),
            # a second miss, or a stalled response.
            self.transport.abortConnection()

    def evict(self) -> None:
        """Make room for a new connection: this one is idle, silent or still sending a head."""
        channel = inner_channel(self)
        if (isinstance(channel, PluginChannel) and channel.received
                and channel.head_since is not None):
            channel.refuse(SHED, "evicted")  # a head in progress learns to retry
        else:
            # Nothing to say and nothing owed: a TLS close would wait for a handshake
            # a silent client never finishes, and this descriptor is needed now.
            self.transport.abortConnection()

    def close(self) -> None:
        """Close gracefully: whatever is written still reaches the client."""
        inner_channel(self).transport.loseConnection()


def _plugin_protocol(factory: Site) -> TrackedProtocol:
    # Same shape as twisted.web.http._genericHTTPChannelProtocolFactory, with our channel:
    # assigning PluginChannel to Site.protocol directly would lose the switch to HTTP/2.
    return TrackedProtocol(PluginChannel())


class PluginSite(Site):
    """A Site that never shows a traceback, enforces limits and can drain."""

    requestFactory = PluginRequest
    protocol = _plugin_protocol
    displayTracebacks = False
    noisy = False
    connections_accepting = True

    def __init__(self, resource: Any, state: ServerState | None = None,
                 limits: Limits | None = None, access: AccessLog | None = None,
                 reactor: Any = None, open_files: Callable[[], int] = lambda: 0) -> None:
        self.limits = limits or Limits()
        self.open_files = open_files
        """How many files the server holds open (they count against the descriptor budget)."""
        super().__init__(resource, timeout=self.limits.idle_timeout, reactor=reactor)
        self.state = state
        self.access = access or AccessLog("off")
        self.connections: dict[TrackedProtocol, None] = {}
        """Admitted connections, oldest first (a dict is an ordered set)."""
        self.probes: dict[TrackedProtocol, None] = {}
        """Connections admitted beyond the cap that may only ask for a probe."""
        self.in_flight = 0
        self._closed: list[Deferred] = []
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        metrics.track(lambda: self.in_flight, lambda: len(self.connections) + len(self.probes))

    @property
    def draining(self) -> bool:
        return bool(self.state is not None and self.state.draining)

    def startFactory(self) -> None:
        super().startFactory()
        # Not stopped in stopFactory: ports close before the drain ends and deadlines still apply.
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_SECONDS, now=False)

    # -- connections -----------------------------------------------------------------------

    def everyone(self) -> list[TrackedProtocol]:
        return [*self.connections, *self.probes]

    def admit(self, conn: TrackedProtocol) -> bool:
        """Take ``conn`` if there is room, making room from idle connections if need be.

        At the cap the oldest connection that is not answering (silent, idle, or
        still sending its head) is closed for the newcomer, so floods of those
        never lock anyone out; when every connection is answering, up to
        PROBE_RESERVE more are admitted for probes only; beyond that, 503.
        """
        if (len(self.connections) < self.limits.max_connections
                and self.descriptors_in_use() < self.limits.descriptor_budget):
            self.connections[conn] = None
            return True
        for pool in (self.connections, self.probes):
            victim = self.idle_victim(pool)
            if victim is not None:
                pool[conn] = None
                inner_channel(conn).probe_only = pool is self.probes
                self.forget(victim)
                metrics.observe_abort("evicted")
                victim.evict()
                return True
            if pool is self.connections and len(self.probes) < PROBE_RESERVE:
                self.probes[conn] = None
                inner_channel(conn).probe_only = True
                return True
        metrics.observe_shed()
        return False

    @staticmethod
    def idle_victim(pool: dict[TrackedProtocol, None]) -> TrackedProtocol | None:
        """The oldest connection of ``pool`` that is not answering, among the first few.

        Busy ones looked at move to the back, so long downloads at the front do not
        hide idle connections behind them.
        """
        for _ in range(min(EVICT_SCAN, len(pool))):
            conn = next(iter(pool))
            if not conn.busy():
                return conn
            del pool[conn]
            pool[conn] = None
        return None

    def descriptors_in_use(self) -> int:
        """Sockets and open files: what runs out (HTTP/2 streams share their module's file)."""
        return len(self.connections) + len(self.probes) + self.open_files()

    def forget(self, conn: TrackedProtocol) -> None:
        self.connections.pop(conn, None)
        self.probes.pop(conn, None)
        if not self.connections and not self.probes:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def sweep(self) -> None:
        now = self.reactor.seconds()
        for conn in self.everyone():
            conn.check(now, self.limits)
        if self.draining and not self.connections_accepting:
            self.close_idle()
        self.access.flush()

    # -- drain -----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM: responses in flight on HTTP/1.1 end their connection when done."""
        for conn in self.everyone():
            if isinstance(inner_channel(conn), PluginChannel) and conn.busy():
                inner_channel(conn).persistent = False

    def close_idle(self) -> None:
        """Ports are closed: idle keep-alive connections go now, busy ones when done."""
        self.connections_accepting = False
        for conn in self.everyone():
            if not conn.busy():
                conn.close()

    def wait_closed(self) -> Deferred:
        if not self.connections and not self.probes:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed.append(d)
        return d

    def abort_all(self, reason: str) -> int:
        left = self.everyone()
        for conn in left:
            metrics.observe_abort(reason)
            conn.transport.abortConnection()
        return len(left)

    # -- per request -----------------------------------------------------------------------

    def request_began(self, request: PluginRequest) -> None:
        self.in_flight += 1
        if self.draining and isinstance(request.channel, HTTPChannel):
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")

    def request_ended(self, result: object, request: PluginRequest) -> None:
        self.in_flight -= 1
        path = request.path.decode("latin-1")
        peer = request.getClientAddress()
        self.finished_response(
            route=metrics.route_kind(path, request.code), status=request.code,
            nbytes=request.sentLength, method=request.method, uri=request.uri,
            proto=request.clientproto, peer=getattr(peer, "host", "-"),
            forwarded=request.getHeader(b"x-forwarded-for"),
            referer=request.getHeader(b"referer"), agent=request.getHeader(b"user-agent"),
            aborted=isinstance(result, Failure))

    def finished_response(self, *, route: str, status: int, nbytes: int, method: bytes,
                          uri: bytes, proto: bytes, peer: str, forwarded: bytes | None,
                          referer: bytes | None, agent: bytes | None,
                          aborted: bool = False,
                          artifact: tuple[str, str] | None = None) -> None:
        """Count and log one response; the fast path calls this too.

        ``artifact`` is (name, version) when the caller already parsed them from ``uri``
        (the fast path has) and the body was sent: it spares parsing the target again.
        """
        metrics.observe_response(route, status, nbytes)
        if artifact is not None:
            metrics.observe_download(*artifact)
        elif route == "artifact" and status in (200, 206) and method == b"GET" and not aborted:
            name, version = metrics.artifact_of(uri)
            if name:
                metrics.observe_download(name, version)
        self.access.record(peer=peer, forwarded=forwarded, method=method, uri=uri, proto=proto,
                           status=status, nbytes=nbytes, referer=referer, agent=agent,
                           aborted=aborted)

    def finished_fast(self, nbytes: int, artifact: tuple[str, str] | None,
                      line: str | None) -> None:
        """:meth:`finished_response` for a fast-path 200 on route ``artifact``, whose access
        line (``AccessLog.line``) the caller already has."""
        metrics.observe_response("artifact", 200, nbytes)
        if artifact is not None:
            metrics.observe_download(*artifact)
        if line is not None:
            self.access.add(line)

    def log(self, request: Request) -> None:
        """Twisted's own access log is replaced by :meth:`finished_response`."""
