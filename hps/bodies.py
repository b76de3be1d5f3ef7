"""Which response bodies are sent now: a few at once, the rest in arrival order.

HTTP/2 streams and HTTP/1.1 bodies over TLS take turns (:mod:`hps.sender`); plain
TCP bodies go by ``sendfile``, cheap for the server and holding no TLS records, and
never wait. Listings and other small replies are not artifact bodies and never wait.

Sharing the server's bytes evenly among every stream of a herd (1,000 gateways
asking at once, each with a 15 s deadline per attempt) finishes every body late:
each attempt misses its deadline, each retry starts from zero, and no gateway gets
the plugin. Sending at most ``ACTIVE_BODIES`` bodies at once, process-wide, and
handing each freed turn to the longest waiting one finishes the first arrivals
in a fraction of the time and lets the rest follow.

A body that holds a turn and makes no progress (a client that stopped reading or
keeps its window shut) must not lock the others out: its connection gives the
turn back (:meth:`BodyGate.requeue`, from the site's sweep) and the body waits
again at the back; the send deadline still ends it if it never moves.

An HTTP/1.1 body over TLS waits for its turn *before* its head (:meth:`BodyGate.wait`,
from :mod:`hps.artifact`), and one that has not got a turn after ``TURN_WAIT`` is
answered ``503`` + ``Retry-After``: the gateway gives each attempt 15 s and retries a 5xx
at once (from 0.5 s), so a body that cannot start soon is better refused than begun too
late for its client's deadline; an admitted body has the rest of the attempt to finish.
An HTTP/2 body has sent its head and waits with nothing more, so the send deadline still
cuts it (and a drain's end), as it would any response.

A key is whatever names one body (hps uses ``(connection, stream id)`` on HTTP/2 and
the channel on HTTP/1.1); a wake is called on a later reactor turn once the body
holds a turn.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from hps import metrics

ACTIVE_BODIES = 32
"""Bodies sent at once: enough to keep one core and the link busy (bench/README.md)."""

STALL_SECONDS = 1.0
"""A body holding a turn with no progress for this long gives it to the next waiting."""


TURN_WAIT = 5.0
"""Seconds an HTTP/1.1 body over TLS may wait for a turn before it is answered ``503`` +
``Retry-After``: a third of a gateway's 15 s attempt, leaving 10 s to send the body."""


def _nothing() -> None:
    pass


class BodyGate:
    """See the module docstring."""

    def __init__(self, clock: IReactorTime, limit: int = ACTIVE_BODIES) -> None:
        self.clock, self.limit = clock, limit
        self.active: dict[Hashable, float] = {}
        """Bodies holding a turn, and since when."""
        self.waiting: dict[Hashable, Callable[[], None]] = {}
        """Oldest first (a dict keeps insertion order)."""
        metrics.track_bodies(lambda: len(self.active), lambda: len(self.waiting))

    def admit(self, key: Hashable, wake: Callable[[], None]) -> bool:
        """May ``key``'s body be sent now? If not, ``wake`` runs once it may."""
        if key in self.active:
            return True
        if key not in self.waiting and len(self.active) < self.limit:
            self.active[key] = self.clock.seconds()
            return True
        if key not in self.waiting:
            metrics.observe_body_waited()
        self.waiting[key] = wake  # a waiting body keeps its place; only its wake is new
        return False

    def take(self, key: Hashable) -> bool:
        """A turn for ``key`` now, or False and no place in the queue (for a body that has
        another way to wait: the fast path hands it to twisted.web, which queues it)."""
        if key in self.active:
            return True
        if self.waiting or len(self.active) >= self.limit:
            return False
        self.active[key] = self.clock.seconds()
        return True

    def wait(self, key: Hashable) -> Deferred[None]:
        """Fires once ``key``'s body holds a turn; cancelling it (the client left, or it
        waited too long) gives up its place in the queue, or the turn it just got."""
        turned: Deferred[None] = Deferred(lambda _: self.release(key))

        def granted() -> None:
            if not turned.called:  # cancelled while the wake was on its way
                turned.callback(None)

        if self.admit(key, granted):
            turned.callback(None)
        return turned

    def holds(self, key: Hashable) -> bool:
        return key in self.active

    def release(self, key: Hashable) -> None:
        """``key``'s body ended (sent, cut or reset): its turn goes to the next waiting."""
        self.waiting.pop(key, None)
        if self.active.pop(key, None) is not None:
            self.grant()

    def requeue_if_stalled(self, key: Hashable, progress: float) -> None:
        """If ``key`` holds a turn and made no progress (last at ``progress``) for
        ``STALL_SECONDS`` since it got it, while others wait: the next waiting body takes
        the turn, and ``key`` waits at the back (woken when its turn comes round, if it
        asked again)."""
        since = self.active.get(key)
        if (since is None or not self.waiting
                or self.clock.seconds() - max(since, progress) <= STALL_SECONDS):
            return
        del self.active[key]
        self.grant()
        self.waiting[key] = _nothing
        metrics.observe_body_stalled()

    def grant(self) -> None:
        while self.waiting and len(self.active) < self.limit:
            key = next(iter(self.waiting))
            wake = self.waiting.pop(key)
            self.active[key] = self.clock.seconds()
            self.clock.callLater(0, wake)  # not inside the release: no chains of wakes
