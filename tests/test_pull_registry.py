"""``hps pull`` against a real distribution registry on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hps.catalog import scan
from hps.pull.errors import DigestMismatch, PullError
from hps.pull.fetch import Options, fetch_to
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
    assert lock["basic-auth/1.0.0"]["manifestDigest"] == image
    assert lock["basic-auth/1.0.0"]["wasmSha256"] == sha256(wasm("basic")).removeprefix("sha256:")
    assert lock["key-auth/2.0.0"]["layerDigest"] == sha256(wasm("key-auth"))
    assert lock["key-auth/2.0.0"]["reference"] == registry.ref("tag/key-auth", "2.0.0")
    assert lock["key-auth/2.0.0"]["versions"] == ["2.0.0"]
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


def test_digest_only_lines_and_any_oci_tag_are_served(
    registry: Registry, workspace: Workspace, serve
) -> None:
    plain = registry.push_wasm("dig/plain", "x1", wasm("plain"))
    bare = registry.push_wasm("dig/bare", "x3", wasm("bare"))
    rc = registry.push_wasm("dig/odd", "2.0.0_rc1", wasm("rc"))
    registry.push_wasm("dig/odd", "latest", wasm("latest"))
    host = registry.host
    workspace.properties.write_text(
        f"plain=oci://{host}/dig/plain@{plain}\n"
        f"bare=oci://{host}/dig/bare@{bare}\n"
        f"odd=oci://{host}/dig/odd:latest\n"
        f"odd=oci://{host}/dig/odd:2.0.0_rc1@{rc}\n"
    )
    result = workspace.pull(None, "plugins:\n  plain:\n    version: '1.2.0'\n")
    assert result.code == 0, result.err
    assert workspace.module("plain", "1.2.0") == wasm("plain")
    assert workspace.module("bare", bare) == wasm("bare")  # where upstream puts it
    assert workspace.module("odd", "latest") == wasm("latest")
    assert workspace.module("odd", "2.0.0_rc1") == wasm("rc")
    assert workspace.locked()["plain/1.2.0"]["manifestDigest"] == plain
    server = serve("--root", str(workspace.out))
    for path, body in (
        (f"bare/{bare}", wasm("bare")),
        ("odd/latest", wasm("latest")),
        ("odd/2.0.0_rc1", wasm("rc")),
    ):
        reply = server.get(f"/plugins/{path}/plugin.wasm")
        assert (reply.status, reply.body) == (200, body), path


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
    assert "Traceback" not in result.err
    assert workspace.module("good", "1.0.0") == wasm("good")
    assert sorted(os.listdir(workspace.out)) == ["good"]
    assert workspace.leftovers() == []
    assert list(workspace.locked()) == ["good/1.0.0"]


def test_index_child_is_the_same_on_every_machine(registry: Registry, workspace: Workspace) -> None:
    def child(tag: str) -> dict:
        digest = registry.push_wasm("index/a", tag, wasm(tag))
        size = len(json.dumps(_fetch_manifest(registry, "index/a", digest)))
        return {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}

    def platform(entry: dict, os_name: str, arch: str) -> dict:
        return {**entry, "platform": {"os": os_name, "architecture": arch}}

    single = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child("only")]}
    registry.push_manifest("index/a", "1.0.0", single, OCI_INDEX)
    multi = {
        **single,
        "manifests": [
            platform(child("attestation"), "unknown", "unknown"),
            platform(child("arm64"), "linux", "arm64"),
            platform(child("amd64"), "linux", "amd64"),
        ],
    }
    registry.push_manifest("index/a", "2.0.0", multi, OCI_INDEX)
    result = workspace.pull(
        {"one": registry.ref("index/a", "1.0.0"), "two": registry.ref("index/a", "2.0.0")}
    )
    assert result.code == 0, result.err
    assert workspace.module("one", "1.0.0") == wasm("only")
    assert workspace.module("two", "2.0.0") == wasm("amd64")  # on arm64 build machines too


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
    assert catalog.get("key-auth", "1.0.0").sha256 == lock["key-auth/2.0.0"]["wasmSha256"]


def test_fetch_to_is_one_verified_atomic_module(registry: Registry, tmp_path: Path) -> None:
    """The function pull-through and hps pull share: reference in, module and .gz out."""
    registry.push_wasm("one/a", "1.0.0", wasm("one a"))
    target = tmp_path / "cache" / "a" / "1.0.0" / "plugin.wasm"
    options = Options(plain_http=True, retries=0, timeout=5)
    fetched = fetch_to(registry.ref("one/a", "1.0.0"), target, options)
    assert target.read_bytes() == wasm("one a")
    assert gzip.decompress(target.with_name("plugin.wasm.gz").read_bytes()) == wasm("one a")
    assert fetched.sha256 == sha256(wasm("one a")).removeprefix("sha256:")
    assert fetched.size == len(wasm("one a"))
    registry.push_wasm("one/a", "1.0.0", wasm("moved"))
    with pytest.raises(DigestMismatch, match="differs from the expected"):
        fetch_to(registry.ref("one/a", "1.0.0"), target, options, expect_sha256=fetched.sha256)
    assert target.read_bytes() == wasm("one a")  # untouched
    with pytest.raises(PullError, match="does not name a registry host"):
        fetch_to("oci://nohost:1", target, options)
    assert sorted(os.listdir(target.parent)) == ["plugin.wasm", "plugin.wasm.gz"]
