"""Unit: open, verified files; what a response reads is what the catalog hashed."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from hps.catalog import identity_of
from hps.files import FileTable, Replaced, Source, open_verified


def module(tmp_path: Path, name: str = "plugin.wasm", data: bytes = b"\0asm\1\0\0\0abc"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), identity_of(os.stat(path))


def test_a_source_reads_at_any_offset_and_knows_when_it_is_rewritten(tmp_path: Path) -> None:
    path, identity = module(tmp_path)
    source = open_verified(path, identity)
    assert source.read(4, 4) == b"\1\0\0\0" and source.read(100, 4) == b""
    assert source.fresh()
    with open(path, "r+b") as handle:
        handle.seek(8)
        handle.write(b"xyz!")  # in place: same inode, new size and mtime
    assert not source.fresh()


def test_a_replaced_file_is_refused(tmp_path: Path) -> None:
    path, identity = module(tmp_path)
    module(tmp_path, "other", b"\0asm\1\0\0\0other bytes")
    os.replace(tmp_path / "other", path)
    with pytest.raises(Replaced):
        open_verified(path, identity)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    path, identity = module(tmp_path)
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError):
        open_verified(str(tmp_path / "link"), identity)


def test_a_source_survives_its_name(tmp_path: Path) -> None:
    path, identity = module(tmp_path)
    source = open_verified(path, identity)
    os.unlink(path)
    assert source.fresh() and source.read(0, 4) == b"\0asm"


def test_the_table_shares_sources_and_keeps_the_last_few(tmp_path: Path) -> None:
    table = FileTable(limit=2)
    files = [module(tmp_path, f"m{i}") for i in range(3)]
    first = table.get(*files[0])
    assert table.get(*files[0]) is first, "one open per file, not per request"
    table.get(*files[1])
    table.get(*files[0])  # used again: now the newest
    table.get(*files[2])
    assert list(table.entries) == [files[0], files[2]]


def test_the_table_drops_a_rewritten_file(tmp_path: Path) -> None:
    table = FileTable()
    path, identity = module(tmp_path)
    table.get(path, identity)
    with open(path, "ab") as handle:
        handle.write(b"more")
    with pytest.raises(Replaced):
        table.get(path, identity)
    assert not table.entries


def test_descriptors_close_when_the_last_holder_lets_go(tmp_path: Path) -> None:
    gc.collect()
    before = Source.open
    table = FileTable()
    files = [module(tmp_path, f"m{i}") for i in range(2)]
    held = table.get(*files[0])
    table.get(*files[1])
    assert Source.open == before + 2
    table.forget_except({files[1]})
    assert Source.open == before + 2, "a response still holds the first"
    del held
    assert Source.open == before + 1
