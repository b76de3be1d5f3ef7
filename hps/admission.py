"""Admission by memory, and the gate that keeps TLS handshakes from hogging the reactor.

The connection cap counts descriptors, not bytes: 4,096 TLS connections cost far more
than a 256 MiB pod has. So each connection is *charged* what it costs (measured with
``bench/memory.py``: a TLS connection with a response in flight, its OpenSSL state
and the transport's buffer; a plain one, its Python objects) on top of the idle
server's own RSS, and a new connection is admitted only while the total fits the
limit less a headroom (probes, handshakes under way, what the estimate misses).
Beyond that the site answers ``503`` + ``Retry-After``, which the gateway retries; the
resident size sampled every sweep is a second guard when the estimate is wrong.

Handshakes are the costly part of a TLS connection (key exchange and signature, and
OpenSSL's buffers while they last). A herd's thousand ClientHellos all land in one
reactor turn, and a probe on the plain port waits behind them. So at most
``MAX_HANDSHAKES`` fresh ones are under way at once: beyond that the TLS ports stop
accepting (the kernel's backlog holds the rest) until handshakes finish. One that takes
longer than ``HANDSHAKE_GRACE`` (a slow or silent client: no CPU spent) stops counting,
so a few silent sockets cannot shut the TLS ports.

Closing the gate is not enough by itself: Twisted's port accepts up to its
``numberAccepts`` connections per reactor turn whatever happens meanwhile, and raises
that by 20 each time a turn fills it, so in a connect storm one turn accepted hundreds
of TLS connections and the next ran all their handshakes while a probe on the plain
port waited. So the TLS ports accept at most the gate's room left per turn
(:meth:`Admission.bound_accepts`): about ``MAX_HANDSHAKES`` handshakes per turn at most.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from hps import metrics
from hps.limits import PROBE_RESERVE
from hps.memory import HeapSlack, Limit, rss, trim

KiB, MiB = 1 << 10, 1 << 20
CHARGE_TLS = 144 * KiB
"""A TLS connection with a response in flight (issue 21 measured ~141 KiB; see
bench/README.md for the figure with OpenSSL's buffers released when idle)."""
CHARGE_PLAIN = 16 * KiB
"""A plain TCP connection (~8 KiB measured; the body moves with ``sendfile``)."""
HEADROOM_MIN = 16 * MiB
HEADROOM_SHARE = 8
"""A limit's 1/8 (at least HEADROOM_MIN) is never given to connections: handshakes under
way, connections being refused, probes, allocator slack."""
MAX_HANDSHAKES = 64
HANDSHAKE_GRACE = 1.0


class Admission:
    """What a new connection may cost, and the TLS ports' handshake gate."""

    log = Logger()

    def __init__(self, limit: Limit, clock: Any, sample: Callable[[], int] = rss,
                 trim: Callable[[], bool] = trim, slack: HeapSlack | None = None) -> None:
        self.limit = limit
        self.clock = clock
        self.sample, self.trim = sample, trim
        self.slack = slack or HeapSlack(trim=trim)
        """Gives back the C heap's pages after a burst of frees (every sample, with or
        without a limit: it lowers the peak resident size, not only the estimate)."""
        self.base = 0
        """The idle server's resident bytes (re-measured whenever no connection is open)."""
        self.resident = 0
        """The last sample of the resident size."""
        self.charged = 0
        self.handshakes: dict[object, float] = {}
        """TLS connections whose handshake started less than HANDSHAKE_GRACE ago."""
        self.tls_ports: list[Any] = []
        self.paused = False
        metrics.track_memory(self)

    # -- the budget --------------------------------------------------------------------

    @property
    def headroom(self) -> int:
        if self.limit.bytes is None:
            return 0
        return max(HEADROOM_MIN, self.limit.bytes // HEADROOM_SHARE) + PROBE_RESERVE * CHARGE_TLS

    @property
    def budget(self) -> int | None:
        """Bytes the process may hold before it refuses new connections (None: no bound)."""
        return None if self.limit.bytes is None else self.limit.bytes - self.headroom

    def measure(self, idle: bool = True) -> None:
        """Sample the resident size (after a burst of frees, with those pages given back:
        :class:`hps.memory.HeapSlack`); when ``idle`` (no connection open), with the C
        heap's free pages given back first, it is the new base (a catalog grows, a herd's
        buffers are gone)."""
        self.slack.check()
        self.resident = self.sample()
        if not self.base:
            self.base = self.resident
        elif idle and self.resident > self.base and self.budget is not None and self.trim():
            self.base = self.resident = self.sample()

    def fits(self, charge: int) -> bool:
        """Does a connection charged ``charge`` fit the budget? The resident size is a second
        guard once it eats into half the headroom (the estimate missed something)."""
        budget = self.budget
        if budget is None:
            return True
        return (self.base + self.charged + charge <= budget
                and self.resident <= budget + self.headroom // 2)

    @staticmethod
    def cost(tls: bool) -> int:
        """What a new connection is charged."""
        return CHARGE_TLS if tls else CHARGE_PLAIN

    def charge(self, cost: int) -> None:
        self.charged += cost

    def release(self, cost: int) -> None:
        self.charged -= cost

    def announce(self) -> None:
        """One line at start: the limit, where it came from, and what it leaves."""
        self.measure()
        if self.budget is None:
            self.log.info("memory: no limit ({source}); connections are bounded by "
                          "max-connections only", source=self.limit.source)
            return
        room = max(0, self.budget - self.base)
        self.log.info(
            "memory: limit {limit} MiB ({source}); budget {budget} MiB after {headroom} MiB "
            "headroom; idle server {base} MiB; room for about {tls} TLS or {plain} plain "
            "connections, then 503 + Retry-After", limit=_mib(self.limit.bytes or 0),
            source=self.limit.source, budget=_mib(self.budget), headroom=_mib(self.headroom),
            base=_mib(self.base), tls=room // CHARGE_TLS, plain=room // CHARGE_PLAIN)

    # -- the handshake gate ------------------------------------------------------------

    def handshake_started(self, conn: object) -> None:
        self.handshakes[conn] = self.clock.seconds()
        if len(self.handshakes) >= MAX_HANDSHAKES:
            self.pause()
        self.bound_accepts()

    def handshake_ended(self, conn: object) -> None:
        if self.handshakes.pop(conn, None) is not None and len(self.handshakes) < MAX_HANDSHAKES:
            self.resume()
        self.bound_accepts()

    def bound_accepts(self) -> None:
        """The TLS ports' next accept loop takes at most the handshakes the gate has room
        for (``numberAccepts``: how many connections ``tcp.Port.doRead`` accepts in one
        turn; Twisted sets it after each loop from what that loop accepted, so it is
        bounded again with every handshake started or ended)."""
        room = max(1, MAX_HANDSHAKES - len(self.handshakes))
        for port in self.tls_ports:
            if getattr(port, "numberAccepts", 0) > room:
                port.numberAccepts = room

    def expire(self, now: float) -> None:
        """Handshakes older than HANDSHAKE_GRACE stop holding the gate (the sweep calls it)."""
        for conn, since in list(self.handshakes.items()):
            if now - since > HANDSHAKE_GRACE:
                del self.handshakes[conn]
        if len(self.handshakes) < MAX_HANDSHAKES:
            self.resume()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            metrics.observe_gate_closed()
            for port in self.tls_ports:
                port.stopReading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            for port in self.tls_ports:
                if port.connected:  # not closed by a drain meanwhile
                    port.startReading()


def _mib(size: int) -> str:
    return f"{size / MiB:.0f}"
