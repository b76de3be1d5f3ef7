"""The HTTP/1.1 channel and request classes under the site.

:class:`PluginChannel` applies the head rules twisted.web lacks (:mod:`hps.head`), the
limits (:mod:`hps.limits`) and refuses with canned replies (:mod:`hps.canned`); it
records *progress* for the site's send watchdog: the channel writing, the transport
asking it to resume (its buffer drained), or an explicit :meth:`PluginChannel.progress`.

For the fast path (it answers on :meth:`PluginChannel.dataReceived` before
twisted.web parses anything), the contract is:

- call ``channel.response_began()`` before writing a response and
  ``channel.response_ended()`` once its last byte is handed to the transport
  (or the connection is lost): drain waits for it and the in-flight gauge
  counts it;
- call ``channel.progress()`` after each chunk handed to the transport;
- decline while ``state.draining`` (twisted.web then adds ``Connection: close``);
- log and count via ``channel.site.finished_response(...)``, or ``finished_fast(...)`` for a
  one-call 200 whose access line the connection already built (same counts, same line);
- answer only while ``channel.web_owned`` is false (twisted.web has never parsed a byte
  of the connection: sticky), and set ``channel.fast_queued`` when bytes are left in the
  transport's buffer by a write that went past it to the socket (plain TCP; the channel
  clears it once the buffer drains; on TLS every byte goes through the transport, in order);
- ``channel.fast_reply.lost()`` runs if the connection goes with a reply in flight.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IProducer
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from hps import metrics
from hps._twisted import (
    request_line,
    request_method,
)
from hps.canned import BAD_HOST, HEAD_TOO_BIG, SHED, TOO_LARGE, Canned, canned
from hps.head import host_ok, keeps_alive, origin_form
from hps.headers import EVERY_RESPONSE, SERVER
from hps.limits import (
    MAX_BODY,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    PROBE_PATHS,
    Limits,
    refuses_body,
)
from hps.replies import retry_later


class FastReply(Protocol):
    """A fast-path response in flight on a channel."""

    def hold(self, data: bytes) -> None:
        """Keep bytes that arrived behind the request; replayed when the reply is done."""

    def lost(self) -> None:
        """The connection went before the reply was done."""

    def pauseProducing(self) -> None:
        """The transport is full: its body waits."""

    def resumeProducing(self) -> None:
        """The transport drained: its body goes on."""


class FastPath(Protocol):
    """Answers the plainest requests without twisted.web's parser (see fastpath)."""

    def handle(self, channel: PluginChannel, data: bytes) -> bool:
        """Serve ``data`` entirely and return True, or touch nothing and return False."""


class PluginRequest(Request):
    """A request that carries :mod:`hps.headers` (never the Twisted version in ``Server``),
    and is counted."""

    route = "other"
    """The kind of page the router chose (:class:`hps.resources.Root`); the metrics' label."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = SERVER  # twisted.web's process() sets its own
        super().setHeader(name, value)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        path, authority = origin_form(path)
        if authority is not None:  # RFC 9112 3.2.2: the target's authority replaces Host
            self.requestHeaders.setRawHeaders(b"host", [authority])
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        """HTTP/1.1 bodies are refused at the head (``refuses_body``); an HTTP/2 stream's
        body arrives in DATA frames, so its stream is reset once it exceeds MAX_BODY."""
        received = self.content.tell() + len(data) if self.content is not None else 0
        if received > MAX_BODY:
            metrics.observe_refused("body")
            self.channel.abortConnection()
            return
        super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        """However the request ends (connection lost, HTTP/2 stream reset or cut), its
        body's producer stops, and lets go of the file it reads."""
        producer = self.producer
        super().connectionLost(reason)
        if producer is not None:
            producer.stopProducing()

    def process(self) -> None:
        for name, value in EVERY_RESPONSE:
            self.setHeader(name, value)
        site = self.channel.site
        site.request_began(self)
        self.notifyFinish().addBoth(site.request_ended, self)
        super().process()


class ProbeRequest(PluginRequest):
    """A request on an HTTP/2 connection admitted beyond the cap: probes only, else 503."""

    def process(self) -> None:
        if self.path in PROBE_PATHS:
            super().process()
            return
        metrics.observe_shed()
        for name, value in EVERY_RESPONSE:
            self.setHeader(name, value)
        self.write(retry_later(self))
        self.finish()


