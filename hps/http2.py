"""HTTP/2 connections that one hostile stream cannot take down, and that obey the deadlines.

twisted.web's ``H2Connection``, with what hps needs on top:

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
  no progress (bytes accepted for it, which flow control bounds by the client's
  window) for ``send_timeout`` is reset, however often the client PINGs.
- **No busy-wait for a window**: twisted.web's send loop keeps a stream whose
  bytes wait for flow-control window in its ready set and reschedules itself with
  ``callLater(0)`` until the window opens: a core spent per such client, until the
  send deadline. Here such a stream leaves the ready set (:class:`WindowedPriority`)
  and every frame received puts back those a window now allows.
- **Room, announced**: a response's sender stops once its stream holds
  ``H2_BACKLOG`` unsent bytes (the client's window alone could let a body pile up
  in memory); :meth:`PluginH2Connection.after_send` wakes it when the send loop
  next takes a frame from that stream, so a stream moves as fast as the
  connection drains it, not at a polling rate.
- **No traceback floods**: anything else h2 raises ends that connection (GOAWAY)
  with one log line, at most one per ``LOG_EVERY`` seconds for the whole server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.exceptions
import h2.settings
import priority
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hps import metrics
from hps._twisted import H2Connection, h2_can_send, h2_resume_sending

MAX_STREAMS = 100
LOG_EVERY = 10.0


class WindowedPriority(priority.PriorityTree):
    """The send order over streams, passing over (and blocking) those that cannot send."""

    def __init__(self, can_send: Callable[[int], bool],
                 picked: Callable[[int], None] = lambda stream_id: None) -> None:
        super().__init__()
        self.can_send, self.picked = can_send, picked

    def __next__(self) -> int:
        while True:
            stream_id = super().__next__()  # DeadlockError once every stream is blocked
            if self.can_send(stream_id):
                self.picked(stream_id)  # its next frame goes out in this turn
                return stream_id
            self.block(stream_id)  # h2_resume_sending unblocks it when a window opens


class PluginH2Connection(H2Connection):
    """See the module docstring."""

    log = Logger()
    last_logged = float("-inf")
    """When a protocol error was last logged, server-wide (a class attribute on purpose)."""
    quiet = 0

    def __init__(self, reactor: IReactorTime) -> None:
        super().__init__(reactor)
        self.clock = reactor
        # Initial values, not pending changes: they go out in the preface's SETTINGS frame.
        values = dict(self.conn.local_settings.items())
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAMS
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.priority = WindowedPriority(lambda stream_id: h2_can_send(self, stream_id),
                                         self.picked)
        self.stamps: dict[int, float] = {}
        """Per stream: when its response last made progress."""
        self.waiting: dict[int, Callable[[], None]] = {}
        """Per stream: who to wake once the send loop takes a frame from it."""

    def after_send(self, stream_id: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` on a later turn, once the send loop has sent a frame of this stream."""
        self.waiting[stream_id] = wake

    def picked(self, stream_id: int) -> None:
        wake = self.waiting.pop(stream_id, None)
        if wake is not None:
            self.clock.callLater(0, wake)  # after the frame left the queue, outside the loop

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

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        if self.gone(streamID):
            return
        self.stamps[streamID] = self.clock.seconds()
        super().writeDataToStream(streamID, data)

    def endRequest(self, streamID: int) -> None:
        if not self.gone(streamID):
            super().endRequest(streamID)

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
                h2_resume_sending(self)
                self.resume_producers()
        except Exception as err:  # a state h2 refuses; never let it reach the reactor
            self.protocol_error(err)

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
        for table in (self.stamps, self.waiting):
            for stream_id in [s for s in table if s not in self.streams]:
                del table[stream_id]
        for stream_id, stream in list(self.streams.items()):
            since = self.stamps.setdefault(stream_id, now)
            if now - since > send_timeout:
                metrics.observe_abort("send_timeout")
                # The request learns first (its producer stops, its file is let go, the
                # access log says aborted); then RST_STREAM and twisted.web's cleanup.
                self.stamps[stream_id] = float("inf")  # cut once, whatever h2 says next
                stream.connectionLost(Failure(ConnectionLost("send timeout")))
                stream.abortConnection()
