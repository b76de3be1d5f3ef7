"""A fast path for the plainest artifact downloads, in front of twisted.web's parser.

twisted.web spends ~130 µs of per-request machinery on every download (a bare
Twisted protocol serving the same bytes reaches nginx's rate); a gateway's
``GET /plugins/<name>/<version>/plugin.wasm`` needs none of it. This module answers
exactly that request, with a prebuilt header block and the body from the verified
descriptor (through the same :class:`hps.sender.Sender` and :class:`hps.transfer.Transfer`
as twisted.web's responses), and hands *everything else* back to twisted.web untouched.

On plain TCP the head goes straight to the socket and the body follows by
``os.sendfile``. On TLS (HTTP/1.1 negotiated, never an h2 connection) both go through
the TLS transport: the head in the same write as the body's first chunk, so they leave
as one run of TLS records, then the sender's bounded reads under the transport's flow
control. A body starts sending in one place, :meth:`Reply.start`, on either.

The accepted subset is deliberately strict, so the two parsers can never
disagree on where a request ends (the root of request smuggling):

- ``data`` is one whole request: it ends at its first blank line, no body, no
  pipelined second request, at most STRICT_MAX_REQUEST bytes and STRICT_MAX_HEADERS lines
  (:func:`hps.head.parse_request` decides);
- ``GET`` or ``HEAD``, ``HTTP/1.1``, target exactly
  ``/plugins/<name>/<version>/plugin.wasm`` in characters needing no decoding
  (no ``%``, no ``?``, no dot-first segments; :func:`hps.urls.module_target`);
- every header line is ``token: value`` with visible ASCII/obs-text and tabs
  (no obs-fold, no bare CR or LF, no NUL); exactly one valid Host (the rules of
  :mod:`hps.head`, which the channel applies to everything else);
- none of Content-Length, Transfer-Encoding, Range, Expect, Upgrade,
  HTTP2-Settings or any ``If-*`` header (ranges and conditionals live in one
  place, :mod:`hps.transfer`); at most one Accept-Encoding and one Connection,
  the latter only ``keep-alive`` or ``close``;
- the connection is plain TCP, or TLS that did not negotiate h2
  (:func:`carrier`); twisted.web has never seen a byte of it (a sticky
  per-connection flag: once twisted.web parsed something there, it owns the
  connection); on plain TCP nothing of ours waits in the transport (the head is
  sent past it); and the server is not draining.

Unknown but well-formed headers (User-Agent, Accept, Cookie…) are accepted:
they change nothing in an artifact response.
"""

from __future__ import annotations

import os
import socket
from typing import Any, cast

from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Site

from hps._twisted import inner_channel, wake_when_writable
from hps.channel import PluginChannel
from hps.files import Source
from hps.head import Parsed, parse_request, parse_stream, plain_fields
from hps.headers import EVERY_RESPONSE_LINES
from hps.sender import Sender, TlsTurn, zero_copy
from hps.state import ServerState
from hps.tls import is_tls
from hps.transfer import ArtifactVariant, Transfer

PAUSE_READING_AT = 16384
PARSED_CACHE = 256
PARSED_KEY_LIMIT = 1024
"""A gateway sends the very same bytes for every download of a URL, so parse results
are remembered by request bytes: at most PARSED_CACHE requests of under
PARSED_KEY_LIMIT bytes each (a Go client's request is ~150 bytes), so well under 1 MiB."""

AccessMemo = tuple[Parsed, int, int, str | None]
"""A connection's last (request, body size, second, access line), reused within a second."""


PLAIN, TLS, NEITHER = "plain", "tls", ""


def carrier(transport: Any) -> str:
    """How a fast-path response can travel on ``transport``: PLAIN (its socket takes the
    head and ``sendfile``), TLS (every byte through the TLS transport), or NEITHER (decline).

    h2 never reaches the HTTP/1.1 channel (the site switches to its own connection on
    ALPN first); it is checked here too because HTTP/1.1 bytes on an h2 connection
    would be a protocol error the client cannot recover from.
    """
    if zero_copy(transport):
        return PLAIN
    if is_tls(transport) and getattr(transport, "negotiatedProtocol", None) != b"h2":
        return TLS
    return NEITHER


