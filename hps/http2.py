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
- **Small bodies whole**: a body of at most ``WHOLE_BYTES`` that the windows allow, on a
  connection with nothing else queued, leaves in one write with its HEADERS and
  END_STREAM (:meth:`PluginH2Connection.send_whole`); a lone HEADERS frame that opens and
  ends a stream on an idle connection is decoded here and, if :mod:`hps.h2fast` answers
  it whole, never reaches h2's parser (:meth:`PluginH2Connection.take_whole`).
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
from typing import Any, ClassVar, Protocol

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
from hps._twisted import H2Base, h2_settled, h2_stream_closed, h2_stream_done
from hps.bodies import BodyGate

MAX_STREAMS = 100
LOG_EVERY = 10.0

H2_BACKLOG = 131072
"""Unsent bytes an HTTP/2 stream may queue before its sender waits for the connection
to send frames of it: HTTP/2 flow control alone would let a client's window decide.
One write's worth (``WRITE_BYTES``), so a lone stream fills a write from one read."""

FRAME_PAYLOAD = 16384 - 9
"""DATA payload per frame: with its 9-byte header a frame fills one TLS record (16 KiB
of plaintext at most), where a 16,384-byte payload would take two records."""

WRITE_BYTES = 8 * FRAME_PAYLOAD
"""DATA bytes coalesced into one transport write (~128 KiB: past the TCP transport's
64 KiB pause threshold, so one write per turn is the usual case)."""

BURST_BYTES = 8 * FRAME_PAYLOAD
"""At most this many bytes from one stream before the priority order picks again (a
write's worth: streams interleave write by write; 12 % more 4 MB bodies a second than
with half, bench/README.md)."""

WHOLE_BYTES = 256 * 1024
"""A body at most this big that both windows allow leaves whole, in one write with its
HEADERS and END_STREAM (:meth:`PluginH2Connection.send_whole`), when its connection has
nothing else queued: no queue, no sender, no reactor turn of its own."""

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

    blocks: ClassVar[dict[tuple[bool, tuple[tuple[bytes, bytes], ...]], bytes]] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        fields = tuple(headers)
        if self.header_table.resized:  # hpack puts the update first, then clears the flag
            return super().encode([hpack.NeverIndexedHeaderTuple(*f[:2]) for f in fields],
                                  huffman)
        blocks = StatelessEncoder.blocks
        key = (huffman, fields)
        block = blocks.get(key)
        if block is None:
            block = super().encode([hpack.NeverIndexedHeaderTuple(*f[:2]) for f in fields],
                                   huffman)
            if len(blocks) >= BLOCKS:
                blocks.clear()
            blocks[key] = block
        return block


_RESTATE = StatelessEncoder()

TableMark = tuple[object, int, int]


def table_mark(table: hpack.table.HeaderTable) -> TableMark:
    """What changes whenever an HPACK table does: an entry added goes first (a new object,
    kept alive here, so never mistaken for another), a clear empties the table, a
    resize changes the size limit (and evicts from the end)."""
    entries = table.dynamic_entries
    return (entries[0] if entries else None, len(entries), table.maxsize)


def same_mark(one: TableMark, other: TableMark) -> bool:
    return one[0] is other[0] and one[1:] == other[1:]


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

    @classmethod
    def of(cls, data: bytes) -> Outbox:
        outbox = cls()
        outbox.put(data)
        return outbox

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
_RECV_HEADERS = h2.connection.ConnectionInputs.RECV_HEADERS
_ACCEPTING = (h2.connection.ConnectionState.IDLE, h2.connection.ConnectionState.SERVER_OPEN)
"""States in which h2 takes a new request (IDLE: none yet)."""
_STREAM_SEND_HEADERS = h2.stream.StreamInputs.SEND_HEADERS
_STREAM_SEND_END_STREAM = h2.stream.StreamInputs.SEND_END_STREAM


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """A frame's 9-byte header (hyperframe's layout)."""
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def headers_frame(conn: h2.connection.H2Connection, stream_id: int, block: bytes) -> bytes:
    """A response's HEADERS frame carrying ``block`` (a whole header block, one frame), with
    the state changes h2's ``send_headers`` makes; tests/test_http2.py checks both match."""
    stream = conn.streams[stream_id]  # KeyError: closed and forgotten
    conn.state_machine.process_input(_SEND_HEADERS)
    stream.state_machine.process_input(_STREAM_SEND_HEADERS)
    return frame_head(len(block), 1, 0x4, stream_id) + block  # END_HEADERS


