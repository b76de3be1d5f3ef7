"""Wiring: state, Site, fast path, watcher, drain and listeners, all in one place.

``make_service`` returns a plain ``MultiService`` so twistd owns start-up and
shutdown; the reactor is a parameter so tests can pass a fake one. The watcher
owns every catalog scan, the first included; :class:`CatalogLoader` runs one
off the reactor thread and swaps the snapshot in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from hps import catalog, fastpath, memory, metrics
from hps.access import AccessLog
from hps.config import Config, ConfigError, cache_tree, fail
from hps.drain import Drain
from hps.files import Source
from hps.limits import Limits
from hps.misses import Misses
from hps.resources import Root
from hps.served import ServedRecord
from hps.site import PluginSite
from hps.state import ServerState
from hps.transfer import Policy, Transfer
from hps.upstream import make_upstream
from hps.variants import GzipVariants
from hps.watch import Watcher
from hps.work import Runner, in_threads

LISTEN_BACKLOG = 4096
"""Twisted's default of 50 overflows when many gateways connect at once (a rollout, a
benchmark's 1,000 connections): dropped SYNs retry after 1 s, which is the p99. And while
the TLS handshake gate holds a TLS port (hps.admission), a herd waits here: with 1,024, a
4,000-client TLS herd overflowed it and hundreds of clients saw resets; with 4,096, none.
The kernel caps it at ``net.core.somaxconn`` (4096 on current kernels)."""

_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "ssl": 5, "tls": 2}
"""Index of ``backlog`` among each endpoint type's positional arguments (after the type)."""
TLS_ENDPOINTS = ("ssl", "tls")
"""Endpoint types whose connections do TLS handshakes (the handshake gate pauses them)."""


def _fields(description: str) -> list[tuple[str, bool]]:
    """Each ``:``-separated field as (its text before any ``=``, unescaped; has ``=``).

    Follows Twisted's endpoint syntax: ``\\`` escapes the next character, so ``\\:`` and
    ``\\=`` are literal.
    """
    fields: list[tuple[str, bool]] = []
    head, assigned, chars = "", False, iter(description)
    for char in chars:
        if char == "\\":
            if not assigned:
                head += next(chars, "")
            else:
                next(chars, "")
        elif char == ":":
            fields.append((head, assigned))
            head, assigned = "", False
        elif char == "=" and not assigned:
            assigned = True
        elif not assigned:
            head += char
    fields.append((head, assigned))
    return fields


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """``description`` with ``:backlog=N`` added to TCP-based endpoints that do not set one.

    The operator's own ``backlog`` (by name or by position) always wins; other endpoint
    types (unix, systemd, plugins) are returned unchanged.
    """
    fields = _fields(description)
    position = _BACKLOG_POSITION.get(fields[0][0])
    if position is None or fields[0][1]:
        return description
    positional = 0
    for key, assigned in fields[1:]:
        if not assigned:
            positional += 1
        elif key == "backlog":
            return description
    if positional > position:
        return description
    return f"{description}:backlog={backlog}"


class Listener(Service):
    """Listen on one endpoint; a port that cannot be bound ends the process."""

    log = Logger()

    def __init__(self, description: str, endpoint: IStreamServerEndpoint, site: Site) -> None:
        self.description = description
        self.endpoint = endpoint
        self.site = site
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list[Any] = []
        self.endpoint.listen(self.site).addBoth(outcome.append)
        # TCP, SSL and UNIX endpoints answer at once; fail before the reactor runs.
        if outcome and isinstance(outcome[0], Failure):
            fail(ConfigError(f"cannot listen on {self.description}: {outcome[0].value}"))
        if outcome:
            self.port = outcome[0]
            if _fields(self.description)[0][0] in TLS_ENDPOINTS and hasattr(
                    self.port, "stopReading"):
                self.site.admission.tls_ports.append(self.port)
            address = self.port.getHost()
            self.log.info("hps listening on {host}:{port} ({description})",
                          host=getattr(address, "host", address),
                          port=getattr(address, "port", ""), description=self.description)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.port in self.site.admission.tls_ports:
            self.site.admission.tls_ports.remove(self.port)
        return self.port.stopListening() if self.port else None


