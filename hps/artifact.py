"""An artifact through twisted.web: the module's one resource for everything the fast path
declines (ranges, conditionals, HEAD, TLS, HTTP/2).

A plain ``Resource``, not a ``static.File``: ``static.File.render_GET`` restats the path on
every request, lets If-Modified-Since win over If-None-Match, ignores If-Range and serves
multipart ranges uncapped, so every hook would be overridden against its grain. Here the
decisions are :mod:`hps.negotiate`'s and :class:`hps.transfer.Transfer`'s, shared with the
fast path, and the bytes move through one :class:`hps.sender.Sender`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from hps import metrics
from hps.bodies import TURN_WAIT
from hps.catalog import Artifact
from hps.files import Source
from hps.negotiate import (
    UNSATISFIABLE,
    Accept,
    Span,
    not_modified,
    pick_range,
    range_applies,
    requested,
)
from hps.replies import answer_when, retry_later
from hps.sender import H2Backlog, Sender, TlsTurn, zero_copy
from hps.transfer import GZIP_WAIT, ArtifactVariant, Transfer


class ArtifactResource(Resource):
    """One artifact through twisted.web: conditionals, ranges, gzip, bytes via a Sender."""

    isLeaf = True

    def __init__(self, artifact: Artifact, transfer: Transfer) -> None:
        super().__init__()
        self.artifact, self.transfer = artifact, transfer

    def render_GET(self, request: Request) -> bytes | int:
        accept = requested(request.requestHeaders)
        if self.transfer.gzip_pending(self.artifact, accept):
            self.respond_when_ready(request, accept)
            return NOT_DONE_YET
        return self.respond_in_turn(request, accept)

    def respond_when_ready(self, request: Request, accept: Accept) -> None:
        """Wait (at most GZIP_WAIT) for the variant, then answer: gzip on the wire from the
        first download, rather than identity to whoever comes before the compressor."""
        assert self.transfer.variants is not None
        waiting = self.transfer.variants.when_ready(self.artifact)
        waiting.addTimeout(GZIP_WAIT, request.site.reactor)
        answer_when(request, waiting, lambda _: self.respond_in_turn(request, accept))

    def respond_in_turn(self, request: Request, accept: Accept) -> bytes | int:
        """A GET over TLS HTTP/1.1 waits for its body's turn (:mod:`hps.bodies`) before its
        head: one that gets none within TURN_WAIT is answered 503 + Retry-After (the gateway
        retries it at once) rather than a 200 whose body starts too late for its client's
        deadline. Whatever the answer, the turn ends with the request."""
        channel: Any = request.channel
        turn = TlsTurn.of(channel, channel.transport) if request.method == b"GET" else None
        if turn is None:  # plain TCP never waits; HTTP/2 heads go first (hps.http2's turns)
            return self.respond(request, accept)
        return TurnWait(self, request, accept, turn).begin()

    def respond(self, request: Request, accept: Accept) -> bytes | int:
        opened = self.transfer.open(self.artifact, accept)
        if opened is None:
            return retry_later(request)  # replaced meanwhile, or unreadable (logged)
        variant, source = opened
        for name, value in variant.fields:
            request.setHeader(name, value)
        span = self.decide(request, variant)
        if span is None or request.method == b"HEAD":
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        self.send(request, source, span)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def decide(self, request: Request, variant: ArtifactVariant) -> Span | None:
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

        request.write(b"")  # the head goes first (over TLS HTTP/1.1 it already has a turn)
        turn = H2Backlog.of(channel) or TlsTurn.of(channel, transport)
        sender = Sender(source, span, transport, request.write, progress, finished,
                        (transport or channel).abortConnection, turn)
        request.registerProducer(sender, True)
        sender.start(flushed=False)


class TurnWait:
    """One request waiting for its body's turn (:meth:`ArtifactResource.respond_in_turn`).

    A herd queues hundreds at once, each holding this while it waits: one timer and a
    place in the gate, ~1 KiB. Waiting on Deferreds (the gate's ``wait``, its timeout and
    :func:`hps.replies.answer_when`) held ~5 KiB of callbacks and closures per request
    (tracemalloc, bench/README.md); the answer goes through ``answer_when`` once known.
    """

    __slots__ = ("accept", "request", "resource", "timer", "turn")

    def __init__(self, resource: ArtifactResource, request: Request, accept: Accept,
                 turn: TlsTurn) -> None:
        self.resource, self.request, self.accept, self.turn = resource, request, accept, turn
        self.timer: Any = None

    def begin(self) -> bytes | int:
        request = self.request
        request.notifyFinish().addBoth(self.ended)
        assert self.turn.gate is not None
        if self.turn.gate.admit(self.turn.key, self.granted):
            return self.resource.respond(request, self.accept)
        site: Any = request.site
        # Never beyond the send deadline, which would cut a body waiting that long anyway.
        self.timer = site.reactor.callLater(min(TURN_WAIT, site.limits.send_timeout),
                                            self.expired)
        return NOT_DONE_YET

    def granted(self) -> None:
        if self.timer is None:  # turned away, or the request ended, meanwhile
            return
        self.timer.cancel()
        self.timer = None
        answer_when(self.request, succeed(None),
                    lambda _: self.resource.respond(self.request, self.accept))

    def expired(self) -> None:
        """No turn within TURN_WAIT: its place goes, and 503 + Retry-After."""
        self.timer = None
        self.turn.done()
        metrics.observe_body_turned_away()
        answer_when(self.request, succeed(None), lambda _: retry_later(self.request))

    def ended(self, result: object) -> None:
        """The request finished or its client left: the turn (or place) goes to the next."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.turn.done()
