"""HTTP/2 connections that send fast, that one hostile stream cannot take down, and that obey
the deadlines.

twisted.web's ``H2Connection`` (through :class:`hps._twisted.H2Base`), with what hps
needs on top:

- **A send loop of its own.** twisted.web sends one DATA frame per connection per
  reactor turn, then reschedules itself with ``callLater(0)``, each frame its own
  transport write (and its own TLS records). Here one turn sends frames from every
  ready stream, in priority order, while the windows and the transport allow,
  coalesced into one transport write per ``WRITE_BYTES``; it stops when the
  transport pauses this connection and goes on when it resumes it, so no timer runs
  per frame (one ``callLater(0)`` per turn at most, when a turn's ``TURN_BYTES`` are
  spent with more to send). A DATA frame carries ``FRAME_PAYLOAD`` bytes, so a frame
  with its 9-byte header is one whole 16 KiB TLS record. Each stream's unsent bytes
  are counted as they come and go (:class:`Outbox`), never re-summed.
- **A stream the client already reset is gone.** A client may open streams and
  reset them in the very write that opened them (rapid reset). h2 digests the
  whole write before twisted.web runs the requests, so a response written for such
  a stream raised ``StreamClosedError``/``StreamIDTooLowError`` out of
  ``dataReceived`` and dropped the connection, every other stream with it, with a
  45-line traceback. Writes to a stream h2 has closed are dropped here; the
  stream's own reset event cleans it up a moment later.
- **Per-connection stream limit**: ``SETTINGS_MAX_CONCURRENT_STREAMS`` of
  ``MAX_STREAMS``, sent in the connection preface.
- **Send deadline per stream**, the HTTP/1.1 rule: a stream whose response made
  no progress (DATA frames sent, which flow control bounds by the client's window;
  a body waiting for its turn makes none either) for ``send_timeout`` is reset,
  however often the client PINGs.
- **No busy-wait for a window**: a stream whose bytes wait for flow-control window
  leaves the ready set (:class:`WindowedPriority`) and every frame received puts
  back those a window now allows (a WINDOW_UPDATE, or a SETTINGS change of the
  initial window, RFC 9113 6.9.2, which twisted.web does not act on).
- **Room, announced**: a response's sender stops once its stream holds
  ``H2_BACKLOG`` unsent bytes (the client's window alone could let a body pile up
  in memory); :meth:`PluginH2Connection.after_send` wakes it, inside the send loop,
  once frames have taken its stream below that, so the loop refills as it drains.
- **Bodies take turns** (:mod:`hps.bodies`): a few bodies are sent at once,
  process-wide, the others wait in arrival order; a body that stalls with a turn
  gives it back at the next sweep.
- **Header blocks built once** (:class:`StatelessEncoder`): HPACK without the
  dynamic table, so a block depends on its fields alone and a response's block (the same
  fields for every download of a variant within a second) is encoded once, not per
  response field by field (~100 µs of Python each).
- **No traceback floods**: anything else h2 raises ends that connection (GOAWAY)
  with one log line, at most one per ``LOG_EVERY`` seconds for the whole server.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import h2.connection
import h2.errors
import h2.exceptions
import h2.settings
import h2.stream
import hpack
import priority
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps import metrics
from hps._twisted import H2Base, h2_stream_done
from hps.bodies import BodyGate

MAX_STREAMS = 100
LOG_EVERY = 10.0

H2_BACKLOG = 65536
"""Unsent bytes an HTTP/2 stream may queue before its sender waits for the connection
to send frames of it: HTTP/2 flow control alone would let a client's window decide."""

FRAME_PAYLOAD = 16384 - 9
"""DATA payload per frame: with its 9-byte header a frame fills one TLS record (16 KiB
of plaintext at most), where a 16,384-byte payload would take two records."""

WRITE_BYTES = 8 * FRAME_PAYLOAD
"""DATA bytes coalesced into one transport write (~128 KiB: past the TCP transport's
64 KiB pause threshold, so one write per turn is the usual case)."""

BURST_BYTES = 4 * FRAME_PAYLOAD
"""At most this many bytes from one stream before the priority order picks again."""

TURN_BYTES = 1 << 20
"""At most this many bytes per connection per reactor turn, if the transport never
pushes back: then the loop yields to the other connections and goes on next turn."""


BLOCKS = 512
"""Header blocks :class:`StatelessEncoder` remembers (a few per variant per second)."""


