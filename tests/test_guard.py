"""Unit tests of the guard's pure decisions, with Hypothesis inputs."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hps.guard import (
    MAX_PATH,
    Verdict,
    accept_name,
    accept_version,
    hidden_or_temporary,
    is_wasm_module,
    judge_path,
    judge_segment,
    within_root,
)

segments = st.binary(max_size=200) | st.text(max_size=60).map(str.encode)


@given(segments)
def test_an_ok_segment_is_safe_text(raw: bytes) -> None:
    verdict, text = judge_segment(raw)
    if verdict is Verdict.OK:
        assert text.encode() == raw
        assert not text.startswith(".")
        assert "/" not in text and "\\" not in text and "\0" not in text
        assert all(ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in text)
    else:
        assert text == ""


@given(st.lists(segments, max_size=12))
def test_judge_path_never_raises_and_keeps_order(raw: list[bytes]) -> None:
    verdict, texts = judge_path(raw)
    if verdict is Verdict.OK:
        assert [t.encode() for t in texts] == raw
    else:
        assert texts == []


def test_examples() -> None:
    """Path segments: plain names are OK; dot segments, dotfiles, slashes and overlong ones are
    404; control or non-UTF-8 bytes and overlong paths are malformed."""
    assert judge_segment(b"key-rate-limit") == (Verdict.OK, "key-rate-limit")
    assert judge_segment(b"")[0] is Verdict.OK  # a trailing slash
    for refused in (b"..", b".", b".git", b"a/b", b"a\\b", b"x" * 129):
        assert judge_segment(refused)[0] is Verdict.NOT_FOUND, refused
    for malformed in (b"\0", b"a\x00b", b"\r\n", b"\x7f", b"\xff\xfe"):
        assert judge_segment(malformed)[0] is Verdict.MALFORMED, malformed
    assert judge_path([b"a" * 100] * (MAX_PATH // 100 + 1))[0] is Verdict.MALFORMED


@given(st.text(max_size=40))
def test_names_are_lowercase_tokens(name: str) -> None:
    if accept_name(name):
        assert name[0].isalnum() and name == name.lower()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-")


def test_names_and_versions() -> None:
    """Which plugin names and versions are accepted: lower-case names; semver, any OCI tag or
    a full sha256 digest as versions; never a path."""
    assert accept_name("key-rate-limit") and accept_name("ai-proxy") and accept_name("a.b_c")
    for bad in ("", "-x", ".x", "Key", "a/b", "a b", "x" * 129):
        assert not accept_name(bad), bad
    digest = "sha256:" + "0f" * 32
    for good in ("1", "1.0", "1.0.0", "v1.2.3", "2.0.0-rc.1", "1.0.0+build.5", "1.2.3.4"):
        assert accept_version(good), good
    # Any OCI tag and a digest-only line's digest are versions too, as upstream serves them.
    for good in ("latest", "2.0.0_rc1", "_x", "1.0.0-", digest):
        assert accept_version(good), good
    for bad in ("", ".", "..", "../1", ".1", "-1", "1.0.0/x", "a:b", "sha256:abc", "x" * 129):
        assert not accept_version(bad), bad


def test_wasm_magic_and_temporary_names() -> None:
    """The Wasm magic is recognised, and hidden, partial-download and editor names count as
    temporary."""
    assert is_wasm_module(b"\0asm\x01\0\0\0") and not is_wasm_module(b"\0as")
    assert not is_wasm_module(b"<html>")
    for name in (".plugin.wasm.tmp", "plugin.wasm.part", "x~", "#x#", "a.swp"):
        assert hidden_or_temporary(name), name
    assert not hidden_or_temporary("plugin.wasm")


def test_within_root_resolves_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").write_text("x")
    os.symlink(tmp_path / "outside", root / "a" / "out")
    os.symlink("../a", root / "a" / "in")
    os.symlink("/", root / "slash")
    assert within_root(str(root / "a"), str(root))
    assert within_root(str(root / "a" / "in"), str(root))
    assert not within_root(str(root / "a" / "out"), str(root))
    assert not within_root(str(root / "slash"), str(root))
    assert not within_root(str(tmp_path / "root-sibling"), str(root))
