"""Unit: the pages and documents, from a catalog: what they say, and that they escape."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hps.catalog import scan
from hps.misses import Miss
from hps.pages import (
    console_lines,
    human_size,
    index_json,
    landing_page,
    metadata_text,
    not_here_text,
    plugin_page,
    plugins_page,
    version_page,
)
from tests.support.server import Tree

STAMP = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    tree = Tree(tmp_path)
    for name, version in (("key-auth", "1.0.0"), ("key-auth", "2.0.0"), ("basic-auth", "1.0.0")):
        tree.add(name, version, size=3000)
        os.utime(tmp_path / name / version / "plugin.wasm", (STAMP, STAMP))
    return tree


@pytest.mark.parametrize(("size", "text"), [
    (100, "100 bytes"), (2048, "2.0 KiB"), (3 << 20, "3.0 MiB")])
def test_human_size(size: int, text: str) -> None:
    """Sizes on the pages: bytes, then KiB and MiB with one decimal."""
    assert human_size(size) == text


def test_listings_link_every_plugin_and_module(tree: Tree) -> None:
    catalog = scan(str(tree.root))
    top = plugins_page(catalog).decode()
    assert top.startswith("<!DOCTYPE html>") and "2 plugins, 3 modules" in top
    assert 'href="/plugins/basic-auth/"' in top and "1.0.0, 2.0.0" in top
    one = plugin_page(catalog, "key-auth").decode()
    assert 'href="/plugins/key-auth/2.0.0/plugin.wasm"' in one
    artifact = catalog.get("key-auth", "1.0.0")
    page = version_page(artifact).decode()
    assert 'href="/plugins/key-auth/1.0.0/metadata.txt"' in page
    assert artifact.sha256 in page and "2023-11-14T22:13:20Z" in page


def test_the_landing_page_names_the_console_settings_and_escapes(tree: Tree) -> None:
    catalog = scan(str(tree.root))
    base = "http://hps.example:8080"
    assert console_lines(base) == [
        "HIGRESS_ADMIN_WASM_PLUGIN_CUSTOM_IMAGE_URL_PATTERN="
        "http://hps.example:8080/plugins/${name}/${version}/plugin.wasm",
        "MCP_SERVER_WASM_IMAGE_URL=http://hps.example:8080/plugins/mcp-server/1.0.0/plugin.wasm",
    ]
    page = landing_page(catalog, base).decode()
    assert "Pull-through is off" in page and "Recently asked for" not in page
    hostile = [Miss("<script>", "1.0.0", 3, STAMP)]
    page = landing_page(catalog, base, hostile, (("oci://r/${name}:${version}",), ("ai-*",)))
    assert b"<script>" not in page and b"&lt;script&gt;" in page
    assert b"Pull-through is on" in page and b"<code>ai-*</code>" in page
    assert b"2023-11-14T22:13:20Z" in page


def test_index_json_describes_each_module(tree: Tree) -> None:
    catalog = scan(str(tree.root))
    body = (tree.root / "basic-auth" / "1.0.0" / "plugin.wasm").read_bytes()
    document = json.loads(index_json(catalog, missing=[Miss("x", "9", 2, STAMP)]))
    assert [p["name"] for p in document["plugins"]] == ["basic-auth", "key-auth"]
    assert document["plugins"][0]["versions"] == [{
        "version": "1.0.0", "url": "/plugins/basic-auth/1.0.0/plugin.wasm", "size": 3000,
        "sha256": hashlib.sha256(body).hexdigest(), "md5": hashlib.md5(body).hexdigest(),
        "lastModified": "2023-11-14T22:13:20Z"}]
    assert document["missing"] == [{"name": "x", "version": "9", "requests": 2,
                                    "lastRequested": "2023-11-14T22:13:20Z"}]
    assert "missing" not in json.loads(index_json(catalog, ["key-auth"]))


def test_metadata_has_upstreams_lines_plus_sha256(tree: Tree) -> None:
    artifact = scan(str(tree.root)).get("basic-auth", "1.0.0")
    body = (tree.root / "basic-auth" / "1.0.0" / "plugin.wasm").read_bytes()
    assert metadata_text(artifact).decode().splitlines() == [
        "Plugin Name: basic-auth", "Size: 3000 bytes", "Last Modified: 2023-11-14T22:13:20",
        "Created: 2023-11-14T22:13:20", f"MD5: {hashlib.md5(body).hexdigest()}",
        f"SHA256: {hashlib.sha256(body).hexdigest()}"]


def test_a_miss_says_what_is_here_and_the_alias_that_would_serve_it(tree: Tree) -> None:
    catalog = scan(str(tree.root))
    assert not_here_text(catalog, "nope", "1.0.0") == (
        "not found: nope 1.0.0\nno version of nope is here\n")
    text = not_here_text(catalog, "key-auth", "2.0.1")
    assert "versions here: 1.0.0, 2.0.0" in text
    assert "      aliases: ['2.0.1']  # served with 2.0.0's module" in text


def test_a_miss_of_a_name_alias_suggests_one_more_version(tree: Tree) -> None:
    (tree.root / "json-converter").mkdir()
    os.symlink("../basic-auth/1.0.0", tree.root / "json-converter" / "1.0.0")
    text = not_here_text(scan(str(tree.root)), "json-converter", "2.0.0")
    assert "      from: basic-auth\n      versions: ['1.0.0', '2.0.0']" in text
