"""Prometheus metrics, all named ``hps_*``, in a registry of our own.

prometheus-client gives the standard text exposition format and the naming
rules (``_total`` counters, ``_bytes`` units) that scrapers and dashboards
expect, so we do not hand-roll either. A private :class:`CollectorRegistry`
keeps the process's default registry (and other tests' servers) out of it.

The functions here are what every response path calls, twisted.web's and the
fast path's alike, so both count the same way:

- :func:`observe_response` once per finished response,
- :func:`observe_download` once per artifact body sent with status 200/206.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hps import urls

# ``*_created`` series double the scrape for no use here; the setting is process-wide.
disable_created_metrics()

ROUTES = frozenset({
    "artifact", "metadata", "listing", "index", "landing", "health", "ready", "metrics",
    "notfound", "redirect", "other",
})
"""Route kinds; anything else is counted as ``other`` so labels stay bounded."""

REGISTRY = CollectorRegistry(auto_describe=True)


class ResponseCounts(Collector):
    """The per-response counters, kept as plain ints and exposed at scrape time.

    Every response bumps three of these. ``Counter.labels(...).inc()`` costs a label
    lookup, a lock and a float per call (~0.3 s per 12,000 responses in a profile of
    the fast path); a dict increment costs almost nothing, and a scrape is rare. Only
    the reactor thread touches them, as it does every response. Names, labels and
    values are exactly what the ``Counter`` versions exposed.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.sent: dict[str, int] = {}
        self.downloads: dict[tuple[str, str], int] = {}

    def families(self, with_samples: bool) -> list[Metric]:
        requests = CounterMetricFamily(
            "hps_requests", "Responses finished, by route kind and status code.",
            labels=["route", "status"])
        sent = CounterMetricFamily(
            "hps_sent_bytes", "Response body bytes handed to clients, by route kind.",
            labels=["route"])
        downloads = CounterMetricFamily(
            "hps_downloads", "Artifact bodies served (200 or 206), by plugin and version.",
            labels=["plugin", "version"])
        if with_samples:
            for (route, status), count in list(self.requests.items()):
                requests.add_metric([route, str(status)], count)
            for route, total in list(self.sent.items()):
                sent.add_metric([route], total)
            for (name, version), count in list(self.downloads.items()):
                downloads.add_metric([name, version], count)
        return [requests, sent, downloads]

    def describe(self) -> Iterable[Metric]:
        return self.families(False)

    def collect(self) -> Iterable[Metric]:
        return self.families(True)


class Table(Collector):
    """One labelled family whose samples are read at scrape time from a bounded table of the
    server's (``table()`` yields ``(*label values, value)``), so its label sets are as
    bounded as the table."""

    def __init__(self, family: type[CounterMetricFamily | GaugeMetricFamily], name: str,
                 documentation: str, labels: list[str]) -> None:
        self.family, self.name, self.documentation, self.labels = (
            family, name, documentation, labels)
        self.table: Callable[[], Iterable[tuple[Any, ...]]] = lambda: ()

    def families(self, with_samples: bool) -> list[Metric]:
        metric = self.family(self.name, self.documentation, labels=self.labels)
        if with_samples:
            for *labels, value in self.table():
                metric.add_metric(labels, value)
        return [metric]

    def describe(self) -> Iterable[Metric]:
        return self.families(False)

    def collect(self) -> Iterable[Metric]:
        return self.families(True)


COUNTS = ResponseCounts()
REGISTRY.register(COUNTS)
MISSES = Table(
    CounterMetricFamily, "hps_misses", "Requests for a well-formed plugin URL the catalog "
    "lacked, by plugin and version (the most recent distinct pairs only).", ["plugin", "version"])
MISSING = Table(
    GaugeMetricFamily, "hps_version_missing", "1 for each recently requested version the "
    "catalog still lacks (what the landing page lists), by plugin and version.",
    ["plugin", "version"])
CHANGES = Table(
    CounterMetricFamily, "hps_artifact_changes", "Catalog swaps that brought other bytes for a "
    "plugin version already served, by plugin and version (since this process started).",
    ["plugin", "version"])
CHANGED = Table(
    GaugeMetricFamily, "hps_artifact_changed", "1 for each plugin version whose bytes differ "
    "from those it first served (index.json \"changed\"; kept across restarts with cache_dir).",
    ["plugin", "version"])
for _table in (MISSES, MISSING, CHANGES, CHANGED):
    REGISTRY.register(_table)
