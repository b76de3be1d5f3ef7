"""Graceful drain on SIGTERM; Twisted has none of its own.

twistd answers SIGTERM by calling ``stopService`` and waiting on its Deferred.
:class:`Drain` is the parent of the listeners, so it decides when they stop
(``MultiService`` would stop all children at once):

1. at once: ``/readyz`` says 503 and new responses carry ``Connection: close``;
2. after ``drain_delay``: the ports close (load balancers have seen the 503
   by then) and idle keep-alive connections are closed;
3. responses in flight finish, for up to ``drain_timeout``;
4. whatever is left is aborted, and the process exits 0.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps import metrics
from hps._twisted import forget_exit_signal
from hps.site import PluginSite
from hps.state import ServerState


class Drain(MultiService):
    """Holds the listeners; stopping it drains the site before the process ends."""

    log = Logger()

    def __init__(self, state: ServerState, site: PluginSite, delay: float, timeout: float,
                 clock: IReactorTime) -> None:
        super().__init__()
        self.state = state
        self.site = site
        self.delay = delay
        self.timeout = timeout
        self.clock = clock

    def stopService(self) -> defer.Deferred:
        self.state.draining = True
        metrics.observe_draining(True)
        self.site.begin_drain()
        self.log.info("draining: readyz says 503; ports close in {delay}s, "
                      "{count} connections open", delay=self.delay,
                      count=len(self.site.connections))
        d = task.deferLater(self.clock, self.delay, lambda: None)
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(lambda _: self.wait_for_responses())
        d.addCallback(self.exit_cleanly)
        return d

    def exit_cleanly(self, _: object) -> None:
        # twistd re-raises the stopping signal at exit (status 143). A drain that ran its
        # course is a clean stop, and Kubernetes and systemd read 0 as exactly that.
        forget_exit_signal(self.clock)

    def wait_for_responses(self) -> defer.Deferred:
        started = self.clock.seconds()
        self.site.close_idle()
        waiting = self.site.wait_closed()
        waiting.addTimeout(self.timeout, self.clock)
        waiting.addCallback(lambda _: self.log.info(
            "drained: every response finished in {seconds:.1f}s",
            seconds=self.clock.seconds() - started))
        waiting.addErrback(self.give_up)
        return waiting

    def give_up(self, failure: Failure) -> None:
        failure.trap(defer.TimeoutError)
        count = self.site.abort_all("drain_timeout")
        self.log.warn("drain timeout after {timeout}s: aborted {count} connections",
                      timeout=self.timeout, count=count)
