"""HTTP semantics of artifact transfers, through the real site in memory: validators,
ranges, gzip, Cache-Control, bodies that stay true to their headers, and what clients
that stop reading cost the server (HTTP/1.1 and HTTP/2)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from hps._twisted import h2_unsent, inner_channel
from hps.files import Source
from hps.sender import H2_BACKLOG, READ_CHUNK
from tests.support.certificates import self_signed
from tests.support.h2client import connect_h2
from tests.support.memory import SEND_BUFFER
from tests.support.server import Tree, wasm_bytes

URL = "/plugins/demo/1.0.0/plugin.wasm"
DATE_FREE = ("Date",)
GET = f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def etag_of(body: bytes) -> str:
    """An ETag is named by the body's SHA-256 (its first 40 hex digits)."""
    return f'"{hashlib.sha256(body).hexdigest()[:40]}"'


def headers_of(reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in DATE_FREE}


@pytest.fixture
def demo(tree: Tree, harness):
    body = tree.add("demo", "1.0.0", size=300_000)
    return harness(tree.root), body  # its gzip variant is made as the harness starts


def test_conditional_requests(demo) -> None:
    """If-None-Match (strong, weak, list, *) and If-Modified-Since give 304 with the validators;
    If-None-Match wins over the date."""
    server, body = demo
    first = server.get(URL)
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    assert etag == etag_of(body)
    for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'},
                    {"If-None-Match": "*"}, {"If-Modified-Since": modified}):
        reply = server.request(URL, headers=headers)
        assert reply.status == 304 and reply.body == b"", headers
        assert reply.header("ETag") == etag
        assert reply.header("Cache-Control") == "public, max-age=300"
        assert reply.header("Vary") == "Accept-Encoding"
    # If-None-Match wins over If-Modified-Since.
    reply = server.request(URL, headers={"If-None-Match": '"nope"', "If-Modified-Since": modified})
    assert reply.status == 200 and reply.body == body
    old = "Thu, 01 Jan 1970 00:00:00 GMT"
    assert server.request(URL, headers={"If-Modified-Since": old}).status == 200


def test_ranges(demo) -> None:
    """A byte range or suffix is 206 with Content-Range; past the end is 416; malformed or
    multiple ranges get the whole body."""
    server, body = demo
    size = len(body)
    reply = server.request(URL, headers={"Range": "bytes=10-19"})
    assert reply.status == 206 and reply.body == body[10:20]
    assert reply.header("Content-Range") == f"bytes 10-19/{size}"
    reply = server.request(URL, headers={"Range": "bytes=-100"})
    assert reply.status == 206 and reply.body == body[-100:]
    reply = server.request(URL, headers={"Range": f"bytes={size}-"})
    assert reply.status == 416 and reply.header("Content-Range") == f"bytes */{size}"
    for ignored in ("bytes=5-1", "lines=1-2", "bytes=0-1,100-200"):
        reply = server.request(URL, headers={"Range": ignored})
        assert reply.status == 200 and reply.body == body, ignored


def test_range_abuse_never_announces_more_than_the_body(demo) -> None:
    server, body = demo
    for header in (",".join(["0-"] * 2000), ",".join(f"{i}-{i}" for i in range(500))):
        reply = server.request(URL, headers={"Range": "bytes=" + header})
        assert reply.status in (200, 206)
        assert int(reply.header("Content-Length")) <= len(body)
        assert len(reply.body) <= len(body)


def test_if_range(demo) -> None:
    """If-Range with the current ETag or date gives the range; a stale or weak validator gives
    the whole body."""
    server, body = demo
    first = server.get(URL)
    for validator, status in ((first.header("ETag"), 206), ('"stale"', 200),
                              (first.header("Last-Modified"), 206),
                              ("Thu, 01 Jan 1970 00:00:00 GMT", 200),
                              ("W/" + first.header("ETag"), 200)):
        reply = server.request(URL, headers={"Range": "bytes=0-9", "If-Range": validator})
        assert reply.status == status, validator
        assert reply.body == (body[:10] if status == 206 else body)


def test_gzip_negotiation(demo) -> None:
    """Accept-Encoding picks the gzip variant, with its own ETag and Vary, and any refusal of
    gzip gets identity."""
    server, body = demo
    plain = server.get(URL)
    packed = server.get(URL, Accept_Encoding="gzip")
    assert packed.header("Content-Encoding") == "gzip"
    assert packed.header("ETag") == etag_of(body)[:-1] + '-gz"'
    assert packed.header("Vary") == plain.header("Vary") == "Accept-Encoding"
    assert len(packed.body) < len(body) and gzip.decompress(packed.body) == body
    assert int(packed.header("Content-Length")) == len(packed.body)
    for refusal in ("gzip;q=0", "identity", "br", "*;q=0"):
        reply = server.get(URL, Accept_Encoding=refusal)
        assert reply.header("Content-Encoding") is None and reply.body == body, refusal
    assert server.get(URL, Accept_Encoding="br;q=1, *;q=0.1").header("Content-Encoding") == "gzip"
    # The gzip variant is its own representation for validators.
    reply = server.request(URL, headers={"Accept-Encoding": "gzip",
                                         "If-None-Match": packed.header("ETag")})
    assert reply.status == 304 and reply.header("ETag") == packed.header("ETag")