IN_FLIGHT = Gauge("hps_responses_in_flight", "Responses started and not yet finished.",
                  registry=REGISTRY)
CONNECTIONS = Gauge("hps_connections_open", "Client connections currently open.",
                    registry=REGISTRY)
SHED = Counter("hps_connections_shed", "Connections refused with 503 at the connection cap.",
               registry=REGISTRY)
ABORTED = Counter("hps_responses_aborted", "Connections cut by the server, by reason.",
                  ["reason"], registry=REGISTRY)
REFUSED = Counter("hps_requests_refused", "Requests refused before routing, by reason.",
                  ["reason"], registry=REGISTRY)
CATALOG = Gauge("hps_catalog_artifacts", "Artifacts in the catalog snapshot being served.",
                registry=REGISTRY)
RELOADS = Counter("hps_catalog_reloads", "Catalog rescans that finished and were swapped in.",
                  registry=REGISTRY)
RELOAD_ERRORS = Counter("hps_catalog_reload_errors", "Catalog rescans that failed.",
                        registry=REGISTRY)
FETCHES = Counter("hps_upstream_fetches", "Pull-through fetches that ended, by outcome: "
                  "fetched, missing (404) or failed (503).", ["outcome"], registry=REGISTRY)
EVICTIONS = Counter("hps_upstream_evictions", "Pulled-through modules evicted from the cache "
                    "tree to make room, the least recently served first.", registry=REGISTRY)
GZIP_PENDING = Gauge("hps_gzip_variants_pending",
                     "Modules whose gzip variant is still being checked or compressed.",
                     registry=REGISTRY)
GZIP_PRUNED = Counter("hps_gzip_variants_pruned", "Files deleted from the gzip cache: variants "
                      "no served module needs, and temporaries a crash left.", registry=REGISTRY)
BODIES_SENDING = Gauge("hps_h2_bodies_sending", "Response bodies (HTTP/2, and HTTP/1.1 over "
                       "TLS) holding a turn to be sent (at most hps.bodies.ACTIVE_BODIES at "
                       "once).", registry=REGISTRY)
BODIES_WAITING = Gauge("hps_h2_bodies_waiting", "Response bodies (HTTP/2, and HTTP/1.1 over "
                       "TLS) waiting, in arrival order, for a turn to be sent.", registry=REGISTRY)
BODIES_WAITED = Counter("hps_h2_bodies_waited", "Response bodies (HTTP/2, and HTTP/1.1 over "
                        "TLS) that had to wait for a turn.", registry=REGISTRY)
BODIES_STALLED = Counter("hps_h2_bodies_stalled", "Turns given back by response bodies (HTTP/2, "
                         "and HTTP/1.1 over TLS) that made no progress while others waited.",
                         registry=REGISTRY)
BODIES_TURNED_AWAY = Counter("hps_bodies_turned_away", "HTTP/1.1 requests over TLS answered "
                             "503 + Retry-After because no body turn came within "
                             "hps.bodies.TURN_WAIT.", registry=REGISTRY)
MEMORY_LIMIT = Gauge("hps_memory_limit_bytes", "The memory limit admission works under (the "
                     "cgroup's, or --memory-limit); 0: none.", registry=REGISTRY)
MEMORY_BUDGET = Gauge("hps_memory_budget_bytes", "The limit less its headroom: what the idle "
                      "server and its connections may hold; 0: no limit.", registry=REGISTRY)
MEMORY_HELD = Gauge("hps_memory_estimate_bytes", "What admission counts as held: the idle "
                    "server's resident size plus every open connection's charge.",
                    registry=REGISTRY)
MEMORY_RESIDENT = Gauge("hps_memory_resident_bytes", "The process's resident size at the last "
                        "sweep.", registry=REGISTRY)
MEMORY_SHED = Counter("hps_memory_shed", "New connections that did not fit the memory budget "
                      "(an idle one evicted for them, or probes only, or 503).",
                      registry=REGISTRY)
HANDSHAKES = Gauge("hps_tls_handshakes", "TLS handshakes under way that hold the handshake "
                   "gate.", registry=REGISTRY)
GATE_CLOSED = Counter("hps_tls_gate_closed", "Times the TLS ports stopped accepting because "
                      "too many handshakes were under way.", registry=REGISTRY)
DRAINING = Gauge("hps_draining", "1 while the server drains before exiting, else 0.",
                 registry=REGISTRY)
