"""TLS endpoints (ssl: and the tls: SNI directory form) and HTTP/2 over ALPN, with curl."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone

from tests.support.certificates import self_signed
from tests.support.polling import poll
from tests.support.server import Server, Tree
from tests.support.tlspair import Pair, Producer
from tests.support.transport import SEND_BUFFER

PATH = "/plugins/key-auth/1.0.0/plugin.wasm"


def curl(*args: str) -> tuple[str, bytes]:
    """Run curl; returns (``<http version> <status>``, body)."""
    if shutil.which("curl") is None:
        pytest.fail("curl is needed for the TLS tests")
    out = subprocess.run(["curl", "-sk", "--max-time", "10", "-w", "\n%{http_version} %{http_code}",
                          *args], capture_output=True, timeout=20, check=True).stdout
    body, _, status = out.rpartition(b"\n")
    return status.decode(), body


def ready(server: Server, host: str = "127.0.0.1", *extra: str, port: int = 0) -> str:
    """Wait for /readyz over TLS (the fixture's own wait speaks plain HTTP); returns the base."""
    base = f"https://{host}:{port or server.port}"
    if not poll(lambda: curl(*extra, f"{base}/readyz")[0].endswith(" 200"), 10):
        pytest.fail(f"never ready:\n{server.log()}")
    return base


def accepted(pid: int, port: int, clients: list[socket.socket]) -> bool:
    """Whether process ``pid`` holds the server end of each client's connection to ``port``:
    the kernel completes a handshake before accept(), so only the process's descriptors
    (/proc/PID/fd) show that it took them; /proc/net/tcp names each connection's socket."""
    ends = {f"0100007F:{port:04X} 0100007F:{client.getsockname()[1]:04X}" for client in clients}
    sockets = {f"socket:[{fields[9]}]" for fields in map(str.split, Path(
        "/proc/net/tcp").read_text().splitlines()[1:]) if f"{fields[1]} {fields[2]}" in ends}
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            held.add(os.readlink(fd))
    return len(sockets) == len(clients) and sockets <= held


@pytest.fixture(scope="module")
def curl_speaks_http2() -> None:
    features = subprocess.run(["curl", "-V"], capture_output=True, text=True).stdout
    if "HTTP2" not in features:
        pytest.fail("this curl lacks HTTP2; install a curl built with nghttp2")


@pytest.mark.process
def test_tls_endpoints_with_curl(tree: Tree, serve, tmp_path: Path, curl_speaks_http2) -> None:
    """One real process, two TLS listeners (``ssl:`` and the ``tls:`` SNI directory form),
    a 1 s header timeout and a cap of 3 connections; each part below uses it in turn."""
    body = tree.add("key-auth", "1.0.0", size=3_000_000)
    key, cert = self_signed(tmp_path)
    pems = tmp_path / "sni"
    pems.mkdir()
    (pems / "localhost.pem").write_bytes(key.read_bytes() + cert.read_bytes())
    server: Server = serve("--root", str(tree.root), "--header-timeout", "1",
                           "--max-connections", "3",
                           "--listen", f"tls:{pems}:port=0:interface=127.0.0.1",
                           listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                           ready=False)
    server.wait_log(r"hps listening on \S+ \(tls:")
    ssl_port, tls_port = server.ports[:2]

    # ssl: serves HTTP/2 (ALPN) and HTTP/1.1.
    base = ready(server, port=ssl_port)
    status, got = curl("--http2", f"{base}{PATH}")
    assert status == "2 200"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    status, got = curl("--http1.1", f"{base}{PATH}")
    assert status == "1.1 200" and got == body
    status, text = curl("--http2", f"{base}/readyz")
    assert status == "2 200" and text == b"ready\n"

    # tls: reads a directory of PEMs and picks one by SNI.
    resolve = ("--resolve", f"localhost:{tls_port}:127.0.0.1")
    status, got = curl("--http2", *resolve, f"https://localhost:{tls_port}/healthz")
    assert status == "2 200" and got == b"ok\n"

    # A client that never sends its ClientHello is cut at the header timeout.
    with socket.create_connection(("127.0.0.1", ssl_port), timeout=10) as sock:
        began = time.monotonic()
        try:
            got = sock.recv(100)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - began
    assert got == b"" and took < 4, f"closed after {took:.1f}s"

    # At the cap, silent TLS sockets make room for a client that speaks.
    silent = [socket.create_connection(("127.0.0.1", ssl_port), timeout=5) for _ in range(3)]
    try:
        if not poll(lambda: accepted(server.process.pid, ssl_port, silent), 10):
            pytest.fail(f"the server never accepted the silent sockets:\n{server.log()}")
        began = time.monotonic()
        status, text = curl(f"https://127.0.0.1:{ssl_port}/healthz")
        assert status.endswith(" 200") and text == b"ok\n"
        with contextlib.suppress(ConnectionResetError):
            assert silent[0].recv(100) == b"", "the oldest silent socket was closed"
        assert time.monotonic() - began < 1, "closed to make room, not by the header timeout"
    finally:
        for sock in silent:
            sock.close()


def tls_harness(tree: Tree, harness, where: Path, **knobs: object):
    tree.add("key-auth", "1.0.0")
    key, cert = self_signed(where)
    return harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"], **knobs)


def test_the_head_deadline_starts_after_the_handshake(tree: Tree, harness,
                                                      tmp_path: Path) -> None:
    """A handshake that took 1.5 s (a CPU-starved client) does not eat the head's 2 s; a
    head still missing then is answered 408 and closed cleanly, not reset."""
    server = tls_harness(tree, harness, tmp_path, header_timeout=2)
    client = server.connect(settle=False)  # accepted; the ClientHello not yet read
    server.reactor.rightNow += 1.5  # the client is slow to get its handshake going
    server.settle()
    assert client.server.wrappedProtocol is not None and not client.closed
    server.advance(1.9)
    assert not client.closed, "cut by a deadline that counted the handshake"
    server.advance(0.6)
    assert client.closed and not client.transport.aborted
    reply = client.take()
    assert (reply.status, reply.header("Connection")) == (408, "close")


def test_a_slow_head_over_tls_gets_408(tree: Tree, harness, tmp_path: Path) -> None:
    server = tls_harness(tree, harness, tmp_path, header_timeout=2)
    client = server.connect().send(b"GET /healthz HTTP/1.1\r\nHo")
    server.advance(2.5)
    assert client.closed and not client.transport.aborted
    assert client.take().status == 408


def test_a_handshake_never_finished_is_cut(tree: Tree, harness, tmp_path: Path) -> None:
    """Nothing can be said before TLS is up: a handshake that does not finish within the
    header timeout is cut (the silent-socket defence)."""
    server = tls_harness(tree, harness, tmp_path, header_timeout=2)
    client = server.connect(settle=False)
    server.reactor.rightNow += 2.6
    server.site.sweep()
    assert client.transport.aborted


# -- whole writes (hps.tls.tune), on a real Twisted TLS pair in memory --------------------
#
# Each scenario runs twice, on Twisted's own write path and on hps's, and both must give
# the client the very same bytes and the same end: hps's path changes how the bytes move,
# never which bytes or in what order.

def test_big_and_small_writes_arrive_whole_and_in_order(tls_pairs: Callable[..., Pair]) -> None:
    one = tls_pairs()
    pieces = [b"head\r\n", os.urandom(131072), b"small", os.urandom(65536),
              os.urandom(600_000), b"tail"]
    sequence = [b"a", os.urandom(70000), b"b"]
    before = len(one.wire.writes)
    for piece in pieces:
        one.server.write(piece)
    one.server.writeSequence(sequence)
    one.settle()
    assert bytes(one.client.data) == b"".join(pieces + sequence)
    writes = len(one.wire.writes) - before
    if one.app.tuned:  # one TCP write per write (small ones join the next), 600 KB in three
        assert writes <= 6, one.wire.writes[before:]
    else:
        assert writes > 50  # one per 16 KiB record


def test_writes_before_the_handshake_wait_for_it(tls_pairs: Callable[..., Pair]) -> None:
    """Written as the connection opens: Twisted's path buffers them until TLS is up."""
    early = os.urandom(100_000)
    one = tls_pairs(early=early, handshake=False)
    assert not one.client.data
    one.settle()
    one.server.write(b"after")
    one.settle()
    assert bytes(one.client.data) == early + b"after"


def test_a_peer_that_stops_reading_pauses_the_producer(tls_pairs: Callable[..., Pair]) -> None:
    """What a stalled client leaves in the server: what the TCP transport holds when it
    pauses the producer (one chunk's records past its buffer), the same on both paths."""
    one = tls_pairs()
    chunks = [os.urandom(65536) for _ in range(40)]
    producer = Producer(one.server, list(chunks))
    one.server.registerProducer(producer, True)
    one.wire.reading = False
    producer.resumeProducing()
    one.settle()
    assert producer.paused and producer.chunks
    assert SEND_BUFFER < one.wire.buffered() <= 2 * 65536 + 2048
    one.wire.reading = True
    one.settle()
    assert bytes(one.client.data) == b"".join(chunks)
    assert producer.pauses > 1


def test_written_then_closed_arrives_whole_and_later_writes_are_dropped(
        tls_pairs: Callable[..., Pair]) -> None:
    one = tls_pairs()
    body = os.urandom(300_000)
    one.server.write(body)
    one.server.loseConnection()
    one.server.write(b"too late")
    one.settle()
    assert bytes(one.client.data) == body
    assert one.client.closed and one.app.lost is not None
    assert one.app.lost.check(ConnectionDone)


def test_a_write_openssl_refuses_shuts_the_connection(tls_pairs: Callable[..., Pair]) -> None:
    """An OpenSSL error on write (here: TLS already shut down underneath) ends the
    connection and reaches the application as the error, as Twisted's path does."""
    one = tls_pairs()
    one.server.write(b"before")
    one.settle()
    one.server.getHandle().shutdown()  # OpenSSL refuses application data from now on
    one.server.write(os.urandom(50_000))
    one.settle()
    assert bytes(one.client.data) == b"before"
    assert one.app.lost is not None and one.app.lost.check(SSL.Error)


def test_whole_writes_over_http(tree: Tree, harness, tmp_path: Path) -> None:
    """The site's own TLS connections write whole: a 3 MB module over HTTP/1.1 reaches a
    client that stops reading midway, intact, the server holding no more than its
    transport's buffer and one chunk meanwhile."""
    body = tree.add("key-auth", "1.0.0", size=3_000_000)
    key, cert = self_signed(tmp_path)
    server = harness(tree.root, listen=[f"ssl:8443:privateKey={key}:certKey={cert}"])
    client = server.connect()
    client.stop_reading()
    client.send(f"GET {PATH} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert client.transport.buffered() <= SEND_BUFFER + 65536 + 2048
    client.resume_reading()
    reply = client.take()
    assert reply.status == 200 and reply.body == body
