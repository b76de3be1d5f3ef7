"""What is in the tree: artifacts, and the scan that finds them.

A :class:`Catalog` is an immutable snapshot. A rescan builds a new one and the
server swaps a single reference, so a request keeps the snapshot it started
with and its headers and body always describe the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import BinaryIO

from hps import urls
from hps.guard import (
    MODULE_FILE,
    accept_name,
    accept_version,
    hidden_or_temporary,
    is_wasm_module,
    within_root,
)

_CHUNK = 1 << 20

Identity = tuple[int, int, int, int]
"""(device, inode, size, mtime in ns): changes whenever the file is replaced."""


def identity_of(info: os.stat_result) -> Identity:
    """The :data:`Identity` of a stat result; the scan, the open-file table and the file
    transfer all compare against the one the catalog recorded."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class Artifact:
    """One servable module, as it was when the scan hashed it."""

    name: str
    version: str
    path: str
    size: int
    mtime: float
    md5: str
    sha256: str
    identity: Identity
    alias_of: str | None = None

    @property
    def url(self) -> str:
        return urls.file_url(self.name, self.version)

    @property
    def etag(self) -> str:
        """Strong, from the content, so every replica agrees (unlike mtime-size)."""
        return f'"{self.sha256[:40]}"'

    @property
    def last_modified(self) -> str:
        """RFC 3339, UTC."""
        return utc(self.mtime).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(int(timestamp), tz=timezone.utc)


def version_key(version: str) -> tuple:
    """Order versions as semver does: numbers numerically, pre-releases first."""
    core, _, pre = version.lstrip("v").split("+")[0].partition("-")
    numbers = tuple(int(p) for p in core.split(".") if p.isdigit())
    tags = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.]", pre))
    return (numbers, 0 if pre else 1, tags if pre else (), version)


MAX_INVENTORY = 4 << 20
"""Bytes above which the inventory file is refused: upstream's lists ~50 plugins in ~10 KB."""


@dataclass(frozen=True)
class Inventory:
    """Upstream's ``snapshot-inventory.json`` at the root, as the scan read it."""

    body: bytes
    identity: Identity


