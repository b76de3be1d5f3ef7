"""Unit: one span of one open file to a connection, by sendfile on TCP or bounded reads."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import directlyProvides

from hps.bodies import BodyGate
from hps.catalog import identity_of
from hps.files import open_verified
from hps.sender import READ_CHUNK, SENDFILE_TURN, Sender, TlsTurn, zero_copy
from tests.support.memory import ServerTransport
from tests.support.reactor import Reactor
from tests.support.server import wasm_bytes
from tests.support.sockets import pump, tcp_pair


class Events:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.progressed = 0
        self.finished = self.aborted = 0

    def sender(self, source, span, transport) -> Sender:
        def progress(count: int) -> None:
            self.progressed += count

        def finished() -> None:
            self.finished += 1

        def abort() -> None:
            self.aborted += 1

        return Sender(source, span, transport, self.written.append, progress, finished, abort)


@pytest.fixture
def body(tmp_path: Path) -> tuple[bytes, Path]:
    data = wasm_bytes(300_000)
    path = tmp_path / "plugin.wasm"
    path.write_bytes(data)
    return data, path


def source_of(path: Path):
    return open_verified(str(path), identity_of(os.stat(path)))


def memory_transport() -> ServerTransport:
    from twisted.internet.address import IPv4Address

    address = IPv4Address("TCP", "127.0.0.1", 1)
    return ServerTransport(Protocol(), address, address)


def test_bounded_reads_send_the_span_and_stop_while_paused(body) -> None:
    data, path = body
    events = Events()
    span = 3 * READ_CHUNK - 1000  # two whole reads before the pause, then a short one
    sender = events.sender(source_of(path), (10, 9 + span), memory_transport())
    assert not sender.zero_copy
    original_write = sender.write

    def write(chunk: bytes) -> None:
        original_write(chunk)
        if len(events.written) == 2:
            sender.pauseProducing()  # the transport's buffer is full

    sender.write = write
    sender.start(flushed=False)
    assert [len(c) for c in events.written] == [READ_CHUNK, READ_CHUNK]
    assert events.finished == 0
    sender.resumeProducing()
    assert b"".join(events.written) == data[10:10 + span]
    assert (events.progressed, events.finished, events.aborted) == (span, 1, 0)
    assert sender.source is None, "the descriptor is let go at once"


def test_a_file_rewritten_in_place_aborts_instead_of_sending(body) -> None:
    _, path = body
    events = Events()
    sender = events.sender(source_of(path), (0, 99_999), memory_transport())
    with open(path, "r+b") as handle:
        handle.write(b"X")
        os.utime(path, ns=(1, 1))
    sender.start(flushed=True)
    assert (events.written, events.finished, events.aborted) == ([], 0, 1)


def test_a_truncated_file_aborts_mid_span(body) -> None:
    _, path = body
    events = Events()
    source = source_of(path)
    sender = events.sender(source, (0, 99_999), memory_transport())
    source.fresh = lambda: True  # truncated after the identity check of this turn
    os.truncate(path, 20_000)
    sender.start(flushed=True)
    assert sum(map(len, events.written)) == 20_000 and events.aborted == 1


def test_stop_producing_lets_go_without_finishing(body) -> None:
    _, path = body
    events = Events()
    sender = events.sender(source_of(path), (0, 99_999), memory_transport())
    sender.stopProducing()
    sender.resumeProducing()
    assert (events.written, events.finished, events.aborted) == ([], 0, 0)


def test_sendfile_on_tcp_bypasses_the_transport(body) -> None:
    data, path = body
    reactor = Reactor()
    server, peer = tcp_pair(Protocol(), reactor)
    assert zero_copy(server) and not zero_copy(memory_transport())
    events = Events()
    sender = events.sender(source_of(path), (0, len(data) - 1), server)
    server.registerProducer(sender, True)
    sender.start(flushed=True)
    received = pump(reactor, server, peer, len(data))
    assert received == data and events.written == [] and events.finished == 1
    peer.close()


def test_sendfile_yields_after_a_turn_and_is_woken_when_writable(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(SENDFILE_TURN + 100_000)  # any bytes; made in C
    path = tmp_path / "big.wasm"
    path.write_bytes(data)
    reactor = Reactor()
    server, peer = tcp_pair(Protocol(), reactor)
    events = Events()
    sender = events.sender(source_of(path), (0, len(data) - 1), server)
    server.registerProducer(sender, True)
    sender.start(flushed=False)  # a head is queued: the body waits for it
    assert events.progressed == 0 and server in reactor.writers
    received = pump(reactor, server, peer, len(data))
    assert received == data and events.finished == 1
    peer.close()


def test_a_tls_body_waits_for_its_turn_reads_once_woken_and_hands_it_on(body) -> None:
    """:class:`TlsTurn`: nothing read before the turn, everything after; the turn goes to the
    next body when this one ends. Only a TLS transport takes turns."""
    data, path = body
    clock = Clock()
    gate = BodyGate(clock, limit=1)
    assert gate.admit("someone else", lambda: None)
    channel = Protocol()  # hashable, as a channel is: the body's key
    channel.site = SimpleNamespace(bodies=gate)
    assert TlsTurn.of(channel, memory_transport()) is None, "not TLS: never waits"
    tls = memory_transport()
    directlyProvides(tls, ISSLTransport)
    turn = TlsTurn.of(channel, tls)
    assert turn is not None
    events = Events()
    sender = Sender(source_of(path), (0, len(data) - 1), tls, events.written.append,
                    lambda count: None, lambda: None, lambda: None, turn)
    sender.start(flushed=False)
    assert events.written == [] and list(gate.waiting) == [channel]
    gate.release("someone else")
    clock.advance(0)
    assert b"".join(events.written) == data and not gate.active and not gate.waiting
