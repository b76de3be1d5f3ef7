"""The server's few mutable facts, shared by the resources and the service.

Everything else is a value: the catalog is swapped whole, never edited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hps.catalog import Catalog
from hps.config import Config


@dataclass
class ServerState:
    config: Config
    catalog: Catalog
    draining: bool = False
    on_swap: list[Callable[[Catalog, Catalog], None]] = field(default_factory=list)

    def swap(self, fresh: Catalog) -> None:
        """Install a new snapshot; listeners (transfer, variants, fast path) get (old, new)."""
        old, self.catalog = self.catalog, fresh
        for listener in self.on_swap:
            listener(old, fresh)

    def unready_reason(self) -> str | None:
        """Why ``/readyz`` must say 503, or None when ready."""
        if self.draining:
            return "draining"
        if not self.catalog.loaded:
            return "catalog not loaded yet"
        if not len(self.catalog) and not self.config.pull_through:
            # With pull-through an empty tree can still serve; never wait on a registry.
            return "catalog holds no artifact"
        return None
