"""The server as a whole, in memory (tests/support/memory.py): routes, pages and hostile
paths; and, with a real ``twistd hps``, start-up failures and their exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.server import Tree, run_twistd


@pytest.fixture
def populated(tree: Tree, harness):
    bodies = {
        ("key-rate-limit", "1.0.0"): tree.add("key-rate-limit", "1.0.0", size=400_000),
        ("key-rate-limit", "2.0.1"): tree.add("key-rate-limit", "2.0.1", size=1000),
        ("key-rate-limit", "2.0.0"): tree.add("key-rate-limit", "2.0.0", size=2000),
        ("basic-auth", "1.0.0"): tree.add("basic-auth", "1.0.0", size=3000),
    }
    server = harness(tree.root)
    return server, bodies


def test_module_bytes_and_headers(populated) -> None:
    """A module comes back byte for byte as application/wasm with its length, Last-Modified,
    nosniff and Server; HEAD sends the headers only."""
    server, bodies = populated
    body = bodies[("key-rate-limit", "1.0.0")]
    reply = server.get("/plugins/key-rate-limit/1.0.0/plugin.wasm")
    assert reply.status == 200
    assert reply.body == body
    assert reply.header("Content-Type") == "application/wasm"
    assert reply.header("Content-Length") == str(len(body))
    assert reply.header("Last-Modified")
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert reply.header("Server") == "hps"
    head = server.request("/plugins/key-rate-limit/1.0.0/plugin.wasm", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(body))


def test_metadata_lines(populated) -> None:
    """metadata.txt has upstream's lines (name, size, dates, MD5) plus SHA256, in that order."""
    server, bodies = populated
    body = bodies[("key-rate-limit", "1.0.0")]
    reply = server.get("/plugins/key-rate-limit/1.0.0/metadata.txt")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    lines = reply.body.decode().splitlines()
    assert lines[0] == "Plugin Name: key-rate-limit"
    assert lines[1] == f"Size: {len(body)} bytes"
    assert lines[2].startswith("Last Modified: 20") and lines[3].startswith("Created: 20")
    assert lines[4] == f"MD5: {hashlib.md5(body).hexdigest()}"
    assert lines[5] == f"SHA256: {hashlib.sha256(body).hexdigest()}"


def test_stale_metadata_file_never_wins(tree: Tree, harness) -> None:
    body = tree.add("ai-proxy", "1.0.0", size=1234)
    (tree.root / "ai-proxy" / "1.0.0" / "metadata.txt").write_text("Plugin Name: lies\n")
    server = harness(tree.root)
    reply = server.get("/plugins/ai-proxy/1.0.0/metadata.txt")
    assert f"SHA256: {hashlib.sha256(body).hexdigest()}" in reply.body.decode()
    assert "lies" not in reply.body.decode()


def test_index_json(populated) -> None:
    """index.json lists every plugin and version with URL, size, digests and time; a plugin's
    own index.json holds just its entry."""
    server, bodies = populated
    reply = server.get("/plugins/index.json")
    assert reply.status == 200 and reply.header("Content-Type") == "application/json"
    index = json.loads(reply.body)
    assert [p["name"] for p in index["plugins"]] == ["basic-auth", "key-rate-limit"]
    versions = index["plugins"][1]["versions"]
    assert [v["version"] for v in versions] == ["1.0.0", "2.0.0", "2.0.1"]
    first = versions[0]
    body = bodies[("key-rate-limit", "1.0.0")]
    assert first["url"] == "/plugins/key-rate-limit/1.0.0/plugin.wasm"
    assert first["size"] == len(body)
    assert first["sha256"] == hashlib.sha256(body).hexdigest()
    assert first["md5"] == hashlib.md5(body).hexdigest()
    assert first["lastModified"].endswith("Z")
    one = json.loads(server.get("/plugins/key-rate-limit/index.json").body)
    assert one == {"plugins": [index["plugins"][1]]}
    assert server.get("/plugins/nope/index.json").status == 404


