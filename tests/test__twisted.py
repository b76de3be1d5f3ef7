"""Canaries: each private Twisted name hps uses (hps/_twisted.py) still behaves as relied on.

A failure here means a Twisted release changed an internal; fix hps/_twisted.py before
raising the upper bound on twisted in setup.py.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
from collections import deque
from typing import Any

from twisted.application import app
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from hps._twisted import (
    GenericHTTPChannelProtocol,
    NoSuchStreamError,
    forget_exit_signal,
    h2_can_send,
    h2_resume_sending,
    h2_unsent,
    inner_channel,
    negotiating,
    request_line,
    request_method,
    switch_to_h2,
    wake_when_writable,
)
from tests.support.reactor import Reactor
from tests.support.sockets import pump, tcp_pair


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


def test_h2_streams_queue_unsent_data_on_their_connection() -> None:
    from twisted.web._http2 import H2Connection, H2Stream

    connection = H2Connection()
    assert isinstance(connection._outboundStreamQueues, dict)
    assert "self._outboundStreamQueues[streamID].append(data)" in inspect.getsource(
        H2Connection.writeDataToStream)
    assert "self._conn = connection" in inspect.getsource(H2Stream.__init__)

    class Stream:
        streamID = 3
        _conn = connection

    connection._outboundStreamQueues[3] = deque([b"abc", b"de"])
    assert h2_unsent(Stream()) == 5
    assert h2_unsent(object()) is None


def test_h2_send_loop_parks_on_a_deferred_and_reads_the_priority_tree() -> None:
    """What hps.http2's WindowedPriority, after_send and h2_resume_sending rely on: the send
    loop takes streams from ``self.priority`` (and a frame from the one it took) and, with
    none ready, parks on ``_sendingDeferred``; a queue holds bytes and a non-bytes end
    marker."""
    from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection

    loop = inspect.getsource(H2Connection._sendPrioritisedData)
    assert "next(self.priority)" in loop and "self._sendingDeferred = Deferred()" in loop
    # PluginH2Connection.after_send: the stream next() returns is the one a frame leaves.
    assert loop.index("next(self.priority)") < loop.index(
        "self._outboundStreamQueues[stream].popleft()")
    assert "self.priority.unblock(streamID)" in inspect.getsource(H2Connection.endRequest)
    assert not isinstance(_END_STREAM_SENTINEL, bytes)
    connection = H2Connection()
    connection.priority.insert_stream(1)
    connection.priority.block(1)
    connection._outboundStreamQueues[1] = deque([_END_STREAM_SENTINEL])
    assert h2_can_send(connection, 1), "an end marker needs no window"
    connection._outboundStreamQueues[1].appendleft(b"data")
    assert h2_can_send(connection, 1), "a stream h2 does not know: twisted.web decides"
    woken: list[object] = []
    connection._sendingDeferred = Deferred()
    connection._sendingDeferred.addCallback(woken.append)
    h2_resume_sending(connection)
    assert woken == [None] and connection._sendingDeferred is None
    assert next(connection.priority) == 1, "unblocked"


def test_h2_can_send_catches_h2s_own_error_imported_once() -> None:
    from h2.exceptions import NoSuchStreamError as h2s

    assert NoSuchStreamError is h2s
    assert "import" not in inspect.getsource(h2_can_send), "once, not per HTTP/2 frame"


def test_hps_imports_without_h2() -> None:
    """h2 is an extra: without it the server still loads (HTTP/1.1 only)."""
    code = ("import sys; sys.modules['h2'] = None\n"
            "import hps._twisted, hps.service\n"
            "assert hps._twisted.H2Connection is None")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
