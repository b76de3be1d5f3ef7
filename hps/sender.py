"""Moving a span of one open file to a connection: the one engine for every response.

:mod:`hps.transfer` decides *what* to send (variant, range, headers); a
:class:`Sender` decides *how* the bytes move:

- on a plain TCP transport, ``os.sendfile`` from the verified descriptor to the
  socket: no copy of the body in user space, the page cache is the cache. When
  the socket is full it asks the transport to wake it once writable
  (:func:`hps._twisted.wake_when_writable`), so a client that stops reading
  costs nothing but its socket buffers;
- on TLS and HTTP/2 (bytes must pass through OpenSSL or be framed), bounded
  reads of ``READ_CHUNK`` bytes, written while the transport does not push back
  (it pauses this producer once its buffer holds 64 KiB) and while the body holds
  a turn (:mod:`hps.bodies`): a TLS HTTP/1.1 body through :class:`TlsTurn`, an
  HTTP/2 stream through :class:`H2Backlog`, which also reads whole DATA frames'
  worth (``H2_READ``), stops at ``H2_BACKLOG`` unsent bytes and is woken when its
  connection has sent frames of it. Plain TCP never waits for a turn: ``sendfile``
  costs the server little per byte, and a waiting socket holds no TLS records.

A sender is an ``IPushProducer`` registered on the channel (twisted.web's
``request.registerProducer`` or the fast path's ``channel.registerProducer``), so
the channel's own flow control drives it either way. Before every turn it checks
the file still has the identity the catalog hashed: a module rewritten in place
mid-download cuts the connection (the client sees a short body and retries)
rather than sending bytes its ETag does not name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITransport
from twisted.logger import Logger
from zope.interface import implementer

from hps._twisted import h2_connection, wake_when_writable
from hps.bodies import BodyGate
from hps.files import Source
from hps.negotiate import Span

try:
    from hps.http2 import FRAME_PAYLOAD, H2_BACKLOG
except ImportError:  # no h2 (the http2 extra): no HTTP/2 streams to send on
    FRAME_PAYLOAD = H2_BACKLOG = 0

SENDFILE_TURN = 4 << 20
"""At most this many bytes per connection per reactor turn, so one fast reader on
loopback cannot starve the others; then it yields and is woken when writable."""

READ_CHUNK = 65536
"""Bytes read per write on TLS: four TLS records per pass through the sender, the channel
and Twisted's TLS layer, whose write aggregation hands the TCP transport ~64 KiB at a
time anyway (so a client that stops reading leaves about as much in the server with
16 KiB reads; 8-27 % less server CPU per response measured, bench/README.md)."""

H2_READ = 8 * FRAME_PAYLOAD
"""Bytes read per write on an HTTP/2 stream: whole DATA frames, so the send loop slices
frames out of it without joining pieces, one connection write's worth (``WRITE_BYTES``)."""


def zero_copy(transport: ITransport | None) -> bool:
    """Can bytes go from a file straight to this transport's socket?"""
    return isinstance(transport, tcp.Connection) and not ISSLTransport.providedBy(transport)


class Turn(Protocol):
    """What a sender asks before each read: may the body go on (its turn, its room)?
    ``gate`` and ``key`` name the body's place in :mod:`hps.bodies` (``gate`` None: no
    turns), so a response can wait for its turn before its head (:mod:`hps.artifact`)."""

    gate: BodyGate | None
    key: Hashable

    def ready(self, wake: Callable[[], None]) -> bool:
        """May the sender write more now? If not, ``wake`` runs once it may."""

    def done(self) -> None:
        """The body ended (sent, cut or lost): its turn goes to the next waiting."""


class TlsTurn:
    """An HTTP/1.1 body's turn over TLS (:mod:`hps.bodies`), named by its channel (one
    response at a time per channel; the site's sweep finds the same key for stalls).

    Without turns, a herd over TLS shares the server's bytes evenly and nobody finishes
    within a gateway's deadline, while every waiting connection holds ~64 KiB of TLS
    records; with them, a waiting body has sent nothing yet, its head included
    (:meth:`hps.artifact.ArtifactResource.respond_in_turn`), and holds no records."""

    def __init__(self, gate: BodyGate, channel: Any) -> None:
        self.gate: BodyGate | None = gate
        self.key = channel

    @classmethod
    def of(cls, channel: Any, transport: ITransport | None) -> TlsTurn | None:
        """The turn of a body on ``channel`` if ``transport`` is TLS and its site has turns."""
        gate = getattr(getattr(channel, "site", None), "bodies", None)
        if gate is None or not ISSLTransport.providedBy(transport):
            return None
        return cls(gate, channel)

    def ready(self, wake: Callable[[], None]) -> bool:
        return self.gate.admit(self.key, wake)

    def done(self) -> None:
        self.gate.release(self.key)


