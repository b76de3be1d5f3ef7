"""Blocking work off the reactor thread, on the pool of the reactor the server was given.

Scans, gzip variants and the listings of big catalogs each block for a while, so
they run in threads. They go through :func:`in_threads` of the service's reactor,
never through the global one (``twisted.internet.threads.deferToThread``): a test's
reactor (``tests/support/memory.py``) then runs that work when the test says, and
the whole server is deterministic in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

Runner = Callable[..., Deferred]
"""``run(work, *args, **kwargs)``: a Deferred that fires with ``work``'s result."""


def in_threads(reactor: IReactorThreads) -> Runner:
    """A :data:`Runner` on ``reactor``'s thread pool; the result comes back on its thread."""

    def run(work: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), work, *args, **kwargs)

    return run
