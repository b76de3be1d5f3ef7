"""The server's few mutable facts, shared by the resources and the service.

Everything else is a value: the catalog is swapped whole, never edited.
"""

from __future__ import annotations

from dataclasses import dataclass

from hps.catalog import Catalog
from hps.config import Config


@dataclass
class ServerState:
    config: Config
    catalog: Catalog
    draining: bool = False

    def unready_reason(self) -> str | None:
        """Why ``/readyz`` must say 503, or None when ready."""
        if self.draining:
            return "draining"
        if not self.catalog.loaded:
            return "catalog not loaded yet"
        if not len(self.catalog):
            return "catalog holds no artifact"
        return None
