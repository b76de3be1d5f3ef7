"""The default inventory: what ``hps pull`` with no inventory flags pulls, and the image serves.

The "done when" of issue 9: the tree is built exactly as the Dockerfile's default
build does (the repository's inventory files, ``hps pull --output DIR --registry
HOST --plain-http``, no inventory flags) against a loopback registry holding a
module for every reference, and a real ``twistd hps`` serves each ``(name, version)``
the Console asks for, plus the two URLs upstream's README gives.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hps.pull.cli import main
from hps.pull.inventory import UPSTREAM_TAGS
from hps.pull.properties import parse_properties
from tests.support.inventory import REPO, copy_inventory, default_plan, seed_default_inventory
from tests.support.registry import Registry, Workspace, wasm

CONSOLE = REPO / "plugins" / "console.properties"
UPSTREAM = REPO / "plugins" / "plugins.properties"
README_URLS = [("key-rate-limit", "1.0.0"), ("mcp-server", "1.0.0")]


def hps_pull(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "hps.cli", "pull", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _pairs(path: Path) -> set[tuple[str, str]]:
    return {(e.name, e.version) for e in parse_properties(path.read_text(), str(path))}


def test_default_inventory_is_upstream_at_both_versions_plus_the_console() -> None:
    plan = default_plan()
    upstream = parse_properties(UPSTREAM.read_text())
    wanted = _pairs(CONSOLE) | {(e.name, tag) for e in upstream for tag in UPSTREAM_TAGS}
    assert set(plan.entries) == wanted
    assert set(README_URLS) <= set(plan.entries)
    assert len({e.ref for e in plan.entries.values()}) == len(plan.entries)
    mcp = plan.entries["mcp-server", "1.0.0"].ref
    assert (mcp.repository, mcp.tag) == ("mcp-server/all-in-one", "1.0.0")
    console_mcp = plan.entries["mcp-server", "2.0.3"].ref
    assert console_mcp.repository == "plugins/mcp-server"


@pytest.fixture(scope="module", name="seeded")
def seeded_fixture(registry: Registry) -> dict[tuple[str, str], bytes]:
    return seed_default_inventory(registry)


def test_the_image_build_serves_every_console_url(
    registry: Registry, seeded: dict, tmp_path: Path, harness
) -> None:
    src = copy_inventory(tmp_path / "src")
    out = tmp_path / "srv" / "plugins"
    # The Dockerfile's pull step: no inventory flags, references moved to the registry.
    done = hps_pull(src, "--output", str(out), "--registry", registry.host, "--plain-http")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(seeded)} pulled, 0 failed" in done.stderr
    lock = json.loads((src / "plugins" / "plugins.lock.json").read_text())["plugins"]
    assert len(lock) == len(seeded)
    # The lock keeps the inventory's references, not the mirror's.
    assert lock["key-auth/2.0.0"]["reference"].startswith("oci://higress-registry.")
    server = harness(out)
    wanted = set(README_URLS) | _pairs(CONSOLE)
    assert wanted <= set(seeded)
    for name, version in sorted(seeded):
        reply = server.get(f"/plugins/{name}/{version}/plugin.wasm")
        assert (reply.status, reply.body) == (200, seeded[name, version]), (name, version)
        gz = out / name / version / "plugin.wasm.gz"
        assert gzip.decompress(gz.read_bytes()) == seeded[name, version]
    digest = hashlib.sha256(seeded["key-rate-limit", "1.0.0"]).hexdigest()
    assert lock["key-rate-limit/1.0.0"]["wasmSha256"] == digest


def test_an_upstream_checkout_pulls_both_versions_by_default(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tag in UPSTREAM_TAGS:
        registry.push_wasm("checkout/key-auth", tag, wasm(f"checkout {tag}"))
    (tmp_path / "plugins.properties").write_text(
        f"key-auth=oci://{registry.host}/checkout/key-auth:1.0.0\n"
    )
    monkeypatch.chdir(tmp_path)  # in-process: the image build's run is the process test above
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--plain-http"]) == 0
    for tag in UPSTREAM_TAGS:
        module = tmp_path / "plugins" / "key-auth" / tag / "plugin.wasm"
        assert module.read_bytes() == wasm(f"checkout {tag}")
    assert (tmp_path / "plugins.lock.json").exists()


def test_registry_and_namespace_rewrite_every_reference(
    registry: Registry, workspace: Workspace
) -> None:
    registry.push_wasm("mirror/key-auth", "2.0.0", wasm("mirrored"))
    registry.push_wasm("mirror/all-in-one", "1.0.0", wasm("mirrored mcp"))
    upstream = "higress-registry.cn-hangzhou.cr.aliyuncs.com"
    entries = {
        "key-auth": f"oci://{upstream}/plugins/key-auth:2.0.0",
        "mcp-server": f"oci://{upstream}/plugins/all-in-one:1.0.0",
    }
    flags = ("--registry", registry.host, "--namespace", "mirror")
    # Empty values are "not given" (a Dockerfile passes its build args unconditionally).
    direct = {"key-auth": registry.ref("mirror/key-auth", "2.0.0")}
    assert workspace.pull(direct, None, "--registry", "", "--namespace", "").code == 0
    result = workspace.pull(entries, None, *flags)
    assert result.code == 0, result.err
    assert workspace.module("key-auth", "2.0.0") == wasm("mirrored")
    assert workspace.module("mcp-server", "1.0.0") == wasm("mirrored mcp")
    assert workspace.locked()["key-auth/2.0.0"]["reference"] == entries["key-auth"]
    # The lock is the inventory's: --locked through the same mirror pulls exactly it.
    assert workspace.pull(entries, None, "--locked", *flags).code == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--registry", "http://x/"], "--registry wants HOST[:PORT]"),
        (["--namespace", "a/b"], "--namespace wants"),
    ],
)
def test_bad_registry_flags(workspace: Workspace, flags: list[str], expected: str) -> None:
    workspace.properties.write_text("a=oci://127.0.0.1:1/a:1.0.0\n")
    result = workspace.pull(None, None, *flags)
    assert (result.code, len(result.err.splitlines())) == (2, 1)
    assert expected in result.err


def test_no_inventory_here_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--plain-http"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no inventory here" in err
