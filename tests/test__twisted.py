"""Canaries: each private Twisted name hps uses (hps/_twisted.py) still behaves as relied on.

A failure here means a Twisted release changed an internal; fix hps/_twisted.py before
raising the upper bound on twisted in setup.py.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
from OpenSSL import SSL
from twisted.application import app
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from hps._twisted import (
    CIPHERTEXT_BATCH,
    GenericHTTPChannelProtocol,
    H2Base,
    forget_exit_signal,
    h2_connection,
    h2_settled,
    h2_stream_closed,
    h2_stream_done,
    inner_channel,
    negotiating,
    request_line,
    request_method,
    ssl_encrypt,
    ssl_set_mode,
    switch_to_h2,
    wake_when_writable,
)
from hps.http2 import PluginH2Connection
from tests.support.reactor import Reactor
from tests.support.sockets import pump, tcp_pair
from tests.support.tlspair import Pair, Producer, tls_pair


def test_generic_protocol_wraps_the_channel_it_is_given() -> None:
    channel = HTTPChannel()
    wrapper = GenericHTTPChannelProtocol(channel)
    assert inner_channel(wrapper) is channel


def test_request_line_is_known_when_all_headers_are_in() -> None:
    seen: list[tuple] = []

    class Channel(HTTPChannel):
        def allHeadersReceived(self) -> None:
            seen.append((request_line(self), request_method(self)))
            super().allHeadersReceived()

    channel = Channel()
    assert request_line(channel) == (None, None, None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"DELETE /x?y HTTP/1.0\r\nHost: a\r\n\r\n")
    assert seen == [((b"DELETE", b"/x?y", b"HTTP/1.0"), b"DELETE")]


class QuietReactor(ReactorBase):
    """A real ReactorBase (signal bookkeeping included) that needs no descriptors."""

    def installWaker(self) -> None:
        pass

    def wakeUp(self) -> None:
        pass


def test_twistd_exits_with_the_signal_the_reactor_recorded() -> None:
    reactor = QuietReactor()
    reactor.sigTerm(signal.SIGTERM)  # what a SIGTERM does: record it, then stop the reactor
    assert reactor._exitSignal == signal.SIGTERM
    assert "_exitSignal" in inspect.getsource(app.ApplicationRunner)  # twistd reads it
    forget_exit_signal(reactor)
    assert reactor._exitSignal is None


@implementer(IPushProducer)
class Recorder:
    def __init__(self) -> None:
        self.resumed = 0

    def resumeProducing(self) -> None:
        self.resumed += 1

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Silent:
    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def connectionLost(self, reason: Any) -> None:
        pass


def test_wake_when_writable_resumes_a_streaming_producer_after_buffered_bytes() -> None:
    reactor = Reactor()
    server, peer = tcp_pair(Silent(), reactor)
    producer = Recorder()
    server.registerProducer(producer, True)
    server.write(b"head")
    wake_when_writable(server)
    assert server in reactor.writers and producer.resumed == 0
    assert pump(reactor, server, peer, 4) == b"head"
    assert producer.resumed == 1 and server not in reactor.writers
    wake_when_writable(server)  # nothing buffered: resumed on the next write event
    server.doWrite()
    assert producer.resumed == 2


def test_switch_to_h2_puts_our_connection_where_twisted_puts_its_own() -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from hps.http2 import MAX_STREAMS, PluginH2Connection

    site = Site(Resource())
    wrapper = site.buildProtocol(None)
    assert isinstance(wrapper, GenericHTTPChannelProtocol)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    assert negotiating(wrapper)
    connection = PluginH2Connection(MemoryReactorClock())
    switch_to_h2(wrapper, connection)
    assert inner_channel(wrapper) is connection and not negotiating(wrapper)
    assert connection.site is site and connection.requestFactory is site.requestFactory
    assert connection.transport is transport and connection.timeOut == site.timeOut
    assert connection.conn.local_settings.max_concurrent_streams == MAX_STREAMS
    assert transport.value(), "the connection preface (SETTINGS) went out"


def test_h2_send_loop_and_stream_ends_are_the_methods_h2base_takes_over() -> None:
    """What hps._twisted.H2Base relies on: twisted.web starts its send loop
    (``_sendPrioritisedData``) from ``__init__`` and reaches it only through Deferreds
    hps never fires; every end of a stream passes through ``_requestDone``; the queues
    the loop reads (``_outboundStreamQueues``) are touched only by methods hps replaces,
    by ``_requestReceived`` (an empty queue made), ``_handleWindowUpdate`` (read, to
    unblock) and ``_requestDone`` (deleted)."""
    from twisted.web._http2 import H2Connection, H2Stream

    assert "callLater(0, self._sendPrioritisedData)" in inspect.getsource(H2Connection.__init__)
    for method in (H2Connection.connectionLost, H2Connection._requestAborted,
                   H2Connection.abortRequest, H2Connection._respondToBadRequestAndDisconnect):
        assert "self._requestDone(" in inspect.getsource(method), method
    touching = {name for name, member in inspect.getmembers(H2Connection, inspect.isfunction)
                if "_outboundStreamQueues" in inspect.getsource(member)}
    replaced = {"_sendPrioritisedData", "writeDataToStream", "endRequest",
                "remainingOutboundWindow"}
    assert touching == replaced | {"__init__", "_requestReceived", "_handleWindowUpdate",
                                   "_requestDone"}
    assert all(name in H2Base.__dict__ or name in PluginH2Connection.__dict__
               for name in replaced)
    # A stream writes, ends and asks for its window through these public-named methods.
    stream_source = inspect.getsource(H2Stream)
    for call in ("self._conn.writeDataToStream(", "self._conn.endRequest(",
                 "self._conn.remainingOutboundWindow("):
        assert call in stream_source, call
    assert "self._conn = connection" in inspect.getsource(H2Stream.__init__)


def test_a_quick_stream_gets_the_bookkeeping_twisted_web_gives_its_own() -> None:
    """H2Base._requestReceived repeats twisted.web's for a stream hps answers itself
    (hps.h2fast): the same four entries. And a connection asks of its streams only what
    hps.h2fast.QuickStream implements."""
    import re

    from twisted.web._http2 import H2Connection

    from hps.h2fast import QuickStream

    source = inspect.getsource(H2Connection._requestReceived)
    for line in ("self.streams[event.stream_id] = stream",
                 "self._streamCleanupCallbacks[event.stream_id] = Deferred()",
                 "self._outboundStreamQueues[event.stream_id] = deque()",
                 "self.priority.insert_stream(event.stream_id)",
                 "self.priority.block(event.stream_id)"):
        assert line in source, line
    assert "self._requestReceived(event)" in inspect.getsource(H2Connection.dataReceived)
    calls = set(re.findall(r"(?:stream|self\.streams\[\w+\])\.(\w+)\(",
                           inspect.getsource(H2Connection)))
    assert calls == {"connectionLost", "flowControlBlocked", "receiveDataChunk",
                     "requestComplete", "windowUpdated"}
    assert all(callable(getattr(QuickStream, name)) for name in (*calls, "abortConnection"))


def test_h2base_runs_hps_loop_and_hears_of_every_stream_end() -> None:
    from twisted.internet.testing import MemoryReactorClock

    calls: list[object] = []

    class Probe(H2Base):
        def send_ready(self) -> None:
            calls.append("loop")

        def stream_done(self, stream_id: int) -> None:
            calls.append(stream_id)

    clock = MemoryReactorClock()
    connection = Probe(clock)
    clock.advance(0)
    assert calls == ["loop"], "twisted.web's first scheduled loop turn runs hps's"
    connection.makeConnection(StringTransport())
    connection.streams[1] = object()
    connection._outboundStreamQueues[1] = deque()
    connection._streamCleanupCallbacks[1] = Deferred()
    connection.priority.insert_stream(1)
    h2_stream_done(connection, 1)
    assert calls == ["loop", 1] and 1 not in connection.streams

    class Stream:
        streamID = 1
        _conn = connection

    assert h2_connection(Stream()) is connection and h2_connection(object()) is None


def test_hps_imports_without_h2() -> None:
    """h2 is an extra: without it the server still loads (HTTP/1.1 only)."""
    code = ("import sys; sys.modules['h2'] = None\n"
            "import hps._twisted, hps.service\n"
            "assert hps._twisted.H2Connection is None")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr


def test_ssl_set_mode_sets_one_connections_mode() -> None:
    """pyOpenSSL's cffi ``lib`` has ``SSL_set_mode`` and a ``Connection`` its ``_ssl``; the
    mode is the connection's own (its context's, shared by others, is untouched)."""
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    one, other = SSL.Connection(context, None), SSL.Connection(context, None)
    assert not ssl_set_mode(one, 0) & SSL.MODE_RELEASE_BUFFERS
    assert ssl_set_mode(one, SSL.MODE_RELEASE_BUFFERS) & SSL.MODE_RELEASE_BUFFERS
    assert ssl_set_mode(one, 0) & SSL.MODE_RELEASE_BUFFERS
    assert not ssl_set_mode(other, 0) & SSL.MODE_RELEASE_BUFFERS


# -- whole TLS writes: Twisted's TLSMemoryBIOProtocol and pyOpenSSL's Connection --------

def test_twisted_tls_writes_all_pass_through_one_method() -> None:
    """``whole_tls_writes`` replaces ``_write`` on the instance: every caller must look it
    up on ``self``, and the state and steps its replacement uses must still exist."""
    for caller in (TLSMemoryBIOProtocol.write, TLSMemoryBIOProtocol._unbufferPendingWrites):
        assert "self._write(" in inspect.getsource(caller)
    source = inspect.getsource(TLSMemoryBIOProtocol._write)
    for name in ("_lostTLSConnection", "_bufferedWrite", "_tlsShutdownFinished(Failure())",
                 "_tlsConnection.send", "WantReadError"):
        assert name in source
    assert "_handshakeDone = True" in inspect.getsource(TLSMemoryBIOProtocol)
    assert issubclass(TLSMemoryBIOFactory.protocol, TLSMemoryBIOProtocol)


def test_ssl_encrypt_makes_records_a_peer_reads(tls_options: Any) -> None:
    """pyOpenSSL: ``_ssl``, ``_from_ssl`` (the write BIO of a memory-BIO connection),
    ``_raise_ssl_error``, and one record per ``SSL_write`` (``ENABLE_PARTIAL_WRITE``)."""
    one = tls_pair(tls_options, tuned=False)
    server, client = one.server.getHandle(), one.pump.client.getHandle()
    data = os.urandom(CIPHERTEXT_BATCH + 100_000)
    out: list[bytes] = []
    assert ssl_encrypt(server, data, out.append) == len(data)
    assert len(out) == 2 and CIPHERTEXT_BATCH <= len(out[0]) < CIPHERTEXT_BATCH + 20_000
    for each in out:
        client.bio_write(each)
    got = b""
    with contextlib.suppress(SSL.WantReadError):
        while len(got) < len(data):
            got += client.recv(1 << 20)
    assert got == data
    assert server.send(data) == 16384, "one record per SSL_write"


def test_ssl_encrypt_takes_nothing_while_openssl_must_read(tls_options: Any) -> None:
    connection = SSL.Connection(tls_options.getContext(), None)
    connection.set_accept_state()
    out: list[bytes] = []
    assert ssl_encrypt(connection, b"x" * 50_000, out.append) == 0
    assert out == []


def test_a_tls_write_openssl_cannot_make_yet_is_buffered_and_pauses_the_producer(
        tls_pairs: Callable[..., Pair]) -> None:
    """``WantReadError``: OpenSSL must read before it can write (a renegotiation; here the
    handshake, with Twisted told it is over). The rest waits, whole, with the producer
    paused, and goes out in order once the peer's bytes came in."""
    one = tls_pairs(handshake=False)
    one.server._handshakeDone = True  # only so the write takes each path's own branch
    body = [os.urandom(100_000), os.urandom(50_000)]
    producer = Producer(one.server, list(body))
    one.server.registerProducer(producer, True)
    producer.resumeProducing()
    assert producer.paused and producer.pauses == 1 and not producer.chunks[1:]
    one.settle()  # the handshake completes; the buffered write goes; the producer resumes
    assert bytes(one.client.data) == b"".join(body)
    assert not producer.paused