def test_cache_control_per_route(tree: Tree, harness) -> None:
    """Cache-Control per route: modules get the configured max-age (and immutable), pages 10 s,
    probes no-store."""
    tree.add("demo", "1.0.0", size=5000)
    server = harness(tree.root, cache_max_age=60, immutable=True)
    expected = {
        URL: "public, max-age=60, immutable",
        "/plugins/": "public, max-age=10",
        "/plugins/index.json": "public, max-age=10",
        "/plugins/demo/1.0.0/metadata.txt": "public, max-age=10",
        "/healthz": "no-store",
        "/readyz": "no-store",
    }
    for path, value in expected.items():
        assert server.get(path).header("Cache-Control") == value, path
    assert server.get("/plugins/nope/1.0.0/plugin.wasm").header("Cache-Control")


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_head_and_query_strings_answer_like_get(demo, encoding: str) -> None:
    """(The fast path's answers are compared with these in tests/test_disk.py.)"""
    server, _ = demo
    plain = server.get(URL, Accept_Encoding=encoding)
    query = server.get(URL + "?via=twisted", Accept_Encoding=encoding)
    head = server.request(URL, method="HEAD", headers={"Accept-Encoding": encoding})
    query_head = server.request(URL + "?x", method="HEAD", headers={"Accept-Encoding": encoding})
    assert headers_of(plain) == headers_of(query) == headers_of(head) == headers_of(query_head)
    assert plain.body == query.body and head.body == query_head.body == b""


def test_body_matches_headers_when_the_file_is_replaced(tree: Tree, harness) -> None:
    old = tree.add("demo", "1.0.0", size=1_000_000)
    server = harness(tree.root, gzip=False)
    client = server.connect()
    client.stop_reading()
    client.send(GET)
    tree.add("demo", "1.0.0", body=wasm_bytes(1_000_000, seed=99))  # rename over it
    server.rescan()
    client.resume_reading()
    reply = client.take()
    assert reply.body == old and reply.header("ETag") == etag_of(old)
    assert server.get(URL).header("ETag") != etag_of(old)  # the next one gets the new file


def test_stalled_readers_hold_a_bounded_part_of_the_body(tree: Tree, harness) -> None:
    """Bounded reads (TLS, HTTP/2, here): each client that stops reading holds at most
    the transport's buffer and one read of the body, whatever its size; its sender is
    paused, not reading on, and every one shares the table's one descriptor of the file.
    (On plain TCP, sendfile passes nothing through the transport and leaves what a client
    has not read in the kernel: tests/test_sender.py, tests/test_fastpath.py.)"""
    body = tree.add("demo", "1.0.0", size=2_000_000)  # 24 times the bound below
    server = harness(tree.root, gzip=False)
    bound = SEND_BUFFER + READ_CHUNK + 1024  # the buffer, one read, a head
    opened = Source.open
    stalled = []
    for _ in range(12):
        client = server.connect()
        client.stop_reading()
        stalled.append(client.send(GET))
    for client in stalled:
        assert 0 < client.transport.buffered() <= bound
        (request,) = inner_channel(client.server).requests
        assert request.producer.paused and request.producer.pos <= bound
    assert Source.open == opened + 1
    stalled[0].resume_reading()
    assert stalled[0].take().body == body


def test_stalled_http2_streams_queue_a_bounded_part_of_the_body(tree: Tree, harness,
                                                                tmp_path: Path) -> None:
    """HTTP/2 clients that grant 2 GiB windows and never read: flow control would let the
    server queue all of every body (16 streams of 2 MB here); each stream queues at most
    H2_BACKLOG and a read, its sender waiting, however long the client stays stalled; once
    the client reads, each frame sent wakes its sender, with no timer (no clock moves)."""
    body = tree.add("demo", "1.0.0", size=2_000_000)
    key, cert = self_signed(tmp_path)
    server = harness(tree.root, gzip=False,
                     listen=[f"ssl:8443:privateKey={key}:certKey={cert}"])
    clients = []
    for _ in range(4):
        client = connect_h2(server, window=2**31 - 1)
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)  # the connection's too
        client.connection.stop_reading()
        streams = [client.get(URL, send=False) for _ in range(4)]
        client.flush()
        clients.append((client, streams))
    for _ in range(2):
        server.advance(0.5)  # nothing drains
        for client, _ in clients:
            h2 = inner_channel(client.connection.server.wrappedProtocol)
            assert len(h2.streams) == 4
            for stream_id, stream in h2.streams.items():
                assert 0 < h2_unsent(stream) <= H2_BACKLOG + READ_CHUNK
                assert stream_id in h2.waiting or stream.producer.paused
            assert client.connection.transport.buffered() <= SEND_BUFFER + 2 * READ_CHUNK
    client, streams = clients[0]
    client.connection.resume_reading()
    server.settle()
    assert client.ended >= set(streams)
    assert all(bytes(client.bodies[stream]) == body for stream in streams)
