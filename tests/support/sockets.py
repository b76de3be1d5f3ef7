"""A real TCP transport (``tcp.Server`` on a loopback connection) under the fake reactor.

Why real sockets when everything else runs in memory (tests/support/memory.py): the fast
path and the sender write to the socket themselves with ``os.sendfile``, which needs a
real TCP socket, and stalls show only on a real send buffer. tests/test_fastpath.py,
tests/test_sender.py and the ``wake_when_writable`` canary in tests/test__twisted.py use
it. The peer end is a plain socket the test reads; the reactor (tests/support/reactor.py)
only records which descriptors want write events, so the test decides when ``doWrite``
runs.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from twisted.internet import tcp

from tests.support.reactor import Reactor


class Port:
    _realPortNumber = 8080


def tcp_pair(protocol: Any, reactor: Reactor,
             sndbuf: int | None = None) -> tuple[tcp.Server, socket.socket]:
    """A connected ``tcp.Server`` for ``protocol`` (connection made) and the peer socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    server = tcp.Server(ours, protocol, ("127.0.0.1", 1), Port(), 1, reactor)
    protocol.makeConnection(server)
    return server, theirs


def pump(reactor: Reactor, server: tcp.Server, peer: socket.socket, want: int,
         timeout: float = 10) -> bytes:
    """Read ``want`` bytes from ``peer``, running the transport's write events when its
    socket is writable and the calls due (as the reactor would: an abort closes the socket
    on the next turn); stop early when nothing more can come."""
    peer.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        reactor.advance(0)
        writing = [server] if server in reactor.writers else []
        readable, writable, _ = select.select([peer], writing, [], 0.5)
        if readable:
            try:
                chunk = peer.recv(1 << 20)
            except ConnectionResetError:  # aborted with bytes unread: what came is all
                break
            if not chunk:
                break
            got += chunk
        if writable:
            server.doWrite()
        if not readable and not writing:
            break
    return bytes(got)