def h2_pair() -> tuple[Any, Any]:
    """A client and a server ``h2.connection.H2Connection``, neither started."""
    return (h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)),
            h2.connection.H2Connection(h2.config.H2Configuration(client_side=False)))


REQUEST = [(":method", "GET"), (":scheme", "https"), (":path", "/plugins/a/1.0.0/plugin.wasm"),
           (":authority", "hps"), ("user-agent", "canary")]


def test_h2_settled_is_false_until_h2_holds_no_partial_frame() -> None:
    """h2's FrameBuffer keeps the unread rest of the preface, a partial frame and a header
    block awaiting CONTINUATION where hps._twisted.h2_settled looks."""
    client, server = h2_pair()
    server.initiate_connection()
    assert not h2_settled(server), "the client's preface is still to come"
    client.initiate_connection()
    preface = client.data_to_send()
    server.receive_data(preface[:10])
    assert not h2_settled(server), "part of the preface"
    server.receive_data(preface[10:])
    assert h2_settled(server)
    client.send_headers(1, REQUEST, end_stream=True)
    frame = client.data_to_send()
    server.receive_data(frame[:5])
    assert not h2_settled(server), "half a frame header"
    server.receive_data(frame[5:-3])
    assert not h2_settled(server), "a frame without its last bytes"
    assert server.receive_data(frame[-3:])
    assert h2_settled(server)

    # The same fields again, the block split into HEADERS (no END_HEADERS) + CONTINUATION.
    block = client.encoder.encode(REQUEST)
    head, rest = block[:4], block[4:]
    headers = struct.pack(">I", len(head))[1:] + bytes([1, 0x1]) + struct.pack(">I", 3) + head
    continuation = (struct.pack(">I", len(rest))[1:] + bytes([9, 0x4]) + struct.pack(">I", 3)
                    + rest)
    assert server.receive_data(headers) == []
    assert not h2_settled(server), "a header block awaiting its CONTINUATION"
    events = server.receive_data(continuation)
    assert [type(event).__name__ for event in events] == ["RequestReceived", "StreamEnded"]
    assert h2_settled(server)