class H2Backlog:
    """One HTTP/2 stream's place in its connection (``hps.http2``): its body's turn, how
    much of it is unsent, and a wake-up when either changes."""

    def __init__(self, stream: Any, connection: Any) -> None:
        self.stream_id, self.connection = stream.streamID, connection
        self.gate: BodyGate | None = connection.bodies
        self.key = connection.body_key(self.stream_id)

    @classmethod
    def of(cls, channel: Any) -> H2Backlog | None:
        """The backlog of ``channel`` if it is a stream of hps's HTTP/2 connection."""
        connection = h2_connection(channel)
        return None if connection is None else cls(channel, connection)

    def ready(self, wake: Callable[[], None]) -> bool:
        """May the sender write more now? If not, ``wake`` runs once it may."""
        connection = self.connection
        if not connection.may_send_body(self.stream_id, wake):
            return False
        if connection.unsent(self.stream_id) >= H2_BACKLOG:
            connection.after_send(self.stream_id, wake)
            return False
        return True

    def done(self) -> None:
        self.connection.body_done(self.stream_id)


@implementer(IPushProducer)
class Sender:
    """Send ``span`` of ``source`` through ``write`` (or, zero-copy, to ``transport``'s socket).

    ``head`` (not on zero-copy) is written with the span's first chunk, and not counted.
    ``progress(n)`` runs after each ``n`` bytes of the span handed over; ``finished`` once the last
    byte is; ``abort`` when the file
    changed under the response (the connection must be cut); neither when the
    connection is lost first (``stopProducing``).
    """

    log = Logger()

    def __init__(self, source: Source, span: Span, transport: ITransport | None,
                 write: Callable[[bytes], None], progress: Callable[[int], None],
                 finished: Callable[[], None], abort: Callable[[], None],
                 turn: Turn | None = None, head: bytes = b"") -> None:
        self.source: Source | None = source
        self.head = head
        """Bytes that go before the span, in the same write as its first chunk (the fast
        path's response head on TLS: one run of records, not a record of its own)."""
        self.pos, self.end = span[0], span[1] + 1
        self.transport, self.write, self.progress = transport, write, progress
        self.finished, self.abort = finished, abort
        self.zero_copy = zero_copy(transport)
        self.turn = turn
        self.chunk = H2_READ if isinstance(turn, H2Backlog) else READ_CHUNK
        self.paused = self.done = self.running = False

    def start(self, flushed: bool) -> None:
        """Begin; ``flushed`` says the transport holds no bytes of ours (the head) yet."""
        if self.zero_copy and not flushed:
            wake_when_writable(self.transport)  # the head goes first, then we resume
        else:
            self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.done or self.running:
            return  # re-entered from inside a write: the running loop continues
        assert self.source is not None
        if not self.source.fresh():
            self.changed()
            return
        self.running = True
        try:
            if self.zero_copy:
                self.send_file(self.source)
            else:
                self.send_reads(self.source)
        finally:
            self.running = False
        if self.pos >= self.end and not self.done:
            self.close()
            self.finished()

    def send_file(self, source: Source) -> None:
        fd, budget = self.transport.fileno(), SENDFILE_TURN
        while not self.paused and not self.done and self.pos < self.end:
            if budget <= 0:
                wake_when_writable(self.transport)  # yield the reactor to other clients
                return
            try:
                count = os.sendfile(fd, source.fd, self.pos, min(self.end - self.pos, budget))
            except BlockingIOError:
                wake_when_writable(self.transport)
                return
            except OSError:
                return  # the connection broke: the transport notices and stops us
            if count == 0:
                self.changed()  # the file is shorter than the catalog says: truncated
                return
            self.pos += count
            budget -= count
            self.progress(count)

    def send_reads(self, source: Source) -> None:
        chunk, turn = self.chunk, self.turn
        while not self.paused and not self.done and self.pos < self.end:
            if turn is not None and not turn.ready(self.drained):
                return
            data = source.read(self.pos, min(chunk, self.end - self.pos))
            if not data:
                self.changed()
                return
            self.pos += len(data)
            if self.head:
                self.write(self.head + data)
                self.head = b""
            else:
                self.write(data)
            self.progress(len(data))

    def drained(self) -> None:
        if not self.paused and not self.done:
            self.resumeProducing()

    def changed(self) -> None:
        self.log.warn("a file changed while it was being sent; cutting the download")
        self.close()
        self.abort()

    def close(self) -> None:
        self.done = True
        self.source = None  # the descriptor closes once the file table lets go too
        if self.turn is not None:
            self.turn.done()  # the body's turn goes to the next waiting

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.close()