@dataclass(frozen=True)
class Catalog:
    """An immutable snapshot of the artifacts under one root."""

    root: str
    artifacts: Mapping[tuple[str, str], Artifact] = field(default_factory=dict)
    skipped: frozenset[str] = frozenset()
    loaded: bool = True
    inventory: Inventory | None = None
    """The root's inventory file, when it has one that is sane (see :func:`read_inventory`)."""
    _by_name: Mapping[str, tuple[Artifact, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifacts", MappingProxyType(dict(self.artifacts)))
        # Routing asks "which versions of this name?" on every request: answer from an index
        # built once per snapshot, not by walking every artifact.
        by_name: dict[str, list[Artifact]] = {}
        for (name, _), artifact in self.artifacts.items():
            by_name.setdefault(name, []).append(artifact)
        index = {n: tuple(sorted(a, key=lambda x: version_key(x.version)))
                 for n, a in sorted(by_name.items())}
        object.__setattr__(self, "_by_name", MappingProxyType(index))

    def __len__(self) -> int:
        return len(self.artifacts)

    def __iter__(self) -> Iterator[Artifact]:
        for name in self.names():
            yield from self.versions(name)

    def get(self, name: str, version: str) -> Artifact | None:
        return self.artifacts.get((name, version))

    def names(self) -> list[str]:
        return list(self._by_name)

    def versions(self, name: str) -> list[Artifact]:
        return list(self._by_name.get(name, ()))

    def beneath(self, extra: Iterable[Artifact], skipped: Iterable[str] = ()) -> Catalog:
        """This snapshot plus the ``extra`` artifacts it lacks: on a conflict this one wins
        (the image's tree over the pull-through cache)."""
        added = {(a.name, a.version): a for a in extra}
        return dataclasses.replace(self, artifacts={**added, **self.artifacts},
                                   skipped=self.skipped | frozenset(skipped))

    def without(self, keys: Iterable[tuple[str, str]]) -> Catalog:
        """This snapshot less the artifacts at ``keys`` (what pull-through evicted)."""
        gone = set(keys)
        return dataclasses.replace(
            self, artifacts={k: a for k, a in self.artifacts.items() if k not in gone})


def unloaded(root: str) -> Catalog:
    """The snapshot before the first scan finishes: empty and not ready."""
    return Catalog(root=root, loaded=False)


class Skip(Exception):
    """A file or directory in the tree that is not an artifact, and why."""


MIN_MODULE = 8
"""The magic and the version field: anything shorter is no WebAssembly module."""


class NotAModule(Skip):
    """Bytes that are not a WebAssembly module (the message says why)."""


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str


def examine_module(handle: BinaryIO) -> Digests:
    """The one test of "is this a WebAssembly module, and what are its digests": read an
    open file from where it is to its end. The catalog, ``hps pull --use-local`` and
    ``hps wasmplugin`` all ask it. Raises :class:`NotAModule`."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    head = handle.read(_CHUNK)
    if len(head) < MIN_MODULE:
        raise NotAModule(f"not a WebAssembly module ({len(head)} bytes)")
    if not is_wasm_module(head):
        raise NotAModule("not a WebAssembly module (no \\0asm magic)")
    size = 0
    while head:
        md5.update(head)
        sha256.update(head)
        size += len(head)
        head = handle.read(_CHUNK)
    return Digests(size, md5.hexdigest(), sha256.hexdigest())


def scan(root: str, previous: Catalog | None = None) -> Catalog:
    """Walk ``root`` and return a new snapshot.

    Digests are reused from ``previous`` when a file's identity is unchanged,
    so a rescan of a quiet tree reads no bytes. Runs in a thread: it does I/O.
    """
    known = {a.identity: a for a in previous.artifacts.values()} if previous else {}
    artifacts: dict[tuple[str, str], Artifact] = {}
    skipped: set[str] = set()
    for name, version, path in _candidates(root, skipped):
        try:
            artifact = _examine(root, name, version, path, known)
        except Skip as why:
            skipped.add(f"{os.path.relpath(path, root)}: {why}")
            continue
        except OSError as err:
            kept = _still_known(root, name, version, path, known)
            if kept is None:
                skipped.add(f"{os.path.relpath(path, root)}: unreadable ({err.strerror})")
                continue
            artifact = kept  # unreadable now, but hashed before: served from an open descriptor
        known[artifact.identity] = artifact
        artifacts[(name, version)] = artifact
    inventory = read_inventory(root, previous.inventory if previous else None, skipped)
    return Catalog(root=root, artifacts=artifacts, skipped=frozenset(skipped),
                   inventory=inventory)


def read_inventory(root: str, previous: Inventory | None, skipped: set[str]) -> Inventory | None:
    """``<root>/snapshot-inventory.json`` when it is a regular file inside the root (a symlink
    may lead only to another place in it), at most :data:`MAX_INVENTORY` bytes, and a JSON
    object; else None, and why in ``skipped`` (absent is no reason). Unchanged since
    ``previous``: reused unread."""
    path = os.path.join(root, urls.INVENTORY_FILE)
    try:
        return _inventory(root, path, previous)
    except FileNotFoundError:
        return None
    except Skip as why:
        skipped.add(f"{urls.INVENTORY_FILE}: {why}")
    except OSError as err:
        skipped.add(f"{urls.INVENTORY_FILE}: unreadable ({err.strerror})")
    return None


def _inventory(root: str, path: str, previous: Inventory | None) -> Inventory:
    real = _inside(root, os.path.realpath(path))
    # O_NONBLOCK: a FIFO put there must not hang the scan (no effect on a regular file).
    with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Skip("not a regular file")
        identity = identity_of(info)
        if previous is not None and previous.identity == identity:
            return previous
        if info.st_size > MAX_INVENTORY:
            raise Skip(f"larger than {MAX_INVENTORY} bytes")
        body = handle.read(MAX_INVENTORY + 1)
    if len(body) != info.st_size:
        raise Skip("changed while being read")
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise Skip("not a JSON object")
    return Inventory(body, identity)


def scan_trees(roots: list[str], previous: Catalog | None = None) -> Catalog:
    """Scan each root; the first (the served tree) wins a name/version found in several."""
    first = scan(roots[0], previous)
    for other in roots[1:]:
        extra = scan(other, previous)
        first = first.beneath(extra, extra.skipped)
    return first


def examine(root: str, name: str, version: str) -> Artifact:
    """The one artifact ``<root>/<name>/<version>/plugin.wasm``, checked and hashed as a scan
    would; raises :class:`Skip` (or OSError) when it is not one. Runs in a thread."""
    if not (accept_name(name) and accept_version(version)):
        raise Skip("not a valid plugin name or version")
    return _examine(root, name, version, os.path.join(root, name, version, MODULE_FILE), {})


def _still_known(root: str, name: str, version: str, path: str,
                 known: dict) -> Artifact | None:
    """The artifact an earlier scan hashed, if the file that cannot be read now is still it."""
    try:
        real = os.path.realpath(path)
        identity = identity_of(os.stat(real))
    except OSError:
        return None
    cached = known.get(identity)
    if cached is None or not within_root(real, root):
        return None
    return Artifact(name, version, real, cached.size, cached.mtime, cached.md5, cached.sha256,
                    identity, _alias(os.path.relpath(real, os.path.realpath(root)), name, version))


def _listdir(path: str, rel: str | None, skipped: set[str]) -> list[str]:
    """The entries of ``path``; an unreadable plugin directory (``rel``) is noted."""
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        if rel is not None:
            skipped.add(f"{rel}: unreadable directory ({err.strerror})")
        return []


def _candidates(root: str, skipped: set[str]) -> Iterator[tuple[str, str, str]]:
    """Yield ``(name, version, path)`` for every plausible module file."""
    for name in _listdir(root, None, skipped):
        name_dir = os.path.join(root, name)
        if not _sane_dir(root, name, name_dir, accept_name, skipped):
            continue
        for version in _listdir(name_dir, name, skipped):
            version_dir = os.path.join(name_dir, version)
            rel = f"{name}/{version}"
            if _sane_dir(root, rel, version_dir, accept_version, skipped):
                path = os.path.join(version_dir, MODULE_FILE)
                try:
                    os.lstat(path)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    skipped.add(f"{rel}: unreadable directory ({err.strerror})")
                    continue
                yield name, version, path


def _sane_dir(root: str, rel: str, path: str, accept, skipped: set[str]) -> bool:
    leaf = os.path.basename(rel)
    if not os.path.isdir(path):
        return False  # plain files beside the plugins (README, properties) are expected
    if hidden_or_temporary(leaf):
        skipped.add(f"{rel}: hidden or temporary name")
    elif not accept(leaf):
        skipped.add(f"{rel}: not a valid plugin name or version")
    elif not within_root(path, root):
        skipped.add(f"{rel}: symlink leaves the root")
    else:
        return True
    return False


def _inside(root: str, real: str) -> str:
    """``real`` (a resolved path) when it is inside ``root`` and no part of it under the root
    is hidden or temporary; raises :class:`Skip` otherwise."""
    if not within_root(real, root):
        raise Skip("symlink leaves the root")
    rel_real = os.path.relpath(real, os.path.realpath(root))
    if any(hidden_or_temporary(part) for part in rel_real.split(os.sep)):
        raise Skip("points at a hidden or temporary file")
    return real


def _examine(root: str, name: str, version: str, path: str, known: dict) -> Artifact:
    real = _inside(root, os.path.realpath(path))
    rel_real = os.path.relpath(real, os.path.realpath(root))
    with open(real, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Skip("not a regular file")
        identity = identity_of(info)
        alias = _alias(rel_real, name, version)
        cached = known.get(identity)
        if cached is not None:
            return Artifact(name, version, real, cached.size, cached.mtime,
                            cached.md5, cached.sha256, identity, alias)
        if info.st_size == 0:
            raise Skip("empty file")
        digests = examine_module(handle)
    if digests.size != info.st_size:
        raise Skip("changed while being read")
    return Artifact(name, version, real, digests.size, info.st_mtime,
                    digests.md5, digests.sha256, identity, alias)


def _alias(rel_real: str, name: str, version: str) -> str | None:
    """``name/version`` of the file a symlink leads to, when it is another one."""
    canonical = os.path.join(name, version, MODULE_FILE)
    if rel_real == canonical:
        return None
    parts = rel_real.split(os.sep)
    if len(parts) == 3 and parts[2] == MODULE_FILE:
        return f"{parts[0]}/{parts[1]}"
    return rel_real
