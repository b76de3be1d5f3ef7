"""``fetch_to``: one module by reference, verified, written atomically with its ``.gz``;
the unit pull-through and ``hps pull`` share (against a real registry on 127.0.0.1)."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import pytest

from hps.pull.errors import DigestMismatch, PullError
from hps.pull.fetch import Options, fetch_to
from tests.support.registry import (
    Registry,
    sha256,
    wasm,
)

ROOT = Path(__file__).resolve().parent.parent


def test_fetch_to_is_one_verified_atomic_module(registry: Registry, tmp_path: Path) -> None:
    """The function pull-through and hps pull share: reference in, module and .gz out."""
    registry.push_wasm("one/a", "1.0.0", wasm("one a"))
    target = tmp_path / "cache" / "a" / "1.0.0" / "plugin.wasm"
    options = Options(plain_http=True, retries=0, timeout=5)
    fetched = fetch_to(registry.ref("one/a", "1.0.0"), target, options)
    assert target.read_bytes() == wasm("one a")
    assert gzip.decompress(target.with_name("plugin.wasm.gz").read_bytes()) == wasm("one a")
    assert fetched.sha256 == sha256(wasm("one a")).removeprefix("sha256:")
    assert fetched.size == len(wasm("one a"))
    registry.push_wasm("one/a", "1.0.0", wasm("moved"))
    with pytest.raises(DigestMismatch, match="differs from the expected"):
        fetch_to(registry.ref("one/a", "1.0.0"), target, options, expect_sha256=fetched.sha256)
    assert target.read_bytes() == wasm("one a")  # untouched
    with pytest.raises(PullError, match="does not name a registry host"):
        fetch_to("oci://nohost:1", target, options)
    assert sorted(os.listdir(target.parent)) == ["plugin.wasm", "plugin.wasm.gz"]


def test_blobs_are_staged_in_scratch_when_the_temp_dir_is_unusable(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's /tmp is a few MiB of memory: pull-through stages blobs in its cache tree."""
    registry.push_wasm("one/b", "1.0.0", wasm("staged"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    target = tmp_path / "cache" / "b" / "1.0.0" / "plugin.wasm"
    with pytest.raises(FileNotFoundError):
        fetch_to(registry.ref("one/b", "1.0.0"), target, Options(plain_http=True, retries=0))
    scratch = tmp_path / "cache"
    scratch.mkdir()
    fetch_to(registry.ref("one/b", "1.0.0"), target,
             Options(plain_http=True, retries=0, scratch=str(scratch)))  # fmt: skip
    assert target.read_bytes() == wasm("staged")
    assert sorted(os.listdir(scratch)) == ["b"]  # staged anonymously: nothing left behind
