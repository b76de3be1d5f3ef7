"""Unit tests of the catalog scan over real temp trees."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hps import catalog as catalog_module
from hps.catalog import (
    MIN_MODULE,
    Catalog,
    NotAModule,
    examine_module,
    scan,
    unloaded,
    version_key,
)
from hps.urls import INVENTORY_FILE
from tests.support.server import Tree, wasm_bytes


def make_tree(tmp_path: Path) -> Tree:
    root = tmp_path / "plugins"
    root.mkdir()
    return Tree(root)


def test_scan_hashes_and_orders(tmp_path: Path) -> None:
    """A scan finds every module with its size, sha256, md5, ETag and URL; names sort by name,
    versions numerically with a pre-release before its release."""
    tree = make_tree(tmp_path)
    body = tree.add("key-rate-limit", "1.0.0", size=3_000_000)
    for version in ("1.10.0", "1.2.0", "2.0.0-rc.1", "2.0.0"):
        tree.add("key-rate-limit", version, size=100)
    tree.add("basic-auth", "1.0.0", size=100)
    catalog = scan(str(tree.root))
    assert catalog.loaded and len(catalog) == 6
    assert catalog.names() == ["basic-auth", "key-rate-limit"]
    versions = [a.version for a in catalog.versions("key-rate-limit")]
    assert versions == ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1", "2.0.0"]
    artifact = catalog.get("key-rate-limit", "1.0.0")
    assert artifact is not None
    assert artifact.size == len(body)
    assert artifact.sha256 == hashlib.sha256(body).hexdigest()
    assert artifact.md5 == hashlib.md5(body).hexdigest()
    assert artifact.etag == f'"{artifact.sha256[:40]}"'
    assert artifact.url == "/plugins/key-rate-limit/1.0.0/plugin.wasm"
    assert catalog.get("key-rate-limit", "9") is None


def test_scan_skips_what_is_not_an_artifact(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.add("good", "1.0.0", size=50)
    tree.add("empty", "1.0.0", body=b"")
    tree.add("text", "1.0.0", body=b"hello world")
    tree.add(".dot", "1.0.0", size=50)
    tree.add("Upper", "1.0.0", size=50)
    tree.add("good", "-latest", size=50)
    (tmp_path / "secret.wasm").write_bytes(wasm_bytes(50))
    (tree.root / "leak" / "1.0.0").mkdir(parents=True)
    os.symlink(tmp_path / "secret.wasm", tree.root / "leak" / "1.0.0" / "plugin.wasm")
    (tree.root / "good" / "1.0.0" / ".plugin.wasm.partial").write_bytes(wasm_bytes(50))
    (tree.root / "README.md").write_text("not a plugin")
    catalog = scan(str(tree.root))
    assert [(a.name, a.version) for a in catalog] == [("good", "1.0.0")]
    reasons = "\n".join(sorted(catalog.skipped))
    assert "empty/1.0.0/plugin.wasm: empty file" in reasons
    assert "text/1.0.0/plugin.wasm: not a WebAssembly module" in reasons
    assert ".dot: hidden or temporary name" in reasons
    assert "Upper: not a valid plugin name or version" in reasons
    assert "good/-latest: not a valid plugin name or version" in reasons
    assert "leak/1.0.0/plugin.wasm: symlink leaves the root" in reasons
    assert "README" not in reasons


def test_aliases_inside_the_root(tmp_path: Path) -> None:
    """A version or name symlinked to another inside the root is served as an alias of it; a
    module reached through a hidden directory is not served."""
    tree = make_tree(tmp_path)
    body = tree.add("jsonrpc-converter", "1.0.0", size=64)
    (tree.root / "json-converter").mkdir()
    os.symlink("../jsonrpc-converter/1.0.0", tree.root / "json-converter" / "1.0.0")
    os.symlink("1.0.0", tree.root / "jsonrpc-converter" / "2.0.0")
    (tree.root / ".store" / "x").mkdir(parents=True)
    (tree.root / ".store" / "x" / "plugin.wasm").write_bytes(body)
    (tree.root / "hidden-target" / "1.0.0").mkdir(parents=True)
    os.symlink("../../.store/x/plugin.wasm", tree.root / "hidden-target" / "1.0.0" / "plugin.wasm")
    catalog = scan(str(tree.root))
    alias = catalog.get("json-converter", "1.0.0")
    assert alias is not None and alias.alias_of == "jsonrpc-converter/1.0.0"
    assert catalog.get("jsonrpc-converter", "2.0.0").alias_of == "jsonrpc-converter/1.0.0"
    assert catalog.get("jsonrpc-converter", "1.0.0").alias_of is None
    assert catalog.get("hidden-target", "1.0.0") is None


def test_rescan_reuses_digests_of_unchanged_files(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.add("a", "1.0.0", size=1000)
    first = scan(str(tree.root))
    path = tree.root / "a" / "1.0.0" / "plugin.wasm"
    stat = path.stat()
    with open(path, "r+b") as handle:  # same size, same inode, mtime put back
        handle.seek(500)
        handle.write(b"X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scan(str(tree.root), first).get("a", "1.0.0").sha256 == first.get("a", "1.0.0").sha256
    assert scan(str(tree.root)).get("a", "1.0.0").sha256 != first.get("a", "1.0.0").sha256


def test_replaced_file_gets_new_identity(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.add("a", "1.0.0", size=1000)
    first = scan(str(tree.root))
    new = tree.add("a", "1.0.0", size=1000, body=wasm_bytes(1000, seed=99))
    second = scan(str(tree.root), first)
    assert second.get("a", "1.0.0").sha256 == hashlib.sha256(new).hexdigest()
    assert second.get("a", "1.0.0").identity != first.get("a", "1.0.0").identity


def test_snapshots_are_immutable(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.add("a", "1.0.0")
    catalog = scan(str(tree.root))
    with pytest.raises(TypeError):
        catalog.artifacts[("b", "1")] = None  # type: ignore[index]
    assert len(catalog) == 1
    assert not unloaded(str(tree.root)).loaded and len(unloaded("x")) == 0
    assert Catalog(root="r").loaded


versions = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))


@given(st.lists(versions, min_size=1, max_size=20, unique=True))
def test_version_order_is_numeric(triples: list[tuple[int, int, int]]) -> None:
    texts = [".".join(map(str, t)) for t in triples]
    random.Random(0).shuffle(texts)
    assert [tuple(map(int, v.split("."))) for v in sorted(texts, key=version_key)] == sorted(
        triples
    )


def test_examine_module_is_the_one_test_of_a_module() -> None:
    """examine_module reads any length in chunks for size, sha256 and md5, and refuses what is
    empty, too short or not starting with the Wasm magic."""
    data = b"\0asm\1\0\0\0" + bytes(range(256)) * 5000  # more than one read
    digests = examine_module(io.BytesIO(data))
    assert (digests.size, digests.sha256, digests.md5) == (
        len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    for bad in (b"", b"\0asm\1\0\0"[:MIN_MODULE - 1], b"<html>not a module</html>"):
        with pytest.raises(NotAModule, match="not a WebAssembly module"):
            examine_module(io.BytesIO(bad))


def test_the_inventory_file_is_read_only_when_sane(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path)
    tree.add("a", "1.0.0")
    inventory = tree.root / INVENTORY_FILE
    assert scan(str(tree.root)).inventory is None  # absent: no reason to note
    assert not scan(str(tree.root)).skipped

    body = b'{"a": {"digest": "sha256:00", "version": "1.0.0", "wasmSha256": "11"}}\n'
    inventory.write_bytes(body)
    first = scan(str(tree.root))
    assert first.inventory is not None and first.inventory.body == body
    assert scan(str(tree.root), first).inventory is first.inventory  # unchanged: not reread

    def reason(catalog: Catalog) -> str:
        assert catalog.inventory is None
        (why,) = [r for r in catalog.skipped if r.startswith(INVENTORY_FILE)]
        return why.removeprefix(f"{INVENTORY_FILE}: ")

    for wrong in (b"[1, 2]", b"{not json", b"\xff\xfe"):
        inventory.write_bytes(wrong)
        assert reason(scan(str(tree.root))) == "not a JSON object"
    inventory.write_bytes(body)
    monkeypatch.setattr(catalog_module, "MAX_INVENTORY", len(body) - 1)
    assert reason(scan(str(tree.root))) == f"larger than {len(body) - 1} bytes"
    monkeypatch.undo()

    # Never followed out of the root, nor to a dotfile in it; a FIFO does not hang the scan.
    inventory.unlink()
    (tmp_path / "outside.json").write_bytes(body)
    inventory.symlink_to(tmp_path / "outside.json")
    assert reason(scan(str(tree.root))) == "symlink leaves the root"
    inventory.unlink()
    (tree.root / ".hidden.json").write_bytes(body)
    inventory.symlink_to(".hidden.json")
    assert reason(scan(str(tree.root))) == "points at a hidden or temporary file"
    inventory.unlink()
    os.mkfifo(inventory)
    assert reason(scan(str(tree.root))) == "not a regular file"
    inventory.unlink()
    inventory.mkdir()
    assert reason(scan(str(tree.root))) == "unreadable (Is a directory)"
