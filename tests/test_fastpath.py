"""Unit: the fast path's strict request subset, what it sends on a real TCP transport, and
over TLS (the in-memory harness on ``ssl:``)."""

from __future__ import annotations

import gzip
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from hps import fastpath
from hps._twisted import inner_channel
from hps.catalog import Catalog, scan
from hps.channel import PluginChannel
from hps.config import Config
from hps.head import parse_request
from hps.resources import Root
from hps.sender import READ_CHUNK
from hps.site import PluginSite
from hps.state import ServerState
from hps.transfer import Policy, Transfer
from hps.variants import GzipVariants
from tests.support.certificates import self_signed
from tests.support.h2client import connect_h2
from tests.support.memory import SEND_BUFFER, Connection, Harness, Response
from tests.support.reactor import Reactor
from tests.support.server import Tree, wasm_bytes
from tests.support.sockets import pump, tcp_pair

GET = b"GET /plugins/demo/1.0.0/plugin.wasm HTTP/1.1\r\nHost: x\r\n"


def test_plain_requests_are_accepted() -> None:
    parsed = parse_request(GET + b"Accept-Encoding: gzip\r\nUser-Agent: Go-http-client/1.1\r\n\r\n")
    assert parsed is not None and (parsed.name, parsed.version) == ("demo", "1.0.0")
    assert parsed.headers[b"accept-encoding"] == b"gzip"
    assert not parsed.close
    assert parse_request(GET + b"Connection: close\r\n\r\n").close
    assert parse_request(b"HEAD" + GET[3:] + b"\r\n") is not None


@pytest.mark.parametrize("data", [
    GET,  # incomplete
    GET + b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    GET + b"\r\nxyz",  # body bytes
    GET.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
    GET.replace(b"GET", b"POST") + b"\r\n",
    GET.replace(b"demo", b"de%6do") + b"\r\n",
    GET.replace(b"plugin.wasm", b"plugin.wasm?x=1") + b"\r\n",
    GET.replace(b"demo", b"..") + b"\r\n",
    GET.replace(b"Host: x\r\n", b"") + b"\r\n",  # no Host
    GET + b"Host: y\r\n\r\n",  # two Hosts
    GET + b"Range: bytes=0-1\r\n\r\n",
    GET + b"If-None-Match: *\r\n\r\n",
    GET + b"Content-Length: 0\r\n\r\n",
    GET + b"Transfer-Encoding: chunked\r\n\r\n",
    GET + b"Expect: 100-continue\r\n\r\n",
    GET + b"Upgrade: h2c\r\n\r\n",
    GET + b"Connection: upgrade\r\n\r\n",
    GET + b"Accept-Encoding: gzip\r\nAccept-Encoding: br\r\n\r\n",
    GET + b"X-A: 1\r\n folded\r\n\r\n",  # obs-fold
    GET + b"X-A: a\rb\r\n\r\n",  # bare CR
    GET + b"X-A: a\nb\r\n\r\n",  # bare LF
    GET + b"X-A: a\0b\r\n\r\n",
    GET + b"X A: 1\r\n\r\n",
    GET + b"X-A : 1\r\n\r\n",
    GET + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
])
def test_everything_else_goes_to_twisted_web(data: bytes) -> None:
    assert parse_request(data) is None


@dataclass
class Rig:
    site: PluginSite
    reactor: Reactor
    root: Path
    body: bytes


def make_rig(tmp_path: Path, gzip_variants: bool = False) -> Rig:
    body = wasm_bytes(600_000)
    target = tmp_path / "demo" / "1.0.0" / "plugin.wasm"
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    state = ServerState(config=Config(root=str(tmp_path)), catalog=scan(str(tmp_path)))
    variants = None
    if gzip_variants:  # made at once, in this thread
        variants = GzipVariants(str(tmp_path / "cache"), run=lambda work, *a: succeed(work(*a)))
        variants.on_swap(Catalog(root=str(tmp_path)), state.catalog)
    transfer = Transfer(Policy.from_config(300, immutable=False), variants=variants)
    reactor = Reactor()
    site = PluginSite(Root(state, transfer), state=state, reactor=reactor)
    fastpath.install(state, site, transfer)
    return Rig(site, reactor, tmp_path, body)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def connect(rig: Rig, sndbuf: int | None = None) -> tuple[Any, tcp.Server, socket.socket]:
    proto = rig.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    server, peer = tcp_pair(proto, rig.reactor, sndbuf)
    return proto, server, peer


def response(rig: Rig, server: tcp.Server, peer: socket.socket, size: int) -> tuple[bytes, bytes]:
    data = pump(rig.reactor, server, peer, 1)
    while b"\r\n\r\n" not in data:
        data += pump(rig.reactor, server, peer, 1)
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(rest) < size:
        rest += pump(rig.reactor, server, peer, size - len(rest))
    return head, rest


def test_fast_path_sends_the_file_and_stays_ready(rig: Rig) -> None:
    proto, server, peer = connect(rig)
    proto.dataReceived(GET + b"\r\n")
    head, body = response(rig, server, peer, len(rig.body))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nServer: hps\r\n" in head and b"\r\nX-Content-Type-Options: nosniff\r\n" in head
    assert b"Content-Length: %d" % len(rig.body) in head
    assert body == rig.body
    channel = inner_channel(proto)
    assert not channel.requests and not channel.web_owned  # twisted.web never saw it
    proto.dataReceived(b"HEAD" + GET[3:] + b"Connection: close\r\n\r\n")
    head, rest = response(rig, server, peer, 0)
    assert head.endswith(b"Connection: close") and rest == b""
    assert server.disconnecting


def test_a_reader_that_stalls_is_resumed_when_the_socket_drains(rig: Rig) -> None:
    proto, server, peer = connect(rig, sndbuf=65536)
    proto.dataReceived(GET + b"\r\n")
    channel = inner_channel(proto)
    assert channel.fast_reply is not None and server in rig.reactor.writers
    _, body = response(rig, server, peer, len(rig.body))
    assert body == rig.body and channel.fast_reply is None
    assert rig.site.in_flight == 0


def test_a_file_rewritten_in_place_mid_download_cuts_the_connection(rig: Rig) -> None:
    proto, server, peer = connect(rig, sndbuf=65536)
    # (Buffers well under the 600 kB body; with 8 KiB ones loopback TCP paused ~0.2 s
    # per window update.)
    proto.dataReceived(GET + b"\r\n")
    target = rig.root / "demo" / "1.0.0" / "plugin.wasm"
    with open(target, "r+b") as handle:  # same inode, new bytes and mtime
        handle.write(b"\0asm-rewritten")
    os.utime(target, ns=(1, 1))
    _, body = response(rig, server, peer, len(rig.body))
    # Short, so the client knows it failed. (Bytes already in the socket buffer are page
    # references under sendfile: they may show the new bytes, as with nginx.)
    assert len(body) < len(rig.body)
    rig.reactor.advance(0)  # an abort closes the socket on the next reactor turn
    assert server.disconnected


def test_other_requests_reach_twisted_web_which_keeps_the_connection(rig: Rig) -> None:
    proto, server, peer = connect(rig)
    proto.dataReceived(GET + b"Range: bytes=0-3\r\n\r\n")
    head, body = response(rig, server, peer, 4)
    assert b"206 Partial Content" in head and body == rig.body[:4]
    channel = inner_channel(proto)
    assert channel.web_owned
    proto.dataReceived(GET + b"\r\n")  # plain, but twisted.web owns the connection now
    head, body = response(rig, server, peer, len(rig.body))
    assert body == rig.body and len(channel.requests) == 0


def test_the_fast_path_and_twisted_web_negotiate_alike(tmp_path: Path) -> None:
    """The same Accept-Encoding gets the same variant and headers on both paths (an
    If-None-Match naming nothing sends a request to twisted.web and changes nothing else)."""
    rig = make_rig(tmp_path, gzip_variants=True)

    def fields(extra: bytes) -> tuple[bool, dict[bytes, bytes]]:
        proto, server, peer = connect(rig)
        proto.dataReceived(GET + extra + b"\r\n")
        head, _ = response(rig, server, peer, 0)
        status, *lines = head.split(b"\r\n")
        assert status == b"HTTP/1.1 200 OK"
        fields = dict(line.split(b": ", 1) for line in lines if not line.startswith(b"Date:"))
        return inner_channel(proto).web_owned, fields

    for asked in (b"", b"gzip", b"x-gzip, br", b"*", b"gzip;q=0", b"identity;q=0, *",
                  b"gzip;q=0.5, identity", b"*;q=0"):
        extra = b"Accept-Encoding: " + asked + b"\r\n" if asked else b""
        fast_owned, fast = fields(extra)
        web_owned, web = fields(extra + b'If-None-Match: "none"\r\n')
        assert not fast_owned and web_owned, asked
        assert fast == web, asked
        gzipped = asked in (b"gzip", b"x-gzip, br", b"*", b"identity;q=0, *")
        assert (fast.get(b"Content-Encoding") == b"gzip") == gzipped, asked
        assert fast[b"Vary"] == b"Accept-Encoding" and fast[b"ETag"].endswith(b'-gz"') == gzipped


