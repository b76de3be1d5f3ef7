"""The few Twisted (and pyOpenSSL and h2) internals hps cannot avoid, in one room, each
guarded by a canary.

Everything else in hps uses Twisted's public API. Each name here has a test in
``tests/test__twisted.py`` that fails loudly when a Twisted release renames or
changes it, and ``setup.py`` bounds Twisted's, pyOpenSSL's and h2's versions to the
releases those canaries were run against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import MethodType
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, ITransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import _GenericHTTPChannelProtocol

try:
    import priority
    from h2.stream import StreamClosedBy
    from twisted.web._http2 import H2Connection

    _SEND_END_STREAM = StreamClosedBy.SEND_END_STREAM
except ImportError:  # h2 not installed (the http2 extra): no HTTP/2, and no subclass of it
    H2Connection = None  # type: ignore[assignment,misc]

GenericHTTPChannelProtocol = _GenericHTTPChannelProtocol
"""twisted.web's HTTP/1.1-or-HTTP/2 switch (ALPN). Private, but the only way to keep
HTTP/2 while using our own HTTP/1.1 channel class: ``Site.protocol`` builds it."""


def inner_channel(protocol: Any) -> Any:
    """The channel a :data:`GenericHTTPChannelProtocol` currently forwards to
    (our ``PluginChannel``, or twisted.web's ``H2Connection`` after ALPN picked h2)."""
    return protocol._channel


def negotiating(protocol: Any) -> bool:
    """Has a :data:`GenericHTTPChannelProtocol` yet to pick its protocol (on first data)?"""
    return protocol._negotiatedProtocol is None


def switch_to_h2(protocol: Any, connection: Any) -> None:
    """What ``GenericHTTPChannelProtocol.dataReceived`` does when ALPN picked h2, with
    ``connection`` (hps's ``H2Connection`` subclass) instead of a plain ``H2Connection()``:
    the switch builds its class by name, with no hook."""
    old = protocol._channel
    network = old._networkProducer
    network.unregisterProducer()  # the transport's producer becomes the h2 connection
    old.setTimeout(None)
    transport = old.transport
    protocol._channel = connection
    connection.requestFactory = protocol._requestFactory
    connection.site = protocol._site
    connection.factory = protocol._factory
    connection.timeOut = protocol._timeOut
    connection.callLater = protocol._callLater
    connection.makeConnection(transport)
    network.registerProducer(connection, True)
    protocol._negotiatedProtocol = b"h2"


def request_line(channel: Any) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(method, target, version) of the request whose head an ``HTTPChannel`` is parsing,
    (None, None, None) before its request line; the Request object learns them only in
    ``requestReceived``, after ``allHeadersReceived``, where hps must decide."""
    return (getattr(channel, "_command", None), getattr(channel, "_path", None),
            getattr(channel, "_version", None))


def request_method(channel: Any) -> bytes | None:
    return request_line(channel)[0]


def wake_when_writable(transport: ITransport) -> None:
    """Have a plain TCP transport resume its (streaming) producer once the socket is writable.

    For a sender that writes to the socket itself (``os.sendfile``), bypassing the
    transport's buffer. ``FileDescriptor.doWrite`` with nothing buffered stops
    writing and calls ``producer.resumeProducing()`` when the producer is marked
    paused; ``producerPaused`` and ``startWriting`` are public names, but that
    call sequence is an implementation detail, hence this room and its canary.
    Bytes already buffered (a response head) are sent first, in order.
    """
    transport.producerPaused = True
    transport.startWriting()


def forget_exit_signal(reactor: IReactorCore) -> None:
    """Make twistd exit 0 after a SIGTERM that hps handled (a finished drain): twistd
    re-raises the signal the reactor recorded in ``_exitSignal`` (exit status 143)."""
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = None


def h2_connection(stream: Any) -> Any | None:
    """The hps HTTP/2 connection a twisted.web HTTP/2 stream belongs to; None for any other
    channel (an ``H2Stream`` keeps its connection in ``_conn``)."""
    connection = getattr(stream, "_conn", None)
    return connection if isinstance(connection, H2Base) else None


def h2_stream_done(connection: Any, stream_id: int) -> None:
    """Let twisted.web forget a stream whose END_STREAM went out: what its own send loop
    does (``_requestDone``: the stream, its priority entry, its cleanup callback)."""
    connection._requestDone(stream_id)


def h2_settled(conn: Any) -> bool:
    """Has h2 (an ``h2.connection.H2Connection``) taken the client's preface and every
    byte it was given as whole frames, so that the next bytes start a frame? (Its
    ``FrameBuffer`` keeps the rest of the preface, partial frames and a header block
    awaiting CONTINUATION in private attributes.)"""
    buffer = conn.incoming_buffer
    return not (buffer._data or buffer._preamble_len or buffer._headers_buffer)


def h2_stream_closed(conn: Any, stream_id: int) -> None:
    """Record in h2's books a client stream that opened and closed at once, both sides
    ended (``hps.http2.PluginH2Connection.answer_whole``), as h2 records such a stream
    when it forgets it (``_closed_streams``), so frames that come for it later are
    treated alike."""
    conn._closed_streams[stream_id] = _SEND_END_STREAM


if H2Connection is not None:
    class H2Base(H2Connection):
        """twisted.web's ``H2Connection`` with its send loop handed to the subclass.

        twisted.web schedules ``_sendPrioritisedData`` (one DATA frame per turn, then
        ``callLater(0)``) from ``__init__`` and from Deferreds; here it runs
        :meth:`send_ready`. Every end of a stream (sent, reset, aborted, connection lost)
        passes through ``_requestDone``; here it also runs :meth:`stream_done`.
        """

        def _sendPrioritisedData(self, *args: object) -> None:
            self.send_ready()

        def _requestDone(self, streamID: int) -> None:
            super()._requestDone(streamID)
            self.stream_done(streamID)

        def _requestReceived(self, event: Any) -> None:
            """A stream :meth:`quick_stream` answers gets the same bookkeeping as
            twisted.web gives its ``H2Stream`` (its queue, cleanup Deferred and place
            in the priority tree, blocked until it has data), with that object instead."""
            stream = self.quick_stream(event)
            if stream is None:
                super()._requestReceived(event)
                return
            stream_id = event.stream_id
            self.streams[stream_id] = stream
            self._streamCleanupCallbacks[stream_id] = Deferred()
            self._outboundStreamQueues[stream_id] = deque()
            try:
                self.priority.insert_stream(stream_id)
            except priority.DuplicateStreamError:  # a PRIORITY frame came first
                pass
            else:
                self.priority.block(stream_id)

        def quick_stream(self, event: Any) -> Any | None:
            return None

        def send_ready(self) -> None:
            raise NotImplementedError

        def stream_done(self, stream_id: int) -> None:
            raise NotImplementedError
else:  # pragma: no cover - h2 missing: nothing subclasses it
    class H2Base:  # type: ignore[no-redef]
        """Stands for the h2-backed base: without h2 no connection is one."""


def ssl_set_mode(connection: SSL.Connection, mode: int) -> int:
    """``SSL_set_mode`` on one pyOpenSSL ``Connection``; returns the connection's mode now.

    Not Twisted's but pyOpenSSL's privates (its cffi ``lib`` and ``Connection._ssl``):
    pyOpenSSL offers ``Context.set_mode`` only, refuses it once a context made a
    connection, and Twisted builds the contexts of ``ssl:`` and ``tls:`` listeners
    out of reach; a connection's own mode can be set any time."""
    return int(_openssl.SSL_set_mode(connection._ssl, mode))


CIPHERTEXT_BATCH = 256 * 1024
"""Ciphertext gathered before it is handed to the TCP transport as one ``bytes``: a whole
HTTP/1.1 chunk (64 KiB) or HTTP/2 turn (~128 KiB) fits, so each is one write. The batch
is one buffer for the process (the reactor runs one write at a time), not per connection."""

_RECORD_ROOM = 2**14 + 2048
"""One record's ciphertext at most: 16 KiB of plaintext plus TLS's largest expansion."""

_BATCH_END = CIPHERTEXT_BATCH + _RECORD_ROOM
_batch = _ffi.new_allocator(should_clear_after_alloc=False)("char[]", _BATCH_END)


def ssl_encrypt(connection: SSL.Connection, data: bytes,
                emit: Callable[[bytes], None]) -> int:
    """Encrypt ``data`` on a memory-BIO ``connection``; its ciphertext goes to ``emit`` in
    batches of up to :data:`CIPHERTEXT_BATCH` bytes. Returns the plaintext bytes taken:
    all of them, or fewer when OpenSSL must read before it writes (``WantReadError``:
    write the rest again later). Any other error raises, after what was encrypted went.

    pyOpenSSL's privates (``_ssl``, ``_from_ssl``, ``_raise_ssl_error``, its cffi ``lib``):
    ``Connection.send`` costs a ``from_buffer`` and an error check per call and
    ``bio_read`` a fresh buffer and a copy, per 16 KiB record (pyOpenSSL keeps
    ``SSL_MODE_ENABLE_PARTIAL_WRITE``: one ``SSL_write`` makes one record). Here each
    ``SSL_write`` reads straight from ``data`` and each record is drained from the write
    BIO into the batch at once, so that BIO never holds more than one record (a BIO
    keeps the largest size it ever held, for the life of the connection)."""
    ssl, bio = connection._ssl, connection._from_ssl
    size, taken, filled = len(data), 0, 0
    try:
        with _ffi.from_buffer(data) as source:
            while taken < size:
                wrote = _openssl.SSL_write(ssl, source + taken, size - taken)
                if wrote <= 0:
                    try:
                        connection._raise_ssl_error(ssl, wrote)
                    except SSL.WantReadError:
                        break
                    raise SSL.Error([("hps", "SSL_write", "wrote nothing, no error")])
                taken += wrote
                room = _BATCH_END - filled
                got = _openssl.BIO_read(bio, _batch + filled, room)
                if got > 0:
                    filled += got
                if got == room or filled >= CIPHERTEXT_BATCH:  # more in the BIO, or full
                    filled = _drain(bio, filled, emit)
    except SSL.Error:
        if filled:  # the records made before the error go first, as on Twisted's path
            emit(_ffi.buffer(_batch, filled)[:])
        raise
    if filled:
        emit(_ffi.buffer(_batch, filled)[:])
    return taken


def _drain(bio: Any, filled: int, emit: Callable[[bytes], None]) -> int:
    """Move everything in the write ``bio`` into the batch (which holds ``filled`` bytes),
    emitting the batch whenever it fills; returns what it holds now."""
    while True:
        room = _BATCH_END - filled
        got = max(_openssl.BIO_read(bio, _batch + filled, room), 0)
        filled += got
        if filled >= CIPHERTEXT_BATCH:
            out, filled = _ffi.buffer(_batch, filled)[:], 0  # copied before emit re-enters
            emit(out)
        if got < room:
            return filled  # the BIO is empty


def whole_tls_writes(protocol: TLSMemoryBIOProtocol) -> None:
    """Have one Twisted TLS connection encrypt each write in one pass (:func:`ssl_encrypt`)
    and hand its ciphertext to the TCP transport in one ``write``.

    Twisted's ``TLSMemoryBIOProtocol._write`` slices every write into 16 KiB copies and,
    per slice, calls pyOpenSSL's ``send``, ``bio_read(2**15)`` and ``transport.write``.
    Everything that calls it (``write`` after its aggregator, with the
    writes-after-``loseConnection`` rule; ``_unbufferPendingWrites``) finds this instance's
    ``_write`` instead, which keeps its contract: nothing once the TLS connection is lost;
    Twisted's own path until the handshake is done; on ``WantReadError`` the rest is
    buffered (``_bufferedWrite``, which pauses the producer) and written again after the
    next read; on an error the TLS connection shuts down as Twisted's does."""
    protocol._write = MethodType(_write_whole, protocol)  # type: ignore[method-assign]


def _write_whole(self: TLSMemoryBIOProtocol, data: bytes) -> None:
    if self._lostTLSConnection:
        return
    if not self._handshakeDone:
        TLSMemoryBIOProtocol._write(self, data)
        return
    try:
        taken = ssl_encrypt(self._tlsConnection, data, self.transport.write)
    except SSL.Error:
        self._tlsShutdownFinished(Failure())
        return
    if taken < len(data):
        self._bufferedWrite(data[taken:])
