"""The bytes each plugin URL first served, so that other bytes later are never silent.

The gateway (istio-agent ``pkg/wasm``) downloads an http URL once and caches the module
by URL; it re-downloads only when the WasmPlugin resource changes. Other bytes put later
under the same ``/plugins/<name>/<version>/plugin.wasm`` reach only the gateways that
restart, so the fleet splits without a word. Hence this record: per ``(name, version)``,
the SHA-256 of the first bytes hps had for it, and of the bytes it has now.

"First served" is "first seen in a loaded catalog snapshot": from the moment a snapshot
is swapped in, any gateway may download its bytes, so that is when they become what the
fleet may hold (counting downloads instead would put bookkeeping on every response, and
gain nothing: another replica, or this one before a restart, may have served them). The
swap is also the one place all three sources of bytes pass (a rescan after a reload or
an ``hps pull``, a pull-through fetch), and it runs once per snapshot, never per request.

When a swap brings other bytes for a recorded pair, the record keeps the *first* digest:
the pair stays reported (``index.json`` ``changed``, the landing page,
``hps_artifact_changed``) until an operator acts, by putting the first bytes back, or by
accepting the new ones: deleting the record file and restarting (docs/operations.md).

The record lives in ``<cache_dir>/record/served-digests.json`` (a directory of hps's own,
:mod:`hps.owned`), read once at start-up and rewritten atomically off the reactor thread
after each swap that changed it, so it survives restarts when ``cache_dir`` is a volume;
when that directory cannot be used it lives in memory only (one warning).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps.atomic import staged
from hps.catalog import Catalog
from hps.guard import DIGEST, accept_name, accept_version
from hps.owned import own_writable_dir
from hps.work import Runner

RECORD_DIR = "record"
RECORD_FILE = "served-digests.json"
FORMAT = 1

MAX_ABSENT = 10_000
"""Recorded pairs the catalog no longer holds that are kept (those gone longest are dropped
first); pairs in the catalog are always kept. A version removed and put back with other
bytes is as much a split fleet as one replaced, so gone pairs are remembered, but a
pull-through cache churning through versions must not grow the file (about 200 bytes a
pair, rewritten after each change) or the memory without bound: 10,000 is ~2 MB, far
beyond the few hundred versions a tree holds."""

Key = tuple[str, str]


@dataclass(frozen=True)
class Seen:
    first: str
    now: str


@dataclass(frozen=True)
class Change:
    """A pair whose bytes now differ from those it first served."""

    name: str
    version: str
    first: str
    now: str


class ServedRecord:
    """The record, its file and the swap listener that keeps both up to date. Only the
    reactor thread touches :attr:`entries`; the file is written in the runner's threads."""

    log = Logger()

    def __init__(self, cache_dir: str, run: Runner, limit: int = MAX_ABSENT) -> None:
        self.run = run
        self.limit = limit
        self.entries: OrderedDict[Key, Seen] = OrderedDict()
        """Pairs gone from the catalog longest first (the order eviction follows)."""
        self.changes: dict[Key, int] = {}
        """Changes seen by this process, per pair: ``hps_artifact_changes_total``."""
        self.changed: tuple[Change, ...] = ()
        self.writing = self.dirty = self.write_failed = False
        self.path: str | None = self._usable(os.path.join(cache_dir, RECORD_DIR))
        if self.path is not None:
            self.entries = self._read(self.path)
            self.changed = self._changed()

    def _usable(self, directory: str) -> str | None:
        """The record file's path if its directory is hps's own and writable; else None."""
        try:
            own_writable_dir(directory)
        except OSError as err:
            self.log.warn("cannot keep the record of served digests in {directory}: {why}; "
                          "it is kept in memory only (a restart forgets it)",
                          directory=directory, why=err)
            return None
        return os.path.join(directory, RECORD_FILE)

    def _read(self, path: str) -> OrderedDict[Key, Seen]:
        """What an earlier run recorded (read once, at start-up, before the reactor runs)."""
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
            entries = parse(document)
        except FileNotFoundError:
            return OrderedDict()
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            self.log.warn("ignored {path}: {why}; starting a new record of served digests",
                          path=path, why=err)
            return OrderedDict()
        return entries

    # -- the swap listener ----------------------------------------------------------------

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        """Record the new snapshot's pairs; say so once for each whose bytes changed."""
        if not new.loaded:  # the unloaded snapshot says nothing about what is served
            return
        altered = False
        for key, artifact in new.artifacts.items():
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = Seen(artifact.sha256, artifact.sha256)
                altered = True
            elif seen.now != artifact.sha256:
                self.entries[key] = Seen(seen.first, artifact.sha256)
                self.changes[key] = self.changes.get(key, 0) + 1
                self._say(key, seen, artifact.sha256)
                altered = True
        for key in old.artifacts.keys() - new.artifacts.keys():
            if key in self.entries:
                self.entries.move_to_end(key)  # gone just now: the last to be dropped
        altered = self._bound(new) or altered
        if altered:
            self.changed = self._changed()
            self.save()

    def _say(self, key: Key, seen: Seen, sha256: str) -> None:
        name, version = key
        if sha256 == seen.first:
            self.log.warn("{name} {version}: the first bytes are back under its URL (sha256 "
                          "{first}, was {was}); gateways that fetched {was} keep it until "
                          "they restart", name=name, version=version, first=seen.first,
                          was=seen.now)
            return
        self.log.warn("{name} {version}: other bytes under the same URL: first served sha256 "
                      "{first}, now {now}; gateways that cached the URL keep the first (see "
                      "docs/operations.md)", name=name, version=version, first=seen.first,
                      now=sha256)

    def _bound(self, catalog: Catalog) -> bool:
        """Drop the pairs gone longest beyond :attr:`limit` gone ones; True if any was."""
        absent = [key for key in self.entries if key not in catalog.artifacts]
        for key in absent[:max(0, len(absent) - self.limit)]:
            del self.entries[key]
            self.changes.pop(key, None)
        return len(absent) > self.limit

    def _changed(self) -> tuple[Change, ...]:
        return tuple(Change(name, version, seen.first, seen.now)
                     for (name, version), seen in sorted(self.entries.items())
                     if seen.first != seen.now)

    # -- the file -------------------------------------------------------------------------

    def save(self) -> None:
        """Write the record in a thread; one write at a time, the latest state last."""
        if self.path is None:
            return
        if self.writing:
            self.dirty = True
            return
        self.writing, self.dirty = True, False
        d: Deferred = self.run(write, self.path, list(self.entries.items()))
        d.addCallbacks(self._written, self._failed)

    def _written(self, _: object) -> None:
        self.writing = False
        if self.dirty:
            self.save()

    def _failed(self, failure: Failure) -> None:
        if not self.write_failed:  # one line, not one per swap of a full disk
            self.write_failed = True
            self.log.warn("cannot write {path}: {why}; the record of served digests is kept "
                          "in memory until a write succeeds", path=self.path, why=failure.value)
        self._written(None)


