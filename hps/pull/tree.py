"""Write modules and aliases into the served tree so a reader never sees half a file.

Every file and alias is written by :mod:`hps.atomic` (a dot-named temporary
beside the target, fsynced, renamed over it, the directory fsynced): a server
reading the same tree sees the old file or the new one, nothing in between.
Aliases are relative symlinks to the module file, swapped in the same way.

Beside each module goes ``plugin.wasm.gz`` (nginx's ``gzip_static`` convention),
so the server can send gzip from the first download: best compression, and the
same bytes on every machine and run (no name, mtime 0 in the gzip header).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path
from typing import IO

from hps.atomic import fsync_dir, staged, swap_in, unlink_quietly
from hps.catalog import NotAModule, examine_module
from hps.guard import MODULE_FILE, within_root
from hps.pull.errors import Changed, NotWasm, PullError

CHUNK = 1024 * 1024
GZIP_FILE = MODULE_FILE + ".gz"
# What our own staging leaves behind when a pull is killed (SIGKILL, power loss).
_OUR_TEMPORARY = re.compile(r"\.(?:plugin\.wasm|plugin\.wasm\.gz|[^/]+\.json)\.[^/]+\.tmp\Z")


def module_path(root: Path, name: str, version: str) -> Path:
    return root / name / version / MODULE_FILE


def write_module(
    root: Path, name: str, version: str, source: IO[bytes], *, gzip_sibling: bool = False
) -> Path:
    """Copy ``source`` to ``<root>/<name>/<version>/plugin.wasm`` atomically.

    With ``gzip_sibling`` (what ``hps pull`` does), its ``.gz`` too: see
    :func:`write_module_file`.
    """
    target = module_path(root, name, version)
    make_dirs(root, target.parent)
    if gzip_sibling:
        write_module_file(target, source)
    else:
        _write_from(target, source)
    return target


def write_module_file(target: Path, source: IO[bytes]) -> None:
    """``target`` and ``target.gz`` from ``source`` (read twice), both atomically.

    The ``.gz`` lands first, so the module never appears without its matching
    sibling; a stale or foreign ``.gz`` from before is replaced either way.
    """
    source.seek(0)
    write_gzip(target.with_name(target.name + ".gz"), source)
    source.seek(0)
    _write_from(target, source)


def _write_from(target: Path, source: IO[bytes]) -> None:
    with staged(target) as out:
        shutil.copyfileobj(source, out, CHUNK)


def write_gzip(target: Path, source: IO[bytes]) -> None:
    """Deterministic gzip of ``source`` at level 9: no file name, mtime 0."""
    with (
        staged(target) as out,
        gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=0) as gz,
    ):
        shutil.copyfileobj(source, gz, CHUNK)


def refresh_gzip(root: Path, name: str, version: str) -> None:
    """Rewrite the ``.gz`` beside a module kept as it is (``--use-local``)."""
    module = module_path(root, name, version)
    with module.open("rb") as source:
        write_gzip(module.with_name(GZIP_FILE), source)


def link_module(root: Path, name: str, version: str, target_name: str, target_version: str) -> Path:
    """Serve ``target``'s module (and its ``.gz``) as ``name/version`` through relative symlinks."""
    link = module_path(root, name, version)
    make_dirs(root, link.parent)
    target = module_path(root, target_name, target_version)
    gz_link = link.with_name(GZIP_FILE)
    if target.with_name(GZIP_FILE).exists():
        relative_gz = os.path.relpath(target.with_name(GZIP_FILE), link.parent)
        swap_in(gz_link, lambda tmp: os.symlink(relative_gz, tmp))
    else:
        unlink_quietly(str(gz_link))  # a stale one would describe other bytes
    relative = os.path.relpath(target, link.parent)
    swap_in(link, lambda tmp: os.symlink(relative, tmp))
    return link


def remove_temporaries(root: Path, *others: Path) -> list[Path]:
    """Delete the temp files a killed pull left in ``<root>/<name>/<version>/`` and ``others``.

    Only names our own staging makes (``.plugin.wasm.XXXX.tmp``, ``.<lock>.json.XXXX.tmp``);
    two pulls into one tree at once are not supported anyway.
    """
    directories = [*others]
    for name_dir in _subdirs(root):
        directories += _subdirs(name_dir)
    removed = []
    for directory in directories:
        for entry in _scan(directory):
            if entry.is_file(follow_symlinks=False) and _OUR_TEMPORARY.match(entry.name):
                unlink_quietly(entry.path)
                removed.append(Path(entry.path))
    return removed


def _subdirs(directory: Path) -> list[Path]:
    return [Path(e.path) for e in _scan(directory) if e.is_dir(follow_symlinks=False)]


def _scan(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace a small file (the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged(path) as out:
        out.write(data)


def read_local(root: Path, name: str, version: str) -> tuple[int, str] | None:
    """Size and SHA-256 of a module already in the tree, or None; it must still be Wasm."""
    path = module_path(root, name, version)
    if not path.exists():
        return None
    if not within_root(str(path), str(root)):
        raise PullError(f"local {path} points outside {root}")
    with path.open("rb") as source:
        try:
            digests = examine_module(source)
        except NotAModule:
            raise NotWasm(f"local {path} is not a Wasm module") from None
    return digests.size, digests.sha256


def refuse_change(path: Path, sha256: str) -> None:
    """Raise :class:`Changed` if ``path`` (through an alias's symlink) is a module with other
    bytes than ``sha256``: a URL's bytes change only when asked (``--replace``). Absent or
    not a module, it was never served, and may be written."""
    try:
        with path.open("rb") as source:
            served = examine_module(source).sha256
    except (FileNotFoundError, NotADirectoryError, NotAModule):
        return
    if served != sha256:
        raise Changed(served, sha256)


def make_dirs(root: Path, directory: Path) -> None:
    """Create ``directory`` below ``root`` as real directories, replacing directory symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in directory.relative_to(root).parts:
        parent, current = current, current / part
        if current.is_symlink():
            # An old alias made of a directory link would send our write into its target.
            current.unlink()
        if not current.is_dir():
            current.mkdir()
            fsync_dir(parent)
