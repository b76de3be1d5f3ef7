"""File permissions as the kernel checks them for a process without CAP_DAC_OVERRIDE.

Tests run as root, and root opens any file whatever its mode: ``chmod 000`` hides
nothing from it. :func:`owner_permissions` makes the calls the server reads the tree
with (``os.open``, ``open``, ``os.listdir``/``scandir``, ``os.stat``/``lstat``) honour
the owner's mode bits below one directory, as the kernel does for an unprivileged
owner (what ``setpriv --bounding-set=-dac_override,-dac_read_search`` does to a real
process):

- a directory without ``x`` cannot be walked through (stat, open, list below it);
- a directory without ``r`` cannot be listed, a file without ``r`` not opened to read,
  one without ``w`` not opened to write;
- a descriptor opened before keeps working: the kernel checks at open, not at read.

Paths are checked as written (a symlink's target directories are not), and creating
files is not checked: the server creates none in the tree.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

READ, WRITE, SEARCH = stat.S_IRUSR, stat.S_IWUSR, stat.S_IXUSR
_real_stat = os.stat


class OwnerPermissions:
    """The check itself: may an unprivileged owner reach ``path`` and use it so?"""

    def __init__(self, top: Path) -> None:
        self.top = os.path.realpath(top)

    def check(self, path: Any, need: int) -> None:
        """Raise PermissionError (EACCES) unless ``path`` can be reached and has ``need``."""
        if isinstance(path, int):
            return  # a descriptor: checked when it was opened
        full = os.path.abspath(os.fsdecode(path))
        rel = os.path.relpath(full, self.top)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return  # outside the tree: left to the kernel
        here = self.top
        for part in [] if rel == os.curdir else rel.split(os.sep):
            self.require(here, SEARCH, path)
            here = os.path.join(here, part)
        if need:
            self.require(full, need, path)

    @staticmethod
    def require(path: str, bits: int, shown: Any) -> None:
        try:
            mode = _real_stat(path).st_mode
        except OSError:
            return  # missing: the real call says so
        if mode & bits != bits:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(shown))


def _flags_need(flags: int) -> int:
    access = flags & os.O_ACCMODE
    return {os.O_RDONLY: READ, os.O_WRONLY: WRITE}.get(access, READ | WRITE)


def _mode_need(mode: str) -> int:
    need = READ if ("r" in mode or "+" in mode) else 0
    return need | (WRITE if any(c in mode for c in "wax+") else 0)


def owner_permissions(monkeypatch: pytest.MonkeyPatch, top: Path) -> OwnerPermissions:
    """From now on (until the test ends), mode bits below ``top`` apply to this process."""
    checker = OwnerPermissions(top)

    def wrap(name: str, need: Callable[..., int]) -> None:
        real = getattr(os, name)

        def checked(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            checker.check(path, need(*args))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, checked)

    wrap("open", lambda flags=os.O_RDONLY, *rest: _flags_need(flags))
    for name in ("listdir", "scandir"):
        wrap(name, lambda *rest: READ)
    for name in ("stat", "lstat"):
        wrap(name, lambda *rest: 0)
    real_open = builtins.open

    def checked_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        checker.check(file, _mode_need(mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", checked_open)
    return checker
