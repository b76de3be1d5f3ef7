"""Hot reload: what the tree holds is what is served.

In memory, each rescan is run by the test (what inotify, the periodic rescan or SIGHUP
would start); a real process shows that inotify and SIGHUP start them by themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.polling import poll
from tests.support.server import Server, Tree

PATH = "/plugins/hot/1.0.0/plugin.wasm"
GET = f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:40]}"'


def test_add_replace_remove(tree: Tree, harness) -> None:
    """A rescan serves added and replaced modules and drops removed ones; a download in flight
    keeps the bytes it began with."""
    first = tree.add("hot", "1.0.0", size=300_000)
    server = harness(tree.root, gzip=False)
    in_flight = server.connect()
    in_flight.stop_reading()
    in_flight.send(GET)
    for seed in range(1, 4):
        data = tree.add("hot", "1.0.0", size=300_000 + seed)
        assert server.get(PATH).header("ETag") != etag(data), "served until the rescan"
        server.rescan()
        reply = server.get(PATH)
        assert reply.body == data and reply.header("ETag") == etag(data)
    in_flight.resume_reading()
    reply = in_flight.take()
    assert reply.body == first and reply.header("ETag") == etag(first)
    added = tree.add("hot", "2.0.0", size=5000)
    server.rescan()
    assert server.get("/plugins/hot/2.0.0/plugin.wasm").body == added
    (tree.root / "hot" / "2.0.0" / "plugin.wasm").unlink()
    # Until the rescan it is served from the descriptor the server holds: its own bytes.
    assert server.get("/plugins/hot/2.0.0/plugin.wasm").body == added
    server.rescan()
    assert server.get("/plugins/hot/2.0.0/plugin.wasm").status == 404


def test_files_being_written_are_never_served(tree: Tree, harness) -> None:
    tree.add("hot", "1.0.0")
    server = harness(tree.root)
    (tree.root / "cold" / "1.0.0").mkdir(parents=True)
    (tree.root / "cold" / "1.0.0" / "plugin.wasm").write_bytes(b"")
    (tree.root / "cold" / "1.0.0" / ".plugin.wasm.tmp").write_bytes(b"\0asm\1\0\0\0")
    (tree.root / "cold" / "2.0.0").mkdir()
    (tree.root / "cold" / "2.0.0" / "plugin.wasm").write_bytes(b"not wasm at all")
    server.rescan()
    for version in ("1.0.0", "2.0.0"):
        assert server.get(f"/plugins/cold/{version}/plugin.wasm").status == 404
    assert server.get("/plugins/hot/1.0.0/plugin.wasm").status == 200


def test_the_periodic_rescan_needs_no_hint(tree: Tree, harness) -> None:
    tree.add("hot", "1.0.0")
    server = harness(tree.root, rescan_interval=30)
    tree.add("hot", "2.0.0")
    server.advance(29, step=1)
    assert server.get("/plugins/hot/2.0.0/plugin.wasm").status == 404
    server.advance(1.5, step=0.5)
    assert server.get("/plugins/hot/2.0.0/plugin.wasm").status == 200


# -- a real process: inotify and SIGHUP ---------------------------------------------------


def within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until ``check()`` held; fails after ``seconds``. The delay of a real
    process's reaction is what is measured, so this polls its wall clock."""
    began = time.monotonic()
    if not poll(check, seconds, every=0.02):
        raise AssertionError(f"not seen within {seconds}s")
    return time.monotonic() - began


def inotify_descriptors(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def reloads(server: Server) -> float:
    found = re.search(rb"^hps_catalog_reloads_total (\S+)$", server.get("/metrics").body, re.M)
    assert found
    return float(found.group(1))


@pytest.mark.process
def test_inotify_and_sighup_rescan_a_real_process(tree: Tree, serve) -> None:
    """No periodic rescan for 5 minutes: only inotify and SIGHUP can make these show."""
    tree.add("hot", "1.0.0", size=100_000)
    os.symlink("..", tree.root / "hot" / "1.0.0" / "loop")  # Twisted's own walk never ends
    server = serve("--root", str(tree.root), "--rescan-interval", "300")
    pid = server.process.pid
    assert inotify_descriptors(pid) == 1
    data = tree.add("hot", "1.0.0", size=100_001)
    delays = [within(2, lambda: server.get(PATH).header("ETag") == etag(data))]
    added = tree.add("hot", "2.0.0", size=5000)
    delays.append(within(2, lambda: server.get("/plugins/hot/2.0.0/plugin.wasm").body == added))
    (tree.root / "hot" / "2.0.0" / "plugin.wasm").unlink()
    delays.append(within(2, lambda: server.get("/plugins/hot/2.0.0/plugin.wasm").status == 404))
    # Deleting a watched directory closes Twisted's notifier; it must come back.
    before = reloads(server)
    (tree.root / "hot" / "2.0.0").rmdir()
    within(5, lambda: reloads(server) > before)  # the notifier died (and asked for a rescan)
    within(5, lambda: inotify_descriptors(pid) == 1)  # a new one, not a leaked second
    versions = iter(range(100))

    def a_new_version_is_seen() -> bool:
        version = f"4.0.{next(versions)}"
        tree.add("hot", version, size=1000)
        within(0.5, lambda: server.get(f"/plugins/hot/{version}/").status == 200)
        return True

    within(5, lambda: _quietly(a_new_version_is_seen))  # its watches are added a slice at a time
    assert "inotify unavailable" not in server.log()
    before = reloads(server)
    server.process.send_signal(signal.SIGHUP)
    server.wait_log("SIGHUP: rescanning")
    within(2, lambda: reloads(server) == before + 1)
    assert server.process.poll() is None
    assert inotify_descriptors(pid) == 1
    print(f"inotify reload delays (s): {', '.join(f'{d:.2f}' for d in delays)}")


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except AssertionError:
        return False