# -- over TLS (in memory: the harness wraps its ``ssl:`` listener and its clients in TLS) --

URL = "/plugins/demo/1.0.0/plugin.wasm"
TLS_GET = f"GET {URL} HTTP/1.1\r\nHost: x\r\n".encode()


@pytest.fixture
def tls_site(tree: Tree, harness, tmp_path: Path):
    """``tls_site(**knobs)``: an in-memory server on ``ssl:`` serving a 600 kB ``demo``."""
    def start(size: int = 600_000, **knobs: object) -> tuple[Harness, bytes]:
        body = tree.add("demo", "1.0.0", size=size)
        key, cert = self_signed(tmp_path)
        return harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"],
                       **knobs), body
    return start


def channel_of(connection: Connection) -> PluginChannel:
    return inner_channel(connection.server.wrappedProtocol)


def fields_of(reply: Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k != "Date"}


def test_tls_downloads_take_the_fast_path_and_match_twisted_web(tls_site) -> None:
    """Identity and gzip, byte for byte, with the very headers twisted.web sends (an
    If-None-Match naming nothing sends the same request to twisted.web)."""
    server, body = tls_site()
    for asked in ({}, {"Accept-Encoding": "gzip"}):
        fast = server.connect()
        fast.send(TLS_GET + "".join(f"{k}: {v}\r\n" for k, v in asked.items()).encode()
                  + b"\r\n")
        reply = fast.take()
        assert reply.status == 200 and not channel_of(fast).web_owned, asked
        web = server.request(URL, headers={**asked, "If-None-Match": '"none"'})
        assert fields_of(reply) == fields_of(web), asked
        if asked:
            assert reply.header("Content-Encoding") == "gzip"
            assert gzip.decompress(reply.body) == body and reply.body == web.body
        else:
            assert reply.body == body == web.body
    assert server.site.in_flight == 0


def test_tls_keep_alive_head_and_idle_timeout(tls_site) -> None:
    """GET, HEAD, GET on one connection, all fast; then the idle timeout closes it."""
    server, body = tls_site(idle_timeout=5)
    client = server.connect()
    for method in ("GET", "HEAD", "GET"):
        client.send(method.encode() + TLS_GET[3:] + b"\r\n")
        reply = client.take(method)
        assert reply.status == 200 and int(reply.header("Content-Length")) == len(body)
        assert reply.body == (b"" if method == "HEAD" else body), method
    assert not channel_of(client).web_owned and client.received() == b""
    lines = [line for line in server.access_lines() if URL in line]
    assert [line.split('"')[1].split()[0] for line in lines] == ["GET", "HEAD", "GET"]
    assert " 200 - " in lines[1] and f" 200 {len(body)} " in lines[2]
    server.advance(4)
    assert not client.closed
    server.advance(2)
    assert client.closed


def test_tls_connection_close_ends_the_connection(tls_site) -> None:
    server, body = tls_site()
    client = server.connect().send(TLS_GET + b"Connection: close\r\n\r\n")
    assert client.take().body == body and client.closed
    assert not client.transport.aborted


def test_a_slow_tls_reader_pauses_the_body_and_gets_all_of_it(tls_site) -> None:
    """The transport's push-back pauses the sender: the server holds about a send buffer and
    a chunk, not the body; a pipelined request waits and is answered after."""
    server, body = tls_site()
    client = server.connect()
    client.stop_reading()
    stopped_reading: list[bool] = []  # the socket's own pause, under TLS
    client.transport.pauseProducing = lambda: stopped_reading.append(True)  # type: ignore
    client.send(TLS_GET + b"\r\n")
    channel = channel_of(client)
    assert channel.fast_reply is not None and channel.blocked
    assert not stopped_reading, "as twisted.web while it answers: only the body waits"
    assert client.transport.buffered() < SEND_BUFFER + READ_CHUNK + 4096
    client.send(b"HEAD" + TLS_GET[3:] + b"\r\n")  # pipelined behind the reply in flight
    assert channel.fast_reply is not None
    client.resume_reading()
    assert client.take().body == body
    second = client.take("HEAD")
    assert second.status == 200 and second.body == b"" and client.received() == b""
    assert not channel.web_owned and channel.fast_reply is None and server.site.in_flight == 0


