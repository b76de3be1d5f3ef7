"""Unit: files that appear whole or not at all (hps.atomic), used by ``hps pull`` and by
the server's gzip cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hps import atomic


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_write_lands_whole_with_its_mode_and_durably(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plugin.wasm"
    target.write_bytes(b"old")
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source: str, destination: os.PathLike) -> None:
        steps.append("rename")
        assert Path(source).parent == tmp_path and Path(source).name.startswith(".plugin.wasm.")
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic.staged(target) as out:
        out.write(b"new bytes")
        assert target.read_bytes() == b"old", "nothing shows before the end"
    assert steps == ["fsync file", "rename", "fsync dir"]
    assert target.read_bytes() == b"new bytes"
    assert target.stat().st_mode & 0o777 == atomic.FILE_MODE
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [ValueError("the writer gave up"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                              failure: BaseException) -> None:
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    with pytest.raises(type(failure)), atomic.staged(str(target)) as out:
        out.write(b"half")
        raise failure
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_rename_that_fails_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be renamed over
    with pytest.raises(OSError), atomic.staged(target) as out:
        out.write(b"bytes")
    assert leftovers(tmp_path) == []


def test_swap_in_replaces_a_symlink_atomically(tmp_path: Path) -> None:
    link = tmp_path / "alias"
    link.symlink_to("one")
    atomic.swap_in(link, lambda path: os.symlink("two", path))
    assert os.readlink(link) == "two"

    def broken(path: str) -> None:
        os.symlink("three", path)
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic.swap_in(link, broken)
    assert os.readlink(link) == "two" and leftovers(tmp_path) == []
