"""The fake reactor the in-memory harness (tests/support/memory.py) runs on.

A ``MemoryReactorClock`` that keeps what a real reactor keeps and nothing runs by itself:
timed calls stay ordered by their due time and run when the harness turns; work sent to
threads waits in :class:`Pool`; a listener is started and stopped as a real port is, and
``listenSSL`` wraps TLS around the factory as the real reactor does.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

START = 1_700_000_000.0
"""The harness clock's first reading (2023-11-14T22:13:20Z): log lines have known times."""


class Pool:
    """A thread pool whose work runs only when :meth:`run` is called, in order."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], Callable[..., Any], tuple, dict]] = []

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.queue.append((on_result, work, args, kwargs))

    def callInThread(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callInThreadWithCallback(lambda ok, result: None, work, *args, **kwargs)

    def run(self) -> bool:
        """Run what is queued (and what that queues); True if anything ran."""
        ran = False
        while self.run_one():
            ran = True
        return ran

    def run_one(self) -> bool:
        """Run the oldest job, if there is one (its result waits in callFromThread)."""
        if not self.queue:
            return False
        on_result, work, args, kwargs = self.queue.pop(0)
        try:
            result = work(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)
        return True

    def run_in_threads(self) -> list[threading.Thread]:
        """Start every queued job on a real thread of its own, as production's fetches run:
        for bounds only concurrency shows. Join them before the harness settles."""
        # Each thread pops one job (list.pop is atomic); results wait in callFromThread.
        started = [threading.Thread(target=self.run_one, daemon=True) for _ in self.queue]
        for thread in started:
            thread.start()
        return started


@implementer(IReactorThreads, IReactorFromThreads)
class Reactor(MemoryReactorClock):
    """A MemoryReactorClock with a :class:`Pool` as its thread pool."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(START)
        self.pool = Pool()
        self.from_threads: list[tuple[Callable[..., Any], tuple, dict]] = []

    def getThreadPool(self) -> Pool:
        return self.pool

    # Clock re-sorts every pending call on each callLater and after each call it runs:
    # quadratic in the calls pending, and a flood of thousands of connections holds a
    # timeout each (~1.4 s of sorting for 4,100). Here the calls stay ordered by their
    # ``time`` as a real reactor keeps them: inserted in place, moved when a reset makes
    # one earlier, and one reset later is moved when it comes due (``delayed_time``).

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self.calls.remove,
                           self._moved, self.seconds)
        bisect.insort(self.calls, call, key=_due)
        return call

    def _moved(self, call: DelayedCall) -> None:
        self.calls.remove(call)
        bisect.insort(self.calls, call, key=_due)

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while self.calls and self.calls[0].time <= self.rightNow:
            call = self.calls.pop(0)
            if call.delayed_time:
                call.activate_delay()
                bisect.insort(self.calls, call, key=_due)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)

    def callInThread(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.pool.callInThread(work, *args, **kwargs)

    def callFromThread(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_threads.append((call, args, kwargs))

    def suggestThreadPoolSize(self, size: int) -> None:
        pass

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """Recorded in ``tcpServers``; and the factory started and stopped as a real port
        does (MemoryReactor's port does neither)."""
        listening = super().listenTCP(port, factory, backlog, interface)
        factory.doStart()
        return _Port(listening, factory)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """As the real reactor does it: TLS wrapped around ``factory`` on a TCP port (the
        wrapper asks the Site for its ALPN protocols); recorded in ``sslServers`` too."""
        self.sslServers.append((port, factory, contextFactory, backlog, interface))
        tls = TLSMemoryBIOFactory(contextFactory, False, factory, clock=self)  # its write batching
        return self.listenTCP(port, tls, backlog, interface)

    def run_due(self) -> bool:
        """One reactor turn's timed calls: those due now, in order, and not the ones they
        schedule for now (``advance`` would run those at once, forever for a call that
        keeps rescheduling itself). True if any ran."""
        due = self.calls[:bisect.bisect_right(self.calls, self.rightNow, key=_due)]
        for call in due:
            if not call.active():  # an earlier one cancelled it (and took it off the list)
                continue
            self.calls.remove(call)
            if call.delayed_time:  # reset to later: it waits in its new place
                call.activate_delay()
                bisect.insort(self.calls, call, key=_due)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)
        return bool(due)

    def run_from_threads(self) -> bool:
        ran = bool(self.from_threads)
        while self.from_threads:
            call, args, kwargs = self.from_threads.pop(0)
            call(*args, **kwargs)
        return ran


def _due(call: DelayedCall) -> float:
    return call.time


class _Port:
    """A listening port: started and stopped with its factory, paused and resumed (a real
    port stops reading its socket: new connections wait in the kernel's backlog)."""

    def __init__(self, port: Any, factory: Any) -> None:
        self.port, self.factory = port, factory
        self.connected = self.reading = True

    def getHost(self) -> Any:
        return self.port.getHost()

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def stopListening(self) -> None:
        self.connected = self.reading = False
        self.factory.doStop()
