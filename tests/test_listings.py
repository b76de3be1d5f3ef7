"""Listings built once per catalog generation, and served with ETag, 304 and gzip."""

from __future__ import annotations

import gzip
import http.client
import statistics
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import Deferred

from hps.catalog import Catalog, scan
from hps.listings import REBUILD_EVERY, THREAD_ABOVE, Listings, Rendered
from tests.support.server import wasm_bytes
from tests.test_site import Site

HTML = "text/html; charset=utf-8"


def counting(calls: list[int], body: bytes = b"<p>page</p>" * 200):
    def build() -> bytes:
        calls.append(1)
        return body
    return build


def test_a_page_is_built_once_per_snapshot() -> None:
    listings, calls = Listings(task.Clock()), []
    one, two = Catalog(root="r"), Catalog(root="r")
    first = listings.get(one, ("plugins",), counting(calls), HTML)
    assert listings.get(one, ("plugins",), counting(calls), HTML) is first
    assert len(calls) == 1
    assert isinstance(first, Rendered) and first.gzipped is not None
    assert gzip.decompress(b"".join(first.gzipped.chunks)) == b"".join(first.identity.chunks)
    listings.get(two, ("plugins",), counting(calls), HTML)
    assert len(calls) == 2, "a new snapshot is a new generation"


def test_an_extra_generation_rebuilds_at_most_every_few_seconds() -> None:
    clock, extra, calls = task.Clock(), [0], []
    listings = Listings(clock, extra=lambda: extra[0])
    catalog = Catalog(root="r")
    for _ in range(3):  # the missing list moves on every request
        extra[0] += 1
        listings.get(catalog, ("index",), counting(calls), HTML)
    assert len(calls) == 1
    clock.advance(REBUILD_EVERY)
    listings.get(catalog, ("index",), counting(calls), HTML)
    assert len(calls) == 2, "the change seen in between is not lost"
    clock.advance(REBUILD_EVERY)
    listings.get(catalog, ("index",), counting(calls), HTML)
    assert len(calls) == 2, "nothing moved since"


class Big(Catalog):
    """A snapshot as big as the thread threshold, without building its artifacts."""

    def __init__(self) -> None:
        super().__init__(root="r")

    def __len__(self) -> int:
        return THREAD_ABOVE + 1


def test_heavy_pages_of_big_catalogs_are_built_once_in_a_thread() -> None:
    jobs: list[tuple[Deferred, object]] = []

    def in_thread(work):
        jobs.append((Deferred(), work))
        return jobs[-1][0]

    listings, calls = Listings(task.Clock(), in_thread=in_thread), []
    big = Big()
    waiting = [listings.get(big, ("index",), counting(calls), HTML, heavy=True) for _ in range(3)]
    assert len(jobs) == 1 and calls == [], "one build, not on the reactor thread"
    got: list[Rendered] = []
    for waiter in waiting:
        waiter.addCallback(got.append)
    done, work = jobs[0]
    done.callback(work())
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert listings.get(big, ("index",), counting(calls), HTML, heavy=True) is got[0]
    small = listings.get(Catalog(root="r"), ("index",), counting(calls), HTML, heavy=True)
    assert isinstance(small, Rendered) and len(jobs) == 1


def test_listings_carry_etag_gzip_and_answer_304(tmp_path: Path) -> None:
    site = Site(tmp_path / "plugins", None)
    for name in ("a", "b", "c"):
        (site.root / name / "1.0.0").mkdir(parents=True)
        (site.root / name / "1.0.0" / "plugin.wasm").write_bytes(wasm_bytes(100))
    site.state.swap(scan(str(site.root)))
    ask = b"GET /plugins/index.json HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
    _, first = site.ask(ask + b"\r\n")
    head, _, body = first.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Encoding: gzip" in head
    assert b'"name": "c"' in gzip.decompress(body)
    etag = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"etag:"))
    _, again = site.ask(ask + b"If-None-Match: " + etag.split(b": ", 1)[1] + b"\r\n\r\n")
    assert again.value().startswith(b"HTTP/1.1 304 ") and again.value().endswith(b"\r\n\r\n")
    _, plain = site.ask(b"HEAD /plugins/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert plain.value().startswith(b"HTTP/1.1 200 ") and plain.value().endswith(b"\r\n\r\n")
    assert b"Content-Encoding" not in plain.value() and b"\r\nETag: " in plain.value()


LOOPER = """
import http.client, sys, time
port, until = int(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
count = 0
while time.time() < until:
    conn.request("GET", "/plugins/index.json")
    count += len(conn.getresponse().read()) > 1_000_000
print(count)
"""


def test_index_json_loops_do_not_stall_downloads(tmp_path: Path, serve) -> None:
    """10,000 artifacts, 4 clients looping on index.json: a 1 KB download stays fast."""
    root = tmp_path / "plugins"
    module = wasm_bytes(1024)
    for i in range(10_000):
        folder = root / f"p{i:05d}" / "1.0.0"
        folder.mkdir(parents=True)
        (folder / "plugin.wasm").write_bytes(module)
    server = serve("--root", str(root), ready=False)
    server.wait_ready(timeout=90)  # the first scan hashes 10,000 files
    assert server.get("/plugins/index.json").status == 200  # built once, before the clock runs
    until = time.time() + 8
    loopers = [subprocess.Popen([sys.executable, "-c", LOOPER, str(server.port), str(until)],
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        time.sleep(1)  # every looper is under way
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        took = []
        while time.time() < until - 1:
            began = time.monotonic()
            conn.request("GET", "/plugins/p00042/1.0.0/plugin.wasm")
            assert conn.getresponse().read() == module
            took.append(time.monotonic() - began)
            time.sleep(0.01)
        conn.close()
    finally:
        indexes = [int(looper.communicate(timeout=30)[0] or 0) for looper in loopers]
    median = statistics.median(took) * 1000
    print(f"1 KB download while 4 clients loop on a {len(module)}-byte-module, 10,000-artifact "
          f"index.json: median {median:.1f} ms, p90 {sorted(took)[len(took) * 9 // 10] * 1000:.1f}"
          f" ms over {len(took)} downloads; {sum(indexes)} index.json served meanwhile")
    assert min(indexes) >= 3, "every looper got full indexes"
    assert median <= 20
