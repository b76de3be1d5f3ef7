"""The fast path for HTTP/2 streams: a plain artifact download without twisted.web's Request.

For every HTTP/2 stream twisted.web builds an ``H2Stream`` and a ``Request``, converts
each header field into ``Headers``, routes the path and writes the response head field
by field: as much Python per download as sending a 150 KB body. The request a gateway
sends is the one :mod:`hps.fastpath` answers on HTTP/1.1 (``GET`` or ``HEAD`` of exactly
a module's URL, no body, no range, no condition; :func:`hps.head.parse_stream`), so
for that request a :class:`QuickStream` takes the ``H2Stream``'s place in the
connection: it answers with the variant's header list, built once a second, and sends
the body through the same :class:`hps.sender.Sender`, body turns and backlog as every
HTTP/2 response. The stream's HTTP/2 side (flow control, priority, resets, the send
deadline, END_STREAM) stays the connection's (:mod:`hps.http2`).

Anything else, and anything this path cannot answer at once (catalog not loaded, an
artifact missing or not openable, a gzip variant still being made, a draining server,
a connection admitted for probes only), goes to twisted.web untouched.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from hps.fastpath import ArtifactFastPath, access_fields
from hps.files import Source
from hps.head import Parsed
from hps.headers import EVERY_RESPONSE
from hps.http2 import WHOLE_BYTES
from hps.sender import H2Backlog, Sender
from hps.transfer import ArtifactVariant

PROTOCOL = b"HTTP/2"
_EVERY = tuple((name.lower(), value) for name, value in EVERY_RESPONSE)
_H2_FIELDS = "h2"
"""The key of this writer's memo in ``Variant.openings``."""


def response_fields(variant: ArtifactVariant, date: bytes) -> list[tuple[bytes, bytes]]:
    """The 200 response's fields (without ``:status``) in twisted.web's order and case,
    built once per variant per second (a fresh list each call: twisted.web's writer, the
    fallback after a table size change, inserts ``:status`` into it)."""
    cached: Any = variant.openings.get(_H2_FIELDS)
    if cached is None or cached[0] is not date:
        fields = (*_EVERY, (b"date", date),
                  *((name.lower(), value) for name, value in variant.fields),
                  (b"content-length", b"%d" % variant.size))
        cached = variant.openings[_H2_FIELDS] = (date, fields)
    return list(cached[1])


class QuickStream:
    """One fast-path download on an HTTP/2 stream: the calls its connection makes of a
    twisted.web ``H2Stream`` (``requestComplete``, ``windowUpdated``,
    ``flowControlBlocked``, ``connectionLost``, ``abortConnection``), and the consumer of
    its :class:`~hps.sender.Sender`."""

    log = Logger()

    def __init__(self, connection: Any, stream_id: int, fast: ArtifactFastPath,
                 parsed: Parsed, variant: ArtifactVariant, source: Source) -> None:
        self.connection, self.streamID, self.fast = connection, stream_id, fast
        self.parsed, self.variant = parsed, variant
        self.source: Source | None = source
        self.sender: Sender | None = None
        self.sent = 0
        self.started = self.ended = False
        self.blocked = False
        """Flow control paused the sender (the window, not the backlog or a turn)."""

    # -- the connection's calls --------------------------------------------------------------

    def receiveDataChunk(self, data: bytes, flowControlledLength: int) -> None:
        """Never called: only a request whose HEADERS ended the stream comes here."""

    def requestComplete(self) -> None:
        """The request is whole: answer it."""
        connection, variant = self.connection, self.variant
        self.started = True
        connection.site.in_flight += 1
        second = int(connection.clock.seconds())
        fields = response_fields(variant, self.fast.clock.at(second))
        source, self.source = self.source, None
        if not self.parsed.head and source is not None and self.send_whole(source, fields):
            return
        connection.send_head(self.streamID, b"200", fields)
        if self.parsed.head or source is None:
            self.finished()
            return
        self.sender = Sender(source, (0, variant.size - 1), None, self.write, self.progress,
                             self.finished, self.abortConnection,
                             H2Backlog(self, connection))
        self.sender.start(flushed=False)

    def send_whole(self, source: Source, fields: list[tuple[bytes, bytes]]) -> bool:
        """A small body, read at once and sent with its head in one write, if its connection
        can (:meth:`hps.http2.PluginH2Connection.send_whole`); else False, nothing sent."""
        if not self.connection.can_send_whole(self.streamID, self.variant.size):
            return False
        body = whole_body(self.variant, source)
        if body is None or not self.connection.send_whole(self.streamID, b"200", fields, body):
            return False
        self.sent = len(body)
        self.finished()
        return True

    def windowUpdated(self) -> None:
        """The window opened: a sender flow control paused goes on (twisted.web's rule)."""
        if self.blocked and self.sender is not None \
                and self.connection.remainingOutboundWindow(self.streamID) > 0:
            self.blocked = False
            self.sender.resumeProducing()

    def flowControlBlocked(self) -> None:
        if self.sender is not None and not self.blocked:
            self.blocked = True
            self.sender.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:
        """Reset by the client, cut by the send deadline, or the connection went."""
        self.source = None
        if self.sender is not None:
            self.sender.stopProducing()
        if self.started and not self.ended:
            self.ended = True
            self.connection.site.in_flight -= 1
            fields = self.line_fields()
            self.connection.site.finished_response(route="artifact", status=200,
                                                   aborted=True, **fields)

    def abortConnection(self) -> None:
        """End this stream with RST_STREAM (the file changed, or the deadline passed)."""
        self.connection.abortRequest(self.streamID)

    # -- the sender's consumer ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.connection.writeDataToStream(self.streamID, data)

    def progress(self, count: int) -> None:
        self.sent += count

    def finished(self) -> None:
        """The last byte is queued: END_STREAM follows it; log and count the response."""
        if self.ended:
            return
        self.ended = True
        connection = self.connection
        connection.endRequest(self.streamID)
        connection.site.in_flight -= 1
        log_response(connection, self.parsed, self.sent)

    def line_fields(self) -> dict[str, Any]:
        return access_fields(self.parsed, self.connection.peer(), PROTOCOL, self.sent)


