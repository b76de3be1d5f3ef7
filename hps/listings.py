"""The catalog's listings (JSON indexes, HTML pages), built once per snapshot and served
like artifacts: strong ETag, ``If-None-Match`` → 304, a gzip variant, shared chunks.

With 10,000 artifacts ``/plugins/index.json`` is 3.2 MB and ~100 ms of work; built
per request on the reactor it stalled every download behind it. Here each page is
built once per *generation* and kept until the generation changes:

    generation = (catalog snapshot, extra generation)

- a new snapshot (a rescan swapped one in) starts a new generation at once;
- ``extra``, a function given to :class:`Listings`, returns a counter that changes
  whenever anything else the pages show changes (e.g. ``Misses.generation``, the
  recent misses of pull-through in ``index.json`` and on the landing page). A change
  seen on a request bumps the *extra generation*, at most once per
  ``REBUILD_EVERY`` seconds however often the counter moves (in between, the pages
  built last are served). The page's ``build`` closure reads that data itself when
  it runs, possibly in a thread, so it must read a snapshot of it taken on the
  reactor thread (a list built for the request, a tuple).

Pages whose size grows with the catalog (``heavy``) are built off the reactor
thread once the catalog holds ``THREAD_ABOVE`` artifacts; requests arriving
meanwhile wait for the one build in progress.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from hps import replies
from hps.catalog import Catalog
from hps.negotiate import (
    GZIP,
    Accept,
    Variant,
    not_modified,
    requested,
    variant_etag,
    variant_fields,
)
from hps.work import in_threads

THREAD_ABOVE = 500
"""Artifacts above which heavy pages are built in a thread (~5 ms of work on the reactor)."""
REBUILD_EVERY = 5.0
"""Seconds between rebuilds caused by a change of ``extra`` (see :class:`Listings`)."""
GZIP_ABOVE = 1024
CHUNK = 65536
"""Pieces a body is pre-split into, handed to every transport as they are (shared, no copy)."""
CACHE_CONTROL = replies.SHORT.encode()

Key = tuple[str, ...]
Build = Callable[[], bytes]


PageVariant = Variant[tuple[bytes, ...]]
"""One encoding of a page: its body in chunks."""


def split(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i:i + CHUNK] for i in range(0, len(data), CHUNK)) or (b"",)


@implementer(IPushProducer)
class Chunks:
    """Feed pre-split chunks to a request, honouring the transport's back-pressure."""

    def __init__(self, request: Request, chunks: tuple[bytes, ...]) -> None:
        self.request, self.chunks, self.next = request, chunks, 0
        self.paused = self.stopped = False
        self.progress = getattr(request.channel, "progress", None) or (lambda: None)

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.next < len(self.chunks):
            self.request.write(self.chunks[self.next])
            self.next += 1
            self.progress()
        if self.next == len(self.chunks) and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


@dataclass(frozen=True)
class Rendered:
    """One page, both encodings, ready to send to any number of clients."""

    identity: PageVariant
    gzipped: PageVariant | None

    def variant(self, accept: Accept) -> PageVariant:
        """The variant ``accept`` chooses (the same rule as artifacts')."""
        if self.gzipped is not None and accept.wants_gzip():
            return self.gzipped
        return self.identity


def render(body: bytes, content_type: str, compress: bool = True) -> Rendered:
    """Hash and, with ``compress`` (gzip on), compress ``body`` once (may run in a thread:
    touches nothing shared)."""
    etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:40].encode()
    packed = None
    if compress and len(body) > GZIP_ABOVE:
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        packed = packed if len(packed) < len(body) else None

    def variant(data: bytes, encoding: bytes | None) -> PageVariant:
        tag = variant_etag(etag, encoding)
        # A page's variants are fixed when it is built: negotiable only if it has a gzip one.
        fields = ((b"Content-Type", content_type.encode()), (b"Cache-Control", CACHE_CONTROL),
                  *variant_fields(tag, encoding, packed is not None))
        return Variant(tag, encoding, len(data), fields, split(data))

    return Rendered(variant(body, None), None if packed is None else variant(packed, GZIP))


