"""A fast path for the plainest artifact downloads, in front of twisted.web's parser.

twisted.web spends ~130 µs of per-request machinery on every download (see
NOTES.md); a gateway's ``GET /plugins/<name>/<version>/plugin.wasm`` needs
none of it. This module answers exactly that request, from a prebuilt header
block and the shared in-memory body, and hands *everything else* back to
twisted.web untouched.

The accepted subset is deliberately strict, so the two parsers can never
disagree on where a request ends (the root of request smuggling):

- ``data`` is one whole request: it ends at its first blank line, no body, no
  pipelined second request, at most MAX_REQUEST bytes and MAX_HEADERS lines;
- ``GET`` or ``HEAD``, ``HTTP/1.1``, target exactly
  ``/plugins/<name>/<version>/plugin.wasm`` in characters needing no decoding
  (no ``%``, no ``?``, no dot-first segments);
- every header line is ``token: value`` with visible ASCII/obs-text and tabs
  (no obs-fold, no bare CR or LF, no NUL); exactly one valid Host (the rules of
  :mod:`hps.head`, which the channel applies to everything else);
- none of Content-Length, Transfer-Encoding, Range, Expect, Upgrade,
  HTTP2-Settings or any ``If-*`` header (ranges and conditionals live in one
  place, :mod:`hps.transfer`); at most one Accept-Encoding and one Connection,
  the latter only ``keep-alive`` or ``close``;
- the channel is idle over a plain TCP transport, the server is not draining,
  and the artifact's body is in the memory cache.

Unknown but well-formed headers (User-Agent, Accept, Cookie…) are accepted:
they change nothing in an artifact response.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.web import http

from hps.bodies import BodyCache
from hps.catalog import Artifact, Catalog
from hps.head import host_ok, keeps_alive
from hps.negotiate import Variant, accepts_gzip
from hps.site import SERVER_NAME, PluginChannel
from hps.state import ServerState
from hps.transfer import Policy, SliceProducer, variant_headers

MAX_REQUEST = 8192
MAX_HEADERS = 64
SEND_LIMIT = 1 << 20
"""Per-transport send size: Twisted's default 128 KiB costs a reactor turn per 128 KiB."""
PAUSE_READING_AT = 16384
PARSED_CACHE = 256
PARSED_KEY_LIMIT = 1024
"""A gateway sends the very same bytes for every download of a URL, so parse results
are remembered by request bytes: at most PARSED_CACHE requests of under
PARSED_KEY_LIMIT bytes each (a Go client's request is ~150 bytes), so well under 1 MiB."""

_TARGET = re.compile(
    rb"/plugins/([a-z0-9][a-z0-9._-]{0,127})/([0-9A-Za-z][0-9A-Za-z.+-]{0,127})/plugin\.wasm\Z"
)
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*"
    rb"[\x21-\x7e\x80-\xff])?)?)[ \t]*\Z"
)
_REFUSED = frozenset({
    b"content-length", b"transfer-encoding", b"range", b"expect", b"upgrade",
    b"http2-settings", b"te", b"trailer",
})
_SINGLE = (b"host", b"accept-encoding", b"connection")
_PREFIXES = (b"GET /plugins/", b"HEAD /plugins/")


@dataclass(frozen=True)
class Parsed:
    """What the fast path needs of one request; anything else it refused.

    Shared by every request with the same bytes (see ``ArtifactFastPath.parse``), so
    nothing may change it after parsing.
    """

    method: bytes
    target: bytes
    name: str
    version: str
    headers: dict[bytes, bytes] = field(default_factory=dict)
    close: bool = False
    wants_gzip: bool = False
    head: bool = False


def parse_request(data: bytes) -> Parsed | None:
    """Parse ``data`` if it is one request of the strict subset, else None."""
    if len(data) > MAX_REQUEST or not data.startswith(_PREFIXES):
        return None
    end = data.find(b"\r\n\r\n")
    if end != len(data) - 4:
        return None  # incomplete, or more bytes after the head: twisted.web frames it
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or len(lines) > MAX_HEADERS:
        return None
    target = _TARGET.match(parts[1])
    if target is None:
        return None
    headers = _parse_fields(lines[1:])
    if headers is None:
        return None
    connection = headers.get(b"connection")
    return Parsed(parts[0], parts[1], target.group(1).decode(), target.group(2).decode(),
                  headers, not keeps_alive(b"HTTP/1.1", connection and [connection]),
                  accepts_gzip(headers.get(b"accept-encoding")), parts[0] == b"HEAD")


