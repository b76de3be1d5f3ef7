"""Unit: blocking work runs on the pool of the reactor it was given (or, when it may hang,
on a daemon thread of its own); results come back on the reactor's thread."""

from __future__ import annotations

import threading

from hps.work import in_daemon_threads, in_threads
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


def test_work_that_may_hang_gets_a_daemon_thread_of_its_own() -> None:
    reactor = Reactor()
    seen: list[tuple[str, bool]] = []
    got: list[object] = []

    def work(a: int) -> int:
        seen.append((threading.current_thread().name, threading.current_thread().daemon))
        return a * 2

    run = in_daemon_threads(reactor, "upstream fetch")
    run(work, 21).addCallback(got.append)
    run(lambda: 1 / 0).addErrback(lambda f: got.append(f.type))
    for thread in [t for t in threading.enumerate() if t.name == "upstream fetch"]:
        thread.join(10)
    assert reactor.pool.queue == [], "not the pool: a hung registry must not starve it"
    assert seen == [("upstream fetch", True)] and got == []
    reactor.run_from_threads()
    assert sorted(got, key=str) == [42, ZeroDivisionError]


def test_a_daemon_thread_may_be_named_for_its_arguments() -> None:
    reactor = Reactor()
    got: list[object] = []
    run = in_daemon_threads(reactor, lambda name, version: f"upstream fetch {name} {version}")
    run(lambda name, version: threading.current_thread().name, "ai-proxy", "1.0.0").addCallback(
        got.append)
    for thread in [t for t in threading.enumerate() if t.name.startswith("upstream fetch ")]:
        thread.join(10)
    reactor.run_from_threads()
    assert got == ["upstream fetch ai-proxy 1.0.0"]
