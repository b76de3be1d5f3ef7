"""Parsing what the operator gives ``hps pull``: properties, manifest YAML, the plan."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hps.pull.errors import InputError
from hps.pull.properties import (
    Entry,
    Reference,
    build_plan,
    load_manifest,
    parse_properties,
    parse_reference,
)

HOST = "higress-registry.cn-hangzhou.cr.aliyuncs.com"
DIGEST = "sha256:" + "ab" * 32
UPSTREAM = Path(__file__).resolve().parent.parent / "plugins" / "plugins.properties"


def test_reference_by_tag() -> None:
    """oci://host/repo:tag parses to its registry, repository and tag."""
    ref = parse_reference(f"oci://{HOST}/plugins/key-auth:2.0.0")
    assert ref == Reference(HOST, "plugins/key-auth", "2.0.0", None)


def test_reference_by_digest_with_port_and_no_scheme() -> None:
    """host:port/repo@digest, without oci://, parses to its registry, repository and digest."""
    ref = parse_reference(f"127.0.0.1:5000/a/b/c@{DIGEST}")
    assert ref == Reference("127.0.0.1:5000", "a/b/c", None, DIGEST)


def test_reference_with_tag_and_digest() -> None:
    """A reference may carry a tag and a digest together; both are kept."""
    ref = parse_reference(f"oci://{HOST}/plugins/x:1.0.0@{DIGEST}")
    assert (ref.tag, ref.digest) == ("1.0.0", DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        "oci://key-auth:1.0.0",  # no registry host
        f"oci://{HOST}/plugins/key-auth",  # neither tag nor digest
        f"oci://{HOST}/plugins/key-auth@sha256:short",
        f"oci://{HOST}/Plugins/Key-Auth:1.0.0",  # repositories are lower case
        f"oci://{HOST}/plugins/key-auth:bad tag",
    ],
)
def test_bad_references(text: str) -> None:
    """Each malformed reference is a ValueError."""
    with pytest.raises(ValueError):
        parse_reference(text)


# Built from parts, not ``st.from_regex``: the same sets of strings, drawn ~10x faster (a
# 64-digit regex costs Hypothesis seconds per run).
_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_component = st.builds(  # [a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}
    lambda first, rest: first + "".join(sep + word for sep, word in rest),
    _word, st.lists(st.tuples(st.sampled_from("._-"), _word), max_size=2))
_number = st.text("0123456789", min_size=1, max_size=3)


@given(
    host=st.sampled_from([HOST, "127.0.0.1:5000", "localhost", "ghcr.io"]),
    repo=st.lists(_component, min_size=1, max_size=3).map("/".join),
    tag=st.none() | st.tuples(_number, _number, _number).map(".".join),
    digest=st.none() | st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
)
def test_reference_round_trips(host: str, repo: str, tag: str | None, digest: str | None) -> None:
    """Any reference printed and parsed again is the same reference."""
    if tag is None and digest is None:
        tag = "1.0.0"
    ref = Reference(host, repo, tag, digest)
    assert parse_reference(str(ref)) == ref


def test_properties_skip_comments_and_blank_lines() -> None:
    text = f"# a comment\n\n  key-auth = oci://{HOST}/plugins/key-auth:2.0.0  \n! also a comment\n"
    assert [(e.name, e.version) for e in parse_properties(text)] == [("key-auth", "2.0.0")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key-auth\n", "p:1: expected name=oci://"),
        ("key-auth=\n", "p:1: expected name="),
        (f"\nKey_Auth=oci://{HOST}/a:1.0.0\n", "p:2: bad plugin name"),
        (
            f"a=oci://{HOST}/a:1.0.0\na=oci://{HOST}/b:1.0.0\n",
            "p:2: plugin 'a' version '1.0.0' listed twice",
        ),
        ("a=oci://nohost:1.0.0\n", "p:1: a: "),
    ],
)
def test_bad_properties_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        parse_properties(text, "p")


@given(st.text(max_size=200))
def test_properties_parser_only_raises_input_errors(text: str) -> None:
    with contextlib.suppress(InputError):  # anything else would be a traceback
        parse_properties(text)


def test_upstream_properties_parse() -> None:
    """Upstream's own plugins.properties (43 plugins) parses, and each entry gets a version."""
    if not UPSTREAM.exists():
        pytest.fail(f"{UPSTREAM} is missing")
    entries = parse_properties(UPSTREAM.read_text(), str(UPSTREAM))
    assert len(entries) == 43
    plan = build_plan(entries, {})
    assert all(entry.version for entry in plan.entries.values())


MANIFEST = f"""
plugins:
  key-auth:
    aliases: ['1.0.0', '2.0.1', '2.0.0']
  ai-proxy:
    image: oci://{HOST}/plugins/ai-proxy@{DIGEST}
    version: '1.0.0'
  basic-auth:
    digest: {DIGEST}
  json-converter:
    from: jsonrpc-converter
    versions: ['1.0.0']
"""


def _properties() -> list[Entry]:
    names = ("key-auth", "basic-auth", "jsonrpc-converter")
    return parse_properties("".join(f"{n}=oci://{HOST}/plugins/{n}:2.0.0\n" for n in names))


