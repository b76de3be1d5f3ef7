"""Files that appear whole or not at all, for every writer in hps.

A reader of the same directory (the server scanning the tree, a restart reusing the
gzip cache) sees the old file or the new one, never a part: the new bytes go to a
temporary name in the target's own directory (so the rename stays on one file
system), starting with ``.`` (the server never lists dotfiles) and ending ``.tmp``
(so ``hps pull`` can sweep what a killed run left); the file is fsynced, given its
mode, renamed over the target, and the directory fsynced so the rename survives a
power loss. On any failure, or an exception raised by the writer, the temporary
file is removed and the target stays as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

FILE_MODE = 0o644
"""``mkstemp`` makes 0600; the server may run as another user than ``hps pull``."""

StrPath = str | os.PathLike[str]


def _temporary_name(target: StrPath) -> tuple[int, str]:
    directory, name = os.path.split(os.fspath(target))
    return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")


@contextmanager
def staged(target: StrPath, mode: int = FILE_MODE) -> Iterator[IO[bytes]]:
    """Write ``target`` atomically: what the ``with`` block writes to the yielded file
    replaces it when the block ends, or nothing happens if the block raises."""
    fd, temporary = _temporary_name(target)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        unlink_quietly(temporary)
        raise
    fsync_dir(os.path.dirname(os.fspath(target)) or ".")


def swap_in(target: StrPath, make: Callable[[str], None]) -> None:
    """Atomically replace ``target`` with what ``make(path)`` creates at a temporary path
    beside it (a symlink, say)."""
    fd, temporary = _temporary_name(target)
    os.close(fd)
    os.unlink(temporary)  # only the unique name was wanted; ``make`` creates the entry
    try:
        make(temporary)
        os.replace(temporary, target)
    except BaseException:
        unlink_quietly(temporary)
        raise
    fsync_dir(os.path.dirname(os.fspath(target)) or ".")


def fsync_dir(directory: StrPath) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: StrPath) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
