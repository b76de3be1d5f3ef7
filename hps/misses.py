"""Drift you can see: the plugin versions clients asked for that the catalog lacked.

The Console builds URLs from its own bundled versions, so the tree and the
requests drift apart between releases. Every well-formed plugin URL that misses
the catalog is counted here by ``(name, version)``. The table keeps only the
:data:`MAX_PAIRS` most recently missed pairs, so a scanner walking 10,000 made-up
versions costs a fixed amount of memory and of metric labels; a pair pushed out
and asked for again starts counting from one (Prometheus reads it as a reset).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from hps.catalog import Catalog

MAX_PAIRS = 100


@dataclass
class Miss:
    name: str
    version: str
    count: int = 0
    last: float = 0.0  # seconds since the epoch, by the reactor's clock


class Misses:
    """The bounded table of recent misses. Only the reactor thread touches it."""

    def __init__(self, clock: IReactorTime, limit: int = MAX_PAIRS) -> None:
        self.clock = clock
        self.limit = limit
        self.table: OrderedDict[tuple[str, str], Miss] = OrderedDict()
        self.generation = 0
        """Bumped on every change, so a cached page that shows misses knows it is stale."""

    def record(self, name: str, version: str) -> None:
        key = (name, version)
        miss = self.table.pop(key, None) or Miss(name, version)
        miss.count += 1
        miss.last = self.clock.seconds()
        self.table[key] = miss
        if len(self.table) > self.limit:
            self.table.popitem(last=False)
        self.generation += 1

    def recent(self) -> list[Miss]:
        """Newest first."""
        return list(reversed(self.table.values()))

    def missing(self, catalog: Catalog) -> list[Miss]:
        """The recent misses the catalog still lacks (a pull-through may have filled some)."""
        return [m for m in self.recent() if catalog.get(m.name, m.version) is None]
