"""Black-box: artifacts served from disk (sendfile on TCP, bounded reads on TLS), gzip
variants on disk, and files that change or become unreadable under the server."""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.support.server import Server, Tree, wasm_bytes
from tests.test_tls import self_signed
from tests.test_transfer import etag_of, raw_get, read_all, vm_rss

URL = "/plugins/demo/1.0.0/plugin.wasm"
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
"""Runs the server as root without the capabilities that let root read any file, so a
chmod 000 file is really unreadable to it."""


def variants_ready(server: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.get("/metrics").body.decode()
        if re.search(r"^hps_gzip_variants_pending 0\.0$", text, re.M):
            return
        time.sleep(0.05)
    pytest.fail(f"gzip variants still pending:\n{server.log()}")


def rescan(server: Server, timeout: float = 10) -> None:
    """SIGHUP, then wait until the scan it asks for has been swapped in."""
    def reloads() -> float:
        text = server.get("/metrics").body.decode()
        return float(re.search(r"^hps_catalog_reloads_total (\S+)$", text, re.M).group(1))

    before = reloads()
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while reloads() <= before:
        if time.monotonic() > deadline:
            pytest.fail("SIGHUP brought no rescan")
        time.sleep(0.05)


def fetch(port: int, path: str, method: str, headers: dict[str, str],
          tls: bool) -> tuple[int, dict[str, str], bytes]:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, context=context)
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
    modified = {}
    for name in ("demo", "copy", "alias"):
        path = f"/plugins/{name}/1.0.0/plugin.wasm"
        first = fetch(plain_port, path, "GET", {}, False)
        assert first[2] == body
        modified[name] = first[1]["Last-Modified"]
        etag = first[1]["ETag"]
        for method, headers in shapes(etag, etag[:-1] + '-gz"', first[1]["Last-Modified"]):
            fast = fetch(plain_port, path, method, headers, False)
            web = fetch(plain_port, path + "?via=twisted.web", method, headers, False)
            tls = fetch(tls_port, path, method, headers, True)
            assert fast == web == tls, (name, method, headers)
            if fast[1].get("Content-Encoding") == "gzip" and fast[0] == 200 and method == "GET":
                assert gzip.decompress(fast[2]) == body
    assert modified["copy"] == "Sun, 09 Sep 2001 01:46:40 GMT" != modified["demo"]
    assert modified["alias"] == modified["demo"]


