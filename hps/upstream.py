"""Pull-through: a module the tree lacks is fetched once from a registry, verified, kept.

Like a Docker registry mirror, but for the plugin URLs the Console builds. Two halves:

- :class:`Upstream` lives on the reactor thread and owns every miss the allow-list
  admits: one fetch per ``(name, version)`` however many requests wait for it, a bound on
  how long each waits, a short negative cache for what the registry lacks, and bounds
  on pending fetches and on cached modules. It swaps the fetched artifact into the
  catalog and answers each waiter's Deferred. Requests only ever wait on that Deferred;
  they never talk to a registry. Beyond :data:`MAX_CACHED` modules it evicts the least
  recently served one of the cache tree (see :meth:`Upstream.make_room`).
- :class:`RegistrySource` does the blocking part on a daemon thread with ``hps pull``'s
  own client, credentials, digest and Wasm checks and atomic writes: it tries each
  template in order and writes the module into the cache tree
  ``<cache_dir>/plugins/<name>/<version>/plugin.wasm`` (and the ``.gz`` sibling
  ``hps pull`` writes), which the catalog scans after
  the image's tree (the image's tree wins a conflict) and which survives restarts.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps import metrics
from hps.catalog import Artifact, Catalog, Identity, Skip, examine
from hps.config import ConfigError, cache_tree
from hps.guard import MODULE_FILE, accept_name, accept_version
from hps.owned import open_own_dir, own_dir
from hps.pull.errors import NotFound, NotWasm, PullError
from hps.pull.fetch import Options, fetch_to
from hps.pull.properties import expand
from hps.state import ServerState
from hps.work import Runner, in_daemon_threads, in_threads

WAIT = 10.0
"""Default seconds a request waits for a fetch (the ``upstream_wait`` knob)."""
RETRY_AFTER = 5
"""Seconds a 503 asks the client to wait; the gateway retries 5xx for about 30 s."""
NEGATIVE_SECONDS = 30.0
"""How long "the registry has no such module" is believed without asking again."""
MAX_PENDING = 16
"""Distinct fetches under way at once; more distinct misses get 503 at once."""
MAX_CACHED = 256
"""Modules the cache tree may hold; a fetch beyond it evicts the least recently served."""
TRASH = ".evicted"
"""Beside the cache tree, never scanned: evicted version directories wait here, renamed,
while a thread deletes them. Like the cache tree, hps's own (:mod:`hps.owned`), mode 0700."""
EVICTED = re.compile(r"[^@/]+@[^/]+\.[0-9a-f]{12}")
"""The names :func:`trash_name` gives; :func:`empty` deletes nothing else."""
MAX_NEGATIVE = 4096
"""Remembered "not found" pairs; the oldest are forgotten first."""
PER_REGISTRY = 4
"""Fetches talking to one registry at once (``hps pull``'s default ``--jobs``)."""
TIMEOUT = 15.0
"""Seconds per registry request; a hung registry frees its slot after this."""
RETRIES = 1


class Missing(Exception):
    """Nothing to serve: not admitted, or no registry holds a usable module (404)."""


class Unavailable(Exception):
    """Not now: a registry error, a hang, or too many fetches (503 + Retry-After)."""


class Source(Protocol):
    def fetch(self, name: str, version: str) -> Deferred:
        """Fire with the fetched :class:`Artifact`, or fail with Missing / Unavailable."""


