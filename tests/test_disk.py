"""Artifacts served from disk: gzip variants on disk, files that change under the server and
files unreadable to it, in memory; and, with a real process, sendfile on TCP against
bounded reads on TLS. (What stalled readers cost the server: tests/test_transfer.py.)"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import ssl
from pathlib import Path

import pytest

from tests.support.certificates import self_signed
from tests.support.permissions import owner_permissions
from tests.support.polling import poll
from tests.support.server import Server, Tree

URL = "/plugins/demo/1.0.0/plugin.wasm"
GET = f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def variants_ready(server: Server, timeout: float = 20) -> None:
    """Polls the real process for a condition it shows only in /metrics."""
    if not poll(lambda: re.search(r"^hps_gzip_variants_pending 0\.0$",
                                  server.get("/metrics").body.decode(), re.M), timeout):
        pytest.fail(f"gzip variants still pending:\n{server.log()}")


def unverified() -> ssl.SSLContext:
    """A client context for the test's self-signed certificate. Not
    ``create_default_context``: it loads the system's CA store (~50 ms) and verifies
    nothing here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def fetch(port: int, path: str, method: str, headers: dict[str, str],
          tls: ssl.SSLContext | None) -> tuple[int, dict[str, str], bytes]:
    if tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        reply = conn.getresponse()
        kept = {k: v for k, v in reply.getheaders() if k not in ("Date",)}
        return reply.status, kept, reply.read()
    finally:
        conn.close()


def shapes(etag: str, gz_etag: str, modified: str) -> list[tuple[str, dict[str, str]]]:
    plain = [("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-99"}),
             ("GET", {"Range": "bytes=-100"}), ("GET", {"Range": "bytes=99999999-"}),
             ("GET", {"If-Modified-Since": modified}),
             ("GET", {"Range": "bytes=10-19", "If-Range": '"stale"'})]
    out = []
    for method, headers in plain:
        out.append((method, dict(headers)))
        out.append((method, dict(headers, **{"Accept-Encoding": "gzip"})))
    out.append(("GET", {"If-None-Match": etag}))
    out.append(("GET", {"If-None-Match": gz_etag, "Accept-Encoding": "gzip"}))
    return out


