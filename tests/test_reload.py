"""Hot reload under load: what the tree holds is what is served, within 2 s."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import signal
import threading
import time
from pathlib import Path

from tests.support.server import Server, Tree

PATH = "/plugins/hot/1.0.0/plugin.wasm"


def hammer(server: Server, stop: threading.Event, seen: dict, bad: list) -> None:
    """Download PATH in a loop; every body must hash to the ETag it came with."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    while not stop.is_set():
        conn.request("GET", PATH)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status == 200:
            etag = reply.getheader("ETag", "").strip('"')
            if hashlib.sha256(body).hexdigest()[:40] != etag:
                bad.append(etag)
            seen[etag] = seen.get(etag, 0) + 1
        elif reply.status not in (404, 503):  # 503: replaced mid-request, retry
            bad.append(reply.status)
    conn.close()


def wait_for(check, limit: float = 2.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if check():
            return time.monotonic() - began
        time.sleep(0.02)
    raise AssertionError(f"not seen within {limit}s")


def etag_of(server: Server, path: str = PATH) -> str | None:
    reply = server.get(path)
    return reply.header("ETag").strip('"') if reply.status == 200 else None


def test_add_replace_remove_under_load(tree: Tree, serve) -> None:
    tree.add("hot", "1.0.0", size=2 << 20)
    server = serve("--root", str(tree.root), "--rescan-interval", "300")
    stop, seen, bad = threading.Event(), {}, []
    clients = [threading.Thread(target=hammer, args=(server, stop, seen, bad)) for _ in range(3)]
    for client in clients:
        client.start()
    delays = []
    try:
        for seed in range(1, 4):
            time.sleep(0.3)
            data = tree.add("hot", "1.0.0", body=None, size=(2 << 20) + seed)
            want = hashlib.sha256(data).hexdigest()[:40]
            delays.append(wait_for(lambda w=want: etag_of(server) == w))
        added = tree.add("hot", "2.0.0", size=5000)
        delays.append(wait_for(lambda: etag_of(server, "/plugins/hot/2.0.0/plugin.wasm")
                               == hashlib.sha256(added).hexdigest()[:40]))
        (tree.root / "hot" / "2.0.0" / "plugin.wasm").unlink()
        delays.append(wait_for(
            lambda: server.get("/plugins/hot/2.0.0/plugin.wasm").status == 404))
        # Deleting a watched directory closes Twisted's notifier; it must come back.
        (tree.root / "hot" / "2.0.0").rmdir()
        time.sleep(0.6)
        tree.add("hot", "4.0.0", size=5000)
        delays.append(wait_for(
            lambda: server.get("/plugins/hot/4.0.0/plugin.wasm").status == 200))
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert bad == []
    assert len(seen) >= 3, seen
    print(f"reload delays (s): {', '.join(f'{d:.2f}' for d in delays)}; etags seen: {seen}")


def test_files_being_written_are_never_served(tree: Tree, serve) -> None:
    tree.add("hot", "1.0.0")
    server = serve("--root", str(tree.root), "--rescan-interval", "300")
    (tree.root / "cold" / "1.0.0").mkdir(parents=True)
    (tree.root / "cold" / "1.0.0" / "plugin.wasm").write_bytes(b"")
    (tree.root / "cold" / "1.0.0" / ".plugin.wasm.tmp").write_bytes(b"\0asm\1\0\0\0")
    (tree.root / "cold" / "2.0.0").mkdir()
    (tree.root / "cold" / "2.0.0" / "plugin.wasm").write_bytes(b"not wasm at all")
    tree.add("hot", "3.0.0")  # a valid change after them: its scan also saw them
    wait_for(lambda: server.get("/plugins/hot/3.0.0/plugin.wasm").status == 200)
    for version in ("1.0.0", "2.0.0"):
        assert server.get(f"/plugins/cold/{version}/plugin.wasm").status == 404


def reloads(server: Server) -> float:
    found = re.search(rb"^hps_catalog_reloads_total (\S+)$", server.get("/metrics").body, re.M)
    assert found
    return float(found.group(1))


def test_sighup_forces_a_rescan(tree: Tree, serve) -> None:
    tree.add("hot", "1.0.0")
    server = serve("--root", str(tree.root), "--rescan-interval", "300")
    before = reloads(server)
    server.process.send_signal(signal.SIGHUP)
    server.wait_log("SIGHUP: rescanning")
    wait_for(lambda: reloads(server) == before + 1)
    assert server.process.poll() is None
    assert server.get("/readyz").status == 200


def inotify_descriptors(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def test_a_symlink_cycle_leaks_no_inotify_descriptor(tree: Tree, serve) -> None:
    body = tree.add("key-auth", "1.0.0")
    os.symlink("..", tree.root / "key-auth" / "1.0.0" / "loop")  # Twisted's own walk never ends
    server = serve("--root", str(tree.root), "--rescan-interval", "60")
    assert server.get("/plugins/key-auth/1.0.0/plugin.wasm").body == body
    seen = []
    for _ in range(20):
        seen.append(inotify_descriptors(server.process.pid))
        time.sleep(0.2)
    print(f"inotify descriptors over 4 s with a symlink cycle: {seen}")
    assert set(seen) == {1}, seen
    assert "inotify unavailable" not in server.log()
    tree.add("key-auth", "2.0.0")  # seen through inotify: the rescan is a minute away
    deadline = time.monotonic() + 5
    while server.get("/plugins/key-auth/2.0.0/plugin.wasm").status != 200:
        assert time.monotonic() < deadline, "inotify never saw the new version"
        time.sleep(0.1)
