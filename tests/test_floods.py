"""Black-box: floods of hostile sockets against a real ``twistd hps``, with the figures.

The in-memory tests (test_clients.py) pin the rules; these show them holding at the
scale the issue measured, on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import resource
import selectors
import socket
import threading
import time

import pytest

from tests.support.server import Server, Tree


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.fail(f"this test needs {want} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def probe_loop(server: Server, stop: threading.Event, answers: list[int]) -> None:
    while not stop.is_set():
        try:
            answers.append(server.request("/healthz", timeout=3).status)
        except OSError:
            answers.append(0)
        stop.wait(0.1)


def test_silent_socket_flood_is_cut_and_probes_keep_answering(tree: Tree, serve) -> None:
    """4,100 sockets that never send a byte (more than the 4,096 cap): /healthz keeps
    answering, and every silent socket is closed at the header timeout, counted from accept."""
    tree.add("key-auth", "1.0.0")
    header_timeout, count = 2.0, 4100
    raise_fd_limit(count + 512)
    server = serve("--root", str(tree.root), "--header-timeout", str(header_timeout))
    stop, answers = threading.Event(), []
    prober = threading.Thread(target=probe_loop, args=(server, stop, answers))
    prober.start()
    socks, opened = [], {}
    began = time.monotonic()
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setblocking(False)
            opened[sock.fileno()] = time.monotonic()
            socks.append(sock)
        flooded = time.monotonic() - began
        late = closed_by(socks, opened, deadline=time.monotonic() + header_timeout + 8)
    finally:
        stop.set()
        prober.join(10)
        for sock in socks:
            sock.close()
    ok = answers.count(200) / len(answers)
    worst = max(late.values())
    print(f"{count} silent sockets opened in {flooded:.2f}s; /healthz {answers.count(200)}/"
          f"{len(answers)} 200 ({ok:.0%}); all closed, the last {worst:.2f}s after its accept "
          f"(header_timeout {header_timeout}s)")
    assert len(late) == count, f"{count - len(late)} silent sockets still open"
    assert worst <= header_timeout + 3, "closed by the header timeout, not the idle timeout"
    assert len(answers) >= 10 and ok >= 0.9, answers


def closed_by(socks: list[socket.socket], opened: dict[int, float],
              deadline: float) -> dict[int, float]:
    """Wait for the server to close each socket; seconds from its open to its close."""
    late: dict[int, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(late) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    late[sock.fileno()] = time.monotonic() - opened[sock.fileno()]
                    selector.unregister(sock)
    return late