@pytest.mark.process
def test_sendfile_and_bounded_reads_answer_alike(tree: Tree, serve, tmp_path: Path) -> None:
    """Every request shape, on the fast path, through twisted.web (sendfile) and over TLS
    (bounded reads): same status, headers and bytes; copies keep their own Last-Modified."""
    body = tree.add("demo", "1.0.0", size=700_000)
    tree.add("copy", "1.0.0", body=body)
    os.utime(tree.root / "copy" / "1.0.0" / "plugin.wasm", (1_000_000_000, 1_000_000_000))
    (tree.root / "alias" / "1.0.0").mkdir(parents=True)
    (tree.root / "alias" / "1.0.0" / "plugin.wasm").symlink_to("../../demo/1.0.0/plugin.wasm")
    key, cert = self_signed(tmp_path)
    server = serve("--root", str(tree.root), "--listen",
                   f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    variants_ready(server)
    plain_port, tls_port = server.ports[:2]
    context = unverified()
    modified = {}
    for name in ("demo", "copy", "alias"):
        path = f"/plugins/{name}/1.0.0/plugin.wasm"
        first = fetch(plain_port, path, "GET", {}, None)
        assert first[2] == body
        modified[name] = first[1]["Last-Modified"]
        etag = first[1]["ETag"]
        for method, headers in shapes(etag, etag[:-1] + '-gz"', first[1]["Last-Modified"]):
            fast = fetch(plain_port, path, method, headers, None)
            web = fetch(plain_port, path + "?via=twisted.web", method, headers, None)
            tls = fetch(tls_port, path, method, headers, context)
            assert fast == web == tls, (name, method, headers)
            if fast[1].get("Content-Encoding") == "gzip" and fast[0] == 200 and method == "GET":
                assert gzip.decompress(fast[2]) == body
    assert modified["copy"] == "Sun, 09 Sep 2001 01:46:40 GMT" != modified["demo"]
    assert modified["alias"] == modified["demo"]


def test_gzip_siblings_are_used_only_when_they_match(tree: Tree, harness) -> None:
    good = tree.add("good", "1.0.0", size=200_000)
    packed = gzip.compress(good, 9, mtime=0)
    (tree.root / "good" / "1.0.0" / "plugin.wasm.gz").write_bytes(packed)
    bad = tree.add("bad", "1.0.0", size=200_000)
    (tree.root / "bad" / "1.0.0" / "plugin.wasm.gz").write_bytes(gzip.compress(b"\0asm other"))
    server = harness(tree.root)
    reply = server.get("/plugins/good/1.0.0/plugin.wasm", Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and reply.body == packed
    reply = server.get("/plugins/bad/1.0.0/plugin.wasm", Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and gzip.decompress(reply.body) == bad
    assert len(re.findall(r"skipped .*bad/1\.0\.0/plugin\.wasm\.gz", server.log())) == 1


def test_server_compressed_variants_are_reused_after_a_restart(tree: Tree, harness,
                                                               tmp_path: Path) -> None:
    body = tree.add("demo", "1.0.0", size=300_000)
    cache = tmp_path / "cache"  # the harness's cache_dir
    server = harness(tree.root)
    (made,) = (cache / "gzip").iterdir()
    assert made.name == f"{Tree.sha256(body)}.gz" and gzip.decompress(made.read_bytes()) == body
    stamp = made.stat().st_mtime_ns
    server.close()
    again = harness(tree.root)
    assert again.get(URL, Accept_Encoding="gzip").body == made.read_bytes()
    assert made.stat().st_mtime_ns == stamp  # reused, not rewritten


def test_an_unwritable_cache_dir_still_gives_gzip(tree: Tree, harness, tmp_path: Path) -> None:
    body = tree.add("demo", "1.0.0", size=300_000)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = harness(tree.root, cache_dir=str(blocker / "cache"))
    reply = server.get(URL, Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and gzip.decompress(reply.body) == body
    assert len(re.findall(r"gzip variants go to unlinked temporary files", server.log())) == 1


def test_unreadable_modules_are_served_from_held_descriptors_else_503(
        tree: Tree, harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules that become unreadable to the server (mode bits applied as for a process
    without CAP_DAC_OVERRIDE: tests/support/permissions.py): one it holds open is still
    served from that descriptor, one it does not gets 503 with one log line however often
    it is asked for and the tree rescanned, and an unreadable directory is skipped."""
    served = tree.add("demo", "1.0.0", size=100_000)
    tree.add("other", "1.0.0", size=100_000)
    tree.add("third", "1.0.0", size=100_000)
    owner_permissions(monkeypatch, tree.root)
    server = harness(tree.root, gzip=False)
    assert server.get(URL).body == served  # the server now holds its descriptor
    for name in ("demo", "other"):
        os.chmod(tree.root / name / "1.0.0" / "plugin.wasm", 0)
    os.chmod(tree.root / "third" / "1.0.0", 0)
    server.rescan()
    assert len(re.findall(r"third/1\.0\.0: unreadable directory", server.log())) == 1
    assert server.get("/plugins/third/1.0.0/plugin.wasm").status == 404
    for _ in range(3):
        reply = server.get(URL)
        assert reply.status == 200 and reply.body == served
        reply = server.get("/plugins/other/1.0.0/plugin.wasm")
        assert reply.status == 503 and reply.header("Retry-After") == "1"
        server.rescan()  # a rescan keeps both (hashed while readable), and the one line one
    assert len(re.findall(r"other/1\.0\.0/plugin\.wasm is unreadable", server.log())) == 1


def test_a_module_rewritten_in_place_cuts_the_download_short(tree: Tree, harness) -> None:
    size = 1_000_000  # a dozen times what a reader that stops holds in the server
    tree.add("demo", "1.0.0", size=size)
    server = harness(tree.root, gzip=False)
    client = server.connect()
    client.stop_reading()
    client.send(GET)
    with open(tree.root / "demo" / "1.0.0" / "plugin.wasm", "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"rewritten in place")
    client.resume_reading()
    reply = client.take()
    assert reply.status == 200 and not reply.complete and len(reply.body) < size
    assert client.closed


def test_pipelined_downloads_are_watched_by_progress(tree: Tree, harness) -> None:
    """A slow but steady reader of pipelined downloads is never cut by the send watchdog."""
    body = tree.add("demo", "1.0.0", size=300_000)
    server = harness(tree.root, send_timeout=1, gzip=False)
    client = server.connect()
    client.stop_reading()
    client.send(GET * 10)
    for _ in range(30):  # 0.3 s of nothing read, then a bufferful: ~3 s, three send timeouts
        server.advance(0.3, step=0.3)
        client.resume_reading()
        client.stop_reading()
    client.resume_reading()
    replies = [client.take() for _ in range(10)]
    assert all(reply.body == body for reply in replies) and not client.closed


def test_the_first_gzip_download_after_start_is_gzip(tree: Tree, harness) -> None:
    """Asked for right after the first scan, variants are still queued: each request waits
    for its own, moved to the front of the queue (one is already being made)."""
    bodies = {f"p{i}": tree.add(f"p{i}", "1.0.0", size=100_000) for i in range(4)}
    server = harness(tree.root, hold_threads=True)
    pool = server.reactor.pool
    assert pool.run_one()  # the first scan; the gzip variants queue up behind it
    server.settle()
    assert pool.run_one()  # first after a swap: the cache's prune (hps.variants.prune)
    server.settle()
    assert pool.run_one()  # then the record of served digests is written (hps.served)
    server.settle()
    assert server.get("/readyz").status == 200, "readiness does not wait for variants"
    jobs = []
    for name in reversed(list(bodies)):
        client = server.connect().send(f"GET /plugins/{name}/1.0.0/plugin.wasm HTTP/1.1\r\n"
                                       "Host: t\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        ran = 0
        while not client.received():
            assert pool.run_one(), f"{name}: nothing left to run, and no answer"
            server.settle()
            ran += 1
        jobs.append(ran)
        reply = client.take()
        assert reply.header("Content-Encoding") == "gzip", name
        assert gzip.decompress(reply.body) == bodies[name]
    # p3 waited for p0 (being made when it asked), then its own came next, not p1 and p2;
    # p2 likewise waited for p1, begun meanwhile; p1 and p0 were ready by then.
    assert jobs == [2, 2, 0, 0]