def data_frames(conn: h2.connection.H2Connection, stream_id: int, outbox: Outbox, size: int,
                out: list[bytes | memoryview], end: bool = False) -> None:
    """Append DATA frames carrying the next ``size`` bytes of ``outbox`` (``size`` within
    the window) to ``out``, with the bookkeeping h2's ``send_data`` does per frame: the
    connection's and the stream's state checks and both flow-control windows. With
    ``end``, the last frame carries END_STREAM (no empty frame of its own to end it).

    h2 builds each frame as an object, serializes it and copies it into its buffer
    (~20 µs a frame, as much as the TLS record it fills); here a frame is a 9-byte
    header and a slice of the read. tests/test_http2.py checks the bytes and the
    windows match ``send_data``'s for the same input, and that h2 still finds these
    attributes where it keeps them.
    """
    stream = conn.streams[stream_id]  # KeyError: closed and forgotten
    conn.state_machine.process_input(_SEND_DATA)  # raises as send_data would, once closed
    stream.state_machine.process_input(_STREAM_SEND_DATA)
    if end:
        stream.state_machine.process_input(_STREAM_SEND_END_STREAM)
    slice_frames(stream_id, outbox, size, min(FRAME_PAYLOAD, conn.max_outbound_frame_size),
                 end, out)
    conn.outbound_flow_control_window -= size
    stream.outbound_flow_control_window -= size


def slice_frames(stream_id: int, outbox: Outbox, size: int, frame: int, end: bool,
                 out: list[bytes | memoryview]) -> None:
    """The bytes of DATA frames of at most ``frame`` bytes carrying ``size`` of ``outbox``."""
    left = size
    while left:
        length = min(frame, left)
        left -= length
        out.append(frame_head(length, 0, 0x1 if end and not left else 0, stream_id))
        out.append(outbox.take(length))


def restated(stream_id: int, fields: list[tuple[bytes, bytes]], frame: int) -> bytes:
    """A request's HEADERS (and CONTINUATION) frames, END_STREAM set, carrying ``fields``
    in a block that neither uses nor changes the peer's HPACK table: what h2 receives for
    a request hps decoded itself but does not answer whole (the table already holds what
    the client's block added)."""
    block = _RESTATE.encode(fields, huffman=False)  # h2 decodes Huffman slowly, in Python
    pieces = [block[at:at + frame] for at in range(0, len(block), frame)] or [b""]
    out = [frame_head(len(pieces[0]), 1, 0x1 | (0x4 if len(pieces) == 1 else 0), stream_id),
           pieces[0]]
    for index, piece in enumerate(pieces[1:], 2):
        out += [frame_head(len(piece), 9, 0x4 if index == len(pieces) else 0, stream_id),
                piece]
    return b"".join(out)


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


class QuickRequests(Protocol):
    """What answers the plainest requests without twisted.web (:mod:`hps.h2fast`)."""

    def stream(self, connection: PluginH2Connection, event: Any) -> Any | None:
        """A stand-in for twisted.web's ``H2Stream`` for h2's ``RequestReceived`` event,
        or None: twisted.web answers."""

    def whole(self, connection: PluginH2Connection, stream_id: int,
              fields: list[tuple[bytes, bytes]]) -> bool:
        """Answer a request :meth:`PluginH2Connection.take_whole` decoded, with
        :meth:`PluginH2Connection.answer_whole`; False if it did not."""