def test_gzip_siblings_are_used_only_when_they_match(tree: Tree, serve) -> None:
    good = tree.add("good", "1.0.0", size=200_000)
    packed = gzip.compress(good, 9, mtime=0)
    (tree.root / "good" / "1.0.0" / "plugin.wasm.gz").write_bytes(packed)
    bad = tree.add("bad", "1.0.0", size=200_000)
    (tree.root / "bad" / "1.0.0" / "plugin.wasm.gz").write_bytes(gzip.compress(b"\0asm other"))
    server = serve("--root", str(tree.root))
    variants_ready(server)
    reply = server.get("/plugins/good/1.0.0/plugin.wasm", Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and reply.body == packed
    reply = server.get("/plugins/bad/1.0.0/plugin.wasm", Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and gzip.decompress(reply.body) == bad
    assert len(re.findall(r"skipped .*bad/1\.0\.0/plugin\.wasm\.gz", server.log())) == 1


def test_server_compressed_variants_are_reused_after_a_restart(tree: Tree, serve,
                                                               tmp_path: Path) -> None:
    body = tree.add("demo", "1.0.0", size=300_000)
    cache = tmp_path / "cache"
    server = serve("--root", str(tree.root), "--cache-dir", str(cache), "--drain-delay", "0")
    variants_ready(server)
    (made,) = (cache / "gzip").iterdir()
    assert made.name == f"{Tree.sha256(body)}.gz" and gzip.decompress(made.read_bytes()) == body
    stamp = made.stat().st_mtime_ns
    server.stop()
    again = serve("--root", str(tree.root), "--cache-dir", str(cache))
    variants_ready(again)
    assert again.get(URL, Accept_Encoding="gzip").body == made.read_bytes()
    assert made.stat().st_mtime_ns == stamp  # reused, not rewritten


def test_an_unwritable_cache_dir_still_gives_gzip(tree: Tree, serve, tmp_path: Path) -> None:
    body = tree.add("demo", "1.0.0", size=300_000)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = serve("--root", str(tree.root), "--cache-dir", str(blocker / "cache"))
    variants_ready(server)
    reply = server.get(URL, Accept_Encoding="gzip")
    assert reply.header("Content-Encoding") == "gzip" and gzip.decompress(reply.body) == body
    assert len(re.findall(r"not writable", server.log())) == 1


def test_unreadable_modules_are_served_from_held_descriptors_else_503(tree: Tree,
                                                                      serve) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to make a file unreadable to root")
    served = tree.add("demo", "1.0.0", size=100_000)
    tree.add("other", "1.0.0", size=100_000)
    tree.add("third", "1.0.0", size=100_000)
    server = serve("--root", str(tree.root), "--no-gzip", wrap=NO_DAC)
    assert server.get(URL).body == served  # the server now holds its descriptor
    for name in ("demo", "other"):
        os.chmod(tree.root / name / "1.0.0" / "plugin.wasm", 0)
    os.chmod(tree.root / "third" / "1.0.0", 0)
    try:
        rescan(server)
        server.wait_log(r"third/1\.0\.0: unreadable directory")
        for _ in range(3):
            reply = server.get(URL)
            assert reply.status == 200 and reply.body == served
            reply = server.get("/plugins/other/1.0.0/plugin.wasm")
            assert reply.status == 503 and reply.header("Retry-After") == "1"
            rescan(server)  # a rescan keeps both, and the one line stays one
        assert len(re.findall(r"other/1\.0\.0/plugin\.wasm is unreadable", server.log())) == 1
    finally:
        os.chmod(tree.root / "third" / "1.0.0", 0o755)


def test_a_module_rewritten_in_place_cuts_the_download_short(tree: Tree, serve) -> None:
    size = 6_000_000
    tree.add("demo", "1.0.0", size=size)
    server = serve("--root", str(tree.root))
    sock = raw_get(server.port, URL)
    first = sock.recv(4096)
    target = tree.root / "demo" / "1.0.0" / "plugin.wasm"
    with open(target, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"rewritten in place")
    data = [first]
    try:
        while chunk := sock.recv(65536):
            data.append(chunk)
    except ConnectionResetError:
        pass  # cut by an abort: as good as a short close for the client
    sock.close()
    head, _, received = b"".join(data).partition(b"\r\n\r\n")
    assert b"200 OK" in head and len(received) < size


def test_stalled_readers_hold_no_body_bytes(tree: Tree, serve) -> None:
    size = 4_000_000
    body = tree.add("demo", "1.0.0", size=size)
    server = serve("--root", str(tree.root))
    variants_ready(server)
    before = vm_rss(server.process.pid)
    reader = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    reader.sendall(f"GET {URL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    sockets = [reader] + [raw_get(server.port, URL) for _ in range(60)]
    time.sleep(1.0)
    grown = vm_rss(server.process.pid) - before
    replaced = tree.add("demo", "1.0.0", body=wasm_bytes(size, seed=7))
    reply = read_all(sockets[0])
    for sock in sockets:
        sock.close()
    # sendfile: the bytes a client has not taken stay in the kernel, not in the server.
    assert grown < 8 << 20, grown
    head, _, received = reply.partition(b"\r\n\r\n")
    assert received == body != replaced
    assert etag_of(received).encode() in head


def test_pipelined_downloads_are_watched_by_progress(tree: Tree, serve) -> None:
    """A slow but steady reader of pipelined downloads is never cut by the send watchdog."""
    tree.add("demo", "1.0.0", size=300_000)
    server = serve("--root", str(tree.root), "--send-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    request = f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    sock.sendall(request)  # the fast path answers this one...
    time.sleep(0.05)
    sock.sendall(request * 9)  # ...and holds these until it is done
    received, started = 0, time.monotonic()
    while received < 10 * 300_000 and time.monotonic() - started < 20:
        chunk = sock.recv(32768)  # ~1 MB/s: the whole takes ~3 s, three send timeouts
        if not chunk:
            break
        received += len(chunk)
        time.sleep(0.03)
    sock.close()
    assert received >= 10 * 300_000, received
    metrics = server.get("/metrics").body.decode()
    assert not re.search(r'hps_responses_aborted_total\{reason="send_timeout"\} [1-9]', metrics)


def test_a_download_cut_by_the_client_is_logged_and_counted(tree: Tree, serve) -> None:
    size = 8_000_000
    tree.add("demo", "1.0.0", size=size)
    server = serve("--root", str(tree.root))
    sock = raw_get(server.port, URL)
    assert sock.recv(65536)
    sock.close()
    line = server.wait_log(rf'"GET {re.escape(URL)} HTTP/1\.1" 200 (\d+)')
    assert int(line.rsplit(" ", 1)[1]) < size
    metrics = server.get("/metrics").body.decode()
    assert re.search(r'hps_requests_total\{route="artifact",status="200"\} 1\.0', metrics)


def test_the_first_gzip_download_after_start_is_gzip(tree: Tree, serve, tmp_path: Path) -> None:
    bodies = {f"p{i}": tree.add(f"p{i}", "1.0.0", size=400_000) for i in range(12)}
    server = serve("--root", str(tree.root), "--cache-dir", str(tmp_path / "fresh"))
    # Asked at once after ready, most variants are still queued: each request waits for its
    # own, moved to the front of the queue.
    for name in reversed(list(bodies)):
        reply = server.get(f"/plugins/{name}/1.0.0/plugin.wasm", Accept_Encoding="gzip")
        assert reply.header("Content-Encoding") == "gzip", name
        assert gzip.decompress(reply.body) == bodies[name]


def test_stalled_tls_readers_are_paused_not_buffered(tree: Tree, serve, tmp_path: Path) -> None:
    """Bounded reads on TLS: a client that stops reading pauses the sender (the TLS
    transport pushes back through the channel), so it holds a chunk, not the body."""
    size = 8_000_000
    tree.add("demo", "1.0.0", size=size)
    key, cert = self_signed(tmp_path)
    server = serve("--root", str(tree.root), "--listen",
                   f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    before = vm_rss(server.process.pid)
    stalled = []
    for _ in range(12):
        raw = socket.create_connection(("127.0.0.1", server.ports[1]), timeout=10)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock = context.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        stalled.append(sock)
    time.sleep(1.5)
    grown = vm_rss(server.process.pid) - before
    for sock in stalled:
        sock.close()
    assert grown < 12 << 20, grown  # unpaced, each would hold its whole 8 MB encrypted


def h2_stalled(port: int, path: str, streams: int) -> ssl.SSLSocket:
    """An HTTP/2 client with 2 GiB windows that asks for ``path`` on ``streams`` streams and
    never reads: only the server's own bound keeps it from queueing every byte."""
    import h2.config
    import h2.connection
    import h2.settings

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65535)
    for i in range(streams):
        conn.send_headers(1 + 2 * i, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                      (":authority", "localhost")], end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock


def test_stalled_http2_streams_queue_a_bounded_backlog(tree: Tree, serve, tmp_path: Path) -> None:
    tree.add("demo", "1.0.0", size=8_000_000)
    key, cert = self_signed(tmp_path)
    server = serve("--root", str(tree.root), "--listen",
                   f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    before = vm_rss(server.process.pid)
    stalled = [h2_stalled(server.ports[1], URL, 4) for _ in range(4)]
    time.sleep(1.5)
    grown = vm_rss(server.process.pid) - before
    for sock in stalled:
        sock.close()
    # 16 streams of 8 MB under 2 GiB windows: unbounded, 128 MB would wait in memory.
    assert grown < 16 << 20, grown
