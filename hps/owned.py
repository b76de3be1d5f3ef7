"""Directories hps keeps under ``cache_dir``: its own, or not used at all.

``cache_dir`` itself may be writable by anyone (``/tmp``, a Kubernetes ``emptyDir`` is
0777), so whoever got there first could have left a symlink or a directory of theirs
where hps keeps the pull-through cache tree (whose modules it serves), the gzip
variants or the eviction trash (whose contents it deletes). Each such directory is
created by hps if absent, and used only if it is a real directory (not a symlink)
owned by the server's effective user and not writable by group or others. The
directory holding it (``cache_dir``) must belong to the server's user or to root:
whoever owns it may rename entries in it, so a ``/tmp/hps-cache`` another user made
first is refused rather than trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


class Untrusted(OSError):
    """A directory hps would use is not its own; the message names it and says why."""


def problem(info: os.stat_result) -> str | None:
    """What makes this ``lstat``/``fstat`` result not a directory of this server's own."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.geteuid():
        return f"is owned by uid {info.st_uid}, not by this server's ({os.geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by group or others"
    return None


def check(info: os.stat_result, path: str) -> None:
    """Raise :class:`Untrusted` unless ``info`` is of a directory of this server's own."""
    why = problem(info)
    if why is not None:
        raise Untrusted(f"{path} {why}; hps uses only a directory of its own there")


def own_dir(path: str, mode: int = 0o755) -> str:
    """``path``, created with ``mode`` if absent (its parents as needed), once it passes
    :func:`check`; else :class:`Untrusted` (or the OSError that stopped the creation)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
        holder = os.stat(parent).st_uid  # through a symlink the operator made: its target
        if holder not in (os.geteuid(), 0):
            raise Untrusted(f"{parent} is owned by uid {holder}, neither this server's "
                            f"({os.geteuid()}) nor root's; its owner could swap {path}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    check(os.lstat(path), path)
    return path


def own_writable_dir(path: str) -> str:
    """:func:`own_dir`, and proof that this server can create files in it (a read-only
    mount passes every ownership check); else the OSError that says why not."""
    own_dir(path)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
        pass
    return path


def open_own_dir(path: str) -> int:
    """A descriptor of the directory ``path``, never through a symlink, once it passes
    :func:`check`: what is done relative to it stays inside, whatever is renamed later."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink, or not a directory: say so
            check(os.lstat(path), path)
        raise
    try:
        check(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd
