"""Unit: the URL layout: spelling URLs, splitting paths, and the fast path's strict targets."""

from __future__ import annotations

import pytest

from hps import urls

DIGEST = "sha256:" + "ab" * 32


def test_urls_are_spelled_one_way() -> None:
    assert urls.plugin_url("key-auth") == "/plugins/key-auth/"
    assert urls.version_url("key-auth", "1.0.0") == "/plugins/key-auth/1.0.0/"
    assert urls.file_url("key-auth", "1.0.0") == "/plugins/key-auth/1.0.0/plugin.wasm"
    assert urls.file_url("a", "1", urls.METADATA_FILE) == "/plugins/a/1/metadata.txt"
    assert urls.index_url() == "/plugins/index.json"
    assert urls.index_url("a") == "/plugins/a/index.json"


@pytest.mark.parametrize(("path", "parts"), [
    ("/plugins/a/1.0.0/plugin.wasm", ("a", "1.0.0", "plugin.wasm")),
    ("/plugins/a/1.0.0/metadata.txt?x=1", ("a", "1.0.0", "metadata.txt")),
    ("/plugins/a/1.0.0/", None),
    ("/plugins/a/plugin.wasm", None),
    ("/other/a/1.0.0/plugin.wasm", None),
    ("plugins/a/1.0.0/plugin.wasm/x", None),
])
def test_split_file_path(path: str, parts: tuple | None) -> None:
    """split_file_path gives (name, version, file) for a file URL and None for anything else."""
    assert urls.split_file_path(path) == parts


@pytest.mark.parametrize(("target", "found"), [
    (b"/plugins/key-auth/1.0.0/plugin.wasm", ("key-auth", "1.0.0")),
    (b"/plugins/odd/2.0.0_rc1/plugin.wasm", ("odd", "2.0.0_rc1")),  # any OCI tag
    (b"/plugins/bare/" + DIGEST.encode() + b"/plugin.wasm", ("bare", DIGEST)),
    (b"/plugins/a/v1.2.3+build.5/plugin.wasm", ("a", "v1.2.3+build.5")),
    (b"/plugins/Key/1.0.0/plugin.wasm", None),  # names are lower case
    (b"/plugins/../1.0.0/plugin.wasm", None),
    (b"/plugins/a/.1/plugin.wasm", None),
    (b"/plugins/a%2Fb/1.0.0/plugin.wasm", None),  # needs decoding: twisted.web's job
    (b"/plugins/a/1.0.0/plugin.wasm?x", None),
    (b"/plugins/a/1.0.0/metadata.txt", None),
    (b"/plugins/a/b/1.0.0/plugin.wasm", None),
    (b"/plugins/" + b"a" * 200 + b"/1.0.0/plugin.wasm", None),
])
def test_module_targets(target: bytes, found: tuple | None) -> None:
    """module_target gives (name, version) only for an exact, undecoded module URL."""
    assert urls.module_target(target) == found