class Upstream:
    """The owner of every admitted miss: coalesced fetches, bounded waits and caches."""

    log = Logger()

    def __init__(self, state: ServerState, source: Source, clock: IReactorTime,
                 allow: Iterable[str],
                 cache_root: str, templates: Iterable[str] = (), wait: float = WAIT,
                 negative_seconds: float = NEGATIVE_SECONDS, max_pending: int = MAX_PENDING,
                 max_cached: int = MAX_CACHED, run: Runner = maybeDeferred) -> None:
        self.state = state
        self.source = source
        self.clock = clock
        self.allow = tuple(allow)
        self.cache_root = os.path.realpath(cache_root)
        self.trash = os.path.join(os.path.dirname(self.cache_root), TRASH)
        self.cache_prefix = self.cache_root + os.sep
        self.root_prefix = os.path.realpath(state.config.root) + os.sep
        self.templates = tuple(templates)
        self.wait_seconds = wait
        self.negative_seconds = negative_seconds
        self.max_pending = max_pending
        self.max_cached = max_cached
        self.pending: dict[tuple[str, str], list[Deferred]] = {}
        self.negative: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.rescan: Callable[[], None] = lambda: None
        """Asks the watcher for a scan (set by make_service); see :meth:`settled`."""
        self.run = run
        """Where evicted directories are deleted (make_upstream: the reactor's threads)."""
        self.order: OrderedDict[tuple[str, str], None] = OrderedDict()
        """The cache tree's modules in the catalog, least recently served first."""
        self.evicted: dict[tuple[str, str], Identity] = {}
        """Evicted modules a scan begun before their eviction may still hold (:meth:`prune`)."""
        state.on_swap.append(self.on_swap)
        self.on_swap(state.catalog, state.catalog)

    def admits(self, name: str, version: str) -> bool:
        """Only grammatical names and versions the allow-list names ever reach a registry."""
        return (accept_name(name) and accept_version(version)
                and any(fnmatchcase(name, pattern) for pattern in self.allow))

    def wait(self, name: str, version: str) -> Deferred:
        """A Deferred for this request alone: the artifact, or Missing / Unavailable.

        Cancelling it (the client left) abandons only this waiter, never the fetch.
        """
        key = (name, version)
        artifact = self.state.catalog.get(name, version)
        if artifact is not None:
            return succeed(artifact)
        if not self.admits(name, version):
            return fail(Missing(f"{name} is not pulled through"))
        if self.negative_until(key) > self.clock.seconds():
            return fail(Missing(f"{name} {version}: not in the registry (remembered)"))
        fresh = key not in self.pending
        if fresh and len(self.pending) >= self.max_pending:
            return fail(Unavailable("too many pull-through fetches under way"))
        waiter = Deferred(lambda d: self.forget(key, d))
        self.pending.setdefault(key, []).append(waiter)
        waiter.addTimeout(self.wait_seconds, self.clock)
        waiter.addErrback(self.timed_out, name, version)
        if fresh:  # after the waiter is in place: a source may answer at once
            self.log.info("pull-through: fetching {name} {version}", name=name, version=version)
            self.source.fetch(name, version).addBoth(self.settled, key)
        return waiter

    def settled(self, result: Artifact | Failure, key: tuple[str, str]) -> None:
        waiters = self.pending.pop(key, [])
        outcome: Any = result
        if isinstance(result, Failure):
            outcome = self.failed(result, key)
        else:
            self.state.swap(self.state.catalog.beneath([result]))
            # A scan that began before the write would swap in a snapshot without it; the
            # watcher runs one more scan after any in progress, and that one sees the file.
            self.rescan()
            metrics.observe_fetch("fetched")
            # The image's tree wins: if it gained the same name/version meanwhile, serve that.
            outcome = self.state.catalog.get(*key) or result
            self.log.info("pull-through: serving {name} {version} ({size} bytes, sha256 {sha})",
                          name=key[0], version=key[1], size=outcome.size, sha=outcome.sha256)
            if key in self.order:  # fetched, not served yet: counts as just used
                self.order.move_to_end(key)
            self.make_room()
        for waiter in waiters:
            if not waiter.called:
                (waiter.errback if isinstance(outcome, Exception) else waiter.callback)(outcome)

    def failed(self, failure: Failure, key: tuple[str, str]) -> Exception:
        metrics.observe_fetch("missing" if failure.check(Missing) else "failed")
        if failure.check(Missing):
            self.negative[key] = self.clock.seconds() + self.negative_seconds
            self.negative.move_to_end(key)
            while len(self.negative) > MAX_NEGATIVE:
                self.negative.popitem(last=False)
            self.log.info("pull-through: {name} {version}: {why}", name=key[0], version=key[1],
                          why=failure.value)
            return failure.value
        self.log.warn("pull-through: {name} {version} failed: {why}", name=key[0],
                      version=key[1], why=failure.value)
        if failure.check(Unavailable):
            return failure.value
        return Unavailable(str(failure.value))

    def negative_until(self, key: tuple[str, str]) -> float:
        until = self.negative.get(key, 0.0)
        if until and until <= self.clock.seconds():
            del self.negative[key]
        return until

    def forget(self, key: tuple[str, str], waiter: Deferred) -> None:
        waiters = self.pending.get(key)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    def timed_out(self, failure: Failure, name: str, version: str) -> Failure:
        if failure.check(TimeoutError):
            raise Unavailable(f"{name} {version}: still fetching after {self.wait_seconds:g} s")
        return failure

    # -- the bound: least recently served out first ------------------------------------

    def cached(self, artifact: Artifact) -> bool:
        """Is this the cache tree's module (never the image's tree, wherever the two are)?"""
        path = artifact.path
        return path.startswith(self.cache_prefix) and not path.startswith(self.root_prefix)

    def touch(self, artifact: Artifact) -> None:
        """A response is about to send ``artifact`` (Transfer.served): most recently used."""
        key = (artifact.name, artifact.version)
        if key in self.order:
            self.order.move_to_end(key)

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        """Keep :attr:`order` to the cache tree's modules in ``new``: those gone leave it,
        those new to it (a fetch, or every one at start) join as just used, older files
        first. A restart thus begins from the files' mtimes, the time each was fetched:
        access times are not kept on most mounts (noatime, relatime), and touching a
        file's own times would change the identity its downloads are checked against."""
        present = [a for a in new.artifacts.values() if self.cached(a)]
        keys = {(a.name, a.version) for a in present}
        for key in [k for k in self.order if k not in keys]:
            del self.order[key]
        for artifact in sorted(present, key=lambda a: a.mtime):
            self.order.setdefault((artifact.name, artifact.version))

    def make_room(self) -> None:
        """Evict the least recently served modules beyond :attr:`max_cached`, never one with
        a fetch pending (its thread may be writing or reading that directory)."""
        excess = len(self.order) - self.max_cached
        if excess > 0:
            idle = (key for key in self.order if key not in self.pending)
            for key in list(itertools.islice(idle, excess)):
                self.evict(key)

    def evict(self, key: tuple[str, str]) -> None:
        """Move the module's directory aside, drop it from the catalog, delete it in a thread.

        The rename comes first, on this thread, so a fetch of the same module started
        later writes a new directory the deletion never sees. Downloads under way keep
        their open descriptor and finish whole; the next request is a miss again.
        """
        name, version = key
        try:
            own_dir(self.trash, 0o700)  # never into a symlink or a directory of another user's
            os.rename(os.path.join(self.cache_root, name, version),
                      os.path.join(self.trash, trash_name(name, version)))
        except OSError as err:
            self.log.warn("pull-through: cannot evict {name} {version}: {why}", name=name,
                          version=version, why=err)
            self.order.move_to_end(key)  # the next eviction tries another one first
            self.rescan()  # if it is gone already, the catalog learns so
            return
        artifact = self.state.catalog.get(name, version)
        if artifact is not None and self.cached(artifact):
            self.evicted[key] = artifact.identity
            self.state.swap(self.state.catalog.without([key]))
        self.order.pop(key, None)
        metrics.observe_eviction()
        self.log.info("pull-through: evicted {name} {version}, the least recently served "
                      "(the cache tree holds at most {n} modules)", name=name, version=version,
                      n=self.max_cached)
        self.empty_trash()
        self.rescan()  # a scan under way may have seen it: the next one must not

    def empty_trash(self) -> None:
        """Delete what the trash holds, in a thread: after each eviction, and at start-up
        (a crash may have left evicted directories there)."""
        self.run(empty, self.trash).addCallbacks(self.emptied, lambda failure: self.log.failure(
            "emptying {trash}", failure, trash=self.trash))

    def emptied(self, failures: list[str]) -> None:
        if failures:
            self.log.warn("pull-through: evicted files left in {trash}: {what}",
                          trash=self.trash, what="; ".join(failures[:3]))

    def prune(self, fresh: Catalog) -> Catalog:
        """A scan's snapshot less the modules evicted since it began (it may have found them
        before their directory moved). Once a scan no longer finds one, it is forgotten."""
        if not self.evicted:
            return fresh
        stale = [key for key, identity in self.evicted.items()
                 if (found := fresh.get(*key)) is not None and found.identity == identity]
        self.evicted = {key: self.evicted[key] for key in stale}
        return fresh.without(stale) if stale else fresh


