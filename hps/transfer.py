"""Sending one artifact: which variant, which validators, which span, and its bytes.

``ArtifactFile`` stays a ``static.File`` for twisted.web, but every decision is
made by the pure functions in :mod:`hps.negotiate` and by :class:`Transfer`, both
shared with :mod:`hps.fastpath`, and the bytes move through one
:class:`hps.sender.Sender` (sendfile on plain TCP, bounded reads elsewhere).

The body always matches the headers: the descriptor a response reads from was
opened and checked against the identity the catalog hashed (see
:mod:`hps.files`), and the response keeps it to the end, else the client gets a
retryable 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from twisted.web import http, static
from twisted.web.server import NOT_DONE_YET, Request

from hps.catalog import Artifact, Catalog, Identity
from hps.files import FileTable, Replaced, Source
from hps.negotiate import (
    GZIP,
    UNSATISFIABLE,
    Accept,
    Span,
    not_modified,
    pick_range,
    range_applies,
    requested,
    variant_etag,
    variant_fields,
)
from hps.replies import answer_when, retry_later
from hps.sender import H2Backlog, Sender, zero_copy
from hps.variants import GzipFile, GzipVariants

WASM_TYPE = b"application/wasm"
GZIP_WAIT = 2.0
"""Seconds a gzip-accepting request waits for its module's variant being prepared (a
sibling check takes milliseconds, compressing an 8 MB module ~0.3 s)."""


@dataclass(frozen=True)
class Policy:
    """How artifacts are served; derived once from the config."""

    cache_control: bytes
    gzip: bool

    @classmethod
    def from_config(cls, max_age: int, immutable: bool, gzip: bool) -> Policy:
        value = f"public, max-age={max_age}" + (", immutable" if immutable else "")
        return cls(value.encode(), gzip)


@dataclass(frozen=True)
class Variant:
    """One representation of an artifact: the module itself, or its gzip file."""

    etag: bytes
    encoding: bytes | None
    size: int
    gzip: GzipFile | None = None


def identity_variant(artifact: Artifact) -> Variant:
    return Variant(artifact.etag.encode(), None, artifact.size)


def variant_headers(artifact: Artifact, variant: Variant,
                    policy: Policy) -> list[tuple[bytes, bytes]]:
    """Headers shared by 200, 206, 304 and 416 of one variant: the one builder both paths
    use. They depend on the artifact's whole identity (two copies of the same bytes
    differ in Last-Modified), never on the ETag alone."""
    return [
        (b"Content-Type", WASM_TYPE),
        (b"Last-Modified", http.datetimeToString(int(artifact.mtime))),
        (b"Cache-Control", policy.cache_control),
        (b"Accept-Ranges", b"bytes"),
        # With gzip on, any module may get a variant (being made, or remade): negotiable.
        *variant_fields(variant.etag, variant.encoding, policy.gzip),
    ]


class Transfer:
    """What every artifact response needs: the policy, the open files, the gzip variants."""

    log = Logger()

    def __init__(self, policy: Policy, files: FileTable | None = None,
                 variants: GzipVariants | None = None) -> None:
        self.policy = policy
        self.files = files or FileTable()
        self.variants = variants
        self.unreadable: set[tuple[str, Identity]] = set()
        self.chosen: dict[int, tuple[object, Variant]] = {}
        self.served: Callable[[Artifact], None] = lambda artifact: None
        """Told of every artifact a response is about to send (pull-through's eviction order)."""

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        """Close (once no response holds them) the files no artifact of ``new`` names."""
        live = {(a.path, a.identity) for a in new.artifacts.values()}
        self.files.forget_except(live | self.variant_files())
        self.unreadable &= live  # one line per unreadable file, across rescans
        self.chosen.clear()

    def variant_files(self) -> set[tuple[str, Identity]]:
        if self.variants is None:
            return set()
        return {(f.path, f.identity) for f in self.variants.ready.values()}

    def gzip_pending(self, artifact: Artifact, accept: Accept) -> bool:
        """Would this client get gzip once the module's variant, being prepared, is ready?"""
        return (self.policy.gzip and self.variants is not None
                and accept.wants_gzip() and self.variants.preparing(artifact))

    def choose(self, artifact: Artifact, accept: Accept) -> Variant:
        """The variant ``accept`` chooses among those ready: gzip when enabled and made."""
        found = None
        # The chooser is asked first: most requests of a kind (a gateway's) never look further.
        if (self.policy.gzip and self.variants is not None
                and accept.wants_gzip()):
            found = self.variants.get(artifact)
        # Built once per artifact and variant file: every download of a module asks again.
        origin: object = artifact if found is None else found
        memo = self.chosen.get(id(origin))
        if memo is not None and memo[0] is origin:  # it holds origin: the id is not reused
            return memo[1]
        if found is None:
            variant = identity_variant(artifact)
        else:
            etag = variant_etag(artifact.etag.encode(), GZIP)
            variant = Variant(etag, GZIP, found.size, found)
        self.chosen[id(origin)] = (origin, variant)
        return variant

    def open(self, artifact: Artifact, accept: Accept,
             quiet: bool = False) -> tuple[Variant, Source] | None:
        """The variant to send and a verified source of its bytes; None: answer 503
        (logged, unless ``quiet``: the fast path declines and twisted.web asks again)."""
        self.served(artifact)
        variant = self.choose(artifact, accept)
        found = variant.gzip
        if found is not None:
            try:
                return variant, found.source or self.files.get(found.path, found.identity)
            except OSError:  # Replaced included: our variant file changed; make it again
                assert self.variants is not None
                self.variants.drop(artifact)
                variant = identity_variant(artifact)
        try:
            return variant, self.files.get(artifact.path, artifact.identity)
        except Replaced:
            if not quiet:
                self.log.info("{path} changed since the last scan; asking the client to retry",
                              path=artifact.path)
        except OSError as err:
            key = (artifact.path, artifact.identity)
            if not quiet and key not in self.unreadable:  # one line per file, not per request
                self.unreadable.add(key)
                self.log.warn("{path} is unreadable ({why}); answering 503 until it is "
                              "readable or gone", path=artifact.path, why=err.strerror)
        return None


class ArtifactFile(static.File):
    """One artifact through twisted.web: conditionals, ranges, gzip, bytes via a Sender."""

    log = Logger()

    def __init__(self, artifact: Artifact, transfer: Transfer) -> None:
        super().__init__(artifact.path, defaultType="application/octet-stream")
        self.type, self.encoding = WASM_TYPE.decode(), None
        self.artifact, self.transfer = artifact, transfer

    def getFileSize(self) -> int:
        return self.artifact.size

    def getModificationTime(self) -> float:
        return self.artifact.mtime

    def render_GET(self, request: Request) -> bytes | int:
        accept = requested(request.requestHeaders)
        if self.transfer.gzip_pending(self.artifact, accept):
            self.respond_when_ready(request, accept)
            return NOT_DONE_YET
        return self.respond(request, accept)

    def respond_when_ready(self, request: Request, accept: Accept) -> None:
        """Wait (at most GZIP_WAIT) for the variant, then answer: gzip on the wire from the
        first download, rather than identity to whoever comes before the compressor."""
        assert self.transfer.variants is not None
        waiting = self.transfer.variants.when_ready(self.artifact)
        waiting.addTimeout(GZIP_WAIT, request.site.reactor)
        answer_when(request, waiting, lambda _: self.respond(request, accept))

    def respond(self, request: Request, accept: Accept) -> bytes | int:
        opened = self.transfer.open(self.artifact, accept)
        if opened is None:
            return retry_later(request)  # replaced meanwhile, or unreadable (logged)
        variant, source = opened
        for name, value in variant_headers(self.artifact, variant, self.transfer.policy):
            request.setHeader(name, value)
        span = self.decide(request, variant)
        if span is None or request.method == b"HEAD":
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        self.send(request, source, span)
        return NOT_DONE_YET

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

    def send(self, request: Request, source: Source, span: Span) -> None:
        channel: Any = request.channel
        transport = channel.transport  # None on HTTP/2: the stream is the consumer
        direct = zero_copy(transport)
        keep_alive = getattr(channel, "progress", None)

        def progress(count: int) -> None:
            if direct:
                request.sentLength += count  # request.write counted the others
            if keep_alive is not None:
                keep_alive()

        def finished() -> None:
            request.unregisterProducer()
            request.finish()

        request.write(b"")  # the head goes first
        sender = Sender(source, span, transport, request.write, progress, finished,
                        (transport or channel).abortConnection, H2Backlog.of(channel))
        request.registerProducer(sender, True)
        sender.start(flushed=False)
