"""Listings built once per catalog generation, and served with ETag, 304 and gzip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import Deferred

from hps.catalog import Catalog
from hps.listings import REBUILD_EVERY, THREAD_ABOVE, Listings, Rendered
from tests.support.server import Tree, wasm_bytes

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
    assert gzip.decompress(b"".join(first.gzipped.body)) == b"".join(first.identity.body)
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


def test_listings_carry_etag_gzip_and_answer_304(tree: Tree, harness) -> None:
    for name in ("a", "b", "c"):
        tree.add(name, "1.0.0", size=100)
    site = harness(tree.root)
    ask = b"GET /plugins/index.json HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
    first = site.raw(ask + b"\r\n")
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Encoding: gzip" in head
    assert b'"name": "c"' in gzip.decompress(body)
    etag = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"etag:"))
    again = site.raw(ask + b"If-None-Match: " + etag.split(b": ", 1)[1] + b"\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 304 ") and again.endswith(b"\r\n\r\n")
    plain = site.raw(b"HEAD /plugins/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 200 ") and plain.endswith(b"\r\n\r\n")
    assert b"Content-Encoding" not in plain and b"\r\nETag: " in plain


def test_big_index_pages_are_built_off_the_reactor_while_downloads_go_on(tmp_path: Path,
                                                                         harness) -> None:
    """A catalog past THREAD_ABOVE: four clients asking for index.json wait for one build
    in a thread, and a download meanwhile is answered at once."""
    root = tmp_path / "plugins"
    module = wasm_bytes(1024)
    for i in range(THREAD_ABOVE + 1):
        folder = root / f"p{i:05d}" / "1.0.0"
        folder.mkdir(parents=True)
        (folder / "plugin.wasm").write_bytes(module)
    server = harness(root, gzip=False)
    server.hold_threads = True  # the build runs only when the test lets it
    ask = b"GET /plugins/index.json HTTP/1.1\r\nHost: x\r\n\r\n"
    waiting = [server.connect().send(ask) for _ in range(4)]
    assert all(client.received() == b"" for client in waiting)
    assert len(server.reactor.pool.queue) == 1, "one build for every waiter"
    assert server.get("/plugins/p00042/1.0.0/plugin.wasm").body == module
    server.hold_threads = False
    server.settle()
    bodies = {client.take().body for client in waiting}
    assert len(bodies) == 1
    assert len(json.loads(bodies.pop())["plugins"]) == THREAD_ABOVE + 1