class StatelessEncoder(hpack.Encoder):
    """HPACK that never adds to the dynamic table: every field is a static-table index or a
    literal marked never-indexed, so the block for a header list is a function of the list
    alone and is shared, server-wide, by every response that sends the same fields.

    The responses' fields barely compress against each other anyway (a Date and an ETag
    per response), and the client's table stays empty. A table size update the peer's
    SETTINGS call for goes first in the next block, as RFC 7541 4.2 requires; that block
    alone is encoded afresh.
    """

    blocks: ClassVar[dict[tuple[tuple[bytes, bytes], ...], bytes]] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        fields = tuple(headers)
        if self.header_table.resized:  # hpack puts the update first, then clears the flag
            return super().encode([hpack.NeverIndexedHeaderTuple(*f[:2]) for f in fields],
                                  huffman)
        blocks = StatelessEncoder.blocks
        block = blocks.get(fields)
        if block is None:
            block = super().encode([hpack.NeverIndexedHeaderTuple(*f[:2]) for f in fields],
                                   huffman)
            if len(blocks) >= BLOCKS:
                blocks.clear()
            blocks[fields] = block
        return block


class Outbox:
    """One stream's bytes waiting for the send loop, with their count kept as they move."""

    __slots__ = ("chunks", "ending", "head", "offset", "unsent", "wake")

    def __init__(self) -> None:
        self.head = b""
        """A HEADERS frame to send first (:meth:`PluginH2Connection.send_head`)."""
        self.chunks: deque[bytes] = deque()
        self.offset = 0
        """Bytes of ``chunks[0]`` already sent."""
        self.unsent = 0
        self.ending = False
        """The response is complete: END_STREAM goes once the bytes have."""
        self.wake: Callable[[], None] | None = None

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.unsent += len(data)

    def take(self, size: int) -> bytes | memoryview:
        """The next ``size`` bytes (``size`` <= ``unsent``), sliced without a copy."""
        head = self.chunks[0]
        start, end = self.offset, self.offset + size
        if start == 0 and end == len(head):
            self.chunks.popleft()
            piece: bytes | memoryview = head
        elif end <= len(head):
            piece = memoryview(head)[start:end]
            self.offset = end
            if end == len(head):
                self.chunks.popleft()
                self.offset = 0
        else:  # the frame spans chunks: join the pieces (rare with frame-sized reads)
            parts, need = [], size
            while need:
                head = self.chunks[0]
                part = memoryview(head)[self.offset:self.offset + need]
                parts.append(part)
                need -= len(part)
                self.offset += len(part)
                if self.offset == len(head):
                    self.chunks.popleft()
                    self.offset = 0
            piece = b"".join(parts)
        self.unsent -= size
        return piece


_FRAME_HEADER = struct.Struct(">HBBBL")  # hyperframe's: 24-bit length, type, flags, stream
_SEND_DATA = h2.connection.ConnectionInputs.SEND_DATA
_STREAM_SEND_DATA = h2.stream.StreamInputs.SEND_DATA
_SEND_HEADERS = h2.connection.ConnectionInputs.SEND_HEADERS
_STREAM_SEND_HEADERS = h2.stream.StreamInputs.SEND_HEADERS


def headers_frame(conn: h2.connection.H2Connection, stream_id: int, block: bytes) -> bytes:
    """A response's HEADERS frame carrying ``block`` (a whole header block, one frame), with
    the state changes h2's ``send_headers`` makes; tests/test_http2.py checks both match."""
    stream = conn.streams[stream_id]  # KeyError: closed and forgotten
    conn.state_machine.process_input(_SEND_HEADERS)
    stream.state_machine.process_input(_STREAM_SEND_HEADERS)
    size = len(block)
    return _FRAME_HEADER.pack(size >> 8, size & 0xFF, 1, 0x4, stream_id) + block  # END_HEADERS


def data_frames(conn: h2.connection.H2Connection, stream_id: int, outbox: Outbox, size: int,
                out: list[bytes | memoryview]) -> None:
    """Append DATA frames carrying the next ``size`` bytes of ``outbox`` (``size`` within
    the window) to ``out``, with the bookkeeping h2's ``send_data`` does per frame: the
    connection's and the stream's state checks and both flow-control windows.

    h2 builds each frame as an object, serializes it and copies it into its buffer
    (~20 µs a frame, as much as the TLS record it fills); here a frame is a 9-byte
    header and a slice of the read. tests/test_http2.py checks the bytes and the
    windows match ``send_data``'s for the same input, and that h2 still finds these
    attributes where it keeps them.
    """
    stream = conn.streams[stream_id]  # KeyError: closed and forgotten
    conn.state_machine.process_input(_SEND_DATA)  # raises as send_data would, once closed
    stream.state_machine.process_input(_STREAM_SEND_DATA)
    frame = min(FRAME_PAYLOAD, conn.max_outbound_frame_size)
    pack, left = _FRAME_HEADER.pack, size
    while left:
        length = min(frame, left)
        out.append(pack(length >> 8, length & 0xFF, 0, 0, stream_id))  # type 0: DATA
        out.append(outbox.take(length))
        left -= length
    conn.outbound_flow_control_window -= size
    stream.outbound_flow_control_window -= size