def test_manifest_adds_aliases_pins_and_name_aliases() -> None:
    plan = build_plan(_properties(), load_manifest(MANIFEST))
    assert plan.entries["key-auth", "2.0.0"].aliases == ("1.0.0", "2.0.1")  # own version dropped
    assert plan.entries["ai-proxy", "1.0.0"].pin == DIGEST
    assert plan.entries["basic-auth", "2.0.0"].pin == DIGEST
    alias = plan.name_aliases["json-converter"]
    assert (alias.target, alias.links) == ("jsonrpc-converter", (("1.0.0", "2.0.0"),))


def test_digest_only_reference_is_served_at_its_digest_as_upstream() -> None:
    plan = build_plan(parse_properties(f"a=oci://{HOST}/a@{DIGEST}\n"), {})
    assert list(plan.entries) == [("a", DIGEST)]
    assert plan.entries["a", DIGEST].pin == DIGEST


def test_one_name_at_several_versions() -> None:
    entries = parse_properties(
        f"a=oci://{HOST}/a:1.0.0\na=oci://{HOST}/a:2.0.0\nb=oci://{HOST}/b:1.0.0\n"
    )
    manifest = (
        "plugins:\n  a/2.0.0: {aliases: ['2.0.1']}\n"
        "  c: {from: a, versions: ['1.0.0', '2.0.0']}\n  d: {from: b, versions: ['3.0.0']}\n"
    )
    plan = build_plan(entries, load_manifest(manifest))
    assert sorted(plan.entries) == [("a", "1.0.0"), ("a", "2.0.0"), ("b", "1.0.0")]
    assert plan.entries["a", "2.0.0"].aliases == ("2.0.1",)
    assert plan.name_aliases["c"].links == (("1.0.0", "1.0.0"), ("2.0.0", "2.0.0"))
    assert plan.name_aliases["d"].links == (("3.0.0", "1.0.0"),)
    for bad, expected in (
        ("plugins:\n  a: {aliases: ['3.0.0']}\n", "key the item as 'a/<version>'"),
        ("plugins:\n  c: {from: a, versions: ['3.0.0']}\n", "list only versions it has"),
        ("plugins:\n  a/1.0.0: {aliases: ['2.0.0']}\n", "alias a/2.0.0 is also pulled"),
    ):
        with pytest.raises(InputError, match=expected):
            build_plan(entries, load_manifest(bad))


def test_the_same_name_and_version_from_two_files_must_agree() -> None:
    first = parse_properties(f"a=oci://{HOST}/a:1.0.0\n", "one")
    same = parse_properties(f"a=oci://{HOST}/a:1.0.0\n", "two")
    other = parse_properties(f"a=oci://{HOST}/elsewhere:1.0.0\n", "two")
    assert list(build_plan(first + same, {}).entries) == [("a", "1.0.0")]
    with pytest.raises(InputError, match=r"two:1: a/1.0.0 is .*elsewhere.* but one:1 serves it"):
        build_plan(first + other, {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plugins: [", "malformed YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("plugins:\n  key-auth:\n    colour: red\n", "unknown keys"),
        ("plugins:\n  key-auth:\n    aliases: [1.0]\n", "bad version"),
        ("plugins:\n  key-auth:\n    aliases: '1.0.0'\n", "expected a list"),
        ("plugins:\n  key-auth:\n    digest: sha256:abc\n", "want sha256:"),
        ("plugins:\n  x:\n    from: key-auth\n", "'from' needs 'versions'"),
        ("plugins:\n  Bad Name: {}\n", "bad plugin name"),
        (
            "plugins:\n  a: {}\n  b: {}\n  a: {aliases: ['1.0.0']}\n",
            "m.yaml:4: .*duplicate key 'a'",
        ),
        ("plugins:\n  a:\n    aliases: ['1.0.0']\n    aliases: []\n", "duplicate key 'aliases'"),
    ],
)
def test_bad_manifests(text: str, expected: str) -> None:
    """Each malformed manifest is an InputError naming what is wrong."""
    with pytest.raises(InputError, match=expected):
        load_manifest(text, "m.yaml")


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ("plugins:\n  nowhere: {aliases: ['1.0.0']}\n", "not in the properties and has no 'image'"),
        ("plugins:\n  x: {from: nowhere, versions: ['1.0.0']}\n", "not a plugin being pulled"),
        ("plugins:\n  key-auth: {from: basic-auth, versions: ['1.0.0']}\n", "and also 'from'"),
        (
            f"plugins:\n  key-auth: {{image: 'oci://{HOST}/a@{DIGEST}',"
            f" digest: 'sha256:{'cd' * 32}'}}\n",
            "contradicts",
        ),
    ],
)
def test_inconsistent_plans(manifest: str, expected: str) -> None:
    """A manifest the properties cannot honour (a name they lack, a clashing 'from', a digest
    the image contradicts) is an InputError naming the clash."""
    with pytest.raises(InputError, match=expected):
        build_plan(_properties(), load_manifest(manifest))


def test_latest_tag_is_a_version_or_the_manifest_renames_it() -> None:
    props = parse_properties(f"a=oci://{HOST}/a:latest\n")
    assert list(build_plan(props, {}).entries) == [("a", "latest")]
    plan = build_plan(props, load_manifest("plugins:\n  a: {version: '3.1.0'}\n"))
    assert list(plan.entries) == [("a", "3.1.0")]