def served_and_forgotten(client: Any, server: Any, body: bytes) -> None:
    """Stream 1 as h2 leaves it: the request (END_STREAM) taken, the response sent with
    END_STREAM on its last DATA frame, and the closed stream forgotten."""
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    server.send_data(1, body, end_stream=True)
    assert server.open_inbound_streams == 0  # h2 forgets closed streams as it counts
    assert 1 not in server.streams


def recorded_without_a_stream(client: Any, server: Any, body: bytes) -> None:
    """Stream 1 as hps.http2.PluginH2Connection.answer_whole leaves it: the block decoded
    by hand, the connection's state machine stepped, the stream recorded closed."""
    data = client.data_to_send()
    assert data[3] == 1 and data[4] == 0x5  # one HEADERS frame: END_STREAM + END_HEADERS
    server.decoder.decode(data[9:], raw=True)
    inputs = h2.connection.ConnectionInputs
    for step in (inputs.RECV_HEADERS, inputs.SEND_HEADERS, inputs.SEND_DATA):
        server.state_machine.process_input(step)
    server.highest_inbound_stream_id = 1
    h2_stream_closed(server, 1)
    server.outbound_flow_control_window -= len(body)


def later_frames(client: Any) -> dict[str, bytes]:
    """What a client may still send on stream 1 once it is closed (hyperframe's frames,
    since the client's h2 refuses to send them)."""
    from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

    reused = HeadersFrame(1, client.encoder.encode(REQUEST), flags=["END_HEADERS",
                                                                     "END_STREAM"])
    return {"window_update": WindowUpdateFrame(1, window_increment=1000).serialize(),
            "rst_stream": RstStreamFrame(1, error_code=8).serialize(),
            "data": DataFrame(1, b"late", flags=["END_STREAM"]).serialize(),
            "headers": reused.serialize(),
            "next_request": HeadersFrame(3, client.encoder.encode(REQUEST),
                                         flags=["END_HEADERS", "END_STREAM"]).serialize()}