class PluginChannel(HTTPChannel):
    """HTTP/1.1 channel with an optional fast path in front of the parser."""

    fast_path: FastPath | None = None
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    MAX_LENGTH = MAX_HEAD_BYTES  # LineReceiver's cap on one line

    def __init__(self) -> None:
        super().__init__()
        self.head_since: float | None = None
        self.last_progress = 0.0
        self.fast_responses = 0
        self.cut = False
        self.received = False
        self.handshaken = False
        """TLS is up (a TLS connection's handshake finished): a reply can be written."""
        self.probe_only = False
        """Admitted beyond the cap (PROBE_RESERVE): only probes are answered, then it closes."""
        self.peer_host: str | None = None
        self.fast_reply: FastReply | None = None
        """The fast path's multi-chunk response in flight on this channel, if any."""
        self.fast_line: object = None
        """The fast path's memo of its last access line (its own type, opaque here)."""
        self.fast_way: str | None = None
        """The fast path's memo of how this connection carries its responses (fixed once
        TLS is up, so decided on the first request; opaque here)."""
        self.web_owned = False
        """Sticky: twisted.web has parsed bytes of this connection, so it owns it."""
        self.fast_queued = False
        """The fast path left bytes in the transport's buffer (cleared once it drains)."""
        self.handling = False
        """twisted.web has a whole request and has not finished answering it."""
        self.producing = False
        """A producer (a response body) is registered on this channel."""
        self.blocked = False
        """The transport paused us: bytes wait for a client that does not read."""

    def now(self) -> float:
        return self.site.reactor.seconds()

    def connectionMade(self) -> None:
        super().connectionMade()
        # The head deadline runs from accept: a client that never sends a byte (or a TLS
        # client that never sends its ClientHello) is cut like a slow one.
        self.head_since = self.now()

    def handshake_done(self) -> None:
        """TLS is up: the first head's deadline starts again, so a handshake a busy client
        (or a busy server) took its time over is not counted against the head."""
        self.handshaken = True
        if not self.received and self.head_since is not None:
            self.head_since = self.now()

    def answerable(self) -> bool:
        """Can a refusal be written (a head began, or TLS is up), or only a cut?"""
        return self.received or self.handshaken

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        fast = self.fast_path
        if fast is not None and not self.probe_only and fast.handle(self, data):
            self.head_since = None
            return
        self.web_owned = True
        # After the fast path (which never reads head_since) it comes to the same.
        if self.head_since is None and not self.handling:
            self.head_since = self.now()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self.head_since = None
        request = self.requests[-1]
        if refuses_body(request_method(self), self.length):
            self.refuse(TOO_LARGE, "body")
        elif not host_ok(request.requestHeaders.getRawHeaders(b"host"), request_line(self)[2]):
            self.refuse(BAD_HOST, "bad_host")
        elif self.probe_only and origin_form(request_line(self)[1] or b"")[0] not in PROBE_PATHS:
            metrics.observe_shed()
            self.refuse(SHED, "shed")
        else:
            super().allHeadersReceived()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """twisted.web reads only the first Connection line, split on spaces (RFC 9112 9.6)."""
        if not self.probe_only and keeps_alive(
                version, request.requestHeaders.getRawHeaders(b"connection")):
            return True
        if version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def allContentReceived(self) -> None:
        self.last_progress = self.now()
        self.handling = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self.handling = False
        super().requestDone(request)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producing = True
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.producing = False
        super().unregisterProducer()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(HEAD_TOO_BIG, "head_too_big")

    def refuse(self, reply: Canned, reason: str) -> None:
        """Answer with a canned reply and close, reading nothing more."""
        metrics.observe_refused(reason)
        head = request_method(self) == b"HEAD"  # known once the request line is read
        self.head_since = None
        self.persistent = False
        # Instance attributes shadow the parser, so the rest of the body is dropped unread
        # and a head refused at its end never reaches a resource.
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign]
        self.allContentReceived = _ignore  # type: ignore[method-assign]
        self.transport.write(canned(reply, head))
        self.loseConnection()

    # -- progress, for the send watchdog ---------------------------------------------------

    def progress(self) -> None:
        """A response made progress (bytes left for the client); feeds the send watchdog."""
        self.last_progress = self.now()

    def write(self, data: bytes) -> None:
        self.last_progress = self.now()
        super().write(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.last_progress = self.now()
        super().writeSequence(iovec)

    def pauseProducing(self) -> None:
        self.blocked = True
        reply = self.fast_reply
        if reply is not None:
            # As twisted.web does while it answers: only the body waits, reading goes on
            # (bytes behind the request are held by the reply, which stops reading past
            # a bound). Stopping and restarting reading too cost two epoll changes per
            # 64 KiB over TLS.
            reply.pauseProducing()
            return
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.last_progress = self.now()  # the transport drained its buffer: the client reads
        self.fast_queued = self.blocked = False
        reply = self.fast_reply
        if reply is not None:
            reply.resumeProducing()
            return
        super().resumeProducing()

    def response_began(self) -> None:
        """The fast path starts a response (pair with :meth:`response_ended`)."""
        self.fast_responses += 1
        self.site.in_flight += 1
        self.progress()

    def response_ended(self) -> None:
        if self.fast_responses > 0:
            self.fast_responses -= 1
            self.site.in_flight -= 1

    def busy(self) -> bool:
        """A response is being produced, or its bytes wait for a client that does not read."""
        return self.handling or self.blocked or self.fast_responses > 0 or self.producing

    def overdue(self, now: float, limits: Limits) -> str | None:
        """Which deadline this connection has missed, if any."""
        if self.head_since is not None and now - self.head_since > limits.header_timeout:
            return "header_timeout"
        if self.busy() and now - self.last_progress > limits.send_timeout:
            return "send_timeout"
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fast_reply is not None:
            self.fast_reply.lost()
        while self.fast_responses:
            self.response_ended()
        super().connectionLost(reason)


def _ignore(*args: object) -> None:
    return None