def whole_body(variant: ArtifactVariant, source: Source) -> bytes | None:
    """The variant's body in one read, if it may go whole (at most ``WHOLE_BYTES``, not
    empty) and the file is still what the catalog saw (else the sender's path notices,
    and cuts the stream); None otherwise."""
    size = variant.size
    if not 0 < size <= WHOLE_BYTES or not source.fresh():
        return None
    body = source.read(0, size)
    return body if len(body) == size else None


def log_response(connection: Any, parsed: Parsed, sent: int) -> None:
    """Log and count a response this path sent whole (``sent`` bytes queued)."""
    site = connection.site
    line = site.access.line(**access_fields(parsed, connection.peer(), PROTOCOL, sent),
                            status=200, now=int(connection.clock.seconds()))
    site.finished_fast(sent, None if parsed.head else (parsed.name, parsed.version), line)


class H2FastPath:
    """Implements :class:`hps.http2.QuickRequests` for artifact downloads."""

    def __init__(self, fast: ArtifactFastPath) -> None:
        self.fast = fast

    def open(self, fields: list[tuple[bytes, bytes]], plain: bool = False
             ) -> tuple[Parsed, ArtifactVariant, Source] | None:
        """The request's parse, variant and open file, if this path can answer it now
        (and, with ``plain``, if its fields are plainly valid: :func:`hps.head.plain_fields`)."""
        fast = self.fast
        valid, parsed = fast.parse_fields(fields)
        if parsed is None or (plain and not valid) or fast.state.draining:
            return None
        artifact = fast.state.catalog.get(parsed.name, parsed.version)
        transfer = fast.transfer
        if artifact is None or transfer.gzip_pending(artifact, parsed.accept):
            return None
        opened = transfer.open(artifact, parsed.accept, quiet=True)
        if opened is None:
            return None  # twisted.web answers the 503 (and logs why)
        return (parsed, *opened)

    def stream(self, connection: Any, event: Any) -> QuickStream | None:
        """A :class:`QuickStream` for the request ``event`` (h2's ``RequestReceived``) if
        this path can answer it now; else None, and twisted.web answers."""
        if event.stream_ended is None:
            return None  # a body may follow: twisted.web reads (and refuses) it
        opened = self.open(event.headers)
        return None if opened is None else QuickStream(connection, event.stream_id,
                                                       self.fast, *opened)

    def whole(self, connection: Any, stream_id: int,
              fields: list[tuple[bytes, bytes]]) -> bool:
        """Answer a request h2 has not seen, whole, if its fields are plainly valid (what
        h2 would check: :func:`hps.head.plain_fields`), it is a GET this path answers,
        and its body is small enough for :meth:`PluginH2Connection.answer_whole`."""
        opened = self.open(fields, plain=True)
        if opened is None:
            return False
        parsed, variant, source = opened
        if parsed.head or not connection.can_answer_whole(variant.size):
            return False
        body = whole_body(variant, source)
        second = int(connection.clock.seconds())
        if body is None or not connection.answer_whole(
                stream_id, b"200", response_fields(variant, self.fast.clock.at(second)), body):
            return False
        log_response(connection, parsed, len(body))
        return True
