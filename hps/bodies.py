"""Artifact bytes held in memory, under a budget, shared by every response.

Keyed by content (SHA-256), so aliases and every concurrent download of one
module share a single ``bytes`` object; responses hand the transport slices of
it, never a per-client copy of the whole body.

Bodies are loaded lazily: the first request for an artifact is served from
the file while a thread reads, verifies and gzips it. Eagerly loading the
whole tree would put every plugin in RSS at start-up (an idle pod would hold
its whole tree) and spend seconds of CPU gzipping modules no gateway asks for.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hps.catalog import Artifact, Catalog, identity_of
from hps.negotiate import Variant, gzip_etag, split

GZIP_LEVEL = 6
"""Compressed once per content: level 9 costs ~3× the CPU for ~1 % fewer bytes."""


@dataclass(frozen=True)
class Body:
    """The in-memory variants of one content."""

    identity: Variant
    gzipped: Variant | None

    def variant(self, gzip_enabled: bool, wants_gzip: bool) -> Variant:
        """gzip when enabled, kept (smaller) and accepted; else identity.

        The one rule for both paths; the caller has already read Accept-Encoding (the
        fast path does so once per distinct request text, not once per request).
        """
        if gzip_enabled and wants_gzip and self.gzipped is not None:
            return self.gzipped
        return self.identity

    @property
    def cost(self) -> int:
        return self.identity.size + (self.gzipped.size if self.gzipped else 0)


def read_verified(artifact: Artifact) -> bytes | None:
    """The file's bytes if they are still the ones the catalog hashed, else None."""
    try:
        with open(artifact.path, "rb") as handle:
            if identity_of(os.fstat(handle.fileno())) != artifact.identity:
                return None
            data = handle.read()
    except OSError:
        return None
    if len(data) != artifact.size or hashlib.sha256(data).hexdigest() != artifact.sha256:
        return None
    return data


def build_body(artifact: Artifact, data: bytes, with_gzip: bool) -> Body:
    """Wrap verified bytes; keep a gzip variant only when it is smaller."""
    identity = Variant(artifact.etag.encode(), None, len(data), split(data))
    gzipped = None
    if with_gzip:
        packed = gzip.compress(data, GZIP_LEVEL, mtime=0)  # mtime=0: same bytes on every replica
        if len(packed) < len(data):
            gzipped = Variant(gzip_etag(artifact.etag).encode(), b"gzip", len(packed),
                              split(packed))
    return Body(identity, gzipped)


def load(artifact: Artifact, with_gzip: bool) -> Body | None:
    """Read, verify and compress one artifact (runs in a thread: zlib drops the GIL)."""
    data = read_verified(artifact)
    return build_body(artifact, data, with_gzip) if data is not None else None


Runner = Callable[..., Deferred]


class BodyCache:
    """LRU of bodies by SHA-256, within ``budget`` bytes (identity + gzip)."""

    log = Logger()

    def __init__(self, budget: int, with_gzip: bool = True,
                 run: Runner = threads.deferToThread) -> None:
        self.budget = budget
        self.with_gzip = with_gzip
        self.run = run
        self.entries: OrderedDict[str, Body] = OrderedDict()
        self.used = 0
        self.loading: set[str] = set()
        self.live: frozenset[str] = frozenset()

    def get(self, artifact: Artifact) -> Body | None:
        """The cached body, or None (and a load starts when it may fit)."""
        body = self.entries.get(artifact.sha256)
        if body is None:
            self.want(artifact)
            return None
        self.entries.move_to_end(artifact.sha256)
        return body

    def want(self, artifact: Artifact) -> None:
        key = artifact.sha256
        if key in self.loading or key in self.entries or artifact.size > self.budget:
            return
        self.loading.add(key)
        d = self.run(load, artifact, self.with_gzip)
        d.addCallback(self._loaded, artifact)
        d.addErrback(self._failed, artifact)
        d.addBoth(self._done, key)

    def _loaded(self, body: Body | None, artifact: Artifact) -> None:
        if body is None:
            self.log.info("{path} changed before it could be cached; serving from disk",
                          path=artifact.path)
            return
        if self.live and artifact.sha256 not in self.live:
            return  # the catalog moved on while we read
        self.entries[artifact.sha256] = body
        self.used += body.cost
        self._evict()

    def _failed(self, failure: Any, artifact: Artifact) -> None:
        self.log.failure("loading {path} into memory failed", failure, path=artifact.path)

    def _done(self, _: Any, key: str) -> None:
        self.loading.discard(key)

    def _evict(self) -> None:
        # Responses in flight keep their own reference, so eviction never cuts a download.
        while self.used > self.budget and self.entries:
            _, body = self.entries.popitem(last=False)
            self.used -= body.cost

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        """Drop bodies no artifact of the new snapshot references."""
        self.live = frozenset(a.sha256 for a in new.artifacts.values())
        for key in [k for k in self.entries if k not in self.live]:
            self.used -= self.entries.pop(key).cost
