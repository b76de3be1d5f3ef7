"""``hps pull``'s command line: the console script as a process, and bad input as one line
and exit 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from hps.pull.cli import load_plan, parser
from tests.support.inventory import copy_inventory, default_plan
from tests.support.registry import (
    Registry,
    Workspace,
    wasm,
)
from tests.support.wasmplugins import docs_example, kubectl_list, multi_document

ROOT = Path(__file__).resolve().parent.parent


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


def test_the_clusters_wasmplugins_are_pulled_and_locked(
        registry: Registry, workspace: Workspace) -> None:
    """``--wasmplugins``: each oci:// reference lands at <last segment>/<tag> (a digest-only
    one at sha256:<hex>), its pin checked; URLs already on http are left alone."""
    registry.push_wasm("plugins/request-block", "1.0.0", wasm("rb"))
    digest = registry.push_wasm("mcp-server/all-in-one", "1.0.0", wasm("mcp"))
    registry.push_wasm("plugins/waf", "2.0.3", wasm("waf"))
    registry.push_wasm("plugins/inventory", "1.0.0", wasm("inv"))
    dump = workspace.root / "cluster.yaml"
    dump.write_text(kubectl_list([
        docs_example("rb", registry.ref("plugins/request-block", "1.0.0"),
                     sha256=hashlib.sha256(wasm("rb")).hexdigest()),
        docs_example("mcp", f"oci://{registry.host}/mcp-server/all-in-one@{digest}"),
        docs_example("waf", registry.ref("plugins/waf", "2.0.3"), sha256="0" * 64),
        docs_example("moved", "http://hps.example/plugins/key-auth/2.0.0/plugin.wasm"),
    ]))
    result = workspace.pull({"inventory": registry.ref("plugins/inventory", "1.0.0")}, None,
                            "--wasmplugins", str(dump))
    assert result.code == 1
    assert result.failures() == [
        line for line in result.err.splitlines() if line.startswith("hps pull: FAILED waf/2.0.3")]
    assert workspace.module("request-block", "1.0.0") == wasm("rb")
    assert workspace.module("all-in-one", digest) == wasm("mcp")
    assert workspace.module("inventory", "1.0.0") == wasm("inv")  # the inventory still pulled
    assert not (workspace.out / "waf").exists()  # its pin did not match: nothing written
    assert set(workspace.locked()) == {"request-block/1.0.0", f"all-in-one/{digest}",
                                       "inventory/1.0.0"}


def test_the_cluster_joins_the_default_inventory_and_wins(tmp_path: Path,
                                                        monkeypatch) -> None:
    """With no inventory flags the default inventory is pulled too; for a name and version
    both name, the cluster's reference is what the server must hold."""
    copy_inventory(tmp_path)
    monkeypatch.chdir(tmp_path)
    mirror = "oci://harbor.internal/higress/key-auth:2.0.0"
    dump = tmp_path / "cluster.yaml"
    dump.write_text(multi_document([docs_example("key-auth", mirror),
                                    docs_example("x", "oci://harbor.internal/ns/extra:0.1.0")]))
    plan = load_plan(parser().parse_args(["--wasmplugins", str(dump)]))
    default = default_plan()
    assert set(plan.entries) == set(default.entries) | {("extra", "0.1.0")}
    assert str(plan.entries["key-auth", "2.0.0"].ref) == mirror
    assert plan.entries["ai-proxy", "2.0.3"].ref == default.entries["ai-proxy", "2.0.3"].ref


def test_bad_wasmplugins_are_one_line_each_and_exit_2(workspace: Workspace) -> None:
    workspace.properties.write_text("")
    dump = workspace.root / "cluster.yaml"
    dump.write_text(multi_document([docs_example("a", "oci://r.example/a"),
                                    {"kind": "ConfigMap"}]))
    result = workspace.pull(None, None, "--wasmplugins", str(dump))
    assert result.code == 2
    assert result.err.splitlines() == [
        f"hps pull: {dump}: document 1 (higress-system/a): oci://r.example/a:"
        " 'oci://r.example/a' has neither a tag nor a digest",
        f"hps pull: {dump}: document 2: kind is 'ConfigMap', not WasmPlugin",
    ]
