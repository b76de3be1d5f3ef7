"""The Site: every connection tracked, admitted under the cap, swept for deadlines, drained.

Limits, timeouts and drain belong here; the resources only route.

Every connection is a :class:`TrackedProtocol` (Twisted's HTTP/1.1-or-HTTP/2
switch) around a :class:`~hps.channel.PluginChannel`. The site keeps the set of them,
and a sweep every ``SWEEP_SECONDS`` enforces the per-connection deadlines (it also
writes the buffered access lines and, once the ports are closed in a drain,
closes connections that went idle):

- **header timeout**: a request head that is not complete in time is cut with
  408 (slowloris keeps resetting Twisted's idle timer with every byte);
- **send timeout**: a busy connection whose response made no progress that
  long is aborted (Twisted's idle timeout is off while a request is in flight).
  A body waiting for its turn (:mod:`hps.bodies`) makes none either, as on
  HTTP/2: waiting that long, its client has long given up, and its retry queues
  afresh; a TLS body holding a turn without progress for ``STALL_SECONDS`` while
  others wait gives its turn back at the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from hps import metrics
from hps._twisted import (
    GenericHTTPChannelProtocol,
    inner_channel,
    negotiating,
    switch_to_h2,
)
from hps.access import AccessLog
from hps.admission import Admission
from hps.bodies import BodyGate
from hps.canned import HEAD_TOO_SLOW, SHED, canned
from hps.channel import PluginChannel, PluginRequest, ProbeRequest
from hps.limits import EVICT_SCAN, PROBE_RESERVE, Limits
from hps.memory import Limit
from hps.tls import is_tls, tune

if TYPE_CHECKING:
    from hps.state import ServerState

SWEEP_SECONDS = 0.5


@implementer(IHandshakeListener)
class TrackedProtocol(GenericHTTPChannelProtocol):
    """Twisted's HTTP/1.1-or-h2 switch, admitted and tracked by the site.

    Tracking here, not in the channel, because after ALPN picks h2 the wrapper
    forwards ``connectionLost`` to the H2 connection, not to our channel.
    """

    shed = False
    tls = False
    cost = 0
    """What admission charged for this connection (released when it is forgotten)."""
    transport: ITransport | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.tls = is_tls(transport)
        if self.tls:
            tune(transport)
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
            from hps.h2fast import H2FastPath
            from hps.http2 import PluginH2Connection  # h2 is an extra; ALPN offers it only then

            channel = inner_channel(self)
            probe_only, fast = channel.probe_only, channel.fast_path
            quick = None if probe_only or fast is None else H2FastPath(fast)
            connection = PluginH2Connection(self.factory.reactor, self.factory.bodies, quick)
            switch_to_h2(self, connection)
            if probe_only:
                connection.requestFactory = ProbeRequest
        super().dataReceived(data)

    def handshakeCompleted(self) -> None:
        """TLS is up: the head deadline starts now, and a slow head can be answered."""
        self.factory.admission.handshake_ended(self)
        if not self.shed:
            channel = inner_channel(self)
            if isinstance(channel, PluginChannel):
                channel.handshake_done()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.forget(self)
        if self.shed:
            return
        super().connectionLost(reason)

    def busy(self) -> bool:
        return inner_channel(self).busy()  # PluginChannel, or PluginH2Connection (any stream)

    def check(self, now: float, limits: Limits) -> None:
        channel = inner_channel(self)
        if not isinstance(channel, PluginChannel):
            channel.check(now, limits.send_timeout)  # hps.http2.PluginH2Connection
            return
        if self.tls:  # a TLS body that stalls with a turn gives it to one that waits
            self.factory.bodies.requeue_if_stalled(channel, channel.last_progress)
        reason = channel.overdue(now, limits)
        if reason is None:
            return
        metrics.observe_abort(reason)
        if reason == "header_timeout" and channel.answerable() and not channel.cut:
            channel.cut = True  # polite first: a slow but honest client learns why
            channel.head_since = now
            channel.refuse(HEAD_TOO_SLOW, reason)
        else:
            # Silent on plain TCP (nothing to answer), a TLS handshake not finished (nothing
            # can be said), a second miss, or a stalled response.
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

    def __init__(self, resource: IResource, state: ServerState | None = None,
                 limits: Limits | None = None, access: AccessLog | None = None,
                 reactor: IReactorTime | None = None,
                 open_files: Callable[[], int] = lambda: 0,
                 memory_limit: Limit | None = None) -> None:
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
        self.shedding: dict[TrackedProtocol, float] = {}
        """Connections being answered 503 (they still hold memory), and since when."""
        self.admission = Admission(memory_limit or Limit(None, "not set"), self.reactor)
        self.in_flight = 0
        self.bodies = BodyGate(self.reactor)
        """HTTP/2 and TLS HTTP/1.1 bodies take turns, server-wide (hps.bodies)."""
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
            self.admission.announce()
            self._sweeper.start(SWEEP_SECONDS, now=False)

    # -- connections -----------------------------------------------------------------------

    def everyone(self) -> list[TrackedProtocol]:
        return [*self.connections, *self.probes]

    def admit(self, conn: TrackedProtocol) -> bool:
        """Take ``conn`` if there is room, making room from idle connections if need be.

        Room is under the cap, the descriptor budget and the memory budget
        (:mod:`hps.admission`; every connection, refused ones too, is charged until
        it closes). At the cap the oldest connection that is not answering
        (silent, idle, or still sending its head) is closed for the newcomer, so
        floods of those never lock anyone out; when every connection is
        answering, up to PROBE_RESERVE more are admitted for probes only; beyond
        that, 503. Short of memory, a plain newcomer may take the probe reserve
        (the memory headroom holds it) and a TLS one gets 503.
        """
        memory = self.admission
        if conn.tls:
            memory.handshake_started(conn)
        cost = memory.cost(conn.tls)
        fits = memory.fits(cost)
        memory.charge(cost)
        conn.cost = cost
        if (fits and len(self.connections) < self.limits.max_connections
                and self.descriptors_in_use() < self.limits.descriptor_budget):
            self.connections[conn] = None
            return True
        if fits:
            if self.make_room(conn):
                return True
        else:
            # Short of memory, evicting would trade one fresh connection for another (a
            # herd's are all in their handshake or head, and a cut one sees a reset): a
            # TLS newcomer is refused, a plain one (a probe is cheap) may take the reserve.
            metrics.observe_memory_shed()
            if not conn.tls and (len(self.probes) < PROBE_RESERVE
                                 or self.evict_for(self.probes)):
                self.probes[conn] = None
                inner_channel(conn).probe_only = True
                return True
        metrics.observe_shed()
        self.shedding[conn] = self.reactor.seconds()
        return False

    def make_room(self, conn: TrackedProtocol) -> bool:
        """At the cap: an idle connection's place, else the probe reserve, else an idle
        probe-only connection's place."""
        if self.evict_for(self.connections):
            self.connections[conn] = None
            return True
        if len(self.probes) < PROBE_RESERVE or self.evict_for(self.probes):
            self.probes[conn] = None
            inner_channel(conn).probe_only = True
            return True
        return False

    def evict_for(self, pool: dict[TrackedProtocol, None]) -> bool:
        """Close the oldest connection of ``pool`` that is not answering, if any."""
        victim = self.idle_victim(pool)
        if victim is None:
            return False
        self.forget(victim)
        metrics.observe_abort("evicted")
        victim.evict()
        return True

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
        self.shedding.pop(conn, None)
        self.admission.handshake_ended(conn)
        self.admission.release(conn.cost)
        conn.cost = 0  # forgotten twice (evicted, then lost): released once
        if not self.connections and not self.probes:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def sweep(self) -> None:
        now = self.reactor.seconds()
        for conn in self.everyone():
            conn.check(now, self.limits)
        for conn, since in list(self.shedding.items()):
            if now - since > self.limits.header_timeout:  # a 503 its client never took
                self.forget(conn)
                conn.transport.abortConnection()
        self.admission.expire(now)
        self.admission.measure(idle=not (self.connections or self.probes or self.shedding))
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
        peer = request.getClientAddress()
        self.finished_response(
            route=metrics.route_label(request.route, request.code),
            status=request.code,
            nbytes=request.sentLength, method=request.method, uri=request.uri,
            proto=request.clientproto, peer=getattr(peer, "host", "-"),
            forwarded=request.getHeader(b"x-forwarded-for"),
            referer=request.getHeader(b"referer"), agent=request.getHeader(b"user-agent"),
            aborted=isinstance(result, Failure))

    def finished_response(self, *, route: str, status: int, nbytes: int, method: bytes,
                          uri: bytes, proto: bytes, peer: str, forwarded: bytes | None,
                          referer: bytes | None, agent: bytes | None,
                          aborted: bool = False) -> None:
        """Count and log one response; the fast path calls this too."""
        metrics.observe_response(route, status, nbytes)
        if route == "artifact" and status in (200, 206) and method == b"GET" and not aborted:
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
