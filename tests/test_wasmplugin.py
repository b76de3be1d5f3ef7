"""``hps wasmplugin`` through the ``hps`` entry point (in this process: ``hps.cli.main``, with
its exit code, stdout and stderr; and once as operators run it, as a process)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hps import cli

REPO = Path(__file__).resolve().parent.parent
BASE = "http://higress-plugin-server.higress-system.svc"
EXAMPLE = REPO / "deploy" / "higress" / "wasmplugin-example.yaml"


def hps(*args: str) -> subprocess.CompletedProcess[str]:
    """What ``hps wasmplugin ARGS`` exits with and prints, run from the repository."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(REPO)  # the default root, plugins/, is relative
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["wasmplugin", *args])
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def hps_process(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "hps.cli", "wasmplugin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr naming the problem."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hps wasmplugin: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "plugins"
    shutil.copytree(REPO / "plugins", root, ignore=shutil.ignore_patterns("*.properties"))
    return root


def test_prints_a_pinned_wasmplugin_from_the_default_root() -> None:
    result = hps_process("key-rate-limit", "1.0.0", "--base-url", BASE + "/")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    module = (REPO / "plugins/key-rate-limit/1.0.0/plugin.wasm").read_bytes()
    assert doc == {
        "apiVersion": "extensions.higress.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": "key-rate-limit-1.0.0",
            "namespace": "higress-system",
            "labels": {
                "higress.io/wasm-plugin-name": "key-rate-limit",
                "higress.io/wasm-plugin-version": "1.0.0",
            },
        },
        "spec": {
            "url": f"{BASE}/plugins/key-rate-limit/1.0.0/plugin.wasm",
            "sha256": hashlib.sha256(module).hexdigest(),
            "phase": "UNSPECIFIED_PHASE",
            "defaultConfigDisable": True,
        },
    }


def test_options_reach_the_resource(tree: Path) -> None:
    """--base-url, --namespace, --phase and --priority land in the WasmPlugin beside the
    module's sha256."""
    result = hps(
        "basic-auth", "2.0.0", "--base-url", "https://plugins.example.com:8443",
        "--root", str(tree), "--namespace", "gateways", "--phase", "AUTHN", "--priority", "320",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["metadata"]["namespace"] == "gateways"
    assert (
        doc["spec"]["url"]
        == "https://plugins.example.com:8443/plugins/basic-auth/2.0.0/plugin.wasm"
    )
    assert doc["spec"]["phase"] == "AUTHN"
    assert doc["spec"]["priority"] == 320
    module = (tree / "basic-auth/2.0.0/plugin.wasm").read_bytes()
    assert doc["spec"]["sha256"] == hashlib.sha256(module).hexdigest()


def test_alias_symlink_inside_the_root_is_followed(tree: Path) -> None:
    (tree / "basic-auth" / "1.0.1").symlink_to("2.0.0")
    result = hps("basic-auth", "1.0.1", "--base-url", BASE, "--root", str(tree))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    module = (tree / "basic-auth/2.0.0/plugin.wasm").read_bytes()
    assert doc["spec"]["sha256"] == hashlib.sha256(module).hexdigest()
    assert doc["spec"]["url"].endswith("/plugins/basic-auth/1.0.1/plugin.wasm")


def test_version_with_build_metadata_still_makes_valid_names(tree: Path) -> None:
    target = tree / "ai-proxy" / "2.0.0+build.5"
    target.mkdir()
    shutil.copy(tree / "ai-proxy/1.0.0/plugin.wasm", target / "plugin.wasm")
    result = hps("ai-proxy", "2.0.0+build.5", "--base-url", BASE, "--root", str(tree))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["metadata"]["name"] == "ai-proxy-2.0.0-build.5"
    assert doc["metadata"]["labels"]["higress.io/wasm-plugin-version"] == "2.0.0_build.5"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["../etc", "1.0.0"], ["invalid plugin name"]),
        (["Key-Auth", "1.0.0"], ["invalid plugin name"]),
        (["key-auth", ".."], ["invalid plugin version"]),
        (["key-auth", "9.9.9"], ["no artifact key-auth 9.9.9"]),
        (["no-such-plugin", "1.0.0"], ["no artifact"]),
    ],
)
def test_bad_artifacts_are_refused(tree: Path, args: list[str], words: list[str]) -> None:
    refused(hps(*args, "--base-url", BASE, "--root", str(tree)), *words)


def test_symlink_leaving_the_root_is_refused(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wasm"
    shutil.copy(tree / "ai-proxy/1.0.0/plugin.wasm", outside)
    (tree / "evil" / "1.0.0").mkdir(parents=True)
    (tree / "evil" / "1.0.0" / "plugin.wasm").symlink_to(outside)
    refused(hps("evil", "1.0.0", "--base-url", BASE, "--root", str(tree)), "outside the root")


def test_non_wasm_file_is_refused(tree: Path) -> None:
    (tree / "readme" / "1.0.0").mkdir(parents=True)
    (tree / "readme" / "1.0.0" / "plugin.wasm").write_text("<html>not found</html>")
    refused(hps("readme", "1.0.0", "--base-url", BASE, "--root", str(tree)), "not a WebAssembly")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["--base-url"]),
        (["--base-url", "ftp://example.com"], ["http://"]),
        (["--base-url", "higress-plugin-server"], ["http://"]),
        (["--base-url", "http://h/?x=1"], ["query"]),
        (["--base-url", BASE, "--phase", "LATE"], ["--phase"]),
        (["--base-url", BASE, "--priority", "high"], ["--priority"]),
        (["--base-url", BASE, "--namespace", "Higress_System"], ["invalid namespace"]),
        (["--base-url", BASE, "--root", "/nonexistent/plugins"], ["not a directory"]),
    ],
)
def test_bad_options_are_refused(args: list[str], words: list[str]) -> None:
    refused(hps("key-rate-limit", "1.0.0", *args), *words)


def test_help_exits_zero() -> None:
    result = hps("--help")
    assert result.returncode == 0
    assert "--base-url" in result.stdout


def test_deploy_example_is_this_commands_output() -> None:
    """The example in deploy/higress/ was printed by this command over the sample
    tree; if either drifts, the docs would show a checksum no one can reproduce."""
    result = hps("key-rate-limit", "1.0.0", "--base-url", BASE, "--priority", "10")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")) == yaml.safe_load(result.stdout)
