"""SIGTERM drains: readiness fails, downloads in flight finish, stragglers are cut, exit 0."""

from __future__ import annotations

import hashlib
import http.client
import signal
import socket
import threading
import time

from tests.support.server import Server, Tree

SIZE = 8 << 20
RATE = 1 << 20  # bytes/s each slow client reads


def slow_download(server: Server, path: str, results: list, started: threading.Barrier) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        started.wait(10)
        digest, got = hashlib.sha256(), 0
        while chunk := reply.read(RATE // 16):
            digest.update(chunk)
            got += len(chunk)
            time.sleep(1 / 16)
        results.append((reply.status, got, digest.hexdigest()))
    except Exception as err:  # the assertion below names what went wrong
        results.append((0, 0, repr(err)))
    finally:
        conn.close()


def stalled_socket(server: Server, path: str) -> socket.socket:
    """A client that asks for a big body and never reads it."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> int:
    sock.settimeout(5)
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return got


def test_sigterm_lets_twenty_slow_downloads_finish(tree: Tree, serve) -> None:
    body = tree.add("big", "1.0.0", size=SIZE)
    server = serve("--root", str(tree.root), "--drain-delay", "1", "--drain-timeout", "20")
    results: list = []
    started = threading.Barrier(21)
    clients = [threading.Thread(target=slow_download,
                                args=(server, "/plugins/big/1.0.0/plugin.wasm", results, started))
               for _ in range(20)]
    for client in clients:
        client.start()
    started.wait(10)
    time.sleep(0.5)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert server.request("/readyz").status == 503  # still listening: the drain delay
    for client in clients:
        client.join(30)
    assert server.process.wait(10) == 0
    took = time.monotonic() - began
    assert results == [(200, SIZE, hashlib.sha256(body).hexdigest())] * 20
    assert "drained: every response finished" in server.log()
    print(f"drain with 20 slow 8 MB downloads took {took:.1f}s")


def test_stalled_reader_is_cut_after_the_send_timeout(tree: Tree, serve) -> None:
    tree.add("big", "1.0.0", size=SIZE)
    server = serve("--root", str(tree.root), "--send-timeout", "2")
    sock = stalled_socket(server, "/plugins/big/1.0.0/plugin.wasm")
    time.sleep(1)
    assert b"hps_responses_in_flight 2.0" in server.get("/metrics").body  # with the scrape
    time.sleep(2.6)
    metrics = server.get("/metrics").body.decode()
    assert 'hps_responses_aborted_total{reason="send_timeout"} 1.0' in metrics
    assert read_all(sock) < SIZE
    sock.close()
    assert server.get("/healthz").status == 200


def test_drain_timeout_aborts_stuck_clients_and_exits_zero(tree: Tree, serve) -> None:
    tree.add("big", "1.0.0", size=SIZE)
    server = serve("--root", str(tree.root), "--drain-delay", "0", "--drain-timeout", "1")
    sock = stalled_socket(server, "/plugins/big/1.0.0/plugin.wasm")
    time.sleep(0.5)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert time.monotonic() - began < 4
    assert "drain timeout after 1.0s: aborted 1 connections" in server.log()
    sock.close()
