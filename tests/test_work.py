"""Unit: blocking work runs on the pool of the reactor it was given, results come back."""

from __future__ import annotations

from hps.work import in_threads
from tests.support.memory import Reactor


def test_work_waits_for_the_reactors_pool_and_returns_on_its_thread() -> None:
    reactor = Reactor()
    got: list[object] = []
    in_threads(reactor)(lambda a, b=0: a + b, 2, b=3).addCallback(got.append)
    assert got == [] and len(reactor.pool.queue) == 1, "nothing runs until the pool does"
    reactor.pool.run()
    assert got == [], "the result is handed back through callFromThread"
    reactor.run_from_threads()
    assert got == [5]


def test_a_failure_comes_back_as_a_failure() -> None:
    reactor = Reactor()
    failures: list[object] = []
    in_threads(reactor)(lambda: 1 / 0).addErrback(lambda f: failures.append(f.type))
    reactor.pool.run()
    reactor.run_from_threads()
    assert failures == [ZeroDivisionError]