def access_fields(parsed: Parsed, peer: str, proto: bytes, nbytes: int) -> dict[str, Any]:
    """The access line's fields for a fast-path response (HTTP/1.1 here, HTTP/2 in
    :mod:`hps.h2fast`), as twisted.web's responses log them."""
    headers = parsed.headers
    return dict(peer=peer, forwarded=headers.get(b"x-forwarded-for"), method=parsed.method,
                uri=parsed.target, proto=proto, nbytes=nbytes,
                referer=headers.get(b"referer"), agent=headers.get(b"user-agent"))


def send_head(channel: PluginChannel, head: bytes, more: bool) -> bool:
    """Send a response head on the socket now; True when all of it went.

    ``transport.write`` only queues: the bytes would go out on the next reactor turn,
    after an epoll register, a write event and an unregister, which cost as much per
    response as everything else the fast path does. ``more`` (a body follows by
    ``sendfile``) lets the kernel put head and body in one segment (nginx's
    ``tcp_nopush``). A remainder is queued on the transport, which sends it first.
    Plain TCP only: on TLS the socket carries records, not the head's bytes.
    """
    transport = channel.transport
    try:
        sent = transport.getHandle().send(head, socket.MSG_MORE if more else 0)
    except OSError:
        sent = 0  # full (BlockingIOError) or broken: the transport finds out which
    if sent == len(head):
        return True
    transport.write(head[sent:])
    channel.fast_queued = True  # cleared by the channel when the transport drains
    wake_when_writable(transport)
    return False


