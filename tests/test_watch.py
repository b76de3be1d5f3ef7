"""The rescanner's debounce and coalescing, on a fake clock."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from hps.watch import DEBOUNCE, Rescanner, Watcher


def make() -> tuple[Rescanner, task.Clock, list[defer.Deferred]]:
    clock = task.Clock()
    calls: list[defer.Deferred] = []

    def scan() -> defer.Deferred:
        calls.append(defer.Deferred())
        return calls[-1]

    return Rescanner(scan, clock), clock, calls


def test_a_burst_costs_one_scan_after_the_debounce() -> None:
    rescanner, clock, calls = make()
    for _ in range(5):
        rescanner.request()
        clock.advance(0.01)
    assert calls == []
    clock.advance(DEBOUNCE)
    assert len(calls) == 1


def test_requests_during_a_scan_cause_exactly_one_more() -> None:
    rescanner, clock, calls = make()
    rescanner.request(0)
    clock.advance(0)
    assert len(calls) == 1
    for _ in range(3):
        rescanner.request(0)
    clock.advance(10)
    assert len(calls) == 1, "never two scans at once"
    calls[0].callback(None)
    clock.advance(DEBOUNCE)
    assert len(calls) == 2
    calls[1].callback(None)
    clock.advance(10)
    assert len(calls) == 2, "nothing changed since the second scan started"


def test_a_failed_scan_does_not_wedge_the_rescanner() -> None:
    rescanner, clock, calls = make()
    rescanner.request(0)
    clock.advance(0)
    calls[0].errback(RuntimeError("disk gone"))
    rescanner.request(0)
    clock.advance(0)
    assert len(calls) == 2


def test_stop_cancels_a_pending_scan() -> None:
    rescanner, clock, calls = make()
    rescanner.request()
    rescanner.stop()
    clock.advance(10)
    assert calls == []


class FullNotifier:
    """A notifier that hit the per-user watch limit."""

    def __init__(self) -> None:
        self.closed = False

    def watch(self, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device (inotify watches)")

    def loseConnection(self) -> None:
        self.closed = True


def test_a_failed_watch_closes_the_notifier_warns_once_and_retries(tmp_path) -> None:
    clock = task.Clock()
    watcher = Watcher(str(tmp_path), lambda: defer.succeed(None), 30.0, clock, use_inotify=False)
    watcher.startService()
    warnings: list[str] = []
    observer = lambda event: warnings.append(event.get("log_format") or "")  # noqa: E731
    globalLogPublisher.addObserver(observer)
    retries = []
    watcher.start_notifier = lambda: retries.append(clock.seconds())  # type: ignore
    for _ in range(3):
        notifier = watcher.notifier = FullNotifier()
        watcher.add_watches(([str(tmp_path)], []), notifier)
        clock.advance(0)
        assert notifier.closed and watcher.notifier is None
        clock.advance(30)
    globalLogPublisher.removeObserver(observer)
    assert sum("inotify unavailable" in w for w in warnings) == 1
    assert retries == [30.0, 60.0, 90.0]
    watcher.stopService()
