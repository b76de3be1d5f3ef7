"""Both ends of an in-memory connection (``twisted.test.iosim`` underneath), and the
stdlib's parse of what the client received.

The server end behaves as a socket does where twisted.web can tell: it pauses a streaming
producer when its send buffer fills, aborts, and tells both ends of a close.
"""

from __future__ import annotations

import http.client
import io
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from zope.interface import implementer

SEND_BUFFER = 65536
"""Bytes a server transport holds before it pauses its producer (``FileDescriptor``'s
``bufferSize``): what a client that stops reading leaves in the server."""



def _report_once(transport: FakeTransport) -> None:
    """Tell the protocol its connection is gone, once. iosim's pump tells only the side
    that did not close; a real reactor tells both."""
    if not getattr(transport, "reported", False):
        transport.reported = True  # type: ignore[attr-defined]
        FakeTransport.reportDisconnect(transport)


class ClientTransport(FakeTransport):
    def reportDisconnect(self) -> None:
        _report_once(self)


@implementer(IPushProducer)
class ServerTransport(FakeTransport):
    """The server side of a connection, with a socket's flow control and abort.

    Like ``FileDescriptor``: a streaming producer is paused once more than
    SEND_BUFFER bytes wait, and resumed when the client has taken them; bytes
    written after ``loseConnection`` still go out, after ``abortConnection`` none do.
    A client that is not ``reading`` takes nothing (a full socket). It is an
    ``IPushProducer``, as sockets are: HTTPChannel registers itself on such a transport
    and relays its pauses to the response body's producer.
    """

    def __init__(self, protocol: Any, peer: IPv4Address, host: IPv4Address) -> None:
        super().__init__(protocol, isServer=True, hostAddress=host, peerAddress=peer)
        self.reading = True
        self.aborted = False
        self.paused = False
        self.taken = 0
        """Bytes the client has read so far."""

    def buffered(self) -> int:
        return sum(map(len, self.stream))

    def write(self, data: bytes) -> None:
        if self.aborted or self.disconnected:
            return
        self.stream.append(data)
        if (self.producer is not None and self.streamingProducer and not self.paused
                and self.buffered() > SEND_BUFFER):
            self.paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> bytes | None:
        if not self.reading:
            return None
        data = super().getOutBuffer()
        if data:
            self.taken += len(data)
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()  # writes land in the next pump
        return data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.paused = False
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.paused = False
        super().unregisterProducer()

    def abortConnection(self) -> None:
        self.aborted = True
        self.stream.clear()
        self.disconnecting = True
        self.disconnectReason = error.ConnectionAborted()

    def reportDisconnect(self) -> None:
        _report_once(self)

    def getHandle(self) -> socket.socket | None:
        return None


class Client(Protocol):
    """Raw bytes in and out: tests write heads exactly as they mean them."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool = True
    """False when the connection ended before the whole body came (a cut download)."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class _Bytes(io.BytesIO):
    """What ``HTTPResponse`` reads from: it closes its file once the body is read, but the
    position tells where the next response starts."""

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return self

    def close(self) -> None:
        pass


def parse(data: bytes, method: str = "GET") -> tuple[Response, bytes]:
    """The first response in ``data`` (the stdlib's parser, not ours) and what follows it."""
    stream = _Bytes(data)
    reply = http.client.HTTPResponse(stream, method=method)  # type: ignore[arg-type]
    reply.begin()
    try:
        body, complete = reply.read(), True
    except http.client.IncompleteRead as short:
        body, complete = short.partial, False
    return Response(reply.status, reply.headers, body, complete), data[stream.tell():]


def quiet(transport: FakeTransport) -> bool:
    """Nothing for the pump to move, close or pull (a non-streaming producer) on this end."""
    return not (transport.stream or transport.disconnecting or transport.tls is not None
                or (transport.producer is not None and not transport.streamingProducer))