class Clock:
    """The ``Date`` value, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def at(self, second: int) -> bytes:
        """The ``Date`` value for ``second`` (seconds since the epoch)."""
        if second != self.second:
            self.second, self.value = second, http.datetimeToString(second)
        return self.value


class ArtifactFastPath:
    """Implements ``hps.channel.FastPath`` for artifact downloads."""

    log = Logger()

    def __init__(self, state: ServerState, transfer: Transfer) -> None:
        self.state, self.transfer = state, transfer
        self.clock = Clock()
        self.parsed: dict[bytes, Parsed | None] = {}
        self.fields_parsed: dict[tuple[tuple[bytes, bytes], ...], tuple[bool, Parsed | None]] = {}

    def parse(self, data: bytes) -> Parsed | None:
        """``parse_request(data)``, remembered: it depends on nothing but ``data``."""
        try:
            return self.parsed[data]
        except KeyError:
            pass
        parsed = parse_request(data)
        if len(data) < PARSED_KEY_LIMIT:
            if len(self.parsed) >= PARSED_CACHE:
                self.parsed.clear()
            self.parsed[data] = parsed
        return parsed

    def parse_fields(self, fields: list[tuple[bytes, bytes]]) -> tuple[bool, Parsed | None]:
        """``(plain_fields(fields), parse_stream(fields))`` of an HTTP/2 request, remembered
        like :meth:`parse`: they depend on nothing but the fields."""
        key = tuple(fields)
        try:
            return self.fields_parsed[key]
        except KeyError:
            pass
        result = (plain_fields(fields), parse_stream(fields))
        if sum(len(name) + len(value) for name, value in key) < PARSED_KEY_LIMIT:
            if len(self.fields_parsed) >= PARSED_CACHE:
                self.fields_parsed.clear()
            self.fields_parsed[key] = result
        return result

    def handle(self, channel: PluginChannel, data: bytes) -> bool:
        reply = channel.fast_reply
        if reply is not None:
            reply.hold(data)  # a request behind ours: replayed when ours is done
            return True
        if channel.web_owned or channel.fast_queued:
            return False
        parsed = self.parse(data)
        if parsed is None or self.state.draining:
            return False
        transport = channel.transport
        way = channel.fast_way
        if way is None:  # the first request: asking OpenSSL for ALPN each time costs
            way = channel.fast_way = carrier(transport)
        if not way or transport.disconnecting:
            return False
        artifact = self.state.catalog.get(parsed.name, parsed.version)
        if artifact is None:
            return False
        if self.transfer.gzip_pending(artifact, parsed.accept):
            return False  # twisted.web waits for the variant
        turn = TlsTurn.of(channel, transport) if way == TLS and not parsed.head else None
        if turn is not None and not turn.gate.take(turn.key):
            return False  # no turn free: twisted.web queues the body (or answers 503)
        opened = self.transfer.open(artifact, parsed.accept, quiet=True)
        if opened is None:
            if turn is not None:
                turn.done()
            return False  # twisted.web answers the 503 (and logs why)
        self.answer(channel, way, parsed, *opened, turn)
        return True

    def answer(self, channel: PluginChannel, way: str, parsed: Parsed,
               variant: ArtifactVariant, source: Source, turn: TlsTurn | None) -> None:
        """Send the response ``handle`` accepted: whole in this call when it can be, else
        a :class:`Reply` carries the body on."""
        transport = channel.transport
        second = int(channel.now())
        body = not parsed.head and variant.size > 0
        head = self.opening(variant, parsed.close, second)
        if way == TLS:
            if body:
                Reply(self, channel, parsed, variant, source, 0).start(head=head, turn=turn)
                return
            transport.write(head)
        else:
            flushed = send_head(channel, head, body)
            sent = send_inline(transport.fileno(), source, variant.size) if body and flushed else 0
            if body and sent < variant.size:
                Reply(self, channel, parsed, variant, source, sent).start(flushed=flushed)
                return
        # Done in this call: Reply.start() then Reply.finished(), minus what nothing can
        # observe in between (no callback runs until we return): the in-flight counts
        # that would rise and fall again, the reply attribute set and cleared, the
        # send-watchdog stamp (read only while the channel is busy, and every later
        # response stamps its own). The idle timer stays armed (pushed back below).
        self.account(channel, parsed, 0 if parsed.head else variant.size, second)
        if parsed.close or not channel.persistent:
            channel.loseConnection()  # unregisters itself first, else the close waits forever
            return
        channel.resetTimeout()

    def account(self, channel: PluginChannel, parsed: Parsed, nbytes: int,
                second: int) -> None:
        """Log and count through the site, exactly as twisted.web's responses are.

        The access line depends only on the request bytes (``parsed``), the body size,
        the peer (fixed per connection) and the second, so a connection that repeats
        its request within a second reuses the line it built last time.
        """
        download = None if parsed.head else (parsed.name, parsed.version)
        site = channel.site
        memo = cast("AccessMemo | None", channel.fast_line)
        if memo is not None and memo[0] is parsed and memo[1] == nbytes and memo[2] == second:
            site.finished_fast(nbytes, download, memo[3])
            return
        line = site.access.line(**self.line_fields(channel, parsed, nbytes), status=200,
                                now=second)
        channel.fast_line = (parsed, nbytes, second, line)
        site.finished_fast(nbytes, download, line)

    @staticmethod
    def line_fields(channel: PluginChannel, parsed: Parsed, nbytes: int) -> dict[str, Any]:
        peer = channel.peer_host
        if peer is None:
            # getPeer() builds an address object per call; the peer of a connection is fixed.
            peer = channel.peer_host = getattr(channel.transport.getPeer(), "host", "-")
        return access_fields(parsed, peer, b"HTTP/1.1", nbytes)

    def opening(self, variant: ArtifactVariant, close: bool, second: int) -> bytes:
        """Status line and headers, built once a second and shared by every response (kept
        with the variant: one memo per artifact response, cleared with the catalog)."""
        date = self.clock.at(second)
        cached = variant.openings.get(close)
        if cached is not None and cached[0] is date:
            return cached[1]
        block = b"".join((
            b"HTTP/1.1 200 OK\r\n", EVERY_RESPONSE_LINES, b"Date: ", date, b"\r\n",
            variant.lines, b"Connection: close\r\n\r\n" if close else b"\r\n",
        ))
        variant.openings[close] = (date, block)
        return block


def send_inline(fd: int, source: Source, size: int) -> int:
    """``sendfile`` the whole body now if the socket takes it; the count it took."""
    try:
        return os.sendfile(fd, source.fd, 0, size)
    except OSError:
        return 0  # full, or broken: the Reply's sender finds out which


class Reply:
    """One fast-path response that outlives the read event that brought its request."""

    def __init__(self, path: ArtifactFastPath, channel: PluginChannel, parsed: Parsed,
                 variant: ArtifactVariant, source: Source, sent: int) -> None:
        self.path, self.channel, self.parsed = path, channel, parsed
        self.variant, self.source, self.sent = variant, source, sent
        self.pending: list[bytes] = []
        self.paused_reading = False
        self.saved_timeout: Any = None
        self.sender: Sender | None = None

    def start(self, flushed: bool = True, head: bytes = b"",
              turn: TlsTurn | None = None) -> None:
        """Send the body (the one place a fast-path body starts, plain or TLS): ``flushed``,
        no head waits in a plain transport; ``head``, the head to write with the body's
        first chunk (TLS); ``turn``, the TLS body's turn (:mod:`hps.bodies`), already
        taken, held until the last byte."""
        channel, transport = self.channel, self.channel.transport
        channel.fast_reply = self
        channel.response_began()
        # Like twisted.web, no idle timeout while answering; the send watchdog guards progress.
        self.saved_timeout = channel.setTimeout(None)
        sender = Sender(self.source, (self.sent, self.variant.size - 1), transport,
                        transport.write, self.progress, self.finished,
                        transport.abortConnection, turn, head)
        self.source = None  # the sender holds it, and lets go when done
        self.sender = sender
        channel.registerProducer(sender, True)
        if channel.blocked:
            # The last reply's tail fills the transport (a pipelined request replayed as it
            # ended): the transport's resume starts this one. Over TLS nothing else would
            # pause it: Twisted's TLS layer tells the channel of a full buffer only once.
            return
        sender.start(flushed)

    def progress(self, count: int) -> None:
        self.sent += count
        self.channel.progress()

    def pauseProducing(self) -> None:
        if self.sender is not None:
            self.sender.pauseProducing()

    def resumeProducing(self) -> None:
        if self.sender is not None:
            self.sender.resumeProducing()

    def hold(self, data: bytes) -> None:
        self.pending.append(data)
        if sum(map(len, self.pending)) > PAUSE_READING_AT:
            self.paused_reading = True
            self.channel.transport.pauseProducing()

    def finished(self) -> None:
        channel = self.channel
        channel.fast_reply = None
        channel.unregisterProducer()
        if channel.blocked:
            channel.pauseProducing()  # twisted.web's own account of a full transport, now
        channel.response_ended()
        self.path.account(channel, self.parsed, self.sent, int(channel.now()))
        # A drain that began meanwhile wants the connection closed once this response is out.
        if self.parsed.close or self.path.state.draining or not channel.persistent:
            channel.loseConnection()  # unregisters itself first, else the close waits forever
            return
        channel.setTimeout(self.saved_timeout)
        channel.resetTimeout()
        if self.paused_reading:
            channel.transport.resumeProducing()
        if self.pending:
            channel.dataReceived(b"".join(self.pending))

    def lost(self) -> None:
        """The client went before the last byte: log and count the cut download."""
        channel = self.channel
        channel.fast_reply = None
        if self.sender is not None:
            self.sender.stopProducing()  # lets go of the file now, whoever tells it to stop
        fields = ArtifactFastPath.line_fields(channel, self.parsed, self.sent)
        channel.site.finished_response(route="artifact", status=200, aborted=True, **fields)


def install(state: ServerState, site: Site, transfer: Transfer) -> ArtifactFastPath:
    """Put a fast path, sharing the site's transfer, in front of every channel."""
    fast = ArtifactFastPath(state, transfer)
    build = site.protocol

    def protocol() -> IProtocol:
        # Per site (an instance attribute), so two services in one process never share one.
        wrapper = build()
        inner_channel(wrapper).fast_path = fast
        return wrapper

    site.protocol = protocol
    return fast