def trash_name(name: str, version: str) -> str:
    """A fresh name in the trash for an evicted version directory (one of :data:`EVICTED`)."""
    return f"{name}@{version}.{uuid.uuid4().hex[:12]}"


def empty(trash: str) -> list[str]:
    """Delete the evicted directories in ``trash`` (this eviction's, and any a crash left);
    what could not be deleted, as text. Runs in a thread.

    Only names :func:`trash_name` gives, and only through a descriptor of the trash
    opened without following a symlink and checked to be hps's own: a trash someone
    swapped for a symlink or a directory of theirs is never emptied.
    """
    try:
        fd = open_own_dir(trash)
    except FileNotFoundError:
        return []
    except OSError as err:
        return [str(err)]
    try:
        with os.scandir(fd) as listing:
            entries = [entry for entry in listing if EVICTED.fullmatch(entry.name)]
        return [failure for entry in entries if (failure := delete(entry, fd, trash))]
    finally:
        os.close(fd)


def delete(entry: os.DirEntry, fd: int, trash: str) -> str | None:
    """Delete one entry of the directory ``fd``, never following a symlink; why not, or None."""
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)
    except FileNotFoundError:
        pass  # another eviction's thread is emptying it too
    except OSError as err:
        return f"{os.path.join(trash, entry.name)}: {err.strerror}"
    return None