class CatalogLoader:
    """Scan the tree off the reactor thread and swap the snapshot in (the watcher calls it)."""

    log = Logger()

    def __init__(self, state: ServerState, roots: list[str], run: Runner,
                 prune: Callable[[catalog.Catalog], catalog.Catalog] | None = None) -> None:
        self.state = state
        self.run = run
        self.roots = roots
        """The served tree first (it wins a conflict), then the pull-through cache tree."""
        self.prune = prune or (lambda fresh: fresh)
        """What a scan found, less what pull-through evicted while it ran (Upstream.prune)."""

    def rescan(self) -> Deferred:
        # The unloaded snapshot holds no artifacts, so passing it reuses nothing, as None would.
        d = self.run(catalog.scan_trees, self.roots, self.state.catalog)
        d.addCallbacks(self.swap, self.failed)
        return d

    def swap(self, fresh: catalog.Catalog) -> catalog.Catalog:
        fresh = self.prune(fresh)
        old = self.state.catalog
        for reason in sorted(fresh.skipped - old.skipped):
            self.log.warn("skipped {reason}", reason=reason)
        self.state.swap(fresh)
        metrics.observe_reload(True)
        if len(fresh) != len(old) or not old.loaded:
            self.log.info("catalog holds {count} artifacts from {root}",
                          count=len(fresh), root=fresh.root)
        return fresh

    def failed(self, failure: Failure) -> None:
        metrics.observe_reload(False)
        self.log.failure("catalog scan failed", failure)


def make_service(config: Config, reactor: IReactorCore | None = None) -> MultiService:
    """The whole server on ``reactor`` (its clock, TCP, threads and events; the global one
    by default): twistd's ``makeService``, and the in-memory tests' harness."""
    if reactor is None:
        from twisted.internet import reactor
    state = ServerState(config=config, catalog=catalog.unloaded(config.root))
    metrics.track_catalog(lambda: len(state.catalog))
    # One transfer (policy, open files, gzip variants), shared by twisted.web and the fast path.
    run = in_threads(reactor)
    # The one place the gzip knob is read: without variants, nothing is served gzipped.
    variants = GzipVariants(config.cache_dir, run=run) if config.gzip else None
    if variants is not None:
        state.on_swap.append(variants.on_swap)
    metrics.track_variants(lambda: variants.pending if variants is not None else 0)
    transfer = Transfer(Policy.from_config(config.cache_max_age, config.immutable),
                        variants=variants)
    state.on_swap.append(transfer.on_swap)
    misses = Misses(reactor)
    metrics.track_misses(lambda: [(m.name, m.version, m.count) for m in misses.recent()],
                         lambda: [(m.name, m.version, 1) for m in misses.missing(state.catalog)])
    metrics.track_ready(lambda: state.unready_reason() is None)
    # Read by the swap (never by a request): what each URL first served, and what changed.
    served = ServedRecord(config.cache_dir, run)
    state.on_swap.append(served.on_swap)
    metrics.track_changes(lambda: [(*key, n) for key, n in served.changes.items()],
                          lambda: [(c.name, c.version, 1) for c in served.changed])
    try:
        upstream = make_upstream(state, reactor)
    except ConfigError as err:
        fail(err)
    roots = [config.root, cache_tree(config.cache_dir)] if upstream else [config.root]
    site = PluginSite(Root(state, transfer, misses, upstream, reactor, served), state=state,
                      limits=Limits.from_config(config),
                      access=AccessLog(config.access_log, config.trust_forwarded, clock=reactor),
                      reactor=reactor, open_files=lambda: Source.open,
                      memory_limit=memory.resolve(config.memory_limit))
    fastpath.install(state, site, transfer)
    # Access lines are batched between sweeps; the last ones (drain, disconnectAll) go
    # out after every connection is closed.
    reactor.addSystemEventTrigger("after", "shutdown", site.access.flush)
    top = MultiService()
    # The watcher owns every scan, the first included, so two never race.
    loader = CatalogLoader(state, roots, run, upstream.prune if upstream else None)
    watcher = Watcher(config.root, loader.rescan, config.rescan_interval, reactor, hangup=True)
    watcher.setServiceParent(top)
    if upstream:
        upstream.rescan = watcher.rescanner.request
        transfer.served = upstream.touch
    # Listeners are children of the drain, which decides when they stop (see hps.drain).
    front = Drain(state, site, config.drain_delay, config.drain_timeout, reactor)
    front.setServiceParent(top)
    for description in config.listen:
        try:
            endpoint = serverFromString(reactor, with_backlog(description))
        except Exception as err:  # endpoint parsers raise many types; all mean "bad string"
            fail(ConfigError(f"cannot use listen endpoint {description!r}: {err}"))
        Listener(description, endpoint, site).setServiceParent(front)
    return top