def test_listings_and_landing(populated) -> None:
    """Directory listings link plugins, versions and files; bare directories redirect with a
    slash; the landing page gives the Console settings for the host asked for."""
    server, _ = populated
    listing = server.get("/plugins/")
    assert listing.status == 200 and b'href="/plugins/key-rate-limit/"' in listing.body
    plugin = server.get("/plugins/key-rate-limit/")
    assert b"/plugins/key-rate-limit/2.0.1/plugin.wasm" in plugin.body
    version = server.get("/plugins/basic-auth/1.0.0/")
    assert b"metadata.txt" in version.body
    assert server.get("/plugins").status == 301
    assert server.get("/plugins/basic-auth").header("Location") == "/plugins/basic-auth/"
    landing = server.request("/", headers={"Host": "plugins.example:8080"})
    assert landing.status == 200
    text = landing.body.decode()
    assert "HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN=http://plugins.example:8080" \
        "/plugins/${name}/${version}/plugin.wasm" in text
    assert "MCP_SERVER_WASM_IMAGE_URL=http://plugins.example:8080/plugins/mcp-server/" in text
    assert 'href="/plugins/"' in text and "2 plugins" in text


def test_hostile_host_header_is_not_echoed(populated) -> None:
    server, _ = populated
    landing = server.request("/", headers={"Host": "<script>alert(1)</script>"})
    assert landing.status == 400 and b"<script>" not in landing.body


def test_health_and_readiness(populated) -> None:
    """/healthz answers ok and is never cached; /readyz is 200 once the catalog holds modules."""
    server, _ = populated
    health = server.get("/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert health.header("Cache-Control") == "no-store"
    assert server.get("/readyz").status == 200


def test_not_ready_until_scanned_nor_without_artifacts(tree: Tree, harness) -> None:
    (tree.root / "README.md").write_text("nothing here")
    server = harness(tree.root, hold_threads=True)  # the first scan waits
    reply = server.get("/readyz")
    assert reply.status == 503
    assert json.loads(reply.body) == {"ready": False, "reason": "catalog not loaded yet"}
    server.hold_threads = False
    server.settle()
    reply = server.get("/readyz")
    assert reply.status == 503
    assert json.loads(reply.body) == {"ready": False, "reason": "catalog holds no artifact"}
    assert server.get("/healthz").status == 200
    tree.add("late", "1.0.0")
    server.rescan()
    assert server.get("/readyz").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405(populated, method: str) -> None:
    server, _ = populated
    reply = server.request("/plugins/basic-auth/1.0.0/plugin.wasm", method=method)
    assert reply.status == 405 and reply.header("Allow") == "GET, HEAD"


HOSTILE_404 = [
    "/plugins/../../etc/passwd",
    "/plugins/%2e%2e/%2e%2e/etc/passwd",
    "/plugins/%252e%252e/%252e%252e/etc/passwd",
    "/plugins/basic-auth%2F1.0.0%2Fplugin.wasm",
    "/plugins/basic-auth/1.0.0%5c..%5cplugin.wasm",
    "/plugins/..%5c..%5cetc/passwd",
    "/plugins/.hidden/1.0.0/plugin.wasm",
    "/plugins/basic-auth/1.0.0/.plugin.wasm.tmp",
    "/plugins/basic-auth/1.0.0/README.md",
    "/plugins/escape/1.0.0/plugin.wasm",
    "/plugins/escape-dir/1.0.0/plugin.wasm",
    "/plugins/notwasm/1.0.0/plugin.wasm",
    "/nothing",
    "/plugins/nope/1.0.0/plugin.wasm",
    "/plugins/basic-auth/9.9.9/plugin.wasm",
]
HOSTILE_400 = [
    "/plugins/%00/1.0.0/plugin.wasm",
    "/plugins/basic-auth%00/1.0.0/plugin.wasm",
    "/plugins/%0d%0a/1.0.0/plugin.wasm",
    "/plugins/%ff%fe/1.0.0/plugin.wasm",
    "/plugins/" + "a" * 2000 + "/1.0.0/plugin.wasm",
]


@pytest.fixture
def hostile_tree(tree: Tree, tmp_path, harness):
    tree.add("basic-auth", "1.0.0", size=100)
    (tree.root / "basic-auth" / "1.0.0" / "README.md").write_text("hi")
    (tree.root / "basic-auth" / "1.0.0" / ".plugin.wasm.tmp").write_bytes(b"\0asm partial")
    tree.add(".hidden", "1.0.0", size=100)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "plugin.wasm").write_bytes(b"\0asm\x01\0\0\0SECRET")
    (tree.root / "escape" / "1.0.0").mkdir(parents=True)
    os.symlink(outside / "plugin.wasm", tree.root / "escape" / "1.0.0" / "plugin.wasm")
    (tree.root / "escape-dir").mkdir()
    os.symlink(outside, tree.root / "escape-dir" / "1.0.0")
    tree.add("notwasm", "1.0.0", body=b"<html>not a module</html>")
    return harness(tree.root)