READY = Gauge("hps_ready", "1 while /readyz answers 200, else 0 (catalog not loaded yet, "
              "empty, or draining).", registry=REGISTRY)


def route_label(route: str, status: int) -> str:
    """The ``route`` label of a response: the kind the router chose, unless the status says
    the page was not there (404) or elsewhere (a redirect)."""
    if status == 404:
        return "notfound"
    if status in (301, 302, 307, 308):
        return "redirect"
    return route


def artifact_of(uri: bytes) -> tuple[str, str]:
    """``(name, version)`` from ``/plugins/<name>/<version>/plugin.wasm[?query]``."""
    found = urls.split_file_path(uri.decode("latin-1"))
    return (found[0], found[1]) if found else ("", "")


def observe_response(route: str, status: int, nbytes: int) -> None:
    """Count one finished response of ``nbytes`` body bytes."""
    kind = route if route in ROUTES else "other"
    key = (kind, status)
    requests = COUNTS.requests
    requests[key] = requests.get(key, 0) + 1
    if nbytes > 0:
        COUNTS.sent[kind] = COUNTS.sent.get(kind, 0) + nbytes


def observe_download(name: str, version: str) -> None:
    """Count one artifact body served; callers pass only catalog names (bounded)."""
    key = (name, version)
    downloads = COUNTS.downloads
    downloads[key] = downloads.get(key, 0) + 1


def observe_reload(ok: bool) -> None:
    (RELOADS if ok else RELOAD_ERRORS).inc()


def observe_fetch(outcome: str) -> None:
    FETCHES.labels(outcome).inc()


def observe_eviction() -> None:
    EVICTIONS.inc()


def observe_pruned(files: int) -> None:
    GZIP_PRUNED.inc(files)


def observe_draining(draining: bool) -> None:
    DRAINING.set(1 if draining else 0)


def observe_abort(reason: str) -> None:
    ABORTED.labels(reason).inc()


def observe_refused(reason: str) -> None:
    REFUSED.labels(reason).inc()


def observe_shed() -> None:
    SHED.inc()


def track(in_flight: Callable[[], float], connections: Callable[[], float]) -> None:
    """Read the live gauges from the site's own counters at scrape time."""
    IN_FLIGHT.set_function(in_flight)
    CONNECTIONS.set_function(connections)


def track_bodies(sending: Callable[[], float], waiting: Callable[[], float]) -> None:
    """Read the body turns (hps.bodies) at scrape time."""
    BODIES_SENDING.set_function(sending)
    BODIES_WAITING.set_function(waiting)


def observe_body_waited() -> None:
    BODIES_WAITED.inc()


def observe_body_stalled() -> None:
    BODIES_STALLED.inc()


def observe_body_turned_away() -> None:
    BODIES_TURNED_AWAY.inc()


def observe_memory_shed() -> None:
    MEMORY_SHED.inc()


def observe_gate_closed() -> None:
    GATE_CLOSED.inc()


def track_memory(admission: Any) -> None:
    """Read the memory budget's figures from ``admission`` (hps.admission) at scrape time."""
    MEMORY_LIMIT.set_function(lambda: admission.limit.bytes or 0)
    MEMORY_BUDGET.set_function(lambda: admission.budget or 0)
    MEMORY_HELD.set_function(lambda: admission.base + admission.charged)
    MEMORY_RESIDENT.set_function(lambda: admission.resident)
    HANDSHAKES.set_function(lambda: len(admission.handshakes))


def track_misses(table: Callable[[], Iterable[tuple[str, str, int]]],
                 missing: Callable[[], Iterable[tuple[str, str, int]]] = lambda: ()) -> None:
    """Expose the server's table of recent misses as ``hps_misses_total``, and those the
    catalog still lacks as ``hps_version_missing``."""
    MISSES.table = table
    MISSING.table = missing


def track_changes(changes: Callable[[], Iterable[tuple[str, str, int]]],
                  changed: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
    """Expose the record of served digests (:mod:`hps.served`): ``hps_artifact_changes_total``
    and ``hps_artifact_changed``."""
    CHANGES.table = changes
    CHANGED.table = changed


def track_ready(ready: Callable[[], float]) -> None:
    READY.set_function(ready)


def track_catalog(size: Callable[[], float]) -> None:
    """The catalog's size, read at scrape time: every swap counts (rescans, pull-through
    fetches and evictions alike)."""
    CATALOG.set_function(size)


def track_variants(pending: Callable[[], float]) -> None:
    GZIP_PENDING.set_function(pending)


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
