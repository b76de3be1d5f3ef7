"""Reading what the cluster asks for: WasmPlugins in every shape kubectl and people write
them, the Console's URLs, and what each URL names."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from hps.fleet import (
    Aim,
    console_list,
    from_console,
    load_wasmplugins,
    oci_target,
    pull_entries,
    tree_digest,
)
from hps.pull.errors import InputError
from tests.support.server import REPO, Tree
from tests.support.wasmplugins import (
    console_made,
    docs_example,
    kubectl_list,
    multi_document,
    single,
)

REGISTRY = "oci://higress-registry.cn-hangzhou.cr.aliyuncs.com"
BASE = "http://higress-plugin-server.higress-system.svc"
PIN = "a" * 64
DIGEST = "sha256:" + "b" * 64


def cluster() -> list[dict]:
    return [
        docs_example("request-block", f"{REGISTRY}/plugins/request-block:1.0.0"),
        console_made("key-auth", "2.0.0", f"{BASE}/plugins/key-auth/2.0.0/plugin.wasm", PIN),
        console_made("mcp-server", "1.0.0", f"{REGISTRY}/mcp-server/all-in-one:1.0.0"),
    ]


@pytest.mark.parametrize("render", [kubectl_list, multi_document])
def test_a_dump_and_a_multi_document_file_read_alike(render) -> None:
    plugins = load_wasmplugins(render(cluster()), "cluster.yaml")
    assert [(p.label, p.url, p.sha256) for p in plugins] == [
        ("higress-system/request-block", f"{REGISTRY}/plugins/request-block:1.0.0", None),
        ("higress-system/key-auth-2-0-0", f"{BASE}/plugins/key-auth/2.0.0/plugin.wasm", PIN),
        ("higress-system/mcp-server-1-0-0", f"{REGISTRY}/mcp-server/all-in-one:1.0.0", None),
    ]
    where = [p.where for p in plugins]
    if render is kubectl_list:
        assert where == [f"cluster.yaml: document 1 item {n}" for n in (1, 2, 3)]
    else:
        assert where == [f"cluster.yaml: document {n}" for n in (1, 2, 3)]


def test_one_object_and_its_body_are_kept_whole() -> None:
    item = docs_example("request-block", f"{REGISTRY}/plugins/request-block:1.0.0")
    (plugin,) = load_wasmplugins(single(item), "-")
    assert plugin.body == item and list(plugin.body["spec"]) == ["defaultConfig", "matchRules",
                                                                 "url"]


def lines_of(text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_wasmplugins(text, "in.yaml")
    return str(caught.value).splitlines()


def test_each_bad_document_is_one_line_naming_it() -> None:
    good = docs_example("ok", f"{REGISTRY}/plugins/request-block:1.0.0")
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "cm", "namespace": "default"}}
    no_url = docs_example("no-url", "x")
    del no_url["spec"]["url"]
    bad_pin = docs_example("bad-pin", f"{REGISTRY}/plugins/x:1.0.0", sha256="ABC")
    no_tag = docs_example("no-tag", f"{REGISTRY}/plugins/request-block")
    bad_digest = docs_example("bad-digest", f"{REGISTRY}/plugins/request-block@sha256:12")
    text = multi_document([good, configmap, no_url, bad_pin, no_tag, bad_digest, "text"])
    assert lines_of(text) == [
        "in.yaml: document 2 (default/cm): kind is 'ConfigMap', not WasmPlugin",
        "in.yaml: document 3 (higress-system/no-url): spec.url is missing or not a string",
        "in.yaml: document 4 (higress-system/bad-pin): spec.sha256 'ABC' is not 64 lowercase"
        " hex digits (the gateway compares it as such)",
        f"in.yaml: document 5 (higress-system/no-tag): {REGISTRY}/plugins/request-block:"
        f" '{REGISTRY}/plugins/request-block' has neither a tag nor a digest",
        f"in.yaml: document 6 (higress-system/bad-digest): {REGISTRY}/plugins/request-block"
        "@sha256:12: bad digest 'sha256:12' (want sha256:<64 hex>)",
        "in.yaml: document 7: not an object (str)",
    ]


@pytest.mark.parametrize(("text", "line"), [
    ("kind: [unclosed\n", "in.yaml:2: not YAML: expected ',' or ']'"),
    ("", "in.yaml: no WasmPlugin in it"),
    ("---\n---\n", "in.yaml: no WasmPlugin in it"),
    ("kind: List\nitems: 3\n", "in.yaml: document 1 item 1: a List whose items is not a list"),
    ("kind: WasmPlugin\nspec: 3\n", "in.yaml: document 1: no spec"),
])
def test_what_is_not_wasmplugins_is_one_line(text: str, line: str) -> None:
    (only,) = lines_of(text)
    assert only.startswith(line)


def test_oci_references_are_named_as_hps_pull_serves_them() -> None:
    assert oci_target(f"{REGISTRY}/plugins/x:latest").key == ("x", "latest")  # any OCI tag
    target = oci_target(f"{REGISTRY}/mcp-server/all-in-one:1.0.0")
    assert (target.kind, target.key) == ("oci", ("all-in-one", "1.0.0"))
    digest_only = oci_target(f"{REGISTRY}/plugins/key-auth@{DIGEST}")
    assert digest_only.key == ("key-auth", DIGEST)
    both = oci_target(f"{REGISTRY}/plugins/key-auth:2.0.0@{DIGEST}")
    assert both.key == ("key-auth", "2.0.0") and both.ref is not None
    assert both.ref.digest == DIGEST


def test_what_aims_at_hps() -> None:
    anywhere, one = Aim(None), Aim(BASE + "/")
    url = f"{BASE}/plugins/key-auth/2.0.0/plugin.wasm"
    elsewhere = "http://other.example/plugins/key-auth/2.0.0/plugin.wasm"
    assert anywhere.target(url).key == anywhere.target(elsewhere).key == ("key-auth", "2.0.0")
    assert one.target(url).path == "/plugins/key-auth/2.0.0/plugin.wasm"
    assert one.target(elsewhere).kind == "other"
    assert one.target(BASE + ":8080/plugins/key-auth/2.0.0/plugin.wasm").kind == "other"
    assert anywhere.target("http://cdn.example/key-auth.wasm").kind == "other"
    assert anywhere.target("file:///opt/plugins/x.wasm").kind == "other"
    assert anywhere.target(f"{BASE}/plugins/key-auth/2.0.0/metadata.txt").kind == "other"
    # Under the base but not a module hps could serve: aimed at hps, and a problem.
    assert one.target(f"{BASE}/key-auth.wasm").problem
    assert one.target(f"{BASE}/plugins/Key_Auth/2.0.0/plugin.wasm").problem
    prefixed = Aim("https://gw.example/hps")
    assert prefixed.target("https://gw.example/hps/plugins/a/1.0.0/plugin.wasm").key == \
        ("a", "1.0.0")
    assert prefixed.url_for("a", "1.0.0") == "https://gw.example/hps/plugins/a/1.0.0/plugin.wasm"
    with pytest.raises(InputError, match="http:// or https://"):
        Aim("higress-plugin-server")


def test_the_console_list_gives_its_52_urls() -> None:
    wanted = from_console(BASE + "/plugins/${name}/${version}/plugin.wasm", console_list())
    assert len(wanted) == 52
    assert console_list() == REPO / "plugins" / "console.properties"  # from the checkout
    by_source = {w.source: w.url for w in wanted}
    assert by_source["console json-converter"] == \
        f"{BASE}/plugins/json-converter/2.0.3/plugin.wasm"
    assert by_source["console cors"] == f"{BASE}/plugins/cors/2.0.4/plugin.wasm"
    with pytest.raises(InputError, match="lacks"):
        from_console(BASE + "/plugins/${name}/plugin.wasm", console_list())


def test_the_trees_answer_is_the_catalogs(tree: Tree, tmp_path: Path) -> None:
    body = tree.add("key-auth", "2.0.0")
    (tree.root / "key-auth" / "1.0.0").symlink_to("2.0.0")
    tree.add("readme", "1.0.0", b"<html>not a module</html>")
    outside = tmp_path / "outside.wasm"
    shutil.copy(tree.root / "key-auth/2.0.0/plugin.wasm", outside)
    (tree.root / "evil" / "1.0.0").mkdir(parents=True)
    (tree.root / "evil" / "1.0.0" / "plugin.wasm").symlink_to(outside)
    root = str(tree.root)
    digest = hashlib.sha256(body).hexdigest()
    assert tree_digest(root, "key-auth", "2.0.0") == (digest, "")
    assert tree_digest(root, "key-auth", "1.0.0") == (digest, "")  # an alias
    assert tree_digest(root, "key-auth", "9.0.0") == (None, "the tree has no key-auth/9.0.0")
    assert tree_digest(root, "readme", "1.0.0")[1].startswith("readme/1.0.0 is not served:")
    assert "leaves the root" in tree_digest(root, "evil", "1.0.0")[1]


def test_pull_entries_carry_the_name_version_and_pin() -> None:
    text = multi_document([
        docs_example("a", f"{REGISTRY}/mcp-server/all-in-one:1.0.0", sha256=PIN),
        docs_example("b", f"{REGISTRY}/plugins/key-auth@{DIGEST}"),
        docs_example("c", f"{BASE}/plugins/key-auth/2.0.0/plugin.wasm"),  # already moved
    ])
    entries = pull_entries(load_wasmplugins(text, "f"))
    assert [(e.key, e.pin, e.sha256) for e in entries] == [
        (("all-in-one", "1.0.0"), None, PIN),
        (("key-auth", DIGEST), DIGEST, None),
    ]
    assert entries[0].source == "f: document 1 (higress-system/a)"