class PluginH2Connection(H2Base):
    """See the module docstring."""

    log = Logger()
    last_logged = float("-inf")
    """When a protocol error was last logged, server-wide (a class attribute on purpose)."""
    quiet = 0

    def __init__(self, reactor: IReactorTime, bodies: BodyGate | None = None,
                 quick: QuickRequests | None = None) -> None:
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
        self.last_block: tuple[bytes, TableMark, list[tuple[bytes, bytes]]] | None = None
        """The last header block :meth:`decode` decoded, if it left the table as it was."""
        self.held: float | None = None
        """Since when a whole body (:meth:`send_whole`) waits in a paused transport, its
        body turn held until the transport drains: the bytes are in memory until then."""

    def quick_stream(self, event: Any) -> Any | None:
        return None if self.quick is None else self.quick.stream(self, event)

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

    # -- whole responses -------------------------------------------------------------------

    def idle_for_whole(self) -> bool:
        """Nothing of this connection waits to be sent (no priority order to keep), and the
        transport takes bytes: a whole response may go now."""
        return not (self.paused or self.lost or self.sending or self.outboxes
                    or self.held is not None or self.conn.encoder.header_table.resized)

    def can_send_whole(self, stream_id: int, size: int) -> bool:
        """Could :meth:`send_whole` send ``size`` bytes on this stream now (turns aside)?"""
        return (self.idle_for_whole() and not self.gone(stream_id)
                and self.conn.local_flow_control_window(stream_id) >= size)

    def can_answer_whole(self, size: int) -> bool:
        """Could :meth:`answer_whole` answer with ``size`` bytes now (turns aside)?"""
        conn = self.conn
        return (self.idle_for_whole() and not self.streams and size <= min(
            conn.outbound_flow_control_window, conn.remote_settings.initial_window_size))

    def send_whole(self, stream_id: int, status: bytes, fields: list[tuple[bytes, bytes]],
                   body: bytes) -> bool:
        """Send a whole response on an open stream in one write: HEADERS, DATA frames,
        END_STREAM on the last, and the stream is done. Only when :meth:`can_send_whole`
        and a body turn is free with none waiting; else False, and nothing was sent."""
        if not self.can_send_whole(stream_id, len(body)):
            return False
        block = self.whole_block(status, fields)
        if block is None:
            return False
        conn = self.conn
        out = [conn.data_to_send(), headers_frame(conn, stream_id, block)]
        data_frames(conn, stream_id, Outbox.of(body), len(body), out, end=True)
        self.write_whole(out)
        h2_stream_done(self, stream_id)
        return True

    def take_whole(self, data: bytes) -> bytes:
        """Answer ``data`` here if it is one whole request hps can answer whole: a HEADERS
        frame that opens and ends a stream, on a connection with no stream open.

        For that request h2 would parse the frame into objects, open a stream with its
        state machines, check each field through a chain of generators and hand over
        events (~150 µs of Python, as much as the TLS records of a 150 KB body); here its
        block is decoded (which keeps the peer's HPACK table in step) and
        ``quick.whole`` answers it, or says no. Returns what h2 must still receive:
        ``data`` untouched, b"" once answered, or the request restated with the same
        fields in a block that leaves the HPACK table as it is."""
        conn = self.conn
        if (len(data) < 9 or data[3] != 1 or data[4] != 0x5 or self.streams  # END_HEADERS
                or self.quick is None or not self.idle_for_whole()       # + END_STREAM
                or not h2_settled(conn)):
            return data
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if (len(data) - 9 != int.from_bytes(data[:3], "big")
                or len(data) - 9 > conn.max_inbound_frame_size or not stream_id & 1
                or stream_id <= conn.highest_inbound_stream_id
                or conn.state_machine.state not in _ACCEPTING):
            return data
        try:
            fields = self.decode(data[9:])
        except Exception as err:  # hpack's errors: h2 ends the connection for them too
            self.protocol_error(err)
            return b""
        self.resetTimeout()  # as twisted.web does for each frame h2 takes
        if self.quick.whole(self, stream_id, fields):
            return b""
        return restated(stream_id, fields, conn.max_inbound_frame_size)

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """``block`` decoded by h2's decoder; the same list again for the same block while the
        peer's table is as that block left it, if it neither added to nor resized the
        table (a client asking again on its connection sends such blocks)."""
        decoder = self.conn.decoder
        before = table_mark(decoder.header_table)
        last = self.last_block
        if last is not None and last[0] == block and same_mark(last[1], before):
            return last[2]
        fields = decoder.decode(block, raw=True)
        after = table_mark(decoder.header_table)
        self.last_block = (block, after, fields) if same_mark(before, after) else None
        return fields

    def answer_whole(self, stream_id: int, status: bytes, fields: list[tuple[bytes, bytes]],
                     body: bytes) -> bool:
        """Answer the request :meth:`take_whole` decoded, in one write, as
        :meth:`send_whole` does; in h2's books the stream opens and closes at once, as h2
        leaves a stream both sides ended (tests/test_http2.py checks the two agree)."""
        if not self.can_answer_whole(len(body)):
            return False
        block = self.whole_block(status, fields)
        if block is None:
            return False
        conn = self.conn
        for step in (_RECV_HEADERS, _SEND_HEADERS, _SEND_DATA):
            conn.state_machine.process_input(step)
        conn.highest_inbound_stream_id = stream_id
        h2_stream_closed(conn, stream_id)
        conn.outbound_flow_control_window -= len(body)
        out = [conn.data_to_send(), frame_head(len(block), 1, 0x4, stream_id), block]
        slice_frames(stream_id, Outbox.of(body), len(body),
                     min(FRAME_PAYLOAD, conn.max_outbound_frame_size), True, out)
        self.write_whole(out)
        return True

    def whole_block(self, status: bytes, fields: list[tuple[bytes, bytes]]) -> bytes | None:
        """A whole response's header block, with the body turn it goes in (free, none
        waiting); None if the block needs more than one frame or no turn is free."""
        block = self.conn.encoder.encode([(b":status", status), *fields])
        if len(block) > self.conn.max_outbound_frame_size:
            return None
        if self.bodies is not None and not self.bodies.take(self.whole_key()):
            return None
        return block

    def write_whole(self, out: list[bytes | memoryview]) -> None:
        """One write; the turn stays held while the transport holds the bytes (it paused
        this connection), so at most ``ACTIVE_BODIES`` whole bodies sit in memory."""
        self.transport.write(b"".join(out))  # may pause us, at once
        if self.bodies is not None:
            if self.paused:
                self.held = self.clock.seconds()
            else:
                self.bodies.release(self.whole_key())

    def whole_key(self) -> Hashable:
        """The body-turn key of this connection's whole body in flight (one at a time)."""
        return (self, 0)

    def release_whole(self) -> None:
        if self.held is not None:
            self.held = None
            if self.bodies is not None:
                self.bodies.release(self.whole_key())

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
                end = outbox.ending and size == outbox.unsent
                data_frames(conn, stream_id, outbox, size, out, end)
            except (KeyError, h2.exceptions.ProtocolError):
                outboxes.pop(stream_id, None)  # reset meanwhile: its event cleans up
                self.priority.block(stream_id)
                continue
            sent += size
            stamps[stream_id] = now  # progress: bytes left for the client
            if end:
                ended.append(stream_id)
                self.priority.block(stream_id)
                continue
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
        self.release_whole()  # the transport took the whole body's bytes
        super().resumeProducing()  # control frames held while paused go first
        if not self.paused:
            self.send_ready()

    def connectionLost(self, reason: Failure, _cancelTimeouts: bool = True) -> None:
        self.lost = True
        self.release_whole()
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
            data = self.take_whole(data)
            if not data:
                return
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
        code = (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM  # as h2 says for a header list bomb
                if isinstance(err, hpack.OversizedHeaderListError)
                else h2.errors.ErrorCodes.PROTOCOL_ERROR)
        try:
            self.conn.close_connection(error_code=code)
            self.transport.write(self.conn.data_to_send())
        except h2.exceptions.ProtocolError:
            pass
        self.transport.loseConnection()
        self.connectionLost(Failure(ConnectionLost("HTTP/2 protocol error")))

    # -- the send deadline ------------------------------------------------------------------

    def busy(self) -> bool:
        return bool(self.streams) or self.held is not None

    def check(self, now: float, send_timeout: float) -> None:
        """Reset every stream whose response made no progress for ``send_timeout``."""
        if self.held is not None:
            self.check_whole(now, send_timeout)
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

    def check_whole(self, now: float, send_timeout: float) -> None:
        """A whole body its client does not take: its turn goes to one that waits after
        ``STALL_SECONDS``, and the connection is cut after ``send_timeout``, as a stream's."""
        assert self.held is not None
        if now - self.held > send_timeout:
            metrics.observe_abort("send_timeout")
            self.release_whole()
            self.transport.abortConnection()
        elif self.bodies is not None:
            self.bodies.requeue_if_stalled(self.whole_key(), self.held)
