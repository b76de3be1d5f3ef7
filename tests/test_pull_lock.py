"""The lock is read strictly: every bad value is one line naming the key, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hps.pull.errors import InputError
from hps.pull.lock import Record, read_lock, write_lock

REF = "oci://127.0.0.1:5000/plugins/a:1.0.0"
GOOD = {
    "reference": REF,
    "manifestDigest": "sha256:" + "ab" * 32,
    "layerDigest": None,
    "wasmSha256": "cd" * 32,
    "size": 42,
    "versions": ["1.0.0", "0.9.0"],
    "servedAs": {"b": ["1.0.0"]},
    "source": "registry",
}


def _lock(tmp_path: Path, plugins: dict, version: int = 2) -> Path:
    path = tmp_path / "plugins.lock.json"
    path.write_text(json.dumps({"lockVersion": version, "plugins": plugins}))
    return path


def test_round_trip_and_version_1_locks(tmp_path: Path) -> None:
    """A lock reads back as it was written, and a version 1 lock (keyed by name) reads as the
    same records."""
    records = read_lock(_lock(tmp_path, {"a/1.0.0": GOOD}))
    expected = Record(
        REF, GOOD["manifestDigest"], None, "cd" * 32, 42, ["1.0.0", "0.9.0"], {"b": ["1.0.0"]}
    )
    assert records == {("a", "1.0.0"): expected}
    write_lock(tmp_path / "again.json", records)
    assert read_lock(tmp_path / "again.json") == records
    # Version 1 was keyed by name; its versions[0] is the version.
    assert read_lock(_lock(tmp_path, {"a": GOOD}, version=1)) == records


@pytest.mark.parametrize(
    ("key", "change", "expected"),
    [
        ("a/1.0.0", {"versions": "1.0.0"}, "plugins.a/1.0.0.versions: want a non-empty list"),
        ("a/1.0.0", {"versions": []}, "want a non-empty list of versions, got []"),
        ("a/1.0.0", {"versions": 1}, "want a non-empty list of versions, got 1"),
        ("a/1.0.0", {"versions": ["../x"]}, "want a non-empty list of versions"),
        ("a/1.0.0", {"wasmSha256": "xyz"}, ".wasmSha256: want 64 hex"),
        ("a/1.0.0", {"size": "big"}, ".size: want a size"),
        ("a/1.0.0", {"manifestDigest": "sha256:1"}, ".manifestDigest: want sha256:<64 hex>"),
        ("a/1.0.0", {"reference": "not a ref"}, ".reference: want an oci:// reference"),
        ("a/1.0.0", {"servedAs": ["b"]}, ".servedAs: want an object"),
        ("a/1.0.0", {"source": "magic"}, ".source: want one of"),
        ("a/2.0.0", {}, "plugins.a/2.0.0: want the key '<name>/<versions[0]>'"),
        ("A/1.0.0", {}, "want the key"),
    ],
)
def test_bad_values_are_one_clear_line(
    tmp_path: Path, key: str, change: dict, expected: str
) -> None:
    path = _lock(tmp_path, {key: {**GOOD, **change}})
    with pytest.raises(InputError) as caught:
        read_lock(path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
