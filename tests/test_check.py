"""``hps check``: every state a URL can be in, against a tree, the real server in memory, and
once a real ``twistd hps`` with pull-through from the loopback registry, which also carries a
cluster through the whole move (``hps pull --wasmplugins``, ``--rewrite``, check again)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hps import cli
from hps.check import evaluate, parser, run, server_lookup
from hps.fleet import Aim, classify, from_wasmplugins, load_wasmplugins
from hps.probe import Getter, Reply, parse_changed
from tests.support.memory import Harness
from tests.support.polling import poll
from tests.support.registry import Registry
from tests.support.server import REPO, Tree
from tests.support.wasmplugins import console_made, docs_example, kubectl_list, multi_document

BASE = "http://higress-plugin-server.higress-system.svc"
OTHER = "0" * 64


def module_url(name: str, version: str, base: str = BASE) -> str:
    return f"{base}/plugins/{name}/{version}/plugin.wasm"


def hps(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def states(stdout: str) -> dict[str, tuple[str, str]]:
    """``--json`` rows by source: (state, sha256)."""
    return {row["source"]: (row["state"], row["sha256"]) for row in json.loads(stdout)["rows"]}


def on_hps() -> list[dict]:
    """WasmPlugins already aimed at hps: an alias version, a wrong pin, a version it lacks."""
    return [
        console_made("key-auth", "1.0.0", module_url("key-auth", "1.0.0"), resource="alias"),
        console_made("basic-auth", "2.0.0", module_url("basic-auth", "2.0.0"), OTHER,
                     resource="pinned"),
        console_made("cors", "9.9.9", module_url("cors", "9.9.9"), resource="absent"),
    ]


@pytest.fixture
def cluster(tree: Tree, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A tree and a kubectl dump of WasmPlugins that meets it in every way."""
    bodies = {"key-auth": tree.add("key-auth", "2.0.0"),
              "basic-auth": tree.add("basic-auth", "2.0.0"),
              "request-block": tree.add("request-block", "1.0.0"),
              "ai-proxy": tree.add("ai-proxy", "1.0.0")}
    (tree.root / "key-auth" / "1.0.0").symlink_to("2.0.0")
    registry = "oci://higress-registry.cn-hangzhou.cr.aliyuncs.com/plugins"
    dump = tmp_path / "wasmplugins.yaml"
    dump.write_text(kubectl_list([
        *on_hps(),
        docs_example("movable", f"{registry}/request-block:1.0.0"),
        docs_example("differs", f"{registry}/ai-proxy:1.0.0", sha256=OTHER),
        docs_example("not-held", f"{registry}/waf:2.0.3"),
        docs_example("elsewhere", "http://plugins.example/plugins/waf/2.0.3/plugin.wasm"),
        docs_example("bad-path", f"{BASE}/waf.wasm"),
    ]))
    return dump, bodies


def test_every_state_against_a_tree(cluster, tree: Tree) -> None:
    dump, bodies = cluster
    code, out, err = hps("check", "--wasmplugins", str(dump), "--root", str(tree.root),
                         "--base-url", BASE, "--json")
    assert code == 1
    sha = {name: Tree.sha256(body) for name, body in bodies.items()}
    assert states(out) == {
        "wasmplugin higress-system/alias": ("ok", sha["key-auth"]),
        "wasmplugin higress-system/pinned": ("mismatch", sha["basic-auth"]),
        "wasmplugin higress-system/absent": ("missing", ""),
        "wasmplugin higress-system/movable": ("movable", sha["request-block"]),
        "wasmplugin higress-system/differs": ("differs", sha["ai-proxy"]),
        "wasmplugin higress-system/not-held": ("not-held", ""),
        "wasmplugin higress-system/elsewhere": ("other", ""),
        "wasmplugin higress-system/bad-path": ("missing", ""),
    }
    rows = {row["source"]: row for row in json.loads(out)["rows"]}
    assert rows["wasmplugin higress-system/movable"]["hps_url"] == \
        module_url("request-block", "1.0.0")
    assert json.loads(out)["ok"] is False
    # One line per problem, and only for URLs aimed at hps.
    assert err.splitlines() == [
        f"hps check: mismatch: wasmplugin higress-system/pinned: "
        f"{module_url('basic-auth', '2.0.0')}: pinned sha256 {OTHER}, served "
        f"{sha['basic-auth']}: the gateway refuses it",
        f"hps check: missing: wasmplugin higress-system/absent: {module_url('cors', '9.9.9')}: "
        "the tree has no cors/9.9.9",
        f"hps check: missing: wasmplugin higress-system/bad-path: {BASE}/waf.wasm: "
        "not a module URL of hps (/plugins/<name>/<version>/plugin.wasm)",
    ]