def test_a_tls_client_leaving_mid_body_is_logged_and_lets_go(tls_site) -> None:
    server, _ = tls_site()
    client = server.connect()
    client.stop_reading()
    client.send(TLS_GET + b"\r\n")
    channel = channel_of(client)
    reply = channel.fast_reply
    assert reply is not None and reply.sender is not None
    client.close()
    assert server.site.in_flight == 0 and channel.fast_reply is None
    assert reply.sender.done and reply.sender.source is None  # the file is let go
    [line] = [line for line in server.access_lines() if URL in line]
    assert " 200 " in line


def test_a_stalled_tls_reader_is_cut_by_the_send_deadline(tls_site) -> None:
    server, _ = tls_site(send_timeout=2)
    client = server.connect()
    client.stop_reading()
    client.send(TLS_GET + b"\r\n")
    assert channel_of(client).fast_reply is not None
    server.advance(1.5)
    assert not client.transport.aborted
    server.advance(1.5)
    assert client.transport.aborted and server.site.in_flight == 0


@pytest.mark.parametrize(("extra", "status"), [
    (b"Range: bytes=0-3\r\n", 206),
    (b'If-None-Match: "none"\r\n', 200),
    (b"Bad Header : x\r\n", 400),
])
def test_what_is_not_plain_over_tls_goes_to_twisted_web(tls_site, extra: bytes,
                                                        status: int) -> None:
    server, body = tls_site()
    client = server.connect()
    channel = channel_of(client)
    reply = client.send(TLS_GET + extra + b"\r\n").take()
    assert reply.status == status and channel.web_owned
    if status == 206:
        assert reply.body == body[:4]


def test_h2_never_reaches_the_fast_path(tls_site, monkeypatch: pytest.MonkeyPatch) -> None:
    server, body = tls_site()
    calls: list[bytes] = []
    handle = fastpath.ArtifactFastPath.handle

    def spy(self: fastpath.ArtifactFastPath, channel: PluginChannel, data: bytes) -> bool:
        calls.append(data)
        return handle(self, channel, data)

    monkeypatch.setattr(fastpath.ArtifactFastPath, "handle", spy)
    client = connect_h2(server)
    stream = client.get(URL)
    server.settle()
    assert bytes(client.bodies[stream]) == body and calls == []
    plain = server.connect().send(TLS_GET + b"\r\n")  # the spy does see HTTP/1.1
    assert plain.take().body == body and len(calls) == 1


def test_carrier_declines_h2_and_what_is_neither_tcp_nor_tls(tls_site) -> None:
    """The fast path's own check, should an h2 connection's bytes ever reach the channel."""
    assert fastpath.carrier(StringTransport()) == fastpath.NEITHER
    server, _ = tls_site()
    h1 = server.connect()
    h1.send(TLS_GET + b"\r\n")
    assert fastpath.carrier(h1.server) == fastpath.TLS == channel_of(h1).fast_way
    h2 = connect_h2(server)
    assert fastpath.carrier(h2.connection.server) == fastpath.NEITHER


def test_a_tls_download_in_flight_at_sigterm_finishes_then_closes(tls_site) -> None:
    """The drain waits for the fast reply, which closes its connection when done; a request
    arriving during the drain goes to twisted.web (which says ``Connection: close``)."""
    server, body = tls_site(drain_delay=1, drain_timeout=20)
    slow, late = server.connect(), server.connect()
    slow.stop_reading()
    slow.send(TLS_GET + b"\r\n")
    stopping = server.stop()
    reply = late.send(TLS_GET + b"\r\n").take()
    assert reply.body == body and reply.header("Connection") == "close"
    assert channel_of(slow).fast_reply is not None and not stopping.called
    slow.resume_reading()
    server.advance(1.5)
    assert slow.take().body == body and slow.closed and stopping.called


def test_a_pipelined_tls_reply_waits_while_the_last_ones_tail_fills_the_transport(
        tls_site) -> None:
    """The first reply ends with the transport full and the second request replayed at once:
    the second body waits for the transport to drain (Twisted's TLS layer pauses a producer
    once, so a body started then would otherwise go whole into memory)."""
    server, body = tls_site(size=10 * READ_CHUNK)  # its last chunk fills the transport
    client = server.connect()
    client.stop_reading()
    client.send(TLS_GET + b"\r\n")
    client.send(TLS_GET + b"\r\n")  # held behind the first reply
    most = 0
    for _ in range(200):  # the client reads what is there, one turn at a time
        server.settle()
        most = max(most, client.transport.buffered())
        client.transport.reading = True
        server.turn()
        client.transport.reading = False
        if len(client.received()) >= 2 * len(body):
            break
    assert most < SEND_BUFFER + 2 * READ_CHUNK
    client.resume_reading()
    assert client.take().body == body and client.take().body == body
    assert not channel_of(client).web_owned
