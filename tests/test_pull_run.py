"""Pulling a whole plan (against a real registry on 127.0.0.1): aliases, ``--locked``,
``--use-local``, and failures that are one line each and leave nothing half-written."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

from tests.support.registry import (
    Registry,
    Workspace,
    free_port,
    sha256,
    wasm,
)

ROOT = Path(__file__).resolve().parent.parent


def test_version_and_name_aliases_are_relative_symlinks(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("alias/key-auth", "2.0.0", wasm("key"))
    registry.push_wasm("alias/jsonrpc-converter", "1.0.0", wasm("rpc"))
    manifest = """
plugins:
  key-auth:
    aliases: ['1.0.0', '2.0.1']
  json-converter:
    from: jsonrpc-converter
    versions: ['1.0.0', '2.0.0']
"""
    entries = {
        "key-auth": registry.ref("alias/key-auth", "2.0.0"),
        "jsonrpc-converter": registry.ref("alias/jsonrpc-converter", "1.0.0"),
    }
    result = workspace.pull(entries, manifest)
    assert result.code == 0, result.err
    out = workspace.out
    assert os.readlink(out / "key-auth/1.0.0/plugin.wasm") == "../2.0.0/plugin.wasm"
    assert workspace.module("key-auth", "2.0.1") == wasm("key")
    link = out / "json-converter/2.0.0/plugin.wasm"
    assert os.readlink(link) == "../../jsonrpc-converter/1.0.0/plugin.wasm"
    assert link.read_bytes() == wasm("rpc")
    lock = workspace.locked()
    assert lock["key-auth/2.0.0"]["versions"] == ["2.0.0", "1.0.0", "2.0.1"]
    assert lock["jsonrpc-converter/1.0.0"]["servedAs"] == {"json-converter": ["1.0.0", "2.0.0"]}
    assert os.readlink(out / "key-auth/1.0.0/plugin.wasm.gz") == "../2.0.0/plugin.wasm.gz"
    # Pulling again swaps the links in place.
    assert workspace.pull(entries, manifest).code == 0
    assert workspace.leftovers() == []


def test_name_alias_of_a_failed_pull_fails_too(registry: Registry, workspace: Workspace) -> None:
    result = workspace.pull(
        {"jsonrpc-converter": registry.ref("alias/absent", "1.0.0")},
        "plugins:\n  json-converter: {from: jsonrpc-converter, versions: ['1.0.0']}\n",
    )
    assert result.code == 1
    assert (
        "hps pull: FAILED json-converter/1.0.0: not served: jsonrpc-converter/1.0.0 was not pulled"
        in result.failures()
    )


def test_locked_pulls_the_locked_digest_even_after_a_retag(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("lock/a", "1.0.0", wasm("original"))
    entries = {"a": registry.ref("lock/a", "1.0.0")}
    assert workspace.pull(entries).code == 0
    before = workspace.lock.read_bytes()
    registry.push_wasm("lock/a", "1.0.0", wasm("retagged"))
    (workspace.out / "a/1.0.0/plugin.wasm").unlink()
    result = workspace.pull(entries, None, "--locked")
    assert result.code == 0, result.err
    assert workspace.module("a", "1.0.0") == wasm("original")
    assert workspace.lock.read_bytes() == before  # --locked reads the lock, never writes it


def test_locked_fails_on_drift(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("drift/a", "1.0.0", wasm("a"))
    registry.push_wasm("drift/a", "1.1.0", wasm("a11"))
    registry.push_wasm("drift/b", "1.0.0", wasm("b"))
    entries = {"a": registry.ref("drift/a", "1.0.0"), "b": registry.ref("drift/b", "1.0.0")}
    assert workspace.pull(entries).code == 0
    doc = json.loads(workspace.lock.read_text())
    doc["plugins"]["b/1.0.0"]["wasmSha256"] = "0" * 64
    workspace.lock.write_text(json.dumps(doc))
    result = workspace.pull(entries, None, "--locked")
    assert result.code == 1
    assert result.failures() == [
        f"hps pull: FAILED b/1.0.0: module sha256 {sha256(wasm('b'))[7:]} differs from"
        f" the expected {'0' * 64}"
    ]
    assert workspace.leftovers() == []


def test_locked_input_errors_come_before_any_download(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("early/a", "1.0.0", wasm("a"))
    registry.push_wasm("early/a", "1.1.0", wasm("a11"))
    registry.push_wasm("early/b", "1.0.0", wasm("b"))
    entries = {"a": registry.ref("early/a", "1.0.0"), "b": registry.ref("early/b", "1.0.0")}
    assert workspace.pull(entries).code == 0
    shutil.rmtree(workspace.out)
    cases = [
        ({"a": registry.ref("early/a", "1.0.0")}, "b/1.0.0: in the lock, not in the inputs"),
        ({**entries, "c": registry.ref("early/b", "1.0.0")}, "c/1.0.0: not in the lock"),
        (
            {**entries, "a": registry.ref("early/a", "1.1.0")},
            "a/1.1.0: not in the lock (and 1 more)",
        ),
    ]
    for changed, expected in cases:
        result = workspace.pull(changed, None, "--locked")
        assert (result.code, len(result.err.splitlines())) == (2, 1), result.err
        assert f"--locked: {expected}" in result.err
        assert not workspace.out.exists()  # nothing downloaded


def test_locked_without_a_lock_is_bad_input(registry: Registry, workspace: Workspace) -> None:
    result = workspace.pull({"a": registry.ref("drift/a", "1.0.0")}, None, "--locked")
    assert result.code == 2
    assert result.err.startswith("hps pull: cannot read lock")
    assert len(result.err.splitlines()) == 1


def test_use_local_keeps_a_valid_module(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("local/a", "1.0.0", wasm("registry"))
    registry.push_wasm("local/b", "1.0.0", wasm("b"))
    registry.push_wasm("local/c", "1.0.0", wasm("c"))
    for name, data in (("a", wasm("local")), ("b", b"<html>not wasm</html>")):
        (workspace.out / name / "1.0.0").mkdir(parents=True)
        (workspace.out / name / "1.0.0/plugin.wasm").write_bytes(data)
    entries = {n: registry.ref(f"local/{n}", "1.0.0") for n in "abc"}
    result = workspace.pull(entries, None, "--use-local")
    assert result.code == 0, result.err
    assert workspace.module("a", "1.0.0") == wasm("local")
    assert workspace.module("b", "1.0.0") == wasm("b")  # corrupt locally: downloaded again
    assert workspace.module("c", "1.0.0") == wasm("c")  # missing locally: downloaded
    assert "b/1.0.0: local " in result.err and "downloading it again" in result.err
    assert workspace.locked()["a/1.0.0"]["source"] == "local"
    assert workspace.locked()["b/1.0.0"]["source"] == "registry"
    assert "kept local a 1.0.0" in result.err
    gz = workspace.out / "a/1.0.0/plugin.wasm.gz"
    assert gzip.decompress(gz.read_bytes()) == wasm("local")


def test_failures_are_one_line_each_and_leave_no_partial_file(
    registry: Registry, workspace: Workspace, pauses: list[float]
) -> None:
    registry.push_wasm("fail/good", "1.0.0", wasm("good"))
    registry.push_wasm("fail/html", "1.0.0", b"<html>oops</html>")
    registry.push_image("fail/two", "1.0.0", {"a.wasm": wasm("1"), "b/plugin.wasm": wasm("2")})
    registry.push_image("fail/none", "1.0.0", {"README": b"no module here"})
    registry.push_wasm("fail/pinned", "1.0.0", wasm("pinned"))
    wrong = "sha256:" + "0" * 64
    result = workspace.pull(
        {
            "good": registry.ref("fail/good", "1.0.0"),
            "missing-tag": registry.ref("fail/good", "9.9.9"),
            "html": registry.ref("fail/html", "1.0.0"),
            "two": registry.ref("fail/two", "1.0.0"),
            "none": registry.ref("fail/none", "1.0.0"),
            "pinned": registry.ref("fail/pinned", "1.0.0"),
            "unreachable": f"oci://127.0.0.1:{free_port()}/fail/x:1.0.0",
        },
        f"plugins:\n  pinned:\n    digest: {wrong}\n",
    )
    assert result.code == 1
    failures = {
        line.split(": ")[1]
        .removeprefix("FAILED ")
        .removesuffix("/1.0.0")
        .removesuffix("/9.9.9"): line
        for line in result.failures()
    }
    assert sorted(failures) == ["html", "missing-tag", "none", "pinned", "two", "unreachable"]
    assert "tag 9.9.9 not found" in failures["missing-tag"]
    assert "not a Wasm module" in failures["html"]
    assert "holds 2 *.wasm files" in failures["two"]
    assert "holds 0 *.wasm files" in failures["none"]
    assert f"pinned {wrong}" in failures["pinned"]
    assert "registry unreachable" in failures["unreachable"]
    assert pauses == [0.5]  # only the unreachable registry is worth a retry (--retries 1)
    assert "Traceback" not in result.err
    assert workspace.module("good", "1.0.0") == wasm("good")
    assert sorted(os.listdir(workspace.out)) == ["good"]
    assert workspace.leftovers() == []
    assert list(workspace.locked()) == ["good/1.0.0"]


def test_other_bytes_for_a_version_in_the_tree_need_replace(
    registry: Registry, workspace: Workspace
) -> None:
    """The gateway never fetches a cached URL again: a retag upstream must not slip into the
    tree. Refused (both digests, exit 1, the tree and lock as they were), then --replace."""
    registry.push_wasm("retag/a", "1.0.0", wasm("first"))
    registry.push_wasm("retag/b", "1.0.0", wasm("b"))
    entries = {"a": registry.ref("retag/a", "1.0.0"), "b": registry.ref("retag/b", "1.0.0")}
    manifest = "plugins:\n  a:\n    aliases: ['0.9.0']\n"
    assert workspace.pull(entries, manifest).code == 0
    lock = workspace.lock.read_bytes()
    gz = (workspace.out / "a/1.0.0/plugin.wasm.gz").read_bytes()
    assert workspace.pull(entries, manifest).code == 0, "the same bytes again: nothing to refuse"

    registry.push_wasm("retag/a", "1.0.0", wasm("moved"))
    result = workspace.pull(entries, manifest)
    assert result.code == 1
    first, moved = hexdigest(wasm("first")), hexdigest(wasm("moved"))
    assert result.failures() == [
        f"hps pull: FAILED a/1.0.0: the tree serves sha256 {first} here, the registry has "
        f"{moved}; not replaced: gateways that cached the URL would keep the old bytes (use a "
        "new version, or --replace)"]
    assert workspace.module("a", "1.0.0") == wasm("first")
    assert workspace.module("a", "0.9.0") == wasm("first")
    assert (workspace.out / "a/1.0.0/plugin.wasm.gz").read_bytes() == gz
    assert workspace.module("b", "1.0.0") == wasm("b")
    assert workspace.lock.read_bytes() == lock  # still describes the tree
    assert workspace.leftovers() == []

    result = workspace.pull(entries, manifest, "--replace")
    assert result.code == 0, result.err
    assert workspace.module("a", "1.0.0") == wasm("moved")
    assert workspace.module("a", "0.9.0") == wasm("moved")
    assert gzip.decompress((workspace.out / "a/1.0.0/plugin.wasm.gz").read_bytes()) == wasm(
        "moved")
    assert workspace.locked()["a/1.0.0"]["wasmSha256"] == moved


def test_an_alias_moved_onto_other_bytes_needs_replace(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("realias/a", "1.0.0", wasm("one"))
    registry.push_wasm("realias/a", "2.0.0", wasm("two"))
    one = {"a": registry.ref("realias/a", "1.0.0")}
    assert workspace.pull(one, "plugins:\n  a:\n    aliases: ['latest']\n").code == 0
    two = {"a": registry.ref("realias/a", "2.0.0")}
    result = workspace.pull(two, "plugins:\n  a:\n    aliases: ['latest']\n")
    assert result.code == 1
    assert [line.split(": ")[1] for line in result.failures()] == ["FAILED a/latest"]
    assert f"serves sha256 {hexdigest(wasm('one'))} here" in result.failures()[0]
    assert workspace.module("a", "latest") == wasm("one")
    assert workspace.module("a", "2.0.0") == wasm("two")  # a new version: nothing to refuse
    result = workspace.pull(two, "plugins:\n  a:\n    aliases: ['latest']\n", "--replace")
    assert result.code == 0, result.err
    assert workspace.module("a", "latest") == wasm("two")


def hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
