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
  one-call 200 whose access line the connection already built (same counts, same line).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.server import Request, Site

from hps import metrics
from hps.access import AccessLog

if TYPE_CHECKING:
    from hps.config import Config
    from hps.state import ServerState

SERVER_NAME = b"hps"
MAX_HEADERS = 100
MAX_HEAD_BYTES = 16384
MAX_BODY = 1024
"""Only GET and HEAD exist here; a body bigger than this is a mistake or an attack."""

SWEEP_SECONDS = 0.5
_log = Logger()


def canned(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A complete, closing HTTP/1.1 response written before twisted.web gets involved."""
    return (b"HTTP/1.1 " + status + b"\r\nServer: " + SERVER_NAME
            + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n" + extra + b"\r\n" + body)


SHED = canned(b"503 Service Unavailable", b"too many connections, retry\n", b"Retry-After: 1\r\n")
TOO_LARGE = canned(b"413 Content Too Large", b"request bodies are not accepted\n")
HEAD_TOO_SLOW = canned(b"408 Request Timeout", b"request head took too long\n")
HEAD_TOO_BIG = canned(b"431 Request Header Fields Too Large", b"request head too large\n")


@dataclass(frozen=True)
class Limits:
    send_timeout: float = 30.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(config.send_timeout, config.header_timeout, config.idle_timeout,
                   connection_cap(config.max_connections))


FD_RESERVE = 64
"""Descriptors kept for the listening sockets, files being sent, inotify and logs."""


def connection_cap(requested: int) -> int:
    """``requested``, lowered to what the descriptor limit allows (raised to its hard cap).

    Running out of descriptors makes accept() fail silently in a loop; shedding
    with a 503 just below the limit is the orderly alternative.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = requested + FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < want:
            soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (OSError, ValueError):
        return requested
    if soft == resource.RLIM_INFINITY or soft >= requested + FD_RESERVE:
        return requested
    allowed = max(1, soft - FD_RESERVE)
    _log.warn("max-connections {requested} exceeds the descriptor limit {soft}; using {allowed}",
              requested=requested, soft=soft, allowed=allowed)
    return allowed


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
    """A request that never names the Twisted version in ``Server``, and is counted."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = SERVER_NAME
        super().setHeader(name, value)

    def process(self) -> None:
        site = self.channel.site
        site.request_began(self)
        self.notifyFinish().addBoth(site.request_ended, self)
        super().process()


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
        self.peer_host: str | None = None
        self.fast_reply: Any = None
        """The fast path's multi-chunk response in flight on this channel, if any."""
        self.fast_line: Any = None
        """The fast path's last (request, variant, second, access line), for reuse."""

    def now(self) -> float:
        return self.site.reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        fast = self.fast_path
        if fast is not None and fast.handle(self, data):
            self.head_since = None
            return
        # After the fast path (which never reads head_since) it comes to the same.
        if self.head_since is None and not self._handlingRequest:
            self.head_since = self.now()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self.head_since = None
        if refuses_body(self._command, self.length):
            self.refuse(TOO_LARGE, "body")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self.last_progress = self.now()
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(HEAD_TOO_BIG, "head_too_big")

    def refuse(self, reply: bytes, reason: str) -> None:
        """Answer with a canned reply and close, reading nothing more."""
        metrics.observe_refused(reason)
        self.head_since = None
        self.persistent = False
        # Instance attributes shadow the parser, so the rest of the body is dropped unread.
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign]
        self.transport.write(reply)
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

    def resumeProducing(self) -> None:
        self.last_progress = self.now()  # the transport drained its buffer: the client reads
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
        return (self._handlingRequest or self._waitingForTransport or self.fast_responses > 0
                or self._requestProducer is not None)

    def overdue(self, now: float, limits: Limits) -> str | None:
        """Which deadline this connection has missed, if any."""
        if self.head_since is not None and now - self.head_since > limits.header_timeout:
            return "header_timeout"
        if self.busy() and now - self.last_progress > limits.send_timeout:
            return "send_timeout"
        return None

    def connectionLost(self, reason: Failure) -> None:
        while self.fast_responses:
            self.response_ended()
        super().connectionLost(reason)


def _ignore(*args: object) -> None:
    return None


class TrackedProtocol(_GenericHTTPChannelProtocol):
    """Twisted's HTTP/1.1-or-h2 switch, admitted and tracked by the site.

    Tracking here, not in the channel, because after ALPN picks h2 the wrapper
    forwards ``connectionLost`` to the H2 connection, not to our channel.
    """

    shed = False
    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        if not self._site.admit(self):
            self.shed = True
            transport.write(SHED)
            transport.loseConnection()
            return
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self.shed:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.shed:
            return
        self._site.forget(self)
        super().connectionLost(reason)

    def busy(self) -> bool:
        channel = self._channel
        if isinstance(channel, PluginChannel):
            return channel.busy()
        return bool(getattr(channel, "streams", None))  # h2: any stream still open

    def check(self, now: float, limits: Limits) -> None:
        channel = self._channel
        if not isinstance(channel, PluginChannel):
            return  # h2 has its own flow control; Twisted's idle timeout applies
        reason = channel.overdue(now, limits)
        if reason is None:
            return
        metrics.observe_abort(reason)
        if reason == "header_timeout" and not channel.cut:
            channel.cut = True  # polite first: a slow but honest client learns why
            channel.head_since = now
            channel.refuse(HEAD_TOO_SLOW, reason)
        else:
            self.transport.abortConnection()

    def close(self) -> None:
        """Close gracefully: whatever is written still reaches the client."""
        self._channel.transport.loseConnection()


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
                 reactor: Any = None) -> None:
        self.limits = limits or Limits()
        super().__init__(resource, timeout=self.limits.idle_timeout, reactor=reactor)
        self.state = state
        self.access = access or AccessLog("off")
        self.connections: set[TrackedProtocol] = set()
        self.in_flight = 0
        self._closed: list[Deferred] = []
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        metrics.track(lambda: self.in_flight, lambda: len(self.connections))

    @property
    def draining(self) -> bool:
        return bool(self.state is not None and self.state.draining)

    def startFactory(self) -> None:
        super().startFactory()
        # Not stopped in stopFactory: ports close before the drain ends and deadlines still apply.
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_SECONDS, now=False)

    # -- connections -----------------------------------------------------------------------

    def admit(self, conn: TrackedProtocol) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            metrics.observe_shed()
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: TrackedProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def sweep(self) -> None:
        now = self.reactor.seconds()
        for conn in list(self.connections):
            conn.check(now, self.limits)
        if self.draining and not self.connections_accepting:
            self.close_idle()
        self.access.flush()

    # -- drain -----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM: responses in flight on HTTP/1.1 end their connection when done."""
        for conn in self.connections:
            if isinstance(conn._channel, PluginChannel) and conn.busy():
                conn._channel.persistent = False

    def close_idle(self) -> None:
        """Ports are closed: idle keep-alive connections go now, busy ones when done."""
        self.connections_accepting = False
        for conn in list(self.connections):
            if not conn.busy():
                conn.close()

    def wait_closed(self) -> Deferred:
        if not self.connections:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed.append(d)
        return d

    def abort_all(self, reason: str) -> int:
        left = list(self.connections)
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