class Listings:
    """Rendered pages of the current generation; see the module docstring."""

    log = Logger()

    def __init__(self, clock: IReactorTime, extra: Callable[[], int] = lambda: 0,
                 in_thread: Callable[..., Deferred] | None = None, compress: bool = True) -> None:
        self.clock = clock
        self.compress = compress
        self.extra = extra
        self.in_thread = in_thread or in_threads(clock)
        self.extra_seen = extra()
        self.extra_generation = 0
        self.last_bump = float("-inf")
        self.generation: tuple[Catalog, int] | None = None
        self.pages: dict[Key, Rendered | list[Deferred]] = {}

    def follow_extra(self) -> None:
        """Bump the extra generation if ``extra`` moved, at most once per REBUILD_EVERY."""
        seen = self.extra()
        now = self.clock.seconds()
        if seen != self.extra_seen and now - self.last_bump >= REBUILD_EVERY:
            self.extra_seen, self.last_bump = seen, now
            self.extra_generation += 1

    def get(self, catalog: Catalog, key: Key, build: Build, content_type: str,
            heavy: bool = False) -> Rendered | Deferred:
        """The page ``key`` of ``catalog``'s generation: at once, or a Deferred while built."""
        self.follow_extra()
        generation = (catalog, self.extra_generation)
        if self.generation is None or self.generation[0] is not catalog \
                or self.generation[1] != generation[1]:
            self.generation, self.pages = generation, {}  # builds in flight keep their waiters
        found = self.pages.get(key)
        if isinstance(found, Rendered):
            return found
        waiter: Deferred = Deferred()
        if found is not None:
            found.append(waiter)
            return waiter
        if not (heavy and len(catalog) > THREAD_ABOVE):
            rendered = render(build(), content_type, self.compress)
            self.pages[key] = rendered
            return rendered
        waiting = self.pages[key] = [waiter]
        building = self.in_thread(lambda: render(build(), content_type, self.compress))
        building.addBoth(self._built, generation, key, waiting)
        return waiter

    def _built(self, result: Rendered | Failure, generation: tuple[Catalog, int], key: Key,
               waiting: list[Deferred]) -> None:
        if isinstance(result, Failure):
            self.log.failure("building {key} failed", result, key="/".join(key))
            if self.pages.get(key) is waiting:
                del self.pages[key]  # the next request tries again
        elif self.generation is generation and self.pages.get(key) is waiting:
            self.pages[key] = result
        for waiter in waiting:
            waiter.callback(result if isinstance(result, Rendered) else None)


def send(request: Request, rendered: Rendered) -> bytes | int:
    """Answer ``request`` with ``rendered``: 200 (body or HEAD) or 304."""
    variant = rendered.variant(requested(request.requestHeaders))
    for name, value in variant.fields:
        request.setHeader(name, value)
    if not_modified(request.getHeader(b"if-none-match"), None, variant.etag, 0):
        request.setResponseCode(http.NOT_MODIFIED)
        return _no_body(request)
    request.setHeader(b"content-length", b"%d" % variant.size)
    if request.method == b"HEAD":
        return _no_body(request)
    if len(variant.body) == 1:
        return variant.body[0]
    producer = Chunks(request, variant.body)
    request.registerProducer(producer, True)
    producer.resumeProducing()
    return NOT_DONE_YET


def _no_body(request: Request) -> int:
    request.write(b"")
    request.finish()
    return NOT_DONE_YET


def answer(request: Request, page: Rendered | Deferred) -> bytes | int:
    """:func:`send` now, or when the page is built (503 if that failed)."""
    if isinstance(page, Rendered):
        return send(request, page)
    return replies.answer_when(request, page, lambda rendered: (
        send(request, rendered) if isinstance(rendered, Rendered)
        else replies.retry_later(request)))
