"""Keep the catalog fresh: inotify as a hint, a periodic rescan as the truth.

inotify drops events when its queue overflows, and Twisted's notifier closes
itself when any watched directory is deleted, so events only *hint* that
something changed. Every hint, the periodic timer and ``SIGHUP`` all end in
the same :meth:`Rescanner.request`, which:

- debounces: a burst of events (a copy, an unpacked release) costs one scan;
- coalesces: one scan at a time; requests during a scan cause exactly one more.

The scan itself (``CatalogLoader.rescan``) runs in a thread and swaps in an
immutable snapshot, reusing digests of unchanged files.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from hps.guard import hidden_or_temporary
from hps.work import in_threads

if TYPE_CHECKING:  # Linux-only: imported where used, so other systems can still load hps
    from twisted.internet.inotify import INotify

DEBOUNCE = 0.25

Scan = Callable[[], defer.Deferred]


class Rescanner:
    """Debounced, coalesced calls of ``scan``: never two at once, never a lost request."""

    def __init__(self, scan: Scan, clock: IReactorTime, debounce: float = DEBOUNCE) -> None:
        self.scan = scan
        self.clock = clock
        self.debounce = debounce
        self.pending: IDelayedCall | None = None
        self.running: defer.Deferred | None = None
        self.again = False

    def request(self, delay: float | None = None) -> None:
        """Ask for a scan ``delay`` seconds from now (default: the debounce)."""
        if self.running is not None:
            self.again = True  # the scan in progress may have missed this change
            return
        if self.pending is not None and self.pending.active():
            return  # a scan is already due soon; a burst costs one scan
        self.pending = self.clock.callLater(self.debounce if delay is None else delay, self.run)

    def run(self) -> defer.Deferred:
        self.pending = None
        self.again = False
        self.running = defer.maybeDeferred(self.scan)
        self.running.addBoth(self.done)
        return self.running

    def done(self, result: object) -> object:
        self.running = None
        if self.again:
            self.again = False
            self.request()
        return None  # the loader logs its own failures

    def stop(self) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None


class Watcher(Service):
    """The tree's watcher: inotify hints, a periodic rescan and SIGHUP."""

    log = Logger()

    def __init__(self, root: str, scan: Scan, interval: float, clock: IReactorTime,
                 use_inotify: bool = True, hangup: bool = False) -> None:
        self.root = root
        self.rescanner = Rescanner(scan, clock)
        self.interval = interval
        self.clock = clock
        self.use_inotify = use_inotify
        self.hangup = hangup
        self.notifier: INotify | None = None
        self.periodic = LoopingCall(self.rescanner.request, 0)
        self.periodic.clock = clock
        self._retry: IDelayedCall | None = None
        self.degraded = False
        """inotify failed somewhere and the periodic rescan is in charge (warned once)."""
        self.cooperator = task.Cooperator(scheduler=lambda work: clock.callLater(0, work))
        """Adds watches a slice at a time, on ``clock`` (not the global reactor)."""

    def startService(self) -> None:
        super().startService()
        self.rescanner.request(0)  # the first scan: readiness waits for it
        self.periodic.start(self.interval, now=False)
        if self.use_inotify:
            self.start_notifier()
        if self.hangup:
            signal.signal(signal.SIGHUP, self.on_sighup)

    def stopService(self) -> None:
        super().stopService()
        if self.periodic.running:
            self.periodic.stop()
        self.rescanner.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        notifier, self.notifier = self.notifier, None
        if notifier is not None:
            notifier.loseConnection()

    def on_sighup(self, signum: int, frame: object) -> None:
        # A signal handler runs between bytecodes, possibly mid-reactor; hand over safely.
        self.clock.callFromThread(self.sighup)

    def sighup(self) -> None:
        self.log.info("SIGHUP: rescanning {root}", root=self.root)
        self.rescanner.request(0)

    def start_notifier(self) -> None:
        """Watch the whole tree; new directories are added as they appear.

        Twisted's own recursive watch walks the tree on the reactor thread,
        following symlinks (~19 s for 20,000 directories, and a symlink cycle makes
        it fail); here the walk runs in a thread without following symlinks (an
        alias's target is inside the root and watched anyway) and the watches are
        added a slice at a time. A tree inotify cannot watch (the per-user watch
        limit, no inotify) leaves the periodic rescan in charge: one warning, the
        half-built notifier closed (its descriptor is per user, shared by every pod
        of a node), and a quiet retry every rescan interval.
        """
        self._retry = None
        try:
            notifier = _Notifier(self.clock, self.notifier_died)
            notifier.startReading()
        except Exception as err:  # no inotify, too many instances: "poll"
            self.degrade(None, err)
            return
        self.notifier = notifier
        self.add_tree(self.root)

    def add_tree(self, top: str) -> defer.Deferred:
        notifier = self.notifier
        if notifier is None:
            return defer.succeed(None)  # being rebuilt: the new one walks the whole tree
        walking = in_threads(self.clock)(directories, top)
        walking.addCallback(self.add_watches, notifier)
        walking.addErrback(lambda failure: self.degrade(notifier, failure.value))
        return walking

    def add_watches(self, walked: tuple[list[str], list[str]],
                    notifier: INotify | None) -> defer.Deferred:
        found, unreadable = walked
        if unreadable and not self.degraded:
            self.degraded = True
            more = ", ..." if len(unreadable) > 3 else ""
            self.log.warn("cannot watch {paths} (unreadable); the periodic rescan covers them",
                          paths=", ".join(unreadable[:3]) + more)

        def adding() -> Iterator[None]:
            from twisted.internet import inotify

            for path in found:
                if notifier is None or notifier is not self.notifier:
                    return  # stopped, died or replaced meanwhile
                try:
                    notifier.watch(FilePath(path), mask=_mask(inotify), callbacks=[self.notified])
                except Exception as err:
                    if os.path.isdir(path):  # else it went away meanwhile: nothing to watch
                        self.degrade(notifier, err)
                        return
                yield None

        return self.cooperator.cooperate(adding()).whenDone()

    def degrade(self, notifier: INotify | None, err: object) -> None:
        """inotify cannot watch the tree: close what was built, warn once, retry later."""
        if notifier is not None:
            if notifier is self.notifier:
                self.notifier = None
            notifier.loseConnection()
        if not self.degraded:
            self.degraded = True
            self.log.warn("inotify unavailable ({err}); rescanning every {interval}s only",
                          err=err, interval=self.interval)
        if self.running and (self._retry is None or not self._retry.active()):
            self._retry = self.clock.callLater(self.interval, self.start_notifier)

    def notified(self, watch: object, path: FilePath, mask: int) -> None:
        name = os.fsdecode(path.basename())
        if hidden_or_temporary(name):
            return  # a file still being written; its final rename will be seen
        if mask & IN_ISDIR and mask & NEW and not path.islink():
            self.add_tree(path.path)  # a new directory (with whatever it holds already)
        self.rescanner.request()

    def notifier_died(self, notifier: INotify) -> None:
        """A watched directory went away and took the notifier with it: rebuild it."""
        if notifier is not self.notifier or not self.running:
            return
        self.notifier = None
        self.rescanner.request()
        self._retry = self.clock.callLater(DEBOUNCE, self.start_notifier)


IN_ISDIR = 0x40000000
NEW = 0x00000100 | 0x00000080
"""IN_CREATE | IN_MOVED_TO (the inotify ABI), without importing the Linux-only module."""


def directories(top: str) -> tuple[list[str], list[str]]:
    """(every directory under ``top``, those that could not be read); symlinks not followed.

    Runs in a thread: it only lists directories.
    """
    found: list[str] = []
    unreadable: list[str] = []
    for here, _, _ in os.walk(top, onerror=lambda err: unreadable.append(str(err.filename))):
        found.append(here)
    return found, unreadable


def _mask(inotify: ModuleType) -> int:
    return (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
            | inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB | inotify.IN_DELETE_SELF
            | inotify.IN_MOVE_SELF)


def _Notifier(reactor: IReactorTime, on_lost: Callable[[INotify], None]) -> INotify:
    """An ``INotify`` that says when it closes itself."""
    from twisted.internet import inotify

    class Notifier(inotify.INotify):
        def connectionLost(self, reason: object) -> None:
            super().connectionLost(reason)
            on_lost(self)

    return Notifier(reactor)
