"""Write modules and aliases into the served tree so a reader never sees half a file.

Every file lands under a temporary name that starts with ``.`` (the server
never lists dotfiles) in its final directory, is fsynced, renamed over the
target and the directory fsynced: a server reading the same tree sees the old
file or the new one, nothing in between. Aliases are relative symlinks to the
module file, swapped in the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from hps.guard import MODULE_FILE, is_wasm_module, within_root
from hps.pull.errors import NotWasm, PullError

CHUNK = 1024 * 1024


def module_path(root: Path, name: str, version: str) -> Path:
    return root / name / version / MODULE_FILE


def write_module(root: Path, name: str, version: str, source: IO[bytes]) -> Path:
    """Copy ``source`` to ``<root>/<name>/<version>/plugin.wasm`` atomically."""
    target = module_path(root, name, version)
    _make_dirs(root, target.parent)
    with _staged(target) as out:
        shutil.copyfileobj(source, out, CHUNK)
    return target


def link_module(root: Path, name: str, version: str, target_name: str, target_version: str) -> Path:
    """Serve ``target``'s module as ``name/version`` through a relative symlink."""
    link = module_path(root, name, version)
    _make_dirs(root, link.parent)
    relative = os.path.relpath(module_path(root, target_name, target_version), link.parent)
    _replace(link, lambda tmp: os.symlink(relative, tmp))
    return link


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace a small file (the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _staged(path) as out:
        out.write(data)


def read_local(root: Path, name: str, version: str) -> tuple[int, str] | None:
    """Size and SHA-256 of a module already in the tree, or None; it must still be Wasm."""
    path = module_path(root, name, version)
    if not path.exists():
        return None
    if not within_root(str(path), str(root)):
        raise PullError(f"local {path} points outside {root}")
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        if not is_wasm_module(source.read(4)):
            raise NotWasm(f"local {path} is not a Wasm module (no \\0asm magic)")
        source.seek(0)
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _make_dirs(root: Path, directory: Path) -> None:
    """Create ``<name>/<version>`` as real directories, replacing old directory symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in directory.relative_to(root).parts:
        parent, current = current, current / part
        if current.is_symlink():
            # An old alias made of a directory link would send our write into its target.
            current.unlink()
        if not current.is_dir():
            current.mkdir()
            _fsync_dir(parent)


@contextmanager
def _staged(target: Path) -> Iterator[IO[bytes]]:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the server may run as another user
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(target.parent)


def _replace(target: Path, make: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)  # only the unique name was wanted; ``make`` creates the entry
    try:
        make(tmp)
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
