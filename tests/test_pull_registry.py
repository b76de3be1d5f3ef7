"""``hps pull`` against a real distribution registry on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

from hps.catalog import scan
from tests.support.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    Workspace,
    sha256,
    wasm,
)

ROOT = Path(__file__).resolve().parent.parent


def test_pulls_both_image_styles_by_tag(registry: Registry, workspace: Workspace) -> None:
    """A Wasm-layer artifact and a tar+gzip image both pull by tag, and the lock records their
    digests."""
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


def test_a_second_pull_replaces_the_module_atomically(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("again/a", "1.0.0", wasm("one"))
    entries = {"a": registry.ref("again/a", "1.0.0")}
    assert workspace.pull(entries).code == 0
    registry.push_wasm("again/a", "1.0.0", wasm("two"))
    assert workspace.pull(entries).code == 1  # other bytes, same version: only when asked
    assert workspace.pull(entries, None, "--replace").code == 0
    assert workspace.module("a", "1.0.0") == wasm("two")
    assert workspace.leftovers() == []


def test_digest_only_lines_and_any_oci_tag_are_served(
    registry: Registry, workspace: Workspace, harness
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
    server = harness(workspace.out)
    for path, body in (
        (f"bare/{bare}", wasm("bare")),
        ("odd/latest", wasm("latest")),
        ("odd/2.0.0_rc1", wasm("rc")),
    ):
        reply = server.get(f"/plugins/{path}/plugin.wasm")
        assert (reply.status, reply.body) == (200, body), path


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