class RegistrySource:
    """The blocking fetch, on a daemon thread, with ``hps pull``'s client and checks.

    Daemon threads, not the reactor's pool: a hung registry must neither starve the
    catalog's scans of threads nor hold up the process's exit. Their number is bounded
    by :data:`MAX_PENDING`; at most :data:`PER_REGISTRY` of them talk to one registry.
    """

    log = Logger()

    def __init__(self, templates: Iterable[str], cache_root: str,
                 reactor: IReactorFromThreads,
                 plain_http: bool = False, timeout: float = TIMEOUT,
                 retries: int = RETRIES) -> None:
        self.templates = tuple(templates)
        self.cache_root = cache_root
        # Credentials as hps pull finds them: HPS_REGISTRY_* env, else ~/.docker/config.json.
        # Blobs are staged in the cache tree (anonymous files, never seen by a scan): in a pod,
        # /tmp is a few MiB of memory while the cache tree is the disk volume meant for this.
        self.options = Options(plain_http=plain_http, timeout=timeout, retries=retries,
                               scratch=cache_root)
        self.slots: dict[str, threading.BoundedSemaphore] = {}
        self.lock = threading.Lock()
        self.run: Runner = in_daemon_threads(
            reactor, lambda name, version: f"upstream fetch {name} {version}")
        """Where :meth:`blocking` runs (the in-memory harness routes it to its pool)."""

    def fetch(self, name: str, version: str) -> Deferred:
        return self.run(self.blocking, name, version)

    def blocking(self, name: str, version: str) -> Artifact:
        """The module in the cache tree (fetched now if absent), examined like a scan does."""
        if not os.path.lexists(os.path.join(self.cache_root, name, version, MODULE_FILE)):
            self.pull(name, version)
        try:
            return examine(self.cache_root, name, version)
        except (Skip, OSError) as err:
            raise Unavailable(f"cached module unusable: {err}") from None

    def pull(self, name: str, version: str) -> None:
        """Try each template in order; the first module found is written atomically."""
        target = Path(self.cache_root, name, version, MODULE_FILE)
        try:
            own_dir(self.cache_root)  # checked at start-up; made again if deleted since
        except OSError as err:
            raise Unavailable(f"cannot write the cache tree: {err}") from None
        errors: list[str] = []
        for template in self.templates:
            try:
                ref = expand(template, name, version)
            except ValueError:  # e.g. a "+build" version: no OCI tag can spell it
                continue
            with self.slot(ref.registry):
                try:
                    fetch_to(ref, target, self.options, root=Path(self.cache_root))
                except NotFound:
                    continue
                except NotWasm as err:  # never served; another template may hold a module
                    self.log.warn("pull-through: {ref}: {err}", ref=str(ref), err=err)
                    continue
                except PullError as err:
                    errors.append(str(err))
                    continue
                except OSError as err:
                    raise Unavailable(f"cannot write the cache tree: {err}") from None
            return
        if errors:
            raise Unavailable("; ".join(errors))
        raise Missing(f"no registry holds {name} {version}")

    def slot(self, registry: str) -> AbstractContextManager:
        with self.lock:
            return self.slots.setdefault(registry, threading.BoundedSemaphore(PER_REGISTRY))


def make_upstream(state: ServerState, reactor: IReactorTime,
                  source_factory: Callable[..., Source] = RegistrySource) -> Upstream | None:
    """The pull-through service for ``state.config``, or None when it is off; ConfigError
    if the cache tree is not the server's own."""
    config = state.config
    if not config.pull_through:
        return None
    cache_root = cache_tree(config.cache_dir)
    try:  # its modules are served: never from a directory someone else could write
        own_dir(cache_root)
    except OSError as err:
        raise ConfigError(f"cache-dir: the pull-through cache tree: {err}") from None
    source = source_factory(config.upstream, cache_root, reactor,
                            plain_http=config.upstream_plain_http)
    upstream = Upstream(state, source, reactor, config.upstream_allow, cache_root,
                        config.upstream, wait=config.upstream_wait, run=in_threads(reactor))
    upstream.empty_trash()
    return upstream
