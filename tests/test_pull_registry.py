"""``hps pull`` against a real distribution registry on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hps.catalog import scan
from tests.support.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    Workspace,
    free_port,
    sha256,
    wasm,
)

ROOT = Path(__file__).resolve().parent.parent


def test_pulls_both_image_styles_by_tag(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("tag/key-auth", "2.0.0", wasm("key-auth"))
    image = registry.push_image("tag/basic-auth", "1.0.0", {"plugin.wasm": wasm("basic")})
    result = workspace.pull(
        {
            "key-auth": registry.ref("tag/key-auth", "2.0.0"),
            "basic-auth": registry.ref("tag/basic-auth", "1.0.0"),
        }
    )
    assert result.code == 0, result.err
    assert workspace.module("key-auth", "2.0.0") == wasm("key-auth")
    assert workspace.module("basic-auth", "1.0.0") == wasm("basic")
    lock = workspace.locked()
    assert lock["basic-auth"]["manifestDigest"] == image
    assert lock["basic-auth"]["wasmSha256"] == sha256(wasm("basic")).removeprefix("sha256:")
    assert lock["key-auth"]["layerDigest"] == sha256(wasm("key-auth"))
    assert lock["key-auth"]["reference"] == registry.ref("tag/key-auth", "2.0.0")
    assert lock["key-auth"]["versions"] == ["2.0.0"]
    assert workspace.leftovers() == []


def test_console_script_runs_as_a_process(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("proc/a", "1.0.0", wasm("proc"))
    workspace.properties.write_text(f"a={registry.ref('proc/a', '1.0.0')}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(workspace.root)}
    argv = ["--plain-http", "--properties", str(workspace.properties)]
    argv += ["--output", str(workspace.out)]
    done = subprocess.run(
        [sys.executable, "-m", "hps.cli", "pull", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "pulled a 1.0.0" in done.stderr
    assert workspace.module("a", "1.0.0") == wasm("proc")
    assert (workspace.root / "plugins.lock.json").exists()  # beside the properties


def test_a_second_pull_replaces_the_module_atomically(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("again/a", "1.0.0", wasm("one"))
    entries = {"a": registry.ref("again/a", "1.0.0")}
    assert workspace.pull(entries).code == 0
    registry.push_wasm("again/a", "1.0.0", wasm("two"))
    assert workspace.pull(entries).code == 0
    assert workspace.module("a", "1.0.0") == wasm("two")
    assert workspace.leftovers() == []


def test_digest_pin_with_version_from_manifest_or_annotation(
    registry: Registry, workspace: Workspace
) -> None:
    plain = registry.push_wasm("dig/plain", "x1", wasm("plain"))
    annotated = registry.push_wasm(
        "dig/annotated", "x2", wasm("ann"), {"org.opencontainers.image.version": "3.1.4"}
    )
    bare = registry.push_wasm("dig/bare", "x3", wasm("bare"))
    host = registry.host
    result = workspace.pull(
        {
            "plain": f"oci://{host}/dig/plain@{plain}",
            "annotated": f"oci://{host}/dig/annotated@{annotated}",
            "bare": f"oci://{host}/dig/bare@{bare}",
        },
        "plugins:\n  plain:\n    version: '1.2.0'\n",
    )
    assert result.code == 1
    assert workspace.module("plain", "1.2.0") == wasm("plain")
    assert workspace.module("annotated", "3.1.4") == wasm("ann")
    assert result.failures() == [
        "hps pull: FAILED bare: pinned by digest and no version known:"
        " set 'version' in the manifest"
    ]
    assert workspace.locked()["plain"]["manifestDigest"] == plain


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
    assert lock["key-auth"]["versions"] == ["2.0.0", "1.0.0", "2.0.1"]
    assert lock["jsonrpc-converter"]["servedAs"] == {"json-converter": ["1.0.0", "2.0.0"]}
    # Pulling again swaps the links in place.
    assert workspace.pull(entries, manifest).code == 0
    assert workspace.leftovers() == []


def test_name_alias_of_a_failed_pull_fails_too(registry: Registry, workspace: Workspace) -> None:
    result = workspace.pull(
        {"jsonrpc-converter": registry.ref("alias/absent", "1.0.0")},
        "plugins:\n  json-converter: {from: jsonrpc-converter, versions: ['1.0.0']}\n",
    )
    assert result.code == 1
    assert "hps pull: FAILED json-converter: not served: jsonrpc-converter was not pulled" in (
        result.failures()
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
    doc["plugins"]["b"]["wasmSha256"] = "0" * 64
    workspace.lock.write_text(json.dumps(doc))
    entries["a"] = registry.ref("drift/a", "1.1.0")
    entries["c"] = registry.ref("drift/b", "1.0.0")
    result = workspace.pull(entries, None, "--locked")
    assert result.code == 1
    failures = "\n".join(result.failures())
    assert "FAILED a: reference is" in failures and "the lock says" in failures
    assert "FAILED b: module sha256" in failures
    assert "FAILED c: not in the lock" in failures
    assert not (workspace.out / "a/1.1.0").exists()
    assert workspace.leftovers() == []


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
    assert result.code == 1
    assert workspace.module("a", "1.0.0") == wasm("local")
    assert workspace.module("c", "1.0.0") == wasm("c")  # missing locally: downloaded
    assert [f.split(": ")[1] for f in result.failures()] == ["FAILED b"]
    assert "not a Wasm module" in result.failures()[0]
    assert workspace.locked()["a"]["source"] == "local"
    assert "kept local a 1.0.0" in result.err


def test_failures_are_one_line_each_and_leave_no_partial_file(
    registry: Registry, workspace: Workspace
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
    failures = {line.split(": ")[1].removeprefix("FAILED "): line for line in result.failures()}
    assert sorted(failures) == ["html", "missing-tag", "none", "pinned", "two", "unreachable"]
    assert "tag 9.9.9 not found" in failures["missing-tag"]
    assert "not a Wasm module" in failures["html"]
    assert "holds 2 *.wasm files" in failures["two"]
    assert "holds 0 *.wasm files" in failures["none"]
    assert f"pinned {wrong}" in failures["pinned"]
    assert "registry unreachable" in failures["unreachable"]
    assert "Traceback" not in result.err
    assert workspace.module("good", "1.0.0") == wasm("good")
    assert sorted(os.listdir(workspace.out)) == ["good"]
    assert workspace.leftovers() == []
    assert list(workspace.locked()) == ["good"]


def test_index_with_one_entry_or_this_platform(registry: Registry, workspace: Workspace) -> None:
    child = registry.push_wasm("index/a", "child", wasm("child"))
    size = len(json.dumps(_fetch_manifest(registry, "index/a", child)))
    single = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": size}],
    }
    registry.push_manifest("index/a", "1.0.0", single, OCI_INDEX)
    ambiguous = {
        **single,
        "manifests": [
            {**single["manifests"][0], "platform": {"os": "plan9", "architecture": arch}}
            for arch in ("mips", "sparc")
        ],
    }
    registry.push_manifest("index/a", "2.0.0", ambiguous, OCI_INDEX)
    result = workspace.pull(
        {"one": registry.ref("index/a", "1.0.0"), "two": registry.ref("index/a", "2.0.0")}
    )
    assert workspace.module("one", "1.0.0") == wasm("child")
    assert result.code == 1
    assert "index has 2 entries ['plan9/mips', 'plan9/sparc'], none for linux/" in result.err


def _fetch_manifest(registry: Registry, repo: str, digest: str) -> dict:
    import urllib.request

    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def test_bad_input_is_one_line_and_exit_2(workspace: Workspace) -> None:
    result = workspace.pull(None)
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert "cannot read properties" in result.err
    workspace.properties.write_text("a=oci://127.0.0.1:1/a:1.0.0\n")
    cases = [
        (["--jobs", "0"], "--jobs must be between"),
        (["--frobnicate"], "unrecognized arguments"),
        (["--manifest", str(workspace.root / "absent.yaml")], "cannot read manifest"),
    ]
    for flags, expected in cases:
        result = workspace.pull(None, None, *flags)
        assert result.code == 2, flags
        assert expected in result.err
        assert len(result.err.splitlines()) == 1, result.err
    result = workspace.pull(None, "plugins: [")
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert "malformed YAML" in result.err


def test_the_catalog_serves_what_pull_wrote(registry: Registry, workspace: Workspace) -> None:
    registry.push_wasm("cat/key-auth", "2.0.0", wasm("cat-key"))
    registry.push_image("cat/jsonrpc-converter", "1.0.0", {"plugin.wasm": wasm("cat-rpc")})
    result = workspace.pull(
        {
            "key-auth": registry.ref("cat/key-auth", "2.0.0"),
            "jsonrpc-converter": registry.ref("cat/jsonrpc-converter", "1.0.0"),
        },
        "plugins:\n  key-auth: {aliases: ['1.0.0']}\n"
        "  json-converter: {from: jsonrpc-converter, versions: ['1.0.0']}\n",
    )
    assert result.code == 0, result.err
    catalog = scan(str(workspace.out))
    assert catalog.skipped == frozenset()
    served = {(a.name, a.version): a.alias_of for a in catalog}
    assert served == {
        ("key-auth", "2.0.0"): None,
        ("key-auth", "1.0.0"): "key-auth/2.0.0",
        ("jsonrpc-converter", "1.0.0"): None,
        ("json-converter", "1.0.0"): "jsonrpc-converter/1.0.0",
    }
    lock = workspace.locked()
    assert catalog.get("key-auth", "1.0.0").sha256 == lock["key-auth"]["wasmSha256"]
