"""The URL space through the real site in memory: which path reaches which page."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from hps.pull.lock import Record
from hps.pull.snapshot import Served, write_inventory
from hps.urls import INVENTORY_FILE, INVENTORY_URL
from tests.support.server import Tree


@pytest.fixture
def server(tree: Tree, harness):
    tree.add("key-auth", "1.0.0")
    tree.add("key-auth", "2.0.0")
    return harness(tree.root)


@pytest.mark.parametrize(("path", "status", "content_type", "location"), [
    ("/", 200, "text/html; charset=utf-8", None),
    ("/healthz", 200, "text/plain; charset=utf-8", None),
    ("/readyz", 200, "text/plain; charset=utf-8", None),
    ("/metrics", 200, "text/plain; version=", None),
    ("/plugins", 301, "text/plain; charset=utf-8", "/plugins/"),
    ("/plugins/", 200, "text/html; charset=utf-8", None),
    ("/plugins/index.json", 200, "application/json", None),
    ("/plugins/key-auth", 301, "text/plain; charset=utf-8", "/plugins/key-auth/"),
    ("/plugins/key-auth/", 200, "text/html; charset=utf-8", None),
    ("/plugins/key-auth/index.json", 200, "application/json", None),
    ("/plugins/key-auth/1.0.0", 301, "text/plain; charset=utf-8", "/plugins/key-auth/1.0.0/"),
    ("/plugins/key-auth/1.0.0/", 200, "text/html; charset=utf-8", None),
    ("/plugins/key-auth/1.0.0/plugin.wasm", 200, "application/wasm", None),
    ("/plugins/key-auth/1.0.0/metadata.txt", 200, "text/plain; charset=utf-8", None),
    ("/plugins/key-auth/1.0.0/other.txt", 404, "text/plain; charset=utf-8", None),
    ("/plugins/key-auth/3.0.0/plugin.wasm", 404, "text/plain; charset=utf-8", None),
    ("/plugins/key-auth/1.0.0/plugin.wasm/x", 404, "text/plain; charset=utf-8", None),
    ("/plugins/nope/", 404, "text/plain; charset=utf-8", None),
    ("/favicon.ico", 404, "text/plain; charset=utf-8", None),
])
def test_routes(server, path: str, status: int, content_type: str, location: str | None) -> None:
    """Each route's status, Content-Type and redirect Location, all with nosniff."""
    reply = server.get(path)
    assert reply.status == status, path
    assert reply.header("Content-Type").startswith(content_type)
    assert reply.header("Location") == location
    assert reply.header("X-Content-Type-Options") == "nosniff"


def test_every_other_method_is_405_with_allow(server) -> None:
    reply = server.request("/plugins/", method="DELETE")
    assert reply.status == 405 and reply.header("Allow") == "GET, HEAD"


@pytest.mark.parametrize(("host", "base"), [
    ("plugins.example:8080", "http://plugins.example:8080"),
    ("[::1]:9000", "http://[::1]:9000"),
    ("a_b.example", "http://127.0.0.1:8080"),  # not echoed: the address we were reached at
])
def test_the_landing_page_names_the_host_asked_for_if_it_is_a_host(server, host: str,
                                                                   base: str) -> None:
    reply = server.request("/", headers={"Host": host})
    assert reply.status == 200
    assert f"{base}/plugins/${{name}}/${{version}}/plugin.wasm".encode() in reply.body


def write_snapshot_inventory(root: Path, names: int = 40) -> bytes:
    """The file as ``hps pull --snapshot`` writes it (its own writer), big enough to gzip."""
    served = [Served(f"plugin-{n}", (f"plugin-{n}", "2.0.0"), "sha256:" + "ab" * 32)
              for n in range(names)]
    records = {s.key: Record(s.digest, s.digest, None, "cd" * 32, 100, ["2.0.0"]) for s in served}
    return write_inventory(root, served, records).read_bytes()


def test_upstreams_inventory_is_served_like_a_listing(tree: Tree, harness) -> None:
    tree.add("key-auth", "1.0.0")
    body = write_snapshot_inventory(tree.root)
    server = harness(tree.root)
    reply = server.get(INVENTORY_URL)
    assert reply.status == 200 and reply.body == body
    assert reply.header("Content-Type") == "application/json"
    etag = reply.header("ETag")
    assert etag == f'"{hashlib.sha256(body).hexdigest()[:40]}"'  # strong, from the bytes
    assert server.get(INVENTORY_URL, If_None_Match=etag).status == 304
    packed = server.get(INVENTORY_URL, Accept_Encoding="gzip")
    assert packed.header("Content-Encoding") == "gzip" and gzip.decompress(packed.body) == body
    assert packed.header("Vary") == "Accept-Encoding"
    head = server.request(INVENTORY_URL, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("ETag") == etag
    assert INVENTORY_URL.encode() in server.get("/").body  # the landing page links it


def test_nothing_else_beside_the_plugins_is_reachable(tree: Tree, tmp_path: Path,
                                                      harness) -> None:
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root)
    assert server.get(INVENTORY_URL).status == 404  # absent
    assert INVENTORY_URL.encode() not in server.get("/").body
    body = write_snapshot_inventory(tree.root)
    for other in ("plugins.properties", ".snapshot-inventory.json", "inventory.json"):
        (tree.root / other).write_bytes(body)
    server.rescan()
    assert server.get(INVENTORY_URL).status == 200
    for other in ("plugins.properties", ".snapshot-inventory.json", "inventory.json",
                  "snapshot-inventory.json/", "key-auth/snapshot-inventory.json"):
        assert server.get(f"/plugins/{other}").status == 404, other
    # A symlink out of the root is refused, and the file goes when the tree drops it.
    (tree.root / INVENTORY_FILE).unlink()
    (tmp_path / "secret.json").write_bytes(b'{"secret": 1}')
    (tree.root / INVENTORY_FILE).symlink_to(tmp_path / "secret.json")
    server.rescan()
    assert server.get(INVENTORY_URL).status == 404
    assert "snapshot-inventory.json: symlink leaves the root" in server.log()


@pytest.mark.parametrize("path", [
    "/plugins/key-auth/1.0.0/plugin.wasm",
    "/plugins/key-auth/1.0.0/metadata.txt",
    "/plugins/key-auth/9.9.9/plugin.wasm",
    "/plugins/key-auth/",
    "/plugins/",
    "/plugins/index.json",
    "/plugins/key-auth/index.json",
])
def test_nothing_is_final_while_the_catalog_loads(tree: Tree, harness, path: str) -> None:
    """Before the first scan is in, a plugin URL or a listing is 503 + Retry-After (which the
    gateway retries), never the 404 it would take as final; afterwards the real answer."""
    tree.add("key-auth", "1.0.0")
    server = harness(tree.root, hold_threads=True)  # the first scan waits
    reply = server.get(path)
    assert (reply.status, reply.header("Retry-After")) == (503, "1"), path
    assert reply.header("Cache-Control") == "no-store"
    assert server.get("/healthz").status == 200 and server.get("/").status == 200
    assert not any(key.startswith("hps_misses_total{") for key in server.metrics())
    server.hold_threads = False
    server.settle()
    expected = 404 if "9.9.9" in path else 200
    assert server.get(path).status == expected, path