def test_hostile_paths(hostile_tree) -> None:
    """Traversal (encoded too), symlinks out of the root, dotfiles, temporaries and non-Wasm
    files are 404, malformed paths 400; none is listed, and the log has no traceback."""
    server = hostile_tree
    for path in HOSTILE_404:
        reply = server.get(path)
        assert reply.status == 404, path
        assert b"SECRET" not in reply.body and b"root:" not in reply.body
    for path in HOSTILE_400:
        assert server.get(path).status == 400, path
    assert server.get("/plugins/basic-auth/1.0.0/plugin.wasm").status == 200
    # index.json's "missing" names what clients asked for; "plugins" is what is served.
    served = json.loads(server.get("/plugins/index.json").body)["plugins"]
    listing = server.get("/plugins/").body + json.dumps(served).encode()
    for name in (b"escape", b"notwasm", b".hidden", b"README"):
        assert name not in listing
    log = server.log()
    assert "Traceback" not in log
    assert "escape/1.0.0/plugin.wasm: symlink leaves the root" in log
    assert "notwasm/1.0.0/plugin.wasm: not a WebAssembly module" in log


def test_raw_request_targets_never_500(hostile_tree) -> None:
    """Targets no HTTP library will send, as raw bytes."""
    for target in (b"/plugins/\x00/x", b"/plugins/\xff/", b"/..", b"/plugins/a\\..\\b", b"*"):
        head = hostile_tree.raw(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")[:64]
        status = head.split(b" ")[1]
        assert status in ((b"405",) if target == b"*" else (b"400", b"404")), (target, head)
        assert b"Twisted" not in head
    assert "Traceback" not in hostile_tree.log()


def test_alias_symlink_inside_root(tree: Tree, harness) -> None:
    """A name symlinked to another plugin inside the root serves its bytes and index.json says
    which module it aliases."""
    body = tree.add("jsonrpc-converter", "1.0.0", size=500)
    (tree.root / "json-converter").mkdir()
    os.symlink("../jsonrpc-converter/1.0.0", tree.root / "json-converter" / "1.0.0")
    server = harness(tree.root)
    assert server.get("/plugins/json-converter/1.0.0/plugin.wasm").body == body
    entry = json.loads(server.get("/plugins/json-converter/index.json").body)
    assert entry["plugins"][0]["versions"][0]["aliasOf"] == "jsonrpc-converter/1.0.0"


@pytest.mark.process
def test_start_up_failures_exit_nonzero_with_one_line(tree: Tree, tmp_path) -> None:
    """A real ``twistd hps``: the operator's view of a bad config, a missing one, a busy port
    (the three run at once: each is a second of interpreter start-up)."""
    config = tmp_path / "hps.yaml"
    config.write_text("colour: blue\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with ThreadPoolExecutor(3) as pool:
            bad, absent, taken = pool.map(
                lambda args: run_twistd(*args, "--root", str(tree.root)),
                [("--config", str(config)), ("--config", str(tmp_path / "absent.yaml")),
                 ("--listen", f"tcp:{port}:interface=127.0.0.1")])
    assert bad.returncode != 0 and "unknown key 'colour'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert absent.returncode != 0 and "cannot read config" in absent.stderr
    assert taken.returncode != 0
    assert f"cannot listen on tcp:{port}" in taken.stderr
    for result in (bad, absent, taken):
        assert "Traceback" not in result.stderr + result.stdout