class WindowedPriority(priority.PriorityTree):
    """The send order over streams, passing over (and blocking) those that cannot send."""

    def __init__(self, can_send: Callable[[int], bool]) -> None:
        super().__init__()
        self.can_send = can_send

    def __next__(self) -> int:
        while True:
            stream_id = super().__next__()  # DeadlockError once every stream is blocked
            if self.can_send(stream_id):
                return stream_id
            self.block(stream_id)  # resume_sending unblocks it when a window opens


class PluginH2Connection(H2Base):
    """See the module docstring."""

    log = Logger()
    last_logged = float("-inf")
    """When a protocol error was last logged, server-wide (a class attribute on purpose)."""
    quiet = 0

    def __init__(self, reactor: IReactorTime, bodies: BodyGate | None = None,
                 quick: Callable[[PluginH2Connection, Any], Any | None] | None = None) -> None:
        self.outboxes: dict[int, Outbox] = {}
        self.quick = quick
        """Answers the plainest requests without twisted.web's Request (hps.h2fast)."""
        self.peer_host: str | None = None
        self.paused = self.lost = self.sending = False
        self.next_turn: IDelayedCall | None = None
        super().__init__(reactor)
        self.clock = reactor
        self.bodies = bodies
        # Initial values, not pending changes: they go out in the preface's SETTINGS frame.
        values = dict(self.conn.local_settings.items())
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAMS
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.conn.encoder = StatelessEncoder()
        self.priority = WindowedPriority(self.can_send)
        self.stamps: dict[int, float] = {}
        """Per stream: when its response last made progress."""

    def quick_stream(self, event: Any) -> Any | None:
        return None if self.quick is None else self.quick(self, event)

    def peer(self) -> str:
        """The client's address, for the access log (fixed per connection)."""
        if self.peer_host is None:
            self.peer_host = getattr(self.transport.getPeer(), "host", "-")
        return self.peer_host

    # -- what the senders see ---------------------------------------------------------------

    def unsent(self, stream_id: int) -> int:
        outbox = self.outboxes.get(stream_id)
        return outbox.unsent if outbox is not None else 0

    def after_send(self, stream_id: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` once the send loop has taken this stream below ``H2_BACKLOG``."""
        outbox = self.outboxes.get(stream_id)
        if outbox is None or outbox.unsent < H2_BACKLOG:
            self.clock.callLater(0, wake)
        else:
            outbox.wake = wake

    def body_key(self, stream_id: int) -> Hashable:
        return (self, stream_id)

    def may_send_body(self, stream_id: int, wake: Callable[[], None]) -> bool:
        """Does this stream's body hold a turn (:mod:`hps.bodies`)? If not, ``wake`` later."""
        return self.bodies is None or self.bodies.admit(self.body_key(stream_id), wake)

    def body_done(self, stream_id: int) -> None:
        if self.bodies is not None:
            self.bodies.release(self.body_key(stream_id))

    def remainingOutboundWindow(self, streamID: int) -> int:
        """The window left once what is queued has gone (twisted.web asks, to resume a
        paused producer); O(1), where twisted.web re-sums the queue."""
        return self.conn.local_flow_control_window(streamID) - self.unsent(streamID)

    # -- the send loop ----------------------------------------------------------------------

    def can_send(self, stream_id: int) -> bool:
        """Can this stream send a frame now: END_STREAM (needs no window), or bytes the
        flow-control window allows? A stream h2 no longer knows cannot."""
        outbox = self.outboxes.get(stream_id)
        if outbox is None:
            return False
        if outbox.head:
            return True
        if not outbox.unsent:
            return outbox.ending
        try:
            return self.conn.local_flow_control_window(stream_id) > 0
        except h2.exceptions.NoSuchStreamError:  # reset by the client: its event cleans up
            return False

    def ready(self, stream_id: int) -> None:
        """This stream has something new to send: back in the ready set, loop scheduled."""
        if self.can_send(stream_id):
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.unblock(stream_id)
            self.schedule()

    def schedule(self) -> None:
        if not (self.sending or self.lost or self.paused) and self.next_turn is None:
            self.next_turn = self.clock.callLater(0, self.send_ready)

    def send_ready(self) -> None:
        """Send what the windows and the transport allow now (see the module docstring)."""
        if self.next_turn is not None:
            if self.next_turn.active():
                self.next_turn.cancel()
            self.next_turn = None
        if self.sending or self.lost or self.paused or self.transport is None:
            return
        self.sending = True
        budget = TURN_BYTES
        try:
            while not self.paused and not self.lost and budget > 0:
                out: list[bytes | memoryview] = []
                ended: list[int] = []
                if not self.frames(out, ended):
                    break
                out.append(self.conn.data_to_send())
                data = b"".join(out)
                self.transport.write(data)  # may pause us, at once
                budget -= len(data)
                for stream_id in ended:
                    h2_stream_done(self, stream_id)
        finally:
            self.sending = False
        if budget <= 0:
            self.schedule()  # more may be ready: let the other connections have a turn

    def frames(self, out: list[bytes | memoryview], ended: list[int]) -> int:
        """Append up to ``WRITE_BYTES`` of frames to ``out``, in priority order (whatever
        h2 holds to send goes before them); ``ended`` gets the streams whose END_STREAM
        went. Returns how many streams had a turn."""
        made = sent = 0
        conn, outboxes, streams, stamps = self.conn, self.outboxes, self.streams, self.stamps
        now = self.clock.seconds()
        while sent < WRITE_BYTES:
            try:
                stream_id = next(self.priority)
            except priority.DeadlockError:
                break
            outbox = outboxes[stream_id]
            made += 1
            pending = conn.data_to_send()  # control frames and headers, in h2's order
            if pending:
                out.append(pending)
            if outbox.head:  # HEADERS needs no window; it leaves with the first DATA frames
                out.append(outbox.head)
                outbox.head = b""
                stamps[stream_id] = now
            try:
                if not outbox.unsent:
                    if outbox.ending:
                        conn.end_stream(stream_id)
                        out.append(conn.data_to_send())
                        ended.append(stream_id)
                    self.priority.block(stream_id)
                    continue
                window = conn.local_flow_control_window(stream_id)
                if window <= 0:
                    self.priority.block(stream_id)
                    continue
                size = min(window, outbox.unsent, BURST_BYTES)
                data_frames(conn, stream_id, outbox, size, out)
            except (KeyError, h2.exceptions.ProtocolError):
                outboxes.pop(stream_id, None)  # reset meanwhile: its event cleans up
                self.priority.block(stream_id)
                continue
            sent += size
            stamps[stream_id] = now  # progress: bytes left for the client
            if not outbox.unsent and not outbox.ending:
                self.priority.block(stream_id)
            if window - size - outbox.unsent <= 0:
                streams[stream_id].flowControlBlocked()
            if outbox.wake is not None and outbox.unsent < H2_BACKLOG:
                wake, outbox.wake = outbox.wake, None
                wake()  # the sender refills now, within this turn
        return made

    def stream_done(self, stream_id: int) -> None:
        """twisted.web forgot this stream (ended, reset, aborted, connection lost)."""
        self.outboxes.pop(stream_id, None)
        self.stamps.pop(stream_id, None)
        self.body_done(stream_id)

    # -- IPushProducer, as the transport drives it ------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        super().resumeProducing()  # control frames held while paused go first
        if not self.paused:
            self.send_ready()

    def connectionLost(self, reason: Failure, _cancelTimeouts: bool = True) -> None:
        self.lost = True
        if self.next_turn is not None and self.next_turn.active():
            self.next_turn.cancel()
        self.next_turn = None
        super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)

    def gone(self, stream_id: int) -> bool:
        """Has the client closed this stream (h2 knows, even if twisted.web does not yet)?"""
        stream = self.conn.streams.get(stream_id)
        return stream is None or stream.closed or stream_id not in self.streams

    # -- writes for streams that may be gone ------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any,
                     streamID: int) -> None:
        if self.gone(streamID):
            return
        self.stamps[streamID] = self.clock.seconds()
        super().writeHeaders(version, code, reason, headers, streamID)

    def send_head(self, stream_id: int, status: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        """The response head of a stream hps answers itself (:mod:`hps.h2fast`): its
        HEADERS frame leaves in the same write as the stream's first DATA frames, not
        in a TLS record and a reactor turn of its own as twisted.web's would. After a
        table size change h2 encodes the next block itself (the update must go first)."""
        if self.gone(stream_id):
            return
        encoder = self.conn.encoder
        block = b"" if encoder.header_table.resized else \
            encoder.encode([(b":status", status), *fields])
        if not block or len(block) > self.conn.max_outbound_frame_size:
            self.writeHeaders(b"HTTP/2", status, b"", fields, stream_id)
            return
        self.stamps[stream_id] = self.clock.seconds()
        outbox = self.outboxes.get(stream_id)
        if outbox is None:
            outbox = self.outboxes[stream_id] = Outbox()
        outbox.head = headers_frame(self.conn, stream_id, block)
        self.ready(stream_id)

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        if self.gone(streamID) or not data:
            return
        outbox = self.outboxes.get(streamID)
        if outbox is None:
            outbox = self.outboxes[streamID] = Outbox()
        outbox.put(data)
        self.ready(streamID)
        if self.remainingOutboundWindow(streamID) <= 0:
            self.streams[streamID].flowControlBlocked()

    def endRequest(self, streamID: int) -> None:
        if self.gone(streamID):
            return
        outbox = self.outboxes.get(streamID)
        if outbox is None:
            outbox = self.outboxes[streamID] = Outbox()
        outbox.ending = True
        self.ready(streamID)

    def abortRequest(self, streamID: int) -> None:
        if not self.gone(streamID):
            super().abortRequest(streamID)

    def openStreamWindow(self, streamID: int, increment: int) -> None:
        if not self.gone(streamID):
            super().openStreamWindow(streamID, increment)

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
            if self.streams:  # a WINDOW_UPDATE or SETTINGS may have given some room
                self.resume_sending()
                self.resume_producers()
        except Exception as err:  # a state h2 refuses; never let it reach the reactor
            self.protocol_error(err)

    def resume_sending(self) -> None:
        """Put back in the ready set every stream whose queued bytes a window now allows."""
        for stream_id in list(self.outboxes):
            self.ready(stream_id)

    def resume_producers(self) -> None:
        """Resume the senders flow control paused that now have window. twisted.web does so
        on a WINDOW_UPDATE only; a SETTINGS change of INITIAL_WINDOW_SIZE (RFC 9113 6.9.2)
        opens every stream's window too, and its paused senders would wait out the send
        deadline."""
        for stream_id, stream in list(self.streams.items()):
            if self.gone(stream_id):
                continue
            with contextlib.suppress(h2.exceptions.NoSuchStreamError):  # closed meanwhile
                stream.windowUpdated()  # resumes only a paused producer that has window

    def protocol_error(self, err: Exception) -> None:
        """End this connection politely, with one line (rate-limited) in the log."""
        now = self.clock.seconds()
        cls = PluginH2Connection
        if now - cls.last_logged >= LOG_EVERY:
            self.log.warn("HTTP/2 protocol error from {peer} ({err!r}); closing that connection"
                          "{more}", peer=getattr(self.transport.getPeer(), "host", "-"),
                          err=err, more=f" ({cls.quiet} more not logged)" if cls.quiet else "")
            cls.last_logged, cls.quiet = now, 0
        else:
            cls.quiet += 1
        metrics.observe_abort("h2_protocol_error")
        try:
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self.transport.write(self.conn.data_to_send())
        except h2.exceptions.ProtocolError:
            pass
        self.transport.loseConnection()
        self.connectionLost(Failure(ConnectionLost("HTTP/2 protocol error")))

    # -- the send deadline ------------------------------------------------------------------

    def busy(self) -> bool:
        return bool(self.streams)

    def check(self, now: float, send_timeout: float) -> None:
        """Reset every stream whose response made no progress for ``send_timeout``."""
        for table in (self.stamps, self.outboxes):
            for stream_id in [s for s in table if s not in self.streams]:
                del table[stream_id]
        for stream_id, stream in list(self.streams.items()):
            since = self.stamps.setdefault(stream_id, now)
            if self.bodies is not None:  # a stalled body's turn goes to one that waits
                self.bodies.requeue_if_stalled(self.body_key(stream_id), since)
            if now - since > send_timeout:
                metrics.observe_abort("send_timeout")
                # The request learns first (its producer stops, its file is let go, the
                # access log says aborted); then RST_STREAM and twisted.web's cleanup.
                self.stamps[stream_id] = float("inf")  # cut once, whatever h2 says next
                stream.connectionLost(Failure(ConnectionLost("send timeout")))
                stream.abortConnection()
