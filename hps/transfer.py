"""Sending one artifact through twisted.web: validators, ranges, gzip, bytes out.

``ArtifactFile`` stays a ``static.File`` (its range producers read the file
when the body is not in memory), but every decision is made by the pure
functions in :mod:`hps.negotiate`, shared with :mod:`hps.fastpath`.

The body always matches the headers: in-memory bodies are immutable
snapshots keyed by SHA-256, and an opened file must be the very file the
catalog hashed (same identity), else the client gets a retryable 503.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import http, static
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from hps.bodies import BodyCache
from hps.catalog import Artifact, identity_of
from hps.negotiate import (
    CHUNK,
    UNSATISFIABLE,
    Span,
    Variant,
    accepts_gzip,
    not_modified,
    pick_range,
    range_applies,
)

WASM_TYPE = b"application/wasm"


@dataclass(frozen=True)
class Policy:
    """How artifacts are served; derived once from the config."""

    cache_control: bytes
    gzip: bool

    @classmethod
    def from_config(cls, max_age: int, immutable: bool, gzip: bool) -> Policy:
        value = f"public, max-age={max_age}" + (", immutable" if immutable else "")
        return cls(value.encode(), gzip)


def choose_variant(artifact: Artifact, cache: BodyCache | None, policy: Policy,
                   accept_encoding: bytes | None) -> Variant:
    """gzip when the client takes it and a smaller copy exists; identity otherwise."""
    body = cache.get(artifact) if cache is not None else None
    if body is None:
        return Variant(artifact.etag.encode(), None, artifact.size, None)
    return body.variant(policy.gzip, accepts_gzip(accept_encoding))


def variant_headers(artifact: Artifact, variant: Variant,
                    policy: Policy) -> list[tuple[bytes, bytes]]:
    """Headers shared by 200, 206, 304 and 416 of one variant (both paths use these)."""
    headers = [
        (b"Content-Type", WASM_TYPE),
        (b"ETag", variant.etag),
        (b"Last-Modified", http.datetimeToString(int(artifact.mtime))),
        (b"Cache-Control", policy.cache_control),
        (b"Accept-Ranges", b"bytes"),
    ]
    if variant.encoding:
        headers.append((b"Content-Encoding", variant.encoding))
    if policy.gzip:
        headers.append((b"Vary", b"Accept-Encoding"))
    return headers


@implementer(IPushProducer)
class SliceProducer:
    """Feed ``span`` of a chunked body to ``write``, a chunk at a time, honouring back-pressure.

    Whole chunks are handed over as they are, shared by every client; only the
    ends of a range are sliced (copied).
    """

    def __init__(self, write: Callable[[bytes], None], chunks: tuple[bytes, ...], span: Span,
                 finished: Callable[[], None], progress: Callable[[], None]) -> None:
        self.write, self.chunks, self.finished, self.progress = write, chunks, finished, progress
        self.pos, self.end = span[0], span[1] + 1
        self.paused = self.stopped = False

    def next_piece(self) -> bytes:
        index, offset = divmod(self.pos, CHUNK)
        chunk = self.chunks[index]
        stop = min(len(chunk), self.end - index * CHUNK)
        self.pos += stop - offset
        return chunk if offset == 0 and stop == len(chunk) else chunk[offset:stop]

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.pos < self.end:
            self.write(self.next_piece())
            self.progress()
        if self.pos >= self.end and not self.stopped:
            self.stopped = True
            self.finished()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


class Replaced(Exception):
    """The file on disk is no longer the one the catalog describes."""


class ArtifactFile(static.File):
    """One artifact through twisted.web: conditionals, ranges, gzip, memory or file."""

    log = Logger()

    def __init__(self, artifact: Artifact, policy: Policy,
                 cache: BodyCache | None = None) -> None:
        super().__init__(artifact.path, defaultType="application/octet-stream")
        self.type, self.encoding = WASM_TYPE.decode(), None
        self.artifact, self.policy, self.cache = artifact, policy, cache

    def getFileSize(self) -> int:
        return self.artifact.size

    def getModificationTime(self) -> float:
        return self.artifact.mtime

    def openForReading(self) -> BinaryIO:
        handle = super().openForReading()
        if identity_of(os.fstat(handle.fileno())) != self.artifact.identity:
            handle.close()
            raise Replaced(self.artifact.path)
        return handle

    def render_GET(self, request: Request) -> bytes | int:
        variant = choose_variant(self.artifact, self.cache, self.policy,
                                 request.getHeader(b"accept-encoding"))
        handle = None
        if variant.chunks is None:
            try:
                handle = self.openForReading()
            except (Replaced, OSError):
                return self.replaced(request)
        for name, value in variant_headers(self.artifact, variant, self.policy):
            request.setHeader(name, value)
        span = self.decide(request, variant)
        if span is None or request.method == b"HEAD":
            return self.finish_early(request, handle)
        return self.send(request, variant, span, handle)

    render_HEAD = render_GET

    def decide(self, request: Request, variant: Variant) -> Span | None:
        """Set the status and length; return the span to send (None: no body)."""
        mtime = self.artifact.mtime
        if not_modified(request.getHeader(b"if-none-match"),
                        request.getHeader(b"if-modified-since"), variant.etag, mtime):
            request.setResponseCode(http.NOT_MODIFIED)
            return None
        wanted = None
        if range_applies(request.getHeader(b"if-range"), variant.etag, mtime):
            wanted = pick_range(request.getHeader(b"range"), variant.size)
        if wanted is UNSATISFIABLE:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % variant.size)
            request.setHeader(b"content-length", b"0")
            return None
        if isinstance(wanted, tuple):
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range",
                              b"bytes %d-%d/%d" % (wanted[0], wanted[1], variant.size))
            span = wanted
        else:
            span = (0, variant.size - 1)
        request.setHeader(b"content-length", b"%d" % (span[1] - span[0] + 1))
        return span

    def finish_early(self, request: Request, handle: BinaryIO | None) -> int:
        """No body (HEAD, 304, 416): headers only, then done."""
        if handle is not None:
            handle.close()
        request.write(b"")
        request.finish()
        return NOT_DONE_YET

    def send(self, request: Request, variant: Variant, span: Span,
             handle: BinaryIO | None) -> int:
        if variant.chunks is None:
            assert handle is not None
            size = span[1] - span[0] + 1
            static.SingleRangeStaticProducer(request, handle, span[0], size).start()
            return NOT_DONE_YET

        def finished() -> None:
            request.unregisterProducer()
            request.finish()

        channel = request.channel
        progress = getattr(channel, "progress", None) or (lambda: None)
        producer = SliceProducer(request.write, variant.chunks, span, finished, progress)
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return NOT_DONE_YET

    def replaced(self, request: Request) -> bytes:
        self.log.info("{path} changed since the last scan; asking the client to retry",
                      path=self.artifact.path)
        request.setResponseCode(http.SERVICE_UNAVAILABLE)
        request.setHeader(b"retry-after", b"1")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"plugin is being replaced, retry\n"
