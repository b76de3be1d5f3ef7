"""Unit: the fast path's immediate send on a real TCP transport (a socket pair)."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from hps.fastpath import send_now


class Reactor(MemoryReactor):
    def __init__(self) -> None:
        super().__init__()
        self.writers: set[object] = set()

    def addWriter(self, writer: object) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: object) -> None:
        self.writers.discard(writer)


class Port:
    _realPortNumber = 8080


def transport(sndbuf: int | None = None) -> tuple[tcp.Server, socket.socket, Reactor]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    reactor = Reactor()
    server = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), Port(), 1, reactor)
    return server, theirs, reactor


def test_small_reply_leaves_nothing_queued() -> None:
    server, peer, reactor = transport()
    send_now(server, b"hello")
    assert peer.recv(100) == b"hello"
    assert not server.dataBuffer and not server._tempDataBuffer and not reactor.writers


def test_partial_send_keeps_the_shared_object_and_an_offset() -> None:
    server, _peer, reactor = transport(sndbuf=4096)
    data = bytes(4 << 20)
    send_now(server, data)
    assert server.dataBuffer is data  # no per-client copy of the tail
    assert 0 < server.offset < len(data)
    assert reactor.writers == {server}


def test_queued_bytes_keep_their_order() -> None:
    server, peer, _reactor = transport()
    server.write(b"first ")
    send_now(server, b"second")
    assert server._tempDataBuffer == [b"first ", b"second"]
    assert server.doWrite() is None
    assert peer.recv(100) == b"first second"


def test_other_transports_just_write() -> None:
    string = StringTransport()
    send_now(string, b"abc")
    assert string.value() == b"abc"