def outcome(server: Any, frame: bytes) -> tuple[object, ...]:
    try:
        events = server.receive_data(frame)
    except h2.exceptions.H2Error as err:  # which failure, and what h2 sends, are compared
        return ("raised", type(err), server.state_machine.state, server.data_to_send())
    return ("events", [repr(event) for event in events],
            server.state_machine.state, server.data_to_send())


def test_h2_stream_closed_makes_later_frames_meet_what_h2s_own_closed_stream_meets() -> None:
    """h2 records a stream it forgets in ``_closed_streams`` with how it closed;
    h2_stream_closed records a stream that never had a stream object the same way, so
    WINDOW_UPDATE, RST_STREAM, DATA or a reused HEADERS for it later are handled alike,
    and the next request opens its stream as usual. (Without the record, a reused HEADERS
    ends the connection with PROTOCOL_ERROR where h2 says STREAM_CLOSED.)"""
    body = b"x" * 1000
    outcomes: dict[str, list[tuple[object, ...]]] = {}
    for name in ("window_update", "rst_stream", "data", "headers", "next_request"):
        for prepare in (served_and_forgotten, recorded_without_a_stream):
            client, server = h2_pair()  # afresh for each frame: one may end the connection
            client.initiate_connection()
            server.initiate_connection()
            server.receive_data(client.data_to_send())
            server.data_to_send()
            client.send_headers(1, REQUEST, end_stream=True)
            prepare(client, server, body)
            server.data_to_send()
            assert server.outbound_flow_control_window == 65535 - len(body)
            assert server.highest_inbound_stream_id == 1 and not server.streams
            outcomes.setdefault(name, []).append(outcome(server, later_frames(client)[name]))
    for name, (theirs, ours) in outcomes.items():
        assert theirs == ours, name
    assert outcomes["window_update"][0][1] == [] and outcomes["rst_stream"][0][1] == []
    assert outcomes["data"][0][:2] == ("events", []), "h2 drops DATA on a closed stream"
    rst = outcomes["data"][0][3]
    assert rst[3] == 3 and rst[-4:] == bytes([0, 0, 0, 5]), "... with RST_STREAM(STREAM_CLOSED)"
    assert outcomes["headers"][0][1] is h2.exceptions.StreamClosedError
    assert outcomes["headers"][0][3][-4:] == bytes([0, 0, 0, 5]), "GOAWAY(STREAM_CLOSED)"
    assert "RequestReceived stream_id:3" in outcomes["next_request"][0][1][0]