def test_without_a_base_url_any_host_with_the_layout_is_hps(cluster, tree: Tree) -> None:
    dump, _ = cluster
    code, out, _ = hps("check", "--wasmplugins", str(dump), "--root", str(tree.root), "--json")
    assert code == 1
    assert states(out)["wasmplugin higress-system/elsewhere"] == ("missing", "")
    assert states(out)["wasmplugin higress-system/bad-path"] == ("other", "")


def test_the_console_and_the_controller_for_people(tree: Tree, tmp_path: Path) -> None:
    tree.add("key-auth", "2.0.0")
    tree.add("mcp-server", "1.0.0")
    listing = tmp_path / "console.properties"
    listing.write_text("key-auth=oci://r.example/plugins/key-auth:2.0.0\n"
                       "json-converter=oci://r.example/plugins/jsonrpc-converter:2.0.3\n")
    pattern = BASE + "/plugins/${name}/${version}/plugin.wasm"
    code, out, err = hps("check", "--console-pattern", pattern, "--console-list", str(listing),
                         "--mcp-url", module_url("mcp-server", "1.0.0"), "--root", str(tree.root))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "PLUGIN", "STATE", "DETAIL"]
    assert lines[1].split()[:4] == ["console", "key-auth", "key-auth/2.0.0", "ok"]
    assert lines[2].split()[:4] == ["console", "json-converter", "json-converter/2.0.3",
                                    "missing"]
    assert lines[3].split()[:3] == ["mcp-url", "mcp-server/1.0.0", "ok"]
    assert lines[4] == "3 URLs: 1 missing, 2 ok; 1 problem(s)"
    assert err.splitlines() == [f"hps check: missing: console json-converter: "
                                f"{module_url('json-converter', '2.0.3')}: the tree has no "
                                "json-converter/2.0.3"]
    tree.add("json-converter", "2.0.3")
    assert hps("check", "--console-pattern", pattern, "--console-list", str(listing),
               "--root", str(tree.root))[0] == 0


