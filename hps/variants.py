"""gzip variants of modules, on disk, before the first download.

A module's gzip representation is a file:

- a ``plugin.wasm.gz`` beside it (nginx's ``gzip_static`` convention, written
  by ``hps pull``), used only when it decompresses to bytes with the module's
  SHA-256; a bad one is skipped with one log line;
- else one the server compressed, once, into ``<cache_dir>/gzip/<sha256>.gz``
  (written by :mod:`hps.atomic`); a restart reuses it after the same check as a
  sibling's (the directory may be shared, a crash or a disk error may have left other
  bytes), and deletes and remakes one that fails, with one log line;
- else, when the cache directory cannot be written, an unlinked temporary file
  (one warning), so the memory goal still holds.

Everything here runs off the reactor thread, one module at a time (a rollout's
downloads keep the other core), right after each catalog swap. Until a
module's variant is ready it is served as identity; readiness does not wait,
and ``/metrics`` shows how many are pending.

The cache directory holds only variants of modules the catalog serves: after a
swap, in the same queue (so never while a variant of the same SHA-256 is being
written), :func:`prune` deletes the ``<sha256>.gz`` no current module has, and
temporary files a crash left. A response still sending a deleted variant keeps
its open descriptor, which Linux keeps readable until it is closed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps import metrics
from hps.atomic import staged
from hps.catalog import Artifact, Catalog, Identity, identity_of
from hps.files import Replaced, Source, open_verified
from hps.owned import own_writable_dir

GZIP_LEVEL = 6
"""For the server's own compression: level 9 costs ~3x the CPU for ~1 % fewer bytes.
``hps pull`` writes its siblings at level 9, once, where CPU is cheap."""

SIBLING_SUFFIX = ".gz"
_BLOCK = 1 << 20

STALE_TEMPORARY = 3600.0
"""Seconds after which a temporary file of :mod:`hps.atomic` in the cache is a crash's
leftover (a write takes well under a second; a younger one may be another process's)."""

_VARIANT = re.compile(r"([0-9a-f]{64})\.gz")
_TEMPORARY = re.compile(r"\.[0-9a-f]{64}\.gz\..+\.tmp")


@dataclass(frozen=True)
class GzipFile:
    """Where a module's gzip bytes are: a path and the identity it had when checked,
    or an already open (unlinked) source."""

    path: str
    identity: Identity
    size: int
    source: Source | None = None


class Bad(Exception):
    """A sibling ``.gz`` or a cached variant that is not this module (the message says why)."""


class _NotWritten(Exception):
    """The module changed, or gzip does not make it smaller: the staged file is dropped."""


def _regular(path: str) -> os.stat_result | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def verify(path: str, artifact: Artifact) -> GzipFile:
    """The gzip file at ``path`` if it decompresses to exactly the module's bytes (same
    size and SHA-256, one member, nothing after it) and is smaller than the module.

    Raises :class:`Bad` otherwise. Inflates at most the module's size plus one block,
    so a gzip bomb costs no more than a genuine variant; opened without following a
    symlink. Reads the whole file: call it off the reactor thread.
    """
    try:
        source = open_verified(path, identity_of(os.lstat(path)))
        digest, size, offset = hashlib.sha256(), 0, 0
        inflate = zlib.decompressobj(31)
        while block := source.read(offset, _BLOCK):
            offset += len(block)
            while block and size <= artifact.size:
                data = inflate.decompress(block, _BLOCK)  # bounded: a gzip bomb stays small
                digest.update(data)
                size += len(data)
                block = inflate.unconsumed_tail
    except (OSError, Replaced, zlib.error) as err:
        raise Bad(f"unreadable or not gzip ({err})") from None
    if (size != artifact.size or digest.hexdigest() != artifact.sha256 or not inflate.eof
            or inflate.unused_data):
        raise Bad("does not decompress to the module's bytes")
    if offset >= artifact.size:
        raise Bad("not smaller than the module")
    return GzipFile(path, source.identity, offset)


def check_sibling(artifact: Artifact) -> GzipFile | None:
    """The module's ``.gz`` sibling if it holds exactly the module's bytes; None if absent.

    Raises :class:`Bad` for a sibling that exists but does not match. A symlink is
    not followed (it could lead out of the tree).
    """
    path = artifact.path + SIBLING_SUFFIX
    return None if _regular(path) is None else verify(path, artifact)


def _deflate(source: Source, out: BinaryIO) -> str:
    """Write the gzip of ``source`` to ``out``; return the SHA-256 of what was read."""
    digest = hashlib.sha256()
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # gzip, mtime 0: same anywhere
    offset = 0
    while block := source.read(offset, _BLOCK):
        offset += len(block)
        digest.update(block)
        out.write(deflate.compress(block))
    out.write(deflate.flush())
    out.flush()
    return digest.hexdigest()


def compress(artifact: Artifact, directory: str | None) -> GzipFile | None:
    """Compress the module into ``directory`` (``<sha256>.gz``, atomically), or into an
    unlinked temporary file when ``directory`` is None. None if the module changed or
    vanished (an eviction, a reload), or compression does not make it smaller."""
    try:
        source = open_verified(artifact.path, artifact.identity)
    except (FileNotFoundError, Replaced):  # gone meanwhile (evicted, reloaded): not a failure
        return None
    if directory is None:
        with tempfile.TemporaryFile(prefix="hps-gzip-") as handle:
            if _deflate(source, handle) != artifact.sha256 or handle.tell() >= artifact.size:
                return None
            fd = os.dup(handle.fileno())  # the unlinked file lives as long as this descriptor
        identity = identity_of(os.fstat(fd))
        return GzipFile("", identity, identity[2], Source(fd, identity))
    final = os.path.join(directory, f"{artifact.sha256}.gz")
    try:
        with staged(final) as out:
            if _deflate(source, out) != artifact.sha256 or out.tell() >= artifact.size:
                raise _NotWritten
    except _NotWritten:
        return None
    info = os.stat(final)
    return GzipFile(final, identity_of(info), info.st_size)


def cached(artifact: Artifact, directory: str) -> GzipFile | None:
    """A variant compressed by an earlier run, if one is there; None if absent.

    Verified like a sibling (:func:`verify`): the cache directory may be shared
    (``/tmp``), and a disk error or a crash can leave other bytes under the name. One
    that fails is deleted and :class:`Bad` raised; a symlink or a directory under the
    name is neither followed nor deleted (None: :mod:`hps.atomic` replaces the entry).
    """
    path = os.path.join(directory, f"{artifact.sha256}.gz")
    if _regular(path) is None:
        return None
    try:
        return verify(path, artifact)
    except Bad:
        if _regular(path) is not None:  # unlink never follows a symlink; this skips even one
            with suppress(OSError):
                os.unlink(path)
        raise


def usable_dir(cache_dir: str, log: Logger | None = None) -> str | None:
    """``<cache_dir>/gzip``, created, if it is the server's own (:mod:`hps.owned`) and the
    server can write there; else None, and one warning on ``log`` saying why."""
    path = os.path.join(cache_dir, "gzip")
    try:
        own_writable_dir(path)
    except OSError as err:
        (log or Logger()).warn("cannot use the gzip cache: {why}; gzip variants go to "
                               "unlinked temporary files", why=err)
        return None
    return path


def _unneeded(name: str, info: os.stat_result, live: frozenset[str], now: float) -> bool:
    """Is this regular file of the cache a variant no live module has, or a stale temporary?"""
    variant = _VARIANT.fullmatch(name)
    if variant is not None:
        return variant.group(1) not in live
    return _TEMPORARY.fullmatch(name) is not None and now - info.st_mtime > STALE_TEMPORARY


def prune(directory: str, live: frozenset[str]) -> tuple[int, int]:
    """Delete from ``directory`` the variants whose SHA-256 is not in ``live`` and stale
    temporary files (runs in a thread); return (files, bytes) deleted.

    Only regular files with those names: anything else (a symlink, a directory, a
    file of another name) is left as it is.
    """
    files = size = 0
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and _unneeded(entry.name, info, live, now):
                os.unlink(entry.path)  # never follows a symlink, whatever the name is now
                files, size = files + 1, size + info.st_size
        except OSError:  # gone meanwhile, or not ours to delete: the next prune retries
            continue
    return files, size


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` found: the variant, and why a file was refused or none written."""

    variant: GzipFile | None = None
    bad_sibling: str | None = None
    """Why the sibling ``.gz`` was skipped (the server then compresses the module itself)."""
    bad_cached: str | None = None
    """Why the cache's variant from an earlier run was deleted (then compressed again)."""
    failed: str | None = None
    """Why no variant could be written (a full disk): served as identity."""


def prepare(artifact: Artifact, directory: str | None) -> Prepared:
    """Find or make the module's gzip variant (runs in a thread): its checked sibling,
    else its checked variant in ``directory``, else a new one."""
    bad_sibling = bad_cached = None
    try:
        sibling = check_sibling(artifact)
    except Bad as why:
        sibling, bad_sibling = None, str(why)
    if sibling is not None:
        return Prepared(sibling)
    found = None
    if directory:
        try:
            found = cached(artifact, directory)
        except Bad as why:
            bad_cached = str(why)
    if found is None:
        try:
            found = compress(artifact, directory)
        except OSError as err:  # a full disk, most likely: served as identity
            return Prepared(None, bad_sibling, bad_cached,
                            f"could not write its gzip variant ({err.strerror})")
    return Prepared(found, bad_sibling, bad_cached)


Runner = Callable[..., Deferred]

PRUNING = "prune"
"""``GzipVariants.busy`` while the cache directory is being pruned (no SHA-256 looks so)."""


class GzipVariants:
    """The gzip variant of every module, by SHA-256, made ready in the background."""

    log = Logger()

    def __init__(self, cache_dir: str, *, run: Runner) -> None:
        self.cache_dir, self.run = cache_dir, run
        self.ready: dict[str, GzipFile] = {}
        self.queue: dict[str, Artifact] = {}
        self.busy: str | None = None
        """The SHA-256 of the module being prepared now, if any."""
        self.waiters: dict[str, list[Deferred]] = {}
        self.directory: str | bool | None = False  # False: not probed yet
        self.live: frozenset[str] = frozenset()
        self.write_failed = False
        self.tried: set[str] = set()
        """Modules already prepared once (found or not): a rescan does not redo them."""
        self.prune_due = False
        """A swap happened since the last prune (swaps in a row coalesce into one)."""

    @property
    def pending(self) -> int:
        return len(self.queue) + (self.busy not in (None, PRUNING))

    def get(self, artifact: Artifact) -> GzipFile | None:
        return self.ready.get(artifact.sha256)

    def preparing(self, artifact: Artifact) -> bool:
        """Is this module's variant queued or being made right now?"""
        key = artifact.sha256
        return key in self.queue or key == self.busy

    def when_ready(self, artifact: Artifact) -> Deferred:
        """Fires once the module's variant is ready or known not to exist; moves it to the
        front of the queue (a client is waiting for it: the first download of a module
        after start is the one that matters)."""
        key = artifact.sha256
        if not self.preparing(artifact):
            return succeed(None)
        if key in self.queue:
            self.queue = {key: self.queue[key], **self.queue}
        d: Deferred = Deferred()
        self.waiters.setdefault(key, []).append(d)
        return d

    def drop(self, artifact: Artifact) -> None:
        """The variant's file changed on disk: forget it and make it again."""
        if self.ready.pop(artifact.sha256, None) is not None:
            self.tried.discard(artifact.sha256)
            self.queue[artifact.sha256] = artifact
            self.next()

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        self.live = frozenset(a.sha256 for a in new.artifacts.values())
        for key in [k for k in self.ready if k not in self.live]:
            del self.ready[key]
        self.tried &= self.live
        for artifact in new.artifacts.values():
            if artifact.sha256 not in self.ready and artifact.sha256 not in self.tried:
                self.queue.setdefault(artifact.sha256, artifact)
        for key in [k for k in self.queue if k not in self.live]:
            del self.queue[key]
        # An unloaded snapshot says nothing about which modules exist: nothing to prune by.
        self.prune_due = self.prune_due or new.loaded
        self.next()

    def next(self) -> None:
        if self.busy is not None or not (self.queue or self.prune_due):
            return
        if self.directory is False:
            self.directory = usable_dir(self.cache_dir, self.log)
        if self.prune_due:
            self.prune_due = False
            if self.directory:  # first: on a full disk, the new modules' variants need the room
                self.prune_cache(self.directory)
                return
            if not self.queue:
                return
        key, artifact = next(iter(self.queue.items()))
        del self.queue[key]
        self.tried.add(key)
        self.busy = key
        d = self.run(prepare, artifact, self.directory or None)
        d.addCallbacks(self.prepared, self.failed, (artifact,), None, (artifact,))
        d.addBoth(self.idle)

    def prepared(self, result: Prepared, artifact: Artifact) -> None:
        if result.bad_sibling is not None:
            self.bad_sibling(artifact, result.bad_sibling)
        if result.bad_cached is not None:
            self.log.warn("refused {path}: {why}; compressing {module} again",
                          path=os.path.join(str(self.directory), f"{artifact.sha256}.gz"),
                          why=result.bad_cached, module=artifact.path)
        if result.failed is not None and not self.write_failed:
            self.write_failed = True  # one line, not one per module of a full disk
            self.log.warn("{path}: {why}; serving identity", path=artifact.path,
                          why=result.failed)
        if result.variant is not None and artifact.sha256 in self.live:
            self.ready[artifact.sha256] = result.variant

    def prune_cache(self, directory: str) -> None:
        """Delete, in the queue's turn, the cache's files no module of the catalog needs."""
        self.busy = PRUNING
        d = self.run(prune, directory, self.live)
        d.addCallbacks(self.pruned, self.prune_failed, (directory,), None, (directory,))
        d.addBoth(self.idle)

    def pruned(self, result: tuple[int, int], directory: str) -> None:
        files, size = result
        metrics.observe_pruned(files)
        if files:
            self.log.info("pruned {path}: deleted {files} files ({size} bytes) no served module "
                          "needs", path=directory, files=files, size=size)

    def prune_failed(self, failure: Failure, directory: str) -> None:
        self.log.failure("pruning {path} failed", failure, path=directory)

    def bad_sibling(self, artifact: Artifact, why: str) -> None:
        self.log.warn("skipped {path}{suffix}: {why}", path=artifact.path,
                      suffix=SIBLING_SUFFIX, why=why)

    def failed(self, failure: Failure, artifact: Artifact) -> None:
        self.log.failure("making the gzip variant of {path} failed", failure,
                         path=artifact.path)

    def idle(self, _: object) -> None:
        key, self.busy = self.busy, None
        for d in self.waiters.pop(key or "", []):
            if not d.called:  # a waiter that timed out was cancelled
                d.callback(None)
        self.next()
