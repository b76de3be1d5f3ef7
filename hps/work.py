"""Blocking work off the reactor thread, on the pool of the reactor the server was given.

Scans, gzip variants and the listings of big catalogs each block for a while, so
they run in threads. They go through :func:`in_threads` of the service's reactor,
never through the global one (``twisted.internet.threads.deferToThread``): a test's
reactor (``tests/support/memory.py``) then runs that work when the test says, and
the whole server is deterministic in memory.

Work that may hang for long (a registry that never answers) gets a daemon thread of
its own instead, from :func:`in_daemon_threads`: it must neither starve the pool
of threads nor hold up the process's exit. The harness routes it to its pool too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.python.failure import Failure

Runner = Callable[..., Deferred]
"""``run(work, *args, **kwargs)``: a Deferred that fires with ``work``'s result."""


def in_threads(reactor: IReactorThreads) -> Runner:
    """A :data:`Runner` on ``reactor``'s thread pool; the result comes back on its thread."""

    def run(work: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), work, *args, **kwargs)

    return run


def in_daemon_threads(reactor: IReactorFromThreads, name: str | Callable[..., str]) -> Runner:
    """A :data:`Runner` that starts a daemon thread called ``name`` per call (or what
    ``name(*args, **kwargs)`` says for the call's arguments, for ``py-spy`` and stack
    dumps); the result comes back on ``reactor``'s thread."""

    def run(work: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        done: Deferred = Deferred()

        def thread() -> None:
            try:
                result = work(*args, **kwargs)
            except BaseException:  # every failure goes back to the reactor as a Failure
                reactor.callFromThread(done.errback, Failure())
            else:
                reactor.callFromThread(done.callback, result)

        label = name(*args, **kwargs) if callable(name) else name
        threading.Thread(target=thread, name=label, daemon=True).start()
        return done

    return run