def document_of(entries: list[tuple[Key, Seen]]) -> dict[str, Any]:
    return {"format": FORMAT, "served": [
        {"name": name, "version": version, "first": seen.first, "now": seen.now}
        for (name, version), seen in entries]}


def parse(document: Any) -> OrderedDict[Key, Seen]:
    """The entries of a record file's JSON; ValueError naming what is wrong."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not a record of served digests (format {FORMAT})")
    served = document.get("served")
    if not isinstance(served, list):
        raise ValueError("'served' is not a list")
    entries: OrderedDict[Key, Seen] = OrderedDict()
    for number, item in enumerate(served):
        if not (isinstance(item, dict) and _valid(item)):
            raise ValueError(f"entry {number} is not a name, version and two sha256 digests")
        entries[(item["name"], item["version"])] = Seen(item["first"], item["now"])
    return entries


def _valid(item: dict[str, Any]) -> bool:
    fields = [item.get(key) for key in ("name", "version", "first", "now")]
    if not all(isinstance(value, str) for value in fields):
        return False
    name, version, first, now = fields
    return (accept_name(name) and accept_version(version)
            and all(DIGEST.match(f"sha256:{digest}") for digest in (first, now)))


def write(path: str, entries: list[tuple[Key, Seen]]) -> None:
    """Replace the record file atomically (runs in a thread)."""
    body = json.dumps(document_of(entries), indent=1).encode() + b"\n"
    with staged(path) as out:
        out.write(body)