def _parse_fields(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """Header lines to {lower name: value} for the few names used; None to refuse."""
    seen: dict[bytes, bytes] = {}
    hosts = 0
    for line in lines:
        match = _FIELD.match(line)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in _REFUSED or name.startswith(b"if-"):
            return None
        if name in _SINGLE:
            if name in seen:
                return None
            seen[name] = match.group(2)
            hosts += name == b"host"
        elif name in (b"user-agent", b"referer", b"x-forwarded-for"):
            seen[name] = match.group(2)
    connection = seen.get(b"connection")
    if hosts != 1 or not host_ok([seen[b"host"]], b"HTTP/1.1"):
        return None  # twisted.web's channel answers 400 by the same rule
    if connection is not None and connection.lower() not in (b"keep-alive", b"close"):
        return None
    return seen


def channel_idle(channel: Any) -> bool:
    """No request parsed, buffered or answering, on a plain TCP transport."""
    transport = channel.transport
    return (
        # TLS encrypts a whole write at once: bounded chunks need the plain transport.
        not ISSLTransport.providedBy(transport)
        and not getattr(transport, "TLS", False)
        and not transport.disconnecting
        and not channel.requests
        and not channel._handlingRequest
        and channel._requestProducer is None
        and not channel._dataBuffer
        and channel._transferDecoder is None
        and not channel._buffer
        and channel.line_mode
        and getattr(channel, "_HTTPChannel__first_line", 1)
        and not getattr(channel, "_HTTPChannel__header", b"")
    )


def send_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but try the socket at once when nothing is queued.

    ``write`` only queues: the bytes go out on the next reactor turn, after an epoll
    register, a write event, ``doWrite`` and an unregister, which cost as much per
    response as everything else the fast path does. When the transport is a plain TCP
    connection with an empty buffer, its own ``writeSomeData`` (the very call ``doWrite``
    makes, on the transport's socket) sends now; only a remainder is queued. A partial
    send leaves the transport exactly as ``doWrite`` leaves it after one: the same
    ``bytes`` object plus an offset, so a client that stops reading pins the shared
    block, not a copy of its tail.
    """
    if (type(transport) is not tcp.Server or transport.dataBuffer
            or transport._tempDataBuffer or not transport.connected
            or transport._writeDisconnected or transport.disconnecting):
        transport.write(data)
        return
    sent = transport.writeSomeData(data)
    if isinstance(sent, Exception) or sent <= 0:
        transport.write(data)  # full kernel buffer or a lost connection: doWrite will see it
        return
    if sent < len(data):
        transport.dataBuffer, transport.offset = data, sent
        transport.startWriting()


class Clock:
    """The ``Date`` value, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        return self.at(int(time.time()))

    def at(self, second: int) -> bytes:
        """The ``Date`` value for ``second`` (seconds since the epoch)."""
        if second != self.second:
            self.second, self.value = second, http.datetimeToString(second)
        return self.value


class ArtifactFastPath:
    """Implements ``hps.site.FastPath`` for cached artifacts."""

    log = Logger()

    def __init__(self, state: ServerState, cache: BodyCache, policy: Policy) -> None:
        self.state, self.cache, self.policy = state, cache, policy
        self.clock = Clock()
        self.blocks: dict[bytes, bytes] = {}
        self.openings: dict[tuple[bytes, bool, bool], tuple[bytes, bytes]] = {}
        self.parsed: dict[bytes, Parsed | None] = {}

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

    def on_swap(self, old: Catalog, new: Catalog) -> None:
        self.blocks.clear()
        self.openings.clear()

    def handle(self, channel: PluginChannel, data: bytes) -> bool:
        reply = channel.fast_reply
        if reply is not None:
            reply.hold(data)  # a request behind ours: replayed when ours is done
            return True
        parsed = self.parse(data)
        if parsed is None or self.state.draining or not channel_idle(channel):
            return False
        artifact = self.state.catalog.get(parsed.name, parsed.version)
        if artifact is None:
            return False
        body = self.cache.get(artifact)
        if body is None:
            return False
        variant = body.variant(self.policy.gzip, parsed.wants_gzip)
        chunks = variant.chunks
        assert chunks is not None
        if not parsed.head and len(chunks) != 1:
            Reply(self, channel, parsed, artifact, variant).start()
            return True
        # Handed over whole in this call. This is Reply.start() then Reply.finished(),
        # minus what nothing can observe in between (no callback runs until we return):
        # the in-flight counts that would rise and fall again, the reply attribute set
        # and cleared, the send-watchdog stamp (read only while the channel is busy,
        # and every later response stamps its own), no producer to unregister, and
        # ``state.draining``, checked above. The idle timer stays armed (pushed back
        # below), which saves a cancel and a callLater per response.
        transport = channel.transport
        transport.SEND_LIMIT = SEND_LIMIT
        second = int(time.time())
        send_now(transport, self.opening(artifact, variant, parsed.close, parsed.head, second))
        self.account(channel, parsed, variant, second)
        if parsed.close or not channel.persistent:
            channel.loseConnection()  # unregisters itself first, else the close waits forever
            return True
        channel.resetTimeout()
        return True

    def account(self, channel: PluginChannel, parsed: Parsed, variant: Variant,
                second: int) -> None:
        """Log and count through the site, exactly as twisted.web's responses are.

        The access line depends only on the request bytes (``parsed``), the variant's
        size, the peer (fixed per connection) and the second, so a connection that
        repeats its request within a second reuses the line it built last time.
        """
        nbytes = 0 if parsed.head else variant.size
        download = None if parsed.head else (parsed.name, parsed.version)
        site = channel.site
        memo = channel.fast_line
        if memo is not None and memo[0] is parsed and memo[1] is variant and memo[2] == second:
            site.finished_fast(nbytes, download, memo[3])
            return
        headers = parsed.headers
        peer = channel.peer_host
        if peer is None:
            # getPeer() builds an address object per call; the peer of a connection is fixed.
            peer = channel.peer_host = getattr(channel.transport.getPeer(), "host", "-")
        line = site.access.line(
            peer=peer, forwarded=headers.get(b"x-forwarded-for"), method=parsed.method,
            uri=parsed.target, proto=b"HTTP/1.1", status=200, nbytes=nbytes,
            referer=headers.get(b"referer"), agent=headers.get(b"user-agent"), now=second)
        channel.fast_line = (parsed, variant, second, line)
        site.finished_fast(nbytes, download, line)

    def fixed_headers(self, artifact: Artifact, variant: Variant) -> bytes:
        fixed = self.blocks.get(variant.etag)
        if fixed is None:
            pairs = variant_headers(artifact, variant, self.policy)
            lines = [b"%s: %s\r\n" % pair for pair in pairs]
            lines.append(b"X-Content-Type-Options: nosniff\r\n")
            lines.append(b"Content-Length: %d\r\n" % variant.size)
            fixed = self.blocks[variant.etag] = b"".join(lines)
        return fixed

    def opening(self, artifact: Artifact, variant: Variant, close: bool, head: bool,
                second: int) -> bytes:
        """Status line, headers and (for GET) the first chunk, built once a second.

        Shared by every response of that second: a client that never reads pins
        this object, not a copy of it.
        """
        date = self.clock.at(second)
        key = (variant.etag, close, head)
        cached = self.openings.get(key)
        if cached is not None and cached[0] is date:
            return cached[1]
        assert variant.chunks is not None
        block = b"".join((
            b"HTTP/1.1 200 OK\r\nServer: ", SERVER_NAME, b"\r\nDate: ", date, b"\r\n",
            self.fixed_headers(artifact, variant),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            b"" if head else variant.chunks[0],
        ))
        self.openings[key] = (date, block)
        return block


class Reply:
    """One fast-path response in flight on one channel."""

    def __init__(self, path: ArtifactFastPath, channel: PluginChannel, parsed: Parsed,
                 artifact: Artifact, variant: Variant) -> None:
        self.path, self.channel, self.parsed = path, channel, parsed
        self.artifact, self.variant = artifact, variant
        self.pending: list[bytes] = []
        self.paused_reading = False
        self.saved_timeout: Any = None
        self.timer_off = False

    def start(self) -> None:
        channel, transport = self.channel, self.channel.transport
        transport.SEND_LIMIT = SEND_LIMIT
        channel.fast_reply = self
        channel.response_began()
        variant = self.variant
        send_now(transport, self.path.opening(self.artifact, variant, self.parsed.close,
                                              self.parsed.head, int(time.time())))
        assert variant.chunks is not None
        # Several chunks (a one-call response never gets here: see ArtifactFastPath.handle).
        # Like twisted.web, no idle timeout while answering; the send watchdog guards progress.
        self.saved_timeout = channel.setTimeout(None)
        self.timer_off = True
        producer = SliceProducer(transport.write, variant.chunks,
                                 (len(variant.chunks[0]), variant.size - 1),
                                 self.finished, channel.progress)
        channel.registerProducer(producer, True)
        producer.resumeProducing()

    def hold(self, data: bytes) -> None:
        self.pending.append(data)
        if not self.paused_reading and sum(map(len, self.pending)) > PAUSE_READING_AT:
            self.paused_reading = True
            self.channel.transport.pauseProducing()

    def finished(self) -> None:
        channel = self.channel
        channel.fast_reply = None
        if channel._requestProducer is not None:
            channel.unregisterProducer()
        channel.response_ended()
        self.path.account(channel, self.parsed, self.variant, int(time.time()))
        # A drain that began meanwhile wants the connection closed once this response is out.
        if self.parsed.close or self.path.state.draining or not channel.persistent:
            channel.loseConnection()  # unregisters itself first, else the close waits forever
            return
        if self.timer_off:
            channel.setTimeout(self.saved_timeout)
        channel.resetTimeout()
        if self.paused_reading:
            channel.transport.resumeProducing()
        if self.pending:
            channel.dataReceived(b"".join(self.pending))


def install(state: ServerState, site: Any, cache: BodyCache, policy: Policy) -> ArtifactFastPath:
    """Put a fast path, sharing the site's body cache and policy, in front of every channel."""
    fast = ArtifactFastPath(state, cache, policy)
    state.on_swap.append(fast.on_swap)
    build = site.protocol

    def protocol() -> Any:
        # Per site (an instance attribute), so two services in one process never share one.
        wrapper = build()
        wrapper._channel.fast_path = fast
        return wrapper

    site.protocol = protocol
    return fast
