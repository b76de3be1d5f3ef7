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
from tests.support.wasmplugins import console_made, docs_example, kubectl_list, multi_document

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


# -- --rewrite: moving a cluster's WasmPlugins onto hps ---------------------------------

REGISTRY = "oci://higress-registry.cn-hangzhou.cr.aliyuncs.com"


def dump_of(tree: Path) -> tuple[str, list[dict]]:
    """A kubectl dump meeting the sample tree in every way the rewrite distinguishes."""
    items = [
        docs_example("request-block", f"{REGISTRY}/plugins/basic-auth:2.0.0"),
        console_made("key-auth", "2.0.0", f"{REGISTRY}/plugins/key-auth:2.0.0",
                     sha256=sha_of(tree, "key-auth", "2.0.0")),
        console_made("mcp-server", "1.0.0", f"{REGISTRY}/mcp-server/all-in-one:1.0.0"),
        console_made("ai-proxy", "1.0.0", f"{REGISTRY}/plugins/ai-proxy:1.0.0", sha256="0" * 64),
        console_made("key-rate-limit", "1.0.0", f"{BASE}/plugins/key-rate-limit/1.0.0/plugin.wasm"),
    ]
    text = kubectl_list(items)
    return text, yaml.safe_load(text)["items"]


def sha_of(tree: Path, name: str, version: str) -> str:
    return hashlib.sha256((tree / name / version / "plugin.wasm").read_bytes()).hexdigest()


def rewrite(tree: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    here = io.StringIO(text)
    saved, sys.stdin = sys.stdin, here
    try:
        return hps("--rewrite", "-", "--base-url", BASE, "--root", str(tree), *flags)
    finally:
        sys.stdin = saved


def test_rewrite_aims_what_the_tree_serves_and_changes_nothing_else(tree: Path) -> None:
    text, stored = dump_of(tree)
    result = rewrite(tree, text)
    assert result.returncode == 1  # two the tree cannot serve, and no --partial
    docs = list(yaml.safe_load_all(result.stdout))
    assert result.stdout.startswith("# Rewritten by hps wasmplugin --rewrite")
    expected = []
    for item, name, version in ((stored[0], "basic-auth", "2.0.0"),
                                (stored[1], "key-auth", "2.0.0")):
        spec = dict(item["spec"])
        spec["url"] = f"{BASE}/plugins/{name}/{version}/plugin.wasm"
        spec["sha256"] = sha_of(tree, name, version)
        expected.append({**item, "spec": spec})
    assert docs == expected
    # Every key where it was; a new sha256 right after url.
    assert list(docs[0]["spec"]) == ["defaultConfig", "matchRules", "url", "sha256"]
    assert list(docs[1]["spec"]) == list(stored[1]["spec"])
    assert list(docs[1]) == list(stored[1]) and list(docs[1]["metadata"]) == \
        list(stored[1]["metadata"])
    dump = "<stdin>: document 1 item"
    assert result.stderr.splitlines() == [
        f"hps wasmplugin: cannot move {dump} 3 (higress-system/mcp-server-1-0-0): "
        f"{REGISTRY}/mcp-server/all-in-one:1.0.0: the tree has no all-in-one/1.0.0",
        f"hps wasmplugin: cannot move {dump} 4 (higress-system/ai-proxy-1-0-0): "
        f"{REGISTRY}/plugins/ai-proxy:1.0.0: the tree's ai-proxy/1.0.0 is sha256 "
        f"{sha_of(tree, 'ai-proxy', '1.0.0')}, not the pinned {'0' * 64}",
        "hps wasmplugin: 2 rewritten, 2 the tree cannot serve, 1 not on oci:// "
        "(left as they are)",
    ]
    partial = rewrite(tree, text, "--partial")
    assert partial.returncode == 0 and partial.stdout == result.stdout


def test_the_rewrite_passes_hps_check(tree: Path, tmp_path: Path) -> None:
    text, _ = dump_of(tree)
    moved = tmp_path / "moved.yaml"
    moved.write_text(rewrite(tree, text, "--partial").stdout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "--wasmplugins", str(moved), "--root", str(tree),
                         "--base-url", BASE])
    assert (code, err.getvalue()) == (0, ""), out.getvalue()
    assert out.getvalue().splitlines()[-1] == "2 URLs: 2 ok; 0 problem(s)"


@pytest.mark.parametrize(("args", "words"), [
    (["key-auth", "2.0.0", "--rewrite", "-"], ["--rewrite", "NAME VERSION"]),
    (["--rewrite", "-", "--phase", "AUTHN"], ["--rewrite", "--phase"]),
    (["key-auth", "--base-url", BASE], ["NAME VERSION"]),
    (["key-auth", "2.0.0", "--partial"], ["--partial goes with --rewrite"]),
    (["--rewrite", "/nonexistent.yaml"], ["cannot read WasmPlugins"]),
])
def test_rewrite_refuses_mixed_modes(args: list[str], words: list[str]) -> None:
    if "--base-url" not in args:
        args = [*args, "--base-url", BASE]
    refused(hps(*args), *words)


def test_rewrite_of_bad_documents_is_a_line_each(tree: Path) -> None:
    text = multi_document([{"kind": "Deployment", "metadata": {"name": "d", "namespace": "x"}},
                           docs_example("a", "oci://r.example/plugins/a")])
    result = rewrite(tree, text)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "hps wasmplugin: <stdin>: document 1 (x/d): kind is 'Deployment', not WasmPlugin",
        "hps wasmplugin: <stdin>: document 2 (higress-system/a): oci://r.example/plugins/a: "
        "'oci://r.example/plugins/a' has neither a tag nor a digest",
    ]