@pytest.mark.parametrize(("args", "line"), [
    ([], "hps check: give one of --root DIR or --server URL"),
    (["--root", "x", "--server", "http://h"], "hps check: give one of --root DIR or --server URL"),
    (["--root", "x"], "hps check: nothing to check: give --wasmplugins, --console-pattern or"
                      " --mcp-url"),
    (["--root", "x", "--console-list", "f"], "hps check: --console-list goes with"
                                             " --console-pattern"),
    (["--server", "127.0.0.1:8080", "--mcp-url", "x"], "hps check: --server must be an http://"
                                                       " or https:// URL, not '127.0.0.1:8080'"),
    (["--root", "x", "--wasmplugins", "/nonexistent.yaml"], "hps check: cannot read WasmPlugins"
                                                            " '/nonexistent.yaml': No such file"),
    (["--root", "x", "--mcp-url", "oci://r.example/plugins/a"], "hps check: mcp-url: "
                                                                "oci://r.example/plugins/a:"),
    (["--root", "x", "--bogus"], "hps check: unrecognized arguments: --bogus"),
    (["--root", "/nonexistent", "--mcp-url", "x"], "hps check: --root '/nonexistent' is not a"
                                                   " directory"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    code, out, err = hps("check", *args)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(line), err


def test_each_bad_document_is_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(multi_document([{"kind": "Service", "metadata": {"name": "s"}},
                                    docs_example("a", "oci://r.example/x")]))
    code, out, err = hps("check", "--wasmplugins", str(path), "--root", str(tmp_path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"hps check: {path}: document 1 (-/s): kind is 'Service', not WasmPlugin",
        f"hps check: {path}: document 2 (higress-system/a): oci://r.example/x: "
        "'oci://r.example/x' has neither a tag nor a digest",
    ]


def in_memory(server: Harness) -> Getter:
    """The probe's client, through the real server in memory (as the gateway asks)."""
    def get(path: str) -> Reply:
        reply = server.get(path, Accept_Encoding="gzip")
        return Reply(reply.status, reply.headers, io.BytesIO(reply.body))
    return get


def test_a_server_answers_for_itself(cluster, tree: Tree, harness) -> None:
    dump, bodies = cluster
    server = harness(tree.root)
    args = parser().parse_args(["--wasmplugins", str(dump), "--server", "http://hps.test",
                                "--base-url", BASE])
    rows = {row.source: row for row in run(args, get=in_memory(server), jobs=1)}
    assert rows["wasmplugin higress-system/alias"].state == "ok"
    assert rows["wasmplugin higress-system/alias"].sha256 == Tree.sha256(bodies["key-auth"])
    assert rows["wasmplugin higress-system/pinned"].state == "mismatch"
    absent = rows["wasmplugin higress-system/absent"]
    assert absent.state == "missing" and absent.detail.startswith("HTTP 404")
    assert rows["wasmplugin higress-system/movable"].state == "movable"
    assert rows["wasmplugin higress-system/not-held"].state == "not-held"
    assert rows["wasmplugin higress-system/bad-path"].state == "missing"


def test_a_version_whose_bytes_changed_is_a_problem(cluster, tree: Tree, harness) -> None:
    """The server's full index names what changed after first being served (its
    ``changed`` list); every URL that asks for it is reported, pinned or not."""
    dump, bodies = cluster
    now = Tree.sha256(bodies["key-auth"])
    index = {"plugins": [], "changed": [
        {"name": "key-auth", "version": "1.0.0", "first": OTHER, "now": now},
        {"name": "unasked", "version": "1.0.0", "first": OTHER, "now": now}]}
    pairs = classify(from_wasmplugins(load_wasmplugins(dump.read_text(), "d")), Aim(BASE))
    server = harness(tree.root)
    rows = evaluate(pairs, server_lookup(in_memory(server), pairs, jobs=1), Aim(BASE),
                    parse_changed(index))
    changed = [row for row in rows if row.state == "changed"]
    assert [row.source for row in changed] == ["wasmplugin higress-system/alias"]
    assert changed[0].problem and f"first {OTHER}, now {now}" in changed[0].detail


def test_a_module_replaced_under_its_version_is_reported(tree: Tree, harness) -> None:
    """End to end in memory: the server records what it first served, a rescan brings other
    bytes, its index says so, and ``hps check --server`` names the URL."""
    first = tree.add("key-auth", "2.0.0")
    server = harness(tree.root)
    assert server.get("/plugins/key-auth/2.0.0/plugin.wasm").body == first
    now = tree.add("key-auth", "2.0.0", body=first + b"\0changed")
    server.rescan()
    args = parser().parse_args(["--server", "http://hps.test", "--base-url", BASE,
                                "--mcp-url", module_url("key-auth", "2.0.0")])
    (replaced,) = run(args, get=in_memory(server), jobs=1)
    assert (replaced.state, replaced.sha256) == ("changed", Tree.sha256(now))
    assert f"first {Tree.sha256(first)}, now {Tree.sha256(now)}" in replaced.detail


def run_hps(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hps.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def wait_served(server, path: str, timeout: float = 15) -> None:
    """Until the real server's rescan finds the pulled module."""
    if not poll(lambda: server.get(path).status == 200, timeout, every=0.1):
        pytest.fail(f"{path} never served")


@pytest.mark.process
def test_a_real_server_and_a_whole_move(registry: Registry, tree: Tree, tmp_path: Path,
                                        serve) -> None:
    modules = {name: (b"\0asm\x01\0\0\0" + f"hps check {name}".encode() * 50)
               for name in ("ai-proxy", "request-block", "ai-statistics")}
    registry.push_wasm("plugins/ai-proxy", "2.0.3", modules["ai-proxy"])
    registry.push_wasm("plugins/request-block", "1.0.0", modules["request-block"])
    registry.push_wasm("plugins/ai-statistics", "2.0.3", modules["ai-statistics"])
    proxy_module = hashlib.sha256(modules["ai-proxy"]).hexdigest()
    key_auth = tree.add("key-auth", "2.0.0")
    (tree.root / "key-auth" / "1.0.0").symlink_to("2.0.0")
    basic_auth = tree.add("basic-auth", "2.0.0")
    server = serve("--root", str(tree.root), "--rescan-interval", "1", "--drain-delay", "0",
                   "--upstream", f"oci://{registry.host}/plugins/${{name}}:${{version}}",
                   "--upstream-allow", "ai-*", "--upstream-plain-http",
                   "--cache-dir", str(tmp_path / "cache"))
    dump = tmp_path / "cluster.yaml"
    dump.write_text(kubectl_list([
        *on_hps(),
        console_made("ai-proxy", "2.0.3", module_url("ai-proxy", "2.0.3"), resource="through"),
        docs_example("not-held", registry.ref("plugins/request-block", "1.0.0")),
        docs_example("movable", registry.ref("plugins/ai-statistics", "2.0.3")),
    ]))
    check = ["check", "--server", server.url(""), "--base-url", BASE, "--json"]
    result = run_hps(*check, "--wasmplugins", str(dump),
                     "--mcp-url", module_url("mcp-server", "1.0.0"))
    assert result.returncode == 1, result.stderr
    found = states(result.stdout)
    assert found == {
        "wasmplugin higress-system/alias": ("ok", Tree.sha256(key_auth)),
        "wasmplugin higress-system/pinned": ("mismatch", Tree.sha256(basic_auth)),
        "wasmplugin higress-system/through": ("ok", proxy_module),  # pulled through
        "wasmplugin higress-system/absent": ("missing", ""),
        "wasmplugin higress-system/not-held": ("not-held", ""),  # not allowed through
        "wasmplugin higress-system/movable": ("movable",
                                              Tree.sha256(modules["ai-statistics"])),
        "mcp-url": ("missing", ""),
    }
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == \
        ["mismatch", "missing", "missing"]

    # The move: pull what the cluster names into the served tree, rewrite, check again.
    empty = tmp_path / "none.properties"
    empty.write_text("")
    pulled = run_hps("pull", "--wasmplugins", str(dump), "--properties", str(empty),
                     "--output", str(tree.root), "--plain-http", "--lock",
                     str(tmp_path / "lock.json"))
    assert pulled.returncode == 0, pulled.stderr
    wait_served(server, "/plugins/request-block/1.0.0/plugin.wasm")
    moved = run_hps("wasmplugin", "--rewrite", "-", "--base-url", BASE, "--root",
                    str(tree.root), stdin=dump.read_text())
    assert moved.returncode == 0, moved.stderr
    assert moved.stderr.splitlines()[-1] == \
        "hps wasmplugin: 2 rewritten, 0 the tree cannot serve, 4 not on oci:// (left as they are)"
    again = run_hps(*check, "--wasmplugins", "-", stdin=moved.stdout)
    assert again.returncode == 0, again.stderr
    assert states(again.stdout) == {
        "wasmplugin higress-system/not-held": ("ok", Tree.sha256(modules["request-block"])),
        "wasmplugin higress-system/movable": ("ok", Tree.sha256(modules["ai-statistics"])),
    }
