"""Upstream's snapshot mode: ``--snapshot`` + ``--unmanaged-lock``, files shaped as upstream's."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

from hps.catalog import scan
from hps.pull.cli import main
from tests.support.registry import Registry, Workspace, sha256, wasm


def _item(registry: Registry, name: str, digest: str, aliases: list[str], **extra) -> dict:
    return {
        "logicalId": name,
        "image": name,
        "version": "2.0.0",
        "ociRef": f"{registry.host}/snap/{name}:2.0.0",  # upstream writes it without oci://
        "digest": digest,
        "consumers": {"pluginServer": {"inventoryKey": name, "httpPath": name, "aliases": aliases}},
        **extra,
    }


@pytest.fixture(name="upstream")
def upstream_fixture(registry: Registry, workspace: Workspace) -> dict:
    """A snapshot managing two plugins, and one unmanaged properties line with its lock."""
    digests = {
        name: registry.push_wasm(f"snap/{name}", "2.0.0", wasm(f"snap {name}"))
        for name in ("key-auth", "jsonrpc-converter", "basic-auth")
    }
    snapshot = {
        "schemaVersion": 1,
        "plugins": [
            _item(registry, "key-auth", digests["key-auth"], []),
            _item(registry, "jsonrpc-converter", digests["jsonrpc-converter"], ["json-converter"]),
            {"logicalId": "gateway-only", "image": "x", "version": "1", "consumers": {}},
        ],
    }
    basic = hashlib.sha256(wasm("snap basic-auth")).hexdigest()
    lock = {
        "schemaVersion": 1,
        "plugins": {
            "basic-auth": {
                "logicalKey": "basic-auth",
                "servedPath": "basic-auth",
                "servedVersion": "2.0.0",
                "repository": f"{registry.host}/snap/basic-auth",
                "tag": "2.0.0",
                "digest": digests["basic-auth"],
                "wasmSha256": basic,
            }
        },
    }
    workspace.properties.write_text(
        "".join(
            f"{name}=oci://{registry.host}/snap/{name}:2.0.0\n"
            for name in ("key-auth", "json-converter", "basic-auth")
        )
    )
    return {"snapshot": snapshot, "lock": lock}


def _pull(workspace: Workspace, upstream: dict, *flags: str):
    snapshot = workspace.root / "snapshot.json"
    snapshot.write_text(json.dumps(upstream["snapshot"]))
    (workspace.root / "unmanaged-plugins.lock.json").write_text(json.dumps(upstream["lock"]))
    return workspace.pull(None, None, "--snapshot", str(snapshot), *flags)


def test_upstream_snapshot_and_unmanaged_lock_pull_end_to_end(
    workspace: Workspace, upstream: dict
) -> None:
    result = _pull(workspace, upstream)
    assert result.code == 0, result.err
    assert workspace.module("key-auth", "2.0.0") == wasm("snap key-auth")
    assert workspace.module("json-converter", "2.0.0") == wasm("snap jsonrpc-converter")
    assert workspace.module("basic-auth", "2.0.0") == wasm("snap basic-auth")
    inventory = json.loads((workspace.out / "snapshot-inventory.json").read_text())
    assert sorted(inventory) == ["json-converter", "jsonrpc-converter", "key-auth"]
    assert inventory["key-auth"] == {
        "digest": upstream["snapshot"]["plugins"][0]["digest"],
        "version": "2.0.0",
        "wasmSha256": sha256(wasm("snap key-auth")).removeprefix("sha256:"),
    }
    assert not workspace.lock.exists()  # the snapshot and the unmanaged lock are the locks
    served = {(a.name, a.version) for a in scan(str(workspace.out))}
    assert served == {
        ("key-auth", "2.0.0"),
        ("jsonrpc-converter", "2.0.0"),
        ("json-converter", "2.0.0"),
        ("basic-auth", "2.0.0"),
    }
    assert workspace.leftovers() == []


def _broken(upstream: dict, change) -> dict:
    broken = copy.deepcopy(upstream)
    change(broken["snapshot"]["plugins"], broken["lock"]["plugins"])
    return broken


CASES = [
    (
        lambda s, lock: s[0].update(version="2.0.1"),
        "plugins[0] (key-auth): OCI tag and version disagree",
    ),
    (
        lambda s, lock: s[1]["consumers"]["pluginServer"].update(inventoryKey="key-auth"),
        "plugins[1] (jsonrpc-converter): plugin-server mapping 'key-auth' is ambiguous",
    ),
    (lambda s, lock: lock.pop("basic-auth"), "missing=['basic-auth']"),
    (lambda s, lock: lock.update(extra=dict(lock["basic-auth"])), "extra=['extra']"),
    (
        lambda s, lock: lock["basic-auth"].update(tag="2.0.1", servedVersion="2.0.0"),
        "plugins.basic-auth: drifts from properties",
    ),
    (
        lambda s, lock: lock["basic-auth"].update(servedVersion="9.9.9"),
        "plugins.basic-auth: changes its served identity",
    ),
    (lambda s, lock: s[0].update(digest="sha256:ABC"), "plugins[0] (key-auth): digest must be"),
    (
        lambda s, lock: s[0]["consumers"]["pluginServer"].update(httpPath="../etc"),
        "'../etc' is not a plugin name",
    ),
]


@pytest.mark.parametrize(("change", "expected"), CASES)
def test_each_upstream_check_is_one_line_exit_2_and_nothing_downloaded(
    workspace: Workspace, upstream: dict, change, expected: str
) -> None:
    result = _pull(workspace, _broken(upstream, change))
    assert (result.code, len(result.err.splitlines())) == (2, 1), result.err
    assert expected in result.err
    assert not workspace.out.exists()


def test_unmanaged_module_must_hash_to_its_wasm_sha256(
    workspace: Workspace, upstream: dict
) -> None:
    wrong = "0" * 64
    result = _pull(
        workspace, _broken(upstream, lambda s, lock: lock["basic-auth"].update(wasmSha256=wrong))
    )
    assert result.code == 1
    assert result.failures() == [
        f"hps pull: FAILED basic-auth/2.0.0: module sha256"
        f" {sha256(wasm('snap basic-auth'))[7:]} differs from the expected {wrong}"
    ]
    assert not (workspace.out / "basic-auth").exists()


def test_upstreams_placeholder_snapshot_and_bad_mode_flags(
    workspace: Workspace, upstream: dict
) -> None:
    placeholder = {"schemaVersion": 0, "note": "Build workflows replace this file."}
    result = _pull(workspace, {**upstream, "snapshot": placeholder})
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert "unsupported schema (want schemaVersion 1)" in result.err
    result = _pull(workspace, upstream, "--locked")
    assert result.code == 2 and "it takes no --locked" in result.err
    result = workspace.pull(None, None, "--unmanaged-lock", os.devnull)
    assert result.code == 2 and "--unmanaged-lock goes with --snapshot" in result.err


def test_a_snapshot_that_is_not_json_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "snapshot.json"
    bad.write_text("{")
    props = tmp_path / "p.properties"
    props.write_text("")
    assert main(["--snapshot", str(bad), "--properties", str(props)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"snapshot {str(bad)!r} is not JSON" in err
